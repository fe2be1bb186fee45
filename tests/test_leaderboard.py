"""Tests of attribution.leaderboard: every method scored against cue masks, with intervals, controls and costs."""

import json

import keras
import numpy as np
import pandas as pd
import pytest
from test_attribution import convention_model

from streetlib.attribution import leaderboard as L
from streetlib.attribution import metrics

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


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((12, SIZE, SIZE), np.uint8)
    masks[:, CUE[0], CUE[1]] = 1
    return images, masks, planted_model()


@pytest.fixture(scope="module")
def table(planted):
    images, masks, model = planted
    spec = L.LeaderboardSpec(
        methods=("saliency", "gradient_x_input", "grad_cam", "occlusion"),
        params={"occlusion": {"patch": 4, "stride": 4}},
        curve_steps=4,
        resamples=200,
    )
    return L.leaderboard(images, masks, model, normalization="unit", spec=spec)


def test_one_row_per_method_output_and_metric_with_the_floor(table):
    assert list(table.columns) == list(L.COLUMNS)
    methods = ["saliency", "gradient_x_input", "grad_cam", "occlusion"]
    for output in ("region", "city"):
        rows = table[table["output"] == output]
        assert sorted(set(rows["method"])) == sorted([*methods, "random"])
        for method in methods:
            assert sorted(rows[rows["method"] == method]["metric"]) == sorted(L.HIGHER_IS_BETTER)
        # The floor has no class to compare with and no cost.
        floor = rows[rows["method"] == "random"]
        assert set(floor["metric"]) == {*L.LOCALIZATION, "deletion_auc", "insertion_auc"}
        assert floor["cost"].isna().all() and (floor["family"] == "floor").all()
    assert (table["low"] <= table["mean"] + 1e-9).all() and (table["mean"] <= table["high"] + 1e-9).all()
    assert (table[table["family"] != "floor"]["cost"] > 0).all()
    assert table[table["method"] == "grad_cam"]["layer"].eq("conv").all()
    assert table[table["method"] == "saliency"]["layer"].eq("").all()
    assert json.loads(table[table["method"] == "occlusion"]["params"].iloc[0]) == {
        "patch": 4,
        "stride": 4,
        "baseline": 0.0,
        "batch_size": 64,
    }


def test_maps_of_a_model_that_reads_only_the_cue_land_on_the_cue(table, planted):
    _, masks, _ = planted
    area = masks.mean()
    mass = table[(table["metric"] == "relevance_mass_accuracy") & (table["output"] == "region")].set_index("method")
    # The logits depend on no pixel outside the cue: every gradient and occlusion drop outside it is exactly zero.
    for method in ("saliency", "gradient_x_input", "occlusion"):
        assert mass.loc[method, "mean"] == pytest.approx(1.0, abs=1e-6)
    # The random map spreads its mass evenly: the cue's area, within its bootstrap interval.
    assert mass.loc["random", "low"] <= area + 0.02 and mass.loc["random", "high"] >= area - 0.02
    assert mass.loc["saliency", "chance"] == pytest.approx(area)
    auc = table[(table["metric"] == "mask_auc") & (table["method"] == "saliency")].set_index("output")["mean"]
    # The explained class reads a share s of the cue: those pixels beat every other pixel, the rest of the cue ties
    # with the zeros outside (ties count half), so the AUC is s + (1 - s) / 2.
    assert auc["region"] == pytest.approx(0.5 + 0.5 / 2) and auc["city"] == pytest.approx(0.25 + 0.75 / 2)


def test_the_sanity_checks_tell_a_class_map_from_a_class_agnostic_one(table, planted):
    images, masks, model = planted
    rows = table[table["output"] == "city"].set_index(["method", "metric"])
    # Each city reads its own rows of the cue: the map of a random other class lies elsewhere, so it ranks the
    # pixels differently from the explained class's map.
    assert rows.loc[("gradient_x_input", "random_logit"), "mean"] < 0.5
    # Re-initialising every layer redraws the planted zeros too: the randomised model reads every pixel, so its map
    # no longer matches the trained one.
    assert rows.loc[("saliency", "randomization"), "mean"] < 0.5
    # Eigen-CAM ignores the class: its random-logit map is the same map.
    spec = L.LeaderboardSpec(methods=("eigen_cam",), outputs=("city",), curve_steps=2, resamples=50)
    eigen = L.leaderboard(images, masks, model, normalization="unit", spec=spec).set_index(["method", "metric"])
    assert eigen.loc[("eigen_cam", "random_logit"), "mean"] == pytest.approx(1.0)


def test_cam_methods_run_at_every_layer_asked():
    model = convention_model(32)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    masks = rng.random((3, 32, 32)) < 0.2
    spec = L.LeaderboardSpec(
        methods=("grad_cam", "saliency"),
        outputs=("region",),
        layers=("block1_conv1", "block5_conv3"),
        curve_steps=2,
        resamples=50,
    )
    table = L.leaderboard(images, masks, model, normalization="unit", spec=spec)
    assert set(table[table["method"] == "grad_cam"]["layer"]) == {"block1_conv1", "block5_conv3"}
    assert set(table[table["method"] == "saliency"]["layer"]) == {""}


def test_the_costly_measurements_can_use_fewer_images(planted):
    images, masks, model = planted
    spec = L.LeaderboardSpec(methods=("saliency",), outputs=("region",), curve_steps=2, control_images=5, resamples=50)
    table = L.leaderboard(images, masks, model, normalization="unit", spec=spec).set_index(["method", "metric"])
    for metric in ("deletion_auc", "insertion_auc", "random_logit", "randomization"):
        assert table.loc[("saliency", metric), "images"] == 5
    assert table.loc[("saliency", "pointing_game"), "images"] == 12


def test_a_costly_method_can_explain_fewer_images_and_says_so(planted):
    images, masks, model = planted
    masks = masks.copy()
    masks[:4, :, :8] = 1  # the first images have larger masks, so their chance level differs from the rest's
    spec = L.LeaderboardSpec(
        methods=("saliency", "occlusion"),
        outputs=("region",),
        params={"occlusion": {"patch": 4, "stride": 4}},
        images={"occlusion": 4},
        control_images=3,
        curve_steps=2,
        resamples=50,
    )
    table = L.leaderboard(images, masks, model, normalization="unit", spec=spec).set_index(["method", "metric"])
    assert table.loc[("occlusion", "pointing_game"), "images"] == 4
    assert table.loc[("occlusion", "randomization"), "images"] == 3
    assert table.loc[("saliency", "pointing_game"), "images"] == 12
    assert table.loc[("occlusion", "pointing_game"), "chance"] == pytest.approx(masks[:4].mean())
    assert table.loc[("saliency", "pointing_game"), "chance"] == pytest.approx(masks.mean())
    fig = L.plot_leaderboard(table.reset_index(), output="region")
    assert "occlusion (n=4)" in [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]


def _rows(method, metric, mean, low, high, *, family="gradient", output="region", images=10):
    return {
        "method": method,
        "family": family,
        "output": output,
        "layer": "",
        "metric": metric,
        "mean": mean,
        "low": low,
        "high": high,
        "chance": 0.1,
        "images": images,
        "cost": 1.0,
        "params": "{}",
    }


def test_ranking_judges_each_method_by_its_interval_against_the_best_and_the_floor():
    metric = "relevance_mass_accuracy"
    table = pd.DataFrame(
        [
            _rows("a", metric, 0.60, 0.50, 0.70),
            _rows("b", metric, 0.55, 0.45, 0.65),  # overlaps a: not separable
            _rows("c", metric, 0.30, 0.25, 0.35),  # below a, above the floor
            _rows("d", metric, 0.12, 0.08, 0.16),  # overlaps the floor
            _rows("random", metric, 0.10, 0.09, 0.11, family="floor"),
            _rows("a", metric, 0.90, 0.80, 0.95, output="city"),  # another output: not ranked
        ]
    )
    ranked = L.ranking(table, output="region", metric=metric)
    assert list(ranked["method"]) == ["a", "b", "c", "d"]
    assert list(ranked["vs_best"]) == ["best", "not separable from the best", "below the best", "below the best"]
    assert list(ranked["vs_random"]) == ["better than the random map"] * 3 + ["not separable from the random map"]
    # Lower is better for deletion: the smallest area ranks first.
    deletion = pd.DataFrame([_rows("a", "deletion_auc", 0.5, 0.4, 0.6), _rows("b", "deletion_auc", 0.2, 0.1, 0.3)])
    assert list(L.ranking(deletion, metric="deletion_auc")["method"]) == ["b", "a"]
    with pytest.raises(ValueError, match="Invalid `metric`"):
        L.ranking(table, metric="accuracy")
    with pytest.raises(ValueError, match="no 'mask_auc' rows"):
        L.ranking(table, metric="mask_auc")


def test_sanity_verdicts_and_findings_come_from_the_intervals():
    table = pd.DataFrame(
        [
            _rows("a", "relevance_mass_accuracy", 0.6, 0.5, 0.7),
            _rows("b", "relevance_mass_accuracy", 0.2, 0.15, 0.25),
            _rows("random", "relevance_mass_accuracy", 0.1, 0.09, 0.11, family="floor"),
            _rows("a", "randomization", 0.1, 0.0, 0.2),
            _rows("b", "randomization", 0.9, 0.8, 0.95),
            _rows("a", "random_logit", 0.45, 0.3, 0.6),
        ]
    )
    checks = L.sanity(table, threshold=0.5).set_index(["method", "metric"])["verdict"]
    assert checks[("a", "randomization")] == "passes"
    assert checks[("b", "randomization")] == "fails"
    assert checks[("a", "random_logit")] == "unclear"
    lines = L.findings(table)
    assert lines[0].startswith("Finds the cues best (relevance_mass_accuracy, region output): a 0.60 [0.50, 0.70]")
    assert lines[0].endswith("not separable from it at these sample sizes: none.")
    assert lines[1] == "Not better than a random map: none."
    assert lines[2].endswith("- passes: a; fails: b; unclear: none.")
    assert lines[3].startswith("random_logit check") and lines[3].endswith("- passes: none; fails: none; unclear: a.")
    with pytest.raises(ValueError, match="Invalid `threshold`"):
        L.sanity(table, threshold=1.5)


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
        ({"resamples": 1.5}, "Invalid `resamples`"),
    ],
)
def test_a_bad_spec_is_refused_when_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.LeaderboardSpec(**kwargs)


def test_masks_must_match_the_images(planted):
    images, masks, model = planted
    with pytest.raises(ValueError, match="`masks` must have shape"):
        L.leaderboard(images, masks[:, :8], model, normalization="unit")


def test_randomized_copy_changes_every_layer_of_the_output_and_not_the_model(planted):
    _, _, model = planted
    before = [w.copy() for w in model.get_weights()]
    clone = metrics.randomized_copy(model, output="region", seed=0)
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
    fig = L.plot_leaderboard(table, output="region", title="planted model")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(L.HIGHER_IS_BETTER)
    rows = table[(table["output"] == "region") & (table["family"] != "floor")]
    for ax in panels:
        metric = ax.get_title().split(" (")[0]
        means = rows[rows["metric"] == metric].set_index("method")["mean"]
        shown = [t.get_text() for t in ax.get_yticklabels()]  # top to bottom: best first
        ordered = [means[m] for m in shown]
        assert ordered == sorted(ordered, reverse=L.HIGHER_IS_BETTER[metric])


def test_methods_that_draw_random_numbers_take_the_spec_seed_and_repeat(planted):
    # SmoothGrad's noise and RISE's masks come from the spec's seed unless its params give one: the same leaderboard
    # twice gives the same scores (same draws on the same model and inputs; the maps then differ only by float
    # roundoff of one computation repeated, and the metrics, ranks and sums of them, by less than 1e-6), and another
    # seed gives other maps.
    images, masks, model = planted
    kwargs = dict(
        methods=("smoothgrad", "rise"),
        outputs=("region",),
        params={"smoothgrad": {"samples": 3}, "rise": {"masks": 20, "cells": 4}},
        curve_steps=2,
        control_images=4,
        resamples=50,
    )

    def run(seed):
        spec = L.LeaderboardSpec(**kwargs, seed=seed)
        return L.leaderboard(images, masks, model, normalization="unit", spec=spec)

    first, again, other = run(0), run(0), run(1)
    np.testing.assert_allclose(first["mean"], again["mean"], rtol=0, atol=1e-6)
    for method in ("smoothgrad", "rise"):
        assert json.loads(first.loc[first["method"] == method, "params"].iloc[0])["seed"] == 0
    scores = ["relevance_mass_accuracy", "mask_auc"]
    rows = first["metric"].isin(scores) & (first["method"] != "random")
    assert np.abs(first.loc[rows, "mean"].to_numpy() - other.loc[rows, "mean"].to_numpy()).max() > 1e-4
    # A seed in the params wins over the spec's.
    spec = L.LeaderboardSpec(**{**kwargs, "params": {**kwargs["params"], "rise": {"masks": 20, "cells": 4, "seed": 7}}})
    table = L.leaderboard(images, masks, model, normalization="unit", spec=spec)
    assert json.loads(table.loc[table["method"] == "rise", "params"].iloc[0])["seed"] == 7


def test_without_cue_masks_everything_but_localisation_is_scored(planted):
    # Street10 or a user's photographs: no ground truth for where the cues are, but faithfulness, both sanity checks
    # and the cost need none.
    images, masks, model = planted
    spec = L.LeaderboardSpec(methods=("saliency", "grad_cam"), curve_steps=4, resamples=200)
    table = L.leaderboard(images, None, model, normalization="unit", spec=spec)
    with_masks = L.leaderboard(images, masks, model, normalization="unit", spec=spec)
    assert not L.has_ground_truth(table) and L.has_ground_truth(with_masks)
    assert set(table["metric"]) == set(L.HIGHER_IS_BETTER) - set(L.LOCALIZATION)
    # What needs no mask is the same number with or without masks (the same maps, curves and controls).
    keys = ["method", "output", "metric"]
    merged = table.merge(with_masks, on=keys, suffixes=("", "_masks"))
    assert len(merged) == len(table)
    np.testing.assert_array_equal(merged["mean"], merged["mean_masks"])
    assert table.loc[table["family"] != "floor", "cost"].gt(0).all()
    lines = L.findings(table, output="region")
    assert lines[0].startswith("Localisation (pointing_game, relevance_mass_accuracy") and "no ground truth" in lines[0]
    assert lines[1].startswith("Best (insertion_auc, region output):")
    with pytest.raises(ValueError, match="scored without cue masks \\(no ground truth\\)"):
        L.ranking(table, metric="pointing_game")
    fig = L.plot_leaderboard(table, output="region")
    assert len([ax for ax in fig.axes if ax.get_visible()]) == len(set(table["metric"]))
