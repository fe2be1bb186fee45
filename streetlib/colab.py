"""Which repository Colab installs streetlib from and opens the notebooks of: one place, ``[tool.streetlib]`` in
``pyproject.toml``.

Every notebook's ``colab_install`` default and every "Open in Colab" badge of the README are written from it by
`sync` (``streetlib colab OWNER/NAME --ref COMMIT`` for a fork), and a test checks that they agree with it, so a
fork changes one table and runs one command instead of editing eight files by hand.
"""

import json
import re
import tomllib

from streetlib import paths
from streetlib.paths import atomic_path

_INSTALL = re.compile(r'^(colab_install = )"[^"]*"(.*)$')
_BADGE = re.compile(r"(https://colab\.research\.google\.com/github/)[^/]+/[^/]+/blob/[^/]+(/notebooks/)")
_TABLE = re.compile(r"(?ms)^\[tool\.streetlib\]\n.*?(?=^\[|\Z)")
_REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def settings(root=None):
    """The ``[tool.streetlib]`` table of the checkout's pyproject.toml: dict with ``repository`` ('owner/name'),
    ``ref`` (the tag or commit Colab installs) and ``branch`` (the branch the badges open)."""
    with open((root or paths.REPO_ROOT) / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["streetlib"]


def install_spec(config):
    """What a notebook's setup cell installs on Colab: ``git+https://github.com/<repository>@<ref>``."""
    return f"git+https://github.com/{config['repository']}@{config['ref']}"


def badge_base(config):
    """The start of every badge link, up to the notebooks folder."""
    return f"https://colab.research.google.com/github/{config['repository']}/blob/{config['branch']}/notebooks/"


def set_repository(repository, *, ref, branch="main", root=None):
    """Record a fork in ``[tool.streetlib]`` and `sync` the notebooks and the README to it.

    Args:
        repository: str, 'owner/name' on GitHub.
        ref: str, the tag or commit Colab installs (pin a commit: the notebooks then match the code they run).
        branch: str, the branch the badges open. Default 'main'.
        root: the checkout. Default the repository streetlib runs from.

    Returns:
        list of the `Path` of every file changed.

    Raises:
        ValueError: ``repository`` is not 'owner/name', or ``ref`` / ``branch`` is empty or holds a space.
    """
    if not _REPOSITORY.match(repository):
        raise ValueError(f"Invalid repository {repository!r}: expected OWNER/NAME, e.g. you/streetlib.")
    for name, value in (("ref", ref), ("branch", branch)):
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"Invalid `{name}`: expected a tag, commit or branch name. Received: {name}={value!r}")
    root = root or paths.REPO_ROOT
    table = f'[tool.streetlib]\nrepository = "{repository}"\nref = "{ref}"\nbranch = "{branch}"\n\n'
    changed = _rewrite(root / "pyproject.toml", lambda text: _TABLE.sub(lambda _: table, text, count=1))
    return changed + sync(root)


def sync(root=None):
    """Write ``[tool.streetlib]`` into every numbered notebook's ``colab_install`` default and every README badge.

    Returns:
        list of the `Path` of every file changed (none when they already agree).
    """
    root = root or paths.REPO_ROOT
    config = settings(root)
    spec, base = install_spec(config), badge_base(config)
    changed = _rewrite(root / "README.md", lambda text: _BADGE.sub(lambda m: base, text))
    for notebook in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        changed += _rewrite(notebook, lambda text, spec=spec: _set_install(text, spec))
    return changed


def _set_install(text, spec):
    """A notebook's JSON with its ``colab_install = "..."`` line set to ``spec``, nothing else touched."""
    notebook = json.loads(text)
    for cell in notebook["cells"]:
        cell["source"] = [_INSTALL.sub(lambda m: f'{m.group(1)}"{spec}"{m.group(2)}', line) for line in cell["source"]]
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def _rewrite(path, change):
    """Apply ``change`` (str -> str) to a file, written atomically only if it changes. Returns [path] or []."""
    text = path.read_text()
    new = change(text)
    if new == text:
        return []
    with atomic_path(path) as tmp:
        tmp.write_text(new)
    return [path]
