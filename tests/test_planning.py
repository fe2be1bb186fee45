import ast
import inspect
import json

import keras
import numpy as np
import pytest

from streetlib.classes import STREET10
from streetlib.cli.commands import main
from streetlib.data.loaders import load_street10, write_street10
from streetlib.data.splits import make_split
from streetlib.experiments import planning, runner, study

# Seconds per pass given, not measured: no test depends on this machine's speed.
CALIBRATION = planning.Calibration(forward=0.01, backward=0.02, device="given", image_size=64, batch_size=4)


def _params(profile, number, overrides):
    notebook = runner.find_notebook(number)
    params = runner.resolve_parameters(notebook, runner.load_profile(profile), overrides)
    return {**runner.notebook_parameters(notebook), **params}


@pytest.mark.parametrize("profile", ["demo", "full"])
def test_training_runs_are_what_notebooks_03_and_04_train(profile, tmp_path):
    overrides = {"data_dir": str(tmp_path / "absent")}
    plan = planning.make_plan(["03", "04"], profile=profile, overrides=overrides)
    transfer, finetune = _params(profile, "03", overrides), _params(profile, "04", overrides)
    frozen = finetune["finetune_from"] or None
    expected = [("03", study.transfer_config(s), s, tuple(transfer["split_seeds"])) for s in transfer["weight_sources"]]
    expected += [
        ("04", study.finetune_config(s, frozen), s, tuple(finetune["split_seeds"])) for s in finetune["weight_sources"]
    ]
    assert finetune["continued_control"]  # each transfer run continued as long as its fine-tuning: question 2's control
    expected += [
        ("04", study.continued_config(s), s, tuple(finetune["split_seeds"])) for s in finetune["weight_sources"]
    ]
    assert [(w.notebook, w.name, w.weights, w.seeds) for w in plan.work] == expected
    assert {w.epochs for w in plan.work if w.notebook == "03"} == {transfer["epochs"]}
    assert {w.epochs for w in plan.work if w.notebook == "04"} == {finetune["epochs"]}
    assert {w.image_size for w in plan.work} == {transfer["image_size"]}
    split = plan.data.split_sizes()
    assert {w.images for w in plan.work} == {f"{split['train']}/{split['val']}/{split['test']}"}


def test_missing_street10_is_planned_with_the_published_counts(tmp_path):
    plan = planning.make_plan(["03"], profile="full", overrides={"data_dir": str(tmp_path / "absent")})
    assert plan.data.assumed and plan.data.total == 4151 and "not found" in plan.data.note
    # As make_split sizes the published Street10 (tests/test_splits.py).
    assert plan.data.split_sizes() == {"train": 3166, "val": 564, "test": 421}


def test_street10_counts_come_from_the_npy_headers(tmp_path, monkeypatch):
    counts = [12, 10, 11, 10, 13, 10, 10, 14, 10, 10]
    rng = np.random.default_rng(0)
    images = {
        c: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for c, n in zip(STREET10.classes, counts, strict=True)
    }
    write_street10(tmp_path / "s10", images, spec=STREET10)
    split = make_split(load_street10(tmp_path / "s10"), seed=42, directory=tmp_path / "splits")

    read = []
    original = np.load
    monkeypatch.setattr(np, "load", lambda *a, **kw: read.append(kw.get("mmap_mode")) or original(*a, **kw))
    data = planning.count_images(tmp_path / "s10")
    assert read == ["r"] * 10  # memory-mapped headers, the images never read
    assert not data.assumed and data.total == sum(counts) and data.image_shape == (8, 8)
    assert data.split_sizes() == {"train": len(split.train), "val": len(split.val), "test": len(split.test)}


def test_image_folder_counts_its_files_per_class(tmp_path):
    for n, cls in enumerate(STREET10.classes, start=1):
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"{i}.jpg").touch()
        (tmp_path / cls / "notes.txt").touch()
    data = planning.count_images(tmp_path, source="folder", image_size=96)
    assert data.counts == {cls: n for n, cls in enumerate(STREET10.classes, start=1)}
    assert data.image_shape == (96, 96) and not data.assumed


def test_synthetic_data_not_generated_is_per_class_times_ten(tmp_path):
    data = planning.count_images(tmp_path / "synth", source="synth", per_class=7, image_size=32)
    assert data.assumed and data.total == 70 and "not generated yet" in data.note


def test_layer_flops_are_kernel_size_times_output_positions():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(5, 3, padding="same")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    flops = planning.layer_flops(keras.Model(inputs, outputs))
    assert [f for _, f in flops] == [8 * 8 * 3 * 3 * 3 * 4, 4 * 4 * 3 * 3 * 4 * 5, 5 * 2]


def test_training_passes_follow_the_formulas():
    # Cached: the frozen part once per cached image (2 copies of 10 training images, 4 validation ones), then the
    # trainable part forward on every image and backward (x2) on the training ones, each epoch.
    forward, backward = planning.training_passes(10, 4, epochs=3, frozen=0.75, trainable=0.25, cached_copies=2)
    assert forward == pytest.approx(0.75 * 24 + 3 * 0.25 * 14)
    assert backward == pytest.approx(3 * 2 * 0.25 * 10)
    # Without a cache the whole model runs forward every epoch.
    forward, backward = planning.training_passes(10, 4, epochs=3, frozen=0.75, trainable=0.25, cached_copies=0)
    assert forward == pytest.approx(3 * 14) and backward == pytest.approx(3 * 2 * 0.25 * 10)


def test_method_passes_follow_their_parameters():
    assert planning.method_passes("grad_cam", {}, channels=512, image_size=224) == (1, 0)
    assert planning.method_passes("score_cam", {}, channels=512, image_size=224) == (513, 0)
    assert planning.method_passes("saliency", {}, channels=512, image_size=224) == (1, 2)
    assert planning.method_passes("smoothgrad", {"samples": 4}, channels=0, image_size=32) == (5, 8)
    assert planning.method_passes("integrated_gradients", {"steps": 3}, channels=0, image_size=32) == (4, 8)
    # 32 px, a 16 px square moved by 8: 3 x 3 positions, plus the pass that picks the class.
    assert planning.method_passes("occlusion", {"patch": 16, "stride": 8}, channels=0, image_size=32) == (10, 0)
    assert planning.method_passes("rise", {"masks": 50}, channels=0, image_size=32) == (51, 0)


def test_a_cached_transfer_costs_one_frozen_pass_per_cached_image(tmp_path):
    overrides = {"data_dir": str(tmp_path / "absent"), "epochs": 1}
    plan = planning.make_plan(["03"], profile="demo", overrides=overrides)
    split = plan.data.split_sizes()
    work = plan.work[0]
    assert work.cache.startswith("memory")  # the demo's no-augmentation cache fits the default 2 GiB
    frozen = planning.layer_flops(planning.network.build_backbone("vgg16", input_shape=(64, 64, 3)))
    block1 = sum(f for name, f in frozen if name.startswith("block1")) / sum(f for _, f in frozen)
    extraction = block1 * (split["train"] + split["val"])
    # The conv head on top is small: an epoch adds a few percent, not another pass of the frozen part.
    assert extraction < work.forward < 1.5 * extraction


def test_budgets_say_fits_or_what_is_needed(tmp_path):
    plan = planning.make_plan(["03"], profile="demo", overrides={"data_dir": str(tmp_path / "absent")})
    seconds = plan.seconds(CALIBRATION)
    assert seconds == pytest.approx(sum(w.runs * (w.forward * 0.01 + w.backward * 0.02) for w in plan.work))
    roomy = planning.check_budgets(
        plan, CALIBRATION, seconds=2 * seconds, host_bytes=2 * plan.host_bytes, disk_bytes=2 * plan.disk_bytes
    )
    assert [c["what"] for c in roomy] == ["time", "host memory", "disk"] and all(c["fits"] for c in roomy)
    assert roomy[0]["line"].startswith("time: fits")
    tight = planning.check_budgets(plan, CALIBRATION, seconds=seconds / 2, device_bytes=plan.device_bytes // 2)
    assert not any(c["fits"] for c in tight)
    assert tight[1]["line"].startswith("device memory: does not fit: ") and "needed" in tight[1]["line"]
    assert planning.check_budgets(plan, CALIBRATION) == []


def test_host_memory_counts_the_runtime_and_on_a_cpu_the_device_memory(tmp_path):
    overrides = {"data_dir": str(tmp_path / "absent")}
    gpu = planning.make_plan(["03", "04"], profile="full", overrides=overrides, device="Tesla T4")
    cpu = planning.make_plan(["03", "04"], profile="full", overrides=overrides, device="CPU (AMD EPYC)")
    images = gpu.data.total * 224 * 224 * 3
    assert gpu.host_bytes == planning.RUNTIME_BYTES + images + max(w.host_bytes for w in gpu.work)
    # A CPU's device memory is host memory: the work holding the most decides the peak.
    assert cpu.host_bytes == planning.RUNTIME_BYTES + images + max(w.host_bytes + w.device_bytes for w in cpu.work)
    assert cpu.host_bytes > gpu.host_bytes and cpu.device_bytes == gpu.device_bytes
    assert "the device being the CPU, its device memory" in planning.format_plan(cpu, CALIBRATION)
    assert "the largest feature cache held)" in planning.format_plan(gpu, CALIBRATION)
    assert json.loads(planning.to_json(cpu, CALIBRATION))["host_includes_device"] is True


def test_sizes_and_durations_parse():
    assert planning.parse_bytes("15GB") == 15 * 10**9
    assert planning.parse_bytes("1.5 GiB") == int(1.5 * 2**30)
    assert planning.parse_seconds("12h") == 12 * 3600 and planning.parse_seconds("90m") == 5400
    with pytest.raises(ValueError, match="Invalid size"):
        planning.parse_bytes("lots")
    with pytest.raises(ValueError, match="Invalid duration"):
        planning.parse_seconds("12 parsecs")


def test_cli_plan_runs_nothing_and_says_the_data_is_missing_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(planning, "calibrate", lambda image_size, batch_size: CALIBRATION)
    monkeypatch.setattr(runner, "execute", lambda *a, **kw: pytest.fail("--plan must not run a notebook"))
    missing = tmp_path / "absent"
    args = ["run", "03", "--profile", "full", "--plan", "-p", "data_dir", str(missing), "--device-memory", "100GB"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if str(missing) in line] == [
        f"Plan of profile 'full' (nothing runs). Data: {missing} not found: counts assumed from Street10's "
        "published 4,151 images."
    ]
    assert "imagenet-transfer" in out and "device memory: fits" in out

    assert main([*args[:-1], "1MB", "--json"]) == 1  # a budget that does not fit: exit status 1
    assert '"fits": false' in capsys.readouterr().out


def test_cli_plan_bad_budget_is_one_line(tmp_path, capsys):
    assert main(["run", "--profile", "demo", "--plan", "--budget", "soon"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Invalid duration 'soon'" in err


class _ParamsAsNames(ast.NodeTransformer):
    """``params["x"]`` and ``params.get("x", default)`` -> ``x``: the plan's reading of a notebook parameter."""

    def visit_Subscript(self, node):
        if isinstance(node.value, ast.Name) and node.value.id == "params":
            return ast.Name(node.slice.value)
        return self.generic_visit(node)

    def visit_Call(self, node):
        if isinstance(node.func, ast.Attribute) and getattr(node.func.value, "id", "") == "params":
            return ast.Name(node.args[0].value)
        return self.generic_visit(node)


def _preset_keywords(source, phase):
    """The keywords of the ``RunConfig.preset(phase, ...)`` call in Python source: dict name -> source text."""
    tree = _ParamsAsNames().visit(ast.parse(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "preset" and node.args[0].value == phase:
            return {k.arg: ast.unparse(k.value) for k in node.keywords}
    raise AssertionError(f"no RunConfig.preset({phase!r}, ...) call")


@pytest.mark.parametrize(
    ("number", "phase", "builder"),
    [("03", "transfer", planning.transfer_run_config), ("04", "finetune", planning.finetune_run_config)],
)
def test_run_configs_are_built_as_the_notebooks_build_them(number, phase, builder):
    cells = json.loads(runner.find_notebook(number).read_text())["cells"]
    code = "\n".join(
        "".join(c["source"]) for c in cells if c["cell_type"] == "code" and "preset(" in "".join(c["source"])
    )
    assert _preset_keywords(inspect.getsource(builder), phase) == _preset_keywords(code, phase)
