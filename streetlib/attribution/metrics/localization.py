"""Localisation: how well maps point at the cue masks, the synthetic data's ground truth.

The pointing game (Zhang et al. 2018) with a tolerance scaled from theirs, relevance mass accuracy (Arras et al.
2022; Wang et al.'s energy-based pointing game with the mask as its box), relevance rank accuracy (Arras et al.) and
the mask AUC (the map as a detector of cue pixels); what a map that knows nothing scores on each (`mask_area`,
`widened_area`) and random maps, the floor. Pure functions of maps and masks: no model is run.

Maps are float `(n, H, W)`, non-negative, at the resolution of the masks they are compared with (see
`streetlib.attribution.registry.attribute`).
"""

import numpy as np
from scipy import ndimage, stats


def check_maps(maps, masks=None, *, name="maps"):
    """``maps`` as float32 `(n, H, W)`, finite and non-negative, and with ``masks`` the masks as bool of the same
    shape: ``maps`` or ``(maps, masks)``. Raises a ValueError naming ``name`` otherwise."""
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
    maps, masks = check_maps(maps, masks)
    masks = dilate_masks(masks, tolerance)
    top = maps == maps.max(axis=(1, 2), keepdims=True)
    scores = (top & masks).sum(axis=(1, 2)) / top.sum(axis=(1, 2))
    return np.where(masks.any(axis=(1, 2)), scores, np.nan).astype(np.float32)


def relevance_mass_accuracy(maps, masks):
    """Relevance mass accuracy (Arras et al. 2022; Quantus's ``RelevanceMassAccuracy``): the share of a map's mass
    inside the mask, ``sum(map * mask) / sum(map)``.

    It is also Wang et al. (2020)'s energy-based pointing game with the cue mask as its box: one number, one name.
    An all-zero map is counted as uniform and scores the mask's area fraction, the chance level (Quantus gives NaN,
    0 / 0).

    Args:
        maps: float `(n, H, W)`, non-negative.
        masks: `(n, H, W)`, non-zero on the cue pixels.

    Returns:
        float32 `(n,)` in [0, 1]; NaN for an image whose mask is empty.
    """
    maps, masks = check_maps(maps, masks)
    total = maps.sum(axis=(1, 2))
    inside = (maps * masks).sum(axis=(1, 2))
    area = masks.mean(axis=(1, 2))
    scores = np.divide(inside, total, out=area.astype(np.float64), where=total > 0)
    return np.where(masks.any(axis=(1, 2)), scores, np.nan).astype(np.float32)


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
    maps, masks = check_maps(maps, masks)
    n = len(maps)
    flat, inside = maps.reshape(n, -1), masks.reshape(n, -1)
    k = inside.sum(axis=1)
    # The K-th highest value of each map (any value for an empty mask: its score is NaN anyway).
    kth = -np.sort(-flat, axis=1)[np.arange(n), np.maximum(k, 1) - 1][:, None]
    above, tied = flat > kth, flat == kth
    slots = k - above.sum(axis=1)
    hits = (above & inside).sum(axis=1) + slots * (tied & inside).sum(axis=1) / tied.sum(axis=1)
    return np.where(k > 0, hits / np.maximum(k, 1), np.nan).astype(np.float32)


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
    maps, masks = check_maps(maps, masks)
    n = len(maps)
    inside = masks.reshape(n, -1)
    positives = inside.sum(axis=1).astype(np.float64)
    negatives = inside.shape[1] - positives
    ranks = stats.rankdata(maps.reshape(n, -1), axis=1)
    u = (ranks * inside).sum(axis=1) - positives * (positives + 1) / 2
    defined = (positives > 0) & (negatives > 0)
    return np.where(defined, u / np.where(defined, positives * negatives, 1), np.nan).astype(np.float32)


def random_maps(shape, *, seed=0):
    """The floor: independent uniform noise, float32 of ``shape`` in [0, 1); ``seed`` an int or a tuple of ints
    (as `numpy.random.default_rng` takes it)."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def mask_area(masks):
    """What a map that knows nothing scores on relevance mass and rank accuracy: the share of each image the cue
    covers, float64 `(n,)` in [0, 1]."""
    return (np.asarray(masks) > 0).mean(axis=(1, 2))


def widened_area(masks, *, tolerance):
    """What a map that knows nothing scores on the pointing game: the share of each image the cue covers once
    widened by ``tolerance`` pixels (`dilate_masks`), float64 `(n,)` in [0, 1]."""
    return dilate_masks(masks, tolerance).mean(axis=(1, 2))
