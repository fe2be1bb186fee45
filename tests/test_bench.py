"""The benchmark's own logic: the references compute what ours computes, and the report says what was measured."""

import re
import types

import keras
import numpy as np
import pytest

from streetlib.benchmarks import bench, comparison, explainers, method_costs, pipelines, throughput
from streetlib.data.pipeline import make_dataset


def test_vgg16_flops_match_the_published_count():
    # VGG16's 13 conv layers: 15.35 G multiply-adds at 224 px (30.7 GFLOP); the cost scales with the pixel count.
    assert throughput.vgg16_flops(224) == pytest.approx(30.7e9, rel=0.01)
    assert throughput.vgg16_flops(112) == pytest.approx(throughput.vgg16_flops(224) / 4, rel=0.01)


def test_legacy_generator_feeds_what_our_pipeline_feeds():
    data = pipelines.street_data(20, 32)
    idx = np.arange(20)
    ours_x, ours_y = next(iter(make_dataset(data, idx, batch_size=20, normalization="samplewise")))
    ref_x, ref_y = next(pipelines.legacy_generator(data, idx, batch_size=20, augment=False))
    np.testing.assert_allclose(ours_x.numpy(), ref_x, atol=1e-4)
    np.testing.assert_array_equal(ref_y["city"].argmax(1), ours_y["city"].numpy())
    np.testing.assert_array_equal(ref_y["region"].argmax(1), ours_y["region"].numpy())
    augmented, _ = next(pipelines.legacy_generator(data, idx, batch_size=20, augment=True))
    assert not np.allclose(augmented, ref_x)


def test_original_grad_cam_loop_gives_one_max_normalised_map_per_image():
    from streetlib.attribution.explainer import Explainer

    model = explainers.flat_vgg16(32, num_classes=3)
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    targets = np.argmax(model.predict(x, verbose=0), axis=1)
    ours = Explainer(model, layer="block5_conv3").grad_cam(x, output="city", target=targets).maps
    original = explainers.original_grad_cam(model, x, targets)
    assert original.shape == np.asarray(ours).shape == (3, 2, 2)
    assert np.isfinite(original).all()
    peaks = original.reshape(3, -1).max(axis=1)
    assert all(p == pytest.approx(1.0) or p == 0.0 for p in peaks)  # divided by its own max, as the original did


def test_comparison_ratios_point_the_better_way():
    speed = comparison.Comparison("x", {"ours": [10.0, 12.0]}, {"ref": [2.0, 2.0]}, "img/s", 5.0)
    assert speed.ratios == {"ref": pytest.approx(5.5)}
    time = comparison.Comparison("x", {"ours": [1.0]}, {"ref": [8.0]}, "s", 8.0)
    assert time.ratios == {"ref": 8.0}
    memory = comparison.Comparison("x", {"ours": [700.0]}, {"uint8": [625.0]}, "MB", 1 / 1.3)
    assert memory.ratios["uint8"] == pytest.approx(625 / 700)


def test_markdown_report_names_machine_command_and_verdicts():
    results = {
        "environment": {
            "date": "2026-11-22 01:00 UTC",
            "cpu": "AMD EPYC",
            "cores": 2,
            "python": "3.11.7",
            "versions": {"tensorflow": "2.20.0"},
        },
        "quick": False,
        "comparisons": [
            comparison.Comparison("pipeline", {"ours": [600.0]}, {"IDG": [200.0]}, "img/s", 5.0, check="same batches"),
            comparison.Comparison("memory", {"ours": [650.0]}, {"uint8": [625.0]}, "MB", 1 / 1.3),
            comparison.Comparison(
                "cam", {"ours": [10.0]}, {"loop": [2.0], "peer": [3.0]}, "img/s", {"loop": 4.0, "peer": 3.0}
            ),
        ],
        "vgg16": {
            "peak_flops": 1e11,
            "batch": 16,
            "rows": [
                {
                    "size": 64,
                    "forward_img_s": 24.0,
                    "train_img_s": 15.0,
                    "forward_peak_fraction": 0.6,
                    "train_peak_fraction": 1.1,
                }
            ],
        },
    }
    text = bench.to_markdown(results, command="streetlib bench")
    assert "AMD EPYC" in text and "`streetlib bench`" in text
    assert (
        "| pipeline | ours: 600.0 ± 0.0 img/s | IDG: 200.0 ± 0.0 img/s | 3.00x | at least 5.00x | no | same batches |"
        in text
    )
    assert "| 64 px | 24.0 | 15.0 | 60% | 110% |" in text
    assert "| memory | ours: 650 ± 0 MB | uint8: 625 ± 0 MB | 1.04x | at most 1.30x | yes |" in text
    assert "| 5.00x | at least 4.00x | yes |" in text and "| 3.33x | at least 3.00x | yes |" in text


# ---------------------------------------------------------------------------------------------------------------
# bench_attribution: our attribution methods against tf-keras-vis


@pytest.fixture(scope="module")
def attribution_comparisons():
    pytest.importorskip("tf_keras_vis")
    return explainers.bench_attribution(size=32, batch=2, repeats=1, scorecam_batch=1, smoothgrad_samples=2)


METHOD_NAMES = ("Grad-CAM++", "LayerCAM", "Saliency", "SmoothGrad", "Score-CAM")


def _by_method(comparisons):
    speed = [c for c in comparisons if c.unit == "img/s"]
    assert [c.name.split(" ")[0].rstrip(",") for c in speed] == list(METHOD_NAMES)
    return dict(zip(METHOD_NAMES, speed, strict=True))


def test_every_attribution_method_gives_tf_keras_vis_maps(attribution_comparisons):
    from conftest import SAME_COMPUTATION_RTOL

    for name, c in _by_method(attribution_comparisons).items():
        # Min-max normalised maps, so in [0, 1]: the same computation through other kernels within conftest's bound;
        # Grad-CAM++'s alpha has a pole that amplifies roundoff (see GRAD_CAM_PLUS_PLUS_ATOL in test_cams).
        tolerance = 1e-3 if name == "Grad-CAM++" else SAME_COMPUTATION_RTOL
        assert c.max_diff is not None and 0 <= c.max_diff <= tolerance, (name, c.check)
        assert f"max |ours - tf-keras-vis| {c.max_diff:.1e}" in c.check
        assert "flat" not in c.check, "flat maps would agree trivially"


def test_smoothgrad_and_score_cam_are_checked_on_identical_inputs(attribution_comparisons):
    methods = _by_method(attribution_comparisons)
    # The timed runs keep tf-keras-vis's own noise and upsampling; the check hands it ours. Both differences are
    # reported: with different noise the maps differ visibly, so the identical-noise agreement is not a tautology.
    smooth = methods["SmoothGrad"]
    assert "identical noise" in smooth.check
    unchanged = float(re.search(r"as timed, unchanged: ([0-9.e+-]+)\)", smooth.check).group(1))
    assert unchanged > 100 * max(smooth.max_diff, 1e-6)
    score = methods["Score-CAM"]
    assert "half-pixel bilinear" in score.check and "as timed, unchanged" in score.check
    # Score-CAM runs on its own batch (of 1 here), and says so.
    assert "batch of 1" in score.name and "512 per call" in score.notes
    assert all("batch of 2" in methods[m].name for m in METHOD_NAMES[:4])


def test_attribution_ratios_are_ours_over_tf_keras_vis(attribution_comparisons):
    for c in _by_method(attribution_comparisons).values():
        ((label, values),) = c.reference.items()
        assert c.target == 3.0
        assert c.ratios == {label: pytest.approx(np.median(c.ours["ours, batched"]) / np.median(values))}
        assert np.isfinite(c.ratios[label]) and c.ratios[label] > 0


def test_score_cam_memory_is_measured_against_tf_keras_vis(attribution_comparisons):
    (memory,) = [c for c in attribution_comparisons if c.unit == "MB"]
    assert attribution_comparisons[-1] is memory and "Score-CAM" in memory.name
    ((ours,),) = memory.ours.values()
    (peer,) = memory.reference["tf-keras-vis Scorecam, batch_size 32"]
    assert ours > 0 and peer > 0
    # MB: lower is better, so the ratio is the reference's over ours.
    assert memory.ratios["tf-keras-vis Scorecam, batch_size 32"] == pytest.approx(peer / ours)
    assert f"{512 * 32 * 32 * 3 * 4 / 2**20:.0f} MB" in memory.check  # the masked inputs' size at 32 px, computed


def test_same_noise_refuses_a_draw_it_does_not_expect_and_restores_numpy():
    x = np.zeros((2, 4, 4, 3), np.float32)
    draw = np.random.normal
    with explainers._same_noise(x, samples=3, seed=0):
        noise = np.random.normal(0.0, np.ones((3, 2, 1, 1, 1), np.float32), (3, 2, 4, 4, 3))
        with pytest.raises(RuntimeError, match="update _same_noise"):
            np.random.normal(0.0, 1.0, (2, 3, 4, 4, 3))
    assert np.random.normal is draw
    # Image i's copies are the i-th block of our stream, as `gradients.smoothgrad` draws them.
    z = np.random.default_rng(0).standard_normal((6, 4, 4, 3), dtype=np.float32)
    np.testing.assert_array_equal(noise[:, 1], z[3:])


def test_run_all_reports_every_comparison_of_a_step_that_returns_several(monkeypatch):
    def one(name):
        return lambda **_: comparison.Comparison(name, {"ours": [2.0]}, {"ref": [1.0]}, "img/s", 1.0)

    for fn in ("bench_input_pipeline", "bench_transfer", "bench_grad_cam", "bench_predict", "bench_memory"):
        monkeypatch.setattr(bench, fn, one(fn))
    monkeypatch.setattr(bench, "bench_attribution", lambda **_: [one("cam++")(), one("score-cam")()])
    monkeypatch.setattr(bench, "bench_vgg16", lambda **_: {"peak_flops": 1e11, "batch": 8, "rows": []})
    monkeypatch.setattr(bench, "bench_method_costs", lambda **_: {})
    lines = []
    results = bench.run_all(quick=True, report=lines.append)
    names = [c.name for c in results["comparisons"]]
    assert names == [
        "bench_input_pipeline",
        "bench_transfer",
        "bench_grad_cam",
        "cam++",
        "score-cam",
        "bench_predict",
        "bench_memory",
    ]
    assert any("cam++" in line and "score-cam" in line for line in lines)
    text = bench.to_markdown(results, command="streetlib bench --quick")
    assert "| cam++ |" in text and "| score-cam |" in text


def test_quick_bench_prints_and_leaves_the_recorded_benchmarks_alone(monkeypatch, tmp_path, capsys):
    from streetlib import paths
    from streetlib.cli import commands

    fake = {"environment": {}, "quick": True, "comparisons": []}
    monkeypatch.setattr(bench, "run_all", lambda **_: fake)
    monkeypatch.setattr(bench, "to_markdown", lambda results, command: f"table of `{command}`")
    monkeypatch.setattr(bench, "to_json", lambda results: "{}")
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path)
    record = tmp_path / "BENCHMARKS.md"
    record.write_text("the full run")
    commands.main(["bench", "--quick"])
    assert "table of `streetlib bench --quick`" in capsys.readouterr().out
    assert record.read_text() == "the full run" and sorted(p.name for p in tmp_path.iterdir()) == ["BENCHMARKS.md"]
    # Asked for, a quick run is written where it is told; a full run replaces the record.
    commands.main(["bench", "--quick", "--out", str(tmp_path / "quick.md")])
    assert (tmp_path / "quick.md").read_text() == f"table of `streetlib bench --quick --out {tmp_path / 'quick.md'}`"
    commands.main(["bench"])
    assert record.read_text() == "table of `streetlib bench`"


# ---------------------------------------------------------------------------------------------------------------
# bench_method_costs: every attribution method's cost per image in forward passes


@pytest.fixture(scope="module")
def quick_costs():
    # What `streetlib bench --quick` runs.
    return method_costs.bench_method_costs(**method_costs.method_costs_settings(quick=True))


def test_every_registry_method_has_one_positive_finite_cost(quick_costs):
    from streetlib.attribution.registry import METHODS

    rows = quick_costs["rows"]
    assert [r["method"] for r in rows] == list(METHODS)
    settings = method_costs.method_costs_settings(quick=True)
    for r in rows:
        assert np.isfinite(r["cost"]) and r["cost"] > 0, r
        assert np.isfinite(r["seconds_per_image"]) and r["seconds_per_image"] > 0, r
        # Over a forward pass of the method's own batch size: the costly methods on their smaller batch.
        costly = r["method"] in method_costs.COSTLY_METHODS
        assert r["batch"] == (settings["costly_batch"] if costly else settings["batch"])
        assert r["forward_seconds_per_image"] == quick_costs["forward"][r["batch"]]
        assert r["cost"] == pytest.approx(r["seconds_per_image"] / r["forward_seconds_per_image"])
        # Every parameter is stated, the registry's defaults included, with the settings' values where they set one.
        assert r["params"] == {**METHODS[r["method"]].params, **settings["params"].get(r["method"], {})}
        assert r["layer"] == ("block5_conv3" if METHODS[r["method"]].uses_layer else None)


class _ImagesSeen(keras.layers.Layer):
    """Passes its input on and adds the number of images in it to `_ImagesSeen.total`: one count for every copy of
    the model (guided backpropagation runs a clone), read by the fake clock below."""

    total = None

    def call(self, x):
        _ImagesSeen.total.assign_add(keras.ops.cast(keras.ops.shape(x)[0], "float32"))
        return x


def _counting_model(size, num_classes=10, seed=0, *, regions=None):
    """A small stand-in for `explainers.flat_vgg16`: the same two heads over a convolution named block5_conv3 (6
    channels), with `_ImagesSeen` first."""
    keras.utils.set_random_seed(seed)
    images = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="block5_conv3")(_ImagesSeen()(images))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = {}
    for output, classes in {"region": regions, "city": num_classes}.items():
        logits = keras.layers.Dense(classes, name=f"{output}_logits")(x)
        outputs[output] = keras.layers.Activation("softmax", name=output)(logits)
    return keras.Model(images, outputs)


def test_costs_count_the_forward_passes_each_method_makes(monkeypatch):
    # Timings on a shared CPU are too noisy to assert on (a 2-image forward pass at 32 px is a few milliseconds of
    # mostly overhead), so the clock here reads the number of images the model has been run on: a method's cost is
    # then exactly its forward passes per image, and it matches the count its docstring states only if every pass
    # of the timed call is timed, with the stated parameters, over one pass per image of the forward batch.
    _ImagesSeen.total = keras.Variable(0.0, trainable=False, name="images_seen")
    monkeypatch.setattr(method_costs, "flat_vgg16", _counting_model)
    clock = types.SimpleNamespace(perf_counter=lambda: float(_ImagesSeen.total.numpy()))
    monkeypatch.setattr(method_costs, "time", clock)
    size, samples, steps, masks = 16, 3, 5, 7
    params = {
        "smoothgrad": {"samples": samples, "seed": 0},
        "integrated_gradients": {"steps": steps},
        "occlusion": {"patch": 4, "stride": 4},
        "rise": {"masks": masks, "seed": 0},
    }
    costs = method_costs.bench_method_costs(size=size, batch=4, costly_batch=2, params=params, repeats=2, budget=1e9)
    assert costs["forward"] == {4: 1.0, 2: 1.0}
    cost = {r["method"]: r["cost"] for r in costs["rows"]}
    # The docstrings' "Cost per image": one pass to pick the class, then one per channel, sample, step, position
    # or mask; the CAMs and plain gradients one pass (their backward passes are not forward passes); Guided Grad-CAM
    # Grad-CAM's pass and guided backpropagation's.
    positions = ((size - 4) // 4 + 1) ** 2
    expected = {
        "score_cam": 1 + 6,
        "smoothgrad": 1 + samples,
        "integrated_gradients": 1 + steps,
        "occlusion": 1 + positions,
        "rise": 1 + masks,
        "guided_grad_cam": 2,
    }
    assert cost == {name: expected.get(name, 1.0) for name in cost}


def test_method_costs_table_is_in_the_markdown(quick_costs):
    results = {
        "environment": {"date": "d", "cpu": "AMD EPYC", "cores": 2, "python": "3.11", "versions": {}},
        "quick": True,
        "comparisons": [],
        "vgg16": {"peak_flops": 1e11, "batch": 8, "rows": []},
        "method_costs": quick_costs,
    }
    text = bench.to_markdown(results, command="streetlib bench --quick")
    assert "## Attribution methods: cost per image in forward passes" in text
    header = "| method | family | differentiates / layer | params | seconds per image | cost (x forward) |"
    table = text.split(header, 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    assert len(table) == len(quick_costs["rows"])
    for line, r in zip(table, quick_costs["rows"], strict=True):
        assert line.startswith(f"| {r['method']} | {r['family']} | ") and line.endswith(f" | {r['cost']:.3g}x |")
    (rise,) = [line for line in table if line.startswith("| rise |")]
    assert "masks=64" in rise and "(batch of" not in rise  # quick mode: every method on the same batch of 2
    assert "as the attribution leaderboard's" in text and "scales with the method's parameters" in text
    # Results without the section (older runs) still render.
    assert "cost per image" not in bench.to_markdown({**results, "method_costs": {}}, command="x")
