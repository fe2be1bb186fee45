"""What the concept functions accept, checked at the boundary: the settings of concept discovery and of its report
(`ConceptConfig`), of the baseline without the model (`PatchConfig`), and the images and labels they take.

How each step of `streetlib.attribution.concepts` is set:

| step | choice | `ConceptConfig` fields (defaults) |
|---|---|---|
| images | labelled and predicted as the class / labelled / predicted | ``selection`` ('correct') |
| images | a seeded random subset | ``max_images`` (200), ``seed`` (0) |
| layer | the default Grad-CAM layer, past its BN + ReLU | ``layer`` (None) |
| factorisation | `NMF`: Frobenius loss, coordinate descent, no penalty | ``n_concepts`` (6), ``nmf_init`` ('nndsvda') |
| | | ``nmf_max_iter`` (2000), ``nmf_tol`` (1e-4), ``seed`` |
| importance | gradient x concept activation of the class logit, mean over images | - |
| maps | ``U`` upsampled bilinearly to the input size, not normalised | - |
| contribution maps | ``U_k <G, W_k>``, positive part, upsampled the same way | - |
| gallery | crops centred on each image's maximum of a map, best first | ``top_patches`` (8), ``patch_size`` (H // 4) |
| deletion | top ``area`` of a map's pixels -> mean colour, vs that shape rolled | ``deletion_area`` (0.1), |
| | to random places (same area and shape) | ``deletion_repeats`` (4) |
| gallery shares | pooled over the discovery images, bootstrap interval (`score.concept_table`) | ``resamples`` (1000) |
| report | per-image and pooled mask shares vs a target and chance, deletion vs random | ``share_target`` (0.5), |
| | regions, on held-out images; `stats.compare` per question, one `stats.family` | ``share_margin`` (0.05), |
| | (Holm) per report (see `report`) | ``drop_margin`` (0.02) |
"""

import numbers
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from streetlib.constraints import Interval, Options, validate_parameters

SELECTIONS = ("correct", "labelled", "predicted")
NMF_INITS = ("nndsvda", "nndsvd", "nndsvdar", "random")


def _int_at_least(low):
    return Interval(numbers.Integral, low, None, closed="left")


@dataclass(frozen=True, kw_only=True)
class ConceptConfig:
    """How concepts are discovered and tested (see the module docstring's table).

    Attributes:
        n_concepts: int >= 1, K, the number of NMF components. Default 6. At most the layer's channel count.
        layer: None (the model's default Grad-CAM layer, moved past a directly following BN and ReLU) or a layer
            name; its output must be 4-D and (nearly) non-negative.
        selection: 'correct' (labelled and predicted as the class; needs labels), 'labelled' (needs labels) or
            'predicted'. Default 'correct'.
        max_images: None (all selected) or int >= 1: a seeded random subset of the selected images. Default 200.
        nmf_init: NMF initialisation, one of 'nndsvda', 'nndsvd', 'nndsvdar', 'random'. Default 'nndsvda'.
        nmf_max_iter: int >= 1, NMF iterations at most. Default 2000: the randomised-weights control of the
            64-px demo needed about 1000 (at 500 scikit-learn warns that it has not converged).
        nmf_tol: float > 0, NMF stopping tolerance. Default 1e-4.
        top_patches: int >= 1, gallery patches per concept. Default 8.
        patch_size: None (a quarter of the image height) or int >= 1, gallery patch side in pixels.
        deletion_area: float in (0, 1), the share of pixels `score.concept_deletion` removes. Default 0.1.
        deletion_repeats: int >= 1, random placements averaged per image in `score.concept_deletion`. Default 4.
        resamples: int >= 1, bootstrap resamples of `score.concept_table`'s intervals. Default 1000.
        share_target: float in (0, 1), the mask share the trained model's top concept is held to. Default 0.5.
        share_margin: float > 0, the equivalence margin of the mask-share questions (shares are in [0, 1]): a share
            within 0.05 of the target (or of chance) is at it. Fixed with the rule, before test. Default 0.05.
        drop_margin: float > 0, the equivalence margin of the deletion test, in class probability: a concept whose
            removal drops the probability within 0.02 of what random regions drop is no better than them. Default
            0.02.
        batch_size: int >= 1, images per model call. Default 64.
        seed: int >= 0, for the image subset, NMF, random regions and the bootstrap. Default 0.

    Every field is checked when the configuration is made, against ``_parameter_constraints`` (see
    `streetlib.constraints`).
    """

    n_concepts: int = 6
    layer: str | None = None
    selection: str = "correct"
    max_images: int | None = 200
    nmf_init: str = "nndsvda"
    nmf_max_iter: int = 2000
    nmf_tol: float = 1e-4
    top_patches: int = 8
    patch_size: int | None = None
    deletion_area: float = 0.1
    deletion_repeats: int = 4
    resamples: int = 1000
    share_target: float = 0.5
    share_margin: float = 0.05
    drop_margin: float = 0.02
    batch_size: int = 64
    seed: int = 0

    _parameter_constraints: ClassVar[dict] = {
        "n_concepts": [_int_at_least(1)],
        "layer": [None, str],
        "selection": [Options(SELECTIONS)],
        "max_images": [None, _int_at_least(1)],
        "nmf_init": [Options(NMF_INITS)],
        "nmf_max_iter": [_int_at_least(1)],
        "nmf_tol": [Interval(numbers.Real, 0, None, closed="neither")],
        "top_patches": [_int_at_least(1)],
        "patch_size": [None, _int_at_least(1)],
        "deletion_area": [Interval(numbers.Real, 0, 1, closed="neither")],
        "deletion_repeats": [_int_at_least(1)],
        "resamples": [_int_at_least(1)],
        "share_target": [Interval(numbers.Real, 0, 1, closed="neither")],
        "share_margin": [Interval(numbers.Real, 0, None, closed="neither")],
        "drop_margin": [Interval(numbers.Real, 0, None, closed="neither")],
        "batch_size": [_int_at_least(1)],
        "seed": [_int_at_least(0)],
    }

    def __post_init__(self):
        validate_parameters(self)


@dataclass(frozen=True, kw_only=True)
class PatchConfig:
    """How `doersch.doersch_baseline` finds discriminative patches.

    Attributes:
        patch: None (a quarter of the image height) or int >= 2, patch side in pixels.
        stride: None (half the patch) or int >= 1, grid step in pixels.
        clusters: int >= 2, k-means clusters. Default 16.
        keep: int >= 1, clusters kept (the most discriminative). Default 6.
        smoothing: float >= 0, pseudo-patches at the base rate added to every cluster's purity, so a small cluster
            needs more evidence to rank high. Default 5.
        bins: int >= 2, orientation bins of the gradient histogram. Default 8.
        max_images: None or int >= 1, images per class at most (a seeded subset). Default 200.
        top_patches: int >= 1, gallery patches per cluster. Default 8.
        patch_size: None or int >= 1, gallery patch side; default the patch side.
        resamples: int >= 1, bootstrap resamples. Default 1000.
        seed: int >= 0, for the subset, k-means and the bootstrap. Default 0.
    """

    patch: int | None = None
    stride: int | None = None
    clusters: int = 16
    keep: int = 6
    smoothing: float = 5.0
    bins: int = 8
    max_images: int | None = 200
    top_patches: int = 8
    patch_size: int | None = None
    resamples: int = 1000
    seed: int = 0

    _parameter_constraints: ClassVar[dict] = {
        "patch": [None, _int_at_least(2)],
        "stride": [None, _int_at_least(1)],
        "clusters": [_int_at_least(2)],
        "keep": [_int_at_least(1)],
        "smoothing": [Interval(numbers.Real, 0, None, closed="left")],
        "bins": [_int_at_least(2)],
        "max_images": [None, _int_at_least(1)],
        "top_patches": [_int_at_least(1)],
        "patch_size": [None, _int_at_least(1)],
        "resamples": [_int_at_least(1)],
        "seed": [_int_at_least(0)],
    }

    def __post_init__(self):
        validate_parameters(self)


def check_images(images, name="images"):
    """``images`` as an array, refused unless it is a non-empty uint8 RGB batch.

    Args:
        images: array-like, expected uint8 `(n, H, W, 3)` with n >= 1.
        name: str, the argument's name in the error message. Default 'images'.

    Returns:
        uint8 `(n, H, W, 3)`.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`{name}` must be uint8 RGB of shape (n, H, W, 3). Received {images.dtype} {images.shape}.")
    if not len(images):
        raise ValueError(f"`{name}` is empty.")
    return images


def check_labels(labels, images):
    """``labels`` as an array, refused unless it holds one class per image.

    Args:
        labels: array-like of int, expected `(n,)`.
        images: the `(n, ...)` array the labels belong to.

    Returns:
        int `(n,)`.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"`labels` must have shape ({len(images)},) to match `images`. Received {labels.shape}.")
    return labels
