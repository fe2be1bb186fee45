"""The feature cache: a frozen part's output computed once and trained on instead of the images.

With a frozen backbone (or frozen blocks), the frozen part's output is the same every epoch: it is computed once and
only the rest of the network trains on it. Without augmentation this gives the same numbers as training the whole
model; with augmentation, K augmented copies are cached (epoch ``e`` sees copy ``e mod K``). Without augmentation an
image's features do not depend on the split either: a `FeatureStore` passed to several runs computes the frozen part's
output once for every image of the dataset and serves each run's split from it, so the runs of several seeds,
configurations or a continued run share one pass. A run's own cache is held in memory when it fits
``ExecutionConfig.max_cache_bytes``, else written to a folder (`scratch_folder`) and read a batch at a time from a
memory map, so host memory stays bounded (fine-tuning above ``block4_pool`` at 224 px caches 401,408 bytes per image).
A run's own cache can also be kept on disk for later runs and processes (``keep``, `ExecutionConfig.feature_dir`):
a transfer run continued in another notebook (question 2's control) then reads its augmented copies instead of
computing them again.
"""

import hashlib
import inspect
import json
import math
import shutil
import weakref
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from streetlib import paths
from streetlib.data import pipeline
from streetlib.models.network import split_model
from streetlib.training.manifest import data_hash


@contextmanager
def scratch_folder(path):
    """A folder path whose contents last only while the block runs (one left by a killed run is removed first).
    Yields the `Path`; the folder is not created."""
    remove_folder(path)
    try:
        yield Path(path)
    finally:
        remove_folder(path)


def remove_folder(path):
    """Delete the folder ``path`` and its contents, if it exists."""
    if Path(path).exists():
        shutil.rmtree(path)


def plan_cache(cache, model, *, through, augment, copies, n_train, n_val, max_bytes, directory):
    """Decide whether to train on cached features of the frozen part, and where to keep them.

    The cache is held in memory when it fits ``max_bytes``; otherwise it is written to ``directory`` and read a batch
    at a time (host memory stays bounded) when the disk there has room for it; otherwise ``cache='auto'`` trains
    without a cache.

    Args:
        cache: a `streetlib.training.config.CACHE_MODES` value.
        model: the full `keras.Model`.
        through: str or None, the layer the model is frozen through.
        augment: bool, whether training images are augmented (then ``copies`` augmented copies are cached).
        copies: int, augmented copies to cache when augmenting.
        n_train, n_val: int, training and validation images.
        max_bytes: int, the largest cache held in memory, in bytes (`ExecutionConfig.max_cache_bytes`).
        directory: str or Path, the folder a disk cache goes to.

    Returns:
        dict, the decision as the manifest states it: ``mode`` ('features' or 'none'), ``store`` ('memory', 'disk'
        or None), ``copies`` (int, augmented copies cached), ``bytes`` (int, the cache size: float32 features of
        ``copies * n_train + n_val`` images), ``path`` (str, the disk cache's folder as `streetlib.paths.portable`
        writes it, else None) and ``reason`` (str, one line).

    Raises:
        ValueError: ``cache='features'`` with nothing frozen, or a frozen part that does not split off.
        OSError: ``cache='features'`` and the cache fits neither ``max_bytes`` nor the free disk space.
    """
    if cache == "none":
        return _plan("none", reason="cache='none'")
    if through is None:
        if cache == "features":
            raise ValueError("cache='features' needs a frozen part, but this phase trains every layer.")
        return _plan("none", reason="nothing is frozen")
    try:
        frozen, _ = split_model(model, through=through)
    except ValueError as err:
        if cache == "features":
            raise
        return _plan("none", reason=str(err))
    copies = copies if augment else 1
    size = (copies * n_train + n_val) * feature_bytes(frozen)
    what = f"{copies} augmented copies of the frozen part's output" if augment else "no augmentation: exact"
    if size <= max_bytes:
        return _plan("memory", copies, size, reason=f"{what}; in memory: {size} bytes <= max_cache_bytes={max_bytes}")
    free = _free_bytes(directory)
    if size <= free:
        reason = f"{what}; on disk: {size} bytes > max_cache_bytes={max_bytes}, and {free} bytes are free there"
        return _plan("disk", copies, size, path=paths.portable(directory), reason=reason)
    line = (
        f"a {copies}-copy feature cache needs {size} bytes: more than max_cache_bytes={max_bytes} in memory and "
        f"than the {free} bytes free on the disk of {directory}"
    )
    if cache == "features":
        raise OSError(f"cache='features' cannot be kept: {line}. Free disk space there, or pass cache='auto'.")
    return _plan("none", reason=line)


def _plan(store, copies=0, size=0, *, path=None, reason):
    """A `plan_cache` decision: store 'memory', 'disk' or 'none'."""
    mode = "none" if store == "none" else "features"
    return {
        "mode": mode,
        "store": None if store == "none" else store,
        "copies": copies,
        "bytes": size,
        "path": path,
        "reason": reason,
    }


def feature_bytes(frozen):
    """Bytes of one image's cached features: the frozen part's output in float32. Returns int."""
    return int(np.prod(frozen.output.shape[1:])) * 4


def _free_bytes(directory):
    """Free bytes on the disk that holds ``directory``, or would hold it (its nearest existing parent). Returns int."""
    directory = Path(directory).resolve()
    while not directory.exists():
        directory = directory.parent
    return shutil.disk_usage(directory).free


def training_datasets(data, split, model, plan, config, *, initial_epoch, directory, store=None, keep=None):
    """The datasets a run fits on: its images, or the cached output of its frozen part as ``plan`` says.

    Args:
        data: `StreetData`.
        split: `streetlib.data.splits.Split` (train and val are used).
        model: the full `keras.Model`.
        plan: dict, the run's `plan_cache` decision.
        config: `streetlib.training.config.RunConfig` (batch size, augmentation, seed, normalisation, image size,
            frozen layer).
        initial_epoch: int, the epoch a resumed run starts at (several augmented copies continue their sequence).
        directory: str or Path, where a disk cache goes.
        store: a `FeatureStore` or None: when it holds the dataset's features (one copy, no augmentation), the run
            is served from it instead of caching its own split.
        keep: str, Path or None: a folder where a run caching its own split keeps the cache for later runs
            (`kept_split_features`); None (default): the cache lasts while the run trains.

    Returns:
        (the cache plan as carried out (the store's when it served the run; with ``keep``, where the kept cache is
        and whether it was read), (train `tf.data.Dataset`, validation
        `tf.data.Dataset`, steps per epoch or None, the `keras.Model` to fit: the trainable rest on cached features,
        else ``model``)).
    """
    batch_size, augment, seed = config.batch_size, config.augment, config.seed
    common = {"batch_size": batch_size, "normalization": config.input_normalization, "image_size": config.image_size}
    if plan["mode"] == "none":
        val_images = pipeline.make_dataset(data, split.val, training=False, **common)
        train = pipeline.make_dataset(data, split.train, training=True, augment=augment, seed=seed, **common)
        return plan, (train, val_images, None, model)
    frozen, rest = split_model(model, through=config.frozen_through)
    pool = np.arange(len(data)) if split.pool is None else split.pool
    if plan["copies"] == 1 and store is not None and store.fits(frozen, pool):
        every = store.features(frozen, data, pool, **common)[None]  # one copy: (1, len(pool), ...)
        plan = store.plan(frozen, pool)
        train_features = val_features = every
        train_rows, val_rows = np.searchsorted(pool, split.train), np.searchsorted(pool, split.val)
    elif keep is not None:
        plan, (train_features, val_features) = kept_split_features(data, split, frozen, plan, config, keep, directory)
        train_rows = val_rows = None
    else:
        train_features, val_features = _split_features(data, split, frozen, plan, config, directory)
        train_rows = val_rows = None
    labels = {"val": _labels(data, split.val), "train": _labels(data, split.train)}
    val = _feature_dataset(
        val_features, labels["val"], batch_size=batch_size, shuffle=False, seed=seed, initial_epoch=0, rows=val_rows
    )
    train = _feature_dataset(
        train_features,
        labels["train"],
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        initial_epoch=initial_epoch,
        rows=train_rows,
    )
    steps = math.ceil(len(split.train) / batch_size) if plan["copies"] > 1 else None
    return plan, (train, val, steps, rest)


def _split_features(data, split, frozen, plan, config, directory):
    """This run's own cache: the frozen part's output on its K training copies and on its validation images, in
    memory or in ``directory`` as ``plan`` says. Returns (train `(K, n_train, ...)`, val `(1, n_val, ...)`)."""
    batch_size, augment, seed = config.batch_size, config.augment, config.seed
    common = {"batch_size": batch_size, "normalization": config.input_normalization, "image_size": config.image_size}
    val_images = pipeline.make_dataset(data, split.val, training=False, **common)
    copies = [
        pipeline.make_dataset(
            data,
            split.train,
            training=bool(augment),
            augment=augment or False,
            shuffle=False,
            seed=seed + 1000 * c,
            **common,
        )
        for c in range(plan["copies"])
    ]
    folder = directory if plan["store"] == "disk" else None
    where = {"batch_size": batch_size, "directory": folder}
    train_features = extract_features(frozen, copies, size=len(split.train), name="train", **where)
    val_features = extract_features(frozen, [val_images], size=len(split.val), name="val", **where)
    return train_features, val_features


def kept_split_features(data, split, frozen, plan, config, folder, directory):
    """A run's own cache (`_split_features`) kept in ``folder`` for later runs: read from there when a run with the
    same key (`split_key`) wrote it, else computed and written there (to a temporary folder renamed when complete, so
    a killed run leaves no cache that looks whole). Read memory-mapped, a batch at a time.

    A folder without room for the cache (the plan's bytes) keeps nothing: the run caches its split as ``plan`` says
    (a disk cache in ``directory``), and the plan's reason says why.

    Returns:
        (the plan as carried out: ``store`` 'disk', ``path`` the kept cache and ``kept`` 'read' or 'written'; or
        ``plan`` with the reason it kept nothing), (train `(K, n_train, ...)`, val `(1, n_val, ...)`).
    """
    folder = Path(folder)
    kept = folder / split_key(data, split, frozen, plan, config)
    done = "read"
    if not (kept / "val.npy").is_file():
        free = _free_bytes(folder)
        if plan["bytes"] > free:
            reason = f"{plan['reason']}; not kept in {paths.portable(folder)}: only {free} bytes are free there"
            return plan | {"reason": reason}, _split_features(data, split, frozen, plan, config, directory)
        with scratch_folder(kept.with_name(f"{kept.name}.partial")) as partial:
            _split_features(data, split, frozen, plan | {"store": "disk"}, config, partial)
            partial.rename(kept)
        done = "written"
    features = tuple(np.load(kept / f"{name}.npy", mmap_mode="r") for name in ("train", "val"))
    reason = f"{plan['reason']}; kept on disk instead, for later runs ({done} here)"
    return plan | {"store": "disk", "path": paths.portable(kept), "kept": done, "reason": reason}, features


def split_key(data, split, frozen, plan, config):
    """What a run's own cache depends on, as one SHA-1 hex str: the frozen part and the dataset (`frozen_key`), the
    split's training and validation images, the copies, the augmentation and its seeds, the batch size, and the code
    and versions that compute them (the input pipeline's source, TensorFlow's and Keras's versions)."""
    key = frozen_key(frozen, data, normalization=config.input_normalization, image_size=config.image_size)
    h = hashlib.sha1(key.encode())
    for indices in (split.train, split.val):
        h.update(np.asarray(indices, dtype=np.int64).tobytes())
    settings = [plan["copies"], config.augment, config.seed, config.batch_size, tf.__version__, keras.__version__]
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(inspect.getsource(pipeline).encode())
    return h.hexdigest()


class FeatureStore:
    """The frozen part's output for every image a split draws from, computed once and shared by every run whose frozen
    part computes the same thing: the runs of several split seeds, of several configurations, a run continued later.

    Without augmentation an image's features do not depend on the split, so one pass over a split's pool (every image
    of the dataset, test images included, a tenth more than one run needs; or one replicate's, `Split.pool`) serves
    every split drawn from it. An entry is found by `frozen_key`: the frozen part's layers and weight values (two seeds
    of pretrained weights share one; random weights drawn per seed do not), the images' normalisation and size, the
    dataset's content, and the pool. Entries are held in memory, at most ``max_bytes`` in all: the least recently used
    one is dropped to make room. A pool whose features alone exceed ``max_bytes`` is not stored (`fits`): its runs
    cache their own split (in memory or on disk, `plan_cache`).

    Args:
        max_bytes: int >= 0, the memory the entries may take, in bytes (`ExecutionConfig.max_cache_bytes`).

    Attributes:
        extractions: int, the passes over a pool this store has made.
    """

    def __init__(self, max_bytes):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise ValueError(f"Invalid `max_bytes`. Expected an int >= 0. Received: max_bytes={max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self.extractions = 0
        self._entries = {}  # key -> float32 array (len(pool), ...), least recently used first

    def fits(self, frozen, pool):
        """Whether the frozen part's features of the images ``pool`` (int indices) fit the store. Returns bool."""
        return len(pool) * feature_bytes(frozen) <= self.max_bytes

    def plan(self, frozen, pool):
        """The manifest's ``cache_plan`` of a run served by this store (as `plan_cache` states its own)."""
        size = len(pool) * feature_bytes(frozen)
        reason = (
            f"no augmentation: exact; the frozen part's output on the {len(pool)} images the split draws from, "
            f"computed once and shared by the runs of one FeatureStore: {size} bytes <= "
            f"max_cache_bytes={self.max_bytes}"
        )
        return _plan("memory", 1, size, reason=reason) | {"shared": True}

    def features(self, frozen, data, pool, *, normalization, image_size, batch_size):
        """The frozen part's output for the images ``pool`` of ``data``, in pool order, computed on the first request.

        Args:
            frozen: `keras.Model`, the frozen part (`streetlib.models.network.split_model`).
            data: `StreetData`.
            pool: sorted int array, the images (`streetlib.data.splits.Split.pool`).
            normalization: str, the images' normalisation (the run's ``input_normalization``).
            image_size: int, the size images are fed at.
            batch_size: int, the images per forward pass of an extraction (does not change the features).

        Returns:
            float32 array `(len(pool), *feature_shape)`, shared: do not write to it.
        """
        pool = np.asarray(pool, dtype=np.int64)
        key = frozen_key(frozen, data, normalization=normalization, image_size=image_size)
        key += hashlib.sha1(pool.tobytes()).hexdigest()
        if key in self._entries:
            self._entries[key] = self._entries.pop(key)  # now the most recently used
            return self._entries[key]
        images = pipeline.make_dataset(
            data, pool, batch_size=batch_size, training=False, normalization=normalization, image_size=image_size
        )
        array = extract_features(frozen, [images], size=len(pool), batch_size=batch_size)[0]
        self.extractions += 1
        array.flags.writeable = False
        while self._entries and sum(a.nbytes for a in self._entries.values()) + array.nbytes > self.max_bytes:
            self._entries.pop(next(iter(self._entries)))
        self._entries[key] = array
        return array


def frozen_key(frozen, data, *, normalization, image_size):
    """What a frozen part's features of a dataset depend on, as one SHA-1 hex str: every layer's class and
    configuration (names aside: each run names its model), every weight's values, the normalisation, the image size
    and the dataset's content (`data_hash`)."""
    h = hashlib.sha1()
    for layer in frozen.layers:
        config = {k: v for k, v in layer.get_config().items() if k not in ("name", "trainable")}
        h.update(type(layer).__name__.encode())
        h.update(json.dumps(config, sort_keys=True, default=str).encode())
    for weight in frozen.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(value.tobytes())
    h.update(json.dumps([normalization, image_size, data_hash(data)]).encode())
    return h.hexdigest()


CHUNK_BYTES = 2**27  # features computed per `predict` call: what extraction holds in memory beyond the model's own


def extract_features(frozen, datasets, *, size, batch_size, directory=None, name="features"):
    """Run the frozen part once over K datasets of the same images (K augmented copies), a chunk at a time.

    In memory or on disk, the features are computed by the same calls on the same batches, so the two stores hold
    the same numbers.

    Args:
        frozen: `keras.Model`, the frozen part.
        datasets: list of K finite `tf.data.Dataset`s of ``(images, labels)`` batches, ``size`` images each.
        size: int, the images per dataset.
        batch_size: int, the datasets' batch size (the frozen part sees batches of this size, as it did in them).
        directory: None to return the features in memory; a folder to write them to ``<directory>/<name>.npy``
            and return them memory-mapped read-only, so host memory holds one chunk (about `CHUNK_BYTES`) of them.
        name: str, the file's name without ``.npy``.

    Returns:
        float32 array, or read-only `numpy.memmap`, `(K, size, *feature_shape)`.

    Raises:
        RuntimeError: a dataset yields another number of images than ``size``.
    """
    shape = (len(datasets), size, *frozen.output.shape[1:])
    if directory is None:
        features = np.empty(shape, np.float32)
        for k, dataset in enumerate(datasets):
            start = 0
            for chunk in _feature_chunks(frozen, dataset, size, batch_size):
                features[k, start : start + len(chunk)] = chunk
                start += len(chunk)
        return features
    path = Path(directory) / f"{name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Plain writes, not a writable memory map: written pages then belong to the OS's file cache, not the process.
    with open(path, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(f, header)
        for dataset in datasets:
            for chunk in _feature_chunks(frozen, dataset, size, batch_size):
                chunk.astype("<f4", copy=False).tofile(f)
    return np.load(path, mmap_mode="r")


def _feature_chunks(frozen, dataset, size, batch_size):
    """The frozen part's float32 output over a dataset's images, in chunks of whole batches of about `CHUNK_BYTES`.

    Yields float32 arrays `(chunk, *feature_shape)`; checks that they add up to ``size`` images.
    """
    images = dataset.map(pipeline.images_only)
    batches = max(1, CHUNK_BYTES // (feature_bytes(frozen) * batch_size))
    done = 0
    for chunk in images.unbatch().batch(batches * batch_size):
        # predict splits the chunk into the dataset's own batches, so each image meets the same kernels as before.
        out = np.asarray(frozen.predict(chunk, batch_size=batch_size, verbose=0), dtype=np.float32)
        done += len(out)
        yield out
    if done != size:
        raise RuntimeError(f"The frozen part's features cover {done} images, expected {size}.")


def _labels(data, indices):
    """int32 labels per output, as `streetlib.data.pipeline.make_dataset` feeds them. Returns dict output -> `(n,)`."""
    return {name: values.astype(np.int32) for name, values in data.labels(indices).items()}


def _feature_dataset(features, labels, *, batch_size, shuffle, seed, initial_epoch, rows=None):
    """Batches of cached features with their labels.

    ``features`` is a float32 array or read-only memory map `(copies, m, ...)`: only each batch's rows are read from
    it, so a cache on disk is never loaded whole. ``rows`` (int `(n,)`, default ``0..m-1``) are the rows that make
    the dataset, in order (a split's images in a `FeatureStore`'s whole-dataset array); ``labels`` follow them.

    One copy: a finite dataset shuffled exactly as `streetlib.data.pipeline.make_dataset` shuffles the images, so the
    cached path sees the same batches as the plain one. Several copies: an endless dataset where epoch ``e`` is copy
    ``e mod K`` in an order drawn from ``(seed, e)`` (fit with ``steps_per_epoch``); it starts at ``initial_epoch``,
    so a resumed run continues the same sequence.
    """
    n_copies, n = features.shape[0], features.shape[1] if rows is None else len(rows)
    shape = features.shape[2:]
    label_tensors = {k: tf.constant(v) for k, v in labels.items()}
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    # TensorFlow keeps a numpy_function's Python function for the rest of the process (deleting the dataset does not
    # remove it from its registry), so a function holding the cache would keep every run's features alive: 786 MB
    # a seed at block1_pool on 3,000 images at 64 px, 13 GB after notebook 03's sixteen runs of the 64-px demo. The
    # function holds the cache weakly and the dataset returned holds it (`_hold`): it is freed with the dataset.
    cached = weakref.ref(features)

    def take(copy, positions):
        return cached()[copy][rows[positions]]

    def gather(copy, positions):
        # numpy_function keeps the (possibly large) cache out of the graph.
        x = tf.numpy_function(take, [copy, positions], tf.float32, stateful=False)
        x = tf.ensure_shape(x, (None, *shape))
        return x, {k: tf.gather(v, positions) for k, v in label_tensors.items()}

    def gather_first(positions):
        return gather(tf.constant(0, tf.int64), positions)

    positions = tf.data.Dataset.from_tensor_slices(np.arange(n, dtype=np.int64))
    if n_copies == 1:
        if shuffle:
            positions = positions.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = positions.batch(batch_size).map(gather_first)
        return _hold(ds.prefetch(tf.data.AUTOTUNE), features)

    def epoch(e):
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), e]))
            order = tf.gather(order, tf.argsort(keys))
        copy = e % n_copies

        def gather_copy(positions):
            return gather(copy, positions)

        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size).map(gather_copy)

    return _hold(tf.data.Dataset.range(initial_epoch, 2**62).flat_map(epoch).prefetch(tf.data.AUTOTUNE), features)


def _hold(dataset, features):
    """``dataset``, holding ``features`` for as long as it lives (its numpy_function holds them weakly)."""
    dataset._cached_features = features
    return dataset
