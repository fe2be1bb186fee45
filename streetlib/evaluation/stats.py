"""Paired comparisons and their three verdicts: the one statistical rule behind every "is B better than A?" in
streetlib (notebook 02's baselines, notebook 05's attribution methods and concepts, notebook 06's questions).

A comparison is a set of paired differences ``b - a``, one per unit that both arms share: a split seed (both arms
trained and tested on the same split) or an image. `compare` turns one set into a mean, an interval and two
p-values; `family` adjusts the p-values of all the comparisons one notebook asks together and words each verdict.

- **Overlapping splits.** Splits resampled with different seeds share most of their training images, so the
  differences of two seeds are correlated and the plain paired t interval is too narrow. `compare` uses the
  corrected resampled t of Nadeau & Bengio (2003, "Inference for the generalization error"): the variance of the
  mean difference is ``(1/n + n_test/n_train) * s^2`` rather than ``s^2 / n`` (``overlap = n_test / n_train``, see
  `overlap`). For units that do not overlap (images, or seeds that each draw their own replicate of a synthetic
  dataset), ``overlap=0`` gives the ordinary paired t.
- **Many questions.** A notebook asks several questions at once; `family` applies Holm's step-down correction to
  the p-values of its questions, so the chance of any false "higher" stays below ``alpha``.
- **"No difference" has to be shown.** An interval containing 0 does not show that two arms are alike. The
  equivalence test (TOST, two one-sided t-tests with the same corrected standard error) asks whether the difference
  lies within ``±margin``, a margin stated before the test split is read.

Verdicts, exactly three (`VERDICTS`), from the Holm-adjusted p-values at level ``alpha``:

- ``"<b> higher"`` / ``"<a> higher"`` (the word "higher" after a name): the difference is not 0, and not shown to be
  within the margin;
- ``"equivalent within ±<margin>"``: the difference is shown to lie within the margin (also when it is shown to be
  non-zero: a difference smaller than the margin is, by the margin's definition, too small to matter);
- ``"inconclusive"``: neither, or fewer than two units.

`detectable_difference` and `seeds_needed` are the design's power: the smallest difference a number of seeds can
resolve from the seed spread measured, and the number of seeds a target difference needs. `proportion_interval` is
the exact (Clopper-Pearson) interval of a hit rate, such as the pointing game's.
"""

import numbers

import numpy as np
import pandas as pd
from scipy import stats

from streetlib.constraints import Interval, validate

VERDICTS = ("higher", "equivalent", "inconclusive")

_FRACTION = Interval(numbers.Real, 0, 1, closed="neither")
_NON_NEGATIVE = Interval(numbers.Real, 0, None, closed="left")


def overlap(n_train, n_test):
    """The correction term ``n_test / n_train`` of the corrected resampled t, for splits of ``n_train`` training
    and ``n_test`` test images (counts of one split; resampled splits all have the same sizes).

    Raises:
        ValueError: a count below 1.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"Invalid split sizes: n_train={n_train!r}, n_test={n_test!r}. Expected counts >= 1.")
    return n_test / n_train


def compare(differences, *, a, b, margin, overlap=0.0, alpha=0.05):
    """One paired comparison, before any correction for the other questions asked with it.

    Args:
        differences: 1-D array-like of paired differences ``b - a``, one per shared unit (split seed or image).
            NaN entries are an error: a unit only one arm has cannot be paired.
        a, b: str, the names of the two arms (they word the verdict).
        margin: float > 0, the equivalence margin in the differences' unit (e.g. 0.03 of accuracy), fixed before
            the test split is read.
        overlap: float >= 0, ``n_test / n_train`` of the resampled splits (`overlap`), or 0 for units that share
            nothing (images).
        alpha: float in (0, 1), the test level; the interval has coverage ``1 - alpha``. Default 0.05.

    Returns:
        dict: ``a``, ``b``, ``n``, ``difference`` (mean of ``b - a``), ``std`` (ddof=1), ``low`` and ``high`` (the
        corrected ``1 - alpha`` interval, unadjusted for other questions), ``p`` (two-sided, difference = 0),
        ``margin``, ``p_equivalence`` (TOST: the larger of the two one-sided p-values) and ``overlap``. With fewer
        than 2 units the spread, interval and p-values are NaN.

    With zero spread (every unit gives the same difference) the standard error is 0: the difference is then exact,
    ``p`` is 0 unless it is 0, and equivalence holds exactly when it lies strictly inside the margin.
    """
    validate(
        {"margin": margin, "overlap": overlap, "alpha": alpha},
        {
            "margin": [Interval(numbers.Real, 0, None, closed="neither")],
            "overlap": [_NON_NEGATIVE],
            "alpha": [_FRACTION],
        },
    )
    d = np.asarray(differences, dtype=float).ravel()
    if np.isnan(d).any():
        raise ValueError(
            f"Invalid `differences` for {b!r} - {a!r}: {int(np.isnan(d).sum())} NaN: pair only units both arms have."
        )
    n = len(d)
    out = {
        "a": a,
        "b": b,
        "n": n,
        "difference": float(d.mean()) if n else np.nan,
        "margin": float(margin),
        "overlap": float(overlap),
    }
    if n < 2:
        return out | {"std": np.nan, "low": np.nan, "high": np.nan, "p": np.nan, "p_equivalence": np.nan}
    mean, std = out["difference"], float(d.std(ddof=1))
    se = std * np.sqrt(1 / n + overlap)
    df = n - 1
    if se == 0:
        p = 0.0 if mean != 0 else 1.0
        p_equivalence = 0.0 if abs(mean) < margin else 1.0
        low = high = mean
    else:
        p = float(2 * stats.t.sf(abs(mean) / se, df))
        # H0: difference <= -margin, and H0: difference >= +margin; both rejected means within the margin.
        p_equivalence = float(max(stats.t.sf((mean + margin) / se, df), stats.t.cdf((mean - margin) / se, df)))
        half = float(stats.t.ppf(1 - alpha / 2, df) * se)
        low, high = mean - half, mean + half
    return out | {"std": std, "low": low, "high": high, "p": p, "p_equivalence": p_equivalence}


def holm(p_values):
    """Holm's step-down adjustment of a family of p-values (Holm 1979).

    Args:
        p_values: 1-D array-like; NaN entries (questions that could not be asked) are left NaN and not counted in
            the family.

    Returns:
        numpy array of adjusted p-values, in the input's order, each in [0, 1].
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    asked = np.flatnonzero(~np.isnan(p))
    order = asked[np.argsort(p[asked], kind="stable")]
    m = len(order)
    # The k-th smallest p-value is multiplied by the number of hypotheses not yet rejected, then made monotone.
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def verdict(*, a, b, difference, p, p_equivalence, margin, alpha=0.05):
    """The verdict of one comparison from its (already adjusted) p-values: ``"<winner> higher"``, ``"equivalent
    within ±<margin>"`` or ``"inconclusive"`` (see the module docstring)."""
    if not np.isnan(p_equivalence) and p_equivalence < alpha:
        return f"equivalent within ±{margin:g}"
    if not np.isnan(p) and p < alpha:
        return f"{b if difference > 0 else a} higher"
    return "inconclusive"


def family(comparisons, *, alpha=0.05):
    """The comparisons one notebook asks together, Holm-adjusted, each with its verdict.

    Args:
        comparisons: list of dicts from `compare`, each possibly with extra keys that label it (question, output,
            metric...); the labels are kept as columns.
        alpha: float in (0, 1), the family-wise level. Default 0.05.

    Returns:
        pandas DataFrame, one row per comparison: its labels, then ``a``, ``b``, ``n``, ``difference``, ``std``,
        ``low``, ``high``, ``p``, ``p_holm``, ``margin``, ``p_equivalence``, ``p_equivalence_holm``, ``overlap``,
        ``verdict``. An empty list gives an empty frame with those columns.
    """
    validate({"alpha": alpha}, {"alpha": [_FRACTION]})
    columns = ["a", "b", "n", "difference", "std", "low", "high", "p", "p_holm", "margin", "p_equivalence",
               "p_equivalence_holm", "overlap", "verdict"]  # fmt: skip
    frame = pd.DataFrame(comparisons)
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame["p_holm"] = holm(frame["p"])
    frame["p_equivalence_holm"] = holm(frame["p_equivalence"])
    frame["verdict"] = [
        verdict(
            a=r.a,
            b=r.b,
            difference=r.difference,
            p=r.p_holm,
            p_equivalence=r.p_equivalence_holm,
            margin=r.margin,
            alpha=alpha,
        )  # fmt: skip
        for r in frame.itertuples(index=False)
    ]
    labels = [c for c in frame.columns if c not in columns]
    return frame[labels + columns]


def verdict_kind(text):
    """Which of `VERDICTS` a verdict string is: 'higher', 'equivalent' or 'inconclusive'."""
    if text == "inconclusive":
        return "inconclusive"
    if text.startswith("equivalent within"):
        return "equivalent"
    if text.endswith(" higher"):
        return "higher"
    raise ValueError(f"Not a verdict of streetlib.evaluation.stats: {text!r}. Expected one of {VERDICTS}.")


def detectable_difference(std, n, *, overlap=0.0, alpha=0.05, power=0.8, tests=1):
    """The smallest true difference that ``n`` paired units resolve with probability ``power``: the design's
    resolution, from the spread of the differences measured.

    Uses the corrected standard error ``std * sqrt(1/n + overlap)`` and the Bonferroni level ``alpha / tests`` (the
    worst case of Holm's correction over ``tests`` questions): ``(t_{1 - alpha/(2 tests)} + t_{power}) * se`` with
    ``n - 1`` degrees of freedom.

    Args:
        std: float >= 0, the standard deviation (ddof=1) of the per-unit differences.
        n: int >= 2, the number of units (split seeds).
        overlap, alpha: as in `compare`.
        power: float in (0, 1). Default 0.8.
        tests: int >= 1, the number of questions in the family. Default 1.

    Returns:
        float, in the differences' unit.
    """
    validate(
        {"std": std, "n": n, "power": power, "tests": tests, "overlap": overlap, "alpha": alpha},
        {
            "std": [_NON_NEGATIVE],
            "n": [Interval(numbers.Integral, 2, None, closed="left")],
            "power": [_FRACTION],
            "tests": [Interval(numbers.Integral, 1, None, closed="left")],
            "overlap": [_NON_NEGATIVE],
            "alpha": [_FRACTION],
        },
    )
    df = n - 1
    return float((stats.t.ppf(1 - alpha / (2 * tests), df) + stats.t.ppf(power, df)) * std * np.sqrt(1 / n + overlap))


def seeds_needed(std, difference, *, overlap=0.0, alpha=0.05, power=0.8, tests=1, most=200):
    """The fewest split seeds whose `detectable_difference` is at most ``difference``.

    With overlapping splits the standard error never falls below ``std * sqrt(overlap)`` however many seeds run, so
    a difference under about ``2.8 * std * sqrt(overlap)`` cannot be resolved by more seeds; that gives None.

    Returns:
        int in [2, most], or None when no number up to ``most`` suffices.
    """
    for n in range(2, most + 1):
        if detectable_difference(std, n, overlap=overlap, alpha=alpha, power=power, tests=tests) <= difference:
            return n
    return None


def proportion_interval(hits, n, *, confidence=0.95):
    """Exact (Clopper-Pearson) interval of a proportion ``hits / n``, e.g. the pointing game's hit rate.

    Unlike a bootstrap, it does not collapse to a point at 0 or n hits (12 of 12 gives [0.74, 1]).

    Returns:
        (rate, low, high) floats; NaN for ``n == 0``.
    """
    if n == 0:
        return np.nan, np.nan, np.nan
    if not 0 <= hits <= n:
        raise ValueError(f"Invalid proportion: hits={hits!r} of n={n!r}. Expected 0 <= hits <= n.")
    ci = stats.binomtest(int(hits), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return hits / n, float(ci.low), float(ci.high)
