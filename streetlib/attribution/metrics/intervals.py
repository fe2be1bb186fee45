"""Intervals over images: the percentile bootstrap interval of a mean of per-image scores (weighted or not), used
by the concept table for its pooled and per-image shares: a description of one set of images. Comparisons between
methods or models use `streetlib.evaluation.stats` instead (paired differences with the one rule of the code base).
"""

import numpy as np


def bootstrap_interval(values, *, weights=None, confidence=0.95, resamples=1000, seed=0):
    """The percentile bootstrap interval of the mean of per-image scores.

    Images are resampled with replacement ``resamples`` times; the interval is the central ``confidence`` share of
    the resampled means. NaNs (images a metric does not score, e.g. without a cue) are dropped first, with their
    weights. With ``weights`` the mean is the weighted one, ``sum(w * v) / sum(w)``, in the sample and in every
    resample (a resample whose weights are all zero is left out).

    Args:
        values: float `(n,)` (any shape is flattened), one score per image.
        weights: None or float `(n,)`, finite and non-negative, with a positive sum over the scored images: how
            much each image counts (e.g. a map's mass, which makes the mean the share of the pooled mass).
        confidence: float in (0, 1). Default 0.95.
        resamples: int >= 1. Default 1000.
        seed: int. Default 0.

    Returns:
        (mean, low, high), Python floats: the (weighted) mean of the non-NaN values and the interval's bounds.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if np.isinf(values).any():
        raise ValueError("Invalid `values`: expected finite scores (NaN for an image not scored). Received an inf.")
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if weights.shape != values.shape or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(
            f"Invalid `weights`: expected {values.size} finite, non-negative numbers, one per score. "
            f"Received shape {weights.shape}, min {weights.min() if weights.size else None}."
        )
    kept = ~np.isnan(values)
    scored, weights = values[kept], weights[kept]
    if not len(scored):
        raise ValueError(f"Invalid `values`: expected at least one score that is not NaN. Received {values.size}.")
    if not weights.sum() > 0:
        raise ValueError("Invalid `weights`: their sum over the scored images is 0, so no mean is defined.")
    if not isinstance(confidence, (float, int)) or isinstance(confidence, bool) or not 0 < confidence < 1:
        raise ValueError(f"Invalid `confidence`: expected a float in (0, 1). Received: confidence={confidence!r}")
    if not isinstance(resamples, (int, np.integer)) or isinstance(resamples, bool) or resamples < 1:
        raise ValueError(f"Invalid `resamples`: expected an int >= 1. Received: resamples={resamples!r}")
    rng = np.random.default_rng(seed)
    # One draw for all resamples: row r holds the image indices of resample r.
    draws = rng.integers(0, len(scored), size=(resamples, len(scored)))
    totals = weights[draws].sum(axis=1)
    if not (totals > 0).any():
        raise ValueError(
            f"Invalid `weights`: none of the {resamples} resamples drew an image of positive weight, so the interval "
            "is undefined. Give more resamples or weight more images."
        )
    means = (scored * weights)[draws].sum(axis=1)[totals > 0] / totals[totals > 0]
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(np.sum(scored * weights) / weights.sum()), float(low), float(high)
