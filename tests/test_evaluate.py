import json

import numpy as np
import pandas as pd
import pytest

from streetlib import figures
from streetlib.evaluation import evaluate
from streetlib.models import network
from streetlib.runs import RunId, RunLayout

# Six predictions over four classes, worked out by hand below.
Y = np.array([0, 0, 1, 1, 2, 3])
P = np.array(
    [
        [0.72, 0.10, 0.10, 0.08],  # right, confidence .72
        [0.25, 0.55, 0.15, 0.05],  # wrong (1), true class 2nd: in the top 3
        [0.07, 0.83, 0.06, 0.04],  # right, .83
        [0.04, 0.07, 0.64, 0.25],  # wrong (2), true class 3rd
        [0.14, 0.05, 0.30, 0.51],  # wrong (3), true class 2nd
        [0.93, 0.04, 0.02, 0.01],  # wrong (0), true class last: outside the top 3
    ]
)
NAMES = ["a", "b", "c", "d"]


def test_accuracy_top3_and_calibration_by_hand():
    rows = pd.DataFrame(evaluate.metric_rows(Y, P, NAMES, output="city"))
    overall = rows[rows["class"].isna()].set_index("metric")["value"]
    assert overall["accuracy"] == pytest.approx(2 / 6)
    assert overall["top3"] == pytest.approx(5 / 6)
    assert overall["n"] == 6
    # Bins of width .1: (.5, .6] holds .55 and .51 (both wrong), then .64 wrong, .72 right, .83 right, .93 wrong.
    ece = (2 * 0.53 + 0.64 + (1 - 0.72) + (1 - 0.83) + 0.93) / 6
    assert overall["ece"] == pytest.approx(ece)  # 0.5133

    table = evaluate.reliability(Y, P, n_bins=10)
    assert table["count"].tolist() == [0, 0, 0, 0, 0, 2, 1, 1, 1, 1]
    assert table.loc[5, "confidence"] == pytest.approx(0.53) and table.loc[5, "accuracy"] == 0.0
    assert np.isnan(table.loc[0, "accuracy"])

    per_class = rows[rows["class"].notna() & rows["predicted"].isna()].pivot(
        index="class", columns="metric", values="value"
    )
    assert per_class.loc["a"].to_dict() == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert per_class.loc["c"].to_dict() == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})

    cm = evaluate.confusion(Y, P.argmax(axis=1), 4)
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    confusion_rows = rows[rows["metric"] == "confusion"]
    assert confusion_rows.set_index(["class", "predicted"]).loc[("b", "c"), "value"] == 1


def test_top3_counts_classes_absent_from_the_subset_and_ranks_ties_by_the_higher_index():
    # Two images of class "a" only: the scores still have four classes.
    rows = pd.DataFrame(evaluate.metric_rows(Y[:2], P[:2], NAMES, output="city"))
    assert rows.set_index("metric").loc["top3", "value"] == 1.0
    # Class "b" ties with "c" and "d" for second place: the higher indices come first, so "b" is fourth.
    tied = pd.DataFrame(evaluate.metric_rows([1], [[0.4, 0.2, 0.2, 0.2]], NAMES, output="city"))
    assert tied.set_index("metric").loc["top3", "value"] == 0.0


def test_region_rows_have_no_top3():
    rows = pd.DataFrame(
        evaluate.metric_rows([0, 1, 1], [[0.9, 0.1], [0.4, 0.6], [0.8, 0.2]], ["w", "e"], output="region")
    )
    assert "top3" not in set(rows["metric"])
    assert rows[(rows["metric"] == "accuracy")]["value"].item() == pytest.approx(2 / 3)


def test_city_distances_by_hand():
    cm = np.array([[8, 2, 0], [2, 8, 0], [0, 0, 10]])
    d = evaluate.confusion_distances(cm)
    np.testing.assert_allclose(d, [[0, 0.8, 1], [0.8, 0, 1], [1, 1, 0]])

    embeddings = np.array([[1, 0], [3, 0], [0, 2], [0, 4], [1, 1]], dtype=float)
    d = evaluate.centroid_distances(embeddings, np.array([0, 0, 1, 1, 2]), 4)
    assert d[0, 1] == pytest.approx(1.0) and d[0, 2] == pytest.approx(1 - np.sqrt(0.5))
    assert d[3, 0] == pytest.approx(1.0)  # a class with no samples is far from all
    np.testing.assert_allclose(np.diag(d), 0)


def test_confusion_figure_is_row_normalised_and_titled():
    fig = figures.plot_confusion(
        [[3, 1], [0, 0]],
        class_names=["x", "y"],
        title=figures.title("city", data_label="toy (synthetic demo data)", weights_label="HED"),
    )
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25], [0, 0]])
    assert ax.get_title() == "city\ntoy (synthetic demo data) - weights: HED"
    assert [t.get_text() for t in ax.texts] == ["0.75", "0.25", "0.00", "0.00"]
    with pytest.raises(ValueError, match=r"`cm` must be square with one row per class \(3\)"):
        figures.plot_confusion(np.eye(2), class_names=["x", "y", "z"])


# Region of each of the four classes above: a and b west (0), c and d east (1).
REGION_Y = np.array([0, 0, 0, 0, 1, 1])
REGION_P = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8], [0.45, 0.55]])
REGION_NAMES = ["west", "east"]


def _scores(similarity="confusion"):
    embedding = np.array([[1, 0], [3, 0], [0, 2], [0, 4], [1, 1], [2, 2]], dtype=float)
    return evaluate.score(
        {"region": REGION_Y, "city": Y},
        {"region": REGION_P, "city": P, "embedding": embedding},
        {"region": REGION_NAMES, "city": NAMES},
        similarity=similarity,
    )


def test_score_computes_every_result_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scores = _scores()

    assert list(tmp_path.iterdir()) == []
    assert scores.n == 6 and scores.similarity == "confusion"
    assert scores.class_names == {"region": REGION_NAMES, "city": NAMES}
    np.testing.assert_array_equal(scores.confusion["region"], [[3, 1], [0, 2]])
    np.testing.assert_array_equal(scores.confusion["city"], [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    overall = scores.metrics[scores.metrics["class"].isna()].set_index(["output", "metric"])["value"]
    assert overall[("region", "accuracy")] == pytest.approx(5 / 6)
    assert overall[("city", "accuracy")] == pytest.approx(2 / 6) and overall[("city", "top3")] == pytest.approx(5 / 6)
    assert ("region", "top3") not in overall  # two regions: top-3 means nothing
    assert list(scores.metrics["output"].unique()) == ["region", "city"]
    # The calibration is the city output's (worked out in the first test).
    assert scores.ece == pytest.approx(0.513333, abs=1e-6)
    assert scores.reliability["count"].tolist() == [0, 0, 0, 0, 0, 2, 1, 1, 1, 1]
    # Row rates: a (.5, .5, 0, 0), b (0, .5, .5, 0), c (0, 0, 0, 1), d (1, 0, 0, 0); d(a, b) = 1 - (.5 + 0) / 2.
    assert scores.distances[0, 1] == pytest.approx(0.75) and scores.distances[2, 3] == pytest.approx(0.5)
    assert scores.distances[0, 3] == pytest.approx(0.5) and scores.distances[1, 3] == pytest.approx(1.0)
    np.testing.assert_allclose(scores.distances, scores.distances.T)

    # Class means: a (2, 0), b (0, 3), c (1, 1), d (2, 2): c and d point the same way.
    by_embedding = _scores("embedding").distances
    assert by_embedding[0, 1] == pytest.approx(1.0) and by_embedding[2, 3] == pytest.approx(0.0, abs=1e-12)
    assert by_embedding[0, 2] == pytest.approx(1 - np.sqrt(0.5))
    with pytest.raises(ValueError, match=r"Invalid `similarity`.*Received: similarity='pixels'"):
        _scores("pixels")


def test_eval_rows_label_the_scores_and_append_evals_replaces_its_own(tmp_path):
    scores = _scores()
    identity = dict(dataset="toy", weights="random init", run=RunId("ev", "r"), subset="test")

    best = evaluate.eval_rows(scores, checkpoint="best", **identity)

    assert list(best.columns) == evaluate.COLUMNS and len(best) == len(scores.metrics)
    assert (best["weights"] == "random init").all() and (best["checkpoint"] == "best").all()
    assert (best["run"] == "r").all() and (best["config_name"] == "r").all() and best["seed"].isna().all()
    np.testing.assert_array_equal(best["value"], scores.metrics["value"])
    with pytest.raises(ValueError, match=r"Invalid `checkpoint`.*Received: checkpoint='last'"):
        evaluate.eval_rows(scores, checkpoint="last", **identity)

    path = tmp_path / "ev" / "r.eval.csv"
    final = evaluate.eval_rows(scores, checkpoint="final", **identity)
    assert evaluate.append_evals(best, path) == path
    evaluate.append_evals(final, path)
    evaluate.append_evals(final.assign(value=0.0), path)  # replaces the final rows, keeps the best ones
    saved = pd.read_csv(path)
    assert list(saved.columns) == evaluate.COLUMNS
    assert saved.groupby("checkpoint").size().to_dict() == {"best": len(best), "final": len(best)}
    assert (saved.loc[saved["checkpoint"] == "final", "value"] == 0).all()
    assert [p.name for p in path.parent.iterdir()] == ["r.eval.csv"]  # no temporary file left


def test_score_figures_draw_the_scores_and_save_all_names_them(tmp_path):
    scores = _scores()
    drawn = figures.score_figures(
        scores, what="r (best weights, test set, n=6)", data_label="toy (synthetic demo data)", weights_label="HED"
    )

    assert list(drawn) == ["confusion-region", "confusion-city", "reliability", "similarity"]
    np.testing.assert_allclose(drawn["confusion-region"].axes[0].images[0].get_array(), [[0.75, 0.25], [0, 1]])
    assert drawn["reliability"].axes[0].texts[0].get_text() == "ECE = 0.513"
    assert drawn["similarity"].axes[0].get_title().startswith("city similarity (confusion): r (best weights")
    for fig in drawn.values():
        title = fig.axes[0].get_title()
        assert "toy (synthetic demo data)" in title and "weights: HED" in title

    written = figures.save_all(drawn, tmp_path, stem="r.best.test")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    assert written[0] == tmp_path / "r.best.test.confusion-region.png"


@pytest.fixture(scope="module")
def tiny_model(toy_data):
    return network.build_model(input_shape=(32, 32, 3), classes=toy_data.spec, seed=0)


def _manifest(hists_dir, run="r"):
    manifest = {"config": {"normalization": "samplewise", "weights_label": "random init"}}
    (hists_dir / "ev").mkdir(parents=True, exist_ok=True)
    (hists_dir / "ev" / f"{run}.json").write_text(json.dumps(manifest))


def test_evaluate_run_writes_tidy_rows_and_figures(tiny_model, toy_data, toy_data_split, out_dirs):
    run = RunId("ev", "r", 3)
    _manifest(out_dirs["hists_dir"], run=run.name)
    kwargs = dict(run=run, layout=RunLayout(**out_dirs))

    frame = evaluate.evaluate_run(tiny_model, toy_data, toy_data_split, similarity="embedding", **kwargs)

    assert list(frame.columns) == evaluate.COLUMNS
    assert set(frame["output"]) == {"region", "city"} and set(frame["checkpoint"]) == {"best"}
    assert (frame["dataset"] == "toy (synthetic demo data)").all() and (frame["weights"] == "random init").all()
    probs = evaluate.predict(tiny_model, toy_data, toy_data_split.test, normalization="samplewise", image_size=32)
    expected = np.mean(probs["city"].argmax(axis=1) == toy_data.city[toy_data_split.test])
    city = frame[(frame["output"] == "city") & frame["class"].isna()].set_index("metric")["value"]
    assert city["accuracy"] == pytest.approx(expected) and city["n"] == len(toy_data_split.test)
    assert probs["embedding"].shape == (len(toy_data_split.test), 128)
    scores = evaluate.score_run(tiny_model, toy_data, toy_data_split, normalization="samplewise")
    np.testing.assert_allclose(
        evaluate.eval_rows(
            scores, dataset=frame["dataset"][0], weights="random init", run=run, checkpoint="best", subset="test"
        )["value"],
        frame["value"],
    )
    # The rows carry the run's identity, so comparisons over seeds need not read it back from the name.
    assert frame[["experiment", "run", "config_name"]].drop_duplicates().values.tolist() == [["ev", "r-seed3", "r"]]
    assert (frame["seed"] == 3).all()

    names = {
        "r-seed3.best.test.confusion-city.png",
        "r-seed3.best.test.confusion-region.png",
        "r-seed3.best.test.reliability.png",
        "r-seed3.best.test.similarity.png",
    }
    assert {p.name for p in (out_dirs["figs_dir"] / "ev").iterdir()} == names

    evaluate.evaluate_run(tiny_model, toy_data, toy_data_split, checkpoint="final", **kwargs)
    evaluate.evaluate_run(tiny_model, toy_data, toy_data_split, checkpoint="final", **kwargs)  # replaces its rows
    saved = pd.read_csv(out_dirs["hists_dir"] / "ev" / "r-seed3.eval.csv")
    assert saved.groupby("checkpoint").size().to_dict() == {"best": len(frame), "final": len(frame)}


def test_evaluate_run_loads_saved_models_and_reads_the_manifest(tiny_model, toy_data, toy_data_split, out_dirs):
    saved = out_dirs["models_dir"] / "ev"
    saved.mkdir(parents=True)
    tiny_model.save(saved / "r.best.keras")
    tiny_model.save(saved / "r.final.keras")
    _manifest(out_dirs["hists_dir"])

    run, layout = RunId("ev", "r"), RunLayout(**out_dirs)
    frame = pd.concat(
        [
            evaluate.evaluate_run(layout.model(run, c), toy_data, toy_data_split, run=run, checkpoint=c, layout=layout)
            for c in ("best", "final")
        ],
        ignore_index=True,
    )

    assert set(frame["checkpoint"]) == {"best", "final"}
    best = frame[frame["checkpoint"] == "best"].reset_index(drop=True)
    final = frame[frame["checkpoint"] == "final"].reset_index(drop=True)
    np.testing.assert_allclose(best["value"], final["value"])  # the same weights give the same numbers
    assert len(evaluate.read_evals("ev", layout=RunLayout(**out_dirs))) == len(frame)


def test_evaluate_errors_are_named(tiny_model, toy_data, toy_data_split, out_dirs):
    common = dict(run=RunId("ev", "none"), layout=RunLayout(**out_dirs))
    with pytest.raises(ValueError, match="No manifest with `normalization` and `weights_label` at .*none.json"):
        evaluate.evaluate_run(tiny_model, toy_data, toy_data_split, **common)
    with pytest.raises(ValueError, match=r"Invalid `checkpoint`.*Received: checkpoint='last'"):
        evaluate.evaluate_run(tiny_model, toy_data, toy_data_split, checkpoint="last", **common)
    with pytest.raises(ValueError, match=r"Invalid `similarity`.*Received: similarity='pixels'"):
        evaluate.evaluate_run(tiny_model, toy_data, toy_data_split, similarity="pixels", **common)
    with pytest.raises(FileNotFoundError, match="No evaluation results"):
        evaluate.read_evals("ev", layout=RunLayout(**out_dirs))
    # A layout of another dataset would file the rows with that dataset's: refused, naming both.
    other = RunLayout(**out_dirs, dataset="street10")
    with pytest.raises(ValueError, match="layout is for dataset 'street10', the data are 'toy'"):
        evaluate.evaluate_run(tiny_model, toy_data, toy_data_split, run=RunId("ev", "none"), layout=other)


def _seed_frame(scores):
    """Eval rows for runs ``RunId("e", config, seed)`` with the given city test accuracies."""
    return pd.DataFrame(
        [
            {
                "run": RunId("e", config, seed).name,
                "config_name": config,
                "seed": seed,
                "checkpoint": "best",
                "subset": "test",
                "output": "city",
                "metric": "accuracy",
                "class": np.nan,
                "value": value,
            }
            for config, values in scores.items()
            for seed, value in values.items()
        ]
    )


def test_seed_scores_give_one_value_per_seeded_run():
    frame = _seed_frame({"A": {1: 0.50, 2: 0.60}, "B": {2: 0.65}})
    frame = pd.concat([frame, frame.assign(output="region", value=0.9)], ignore_index=True)
    scores = evaluate.seed_scores(frame)  # city, best checkpoint, test: the defaults
    assert scores.to_dict("records") == [
        {"config": "A", "seed": 1, "value": 0.50},
        {"config": "A", "seed": 2, "value": 0.60},
        {"config": "B", "seed": 2, "value": 0.65},
    ]
    assert evaluate.seed_scores(frame, output="region")["value"].tolist() == [0.9, 0.9, 0.9]


def test_repeated_run_errors_are_named():
    frame = _seed_frame({"A": {1: 0.5}, "B": {2: 0.6}})
    with pytest.raises(ValueError, match=r"No rows for metric='top3'"):
        evaluate.seed_scores(frame, metric="top3")
    frame.loc[0, ["run", "config_name", "seed"]] = ["A-run1", "A-run1", np.nan]
    with pytest.raises(ValueError, match=r"Runs \['A-run1'\] have no seed"):
        evaluate.seed_scores(frame)


def test_rows_written_before_they_carried_the_run_id_still_read(tmp_path):
    """Committed eval CSVs have no config_name and seed: reading, comparing and appending to them still work."""
    hists = tmp_path / "hists"
    (hists / "ev").mkdir(parents=True)
    for run in (RunId("ev", "a-transfer", 1), RunId("ev", "plain")):
        old = evaluate.eval_rows(_scores(), dataset="toy", weights="w", run=run, checkpoint="best", subset="test")
        old.drop(columns=["config_name", "seed"]).to_csv(hists / "ev" / f"{run.name}.eval.csv", index=False)

    frame = evaluate.read_evals("ev", layout=RunLayout(hists_dir=hists))

    assert list(frame.columns) == evaluate.COLUMNS
    ids = frame[["run", "config_name", "seed"]].drop_duplicates().astype(object).values.tolist()
    assert ids == [["a-transfer-seed1", "a-transfer", 1], ["plain", "plain", pd.NA]]
    seeded = evaluate.seed_scores(frame[frame["seed"].notna()])
    assert seeded[["config", "seed"]].values.tolist() == [["a-transfer", 1]]

    path = hists / "ev" / "a-transfer-seed1.eval.csv"
    run = RunId("ev", "a-transfer", 1)
    new = evaluate.eval_rows(_scores(), dataset="toy", weights="w", run=run, checkpoint="final", subset="test")
    evaluate.append_evals(new, path)
    saved = pd.read_csv(path)
    assert list(saved.columns) == evaluate.COLUMNS  # the old rows are labelled too, not left blank
    assert set(saved["config_name"]) == {"a-transfer"} and set(saved["seed"]) == {1}
    assert saved.groupby("checkpoint").size().to_dict() == {"best": len(new), "final": len(new)}
