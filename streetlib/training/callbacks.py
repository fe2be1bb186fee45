"""Keras callbacks that streetlib adds to every training run, beside Keras's own: progress lines, the best model
so far, the manifest's progress and the backup of an unfinished run."""

import math
import os
import shutil
import time
import warnings
from pathlib import Path

import h5py
import keras

from streetlib.paths import atomic_path
from streetlib.progress import PROGRESS_ENV, format_seconds
from streetlib.training.config import MONITOR
from streetlib.training.manifest import utc_now, write_json


class EpochProgress(keras.callbacks.Callback):
    """Appends ``'<run>: epoch k/N, <elapsed> elapsed, about <left> left, <metric> <value>'`` to the progress file
    at the end of every epoch.

    Time left is the mean epoch time of this session times the epochs still to go, so a resumed run estimates
    from the epochs it really trains.

    Args:
        run: str, the name that identifies the run on the terminal.
        epochs: int, the epoch count the run trains to (N).
        path: file to append to. Default: ``$STREETLIB_PROGRESS``; when that is unset too, the callback is silent.
        metric: str, the log entry shown after the times, if the epoch's logs have it.
    """

    def __init__(self, run, epochs, *, path=None, metric="val_city_accuracy"):
        super().__init__()
        self.run = run
        self.epochs = epochs
        self.path = path or os.environ.get(PROGRESS_ENV) or None
        self.metric = metric
        self._start = None
        self._first_epoch = None

    def _write(self, line):
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()
        self._first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
            if epoch:
                self._write(f"{self.run}: resuming at epoch {epoch + 1}/{self.epochs}")

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.monotonic() - self._start
        left = elapsed / (epoch + 1 - self._first_epoch) * (self.epochs - epoch - 1)
        value = (logs or {}).get(self.metric)
        shown = f", {self.metric} {float(value):.3f}" if value is not None else ""
        self._write(
            f"{self.run}: epoch {epoch + 1}/{self.epochs}, {format_seconds(elapsed)} elapsed, "
            f"about {format_seconds(left)} left{shown}"
        )


class RunBackup(keras.callbacks.Callback):
    """The state of an unfinished run (weights and optimizer, epochs done), written so that no interruption can
    leave it unreadable: one file per finished epoch, ``epoch-<k>.weights.h5`` (``k`` epochs done), written under a
    temporary name and renamed, the older ones removed only after. Keras's ``BackupAndRestore`` writes its weights
    file in place, and a full disk or a kill in mid-write left a file that no later run could open.

    The run learns where to resume before it builds its datasets (`restore_point`), and passes that epoch to
    ``fit(initial_epoch=...)`` and to this callback, which loads the weights when training begins. The folder is
    removed when training ends normally.

    Args:
        directory: str or Path, the run's backup folder.
        restore: None, or the ``.weights.h5`` file to load when training begins (from `restore_point`).
    """

    PATTERN = "epoch-*.weights.h5"

    def __init__(self, directory, *, restore=None):
        super().__init__()
        self.directory = Path(directory)
        self.restore = restore

    @classmethod
    def restore_point(cls, directory):
        """Where a run resumes: (epochs done, weights file) of the newest readable backup, or (0, None).

        A backup that cannot be opened (damaged outside streetlib, or written by another program) is not used and
        not deleted: the folder is renamed ``<name>.damaged-<k>`` with one warning naming the file, so the same
        command then starts the run over.
        """
        directory = Path(directory)
        files = sorted(directory.glob(cls.PATTERN)) if directory.is_dir() else []
        if files and _readable(files[-1]):
            return int(files[-1].name.split(".")[0].removeprefix("epoch-")), files[-1]
        if directory.exists():
            aside = _free_name(directory, "damaged")
            directory.rename(aside)
            what = f"{files[-1].name} cannot be opened" if files else "it holds no epoch-<k>.weights.h5 file"
            warnings.warn(
                f"The backup of this run in {directory} is not usable ({what}): moved to {aside}; the run starts "
                f"over from epoch 1.",
                stacklevel=2,
            )
        return 0, None

    def on_train_begin(self, logs=None):
        if self.restore is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            # The optimizer's variables (moments, iterations, learning rate) are part of the file: they must exist.
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.restore)

    def on_epoch_end(self, epoch, logs=None):
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"epoch-{epoch + 1:04d}.weights.h5"
        # Keras needs the name to end in .weights.h5, so the temporary name keeps it.
        tmp = self.directory / f".partial-{os.getpid()}.weights.h5"
        try:
            self.model.save_weights(tmp, overwrite=True)
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise OSError(
                f"Could not write the run's backup {path}: {err.strerror or err}. The backup of the last epoch is "
                f"kept: free some space and run the same command again to resume."
            ) from err
        for older in self.directory.glob(self.PATTERN):
            if older != path:
                older.unlink()

    def on_train_end(self, logs=None):
        shutil.rmtree(self.directory, ignore_errors=True)


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


class ManifestRecord(keras.callbacks.Callback):
    """Keeps the manifest's progress, best epoch and wall time current at every epoch, so a killed run's time is
    counted and a resumed run knows which epoch its best model file holds.

    Args:
        path: `Path` of the manifest, rewritten atomically at every epoch.
        manifest: dict, the run's manifest (`streetlib.training.manifest.start_manifest`), updated in place.
        started: float, `time.monotonic()` when this session of the run started.
        saver: the run's `BestModelSaver`, whose best epoch and value are recorded.
    """

    def __init__(self, path, manifest, started, saver):
        super().__init__()
        self.path, self.manifest, self.started, self.saver = path, manifest, started, saver
        self.base_wall = float(manifest.get("wall_time_s", 0.0))

    def _update(self, **fields):
        self.manifest.update(fields, wall_time_s=round(self.base_wall + time.monotonic() - self.started, 2))
        write_json(self.path, self.manifest)

    def _best(self):
        found = self.saver.best_epoch is not None
        return {"best_epoch": self.saver.best_epoch, "best_val_city_accuracy": self.saver.best if found else None}

    def on_epoch_end(self, epoch, logs=None):
        self._update(epochs_done=epoch + 1, **self._best())

    def finish(self, history):
        self._update(
            status="complete",
            finished_at=utc_now(),
            epochs_done=len(history),
            final=history.iloc[-1].to_dict() if len(history) else {},
            **self._best(),
        )
        return self.manifest


def _readable(path):
    """True if ``path`` opens as an HDF5 file (what a write cut short or a damaged disk block breaks)."""
    try:
        with h5py.File(path, "r"):
            return True
    except OSError:
        return False


def _free_name(path, label):
    """``<path>.<label>-<k>``, the first such name not taken (nothing set aside earlier is replaced)."""
    k = 1
    while (aside := path.with_name(f"{path.name}.{label}-{k}")).exists():
        k += 1
    return aside
