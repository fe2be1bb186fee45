"""Perturbation attributions: occlusion and RISE, batched.

Both methods explain a class by hiding parts of the image and watching the model's score change: no gradients,
only forward passes, so they see the model as a black box (saturated or non-ReLU models included). Conventions
shared by the family:

- ``ex`` is an `explainer.Explainer` (see `explainer.explainer`) of a model with one image input: nested or flat, any
  output with a ``<output>_logits`` layer (or a linear layer named ``output``).
- ``inputs`` are float32 `(batch, H, W, C)`, normalised as the model expects. Hidden pixels take a value in that
  space: occlusion's ``baseline``, RISE's zero (it multiplies the input by the mask). Zero is the model-space zero,
  not black: the image's mean value under 'samplewise', the ImageNet mean colour under 'caffe' and 'torch', black
  under 'unit' and 'raw'.
- The explained class is fixed once per image from the clean input: ``target`` (an int or int `(batch,)`) or, when it
  is None, the class of rank ``rank`` (1 the predicted class, 2 the runner-up, ...); every perturbed copy is scored
  for that class.
- The result is a `maps.Attribution` with maps float32 `(batch, H, W)` at input resolution, non-negative and not
  normalised (`registry.attribute` divides each by its maximum), and the logits of the clean inputs.
- Perturbed copies go through the model at most ``batch_size`` at a time, so memory does not grow with the number of
  patches or masks; the result does not depend on ``batch_size`` beyond float rounding.
- Costs are counted per image in forward passes (these methods need no backward pass).
"""

import math

import numpy as np
from scipy.special import softmax

from streetlib.attribution.explainer import check_counts, copy_batches
from streetlib.attribution.maps import Attribution, upsample_maps


def occlusion(ex, inputs, *, output="city", target=None, rank=1, patch=16, stride=8, baseline=0.0, batch_size=64):
    """Occlusion (Zeiler & Fergus 2014): how much the class logit drops when a square of the image is hidden.

    A ``patch`` x ``patch`` square filled with ``baseline`` slides over the image with step ``stride``; where the
    steps do not reach the bottom or right edge, one last row or column of positions is added flush with it, so every
    pixel is covered. Each pixel's value is the drop ``logit(x) - logit(occluded x)`` of the class, averaged over the
    positions whose square covers it, then clipped at 0 (squares whose hiding raises the logit count as no evidence).

    Args:
        ex: `explainer.Explainer` of the model.
        inputs: float32 `(batch, H, W, C)`, normalised as the model expects.
        output: str, the output to explain. Default 'city'.
        target: None (default: the class of rank ``rank``), an int class index, or int `(batch,)`.
        rank: int >= 1, which class to explain when ``target`` is None. Default 1 (the predicted class).
        patch: int, the square's side in pixels, at most min(H, W). Default 16.
        stride: int >= 1, pixels between positions. Default 8 (squares overlap by half).
        baseline: float or float `(C,)`, the fill value in the model's input space. Default 0.0 (see the module
            docstring for what zero means under each normalisation).
        batch_size: int >= 1, occluded copies per pass through the model. Default 64.

    Returns:
        `Attribution` 'occlusion', maps float32 `(batch, H, W)`.

    Cost per image: ``1 + P`` forward passes, P the number of positions, ``ceil((H - patch) / stride + 1)`` times
    the same for W: 729 for 224 px images with the defaults.
    """
    check_counts(patch=patch, stride=stride, batch_size=batch_size)
    x = ex.check_inputs(inputs)
    H, W, C = x.shape[1:]
    if patch > min(H, W):
        raise ValueError(f"Invalid `patch`: expected at most {min(H, W)}, the image's shorter side. Received: {patch}")
    try:
        fill = np.broadcast_to(np.asarray(baseline, np.float32), (C,))
    except ValueError as err:
        raise ValueError(
            f"Invalid `baseline`: expected a float or {C} per-channel values. Received: {baseline!r}"
        ) from err
    corners = [(top, left) for top in _starts(H, patch, stride) for left in _starts(W, patch, stride)]
    clean, classes = ex.classes(x, output=output, target=target, rank=rank)

    def occluded(image, position):
        copies = x[image]
        for copy, k in zip(copies, position, strict=True):
            top, left = corners[k]
            copy[top : top + patch, left : left + patch] = fill
        return copies

    drops = np.empty((len(x), len(corners)), np.float32)
    for image, position in copy_batches(len(x), len(corners), batch_size):
        logits = ex.logits(occluded(image, position), output=output)
        drops[image, position] = clean[image, classes[image]] - logits[np.arange(len(image)), classes[image]]
    total = np.zeros((len(x), H, W), np.float32)
    covers = np.zeros((H, W), np.float32)
    for k, (top, left) in enumerate(corners):
        total[:, top : top + patch, left : left + patch] += drops[:, k, None, None]
        covers[top : top + patch, left : left + patch] += 1
    return Attribution("occlusion", output, classes, np.maximum(total / covers, 0), logits=clean)


def rise(ex, inputs, *, output="city", target=None, rank=1, masks=4000, cells=7, p=0.5, seed=None, batch_size=64):
    """RISE (Petsiuk et al. 2018): the class probability expected when a pixel is kept by a random smooth mask.

    Each mask is a ``cells`` x ``cells`` grid of cells kept with probability ``p``, upsampled bilinearly to
    ``(cells + 1)`` cell sizes (a cell is ``ceil(H / cells)`` by ``ceil(W / cells)`` pixels) and cropped to `(H, W)` at
    a random shift of less than one cell, so the kept areas have soft edges at any position. The image is multiplied
    by the mask (hidden pixels go to the model-space zero). The map is ``sum_n P_n * mask_n / sum_n mask_n``, with
    ``P_n`` the softmax probability of the class on masked copy ``n``: a Monte Carlo estimate of
    ``E[P | pixel kept]``. The probability, not the logit, as in the paper: it is bounded, so a few masks with
    extreme logits do not dominate the sum. All images of a call share the same masks.

    Each pixel is divided by how much the masks drawn kept it (``sum_n mask_n``), not by its expectation
    ``masks * p`` as in the paper: with the paper's divisor the masks' own uneven coverage is in every map, the same
    for any model, so two models' maps agree by construction (the randomisation check's rank correlation with a
    re-initialised model was 0.97 with 50 masks and 0.81 with 1,000 on 16 images of a 64-px demo model; 0.16 and 0.06
    with the ratio, which leaves a constant map for a model that ignores the image). A pixel no mask kept gets 0.

    Args:
        ex, inputs, output, target, rank: as `occlusion`; the class is picked on the clean image.
        masks: int >= 1, random masks (each a forward pass). Default 4000.
        cells: int >= 1, grid cells per side. Default 7.
        p: float in (0, 1], the probability that a cell is kept. Default 0.5.
        seed: None or int, for the grids and shifts (drawn for all masks at once, so ``batch_size`` does not
            change them).
        batch_size: int >= 1, masked copies per pass through the model. Default 64.

    Returns:
        `Attribution` 'rise', maps float32 `(batch, H, W)`.

    Cost per image: ``1 + masks`` forward passes (the first picks the class); the masks' upsampling is small beside
    them.
    """
    check_counts(masks=masks, cells=cells, batch_size=batch_size)
    if not 0 < p <= 1:
        raise ValueError(f"Invalid `p`: expected a probability in (0, 1]. Received: p={p!r}")
    x = ex.check_inputs(inputs)
    H, W = x.shape[1:3]
    clean, classes = ex.classes(x, output=output, target=target, rank=rank)
    rng = np.random.default_rng(seed)
    cell = np.array([math.ceil(H / cells), math.ceil(W / cells)])
    grids = (rng.random((masks, cells, cells)) < p).astype(np.float32)
    shifts = rng.integers(0, cell, size=(masks, 2))

    def make_masks(number):
        up = upsample_maps(grids[number], tuple((cells + 1) * cell))
        return np.stack([m[dy : dy + H, dx : dx + W] for m, (dy, dx) in zip(up, shifts[number], strict=True)])

    total = np.zeros((len(x), H, W), np.float32)
    coverage = np.zeros((len(x), H, W), np.float32)
    for image, number in copy_batches(len(x), masks, batch_size):
        kept = make_masks(number)
        logits = ex.logits(x[image] * kept[..., None], output=output)
        probs = softmax(logits, axis=1)[np.arange(len(image)), classes[image]]
        np.add.at(total, image, probs[:, None, None] * kept)
        np.add.at(coverage, image, kept)
    maps = np.divide(total, coverage, out=np.zeros_like(total), where=coverage > 0)
    return Attribution("rise", output, classes, maps, logits=clean)


def _starts(size, patch, stride):
    """Start positions of a ``patch`` sliding by ``stride`` along ``size`` pixels, the last one flush with the end."""
    starts = list(range(0, size - patch + 1, stride))
    return starts if starts[-1] == size - patch else [*starts, size - patch]
