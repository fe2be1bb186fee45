"""Every result quoted in prose is in a committed CSV: a number a notebook's markdown or the README states as a
result (an accuracy, a share, a difference: a decimal such as 0.83, or a percentage) must be a value, at the precision
shown, of a CSV the repository tracks that it can come from, or a parameter of the notebooks or profiles (a split
fraction, a confidence level, a margin). A notebook's numbers can come from the CSVs of the experiments its
parameters name (``hists/<dataset>/<experiment>/``) and the original study's table
(`streetlib.experiments.study.ORIGINAL_STUDY_CSV`); the README's from every committed results CSV but the training
histories (per-epoch logs hold thousands of values: a two-decimal number would match one by chance). Fenced code
blocks and inline code are commands and their outputs, not prose: they are not read. A number that fails here was
typed by hand: have the notebook print it from its CSV, or commit the CSV it comes from."""

import ast
import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from streetlib import paths
from streetlib.experiments import runner, study

ROOT = paths.REPO_ROOT
# A fraction with at least two decimals (0.83, 0.6010; versions such as 3.11 are not results), or a percentage.
NUMBER = re.compile(r"(?<![\w.\-/])(0\.\d{2,}|\d+(?:\.\d+)?)(\s?%)?(?![\w.]*\d)")
CODE = re.compile(r"```.*?```|`[^`]*`", re.DOTALL)


def _tracked(pattern):
    out = subprocess.run(["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines()]


def _values(paths_):
    values = [np.empty(0)]
    for path in paths_:
        numeric = pd.read_csv(path).select_dtypes("number").to_numpy(dtype=float).ravel()
        values.append(numeric[np.isfinite(numeric)])
    return np.concatenate(values)


def _is_history(path):
    return path.read_text().split(",", 1)[0] == "epoch"


def _pools():
    """Where each piece of prose may take its numbers from: location -> array of values."""
    tracked = _tracked("*.csv")
    original = [p for p in tracked if p.name == study.ORIGINAL_STUDY_CSV.name]
    pools = {"README.md": _values([p for p in tracked if not _is_history(p)])}
    for notebook in runner.list_notebooks(ROOT / "notebooks"):
        names = set()
        for cell in json.loads(notebook.read_text())["cells"]:
            if "parameters" in cell["metadata"].get("tags", []):
                tree = ast.parse("".join(cell["source"]))
                names |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        own = [p for p in tracked if p.parent.name in names and p.parent.parent.parent.name == "hists"]
        pools[notebook.name] = _values(own + original)
    return pools


def _literals(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        yield float(node.value)
    for child in ast.iter_child_nodes(node):
        yield from _literals(child)


def _parameter_values():
    """Numbers that are settings, not results: the notebooks' parameter defaults, the profiles' values, and the
    confidence levels and split fractions the code uses."""
    values = set()
    for notebook in runner.list_notebooks(ROOT / "notebooks"):
        for cell in json.loads(notebook.read_text())["cells"]:
            if "parameters" in cell["metadata"].get("tags", []):
                values.update(_literals(ast.parse("".join(cell["source"]))))

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, int | float) and not isinstance(node, bool):
            values.add(float(node))

    walk(yaml.safe_load(runner.PROFILES_FILE.read_text()))
    from streetlib.data.splits import make_split

    defaults = make_split.__kwdefaults__
    values.update({defaults["test_size"], defaults["val_size"], 0.95, 0.99})
    return values


def _prose():
    """(source, where, text) of every markdown cell of the numbered notebooks and of the README, code removed."""
    texts = [("README.md", "README.md", (ROOT / "README.md").read_text())]
    for notebook in runner.list_notebooks(ROOT / "notebooks"):
        for i, cell in enumerate(json.loads(notebook.read_text())["cells"]):
            if cell["cell_type"] == "markdown":
                texts.append((notebook.name, f"{notebook.name} cell {i}", "".join(cell["source"])))
    return [(source, where, CODE.sub(" ", text)) for source, where, text in texts]


def _numbers(text):
    """(shown text, value as a fraction, decimals shown) of every result-like number in ``text``."""
    for match in NUMBER.finditer(text):
        digits, percent = match.group(1), match.group(2)
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        if percent:
            yield match.group(0), float(digits) / 100, decimals + 2
        elif digits.startswith("0.") and decimals >= 2:
            yield match.group(0), float(digits), decimals


def _found(value, decimals, pool):
    # Shown at `decimals` places: any value rounding to it, or the value itself (a parameter written short).
    half = 0.5 * 10.0**-decimals + 1e-12
    return bool(np.any(np.abs(pool - value) <= half))


def test_numbers_are_found_at_the_precision_shown():
    pool = np.array([0.8290, 0.60101])
    assert _found(0.83, 2, pool) and _found(0.601, 3, pool)
    assert not _found(0.84, 2, pool)
    assert [n[1] for n in _numbers("region 0.94 [0.91, 0.97] and 95% of 7.5 % with lr `0.002`")][:3] == [
        0.94,
        0.91,
        0.97,
    ]


def test_every_result_in_prose_is_in_a_committed_csv():
    pools = _pools()
    settings = np.array(sorted(_parameter_values()))
    missing = []
    for source, where, text in _prose():
        for shown, value, decimals in _numbers(text):
            if not (_found(value, decimals, pools[source]) or _found(value, decimals, settings)):
                missing.append(f"{where}: {shown.strip()}")
    if missing:
        pytest.fail(
            f"{len(missing)} number(s) in prose are in no committed CSV (print them from the CSV, or commit the "
            "CSV they come from):\n" + "\n".join(missing)
        )
