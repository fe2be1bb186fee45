"""The statistics module: corrected resampled t, TOST, Holm, verdicts, power and exact proportions."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from streetlib.evaluation import stats


def test_compare_without_overlap_is_scipys_paired_t():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.02, 8), rng.normal(0.81, 0.02, 8)
    out = stats.compare(b - a, a="a", b="b", margin=0.03)
    reference = scipy_stats.ttest_rel(b, a)
    interval = reference.confidence_interval(0.95)
    assert out["p"] == pytest.approx(reference.pvalue, rel=1e-9)
    assert (out["low"], out["high"]) == pytest.approx((interval.low, interval.high), rel=1e-9)


def test_equivalence_is_two_one_sided_tests():
    d = np.array([0.004, -0.002, 0.006, 0.001, 0.003, -0.001])
    out = stats.compare(d, a="a", b="b", margin=0.01)
    lower = scipy_stats.ttest_1samp(d, -0.01, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(d, 0.01, alternative="less").pvalue
    assert out["p_equivalence"] == pytest.approx(max(lower, upper), rel=1e-9)


def test_overlap_widens_the_interval_by_the_nadeau_bengio_factor():
    d = np.array([0.010, 0.017, 0.007])
    plain = stats.compare(d, a="a", b="b", margin=0.02)
    corrected = stats.compare(d, a="a", b="b", margin=0.02, overlap=0.131)
    ratio = (corrected["high"] - corrected["low"]) / (plain["high"] - plain["low"])
    assert ratio == pytest.approx(np.sqrt((1 / 3 + 0.131) / (1 / 3)), rel=1e-9)
    assert corrected["p"] > plain["p"]
    # The numbers: three seeds of +0.010, +0.017, +0.007 resolve without the correction at 90% but not as a
    # verdict here, and the correction is about 1.18 at n = 3.
    assert ratio == pytest.approx(1.18, abs=0.005)


def test_type_one_error_of_the_corrected_test_with_overlapping_splits():
    # Differences correlated across seeds as overlapping splits make them: a shared component per simulated study
    # with variance rho * sigma^2, rho = overlap / (1 + overlap) (Nadeau & Bengio's model of the correlation).
    rng = np.random.default_rng(1)
    overlap, n, studies = 0.131, 8, 4000
    rho = overlap / (1 + overlap)
    shared = rng.normal(0, np.sqrt(rho), (studies, 1))
    own = rng.normal(0, np.sqrt(1 - rho), (studies, n))
    differences = shared + own
    plain = np.mean([stats.compare(d, a="a", b="b", margin=1)["p"] < 0.05 for d in differences])
    corrected = np.mean([stats.compare(d, a="a", b="b", margin=1, overlap=overlap)["p"] < 0.05 for d in differences])
    # 4,000 studies: a binomial standard error of 0.0034 at 0.05. The plain t rejects far too often (about 0.12);
    # the corrected one stays near its level.
    assert plain > 0.09
    assert corrected == pytest.approx(0.05, abs=0.015)


def test_degenerate_differences():
    same = stats.compare([0.0, 0.0, 0.0], a="a", b="b", margin=0.02)
    assert (same["p"], same["p_equivalence"], same["low"], same["high"]) == (1.0, 0.0, 0.0, 0.0)
    constant = stats.compare([0.05, 0.05], a="a", b="b", margin=0.02)
    assert (constant["p"], constant["p_equivalence"]) == (0.0, 1.0)
    one = stats.compare([0.1], a="a", b="b", margin=0.02)
    assert one["n"] == 1 and np.isnan(one["p"]) and np.isnan(one["low"])
    assert stats.family([one])["verdict"].iloc[0] == "inconclusive"
    with pytest.raises(ValueError, match="NaN"):
        stats.compare([0.1, np.nan], a="a", b="b", margin=0.02)
    with pytest.raises(ValueError, match="margin"):
        stats.compare([0.1, 0.2], a="a", b="b", margin=0)


def test_holm_matches_its_definition():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.005])
    adjusted = stats.holm(p)
    # Sorted 0.005, 0.01, 0.03, 0.04 of m = 4: times 4, 3, 2, 1, then running maximum.
    expected = [0.03, 0.06, np.nan, 0.06, 0.02]
    np.testing.assert_allclose(adjusted, expected, rtol=1e-12)
    assert np.all(stats.holm([0.5, 0.9, 0.8]) <= 1)


def test_family_words_each_verdict_from_adjusted_p_values():
    rows = [
        stats.compare([0.10, 0.12, 0.11, 0.09], a="random", b="imagenet", margin=0.02) | {"question": "q1"},
        stats.compare([0.001, -0.002, 0.0, 0.001, 0.002, -0.001], a="x", b="y", margin=0.02) | {"question": "q2"},
        stats.compare([0.05, -0.04, 0.02], a="svm", b="cnn", margin=0.02) | {"question": "q3"},
        stats.compare([-0.10, -0.12, -0.11, -0.09], a="p", b="q", margin=0.02) | {"question": "q4"},
    ]
    table = stats.family(rows)
    assert list(table["question"]) == ["q1", "q2", "q3", "q4"]
    assert list(table["verdict"]) == ["imagenet higher", "equivalent within ±0.02", "inconclusive", "p higher"]
    assert [stats.verdict_kind(v) for v in table["verdict"]] == ["higher", "equivalent", "inconclusive", "higher"]
    assert (table["p_holm"] >= table["p"]).all()


def test_holm_can_turn_a_lone_resolution_inconclusive():
    # p = 0.03 alone is "higher"; beside three questions with p = 0.5 Holm multiplies it by 4.
    d = np.array([0.031, 0.01, 0.05, 0.02, 0.04])
    alone = stats.compare(d, a="a", b="b", margin=0.001)
    assert 0.01 < alone["p"] < 0.05
    others = [stats.compare([0.1, -0.1, 0.05], a="c", b="d", margin=0.001) for _ in range(3)]
    assert stats.family([alone])["verdict"].iloc[0] == "b higher"
    assert stats.family([alone, *others])["verdict"].iloc[0] == "inconclusive"


def test_verdict_kind_rejects_other_words():
    with pytest.raises(ValueError, match="Not a verdict"):
        stats.verdict_kind("within seed noise")


def test_family_of_nothing_has_the_columns():
    assert {"verdict", "p_holm", "p_equivalence_holm"} <= set(stats.family([]).columns)


def test_detectable_difference_and_seeds_needed_agree():
    kwargs = {"overlap": 0.131, "tests": 8}
    sizes = [stats.detectable_difference(0.02, n, **kwargs) for n in range(2, 30)]
    assert all(later < earlier for earlier, later in zip(sizes, sizes[1:], strict=False))
    n = stats.seeds_needed(0.02, 0.05, **kwargs)
    assert stats.detectable_difference(0.02, n, **kwargs) <= 0.05 < stats.detectable_difference(0.02, n - 1, **kwargs)
    # Below about 2.8 * std * sqrt(overlap) more seeds cannot help: the splits' overlap sets a floor.
    assert stats.seeds_needed(0.02, 0.015, **kwargs) is None


def test_detectable_difference_has_its_power_by_simulation():
    rng = np.random.default_rng(2)
    n, std = 8, 1.0
    delta = stats.detectable_difference(std, n)
    hits = np.mean(
        [stats.compare(rng.normal(delta, std, n), a="a", b="b", margin=0.1)["p"] < 0.05 for _ in range(4000)]
    )
    # Sketch formula (t quantiles added) against simulation: within 0.03 of the 0.8 asked for.
    assert hits == pytest.approx(0.8, abs=0.03)


def test_proportion_interval_is_clopper_pearson():
    rate, low, high = stats.proportion_interval(12, 12)
    assert (rate, high) == (1.0, 1.0)
    assert low == pytest.approx(scipy_stats.beta.ppf(0.025, 12, 1), rel=1e-9)
    _, low, high = stats.proportion_interval(7, 20)
    assert low == pytest.approx(scipy_stats.beta.ppf(0.025, 7, 14), rel=1e-9)
    assert high == pytest.approx(scipy_stats.beta.ppf(0.975, 8, 13), rel=1e-9)
    assert all(np.isnan(stats.proportion_interval(0, 0)))
    with pytest.raises(ValueError, match="hits"):
        stats.proportion_interval(5, 4)


def test_overlap_of_a_split():
    assert stats.overlap(2295, 300) == pytest.approx(300 / 2295)
    with pytest.raises(ValueError, match="n_train"):
        stats.overlap(0, 10)


def test_family_keeps_label_columns_first():
    table = stats.family([stats.compare([0.1, 0.2], a="a", b="b", margin=0.05) | {"output": "city"}])
    assert list(table.columns[:2]) == ["output", "a"]
    assert isinstance(table, pd.DataFrame)
