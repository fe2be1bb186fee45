"""The demo's executed notebooks are committed with their outputs, so a reader can browse the results with their
narrative before running anything. `make demo` writes them; these tests fail when a notebook or the demo profile
changed since (run `make demo` and commit `notebooks/executed/demo/` with `hists/` and `figs/`)."""

import json

import nbformat
import pytest

from streetlib import paths
from streetlib.experiments import runner

EXECUTED = paths.REPO_ROOT / "notebooks" / "executed" / "demo"
NOTEBOOKS = runner.list_notebooks(paths.REPO_ROOT / "notebooks")


def _code(notebook):
    """A notebook's code cells as papermill leaves them, without the cell it injects."""
    return [
        c["source"]
        for c in notebook.cells
        if c["cell_type"] == "code" and "injected-parameters" not in c["metadata"].get("tags", [])
    ]


@pytest.mark.parametrize("source", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_each_executed_demo_notebook_is_the_current_notebook_run_with_the_demo_profile(source):
    executed_path = EXECUTED / source.name
    assert executed_path.is_file(), f"{executed_path} is missing: run `make demo` and commit it."
    executed = nbformat.read(executed_path, as_version=4)
    assert _code(executed) == _code(nbformat.read(source, as_version=4)), (
        f"{source.name} changed since the demo ran: run `make demo` and commit notebooks/executed/demo/."
    )
    expected = runner.resolve_parameters(source, runner.load_profile("demo"), {})
    assert json.loads(json.dumps(executed.metadata["papermill"]["parameters"])) == json.loads(json.dumps(expected))
    assert executed.metadata["papermill"]["exception"] is None
    outputs = [o for c in executed.cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert outputs and not [o for o in outputs if o["output_type"] == "error"]
