import dataclasses
import errno
import gc
import hashlib
import json
import weakref
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from conftest import assert_same_computation, make_toy_data, run_script

from streetlib.evaluation.evaluate import predict
from streetlib.models import network, weights
from streetlib.runs import RunId, RunLayout
from streetlib.training import cache, train
from streetlib.training.config import ExecutionConfig, RunConfig
from streetlib.training.strategy import choose_strategy, precision_policy

TESTS = Path(__file__).resolve().parent
SMALL = {"image_size": 32, "batch_size": 16}
QUIET = ExecutionConfig(verbose=0)


def _config(phase="transfer", **overrides):
    """A small, quick configuration of a phase."""
    return RunConfig.preset(phase, **{**SMALL, **overrides})


@pytest.fixture(scope="module")
def transfer_runs(toy_data, toy_data_split, tmp_path_factory):
    """The same transfer run (2 epochs, no augmentation) on the plain path and on cached features."""
    root = tmp_path_factory.mktemp("transfer")
    dirs = {"hists_dir": root / "hists", "models_dir": root / "models"}
    start = _StartWeights()
    return (
        {
            cache: train.run_phase(
                toy_data,
                toy_data_split,
                _config(epochs=2, augment=False, cache=cache),
                run=RunId("eq", f"transfer-{cache}"),
                layout=RunLayout(**dirs),
                execution=QUIET,
                callbacks=[start],
            )
            for cache in ("none", "features")
        },
        dirs,
        start.weights,
    )


COMPARED_LAYERS = ("fc1", "fc1_bn", "fc2", "city_logits", "block5_conv3")


def _weights(model, name):
    backbone = model.get_layer("backbone")
    layer = backbone.get_layer(name) if name.startswith("block") else model.get_layer(name)
    return layer.get_weights()


class _StartWeights(keras.callbacks.Callback):
    """Keeps the compared layers' weights as the first training it is given begins (pass it to the plain path first:
    the cached path trains a head without the backbone): dict layer name -> list of arrays."""

    weights = None

    def on_train_begin(self, logs=None):
        if self.weights is None:
            self.weights = {name: _weights(self.model, name) for name in COMPARED_LAYERS}


# Two paths of one training computation (features cached or recomputed each step) differ only by rounding noise, but
# Nadam divides each step by the root of the squared-gradient average: where a gradient is near zero that noise can
# become a step of up to the learning rate in that one weight (2e-4 seen on an AVX2 CPU), so no elementwise
# tolerance is both safe and tight. Such weights are few, so across a layer the difference between the paths stays a
# tiny fraction of what training moved the layer, while a real divergence (another split, augmentation on, a layer
# trained or not) changes every step and differs by about the whole move.
MAX_DIVERGENCE = 1e-2  # of the layer's own change since training began
# Losses and accuracies follow from those weights; one validation image of 10 changing sides moves an accuracy by 0.1.
HISTORY_RTOL = 1e-3


def _assert_same_training(a, b, start):
    assert list(a.history.columns) == list(b.history.columns)
    accuracy = a.history.columns.str.contains("accuracy|top3")
    np.testing.assert_allclose(a.history.loc[:, ~accuracy], b.history.loc[:, ~accuracy], rtol=HISTORY_RTOL)
    assert np.abs(a.history.loc[:, accuracy].to_numpy() - b.history.loc[:, accuracy].to_numpy()).max() <= 0.1 + 1e-6
    for name in COMPARED_LAYERS:
        for wa, wb, w0 in zip(_weights(a.model, name), _weights(b.model, name), start[name], strict=True):
            moved = np.linalg.norm(wa - w0)
            assert np.linalg.norm(wa - wb) <= MAX_DIVERGENCE * moved, (name, np.linalg.norm(wa - wb), moved)


def test_cached_features_train_like_the_plain_path(transfer_runs, toy_data, toy_data_split):
    runs, dirs, start = transfer_runs
    assert runs["none"].manifest["cache_plan"]["mode"] == "none"
    size = (40 + 10) * 512 * 4
    assert runs["features"].manifest["cache_plan"] == {
        "mode": "features",
        "store": "memory",
        "copies": 1,
        "bytes": size,
        "path": None,
        "reason": f"no augmentation: exact; in memory: {size} bytes <= max_cache_bytes={2 * 2**30}",
    }
    # The head really trained (so agreeing is not two untouched models agreeing).
    assert runs["none"].history["city_loss"].iloc[-1] != runs["none"].history["city_loss"].iloc[0]
    _assert_same_training(runs["none"], runs["features"], start)

    finetune_start = _StartWeights()
    finetuned = {
        cache: train.run_phase(
            toy_data,
            toy_data_split,
            _config("finetune", epochs=2, augment=False, cache=cache),
            run=RunId("eq", f"finetune-{cache}"),
            init_from=runs["features"],
            layout=RunLayout(**dirs),
            execution=QUIET,
            callbacks=[finetune_start],
        )
        for cache in ("none", "features")
    }
    assert finetuned["features"].manifest["cache_plan"]["bytes"] == (40 + 10) * 2 * 2 * 512 * 4  # block4_pool output
    assert finetuned["none"].manifest["config"]["weights"] == "hed-bsds500"  # the source of init_from
    # The file a fine-tune's weights were read from is the model it starts from.
    init = runs["features"].best_path
    assert finetuned["none"].manifest["config"]["weights_file"] == {
        "path": str(init.resolve()),
        "sha256": hashlib.sha256(init.read_bytes()).hexdigest(),
        "verified": None,
        "detail": "the model this fine-tune starts from (init_from)",
    }
    _assert_same_training(finetuned["none"], finetuned["features"], finetune_start.weights)
    block5 = finetuned["none"].model.get_layer("backbone").get_layer("block5_conv1").get_weights()[0]
    block4 = finetuned["none"].model.get_layer("backbone").get_layer("block4_conv3").get_weights()[0]
    start = runs["features"].model.get_layer("backbone")
    assert not np.allclose(block5, start.get_layer("block5_conv1").get_weights()[0])  # block5 trained
    np.testing.assert_array_equal(block4, start.get_layer("block4_conv3").get_weights()[0])  # block4 frozen


@pytest.mark.parametrize("change", [{"augment": True}, {"seed": 1}], ids=["augmented", "other-shuffle"])
def test_the_comparison_of_two_trainings_catches_a_real_divergence(transfer_runs, toy_data, toy_data_split, change):
    runs, dirs, start = transfer_runs
    other = train.run_phase(
        toy_data,
        toy_data_split,
        _config(epochs=2, cache="none", **{"augment": False, **change}),
        run=RunId("eq", "transfer-diverged"),
        layout=RunLayout(**dirs),
        execution=ExecutionConfig(force=True, verbose=0),
    )
    with pytest.raises(AssertionError):
        _assert_same_training(runs["none"], other, start)


def test_a_run_writes_history_manifest_and_models(transfer_runs, toy_data, toy_data_split):
    runs, dirs, _ = transfer_runs
    result = runs["features"]
    files = result.paths
    assert files["history"] == dirs["hists_dir"] / "eq" / "transfer-features.csv"
    assert files["best_model"] == dirs["models_dir"] / "eq" / "transfer-features.best.keras"
    assert not files["backup"].exists()  # removed once the run finished
    from streetlib.inference import read_sidecar

    sidecar = read_sidecar(files["best_model"])
    assert sidecar["normalization"] == "caffe-bvlc" and sidecar["image_size"] == SMALL["image_size"]
    assert tuple(sidecar["classes"]["regions"]) == toy_data.spec.region_names

    history = pd.read_csv(files["history"])
    assert history["epoch"].tolist() == [0, 1]
    assert {"city_accuracy", "city_top3", "region_loss", "val_city_accuracy", "val_city_loss", "learning_rate"} <= set(
        history.columns
    )

    manifest = json.loads(files["manifest"].read_text())
    assert manifest["status"] == "complete" and manifest["epochs_done"] == 2
    config = manifest["config"]
    assert config["weights"] == "hed-bsds500" and config["normalization"] == "caffe-bvlc"
    assert config["weights_file"]["verified"] is True and config["weights_file"]["path"].endswith(".weights.h5")
    assert config["weights_file"]["sha256"] == hashlib.sha256(Path(weights._hed_file()).read_bytes()).hexdigest()
    assert config["optimizer"] == {"name": "nadam", "learning_rate": 0.002}
    assert config["loss_weights"] == {"region": 0.5, "city": 1.0} and config["frozen_through"] == "backbone"
    assert manifest["dataset"]["label"] == "toy (synthetic demo data)" and len(manifest["dataset"]["hash"]) == 40
    assert manifest["split"]["sizes"] == {"train": 40, "val": 10, "test": 10} and len(manifest["split"]["hash"]) == 40
    assert manifest["environment"]["packages"]["keras"] == keras.__version__
    assert manifest["environment"]["replicas"] == 1 and "commit" in manifest["environment"]["git"]
    assert manifest["wall_time_s"] > 0 and manifest["params"]["trainable"] == 331_148

    best = keras.models.load_model(files["best_model"], safe_mode=True)
    keras.models.load_model(files["final_model"], safe_mode=True)
    probs = predict(best, toy_data, toy_data_split.val, normalization="caffe-bvlc", image_size=32)["city"]
    accuracy = np.mean(probs.argmax(axis=1) == toy_data.city[toy_data_split.val])
    assert accuracy == pytest.approx(history["val_city_accuracy"].max())
    assert manifest["best_val_city_accuracy"] == pytest.approx(history["val_city_accuracy"].max())


def test_finished_runs_are_never_overwritten(transfer_runs, toy_data, toy_data_split):
    runs, dirs, _ = transfer_runs
    config = _config(epochs=1, augment=False, cache="none")
    kwargs = dict(run=RunId("eq", "transfer-none"), layout=RunLayout(**dirs))
    with pytest.raises(FileExistsError, match="'transfer-none' of experiment 'eq' already has results"):
        train.run_phase(toy_data, toy_data_split, config, execution=QUIET, **kwargs)
    redone = train.run_phase(
        toy_data, toy_data_split, config, execution=ExecutionConfig(force=True, verbose=0), **kwargs
    )
    assert redone.history.index.tolist() == [0]
    assert json.loads(redone.paths["manifest"].read_text())["config"]["epochs"] == 1


KILL_SCRIPT = """
import os, sys
import numpy as np, keras
sys.path.insert(0, {tests!r})
from conftest import make_toy_data, toy_split
from streetlib.training import train
from streetlib.training.config import ExecutionConfig, RunConfig
from streetlib.runs import RunId, RunLayout

from conftest import run_script

class KillAtEpoch2(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            np.save({dump!r}, self.model.get_layer("fc1").get_weights()[0])
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            os._exit(17)  # a hard kill: no exception handler, no on_train_end, no clean-up

data = make_toy_data()
config = RunConfig.preset("transfer", epochs=4, image_size=32, batch_size=16, augment=False, cache="none")
train.run_phase(data, toy_split(data), config, run=RunId("resume", "r"), callbacks=[KillAtEpoch2()],
                layout=RunLayout(hists_dir={hists!r}, models_dir={models!r}), execution=ExecutionConfig(verbose=0))
"""


class _FirstEpoch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.epoch is None:
            self.epoch = epoch
            self.fc1 = self.model.get_layer("fc1").get_weights()[0]
            self.iterations = int(self.model.optimizer.iterations.numpy())


def test_a_killed_run_resumes_where_it_stopped(tmp_path, toy_data, toy_data_split):
    dirs = {"hists_dir": str(tmp_path / "hists"), "models_dir": str(tmp_path / "models")}
    dump = tmp_path / "fc1_after_epoch1.npy"
    script = KILL_SCRIPT.format(tests=str(TESTS), dump=str(dump), **{k[:-4]: v for k, v in dirs.items()})
    killed = run_script(script)
    assert killed.returncode == 17, killed.stderr[-3000:]

    csv = tmp_path / "hists" / "resume" / "r.csv"
    manifest = json.loads((tmp_path / "hists" / "resume" / "r.json").read_text())
    backup = tmp_path / "models" / "resume" / "r.backup"
    before = pd.read_csv(csv)
    assert before["epoch"].tolist() == [0, 1]
    assert manifest["status"] == "running" and manifest["epochs_done"] == 2
    assert [p.name for p in backup.iterdir()] == ["epoch-0002.weights.h5"]  # one file, the last finished epoch
    # A kill between an epoch's CSV row and its backup leaves a row that will be redone: resuming must drop it.
    with open(csv, "a") as f:
        f.write(",".join(["2"] + ["0.5"] * (len(before.columns) - 1)) + "\n")

    config = _config(epochs=4, augment=False, cache="none")
    where = dict(run=RunId("resume", "r"), layout=RunLayout(**dirs))
    with pytest.raises(FileExistsError, match=r"was interrupted. Pass ExecutionConfig\(resume=True\)"):
        train.run_phase(toy_data, toy_data_split, config, execution=ExecutionConfig(resume=False, verbose=0), **where)
    with pytest.raises(ValueError, match=r"Cannot resume run 'r' with different parameters \(seed: 0 -> 1\)"):
        train.run_phase(toy_data, toy_data_split, config.replace(seed=1), execution=QUIET, **where)

    first = _FirstEpoch()
    result = train.run_phase(toy_data, toy_data_split, config, execution=QUIET, callbacks=[first], **where)

    assert first.epoch == 2  # training continued at the epoch it was killed in
    np.testing.assert_array_equal(first.fc1, np.load(dump))  # from the weights it had reached
    assert first.iterations == 2 * 3  # and the optimizer state: 2 epochs of 3 steps (40 images, batch 16)
    after = pd.read_csv(csv)
    assert after["epoch"].tolist() == [0, 1, 2, 3]  # every epoch exactly once
    pd.testing.assert_frame_equal(after.iloc[:2], before)  # the epochs before the kill are kept as they were
    assert after.loc[2, "city_loss"] != 0.5
    assert result.manifest["status"] == "complete" and result.manifest["resumed_at_epochs"] == [2]
    best = int(after["val_city_accuracy"].idxmax())
    assert result.manifest["best_epoch"] == best
    assert result.manifest["best_val_city_accuracy"] == pytest.approx(after["val_city_accuracy"].max())
    assert result.manifest["wall_time_s"] > manifest["wall_time_s"]
    assert not backup.exists()


class FullDiskAtEpoch(keras.callbacks.Callback):
    """Makes the run's backup write fail at one epoch as a full disk would: part of the file is written, then ENOSPC."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self.epoch:
            return

        def save_weights(filepath, overwrite=True):
            Path(filepath).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # an HDF5 signature and no more
            raise OSError(errno.ENOSPC, "No space left on device", str(filepath))

        self.model.save_weights = save_weights


def test_a_full_disk_while_backing_up_leaves_a_run_that_resumes(tmp_path, toy_data, toy_data_split):
    config = _config(epochs=3, augment=False, cache="none")
    where = dict(run=RunId("disk", "r"), layout=RunLayout(hists_dir=tmp_path / "hists", models_dir=tmp_path / "models"))
    backup = tmp_path / "models" / "disk" / "r.backup"
    with pytest.raises(OSError, match=r"Could not write the run's backup .*epoch-0002\.weights\.h5: No space left"):
        train.run_phase(toy_data, toy_data_split, config, execution=QUIET, callbacks=[FullDiskAtEpoch(1)], **where)
    # Nothing half-written is left: the last good backup (epoch 1 done) is the only file.
    assert [p.name for p in backup.iterdir()] == ["epoch-0001.weights.h5"]
    first = _FirstEpoch()
    result = train.run_phase(toy_data, toy_data_split, config, execution=QUIET, callbacks=[first], **where)
    assert first.epoch == 1 and result.history.index.tolist() == [0, 1, 2]
    assert result.manifest["status"] == "complete" and not backup.exists()


def test_a_damaged_backup_is_set_aside_and_the_run_starts_over(tmp_path, toy_data, toy_data_split):
    config = _config(epochs=2, augment=False, cache="none")
    where = dict(
        run=RunId("damaged", "r"), layout=RunLayout(hists_dir=tmp_path / "hists", models_dir=tmp_path / "models")
    )
    files = where["layout"].files(where["run"])
    # An interrupted run whose backup was damaged outside streetlib (a disk error, another program).
    with pytest.raises(OSError):
        train.run_phase(toy_data, toy_data_split, config, execution=QUIET, callbacks=[FullDiskAtEpoch(0)], **where)
    files["backup"].mkdir(exist_ok=True)
    (files["backup"] / "epoch-0001.weights.h5").write_bytes(b"not an HDF5 file")
    with pytest.warns(
        UserWarning, match=r"epoch-0001\.weights\.h5 cannot be opened\): moved to .*r\.backup\.damaged-1"
    ):
        result = train.run_phase(toy_data, toy_data_split, config, execution=QUIET, **where)
    assert result.history.index.tolist() == [0, 1] and result.manifest["status"] == "complete"
    kept = files["backup"].with_name("r.backup.damaged-1") / "epoch-0001.weights.h5"
    assert kept.read_bytes() == b"not an HDF5 file"  # set aside, not deleted


DISTRIBUTED_SCRIPT = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {tests!r})
from conftest import make_toy_data, toy_split
from streetlib.training import train
from streetlib.training.config import ExecutionConfig, RunConfig
from streetlib.runs import RunId, RunLayout

from conftest import run_script

data = make_toy_data()
out = {{}}
for cache in ("none", "features"):
    config = RunConfig.preset("transfer", epochs=1, image_size=32, batch_size=16, augment=False, cache=cache)
    result = train.run_phase(data, toy_split(data), config, run=RunId("dist", cache),
                             layout=RunLayout(hists_dir={root!r} + "/hists", models_dir={root!r} + "/models"),
                             execution=ExecutionConfig(strategy="mirrored", verbose=0))
    out[cache] = {{"env": result.manifest["environment"], "loss": float(result.history["loss"].iloc[-1]),
                  "epochs": result.history.index.tolist()}}
print("RESULT" + json.dumps(out))
"""


def test_training_under_mirrored_strategy_on_two_cpus(tmp_path):
    script = DISTRIBUTED_SCRIPT.format(tests=str(TESTS), root=str(tmp_path))
    done = run_script(script)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT")[-1])
    for mode in ("none", "features"):
        env = out[mode]["env"]
        assert env["strategy"] == "MirroredStrategy" and env["replicas"] == 2
        assert out[mode]["epochs"] == [0] and np.isfinite(out[mode]["loss"])
    assert (tmp_path / "models" / "dist" / "none.best.keras").is_file()


def test_a_best_model_saved_in_a_redone_epoch_is_stale():
    previous = {"best_epoch": 1, "best_val_city_accuracy": 0.4}
    assert train._saved_best(previous, 2) == {"best": 0.4, "best_epoch": 1}
    # Saved in epoch 2, killed before epoch 2's backup: epoch 2 is redone and its best file must be replaced.
    assert train._saved_best({"best_epoch": 2, "best_val_city_accuracy": 0.4}, 2) == {"best": None, "best_epoch": None}
    assert train._saved_best(None, 0) == {"best": None, "best_epoch": None}


def test_augmented_cache_cycles_through_copies():
    n, copies = 5, 3
    features = np.stack([np.full((n, 1), c, np.float32) for c in range(copies)])
    features[:, :, 0] += np.arange(n) / 10.0  # each row says (copy, position)
    labels = {"region": np.zeros(n, np.int32), "city": np.arange(n, dtype=np.int32)}
    ds = cache._feature_dataset(features, labels, batch_size=2, shuffle=True, seed=0, initial_epoch=1)
    batches = list(ds.take(3 * 4))  # 4 epochs of 3 batches
    for e in range(4):
        x = np.concatenate([b[0].numpy()[:, 0] for b in batches[3 * e : 3 * e + 3]])
        city = np.concatenate([b[1]["city"].numpy() for b in batches[3 * e : 3 * e + 3]])
        assert np.all(np.floor(x + 1e-6) == (e + 1) % copies)  # epoch e uses copy e mod K (starting at epoch 1)
        assert sorted(city.tolist()) == list(range(n))  # every image once per epoch
        np.testing.assert_allclose((x - np.floor(x + 1e-6)) * 10, city, atol=1e-4)  # labels follow their features


def test_cache_plan_states_its_choice(toy_data, tmp_path, monkeypatch):
    model = network.build_model(input_shape=(32, 32, 3), classes=toy_data.spec)
    common = {"n_train": 40, "n_val": 10, "max_bytes": 10**6, "directory": tmp_path / "r.features"}
    plan = cache.plan_cache("auto", model, through="backbone", augment=True, copies=4, **common)
    size = (4 * 40 + 10) * 2048
    assert plan == {
        "mode": "features",
        "store": "memory",
        "copies": 4,
        "bytes": size,
        "path": None,
        "reason": f"4 augmented copies of the frozen part's output; in memory: {size} bytes <= max_cache_bytes=1000000",
    }
    monkeypatch.setattr(cache, "_free_bytes", lambda directory: 10**9)
    disk = cache.plan_cache("auto", model, through="backbone", augment=True, copies=4, **{**common, "max_bytes": 10})
    assert disk["store"] == "disk" and disk["path"] == str(tmp_path / "r.features")
    assert disk["reason"].endswith(f"on disk: {size} bytes > max_cache_bytes=10, and 1000000000 bytes are free there")

    monkeypatch.setattr(cache, "_free_bytes", lambda directory: 1000)
    small = {**common, "max_bytes": 10}
    neither = cache.plan_cache("auto", model, through="backbone", augment=True, copies=4, **small)
    assert neither["mode"] == "none" and neither["reason"] == (
        f"a 4-copy feature cache needs {size} bytes: more than max_cache_bytes=10 in memory and than the 1000 bytes "
        f"free on the disk of {tmp_path / 'r.features'}"
    )
    with pytest.raises(OSError, match=r"^cache='features' cannot be kept: a 4-copy feature cache needs"):
        cache.plan_cache("features", model, through="backbone", augment=True, copies=4, **small)
    assert cache.plan_cache("auto", model, through=None, augment=False, copies=1, **common)["reason"] == (
        "nothing is frozen"
    )
    with pytest.raises(ValueError, match="cache='features' needs a frozen part"):
        cache.plan_cache("features", model, through=None, augment=False, copies=1, **common)


def test_finetuning_at_street10s_size_caches_on_disk(tmp_path, monkeypatch):
    # Street10's split at 224 px, fine-tuned above block4_pool with 2 augmented copies, under the default budget:
    # the cache is 2.77 GB, more than the 2 GiB held in memory, so it goes to disk instead of being dropped.
    monkeypatch.setattr(cache, "_free_bytes", lambda directory: 80 * 10**9)  # a Colab disk's free space
    model = network.build_model(input_shape=(224, 224, 3))
    plan = cache.plan_cache(
        "auto",
        model,
        through="block4_pool",
        augment=True,
        copies=2,
        n_train=3166,
        n_val=564,
        max_bytes=ExecutionConfig().max_cache_bytes,
        directory=tmp_path / "r.features",
    )
    assert plan["bytes"] == (2 * 3166 + 564) * 14 * 14 * 512 * 4 == 2_768_109_568
    assert plan["mode"] == "features" and plan["store"] == "disk", plan["reason"]


class _FeatureFiles(keras.callbacks.Callback):
    """Records the cache files present while the run trains."""

    def __init__(self, folder):
        super().__init__()
        self.folder, self.files = folder, None

    def on_train_begin(self, logs=None):
        self.files = sorted(p.name for p in self.folder.iterdir()) if self.folder.exists() else []


def test_a_cache_on_disk_trains_exactly_like_one_in_memory(toy_data, toy_data_split, out_dirs):
    # Two augmented copies: the endless multi-copy dataset, read from a memory map in one run, from RAM in the other.
    config = _config(epochs=2, augment=True, augment_copies=2, cache="features")
    layout = RunLayout(**out_dirs)
    results, seen = {}, {}
    for store, budget in (("memory", 2 * 2**30), ("disk", 0)):
        run = RunId("store", store)
        seen[store] = _FeatureFiles(layout.models("store") / f"{store}.features")
        execution = ExecutionConfig(max_cache_bytes=budget, verbose=0)
        results[store] = train.run_phase(
            toy_data, toy_data_split, config, run=run, layout=layout, execution=execution, callbacks=[seen[store]]
        )
        assert results[store].manifest["cache_plan"]["store"] == store
    assert seen["memory"].files == [] and seen["disk"].files == ["train.npy", "val.npy"]
    assert not (layout.models("store") / "disk.features").exists()  # removed once the run finished
    # The same kernels on the same batches in the same order: the stores hold bit-identical features, so the two
    # trainings are one computation, equal to the last bit.
    pd.testing.assert_frame_equal(results["disk"].history, results["memory"].history, check_exact=True)
    for a, b in zip(results["disk"].model.weights, results["memory"].model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_a_kept_cache_serves_a_continued_run_exactly(toy_data, toy_data_split, out_dirs, monkeypatch):
    # Notebook 03's transfer run keeps its augmented copies; notebook 04's continued run reads them: no second pass,
    # and the same training as a continued run that computes its own (the same features, to the last bit).
    config = _config(epochs=2, augment=True, augment_copies=2, cache="features")
    layout, kept = RunLayout(**out_dirs), RunLayout(**out_dirs).feature_cache
    calls = _Counted(monkeypatch)
    keep = ExecutionConfig(verbose=0, feature_dir=kept)
    first = train.run_phase(toy_data, toy_data_split, config, run=RunId("t", "first"), layout=layout, execution=keep)
    sizes = [len(toy_data_split.train), len(toy_data_split.val)]
    assert calls.sizes == sizes and first.manifest["cache_plan"]["kept"] == "written"
    (folder,) = kept.iterdir()  # one complete cache, no partial folder left
    assert sorted(p.name for p in folder.iterdir()) == ["train.npy", "val.npy"]
    assert first.manifest["cache_plan"]["path"].endswith(folder.name)
    continued = {
        execution: train.run_phase(
            toy_data,
            toy_data_split,
            config,
            run=RunId("c", name),
            layout=layout,
            execution=execution,
            init_from=first.paths["best_model"],
        )
        for name, execution in (("kept", keep), ("own", QUIET))
    }
    assert continued[keep].manifest["cache_plan"]["kept"] == "read"
    assert calls.sizes == sizes * 2  # the run with its own cache made its pass; the kept one made none
    pd.testing.assert_frame_equal(continued[keep].history, continued[QUIET].history, check_exact=True)
    # Without room on the disk nothing is kept: the run caches its split as planned and says why.
    monkeypatch.setattr(cache, "_free_bytes", lambda directory: 0)
    other = _config(epochs=1, augment=True, augment_copies=3, cache="features")
    tight = train.run_phase(toy_data, toy_data_split, other, run=RunId("t", "tight"), layout=layout, execution=keep)
    assert tight.manifest["cache_plan"]["store"] == "memory" and "not kept" in tight.manifest["cache_plan"]["reason"]
    assert list(kept.iterdir()) == [folder]
    with pytest.raises(ValueError, match="Invalid `feature_dir`"):
        ExecutionConfig(feature_dir=3)


def test_the_kept_cache_key_follows_what_the_features_depend_on(toy_data, toy_data_split):
    model = network.build_model(input_shape=(32, 32, 3), classes=toy_data.spec, cut="block1_pool", head="conv")
    frozen, _ = network.split_model(model, through="backbone")
    config = _config(augment=True, augment_copies=2)
    plan = {"copies": 2}

    def key(config=config, split=toy_data_split, plan=plan):
        return cache.split_key(toy_data, split, frozen, plan, config)

    other_split = dataclasses.replace(toy_data_split, train=toy_data_split.train[1:])
    changed = [key(config.replace(seed=1)), key(plan={"copies": 3}), key(split=other_split)]
    changed.append(key(config.replace(batch_size=8)))
    assert key() == key() and len({key(), *changed}) == 5


def test_invalid_starting_models_are_named(toy_data, toy_data_split, tmp_path):
    def run(config, init_from):
        where = {"run": RunId("bad", "r"), "layout": RunLayout(hists_dir=tmp_path, models_dir=tmp_path)}
        return train.run_phase(toy_data, toy_data_split, config, init_from=init_from, **where)

    with pytest.raises(ValueError, match="`init_from` is for phase='finetune'"):
        run(_config("scratch"), tmp_path / "m.keras")
    with pytest.raises(ValueError, match="phase='finetune' needs `init_from`"):
        run(_config("finetune"), None)
    with pytest.raises(ValueError, match=r"Invalid `init_from`. Expected a RunResult or an existing .keras file"):
        run(_config("finetune"), tmp_path / "missing.keras")
    assert not any(tmp_path.iterdir())  # invalid arguments fail before anything is written
    (tmp_path / "m.keras").write_bytes(b"")
    with pytest.raises(ValueError, match="pass `weights=` the weight source of that transfer run"):
        run(_config("finetune"), tmp_path / "m.keras")
    with pytest.raises(ValueError, match=r"Invalid `strategy`.*Received: strategy='gpu'"):
        choose_strategy("gpu")
    with pytest.raises(ValueError, match=r"Invalid `optimizer`.*Received: 'adagrad'"):
        train.make_optimizer("adagrad", learning_rate=0.1)
    assert isinstance(choose_strategy(None), tf.distribute.Strategy)


@pytest.mark.skipif(bool(tf.config.list_logical_devices("GPU")), reason="a GPU computes in float16, not bfloat16")
def test_mixed_precision_on_a_cpu_trains_in_bfloat16_with_float32_outputs(toy_data, toy_data_split, out_dirs):
    # The GPU path rehearsed on a CPU: bfloat16 compute, float32 variables, outputs and loss, and the global policy
    # restored afterwards. Fine-tuning from block2: the trained convolutions backpropagate in bfloat16.
    config = _config("scratch", epochs=1, cut="block2_pool", head="conv", augment=False, mixed_precision=True)
    layout = RunLayout(hists_dir=out_dirs["hists_dir"], models_dir=out_dirs["models_dir"])
    with pytest.warns(UserWarning, match="bfloat16 compute on the CPU .* meant for rehearsing the GPU path"):
        result = train.run_phase(
            toy_data, toy_data_split, config, run=RunId("mixed", "bf16"), layout=layout, execution=QUIET
        )
    assert keras.config.dtype_policy().name == "float32"
    assert result.manifest["config"]["mixed_precision"] is True
    assert np.isfinite(result.history[["loss", "val_loss"]].to_numpy()).all()
    images = toy_data.images[toy_data_split.val[:4]].astype("float32")
    for model in (result.model, keras.models.load_model(result.paths["best_model"], safe_mode=True)):
        conv = model.get_layer("backbone").get_layer("block2_conv2")
        assert conv.dtype_policy.name == "mixed_bfloat16" and conv.kernel.dtype == "float32"
        for output in ("region", "city"):
            assert model.get_layer(output).dtype_policy.name == "float32"
        assert keras.backend.standardize_dtype(model.get_layer("backbone")(images).dtype) == "bfloat16"
        probs = model(images, training=False)
        dtypes = {name: keras.backend.standardize_dtype(p.dtype) for name, p in probs.items()}
        assert dtypes == {"region": "float32", "city": "float32"}
        np.testing.assert_allclose(np.sum(probs["city"], axis=1), 1.0, rtol=1e-5)
    assert keras.config.dtype_policy().name == "float32"


def test_the_precision_policy_is_restored_when_building_fails():
    with pytest.warns(UserWarning, match="mixed_bfloat16"), pytest.raises(RuntimeError, match="boom"):
        with precision_policy(True, tf.distribute.get_strategy()):
            assert keras.config.dtype_policy().name == "mixed_bfloat16"
            raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == "float32"


def test_run_seeds_names_runs_by_seed(toy_data, tmp_path, monkeypatch):
    calls = []

    def fake_run_phase(data, split, config, *, run, **kwargs):
        calls.append((split.seed, config.seed, kwargs["execution"]))
        return run.name

    monkeypatch.setattr(train, "run_phase", fake_run_phase)
    out = train.run_seeds(
        toy_data,
        _config(epochs=1),
        seeds=[3, 4],
        experiment="e",
        config_name="cfg",
        split_kwargs={"test_size": 0.15, "val_size": 0.2, "save": False},
        execution=QUIET,
    )
    assert out == {3: "cfg-seed3", 4: "cfg-seed4"}
    assert calls == [(3, 3, QUIET), (4, 4, QUIET)]  # each run seeded by its split, executed as asked
    with pytest.raises(ValueError, match=r"`init_from` must map every seed \[3, 4\]"):
        train.run_seeds(toy_data, _config(), seeds=[3, 4], experiment="e", config_name="cfg", init_from={3: "a"})


def test_reuse_returns_a_finished_run_and_retrains_one_whose_models_are_gone(toy_data, toy_data_split, out_dirs):
    config = _config(epochs=1, augment=False)
    where = dict(run=RunId("reuse", "r"), layout=RunLayout(**out_dirs))
    reuse = ExecutionConfig(reuse=True, verbose=0)
    first = train.run_phase(toy_data, toy_data_split, config, execution=QUIET, **where)
    finished_at = first.manifest["finished_at"]
    # ExecutionConfig options are not the run's identity: a run trained without XLA is reused when XLA is asked for.
    again = train.run_phase(toy_data, toy_data_split, config, execution=ExecutionConfig(reuse=True, xla=True), **where)
    assert again.manifest["finished_at"] == finished_at  # not trained again
    np.testing.assert_array_equal(
        again.model.get_layer("city_logits").get_weights()[0], first.model.get_layer("city_logits").get_weights()[0]
    )
    with pytest.raises(FileExistsError, match="already has results"):
        train.run_phase(toy_data, toy_data_split, config.replace(epochs=2), execution=reuse, **where)
    for key in ("best_model", "final_model"):
        first.paths[key].unlink()
    with pytest.warns(UserWarning, match="model files are missing.*training it again"):
        retrained = train.run_phase(toy_data, toy_data_split, config, execution=reuse, **where)
    assert retrained.manifest["finished_at"] != finished_at and retrained.paths["best_model"].is_file()
    assert retrained.history.index.tolist() == [0]  # the old history was replaced, not appended to


# -- the feature store shared by runs -------------------------------------------------------------------------------

BLOCK1 = {"cut": "block1_pool", "head": "conv", "filters": 8, "augment": False}


class _Counted:
    """`cache.extract_features`, counting the passes over a dataset and the images each pass ran."""

    def __init__(self, monkeypatch):
        self.sizes, self._extract = [], cache.extract_features
        monkeypatch.setattr(cache, "extract_features", self)

    def __call__(self, frozen, datasets, *, size, **kwargs):
        self.sizes.append(size)
        return self._extract(frozen, datasets, size=size, **kwargs)


def test_the_frozen_part_runs_once_per_source_whatever_the_number_of_seeds(toy_data, out_dirs, monkeypatch):
    calls = _Counted(monkeypatch)
    store = cache.FeatureStore(2**30)
    common = {"experiment": "store", "split_kwargs": {"test_size": 0.15, "val_size": 0.2, "save": False}}
    where = {"layout": RunLayout(**out_dirs), "execution": QUIET, "store": store}
    pretrained = train.run_seeds(
        toy_data, _config(epochs=1, **BLOCK1), seeds=[1, 2, 3], config_name="hed", **common, **where
    )
    # One pass over every image of the dataset, for three seeds: pretrained weights are the same for each.
    assert calls.sizes == [len(toy_data)] and store.extractions == 1
    for result in pretrained.values():
        plan = result.manifest["cache_plan"]
        assert plan["shared"] is True and plan["bytes"] == len(toy_data) * 16 * 16 * 64 * 4
    # A run continued later from the store (another configuration, the same frozen part) extracts nothing more.
    train.run_seeds(
        toy_data, _config(epochs=1, **BLOCK1, dropout=0.1), seeds=[1], config_name="hed2", **common, **where
    )
    assert calls.sizes == [len(toy_data)]
    # Random weights are drawn anew for each seed: one pass per seed, as their features differ.
    random = _config(epochs=1, **BLOCK1, weights="random")
    train.run_seeds(toy_data, random, seeds=[1, 2], config_name="random", **common, **where)
    assert calls.sizes == [len(toy_data)] * 3 and store.extractions == 3


def test_a_run_served_by_the_store_trains_like_one_caching_its_own_split(toy_data, toy_data_split, out_dirs):
    config = _config(epochs=2, **BLOCK1)
    layout = RunLayout(**out_dirs)
    store = cache.FeatureStore(2**30)
    own = train.run_phase(toy_data, toy_data_split, config, run=RunId("s", "own"), layout=layout, execution=QUIET)
    shared = train.run_phase(
        toy_data, toy_data_split, config, run=RunId("s", "shared"), layout=layout, execution=QUIET, store=store
    )
    assert "shared" not in own.manifest["cache_plan"] and shared.manifest["cache_plan"]["shared"] is True
    assert list(own.history.columns) == list(shared.history.columns)
    np.testing.assert_allclose(own.history.to_numpy(), shared.history.to_numpy(), rtol=HISTORY_RTOL)
    for name in ("head_conv1", "city_logits"):
        for a, b in zip(
            own.model.get_layer(name).get_weights(), shared.model.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_store_keeps_what_fits_its_budget(toy_data):
    model = network.build_model(input_shape=(32, 32, 3), classes=toy_data.spec, cut="block1_pool", head="conv")
    frozen, _ = network.split_model(model, through="backbone")
    every = np.arange(len(toy_data))
    entry = len(toy_data) * cache.feature_bytes(frozen)
    common = {"normalization": "caffe-bvlc", "image_size": 32, "batch_size": 16}
    store = cache.FeatureStore(entry)
    assert store.fits(frozen, every) and not cache.FeatureStore(entry - 1).fits(frozen, every)
    first = store.features(frozen, toy_data, every, **common)
    assert first.shape == (len(toy_data), 16, 16, 64) and not first.flags.writeable
    assert store.features(frozen, toy_data, every, **common) is first and store.extractions == 1
    # Another normalisation is another entry; the budget holds one, so the older one is dropped.
    other = store.features(frozen, toy_data, every, **{**common, "normalization": "samplewise"})
    assert not np.array_equal(first, other) and store.extractions == 2
    store.features(frozen, toy_data, every, **common)
    assert store.extractions == 3
    with pytest.raises(ValueError, match=r"Invalid `max_bytes`. Expected an int >= 0. Received: max_bytes=-1"):
        cache.FeatureStore(-1)


def test_a_pool_is_an_entry_of_its_own_holding_its_images_features(toy_data):
    model = network.build_model(input_shape=(32, 32, 3), classes=toy_data.spec, cut="block1_pool", head="conv")
    frozen, _ = network.split_model(model, through="backbone")
    common = {"normalization": "caffe-bvlc", "image_size": 32, "batch_size": 16}
    store = cache.FeatureStore(2**30)
    every = store.features(frozen, toy_data, np.arange(len(toy_data)), **common)
    odd = np.arange(1, len(toy_data), 2)
    part = store.features(frozen, toy_data, odd, **common)
    assert store.extractions == 2 and part.shape == (len(odd), *every.shape[1:])
    # The same images through the same frozen part, batched otherwise.
    assert_same_computation(part, every[odd])


@pytest.mark.parametrize("copies", [1, 2])
def test_a_feature_dataset_frees_its_cache_with_it(copies):
    # TensorFlow never drops a numpy_function's Python function: had it held the cache, every run's features would
    # stay in memory until the process ends.
    features = np.random.default_rng(0).random((copies, 6, 2, 2, 3), dtype=np.float32)
    labels = {"city": np.arange(6, dtype=np.int32)}
    ds = cache._feature_dataset(features, labels, batch_size=4, shuffle=True, seed=0, initial_epoch=0)
    batches = list(ds.take(2))
    for x, y in batches[:1]:  # the first epoch reads copy 0; each image's row is its label here
        np.testing.assert_array_equal(x.numpy(), features[0][y["city"].numpy()])
    assert sum(len(b[0]) for b in batches) == 6  # one epoch: a batch of 4, then the last 2
    alive = weakref.ref(features)
    del features, ds, batches
    gc.collect()
    assert alive() is None


def test_seeds_of_a_replicated_dataset_extract_their_own_replicate_once(out_dirs, monkeypatch):
    data = make_toy_data(per_class=12)
    data.replicate = np.tile(np.repeat([0, 1], 6), 10)  # each class's first 6 images, then its last 6
    calls = _Counted(monkeypatch)
    store = cache.FeatureStore(2**30)
    common = {"experiment": "store", "split_kwargs": {"test_size": 0.15, "val_size": 0.2, "save": False}}
    where = {"layout": RunLayout(**out_dirs), "execution": QUIET, "store": store}
    runs = train.run_seeds(data, _config(epochs=1, **BLOCK1), seeds=[4, 5, 6], config_name="hed", **common, **where)
    # Seeds 4 and 6 draw from replicate 0, seed 5 from replicate 1: one pass over each replicate's 60 images.
    assert calls.sizes == [60, 60] and store.extractions == 2
    assert {r.manifest["cache_plan"]["bytes"] for r in runs.values()} == {60 * 16 * 16 * 64 * 4}


def test_the_frozen_key_follows_the_weights_not_the_names(toy_data):
    def frozen(seed, name):
        model = network.build_model(
            input_shape=(32, 32, 3), classes=toy_data.spec, cut="block1_pool", head="conv", seed=seed, name=name
        )
        return network.split_model(model, through="backbone")[0]

    common = {"normalization": "caffe-bvlc", "image_size": 32}
    key = cache.frozen_key(frozen(1, "a"), toy_data, **common)
    assert cache.frozen_key(frozen(1, "b"), toy_data, **common) == key  # the run's model name does not count
    assert cache.frozen_key(frozen(2, "a"), toy_data, **common) != key  # other random weights
    assert cache.frozen_key(frozen(1, "a"), toy_data, normalization="samplewise", image_size=32) != key


def test_a_continued_transfer_trains_the_extra_epochs_from_the_transfers_best_weights(
    toy_data, toy_data_split, out_dirs
):
    layout = RunLayout(**out_dirs)
    transfer = train.run_phase(
        toy_data, toy_data_split, _config(epochs=3, **BLOCK1), run=RunId("c", "t"), layout=layout, execution=QUIET
    )
    best = keras.models.load_model(transfer.best_path, safe_mode=True)
    start_layers = ("head_conv1", "city_logits")
    seen = {}

    class _Start(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            # The model being fit is the head on cached features: compare the layers it holds.
            seen.update({name: self.model.get_layer(name).get_weights() for name in start_layers})

    continued = train.run_phase(
        toy_data,
        toy_data_split,
        _config(epochs=2, **BLOCK1),
        run=RunId("c", "t-continued"),
        init_from=transfer,
        layout=layout,
        execution=QUIET,
        callbacks=[_Start()],
    )
    for name in start_layers:  # the head starts from the best epoch's weights, not the last epoch's
        for a, b in zip(seen[name], best.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    assert len(continued.history) == 2
    assert continued.history["city_loss"].iloc[-1] != transfer.history["city_loss"].iloc[-1]
    # The backbone stays frozen, as in the transfer run.
    for a, b in zip(_weights(continued.model, "block1_conv2"), _weights(transfer.model, "block1_conv2"), strict=True):
        np.testing.assert_array_equal(a, b)
    record = continued.manifest["config"]
    assert record["phase"] == "transfer" and record["init_from"] == str(transfer.best_path.resolve())
    assert record["weights_file"]["detail"] == "the model this run continues (init_from)"
    with pytest.raises(ValueError, match=r"`init_from` is for phase='finetune' \(or 'transfer'"):
        train.run_phase(toy_data, toy_data_split, _config("scratch"), run=RunId("c", "s"), init_from=transfer)


def test_the_cosine_schedule_trains_each_epoch_at_its_rate(toy_data, toy_data_split, out_dirs):
    config = _config(epochs=4, augment=False, cache="none", lr_schedule="cosine")
    result = train.run_phase(
        toy_data, toy_data_split, config, run=RunId("cos", "r"), layout=RunLayout(**out_dirs), execution=QUIET
    )
    rates = pd.read_csv(result.paths["history"])["learning_rate"].to_numpy()
    # Epoch e of 4 at 2e-3 * (1 + cos(pi e / 4)) / 2: the optimizer's variable holds float32, hence rtol 1e-6.
    np.testing.assert_allclose(rates, [2e-3, 2e-3 * (2 + 2**0.5) / 4, 1e-3, 2e-3 * (2 - 2**0.5) / 4], rtol=1e-6)
    assert result.manifest["config"]["lr_schedule"] == "cosine"
    # Without the setting, runs keep the schedule they had before it existed.
    assert train.learning_rate_schedule(_config()).__class__ is keras.callbacks.ReduceLROnPlateau
