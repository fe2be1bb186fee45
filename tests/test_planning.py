import ast
import inspect
import json

import keras
import numpy as np
import pytest

from streetlib.attribution.leaderboard import LeaderboardConfig
from streetlib.classes import STREET10
from streetlib.cli.commands import main
from streetlib.data.loaders import load_street10, write_street10
from streetlib.data.splits import make_split
from streetlib.experiments import parameters, planning, runner, study
from streetlib.experiments.planning import calibration, costs, counts, report, units, work
from streetlib.models import network
from streetlib.training.config import ExecutionConfig

# Seconds per pass given, not measured: no test depends on this machine's speed.
CALIBRATION = calibration.Calibration(forward=0.01, backward=0.02, device="given", image_size=64, batch_size=4)


def _params(profile, number, overrides):
    notebook = runner.find_notebook(number)
    params = runner.resolve_parameters(notebook, runner.load_profile(profile), overrides)
    return {**parameters.notebook_parameters(notebook), **params}


@pytest.mark.parametrize("profile", ["demo", "full"])
def test_training_runs_are_what_notebooks_03_and_04_train(profile, tmp_path):
    overrides = {"data_dir": str(tmp_path / "absent")}
    plan = work.make_plan(["03", "04"], profile=profile, overrides=overrides)
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
    plan = work.make_plan(["03"], profile="full", overrides={"data_dir": str(tmp_path / "absent")})
    assert plan.data.assumed and plan.data.total == 4151 and "not found" in plan.data.note
    # As make_split sizes the published Street10 (tests/test_splits.py).
    assert plan.data.split_sizes() == {"train": 3166, "val": 564, "test": 421}


def test_street10_counts_come_from_the_npy_headers(tmp_path, monkeypatch):
    per_class = [12, 10, 11, 10, 13, 10, 10, 14, 10, 10]
    rng = np.random.default_rng(0)
    images = {
        c: rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for c, n in zip(STREET10.classes, per_class, strict=True)
    }
    write_street10(tmp_path / "s10", images, classes=STREET10)
    split = make_split(load_street10(tmp_path / "s10"), seed=42, directory=tmp_path / "splits")

    read = []
    original = np.load
    monkeypatch.setattr(np, "load", lambda *a, **kw: read.append(kw.get("mmap_mode")) or original(*a, **kw))
    data = counts.count_images(tmp_path / "s10")
    assert read == ["r"] * 10  # memory-mapped headers, the images never read
    assert not data.assumed and data.total == sum(per_class) and data.image_shape == (8, 8)
    assert data.split_sizes() == {"train": len(split.train), "val": len(split.val), "test": len(split.test)}


def test_image_folder_counts_its_files_per_class(tmp_path):
    for n, cls in enumerate(STREET10.classes, start=1):
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"{i}.jpg").touch()
        (tmp_path / cls / "notes.txt").touch()
    data = counts.count_images(tmp_path, source="folder", image_size=96)
    assert data.counts == {cls: n for n, cls in enumerate(STREET10.classes, start=1)}
    assert data.image_shape == (96, 96) and not data.assumed


def test_synthetic_data_not_generated_is_per_class_times_ten(tmp_path):
    data = counts.count_images(tmp_path / "synth", source="synth", per_class=7, image_size=32)
    assert data.assumed and data.total == 70 and "not generated yet" in data.note


def test_layer_flops_are_kernel_size_times_output_positions():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(5, 3, padding="same")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    flops = costs.layer_flops(keras.Model(inputs, outputs))
    assert [f for _, f in flops] == [8 * 8 * 3 * 3 * 3 * 4, 4 * 4 * 3 * 3 * 4 * 5, 5 * 2]


def test_training_passes_follow_the_formulas():
    # Cached: the frozen part once per cached image (2 copies of 10 training images, 4 validation ones), then the
    # trainable part forward on every image and backward (x2) on the training ones, each epoch.
    forward, backward = costs.training_passes(10, 4, epochs=3, frozen=0.75, trainable=0.25, cached_copies=2)
    assert forward == pytest.approx(0.75 * 24 + 3 * 0.25 * 14)
    assert backward == pytest.approx(3 * 2 * 0.25 * 10)
    # Without a cache the whole model runs forward every epoch.
    forward, backward = costs.training_passes(10, 4, epochs=3, frozen=0.75, trainable=0.25, cached_copies=0)
    assert forward == pytest.approx(3 * 14) and backward == pytest.approx(3 * 2 * 0.25 * 10)


def test_method_passes_follow_their_parameters():
    assert costs.method_passes("grad_cam", {}, channels=512, image_size=224) == (1, 0)
    assert costs.method_passes("score_cam", {}, channels=512, image_size=224) == (513, 0)
    assert costs.method_passes("saliency", {}, channels=512, image_size=224) == (1, 2)
    assert costs.method_passes("smoothgrad", {"samples": 4}, channels=0, image_size=32) == (5, 8)
    assert costs.method_passes("integrated_gradients", {"steps": 3}, channels=0, image_size=32) == (4, 8)
    # 32 px, a 16 px square moved by 8: 3 x 3 positions, plus the pass that picks the class.
    assert costs.method_passes("occlusion", {"patch": 16, "stride": 8}, channels=0, image_size=32) == (10, 0)
    assert costs.method_passes("rise", {"masks": 50}, channels=0, image_size=32) == (51, 0)


def _block1_share(image_size):
    """block1's share of a VGG16 pass at the plan's image size: the frozen part of the demo's recipe (cut after
    block1_pool)."""
    frozen = costs.layer_flops(network.build_backbone("vgg16", input_shape=(image_size, image_size, 3)))
    return sum(f for name, f in frozen if name.startswith("block1")) / sum(f for _, f in frozen)


def test_a_cached_transfer_costs_one_frozen_pass_per_cached_image(tmp_path):
    # With augmentation each run caches its own augmented copies (no shared store): 2 copies of its training split.
    overrides = {"data_dir": str(tmp_path / "absent"), "epochs": 1, "augment": True, "augment_copies": 2}
    plan = work.make_plan(["03"], profile="demo", overrides=overrides)
    split = plan.data.split_sizes()
    transfer = plan.work[0]
    assert transfer.cache.startswith("memory") and transfer.shared == 0  # 2 copies fit the default 2 GiB
    extraction = _block1_share(transfer.image_size) * (2 * split["train"] + split["val"])
    # The conv head on top is small: an epoch adds a few percent, not another pass of the frozen part.
    assert extraction < transfer.forward < 1.5 * extraction


def test_transfer_runs_share_one_extraction_per_pretrained_source(tmp_path):
    """Notebook 03 without augmentation: one `cache.FeatureStore` runs a pretrained frozen part over the whole dataset
    once for all seeds; random weights, drawn per seed, once per seed."""
    seeds = [42, 43, 44]
    overrides = {
        "data_dir": str(tmp_path / "absent"),
        "split_seeds": seeds,
        "weight_sources": ["hed-bsds500", "random"],
        "replicates": 1,
    }
    plan = work.make_plan(["00", "03"], profile="demo", overrides=overrides)
    pretrained, random = plan.work
    extraction = _block1_share(pretrained.image_size) * plan.data.total
    assert pretrained.cache.startswith("shared") and random.cache.startswith("shared")
    assert pretrained.shared == pytest.approx(extraction) and random.shared == 0
    assert random.forward == pytest.approx(pretrained.forward + extraction)  # each seed extracts its own
    assert pretrained.passes == pytest.approx((pretrained.forward + pretrained.backward) * len(seeds) + extraction)
    assert random.passes - pretrained.passes == pytest.approx((len(seeds) - 1) * extraction)
    # Per run, only the head's epochs: the training formula without the frozen part's passes.
    split = plan.data.split_sizes()
    head = pretrained.backward / (2 * pretrained.epochs * split["train"])
    expected = costs.training_passes(
        split["train"], split["val"], epochs=pretrained.epochs, frozen=1.0, trainable=head, cached_copies=1, shared=True
    )
    assert (pretrained.forward, pretrained.backward) == pytest.approx(expected)
    seconds = plan.work[0].seconds(CALIBRATION)
    assert seconds == pytest.approx(
        len(seeds) * (pretrained.forward * 0.01 + pretrained.backward * 0.02) + extraction * 0.01
    )
    # The store holds every entry it took, within its memory: the pretrained source's, then one per random seed.
    entry = pretrained.host_bytes
    assert random.host_bytes == min(ExecutionConfig().max_cache_bytes, entry * (1 + len(seeds)))


def test_seeds_of_a_replicated_dataset_extract_their_own_replicate(tmp_path):
    """The demo's 24 replicates: each seed's pool is a 24th of the images, extracted for that seed, pretrained or
    random, and its splits are sized from one replicate."""
    overrides = {"data_dir": str(tmp_path / "absent"), "split_seeds": [42, 43], "weight_sources": ["hed-bsds500"]}
    plan = work.make_plan(["00", "03"], profile="demo", overrides=overrides)
    assert plan.data.replicates == 24 and plan.data.pool == plan.data.total // 24 == 3000
    assert plan.data.split_sizes() == {"train": 2290, "val": 410, "test": 300}
    (pretrained,) = plan.work
    single = work.make_plan(["00", "03"], profile="demo", overrides={**overrides, "replicates": 1}).work[0]
    # One replicate of 3,000 images is the whole single-draw dataset: the same extraction, counted per seed.
    assert pretrained.shared == 0 and single.shared == pytest.approx(_block1_share(single.image_size) * 3000)
    assert pretrained.forward == pytest.approx(single.forward + single.shared)


def test_a_kept_cache_is_disk_for_notebook_03_and_saves_04s_continued_runs_their_pass(tmp_path):
    """The layout profile: notebook 03 keeps its augmented copies on disk (``keep_features``) and 04's continued runs
    read them instead of running the frozen part (blocks 1-3) over 2 copies of the training split and the validation
    split again."""
    overrides = {"data_dir": str(tmp_path / "absent"), "split_seeds": [56, 57], "weight_sources": ["hed-bsds500"]}
    plans = {
        keep: work.make_plan(["03", "04"], profile="layout", overrides={**overrides, "keep_features": keep}).work
        for keep in (True, False)
    }
    (transfer, _, continued), (own_transfer, _, own_continued) = plans[True], plans[False]
    assert (transfer.cache.split()[:2], continued.cache.split()[:2]) == (["kept", "(write)"], ["kept", "(read)"])
    assert own_transfer.cache.startswith("memory") and own_continued.cache.startswith("kept (write)")
    split = work.make_plan(["03"], profile="layout", overrides=overrides).data.split_sizes()
    frozen = costs.layer_flops(network.build_backbone("vgg16", input_shape=(64, 64, 3)))
    share = sum(f for name, f in frozen if name[:6] in ("block1", "block2", "block3")) / sum(f for _, f in frozen)
    extraction = share * (2 * split["train"] + split["val"])
    assert own_continued.forward - continued.forward == pytest.approx(extraction)
    assert transfer.forward == pytest.approx(own_transfer.forward)
    cache_bytes = (2 * split["train"] + split["val"]) * 8 * 8 * 256 * 4  # float32 block3_pool maps at 64 px
    assert transfer.disk_bytes - own_transfer.disk_bytes == 2 * cache_bytes
    assert transfer.host_bytes == 0 and own_transfer.host_bytes == cache_bytes


def test_leaderboard_passes_follow_the_formulas():
    spec = LeaderboardConfig(methods=("grad_cam", "saliency"), outputs=("region",), control_images=4, curve_steps=2)
    n, k, curve = 10, 4, 2 * (2 + 1)
    # Per method: maps of n images, a 1-image tracing call, each sanity check's maps of k images, k deletion and
    # insertion curves; per output: logits and timing calls (4 passes an image and a 2-image warm-up), the floor's
    # curves. Grad-CAM costs (1, 0) an image, saliency (1, 2).
    for permuted, checks in ((True, 3), (False, 2)):
        maps = n + 1 + checks * k
        forward, backward = costs.leaderboard_passes(spec, n, channels=8, image_size=32, permuted=permuted)
        assert forward == pytest.approx(2 * (maps + curve * k) + 4 * n + 2 + curve * k)
        assert backward == pytest.approx(2 * maps)


def test_attribution_plan_scores_every_seeds_model_and_trains_the_permuted_label_model(tmp_path, monkeypatch):
    calls = []
    original = work.leaderboard_passes
    monkeypatch.setattr(work, "leaderboard_passes", lambda *a, **kw: calls.append((a, kw)) or original(*a, **kw))
    absent = {"data_dir": str(tmp_path / "absent")}
    plan = work.make_plan(["05"], profile="demo", overrides=absent)
    params = _params("demo", "05", absent)
    seeds = params["split_seeds"]
    permuted, board, other = plan.work
    split = plan.data.split_sizes()
    # The leaderboard runs on each seed's model with its share of the images, every sanity check included.
    share = -(-params["leaderboard_images"] // len(seeds))
    assert board.seeds == tuple(seeds) and board.images == f"{share} test a seed"
    (spec, images), kwargs = calls[0][0][:2], calls[0][1]
    assert images == min(share, split["test"]) and kwargs["permuted"] is True
    assert spec.control_images == -(-params["control_images"] // len(seeds))
    assert board.passes == pytest.approx((board.forward + board.backward) * len(seeds))
    # The data randomisation check trains the headline's first phase once, on the first seed's split, for
    # permuted_epochs, caching its own split's features: notebook 03's transfer run at those epochs, extraction apart.
    assert (permuted.notebook, permuted.seeds, permuted.epochs) == ("05", (seeds[0],), params["permuted_epochs"])
    # (Drawn once: with replicates each transfer run's forward passes include its seed's extraction.)
    once = {**absent, "epochs": params["permuted_epochs"], "replicates": 1}
    transfer = work.make_plan(["00", "03"], profile="demo", overrides=once).work[0]
    extraction = _block1_share(transfer.image_size) * (split["train"] + split["val"])
    assert permuted.forward == pytest.approx(transfer.forward + extraction) and permuted.shared == 0
    assert permuted.backward == pytest.approx(transfer.backward)
    assert other.seeds == () and other.runs == 1


def test_budgets_say_fits_or_what_is_needed(tmp_path):
    plan = work.make_plan(["03"], profile="demo", overrides={"data_dir": str(tmp_path / "absent")})
    seconds = plan.seconds(CALIBRATION)
    expected = sum(w.runs * (w.forward * 0.01 + w.backward * 0.02) + w.shared * 0.01 for w in plan.work)
    assert seconds == pytest.approx(expected)
    roomy = report.check_budgets(
        plan, CALIBRATION, seconds=2 * seconds, host_bytes=2 * plan.host_bytes, disk_bytes=2 * plan.disk_bytes
    )
    assert [c["what"] for c in roomy] == ["time", "host memory", "disk"] and all(c["fits"] for c in roomy)
    assert roomy[0]["line"].startswith("time: fits")
    tight = report.check_budgets(plan, CALIBRATION, seconds=seconds / 2, device_bytes=plan.device_bytes // 2)
    assert not any(c["fits"] for c in tight)
    assert tight[1]["line"].startswith("device memory: does not fit: ") and "needed" in tight[1]["line"]
    assert report.check_budgets(plan, CALIBRATION) == []


def test_host_memory_counts_the_runtime_and_on_a_cpu_the_device_memory(tmp_path):
    overrides = {"data_dir": str(tmp_path / "absent")}
    gpu = work.make_plan(["03", "04"], profile="full", overrides=overrides, device="Tesla T4")
    cpu = work.make_plan(["03", "04"], profile="full", overrides=overrides, device="CPU (AMD EPYC)")
    images = gpu.data.total * 224 * 224 * 3
    assert gpu.host_bytes == work.RUNTIME_BYTES + images + max(w.host_bytes for w in gpu.work)
    # A CPU's device memory is host memory: the work holding the most decides the peak.
    assert cpu.host_bytes == work.RUNTIME_BYTES + images + max(w.host_bytes + w.device_bytes for w in cpu.work)
    assert cpu.host_bytes > gpu.host_bytes and cpu.device_bytes == gpu.device_bytes
    assert "the device being the CPU, its device memory" in report.format_plan(cpu, CALIBRATION)
    assert "the largest feature cache held)" in report.format_plan(gpu, CALIBRATION)
    assert json.loads(report.to_json(cpu, CALIBRATION))["host_includes_device"] is True


def test_sizes_and_durations_parse():
    assert units.parse_bytes("15GB") == 15 * 10**9
    assert units.parse_bytes("1.5 GiB") == int(1.5 * 2**30)
    assert units.parse_seconds("12h") == 12 * 3600 and units.parse_seconds("90m") == 5400
    with pytest.raises(ValueError, match="Invalid size"):
        units.parse_bytes("lots")
    with pytest.raises(ValueError, match="Invalid duration"):
        units.parse_seconds("12 parsecs")


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
    [("03", "transfer", work.transfer_run_config), ("04", "finetune", work.finetune_run_config)],
)
def test_run_configs_are_built_as_the_notebooks_build_them(number, phase, builder):
    cells = json.loads(runner.find_notebook(number).read_text())["cells"]
    code = "\n".join(
        "".join(c["source"]) for c in cells if c["cell_type"] == "code" and "preset(" in "".join(c["source"])
    )
    assert _preset_keywords(inspect.getsource(builder), phase) == _preset_keywords(code, phase)


def test_baseline_features_of_a_grid_pooling_are_k_by_k_cells(tmp_path):
    """Notebook 02 of the demo reads block1_pool averaged over a 2 x 2 grid ('grid2')."""
    absent = {"data_dir": str(tmp_path / "absent")}
    plan = work.make_plan(["02"], profile="demo", overrides=absent)
    params = _params("demo", "02", absent)
    assert params["poolings"] == ["grid2"] and params["layer"] == "block1_pool"
    (features,) = plan.work
    split = plan.data.split_sizes()
    images = plan.data.total + sum(k * len(params["split_seeds"]) * split["train"] for k in params["augment_copies"])
    # block1_pool has 64 channels, averaged over 2 x 2 cells: 256 float32 values an image.
    assert features.host_bytes == images * 2 * 2 * 64 * 4
    assert features.disk_bytes == features.host_bytes * len(params["weight_sources"])
