"""Tests of attribution.concepts: concept discovery (NMF of activations), importance, projection on new images, the
gallery, the scores against cue masks, the patch-cluster baseline and the randomised-weights control, on a tiny
model with a planted concept.

The planted model reads 16 px images through one stride-2 2x2 convolution with four hand-set ReLU channels: channel 0
fires only on very bright cells (the planted square), channel 1 on dark cells (the background), channels 2 and 3 on
colour differences (the background's noise). The region logit of class 1 is 200 x the spatial mean of channel 0,
minus 2: an image is class 1 exactly when it holds the bright 4 x 4 square, and the square is the only thing the
class-1 logit reads. Chance for a map's mass on the square is 16 / 256 = 6.25%.
"""

from dataclasses import replace

import keras
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from streetlib.attribution import plots
from streetlib.attribution.concepts import activations, config, discover, doersch, report, score
from streetlib.attribution.metrics import intervals, sanity
from streetlib.data import synth
from streetlib.data.loaders import load_dataset
from streetlib.evaluation import stats

SIZE = 16
SQUARE = 4
CHANCE = SQUARE**2 / SIZE**2
# Importance is computed from float32 gradients and activations summed in float64; the direct computation below
# sums the same float32 values through the model's own pooling and dense layers (float32). On this model a logit is a
# mean of 64 cells times 200, a few units in size: float32 roundoff of such sums is ~1e-6 relative, so 1e-4 of the
# largest importance is far above it and far below any wrong formula's error (a missing cell changes it by ~1/64).
IMPORTANCE_RTOL = 1e-4


def planted_model():
    """The two-output model described in the module docstring (``region_logits`` and ``city_logits``)."""
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    conv = keras.layers.Conv2D(4, 2, strides=2, activation="relu", name="conv")
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(conv(inp))
    region = keras.layers.Dense(2, name="region_logits")
    city = keras.layers.Dense(4, name="city_logits")
    outputs = {
        "region": keras.layers.Activation("softmax", name="region")(region(pooled)),
        "city": keras.layers.Activation("softmax", name="city")(city(pooled)),
    }
    model = keras.Model(inp, outputs)
    kernel = np.zeros((2, 2, 3, 4), np.float32)
    kernel[..., 0] = 1 / 12  # mean brightness of the cell ...
    kernel[..., 1] = -1 / 12
    kernel[:, :, 0, 2], kernel[:, :, 2, 2] = 0.25, -0.25  # red minus blue
    kernel[:, :, 1, 3], kernel[:, :, 0, 3] = 0.25, -0.25  # green minus red
    bias = np.array([-0.6, 0.5, 0.0, 0.0], np.float32)  # ... above 0.6 (channel 0), below 0.5 (channel 1)
    conv.set_weights([kernel, bias])
    weights = np.zeros((4, 2), np.float32)
    weights[0, 1] = 200.0
    region.set_weights([weights, np.array([0.0, -2.0], np.float32)])
    city.set_weights([np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32), np.zeros(4, np.float32)])
    return model


def planted_data(n, seed):
    """``n`` images of dark noise; the odd ones (class 1) hold a white 4 x 4 square at a random even position.

    Returns:
        (images uint8 `(n, 16, 16, 3)`, masks uint8 `(n, 16, 16)` marking the square, labels int `(n,)`).
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, (n, SIZE, SIZE, 3)).astype(np.uint8)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    labels = np.arange(n) % 2
    for i in np.flatnonzero(labels):
        y, x = 2 * rng.integers(0, (SIZE - SQUARE) // 2 + 1, size=2)
        images[i, y : y + SQUARE, x : x + SQUARE] = 255
        masks[i, y : y + SQUARE, x : x + SQUARE] = 1
    return images, masks, labels


CONFIG = config.ConceptConfig(n_concepts=3, resamples=200, top_patches=4)


@pytest.fixture(scope="module")
def planted():
    images, masks, labels = planted_data(40, seed=0)
    return images, masks, labels, planted_model()


@pytest.fixture(scope="module")
def found(planted):
    images, _, labels, model = planted
    return discover.discover_concepts(
        images, model, normalization="unit", output="region", target_class=1, labels=labels, config=CONFIG
    )


# ---------------------------------------------------------------------------------------------------------------
# Discovery and importance


def test_discovery_shapes_and_selection(planted, found):
    images, _, labels, _ = planted
    assert found.layer == "conv" and found.output == "region" and found.target_class == 1
    np.testing.assert_array_equal(found.indices, np.flatnonzero(labels == 1))  # all class-1 images are right
    m = len(found.indices)
    assert found.bank.shape == (3, 4) and (found.bank >= 0).all()
    assert found.maps.shape == (m, SIZE, SIZE, 3) and (found.maps >= 0).all()
    assert found.layer_maps.shape == (m, 8, 8, 3)
    assert found.image_importance.shape == (m, 3) and found.importance.shape == (3,)
    assert sorted(found.order) == [0, 1, 2] and found.importance[found.order[0]] == found.importance.max()
    assert 0 <= found.reconstruction_error < 0.5 and found.negative_share == 0.0


def test_nmf_recovers_the_planted_concept_and_ranks_it_first(planted, found):
    _, masks, _, _ = planted
    table = score.concept_table(found, masks)
    best = table.iloc[0]
    assert best["concept"] == found.order[0] and best["rank"] == 1
    # The square's concept: most of its mass on the square (chance 6%), and the only one the class logit reads.
    assert best["pooled_share"] > 0.6 and best["pooled_share"] > 8 * CHANCE
    assert best["pooled_low"] <= best["pooled_share"] <= best["pooled_high"]
    assert (table["pooled_share"].iloc[1:] < 2 * CHANCE).all()
    assert best["importance"] > 1.0 and np.allclose(table["importance"].iloc[1:], 0.0, atol=1e-6)
    assert table["pooled_chance"].iloc[0] == pytest.approx(CHANCE)
    # Its direction in channel space is the square detector's (channel 0).
    direction = found.bank[found.order[0]]
    assert direction[0] > 0.99 * np.linalg.norm(direction)


def test_importance_equals_the_logit_lost_by_removing_the_concept(planted, found):
    # The head (mean pooling, dense) is linear in the activations, so gradient x concept activation is exact: the
    # class-1 logit of the reconstruction U W minus that of U W without concept k is importance_k, image by image.
    _, _, _, model = planted
    u, bank = found.layer_maps, found.bank
    pool, dense = model.get_layer("pool"), model.get_layer("region_logits")

    def logit(activations):
        return keras.ops.convert_to_numpy(dense(pool(activations.astype(np.float32))))[:, 1]

    full = np.einsum("nhwk,kc->nhwc", u, bank)
    removed = np.stack([logit(full) - logit(full - u[..., k : k + 1] * bank[k]) for k in range(3)], axis=1)
    scale = float(np.abs(found.image_importance).max())
    np.testing.assert_allclose(found.image_importance, removed, rtol=0, atol=IMPORTANCE_RTOL * scale)
    np.testing.assert_allclose(found.importance, removed.mean(axis=0), rtol=0, atol=IMPORTANCE_RTOL * scale)


def test_concept_importance_by_hand():
    # One image, 1 x 2 positions, 2 channels, 2 concepts: G = [[1, 2], [3, -1]], W = [[1, 0], [1, 1]],
    # U = [[2, 0], [1, 4]] (position x concept). <G, W_0> = [1, 3], <G, W_1> = [3, 2];
    # importance_0 = 2 * 1 + 1 * 3 = 5, importance_1 = 0 * 3 + 4 * 2 = 8.
    g = np.array([[1, 2], [3, -1]], np.float32).reshape(1, 1, 2, 2)
    w = np.array([[1, 0], [1, 1]], np.float32)
    u = np.array([[2, 0], [1, 4]], np.float32).reshape(1, 1, 2, 2)
    # Summed over positions, as `discover_concepts` sums them into each image's importance.
    np.testing.assert_array_equal(discover.concept_contributions(u, g, w).sum(axis=(1, 2)), [[5.0, 8.0]])
    # Position by position: concept 0 gives 2 * 1 and 1 * 3, concept 1 gives 0 * 3 and 4 * 2; the sums above.
    np.testing.assert_array_equal(
        discover.concept_contributions(u, g, w), np.array([[2, 0], [3, 8]]).reshape(1, 1, 2, 2)
    )


def test_contribution_maps_are_where_a_concept_raises_the_logit(planted, found):
    _, masks, _, _ = planted
    m, k = len(found.indices), found.order[0]
    assert found.contributions.shape == (m, SIZE, SIZE, 3) and (found.contributions >= 0).all()
    # The class-1 logit is a mean of channel 0 over the 64 cells: its gradient is the same everywhere, so the square
    # concept's contribution map is its activation map times one positive factor (the same mask share; float32
    # roundoff only, 1e-5 is far above it), and the concepts the logit ignores contribute nothing.
    picked = masks[found.indices]
    np.testing.assert_allclose(
        score.concept_mask_share(found.contributions[..., k], picked),
        score.concept_mask_share(found.maps[..., k], picked),
        rtol=1e-5,
    )
    others = [j for j in range(3) if j != k]
    assert found.contributions[..., others].max() < 1e-6 * found.contributions[..., k].max()


def test_concept_maps_find_the_square_in_new_images(planted, found):
    _, _, _, model = planted
    images, masks, labels = planted_data(10, seed=5)
    maps = score.concept_maps(images, model, found, normalization="unit")
    assert maps.shape == (10, SIZE, SIZE, 3) and (maps >= 0).all()
    square = maps[labels == 1][..., found.order[0]]
    assert score.concept_mask_share(square, masks[labels == 1]).min() > 0.6
    # No square, no concept: the class-0 images leave the square's concept silent.
    assert maps[labels == 0][..., found.order[0]].max() < 0.1 * square.max()


def test_top_patches_show_the_square(planted, found):
    images, _, _, _ = planted
    gallery = discover.top_patches(images, found, int(found.order[0]), size=4)
    assert gallery["patches"].shape == (4, 4, 4, 3) and gallery["patches"].dtype == np.uint8
    assert (np.diff(gallery["score"]) <= 0).all()
    assert set(gallery["index"]) <= set(found.indices)
    # Each crop is centred on the concept's peak, inside the square: at least a quarter of it is white.
    assert ((gallery["patches"] == 255).all(axis=-1).mean(axis=(1, 2)) >= 0.25).all()
    with pytest.raises(ValueError, match="Invalid `k`"):
        discover.top_patches(images, found, 3)
    with pytest.raises(ValueError, match="Invalid `size`"):
        discover.top_patches(images, found, 0, size=SIZE + 1)
    with pytest.raises(ValueError, match="the array the concepts were found in"):
        discover.top_patches(images[:5], found, 0)


def test_gallery_is_a_figure_with_the_callers_title(planted, found):
    images, masks, _, _ = planted
    shares = score.concept_table(found, masks).set_index("concept")["pooled_share"].sort_index().to_numpy()
    fig = plots.plot_concept_gallery(images, found, title="planted squares - weights: by hand", shares=shares)
    assert isinstance(fig, Figure) and fig._suptitle.get_text() == "planted squares - weights: by hand"
    assert len(fig.axes) == 3 * (1 + CONFIG.top_patches)


# ---------------------------------------------------------------------------------------------------------------
# Deletion


def test_deleting_the_top_concept_drops_the_class_more_than_random_regions(planted, found):
    images, _, _, model = planted
    drops = score.concept_deletion(
        images[found.indices],
        model,
        found.maps[..., found.order[0]],
        normalization="unit",
        output="region",
        target=1,
        area=0.1,
    )
    assert set(drops) == {"clean", "concept", "random"}
    assert (drops["clean"] > 0.9).all()
    mean, low, _ = intervals.bootstrap_interval(drops["concept"] - drops["random"], resamples=200)
    assert low > 0.5 and mean > 0.5
    # Removing the square takes the logit to its bias: probability 1 / (1 + e^2) = 0.12.
    np.testing.assert_allclose(drops["clean"] - drops["concept"], 1 / (1 + np.e**2), atol=1e-3)
    with pytest.raises(ValueError, match="Invalid `area`"):
        score.concept_deletion(
            images[:2], model, found.maps[:2, ..., 0], normalization="unit", output="region", target=1, area=1.0
        )
    with pytest.raises(ValueError, match="Invalid `target`"):
        score.concept_deletion(
            images[:2], model, found.maps[:2, ..., 0], normalization="unit", output="region", target=[1]
        )
    with pytest.raises(ValueError, match="`maps` must have shape"):
        score.concept_deletion(
            images[:2], model, found.maps[:3, ..., 0], normalization="unit", output="region", target=1
        )


# ---------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_concepts", 0),
        ("selection", "right"),
        ("max_images", 0),
        ("nmf_init", "svd"),
        ("nmf_tol", 0.0),
        ("deletion_area", 1.5),
        ("resamples", True),
        ("share_target", 1.0),
        ("share_margin", 0.0),
        ("seed", -1),
        ("layer", 3),
    ],
)
def test_bad_config_values_name_the_argument(field, value):
    with pytest.raises(ValueError, match=f"Invalid `{field}`.*Received: {field}="):
        config.ConceptConfig(**{field: value})


def test_bad_patch_config_values_name_the_argument():
    with pytest.raises(ValueError, match="Invalid `clusters`"):
        config.PatchConfig(clusters=1)
    with pytest.raises(ValueError, match="Invalid `smoothing`"):
        config.PatchConfig(smoothing=-1.0)


def test_no_image_of_the_class_is_a_clear_error(planted):
    images, _, labels, model = planted
    kwargs = dict(normalization="unit", output="region", target_class=1, config=CONFIG)
    with pytest.raises(ValueError, match="No image is labelled and predicted as class 1 of output 'region'"):
        discover.discover_concepts(images[labels == 0], model, labels=labels[labels == 0], **kwargs)
    with pytest.raises(ValueError, match="`labels` are needed for selection='correct'"):
        discover.discover_concepts(images, model, **kwargs)
    with pytest.raises(ValueError, match="Invalid `target_class`"):
        discover.discover_concepts(images, model, **{**kwargs, "target_class": 2}, labels=labels)
    with pytest.raises(ValueError, match="Invalid `n_concepts`: layer 'conv' has 4 channels"):
        discover.discover_concepts(
            images, model, **{**kwargs, "config": config.ConceptConfig(n_concepts=5)}, labels=labels
        )
    with pytest.raises(ValueError, match="`labels` must have shape"):
        discover.discover_concepts(images, model, labels=labels[:3], **kwargs)


def test_the_default_layer_moves_past_batch_norm_and_relu_and_negative_layers_are_refused():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="head_conv2")(inp)
    x = keras.layers.BatchNormalization(name="head_conv2_bn")(x)
    x = keras.layers.ReLU(name="head_conv2_relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(2, name="region_logits")(x))
    assert activations.concept_layer(model) == "head_conv2_relu"
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3)).astype(np.uint8)
    kwargs = dict(normalization="samplewise", output="region", target_class=0, labels=np.zeros(6, np.int64))
    found = discover.discover_concepts(
        images, model, **kwargs, config=config.ConceptConfig(n_concepts=2, selection="labelled")
    )
    assert found.layer == "head_conv2_relu"
    with pytest.raises(ValueError, match="Invalid `layer`: .* of the activation mass of 'head_conv2' is negative"):
        discover.discover_concepts(
            images, model, **kwargs, config=config.ConceptConfig(layer="head_conv2", selection="labelled")
        )


# ---------------------------------------------------------------------------------------------------------------
# Baseline and control


def test_patch_cluster_baseline_finds_the_square(planted):
    images, masks, labels, _ = planted
    settings = config.PatchConfig(patch=4, stride=2, clusters=8, keep=3, resamples=200)
    clusters = doersch.doersch_baseline(images, labels, target_class=1, config=settings)
    np.testing.assert_array_equal(clusters.indices, np.flatnonzero(labels == 1))
    assert clusters.maps.shape == (20, SIZE, SIZE, 3) and (np.diff(clusters.purity) <= 0).all()
    table = score.concept_table(clusters, masks)
    # Its purest cluster is made of patches on the square: far above chance, scored by the same function.
    assert table["purity"].iloc[0] > 0.9 and table["pooled_share"].iloc[0] > 4 * CHANCE
    with pytest.raises(ValueError, match="needs images of class 1 and of other classes"):
        doersch.doersch_baseline(images[labels == 1], labels[labels == 1], target_class=1, config=settings)


def test_randomised_weights_lose_the_planted_concept(planted, found):
    # The control: the same procedure on copies whose kernels and biases are redrawn. A single random convolution
    # still tells a white square from dark noise in some channels (the square is the most distinct thing in the
    # images), so a random copy can still find a square concept, as NMF of any features would; what it loses is the
    # link to the decision. Over a few random copies the top-ranked concept is, on average, far less on the square
    # than the trained model's, and at least one copy is near chance.
    images, masks, labels, model = planted
    trained = score.concept_table(found, masks)["pooled_share"].iloc[0]
    settings = config.ConceptConfig(n_concepts=3, selection="labelled", resamples=200, nmf_max_iter=1000)
    tops = []
    for seed in range(6):
        randomized = sanity.randomized_copy(model, output="region", seed=seed)
        control = discover.discover_concepts(
            images, randomized, normalization="unit", output="region", target_class=1, labels=labels, config=settings
        )
        assert control.layer == "conv" and not np.allclose(control.bank, found.bank)
        tops.append(score.concept_table(control, masks)["pooled_share"].iloc[0])
    assert np.mean(tops) < 0.5 * trained
    assert min(tops) < 2 * CHANCE


# ---------------------------------------------------------------------------------------------------------------
# Degenerate activations: a randomised copy (or a user's layer) with dead units, constant or all-zero maps


def degenerate_model(kind):
    """The planted model with its convolution made degenerate by construction.

    'dead units': channels 2 and 3 never fire (zero kernel, negative bias): rank 2. 'constant': every channel is
    0.5 everywhere (zero kernel, positive bias): rank 1. 'all zero': no channel ever fires: rank 0.
    """
    model = planted_model()
    conv = model.get_layer("conv")
    kernel, bias = conv.get_weights()
    if kind == "dead units":
        kernel[..., 2:], bias[2:] = 0.0, -1.0
    elif kind == "constant":
        kernel[:], bias[:] = 0.0, 0.5
    else:
        kernel[:], bias[:] = 0.0, -1.0
    conv.set_weights([kernel, bias])
    return model


RANKS = {"dead units": 2, "constant": 1, "all zero": 0}


@pytest.mark.parametrize("init", config.NMF_INITS)
@pytest.mark.parametrize("kind", list(RANKS))
def test_degenerate_activations_give_empty_concepts_not_nan(planted, kind, init):
    images, masks, labels, _ = planted
    model = degenerate_model(kind)
    settings = config.ConceptConfig(n_concepts=3, selection="labelled", resamples=50, nmf_init=init)
    found = discover.discover_concepts(
        images, model, normalization="unit", output="region", target_class=1, labels=labels, config=settings
    )
    rank = RANKS[kind]
    assert found.rank == rank
    for values in (found.bank, found.maps, found.contributions, found.image_importance, found.importance):
        assert np.isfinite(values).all()
    # Concepts beyond the rank are empty and ranked last; the fitted ones are not empty.
    assert not found.bank[rank:].any() and not found.maps[..., rank:].any() and not found.importance[rank:].any()
    assert found.bank[:rank].any(axis=1).all()
    assert sorted(found.order[rank:]) == list(range(rank, 3))
    # An empty concept fires nowhere in new images either, and the table scores it at chance rather than NaN.
    projected = score.concept_maps(images[:6], model, found, normalization="unit")
    assert np.isfinite(projected).all() and not projected[..., rank:].any()
    table = score.concept_table(found, masks)
    assert np.isfinite(table["pooled_share"]).all()
    assert table.loc[table["concept"] >= rank, "pooled_share"].to_numpy() == pytest.approx(CHANCE)


def test_null_directions_of_the_svd_never_reach_nndsvd(planted, monkeypatch):
    # What a CPU's kernels did to a randomised copy: for a direction with no singular value behind it, the SVD may
    # return a unit vector on a dead channel and a left vector of one sign, so both of NNDSVD's candidate parts have
    # zero norm and it divides 0 by 0. Made here by construction: an exact SVD whose null directions are replaced by
    # exactly that pattern. Only the directions within the activations' rank may be handed to NNDSVD.
    from sklearn.decomposition import _nmf

    def svd_with_bad_null_directions(x, n_components, **_):
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        u, s, vt = u[:, :n_components].copy(), s[:n_components].copy(), vt[:n_components].copy()
        for j in np.flatnonzero(s <= discover.RANK_TOLERANCE * s[0]):
            s[j] = 0.0
            u[:, j] = -np.abs(u[:, j]) / np.linalg.norm(u[:, j])
            vt[j] = np.eye(x.shape[1])[-1]
        return u, s, vt

    # The SVD that NNDSVD calls: `_randomized_svd` in scikit-learn 1.9 (the lock), `randomized_svd` in 1.6 (the floor).
    svd_name = "_randomized_svd" if hasattr(_nmf, "_randomized_svd") else "randomized_svd"
    monkeypatch.setattr(_nmf, svd_name, svd_with_bad_null_directions)
    images, _, labels, _ = planted
    found = discover.discover_concepts(
        images,
        degenerate_model("dead units"),
        normalization="unit",
        output="region",
        target_class=1,
        labels=labels,
        config=config.ConceptConfig(n_concepts=3, selection="labelled", resamples=50),
    )
    assert found.rank == 2 and np.isfinite(found.maps).all() and np.isfinite(found.importance).all()


def test_a_factorisation_that_is_not_finite_is_one_clear_error(planted, monkeypatch):
    class NaNFactorisation:
        def __init__(self, n_components, **_):
            self.components_ = np.full((n_components, 4), np.nan)

        def fit_transform(self, flat):
            return np.full((len(flat), len(self.components_)), np.nan)

    monkeypatch.setattr(discover, "NMF", NaNFactorisation)
    images, _, labels, model = planted
    with pytest.raises(ValueError, match=r"layer 'conv' did not converge.*nmf_init='random'"):
        discover.discover_concepts(
            images, model, normalization="unit", output="region", target_class=1, labels=labels, config=CONFIG
        )


def test_class_report_on_a_model_with_dead_units(planted, held_out):
    images, _, labels, _ = planted
    table, _, _ = report.class_report(
        images,
        labels,
        degenerate_model("dead units"),
        **held_out,
        normalization="unit",
        config=CONFIG,
        patch_config=PATCHES,
    )
    square = table[table["class"] == 1].set_index("source")
    assert np.isfinite(square.loc["model", ["pooled_share", "per_image_share", "pooled_chance"]].to_numpy(float)).all()
    # The randomised copy of this model may have no live unit at all (seed 0's has none): its concept then fires
    # nowhere in the held-out images, has no share, and every share question about it is inconclusive.
    control = square.loc["randomised weights"]
    assert control["scored"] > 0 or control["pooled_vs_chance"] == control["per_image_vs_chance"] == "inconclusive"


# ---------------------------------------------------------------------------------------------------------------
# Every class: concepts found on discovery images, scored on held-out ones against the ground truth

PATCHES = config.PatchConfig(patch=4, stride=2)


@pytest.fixture(scope="module")
def held_out():
    """Held-out images drawn with another seed than the discovery images (``planted``), as `class_report`'s
    keyword arguments."""
    images, masks, labels = planted_data(40, seed=1)
    return {"test_images": images, "test_masks": masks, "test_labels": labels}


@pytest.fixture(scope="module")
def discovery(planted):
    images, _, labels, model = planted
    return discover.discover_sources(
        images, labels, model, normalization="unit", config=CONFIG, patch_config=PATCHES, found_on="training images"
    )


# The configuration's seed also draws the randomised copy: the report's checks must hold whichever copy is drawn.
@pytest.fixture(scope="module", params=[0, 1, 2, 3])
def seeded_report(planted, held_out, request):
    images, _, labels, model = planted
    settings = config.ConceptConfig(n_concepts=3, resamples=200, top_patches=4, seed=request.param)
    return report.class_report(
        images, labels, model, **held_out, normalization="unit", config=settings, patch_config=PATCHES
    )


def test_pooled_share_weighs_each_image_by_the_concepts_mass_there():
    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True  # a quarter of each image is cue
    maps = np.zeros((2, 4, 4))
    maps[0, :2, :2], maps[0, 3, 3] = 3.0, 3.0  # fires strongly: mass 15, of it 12 on the cue (0.8)
    maps[1] = 0.1  # a faint wash: mass 1.6, of it 0.4 on the cue (0.25, the chance level)
    shares = score.pooled_shares(maps, masks, resamples=200)
    # Per image 0.8 and 0.25, mean 0.525; pooled (12 + 0.4) / (15 + 1.6), the image where it fires counts most.
    assert shares["per_image_share"] == pytest.approx(0.525)
    assert shares["pooled_share"] == pytest.approx(12.4 / 16.6)
    assert shares["pooled_low"] <= shares["pooled_share"] <= shares["pooled_high"]
    assert shares["pooled_chance"] == pytest.approx(0.25)  # equal cue areas: weighting cannot move chance
    # Chance is weighted by the mass too: a uniform map over a larger cue scores more, and counts more if it is heavier.
    masks[1, :2, :] = True  # half of image 1 is cue
    maps = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 3.0)])  # uniform maps, mass 16 and 48
    shares = score.pooled_shares(maps, masks, resamples=200)
    assert (
        shares["pooled_chance"] == pytest.approx((0.25 * 16 + 0.5 * 48) / 64) == pytest.approx(shares["pooled_share"])
    )
    # A concept that fires nowhere counts as uniform on every image (as an all-zero map does per image).
    shares = score.pooled_shares(np.zeros((2, 4, 4)), masks, resamples=200)
    assert shares["pooled_share"] == shares["per_image_share"] == pytest.approx(0.375) == shares["pooled_chance"]
    # An image without cue pixels has no share, and its mass (however large) must not pull chance down either.
    masks = np.concatenate([masks[:1], np.zeros((1, 4, 4), bool)])
    maps = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 100.0)])
    shares = score.pooled_shares(maps, masks, resamples=200)
    assert shares["images"] == 1 and shares["pooled_share"] == pytest.approx(0.25) == shares["pooled_chance"]


def test_share_differences_by_hand():
    # Two images: the concept fires with mass 15 and a share of 0.8 on the first, mass 1.6 and 0.25 on the second.
    shares, mass = np.array([0.8, 0.25]), np.array([15.0, 1.6])
    np.testing.assert_allclose(score.share_differences(shares, 0.5), [0.3, -0.25])
    pooled = score.share_differences(shares, 0.5, mass)
    # Their mean is the pooled share (12 + 0.4) / 16.6 minus the target.
    assert pooled.mean() == pytest.approx(12.4 / 16.6 - 0.5)
    # Their spread is the delta-method standard error of the ratio sum(a) / sum(b), a = w s, b = w.
    rng = np.random.default_rng(0)
    shares, mass = rng.uniform(0, 1, 30), rng.uniform(0.1, 5, 30)
    ratio = np.sum(mass * shares) / mass.sum()
    delta = np.sqrt(np.sum((mass * shares - ratio * mass) ** 2) / (30 * 29)) / mass.mean()
    values = score.share_differences(shares, 0.5, mass)
    assert values.std(ddof=1) / np.sqrt(30) == pytest.approx(delta, rel=1e-12)
    # Against each image's chance (its cue area), the mean is the pooled share minus the mass-weighted chance.
    area = rng.uniform(0.05, 0.2, 30)
    assert score.share_differences(shares, area, mass).mean() == pytest.approx(ratio - np.average(area, weights=mass))


def test_share_questions_score_both_shares_on_the_images_where_the_concept_fires():
    masks = np.zeros((3, 4, 4), bool)
    masks[:, :2, :2] = True  # a quarter of each image is cue
    maps = np.zeros((3, 4, 4))
    maps[0, :2, :2], maps[0, 3, 3] = 3.0, 3.0  # mass 15, 12 on the cue: 0.8
    maps[1] = 0.1  # mass 1.6, 0.4 on the cue: 0.25
    # Image 2: the concept does not fire there, so it has no share (not chance's 0.25).
    summary, questions = report.share_questions(maps, masks, margin=0.05, target=0.5)
    assert summary["scored"] == 2
    assert summary["per_image_share"] == pytest.approx(0.525) and summary["pooled_share"] == pytest.approx(12.4 / 16.6)
    assert summary["per_image_chance"] == summary["pooled_chance"] == pytest.approx(0.25)
    assert summary["per_image_low"] < 0.525 < summary["per_image_high"]
    asked = {q["question"]: q for q in questions}
    assert set(asked) == set(report.QUESTIONS) - {"deletion vs random regions"}
    assert asked["per-image share vs target"]["difference"] == pytest.approx(0.025)
    assert asked["pooled share vs target"]["difference"] == pytest.approx(12.4 / 16.6 - 0.5)
    assert asked["pooled share vs chance"]["difference"] == pytest.approx(12.4 / 16.6 - 0.25)
    assert {(q["a"], q["b"]) for q in questions} == {("target", "concept"), ("chance", "concept")}
    # Without a target only chance is asked.
    _, questions = report.share_questions(maps, masks, margin=0.05)
    assert [q["question"] for q in questions] == ["per-image share vs chance", "pooled share vs chance"]


def test_class_report_scores_the_model_its_randomised_copy_and_the_baseline(seeded_report):
    table, verdicts, discovery = seeded_report
    assert sorted(discovery.concepts) == [0, 1]
    rows = table.set_index(["class", "source"])
    assert list(table["source"]) == [*discover.SOURCES, *discover.SOURCES]
    assert set(table["found_on"]) == {"training images"} and set(table["scored_on"]) == {"test images"}
    model_row = rows.loc[(1, "model")]
    # Found on the 20 class-1 training images, scored on the 20 class-1 test images (all of them right).
    assert model_row["images"] == 20 and model_row["selected"] == model_row["scored"] == 20
    # Class 1 is the planted square: on held-out images its top concept sits on it, both shares far above the
    # 50% target and chance, and deleting it kills the class.
    for prefix in ("per_image", "pooled"):
        assert model_row[f"{prefix}_share"] > 0.6
        assert model_row[f"{prefix}_low"] <= model_row[f"{prefix}_share"] <= model_row[f"{prefix}_high"]
        assert model_row[f"{prefix}_vs_target"] == model_row[f"{prefix}_vs_chance"] == "concept higher"
    assert model_row["contribution_low"] <= model_row["contribution_share"] <= model_row["contribution_high"]
    assert model_row["contribution_share"] > 0.6
    assert model_row["deletion"] == "concept higher" and model_row["drop_low"] > 0.5
    assert model_row["drop_difference"] == pytest.approx(model_row["drop_concept"] - model_row["drop_random"])
    # Every square has the same area, so weighting by the concept's mass leaves chance at the mean mask area.
    assert model_row["pooled_chance"] == pytest.approx(CHANCE)
    # Only the trained model's concept is held to the target; the control has no deletion test; the baseline has
    # no contribution map (it never looks at the model).
    control, baseline = rows.loc[(1, "randomised weights")], rows.loc[(1, "baseline (no model)")]
    assert pd.isna(control["pooled_vs_target"]) and pd.isna(baseline["per_image_vs_target"])
    assert pd.isna(control["deletion"]) and isinstance(baseline["deletion"], str)
    assert np.isnan(baseline["contribution_share"])
    assert control["selected"] == baseline["selected"] == model_row["selected"]  # the same held-out images
    # Class 0 images have no square: no cue pixel, so no share and no verdict but 'inconclusive'.
    plain = rows.loc[(0, "model")]
    assert plain["scored"] == 0 and np.isnan(plain["pooled_share"])
    assert plain["pooled_vs_target"] == plain["per_image_vs_chance"] == "inconclusive"


def test_the_report_is_one_family_in_the_stats_modules_words(seeded_report):
    table, verdicts, _ = seeded_report
    # Per class: the model asks 4 share questions and the deletion test, the control 2, the baseline 3.
    assert len(verdicts) == 2 * (5 + 2 + 3)
    assert verdicts.groupby("source").size().to_dict() == {
        "model": 10,
        "randomised weights": 4,
        "baseline (no model)": 6,
    }
    # One Holm family over every question of the report (the NaN p-values of unasked ones left out).
    np.testing.assert_array_equal(verdicts["p_holm"], stats.holm(verdicts["p"]))
    np.testing.assert_array_equal(verdicts["p_equivalence_holm"], stats.holm(verdicts["p_equivalence"]))
    assert {stats.verdict_kind(v) for v in verdicts["verdict"]} <= set(stats.VERDICTS)
    # The table's verdict columns are the family's verdicts.
    rows = table.set_index(["class", "source"])
    for row in verdicts.to_dict("records"):
        assert rows.loc[(row["class"], row["source"]), report.QUESTIONS[row["question"]]] == row["verdict"]


def test_report_findings_are_read_from_the_table(seeded_report):
    table, _, _ = seeded_report
    lines = report.report_findings(table, names=["plain", "square"])
    assert len(lines) == len(table)
    square = table[(table["class"] == 1) & (table["source"] == "model")].iloc[0]
    line = lines[int(square.name)]
    assert line.startswith(
        f"square, model: top concept #{square['concept']} (found on 20 training images), on 20 of 20 test images: "
        f"{square['pooled_share']:.2f} [{square['pooled_low']:.2f}, {square['pooled_high']:.2f}] (vs the 50% "
        f"target: concept higher; vs chance {square['pooled_chance']:.2f}: concept higher) of its map mass (pooled "
        "over the images) on cue pixels; per-image mean "
        f"{square['per_image_share']:.2f} [{square['per_image_low']:.2f}, {square['per_image_high']:.2f}] (vs the "
        "50% target: concept higher;"
    )
    assert f"(its contribution map), {square['contribution_share']:.2f}" in line
    assert line.endswith(
        f"{square['drop_difference']:.2f} [{square['drop_low']:.2f}, {square['drop_high']:.2f}]: concept higher."
    )
    # The verdicts are the table's: another verdict in the table, other words.
    changed = table.assign(pooled_vs_target="equivalent within ±0.05")
    assert (
        "(vs the 50% target: equivalent within ±0.05;"
        in report.report_findings(changed, names=["plain", "square"])[int(square.name)]
    )
    assert "target" not in lines[int(square.name) + 1]  # the control is not held to the target
    # Class 0 has no cue pixels: no share, and no verdict on it.
    plain = lines[int(table[(table["class"] == 0) & (table["source"] == "model")].index[0])]
    assert "no image with a cue pixel where it fires, so no share" in plain and "target" not in plain


def test_discovery_never_sees_the_held_out_images(planted, held_out):
    images, _, labels, model = planted
    common = dict(normalization="unit", config=CONFIG, patch_config=PATCHES)
    table, _, first = report.class_report(images, labels, model, **held_out, **common)
    other_images, other_masks, other_labels = planted_data(40, seed=2)
    other = dict(test_images=other_images, test_masks=other_masks, test_labels=other_labels)
    other_table, _, second = report.class_report(images, labels, model, **other, **common)
    # Other held-out images: other scores, the very same concepts, controls and clusters.
    assert not np.allclose(table["pooled_share"].fillna(0), other_table["pooled_share"].fillna(0))
    for target in (0, 1):
        for found, again in zip(first.sources(target).values(), second.sources(target).values(), strict=True):
            np.testing.assert_array_equal(found.order, again.order)
            np.testing.assert_array_equal(found.indices, again.indices)
        np.testing.assert_array_equal(first.concepts[target].bank, second.concepts[target].bank)
        np.testing.assert_array_equal(first.controls[target].bank, second.controls[target].bank)
        np.testing.assert_array_equal(
            first.baselines[target].kmeans.cluster_centers_, second.baselines[target].kmeans.cluster_centers_
        )
    # And the discovery images cannot be scored as held-out ones.
    mixed = np.concatenate([other_images[:5], images[:3]])
    with pytest.raises(ValueError, match="3 of the 8 images to score are among the training images"):
        report.held_out_report(first, mixed, other_masks[:8], other_labels[:8], model, normalization="unit")


def test_patch_clusters_are_found_again_in_the_images_they_came_from(planted):
    images, _, labels, _ = planted
    clusters = doersch.doersch_baseline(images, labels, target_class=1, config=PATCHES)
    np.testing.assert_array_equal(doersch.patch_cluster_maps(images[clusters.indices], clusters), clusters.maps)
    with pytest.raises(ValueError, match=r"`images` must be \(16, 16\) px"):
        doersch.patch_cluster_maps(np.zeros((2, 8, 8, 3), np.uint8), clusters)


def test_projected_contributions_are_where_the_concept_counts(planted, found):
    _, _, _, model = planted
    images, masks, labels = planted_data(10, seed=5)
    projected = score.concept_projection(images[labels == 1], model, found, normalization="unit")
    k, others = found.order[0], found.order[1:]
    # As at discovery: the class logit is a mean of channel 0, so the square's contribution map is its activation
    # map times one positive factor, and the concepts the logit ignores contribute nothing.
    np.testing.assert_allclose(
        score.concept_mask_share(projected["contributions"][..., k], masks[labels == 1]),
        score.concept_mask_share(projected["maps"][..., k], masks[labels == 1]),
        rtol=1e-5,
    )
    assert projected["contributions"][..., others].max() < 1e-6 * projected["contributions"][..., k].max()


def asked(verdicts):
    """The set of verdicts in a table's verdict columns, without the questions not asked (NaN)."""
    return set(verdicts.stack().dropna())


def test_degenerate_input_gives_inconclusive_verdicts_not_nan(planted, held_out, discovery):
    images, _, labels, model = planted
    test_images, test_masks, test_labels = held_out.values()
    share_columns = [c for q, c in report.QUESTIONS.items() if "share" in q]
    # All-zero activations: the model's concepts are empty, fire nowhere, and have no share anywhere.
    table, verdicts, _ = report.class_report(
        images,
        labels,
        degenerate_model("all zero"),
        **held_out,
        normalization="unit",
        config=replace(CONFIG, selection="labelled"),
        patch_config=PATCHES,
    )
    assert verdicts["verdict"].notna().all()
    silent = table[table["source"] != "baseline (no model)"]
    assert (silent["scored"] == 0).all()
    assert asked(silent[share_columns]) == {"inconclusive"}
    assert table.loc[table["source"] == "model", share_columns].notna().all().all()  # asked, and answered
    # Empty masks: nothing to score any share on, for any source.
    table, verdicts = report.held_out_report(
        discovery, test_images, np.zeros_like(test_masks), test_labels, model, normalization="unit"
    )
    assert (table["scored"] == 0).all() and asked(table[share_columns]) == {"inconclusive"}
    assert {stats.verdict_kind(v) for v in verdicts["verdict"]} <= set(stats.VERDICTS)
    # No held-out image of a class: nothing selected, every question of it inconclusive, deletion included.
    plain = test_labels == 0
    table, _ = report.held_out_report(
        discovery, test_images[plain], test_masks[plain], test_labels[plain], model, normalization="unit"
    )
    square = table[table["class"] == 1]
    assert (square["selected"] == 0).all()
    assert asked(square[list(report.QUESTIONS.values())]) == {"inconclusive"}


# ---------------------------------------------------------------------------------------------------------------
# The confirmation: the same report on images of an unused generator seed


def street_model(size):
    """A random two-output model over ``size`` px images: one strided ReLU convolution, average pooling, dense
    ``region_logits`` and ``city_logits`` (SYNTH10's 2 regions and 10 cities)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(6, 4, strides=4, activation="relu")(inp))
    region = keras.layers.Dense(2, name="region_logits")(pooled)
    city = keras.layers.Dense(10, name="city_logits")(pooled)
    return keras.Model(inp, {"region": keras.layers.Softmax()(region), "city": keras.layers.Softmax()(city)})


@pytest.fixture(scope="module")
def street(tmp_path_factory):
    """The synthetic generator's dataset (seed 0, 3 images per class, 32 px), written and loaded as notebook 00
    does; a random model; its concepts found on every image (all of them 'training')."""
    root = synth.generate(tmp_path_factory.mktemp("data") / "synth-tiny", per_class=3, size=32, progress=False)
    data = load_dataset(root, size=32)
    model = street_model(32)
    settings = config.ConceptConfig(n_concepts=2, selection="labelled", resamples=50, deletion_repeats=1)
    discovery = discover.discover_sources(
        data.images, data.region, model, normalization="unit", config=settings, found_on="training images"
    )
    return data, model, discovery


def test_the_confirmation_scores_images_of_an_unused_generator_seed(street):
    data, model, discovery = street
    table, verdicts, fresh = report.confirmation_report(
        discovery, data, model, normalization="unit", seed=1, per_class=2
    )
    # Fresh images: the generator's own with seed 1, none of them among the dataset's (made with seed 0).
    drawn, masks = synth.make_synthetic(per_class=2, size=32, seed=1)
    np.testing.assert_array_equal(fresh.images, np.concatenate(list(drawn.values())))
    np.testing.assert_array_equal(fresh.masks, np.concatenate(list(masks.values())))
    assert not set(fresh.content_hashes()) & set(data.content_hashes())
    assert fresh.meta["seed"] == 1 and fresh.name == "synth-tiny-seed1" and fresh.synthetic
    np.testing.assert_array_equal(fresh.region, np.repeat([0, 1], 10))
    # The same report: every class and source, scored on the 10 fresh images of each region, in the stats words.
    assert list(table["source"]) == [*discover.SOURCES, *discover.SOURCES]
    assert (table["selected"] == 10).all() and set(table["scored_on"]) == {"confirmation images (generator seed 1)"}
    assert {stats.verdict_kind(v) for v in verdicts["verdict"]} <= set(stats.VERDICTS)
    # The concepts are the training images' ones: the discovery is not redone.
    assert table.set_index(["class", "source"]).loc[(0, "model"), "concept"] == discovery.concepts[0].order[0]


def test_the_confirmation_draws_the_task_its_dataset_was_made_for(tmp_path):
    root = synth.generate(tmp_path / "synth-layout", per_class=1, size=64, task="layout", progress=False)
    fresh = report.synthetic_confirmation(load_dataset(root, size=64), seed=1, per_class=1)
    drawn, _ = synth.make_synthetic(per_class=1, size=64, seed=1, task="layout", workers=1)
    np.testing.assert_array_equal(fresh.images, np.concatenate(list(drawn.values())))
    assert fresh.meta["task"] == "layout"


def test_the_confirmation_refuses_the_datasets_own_seed_and_other_data(street, toy_data):
    data, model, discovery = street
    with pytest.raises(ValueError, match="was made with generator seed 0, so those are its own images"):
        report.synthetic_confirmation(data, seed=0, per_class=2)
    with pytest.raises(ValueError, match="toy was not made by streetlib.data.synth"):
        report.synthetic_confirmation(toy_data, seed=1, per_class=2)


def test_classes_without_images_are_left_out(planted):
    images, _, labels, model = planted
    found = discover.discover_classes(
        images[labels == 1], model, normalization="unit", output="region", labels=labels[labels == 1], config=CONFIG
    )
    assert sorted(found) == [1]  # no image of class 0: nothing to find, and no error
    fig = plots.plot_class_concepts(images[labels == 1], found, names=["plain", "square"], title="planted: per class")
    assert isinstance(fig, Figure) and fig.axes[0].get_title(loc="left").startswith("square: #")
    with pytest.raises(ValueError, match="`found` is empty"):
        plots.plot_class_concepts(images, {}, names=["plain", "square"], title="t")


def test_photo_concepts_show_one_overlay_per_concept(planted, found):
    images, _, _, model = planted
    maps = score.concept_maps(images[:3], model, found, normalization="unit")
    fig = plots.plot_photo_concepts(
        images[:3], {"square": maps[..., found.order[0]]}, names=["a", "b", "c"], title="planted: pictures"
    )
    assert len(fig.axes) == 6 and fig.axes[0].get_title() == "a" and fig.axes[1].get_title().startswith("square: ")


def test_predictions_given_by_the_caller_select_the_images(planted, found):
    images, _, labels, model = planted
    # Predictions that call every image class 1: the 'predicted' selection takes them all, which the model's own
    # predictions (only the images with the square) would not.
    every = discover.discover_concepts(
        images,
        model,
        normalization="unit",
        output="region",
        target_class=1,
        config=config.ConceptConfig(n_concepts=3, selection="predicted", max_images=None),
        predicted=np.ones(len(images), np.int64),
    )
    np.testing.assert_array_equal(every.indices, np.arange(len(images)))
    with pytest.raises(ValueError, match=r"`predicted` must have shape \(40,\)"):
        discover.discover_concepts(
            images, model, normalization="unit", output="region", target_class=1, labels=labels, predicted=np.ones(3)
        )
