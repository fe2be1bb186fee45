"""Run the numbered notebooks headless with papermill: profiles, checked parameters, grids, resume.

Profiles live in ``streetlib/experiments/profiles.yaml``: ``smoke`` for CI, ``demo`` the main job, ``full``
Street10 on a GPU. Parameters are checked before any kernel starts: their names, their types (those of the
notebooks' defaults) and their ranges (`streetlib.experiments.parameters`).
Executed notebooks go to ``<output root>/notebooks/executed/<profile>/`` (`streetlib.paths.executed_dir`); beside
each, a ``.done.json`` records the parameters and the output root of a finished run, so an interrupted ``streetlib
run`` resumes by skipping what already finished with the same parameters into the same root. Once a notebook of the
sequence runs, every later one runs too, since it reads what the earlier ones wrote. Each point of a grid passes its
`variant_name` to a notebook with a ``variant`` parameter, which adds it to the names of its training runs.

Cells have no time limit unless one is asked for: a training cell runs for hours on Street10. Each training epoch
prints one progress line (see `streetlib.progress`). A cell that fails, times out, loses its kernel or is stopped
with Ctrl-C or SIGTERM ends the run with one line naming the notebook and the cell; the next run resumes (finished
notebooks are skipped, interrupted training runs continue from their last epoch). The kernel's own stderr goes to
``<notebook>.kernel.log`` beside the executed copy.
"""

import contextlib
import hashlib
import itertools
import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from streetlib import paths
from streetlib.experiments.parameters import (
    SHARED_PARAMETERS,
    check_overrides,
    check_ranges,
    check_types,
    notebook_parameters,
)
from streetlib.paths import atomic_path
from streetlib.progress import PROGRESS_ENV, follow

PROFILES_FILE = Path(__file__).resolve().parent / "profiles.yaml"
GRID_KEYS = ("grid", "notebook")


class Terminated(KeyboardInterrupt):
    """Raised by SIGTERM while `run` runs, so that the run stops as it does for Ctrl-C: the kernel is shut down,
    the notebook's run ends as 'interrupted' and the next run resumes."""


@dataclass
class NotebookRun:
    """The outcome of one notebook execution.

    Attributes:
        notebook: Path of the source notebook.
        output: Path of the executed copy.
        parameters: dict of the parameters passed.
        status: 'done', 'skipped' (finished before with the same parameters), 'failed' or 'interrupted' (Ctrl-C
            or SIGTERM).
        seconds: float wall time (0 when skipped).
        error: for a failure or interruption, which cell and what happened, else ''.
        signal: int, for an interruption the signal that stopped it (`signal.SIGINT` for Ctrl-C, `signal.SIGTERM`),
            else 0.
    """

    notebook: Path
    output: Path
    parameters: dict = field(default_factory=dict)
    status: str = "done"
    seconds: float = 0.0
    error: str = ""
    signal: int = 0


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


def _read_yaml(path):
    """The document in a YAML file.

    Raises:
        ValueError: the file is not valid YAML; the message names the file and the line.
    """
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark else ""
        raise ValueError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', None) or err}).") from err


def load_profile(name, *, path=None):
    """A profile from the profiles file: dict with 'description', 'all' (parameters for every notebook that has
    them) and 'notebooks' (notebook stem -> parameters)."""
    profiles = _read_yaml(path or PROFILES_FILE)
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

    Profile entries for this notebook and every override must name one of its parameters; `SHARED_PARAMETERS` are
    set under the profile's 'all' only.
    """
    known = notebook_parameters(notebook)
    own = profile["notebooks"].get(notebook.stem, {})
    _check_names(notebook, own, known, "profile")
    shared = sorted(set(own) & set(SHARED_PARAMETERS))
    if shared:
        raise ValueError(
            f"Parameter(s) {shared} are set for {Path(notebook).name} alone in the profile: they are shared by every "
            f"notebook ({', '.join(SHARED_PARAMETERS)}), so set them under `all`."
        )
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


def expand_grid(grid):
    """All combinations of a grid ``{name: [values...]}``, in order. Returns a list of dicts."""
    names = list(grid)
    for name in names:
        if not isinstance(grid[name], list) or not grid[name]:
            raise ValueError(f"Grid entry {name!r} must be a non-empty list of values. Received: {grid[name]!r}")
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(grid[n] for n in names))]


def load_grid(path):
    """A grid file (YAML): ``notebook: "03"`` and ``grid: {name: [values...]}``.

    Every name must be a parameter of the notebook, every value of the type of its default and within its range.

    Returns:
        (notebook Path, list of dicts: the grid's points, see `expand_grid`).

    Raises:
        ValueError: naming the file and what is wrong in it.
    """
    doc = _read_yaml(path)
    if not isinstance(doc, dict) or "notebook" not in doc or not isinstance(doc.get("grid"), dict):
        raise ValueError(f"Grid file {path} must have `notebook:` and `grid: {{name: [values]}}`.")
    unknown = sorted(set(doc) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"Grid file {path} has unknown key(s) {unknown}. Allowed keys: {list(GRID_KEYS)}.")
    # Unquoted, `notebook: 03` reads as the int 3.
    name = doc["notebook"]
    notebook = find_notebook(f"{name:02d}" if type(name) is int else str(name))
    where = f"grid file {path}"
    _check_names(notebook, doc["grid"], notebook_parameters(notebook), where)
    points = expand_grid(doc["grid"])
    for point in points:
        check_types(notebook, point, where=where)
        check_ranges(notebook, point, where=where)
    return notebook, points


def variant_name(point):
    """The variant of a grid point, which a notebook adds to the names of its training runs (see
    `streetlib.runs.with_variant`): ``{"pooling": "max", "split_seeds": [43]}`` -> ``pooling-max__split_seeds-43``.

    Returns:
        str of letters, digits, '.', '_' and '-'.
    """
    parts = [f"{name}-{'-'.join(map(str, v)) if isinstance(v, list) else v}" for name, v in point.items()]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "__".join(parts))


def _output_root(notebook, params):
    """The output root a notebook writes under, absolute: its ``output_root`` parameter when set (relative to the
    notebook's folder, the kernel's working directory, where the notebook reads it), else `paths.root()`."""
    given = params.get("output_root")
    return (notebook.parent / Path(given).expanduser()).resolve() if given else paths.root().resolve()


def _fingerprint(notebook, params, root_dir):
    record = {"source": Path(notebook).read_text(), "params": params, "output_root": str(root_dir)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _output_name(notebook, point):
    if not point:
        return notebook.name
    suffix = "__".join(f"{k}={v}" for k, v in point.items())
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


@contextlib.contextmanager
def _sigterm_stops():
    """While inside, SIGTERM raises `Terminated` in the main thread; a second SIGTERM ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
        # Only the main thread may set signal handlers: elsewhere SIGTERM keeps its own.
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _retrieve_abandoned_cell(interrupt):
    """Retrieve the error of the cell that Ctrl-C or SIGTERM abandoned, so asyncio prints no traceback for it.

    The interrupt leaves the cell's task pending in asyncio's ``run_until_complete`` (its local ``future``, in a
    frame of ``interrupt``'s traceback). While papermill then shuts the kernel down, a kernel of ipykernel 6.17 with
    IPython 7.34 (Colab's, our floor) still answers the cell with a KeyboardInterrupt error: the task finishes with an
    exception that nobody awaits, printed as a traceback when it is collected. The lock's ipykernel 7 does not answer.
    """
    import asyncio

    tb = interrupt.__traceback__
    while tb is not None:
        task = tb.tb_frame.f_locals.get("future")
        if isinstance(task, asyncio.Future) and task.done() and not task.cancelled():
            task.exception()
        tb = tb.tb_next


def execute(notebook, output, params, *, root_dir=None, force=False, cell_timeout=None, progress=True, report=print):
    """Execute one notebook with papermill, or skip it if it already finished with the same parameters.

    The working directory is the notebook's folder. Training progress lines from the kernel go to ``report`` as
    they come.

    Args:
        notebook, output: paths of the notebook and of its executed copy.
        params: dict of parameters.
        root_dir: the output root the notebook writes under, given to the kernel as ``STREETLIB_ROOT``; a skip
            needs the same root. Default `streetlib.paths.root()`.
        force, cell_timeout, progress, report: as in `run`.

    Returns:
        `NotebookRun`; a failed or interrupted one says which cell in ``error``.
    """
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    root_dir = Path(root_dir or paths.root()).resolve()
    done = output.with_suffix(".done.json")
    fingerprint = _fingerprint(notebook, params, root_dir)
    if not force and done.is_file() and json.loads(done.read_text()).get("fingerprint") == fingerprint:
        return NotebookRun(notebook, output, params, status="skipped")
    done.unlink(missing_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    progress_file, kernel_log = output.with_suffix(".progress.log"), output.with_suffix(".kernel.log")
    progress_file.unlink(missing_ok=True)
    start = time.monotonic()
    status, error, stopped_by = "done", "", 0
    kernel_env = {PROGRESS_ENV: str(progress_file.resolve()), "STREETLIB_ROOT": str(root_dir)}
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
                kernel_manager_class=_kernel_manager(log, kernel_env),
            )
        except pm.PapermillExecutionError as err:
            status = "interrupted" if err.ename == "KeyboardInterrupt" else "failed"
            stopped_by = signal.SIGINT if status == "interrupted" else 0
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
        except KeyboardInterrupt as err:
            _retrieve_abandoned_cell(err)
            stopped_by = signal.SIGTERM if isinstance(err, Terminated) else signal.SIGINT
            how = "SIGTERM" if stopped_by == signal.SIGTERM else "Ctrl-C"
            status, error = "interrupted", f"{_cell_where(output)}: stopped by {how}"
    seconds = time.monotonic() - start
    if status != "done":
        return NotebookRun(notebook, output, params, status, seconds, error, int(stopped_by))
    record = {"fingerprint": fingerprint, "parameters": params, "output_root": str(root_dir), "seconds": seconds}
    with atomic_path(done) as tmp:
        tmp.write_text(json.dumps(record, default=str))
    return NotebookRun(notebook, output, params, "done", seconds)


def plan(notebooks=None, *, profile="demo", overrides=None, grid=None):
    """What `run` executes, checked before anything runs: every name, type and range of the parameters.

    Args:
        notebooks, profile, overrides, grid: as in `run`.

    Returns:
        list of (notebook Path, grid point dict ({} without a grid), dict of parameters), in order. A grid point's
        parameters give a notebook with a ``variant`` parameter the point's `variant_name`, unless the grid sets it.

    Raises:
        ValueError: naming the notebook, the parameter and what is wrong.
    """
    overrides = dict(overrides or {})
    prof = load_profile(profile)
    if grid:
        notebook, points = load_grid(grid)
        jobs = [(notebook, point) for point in points]
    else:
        selected = [find_notebook(str(n)) for n in notebooks] if notebooks else list_notebooks()
        jobs = [(nb, {}) for nb in selected]
    check_overrides(sorted({nb for nb, _ in jobs}), overrides)
    plans = []
    for nb, point in jobs:
        params = {**resolve_parameters(nb, prof, overrides), **point}
        if point and "variant" in notebook_parameters(nb) and "variant" not in point:
            params["variant"] = variant_name(point)
        check_types(nb, params)
        check_ranges(nb, params)
        plans.append((nb, point, params))
    return plans


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
        keep_going: bool, after a failure go on with the rest (default: skip the rest). Ctrl-C and SIGTERM always
            stop.
        out_dir: where executed notebooks go. Default `streetlib.paths.executed_dir` of the profile, under the
            output root each notebook writes to.
        cell_timeout: optional number, seconds a cell may run. Default None: no limit.
        progress: bool, show papermill's cell progress bar.
        report: callable taking one line of text, for progress messages.

    Returns:
        list of `NotebookRun`, one per notebook (or grid point) attempted or skipped.

    Raises:
        ValueError: a profile, notebook, grid file or parameter that is wrong (see `plan`), before anything runs.
        Terminated: SIGTERM between two notebooks (during one, that notebook's run ends as 'interrupted').
    """
    plans = plan(notebooks, profile=profile, overrides=overrides, grid=grid)
    results, failed, upstream_ran = [], False, False
    with _sigterm_stops():
        for nb, point, params in plans:
            root_dir = _output_root(nb, params)
            output = Path(out_dir or paths.executed_dir(profile, root_dir)) / _output_name(nb, point)
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
                root_dir=root_dir,
                force=force or (upstream_ran and not grid),
                cell_timeout=cell_timeout,
                progress=progress,
                report=report,
            )
            results.append(result)
            error = f" - {result.error}" if result.error else ""
            report(f"[{result.status}] {output.name} ({result.seconds:.0f} s){error}")
            if result.status == "interrupted":
                break
            failed = failed or result.status == "failed"
            upstream_ran = upstream_ran or result.status == "done"
    return results
