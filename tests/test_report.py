import json

import pandas as pd
import pytest

from streetlib.experiments import report


def _run(hists, experiment, run, *, val_city, val_region, test=None, synthetic=True, dataset="synth-demo"):
    folder = hists / dataset / experiment
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config": {
            "experiment": experiment,
            "run": run,
            "weights": "hed-bsds500",
            "phase": "transfer",
            "backbone": "vgg16",
            "image_size": 64,
            "seed": 0,
        },
        "dataset": {"label": "synth-demo (synthetic demo data)" if synthetic else "street10", "synthetic": synthetic},
        "split": {"seed": 42},
        "status": "complete",
    }
    (folder / f"{run}.json").write_text(json.dumps(manifest))
    pd.DataFrame(
        {"epoch": range(len(val_city)), "val_city_accuracy": val_city, "val_region_accuracy": val_region}
    ).to_csv(folder / f"{run}.csv", index=False)
    if test:
        rows = [
            {"checkpoint": c, "subset": "test", "output": o, "metric": "accuracy", "class": None, "value": v}
            for c, scores in test.items()
            for o, v in scores.items()
        ]
        rows.append(
            {
                "checkpoint": "best",
                "subset": "test",
                "output": "city",
                "metric": "accuracy",
                "class": "synth-w1",
                "value": 0.99,
            }
        )
        pd.DataFrame(rows).to_csv(folder / f"{run}.eval.csv", index=False)


def test_run_table_reads_best_final_and_test(tmp_path):
    _run(
        tmp_path,
        "demo",
        "a",
        val_city=[0.2, 0.6, 0.5],
        val_region=[0.5, 0.7, 0.8],
        test={"best": {"region": 0.75, "city": 0.55}, "final": {"region": 0.1, "city": 0.1}},
    )
    _run(tmp_path, "demo", "b", val_city=[0.3], val_region=[0.6])
    rows = report.run_rows(tmp_path).set_index("run")
    # The best checkpoint is the best epoch by validation city accuracy: region 0.7 there, not its best (0.8).
    assert rows.loc["a", "checkpoint_val_city"] == 0.6 and rows.loc["a", "checkpoint_val_region"] == 0.7
    assert rows.loc["a", "final_val_region"] == 0.8 and rows.loc["a", "epochs"] == 3
    assert rows.loc["a", "test_city"] == 0.55 and rows.loc["a", "test_region"] == 0.75  # best checkpoint, overall
    assert pd.isna(rows.loc["b", "test_city"]) and rows.loc["b", "eval"] == ""
    text = report.hists_markdown(tmp_path)
    assert "| demo | a | synth-demo (synthetic demo data) | hed-bsds500 | transfer | 42 | 3 | 0.700 | 0.600 |" in text
    assert "[csv](synth-demo/demo/a.csv) [manifest](synth-demo/demo/a.json) [eval](synth-demo/demo/a.eval.csv)" in text
    assert "say nothing about real cities" in text
    assert "| val region (best ckpt) | val city (best ckpt) | final val region |" in text


def test_figs_gallery_lists_every_figure(tmp_path):
    for rel in ("01-data/synth-demo-samples.png", "03-pretrained/hed.best.test.confusion-city.png", "top.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"\x89PNG")
    text = report.figs_markdown(tmp_path)
    assert text.count("![") == 3
    assert "## 01-data" in text and "](01-data/synth-demo-samples.png)" in text
    assert "*03-pretrained: hed, best, test, confusion-city*" in text
    paths = report.write_reports(hists_dir=tmp_path / "h", figs_dir=tmp_path)
    assert paths[1].read_text() == text
    assert "No training runs yet." in paths[0].read_text()


@pytest.mark.parametrize("folder", ["hists", "figs"])
def test_committed_readmes_are_up_to_date(folder):
    """The committed hists/README.md and figs/README.md match what `streetlib report` makes from the files."""
    from streetlib import paths

    root = paths.REPO_ROOT / folder
    readme = root / "README.md"
    if not readme.is_file():
        pytest.fail(f"{readme} is missing: run `streetlib report`.")
    expected = report.hists_markdown(root) if folder == "hists" else report.figs_markdown(root)
    assert readme.read_text() == expected, f"{readme} is stale: run `streetlib report`."


def test_a_damaged_history_or_manifest_is_named(tmp_path):
    """Issue #22: `streetlib report` names the file it cannot read, instead of a KeyError or a bare JSON message."""
    _run(tmp_path, "demo", "a", val_city=[0.2], val_region=[0.5])
    history = tmp_path / "synth-demo" / "demo" / "a.csv"
    history.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(ValueError, match=r"a\.csv: no column\(s\) \['val_city_accuracy', 'val_region_accuracy'\]"):
        report.run_rows(tmp_path)
    history.unlink()
    manifest = tmp_path / "synth-demo" / "demo" / "a.json"
    manifest.write_text('{"config": {"experiment": "demo"}}')
    with pytest.raises(ValueError, match=r"a\.json: not a complete run manifest \(no entry 'run'\)"):
        report.run_rows(tmp_path)
    manifest.write_text("{")
    with pytest.raises(ValueError, match=r"a\.json: not valid JSON"):
        report.run_rows(tmp_path)
