"""Tests for the synthetic street generator: determinism, validation, the written dataset, and the property the
dataset exists for: region can be learned from the cue pixels and from nothing else."""

import errno
import json
import re

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from streetlib.classes import SYNTH10
from streetlib.cli.commands import main
from streetlib.data import synth
from streetlib.data.loaders import DataError, load_street10

PER_CLASS = 100
REGION = SYNTH10.region_of_class
# Held-out accuracy of a region classifier that has nothing to go on: 0.5, give or take 3.5 standard errors
# over the 500 test images.
CHANCE_TOLERANCE = 0.08


def _stack(by_class):
    return np.concatenate([by_class[c] for c in SYNTH10.classes])


@pytest.fixture(scope="module")
def probe():
    """100 images per class at 32 px; the first half of every class trains, the second half tests."""
    images, masks = synth.make_synthetic(per_class=PER_CLASS, size=32, seed=7)
    city = np.repeat(np.arange(SYNTH10.num_classes), PER_CLASS)
    train = np.tile(np.arange(PER_CLASS), SYNTH10.num_classes) < PER_CLASS // 2
    return _stack(images), _stack(masks), city, train


def _pool(a, cells):
    n, h = a.shape[:2]
    step = h // cells
    a = a[:, : cells * step, : cells * step].reshape(n, cells, step, cells, step, *a.shape[3:])
    return a.mean(axis=(2, 4)).reshape(n, -1)


def _floor_features(images):
    """Coarse pixels and a joint colour histogram: enough for a linear model to pick up a palette or a layout."""
    x = images.astype(np.float32) / 255.0
    bins = (images // 64).astype(np.int64) @ np.array([16, 4, 1])
    colours = np.stack([np.bincount(b.ravel(), minlength=64) for b in bins]) / bins[0].size
    return np.concatenate([_pool(x, 8), colours], axis=1)


def _features(images):
    """`_floor_features` and where the horizontal and vertical edges are: enough for a linear model to pick up a
    palette, a layout or a texture that gives the label away."""
    grey = images.astype(np.float32).mean(axis=-1) / 255.0
    across = np.abs(np.diff(grey, axis=2))[:, :-1]
    down = np.abs(np.diff(grey, axis=1))[:, :, :-1]
    return np.concatenate([_floor_features(images), _pool(across, 4), _pool(down, 4)], axis=1)


def _held_out_accuracy(features, labels, train):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    model.fit(features[train], labels[train])
    return model.score(features[~train], labels[~train])


def _fill_cues(images, masks, how):
    filled = images.copy()
    cue = masks == 1
    if how == "constant":
        filled[cue] = 128
    else:
        filled[cue] = np.random.default_rng(0).integers(0, 256, (int(cue.sum()), 3), dtype=np.uint8)
    return filled


def test_same_seed_gives_identical_arrays():
    a_images, a_masks = synth.make_synthetic(per_class=2, size=32, seed=3)
    b_images, b_masks = synth.make_synthetic(per_class=2, size=32, seed=3)
    c_images, _ = synth.make_synthetic(per_class=2, size=32, seed=4)
    assert list(a_images) == list(SYNTH10.classes)
    for cls in SYNTH10.classes:
        assert a_images[cls].tobytes() == b_images[cls].tobytes()
        assert a_masks[cls].tobytes() == b_masks[cls].tobytes()
        assert not np.array_equal(a_images[cls], c_images[cls])


def test_more_images_per_class_keeps_the_earlier_ones():
    few, _ = synth.make_synthetic(per_class=2, size=32, seed=5)
    more, _ = synth.make_synthetic(per_class=3, size=32, seed=5)
    for cls in SYNTH10.classes:
        np.testing.assert_array_equal(more[cls][:2], few[cls])


@pytest.mark.parametrize("size", [32, 48])
def test_any_size_from_32(size):
    images, masks = synth.make_synthetic(per_class=1, size=size, seed=0)
    for cls in SYNTH10.classes:
        assert images[cls].shape == (1, size, size, 3) and images[cls].dtype == np.uint8
        assert masks[cls].shape == (1, size, size) and masks[cls].dtype == np.uint8
        assert set(np.unique(masks[cls])) <= {0, 1}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 16}, r"Invalid `size`. Expected an int >= 32. Received: size=16"),
        ({"size": 40.0}, r"Invalid `size`.*Received: size=40.0"),
        ({"per_class": 0}, r"Invalid `per_class`. Expected an int >= 1. Received: per_class=0"),
        ({"seed": -1}, r"Invalid `seed`.*Received: seed=-1"),
        ({"task": "shapes"}, r"Invalid `task`. Expected one of \('cues', 'layout'\). Received: task='shapes'"),
    ],
)
def test_invalid_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth.make_synthetic(**{"per_class": 1, **kwargs})


def test_generate_round_trips_through_load_street10(tmp_path):
    out = synth.generate(tmp_path / "demo", per_class=2, size=32, seed=1, progress=False)
    data = load_street10(out)
    images, masks = synth.make_synthetic(per_class=2, size=32, seed=1)
    assert data.synthetic and data.name == "demo" and data.spec.classes == SYNTH10.classes
    np.testing.assert_array_equal(data.images, _stack(images))
    np.testing.assert_array_equal(data.masks, _stack(masks))
    np.testing.assert_array_equal(data.region, np.repeat([0, 1], 10))
    assert data.meta["generator"] == "streetlib.data.synth" and data.meta["seed"] == 1 and data.meta["size"] == 32
    assert data.meta["mean_cue_fraction"] == pytest.approx(synth.cue_fraction(data.masks).mean())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        synth.generate(out, per_class=1, size=32, progress=False)


def test_cue_fraction(probe):
    _, masks, _, _ = probe
    fraction = synth.cue_fraction(masks)
    assert fraction.shape == (len(masks),)
    assert 0.05 <= fraction.mean() <= 0.25
    assert (fraction > 0).mean() > 0.95
    with pytest.raises(ValueError, match=r"Invalid `masks`.*shape=\(32, 32\)"):
        synth.cue_fraction(masks[0])


def test_region_and_city_are_learnable_from_the_images(probe):
    images, _, city, train = probe
    features = _features(images)
    region_accuracy = _held_out_accuracy(features, REGION[city], train)
    city_accuracy = _held_out_accuracy(features, city, train)
    assert 0.75 <= region_accuracy < 0.98
    assert 0.3 < city_accuracy < region_accuracy


@pytest.mark.parametrize("how", ["constant", "noise"])
def test_region_is_at_chance_once_cues_are_filled(probe, how):
    images, masks, city, train = probe
    features = _features(_fill_cues(images, masks, how))
    assert abs(_held_out_accuracy(features, REGION[city], train) - 0.5) <= CHANCE_TOLERANCE
    # The street style outside the cues still tells the twin pairs apart.
    assert _held_out_accuracy(features, city % 5, train) > 0.5


def test_the_mask_alone_gives_no_region(probe):
    _, masks, city, train = probe
    features = _pool(masks.astype(np.float32), 16)
    assert abs(_held_out_accuracy(features, REGION[city], train) - 0.5) <= CHANCE_TOLERANCE


def test_unlabelled_cues_make_region_unlearnable(probe):
    _, _, city, train = probe
    images, _ = synth.make_synthetic(per_class=PER_CLASS, size=32, seed=7, cues=False)
    accuracy = _held_out_accuracy(_features(_stack(images)), REGION[city], train)
    assert abs(accuracy - 0.5) <= CHANCE_TOLERANCE


LAYOUT_PER_CLASS = 60
# As CHANCE_TOLERANCE, over the layout task's 300 test images.
LAYOUT_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def layout_probe():
    """The layout task, 60 images per class at 64 px (its panels need the room); half of every class trains."""
    images, masks = synth.make_synthetic(per_class=LAYOUT_PER_CLASS, size=64, seed=7, task="layout")
    city = np.repeat(np.arange(SYNTH10.num_classes), LAYOUT_PER_CLASS)
    train = np.tile(np.arange(LAYOUT_PER_CLASS), SYNTH10.num_classes) < LAYOUT_PER_CLASS // 2
    return _stack(images), _stack(masks), city, train


def _local_features(images, filters=24, size=5):
    """What the first convolutions of a network see, summed over the picture: random 5x5 filters over the three
    channels, rectified and averaged over all positions (the part of an image a feature sees is 6 pixels at VGG16's
    block1_pool)."""
    x = images.astype(np.float32) / 255.0
    weights = np.random.default_rng(0).normal(size=(size, size, 3, filters)).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))  # (n, h, w, 3, 5, 5)
    responses = np.einsum("nhwcij,ijcf->nhwf", windows, weights, optimize=True)
    return np.concatenate([np.maximum(responses, 0).mean(axis=(1, 2)), np.maximum(-responses, 0).mean(axis=(1, 2))], 1)


def _order_features(images, masks):
    """For each vertical distance d between the panels of a pair: how much more the cue pixels d rows above other
    cue pixels are horizontal edges (bands) than vertical ones (bars), minus the same d rows below."""
    grey = images.astype(np.float32).mean(axis=-1) / 255.0
    down, across = np.abs(np.diff(grey, axis=1))[:, :, :-1], np.abs(np.diff(grey, axis=2))[:, :-1]
    cue = masks[:, :-1, :-1].astype(np.float32)
    bands = (down - across) * cue
    return np.stack(
        [(bands[:, :-d] * cue[:, d:]).sum((1, 2)) - (bands[:, d:] * cue[:, :-d]).sum((1, 2)) for d in range(8, 30, 2)],
        axis=1,
    )


def test_layout_cues_cover_a_minority_of_nearly_every_picture(layout_probe):
    _, masks, _, _ = layout_probe
    fraction = synth.cue_fraction(masks)
    assert 0.05 <= fraction.mean() <= 0.25 and (fraction > 0).mean() > 0.95


def test_in_the_layout_task_region_is_in_the_order_of_the_panels_only(layout_probe):
    images, masks, city, train = layout_probe
    region = REGION[city]
    # Neither coarse pixels and colours, nor local features summed over the picture, nor where the cues are tell the
    # region; the order of bands and bars within the pairs does, and so does a coarse map of where horizontal and
    # vertical edges are (16-pixel cells see both panels: a feature deeper than the first convolutions).
    for features in (_floor_features(images), _local_features(images), _pool(masks.astype(np.float32), 16)):
        assert abs(_held_out_accuracy(features, region, train) - 0.5) <= LAYOUT_TOLERANCE
    assert _held_out_accuracy(_order_features(images, masks), region, train) >= 0.85
    assert _held_out_accuracy(_features(images), region, train) >= 0.7
    # The twin pair's street style and colours still tell the pairs apart.
    assert _held_out_accuracy(_floor_features(images), city % 5, train) > 0.5


class _CountingPool(synth.concurrent.futures.ProcessPoolExecutor):
    """A process pool that records how many workers it was asked for."""

    started = []

    def __init__(self, max_workers, **kwargs):
        _CountingPool.started.append(max_workers)
        super().__init__(max_workers, **kwargs)


def test_worker_processes_draw_the_same_images(monkeypatch):
    # Small chunks that straddle class boundaries, and a worker for every image, so this tiny dataset is drawn by
    # 2 spawned processes, out of order.
    monkeypatch.setattr(synth, "_CHUNK", 4)
    monkeypatch.setattr(synth, "_IMAGES_PER_WORKER", 1)
    monkeypatch.setattr(synth.concurrent.futures, "ProcessPoolExecutor", _CountingPool)
    _CountingPool.started.clear()
    serial_images, serial_masks = synth.make_synthetic(per_class=3, size=32, seed=2, workers=1)
    assert _CountingPool.started == []
    images, masks = synth.make_synthetic(per_class=3, size=32, seed=2, workers=2)
    assert _CountingPool.started == [2]
    assert list(images) == list(SYNTH10.classes)
    # Exact equality is right here: each image is drawn by the same integer drawing code (Pillow's rasteriser) and
    # the same numpy float32 element-wise arithmetic from its own seed, with no BLAS or kernel chosen per CPU or
    # thread count, so which process draws it cannot change a byte.
    for cls in SYNTH10.classes:
        assert np.array_equal(images[cls], serial_images[cls])
        assert np.array_equal(masks[cls], serial_masks[cls])


def test_small_datasets_are_drawn_in_this_process(monkeypatch):
    monkeypatch.setattr(synth.concurrent.futures, "ProcessPoolExecutor", _CountingPool)
    _CountingPool.started.clear()
    synth.make_synthetic(per_class=2, size=32, seed=0, workers=4)
    assert _CountingPool.started == []
    assert 1 <= synth._check_workers(None) <= synth._MAX_DEFAULT_WORKERS


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_invalid_workers_are_named(workers):
    match = r"Invalid `workers`. Expected None or an int >= 1. Received: workers=" + re.escape(repr(workers))
    with pytest.raises(ValueError, match=match):
        synth.make_synthetic(per_class=1, size=32, workers=workers)


def _ensure(root, **kwargs):
    lines = []
    params = {"per_class": 1, "size": 32, "seed": 0, "progress": False, "workers": 1, **kwargs}
    return synth.ensure(root, report=lines.append, **params), lines


def test_ensure_generates_then_reuses_the_same_parameters(tmp_path):
    root = tmp_path / "demo"
    out, lines = _ensure(root)
    assert out == root and json.loads((root / "dataset.json").read_text())["per_class"] == 1
    made = "per_class=1, size=32, seed=0, replicates=1, task='cues'"
    assert lines == [f"Wrote the synthetic dataset to {root} ({made})"]
    written = (root / "synth-w1.npy").stat().st_mtime_ns
    out, lines = _ensure(root)
    assert lines == [f"Reusing the synthetic dataset in {root} ({made})"]
    assert (root / "synth-w1.npy").stat().st_mtime_ns == written


@pytest.mark.parametrize(
    "kwargs, differs",
    [
        ({"per_class": 2}, "per_class=1, not per_class=2"),
        ({"size": 40}, "size=32, not size=40"),
        ({"seed": 3, "per_class": 2}, "per_class=1, seed=0, not per_class=2, seed=3"),
        ({"replicates": 2}, "replicates=1, not replicates=2"),
        ({"task": "layout", "size": 64}, "size=32, task='cues', not size=64, task='layout'"),
    ],
)
def test_ensure_refuses_a_dataset_made_with_other_parameters(tmp_path, kwargs, differs):
    root = tmp_path / "demo"
    _ensure(root)
    before = load_street10(root).images
    with pytest.raises(FileExistsError) as info:
        _ensure(root, **kwargs)
    message = str(info.value)
    assert "\n" not in message and f"{root} holds a dataset made with {differs}." in message
    assert "pass overwrite=True" in message
    np.testing.assert_array_equal(load_street10(root).images, before)

    _, lines = _ensure(root, overwrite=True, **kwargs)
    assert lines[0].startswith("Wrote")
    meta = json.loads((root / "dataset.json").read_text())
    made = {k: meta[k] for k in ("per_class", "size", "seed", "replicates", "task")}
    assert made == {"per_class": 1, "size": 32, "seed": 0, "replicates": 1, "task": "cues", **kwargs}


def test_a_dataset_json_from_before_tasks_is_the_cues_task(tmp_path):
    root = tmp_path / "demo"
    _ensure(root)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["task"]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert _ensure(root)[1][0].startswith("Reusing")
    with pytest.raises(FileExistsError, match="task='cues', not task='layout'"):
        _ensure(root, task="layout")


def test_replicates_are_independent_draws_stored_one_after_the_other(tmp_path):
    data = load_street10(synth.generate(tmp_path / "r", per_class=2, size=32, seed=1, replicates=3, progress=False))
    once = load_street10(synth.generate(tmp_path / "o", per_class=2, size=32, seed=1, progress=False))
    assert data.replicates == 3 and len(data) == 60 and data.meta["per_class"] == 2
    np.testing.assert_array_equal(data.replicate, np.tile(np.repeat([0, 1, 2], 2), 10))
    # Replicate 0 is the dataset drawn once; the others are new images (no image appears twice).
    np.testing.assert_array_equal(data.images[data.replicate == 0], once.images)
    assert len(set(data.content_hashes())) == 60 and once.replicate is None


def test_a_replicate_count_that_does_not_divide_the_classes_is_refused(tmp_path):
    root = synth.generate(tmp_path / "r", per_class=3, size=32, replicates=1, progress=False)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "replicates": 2}))
    with pytest.raises(DataError, match=r"says 2 replicates, but class file\(s\) .*do not split into 2 equal parts"):
        load_street10(root)


@pytest.mark.parametrize("size", [7, 0, -32])
def test_ensure_checks_the_size_before_anything(tmp_path, size):
    _ensure(tmp_path / "demo")
    with pytest.raises(ValueError, match=rf"^Invalid `size`. Expected an int >= 32. Received: size={size}$"):
        _ensure(tmp_path / "demo", size=size)
    with pytest.raises(ValueError, match="Invalid `size`"):
        _ensure(tmp_path / "new", size=size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


@pytest.mark.parametrize(
    "content, problem",
    [
        ({"synth-w1.npy": b"\x93NUMPY"}, "holds class files but no dataset.json"),
        ({"dataset.json": b'{"name": "street10", "synthetic": false}'}, "holds a dataset not made by"),
        ({"dataset.json": b"{trunc"}, "dataset.json is not valid JSON"),
    ],
)
def test_ensure_refuses_an_incomplete_or_other_dataset(tmp_path, content, problem):
    root = tmp_path / "demo"
    root.mkdir()
    for name, data in content.items():
        (root / name).write_bytes(data)
    with pytest.raises(FileExistsError, match=problem):
        _ensure(root)
    assert sorted(p.name for p in root.iterdir()) == sorted(content)
    _ensure(root, overwrite=True)
    assert len(load_street10(root)) == 10


def _fail_on_call(monkeypatch, n):
    """Make the n-th np.save fail as on a full disk."""
    calls = []
    save = np.save

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(*args, **kwargs)

    monkeypatch.setattr(np, "save", full_disk)


def test_generate_on_a_full_disk_leaves_nothing_and_a_rerun_works(tmp_path, monkeypatch):
    root = tmp_path / "demo"
    _fail_on_call(monkeypatch, 3)
    with pytest.raises(OSError, match=rf"No space left on device: '{root}'") as info:
        synth.generate(root, per_class=1, size=32, progress=False, workers=1)
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    _ensure(root)
    assert len(load_street10(root)) == 10 and sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_cli_synth_if_missing_is_one_rule_with_ensure(tmp_path, capsys):
    out = str(tmp_path / "demo")
    synth_args = ["data", "synth", "--out", out, "--per-class", "1", "--size", "32", "--if-missing"]
    assert main(synth_args) == 0
    assert "Wrote the synthetic dataset" in capsys.readouterr().out
    assert main([*synth_args, "--seed", "2"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            f"{out} holds a dataset made with seed=0, not seed=2. Choose another data_dir (--out), or pass "
            f"overwrite=True (--overwrite) to replace it."
        )
    )
    assert main([*synth_args[:-3], "--size", "7", "--if-missing"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Invalid `size`. Expected an int >= 32. Received: size=7" in err


@pytest.mark.slow
def test_notebook_00_stops_on_a_dataset_made_with_other_parameters(tmp_path, monkeypatch):
    from streetlib.experiments import runner

    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path))  # the kernels inherit it

    def run_00(**overrides):
        (result,) = runner.run(
            ["00"],
            profile="smoke",
            overrides=overrides,
            force=True,
            out_dir=tmp_path / "executed",
            progress=False,
            report=lambda line: None,
        )
        return result

    assert run_00().status == "done"
    root = tmp_path / "data" / "synth-smoke"
    result = run_00(per_class=20)
    assert result.status == "failed" and "holds a dataset made with per_class=6, not per_class=20" in result.error
    assert json.loads((root / "dataset.json").read_text())["per_class"] == 6
    result = run_00(image_size=7)
    assert result.status == "failed" and "Invalid `size`. Expected an int >= 32. Received: size=7" in result.error
    # New images invalidate the saved splits (one per seed of the profile), which make_splits refuses to reuse; the
    # person deletes them.
    for split in (tmp_path / "data" / "splits").glob("synth-smoke-seed*.json"):
        split.unlink()
    result = run_00(per_class=20, overwrite=True)
    assert result.status == "done", result.error
    assert json.loads((root / "dataset.json").read_text())["per_class"] == 20
