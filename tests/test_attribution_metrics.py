"""Tests of streetlib.attribution.metrics: the pointing games, deletion/insertion, the randomisation check (with
cross-checks against Quantus where it is installed), dataset-level street features and quadrants."""

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from test_attribution import convention_model, random_inputs  # noqa: E402

from streetlib.attribution import methods as A  # noqa: E402
from streetlib.attribution import metrics as M  # noqa: E402
from streetlib.classes import STREET10, ClassSpec  # noqa: E402


def masks_and_maps():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[:, :2, :2] = 1  # the top-left quarter is the cue
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 0, 1] = 1.0  # max on the cue
    maps[1, 3, 3] = 1.0  # max off the cue
    maps[1, 0, 0] = 0.5
    return masks, maps  # maps[2] is all zero


# ---------------------------------------------------------------------------------------------------------------
# Pointing games


def test_pointing_game_by_hand():
    masks, maps = masks_and_maps()
    # A hit, a miss, and the constant map scoring its chance level (4 of 16 pixels).
    np.testing.assert_allclose(M.pointing_game(maps, masks), [1.0, 0.0, 0.25])
    masks[2] = 0
    assert np.isnan(M.pointing_game(maps, masks)[2])


def test_pointing_game_tolerance_widens_the_mask():
    masks = np.zeros((1, 9, 9), np.uint8)
    masks[0, 4, 4] = 1
    maps = np.zeros((1, 9, 9), np.float32)
    maps[0, 4, 6] = 1.0  # two pixels right of the cue
    assert M.pointing_game(maps, masks, tolerance=1)[0] == 0.0
    assert M.pointing_game(maps, masks, tolerance=2)[0] == 1.0
    with pytest.raises(ValueError, match="Invalid `tolerance`"):
        M.pointing_game(maps, masks, tolerance=-1)


def test_energy_pointing_game_by_hand():
    masks, maps = masks_and_maps()
    # 1 of 1 on the cue; 0.5 of 1.5; the all-zero map counts as uniform: 4/16.
    np.testing.assert_allclose(M.energy_pointing_game(maps, masks), [1.0, 1 / 3, 0.25], rtol=1e-6)
    masks[0] = 0
    assert np.isnan(M.energy_pointing_game(maps, masks)[0])


def test_maps_are_validated():
    masks, maps = masks_and_maps()
    with pytest.raises(ValueError, match="must be finite and non-negative"):
        M.pointing_game(maps - 1, masks)
    with pytest.raises(ValueError, match=r"`masks` must match `maps`: expected shape \(3, 4, 4\)"):
        M.energy_pointing_game(maps, masks[:2])
    with pytest.raises(ValueError, match=r"`maps` must have shape \(n, H, W\)"):
        M.pointing_game(maps[0], masks[0])


def test_localization_table_ranks_a_perfect_map_above_the_random_floor():
    rng = np.random.default_rng(0)
    masks = (rng.random((40, 16, 16)) < 0.2).astype(np.uint8)
    table = M.localization_table({"oracle": masks.astype(np.float32) + 0.01 * rng.random((40, 16, 16))}, masks)
    assert list(table["method"]) == ["oracle", "random"]
    oracle, floor = table.iloc[0], table.iloc[1]
    assert oracle["pointing_game"] == 1.0 and oracle["energy_pointing_game"] > 0.9
    assert abs(floor["energy_pointing_game"] - floor["chance"]) < 0.02
    assert floor["pointing_game"] < 0.5 and floor["images"] == 40
    with pytest.raises(ValueError, match="`maps` is empty"):
        M.localization_table({}, masks)


def test_pointing_game_agrees_with_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(1)
    maps = rng.random((20, 16, 16)).astype(np.float32)  # continuous: a unique maximum, as Quantus assumes
    masks = (rng.random((20, 16, 16)) < 0.3).astype(np.uint8)
    theirs = quantus.PointingGame(disable_warnings=True, normalise=False, abs=False)(
        model=None,
        x_batch=np.zeros((20, 1, 16, 16), np.float32),
        y_batch=np.zeros(20, int),
        a_batch=maps[:, None],
        s_batch=masks[:, None],
        channel_first=True,
    )
    ours = M.pointing_game(maps, masks)
    assert 0 < ours.mean() < 1
    np.testing.assert_array_equal(ours, np.asarray(theirs, dtype=np.float32))


# ---------------------------------------------------------------------------------------------------------------
# Deletion and insertion


def checker_model():
    """City logit 0 = 4 x the mean ReLU'd response of a 2x2 checkerboard filter over the left half of the image
    (about 4 on a sharp checkerboard, about 0 on grey or blurred pixels); logit 1 = 2."""
    inp = keras.Input((16, 16, 3), name="image")
    conv = keras.layers.Conv2D(1, 2, use_bias=False, activation="relu", name="conv")
    dense = keras.layers.Dense(2, name="city_logits")
    logits = dense(keras.layers.Flatten()(conv(inp)))
    model = keras.Model(inp, keras.layers.Activation("softmax", name="city")(logits))
    checker = np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32)
    conv.set_weights([np.repeat(checker[:, :, None, None] / 3, 3, axis=2)])
    kernel = np.zeros((15, 15, 2), np.float32)
    kernel[:, :7, 0] = 4.0 / (15 * 7)  # responses that lie wholly in the left half (columns 0-7)
    dense.set_weights([kernel.reshape(225, 2), np.array([0.0, 2.0], np.float32)])
    return model


def test_deletion_and_insertion_reward_the_faithful_map():
    image = np.full((1, 16, 16, 3), 128, np.uint8)
    rows, cols = np.indices((16, 8))
    image[0, :, :8] = (255 * ((rows + cols) % 2 == 0))[..., None]  # a sharp checkerboard on the left
    good = np.zeros((1, 16, 16), np.float32)
    good[:, :, :8] = 1.0
    bad = 1.0 - good
    model = checker_model()
    kw = dict(output="city", target=np.array([0]), normalization="unit", steps=8)
    g = M.perturbation_curves(image, good, model, **kw)
    b = M.perturbation_curves(image, bad, model, **kw)
    assert g["deletion"].shape == (1, 9) and g["fractions"][[0, -1]].tolist() == [0.0, 1.0]
    intact = model(image / 255.0).numpy()[0, 0]
    assert intact > 0.85
    np.testing.assert_allclose([g["deletion"][0, 0], g["insertion"][0, -1]], [intact, intact], rtol=1e-5)
    # Removing the checkerboard first kills the score at once; adding it first restores it at once.
    assert g["deletion_auc"][0] < b["deletion_auc"][0] - 0.2
    assert g["insertion_auc"][0] > b["insertion_auc"][0] + 0.2
    with pytest.raises(ValueError, match="`target` must have shape"):
        M.perturbation_curves(image, good, model, **{**kw, "target": np.array([0, 1])})
    with pytest.raises(ValueError, match="Invalid `steps`"):
        M.perturbation_curves(image, good, model, **{**kw, "steps": 0})
    with pytest.raises(ValueError, match=r"`maps` must have shape \(1, 16, 16\) to match `images`"):
        M.perturbation_curves(image, good[:, :4], model, **kw)
    with pytest.raises(ValueError, match="`images` must be uint8"):
        M.perturbation_curves(image.astype(np.float32), good, model, **kw)


# ---------------------------------------------------------------------------------------------------------------
# Randomisation check


def test_rank_correlation_matches_scipy_and_handles_constant_maps():
    rng = np.random.default_rng(0)
    a = rng.random((3, 5, 5))
    a[2] = np.round(a[2], 1)  # ties
    b = rng.random((3, 5, 5))
    expected = [stats.spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(3)]
    np.testing.assert_allclose(M.rank_correlation(a, b), expected, atol=1e-6)
    np.testing.assert_allclose(M.rank_correlation(a, a), 1.0, atol=1e-6)
    np.testing.assert_allclose(M.rank_correlation(a, -a), -1.0, atol=1e-6)
    assert M.rank_correlation(a[:1], np.zeros((1, 5, 5)))[0] == 0.0
    with pytest.raises(ValueError, match="must have the same shape"):
        M.rank_correlation(a, b[:2])


def test_randomization_layers_go_from_the_output_down_through_the_backbone():
    model = convention_model(32)
    assert M.randomization_layers(model, output="city") == ["city_logits", "fc2", "fc1", "block5_conv3", "block1_conv1"]
    assert "region_logits" in M.randomization_layers(model)


def test_randomization_check_randomises_a_copy_only():
    model = convention_model(32)
    weights = [w.copy() for w in model.get_weights()]
    x = random_inputs(4, 32)
    result = M.randomization_check(x, model, output="city", seed=0)
    assert result["layers"] == M.randomization_layers(model, output="city")
    for method in A.METHODS:
        corr = result["spearman"][method]
        assert corr.shape == (5, 4) and np.all(np.abs(corr) <= 1)
    # With only the top layer randomised, Grad-CAM changes; Guided Backprop hardly does: it fails the check.
    assert result["spearman"]["grad_cam"][0].mean() < 0.5
    assert result["spearman"]["guided_backprop"][0].mean() > 0.9
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="Invalid `methods`"):
        M.randomization_check(x, model, methods=("lime",))


def small_flat_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inp)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="city_logits")(h))


def test_randomisation_correlations_agree_with_quantus_mprt_on_the_same_maps():
    quantus = pytest.importorskip("quantus")
    model = small_flat_model()
    x = random_inputs(6, 16, seed=2)
    y = np.array([0, 1, 2, 0, 1, 2])
    seen = []

    def explain_func(model, inputs, targets, **kwargs):
        # Quantus works channels-first inside and hands some calls channels-first inputs.
        inputs = np.moveaxis(inputs, 1, -1) if inputs.shape[1] == 3 else inputs
        maps = A.grad_cam(inputs, model, output="city_logits", target=np.asarray(targets))
        seen.append(maps)
        return maps[:, None]

    theirs = quantus.MPRT(disable_warnings=True, abs=False, normalise=False, return_average_correlation=False)(
        model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=explain_func, channel_first=False
    )
    # Quantus randomises the same layers in the same order (it permutes weights, we redraw them).
    assert list(theirs)[1:] == M.randomization_layers(model)
    original, randomised = seen[1], seen[2:]
    for layer, maps in zip(list(theirs)[1:], randomised, strict=True):
        expected = np.asarray(theirs[layer], dtype=np.float64)
        defined = np.isfinite(expected)  # scipy gives NaN for a constant map, where we give 0
        assert defined.sum() >= 3
        np.testing.assert_allclose(M.rank_correlation(original, maps)[defined], expected[defined], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Beyond one image


def test_street_features_by_hand():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    images[:, :4, 4:] = 200  # a bright top-right corner
    cams = np.zeros((4, 8, 8), np.float32)
    cams[:, :4, 4:] = [[1.0]], [[0.5]], [[0.8]], [[1.0]]
    labels = np.array([0, 0, 1, 1])
    predicted = np.array([0, 0, 1, 0])  # image 3 is misclassified
    f = M.street_features(images, cams, labels, predicted, num_classes=3, patch_size=4, top=8)
    np.testing.assert_array_equal(f["counts"], [2, 1, 0])
    np.testing.assert_allclose(f["mean_cams"][0], (cams[0] + cams[1]) / 2)
    np.testing.assert_array_equal(f["mean_cams"][2], 0.0)
    assert f["patches"][0].shape == (2, 4, 4, 3) and (f["patches"][0] == 200).all()
    np.testing.assert_array_equal(f["patch_info"][0]["index"], [0, 1])  # best first
    np.testing.assert_array_equal(f["patch_info"][0]["yx"], [[0, 4], [0, 4]])
    np.testing.assert_allclose(f["patch_info"][0]["score"], [1.0, 0.5])
    assert f["patches"][2].shape == (0, 4, 4, 3)
    spec = ClassSpec.from_dict({"name": "three", "regions": {"west": ["a", "b"], "east": ["c"]}})
    gallery = A.plot_patch_gallery(f["patches"], spec=spec)
    assert [ax.get_title(loc="left") for ax in gallery.axes[::2]] == ["a", "b", "c"]
    assert len(gallery.axes[0].images) == 1 and len(gallery.axes[2].images) == 1 and not gallery.axes[4].images
    means = A.plot_mean_cams(f["mean_cams"], f["counts"], spec=spec)
    assert [ax.get_title() for ax in means.axes] == ["a (n=2)", "b (n=1)", "c (n=0)"]
    with pytest.raises(ValueError, match="one entry per class of 'street10'"):
        A.plot_mean_cams(f["mean_cams"], f["counts"], spec=STREET10)
    with pytest.raises(ValueError, match="`patches` needs one entry per class"):
        A.plot_patch_gallery(f["patches"], spec=STREET10)
    with pytest.raises(ValueError, match="Invalid `patch_size`"):
        M.street_features(images, cams, labels, predicted, num_classes=3, patch_size=9)
    with pytest.raises(ValueError, match="must match `images`"):
        M.street_features(images, cams, labels[:3], predicted, num_classes=3)


def test_quadrants_are_cut_in_reading_order_and_explained():
    image = np.zeros((40, 60, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    image[:20, :30], image[:20, 30:], image[20:, :30], image[20:, 30:] = colours
    quads = M.quadrant_images(image, size=16)
    assert quads.shape == (4, 16, 16, 3)
    for q, colour in zip(quads, colours, strict=True):
        np.testing.assert_array_equal(q[8, 8], colour)
    with pytest.raises(ValueError, match="must be uint8 RGB"):
        M.quadrant_images(image[:1], size=16)
    model = convention_model(32)
    quads, ex = M.explain_quadrants(image, model, normalization="samplewise")
    assert quads.shape == (4, 32, 32, 3)
    assert ex["city"].cam.shape == (4, 32, 32) and ex["city"].guided is None
    fig = A.plot_quadrants(quads, ex["city"], spec=STREET10)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["top left", "top right", "bottom left", "bottom right"]
    assert titles[4].startswith(STREET10.classes[ex["city"].target[0]] + " ")
    np.testing.assert_allclose(
        ex["city"].logits, A.explainer(model).logits(A.model_inputs(quads, normalization="samplewise")), atol=1e-5
    )
