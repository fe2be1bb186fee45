"""Concept discovery: what a layer's activations hold across a class's images (CRAFT-style NMF), ranked by how much
each concept counts for the class logit, found on the discovery images alone (`discover_sources`).

For one class of one output, the images the model gets right are pooled and their activations at one layer
factorised:

1. Select: the images of ``target_class`` (by default labelled and predicted as it: ``selection='correct'``), at
   most ``max_images`` of them (a seeded random subset).
2. Activations: the feature map ``A`` at ``layer``, float32 `(n, h, w, C)`, non-negative after a ReLU. Negatives are
   clipped to 0, because NMF refuses them; a layer whose negative share of the activation mass exceeds
   `activations.NEGATIVE_TOLERANCE` (a linear convolution before its batch normalisation and ReLU) is refused
   instead, since clipping would throw away part of what the model computes. With ``layer=None`` the model's default
   Grad-CAM layer is used, moved past a batch normalisation and ReLU that directly follow it (``head_conv2`` ->
   ``head_conv2_relu``).
3. Factorise: ``A`` reshaped to `(n * h * w, C)` ~= ``U @ W`` by scikit-learn's `NMF` with K components. ``W``
   `(K, C)` is the concept bank (one direction in channel space per concept), ``U`` `(n, h, w, K)` the concept maps.
   Activations of lower rank than K (dead units, constant or all-zero maps, common in a randomised copy) get only
   as many concepts as their rank; the others are empty, ranked last (`activation_rank`).
4. Importance: gradient x concept activation (CRAFT's "gradient-input" in concept space). With ``G`` the gradient of
   the class logit w.r.t. ``A``, and ``A ~= U W``, the chain rule gives ``dlogit / dU_k(h, w) = <G(h, w), W_k>``, so

       importance_k = mean over images of  sum_{h, w} U_k(h, w) * <G(h, w), W_k>

   the first-order Taylor share of the logit carried by concept k (exact when the head is linear in ``A``: removing
   concept k from ``A`` lowers the logit by exactly that much). The K importances sum to gradient x activation of the
   reconstructed map, ``sum G * (U W)``. Sobol indices (CRAFT's other choice) would need hundreds of masked forward
   passes per image; this needs none beyond the one gradient pass. The terms of that sum, ``U_k(h, w) <G(h, w), W_k>``
   kept where positive, make a second map per concept: where it *counts* for the class (its contribution map), as
   opposed to where it *fires* (``U_k``). A concept that also fires weakly on things the class logit ignores (a
   stripe detector on every horizontal edge) has a diffuse activation map and a contribution map on the cues.

New images are projected on the fixed bank by `score.concept_projection`. The sanity control is `discover_concepts`
on `sanity.randomized_copy(model)`: nothing is cached per model here (the explainer cache is keyed weakly by the
model object), so a copy gets its own activations.
"""

from dataclasses import dataclass, replace
from typing import ClassVar

import keras
import numpy as np
from sklearn.decomposition import NMF

from streetlib.attribution.concepts.activations import concept_layer, layer_pass, non_negative, predicted_classes
from streetlib.attribution.concepts.config import SELECTIONS, ConceptConfig, check_images, check_labels
from streetlib.attribution.concepts.doersch import doersch_baseline
from streetlib.attribution.explainer import logits_tensor
from streetlib.attribution.maps import upsample_maps
from streetlib.attribution.metrics import sanity
from streetlib.data.loaders import content_hash

# Singular values below this fraction of the largest count as zero when sizing the factorisation (`activation_rank`).
RANK_TOLERANCE = 1e-5
# What a `Discovery` holds for each class, in the order of the report's rows.
SOURCES = ("model", "randomised weights", "baseline (no model)")


class NoImagesError(ValueError):
    """`discover_concepts` selected no image of the class (e.g. the model gets none of them right)."""


@dataclass
class Concepts:
    """The concepts of one class of one output, found by `discover_concepts`.

    Attributes:
        output: str, the output explained ('region' or 'city').
        target_class: int, the class index within that output.
        layer: str, the layer factorised.
        bank: float32 `(K, C)`, non-negative: concept k's direction in the layer's channel space (NMF's ``W``).
        maps: float32 `(m, H, W, K)`, non-negative, not normalised: where each concept fires in each selected image
            (NMF's ``U``, upsampled bilinearly to the input size).
        layer_maps: float32 `(m, h, w, K)`: ``U`` itself, at the layer's resolution.
        contributions: float32 `(m, H, W, K)`, non-negative: where each concept raises the class logit, the positive
            part of ``U_k(h, w) <G(h, w), W_k>`` (`concept_contributions`), upsampled bilinearly to the input size.
        image_importance: float32 `(m, K)`: ``sum_{h, w} U_k(h, w) <G(h, w), W_k>`` per image (logit units).
        importance: float32 `(K,)`: the mean of ``image_importance`` over images.
        order: int64 `(K,)`: concept indices, most important first, empty concepts last.
        indices: int64 `(m,)`: the selected images' indices into the ``images`` given to `discover_concepts`.
        rank: int in [0, K], how many concepts were fitted: the activations' numerical rank when it is below K
            (dead units, constant or all-zero activations); concepts ``rank .. K-1`` are empty (zero direction, maps
            and importance).
        reconstruction_error: float, ``||A - U W|| / ||A||`` (Frobenius), in [0, 1] for a fit better than zero.
        negative_share: float, the share of the activation mass that was negative and clipped.
        config: the `ConceptConfig` used.
    """

    output: str
    target_class: int
    layer: str
    bank: np.ndarray
    maps: np.ndarray
    layer_maps: np.ndarray
    contributions: np.ndarray
    image_importance: np.ndarray
    importance: np.ndarray
    order: np.ndarray
    indices: np.ndarray
    rank: int
    reconstruction_error: float
    negative_share: float
    config: ConceptConfig

    score_name: ClassVar[str] = "importance"

    @property
    def scores(self):
        """float32 `(K,)`: what the concepts are ranked by (their importance)."""
        return self.importance


def select_images(labels, predicted, target_class, selection, output):
    """The indices of the images a ``selection`` (`config.SELECTIONS`) keeps for ``target_class``, int64 `(m,)`.

    Args:
        labels: None or int `(n,)`, the true ``output`` classes (needed by 'correct' and 'labelled').
        predicted: int `(n,)`, the model's predicted classes.
        target_class: int.
        selection: 'correct', 'labelled' or 'predicted'.
        output: str, the output, for the error message.
    """
    if selection in ("correct", "labelled"):
        if labels is None:
            raise ValueError(
                f"`labels` are needed for selection={selection!r}: pass the true {output} class of each image, or "
                f"use a config with selection='predicted'."
            )
        keep = labels == target_class
        if selection == "correct":
            keep &= predicted == target_class
    elif selection == "predicted":
        keep = predicted == target_class
    else:
        raise ValueError(f"Invalid `selection`. Expected one of {list(SELECTIONS)}. Received: selection={selection!r}")
    return np.flatnonzero(keep)


def discover_concepts(images, model, *, normalization, output, target_class, labels=None, config=None, predicted=None):
    """Concepts of one class: NMF of the layer's activations over the class's images, ranked by importance.

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size.
        model: the `keras.Model` (one image input, ``<output>_logits`` layers).
        normalization: the model's input normalisation (see `streetlib.data.pipeline.NORMALIZATIONS`).
        output: str, the output whose class is explained ('region' or 'city').
        target_class: int, the class index within ``output``.
        labels: None or int `(n,)`, the true ``output`` class of each image (needed by ``config.selection``
            'correct' and 'labelled').
        config: `ConceptConfig`. Default ``ConceptConfig()``.
        predicted: None (computed here) or int `(n,)`, the model's predicted ``output`` class of each image, when
            the caller already has them (`discover_classes` predicts once for every class).

    Returns:
        `Concepts`.

    Raises:
        ValueError: no image is selected, ``n_concepts`` exceeds the layer's channels, ``labels`` do not match, or
            the layer is not non-negative.
    """
    config = ConceptConfig() if config is None else config
    images = check_images(images)
    layer = concept_layer(model, config.layer)
    _check_target(model, output, target_class)
    labels = None if labels is None else check_labels(labels, images)
    common = {"normalization": normalization, "output": output, "layer": layer, "batch_size": config.batch_size}
    if predicted is None:
        predicted = predicted_classes(images, model, **common)
    elif np.shape(predicted) != (len(images),):
        raise ValueError(f"`predicted` must have shape ({len(images)},). Received {np.shape(predicted)}.")
    indices = _selected(labels, predicted, int(target_class), config, output)
    activations, gradients, _ = layer_pass(images[indices], model, target=int(target_class), **common)
    activations, negative_share = non_negative(activations, layer)
    u, bank, rank, error = _factorise(activations, config, layer)
    contributions = concept_contributions(u, gradients, bank)
    image_importance = contributions.sum(axis=(1, 2)).astype(np.float32)
    importance = image_importance.mean(axis=0)
    # Empty concepts (beyond the activations' rank) go last whatever the sign of the others' importance: an empty
    # concept must never be a class's top concept.
    order = np.lexsort((-importance, np.arange(config.n_concepts) >= rank))
    return Concepts(
        output=output,
        target_class=int(target_class),
        layer=layer,
        bank=bank.astype(np.float32),
        maps=upsample_concept_maps(u, images.shape[1:3]),
        layer_maps=u.astype(np.float32),
        contributions=upsample_concept_maps(np.maximum(contributions, 0), images.shape[1:3]),
        image_importance=image_importance,
        importance=importance.astype(np.float32),
        order=order.astype(np.int64),
        indices=indices.astype(np.int64),
        rank=rank,
        reconstruction_error=error,
        negative_share=negative_share,
        config=config,
    )


def _check_target(model, output, target_class):
    n_classes = int(logits_tensor(model, output).shape[-1])
    is_int = isinstance(target_class, (int, np.integer)) and not isinstance(target_class, bool)
    if not is_int or not 0 <= target_class < n_classes:
        raise ValueError(
            f"Invalid `target_class` for output {output!r}: expected an int in [0, {n_classes}). "
            f"Received: target_class={target_class!r}"
        )


def _selected(labels, predicted, target_class, config, output):
    """`select_images`, refused when empty, then at most ``config.max_images`` of them (a seeded subset)."""
    indices = select_images(labels, predicted, target_class, config.selection, output)
    if not len(indices):
        what = {"correct": "labelled and predicted as", "labelled": "labelled", "predicted": "predicted as"}
        raise NoImagesError(
            f"No image is {what[config.selection]} class {target_class} of output {output!r} (of {len(predicted)} "
            f"images; {int(np.sum(predicted == target_class))} predicted as it): there is nothing to find concepts in."
        )
    if config.max_images is not None and len(indices) > config.max_images:
        rng = np.random.default_rng(config.seed)
        indices = np.sort(rng.choice(indices, size=config.max_images, replace=False))
    return indices


def activation_rank(flat):
    """The numerical rank of activations `(N, C)`: how many concepts they can hold.

    Counted from the singular values of ``flat`` (the square roots of the eigenvalues of its `(C, C)` Gram matrix, so
    the cost does not grow with N): those above `RANK_TOLERANCE` times the largest. Float32 activations resolve a
    direction to about 1e-7 of the largest singular value; below 1e-5 a direction is roundoff, not structure.

    Args:
        flat: float `(N, C)`, non-negative.

    Returns:
        int in [0, C]: 0 when every activation is zero.
    """
    flat = np.asarray(flat, np.float64)
    eigenvalues = np.clip(np.linalg.eigvalsh(flat.T @ flat), 0, None)
    singular = np.sqrt(eigenvalues)
    if singular.max(initial=0.0) == 0:
        return 0
    return int(np.sum(singular > RANK_TOLERANCE * singular.max()))


def _factorise(activations, config, layer):
    """NMF of activations `(n, h, w, C)` into ``config.n_concepts`` concepts, robust to degenerate layers.

    NNDSVD initialisation (scikit-learn's default family) divides by the norms of the singular vectors' positive and
    negative parts, which can both be zero for a direction with no singular value behind it: dead units, constant or
    all-zero activations (a randomised copy has them) then give NaN. So only ``min(K, rank)`` concepts are fitted
    and the rest are empty (zero direction, zero maps, zero importance), a defined result rather than kernel luck.

    Returns:
        (U float64 `(n, h, w, K)`, W float64 `(K, C)`, rank int: how many concepts were fitted, the relative
        reconstruction error float ``||A - U W|| / ||A||``).

    Raises:
        ValueError: more concepts than channels, or a factorisation that is not finite (it never should be once the
            rank is respected).
    """
    m, h, w, channels = activations.shape
    k = config.n_concepts
    if k > channels:
        raise ValueError(
            f"Invalid `n_concepts`: layer {layer!r} has {channels} channels, so at most {channels} concepts. "
            f"Received: n_concepts={k}"
        )
    flat = activations.reshape(-1, channels).astype(np.float64)
    fitted = min(k, activation_rank(flat))
    u = np.zeros((len(flat), k))
    bank = np.zeros((k, channels))
    if fitted:
        nmf = NMF(
            fitted, init=config.nmf_init, max_iter=config.nmf_max_iter, tol=config.nmf_tol, random_state=config.seed
        )
        u[:, :fitted] = nmf.fit_transform(flat)
        bank[:fitted] = nmf.components_
    if not (np.isfinite(u).all() and np.isfinite(bank).all()):
        raise ValueError(
            f"NMF of the activations of layer {layer!r} did not converge to finite concepts (rank {fitted} of "
            f"{channels} channels). Pass nmf_init='random' or fewer n_concepts in the ConceptConfig."
        )
    norm = np.linalg.norm(flat)
    error = float(np.linalg.norm(flat - u @ bank) / norm) if norm > 0 else 0.0
    return u.reshape(m, h, w, k), bank, fitted, error


def concept_contributions(concept_maps, gradients, bank):
    """Gradient x concept activation at each position: ``U_k(h, w) * <G(h, w), W_k>``.

    Args:
        concept_maps: float `(n, h, w, K)`, the concept maps ``U`` at the layer's resolution.
        gradients: float `(n, h, w, C)`, the gradient ``G`` of the class logit w.r.t. the layer's activations.
        bank: float `(K, C)`, the concept bank ``W``.

    Returns:
        float64 `(n, h, w, K)`, signed, in logit units: summed over positions, each concept's importance in each
        image (`Concepts.image_importance`).
    """
    along = np.einsum("nhwc,kc->nhwk", np.asarray(gradients, np.float64), np.asarray(bank, np.float64))
    return np.asarray(concept_maps, np.float64) * along


def upsample_concept_maps(u, size):
    """Concept maps at the layer's resolution to the input's, bilinear, non-negative.

    Args:
        u: float `(n, h, w, K)`.
        size: (H, W), the input size in pixels.

    Returns:
        float32 `(n, H, W, K)`.
    """
    n, h, w, k = u.shape
    flat = np.transpose(u, (0, 3, 1, 2)).reshape(n * k, h, w)
    up = upsample_maps(flat, size).reshape(n, k, *size)
    return np.maximum(np.transpose(up, (0, 2, 3, 1)), 0).astype(np.float32)


def discover_classes(images, model, *, normalization, output, labels=None, config=None):
    """`discover_concepts` for every class of ``output``.

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size.
        model: the `keras.Model`.
        normalization: the model's input normalisation.
        output: str, the output whose classes are explained.
        labels: None or int `(n,)`, the true ``output`` class of each image (see `discover_concepts`).
        config: `ConceptConfig`. Default ``ConceptConfig()``.

    Returns:
        dict class index -> `Concepts`, without the classes that select no image (a model that gets none of a
        class right has nothing to show for it; the caller can say which are missing).
    """
    config = ConceptConfig() if config is None else config
    images = check_images(images)
    layer = concept_layer(model, config.layer)
    predicted = predicted_classes(
        images, model, normalization=normalization, output=output, layer=layer, batch_size=config.batch_size
    )
    found = {}
    common = {
        "normalization": normalization,
        "output": output,
        "labels": labels,
        "config": config,
        "predicted": predicted,
    }
    for target in range(int(logits_tensor(model, output).shape[-1])):
        try:
            found[target] = discover_concepts(images, model, target_class=target, **common)
        except NoImagesError:
            continue
    return found


@dataclass
class Discovery:
    """What `discover_sources` found for every class of one output on the discovery images alone, fixed from then on:
    what `report.held_out_report` scores on held-out images.

    Attributes:
        output: str, the output explained.
        concepts: dict class index -> `Concepts` of the trained model (`discover_classes`), ranked on the discovery
            images; a class without a selected image is missing.
        controls: dict class index -> `Concepts` of ``randomized`` on the same images (selection 'labelled': a
            random model gets few right, and the point is the same images under random weights).
        baselines: dict class index -> `doersch.PatchClusters` (`doersch.doersch_baseline`, which never looks at
            the model).
        randomized: the `keras.Model` copy with every layer re-initialised that the controls were found in.
        image_hashes: frozenset of str, the content hashes (`streetlib.data.loaders.content_hash`) of the discovery
            images, which `report.held_out_report` refuses to score.
        found_on: str, what the discovery images were (e.g. 'training images of split 42'), for the tables.
        config: the `ConceptConfig` used (discovery, and the scoring rule: target, margins, deletion).
    """

    output: str
    concepts: dict
    controls: dict
    baselines: dict
    randomized: keras.Model
    image_hashes: frozenset
    found_on: str
    config: ConceptConfig

    def sources(self, target):
        """dict source (`SOURCES`) -> what it found for class ``target``: `Concepts` or `doersch.PatchClusters`."""
        return dict(zip(SOURCES, (self.concepts[target], self.controls[target], self.baselines[target]), strict=True))


def discover_sources(
    images,
    labels,
    model,
    *,
    normalization,
    output="region",
    config=None,
    patch_config=None,
    found_on="discovery images",
):
    """Step 1 of the report's rule (`report`): for every class of ``output``, the trained model's concepts, the same
    discovery on the model with every layer re-initialised, and the baseline's patch clusters, all found on
    ``images`` alone (the training split), each class's top concept chosen there.

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size, of every class: the discovery images only.
        labels: int `(n,)`, each image's true ``output`` class.
        model: the trained `keras.Model`.
        normalization: the model's input normalisation.
        output: str. Default 'region'.
        config: `ConceptConfig`. Default ``ConceptConfig()``.
        patch_config: `PatchConfig` of the baseline. Default ``PatchConfig()``.
        found_on: str, what ``images`` are, for the tables. Default 'discovery images'.

    Returns:
        `Discovery`.
    """
    config = ConceptConfig() if config is None else config
    images = check_images(images)
    labels = check_labels(labels, images)
    common = {"normalization": normalization, "output": output}
    concepts = discover_classes(images, model, labels=labels, config=config, **common)
    randomized = sanity.randomized_copy(model, output=output, seed=config.seed)
    control_config = replace(config, selection="labelled", max_images=None)
    controls, baselines = {}, {}
    for target, found in concepts.items():
        picked = found.indices
        control = discover_concepts(
            images[picked], randomized, target_class=target, labels=labels[picked], config=control_config, **common
        )
        controls[target] = replace(control, indices=picked[control.indices])
        baselines[target] = doersch_baseline(images, labels, target_class=target, config=patch_config)
    return Discovery(
        output=output,
        concepts=concepts,
        controls=controls,
        baselines=baselines,
        randomized=randomized,
        image_hashes=frozenset(content_hash(image) for image in images),
        found_on=found_on,
        config=config,
    )


def top_patches(images, concepts, k, *, size=None, top=None):
    """A concept's gallery: for each selected image, the crop of ``size`` px centred on its concept map's maximum
    (moved inside the image), the images with the highest maxima first.

    Args:
        images: uint8 `(n, H, W, 3)`: the same array given to `discover_concepts` (rows are picked by
            ``concepts.indices``).
        concepts: `Concepts` (or `doersch.PatchClusters`).
        k: int, the concept's index in the bank (``concepts.order[0]`` is the most important).
        size: None (``concepts.config.patch_size``, else H // 4) or int in [1, min(H, W)].
        top: None (``concepts.config.top_patches``) or int >= 1, patches returned at most.

    Returns:
        dict with ``patches`` uint8 `(t, size, size, 3)`, ``index`` int64 `(t,)` into ``images``, ``yx`` int64
        `(t, 2)` top-left corners and ``score`` float32 `(t,)` the map's maximum, t <= top, best first.
    """
    images = check_images(images)
    maps = concepts.maps
    n_concepts = maps.shape[-1]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 0 <= k < n_concepts:
        raise ValueError(f"Invalid `k`: expected a concept index in [0, {n_concepts}). Received: k={k!r}")
    if len(images) <= concepts.indices.max() or images.shape[1:3] != maps.shape[1:3]:
        raise ValueError(
            f"`images` must be the array the concepts were found in: {maps.shape[1:3]} px and more than "
            f"{concepts.indices.max()} images. Received {images.shape}."
        )
    H, W = maps.shape[1:3]
    size = size or concepts.config.patch_size or H // 4
    top = top or concepts.config.top_patches
    if not isinstance(size, (int, np.integer)) or not 1 <= size <= min(H, W):
        raise ValueError(f"Invalid `size`: expected an int in [1, {min(H, W)}]. Received: size={size!r}")
    flat = maps[..., k].reshape(len(maps), -1)
    peak = flat.argmax(axis=1)
    score = flat[np.arange(len(flat)), peak]
    best = np.argsort(-score, kind="stable")[:top]
    y = np.clip(peak[best] // W - size // 2, 0, H - size)
    x = np.clip(peak[best] % W - size // 2, 0, W - size)
    index = concepts.indices[best]
    patches = np.stack([images[i, a : a + size, b : b + size] for i, a, b in zip(index, y, x, strict=True)])
    return {"patches": patches, "index": index, "yx": np.stack([y, x], axis=1).astype(np.int64), "score": score[best]}
