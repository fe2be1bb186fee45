"""Training runs: the transfer, fine-tune and from-scratch phases, with records that survive an interruption.

One run writes, for experiment ``<experiment>`` and run ``<run>`` (where: `streetlib.runs.RunLayout`):

- ``hists/<experiment>/<run>.csv``: one row per epoch (Keras's CSVLogger). A resumed run appends; rows of epochs
  that are about to be redone are dropped first, so each epoch appears exactly once.
- ``hists/<experiment>/<run>.json``: the manifest (`streetlib.training.manifest`: every parameter, the weight source
  and the file its weights were read from with its SHA-256, data and split hashes, package versions, git commit,
  device, wall time, the feature-cache decision, status).
- ``models/<experiment>/<run>.best.keras`` (the epoch with the best validation city accuracy) and
  ``<run>.final.keras`` (the last epoch), both loadable with ``keras.models.load_model(path, safe_mode=True)``.
- ``models/<experiment>/<run>.backup/``: the state of the run while it is unfinished (`RunBackup`: weights and
  optimizer after the last finished epoch, written atomically; a damaged one is set aside, never deleted).
- ``models/<experiment>/<run>.features/``: a feature cache too large for memory, while the run lasts
  (`streetlib.training.cache`; `run_seeds` shares one `FeatureStore` between its seeds).
- ``ExecutionConfig.feature_dir`` (notebooks: `RunLayout.feature_cache`), when given: a run's own feature cache,
  kept there for later runs under a key of everything it depends on.

A resumed run restores the weights, the optimizer state (learning rate included) and the epoch from its backup;
the patience counters of ReduceLROnPlateau and EarlyStopping start again from zero, and the plain path's shuffle
order restarts its sequence.
"""

import json
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import pandas as pd

from streetlib import paths
from streetlib.classes import OUTPUTS
from streetlib.data.splits import make_split
from streetlib.models import network
from streetlib.models.weight_files import leaf_layers, load_by_name
from streetlib.paths import atomic_path
from streetlib.runs import RunId, dataset_layout
from streetlib.training.cache import FeatureStore, plan_cache, scratch_folder, training_datasets
from streetlib.training.callbacks import BestModelSaver, EpochProgress, ManifestRecord, RunBackup
from streetlib.training.config import MONITOR, OPTIMIZERS, ExecutionConfig, RunConfig
from streetlib.training.manifest import start_manifest, weights_file_record, write_json, write_sidecars
from streetlib.training.strategy import choose_strategy, precision_policy


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
        execution: `config.ExecutionConfig`, how to run it (resume, force, reuse, strategy, XLA, feature cache
            budget, verbosity); never part of the run's identity. Default ``ExecutionConfig()``.
        callbacks: list of extra `keras.callbacks.Callback`, called after streetlib's own.
        store: a `FeatureStore` shared with other runs, or None (default): this run caches its own split. Used
            when the run trains on cached features without augmentation and the dataset's features fit the store.

    Returns:
        `RunResult`.

    Raises:
        FileExistsError: the run already has results (pass ``ExecutionConfig(force=True)`` or another run), or it was
            interrupted and ``execution.resume`` is False.
        ValueError: an invalid ``init_from``, or a resume with a different configuration.
    """
    execution = execution or ExecutionConfig()
    layout = dataset_layout(layout, data.name)
    run_files = layout.files(run)
    init_path, config = _resolve_init(config, init_from)
    state = _reuse_state(run, run_files, config, init_path, execution)
    if state == "reuse":
        return _load_finished(run_files)
    record = config.to_manifest(
        run,
        init_from=paths.portable(init_path) if init_path else None,
        weights_file=weights_file_record(config, init_path),
        xla=execution.xla,
    )
    force = execution.force or state == "retrain"
    initial_epoch, restore, previous = _prepare_outputs(
        run_files, run, config, record, resume=execution.resume, force=force
    )
    _truncate_history(run_files["history"], initial_epoch)

    strategy = choose_strategy(execution.strategy)
    manifest = start_manifest(data, split, record, previous, initial_epoch, strategy)
    write_json(run_files["manifest"], manifest)
    write_sidecars(layout, run, data, record, run_files["manifest"])

    started = time.monotonic()
    with scratch_folder(layout.models(run.experiment) / f"{run.name}.features") as features_dir:
        with precision_policy(config.mixed_precision, strategy), strategy.scope():
            model = _build_model(data, config, run, init_path)
            plan = _plan_run_cache(model, split, config, execution, features_dir)
            plan, (train_ds, val_ds, steps, train_model) = training_datasets(
                data,
                split,
                model,
                plan,
                config,
                initial_epoch=initial_epoch,
                directory=features_dir,
                store=store,
                keep=execution.feature_dir,
            )
            _compile(train_model, config, xla=execution.xla)
        manifest.update(
            cache_plan=plan, params=network.count_params(model), trainable_layers=network.trainable_layers(model)
        )
        write_json(run_files["manifest"], manifest)

        saver = BestModelSaver(model, run_files["best_model"], monitor=MONITOR, **_saved_best(previous, initial_epoch))
        progress = ManifestRecord(run_files["manifest"], manifest, started, saver)
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
                config=config,
                extra=callbacks,
                progress=EpochProgress(str(run), config.epochs),
            ),
            verbose=execution.verbose,
        )
    return _finish_run(model, run_files, progress)


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


def _build_model(data, config, run, init_path):
    """The run's model, started from ``init_path`` if given, frozen through ``config.frozen_through``."""
    model = network.build_model(
        backbone=config.backbone,
        weights="random" if init_path else config.weights,
        input_shape=(config.image_size, config.image_size, 3),
        classes=data.spec,
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
    network.freeze(model, through=config.frozen_through)
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
    store = store or FeatureStore((execution or ExecutionConfig()).max_cache_bytes)
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


def _callbacks(run_files, restore, saver, record, *, config, extra, progress):
    """The callbacks of a run, in the order that keeps its records consistent if it is killed between two."""
    stopping = [keras.callbacks.EarlyStopping(monitor="val_city_loss", mode="min", patience=config.early_stopping)]
    return [
        # First, so the epoch's learning rate is in the logs the CSV row is written from.
        learning_rate_schedule(config),
        keras.callbacks.CSVLogger(str(run_files["history"]), append=True),
        saver,
        *(stopping if config.early_stopping else []),
        record,
        # Last of ours: an epoch is backed up only after its row, best model and manifest are written.
        RunBackup(run_files["backup"], restore=restore),
        progress,
        *(extra or []),
    ]


def learning_rate_schedule(config):
    """The callback that sets the learning rate of ``config.lr_schedule`` (see `RunConfig`).

    The cosine schedule is a function of the epoch index, which counts from 0 at the run's first epoch and goes on
    counting on resume (Keras's ``initial_epoch``), so a resumed run trains each epoch at the rate it would have had.

    Returns:
        `keras.callbacks.Callback`.
    """
    if config.lr_schedule == "cosine":
        start, epochs = config.learning_rate, config.epochs

        def cosine(epoch, _):
            return start * (1 + math.cos(math.pi * epoch / epochs)) / 2

        return keras.callbacks.LearningRateScheduler(cosine)
    return keras.callbacks.ReduceLROnPlateau(monitor="val_city_loss", mode="min", factor=0.5, patience=5, min_lr=1e-6)


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
            "NAME), or pass ExecutionConfig(force=True) to replace them."
        )
    if not resume:
        raise FileExistsError(
            f"Run {run.name!r} of experiment {run.experiment!r} was interrupted. Pass ExecutionConfig(resume=True) "
            f"to continue it, or ExecutionConfig(force=True) to start it over."
        )
    changed = config.changes(RunConfig.from_manifest(previous["config"]), resuming=True)
    if previous["config"].get("init_from") != record["init_from"]:
        changed["init_from"] = (previous["config"].get("init_from"), record["init_from"])
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ValueError(
            f"Cannot resume run {run.name!r} with different parameters ({detail}). "
            f"Use the same parameters, another run name (from the command line: -p variant NAME), or "
            "ExecutionConfig(force=True)."
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


def _load_init(model, path):
    loaded = load_by_name(model, path)
    missing = [layer.name for layer in leaf_layers(model) if layer.weights and layer.name not in loaded]
    if missing:
        raise ValueError(f"`init_from` {path} has no weights for layers {missing}: it is not a model of this kind.")
