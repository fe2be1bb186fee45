"""One line per training epoch for whoever runs the notebooks headless.

papermill shows only a cell counter while a cell trains for an hour, and it hides what the kernel prints until the
cell ends. So `streetlib run` names a file in ``$STREETLIB_PROGRESS`` for the kernel it starts; every training run in
that kernel appends one line per epoch to it (`training.callbacks.EpochProgress`), and the runner prints each line
as it arrives (`follow`). Outside the runner the variable is unset and the callback writes nothing: Keras's own
``verbose`` decides what a notebook shows. No TensorFlow here: the runner's process stays light.
"""

import contextlib
import threading
from pathlib import Path

PROGRESS_ENV = "STREETLIB_PROGRESS"


def format_seconds(seconds):
    """'45 s', '12 min', '2.5 h': a duration in seconds (float) at the precision a progress line needs."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


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
