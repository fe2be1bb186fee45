"""Reading the study's runs: per-seed summaries, configurations chosen on validation, the baselines' scores."""

import pandas as pd
import pytest

from streetlib.experiments import study
from streetlib.runs import RunId


def _scores(values, *, family="CNN (03-pretrained)"):
    """Tidy scores from {config: {output: [per-seed values for seeds 1, 2, 3]}}."""
    rows = [
        {"family": family, "config": config, "seed": seed, "output": output, "value": value}
        for config, outputs in values.items()
        for output, per_seed in outputs.items()
        for seed, value in zip((1, 2, 3), per_seed, strict=True)
    ]
    return pd.DataFrame(rows)


def test_best_config_ranks_by_city_then_region():
    scores = _scores(
        {
            "a": {"city": [0.5, 0.6, 0.7], "region": [0.9, 0.9, 0.9]},
            "b": {"city": [0.7, 0.6, 0.5], "region": [0.95, 0.95, 0.95]},  # same city mean: region decides
            "c": {"city": [0.4, 0.4, 0.4], "region": [1.0, 1.0, 1.0]},
        }
    )
    best, ranked = study.best_config(scores)
    assert best == "b" and list(ranked.index) == ["b", "a", "c"]
    assert ranked.loc["a", "city"] == pytest.approx(0.6)


def test_baseline_scores_separate_floors_from_deep_features(tmp_path):
    base = {"classifier": "svm-rbf", "augment_copies": 0, "search": False, "output": "city"}
    rows = [
        {**base, "backbone": "vgg16", "weights": "hed-bsds500", "layer": "block1_pool", "pooling": "avg"},
        {**base, "backbone": "pixels", "weights": "none", "layer": "none", "pooling": "none"},
        {
            **base,
            "backbone": "vgg16",
            "weights": "random",
            "layer": "block1_pool",
            "pooling": "avg",
            "classifier": "logreg",
        },
    ]
    table = pd.DataFrame([{**r, "seed": 42, "val_acc": 0.5 + i / 10, "test_acc": 0.4} for i, r in enumerate(rows)])
    path = tmp_path / "baselines.csv"
    table.to_csv(path, index=False)
    val = study.baseline_scores(path, subset="val")
    assert val["config"].tolist() == ["hed-bsds500 block1_pool avg features, svm-rbf", "pixels (no network), svm-rbf"]
    assert val["family"].tolist() == ["SVM on deep features (02-baselines)", "floor (02-baselines)"]
    assert val["value"].tolist() == [0.5, 0.6]  # validation accuracy, not test
    assert study.baseline_scores(path)["value"].tolist() == [0.4, 0.4]
    with pytest.raises(ValueError, match=r"Invalid `subset`. Expected 'val' or 'test'. Received: subset='train'"):
        study.baseline_scores(path, subset="train")


def test_summary_gives_mean_spread_and_seeds_per_configuration():
    rows = [
        {"run": RunId("e", config, seed).name, "config_name": config, "seed": seed, "checkpoint": "best",
         "subset": "test", "output": output, "metric": metric, "class": None, "value": value}
        for config, values in {"A": [0.50, 0.60, 0.55], "B": [0.60, 0.65, 0.70]}.items()
        for seed, value in zip((1, 2, 3), values, strict=True)
        for output, metric in (("region", "accuracy"), ("city", "accuracy"), ("city", "top3"))
    ]  # fmt: skip
    table = study.summary(pd.DataFrame(rows))
    assert table.loc["A", "city accuracy mean"] == pytest.approx(0.55)
    assert table.loc["A", "city accuracy std"] == pytest.approx(0.05) and table.loc["B", "seeds"] == 3
    assert table.loc["B", "city top3 mean"] == pytest.approx(0.65)
