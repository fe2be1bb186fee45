"""The study's choices and comparisons: chosen on validation, paired over seeds, verdicts computed from intervals."""

import math

import pandas as pd
import pytest

from streetlib.evaluation import evaluate
from streetlib.experiments import study

# Student's t quantile for a two-sided 95% interval with 2 degrees of freedom (3 seeds), from a printed table.
T_975_DF2 = 4.302653


def test_paired_interval_is_the_student_t_interval():
    out = evaluate.paired_interval([0.1, 0.2, 0.3])
    half = T_975_DF2 * 0.1 / math.sqrt(3)  # sample sd of (0.1, 0.2, 0.3) is 0.1
    assert out["n"] == 3 and out["mean"] == pytest.approx(0.2)
    assert (out["low"], out["high"]) == (pytest.approx(0.2 - half, abs=1e-6), pytest.approx(0.2 + half, abs=1e-6))
    assert out["verdict"] == "within seed noise"  # the interval contains 0
    assert evaluate.paired_interval([0.10, 0.11, 0.12])["verdict"] == "b higher"
    assert evaluate.paired_interval([-0.10, -0.11, -0.12])["verdict"] == "a higher"
    assert evaluate.paired_interval([0.3])["verdict"] == "too few seeds"
    with pytest.raises(ValueError, match=r"Invalid `confidence`.*Received: confidence=95"):
        evaluate.paired_interval([0.1, 0.2], confidence=95)


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


def test_paired_comparisons_pair_by_seed_and_compute_verdicts():
    scores = _scores(
        {
            "random-transfer": {"city": [0.50, 0.60, 0.70], "region": [0.80, 0.90, 0.85]},
            "hed-transfer": {"city": [0.60, 0.71, 0.79], "region": [0.70, 0.95, 0.86]},
        }
    )
    # Shuffled rows must pair by seed, not by position.
    table = study.paired_comparisons(scores.sample(frac=1, random_state=0), [("q", "random-transfer", "hed-transfer")])
    city = table[table["output"] == "city"].iloc[0]
    assert city["n"] == 3 and city["difference"] == pytest.approx(0.10)
    assert city["verdict"] == "resolved: hed-transfer higher"  # differences 0.10, 0.11, 0.09: consistent
    region = table[table["output"] == "region"].iloc[0]
    assert region["verdict"] == "within seed noise"  # differences -0.10, +0.05, +0.01
    assert region["low"] < 0 < region["high"]
    with pytest.raises(ValueError, match=r"No scores for configuration 'places-transfer'"):
        study.paired_comparisons(scores, [("q", "random-transfer", "places-transfer")])


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
