"""Loading street images: the Street10 `.npy` format and folders of photos, validated, as uint8 arrays.

Street10 format: a directory with one ``<class>.npy`` per class, each ``(n, H, W, 3)``, uint8 or float in [0, 1],
in C or Fortran order. Optional beside them: ``classes.yaml`` (the class spec), ``dataset.json`` (name, whether it
is synthetic, how it was made), ``masks/<class>.npy`` (per-image cue masks, ``(n, H, W)`` uint8 0/1, written by
the synthetic generator) and ``SHA256SUMS`` (checksums of the files, verified on load: `write_checksums`,
`verify_checksums`).

Image folders: ``root/<class>/*.{jpg,jpeg,png,webp,bmp}``. Every image becomes RGB uint8 at one size; the resize
policy is explicit (see `streetlib.data.images.fit_image`). Each image's content hash is also taken before resizing
(`StreetData.source_hashes`), so splits hold at every image size.

Whatever the source, images are held as one uint8 array: 4,151 images at 224 px take 625 MB, where the original
stacked float64 copies of about 5 GB. Float files are read memory-mapped and converted a chunk at a time.
"""

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streetlib.classes import STREET10, get_class_spec
from streetlib.data.images import IMAGE_EXTENSIONS, RESIZE_POLICIES, DataError, fit_image, read_rgb
from streetlib.paths import atomic_path, file_digest

ON_ERROR = ("raise", "skip")
CHECKSUMS = "SHA256SUMS"
# Float chunks are converted this many bytes at a time, so a float64 file never needs a full float copy.
_CHUNK_BYTES = 16 * 2**20


@dataclass
class StreetData:
    """Images with their city and region labels.

    Attributes:
        images: uint8 `(n, H, W, 3)`, RGB.
        city: int64 `(n,)`, the class index of each image in ``spec.classes``.
        spec: the `ClassSpec` giving class and region names.
        name: str, dataset name used in split files, histories and figure titles.
        source: str, where the data was loaded from.
        synthetic: bool, True for the generated demo data (figures must say so).
        masks: optional uint8 `(n, H, W)` in {0, 1}: the region cue pixels of synthetic images.
        files: list of str `(n,)`, where each image came from (``"london.npy[12]"`` or a file path).
        skipped: list of (path, reason) for images left out with ``on_error="skip"``.
        meta: dict, the contents of ``dataset.json`` if any.
        source_hashes: optional list of str `(n,)`: the content hash of each image as read, before resizing (image
            folders). None when the images are as stored (Street10 files), so their content hashes serve.
        replicate: optional int64 `(n,)`: the independent draw each image belongs to, 0 to R - 1, for a synthetic
            dataset drawn as R replicates (``dataset.json``'s ``replicates``, `streetlib.data.synth`). Splits of
            seed ``s`` use replicate ``s mod R`` only. None: one pool that every split draws from.
    """

    images: np.ndarray
    city: np.ndarray
    spec: object
    name: str
    source: str = ""
    synthetic: bool = False
    masks: np.ndarray = None
    files: list = None
    skipped: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    source_hashes: list = None
    replicate: np.ndarray = None

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DataError(
                f"`images` must be uint8 of shape (n, H, W, 3). Received dtype={self.images.dtype}, "
                f"shape={self.images.shape}."
            )
        self.city = np.asarray(self.city, dtype=np.int64)
        if self.city.shape != (len(self.images),):
            raise DataError(f"`city` must have shape ({len(self.images)},). Received {self.city.shape}.")
        if self.masks is not None and self.masks.shape != self.images.shape[:3]:
            raise DataError(f"`masks` must have shape {self.images.shape[:3]}. Received {self.masks.shape}.")
        if self.replicate is not None:
            self.replicate = np.asarray(self.replicate, dtype=np.int64)
            if self.replicate.shape != self.city.shape:
                raise DataError(f"`replicate` must have shape {self.city.shape}. Received {self.replicate.shape}.")
        self._hashes = None

    def __len__(self):
        return len(self.images)

    @property
    def region(self):
        """int64 `(n,)`: the region index of each image in ``spec.region_names``."""
        return self.labels()["region"]

    def labels(self, indices=None):
        """The labels of each output (`streetlib.classes.OUTPUTS`), from the city of each image.

        Args:
            indices: int array of the images to label (a split). Default all.

        Returns:
            dict ``{"region": int64 (n,), "city": int64 (n,)}``: region indices in ``spec.region_names``, class
            indices in ``spec.classes``.
        """
        city = self.city if indices is None else self.city[indices]
        return {"region": self.spec.region_of_class[city], "city": city}

    @property
    def image_size(self):
        """(H, W) in pixels."""
        return tuple(self.images.shape[1:3])

    @property
    def label(self):
        """A short label for titles: the dataset name and whether it is synthetic."""
        return f"{self.name} (synthetic demo data)" if self.synthetic else self.name

    def content_hashes(self):
        """SHA-1 hex digest of each image's pixels (list of str `(n,)`), computed once."""
        if self._hashes is None:
            self._hashes = [content_hash(img) for img in self.images]
        return self._hashes

    def split_keys(self):
        """The hash that keys each image in split files (list of str `(n,)`): its content hash before any resize,
        so one split holds at every image size and resize policy."""
        return self.content_hashes() if self.source_hashes is None else self.source_hashes

    @property
    def replicates(self):
        """int, the number of independent draws the images come from (1 unless ``replicate`` is set)."""
        return 1 if self.replicate is None else int(self.replicate.max()) + 1

    def counts(self):
        """Images per class: dict class name -> int, in spec order."""
        n = np.bincount(self.city, minlength=self.spec.num_classes)
        return dict(zip(self.spec.classes, n.tolist(), strict=True))


def content_hash(image):
    """SHA-1 hex digest of an image array's shape and bytes; identical pixels give identical hashes."""
    image = np.ascontiguousarray(image)
    h = hashlib.sha1(str(image.shape).encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _resolve_spec(root, classes):
    if classes is not None:
        return get_class_spec(classes)
    if (root / "classes.yaml").is_file():
        return get_class_spec(root / "classes.yaml")
    return STREET10


def _read_meta(root):
    path = root / "dataset.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _check_root(root, what):
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{what} directory not found: {root}. Check the path (relative paths start at {Path.cwd()}).")
    return root


def _open_npy(path, cls):
    with open(path, "rb") as f:
        head = f.read(len(np.lib.format.MAGIC_PREFIX))
    # Without the signature np.load would try the file as a pickle and report "pickled data" for any stray file.
    if head != np.lib.format.MAGIC_PREFIX:
        found = "it is empty" if not head else f"it starts with {head!r}, not the .npy signature"
        raise DataError(
            f"{path} is not a NumPy .npy file ({found}). Re-save class {cls!r} with np.save, or rebuild the "
            f"dataset (`streetlib data build`, or `streetlib data synth` for the demo data)."
        )
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err) or "Python objects" in str(err):
            raise DataError(
                f"{path} holds pickled Python objects, which streetlib never loads (unsafe). "
                f"Re-save class {cls!r} as a plain numeric array: np.save(path, np.asarray(images, np.uint8))."
            ) from err
        raise DataError(f"{path} is not a valid .npy array file ({err}). Re-create it with np.save.") from err


def _check_array(arr, path):
    if arr.ndim != 4:
        raise DataError(f"{path} has shape {arr.shape}: expected rank 4 (n, H, W, 3).")
    if arr.shape[-1] != 3:
        raise DataError(f"{path} has {arr.shape[-1]} channels (shape {arr.shape}): expected 3 (RGB).")
    if not (arr.dtype == np.uint8 or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{path} has dtype {arr.dtype}: expected uint8, or float in [0, 1].")


def _blocks(shape, itemsize):
    """Split a C-ordered array into contiguous blocks of at most about `_CHUNK_BYTES`.

    Blocks run along the outermost axis whose single steps fit in `_CHUNK_BYTES` (the last axis if none does), so
    images that are large, or stored pixel-major, still come in small pieces.

    Args:
        shape: tuple of int, the array's shape.
        itemsize: int, bytes per element.

    Yields:
        (index, offset, block shape): ``index`` a tuple of one slice per axis, ``offset`` the position of the
        block's first element, in elements.
    """
    steps = [math.prod(shape[axis + 1 :]) for axis in range(len(shape))]
    axis = next(a for a, n in enumerate(steps) if n * itemsize <= _CHUNK_BYTES or a == len(shape) - 1)
    count = max(1, _CHUNK_BYTES // (steps[axis] * itemsize))
    rest = (slice(None),) * (len(shape) - axis - 1)
    for outer in np.ndindex(*shape[:axis]):
        lead = tuple(slice(i, i + 1) for i in outer)
        base = sum(i * n for i, n in zip(outer, steps[:axis], strict=True))
        for start in range(0, shape[axis], count):
            stop = min(start + count, shape[axis])
            block = (*(1,) * axis, stop - start, *shape[axis + 1 :])
            yield (*lead, slice(start, stop), *rest), base + start * steps[axis], block


def _chunks(src):
    """Yield (index, chunk) over a memory-mapped ``.npy`` array, ``chunk`` equal to ``src[index]`` and read
    through its own short-lived mapping.

    One mapping over the whole file would keep every page it touched resident, so loading a 2.5 GB float file
    would cost 2.5 GB of memory on top of the uint8 copy; mapping chunk by chunk bounds that to one chunk.
    """
    # A Fortran-ordered file holds the C-ordered transpose: chunk that, then transpose back.
    fortran = np.isfortran(src)
    shape = src.shape[::-1] if fortran else src.shape
    for index, offset, block in _blocks(shape, src.itemsize):
        chunk = np.memmap(
            src.filename, dtype=src.dtype, mode="r", offset=src.offset + offset * src.itemsize, shape=block, order="C"
        )
        yield (index[::-1], chunk.T) if fortran else (index, chunk)
        del chunk


def _copy_as_uint8(src, dst, path):
    """Copy ``src`` (a memory-mapped ``.npy``, uint8 or float in [0, 1]) into the uint8 array ``dst`` by chunks."""
    for index, chunk in _chunks(src):
        if src.dtype == np.uint8:
            dst[index] = chunk
            continue
        lo, hi = float(chunk.min()), float(chunk.max())
        if not np.isfinite(lo + hi) or lo < 0.0 or hi > 1.0:
            images = range(len(src))[index[0]]
            raise DataError(
                f"{path} has float values outside [0, 1] (min {lo:g}, max {hi:g} in images {images[0]}-"
                f"{images[-1]}). Save floats scaled to [0, 1], or save uint8 in [0, 255]."
            )
        # In place in one float32 buffer: the only temporary is one chunk.
        scaled = np.multiply(chunk, 255.0, dtype=np.float32)
        np.rint(scaled, out=scaled)
        dst[index] = scaled


def load_street10(root, *, classes=None, name=None):
    """Load a Street10-format directory: one ``<class>.npy`` per class.

    Args:
        root: str or Path, the directory.
        classes: a `ClassSpec`, 'street10', 'synth10' or a YAML path. Default: ``root/classes.yaml`` if present,
            else the Street10 cities.
        name: str, dataset name. Default: ``dataset.json``'s name, else the directory name.

    Returns:
        `StreetData` with uint8 images; cue masks when ``root/masks/`` has them.

    Raises:
        DataError: a file that does not match ``SHA256SUMS`` (when present), a missing or empty class, a file that
            is not ``.npy`` or is pickled, a wrong rank or channel count, floats outside [0, 1], or classes of
            different image sizes.
    """
    root = _check_root(root, "Street10")
    if (root / CHECKSUMS).is_file():
        verify_checksums(root)
    spec = _resolve_spec(root, classes)
    meta = _read_meta(root)
    found = sorted(p.name for p in root.glob("*.npy"))
    missing = [c for c in spec.classes if not (root / f"{c}.npy").is_file()]
    if missing:
        raise DataError(
            f"Class file(s) {[m + '.npy' for m in missing]} not found in {root}. Found: {found or 'no .npy files'}. "
            f"Put one <class>.npy per class there, or pass classes= a YAML spec naming your classes."
        )
    arrays = []
    for cls in spec.classes:
        path = root / f"{cls}.npy"
        arr = _open_npy(path, cls)
        _check_array(arr, path)
        if len(arr) == 0:
            raise DataError(f"Class {cls!r} is empty: {path} holds 0 images. Add images or drop the class.")
        arrays.append(arr)
    sizes = {a.shape[1:3] for a in arrays}
    if len(sizes) > 1:
        detail = {c: a.shape[1:3] for c, a in zip(spec.classes, arrays, strict=True)}
        raise DataError(f"Classes in {root} have different image sizes {detail}: resize them to one size.")
    images = np.empty((sum(len(a) for a in arrays), *arrays[0].shape[1:]), dtype=np.uint8)
    city, files, start = [], [], 0
    for idx, (cls, arr) in enumerate(zip(spec.classes, arrays, strict=True)):
        _copy_as_uint8(arr, images[start : start + len(arr)], root / f"{cls}.npy")
        city += [idx] * len(arr)
        files += [f"{cls}.npy[{i}]" for i in range(len(arr))]
        start += len(arr)
    return StreetData(
        images=images,
        city=np.array(city),
        spec=spec,
        name=name or meta.get("name", root.name),
        source=str(root),
        synthetic=bool(meta.get("synthetic", False)),
        masks=_load_masks(root, spec, arrays),
        files=files,
        meta=meta,
        replicate=_replicates(root, spec, arrays, meta),
    )


def _replicates(root, spec, arrays, meta):
    """Each image's replicate, for a dataset whose ``dataset.json`` says it was drawn as several (each class file
    holds its replicates one after the other, equally many images each); None for one."""
    count = meta.get("replicates", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise DataError(f"{root / 'dataset.json'}: `replicates` must be an int >= 1. Received: {count!r}.")
    if count == 1:
        return None
    uneven = {c: len(a) for c, a in zip(spec.classes, arrays, strict=True) if len(a) % count}
    if uneven:
        raise DataError(
            f"{root / 'dataset.json'} says {count} replicates, but class file(s) {uneven} do not split into {count} "
            "equal parts. Regenerate the dataset (streetlib data synth --overwrite)."
        )
    return np.concatenate([np.arange(len(a)) * count // len(a) for a in arrays])


def _load_masks(root, spec, arrays):
    mask_dir = root / "masks"
    if not mask_dir.is_dir():
        return None
    masks = []
    for cls, arr in zip(spec.classes, arrays, strict=True):
        path = mask_dir / f"{cls}.npy"
        if not path.is_file():
            raise DataError(f"{mask_dir} exists but has no mask file for class {cls!r} ({path}).")
        m = _open_npy(path, cls)
        if m.shape != arr.shape[:3]:
            raise DataError(f"{path} has shape {m.shape}: expected {arr.shape[:3]} to match {cls}.npy.")
        masks.append(np.asarray(m, dtype=np.uint8))
    return np.concatenate(masks)


def read_image(path, *, size=None, policy="crop"):
    """Read one image file as RGB uint8.

    Args:
        path: str or Path.
        size: None (keep the image's own size), int or (height, width).
        policy: resize policy, see `fit_image`.

    Returns:
        uint8 `(H, W, 3)`.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        DataError: the path is a directory, a broken link or not a regular file; or the file is not a readable
            image, is truncated, has more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` (a possible decompression
            bomb) or 32-bit values out of range (see `streetlib.data.images.to_rgb`).
    """
    rgb = read_rgb(Path(path))
    return np.asarray(rgb, dtype=np.uint8) if size is None else fit_image(rgb, size, policy=policy)


def load_image_folder(root, *, classes=None, size=224, policy="crop", on_error="raise", name=None):
    """Load ``root/<class>/*.{jpg,jpeg,png,webp,bmp}`` as RGB uint8 at one size.

    Args:
        root: str or Path.
        classes: a `ClassSpec`, built-in name or YAML path. Default: ``root/classes.yaml`` if present, else Street10.
        size: int or (height, width), the target size in pixels. Default 224.
        policy: 'crop', 'pad' or 'stretch', see `fit_image`.
        on_error: 'raise' (default) stops at the first unreadable image; 'skip' leaves it out and records it in
            ``StreetData.skipped`` as (path, reason). Unreadable: any reason `read_image` raises `DataError` for,
            including directories and broken links with an image extension.
        name: dataset name. Default: the directory name.

    Returns:
        `StreetData`, images in class order then file-name order, with ``source_hashes``: the content hash of
        each image before resizing, which keys its splits whatever ``size`` and ``policy``.

    Raises:
        DataError: a missing or empty class folder, a class whose images are all unreadable, or (on_error='raise')
            an unreadable image.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"Invalid `on_error`. Expected one of {ON_ERROR}. Received: on_error={on_error!r}")
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"Invalid `policy`. Expected one of {RESIZE_POLICIES}. Received: policy={policy!r}")
    root = _check_root(root, "Image folder")
    spec = _resolve_spec(root, classes)
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    missing = [c for c in spec.classes if not (root / c).is_dir()]
    if missing:
        raise DataError(
            f"Class folder(s) {missing} not found in {root}. Found folders: {found or 'none'}. "
            f"Expected root/<class>/ for each class, or pass classes= a YAML spec naming your classes."
        )
    images, sources, city, files, skipped = [], [], [], [], []
    for idx, cls in enumerate(spec.classes):
        paths = sorted(p for p in (root / cls).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise DataError(f"Class {cls!r} is empty: no {'/'.join(IMAGE_EXTENSIONS)} files in {root / cls}.")
        kept = 0
        for path in paths:
            try:
                rgb = read_rgb(path)
            except DataError as err:
                if on_error == "raise":
                    # Callers include `streetlib data split`, which has no on_error: say what works from both.
                    raise DataError(
                        f"{err} Or package the folder with `streetlib data build`, which leaves unreadable images "
                        f"out (in Python, on_error='skip' skips them and lists them in `skipped`)."
                    ) from err.__cause__
                skipped.append((str(path), str(err.__cause__ or err)))
                continue
            sources.append(content_hash(np.asarray(rgb, dtype=np.uint8)))
            images.append(fit_image(rgb, size, policy=policy))
            city.append(idx)
            files.append(str(path))
            kept += 1
        if kept == 0:
            raise DataError(f"Class {cls!r} is empty: all {len(paths)} images in {root / cls} were unreadable.")
    return StreetData(
        images=np.stack(images),
        city=np.array(city),
        spec=spec,
        name=name or root.name,
        source=str(root),
        files=files,
        skipped=skipped,
        source_hashes=sources,
    )


def load_dataset(path, *, classes=None, size=224, policy="crop", on_error="raise", name=None):
    """Load a Street10-format directory (it holds ``.npy`` files) or an image folder (it holds class folders).

    ``size``, ``policy`` and ``on_error`` apply to image folders (see `load_image_folder`); Street10 files keep
    their own size (the pipeline resizes at feeding time).
    """
    root = _check_root(path, "Dataset")
    if any(root.glob("*.npy")):
        return load_street10(root, classes=classes, name=name)
    return load_image_folder(root, classes=classes, size=size, policy=policy, on_error=on_error, name=name)


def write_street10(out_dir, images_by_class, *, classes, masks_by_class=None, meta=None, overwrite=False):
    """Write a Street10-format directory: ``<class>.npy`` (uint8), ``classes.yaml``, ``dataset.json`` and,
    if given, ``masks/<class>.npy``. Each file is written atomically.

    Args:
        out_dir: str or Path.
        images_by_class: dict class name -> uint8 `(n, H, W, 3)`, one entry per class of ``classes``.
        classes: the `ClassSpec`.
        masks_by_class: optional dict class name -> uint8 `(n, H, W)` in {0, 1}.
        meta: optional dict for ``dataset.json`` (for example ``{"name": ..., "synthetic": True}``).
        overwrite: bool. If False (default), refuse to write into a directory that already has class files.

    Returns:
        Path of ``out_dir``.
    """
    out_dir = Path(out_dir)
    if not overwrite and any(out_dir.glob("*.npy")):
        raise FileExistsError(f"{out_dir} already holds a dataset. Choose another --out or pass overwrite=True.")
    missing = [c for c in classes.classes if c not in images_by_class]
    if missing:
        raise ValueError(f"`images_by_class` has no images for classes {missing}.")
    for cls in classes.classes:
        arr = np.asarray(images_by_class[cls])
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"Images of class {cls!r} must be uint8 (n, H, W, 3). Received {arr.dtype} {arr.shape}.")
        with atomic_path(out_dir / f"{cls}.npy") as tmp:
            np.save(tmp, arr)
        if masks_by_class is not None:
            with atomic_path(out_dir / "masks" / f"{cls}.npy") as tmp:
                np.save(tmp, np.asarray(masks_by_class[cls], dtype=np.uint8))
    with atomic_path(out_dir / "classes.yaml") as tmp:
        classes.to_yaml(tmp)
    with atomic_path(out_dir / "dataset.json") as tmp:
        tmp.write_text(json.dumps({"name": out_dir.name, **(meta or {})}, indent=2))
    return out_dir


def write_checksums(root, names):
    """Write ``root/SHA256SUMS`` (the ``sha256sum`` format) for the files ``names``, relative to ``root``."""
    root = Path(root)
    lines = [f"{file_digest(root / name)}  {name}\n" for name in names]
    with atomic_path(root / CHECKSUMS) as tmp:
        tmp.write_text("".join(lines))
    return root / CHECKSUMS


def verify_checksums(root):
    """Check every file listed in ``root/SHA256SUMS`` against its SHA-256.

    Raises:
        DataError: the checksum file is missing or malformed, or a listed file is missing or differs; the message
            names the file.
    """
    root = Path(root)
    path = root / CHECKSUMS
    if not path.is_file():
        raise DataError(f"No {CHECKSUMS} in {root}: this dataset was not packaged with checksums.")
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if not match or ".." in Path(match[2]).parts or Path(match[2]).is_absolute():
            raise DataError(f"{path} line {number} is malformed: expected '<sha256 hex>  <relative file name>'.")
        digest, name = match.groups()
        if not (root / name).is_file():
            raise DataError(f"{root / name} is listed in {path} but missing. Restore it or rebuild the dataset.")
        if file_digest(root / name) != digest:
            raise DataError(
                f"{root / name} does not match its checksum in {path}: the file is corrupt or was changed after "
                f"packaging. Download it again or rebuild the dataset."
            )
