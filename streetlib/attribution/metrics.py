"""Is the map right? Measurements of attribution maps, and what they show over a whole dataset.

- Localisation against the synthetic data's cue masks (the ground truth): the pointing game (Zhang et al. 2018),
  the energy-based pointing game (Wang et al. 2020) alias relevance mass accuracy, relevance rank accuracy (Arras et
  al. 2022) and the mask AUC (the map as a detector of cue pixels), with random maps as the floor.
- Faithfulness: deletion and insertion curves (Petsiuk et al. 2018) and their areas.
- Sanity: the cascading model-parameter randomisation check (Adebayo et al. 2018), as rank correlations between the
  maps of the trained model and of models whose layers are randomised from the top down; the data randomisation
  test (Adebayo et al. 2018), whose model (`data_randomized_copy`) is trained on permuted labels; the random-logit
  test (Sixt et al. 2020), as rank correlations between the maps of the target and of a random other class.
- Over images: every metric is per image (`streetlib.attribution.leaderboard` compares them with
  `streetlib.evaluation.stats`); `bootstrap_interval` gives a percentile interval of a mean.
- Beyond one image: per-class mean CAMs and most-attributed patches, and the four-quadrant trick.

Maps are float `(n, H, W)`, non-negative, at the resolution of the images and masks they are compared with (see
`streetlib.attribution.registry.attribute`).
"""

import dataclasses
import json
import re
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage, stats
from scipy.special import softmax

from streetlib.attribution.explainer import (
    all_layers,
    clone_with_weights,
    explainer,
    find_layer_path,
    logits_tensor,
    model_input_size,
    model_inputs,
)
from streetlib.attribution.registry import METHODS, ORIGINAL, attribute, explain
from streetlib.classes import OUTPUTS
from streetlib.data.loaders import fit_image
from streetlib.runs import RunId
from streetlib.training import train
from streetlib.training.config import Execution, RunConfig


def _check_maps(maps, masks=None, *, name="maps"):
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"`{name}` must have shape (n, H, W). Received shape {maps.shape}.")
    if not np.isfinite(maps).all() or maps.min() < 0:
        raise ValueError(f"`{name}` must be finite and non-negative (take abs or a ReLU first). Min: {maps.min()}.")
    if masks is None:
        return maps
    masks = np.asarray(masks) > 0
    if masks.shape != maps.shape:
        raise ValueError(f"`masks` must match `{name}`: expected shape {maps.shape}. Received shape {masks.shape}.")
    return maps, masks


# ---------------------------------------------------------------------------------------------------------------
# Localisation


# Zhang et al. (2018)'s pointing game counts a hit within 15 px of the object at 224 px: as a fraction of the side.
ZHANG_TOLERANCE = 15 / 224


def scaled_tolerance(side, *, fraction=ZHANG_TOLERANCE):
    """The pointing game's tolerance in pixels for images of ``side`` pixels: ``round(fraction * side)``, Zhang et
    al.'s 15 px at 224 px scaled to the image (4 px at 64, 2 px at 32).

    Args:
        side: int >= 1, the image's side in pixels (the shorter one for a rectangle).
        fraction: float >= 0, the tolerance as a fraction of the side. Default `ZHANG_TOLERANCE` (15 / 224).

    Returns:
        int >= 0.
    """
    if not isinstance(side, (int, np.integer)) or isinstance(side, bool) or side < 1:
        raise ValueError(f"Invalid `side`: expected an int >= 1 (pixels). Received: side={side!r}")
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction < 1:
        raise ValueError(f"Invalid `fraction`: expected a float in [0, 1) of the side. Received: fraction={fraction!r}")
    return round(fraction * side)


def dilate_masks(masks, tolerance):
    """Masks widened by ``tolerance`` pixels (a disk of that radius): where the pointing game counts a hit.

    Args:
        masks: `(n, H, W)`, non-zero on the cue pixels.
        tolerance: int >= 0, pixels.

    Returns:
        bool `(n, H, W)`.
    """
    masks = np.asarray(masks) > 0
    if not isinstance(tolerance, (int, np.integer)) or isinstance(tolerance, bool) or tolerance < 0:
        raise ValueError(f"Invalid `tolerance`: expected an int >= 0 (pixels). Received: tolerance={tolerance!r}")
    if not tolerance:
        return masks
    yy, xx = np.mgrid[-tolerance : tolerance + 1, -tolerance : tolerance + 1]
    disk = (yy**2 + xx**2) <= tolerance**2
    return np.stack([ndimage.binary_dilation(m, structure=disk) for m in masks])


def pointing_game(maps, masks, *, tolerance=0):
    """Does the map's maximum fall on the cue?

    A map scores the fraction of its maximal pixels that lie in the mask widened by ``tolerance`` (`dilate_masks`):
    1 or 0 when the maximum is unique (the usual pointing game, as Quantus's ``PointingGame``), and the chance level
    for a constant map, which points nowhere.

    Args:
        maps: float `(n, H, W)`, non-negative.
        masks: `(n, H, W)`, non-zero on the cue pixels.
        tolerance: int >= 0, pixels by which the mask is widened (a disk): Zhang et al.'s 15 px at 224 px is
            `scaled_tolerance` of the image's side. Default 0.

    Returns:
        float32 `(n,)` in [0, 1]; NaN for an image whose mask is empty.
    """
    maps, masks = _check_maps(maps, masks)
    masks = dilate_masks(masks, tolerance)
    top = maps == maps.max(axis=(1, 2), keepdims=True)
    scores = (top & masks).sum(axis=(1, 2)) / top.sum(axis=(1, 2))
    return np.where(masks.any(axis=(1, 2)), scores, np.nan).astype(np.float32)


def _mass_inside(maps, masks):
    """``sum(map * mask) / sum(map)`` per image, the one computation behind `energy_pointing_game` and
    `relevance_mass_accuracy`."""
    maps, masks = _check_maps(maps, masks)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    area = masks.mean(axis=(1, 2))
    scores = np.divide(inside, total, out=area.astype(np.float64), where=total > 0)
    return np.where(masks.any(axis=(1, 2)), scores, np.nan).astype(np.float32)


def energy_pointing_game(maps, masks):
    """The share of a map's mass that lies on the cue: ``sum(map * mask) / sum(map)``.

    Wang et al. sum over a bounding box; here the box is the cue mask, which makes this the same quantity as
    `relevance_mass_accuracy` (Quantus's ``RelevanceMassAccuracy``): both call one computation. An all-zero map is
    counted as uniform (its score is the mask's area fraction, the chance level).

    Args:
        maps: float `(n, H, W)`, non-negative.
        masks: `(n, H, W)`, non-zero on the cue pixels.

    Returns:
        float32 `(n,)` in [0, 1]; NaN for an image whose mask is empty.
    """
    return _mass_inside(maps, masks)


def relevance_mass_accuracy(maps, masks):
    """Relevance mass accuracy (Arras et al. 2022; Quantus's ``RelevanceMassAccuracy``): the share of a map's mass
    inside the mask, ``sum(map * mask) / sum(map)``.

    The same quantity as `energy_pointing_game` with the mask as the box: both call one computation. An all-zero
    map is counted as uniform and scores the mask's area fraction, the chance level (Quantus gives NaN, 0 / 0).

    Args:
        maps: float `(n, H, W)`, non-negative.
        masks: `(n, H, W)`, non-zero on the cue pixels.

    Returns:
        float32 `(n,)` in [0, 1]; NaN for an image whose mask is empty.
    """
    return _mass_inside(maps, masks)


def relevance_rank_accuracy(maps, masks):
    """Relevance rank accuracy (Arras et al. 2022; Quantus's ``RelevanceRankAccuracy``): of the K highest-valued
    pixels, K being the mask's pixel count, the fraction inside the mask.

    Ties at the K-th value are shared: every pixel above it is taken, and the slots left are spread evenly over the
    pixels equal to it, so each tied pixel counts ``slots / tied``. This is the expected score when ties are broken
    uniformly at random, computed exactly, so it does not depend on pixel order (Quantus sorts with an unstable
    ``argsort``, which picks tied pixels by position). A constant map scores the mask's area fraction, K / (H * W),
    the chance level.

    Args:
        maps: float `(n, H, W)`, non-negative.
        masks: `(n, H, W)`, non-zero on the cue pixels.

    Returns:
        float32 `(n,)` in [0, 1]; NaN for an image whose mask is empty.
    """
    maps, masks = _check_maps(maps, masks)
    n = len(maps)
    flat, inside = maps.reshape(n, -1), masks.reshape(n, -1)
    k = inside.sum(axis=1)
    # The K-th highest value of each map (any value for an empty mask: its score is NaN anyway).
    kth = -np.sort(-flat, axis=1)[np.arange(n), np.maximum(k, 1) - 1][:, None]
    above, tied = flat > kth, flat == kth
    slots = k - above.sum(axis=1)
    hits = (above & inside).sum(axis=1) + slots * (tied & inside).sum(axis=1) / tied.sum(axis=1)
    return np.where(k > 0, hits / np.maximum(k, 1), np.nan).astype(np.float32)


def _average_ranks(x):
    """Ranks 1..m along the last axis of a 2-D array, ties given their average rank (as ``scipy.stats.rankdata``,
    which is several times slower here because it sorts stably)."""
    n, m = x.shape
    order = np.argsort(x, axis=1)
    ordered = np.take_along_axis(x, order, axis=1)
    new = np.ones((n, m), bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    position = np.broadcast_to(np.arange(m), (n, m))
    # First and last position of each tie group, carried across the group.
    first = np.maximum.accumulate(np.where(new, position, 0), axis=1)
    last_new = np.ones((n, m), bool)
    last_new[:, :-1] = new[:, 1:]
    last = np.minimum.accumulate(np.where(last_new, position, m)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty((n, m), np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=1)
    return ranks


def mask_auc(maps, masks):
    """The area under the ROC curve of each map's values as a detector of its mask's pixels.

    The probability that a random cue pixel has a higher value than a random other pixel, ties counting half,
    computed from ranks (the Mann-Whitney U statistic over P cue and N other pixels:
    ``(sum of the cue pixels' ranks - P (P + 1) / 2) / (P N)``). It uses the whole map, not only its peak or its top
    K pixels, and does not depend on the map's scale. 0.5 is chance, and what a constant map scores.

    Args:
        maps: float `(n, H, W)`, non-negative.
        masks: `(n, H, W)`, non-zero on the cue pixels.

    Returns:
        float32 `(n,)` in [0, 1]; NaN for an image whose mask is empty or covers the whole image (no negatives).
    """
    maps, masks = _check_maps(maps, masks)
    n = len(maps)
    inside = masks.reshape(n, -1)
    positives = inside.sum(axis=1).astype(np.float64)
    negatives = inside.shape[1] - positives
    ranks = _average_ranks(maps.reshape(n, -1))
    u = (ranks * inside).sum(axis=1) - positives * (positives + 1) / 2
    defined = (positives > 0) & (negatives > 0)
    return np.where(defined, u / np.where(defined, positives * negatives, 1), np.nan).astype(np.float32)


def random_maps(shape, *, seed=0):
    """The floor: independent uniform noise, float32 of ``shape`` in [0, 1); ``seed`` an int or a tuple of ints
    (as `numpy.random.default_rng` takes it)."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def localization_table(maps, masks, *, tolerance=0, seed=0):
    """Pointing game and energy pointing game per method, with random maps as the floor.

    Args:
        maps: dict method name -> float `(n, H, W)`.
        masks: `(n, H, W)` cue masks.
        tolerance: int, see `pointing_game`.
        seed: int, for the random maps.

    Returns:
        `pandas.DataFrame`, one row per method and a last row 'random': columns ``method``, ``pointing_game``
        and ``energy_pointing_game`` (means over images with a cue), ``chance`` (mean mask area fraction, what a
        map that knows nothing scores on average on the energy pointing game), ``pointing_chance`` (the same of the
        masks widened by ``tolerance``: the pointing game's) and ``images``.
    """
    if not maps:
        raise ValueError("`maps` is empty: pass a dict method name -> maps.")
    masks = np.asarray(masks)
    shape = next(iter(maps.values())).shape
    rows = []
    for method, m in {**maps, "random": random_maps(shape, seed=seed)}.items():
        point = pointing_game(m, masks, tolerance=tolerance)
        energy = energy_pointing_game(m, masks)
        has_cue = ~np.isnan(point)
        rows.append(
            {
                "method": method,
                "pointing_game": float(np.mean(point[has_cue])),
                "energy_pointing_game": float(np.mean(energy[has_cue])),
                "chance": float((masks[has_cue] > 0).mean()),
                "pointing_chance": float(dilate_masks(masks[has_cue], tolerance).mean()),
                "images": int(has_cue.sum()),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# Intervals over images


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


# ---------------------------------------------------------------------------------------------------------------
# Deletion and insertion


def _class_probability(images, model, *, output, target, normalization, batch_size):
    """Softmax probability of ``target`` for uint8-range float images, in batches: float32 `(n,)`."""
    ex = explainer(model)
    out = []
    for start in range(0, len(images), batch_size):
        x = model_inputs(images[start : start + batch_size], normalization=normalization)
        p = softmax(ex.logits(x, output=output), axis=1)
        out.append(p[np.arange(len(p)), target[start : start + batch_size]])
    return np.concatenate(out).astype(np.float32)


def pixel_ranks(map_, rng):
    """Each pixel's rank by decreasing value of ``map_`` (float `(H, W)`), ties in random order drawn from ``rng``:
    int64 `(H * W,)`, 0 for the most attributed pixel. Deletion tests remove pixels in this order."""
    values = np.ravel(map_)
    # lexsort: last key first, so pixels go by decreasing map value, ties in random order.
    order = np.lexsort((rng.random(values.size), -values))
    rank = np.empty(values.size, np.int64)
    rank[order] = np.arange(values.size)
    return rank


def perturbation_curves(images, maps, model, *, output, target, normalization, steps=16, batch_size=64, seed=0):
    """Deletion and insertion curves: remove (add) pixels in order of attribution and watch the class probability.

    Deletion replaces pixels by the image's mean colour (so the score drops for lost information, not for a change
    of overall brightness); insertion starts from a strongly blurred copy and puts the original pixels back. A
    faithful map gives a low deletion area and a high insertion area. Ties in a map are broken at random.

    Args:
        images: uint8 `(n, H, W, 3)` RGB, at the model's input size.
        maps: float `(n, H, W)`, non-negative.
        model: the `keras.Model`.
        output: str, the output whose probability is watched ('region' or 'city').
        target: int `(n,)`, the class of each image whose probability is watched.
        normalization: the model's normalisation (see `streetlib.data.pipeline.NORMALIZATIONS`).
        steps: int >= 1, the curve has ``steps + 1`` points from 0 to all pixels. Default 16.
        batch_size: int, images per model call. Default 64.
        seed: int, for breaking ties.

    Returns:
        dict with ``fractions`` float32 `(steps + 1,)` in [0, 1], ``deletion`` and ``insertion`` float32
        `(n, steps + 1)` probabilities, and ``deletion_auc`` and ``insertion_auc`` float32 `(n,)` in [0, 1].
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`images` must be uint8 of shape (n, H, W, 3). Received {images.dtype} {images.shape}.")
    maps = _check_maps(maps)
    if maps.shape != images.shape[:3]:
        raise ValueError(f"`maps` must have shape {images.shape[:3]} to match `images`. Received {maps.shape}.")
    target = np.asarray(target, dtype=np.int64)
    if target.shape != (len(images),):
        raise ValueError(f"`target` must have shape ({len(images)},). Received shape {target.shape}.")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"Invalid `steps`: expected an int >= 1. Received: steps={steps!r}")
    n, H, W = maps.shape
    fractions = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
    counts = np.rint(fractions * H * W).astype(np.int64)
    rng = np.random.default_rng(seed)
    sigma = max(H, W) / 32
    curves = {"deletion": np.zeros((n, steps + 1), np.float32), "insertion": np.zeros((n, steps + 1), np.float32)}
    # Several images' curves share one model call (a call per image and curve costs more than its compute at small
    # sizes); ``group`` images at a time keep the perturbed copies in memory to about a batch.
    group = max(1, batch_size // (steps + 1))
    for start in range(0, n, group):
        members = range(start, min(start + group, n))
        copies = {"deletion": [], "insertion": []}
        for i in members:
            image = images[i].astype(np.float32)
            chosen = (pixel_ranks(maps[i], rng)[None, :] < counts[:, None]).reshape(steps + 1, H, W, 1)
            grey = image.mean(axis=(0, 1), keepdims=True)
            blurred = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
            copies["deletion"].append(np.where(chosen, grey, image))
            copies["insertion"].append(np.where(chosen, image, blurred))
        for kind, batch in copies.items():
            probs = _class_probability(
                np.concatenate(batch),
                model,
                output=output,
                target=np.repeat(target[members.start : members.stop], steps + 1),
                normalization=normalization,
                batch_size=batch_size,
            )
            curves[kind][members.start : members.stop] = probs.reshape(len(members), steps + 1)
    return {
        "fractions": fractions,
        **curves,
        "deletion_auc": np.trapezoid(curves["deletion"], fractions, axis=1).astype(np.float32),
        "insertion_auc": np.trapezoid(curves["insertion"], fractions, axis=1).astype(np.float32),
    }


# ---------------------------------------------------------------------------------------------------------------
# Model-parameter randomisation


def rank_correlation(a, b):
    """Spearman rank correlation of each pair of maps (ties get average ranks).

    Args:
        a, b: float `(n, ...)`, the same shape.

    Returns:
        float32 `(n,)` in [-1, 1]; 0 where either map is constant (it ranks nothing).
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must have the same shape. Received {a.shape} and {b.shape}.")
    ra, rb = stats.rankdata(a, axis=1), stats.rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    return np.divide((ra * rb).sum(axis=1), denom, out=np.zeros(len(a)), where=denom > 0).astype(np.float32)


def random_logit_targets(logits, target, *, seed=0):
    """Classes for the random-logit test (Sixt et al. 2020; Quantus's ``RandomLogit``): for each image, a class drawn
    uniformly among the classes other than its ``target``.

    The test is ``rank_correlation(maps for target, maps for random_logit_targets(...))``: a map that explains the
    decision should differ for another class, so low similarity is the pass; a map that only shows the image's
    edges is the same for every class and fails.

    Args:
        logits: float `(n, C)`, the explained output's logits (they give n and C), C >= 2.
        target: int `(n,)`, the explained class of each image, in [0, C).
        seed: int. Default 0.

    Returns:
        int64 `(n,)`, each different from ``target`` and in [0, C).
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"`logits` must have shape (n, C) with C >= 2. Received shape {logits.shape}.")
    n, classes = logits.shape
    target = np.asarray(target)
    if target.shape != (n,) or not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"`target` must be int of shape ({n},). Received {target.dtype} {target.shape}.")
    if target.min(initial=0) < 0 or target.max(initial=0) >= classes:
        raise ValueError(f"`target` must be in [0, {classes}). Received values in [{target.min()}, {target.max()}].")
    # One of the C - 1 other classes: draw an index among them and skip over the target (as Quantus does).
    draw = np.random.default_rng(seed).integers(0, classes - 1, size=n)
    return (draw + (draw >= target)).astype(np.int64)


def randomization_layers(model, *, output=None):
    """Names of the layers the randomisation check randomises, from the output towards the input: every layer
    with a kernel (convolutions, dense layers), nested models expanded.

    Args:
        model: the `keras.Model`.
        output: None (all such layers) or an output name: only layers that feed it.
    """
    scope = model if output is None else keras.Model(model.inputs[0], logits_tensor(model, output))
    return [layer.name for layer in reversed(all_layers(scope)) if hasattr(layer, "kernel")]


def _reinitialize(layer, rng):
    """Redraw a layer's kernel and bias from a normal distribution with the standard deviation of their trained
    values, so that activations keep their scale."""
    for var in (layer.kernel, getattr(layer, "bias", None)):
        if var is not None:
            values = keras.ops.convert_to_numpy(var)
            var.assign(rng.normal(0.0, values.std(), values.shape).astype(values.dtype))


def randomized_copy(model, *, output=None, seed=0):
    """The end of the cascading randomisation check: a copy of ``model`` with every layer of `randomization_layers`
    re-initialised (not permuted), drawn as `randomization_check` draws them one at a time. The model is not changed.

    Args:
        model: the `keras.Model`.
        output: None (every layer with a kernel) or an output name: only the layers that feed it.
        seed: int.

    Returns:
        the randomised `keras.Model` copy.
    """
    clone, _ = clone_with_weights(model)
    rng = np.random.default_rng(seed)
    for name in randomization_layers(clone, output=output):
        _reinitialize(find_layer_path(clone, name)[-1], rng)
    return clone


# ---------------------------------------------------------------------------------------------------------------
# Data randomisation


def permuted_labels(data, *, seed=0):
    """The data of the data randomisation test (Adebayo et al. 2018): the same images with their city labels
    permuted across the whole dataset (each region follows its city), so that nothing links an image to its label.

    Args:
        data: `streetlib.data.loaders.StreetData`.
        seed: int, for the permutation.

    Returns:
        `StreetData`, a copy whose ``city`` is a permutation of ``data.city`` (class counts kept); images, masks
        and name shared.
    """
    return dataclasses.replace(data, city=np.random.default_rng(seed).permutation(data.city))


def first_phase(run, *, layout):
    """The run a run starts from, followed back to its first phase: ``run`` itself for a transfer (or scratch) run,
    the transfer run a fine-tune was initialised from (its manifest's ``init_from``), and so on.

    Args:
        run: `streetlib.runs.RunId`.
        layout: the `streetlib.runs.RunLayout` of its dataset.

    Returns:
        (`RunId`, `streetlib.training.config.RunConfig`) of the first phase.
    """
    record = json.loads(layout.manifest(run).read_text())["config"]
    while record["phase"] == "finetune":
        model = Path(record["init_from"])
        run = RunId.from_name(model.parent.name, re.sub(r"\.(best|final)\.keras$", "", model.name))
        record = json.loads(layout.manifest(run).read_text())["config"]
    return run, RunConfig.from_manifest(record)


def data_randomized_copy(data, split, run, *, layout, experiment, epochs=None, execution=None):
    """The model of the data randomisation test (Adebayo et al. 2018): ``run``'s configuration trained on
    `permuted_labels` of ``data``.

    Cheaply: only its first phase (`first_phase`) is trained again - for the demo's recipe, the conv head on the
    frozen backbone's cached block1 features, not the fine-tuning of every layer on images - so a fine-tuned model's
    copy keeps the weight source's backbone. Its final weights are kept: the validation labels are permuted too, so
    the best epoch would be chosen on noise. The run is saved like any other (``<config>-permuted-labels-seed<N>``
    in ``experiment``) and reused when it finished with the same configuration.

    Args:
        data: `StreetData` with the true labels.
        split: `streetlib.data.splits.Split` the copy trains on (its seed seeds the permutation and the run).
        run: `RunId` of the explained model (a seed's headline run).
        layout: the `RunLayout` of ``data``'s runs.
        experiment: str, where the copy's run goes (e.g. '05-attribution').
        epochs: None (the first phase's own) or int >= 1.
        execution: `streetlib.training.config.Execution`. Default: reuse a finished run, no progress bar.

    Returns:
        the trained `keras.Model`.
    """
    origin, config = first_phase(run, layout=layout)
    config = config.replace(epochs=epochs or config.epochs, early_stopping=None, seed=split.seed)
    copy = RunId(experiment, f"{origin.config_name}-permuted-labels", split.seed)
    execution = execution or Execution(reuse=True, verbose=0)
    permuted = permuted_labels(data, seed=split.seed)
    return train.run_phase(permuted, split, config, run=copy, layout=layout, execution=execution).model


def randomization_check(inputs, model, *, methods=ORIGINAL, output="city", layer=None, target=None, seed=0):
    """The cascading model-parameter randomisation check (Adebayo et al. 2018).

    A copy of the model has its layers re-initialised one more at a time, from the output down; after each, the
    maps are recomputed and compared with the trained model's. A map that explains the model must change (low rank
    correlation) once the weights it depends on are random. The user's model is never changed. Each kernel and bias
    is redrawn from a normal distribution with the standard deviation of the trained values, so activations keep
    their scale; batch normalisation statistics are left as they are.

    Args:
        inputs: float32 `(n, H, W, C)`, normalised model inputs.
        model: the `keras.Model`.
        methods: sequence of `registry.METHODS` names. Default `registry.ORIGINAL` (the original study's three).
        output: str, the output explained. Default 'city'.
        layer: str or None, the Grad-CAM layer (default: the backbone's last convolution).
        target: None (the trained model's predicted classes, kept fixed throughout) or int `(n,)`.
        seed: int.

    Returns:
        dict with ``layers`` (list of str, in randomisation order) and ``spearman`` (dict method -> float32
        `(len(layers), n)`, the rank correlation after randomising each layer and all above it).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or isinstance(methods, str):
        raise ValueError(f"Invalid `methods`. Expected a sequence of {sorted(METHODS)}. Received: methods={methods!r}")
    if target is None:
        target = np.argmax(explainer(model, layer=layer).logits(inputs, output=output), axis=1)
    kwargs = dict(output=output, layer=layer, target=target)
    original = {m: attribute(inputs, model, method=m, **kwargs).maps for m in methods}
    clone, _ = clone_with_weights(model)
    rng = np.random.default_rng(seed)
    names = randomization_layers(clone, output=output)
    spearman = {m: np.zeros((len(names), len(inputs)), np.float32) for m in methods}
    for i, name in enumerate(names):
        _reinitialize(find_layer_path(clone, name)[-1], rng)
        for m in methods:
            maps = attribute(inputs, clone, method=m, **kwargs).maps
            spearman[m][i] = rank_correlation(original[m], maps)
    return {"layers": names, "spearman": spearman}


# ---------------------------------------------------------------------------------------------------------------
# Beyond one image


def _best_window(cam, size):
    """Top-left corner and mean value of the ``size`` x ``size`` window (stride size // 2) with the highest mean."""
    H, W = cam.shape
    stride = max(1, size // 2)
    integral = np.pad(cam.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ys = np.arange(0, H - size + 1, stride)
    xs = np.arange(0, W - size + 1, stride)
    y, x = np.meshgrid(ys, xs, indexing="ij")
    sums = integral[y + size, x + size] - integral[y, x + size] - integral[y + size, x] + integral[y, x]
    k = np.argmax(sums)
    return int(y.flat[k]), int(x.flat[k]), float(sums.flat[k]) / size**2


def street_features(images, cams, labels, predicted, *, num_classes, patch_size=None, top=8):
    """What the model looks at, per class: the mean CAM over correctly classified images and the most attributed
    image patches.

    Args:
        images: uint8 `(n, H, W, 3)` RGB.
        cams: float `(n, H, W)` in [0, 1], the Grad-CAM of each image's predicted class.
        labels: int `(n,)`, true classes.
        predicted: int `(n,)`, predicted classes.
        num_classes: int.
        patch_size: int, the patch side in pixels. Default ``H // 4``.
        top: int, patches kept per class (one per image at most, the best window of each). Default 8.

    Returns:
        dict with ``mean_cams`` float32 `(num_classes, H, W)` (zeros for a class with no correct image),
        ``counts`` int64 `(num_classes,)`, ``patches`` (list per class of uint8 `(k, p, p, 3)`, k <= top, best first)
        and ``patch_info`` (list per class of dicts with ``index`` int `(k,)` into ``images``, ``yx`` int `(k, 2)`
        top-left corners and ``score`` float32 `(k,)`, the window's mean CAM).
    """
    images = np.asarray(images)
    cams = _check_maps(cams, name="cams")
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if cams.shape != images.shape[:3] or labels.shape != (len(images),) or predicted.shape != (len(images),):
        raise ValueError(
            f"`cams`, `labels` and `predicted` must match `images` {images.shape}: received {cams.shape}, "
            f"{labels.shape}, {predicted.shape}."
        )
    H, W = cams.shape[1:]
    size = patch_size or H // 4
    if not 1 <= size <= min(H, W):
        raise ValueError(
            f"Invalid `patch_size`: expected an int in [1, {min(H, W)}]. Received: patch_size={patch_size!r}"
        )
    mean_cams = np.zeros((num_classes, H, W), np.float32)
    counts = np.zeros(num_classes, np.int64)
    patches, info = [], []
    for k in range(num_classes):
        members = np.flatnonzero((labels == k) & (predicted == k))
        counts[k] = len(members)
        if len(members):
            mean_cams[k] = cams[members].mean(axis=0)
        windows = [_best_window(cams[i], size) for i in members]
        best = np.argsort([-w[2] for w in windows], kind="stable")[:top]
        yx = np.array([windows[j][:2] for j in best], np.int64).reshape(-1, 2)
        index = members[best]
        patches.append(
            np.stack([images[i, y : y + size, x : x + size] for i, (y, x) in zip(index, yx, strict=True)])
            if len(index)
            else np.zeros((0, size, size, 3), np.uint8)
        )
        info.append({"index": index, "yx": yx, "score": np.array([windows[j][2] for j in best], np.float32)})
    return {"mean_cams": mean_cams, "counts": counts, "patches": patches, "patch_info": info}


def quadrant_images(image, *, size, policy="crop"):
    """The four quadrants of an image (top left, top right, bottom left, bottom right), each fitted to ``size``.

    Args:
        image: uint8 `(H, W, 3)` RGB, H and W >= 2.
        size: int or (height, width).
        policy: resize policy of `streetlib.data.loaders.fit_image`. Default 'crop'.

    Returns:
        uint8 `(4, height, width, 3)`.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 2:
        raise ValueError(f"`image` must be uint8 RGB (H, W, 3) with H, W >= 2. Received {image.dtype} {image.shape}.")
    H, W = image.shape[:2]
    h, w = H // 2, W // 2
    parts = (image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:])
    return np.stack([fit_image(Image.fromarray(p), size, policy=policy) for p in parts])


def explain_quadrants(image, model, *, normalization, policy="crop", layer=None, outputs=OUTPUTS):
    """Classify and explain the four quadrants of an image, each as a whole input (the seed tutorial's trick).

    Args:
        image: uint8 `(H, W, 3)` RGB, any size.
        model: the `keras.Model`; quadrants are fitted to its input size (224 when it accepts any).
        normalization: the model's normalisation.
        policy: resize policy for the quadrants. Default 'crop'.
        layer: str or None, the Grad-CAM layer.
        outputs: sequence of output names. Default ('region', 'city').

    Returns:
        (quadrants uint8 `(4, h, w, 3)`, dict output -> Grad-CAM `Attribution` of the 4-image batch).
    """
    quads = quadrant_images(image, size=model_input_size(model) or (224, 224), policy=policy)
    x = model_inputs(quads, normalization=normalization)
    return quads, explain(x, model, methods=("grad_cam",), outputs=outputs, layer=layer)["grad_cam"]


def randomization_table(check):
    """`randomization_check` results as a tidy DataFrame: method, step, layer, mean and std rank correlation."""
    rows = []
    for method, values in check["spearman"].items():
        for step, (layer, corr) in enumerate(zip(check["layers"], values, strict=True), start=1):
            rows.append(
                {
                    "method": method,
                    "step": step,
                    "layer": layer,
                    "spearman_mean": float(np.nanmean(corr)),
                    "spearman_std": float(np.nanstd(corr)),
                }
            )
    return pd.DataFrame(rows)


def plot_randomization(table, *, title=None):
    """Rank correlation with the trained model's maps as layers are randomised from the top down, per method.
    Returns a `matplotlib.figure.Figure`."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    for method, rows in table.groupby("method", sort=False):
        ax.errorbar(rows["step"], rows["spearman_mean"], yerr=rows["spearman_std"], marker="o", capsize=2, label=method)
    layers = table.drop_duplicates("step")
    ax.set_xticks(layers["step"], layers["layer"], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("Spearman rank correlation with the trained model's maps")
    ax.set_xlabel("randomised down to (cumulative, from the output)")
    ax.axhline(0, color="gray", linewidth=0.5)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def layer_localization(images, masks, model, *, layers, normalization, output="region", tolerance=0, seed=0):
    """Grad-CAM's pointing games at several layers: where a map is computed decides how finely it can point.

    At 64 px, VGG16's last convolution is a 4 x 4 grid (16 px cells) while the synthetic cues are small objects, so
    an earlier, finer layer can localise what a coarse one cannot.

    Args:
        images, masks: uint8 `(n, H, W, 3)` and `(n, H, W)`.
        model: the `keras.Model`; layers: list of layer names; normalization: the model's.
        output: str. Default 'region'.
        tolerance: int >= 0, the pointing game's (`pointing_game`, `scaled_tolerance`). Default 0.
        seed: int, for the random maps.

    Returns:
        DataFrame with columns layer, grid (the feature map's height x width), pointing_game, energy_pointing_game,
        chance, pointing_chance, images, plus a last row 'random' (the floor).
    """
    inputs = model_inputs(images, normalization=normalization)
    rows = []
    for layer in layers:
        ex = explainer(model, layer=layer)
        target = np.argmax(ex.logits(inputs, output=output), axis=1)
        coarse = ex.grad_cam(inputs, output=output, target=target).maps
        cam = attribute(inputs, model, method="grad_cam", output=output, layer=layer, target=target).maps
        table = localization_table({"grad_cam": cam}, masks, tolerance=tolerance, seed=seed)
        rows.append(
            {"layer": layer, "grid": f"{coarse.shape[1]}x{coarse.shape[2]}", **table.iloc[0].drop("method").to_dict()}
        )
        floor = table.iloc[-1]
    rows.append({"layer": "random", "grid": "", **floor.drop("method").to_dict()})
    return pd.DataFrame(rows)
