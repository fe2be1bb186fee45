"""Backbone features for the baselines: one layer's feature map, pooled or flattened, cached on disk.

`FeatureExtractor` runs a backbone (any `backbones.BACKBONES` name, any weight source) up to one layer and
turns its feature map into one vector per image: global average ('avg', 512-d for VGG16's ``block5_pool``), global
max ('max'), both ('avgmax'), the flattened map ('flatten', the original's "non-pooled" 25,088-d at 224 px), or the
map averaged over a coarse spatial grid ('grid<k>': k x k cells, e.g. 'grid4' turns ``block1_pool``'s 32 x 32 x 64
maps at 64 px into 4 x 4 x 64 = 1,024 values), which keeps where in the image a feature fired, as the conv head does.

Cache layout: ``data/features/<dataset>/<backbone>-<weights>-<layer>-<pooling>-<H>x<W>[-aug...]-<hash>.npy`` with a
``.json`` beside it holding the full key. The key covers the backbone, the weights (the SHA-1 of the weights file, so
a changed file is a new key), the layer, the pooling, the image size, the normalisation, the random-init seed, the
dataset's content, the Keras version and a cache format version. Plain features are cached per dataset, not per
split: every image is run once and splits index into the array, so all split seeds, classifiers and outputs share one
extraction.
Augmented copies of a training set depend on the split, so their key adds the training images' content (in split
order), the number of copies, the augmentation settings and the seed. A file is reused only when its stored key
equals the requested one; anything else is recomputed and overwritten, never read.
"""

import hashlib
import json
import re
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from streetlib import paths
from streetlib.data import pipeline
from streetlib.models import backbones
from streetlib.models.network import POOLINGS, build_backbone, cut_backbone
from streetlib.models.weights import WEIGHT_SOURCES, check_weights, fetch, hed_file, normalization_for
from streetlib.paths import atomic_path, file_digest

# Bump when the way features are computed changes, so older cache files stop matching.
CACHE_VERSION = 1
# 'grid<k>': the map averaged over k x k equal cells (see `grid_pool`).
_GRID = re.compile(r"^grid([1-9][0-9]*)$")
POOLING_NAMES = f"{POOLINGS} or 'grid<k>' (k >= 1)"


def weights_fingerprint(weights, *, backbone="vgg16"):
    """What identifies a weight source in a cache key: its name and the SHA-1 of its file.

    Args:
        weights: a `streetlib.models.weights.WEIGHT_SOURCES` name or a weights file path.
        backbone: str, a `streetlib.models.backbones.BACKBONES` name. Default 'vgg16'.

    Returns:
        str, e.g. ``"random"`` or ``"hed-bsds500 sha1:1a2b..."``.

    Raises:
        WeightsDownloadError: 'imagenet' or 'places365' for VGG16 is neither in the Keras cache nor downloadable.
    """
    backbone = backbones.get_backbone(backbone).name
    weights = check_weights(weights, backbone=backbone)
    if isinstance(weights, Path):
        return f"file {weights.name} sha1:{file_digest(weights, 'sha1')}"
    if weights == "random":
        return "random"
    if weights == "hed-bsds500":
        return f"hed-bsds500 sha1:{file_digest(hed_file(), 'sha1')}"
    if weights in ("imagenet", "places365") and backbone == "vgg16":
        return f"{weights} sha1:{file_digest(fetch(weights), 'sha1')}"
    if weights == "imagenet":
        # keras.applications downloads these itself; its version pins which file it fetches.
        return f"imagenet keras.applications {keras.__version__}"
    raise ValueError(f"Invalid `weights`. Expected one of {list(WEIGHT_SOURCES)} or a file. Received: {weights!r}")


def _check_indices(indices, n):
    """``indices`` as a 1-D int64 array of image indices of a dataset of ``n`` images; ValueError naming what is
    wrong otherwise (TensorFlow would fail later, inside the input pipeline, without saying which index)."""
    array = np.asarray(indices)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(
            f"Invalid `indices`. Expected a 1-D array of int image indices. Received shape {array.shape}, "
            f"dtype {array.dtype}."
        )
    outside = array[(array < 0) | (array >= n)]
    if outside.size:
        raise ValueError(
            f"Invalid `indices`. The dataset has {n} images (indices 0 to {n - 1}). Received out of range: "
            f"{outside[:5].tolist()}."
        )
    return array.astype(np.int64)


def _sha1_lines(lines):
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


def is_pooling(pooling):
    """Whether ``pooling`` names a pooling of these features: one of `POOLINGS` or 'grid<k>' (k >= 1)."""
    return pooling in POOLINGS or (isinstance(pooling, str) and bool(_GRID.match(pooling)))


def area_weights(size, cells):
    """float64 `(cells, size)`: row i averages the positions under cell i of ``cells`` equal cells, positions that
    straddle two cells counting in each by the fraction they overlap. Each row sums to 1."""
    edges = np.arange(cells + 1) * (size / cells)
    lo = np.maximum(edges[:-1, None], np.arange(size)[None, :])
    hi = np.minimum(edges[1:, None], np.arange(size)[None, :] + 1)
    return np.clip(hi - lo, 0, None) / (size / cells)


def area_average(x, rows, cols):
    """``x`` averaged over cells: `(n, i, j, c)` from `(n, h, w, c)` and the weights `(i, h)` of ``rows`` and
    `(j, w)` of ``cols`` (`area_weights`). Two batched matrix products, one per axis: a single einsum over both axes
    does not use BLAS and took most of the pixels floor's time."""
    n, h, w, c = x.shape
    by_rows = np.matmul(rows, x.reshape(n, h, w * c)).reshape(n * len(rows), w, c)
    return np.matmul(cols, by_rows).reshape(n, len(rows), len(cols), c)


def grid_pool(maps, cells):
    """Feature maps averaged over a ``cells`` x ``cells`` grid (by area, so any map size works), flattened in (row,
    column, channel) order. Returns float32 `(batch, cells * cells * c)` from `(batch, h, w, c)`."""
    _, h, w, _ = maps.shape
    pooled = area_average(maps, area_weights(h, cells).astype(np.float32), area_weights(w, cells).astype(np.float32))
    return pooled.reshape(len(maps), -1).astype(np.float32, copy=False)


def _pool(maps, pooling):
    """One vector per image from float32 `(batch, h, w, c)` maps. Returns float32 `(batch, d)`."""
    grid = _GRID.match(pooling) if isinstance(pooling, str) else None
    if grid:
        return grid_pool(maps, int(grid.group(1)))
    if pooling == "avg":
        return maps.mean(axis=(1, 2), dtype=np.float32)
    elif pooling == "max":
        return maps.max(axis=(1, 2))
    elif pooling == "flatten":
        return maps.reshape(len(maps), -1)
    elif pooling == "avgmax":  # as the conv head's `pool` layer: average then max, side by side
        return np.concatenate([_pool(maps, "avg"), _pool(maps, "max")], axis=1)
    else:
        raise ValueError(f"Invalid `pooling`. Expected one of {POOLING_NAMES}. Received: pooling={pooling!r}")


def check_poolings(poolings):
    """Validate a list of poolings (`is_pooling`). Returns a tuple of str, in the order given, without repeats."""
    if isinstance(poolings, str) or not poolings:
        raise ValueError(f"Invalid `poolings`. Expected a non-empty list of {POOLING_NAMES}. Received: {poolings!r}")
    if not all(is_pooling(p) for p in poolings):
        raise ValueError(
            f"Invalid `poolings`. Expected values in {POOLING_NAMES}. Received: poolings={list(poolings)!r}"
        )
    return tuple(dict.fromkeys(poolings))


class FeatureExtractor:
    """Feature vectors of one backbone layer under one weight source, cached on disk.

    The weights are checked (and downloaded if needed) when the extractor is made, so an unavailable source fails
    here, before any work.

    Args:
        backbone: str, a `streetlib.models.backbones.BACKBONES` name. Default 'vgg16'.
        weights: a `streetlib.models.weights.WEIGHT_SOURCES` name or a weights file path. Default 'random'.
        layer: str or None, the backbone layer read (e.g. 'block4_pool'). Default None: the backbone's output
            (``block5_pool`` for VGG16).
        image_size: None (each dataset's own size), int or (H, W): images are resized to it before the backbone.
        normalization: str or None, a `streetlib.data.pipeline.NORMALIZATIONS` mode. Default None: what the weights
            expect (`streetlib.models.weights.normalization_for`).
        init_seed: int, the Keras seed set before building random weights (ignored for pretrained ones). Default 0.
        batch_size: int, images per forward pass. Default 32. Does not change the features, so not in the key.

    Raises:
        WeightsDownloadError: pretrained weights that cannot be downloaded.
        ValueError: an unknown backbone, weights, normalisation or size.
    """

    def __init__(
        self,
        *,
        backbone="vgg16",
        weights="random",
        layer=None,
        image_size=None,
        normalization=None,
        init_seed=0,
        batch_size=32,
    ):
        self.backbone = backbones.get_backbone(backbone).name
        self.weights = check_weights(weights, backbone=self.backbone)
        self.normalization = pipeline.check_normalization(
            normalization or normalization_for(self.weights, self.backbone)
        )
        if image_size is not None:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
                raise ValueError(f"Invalid `image_size`. Expected None, an int or (H, W). Received: {image_size!r}")
            image_size = size
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Invalid `batch_size`. Expected an int >= 1. Received: batch_size={batch_size!r}")
        if not isinstance(init_seed, int):
            raise ValueError(f"Invalid `init_seed`. Expected an int. Received: init_seed={init_seed!r}")
        self.image_size = image_size
        self.init_seed = init_seed
        self.batch_size = batch_size
        self.fingerprint = weights_fingerprint(self.weights, backbone=self.backbone)
        self._layer = layer
        self._models = {}

    @property
    def weights_name(self):
        """str: the source name, or the weights file's name."""
        return self.weights.name if isinstance(self.weights, Path) else self.weights

    def size_for(self, data):
        """The (H, W) the backbone sees for ``data``."""
        return self.image_size or data.image_size

    def layer_name(self, data):
        """The name of the layer read (the backbone's output layer when ``layer`` is None). Returns str."""
        return self._model(self.size_for(data))[1]

    def _model(self, size):
        """The backbone cut at the layer, built once per input size: (`keras.Model`, layer name)."""
        if size not in self._models:
            if self.weights == "random":
                keras.utils.set_random_seed(self.init_seed)
            backbone = build_backbone(self.backbone, weights=self.weights, input_shape=(*size, 3))
            layer = backbone.layers[-1].name if self._layer is None else self._layer
            self._models[size] = (cut_backbone(backbone, layer, alternatives=(None,)), layer)
        return self._models[size]

    def extract(self, data, indices=None, *, poolings=("avg",), augment=None, seed=0, progress=True):
        """Run the backbone over images, without the cache.

        Args:
            data: `StreetData`.
            indices: int array of the images, default all, in that order.
            poolings: list of poolings (`is_pooling`); all come from one forward pass. Default ('avg',).
            augment: None (the images as they are), True (the original's augmentation) or a dict of
                `streetlib.data.pipeline.augmentation` arguments.
            seed: int, the augmentation seed.
            progress: bool, show a progress bar. Default True.

        Returns:
            dict pooling -> float32 `(len(indices), d)`: ``d = c`` for 'avg' and 'max', ``2 c`` for 'avgmax',
            ``h * w * c`` for 'flatten', ``k * k * c`` for 'grid<k>'.
        """
        poolings = check_poolings(poolings)
        indices = np.arange(len(data)) if indices is None else _check_indices(indices, len(data))
        size = self.size_for(data)
        model, layer = self._model(size)
        forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        dataset = pipeline.make_dataset(
            data,
            indices,
            batch_size=self.batch_size,
            training=bool(augment),
            augment=augment or False,
            shuffle=False,
            seed=seed,
            normalization=self.normalization,
            image_size=size,
        )
        chunks = {p: [] for p in poolings}
        bar = tqdm(
            total=len(indices),
            unit="img",
            disable=not progress,
            desc=f"{self.weights_name} {layer}" + (" augmented" if augment else ""),
        )
        for images, _ in dataset:
            maps = np.asarray(forward(images), dtype=np.float32)
            for p in poolings:
                chunks[p].append(_pool(maps, p))
            bar.update(len(maps))
        bar.close()
        return {p: np.concatenate(chunks[p]) for p in poolings}

    def key(self, data, *, pooling, images=None, split=None, copies=0, augment=True, seed=0):
        """The cache key of one feature array. Returns a dict of JSON-able fields; ``key["hash"]`` digests the rest.

        Args:
            data: `StreetData`.
            pooling: str, a pooling (`is_pooling`).
            images: None for plain features of every image, or the int indices of some images, in their order.
            split: None for plain features; a `streetlib.data.splits.Split` for augmented copies of its training
                images (then ``copies`` >= 1).
            copies, augment, seed: the augmented copies (see `augmented`).
        """
        if not is_pooling(pooling):
            raise ValueError(f"Invalid `pooling`. Expected one of {POOLING_NAMES}. Received: pooling={pooling!r}")
        key = {
            "version": CACHE_VERSION,
            "backbone": self.backbone,
            "weights": self.fingerprint,
            "init_seed": self.init_seed if self.weights == "random" else None,
            # Random initialisers and layer arithmetic may change between Keras versions.
            "keras": keras.__version__,
            "layer": self.layer_name(data),
            "pooling": pooling,
            "image_size": list(self.size_for(data)),
            "normalization": self.normalization,
            "dataset": data.name,
            "data_hash": _sha1_lines(data.content_hashes()),
        }
        if images is not None:
            # The data hash fixes every image's content, so the indices name the rows.
            key["images"] = {"count": len(images), "hash": _sha1_lines(str(i) for i in images)}
        if split is not None:
            hashes = data.content_hashes()
            key["augmentation"] = {
                "split_seed": split.seed,
                "train_hash": _sha1_lines(hashes[i] for i in split.train),
                "copies": copies,
                "settings": pipeline.DEFAULT_AUGMENTATION if augment is True else dict(sorted(augment.items())),
                "seed": seed,
            }
        key["hash"] = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return key

    def cache_path(self, key, *, cache_dir=None):
        """Where the array of ``key`` is cached: a ``.npy`` `Path` (its ``.json`` key file is beside it)."""
        height, width = key["image_size"]
        stem = f"{key['backbone']}-{self.weights_name}-{key['layer']}-{key['pooling']}-{height}x{width}"
        if "augmentation" in key:
            aug = key["augmentation"]
            stem += f"-aug{aug['copies']}-split{aug['split_seed']}-seed{aug['seed']}"
        return Path(cache_dir or paths.features_dir()) / key["dataset"] / f"{stem}-{key['hash'][:16]}.npy"

    def features(self, data, indices=None, *, poolings=("avg",), cache_dir=None, progress=True):
        """Features of images of ``data``, from the cache when its key matches, else extracted and cached.

        Poolings missing from the cache are extracted together in one pass. With every image (the default), index the
        arrays with a split's ``train`` / ``val`` / ``test``.

        Args:
            data: `StreetData`.
            indices: int array of the images, in that order; default (or every index in order) all, cached as such.
            poolings: list of poolings (`is_pooling`). Default ('avg',).
            cache_dir: str or Path. Default `streetlib.paths.features_dir()`.
            progress: bool, progress bar while extracting. Default True.

        Returns:
            dict pooling -> float32 `(len(indices), d)`.
        """
        if indices is not None:
            indices = _check_indices(indices, len(data))
            if np.array_equal(indices, np.arange(len(data))):
                indices = None
        images = None if indices is None else indices.tolist()
        keys = {p: self.key(data, pooling=p, images=images) for p in check_poolings(poolings)}
        return self._cached(
            keys,
            len(data) if indices is None else len(indices),
            cache_dir,
            lambda missing: self.extract(data, indices, poolings=missing, progress=progress),
        )

    def augmented(self, data, split, *, copies, augment=True, seed=0, poolings=("avg",), cache_dir=None, progress=True):
        """Features of ``copies`` augmented versions of a split's training images, cached like `features`.

        Copy ``c`` is augmented with seed ``seed + 1000 * c`` (as `training.train` does for its feature cache).

        Args:
            data: `StreetData`.
            split: `streetlib.data.splits.Split`; its ``train`` images are augmented, in that order.
            copies: int >= 1.
            augment: True (the original's augmentation, `streetlib.data.pipeline.DEFAULT_AUGMENTATION`) or a dict of
                `streetlib.data.pipeline.augmentation` arguments. Default True.
            seed: int. Default 0.
            poolings, cache_dir, progress: as in `features`.

        Returns:
            dict pooling -> float32 `(copies, len(split.train), d)`.
        """
        if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
            raise ValueError(f"Invalid `copies`. Expected an int >= 1. Received: copies={copies!r}")
        if augment is not True and not isinstance(augment, dict):
            raise ValueError(
                f"Invalid `augment`. Expected True or a dict of augmentation settings. Received: augment={augment!r}"
            )
        keys = {
            p: self.key(data, pooling=p, split=split, copies=copies, augment=augment, seed=seed)
            for p in check_poolings(poolings)
        }

        def compute(missing):
            runs = [
                self.extract(
                    data, split.train, poolings=missing, augment=augment, seed=seed + 1000 * c, progress=progress
                )
                for c in range(copies)
            ]
            return {p: np.stack([run[p] for run in runs]) for p in missing}

        return self._cached(keys, copies * len(split.train), cache_dir, compute)

    def _cached(self, keys, n, cache_dir, compute):
        """Read each key's array from the cache, compute the missing ones together, write them. ``n`` is the
        number of vectors an array must hold."""
        out, missing = {}, []
        for pooling, key in keys.items():
            array = read_cache(self.cache_path(key, cache_dir=cache_dir), key)
            if array is not None and int(np.prod(array.shape[:-1])) == n:
                out[pooling] = array
            else:
                missing.append(pooling)
        if missing:
            for pooling, array in compute(missing).items():
                write_cache(self.cache_path(keys[pooling], cache_dir=cache_dir), keys[pooling], array)
                out[pooling] = array
        return {p: out[p] for p in keys}


def read_cache(path, key):
    """The cached array at ``path`` if its ``.json`` holds exactly ``key``, else None (missing or stale).

    Returns:
        float32 array or None.
    """
    path = Path(path)
    meta = path.with_suffix(".json")
    if not (path.is_file() and meta.is_file()):
        return None
    if json.loads(meta.read_text()).get("key") != key:
        return None
    return np.load(path, allow_pickle=False)


def write_cache(path, key, array):
    """Write ``array`` to ``path`` (``.npy``) and its key to the ``.json`` beside it, each atomically; the key is
    written last, so an interrupted write leaves no key that vouches for a partial array."""
    path = Path(path)
    path.with_suffix(".json").unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        np.save(tmp, np.asarray(array, dtype=np.float32))
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"key": key, "shape": list(array.shape), "dtype": "float32"}, indent=1))
    return path
