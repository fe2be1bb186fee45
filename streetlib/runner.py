"""Run the numbered notebooks headless with papermill: profiles, checked parameters, grids, resume.

Profiles live in ``streetlib/profiles.yaml`` (``smoke`` for CI, ``demo`` the main job, ``full`` Street10 on a GPU).
Executed notebooks go to ``notebooks/executed/<profile>/``; beside each, a ``.done.json`` records the parameters of a
finished run, so an interrupted ``streetlib run`` resumes by skipping what already finished with the same parameters.
Once a notebook of the sequence runs, every later one runs too, since it reads what the earlier ones wrote.
"""

import ast
import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from streetlib import paths
from streetlib.paths import atomic_path

PROFILES_FILE = paths.PACKAGE_DIR / "profiles.yaml"


@dataclass
class NotebookRun:
    """The outcome of one notebook execution.

    Attributes:
        notebook: Path of the source notebook.
        output: Path of the executed copy.
        parameters: dict of the parameters passed.
        status: 'done', 'skipped' (finished before with the same parameters) or 'failed'.
        seconds: float wall time (0 when skipped).
        error: for a failure, which cell failed and the exception, else ''.
    """

    notebook: Path
    output: Path
    parameters: dict = field(default_factory=dict)
    status: str = "done"
    seconds: float = 0.0
    error: str = ""


def list_notebooks(directory=None):
    """The numbered notebooks ``NN_name.ipynb`` in order. Returns a list of Path."""
    return sorted(Path(directory or paths.notebooks_dir()).glob("[0-9][0-9]_*.ipynb"))


def find_notebook(name, directory=None):
    """Resolve ``name`` ('03', '03_pretrained_comparison', a file name or a path) to a notebook Path."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return path
    stem = path.stem
    matches = [nb for nb in list_notebooks(directory) if nb.stem == stem or nb.stem.split("_", 1)[0] == stem]
    if len(matches) != 1:
        names = [nb.stem for nb in list_notebooks(directory)]
        raise ValueError(f"Unknown notebook {name!r}. Expected a number or one of {names}.")
    return matches[0]


def notebook_parameters(notebook):
    """The parameters cell of a notebook: dict name -> default value (plain literals).

    Raises:
        ValueError: no cell tagged 'parameters', or a parameter that is not a plain literal.
    """
    nb = json.loads(Path(notebook).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook} must have exactly one cell tagged 'parameters'; it has {len(cells)}.")
    source = "".join(cells[0]["source"])
    params = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{notebook}: the parameters cell must hold only `name = literal` lines.")
        try:
            params[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError as err:
            raise ValueError(f"{notebook}: parameter {node.targets[0].id!r} is not a plain literal.") from err
    return params


def load_profile(name, *, path=None):
    """A profile from the profiles file: dict with 'description', 'all' (parameters for every notebook that has
    them) and 'notebooks' (notebook stem -> parameters)."""
    profiles = yaml.safe_load(Path(path or PROFILES_FILE).read_text())
    if name not in profiles:
        raise ValueError(f"Invalid `profile`. Expected one of {sorted(profiles)}. Received: profile={name!r}")
    profile = profiles[name]
    return {"description": profile.get("description", ""), "all": profile.get("all") or {},
            "notebooks": profile.get("notebooks") or {}}


def resolve_parameters(notebook, profile, overrides):
    """The parameters for one notebook: profile 'all' entries it has, its own profile entries, then overrides.

    Profile entries for this notebook and every override must name one of its parameters.
    """
    known = notebook_parameters(notebook)
    own = profile["notebooks"].get(notebook.stem, {})
    _check_names(notebook, own, known, "profile")
    params = {k: v for k, v in profile["all"].items() if k in known}
    params.update(own)
    params.update({k: v for k, v in overrides.items() if k in known})
    return params


def _check_names(notebook, params, known, where):
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"Unknown parameter(s) {unknown} for {Path(notebook).name} ({where}). Valid names: {sorted(known)}."
        )


def check_overrides(notebooks, overrides):
    """Every override must be a parameter of at least one of the notebooks to run."""
    known = set().union(*(notebook_parameters(nb) for nb in notebooks))
    unknown = sorted(set(overrides) - known)
    if unknown:
        names = ", ".join(nb.name for nb in notebooks)
        raise ValueError(f"Unknown parameter(s) {unknown} for {names}. Valid names: {sorted(known)}.")


def parse_value(text):
    """A ``-p NAME VALUE`` value: a Python literal when it parses as one (3, 0.5, True, [1, 2]), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def expand_grid(grid):
    """All combinations of a grid ``{name: [values...]}``, in order. Returns a list of dicts."""
    names = list(grid)
    for name in names:
        if not isinstance(grid[name], list) or not grid[name]:
            raise ValueError(f"Grid entry {name!r} must be a non-empty list of values. Received: {grid[name]!r}")
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def load_grid(path):
    """A grid file (YAML): ``notebook: 03`` and ``grid: {name: [values...]}``. Returns (notebook, list of dicts)."""
    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict) or "notebook" not in doc or "grid" not in doc:
        raise ValueError(f"Grid file {path} must have `notebook:` and `grid: {{name: [values]}}`.")
    return find_notebook(str(doc["notebook"])), expand_grid(doc["grid"])


def _fingerprint(notebook, params):
    text = json.dumps({"source": Path(notebook).read_text(), "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _output_name(notebook, variant):
    if not variant:
        return notebook.name
    suffix = "__".join(f"{k}={v}" for k, v in variant.items())
    return f"{notebook.stem}__{suffix}.ipynb".replace("/", "-").replace(" ", "")


def execute(notebook, output, params, *, force=False, cell_timeout=1800, progress=True):
    """Execute one notebook with papermill, or skip it if it already finished with the same parameters.

    The working directory is the notebook's folder. Returns a `NotebookRun`.
    """
    import papermill as pm

    done = output.with_suffix(".done.json")
    fingerprint = _fingerprint(notebook, params)
    if not force and done.is_file() and json.loads(done.read_text()).get("fingerprint") == fingerprint:
        return NotebookRun(notebook, output, params, status="skipped")
    done.unlink(missing_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        pm.execute_notebook(
            str(notebook), str(output), parameters=params, kernel_name="python3", cwd=str(notebook.parent),
            execution_timeout=cell_timeout, progress_bar=progress, request_save_on_cell_execute=True,
        )
    except pm.PapermillExecutionError as err:
        where = f"cell {err.exec_count or err.cell_index}: {err.ename}: {err.evalue}"
        return NotebookRun(notebook, output, params, "failed", time.monotonic() - start, where)
    seconds = time.monotonic() - start
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "parameters": params, "seconds": seconds}, default=str))
    return NotebookRun(notebook, output, params, "done", seconds)


def run(notebooks=None, *, profile="demo", overrides=None, grid=None, force=False, keep_going=False,
        out_dir=None, cell_timeout=1800, progress=True, report=print):
    """Run notebooks in order under a profile.

    Args:
        notebooks: list of names or paths (see `find_notebook`); default all numbered notebooks. Ignored with
            ``grid``, whose file names its notebook.
        profile: 'smoke', 'demo' or 'full' (see ``profiles.yaml``).
        overrides: dict of parameters for every notebook that has them; each name must exist in at least one.
        grid: optional path of a grid file: run its notebook once per combination.
        force: bool, re-run notebooks that already finished with the same parameters. Without it, notebooks are
            skipped up to the first one that must run; from there on, all run.
        keep_going: bool, after a failure go on with the rest (default: skip the rest).
        out_dir: where executed notebooks go. Default ``notebooks/executed/<profile>/``.
        cell_timeout: int, seconds per cell.
        report: callable taking one line of text, for progress messages.

    Returns:
        list of `NotebookRun`, one per notebook (or grid point) attempted or skipped.
    """
    overrides = dict(overrides or {})
    prof = load_profile(profile)
    if grid:
        notebook, variants = load_grid(grid)
        jobs = [(notebook, v) for v in variants]
    else:
        selected = [find_notebook(str(n)) for n in notebooks] if notebooks else list_notebooks()
        jobs = [(nb, {}) for nb in selected]
    check_overrides(sorted({nb for nb, _ in jobs}), overrides)
    for nb, variant in jobs:
        _check_names(nb, variant, notebook_parameters(nb), "grid")
    plans = [(nb, variant, {**resolve_parameters(nb, prof, overrides), **variant}) for nb, variant in jobs]
    out_dir = Path(out_dir or paths.notebooks_dir() / "executed" / profile)
    results, failed, upstream_ran = [], False, False
    for nb, variant, params in plans:
        output = out_dir / _output_name(nb, variant)
        if failed and not keep_going:
            report(f"[not run] {output.name}: an earlier notebook failed")
            continue
        report(f"[running] {output.name} {params}")
        # Notebooks read what earlier ones wrote: once one runs, the rest of the sequence runs too (not grids,
        # whose points are independent).
        result = execute(nb, output, params, force=force or (upstream_ran and not grid), cell_timeout=cell_timeout,
                         progress=progress)
        results.append(result)
        report(f"[{result.status}] {output.name} ({result.seconds:.0f} s){' - ' + result.error if result.error else ''}")
        failed = failed or result.status == "failed"
        upstream_ran = upstream_ran or result.status == "done"
    return results
