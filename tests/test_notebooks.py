"""Every numbered notebook runs headless under the `smoke` profile; assertions are on what each one writes."""

import json

import pytest

from streetlib import runner


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke-root")
    mp = pytest.MonkeyPatch()
    mp.setenv("STREETLIB_ROOT", str(root))  # the kernels inherit it: nothing is written into the repository
    results = runner.run(profile="smoke", out_dir=root / "executed", progress=False, report=lambda line: None)
    mp.undo()
    return root, {r.notebook.stem: r for r in results}


def test_every_notebook_ran(smoke):
    _, results = smoke
    assert sorted(results) == [nb.stem for nb in runner.list_notebooks()]
    failed = {name: r.error for name, r in results.items() if r.status != "done"}
    assert not failed


def test_00_writes_the_dataset_and_split(smoke):
    root, _ = smoke
    meta = json.loads((root / "data" / "synth-smoke" / "dataset.json").read_text())
    assert meta["synthetic"] is True and meta["per_class"] == 6 and meta["size"] == 32
    split = json.loads((root / "data" / "splits" / "synth-smoke-seed42.json").read_text())
    assert sum(split["counts"].values()) == 60


def test_01_writes_its_figures(smoke):
    root, _ = smoke
    names = sorted(p.name for p in (root / "figs" / "01-data").iterdir())
    assert names == ["synth-smoke-class-counts.png", "synth-smoke-colour-stats.png",
                     "synth-smoke-samples-cue-masks.png", "synth-smoke-samples.png"]
