"""Every numbered notebook runs headless under the `smoke` profile; assertions are on what each one writes."""

import json

import numpy as np
import pytest

from streetlib.attribution.concepts.discover import SOURCES
from streetlib.attribution.registry import METHODS
from streetlib.evaluation import stats
from streetlib.experiments import runner


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
    names = sorted(p.name for p in (root / "figs" / "synth-smoke" / "01-data").iterdir())
    assert names == [
        "synth-smoke-class-counts.png",
        "synth-smoke-colour-stats.png",
        "synth-smoke-samples-cue-masks.png",
        "synth-smoke-samples.png",
    ]


def _eval_rows(root, experiment, run):
    import pandas as pd

    return pd.read_csv(root / "hists" / "synth-smoke" / experiment / f"{run}.eval.csv")


def test_03_and_04_train_evaluate_and_record(smoke):
    import pandas as pd

    root, results = smoke
    for experiment, runs in (
        ("03-pretrained", ["hed-bsds500-transfer-seed42", "random-transfer-seed42"]),
        ("04-finetune", ["hed-bsds500-finetune-all-seed42"]),
    ):
        for run in runs:
            history = pd.read_csv(root / "hists" / "synth-smoke" / experiment / f"{run}.csv")
            assert history["epoch"].tolist() == [0]
            assert {"val_region_accuracy", "val_city_accuracy", "val_city_top3"} <= set(history.columns)
            manifest = json.loads((root / "hists" / "synth-smoke" / experiment / f"{run}.json").read_text())
            assert manifest["status"] == "complete" and manifest["dataset"]["synthetic"] is True
            rows = _eval_rows(root, experiment, run)
            overall = rows[(rows["metric"] == "accuracy") & rows["class"].isna()]
            # The best checkpoint is scored on validation (what configurations are chosen on) and on test.
            assert set(zip(overall["checkpoint"], overall["subset"], strict=True)) == {
                ("best", "val"),
                ("best", "test"),
            }
            assert set(overall["output"]) == {"region", "city"}
            assert manifest["config"]["cut"] == "block1_pool" and manifest["config"]["head"] == "conv"
            assert (root / "models" / "synth-smoke" / experiment / f"{run}.best.keras").is_file()
            assert (root / "figs" / "synth-smoke" / experiment / f"{run}.best.test.confusion-city.png").is_file()
    executed = (root / "executed" / "03_pretrained_comparison.ipynb").read_text()
    assert "Unavailable: imagenet" in executed and "Unavailable: places365" in executed  # offline, said so


def test_05_scores_the_maps(smoke):
    import pandas as pd

    root, _ = smoke
    board = pd.read_csv(root / "hists" / "synth-smoke" / "05-attribution" / "leaderboard.csv")
    # Every method of the registry on both outputs, with the random map as the floor, at the smoke profile's sizes.
    assert set(board["method"]) == {*METHODS, "random"} and set(board["output"]) == {"region", "city"}
    rows = board.set_index(["output", "method", "metric"])
    assert rows.loc[("region", "grad_cam", "pointing_game"), "images"] == 8
    assert rows.loc[("region", "rise", "pointing_game"), "images"] == 4
    assert rows.loc[("city", "saliency", "randomization"), "images"] == 4
    assert json.loads(rows.loc[("region", "rise", "pointing_game"), "params"])["masks"] == 8
    by_layer = pd.read_csv(root / "hists" / "synth-smoke" / "05-attribution" / "localization-by-layer.csv")
    # The model's last three convolutions, last first: 32 px smoke images, 16 px after block1_pool, 8 px after the
    # head's strided first convolution.
    assert by_layer["layer"].tolist() == ["head_conv2", "head_conv1", "block1_conv2", "random"]
    assert by_layer["grid"].tolist()[:3] == ["8x8", "8x8", "32x32"]
    # The smoke profile asks for the layer chosen on validation (layer="validation"): every CAM row of the leaderboard
    # reads the layer whose maps hit the masks most often in that table, and the notebook says which.
    chosen = by_layer.set_index("layer").drop("random")["pointing_game"].idxmax()
    assert set(board.loc[board["family"] == "cam", "layer"]) == {chosen}
    randomization = pd.read_csv(root / "hists" / "synth-smoke" / "05-attribution" / "randomization.csv")
    assert randomization["layer"].iloc[0] == "city_logits" and "block1_conv1" in set(randomization["layer"])
    executed = (root / "executed" / "05_attribution.ipynb").read_text()
    assert f"Grad-CAM layer: {chosen}" in executed
    assert "the first is explained below" in executed  # the headline model was chosen on validation
    assert "Finds the cues best (relevance_mass_accuracy, region output):" in executed  # the words, computed
    concepts = pd.read_csv(root / "hists" / "synth-smoke" / "05-attribution" / "concepts-region.csv")
    # Each region found (a one-epoch model may get a region wholly wrong) has its three rows: the model's top concept,
    # the same on randomised weights, the baseline; the deletion test only for the model and the baseline.
    # Compared list by list: pandas 2.2 reads `series == [list]` as a (1, 3) array, which fails with one region found.
    assert len(concepts) and all(rows == list(SOURCES) for rows in concepts.groupby("class")["source"].apply(list))
    assert concepts["deletion"].isna().tolist() == [s == SOURCES[1] for s in concepts["source"]]
    assert "of its map mass (pooled over the images) on cue pixels" in executed
    figs = {p.name for p in (root / "figs" / "synth-smoke" / "05-attribution").iterdir()}
    assert {
        "leaderboard-region.png",
        "leaderboard-city.png",
        "randomization.png",
        "mean-cams.png",
        "patch-gallery.png",
        "quadrants.png",
        "grid-synth-west.png",
        "grid-synth-east.png",
        "photo-tokyo.png",
    } <= figs


def test_06_puts_results_side_by_side_and_indexes_them(smoke):
    import pandas as pd

    root, _ = smoke
    table = pd.read_csv(root / "hists" / "synth-smoke" / "06-results" / "side-by-side.csv")
    assert {"hed-bsds500-transfer", "random-transfer", "hed-bsds500-finetune-all"} <= set(table["config"])
    assert table["family"].str.startswith("SVM on deep features").any()
    tables = root / "hists" / "synth-smoke" / "06-results"
    comparisons = pd.read_csv(tables / "comparisons.csv")
    questions = comparisons["question"].str.split(".").str[0].tolist()
    assert questions == ["1", "1", "2", "2", "2b", "2b", "3", "3", "4", "4"]  # 2b: question 2's control
    assert (comparisons["n"] == 2).all() and (comparisons["margin"] == 0.03).all()
    # One family: Holm over the five questions on both outputs; each verdict is the statistics module's.
    np.testing.assert_allclose(comparisons["p_holm"], stats.holm(comparisons["p"]))
    for row in comparisons.itertuples():
        kwargs = {"a": row.a, "b": row.b, "difference": row.difference, "margin": row.margin}
        assert row.verdict == stats.verdict(**kwargs, p=row.p_holm, p_equivalence=row.p_equivalence_holm)
    # The smoke splits: 6 images a city, 1 test and 4 training images each.
    assert comparisons["overlap"].eq(10 / 40).all()
    power = pd.read_csv(tables / "power.csv")
    assert power[["question", "output"]].equals(comparisons[["question", "output"]]) and (power["tests"] == 10).all()
    executed = (root / "executed" / "06_results.ipynb").read_text()
    assert "over 2 seeds; this design resolves" in executed  # the power table, in words
    assert "these verdicts test the pipeline, not the study's hypotheses about real cities" in executed
    assert {"learning-curves-region.png", "side-by-side.png"} <= {
        p.name for p in (root / "figs" / "synth-smoke" / "06-results").iterdir()
    }
    # The attribution section reads notebook 05's leaderboard and says it in words.
    assert (
        "Finds the cues best (relevance_mass_accuracy, region output):"
        in (root / "executed" / "06_results.ipynb").read_text()
    )
    hists_readme = (root / "hists" / "README.md").read_text()
    assert "hed-bsds500-finetune-all-seed42" in hists_readme
    assert "](synth-smoke/05-attribution/quadrants.png)" in (root / "figs" / "README.md").read_text()


def test_02_writes_the_baselines(smoke):
    import pandas as pd

    root, _ = smoke
    table = pd.read_csv(root / "hists" / "synth-smoke" / "02-baselines" / "baselines.csv")
    assert set(table["weights"]) == {"hed-bsds500", "random", "none"} and set(table["output"]) == {"region", "city"}
    floors = table[table["weights"] == "none"]  # the no-network floor, on the same splits
    assert set(floors["backbone"]) == {"pixels", "colour-stats"} and set(floors["seed"]) == {42, 43}
    assert set(table["seed"]) == {42, 43}
    assert table[["train_acc", "val_acc", "test_acc"]].stack().between(0, 1).all()
    assert (root / "figs" / "synth-smoke" / "02-baselines" / "summary.png").is_file()
    assert any((root / "data" / "features" / "synth-smoke").glob("*.npy"))
