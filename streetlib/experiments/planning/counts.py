"""The images a run would load, counted without loading them: from `.npy` headers, image files, or what the
parameters say when the dataset is not there yet; and the split sizes `make_split` would give them."""

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streetlib.classes import STREET10, STREET10_COUNTS, SYNTH10
from streetlib.data import loaders
from streetlib.data.images import IMAGE_EXTENSIONS
from streetlib.data.splits import _part_sizes, make_split


@dataclass(frozen=True)
class DataCounts:
    """The images a run would load, counted without loading them.

    Attributes:
        path: Path of the dataset.
        counts: dict class name -> int images.
        image_shape: (H, W) of the images as stored (the run holds them as uint8 at this size).
        assumed: bool, True when the counts come from the parameters, not from files.
        note: str, one line saying where the counts come from.
        replicates: int, the independent draws a synthetic dataset holds (each split uses one, `make_split`).
    """

    path: Path
    counts: dict
    image_shape: tuple
    assumed: bool
    note: str
    replicates: int = 1

    @property
    def total(self):
        return sum(self.counts.values())

    @property
    def pool(self):
        """The images one split draws from: all of them, or one replicate's. Returns int."""
        return self.total // self.replicates

    def split_sizes(self):
        """Images per split as `make_split` sizes them (per class, test then validation rounding up): dict
        'train', 'val', 'test' -> int. Identical images, kept together by `make_split`, are counted apart."""
        defaults = inspect.signature(make_split).parameters
        test_size, val_size = defaults["test_size"].default, defaults["val_size"].default
        per_split = [n // self.replicates for n in self.counts.values()]
        parts = np.array([_part_sizes(n, test_size, val_size) for n in per_split]).sum(axis=0)
        return {"train": int(parts[2]), "val": int(parts[1]), "test": int(parts[0])}


def count_images(path, *, source="street10", classes=None, per_class=100, image_size=224, replicates=1):
    """Count a dataset's images per class without loading them.

    A folder of ``<class>.npy`` files (Street10 format) is counted from the arrays' headers (memory-mapped, never
    read); an image folder from its image files per class. A missing dataset is planned with what the parameters say:
    ``per_class`` images of each of the 10 synthetic classes for ``source='synth'``, Street10's published 4,151 images
    otherwise, marked as assumed.

    Args:
        path: str or Path of the dataset.
        source: notebook 00's ``source``: 'synth', 'street10' or 'folder'.
        classes: None or a class spec (see `streetlib.classes.get_class_spec`), as the notebooks pass it.
        per_class: int, images per class (of each replicate) of a synthetic dataset not generated yet.
        replicates: int, replicates of a synthetic dataset not generated yet (a generated one's ``dataset.json`` says).
        image_size: int, the size synthetic images are made at and folder images resized to, in pixels.

    Returns:
        `DataCounts`.
    """
    path = Path(path)
    if any(path.glob("*.npy")):
        # The loader's own choice of classes, so the plan counts the files the run reads.
        spec = loaders._resolve_spec(path, classes)
        shapes = {c: np.load(path / f"{c}.npy", mmap_mode="r", allow_pickle=False).shape for c in spec.classes}
        first = next(iter(shapes.values()))
        counts = {c: int(s[0]) for c, s in shapes.items()}
        made = loaders._read_meta(path).get("replicates", 1)
        note = f"{path}: {sum(counts.values())} images (.npy)" + (f", {made} replicates" if made > 1 else "")
        return DataCounts(path, counts, tuple(first[1:3]), False, note, made)
    if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        spec = loaders._resolve_spec(path, classes)
        counts = {
            c: sum(p.suffix.lower() in IMAGE_EXTENSIONS for p in (path / c).iterdir())
            for c in spec.classes
            if (path / c).is_dir()
        }
        note = f"{path}: {sum(counts.values())} image files"
        return DataCounts(path, counts, (image_size, image_size), False, note)
    if source == "synth":
        counts = dict.fromkeys(SYNTH10.classes, per_class * replicates)
        note = (
            f"{path} not generated yet: counts assumed from per_class={per_class} x {len(counts)} classes"
            f" x {replicates} replicate(s)"
        )
        return DataCounts(path, counts, (image_size, image_size), True, note, replicates)
    counts = dict(zip(STREET10.classes, STREET10_COUNTS, strict=True))
    note = f"{path} not found: counts assumed from Street10's published {sum(counts.values()):,} images"
    return DataCounts(path, counts, (224, 224), True, note)
