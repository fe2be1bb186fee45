"""The baseline without the model: discriminative patches (Doersch et al. 2012) and their small HOG.

Patches on a grid, described by their colour and a histogram of oriented gradients (computed here with NumPy),
clustered with k-means, the clusters ranked by how much of their membership comes from the class (a smoothed
purity). Its maps (where a cluster's patches lie in an image) are scored by the same functions as the model's
concepts (`score`), so the report can say whether the model finds the cues better than patch statistics do.
"""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.cluster import KMeans

from streetlib.attribution.concepts.config import PatchConfig, check_images, check_labels


@dataclass
class PatchClusters:
    """The most discriminative patch clusters of one class, found by `doersch_baseline`.

    Attributes:
        target_class: int.
        clusters: int64 `(keep,)`: k-means cluster ids, most discriminative first.
        purity: float32 `(keep,)`: smoothed share of each cluster's patches that come from the class.
        maps: float32 `(m, H, W, keep)`: per selected image of the class, how many of the cluster's patches cover
            each pixel (in ``clusters`` order).
        order: int64 `(keep,)`: ``arange(keep)`` (maps are already ranked), as `discover.Concepts.order`.
        indices: int64 `(m,)`: the class's selected images, indices into ``images``.
        config: the `PatchConfig` used.
        kmeans: the fitted `sklearn.cluster.KMeans`, on standardised `patch_features`.
        feature_mean, feature_std: float32 `(d,)`, the standardisation of the features, as fitted.
        patch, stride: int, the grid's patch side and step in pixels.
        (`patch_cluster_maps` reads the last four to find the same clusters in new images.)
    """

    target_class: int
    clusters: np.ndarray
    purity: np.ndarray
    maps: np.ndarray
    order: np.ndarray
    indices: np.ndarray
    config: PatchConfig
    kmeans: KMeans
    feature_mean: np.ndarray
    feature_std: np.ndarray
    patch: int
    stride: int

    score_name: ClassVar[str] = "purity"

    @property
    def scores(self):
        """float32 `(keep,)`: what the clusters are ranked by (their purity)."""
        return self.purity


def _grid(size, patch, stride):
    return np.arange(0, size - patch + 1, stride)


def patch_features(images, *, patch, stride, bins=8):
    """Colour and oriented-gradient descriptors of the patches on a grid (a small HOG, in NumPy).

    Per patch: the mean and standard deviation of each RGB channel (6), and a histogram of gradient orientations
    (unsigned, ``bins`` bins, magnitude-weighted) in each of its 2 x 2 cells, L2-normalised over the patch
    (``4 * bins``).

    Args:
        images: uint8 `(n, H, W, 3)`.
        patch: int, patch side in pixels (>= 2).
        stride: int, grid step.
        bins: int, orientation bins. Default 8.

    Returns:
        float32 `(n, gy, gx, 6 + 4 * bins)`, the grid's rows and columns of patches.
    """
    images = np.asarray(images)
    chunks = [_patch_features(images[start : start + 64], patch, stride, bins) for start in range(0, len(images), 64)]
    return np.concatenate(chunks)


def _patch_features(images, patch, stride, bins):
    """`patch_features` of a few images (the integral images take ``(n, H, W, 6 + bins)`` floats)."""
    pictures = images.astype(np.float32) / 255.0
    n, H, W, _ = pictures.shape
    ys, xs = _grid(H, patch, stride), _grid(W, patch, stride)
    grey = pictures.mean(axis=-1)
    dy, dx = np.gradient(grey, axis=(1, 2))
    magnitude = np.hypot(dx, dy)
    angle = np.mod(np.arctan2(dy, dx), np.pi)
    which = np.minimum((angle / np.pi * bins).astype(np.int64), bins - 1)
    oriented = np.zeros((n, H, W, bins), np.float32)
    np.put_along_axis(oriented, which[..., None], magnitude[..., None], axis=-1)
    channels = np.concatenate([pictures, pictures**2, oriented], axis=-1)
    integral = np.pad(channels.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0), (0, 0)))

    def box(y0, x0, size_y, size_x):
        y, x = np.meshgrid(y0, x0, indexing="ij")
        return (
            integral[:, y + size_y, x + size_x]
            - integral[:, y, x + size_x]
            - integral[:, y + size_y, x]
            + integral[:, y, x]
        )

    whole = box(ys, xs, patch, patch) / patch**2
    mean, square = whole[..., :3], whole[..., 3:6]
    std = np.sqrt(np.maximum(square - mean**2, 0))
    half = patch // 2
    cells = [box(ys + a, xs + b, half, half)[..., 6:] for a in (0, half) for b in (0, half)]
    hog = np.concatenate(cells, axis=-1)
    hog = hog / (np.linalg.norm(hog, axis=-1, keepdims=True) + 1e-6)
    return np.concatenate([mean, std, hog], axis=-1).astype(np.float32)


def doersch_baseline(images, labels, *, target_class, config=None):
    """The baseline without the model: Doersch-style discriminative patches of one class.

    Patches on a grid of every image (a seeded subset of at most ``max_images`` per class) are described by
    `patch_features`, standardised, and clustered with k-means; each cluster is scored by its smoothed purity,
    ``(patches from the class + s * p) / (patches + s)`` with ``p`` the class's share of all patches and ``s`` the
    ``smoothing``, and the ``keep`` purest are kept. A cluster's map of an image counts, per pixel, the cluster's
    patches covering it.

    Args:
        images: uint8 `(n, H, W, 3)` RGB of every class (the other classes are what makes a patch discriminative).
        labels: int `(n,)`, each image's class.
        target_class: int, the class whose patches are ranked.
        config: `PatchConfig`. Default ``PatchConfig()``.

    Returns:
        `PatchClusters`.

    Raises:
        ValueError: no image has the class, or all images have it (nothing to discriminate against).
    """
    config = PatchConfig() if config is None else config
    images = check_images(images)
    labels = check_labels(labels, images)
    inside = labels == target_class
    if not inside.any() or inside.all():
        raise ValueError(
            f"`doersch_baseline` needs images of class {target_class} and of other classes: {int(inside.sum())} of "
            f"{len(images)} images have it."
        )
    n, H, W, _ = images.shape
    patch = config.patch or max(2, H // 4)
    stride = config.stride or max(1, patch // 2)
    if patch > min(H, W):
        raise ValueError(f"Invalid `patch`: expected at most {min(H, W)} px. Received: patch={patch}")
    if config.keep > config.clusters:
        raise ValueError(f"Invalid `keep`: expected at most clusters={config.clusters}. Received: keep={config.keep}")
    chosen = _subset_per_class(labels, config.max_images, np.random.default_rng(config.seed))
    features = patch_features(images[chosen], patch=patch, stride=stride, bins=config.bins)
    _, gy, gx, dims = features.shape
    flat = features.reshape(-1, dims)
    mean, std = flat.mean(axis=0), flat.std(axis=0) + 1e-6
    kmeans = KMeans(config.clusters, n_init=3, random_state=config.seed).fit((flat - mean) / std)
    purity = _purity(kmeans.labels_, np.repeat(labels[chosen] == target_class, gy * gx), config)
    ranked = np.argsort(-purity, kind="stable")[: config.keep]
    members = np.flatnonzero(labels[chosen] == target_class)
    assignment = kmeans.labels_.reshape(len(chosen), gy, gx)
    return PatchClusters(
        target_class=int(target_class),
        clusters=ranked.astype(np.int64),
        purity=purity[ranked].astype(np.float32),
        maps=_cluster_maps(assignment[members], ranked, (H, W), patch, stride),
        order=np.arange(config.keep, dtype=np.int64),
        indices=chosen[members].astype(np.int64),
        config=config,
        kmeans=kmeans,
        feature_mean=mean,
        feature_std=std,
        patch=patch,
        stride=stride,
    )


def _subset_per_class(labels, max_images, rng):
    """int `(m,)`, sorted: every image's index, or a random ``max_images`` of a class that has more."""
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if max_images is not None and len(members) > max_images:
            members = np.sort(rng.choice(members, size=max_images, replace=False))
        chosen.append(members)
    return np.sort(np.concatenate(chosen))


def _purity(assignment, from_class, config):
    """float64 `(clusters,)`: each cluster's smoothed share of patches from the class, from every patch's cluster
    ``assignment`` and whether it ``from_class``, both `(patches,)`."""
    total = np.bincount(assignment, minlength=config.clusters)
    hits = np.bincount(assignment, weights=from_class, minlength=config.clusters)
    prior = from_class.mean()
    return (hits + config.smoothing * prior) / (total + config.smoothing)


def _cluster_maps(assignment, ranked, size, patch, stride):
    """float32 `(m, H, W, keep)`: per image, how many patches of each of the ``ranked`` clusters cover each pixel,
    from the cluster of every grid patch, int `(m, gy, gx)`."""
    H, W = size
    ys, xs = _grid(H, patch, stride), _grid(W, patch, stride)
    maps = np.zeros((len(assignment), H, W, len(ranked)), np.float32)
    for i, cells in enumerate(assignment):
        for a, y in enumerate(ys):
            for b, x in enumerate(xs):
                hit = ranked == cells[a, b]
                if hit.any():
                    maps[i, y : y + patch, x : x + patch, np.flatnonzero(hit)[0]] += 1.0
    return maps


def patch_cluster_maps(images, clusters):
    """Where the fixed clusters of ``clusters`` lie in new images: their grid patches described and standardised as
    in `doersch_baseline`, each assigned to its nearest k-means centre, the kept clusters' patches counted per pixel.

    Args:
        images: uint8 `(n, H, W, 3)`, the size of the images the clusters were found in.
        clusters: `PatchClusters`.

    Returns:
        float32 `(n, H, W, keep)`, in ``clusters.clusters`` order (most discriminative first).
    """
    images = check_images(images)
    if images.shape[1:3] != clusters.maps.shape[1:3]:
        raise ValueError(
            f"`images` must be {clusters.maps.shape[1:3]} px, the size the clusters were found at. "
            f"Received {images.shape[1:3]}."
        )
    features = patch_features(images, patch=clusters.patch, stride=clusters.stride, bins=clusters.config.bins)
    n, gy, gx, dims = features.shape
    standardised = (features.reshape(-1, dims) - clusters.feature_mean) / clusters.feature_std
    assignment = clusters.kmeans.predict(standardised).reshape(n, gy, gx)
    return _cluster_maps(assignment, clusters.clusters, images.shape[1:3], clusters.patch, clusters.stride)
