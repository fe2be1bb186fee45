"""Tests of streetlib.colab: one place ([tool.streetlib] in pyproject.toml) sets the repository Colab installs
from and the README's badges open; the notebooks and the README are written from it."""

import json
import shutil

import pytest

from streetlib import colab, paths
from streetlib.experiments import parameters, runner


def _checkout(tmp_path):
    """A copy of what `colab` reads and writes: pyproject.toml, the README and the numbered notebooks."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(paths.REPO_ROOT / name, tmp_path / name)
    shutil.copytree(paths.REPO_ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns("executed"))
    return tmp_path


def _badges(readme):
    return [line for line in readme.read_text().splitlines() if "colab.research.google.com/github/" in line]


def test_the_committed_notebooks_and_readme_follow_the_one_setting(tmp_path):
    root = _checkout(tmp_path)
    assert colab.sync(root) == []  # nothing to write: they already agree
    spec = colab.install_spec(colab.settings(root))
    for notebook in runner.list_notebooks(root / "notebooks"):
        assert parameters.notebook_parameters(notebook)["colab_install"] == spec
    badges = _badges(root / "README.md")
    assert len(badges) == len(runner.list_notebooks(root / "notebooks"))
    assert all(colab.badge_base(colab.settings(root)) in line for line in badges)


def test_a_fork_changes_one_table_and_every_notebook_and_badge_follows(tmp_path):
    root = _checkout(tmp_path)
    before = {p.name: json.loads(p.read_text()) for p in (root / "notebooks").glob("*.ipynb")}
    changed = colab.set_repository("ada/streetlib-fork", ref="0123abc", branch="dev", root=root)
    assert root / "pyproject.toml" in changed and root / "README.md" in changed
    assert colab.settings(root) == {"repository": "ada/streetlib-fork", "ref": "0123abc", "branch": "dev"}
    for notebook in runner.list_notebooks(root / "notebooks"):
        params = parameters.notebook_parameters(notebook)
        assert params["colab_install"] == "git+https://github.com/ada/streetlib-fork@0123abc"
        # Only that line changed: every other cell and line is as it was.
        old, new = before[notebook.name], json.loads(notebook.read_text())
        diff = [
            (a, b)
            for c_old, c_new in zip(old["cells"], new["cells"], strict=True)
            for a, b in zip(c_old["source"], c_new["source"], strict=True)
            if a != b
        ]
        assert len(diff) == 1 and diff[0][0].startswith("colab_install = ")
    badges = _badges(root / "README.md")
    assert badges and all(
        "colab.research.google.com/github/ada/streetlib-fork/blob/dev/notebooks/" in b for b in badges
    )
    assert colab.sync(root) == []
    with pytest.raises(ValueError, match="Invalid repository 'streetlib': expected OWNER/NAME"):
        colab.set_repository("streetlib", ref="main", root=root)
    with pytest.raises(ValueError, match="Invalid `ref`"):
        colab.set_repository("ada/streetlib", ref=None, root=root)
