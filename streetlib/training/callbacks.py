"""Keras callbacks that streetlib adds to every training run, beside Keras's own: progress lines and the backup
of an unfinished run."""

import os
import shutil
import time
import warnings
from pathlib import Path

import h5py
import keras

from streetlib.progress import PROGRESS_ENV, format_seconds


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
