"""Reproducible train / validation / test splits, keyed by image content.

A split is stratified per class and seeded, and saved to ``data/splits/<dataset>-seed<N>.json`` as lists of content
hashes (not indices), so the same split comes back on any machine and whatever order the files were listed in.
Identical images (same hash) always land in the same split; they are reported, never counted twice.

The hashes are of the images before any resize (`StreetData.split_keys`): a Street10 file's arrays, an image
folder's photos at their own size. So a split made at one image size (``streetlib data split`` loads folders at
224 px) holds at any other size and resize policy. Split files of image folders written before this keyed the
pixels at the size they were loaded at; they are still accepted at that size.

A synthetic dataset drawn as R independent replicates (`streetlib.data.synth`) gives the split of seed ``s`` the
images of replicate ``s mod R`` only (`Split.pool`): R consecutive seeds then use disjoint images, train and test.

Sizes follow scikit-learn's ``train_test_split``, which the original study used per class: the test set takes
``ceil(test_size * n)`` of a class, validation ``ceil(val_size * rest)``. On Street10 that gives the original's
3166 / 564 / 421 images.
"""

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streetlib import paths
from streetlib.paths import atomic_path

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """Index arrays into a `StreetData`.

    Attributes:
        train, val, test: int64 index arrays, sorted.
        seed: int.
        test_size, val_size: float fractions.
        path: Path of the saved split file, or None.
        duplicates: list of lists of int: groups of indices holding identical images (each group in one split).
        cross_class_duplicates: the groups among ``duplicates`` whose images carry different classes.
        pool: int64 index array, sorted: the images the split was drawn from (every image, or one replicate's).
        replicate: int or None, the replicate of ``pool`` (None for a dataset drawn once).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    seed: int
    test_size: float
    val_size: float
    path: Path = None
    duplicates: list = field(default_factory=list)
    cross_class_duplicates: list = field(default_factory=list)
    pool: np.ndarray = None
    replicate: int = None

    def __getitem__(self, name):
        if name not in SPLIT_NAMES:
            raise KeyError(f"Unknown split {name!r}. Expected one of {SPLIT_NAMES}.")
        return getattr(self, name)

    def table(self, data):
        """Images per class and split: a pandas DataFrame indexed by class, columns train/val/test/total."""
        import pandas as pd

        rows = {s: np.bincount(data.city[self[s]], minlength=data.spec.num_classes) for s in SPLIT_NAMES}
        df = pd.DataFrame(rows, index=pd.Index(data.spec.classes, name="class"))
        df["total"] = df.sum(axis=1)
        df.loc["all"] = df.sum()
        return df


def _check_fraction(value, name):
    if not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"Invalid `{name}`. Expected a float in (0, 1). Received: {name}={value!r}")


def _groups(hashes, pool):
    """Groups of the images ``pool`` (indices into ``hashes``) with identical content, as {hash: [indices]} in
    first-seen order."""
    groups = {}
    for i in pool.tolist():
        groups.setdefault(hashes[i], []).append(i)
    return groups


def pool_of(data, seed):
    """The images the split of ``seed`` draws from: (sorted int64 indices, replicate or None). Every image, or for
    a dataset drawn as R replicates (``data.replicate``) those of replicate ``seed mod R``."""
    if data.replicate is None:
        return np.arange(len(data), dtype=np.int64), None
    replicate = int(seed) % data.replicates
    return np.flatnonzero(data.replicate == replicate).astype(np.int64), replicate


def _part_sizes(n, test_size, val_size):
    """(test, val, train) sizes of a class of ``n`` distinct images, as scikit-learn's ``train_test_split``."""
    n_test = math.ceil(test_size * n)
    n_val = math.ceil(val_size * (n - n_test))
    return n_test, n_val, n - n_test - n_val


def _check_class_size(name, n, test_size, val_size):
    """Raise ValueError if a class of ``n`` distinct images would get no training image (it could not be learned).

    Test and validation sizes round up, so every class with a training image also has a test and a validation one.
    """
    n_test, n_val, n_train = _part_sizes(n, test_size, val_size)
    if n_train > 0:
        return
    # Train size never shrinks as n grows, so the first n with a training image is the minimum.
    least = next(m for m in range(n + 1, 2**31) if _part_sizes(m, test_size, val_size)[2] > 0)
    raise ValueError(
        f"Class {name!r} has {n} distinct images: with test_size={test_size}, val_size={val_size} it gets {n_test} "
        f"test, {n_val} val and 0 train. Each class needs at least {least} images for these fractions: add images, "
        f"drop the class from the class spec, or lower test_size/val_size."
    )


def _assign(data, groups, *, seed, test_size, val_size):
    """Assign each content hash to a split: per class (the class of its first image), seeded, in hash order."""
    by_class = {}
    for h, members in groups.items():
        by_class.setdefault(int(data.city[members[0]]), []).append(h)
    assignment = {}
    for cls in sorted(by_class):
        hashes = sorted(by_class[cls])
        name = data.spec.classes[cls]
        _check_class_size(name, len(hashes), test_size, val_size)
        # One generator per class, seeded by (seed, class name): adding a class never reshuffles another.
        name_key = int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")
        order = np.random.default_rng([seed, name_key]).permutation(len(hashes))
        n_test, n_val, _ = _part_sizes(len(hashes), test_size, val_size)
        for rank, j in enumerate(order):
            assignment[hashes[j]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return assignment


def split_path(data, seed, directory=None):
    """Where the split of ``data`` for ``seed`` is saved: ``<directory>/<dataset>-seed<N>.json``."""
    return Path(directory or paths.splits_dir()) / f"{data.name}-seed{seed}.json"


def make_split(data, *, seed=42, test_size=0.10, val_size=0.15, directory=None, save=True):
    """Make (or reload) the stratified split of ``data`` for one seed.

    Args:
        data: `StreetData`.
        seed: int, default 42 (the original study's).
        test_size: float in (0, 1), fraction of each class for test. Default 0.10.
        val_size: float in (0, 1), fraction of the rest for validation. Default 0.15.
        directory: where split files live. Default ``data/splits/``.
        save: bool. If True (default), reuse the saved split when present, else save the new one.

    Returns:
        `Split`.

    Raises:
        ValueError: a saved split was made with other fractions, or does not match the data's content; or (a new
            split) a class has too few images to give it a training image.
    """
    _check_fraction(test_size, "test_size")
    _check_fraction(val_size, "val_size")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"Invalid `seed`. Expected an int. Received: seed={seed!r}")
    path = split_path(data, seed, directory)
    pool, replicate = pool_of(data, seed)
    if save and path.is_file():
        groups, assignment = _read_split(path, data, pool, test_size=test_size, val_size=val_size)
    else:
        groups = _groups(data.split_keys(), pool)
        assignment = _assign(data, groups, seed=seed, test_size=test_size, val_size=val_size)
    index = {s: [] for s in SPLIT_NAMES}
    for h, members in groups.items():
        index[assignment[h]] += members
    duplicates = [m for m in groups.values() if len(m) > 1]
    split = Split(
        *(np.array(sorted(index[s]), dtype=np.int64) for s in SPLIT_NAMES),
        seed=int(seed),
        test_size=test_size,
        val_size=val_size,
        path=path if save else None,
        duplicates=duplicates,
        cross_class_duplicates=[m for m in duplicates if len(set(data.city[m].tolist())) > 1],
        pool=pool,
        replicate=replicate,
    )
    if save and not path.is_file():
        _write_split(split, data, groups, assignment)
    return split


def make_splits(data, *, seeds, **kwargs):
    """`make_split` for each seed in ``seeds`` (repeated experiments). Returns a list of `Split`."""
    return [make_split(data, seed=s, **kwargs) for s in seeds]


def balanced_subset(indices, labels, count, *, seed=0):
    """At most ``count`` of ``indices``, in an order where every prefix is balanced across classes.

    A split's indices are in dataset order, which for a class-major dataset means class by class: their first ``k``
    hold only the first classes. Here each class's indices are shuffled (seeded), then taken in turn, one per class,
    so any prefix (the first ``k`` images a costly step uses) has each class within one image of the others while
    they last.

    Args:
        indices: int `(n,)`, e.g. ``split.test``.
        labels: int `(n,)`, the class of each of ``indices`` (e.g. ``data.city[split.test]``).
        count: int >= 1, how many to keep (all if fewer).
        seed: int, for the shuffles. Default 0.

    Returns:
        int64 `(min(count, n),)`, a subset of ``indices``.
    """
    indices, labels = np.asarray(indices, dtype=np.int64), np.asarray(labels)
    if labels.shape != indices.shape:
        raise ValueError(f"`labels` must have shape {indices.shape} to match `indices`. Received {labels.shape}.")
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"Invalid `count`. Expected an int >= 1. Received: count={count!r}")
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(indices[labels == c]) for c in np.unique(labels)]
    # Position j of every class before position j + 1 of any: a stable sort on the position within the class.
    position = np.concatenate([np.arange(len(members)) for members in per_class])
    order = np.argsort(position, kind="stable")
    return np.concatenate(per_class)[order][:count]


def _write_split(split, data, groups, assignment):
    files = data.files or [str(i) for i in range(len(data))]
    doc = {
        "dataset": data.name,
        "classes": list(data.spec.classes),
        "seed": split.seed,
        "replicate": split.replicate,
        "test_size": split.test_size,
        "val_size": split.val_size,
        "counts": {s: int(len(split[s])) for s in SPLIT_NAMES},
        "hashes": {s: sorted(h for h, a in assignment.items() if a == s) for s in SPLIT_NAMES},
        "duplicates": [[files[i] for i in m] for m in split.duplicates],
    }
    with atomic_path(split.path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))


def _read_split(path, data, pool, *, test_size, val_size):
    """The groups of identical images of ``data`` and the saved split's assignment of their hashes.

    Returns:
        (groups, assignment): ``{hash: [indices]}`` and ``{hash: split name}``.
    """
    doc = json.loads(Path(path).read_text())
    if (doc["test_size"], doc["val_size"]) != (test_size, val_size):
        raise ValueError(
            f"Saved split {path} was made with test_size={doc['test_size']}, val_size={doc['val_size']}, not "
            f"test_size={test_size}, val_size={val_size}. Pass the saved fractions, another seed, or another directory."
        )
    assignment = {h: s for s in SPLIT_NAMES for h in doc["hashes"][s]}
    groups = _groups(data.split_keys(), pool)
    unknown = [h for h in groups if h not in assignment]
    if not unknown:
        return groups, assignment
    cause = "the data changed"
    if data.source_hashes is not None:
        # An image folder's split file from before source keys holds the pixels at the size it was made at.
        resized = _groups(data.content_hashes(), pool)
        if all(h in assignment for h in resized):
            return resized, assignment
        cause += ", or an older streetlib made the file at another image size: load the folder at that size"
    raise ValueError(
        f"Saved split {path} does not match dataset {data.name!r}: {len(unknown)} of its images are not in the "
        f"split file ({cause}). Delete {path.name} to make a new split, or give the dataset a new name."
    )
