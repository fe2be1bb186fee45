"""Keras callbacks that streetlib adds to every training run, beside Keras's own."""

import os
import time

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
