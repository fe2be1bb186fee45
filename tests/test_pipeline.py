import numpy as np
import pytest

from streetlib.classes import OUTPUTS, STREET10
from streetlib.data.loaders import StreetData
from streetlib.data.pipeline import augmentation, make_dataset, normalize, sample_weights


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    city = np.repeat(np.arange(10), [6, 2, 3, 3, 3, 3, 3, 3, 3, 4])
    # A smooth image per item (a gradient plus a class colour), so augmentation visibly moves pixels.
    yy, xx = np.mgrid[0:16, 0:16]
    base = np.stack([xx * 15, yy * 15, (xx + yy) * 7], axis=-1)
    images = np.stack([(base + rng.integers(0, 20)) % 256 for _ in city]).astype(np.uint8)
    return StreetData(images=images, city=city, spec=STREET10, name="toy")


def _collect(ds):
    xs, ys = [], {k: [] for k in OUTPUTS}
    for x, y in ds:
        xs.append(x.numpy())
        for k in OUTPUTS:
            ys[k].append(y[k].numpy())
    return np.concatenate(xs), {k: np.concatenate(v) for k, v in ys.items()}


def test_labels_follow_the_class_spec(data):
    idx = np.array([5, 6, 7, 30, 1])
    x, y = _collect(make_dataset(data, idx, batch_size=2, normalization="unit"))
    assert set(y) == {"region", "city"}
    np.testing.assert_array_equal(y["city"], data.city[idx])
    np.testing.assert_array_equal(y["region"], STREET10.region_of_class[data.city[idx]])
    np.testing.assert_allclose(x, data.images[idx] / 255.0, atol=1e-6)


def test_evaluation_is_never_augmented(data):
    ds = make_dataset(data, batch_size=8, training=False, normalization="raw")
    a, _ = _collect(ds)
    b, _ = _collect(ds)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, data.images.astype(np.float32))
    with pytest.raises(ValueError, match="never augmented"):
        make_dataset(data, training=False, augment=True)


def test_training_augments_and_shuffles_with_a_seed(data):
    def run(seed):
        return _collect(make_dataset(data, batch_size=8, training=True, seed=seed, normalization="raw"))

    (x1, y1), (x2, y2) = run(3), run(3)
    np.testing.assert_array_equal(y1["city"], y2["city"])  # same seed, same order
    np.testing.assert_array_equal(x1, x2)  # and the same augmented pixels
    assert not np.array_equal(y1["city"], data.city)  # but shuffled
    assert sorted(y1["city"]) == sorted(data.city)
    unchanged = sum((data.images == img).all(axis=(1, 2, 3)).any() for img in x1)
    assert unchanged < len(x1) // 2  # most images were changed by augmentation
    plain = _collect(make_dataset(data, batch_size=8, training=True, augment=False, seed=3, normalization="raw"))
    np.testing.assert_array_equal(plain[1]["city"], y1["city"])


def test_reshuffles_each_epoch(data):
    ds = make_dataset(data, batch_size=40, training=True, augment=False, seed=0)
    first, second = (next(iter(ds))[1]["city"].numpy() for _ in range(2))
    assert not np.array_equal(first, second)


def test_cache_and_resize_give_the_same_batches(data):
    plain = _collect(make_dataset(data, batch_size=4, image_size=8, normalization="unit"))
    cached_ds = make_dataset(data, batch_size=4, image_size=8, normalization="unit", cache=True)
    cached = _collect(cached_ds)
    again = _collect(cached_ds)
    assert plain[0].shape == (len(data), 8, 8, 3)
    np.testing.assert_allclose(cached[0], plain[0], atol=1e-6)
    np.testing.assert_allclose(again[0], plain[0], atol=1e-6)


def test_normalization_modes():
    import keras

    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(normalize(x, "caffe"), keras.applications.vgg16.preprocess_input(x.copy()), atol=1e-4)
    s = normalize(x, "samplewise").numpy()
    np.testing.assert_allclose(s.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(s.std(axis=(1, 2, 3)), 1, atol=1e-4)
    bvlc = normalize(x, "caffe-bvlc").numpy()
    np.testing.assert_allclose(bvlc[..., 0], x[..., 2] - 104.00699, atol=1e-4)
    flat = normalize(np.full((1, 4, 4, 3), 7.0, np.float32), "samplewise").numpy()
    assert np.isfinite(flat).all()  # a constant image must not divide by zero
    with pytest.raises(ValueError, match="Invalid `normalization`.*Received: 'imagenet'"):
        normalize(x, "imagenet")


def test_balanced_weights(data):
    idx = np.arange(len(data))
    w = sample_weights(data, idx)
    for name, labels in (("city", data.city), ("region", data.region)):
        totals = [w[name][labels == c].sum() for c in np.unique(labels)]
        np.testing.assert_allclose(totals, totals[0])  # every class weighs the same in total
        np.testing.assert_allclose(w[name].mean(), 1.0, rtol=1e-6)
    ds = make_dataset(data, idx, batch_size=64, training=True, augment=False, weights="balanced")
    _, y, sw = next(iter(ds))
    lookup = dict(zip(data.city.tolist(), w["city"].tolist(), strict=True))
    np.testing.assert_allclose(sw["city"].numpy(), [lookup[c] for c in y["city"].numpy()], rtol=1e-6)


def test_augmentation_identity_flip_and_reproducibility(data):
    import tensorflow as tf

    x = tf.constant(data.images[:8].astype(np.float32))
    seed = tf.constant([3, 0], tf.int64)
    identity = augmentation(rotation=0, shift=0, zoom=0, shear=0, flip=False)
    np.testing.assert_allclose(identity(x, seed), x, atol=1e-3)
    flipped = augmentation(rotation=0, shift=0, zoom=0, shear=0)(x, seed).numpy()
    mirrored = [np.allclose(f, img[:, ::-1], atol=1e-3) for f, img in zip(flipped, x.numpy(), strict=True)]
    kept = [np.allclose(f, img, atol=1e-3) for f, img in zip(flipped, x.numpy(), strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True)) and any(mirrored) and any(kept)
    full = augmentation()
    np.testing.assert_array_equal(full(x, seed), full(x, seed))
    assert not np.allclose(full(x, seed), full(x, tf.constant([4, 0], tf.int64)))


def test_augmentation_stays_within_the_original_ranges():
    import tensorflow as tf

    # A centred bright square: a 20-degree rotation, 15% shift and 15% zoom keep it near the centre.
    img = np.zeros((1, 64, 64, 3), np.float32)
    img[:, 24:40, 24:40] = 255.0
    out = augmentation(flip=False)(tf.constant(np.repeat(img, 64, axis=0)), tf.constant([1, 2], tf.int64)).numpy()
    ys, xs = np.mgrid[0:64, 0:64]
    for o in out:
        mass = o[..., 0] / o[..., 0].sum()
        cy, cx = (mass * ys).sum(), (mass * xs).sum()
        assert abs(cy - 31.5) <= 0.15 * 64 * 1.2 + 1 and abs(cx - 31.5) <= 0.15 * 64 * 1.2 + 1
        assert 0.6 < o[..., 0].sum() / img[0, ..., 0].sum() < 1.6  # zoom within +-15% per axis
    with pytest.raises(ValueError, match="Invalid `rotation`.*Received: rotation=-1"):
        augmentation(rotation=-1)
    with pytest.raises(ValueError, match="Invalid `zoom`"):
        augmentation(zoom=1.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "Invalid `batch_size`"),
        ({"weights": "inverse"}, "Invalid `weights`"),
        ({"indices": []}, "`indices` is empty"),
    ],
)
def test_invalid_arguments(data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dataset(data, **kwargs)
