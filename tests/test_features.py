import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_computation, make_toy_data, run_script, toy_split

from streetlib.baselines import features
from streetlib.baselines.features import FeatureExtractor
from streetlib.data.loaders import StreetData
from streetlib.models import weights


@pytest.fixture(scope="module")
def data():
    """20 toy images of 32 px (2 per city): enough for a split, cheap for VGG16."""
    return make_toy_data(per_class=2, size=32, seed=3)


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(weights="random")


class CountingExtractor(FeatureExtractor):
    """Counts the forward passes, so a test can tell a cache hit from a recompute."""

    calls = 0

    def extract(self, *args, **kwargs):
        CountingExtractor.calls += 1
        return super().extract(*args, **kwargs)


def _changed(data):
    """The same images with one pixel changed."""
    images = data.images.copy()
    images[0, 0, 0, 0] ^= 1
    return StreetData(images=images, city=data.city, spec=data.spec, name=data.name, synthetic=True)


def test_features_shapes_and_poolings(data, extractor):
    out = extractor.extract(data, poolings=["avg", "max", "flatten"], progress=False)
    assert {p: a.shape for p, a in out.items()} == {"avg": (20, 512), "max": (20, 512), "flatten": (20, 512)}
    assert all(a.dtype == np.float32 for a in out.values())
    # At 32 px block5_pool is 1x1: every pooling of a 1x1 map is the map itself.
    np.testing.assert_array_equal(out["avg"], out["flatten"])


def test_intermediate_layer_flattens_the_whole_map(data, extractor):
    fx = FeatureExtractor(weights="random", layer="block4_pool")
    out = fx.extract(data, [0, 1], poolings=["avg", "flatten", "avgmax"], progress=False)
    assert fx.layer_name(data) == "block4_pool"
    assert out["flatten"].shape == (2, 2 * 2 * 512)
    cells = out["flatten"].reshape(2, 4, 512)
    np.testing.assert_allclose(out["avg"], cells.mean(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(out["avgmax"], np.concatenate([out["avg"], cells.max(axis=1)], axis=1))


def test_one_image_is_identical_through_the_cache_and_without(tmp_path, data):
    first = CountingExtractor(weights="random").features(data, poolings=["avg"], cache_dir=tmp_path, progress=False)
    again = FeatureExtractor(weights="random").features(data, poolings=["avg"], cache_dir=tmp_path, progress=False)
    alone = FeatureExtractor(weights="random").extract(data, [7], poolings=["avg"], progress=False)

    np.testing.assert_array_equal(again["avg"], first["avg"])  # the cache returns the stored bytes
    # One image alone and the same image in a batch of 20 go through different oneDNN kernels on some CPUs.
    assert_same_computation(alone["avg"][0], again["avg"][7])
    # The tolerance cannot hide a wrong image: the neighbour, of the same city, differs far beyond it.
    with pytest.raises(AssertionError):
        assert_same_computation(alone["avg"][0], again["avg"][6])


OTHER_CPU_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
from conftest import make_toy_data
from streetlib.baselines.features import FeatureExtractor
data = make_toy_data(per_class=2, size=32, seed=3)
extractor = FeatureExtractor(weights="random", batch_size=3)
np.save({out!r}, extractor.extract(data, poolings=["avg"], progress=False)["avg"])
"""


def test_features_agree_on_another_instruction_set_thread_count_and_batch(tmp_path, data):
    """What CI on another CPU would see: oneDNN capped to SSE4.1 kernels (never the ones this machine picks, AVX2 or
    AVX-512), one thread and batches of 3, against this process's defaults."""
    out = tmp_path / "features.npy"
    script = OTHER_CPU_SCRIPT.format(tests=str(Path(__file__).resolve().parent), out=str(out))
    done = run_script(script, ONEDNN_MAX_CPU_ISA="SSE41")
    assert done.returncode == 0, done.stderr[-3000:]
    here = FeatureExtractor(weights="random").extract(data, poolings=["avg"], progress=False)["avg"]
    assert_same_computation(np.load(out), here)


def test_second_run_reads_the_cache(tmp_path, data):
    CountingExtractor.calls = 0
    CountingExtractor(weights="random").features(data, poolings=["avg", "flatten"], cache_dir=tmp_path, progress=False)
    CountingExtractor(weights="random").features(data, poolings=["flatten", "avg"], cache_dir=tmp_path, progress=False)
    assert CountingExtractor.calls == 1
    assert len(list((tmp_path / data.name).glob("*.npy"))) == 2


@pytest.mark.parametrize(
    "change",
    [
        {"weights": "hed-bsds500"},
        {"layer": "block4_pool"},
        {"image_size": 48},
        {"normalization": "unit"},
        {"init_seed": 1},
    ],
)
def test_a_changed_parameter_means_a_recompute(tmp_path, data, change):
    base = {"weights": "random"}
    CountingExtractor.calls = 0
    CountingExtractor(**base).features(data, cache_dir=tmp_path, progress=False)
    out = CountingExtractor(**{**base, **change}).features(data, cache_dir=tmp_path, progress=False)
    assert CountingExtractor.calls == 2
    assert len(list((tmp_path / data.name).glob("*.npy"))) == 2
    assert out["avg"].shape[0] == len(data)


def test_features_of_some_images_are_their_rows_cached_apart_from_all(tmp_path, data):
    CountingExtractor.calls = 0
    fx = CountingExtractor(weights="random")
    every = fx.features(data, cache_dir=tmp_path, progress=False)["avg"]
    some = fx.features(data, [9, 2, 15], cache_dir=tmp_path, progress=False)["avg"]
    assert some.shape == (3, 512) and CountingExtractor.calls == 2
    # Rows in the order asked, one computation apart from the same rows among all images (another batch).
    assert_same_computation(some, every[[9, 2, 15]])
    np.testing.assert_array_equal(fx.features(data, [9, 2, 15], cache_dir=tmp_path, progress=False)["avg"], some)
    assert CountingExtractor.calls == 2  # read from the cache
    fx.features(data, [2, 9, 15], cache_dir=tmp_path, progress=False)  # other order, other rows: other array
    assert CountingExtractor.calls == 3
    # Every index in order is all the images: the same cached array.
    all_rows = fx.features(data, np.arange(len(data)), cache_dir=tmp_path, progress=False)["avg"]
    np.testing.assert_array_equal(all_rows, every)
    assert CountingExtractor.calls == 3


@pytest.mark.parametrize(
    "indices, match",
    [
        ([20], r"has 20 images .* out of range: \[20\]"),
        ([-1, 3], r"out of range: \[-1\]"),
        ([[1, 2]], "1-D"),
        ([0.5], "int"),
    ],
)
def test_features_of_invalid_indices_fail_naming_them(tmp_path, data, indices, match):
    with pytest.raises(ValueError, match=match):
        FeatureExtractor(weights="random").features(data, indices, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / data.name).exists()  # nothing cached


def test_changed_pooling_or_data_means_a_recompute(tmp_path, data):
    CountingExtractor.calls = 0
    fx = CountingExtractor(weights="random")
    fx.features(data, poolings=["avg"], cache_dir=tmp_path, progress=False)
    fx.features(data, poolings=["max"], cache_dir=tmp_path, progress=False)
    fx.features(_changed(data), poolings=["avg"], cache_dir=tmp_path, progress=False)
    assert CountingExtractor.calls == 3


def test_key_covers_every_parameter(data, extractor):
    split = toy_split(make_toy_data(per_class=6, size=32))
    base = extractor.key(data, pooling="avg")
    variants = [
        extractor.key(data, pooling="max"),
        extractor.key(_changed(data), pooling="avg"),
        FeatureExtractor(weights="random", init_seed=5).key(data, pooling="avg"),
        FeatureExtractor(weights="random", normalization="caffe").key(data, pooling="avg"),
        FeatureExtractor(weights="random", image_size=40).key(data, pooling="avg"),
        FeatureExtractor(weights="hed-bsds500").key(data, pooling="avg"),
        FeatureExtractor(weights="random", layer="block5_conv3").key(data, pooling="avg"),
    ]
    toy = make_toy_data(per_class=6, size=32)
    aug = extractor.key(toy, pooling="avg", split=split, copies=2, seed=0)
    aug_variants = [
        extractor.key(toy, pooling="avg", split=split, copies=3, seed=0),
        extractor.key(toy, pooling="avg", split=split, copies=2, seed=1),
        extractor.key(toy, pooling="avg", split=split, copies=2, seed=0, augment={"rotation": 5.0}),
        extractor.key(toy, pooling="avg", split=toy_split(toy, seed=1), copies=2, seed=0),
    ]
    hashes = [k["hash"] for k in (base, *variants, aug, *aug_variants)]
    assert len(set(hashes)) == len(hashes)
    assert extractor.key(data, pooling="avg") == base
    # A pretrained source is keyed by its file's content, not only its name.
    assert FeatureExtractor(weights="hed-bsds500").fingerprint.startswith("hed-bsds500 sha1:")


def test_weights_file_keyed_by_content(tmp_path):
    path = tmp_path / "mine.weights.h5"
    path.write_bytes(b"one")
    first = features.weights_fingerprint(path)
    path.write_bytes(b"two")
    assert features.weights_fingerprint(path) != first
    assert "mine.weights.h5" in first


def test_stale_cache_is_never_read(tmp_path, data):
    fx = FeatureExtractor(weights="random")
    fresh = fx.features(data, cache_dir=tmp_path, progress=False)["avg"]
    path = fx.cache_path(fx.key(data, pooling="avg"), cache_dir=tmp_path)
    # A file at the right name whose stored key differs (another version wrote it) must be recomputed.
    np.save(path, np.zeros_like(fresh))
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["key"]["version"] = -1
    path.with_suffix(".json").write_text(json.dumps(meta))

    again = fx.features(data, cache_dir=tmp_path, progress=False)["avg"]

    np.testing.assert_array_equal(again, fresh)
    assert json.loads(path.with_suffix(".json").read_text())["key"]["version"] == features.CACHE_VERSION


def test_array_without_key_file_is_recomputed(tmp_path, data):
    fx = FeatureExtractor(weights="random")
    path = fx.cache_path(fx.key(data, pooling="avg"), cache_dir=tmp_path)
    path.parent.mkdir(parents=True)
    np.save(path, np.zeros((len(data), 512), np.float32))
    out = fx.features(data, cache_dir=tmp_path, progress=False)["avg"]
    assert np.abs(out).sum() > 0


def test_augmented_copies_are_cached_per_split(tmp_path):
    toy = make_toy_data(per_class=6, size=32)
    split = toy_split(toy)
    CountingExtractor.calls = 0
    fx = CountingExtractor(weights="random")
    out = fx.augmented(toy, split, copies=2, seed=0, cache_dir=tmp_path, progress=False)["avg"]
    again = fx.augmented(toy, split, copies=2, seed=0, cache_dir=tmp_path, progress=False)["avg"]
    plain = fx.extract(toy, split.train, progress=False)["avg"]

    assert out.shape == (2, len(split.train), 512)
    np.testing.assert_array_equal(again, out)
    assert CountingExtractor.calls == 3  # two copies, then the plain pass: the second call read the cache
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[0], plain)


def test_fingerprint_refuses_a_source_it_does_not_know(monkeypatch):
    monkeypatch.setitem(weights.WEIGHT_SOURCES, "new", weights.WeightSource(name="new", label="new source"))
    with pytest.raises(ValueError, match="Invalid `weights`.*'new'"):
        features.weights_fingerprint("new")


def test_unavailable_weights_fail_when_the_extractor_is_made(monkeypatch):
    def offline(source):
        raise weights.WeightsDownloadError(f"Could not download the {source!r} weights: offline")

    monkeypatch.setattr(weights, "fetch", offline)
    monkeypatch.setattr(features, "fetch", offline)  # the features' fingerprint of the source's file
    with pytest.raises(weights.WeightsDownloadError, match="Could not download the 'places365' weights: offline"):
        FeatureExtractor(weights="places365")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weights": "place365"}, "Invalid `weights`"),
        ({"backbone": "vgg17"}, "Invalid `backbone`"),
        ({"normalization": "bgr"}, "Invalid `normalization`"),
        ({"image_size": (32,)}, r"Invalid `image_size`.*\(32,\)"),
        ({"batch_size": 0}, "Invalid `batch_size`.*batch_size=0"),
        ({"init_seed": "0"}, "Invalid `init_seed`"),
    ],
)
def test_invalid_extractor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureExtractor(**kwargs)


def test_invalid_layer_names_the_pools(data):
    with pytest.raises(ValueError, match=r"Invalid `layer`.*block5_pool.*layer='block6_pool'"):
        FeatureExtractor(weights="random", layer="block6_pool").layer_name(data)


def test_grid_pooling_averages_the_map_over_a_grid_of_cells(data):
    fx = FeatureExtractor(weights="random", layer="block1_pool")  # 16 x 16 x 64 maps at 32 px
    out = fx.extract(data, [0, 1], poolings=["flatten", "grid2", "grid4", "grid1", "avg"], progress=False)
    maps = out["flatten"].reshape(2, 16, 16, 64)
    # 2 x 2 cells of 8 x 8 positions, flattened in (row, column, channel) order.
    expected = maps.reshape(2, 2, 8, 2, 8, 64).mean(axis=(2, 4)).reshape(2, -1)
    np.testing.assert_allclose(out["grid2"], expected, rtol=1e-5, atol=1e-6)
    assert out["grid4"].shape == (2, 4 * 4 * 64) and out["grid2"].dtype == np.float32
    np.testing.assert_allclose(out["grid1"], out["avg"], rtol=1e-5, atol=1e-6)  # one cell: the global average
    # Cells that cut positions weigh them by the overlap: 3 cells over 4 positions.
    ramp = np.arange(4, dtype=np.float32)[None, :, None, None] * np.ones((1, 4, 4, 1), np.float32)
    rows = features.grid_pool(ramp, 3).reshape(3, 3)[:, 0]
    np.testing.assert_allclose(
        rows, [(0 + 1 / 3) / (4 / 3), (2 / 3 + 2 * 2 / 3) / (4 / 3), (2 / 3 + 3) / (4 / 3)], rtol=1e-6
    )
    assert features.is_pooling("grid7") and not features.is_pooling("grid0") and not features.is_pooling("grid")
    assert fx.key(data, pooling="grid2") != fx.key(data, pooling="grid4")


@pytest.mark.parametrize(
    "poolings, match",
    [
        ("avg", "non-empty list"),
        ([], "non-empty list"),
        (["avg", "mean"], r"values in \('avg', 'max', 'flatten', 'avgmax'\).*'mean'"),
        (["grid0"], r"values in \('avg', 'max', 'flatten', 'avgmax'\) or 'grid<k>' \(k >= 1\).*'grid0'"),
    ],
)
def test_invalid_poolings(data, extractor, poolings, match):
    with pytest.raises(ValueError, match=match):
        extractor.extract(data, poolings=poolings, progress=False)


def test_invalid_pooling_in_key(data, extractor):
    with pytest.raises(ValueError, match="Invalid `pooling`.*pooling='mean'"):
        extractor.key(data, pooling="mean")
    with pytest.raises(ValueError, match="Invalid `pooling`.*pooling='sum'"):
        features._pool(np.zeros((1, 1, 1, 2), np.float32), "sum")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"copies": 0}, "Invalid `copies`.*copies=0"),
        ({"copies": 1, "augment": "yes"}, "Invalid `augment`.*augment='yes'"),
    ],
)
def test_invalid_augmented_arguments(extractor, kwargs, match):
    toy = make_toy_data(per_class=6, size=32)
    with pytest.raises(ValueError, match=match):
        extractor.augmented(toy, toy_split(toy), **kwargs)


def test_progress_bar_while_extracting(data, extractor, capsys):
    extractor.extract(data, [0, 1, 2], progress=True)
    assert "3/3" in capsys.readouterr().err
    extractor.extract(data, [0, 1, 2], progress=False)
    assert capsys.readouterr().err == ""
