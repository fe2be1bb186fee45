"""Concepts scored against the ground truth (synthetic data): where a fixed concept fires in new images and where it
counts for the class there (`concept_projection`), the share of a map's mass on cue pixels per image and pooled over
a class's images, and the deletion test. Functions of maps (and, for deletion, of the model's outputs), not of a
method: the baseline's cluster maps (`doersch`) are scored by the same functions.

- `concept_mask_share`: per image, the share of a concept map's mass on cue pixels; chance is the mean mask area.
- `pooled_shares`: the same over a class's images: the share of the concept's pooled mass, each image weighted by
  how much the concept fires there, beside the per-image mean.
- `share_differences`: per-image values whose mean is either share minus a reference, for `stats.compare`: the
  pooled share, a ratio, linearised (Woodruff 1971).
- `concept_deletion`: the probability drop when the concept's top pixels are removed, against random regions of the
  same area and shape.
"""

import numbers

import numpy as np
import pandas as pd
from sklearn.decomposition import non_negative_factorization

from streetlib.attribution.concepts.activations import layer_pass, non_negative
from streetlib.attribution.concepts.config import check_images
from streetlib.attribution.concepts.discover import concept_contributions, upsample_concept_maps
from streetlib.attribution.metrics import faithfulness, intervals, localization


def concept_projection(images, model, concepts, *, normalization, batch_size=64):
    """Where each concept of ``concepts`` fires in new images, and where it counts for the class there: their
    activations at the concepts' layer projected on the fixed bank (NMF with ``W`` held fixed, as
    `sklearn.decomposition.NMF.transform`), and the positive part of ``U_k <G, W_k>`` with ``G`` the gradient of the
    concepts' class logit (`discover.concept_contributions`).

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size.
        model: the `keras.Model` the concepts were found in (or one with the same layer and channels).
        concepts: `discover.Concepts`.
        normalization: the model's input normalisation.
        batch_size: int >= 1, images per model call. Default 64.

    Returns:
        dict of float32 `(n, H, W, K)`, non-negative, not normalised, in the bank's concept order: ``maps`` and
        ``contributions``.
    """
    images = check_images(images)
    activations, gradients, _ = layer_pass(
        images,
        model,
        layer=concepts.layer,
        normalization=normalization,
        output=concepts.output,
        target=concepts.target_class,
        batch_size=batch_size,
    )
    activations, _ = non_negative(activations, concepts.layer)
    n, h, w, channels = activations.shape
    bank = concepts.bank.astype(np.float64)
    if bank.shape[1] != channels:
        raise ValueError(
            f"Invalid `concepts`: its bank has {bank.shape[1]} channels, layer {concepts.layer!r} of this model "
            f"{channels}."
        )
    flat = activations.reshape(-1, channels).astype(np.float64)
    # Empty concepts (zero directions) and all-zero activations fire nowhere; scikit-learn refuses a zero bank row.
    live = np.flatnonzero(bank.any(axis=1))
    u = np.zeros((len(flat), len(bank)))
    if len(live) and flat.any():
        u[:, live], _, _ = non_negative_factorization(
            flat,
            H=bank[live],
            n_components=len(live),
            init="custom",
            update_H=False,
            max_iter=concepts.config.nmf_max_iter,
            tol=concepts.config.nmf_tol,
            random_state=concepts.config.seed,
        )
    u = u.reshape(n, h, w, len(bank))
    contributions = concept_contributions(u, gradients, bank)
    size = images.shape[1:3]
    return {
        "maps": upsample_concept_maps(u, size),
        "contributions": upsample_concept_maps(np.maximum(contributions, 0), size),
    }


def concept_maps(images, model, concepts, *, normalization, batch_size=64):
    """Where each concept of ``concepts`` fires in new images (`concept_projection`'s ``maps``).

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size.
        model: the `keras.Model` the concepts were found in.
        concepts: `discover.Concepts`.
        normalization: the model's input normalisation.
        batch_size: int >= 1, images per model call. Default 64.

    Returns:
        float32 `(n, H, W, K)`, non-negative, not normalised, in the bank's concept order.
    """
    return concept_projection(images, model, concepts, normalization=normalization, batch_size=batch_size)["maps"]


def concept_mask_share(maps, masks):
    """The share of each concept map's mass on cue pixels (`metrics.localization.relevance_mass_accuracy`).

    Args:
        maps: float `(n, H, W)`, non-negative: one concept's maps.
        masks: `(n, H, W)`, non-zero on cue pixels.

    Returns:
        float32 `(n,)` in [0, 1]; NaN for an image without cue pixels. Chance is `mask_chance` (``masks``' mean
        area): what a map that knows nothing scores on average.
    """
    return localization.relevance_mass_accuracy(maps, masks)


def mask_chance(masks, weights=None):
    """The chance level of `concept_mask_share`: the mean share of cue pixels, float.

    Args:
        masks: `(n, H, W)`, non-zero on cue pixels.
        weights: None or float `(n,)`, non-negative with a positive sum (e.g. `concept_mass`): the weighted mean of
            each image's cue area, the chance level of the pooled share (what the same mass per image, spread
            uniformly over each image, would score).
    """
    area = (np.asarray(masks) > 0).mean(axis=(1, 2))
    return float(np.average(area, weights=weights))


def concept_mass(maps):
    """Each image's total map mass, float64 `(n,)` from one concept's maps `(n, H, W)`: how much the concept fires
    there, the weight of that image in the pooled share (`pooled_shares`)."""
    return np.asarray(maps, np.float64).sum(axis=(1, 2))


def pooled_shares(maps, masks, *, resamples=1000, seed=0):
    """One concept's share of its map mass on cue pixels, over a set of images: pooled and per image.

    The *pooled* share is the share of the concept's mass over all the images that lies on cue pixels,
    ``sum_i inside_i / sum_i mass_i``: the mean of the per-image shares weighted by each image's mass. It is the
    class-level answer (where does this concept fire across the class?). The *per-image* mean weighs every image
    the same, including images where the concept hardly fires and its map is a faint wash over the picture; in the
    64-px demo's validation images, the west concept's weakest third of images carries 7% of its mass and a share of
    0.30, the strongest third 69% and 0.64.

    Args:
        maps: float `(n, H, W)`, non-negative: one concept's maps.
        masks: `(n, H, W)`, non-zero on cue pixels.
        resamples, seed: bootstrap settings (`metrics.intervals.bootstrap_interval`, resampling images).

    Returns:
        dict: ``pooled_share``, ``pooled_low``, ``pooled_high`` (pooled, with its 95% interval),
        ``per_image_share``, ``per_image_low``, ``per_image_high``, ``pooled_chance`` and ``images`` (the images with
        a cue pixel, the only ones scored). ``pooled_chance`` is `mask_chance` of those images weighted by the mass:
        the pooled share's chance level (the per-image mean's is their plain mean cue area, `mask_chance(masks)`).
        NaN shares and chance 0 when no image has a cue pixel.
    """
    share = concept_mask_share(maps, masks)
    scored = np.isfinite(share)
    mass = concept_mass(maps)[scored]
    # A concept with no mass on the scored images fires nowhere: like an all-zero map in `concept_mask_share`, it
    # counts as uniform, so every image weighs the same.
    weights = mass if mass.sum() > 0 else None
    # Chance over the scored images only: an image without cue pixels has no share, so its area (0) must not count.
    chance = mask_chance(np.asarray(masks)[scored], weights) if scored.any() else 0.0
    columns = {"pooled_chance": chance, "images": int(scored.sum())}
    names = (("pooled_share", "pooled_low", "pooled_high"), ("per_image_share", "per_image_low", "per_image_high"))
    for keys, w in zip(names, (weights, None), strict=True):
        values = (
            intervals.bootstrap_interval(share[scored], weights=w, resamples=resamples, seed=seed)
            if scored.any()
            else (np.nan,) * 3
        )
        columns.update(zip(keys, values, strict=True))
    return columns


def concept_table(concepts, masks, *, resamples=None, seed=None):
    """Every concept's importance and mask share, ranked, with the chance level.

    Args:
        concepts: `discover.Concepts` (or `doersch.PatchClusters`).
        masks: `(n, H, W)` cue masks of the same images given to `discover.discover_concepts` (rows picked by
            ``concepts.indices``).
        resamples, seed: bootstrap settings; default ``concepts.config``'s.

    Returns:
        `pandas.DataFrame`, one row per concept, best first: ``rank`` (1 = best), ``concept`` (index in the bank),
        the ranking score (``importance`` or ``purity``), then `pooled_shares`'s columns (``pooled_share``,
        ``pooled_low``, ``pooled_high`` pooled over images with its 95% bootstrap interval; the per-image mean;
        ``pooled_chance``) and ``images``.
    """
    masks = np.asarray(masks)[concepts.indices]
    resamples = concepts.config.resamples if resamples is None else resamples
    seed = concepts.config.seed if seed is None else seed
    rows = []
    for rank, k in enumerate(concepts.order, start=1):
        rows.append(
            {
                "rank": rank,
                "concept": int(k),
                concepts.score_name: float(concepts.scores[k]),
                **pooled_shares(concepts.maps[..., k], masks, resamples=resamples, seed=seed),
            }
        )
    return pd.DataFrame(rows)


def scored_shares(maps, masks):
    """The images a share is computed on, and their numbers: those with a cue pixel where the map has mass.

    Args:
        maps: float `(n, H, W)`, non-negative: one concept's maps.
        masks: `(n, H, W)`, non-zero on cue pixels.

    Returns:
        (shares, mass, area): float64 `(m,)` each, m <= n: each scored image's `concept_mask_share`, `concept_mass`
        and cue area (its chance level).
    """
    maps, masks = np.asarray(maps, np.float64), np.asarray(masks)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"`maps` and `masks` must both have shape (n, H, W). Received {maps.shape} and {masks.shape}.")
    if not len(maps):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    share = concept_mask_share(maps, masks).astype(np.float64)
    mass = concept_mass(maps)
    # A map without mass has no share (0 / 0): `concept_mask_share` would call it uniform, i.e. at chance.
    scored = np.isfinite(share) & (mass > 0)
    return share[scored], mass[scored], (masks[scored] > 0).mean(axis=(1, 2))


def share_differences(shares, reference, weights=None):
    """Per-image values whose mean is a mean share minus a reference, for `stats.compare` (``overlap=0``).

    Without ``weights``: ``shares - reference``, the per-image share's paired differences. With ``weights`` (each
    image's map mass), the pooled share ``R = sum w s / sum w`` is a ratio estimator; its differences from the
    (equally weighted) reference, ``D = sum w (s - reference) / sum w``, are linearised (Woodruff 1971):
    ``z_i = D + w_i / mean(w) * (s_i - reference_i - D)``. Their mean is exactly ``D``, and their standard deviation
    over ``sqrt(n)`` is the delta-method standard error of the ratio,
    ``sqrt(sum (a_i - R b_i)^2 / (n (n - 1))) / mean(b)`` with ``a = w s`` and ``b = w`` (for a constant reference).

    Args:
        shares: float `(n,)`, each image's share of the map's mass on cue pixels.
        reference: float or float `(n,)`: the target, or each image's chance level (its cue area).
        weights: None, or float `(n,)` positive: each image's map mass (`concept_mass`).

    Returns:
        float64 `(n,)`.
    """
    excess = np.asarray(shares, np.float64) - np.asarray(reference, np.float64)
    if weights is None or not len(excess):
        return excess
    weights = np.asarray(weights, np.float64)
    pooled = np.average(excess, weights=weights)
    return pooled + weights / weights.mean() * (excess - pooled)


def _roll_masks(chosen, rng, repeats):
    """``repeats`` copies of each boolean mask `(n, H, W)`, each rolled (wrapping round) by a uniform random offset:
    regions of exactly the same area and shape, at random places. bool `(n, repeats, H, W)`."""
    n, H, W = chosen.shape
    out = np.empty((n, repeats, H, W), bool)
    offsets = rng.integers(0, [H, W], size=(n, repeats, 2))
    for i in range(n):
        for r in range(repeats):
            out[i, r] = np.roll(chosen[i], tuple(offsets[i, r]), axis=(0, 1))
    return out


def concept_deletion(images, model, maps, *, normalization, output, target, area=0.1, repeats=4, seed=0, batch_size=64):
    """Does removing a concept's region lower the class probability more than removing a random region?

    For each image the ``area`` share of pixels with the highest map values (ties broken at random) is filled with
    the image's mean colour (as `metrics.faithfulness.perturbation_curves` deletes). The control fills the same
    region rolled, wrapping round, by a uniform random offset: exactly the same area and shape at a random place
    (scattered random pixels would be a weaker perturbation than a compact region, which would flatter the concept),
    averaged over ``repeats`` offsets.

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size.
        model: the `keras.Model`.
        maps: float `(n, H, W)`, non-negative: one concept's maps of these images.
        normalization: the model's input normalisation.
        output: str, the output whose probability is watched.
        target: int or int `(n,)`, the class whose probability is watched.
        area: float in (0, 1), the share of pixels removed. Default 0.1.
        repeats: int >= 1, random placements per image. Default 4.
        seed: int, for ties and placements. Default 0.
        batch_size: int, images per model call. Default 64.

    Returns:
        dict of float32 `(n,)`: ``clean`` (the probability of the intact image), ``concept`` and ``random`` (the
        drop in probability, clean minus perturbed; ``random`` the mean over placements). Pass the drops, or their
        difference, to `metrics.intervals.bootstrap_interval`.
    """
    images = check_images(images)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape != images.shape[:3]:
        raise ValueError(f"`maps` must have shape {images.shape[:3]} to match `images`. Received {maps.shape}.")
    if isinstance(area, bool) or not isinstance(area, numbers.Real) or not 0 < area < 1:
        raise ValueError(f"Invalid `area`: expected a float in (0, 1). Received: area={area!r}")
    if not isinstance(repeats, (int, np.integer)) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"Invalid `repeats`: expected an int >= 1. Received: repeats={repeats!r}")
    n, H, W = maps.shape
    target = np.asarray(target)
    if not np.issubdtype(target.dtype, np.integer) or target.shape not in ((), (n,)):
        raise ValueError(f"Invalid `target`: expected an int or int `({n},)`. Received {target.dtype} {target.shape}.")
    target = np.broadcast_to(target.astype(np.int64), (n,))
    count = max(1, int(round(area * H * W)))
    rng = np.random.default_rng(seed)
    chosen = np.stack([faithfulness.pixel_ranks(m, rng) < count for m in maps]).reshape(n, H, W)
    rolled = _roll_masks(chosen, rng, repeats)
    pictures = images.astype(np.float32)
    grey = pictures.mean(axis=(1, 2), keepdims=True)

    def probability(batch, classes):
        return faithfulness.class_probability(
            batch, model, output=output, target=classes, normalization=normalization, batch_size=batch_size
        )

    clean = probability(pictures, target)
    concept = probability(np.where(chosen[..., None], grey, pictures), target)
    random = np.where(rolled[..., None], grey[:, None], pictures[:, None]).reshape(n * repeats, H, W, 3)
    random = probability(random, np.repeat(target, repeats)).reshape(n, repeats).mean(axis=1)
    return {"clean": clean, "concept": clean - concept, "random": (clean - random).astype(np.float32)}
