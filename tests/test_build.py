"""The clean-and-package path, offline, on synthetic photos and the shared street samples."""

import csv
import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streetlib.classes import ClassSpec
from streetlib.cli.commands import main
from streetlib.data.build import (
    build_dataset,
    contact_sheet,
    crop_margin,
    find_duplicates,
    read_rejects,
)
from streetlib.data.images import DataError, fit_image
from streetlib.data.loaders import load_street10, verify_checksums

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "street-samples"
SPEC = ClassSpec.from_dict({"name": "three", "regions": {"east": ["tokyo"], "west": ["vancouver", "paris"]}})
SIZE = 64


def _sample(name):
    if not (SAMPLES / name).is_file():
        pytest.skip(f"street sample {name} not found in {SAMPLES}")
    with Image.open(SAMPLES / name) as img:
        return img.convert("RGB")


def _synthetic_photo(seed, size=(96, 128), mode="RGB"):
    """A smooth random scene with fine noise: photo-like to the cleaning checks, unique per seed."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(
        size[::-1], Image.Resampling.BICUBIC
    )
    noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (*size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).convert(mode)


def _jpeg(image, quality):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _trim(image, left, top, right, bottom):
    w, h = image.size
    return image.crop((round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom))))


def _make_raw(raw):
    """A raw folder with every problem the build must handle; returns the expected outcome per file id."""
    for c, cls in enumerate(SPEC.classes):
        (raw / cls).mkdir(parents=True)
        for k in range(3):
            _synthetic_photo(100 + 10 * c + k).save(raw / cls / f"s{k}.jpg", quality=92)
    SPEC.to_yaml(raw / "classes.yaml")
    tokyo, vancouver, demo = _sample("tokyo.jpg"), _sample("vancouver.jpg"), _sample("demo-street.jpg")
    # Cross-class near-duplicates: re-encoded, resized, cropped.
    tokyo.save(raw / "tokyo" / "tokyo.jpg", quality=95)
    _jpeg(tokyo, 60).save(raw / "paris" / "tokyo-q60.jpg", quality=95)
    # Byte for byte: the large original photo, as a crawl would save it.
    (raw / "vancouver" / "vancouver.jpg").write_bytes((SAMPLES / "vancouver.jpg").read_bytes())
    vancouver.resize((vancouver.width // 2, vancouver.height // 2)).save(raw / "tokyo" / "vancouver-half.png")
    demo.save(raw / "paris" / "demo.jpg", quality=95)
    _trim(demo, 0.06, 0.04, 0.02, 0.08).save(raw / "vancouver" / "demo-cropped.jpg", quality=90)
    # Within one class: an exact re-encoding and a smaller copy of one synthetic photo.
    base = _synthetic_photo(7, size=(120, 160))
    base.save(raw / "paris" / "p-big.jpg", quality=95)
    _jpeg(base, 60).resize((120, 90)).save(raw / "paris" / "p-small.jpg")
    # Rejects.
    good = (raw / "tokyo" / "s0.jpg").read_bytes()
    (raw / "tokyo" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (raw / "vancouver" / "page.jpg").write_text("<html>Not Found</html>")
    _synthetic_photo(11, size=(40, 30)).save(raw / "paris" / "tiny.png")
    Image.new("RGB", (200, 150), (200, 30, 30)).save(raw / "vancouver" / "logo.png")
    frames = [_synthetic_photo(s) for s in (12, 13)]
    frames[0].save(raw / "tokyo" / "anim.gif", save_all=True, append_images=frames[1:])
    # Kept: a grayscale photo.
    _synthetic_photo(21, mode="L").save(raw / "paris" / "gray.jpg")
    with (raw / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "city", "url", "keyword", "engine", "filters"])
        writer.writerow(["paris/gray.jpg", "paris", "https://example.org/g.jpg", "Paris street -art", "google", "{}"])
    return {
        "tokyo/tokyo.jpg": "cross-class-duplicate",
        "paris/tokyo-q60.jpg": "cross-class-duplicate",
        "vancouver/vancouver.jpg": "cross-class-duplicate",
        "tokyo/vancouver-half.png": "cross-class-duplicate",
        "paris/demo.jpg": "cross-class-duplicate",
        "vancouver/demo-cropped.jpg": "cross-class-duplicate",
        "paris/p-small.jpg": "duplicate",
        "tokyo/truncated.jpg": "unreadable",
        "vancouver/page.jpg": "unreadable",
        "paris/tiny.png": "too-small",
        "vancouver/logo.png": "not-a-photo",
        "tokyo/anim.gif": "not-a-photo",
    }


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    expected = _make_raw(root / "raw")
    report = build_dataset(root / "raw", root / "out", size=SIZE)
    return root, expected, report


def test_rejects_each_problem_file_with_its_reason(built):
    root, expected, report = built
    assert {file_id: reason for file_id, reason, _ in report.rejected} == expected
    rows = _rows(root / "out" / "rejected.csv")
    assert {r["file"]: r["reason"] for r in rows} == expected
    details = {r["file"]: r["detail"] for r in rows}
    assert details["paris/p-small.jpg"] == "of paris/p-big.jpg"
    assert "30x40" in details["paris/tiny.png"] and "min_size=64" in details["paris/tiny.png"]
    assert "2 frames" in details["tokyo/anim.gif"]


def test_cross_class_duplicates_are_flagged_and_in_no_class(built):
    root, _, report = built
    groups = sorted(report.duplicates)
    assert groups == [
        ["paris/demo.jpg", "vancouver/demo-cropped.jpg"],
        ["paris/tokyo-q60.jpg", "tokyo/tokyo.jpg"],
        ["tokyo/vancouver-half.png", "vancouver/vancouver.jpg"],
    ]
    rows = _rows(root / "out" / "duplicates.csv")
    assert sorted(sorted(r["file"] for r in rows if r["group"] == g) for g in {r["group"] for r in rows}) == groups
    assert {r["class"] for r in rows if r["file"] == "vancouver/vancouver.jpg"} == {"vancouver"}
    assert {r["width"] for r in rows if r["file"] == "vancouver/vancouver.jpg"} == {"2272"}
    packaged = {r["file"] for r in _rows(root / "out" / "manifest.csv")}
    assert not packaged & {f for g in groups for f in g}
    assert "duplicates" in report.summary() and "rejects.txt" in report.summary()


def test_packages_street10_format_with_manifest(built):
    root, _, report = built
    out = root / "out"
    assert report.kept == {"tokyo": 3, "vancouver": 3, "paris": 5}
    data = load_street10(out)
    assert data.spec.classes == SPEC.classes
    assert data.images.shape == (11, SIZE, SIZE, 3) and data.images.dtype == np.uint8
    assert np.load(out / "paris.npy").dtype == np.uint8
    rows = _rows(out / "manifest.csv")
    assert [(r["class"], int(r["index"])) for r in rows] == [(c, i) for c, n in report.kept.items() for i in range(n)]
    gray = next(r for r in rows if r["file"] == "paris/gray.jpg")
    assert gray["mode"] == "L" and gray["url"] == "https://example.org/g.jpg" and gray["keyword"] == "Paris street -art"
    gray_image = np.load(out / "paris.npy")[int(gray["index"])]
    assert (gray_image == gray_image[..., :1]).all()
    assert next(r for r in rows if r["file"] == "tokyo/s0.jpg")["url"] == ""


def test_packaged_image_is_margin_cropped_then_fitted(built):
    root, _, _ = built
    rows = _rows(root / "out" / "manifest.csv")
    index = next(int(r["index"]) for r in rows if r["file"] == "tokyo/s1.jpg")
    got = np.load(root / "out" / "tokyo.npy")[index].astype(np.float32)
    with Image.open(root / "raw" / "tokyo" / "s1.jpg") as img:
        rgb = img.convert("RGB")
    cropped = fit_image(crop_margin(rgb, 0.05), SIZE, policy="crop").astype(np.float32)
    uncropped = fit_image(rgb, SIZE, policy="crop").astype(np.float32)
    assert np.abs(got - cropped).mean() < 1.0
    assert np.abs(got - uncropped).mean() > 3.0


def test_checksums_are_written_and_verified(built, tmp_path):
    root, _, _ = built
    out = root / "out"
    names = [line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()]
    assert names == ["tokyo.npy", "vancouver.npy", "paris.npy", "classes.yaml", "manifest.csv"]
    verify_checksums(out)

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in [*names, "SHA256SUMS"]:
        (copy / name).write_bytes((out / name).read_bytes())
    data = bytearray((copy / "paris.npy").read_bytes())
    data[-1] ^= 0xFF
    (copy / "paris.npy").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"paris\.npy does not match its checksum"):
        verify_checksums(copy)
    (copy / "tokyo.npy").unlink()
    with pytest.raises(DataError, match=r"tokyo\.npy is listed in .* but missing"):
        verify_checksums(copy)
    (copy / "SHA256SUMS").write_text("not a checksum line\n")
    with pytest.raises(DataError, match="line 1 is malformed"):
        verify_checksums(copy)
    (copy / "SHA256SUMS").unlink()
    with pytest.raises(DataError, match="No SHA256SUMS"):
        verify_checksums(copy)


def test_contact_sheets_show_every_packaged_image(built):
    root, _, report = built
    sheets = root / "out" / "contact_sheets"
    assert sorted(p.name for p in sheets.iterdir()) == [
        "duplicates-01.png",
        "paris-01.png",
        "tokyo-01.png",
        "vancouver-01.png",
    ]
    assert sorted(report.sheets) == sorted(sheets.iterdir())
    with Image.open(sheets / "paris-01.png") as sheet:
        assert sheet.size == (4 + 5 * 132, 18 + 4 + 146)  # 5 tiles in one row, titled
    with Image.open(sheets / "duplicates-01.png") as sheet:
        assert sheet.size == (4 + 6 * 132, 18 + 4 + 146)


def test_contact_sheet_places_thumbnails_in_a_grid():
    images = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    images[3] = 255
    sheet = np.asarray(contact_sheet(images, [f"c/{i}.jpg" for i in range(5)], columns=2, thumb=32))
    assert sheet.shape == (4 + 3 * 50, 4 + 2 * 36, 3)
    tile = sheet[4 + 50 : 4 + 50 + 32, 4 + 36 : 4 + 36 + 32]  # row 1, column 1: image 3
    assert (tile == 255).all()
    assert (sheet[4 : 4 + 32, 4 : 4 + 32] == 0).all()
    assert (sheet[4 + 32 : 4 + 46, 4 : 4 + 32] < 128).any()  # a label is drawn under the first tile
    with pytest.raises(ValueError, match="equally long"):
        contact_sheet(images, ["one"])


def test_next_build_honours_rejects_file(built, tmp_path):
    root, _, _ = built
    raw = root / "raw"
    rejects = tmp_path / "rejects.txt"
    # A person keeps the Tokyo photo in tokyo by rejecting its copy in paris, and rejects a blurry one.
    rejects.write_text("# reviewed\nparis/tokyo-q60.jpg  # the Tokyo photo belongs to tokyo\n\ntokyo/s2.jpg\n")
    report = build_dataset(raw, tmp_path / "out", size=SIZE, rejects=rejects)
    reasons = {file_id: reason for file_id, reason, _ in report.rejected}
    assert reasons["paris/tokyo-q60.jpg"] == "marked" and reasons["tokyo/s2.jpg"] == "marked"
    assert "tokyo/tokyo.jpg" not in reasons
    assert ["paris/tokyo-q60.jpg", "tokyo/tokyo.jpg"] not in report.duplicates
    assert len(report.duplicates) == 2
    assert report.kept["tokyo"] == 3  # s2 out, tokyo.jpg in
    assert "tokyo/tokyo.jpg" in {r["file"] for r in _rows(tmp_path / "out" / "manifest.csv")}


def test_rejects_file_with_unknown_id_fails(tmp_path):
    raw = tmp_path / "raw"
    for seed, cls in enumerate(SPEC.classes):
        (raw / cls).mkdir(parents=True)
        _synthetic_photo(seed).save(raw / cls / "a.jpg")
    (raw / "rejects.txt").write_text("tokyo/a.jpg\ntokyo/000012.jpg\n")
    with pytest.raises(DataError, match=r"rejects\.txt line 2: 'tokyo/000012\.jpg' names no file"):
        build_dataset(raw, tmp_path / "out", classes=SPEC, size=SIZE)
    assert read_rejects(raw / "rejects.txt") == {"tokyo/a.jpg", "tokyo/000012.jpg"}
    assert read_rejects(raw / "none.txt") == set()


def test_build_refuses_bad_input(tmp_path):
    raw = tmp_path / "raw"
    (raw / "tokyo").mkdir(parents=True)
    (raw / "vancouver").mkdir()
    _synthetic_photo(1).save(raw / "tokyo" / "a.jpg")
    _synthetic_photo(2).save(raw / "vancouver" / "b.jpg")
    with pytest.raises(DataError, match=r"Class folder\(s\) \['paris'\] not found"):
        build_dataset(raw, tmp_path / "out", classes=SPEC, size=SIZE)
    (raw / "paris").mkdir()
    (raw / "paris" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match=r"No image of class\(es\) \['paris'\] is left .*'unreadable': 1"):
        build_dataset(raw, tmp_path / "out", classes=SPEC, size=SIZE)
    with pytest.raises(ValueError, match="margin"):
        build_dataset(raw, tmp_path / "out", classes=SPEC, margin=0.5)
    with pytest.raises(ValueError, match="policy"):
        build_dataset(raw, tmp_path / "out", classes=SPEC, policy="squash")
    with pytest.raises(DataError, match="Raw photo directory not found"):
        build_dataset(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    _synthetic_photo(3).save(raw / "paris" / "c.jpg")
    build_dataset(raw, tmp_path / "out", classes=SPEC, size=SIZE)
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        build_dataset(raw, tmp_path / "out", classes=SPEC, size=SIZE)


def test_find_duplicates_catches_edited_copies_not_other_photos():
    photos = [_sample(n) for n in ("tokyo.jpg", "vancouver.jpg", "demo-street.jpg")]
    tokyo = photos[0]
    copies = [
        _jpeg(tokyo, 60),
        tokyo.resize((tokyo.width // 2, tokyo.height // 2)),
        _trim(tokyo, 0.05, 0.05, 0.05, 0.05),
        _trim(tokyo, 0.10, 0.0, 0.0, 0.0),
        tokyo.convert("L").convert("RGB"),
    ]
    # Halves and quarters of one street photo look alike but are different photos.
    vancouver = photos[1]
    parts = [_trim(vancouver, *t) for t in ((0, 0, 0.5, 0.5), (0.5, 0, 0, 0.5), (0, 0.5, 0.5, 0), (0.5, 0.5, 0, 0))]
    images = [crop_margin(p) for p in photos + copies + parts]
    assert find_duplicates(images) == [[0, 3, 4, 5, 6, 7]]
    # At a loose threshold hashes alone join different photos (Tokyo with the demo street, Vancouver with one of
    # its quarters); the pixel correlation check keeps them apart.
    loose = find_duplicates(images, threshold=20, min_correlation=-1.0)
    confirmed = find_duplicates(images, threshold=20)
    assert 2 in loose[0] and [1, 8] in loose
    assert confirmed[0] == [0, 3, 4, 5, 6, 7] and [1, 8] not in confirmed
    assert find_duplicates([]) == []


def test_crop_margin_cuts_every_side():
    pixels = np.arange(100 * 200 * 3, dtype=np.uint32).reshape(100, 200, 3).astype(np.uint8)
    cropped = np.asarray(crop_margin(Image.fromarray(pixels), 0.05))
    assert np.array_equal(cropped, pixels[5:95, 10:190])
    with pytest.raises(ValueError, match="margin"):
        crop_margin(Image.fromarray(pixels), -0.1)


def _small_raw(raw):
    """Two distinct photos per class of `SPEC`."""
    for c, cls in enumerate(SPEC.classes):
        (raw / cls).mkdir(parents=True)
        for k in range(2):
            _synthetic_photo(300 + 10 * c + k).save(raw / cls / f"s{k}.jpg", quality=92)
    SPEC.to_yaml(raw / "classes.yaml")
    return raw


def test_a_file_name_that_is_not_utf8_is_packaged_under_an_escaped_id(tmp_path):
    raw = _small_raw(tmp_path / "raw")
    _synthetic_photo(400).save(os.fsdecode(os.fsencode(raw / "tokyo") + b"/caf\xe9.jpg"), "JPEG")
    report = build_dataset(raw, tmp_path / "out", size=SIZE)
    assert report.kept["tokyo"] == 3
    assert "tokyo/caf\\xe9.jpg" in [row["file"] for row in _rows(tmp_path / "out" / "manifest.csv")]
    verify_checksums(tmp_path / "out")

    (raw / "rejects.txt").write_text("tokyo/caf\\xe9.jpg  # as printed on the contact sheet\n")
    report = build_dataset(raw, tmp_path / "again", size=SIZE)
    assert report.kept["tokyo"] == 2 and ("tokyo/caf\\xe9.jpg", "marked", "listed in rejects.txt") in report.rejected


def test_a_broken_symlink_is_rejected_with_its_reason(tmp_path):
    raw = _small_raw(tmp_path / "raw")
    (raw / "paris" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    report = build_dataset(raw, tmp_path / "out", size=SIZE)
    rows = {row["file"]: row for row in _rows(tmp_path / "out" / "rejected.csv")}
    assert rows["paris/gone.jpg"]["reason"] == "unreadable"
    assert rows["paris/gone.jpg"]["detail"] == f"a broken symbolic link to {tmp_path / 'deleted.jpg'}"
    assert report.kept["paris"] == 2


@pytest.mark.parametrize("size", [0, -5, 100_000, (SIZE, 0), True, 64.0, "64"])
def test_an_invalid_size_fails_before_anything(tmp_path, size):
    raw = _small_raw(tmp_path / "raw")
    with pytest.raises(ValueError, match=r"^Invalid `size`: expected an int in \[16, 4096\] or a \(height, width\)"):
        build_dataset(raw, tmp_path / "out", size=size)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_cli_build_with_size_0_is_one_line(tmp_path, capsys):
    raw = _small_raw(tmp_path / "raw")
    assert main(["data", "build", "--raw", str(raw), "--out", str(tmp_path / "out"), "--size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Invalid `size`" in err and "Received: size=0" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("owner, name", [(np, "save"), (Image.Image, "save")])
def test_a_build_that_fails_part_way_leaves_nothing_and_a_rerun_works(tmp_path, monkeypatch, owner, name):
    raw = _small_raw(tmp_path / "raw")
    out = tmp_path / "out"
    calls = []
    original = getattr(owner, name)

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second .npy file, or the second contact sheet
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, full_disk)
    with pytest.raises(OSError, match=rf"No space left on device: '{out}'"):
        build_dataset(raw, out, size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    monkeypatch.undo()
    report = build_dataset(raw, out, size=SIZE)
    assert sum(report.kept.values()) == 6
    verify_checksums(out)
