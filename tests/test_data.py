import io

import numpy as np
import pytest
from PIL import Image

from streetlib.classes import OUTPUTS, ClassSpec
from streetlib.data.images import DataError, fit_image
from streetlib.data.loaders import (
    StreetData,
    content_hash,
    load_dataset,
    load_image_folder,
    load_street10,
    read_image,
    write_checksums,
    write_street10,
)

SPEC = ClassSpec.from_dict({"name": "tiny", "regions": {"west": ["aa", "bb"], "east": ["cc"]}})


def _arrays(n=4, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {c: rng.integers(0, 256, (n + i, size, size, 3), dtype=np.uint8) for i, c in enumerate(SPEC.classes)}


def _save_npy(root, arrays):
    root.mkdir(parents=True, exist_ok=True)
    for cls, arr in arrays.items():
        np.save(root / f"{cls}.npy", arr)
    SPEC.to_yaml(root / "classes.yaml")


# --- Street10 format ---------------------------------------------------------------------------------------------


def test_street10_uint8_round_trip(tmp_path):
    arrays = _arrays()
    masks = {c: (a[..., 0] > 128).astype(np.uint8) for c, a in arrays.items()}
    write_street10(tmp_path / "ds", arrays, classes=SPEC, masks_by_class=masks, meta={"synthetic": True})
    data = load_street10(tmp_path / "ds")
    assert data.spec == SPEC and data.synthetic and data.name == "ds"
    np.testing.assert_array_equal(data.images, np.concatenate(list(arrays.values())))
    np.testing.assert_array_equal(data.city, [0] * 4 + [1] * 5 + [2] * 6)
    np.testing.assert_array_equal(data.region, [0] * 9 + [1] * 6)
    np.testing.assert_array_equal(data.masks, np.concatenate(list(masks.values())))
    assert data.files[4] == "bb.npy[0]"
    assert "synthetic" in data.label


def test_labels_of_a_subset_give_each_output_from_the_city(tmp_path):
    write_street10(tmp_path / "ds", _arrays(), classes=SPEC)
    labels = load_street10(tmp_path / "ds").labels([14, 0, 9])
    assert tuple(labels) == OUTPUTS
    np.testing.assert_array_equal(labels["city"], [2, 0, 2])
    np.testing.assert_array_equal(labels["region"], [1, 0, 1])


def test_street10_float_is_converted_exactly_without_float64_copies(tmp_path, monkeypatch):
    arrays = _arrays()
    floats = {c: a.astype(np.float64) / 255.0 for c, a in arrays.items()}
    _save_npy(tmp_path / "ds", floats)
    # Force several chunks per class, so chunked conversion is what is tested.
    monkeypatch.setattr("streetlib.data.loaders._CHUNK_BYTES", 8 * 8 * 3 * 8 * 2)
    data = load_street10(tmp_path / "ds")
    assert data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, np.concatenate(list(arrays.values())))


@pytest.mark.parametrize("chunk_bytes", [None, 8 * 8 * 3 * 8 * 2, 40])
@pytest.mark.parametrize("as_float", [False, True])
def test_fortran_ordered_npy_is_read_like_np_load(tmp_path, monkeypatch, chunk_bytes, as_float):
    arrays = _arrays()
    saved = {c: a.astype(np.float64) / 255.0 if as_float else a for c, a in arrays.items()}
    # Only bb is Fortran-ordered: its neighbours show that C-ordered files still load as before.
    saved["bb"] = np.asfortranarray(saved["bb"])
    _save_npy(tmp_path / "ds", saved)
    assert np.load(tmp_path / "ds" / "bb.npy", mmap_mode="r").flags.f_contiguous
    if chunk_bytes is not None:  # Several chunks per class, down to a few pixels each.
        monkeypatch.setattr("streetlib.data.loaders._CHUNK_BYTES", chunk_bytes)
    data = load_street10(tmp_path / "ds")
    expected = [np.load(tmp_path / "ds" / f"{c}.npy") for c in SPEC.classes]
    if as_float:
        expected = [np.rint(e * 255.0).astype(np.uint8) for e in expected]
    np.testing.assert_array_equal(data.images, np.concatenate(expected))
    np.testing.assert_array_equal(data.images[4:9], arrays["bb"])


def test_street10_is_memory_mapped(tmp_path, monkeypatch):
    _save_npy(tmp_path / "ds", _arrays())
    modes = []
    real_load = np.load

    def spy(path, *args, **kwargs):
        modes.append((kwargs.get("mmap_mode"), kwargs.get("allow_pickle")))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    load_street10(tmp_path / "ds")
    assert modes and all(m == ("r", False) for m in modes)


def test_missing_class_lists_what_was_found(tmp_path):
    arrays = _arrays()
    del arrays["cc"]
    _save_npy(tmp_path / "ds", arrays)
    with pytest.raises(DataError, match=r"\['cc.npy'\] not found in .*ds.*Found: \['aa.npy', 'bb.npy'\]"):
        load_street10(tmp_path / "ds")


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="Street10 directory not found: .*nowhere"):
        load_street10(tmp_path / "nowhere")


def test_empty_class(tmp_path):
    arrays = _arrays()
    arrays["bb"] = arrays["bb"][:0]
    _save_npy(tmp_path / "ds", arrays)
    with pytest.raises(DataError, match="Class 'bb' is empty"):
        load_street10(tmp_path / "ds")


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 8, 8), np.uint8), "expected rank 4"),
        (np.zeros((2, 8, 8, 4), np.uint8), "4 channels"),
        (np.full((2, 8, 8, 3), 1.5, np.float32), r"outside \[0, 1\].*max 1.5"),
        (np.full((2, 8, 8, 3), -0.1, np.float64), r"outside \[0, 1\]"),
        (np.zeros((2, 8, 8, 3), np.int16), "dtype int16"),
    ],
)
def test_bad_arrays_name_the_file(tmp_path, bad, match):
    arrays = _arrays()
    arrays["bb"] = bad
    _save_npy(tmp_path / "ds", arrays)
    with pytest.raises(DataError, match=f"bb.npy.*{match}|{match}.*bb.npy|bb.npy"):
        load_street10(tmp_path / "ds")
    with pytest.raises(DataError, match=match):
        load_street10(tmp_path / "ds")


def test_pickled_npy_is_refused(tmp_path):
    arrays = _arrays()
    _save_npy(tmp_path / "ds", arrays)
    obj = np.empty(2, dtype=object)
    obj[:] = [arrays["bb"][0], arrays["bb"][1]]
    np.save(tmp_path / "ds" / "bb.npy", obj, allow_pickle=True)
    with pytest.raises(DataError, match="bb.npy holds pickled Python objects"):
        load_street10(tmp_path / "ds")


@pytest.mark.parametrize("content", [b"city,url\nparis,https://example.org/1.jpg\n", b""])
def test_non_npy_file_is_named_and_not_called_pickled(tmp_path, content):
    _save_npy(tmp_path / "ds", _arrays())
    (tmp_path / "ds" / "bb.npy").write_bytes(content)
    with pytest.raises(DataError) as info:
        load_street10(tmp_path / "ds")
    message = str(info.value)
    assert str(tmp_path / "ds" / "bb.npy") in message
    assert "is not a NumPy .npy file" in message and "pickled" not in message
    assert "streetlib data build" in message and "streetlib data synth" in message


def test_classes_of_different_sizes(tmp_path):
    arrays = _arrays()
    arrays["cc"] = np.zeros((2, 16, 16, 3), np.uint8)
    _save_npy(tmp_path / "ds", arrays)
    with pytest.raises(DataError, match="different image sizes"):
        load_street10(tmp_path / "ds")


def test_write_refuses_to_overwrite(tmp_path):
    write_street10(tmp_path / "ds", _arrays(), classes=SPEC)
    with pytest.raises(FileExistsError, match="already holds a dataset"):
        write_street10(tmp_path / "ds", _arrays(seed=1), classes=SPEC)
    np.testing.assert_array_equal(load_street10(tmp_path / "ds").images[:4], _arrays()["aa"])


# --- Image folders -----------------------------------------------------------------------------------------------


def _save(path, image, fmt=None, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **kwargs)
    return path


def test_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (10, 6), (255, 0, 0, 0))  # fully transparent red: composited on white
    gray = Image.new("L", (10, 6), 100)
    palette = Image.new("RGB", (10, 6), (0, 0, 255)).convert("P")
    deep = Image.fromarray(np.full((6, 10), 65535 // 2, np.uint16))
    cases = {
        "rgba.png": (rgba, (255, 255, 255)),
        "gray.png": (gray, (100, 100, 100)),
        "pal.png": (palette, (0, 0, 255)),
        "deep.png": (deep, (128, 128, 128)),
    }
    for name, (img, expected) in cases.items():
        out = read_image(_save(tmp_path / name, img))
        assert out.shape == (6, 10, 3) and out.dtype == np.uint8, name
        np.testing.assert_allclose(out[3, 5], expected, atol=1, err_msg=name)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = _save(tmp_path / "rot.jpg", img, exif=exif.tobytes(), quality=95)
    out = read_image(path)
    assert out.shape == (20, 10, 3)  # portrait once upright
    assert out[:5].mean() > 200 and out[-5:].mean() < 50  # the white half is now on top


def test_resize_policies_keep_or_distort_aspect():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (10, 0, 30, 20))  # white centre band, half the width
    crop = fit_image(img, 20, policy="crop")  # scale to 40x20 already tall enough: centre 20x20 is all white
    pad = fit_image(img, 20, policy="pad")  # 20x10 image, padded top and bottom with black
    stretch = fit_image(img, 20, policy="stretch")
    assert crop.shape == pad.shape == stretch.shape == (20, 20, 3)
    assert crop.mean() > 250
    assert pad[:4].max() == 0 and pad[-4:].max() == 0 and pad[10, 10].min() > 250
    assert stretch[10, :4].max() < 10 and stretch[10, 8:12].min() > 240
    with pytest.raises(ValueError, match="Invalid `policy`.*Received: policy='squash'"):
        fit_image(img, 20, policy="squash")


def _folder(tmp_path, per_class=2):
    root = tmp_path / "photos"
    for ci, cls in enumerate(SPEC.classes):
        for i in range(per_class):
            _save(root / cls / f"{i}.png", Image.new("RGB", (30, 20), (ci * 100, i * 50, 0)))
    SPEC.to_yaml(root / "classes.yaml")
    return root


def test_image_folder_loads_in_class_then_name_order(tmp_path):
    root = _folder(tmp_path)
    (root / "aa" / "notes.txt").write_text("not an image")
    data = load_dataset(root, size=16)
    assert data.images.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(data.city, [0, 0, 1, 1, 2, 2])
    assert data.images[2, 8, 8, 0] == 100 and data.images[3, 8, 8, 1] == 50
    assert data.files[0].endswith("aa/0.png")


def test_corrupt_image_raises_or_is_skipped(tmp_path):
    root = _folder(tmp_path, per_class=3)
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good, format="JPEG")
    (root / "bb" / "9-truncated.jpg").write_bytes(good.getvalue()[:200])
    (root / "cc" / "9-garbage.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="Cannot read image .*9-truncated.jpg.*on_error='skip'"):
        load_image_folder(root, size=16)
    # read_image has no on_error: its own message must not offer one.
    with pytest.raises(DataError) as info:
        read_image(root / "cc" / "9-garbage.png")
    assert "9-garbage.png" in str(info.value) and "Replace or remove the file" in str(info.value)
    assert "on_error" not in str(info.value)
    data = load_image_folder(root, size=16, on_error="skip")
    assert len(data) == 9
    assert sorted(p.split("/")[-1] for p, _ in data.skipped) == ["9-garbage.png", "9-truncated.jpg"]
    assert all(reason for _, reason in data.skipped)


def test_image_folder_errors(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(ValueError, match="Invalid `on_error`.*Received: on_error='ignore'"):
        load_image_folder(root, on_error="ignore")
    for p in (root / "cc").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="Class 'cc' is empty"):
        load_image_folder(root)
    (root / "cc").rmdir()
    with pytest.raises(DataError, match=r"Class folder\(s\) \['cc'\] not found.*Found folders: \['aa', 'bb'\]"):
        load_image_folder(root)
    with pytest.raises(FileNotFoundError, match="Image not found"):
        read_image(root / "nope.jpg")


@pytest.mark.parametrize("side", [40, 60])  # past MAX_IMAGE_PIXELS PIL warns; past twice that it refuses
def test_a_decompression_bomb_is_an_unreadable_image(tmp_path, monkeypatch, side):
    root = _folder(tmp_path)
    _save(root / "bb" / "9-bomb.png", Image.new("RGB", (side, side), (1, 2, 3)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 30 x 20 photos stay under it
    with pytest.raises(DataError) as info:
        load_image_folder(root, size=16)
    message = str(info.value)
    assert message.startswith(f"Cannot read image {root / 'bb' / '9-bomb.png'}: Image size ({side * side} pixels)")
    assert "MAX_IMAGE_PIXELS" in message and "\n" not in message
    data = load_image_folder(root, size=16, on_error="skip")
    assert len(data) == 6
    assert [(p, "decompression bomb" in reason) for p, reason in data.skipped] == [
        (str(root / "bb" / "9-bomb.png"), True)
    ]


def test_directories_and_broken_links_named_like_images_are_unreadable(tmp_path):
    root = _folder(tmp_path)
    (root / "aa" / "5-folder.jpg").mkdir()
    (root / "bb" / "5-link.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(DataError) as info:
        load_image_folder(root, size=16)
    message = str(info.value)
    assert message.startswith(f"Cannot read image {root / 'aa' / '5-folder.jpg'}: it is a directory, not an image")
    assert "not found" not in message and "\n" not in message
    data = load_image_folder(root, size=16, on_error="skip")
    assert len(data) == 6
    reasons = dict(data.skipped)
    assert sorted(reasons) == [str(root / "aa" / "5-folder.jpg"), str(root / "bb" / "5-link.jpg")]
    assert "it is a directory" in reasons[str(root / "aa" / "5-folder.jpg")]
    assert (
        f"broken symbolic link (its target {tmp_path / 'gone.jpg'} does not exist)"
        in reasons[str(root / "bb" / "5-link.jpg")]
    )
    (root / "aa" / "5-folder.jpg").rmdir()
    with pytest.raises(DataError, match="Cannot read image .*5-link.jpg: it is a broken symbolic link"):
        load_image_folder(root, size=16)


@pytest.mark.parametrize(
    "values, expected",
    [
        (np.full((6, 10), 0.5, np.float32), 128),  # floats in [0, 1]: the float convention, scaled by 255
        (np.full((6, 10), 1.0, np.float32), 255),
        (np.full((6, 10), 100.0, np.float32), 100),  # floats past 1: read on the 8-bit scale
        (np.full((6, 10), 32767.5, np.float32), 128),  # past 255: the 16-bit scale
        (np.full((6, 10), 1, np.int32), 1),  # 32-bit integers are never taken for [0, 1]
        (np.full((6, 10), 200, np.int32), 200),
        (np.full((6, 10), 65535, np.int32), 255),
    ],
)
def test_32_bit_grayscale_is_scaled_by_the_range_of_its_values(tmp_path, values, expected):
    path = _save(tmp_path / "deep.tif", Image.fromarray(values))
    out = read_image(path)
    assert out.shape == (6, 10, 3)
    np.testing.assert_array_equal(out[3, 5], [expected] * 3)


@pytest.mark.parametrize(
    "values, shown",
    [
        (np.full((6, 10), -0.5, np.float32), "min -0.5"),
        (np.full((6, 10), np.nan, np.float32), "min nan"),
        (np.full((6, 10), 70000, np.int32), "max 70000"),
    ],
)
def test_32_bit_grayscale_outside_the_16_bit_range_is_refused(tmp_path, values, shown):
    path = _save(tmp_path / "deep.tif", Image.fromarray(values))
    with pytest.raises(DataError, match=f"Cannot read image .*deep.tif: its 32-bit pixel values \\(.*{shown}.*outside"):
        read_image(path)


def test_image_folders_record_the_hash_of_each_image_before_resizing(tmp_path):
    root = _folder(tmp_path)
    small, large = load_image_folder(root, size=8), load_image_folder(root, size=16, policy="pad")
    assert small.source_hashes == large.source_hashes == small.split_keys()
    assert small.source_hashes == [content_hash(read_image(f)) for f in small.files]
    assert small.content_hashes() != large.content_hashes()
    write_street10(tmp_path / "ds", _arrays(), classes=SPEC)
    stored = load_street10(tmp_path / "ds")
    assert stored.source_hashes is None and stored.split_keys() == stored.content_hashes()


def test_content_hash_is_pixel_identity():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    assert content_hash(a) == content_hash(b)
    b[0, 0, 0] = 1
    assert content_hash(a) != content_hash(b)
    assert content_hash(a) != content_hash(np.zeros((2, 8, 3), np.uint8))


def test_streetdata_validates_shapes():
    with pytest.raises(DataError, match="uint8 of shape"):
        StreetData(images=np.zeros((2, 4, 4, 3), np.float32), city=[0, 1], spec=SPEC, name="x")
    with pytest.raises(DataError, match="`city` must have shape"):
        StreetData(images=np.zeros((2, 4, 4, 3), np.uint8), city=[0], spec=SPEC, name="x")


def test_checksums_are_verified_on_load(tmp_path):
    root = write_street10(tmp_path / "ds", _arrays(), classes=SPEC)
    write_checksums(root, ["aa.npy", "bb.npy", "cc.npy"])
    assert len(load_street10(root)) == 15
    arr = np.load(root / "bb.npy")
    arr[0, 0, 0, 0] ^= 1
    np.save(root / "bb.npy", arr)
    with pytest.raises(DataError, match="bb.npy does not match its checksum"):
        load_street10(root)
