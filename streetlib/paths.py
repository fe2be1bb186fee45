"""Where things go: every default path in streetlib comes from here.

The output root is the repository root unless ``STREETLIB_ROOT`` is set (on Colab, a Drive folder), so
notebooks and the CLI never hold literal paths.
"""

import errno
import hashlib
import os
import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def root():
    """Output root: ``$STREETLIB_ROOT`` if set; else the repository root when streetlib runs from a source checkout
    (``make``, an editable install); else the current directory, so an installed wheel (Colab's ``%pip install``)
    never writes into site-packages. Returns a `Path`."""
    if "STREETLIB_ROOT" in os.environ:
        return Path(os.environ["STREETLIB_ROOT"]).expanduser()
    return REPO_ROOT if is_source_checkout() else Path.cwd()


def is_source_checkout():
    """True when the package runs from the repository (its ``pyproject.toml`` beside it), not from an installed
    wheel."""
    return (REPO_ROOT / "pyproject.toml").is_file()


def data_dir():
    return root() / "data"


def demo_data_dir():
    """Default location of the synthetic demo dataset."""
    return data_dir() / "synth-demo"


def splits_dir():
    return data_dir() / "splits"


def features_dir():
    return data_dir() / "features"


def hists_dir():
    return root() / "hists"


def figs_dir():
    return root() / "figs"


def models_dir():
    return root() / "models"


def notebooks_dir():
    return REPO_ROOT / "notebooks"


def executed_dir(profile, root_dir=None):
    """Where ``streetlib run`` keeps the executed notebooks of a profile and the records of what finished:
    ``<root>/notebooks/executed/<profile>``, under the output root the notebooks wrote to (default `root()`), so a
    record never vouches for outputs of another root."""
    return Path(root_dir or root()) / "notebooks" / "executed" / profile


class atomic_path:
    """Context manager giving a temporary sibling path that replaces ``path`` only on success.

    Writers use it so that an interrupted run never leaves a half-written file where a good one was::

        with atomic_path(out / "cats.npy") as tmp:
            np.save(tmp, array)

    The temporary name keeps the final suffix, so libraries that pick a format from the suffix still work.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return False


class atomic_dir:
    """Context manager giving a temporary sibling directory that is moved to ``path`` only on success.

    Writers of a result made of several files (a dataset) use it so that a failure part way (a full disk, a bad
    input, Ctrl-C) leaves nothing at ``path`` that looks complete, and nothing a re-run would have to overwrite::

        with atomic_dir(out) as tmp:
            np.save(tmp / "cats.npy", cats)
            (tmp / "dataset.json").write_text(meta)

    If ``path`` already exists, each entry of the new directory replaces the entry of that name and the other
    entries are kept, as writing into ``path`` would: files a person put there are not lost. On failure the
    temporary directory is removed, ``path`` is left as it was, and an `OSError` that names no file is raised
    again naming ``path``.
    """

    def __init__(self, path):
        # Resolved, so that for a symlinked folder the temporary one sits beside the target (renames stay on one
        # file system) and the link is kept.
        self.path = Path(path).resolve()
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")

    def __enter__(self):
        if os.path.lexists(self.path) and not self.path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory: choose a folder", str(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Only a killed run of a process with this same id can have left it.
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._move_into_place()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc
        return False

    def _move_into_place(self):
        if not os.path.lexists(self.path):
            os.replace(self.tmp, self.path)
            return
        old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        os.replace(self.path, old)
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            os.replace(old, self.path)
            raise
        for entry in old.iterdir():
            if not os.path.lexists(self.path / entry.name):
                os.replace(entry, self.path / entry.name)
        shutil.rmtree(old)


def resolve(path, default=None):
    """A user-given path: empty means ``default``; relative paths start at the output root, not the notebook's
    working directory, so the same parameter works from the CLI, papermill and Colab."""
    if path in (None, ""):
        return Path(default)
    path = Path(path).expanduser()
    return path if path.is_absolute() else root() / path


def portable(path):
    """The inverse of `resolve`, for records: a str relative to the output root when ``path`` is inside it (so a
    manifest reads the same on any machine and after the repository moves), else the absolute path."""
    path = Path(path).expanduser().resolve()
    try:
        return path.relative_to(root().resolve()).as_posix()
    except ValueError:
        return str(path)


def file_digest(path, algorithm="sha256"):
    """Hex digest of a file's bytes (``algorithm`` as in `hashlib.new`), read in 1 MiB chunks. Returns str."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()
