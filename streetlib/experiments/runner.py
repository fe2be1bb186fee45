"""Run the numbered notebooks headless with papermill: profiles, checked parameters, grids, resume.

Profiles live in ``streetlib/experiments/profiles.yaml``: ``smoke`` for CI, ``demo`` the main
job, ``full`` Street10 on a GPU.
Executed notebooks go to ``notebooks/executed/<profile>/``; beside each, a ``.done.json`` records the parameters of a
finished run, so an interrupted ``streetlib run`` resumes by skipping what already finished with the same parameters.
Once a notebook of the sequence runs, every later one runs too, since it reads what the earlier ones wrote.

Cells have no time limit unless one is asked for: a training cell runs for hours on Street10. Each training epoch
prints one progress line (see `streetlib.progress`). A cell that fails, times out, loses its kernel or is stopped
with Ctrl-C ends the run with one line naming the notebook and the cell; the next run resumes (finished notebooks are
skipped, interrupted training runs continue from their last epoch). The kernel's own stderr goes to
``<notebook>.kernel.log`` beside the executed copy.
"""

import ast
import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from streetlib import paths
from streetlib.paths import atomic_path
from streetlib.progress import PROGRESS_ENV, follow

PROFILES_FILE = Path(__file__).resolve().parent / "profiles.yaml"


@dataclass
class NotebookRun:
    """The outcome of one notebook execution.

    Attributes:
        notebook: Path of the source notebook.
        output: Path of the executed copy.
        parameters: dict of the parameters passed.
        status: 'done', 'skipped' (finished before with the same parameters), 'failed' or 'interrupted' (Ctrl-C).
        seconds: float wall time (0 when skipped).
        error: for a failure or interruption, which cell and what happened, else ''.
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
    return {
        "description": profile.get("description", ""),
        "all": profile.get("all") or {},
        "notebooks": profile.get("notebooks") or {},
    }


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


def _describe_type(default):
    """What a value must be to replace ``default``: 'an int', 'a list of str', ..."""
    if isinstance(default, list):
        kinds = {_describe_type(v) for v in default}
        return f"a list of {kinds.pop().split(' ', 1)[1]}" if len(kinds) == 1 else "a list"
    names = {bool: "a bool (True or False)", int: "an int", float: "a number", str: "a str", dict: "a dict"}
    return names.get(type(default), "a " + type(default).__name__)


def _matches(value, default):
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, list):
        kinds = {type(v) for v in default}
        # An empty default, or one of mixed kinds, says nothing about the elements.
        return isinstance(value, list) and (len(kinds) != 1 or all(_matches(v, default[0]) for v in value))
    return type(value) is type(default)


def check_types(notebook, params):
    """Every value must have the type of the notebook's default for that name (an int for an int, a number for a
    float, a list of str for a list of str...); a default of None accepts anything.

    Raises:
        ValueError: naming the notebook, the parameter, the expected type and the received value.
    """
    defaults = notebook_parameters(notebook)
    for name, value in params.items():
        if name in defaults and not _matches(value, defaults[name]):
            raise ValueError(
                f"Invalid parameter {name!r} for {Path(notebook).name}. Expected {_describe_type(defaults[name])}, "
                f"like its default {defaults[name]!r}. Received: {name}={value!r}"
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
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]


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


def _cell_where(output):
    """'cell [N] (`first line`)' for the last cell the executed copy shows as started, or '' if none is."""
    if not output.is_file():
        return ""
    code = [c for c in json.loads(output.read_text())["cells"] if c["cell_type"] == "code"]
    # Numbered by position among the code cells: in a run from the top that is the execution count, which a cell
    # whose kernel died never got.
    started = [(n, c) for n, c in enumerate(code, 1) if c["metadata"].get("papermill", {}).get("start_time")]
    if not started:
        return ""
    number, cell = started[-1]
    lines = "".join(cell["source"]).strip().splitlines() or [""]
    return f"cell [{number}] (`{lines[0][:60]}`)"


def _kernel_manager(log, env):
    """A kernel manager class whose kernels write stderr to ``log`` (an open file) and get ``env`` added."""
    from jupyter_client.manager import AsyncKernelManager

    class RunnerKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            # Without this a kernel that is stopped prints zmq tracebacks over the runner's one-line report.
            kw.setdefault("stderr", log)
            kw["env"] = {**kw.get("env", os.environ), **env}
            return await super().start_kernel(**kw)

    return RunnerKernelManager


def execute(notebook, output, params, *, force=False, cell_timeout=None, progress=True, report=print):
    """Execute one notebook with papermill, or skip it if it already finished with the same parameters.

    The working directory is the notebook's folder. Training progress lines from the kernel go to ``report`` as
    they come. Returns a `NotebookRun`; a failed or interrupted one says which cell in ``error``.
    """
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    done = output.with_suffix(".done.json")
    fingerprint = _fingerprint(notebook, params)
    if not force and done.is_file() and json.loads(done.read_text()).get("fingerprint") == fingerprint:
        return NotebookRun(notebook, output, params, status="skipped")
    done.unlink(missing_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    progress_file, kernel_log = output.with_suffix(".progress.log"), output.with_suffix(".kernel.log")
    progress_file.unlink(missing_ok=True)
    start = time.monotonic()
    status, error = "done", ""
    with open(kernel_log, "w") as log, follow(progress_file, lambda line: report(f"  {line}")):
        try:
            pm.execute_notebook(
                str(notebook),
                str(output),
                parameters=params,
                kernel_name="python3",
                cwd=str(notebook.parent),
                execution_timeout=cell_timeout,
                progress_bar=progress,
                request_save_on_cell_execute=True,
                kernel_manager_class=_kernel_manager(log, {PROGRESS_ENV: str(progress_file.resolve())}),
            )
        except pm.PapermillExecutionError as err:
            status = "interrupted" if err.ename == "KeyboardInterrupt" else "failed"
            error = f"cell [{err.exec_count or err.cell_index}]: {err.ename}: {err.evalue}"
        except CellTimeoutError:
            status = "failed"
            error = (
                f"{_cell_where(output)}: no result after the cell time limit of {cell_timeout} s. Run again "
                f"without --cell-timeout, or with a larger one; finished work is kept"
            )
        except DeadKernelError:
            status = "failed"
            error = f"{_cell_where(output)}: the kernel died (out of memory?). Its log: {kernel_log}"
        except KeyboardInterrupt:
            status, error = "interrupted", f"{_cell_where(output)}: stopped by Ctrl-C"
    seconds = time.monotonic() - start
    if status != "done":
        return NotebookRun(notebook, output, params, status, seconds, error)
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps({"fingerprint": fingerprint, "parameters": params, "seconds": seconds}, default=str))
    return NotebookRun(notebook, output, params, "done", seconds)


def run(
    notebooks=None,
    *,
    profile="demo",
    overrides=None,
    grid=None,
    force=False,
    keep_going=False,
    out_dir=None,
    cell_timeout=None,
    progress=True,
    report=print,
):
    """Run notebooks in order under a profile.

    Args:
        notebooks: list of names or paths (see `find_notebook`); default all numbered notebooks. Ignored with
            ``grid``, whose file names its notebook.
        profile: 'smoke', 'demo' or 'full' (see ``profiles.yaml``).
        overrides: dict of parameters for every notebook that has them; each name must exist in at least one.
        grid: optional path of a grid file: run its notebook once per combination.
        force: bool, re-run notebooks that already finished with the same parameters. Without it, notebooks are
            skipped up to the first one that must run; from there on, all run.
        keep_going: bool, after a failure go on with the rest (default: skip the rest). Ctrl-C always stops.
        out_dir: where executed notebooks go. Default ``notebooks/executed/<profile>/``.
        cell_timeout: optional int, seconds a cell may run. Default None: no limit.
        progress: bool, show papermill's cell progress bar.
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
    for nb, _, params in plans:
        check_types(nb, params)
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
        result = execute(
            nb,
            output,
            params,
            force=force or (upstream_ran and not grid),
            cell_timeout=cell_timeout,
            progress=progress,
            report=report,
        )
        results.append(result)
        report(
            f"[{result.status}] {output.name} ({result.seconds:.0f} s){' - ' + result.error if result.error else ''}"
        )
        if result.status == "interrupted":
            break
        failed = failed or result.status == "failed"
        upstream_ran = upstream_ran or result.status == "done"
    return results
