"""Building a Street10-format dataset from a folder of raw photos: clean, de-duplicate, review, package.

Input (what `streetlib.data.crawl.crawl_cities` writes, or photos put there by hand)::

    raw/classes.yaml          the class spec (else pass ``classes=``)
    raw/<class>/*             one folder of photos per class; every file is examined
    raw/manifest.csv          optional: where each file came from (file, city, url, keyword, engine, filters)
    raw/rejects.txt           optional: file ids a person rejected, one per line (``tokyo/000012.jpg  # blurry``)

Output (written into a temporary folder beside ``out`` and moved into place at the end, so a failed build leaves
nothing there)::

    out/<class>.npy, classes.yaml, dataset.json    the Street10 format (uint8), see `streetlib.data.loaders`
    out/manifest.csv          one row per packaged image: class, index in <class>.npy, file id, size, source URL
    out/rejected.csv          one row per file left out: id, reason, detail (broken links and other non-files too)
    out/duplicates.csv        near-duplicates found in more than one class, for a person to resolve
    out/contact_sheets/       <class>-NN.png thumbnail grids labelled with file ids; duplicates-NN.png
    out/SHA256SUMS            checksums of the .npy files, classes.yaml and manifest.csv, verified on load

A file id is ``<class>/<file name>``; the bytes of a name that is not valid UTF-8 are written as ``\\xe9`` escapes.

Cleaning, in order: ids in rejects.txt are left out; unreadable or truncated files, files whose shorter side is
below ``min_size`` and non-photos (animations, images of fewer than 32 colours: drawings, logos, placeholders) are
rejected with their reason; a margin is cropped from every side (5% by default, as the original study did, to drop
borders and watermarks); the image is resized with the documented aspect policy (`streetlib.data.images.fit_image`).
Grayscale photos are kept as RGB with three equal channels; manifest.csv records every file's original mode.

Near-duplicates are found by content, not by colour histogram (the original's method): perceptual hashes
(imagehash pHash) of the whole frame and of 80 trimmed windows, confirmed by pixel correlation, so re-encoded,
resized, grayscale and cropped copies (up to about 10% a side) are caught (`find_duplicates`). Within a class
one copy is kept; a group spanning several classes is left out of every class and listed in duplicates.csv, because
keeping it would put one photo under two labels and across train/test splits.
"""

import csv
import io
import itertools
import numbers
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from streetlib.classes import get_class_spec
from streetlib.data.images import RESIZE_POLICIES, DataError, fit_image, to_rgb
from streetlib.data.loaders import write_checksums, write_street10
from streetlib.paths import atomic_dir

RAW_MANIFEST = "manifest.csv"
MANIFEST_FIELDS = ("file", "city", "url", "keyword", "engine", "filters")
REJECTS = "rejects.txt"
SHEETS = "contact_sheets"
REJECT_REASONS = ("marked", "unreadable", "too-small", "not-a-photo", "duplicate", "cross-class-duplicate")
# Every side trimmed by 0, 7 or 14% (81 windows): a copy cropped by up to ~10% a side lands within a few bits of
# one window of its original.
_TRIMS = (0.0, 0.07, 0.14)
_WINDOWS = tuple(itertools.product(_TRIMS, repeat=4))
_THUMB = 128
# Photos, even grayscale or dark ones, show >= 50 distinct colours in a 64x64 sample; flat graphics far fewer.
_MIN_COLOURS = 32
_READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
# Packaged image sides: a 16 px thumbnail is the least a person can still review on a contact sheet; a 4096 px
# image already takes 48 MiB in memory.
MIN_SIZE, MAX_SIZE = 16, 4096


@dataclass
class BuildReport:
    """What `build_dataset` did.

    Attributes:
        out: Path of the packaged dataset.
        kept: dict class name -> number of images packaged, in spec order.
        rejected: list of (file id, reason, detail), sorted by id; reason is one of `REJECT_REASONS`.
        duplicates: list of cross-class near-duplicate groups, each a sorted list of file ids.
        rejects_file: Path of the rejects file the build honoured (it may not exist yet).
        sheets: list of Paths of the contact sheets written.
    """

    out: Path
    kept: dict
    rejected: list = field(default_factory=list)
    duplicates: list = field(default_factory=list)
    rejects_file: Path = None
    sheets: list = field(default_factory=list)

    def summary(self):
        """A few lines for a person: counts, reasons, and what to review next."""
        counts = Counter(reason for _, reason, _ in self.rejected)
        lines = [
            f"Packaged {sum(self.kept.values())} images in {len(self.kept)} classes into {self.out}: "
            + ", ".join(f"{c} {n}" for c, n in self.kept.items()),
            f"Rejected {len(self.rejected)} files"
            + (": " + ", ".join(f"{counts[r]} {r}" for r in REJECT_REASONS if counts[r]) if self.rejected else "")
            + f" (see {self.out / 'rejected.csv'}).",
        ]
        if self.duplicates:
            lines.append(
                f"{len(self.duplicates)} near-duplicate groups span several classes and were left out of all of "
                f"them: see {self.out / 'duplicates.csv'}. Add the copies you do not want to {self.rejects_file} "
                f"and build again."
            )
        lines.append(
            f"Review {self.out / SHEETS}/ and add rejected file ids to {self.rejects_file}; the next build "
            f"leaves them out."
        )
        return "\n".join(lines)


def read_manifest(path):
    """Rows of a crawl manifest (``raw/manifest.csv``) as a list of dicts; [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"file", "url"} <= set(rows[0]):
        raise DataError(f"{path} is not a crawl manifest: it needs the columns {list(MANIFEST_FIELDS)}.")
    return rows


def read_rejects(path, *, known_ids=None):
    """File ids listed in a rejects file: one ``<class>/<file name>`` per line, ``#`` starts a note.

    Args:
        path: str or Path. A missing file means no rejects.
        known_ids: optional set of valid ids; an id outside it raises, so a typo never keeps a rejected photo.

    Returns:
        set of str.
    """
    path = Path(path)
    if not path.is_file():
        return set()
    ids = set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        file_id = line.split("#", 1)[0].strip()
        if not file_id:
            continue
        if known_ids is not None and file_id not in known_ids:
            raise DataError(
                f"{path} line {number}: {file_id!r} names no file in the raw folder. Ids are "
                f"'<class>/<file name>' as printed on the contact sheets; fix or delete the line."
            )
        ids.add(file_id)
    return ids


def crop_margin(image, margin=0.05):
    """Cut ``margin`` (a fraction of the width and of the height) from every side of a PIL image.

    The original study cropped 5% to drop borders, captions and watermarks that would let a model read the
    source instead of the street.
    """
    _check_margin(margin)
    w, h = image.size
    dx, dy = round(w * margin), round(h * margin)
    return image.crop((dx, dy, w - dx, h - dy))


def hash_thumbnail(image):
    """The grayscale thumbnail (at most 128 px a side) that `find_duplicates` compares; small enough to keep for
    thousands of photos while they are read one by one."""
    gray = image.convert("L")
    gray.thumbnail((_THUMB, _THUMB), Image.Resampling.BILINEAR)
    return gray


def find_duplicates(images, *, threshold=10, min_correlation=0.7):
    """Group near-duplicate images by content.

    Each image gets pHashes (imagehash) of its whole frame and of 80 windows with each side trimmed by 0, 7 or
    14%. A pair is a candidate when the whole-frame hash of one is within ``threshold`` bits of some window of the
    other, so a cropped copy meets the matching window of its original; it is confirmed when the two regions'
    32x32 grayscale pixels correlate at ``min_correlation`` or more, which rules out unrelated photos whose hashes
    happen to be close. Groups are closed under chaining (a ~ b and b ~ c puts a, b, c together).

    Measured on the street samples: re-encoded, resized, grayscale and cropped (5-10% a side) copies score
    <= 6 bits and correlate >= 0.83; different photos, quarters of one photo included, score >= 17 bits, and
    the correlation check still separates most of those that score up to 20.

    Args:
        images: list of `PIL.Image` of any size and mode (`hash_thumbnail` of each is enough).
        threshold: int, the largest Hamming distance (of 64 bits) for a candidate pair. Default 10.
        min_correlation: float, the smallest pixel correlation that confirms a candidate. Default 0.7.

    Returns:
        list of groups, each a sorted list of indices into ``images`` (length >= 2), sorted by first index.
    """
    thumbs = [hash_thumbnail(image) for image in images]
    hashes = np.stack([_window_hashes(t) for t in thumbs]) if thumbs else np.zeros((0, len(_WINDOWS)), np.uint64)
    fulls = [_unit_pixels(t) for t in thumbs]
    n, k = hashes.shape
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Blocks of rows keep the (rows, n, k) distance array near 4M entries whatever n is.
    step = max(1, 2**22 // max(1, n * k))
    for start in range(0, n, step):
        dist = np.bitwise_count(hashes[start : start + step, 0, None, None] ^ hashes[None, :, :])
        best = dist.argmin(axis=2)
        for i, j in zip(*np.nonzero(dist.min(axis=2) <= threshold), strict=True):
            i, j = int(i) + start, int(j)
            if root(i) == root(j):
                continue
            window = _unit_pixels(_window(thumbs[j], _WINDOWS[best[i - start, j]]))
            if float(fulls[i] @ window) >= min_correlation:
                a, b = root(i), root(j)
                parent[max(a, b)] = min(a, b)
    groups = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def contact_sheet(images, labels, *, columns=10, thumb=128, title=None):
    """A grid of thumbnails, each labelled, for a person to review.

    Args:
        images: uint8 `(n, H, W, 3)` or a list of uint8 `(H, W, 3)`.
        labels: list of n str, printed under each thumbnail (long ones keep their end, the file name).
        columns: int, thumbnails per row.
        thumb: int, the thumbnail box in pixels; images are scaled to fit it, aspect kept.
        title: optional str printed above the grid.

    Returns:
        `PIL.Image` in RGB.
    """
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"`images` and `labels` must be non-empty and equally long: {len(images)} vs {len(labels)}.")
    font = ImageFont.load_default()
    pad, label_h, title_h = 4, 14, 18 if title else 0
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    cell_w, cell_h = thumb + pad, thumb + label_h + pad
    sheet = Image.new("RGB", (pad + columns * cell_w, title_h + pad + rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 3), title, fill="black", font=font)
    for k, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = pad + (k % columns) * cell_w, title_h + pad + (k // columns) * cell_h
        sheet.paste(ImageOps.contain(Image.fromarray(np.asarray(image, dtype=np.uint8)), (thumb, thumb)), (x, y))
        while len(label) > 1 and draw.textlength(label, font=font) > thumb:
            label = "…" + label.lstrip("…")[1:]
        draw.text((x, y + thumb + 1), label, fill="black", font=font)
    return sheet


def build_dataset(
    raw_dir,
    out_dir,
    *,
    classes=None,
    size=224,
    policy="crop",
    margin=0.05,
    min_size=None,
    threshold=10,
    rejects=None,
    overwrite=False,
):
    """Clean, de-duplicate and package ``raw_dir/<class>/*`` as a Street10-format dataset in ``out_dir``.

    Args:
        raw_dir: str or Path, one folder of photos per class (the crawl's output).
        out_dir: str or Path, where the dataset goes (see the module docstring for the files).
        classes: a `ClassSpec`, built-in name or YAML path. Default: ``raw_dir/classes.yaml``.
        size: int or (height, width), the packaged image size in pixels, each in [16, 4096]. Default 224.
        policy: 'crop', 'pad' or 'stretch', the aspect policy of `streetlib.data.images.fit_image`.
        margin: float in [0, 0.5), the fraction cut from every side before resizing. Default 0.05.
        min_size: int, the smallest accepted shorter side of a raw photo in pixels. Default: the smaller of
            ``size``, so no photo is enlarged.
        threshold: int, the near-duplicate Hamming distance (see `find_duplicates`). Default 10.
        rejects: str or Path of the rejects file. Default ``raw_dir/rejects.txt``.
        overwrite: bool. If False (default), refuse to write into a directory that already holds a dataset.

    Returns:
        `BuildReport`.

    Raises:
        ValueError: an invalid ``size``, ``policy`` or ``margin``, before anything is read.
        DataError: a class folder is missing, a rejects line names no file, or a class has no image left.
        FileExistsError: ``out_dir`` already holds a dataset and ``overwrite`` is False.
        OSError: writing failed (the message names the file or ``out_dir``); nothing was left in ``out_dir``.
    """
    raw, out = _check_build_args(raw_dir, out_dir, policy=policy, margin=margin, overwrite=overwrite)
    height, width = _check_size(size)
    min_size = min(height, width) if min_size is None else min_size
    spec = get_class_spec(classes if classes is not None else raw / "classes.yaml")

    files = _list_class_files(raw, spec)
    rejects_file = Path(rejects) if rejects is not None else raw / REJECTS
    marked = read_rejects(rejects_file, known_ids={i for paths in files.values() for i, _ in paths})
    sources = {row["file"]: row for row in read_manifest(raw / RAW_MANIFEST)}
    records, rejected = _clean_all(files, marked, rejects_file, (height, width), policy, margin, min_size)
    dropped, cross = _resolve_duplicates(records, rejected, threshold)
    by_class = _group_kept(records, dropped, spec, rejected, raw=raw, rejects_file=rejects_file)

    rejected.sort()
    with atomic_dir(out) as tmp:
        write_street10(
            tmp,
            {cls: np.stack([r["image"] for r in recs]) for cls, recs in by_class.items()},
            classes=spec,
            meta={"name": out.name, **_package_meta(raw, (height, width), policy, margin, threshold)},
        )
        _write_tables(tmp, by_class, records, cross, rejected, sources)
        sheets = _write_sheets(tmp / SHEETS, by_class, [[records[i] for i in g] for g in cross])
        write_checksums(tmp, [f"{cls}.npy" for cls in spec.classes] + ["classes.yaml", "manifest.csv"])
    return BuildReport(
        out=out,
        kept={cls: len(recs) for cls, recs in by_class.items()},
        rejected=rejected,
        duplicates=[sorted(records[i]["id"] for i in g) for g in cross],
        rejects_file=rejects_file,
        sheets=[out / SHEETS / sheet.name for sheet in sheets],
    )


def _check_build_args(raw_dir, out_dir, *, policy, margin, overwrite):
    """(raw Path, out Path) once the raw folder exists, ``out_dir`` may be written and ``policy``, ``margin`` are
    valid."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise DataError(f"Raw photo directory not found: {raw}. Crawl into it first, or pass the right --raw.")
    out = Path(out_dir)
    if not overwrite and any(out.glob("*.npy")):
        raise FileExistsError(f"{out} already holds a dataset. Choose another --out or pass overwrite=True.")
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"Invalid `policy`. Expected one of {RESIZE_POLICIES}. Received: policy={policy!r}")
    _check_margin(margin)
    return raw, out


def _check_size(size):
    """(height, width) of ``size``: an int, or a pair of ints, each in [`MIN_SIZE`, `MAX_SIZE`]."""
    sides = (size, size) if isinstance(size, numbers.Integral) else size
    if (
        not isinstance(sides, (tuple, list))
        or len(sides) != 2
        or not all(not isinstance(s, bool) and isinstance(s, numbers.Integral) for s in sides)
        or not all(MIN_SIZE <= s <= MAX_SIZE for s in sides)
    ):
        raise ValueError(
            f"Invalid `size`: expected an int in [{MIN_SIZE}, {MAX_SIZE}] or a (height, width) pair of them. "
            f"Received: size={size!r}"
        )
    return int(sides[0]), int(sides[1])


def _clean_all(files, marked, rejects_file, size, policy, margin, min_size):
    """Clean every raw file, in class then file order; the ids in ``marked`` are rejected unread.

    ``files`` is dict class -> list of (file id, path) (`_list_class_files`), ``size`` (height, width) in pixels.
    Returns (list of `_clean` records, list of (file id, reason, detail) of the files left out).
    """
    records, rejected = [], []
    for cls, paths in files.items():
        for file_id, path in paths:
            if file_id in marked:
                rejected.append((file_id, "marked", f"listed in {rejects_file.name}"))
                continue
            try:
                records.append(_clean(path, cls, file_id, size, policy, margin, min_size))
            except _Rejected as err:
                rejected.append((file_id, err.reason, err.detail))
    return records, rejected


def _group_kept(records, dropped, spec, rejected, *, raw, rejects_file):
    """dict class -> the records not in ``dropped``, in spec order; raises `DataError` if a class has none."""
    kept = [r for i, r in enumerate(records) if i not in dropped]
    by_class = {cls: [r for r in kept if r["class"] == cls] for cls in spec.classes}
    empty = [cls for cls, recs in by_class.items() if not recs]
    if empty:
        reasons = Counter(reason for file_id, reason, _ in rejected if file_id.split("/")[0] in empty)
        raise DataError(
            f"No image of class(es) {empty} is left after cleaning (rejected: {dict(reasons) or 'none, no files'}). "
            f"Add photos to {raw}/<class>/ or take ids out of {rejects_file}."
        )
    return by_class


def _package_meta(raw, size, policy, margin, threshold):
    """The build's settings as dataset.json records them; ``size`` is (height, width) in pixels."""
    height, width = size
    return {
        "synthetic": False,
        "made_by": "streetlib data build",
        "raw": str(raw),
        "image_size": [height, width],
        "policy": policy,
        "margin": margin,
        "duplicate_threshold": threshold,
    }


def _write_tables(out, by_class, records, cross, rejected, sources):
    """Write manifest.csv, rejected.csv and duplicates.csv; ``sources`` maps a file id to its raw manifest row."""
    _write_csv(
        out / "manifest.csv",
        ["class", "index", "file", "width", "height", "mode", "url", "keyword", "engine", "filters"],
        [
            [cls, i, r["id"], r["width"], r["height"], r["mode"]]
            + [sources.get(r["id"], {}).get(k, "") for k in ("url", "keyword", "engine", "filters")]
            for cls, recs in by_class.items()
            for i, r in enumerate(recs)
        ],
    )
    _write_csv(out / "rejected.csv", ["file", "reason", "detail"], rejected)
    _write_csv(
        out / "duplicates.csv",
        ["group", "file", "class", "width", "height", "url"],
        [
            [g, records[i]["id"], records[i]["class"], records[i]["width"], records[i]["height"]]
            + [sources.get(records[i]["id"], {}).get("url", "")]
            for g, group in enumerate(cross, start=1)
            for i in group
        ],
    )


def _check_margin(margin):
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"Invalid `margin`: expected a fraction in [0, 0.5). Received: margin={margin!r}")


class _Rejected(Exception):
    def __init__(self, reason, detail):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _list_class_files(raw, spec):
    """dict class -> sorted list of (file id, path) of the non-hidden entries of ``raw/<class>/`` other than
    folders (broken links included, so that `_clean` rejects them with a reason)."""
    missing = [c for c in spec.classes if not (raw / c).is_dir()]
    if missing:
        found = sorted(p.name for p in raw.iterdir() if p.is_dir())
        raise DataError(
            f"Class folder(s) {missing} not found in {raw}. Found folders: {found or 'none'}. Crawl them, put "
            f"photos in {raw}/<class>/ by hand, or pass classes= a spec without them."
        )
    return {
        cls: [
            (f"{cls}/{_escaped(p.name)}", p)
            for p in sorted((raw / cls).iterdir())
            if not p.is_dir() and not p.name.startswith(".")
        ]
        for cls in spec.classes
    }


def _clean(path, cls, file_id, size, policy, margin, min_size):
    """Read, check, crop, resize and hash one raw file; raise `_Rejected` with the reason if it fails."""
    if path.is_symlink() and not path.exists():
        raise _Rejected("unreadable", f"a broken symbolic link to {_escaped(os.readlink(path))}")
    if not path.is_file():
        raise _Rejected("unreadable", "not a regular file (a pipe, socket or device)")
    try:
        with Image.open(path) as img:
            frames = getattr(img, "n_frames", 1)
            width, height, mode = *img.size, img.mode
            # JPEG decoding at reduced scale is several times faster on big photos and still leaves >= 2x the
            # pixels that resizing and hashing use.
            img.draft(None, (2 * max(*size, _THUMB),) * 2)
            img.load()
            rgb = to_rgb(img)
    except _READ_ERRORS as err:
        raise _Rejected("unreadable", f"{type(err).__name__}: {_escaped(str(err))}") from err
    if min(width, height) < min_size:
        raise _Rejected("too-small", f"{width}x{height}: shorter side below min_size={min_size}")
    if frames > 1:
        raise _Rejected("not-a-photo", f"{frames} frames: an animation or a multi-page file")
    sample = np.asarray(rgb.resize((64, 64), Image.Resampling.NEAREST)).reshape(-1, 3)
    colours = len(np.unique(sample, axis=0))
    if colours < _MIN_COLOURS:
        raise _Rejected("not-a-photo", f"{colours} distinct colours: a drawing, logo, placeholder or blank image")
    cropped = crop_margin(rgb, margin)
    return {
        "id": file_id,
        "class": cls,
        "width": width,
        "height": height,
        "mode": mode,
        "image": fit_image(cropped, size, policy=policy),
        "thumb": hash_thumbnail(cropped),
    }


def _resolve_duplicates(records, rejected, threshold):
    """Keep the largest copy of each within-class group; drop every member of a cross-class group.

    Appends the dropped files to ``rejected``; returns (set of dropped record indices, list of cross-class groups).
    """
    groups = find_duplicates([r["thumb"] for r in records], threshold=threshold)
    dropped, cross = set(), []
    for group in groups:
        classes = sorted({records[i]["class"] for i in group})
        if len(classes) > 1:
            cross.append(group)
            ids = [records[i]["id"] for i in group]
            for i in group:
                others = ", ".join(x for x in ids if x != records[i]["id"])
                rejected.append((records[i]["id"], "cross-class-duplicate", f"group {len(cross)}: also {others}"))
            dropped.update(group)
            continue
        keep = max(group, key=lambda i: (records[i]["width"] * records[i]["height"], -i))
        for i in group:
            if i != keep:
                rejected.append((records[i]["id"], "duplicate", f"of {records[keep]['id']}"))
                dropped.add(i)
    return dropped, cross


def _window(image, trims):
    w, h = image.size
    left, top, right, bottom = trims
    return image.crop((round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom))))


def _window_hashes(thumb):
    """uint64 `(81,)`: the pHash of each window of `_WINDOWS`, the whole frame first."""
    import imagehash  # deferred: crawl imports this module only for the manifest format, and needs no hashing

    bits = np.stack([imagehash.phash(_window(thumb, trims)).hash.reshape(-1) for trims in _WINDOWS])
    return np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.uint64)


def _unit_pixels(image):
    """float64 `(1024,)`: 32x32 grayscale pixels, centred and scaled to unit norm (zeros for a flat image)."""
    x = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64).reshape(-1)
    x -= x.mean()
    norm = np.linalg.norm(x)
    return x / norm if norm > 1e-6 else x


def _write_sheets(sheet_dir, by_class, cross_groups, *, per_page=100):
    sheet_dir.mkdir()
    pages = [(cls, [r["image"] for r in recs], [r["id"] for r in recs]) for cls, recs in by_class.items()]
    if cross_groups:
        members = [(g, r) for g, group in enumerate(cross_groups, start=1) for r in group]
        pages.append(("duplicates", [r["image"] for _, r in members], [f"#{g} {r['id']}" for g, r in members]))
    written = []
    for name, images, labels in pages:
        for page, start in enumerate(range(0, len(images), per_page), start=1):
            path = sheet_dir / f"{name}-{page:02d}.png"
            contact_sheet(images[start : start + per_page], labels[start : start + per_page], title=name).save(path)
            written.append(path)
    return written


def _write_csv(path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue())


def _escaped(text):
    """``text`` (a file name, or a message holding one) with the bytes that are not valid UTF-8 written as ``\\xe9``
    escapes, so that it can be written to a CSV or a contact sheet and typed into a rejects file."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")
