"""Every result quoted in prose is in the committed CSV the prose names: a number a notebook's markdown or the README
states as a result (an accuracy, a share, a difference: a decimal such as 0.83, or a percentage) must be a value, at
the precision shown, of a CSV the repository tracks that the same paragraph (a README paragraph or table, a notebook's
markdown cell) names by its path, or a parameter of the notebooks or profiles (a split fraction, a confidence level, a
margin, a rule's threshold). Naming the file ties each number to where a reader can check it: looked up in every CSV
at once, almost any two-decimal number would match one of some 30,000 values by chance. A path may name a folder
(``hists/synth-demo/03-pretrained/``: every CSV below it). Fenced code blocks and inline code are commands and their
outputs, not prose: their numbers are not read (the paths in them are). Speed ratios (``0.44x``) are benchmark
measurements, written with the machine and date beside `BENCHMARKS.md`, not results of the study. A number that
fails here was typed by hand or names no source: have the notebook print it from its CSV, or name the committed CSV
it comes from."""

import ast
import json
import re
import subprocess

import numpy as np
import pandas as pd
import pytest
import yaml

from streetlib import paths
from streetlib.baselines.depth import NEAR_CHANCE
from streetlib.data.splits import make_split
from streetlib.evaluation import stats
from streetlib.experiments import runner

ROOT = paths.REPO_ROOT
# A fraction with at least two decimals (0.83, 0.6010; versions such as 3.11 are not results), or a percentage; not a
# speed ratio (0.44x).
NUMBER = re.compile(r"(?<![\w.\-/])(0\.\d{2,}|\d+(?:\.\d+)?)(\s?%)?(?![\w.]*\d)(?!x\b)")
CODE = re.compile(r"```.*?```|`[^`]*`", re.DOTALL)
# A repository path of a CSV file or of a folder of them, as prose names it (in backticks or a link, or plain).
SOURCE = re.compile(r"(?<![\w./-])((?:hists|streetlib|data)/[\w./<>-]*?(?:\.csv|/))(?![\w.-])")


def _tracked_csvs():
    out = subprocess.run(["git", "ls-files", "*.csv"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _values(files):
    values = [np.empty(0)]
    for name in files:
        numeric = pd.read_csv(ROOT / name).select_dtypes("number").to_numpy(dtype=float).ravel()
        values.append(numeric[np.isfinite(numeric)])
    return np.concatenate(values)


def _named(text, tracked):
    """The tracked CSVs ``text`` names: each path a file or a folder (every CSV below it); ``<dataset>`` and the
    like stand for any one folder."""
    files = set()
    for path in SOURCE.findall(text):
        pattern = re.escape(path).replace(r"\<", "<").replace(r"\>", ">")
        pattern = re.sub(r"<[^>/]*>", r"[^/]+", pattern)
        pattern = pattern if path.endswith(".csv") else pattern + ".*\\.csv"
        files |= {name for name in tracked if re.fullmatch(pattern, name)}
    return sorted(files)


def _literals(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        yield float(node.value)
    for child in ast.iter_child_nodes(node):
        yield from _literals(child)


def _parameter_values():
    """Numbers that are settings, not results: the notebooks' parameter defaults, the profiles' values, the
    confidence levels, power and split fractions the code uses, and the depth probe's near-chance threshold."""
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
    defaults = make_split.__kwdefaults__
    design = stats.detectable_difference.__kwdefaults__
    values.update({defaults["test_size"], defaults["val_size"], 0.95, 0.99, design["power"], NEAR_CHANCE})
    return np.array(sorted(values))


def _paragraphs():
    """(where, text) of every paragraph of the README (tables included, each one block) and every markdown cell of
    the numbered notebooks."""
    paragraphs, lines, fenced = [], [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        fenced ^= line.lstrip().startswith("```")
        if line.strip() or fenced:  # a fenced block may hold blank lines: it ends no paragraph
            lines.append(line)
        elif lines:
            paragraphs.append("\n".join(lines))
            lines = []
    paragraphs.append("\n".join(lines))
    blocks = [(f"README.md paragraph {i}", text) for i, text in enumerate(paragraphs)]
    for notebook in runner.list_notebooks(ROOT / "notebooks"):
        for i, cell in enumerate(json.loads(notebook.read_text())["cells"]):
            if cell["cell_type"] == "markdown":
                blocks.append((f"{notebook.name} cell {i}", "".join(cell["source"])))
    return blocks


def _numbers(text):
    """(shown text, value as a fraction, decimals shown) of every result-like number in ``text`` outside code."""
    for match in NUMBER.finditer(CODE.sub(" ", text)):
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


def _unsourced(text, tracked, settings):
    """The numbers of one paragraph found neither in the CSVs it names nor among the settings, each with why."""
    files = _named(text, tracked)
    pool = _values(files)
    return [
        f"{shown.strip()} ({'in none of ' + ', '.join(files) if files else 'the paragraph names no committed CSV'})"
        for shown, value, decimals in _numbers(text)
        if not (_found(value, decimals, pool) or _found(value, decimals, settings))
    ]


def test_numbers_are_found_at_the_precision_shown():
    pool = np.array([0.8290, 0.60101])
    assert _found(0.83, 2, pool) and _found(0.601, 3, pool)
    assert not _found(0.84, 2, pool)
    shown = [n[1] for n in _numbers("region 0.94 [0.91, 0.97] and 95% of 7.5 % with lr `0.002`, 0.44x faster")]
    assert shown == [0.94, 0.91, 0.97, 0.95, 0.075]


def test_a_number_counts_only_in_the_csv_its_paragraph_names():
    tracked = _tracked_csvs()
    comparisons = "hists/synth-demo/06-results/comparisons.csv"
    # A difference the prose would print without its sign (a negative one reads as its magnitude).
    difference = next(d for d in pd.read_csv(ROOT / comparisons)["difference"] if 0 < d < 1)
    # In another committed CSV but not in comparisons.csv: a number the paragraph cannot have taken from there.
    elsewhere = next(
        round(v, 3)
        for v in _values(["hists/synth-demo/02-baselines/baselines.csv"])
        if 0 < v < 1 and not _found(round(v, 3), 3, _values([comparisons]))
    )
    settings = np.array([0.95])
    named = f"The difference was {difference:.3f} (`{comparisons}`)."
    assert _unsourced(named, tracked, settings) == []
    assert _unsourced(f"Folder: {difference:.3f} (hists/synth-demo/06-results/).", tracked, settings) == []
    assert (
        _unsourced(f"Any dataset: {difference:.3f} (`hists/<dataset>/06-results/comparisons.csv`).", tracked, settings)
        == []
    )
    assert _unsourced(f"The difference was {difference:.3f}, 95% interval.", tracked, settings) == [
        f"{difference:.3f} (the paragraph names no committed CSV)"
    ]
    assert _unsourced(f"Accuracy {elsewhere:.3f} (`{comparisons}`).", tracked, settings) == [
        f"{elsewhere:.3f} (in none of {comparisons})"
    ]


def test_every_result_in_prose_is_in_the_committed_csv_its_paragraph_names():
    tracked, settings = _tracked_csvs(), _parameter_values()
    missing = [f"{where}: {item}" for where, text in _paragraphs() for item in _unsourced(text, tracked, settings)]
    if missing:
        pytest.fail(
            f"{len(missing)} number(s) in prose are in no committed CSV their paragraph names (print them from the "
            "CSV, or name the committed CSV they come from):\n" + "\n".join(missing)
        )
