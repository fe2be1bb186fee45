"""The executed notebooks of the demo and of the layout profile are committed with their outputs, so a reader can
browse the results with their narrative before running anything. `make demo` (or `streetlib run --profile layout`)
writes them; these tests fail when a notebook or the profile changed since (run it again and commit
`notebooks/executed/<profile>/` with `hists/` and `figs/`)."""

import json

import nbformat
import pytest

from streetlib import paths
from streetlib.experiments import runner

EXECUTED = paths.REPO_ROOT / "notebooks" / "executed"
NOTEBOOKS = runner.list_notebooks(paths.REPO_ROOT / "notebooks")
COMMAND = {"demo": "make demo", "layout": "streetlib run --profile layout"}


def _code(notebook):
    """A notebook's code cells as papermill leaves them, without the cell it injects."""
    return [
        c["source"]
        for c in notebook.cells
        if c["cell_type"] == "code" and "injected-parameters" not in c["metadata"].get("tags", [])
    ]


@pytest.mark.parametrize("profile", sorted(COMMAND))
@pytest.mark.parametrize("source", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_each_executed_notebook_is_the_current_notebook_run_with_its_profile(source, profile):
    executed_path = EXECUTED / profile / source.name
    assert executed_path.is_file(), f"{executed_path} is missing: run `{COMMAND[profile]}` and commit it."
    executed = nbformat.read(executed_path, as_version=4)
    assert _code(executed) == _code(nbformat.read(source, as_version=4)), (
        f"{source.name} changed since the {profile} profile ran: run `{COMMAND[profile]}` and commit "
        f"notebooks/executed/{profile}/."
    )
    expected = runner.resolve_parameters(source, runner.load_profile(profile), {})
    assert json.loads(json.dumps(executed.metadata["papermill"]["parameters"])) == json.loads(json.dumps(expected))
    assert executed.metadata["papermill"]["exception"] is None
    outputs = [o for c in executed.cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert outputs and not [o for o in outputs if o["output_type"] == "error"]
