"""Tests of attribution.leaderboard and attribution.verdicts: every method scored per image by every registered metric,
then compared pair by pair with `streetlib.evaluation.stats` (intervals, paired verdicts, floors, sanity checks,
costs), and the table read into words."""

import inspect
import json

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import make_toy_data, toy_split
from test_attribution import convention_model

from streetlib.attribution import leaderboard as L
from streetlib.attribution import plots, verdicts
from streetlib.attribution.metrics import localization, sanity
from streetlib.attribution.metrics.registry import METRICS, Metric, of_family
from streetlib.evaluation import stats
from streetlib.runs import RunId, RunLayout
from streetlib.training import train
from streetlib.training.config import ExecutionConfig, RunConfig
from streetlib.training.manifest import data_hash

SIZE = 16
# The cue: the model reads only this square, so it is where a faithful map must point.
CUE = (slice(4, 12), slice(8, 16))  # on the 4 px grid of the occlusion patches below


def planted_model():
    """A flat two-output model whose class logits are weighted sums of the pixels of the cue square only, each class
    reading its own part of it (the two regions a half each, the four cities a quarter each), through a 1x1 identity
    convolution (the layer the CAM methods read)."""
    rng = np.random.default_rng(0)
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    conv = keras.layers.Conv2D(3, 1, use_bias=False, name="conv")
    flat = keras.layers.Flatten(name="flatten")(conv(inp))
    outputs, dense = {}, {}
    for output, n in (("region", 2), ("city", 4)):
        dense[output] = keras.layers.Dense(n, name=f"{output}_logits")
        outputs[output] = keras.layers.Activation("softmax", name=output)(dense[output](flat))
    model = keras.Model(inp, outputs)
    conv.set_weights([np.eye(3, dtype=np.float32)[None, None]])
    rows, cols = CUE
    for layer in dense.values():
        weights = np.zeros((SIZE, SIZE, 3, layer.units), np.float32)
        for k, part in enumerate(np.array_split(np.arange(rows.start, rows.stop), layer.units)):
            weights[part, cols, :, k] = rng.normal(size=(len(part), cols.stop - cols.start, 3))
        layer.set_weights([weights.reshape(-1, layer.units), np.zeros(layer.units, np.float32)])
    return model


def twin(model):
    """An independent copy of ``model`` with the same weights."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((12, SIZE, SIZE), np.uint8)
    masks[:, CUE[0], CUE[1]] = 1
    return images, masks, planted_model()


METHODS = ("saliency", "gradient_x_input", "grad_cam", "occlusion", "edge")


@pytest.fixture(scope="module")
def scores(planted):
    """Two seeds' scores: each seed's model (the same planted one) on its own six images."""
    images, masks, model = planted
    board_config = L.LeaderboardConfig(methods=METHODS, params={"occlusion": {"patch": 4, "stride": 4}}, curve_steps=4)
    return pd.concat(
        [
            L.score(
                images[s::2],
                masks[s::2],
                model,
                normalization="unit",
                config=board_config,
                permuted=twin(model),
                split_seed=s,
            )  # fmt: skip
            for s in (0, 1)
        ],
        ignore_index=True,
    )


@pytest.fixture(scope="module")
def table(scores):
    return L.leaderboard(scores, overlap=0.2)


def test_one_row_per_method_output_and_metric_with_the_two_floors(table, scores):
    assert list(table.columns) == list(L.COLUMNS) and list(scores.columns) == list(L.SCORE_COLUMNS)
    for output in ("region", "city"):
        rows = table[table["output"] == output]
        assert sorted(set(rows["method"])) == sorted([*METHODS, "random"])
        for method in METHODS:
            assert sorted(rows[rows["method"] == method]["metric"]) == sorted(METRICS)
        # The random map has no class to compare with and no cost; the edge map is a method like the others.
        floor = rows[rows["method"] == "random"]
        assert set(floor["metric"]) == {*of_family("localization"), *of_family("faithfulness")}
        assert floor["cost"].isna().all() and (floor["family"] == "floor").all()
        assert (rows.loc[rows["method"] == "edge", "family"] == "model-free").all()
    assert (table["low"] <= table["mean"] + 1e-9).all() and (table["mean"] <= table["high"] + 1e-9).all()
    assert (table[table["family"] != "floor"]["cost"] > 0).all()
    assert table[table["method"] == "grad_cam"]["layer"].eq("conv").all()
    assert table[table["method"] == "saliency"]["layer"].eq("").all()
    # Every row over both seeds and all twelve images (six each), and it says so.
    assert (table["seeds"] == 2).all() and (table["images"] == 12).all()
    assert set(table["interval"]) == {"Clopper-Pearson over images", "corrected t over seed means (overlap 0.200)"}
    assert json.loads(table[table["method"] == "occlusion"]["params"].iloc[0]) == {
        "patch": 4,
        "stride": 4,
        "baseline": 0.0,
        "batch_size": 64,
    }


def test_maps_of_a_model_that_reads_only_the_cue_land_on_the_cue(table, planted):
    _, masks, _ = planted
    mass = table[(table["metric"] == "relevance_mass_accuracy") & (table["output"] == "region")].set_index("method")
    # The logits depend on no pixel outside the cue: every gradient and occlusion drop outside it is exactly zero.
    for method in ("saliency", "gradient_x_input", "occlusion"):
        assert mass.loc[method, "mean"] == pytest.approx(1.0, abs=1e-6)
    # The random map spreads its mass evenly: the cue's area, within its interval.
    assert mass.loc["random", "low"] <= masks.mean() <= mass.loc["random", "high"]
    assert mass.loc["saliency", "chance"] == pytest.approx(masks.mean())
    auc = table[(table["metric"] == "mask_auc") & (table["method"] == "saliency")].set_index("output")["mean"]
    # The explained class reads a share s of the cue: those pixels beat every other pixel, the rest of the cue ties
    # with the zeros outside (ties count half), so the AUC is s + (1 - s) / 2.
    assert auc["region"] == pytest.approx(0.5 + 0.5 / 2) and auc["city"] == pytest.approx(0.25 + 0.75 / 2)


def test_methods_are_judged_by_paired_comparisons_in_one_family_per_output_and_metric(scores, table):
    # The verdicts are stats.family's over each output and metric, on per-seed means of paired differences with the
    # split overlap: recomputed here from the per-image scores, they are the table's.
    rows = scores[(scores["output"] == "region") & (scores["metric"] == "relevance_mass_accuracy")]
    per_seed = rows.groupby(["method", "seed"])["value"].mean().unstack("seed")
    assert per_seed.loc["saliency"].tolist() == pytest.approx([1.0, 1.0])
    found = L.comparisons(scores, overlap=0.2)
    family = found[(found["output"] == "region") & (found["metric"] == "relevance_mass_accuracy")]
    expected = stats.family(
        [
            stats.compare(per_seed.loc[b] - per_seed.loc[a], a=a, b=b, margin=0.05, overlap=0.2)
            for a, b in zip(family["a"], family["b"], strict=True)
        ]
    )
    np.testing.assert_allclose(family["p_holm"], expected["p_holm"])
    assert family["verdict"].tolist() == expected["verdict"].tolist()
    board = table[(table["output"] == "region") & (table["metric"] == "relevance_mass_accuracy")].set_index("method")
    best = board["vs_best"].eq("best")
    assert best.sum() == 1 and board.loc[best, "mean"].iloc[0] == board["mean"].max()
    # Saliency, gradient x input and occlusion all put every bit of mass on the cue: equivalent to the best; the
    # edge map and Grad-CAM (its 1x1 layer reads every pixel alike) are not better than the random map.
    for method in ("saliency", "gradient_x_input", "occlusion"):
        assert board.loc[method, "vs_best"] in ("best", "equivalent within ±0.05")
        assert board.loc[method, "vs_random"] == f"{method} higher"
        assert board.loc[method, "vs_edge"] == f"{method} higher"
    assert board.loc["edge", "vs_edge"] == "" and (board.loc["random", list(L.VERDICT_COLUMNS)] == "").all()
    # No interval-overlap rule is left: every verdict of the module comes from stats.family.
    source = inspect.getsource(L)
    assert "_separable" not in source and "intervals overlap" not in source


def test_with_one_seed_the_units_are_the_images(planted):
    images, masks, model = planted
    board_config = L.LeaderboardConfig(methods=("saliency", "edge"), outputs=("region",), curve_steps=2)
    one = L.score(images, masks, model, normalization="unit", config=board_config)
    table = L.leaderboard(one, overlap=0.2).set_index(["method", "metric"])
    assert table.loc[("saliency", "mask_auc"), "interval"] == "t over images"
    found = L.comparisons(one, overlap=0.2)
    assert (found["n"] == 12).all() and (found["overlap"] == 0).all()


def test_the_pointing_game_interval_is_exact():
    # Twelve hits out of twelve: the percentile bootstrap collapses to [1, 1]; Clopper-Pearson gives 0.735.
    hits = pd.DataFrame(
        {
            "seed": 0,
            "image": range(12),
            "method": "saliency",
            "family": "gradient",
            "output": "region",
            "layer": "",
            "metric": "pointing_game",
            "value": 1.0,
            "chance": 0.1,
            "cost": 1.0,
            "params": "{}",
        }
    )
    row = L.leaderboard(hits).iloc[0]
    assert (row["mean"], row["high"]) == (1.0, 1.0) and row["low"] == pytest.approx(0.7354, abs=1e-4)
    assert row["interval"] == "Clopper-Pearson over images"


def test_the_pointing_game_tolerance_scales_with_the_image_side(planted):
    assert [localization.scaled_tolerance(side) for side in (224, 64, 32)] == [15, 4, 2]
    images, masks, model = planted
    board_config = L.LeaderboardConfig(methods=("edge",), outputs=("region",), curve_steps=1)
    exact = L.LeaderboardConfig(methods=("edge",), outputs=("region",), curve_steps=1, pointing_tolerance=0)
    chance = {
        name: L.score(images, masks, model, normalization="unit", config=s)
        .query("metric == 'pointing_game'")["chance"]
        .mean()
        for name, s in (("scaled", board_config), ("exact", exact))
    }
    # 15 / 224 of 16 px is one pixel: the cue square, 8 x 8 on the image's right edge, widened by a pixel-radius
    # disk, gains one column (8 px) on its left and one row (8 px) above and below.
    assert chance["exact"] == pytest.approx(masks.mean())
    assert chance["scaled"] == pytest.approx((64 + 3 * 8) / 256)


def test_the_sanity_checks_tell_a_class_map_from_a_class_agnostic_one(table, planted):
    images, masks, model = planted
    rows = table[table["output"] == "city"].set_index(["method", "metric"])
    # Each city reads its own rows of the cue: the map of a random other class lies elsewhere, so it ranks the
    # pixels differently from the explained class's map.
    assert rows.loc[("gradient_x_input", "random_logit"), "mean"] < 0.5
    # Re-initialising every layer redraws the planted zeros too: the randomised model reads every pixel, so its map
    # no longer matches the trained one.
    assert rows.loc[("saliency", "randomization"), "mean"] < 0.5
    # The 'permuted' model of this fixture is a twin of the model: every map survives, a fail by construction.
    np.testing.assert_allclose(rows.xs("data_randomization", level="metric")["mean"], 1.0, atol=1e-6)
    checks = verdicts.sanity(table).set_index(["output", "method", "metric"])["check"]
    assert checks[("city", "saliency", "randomization")] == "passes"
    assert checks[("city", "saliency", "data_randomization")] == "fails"
    # The edge map is the same map for any class and model: it fails every check.
    assert (checks.xs("edge", level="method") == "fails").all()
    # Eigen-CAM ignores the class: its random-logit map is the same map.
    board_config = L.LeaderboardConfig(methods=("eigen_cam",), outputs=("city",), curve_steps=2)
    eigen = L.leaderboard(L.score(images, masks, model, normalization="unit", config=board_config))
    assert eigen.set_index(["method", "metric"]).loc[("eigen_cam", "random_logit"), "mean"] == pytest.approx(1.0)
    assert "data_randomization" not in set(eigen["metric"])  # no permuted-label model given: not scored


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """A transfer run on the toy data and its data-randomisation copy (three epochs each, 32 px, a small conv head)."""
    data = make_toy_data(per_class=12)
    split = toy_split(data)
    layout = RunLayout(**{f"{k}_dir": tmp_path_factory.mktemp(k) for k in ("hists", "models", "figs")})
    config = RunConfig.preset(
        "transfer", image_size=32, batch_size=16, epochs=3, cut="block1_pool", head="conv", filters=16,
        pooling="avgmax", augment=False, optimizer="adam", learning_rate=0.003, dropout=0.0,
    )  # fmt: skip
    run = RunId("03-pretrained", "toy-transfer", 0)
    real = train.run_phase(data, split, config, run=run, layout=layout, execution=ExecutionConfig(verbose=0))
    copy = sanity.data_randomized_copy(data, split, run, layout=layout, experiment="05-attribution")
    return data, split, layout, config, real.model, copy


def test_the_data_randomisation_check_tells_a_permuted_label_model_from_a_copy(toy_runs):
    data, split, layout, config, model, copy = toy_runs
    manifest = json.loads(layout.manifest(RunId("05-attribution", "toy-transfer-permuted-labels", 0)).read_text())
    # The same configuration, trained on the same images with their labels permuted.
    assert RunConfig.from_manifest(manifest["config"]) == config
    assert manifest["dataset"]["hash"] != data_hash(data)
    permuted = sanity.permuted_labels(data, seed=0)
    assert sorted(permuted.city) == sorted(data.city) and (permuted.city != data.city).mean() > 0.5
    board_config = L.LeaderboardConfig(methods=("grad_cam", "saliency"), outputs=("city",), curve_steps=1)
    images = data.images[np.r_[split.test, split.val]]

    def similarity(other):
        s = L.score(images, None, model, normalization=config.input_normalization, config=board_config, permuted=other)
        return s[s["metric"] == "data_randomization"].groupby("method")["value"].mean()

    # A copy of the model: every map is the same map. The permuted-label model's maps share little of the ranking
    # (Grad-CAM 0.21, saliency 0.15 after ten epochs; three here).
    np.testing.assert_allclose(similarity(twin(model)), 1.0, atol=1e-6)
    assert (similarity(copy) < 0.5).all()


def test_a_fine_tuned_run_s_copy_retrains_its_first_phase(toy_runs):
    data, split, layout, config, model, _ = toy_runs
    architecture = {f: getattr(config, f) for f in ("image_size", "cut", "head", "filters", "pooling", "dropout")}
    finetune = RunConfig.preset(
        "finetune", weights=config.weights, frozen_through=None, batch_size=16, epochs=1, augment=False, **architecture
    )
    run = RunId("04-finetune", "toy-finetune", 0)
    init = layout.model(RunId("03-pretrained", "toy-transfer", 0), "best")
    train.run_phase(data, split, finetune, run=run, init_from=init, layout=layout, execution=ExecutionConfig(verbose=0))
    origin, first = sanity.first_phase(run, layout=layout)
    assert origin == RunId("03-pretrained", "toy-transfer", 0) and first == config


def test_cam_methods_run_at_every_layer_asked():
    model = convention_model(32)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    masks = rng.random((3, 32, 32)) < 0.2
    board_config = L.LeaderboardConfig(
        methods=("grad_cam", "saliency"), outputs=("region",), layers=("block1_conv1", "block5_conv3"), curve_steps=2
    )
    table = L.leaderboard(L.score(images, masks, model, normalization="unit", config=board_config))
    assert set(table[table["method"] == "grad_cam"]["layer"]) == {"block1_conv1", "block5_conv3"}
    assert set(table[table["method"] == "saliency"]["layer"]) == {""}
    # Several layers: the verdicts name each row with its layer; a method without one is named alone.
    found = L.comparisons(L.score(images, masks, model, normalization="unit", config=board_config))
    assert {"grad_cam @block1_conv1", "grad_cam @block5_conv3", "saliency"} <= set(found["b"])


def test_the_costly_measurements_can_use_fewer_images(planted):
    images, masks, model = planted
    board_config = L.LeaderboardConfig(methods=("saliency",), outputs=("region",), curve_steps=2, control_images=5)
    table = L.leaderboard(L.score(images, masks, model, normalization="unit", config=board_config))
    table = table.set_index(["method", "metric"])
    for metric in ("deletion_auc", "insertion_auc", "random_logit", "randomization"):
        assert table.loc[("saliency", metric), "images"] == 5
    assert table.loc[("saliency", "pointing_game"), "images"] == 12


def test_a_costly_method_can_explain_fewer_images_and_says_so(planted):
    images, masks, model = planted
    masks = masks.copy()
    masks[:4, :, :8] = 1  # the first images have larger masks, so their chance level differs from the rest's
    board_config = L.LeaderboardConfig(
        methods=("saliency", "occlusion"),
        outputs=("region",),
        params={"occlusion": {"patch": 4, "stride": 4}},
        images={"occlusion": 4},
        control_images=3,
        curve_steps=2,
    )
    table = L.leaderboard(L.score(images, masks, model, normalization="unit", config=board_config))
    rows = table.set_index(["method", "metric"])
    assert rows.loc[("occlusion", "pointing_game"), "images"] == 4
    assert rows.loc[("occlusion", "randomization"), "images"] == 3
    assert rows.loc[("saliency", "pointing_game"), "images"] == 12
    assert rows.loc[("occlusion", "mask_auc"), "chance"] == pytest.approx(0.5)
    assert rows.loc[("occlusion", "relevance_mass_accuracy"), "chance"] == pytest.approx(masks[:4].mean())
    assert rows.loc[("saliency", "relevance_mass_accuracy"), "chance"] == pytest.approx(masks.mean())
    fig = plots.plot_leaderboard(table, output="region")
    assert "occlusion (n=4)" in [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]


def _rows(method, metric, mean, *, family="gradient", layer="", images=10, **verdicts):
    return {
        "method": method,
        "family": family,
        "output": "region",
        "layer": layer,
        "metric": metric,
        "mean": mean,
        "low": mean - 0.05,
        "high": mean + 0.05,
        "interval": "corrected t over seed means (overlap 0.150)",
        "chance": 0.1,
        "images": images,
        "seeds": 8,
        "cost": 1.0,
        "params": "{}",
        "margin": 0.05 if metric not in of_family("sanity") else 0.1,
        "threshold": 0.5 if metric in of_family("sanity") else np.nan,
        **dict.fromkeys(L.VERDICT_COLUMNS, ""),
        **verdicts,
    }


def test_findings_word_the_verdicts_and_survive_a_csv_round_trip(tmp_path):
    metric = "relevance_mass_accuracy"
    table = pd.DataFrame(
        [
            _rows("a", metric, 0.6, vs_best="best", vs_random="a higher", vs_edge="a higher", layer="conv"),
            _rows("b", metric, 0.55, vs_best="equivalent within ±0.05", vs_random="b higher", vs_edge="inconclusive"),
            _rows("c", metric, 0.4, vs_best="inconclusive", vs_random="c higher", vs_edge="c higher"),
            _rows("d", metric, 0.2, vs_best="a higher", vs_random="inconclusive", vs_edge="edge higher"),
            _rows("edge", metric, 0.3, vs_best="a higher", vs_random="edge higher", family="model-free"),
            _rows("random", metric, 0.1, family="floor"),
            _rows("a", "randomization", 0.1, vs_threshold="rank correlation 0.5 higher", layer="conv"),
            _rows("b", "randomization", 0.9, vs_threshold="b higher"),
            _rows("a", "random_logit", 0.45, vs_threshold="equivalent within ±0.1", layer="conv"),
        ]
    )
    table.to_csv(tmp_path / "leaderboard.csv", index=False)
    read = pd.read_csv(tmp_path / "leaderboard.csv")  # empty layers and verdicts come back as NaN
    assert read["layer"].isna().any()
    lines = verdicts.findings(read)
    assert lines[0].startswith("Finds the cues best (relevance_mass_accuracy, region output): a 0.60 [0.55, 0.65]")
    assert "(corrected t over seed means (overlap 0.150), 8 seeds, 10 images; higher is better)" in lines[0]
    assert "equivalent to it within ±0.05: b 0.55 [0.50, 0.60]; not resolved from it: c 0.40 [0.35, 0.45]." in lines[0]
    assert "@nan" not in " ".join(lines)
    assert lines[1] == "Not shown better than the random map (random): d."
    assert lines[2] == "Not shown better than the edge map (edge): b, d."
    # The sanity checks in the registry's order: random_logit, randomization (data_randomization has no rows).
    assert lines[3].startswith("random_logit check") and lines[3].endswith("passes: none; fails: none; unclear: a.")
    assert lines[4].startswith("randomization check (rank correlation with the map of the model with every layer")
    assert lines[4].endswith("shown below 0.5) - passes: a; fails: b; unclear: none.")
    ranked = verdicts.ranking(read, output="region", metric=metric)
    assert list(ranked["method"]) == ["a", "b", "c", "edge", "d"]
    assert {"method", "layer", "mean", "low", "high", "images", "cost", "vs_best", "vs_random"} <= set(ranked)
    # Lower is better for deletion: the smallest area ranks first, and 'edge higher' means the edge map is worse.
    deletion = pd.DataFrame(
        [
            _rows("a", "deletion_auc", 0.5, vs_best="b higher"),
            _rows("b", "deletion_auc", 0.2, vs_best="best", vs_edge="edge higher"),
            _rows("edge", "deletion_auc", 0.6, family="model-free"),
        ]
    )
    assert list(verdicts.ranking(deletion, metric="deletion_auc")["method"]) == ["b", "a", "edge"]
    assert verdicts.findings(deletion, metric="deletion_auc")[-1] == "Not shown better than the edge map (edge): a."
    with pytest.raises(ValueError, match="Invalid `metric`"):
        verdicts.ranking(table, metric="accuracy")
    with pytest.raises(ValueError, match="no 'mask_auc' rows"):
        verdicts.ranking(table, metric="mask_auc")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"methods": ("lime",)}, "Invalid `methods`"),
        ({"methods": "saliency"}, "Invalid `methods`"),
        ({"outputs": ("country",)}, "Invalid `outputs`"),
        ({"layers": "conv"}, "Invalid `layers`"),
        ({"methods": ("rise",), "params": {"rise": {"mask": 10}}}, r"Invalid `params` for 'rise'"),
        ({"methods": ("rise",), "params": {"lime": {}}}, r"Invalid `params`. Expected a dict with keys among"),
        ({"methods": ("saliency",), "params": {"rise": {}}}, r"Invalid `params` for 'rise'"),
        ({"curve_steps": 0}, "Invalid `curve_steps`"),
        ({"control_images": 0}, "Invalid `control_images`"),
        ({"methods": ("rise",), "images": {"rise": 0}}, r"Invalid `images` for 'rise'"),
        ({"methods": ("rise",), "images": {"saliency": 4}}, r"Invalid `images` for 'saliency'"),
        ({"images": {"lime": 4}}, r"Invalid `images`. Expected a dict with keys among"),
        ({"pointing_tolerance": 1.5}, "Invalid `pointing_tolerance`"),
        ({"metrics": ("energy_pointing_game",)}, "Invalid `metrics`"),
        ({"metrics": ()}, "Invalid `metrics`"),
        ({"metrics": "mask_auc"}, "Invalid `metrics`"),
    ],
)
def test_a_bad_configuration_is_refused_when_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.LeaderboardConfig(**kwargs)


def test_bad_inputs_are_refused(planted, scores):
    images, masks, model = planted
    with pytest.raises(ValueError, match="`masks` must have shape"):
        L.score(images, masks[:, :8], model, normalization="unit")
    with pytest.raises(ValueError, match=r"Invalid `scores`: columns \['value'\] are missing"):
        L.leaderboard(scores.drop(columns="value"))
    with pytest.raises(ValueError, match="Invalid `margins`"):
        L.leaderboard(scores, margins={"localisation": 0.05})
    with pytest.raises(ValueError, match="Invalid `overlap`"):
        L.comparisons(scores, overlap=-0.1)


def test_randomized_copy_changes_every_layer_of_the_output_and_not_the_model(planted):
    _, _, model = planted
    before = [w.copy() for w in model.get_weights()]
    clone = sanity.randomized_copy(model, output="region", seed=0)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    changed = {
        layer.name
        for layer in clone.layers
        if any(
            not np.array_equal(w, model.get_layer(layer.name).get_weights()[i])
            for i, w in enumerate(layer.get_weights())
        )
    }
    assert changed == {"conv", "region_logits"}


def test_the_figure_ranks_methods_best_first_in_each_panel(table):
    fig = plots.plot_leaderboard(table, output="region", title="planted model")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(METRICS)
    assert "2 seed(s)" in fig.get_suptitle() and "corrected t over seed means" in fig.get_suptitle()
    rows = table[(table["output"] == "region") & (table["family"] != "floor")]
    for ax in panels:
        metric = ax.get_title().split(" (")[0]
        means = rows[rows["metric"] == metric].set_index("method")["mean"]
        shown = [t.get_text() for t in ax.get_yticklabels()]  # top to bottom: best first
        ordered = [means[m] for m in shown]
        assert ordered == sorted(ordered, reverse=METRICS[metric].higher_is_better)


def test_methods_that_draw_random_numbers_take_the_spec_seed_and_repeat(planted):
    # SmoothGrad's noise and RISE's masks come from the configuration's seed unless its params give one: the same scores
    # twice (same draws on the same model and inputs; the maps then differ only by float roundoff of one
    # computation repeated, and the metrics, ranks and sums of them, by less than 1e-6), and another seed gives
    # other maps.
    images, masks, model = planted
    kwargs = dict(
        methods=("smoothgrad", "rise"),
        outputs=("region",),
        params={"smoothgrad": {"samples": 3}, "rise": {"masks": 20, "cells": 4}},
        curve_steps=2,
        control_images=4,
    )

    def run(seed):
        board_config = L.LeaderboardConfig(**kwargs, seed=seed)
        return L.score(images, masks, model, normalization="unit", config=board_config)

    first, again, other = run(0), run(0), run(1)
    np.testing.assert_allclose(first["value"], again["value"], rtol=0, atol=1e-6)
    for method in ("smoothgrad", "rise"):
        assert json.loads(first.loc[first["method"] == method, "params"].iloc[0])["seed"] == 0
    rows = first["metric"].isin(["relevance_mass_accuracy", "mask_auc"]) & (first["method"] != "random")
    assert np.abs(first.loc[rows, "value"].to_numpy() - other.loc[rows, "value"].to_numpy()).max() > 1e-4
    # A seed in the params wins over the configuration's.
    board_config = L.LeaderboardConfig(
        **{**kwargs, "params": {**kwargs["params"], "rise": {"masks": 20, "cells": 4, "seed": 7}}}
    )
    table = L.score(images, masks, model, normalization="unit", config=board_config)
    assert json.loads(table.loc[table["method"] == "rise", "params"].iloc[0])["seed"] == 7


def test_rise_does_not_fail_the_randomisation_check_by_construction(planted):
    # With the paper's divisor (masks * p) every RISE map carried the masks' own coverage, the same for any model,
    # so the maps of the trained and the re-initialised model agreed whatever the model read. Dividing by each
    # pixel's coverage removes it: the planted model reads only the cue, its re-initialised copy every pixel, and
    # with few masks their RISE maps share little of their ranking.
    images, masks, model = planted
    board_config = L.LeaderboardConfig(
        methods=("rise",), outputs=("region",), params={"rise": {"masks": 50, "cells": 4}}, curve_steps=1
    )
    table = L.leaderboard(L.score(images, masks, model, normalization="unit", config=board_config))
    assert table.set_index(["method", "metric"]).loc[("rise", "randomization"), "mean"] < 0.5


def test_without_cue_masks_everything_but_localisation_is_scored(planted):
    # Street10 or a user's photographs: no ground truth for where the cues are, but faithfulness, the sanity checks
    # and the cost need none.
    images, masks, model = planted
    board_config = L.LeaderboardConfig(methods=("saliency", "grad_cam"), curve_steps=4)
    table = L.leaderboard(L.score(images, None, model, normalization="unit", config=board_config))
    with_masks = L.leaderboard(L.score(images, masks, model, normalization="unit", config=board_config))
    assert not verdicts.has_ground_truth(table) and verdicts.has_ground_truth(with_masks)
    assert set(table["metric"]) == set(METRICS) - set(of_family("localization")) - {"data_randomization"}
    # What needs no mask is the same number with or without masks (the same maps, curves and controls).
    keys = ["method", "output", "metric"]
    merged = table.merge(with_masks, on=keys, suffixes=("", "_masks"))
    assert len(merged) == len(table)
    np.testing.assert_array_equal(merged["mean"], merged["mean_masks"])
    assert table.loc[table["family"] != "floor", "cost"].gt(0).all()
    lines = verdicts.findings(table, output="region")
    assert lines[0].startswith("Localisation (pointing_game, relevance_mass_accuracy") and "no ground truth" in lines[0]
    assert lines[1].startswith("Best (insertion_auc, region output):")
    with pytest.raises(ValueError, match="scored without cue masks \\(no ground truth\\)"):
        verdicts.ranking(table, metric="pointing_game")
    fig = plots.plot_leaderboard(table, output="region")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == len(set(table["metric"]))


def test_a_registered_metric_is_scored_judged_ranked_and_drawn(planted, monkeypatch):
    # Adding a metric is one function and one registry entry: the leaderboard then scores it per image with its
    # chance level, judges it with the others of its family, ranks it and draws its panel.
    def cue_peak(maps, masks):
        """The map's largest value on the cue: float `(n,)` in [0, 1]."""
        return (maps * (masks > 0)).max(axis=(1, 2))

    toy = Metric(
        "cue_peak", cue_peak, direction="higher", family="localization", chance=0.0, description="the peak on the cue"
    )
    monkeypatch.setitem(METRICS, "cue_peak", toy)
    images, masks, model = planted
    board_config = L.LeaderboardConfig(methods=("saliency", "edge"), outputs=("region",), curve_steps=1)
    scores = L.score(images, masks, model, normalization="unit", config=board_config)
    rows = scores[scores["metric"] == "cue_peak"]
    assert set(rows["method"]) == {"saliency", "edge", "random"} and len(rows) == 3 * len(images)
    assert (rows["chance"] == 0.0).all()
    table = L.leaderboard(scores)
    peak = table[table["metric"] == "cue_peak"].set_index("method")
    assert peak.loc["saliency", "mean"] == pytest.approx(1.0)  # the saliency maps are normalised, peaking on the cue
    assert peak.loc["saliency", "margin"] == L.MARGINS["localization"] and peak["vs_best"].eq("best").sum() == 1
    assert list(verdicts.ranking(table, metric="cue_peak")["method"])[0] == "saliency"
    fig = plots.plot_leaderboard(table, output="region")
    assert "cue_peak (higher is better)" in [ax.get_title() for ax in fig.axes]


def test_the_configuration_chooses_the_metrics(planted):
    # Only the metrics asked for are scored (the by-layer table of notebook 05 asks for localisation alone), with
    # the same values as when every metric is scored.
    images, masks, model = planted
    kwargs = dict(methods=("grad_cam",), outputs=("region",), curve_steps=1)
    chosen = ("mask_auc", "pointing_game")
    some = L.score(images, masks, model, normalization="unit", config=L.LeaderboardConfig(**kwargs, metrics=chosen))
    every = L.score(images, masks, model, normalization="unit", config=L.LeaderboardConfig(**kwargs))
    assert list(dict.fromkeys(some["metric"])) == ["pointing_game", "mask_auc"]  # in the registry's order
    pd.testing.assert_frame_equal(
        some.drop(columns="cost").reset_index(drop=True),
        every[every["metric"].isin(chosen)].drop(columns="cost").reset_index(drop=True),
    )
    nothing = L.LeaderboardConfig(**kwargs, metrics=("data_randomization",))
    with pytest.raises(ValueError, match="Nothing to score: none of the metrics \\['data_randomization'\\]"):
        L.score(images, masks, model, normalization="unit", config=nothing)


def _layer_table(**pointing):
    return pd.DataFrame(
        {
            "layer": [*pointing, "random"],
            "grid": ["4x4"] * len(pointing) + [""],
            "pointing_game": [*pointing.values(), 0.9],
        }
    )


def test_the_grad_cam_layer_is_the_one_that_points_into_the_cues_most_often():
    # The random map's row never wins, however high; of tied layers the first listed (the compared layers come last
    # convolution first) is taken; a layer without a score is passed over.
    assert L.best_layer(_layer_table(head_conv2=0.46, head_conv1=0.75, block3_conv3=0.68)) == "head_conv1"
    assert L.best_layer(_layer_table(head_conv2=0.5, head_conv1=0.5)) == "head_conv2"
    assert L.best_layer(_layer_table(head_conv2=np.nan, head_conv1=0.2)) == "head_conv1"
    with pytest.raises(ValueError, match="scores no layer"):
        L.best_layer(_layer_table(head_conv2=np.nan))
    with pytest.raises(ValueError, match="mask_auc"):
        L.best_layer(_layer_table(head_conv2=0.5), metric="mask_auc")


def test_notebook_05_s_layer_parameter_names_a_layer_the_last_convolution_or_the_validation_choice():
    table = _layer_table(head_conv2=0.46, head_conv1=0.75)
    assert L.chosen_layer("", table) is None
    assert L.chosen_layer("block3_conv3", table) == "block3_conv3"
    assert L.chosen_layer(L.CHOSEN_ON_VALIDATION, table) == "head_conv1"
    # Street10 and photographs have no cue masks, so no table: the choice cannot be made, and nothing is guessed.
    with pytest.raises(ValueError, match="no cue masks.*name a layer"):
        L.chosen_layer(L.CHOSEN_ON_VALIDATION, None)


def test_localization_by_layer_scores_grad_cam_at_each_layer_asked_beside_the_random_map():
    model = convention_model(32)
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((4, 32, 32), np.uint8)
    masks[:, 8:16, 8:24] = 1
    table = L.localization_by_layer(
        images, masks, model, normalization="unit", layers=["block5_conv3", "block1_conv1"], pointing_tolerance=0.0
    )
    assert table["layer"].tolist() == ["block5_conv3", "block1_conv1", "random"]
    assert table["grid"].tolist() == ["16x16", "32x32", ""]  # the tiny backbone pools once, after block1
    assert set(of_family("localization")) <= set(table.columns)
    assert (table["images"] == 4).all()
    # The chance level is the masks' share of the image, whatever the layer: 8 x 16 of 32 x 32 pixels.
    assert np.allclose(table["relevance_mass_accuracy_chance"], 128 / 1024)
    assert L.best_layer(table) in {"block5_conv3", "block1_conv1"}
