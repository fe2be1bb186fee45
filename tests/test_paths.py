import errno
import os
from pathlib import Path

import pytest

from streetlib import paths


def test_portable_is_relative_inside_the_output_root_and_absolute_outside(tmp_path, monkeypatch):
    root = tmp_path / "root"
    monkeypatch.setenv("STREETLIB_ROOT", str(root))
    inside = paths.resolve("data/splits/demo-seed42.json")
    assert paths.portable(inside) == "data/splits/demo-seed42.json"
    assert paths.resolve(paths.portable(inside)) == inside  # the record resolves back to the file
    outside = tmp_path / "elsewhere" / "model.keras"
    assert paths.portable(outside) == str(outside)
    assert paths.portable(root / "models" / ".." / "data" / "x.npy") == "data/x.npy"


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_dir_appears_only_on_success(tmp_path):
    with paths.atomic_dir(tmp_path / "ds") as tmp:
        (tmp / "a.txt").write_text("new")
        assert not (tmp_path / "ds").exists()  # nothing at the final path until the block ends
    assert (tmp_path / "ds" / "a.txt").read_text() == "new"
    assert _entries(tmp_path) == ["ds"]

    with pytest.raises(RuntimeError, match="midway"), paths.atomic_dir(tmp_path / "other") as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("midway")
    assert _entries(tmp_path) == ["ds"]  # neither the result nor the temporary folder is left


def test_atomic_dir_replaces_its_entries_and_keeps_the_others(tmp_path):
    existing = tmp_path / "ds"
    (existing / "sub").mkdir(parents=True)
    (existing / "a.txt").write_text("old")
    (existing / "sub" / "stale.txt").write_text("old")
    (existing / "notes.txt").write_text("a person's notes")
    with paths.atomic_dir(existing) as tmp:
        (tmp / "a.txt").write_text("new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "fresh.txt").write_text("new")
    assert _entries(existing) == ["a.txt", "notes.txt", "sub"]
    assert (existing / "a.txt").read_text() == "new" and _entries(existing / "sub") == ["fresh.txt"]
    assert (existing / "notes.txt").read_text() == "a person's notes"
    assert _entries(tmp_path) == ["ds"]

    with pytest.raises(OSError), paths.atomic_dir(existing) as tmp:
        (tmp / "a.txt").write_text("newer")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (existing / "a.txt").read_text() == "new" and _entries(tmp_path) == ["ds"]


def test_atomic_dir_names_the_folder_in_an_os_error_without_a_file(tmp_path):
    with (
        pytest.raises(OSError, match=r"No space left on device.*'.*full'") as info,
        paths.atomic_dir(tmp_path / "full"),
    ):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC


def test_atomic_dir_refuses_a_file_in_the_way_and_leaves_it(tmp_path):
    (tmp_path / "ds").write_text("a person's file")
    with pytest.raises(NotADirectoryError, match=r"Not a directory.*'.*ds'"), paths.atomic_dir(tmp_path / "ds"):
        pass
    assert _entries(tmp_path) == ["ds"] and (tmp_path / "ds").read_text() == "a person's file"


def test_an_installed_wheel_writes_under_the_current_directory_never_site_packages(tmp_path):
    # What Colab's `%pip install "streetlib @ git+..."` makes: the package alone in site-packages, no repository
    # around it (a pure-Python wheel unpacks to exactly this copy), then asked where outputs go.
    import shutil
    import subprocess
    import sys

    repo = Path(paths.__file__).resolve().parents[1]
    site, work = tmp_path / "site-packages", tmp_path / "work"
    work.mkdir()
    shutil.copytree(repo / "streetlib", site / "streetlib", ignore=shutil.ignore_patterns("__pycache__"))
    script = "from streetlib import paths; print(paths.__file__); print(paths.root()); print(paths.hists_dir())"
    env = {k: v for k, v in os.environ.items() if k != "STREETLIB_ROOT"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env={**env, "PYTHONPATH": str(site)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    module, root, hists = out.stdout.split()
    assert Path(module).is_relative_to(site)  # the installed copy ran, not the checkout
    assert Path(root) == work and Path(hists) == work / "hists"
    # From the checkout (make, an editable install) the repository stays the root.
    assert paths.is_source_checkout() and paths.REPO_ROOT == repo
