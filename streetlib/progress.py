"""One line per training epoch for whoever runs the notebooks headless.

papermill shows only a cell counter while a cell trains for an hour, and it hides what the kernel prints until the
cell ends. So `streetlib run` names a file in ``$STREETLIB_PROGRESS`` for the kernel it starts; every training run in
that kernel appends one line per epoch to it (`EpochProgress`), and the runner prints each line as it arrives
(`follow`). Outside the runner the variable is unset and `EpochProgress` writes nothing: Keras's own ``verbose``
decides what a notebook shows.
"""

import contextlib
import os
import threading
import time
from pathlib import Path

import keras

PROGRESS_ENV = "STREETLIB_PROGRESS"


def format_seconds(seconds):
    """'45 s', '12 min', '2.5 h': a duration in seconds (float) at the precision a progress line needs."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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


class _Tail:
    """The complete lines added to a file since the last look."""

    def __init__(self, path):
        self.path = Path(path)
        self._offset = 0
        self._partial = ""

    def new_lines(self):
        if not self.path.is_file():
            return []
        with open(self.path) as f:
            f.seek(self._offset)
            text = f.read()
            self._offset = f.tell()
        *lines, self._partial = (self._partial + text).split("\n")
        return lines


@contextlib.contextmanager
def follow(path, report, *, interval=0.5):
    """While the context is open, a thread passes each complete new line of ``path`` to ``report``; the last lines
    are passed on exit, whatever ends the context.

    Args:
        path: the progress file; it need not exist yet.
        report: callable taking one line of text.
        interval: float, seconds between looks at the file.
    """
    tail = _Tail(path)
    stop = threading.Event()

    def loop():
        while not stop.wait(interval):
            for line in tail.new_lines():
                report(line)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for line in tail.new_lines():
            report(line)
