"""Faithfulness: does removing what a map points at change the model's answer?

Deletion and insertion curves (Petsiuk et al. 2018): pixels are removed (put back) in the order of the map and the
class probability is watched; their areas are the registry's ``deletion_auc`` and ``insertion_auc``. These run the
model on every perturbed copy, so the leaderboard scores them on its control images only.
"""

import numpy as np
from scipy import ndimage
from scipy.special import softmax

from streetlib.attribution.explainer import explainer, model_inputs
from streetlib.attribution.metrics.localization import check_maps

CURVES = ("deletion", "insertion")


def class_probability(images, model, *, output, target, normalization, batch_size):
    """Softmax probability of ``target`` for images in the uint8 range (any float dtype), in batches.

    Args:
        images: float `(n, H, W, 3)` with values in [0, 255] (perturbed copies of uint8 images).
        model: the `keras.Model`.
        output: str, the output whose probability is read.
        target: int `(n,)`, the class of each image.
        normalization: the model's input normalisation.
        batch_size: int >= 1, images per model call.

    Returns:
        float32 `(n,)` in [0, 1].
    """
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


def _check_curve_inputs(images, maps, target, *, steps, kinds):
    """`perturbation_curves`'s arrays checked: (uint8 images, float32 maps, int64 target)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`images` must be uint8 of shape (n, H, W, 3). Received {images.dtype} {images.shape}.")
    maps = check_maps(maps)
    if maps.shape != images.shape[:3]:
        raise ValueError(f"`maps` must have shape {images.shape[:3]} to match `images`. Received {maps.shape}.")
    target = np.asarray(target, dtype=np.int64)
    if target.shape != (len(images),):
        raise ValueError(f"`target` must have shape ({len(images)},). Received shape {target.shape}.")
    if isinstance(kinds, str) or not kinds or set(kinds) - set(CURVES):
        raise ValueError(f"Invalid `kinds`. Expected a non-empty sequence of {list(CURVES)}. Received: kinds={kinds!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"Invalid `steps`: expected an int >= 1. Received: steps={steps!r}")
    return images, maps, target


def perturbation_curves(
    images, maps, model, *, output, target, normalization, steps=16, batch_size=64, seed=0, kinds=CURVES
):
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
        kinds: sequence of 'deletion' and 'insertion', the curves computed. Default both (the ties are broken
            the same way for either alone).

    Returns:
        dict with ``fractions`` float32 `(steps + 1,)` in [0, 1] and, for each of ``kinds``, ``<kind>`` float32
        `(n, steps + 1)` probabilities and ``<kind>_auc`` float32 `(n,)` in [0, 1].
    """
    images, maps, target = _check_curve_inputs(images, maps, target, steps=steps, kinds=kinds)
    n, H, W = maps.shape
    fractions = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
    counts = np.rint(fractions * H * W).astype(np.int64)
    rng = np.random.default_rng(seed)
    sigma = max(H, W) / 32
    curves = {kind: np.zeros((n, steps + 1), np.float32) for kind in kinds}
    # Several images' curves share one model call (a call per image and curve costs more than its compute at small
    # sizes); ``group`` images at a time keep the perturbed copies in memory to about a batch.
    group = max(1, batch_size // (steps + 1))
    for start in range(0, n, group):
        members = range(start, min(start + group, n))
        copies = {kind: [] for kind in kinds}
        for i in members:
            image = images[i].astype(np.float32)
            chosen = (pixel_ranks(maps[i], rng)[None, :] < counts[:, None]).reshape(steps + 1, H, W, 1)
            if "deletion" in copies:
                copies["deletion"].append(np.where(chosen, image.mean(axis=(0, 1), keepdims=True), image))
            if "insertion" in copies:
                blurred = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
                copies["insertion"].append(np.where(chosen, image, blurred))
        for kind, batch in copies.items():
            probs = class_probability(
                np.concatenate(batch),
                model,
                output=output,
                target=np.repeat(target[members.start : members.stop], steps + 1),
                normalization=normalization,
                batch_size=batch_size,
            )
            curves[kind][members.start : members.stop] = probs.reshape(len(members), steps + 1)
    areas = {f"{kind}_auc": np.trapezoid(curve, fractions, axis=1).astype(np.float32) for kind, curve in curves.items()}
    return {"fractions": fractions, **curves, **areas}


def _area(kind, maps, images, model, **kwargs):
    """The area under one kind of `perturbation_curves`: float32 `(n,)` in [0, 1]."""
    return perturbation_curves(images, maps, model, kinds=(kind,), **kwargs)[f"{kind}_auc"]


def deletion_auc(maps, *, images, model, output, target, normalization, steps, seed):
    """The area under the deletion curve of each map (`perturbation_curves`): lower is more faithful.

    Args:
        maps: float `(n, H, W)`, non-negative.
        images, model, output, target, normalization, steps, seed: as `perturbation_curves`.

    Returns:
        float32 `(n,)` in [0, 1].
    """
    kwargs = dict(output=output, target=target, normalization=normalization, steps=steps, seed=seed)
    return _area("deletion", maps, images, model, **kwargs)


def insertion_auc(maps, *, images, model, output, target, normalization, steps, seed):
    """The area under the insertion curve of each map: higher is more faithful. Arguments and return as
    `deletion_auc`'s."""
    kwargs = dict(output=output, target=target, normalization=normalization, steps=steps, seed=seed)
    return _area("insertion", maps, images, model, **kwargs)
