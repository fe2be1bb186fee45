"""Multi-output `tf.data` pipelines: ``(image, {"region": ..., "city": ...})`` batches for Keras.

Images stay uint8 in memory until a batch is gathered; resizing, train-time augmentation (Keras 3 preprocessing
layers) and normalisation then run inside the pipeline, in parallel, with prefetching. The label keys are the model's
output names.
"""

import math

import numpy as np
import tensorflow as tf

from streetlib.classes import OUTPUTS

# Per-channel means in BGR order, 0-255 scale.
_CAFFE_MEAN_KERAS = (103.939, 116.779, 123.68)  # keras.applications.vgg16.preprocess_input
_CAFFE_MEAN_BVLC = (104.00699, 116.66877, 122.67892)  # the BVLC Caffe models: HED and the Places365 port
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

NORMALIZATIONS = {
    "samplewise": "x/255, then per-image centre and scale to unit std (the original study's, for every backbone)",
    "caffe": "RGB->BGR minus Keras's ImageNet means (what Keras's VGG16/ResNet50 ImageNet weights expect)",
    "caffe-bvlc": "RGB->BGR minus the BVLC Caffe means (HED and the Places365 VGG16 port)",
    "torch": "x/255 minus ImageNet mean, divided by ImageNet std",
    "unit": "x/255, in [0, 1]",
    "raw": "x as float in [0, 255] (for keras.applications models that rescale inside, e.g. EfficientNetV2, ConvNeXt)",
}

# The original study's augmentation (Keras 2 ImageDataGenerator arguments). Its shear_range was in degrees.
DEFAULT_AUGMENTATION = {
    "rotation": 20.0,  # degrees
    "shift": 0.15,  # fraction of width and height
    "zoom": 0.15,  # fraction
    "shear": 0.15,  # degrees, as ImageDataGenerator's shear_range
    "flip": True,  # horizontal
}


def normalize(images, mode):
    """Normalise a batch of images.

    Args:
        images: float32 tensor `(batch, H, W, 3)`, RGB in [0, 255].
        mode: one of `NORMALIZATIONS`.

    Returns:
        float32 tensor `(batch, H, W, 3)`.
    """
    x = tf.cast(images, tf.float32)
    if mode == "samplewise":
        x = x / 255.0
        mean = tf.reduce_mean(x, axis=(1, 2, 3), keepdims=True)
        std = tf.math.reduce_std(x, axis=(1, 2, 3), keepdims=True)
        return (x - mean) / (std + 1e-6)
    if mode in ("caffe", "caffe-bvlc"):
        mean = _CAFFE_MEAN_KERAS if mode == "caffe" else _CAFFE_MEAN_BVLC
        return x[..., ::-1] - tf.constant(mean, tf.float32)
    if mode == "torch":
        return (x / 255.0 - tf.constant(_TORCH_MEAN)) / tf.constant(_TORCH_STD)
    if mode == "unit":
        return x / 255.0
    if mode == "raw":
        return x
    raise ValueError(f"Invalid `normalization`. Expected one of {sorted(NORMALIZATIONS)}. Received: {mode!r}")


def check_normalization(mode):
    """``mode`` if it is one of `NORMALIZATIONS`, else a ValueError naming them. Returns str."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"Invalid `normalization`. Expected one of {sorted(NORMALIZATIONS)}. Received: {mode!r}")
    return mode


def augmentation(
    *,
    rotation=DEFAULT_AUGMENTATION["rotation"],
    shift=DEFAULT_AUGMENTATION["shift"],
    zoom=DEFAULT_AUGMENTATION["zoom"],
    shear=DEFAULT_AUGMENTATION["shear"],
    flip=DEFAULT_AUGMENTATION["flip"],
):
    """Train-time augmentation: one random affine warp per image (flip, rotation, shift, zoom, shear composed).

    Keras's preprocessing layers (RandomRotation, RandomTranslation, RandomZoom, RandomShear) resample the image
    once each and draw from a shared stateful generator, which parallel ``tf.data`` maps call in no fixed order.
    Composing the transforms into one matrix resamples once (about 4x less work at 224 px) and, with stateless
    random draws seeded per batch, gives the same augmented batches for the same seed on any run.

    Args:
        rotation: float, maximum rotation in degrees (either way). Default 20.
        shift: float, maximum translation as a fraction of width and height. Default 0.15.
        zoom: float, maximum zoom in or out as a fraction, drawn per axis as ImageDataGenerator did. Default 0.15.
        shear: float, maximum shear angle in degrees, as Keras 2's ``shear_range`` (the original's 0.15 is a
            near-invisible 0.15 degrees; it is kept for fidelity). Default 0.15.
        flip: bool, random horizontal flips. Default True.

    Returns:
        A function ``(images, seed) -> images``: float32 `(batch, H, W, 3)` and an int64 `(2,)` seed to the same
        shape. Areas moved in from outside the image take the nearest edge pixel, as ImageDataGenerator did.
    """
    for name, value in (("rotation", rotation), ("shift", shift), ("zoom", zoom), ("shear", shear)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"Invalid `{name}`. Expected a number >= 0. Received: {name}={value!r}")
    if zoom >= 1:
        raise ValueError(f"Invalid `zoom`. Expected a fraction below 1. Received: zoom={zoom!r}")

    def apply(images, seed):
        batch = tf.shape(images)[0]
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        seeds = tf.random.experimental.stateless_split(seed, num=6)

        def draw(i, limit):
            return tf.random.stateless_uniform([batch], seed=seeds[i], minval=-limit, maxval=limit)

        theta = draw(0, math.radians(rotation))
        phi = draw(1, math.radians(shear))
        zx, zy = 1.0 + draw(2, zoom), 1.0 + draw(3, zoom)
        w, h = tf.cast(width, tf.float32), tf.cast(height, tf.float32)
        tx, ty = draw(4, shift) * w, draw(5, shift) * h
        sign = tf.ones([batch])
        if flip:
            sign = tf.where(tf.random.stateless_uniform([batch], seed=seeds[5] + 1) < 0.5, -1.0, 1.0)
        cos, sin = tf.cos(theta), tf.sin(theta)
        # M = rotation @ shear @ zoom @ flip, mapping output to input coordinates around the image centre.
        m00 = cos * zx * sign
        m01 = (-cos * tf.sin(phi) - sin * tf.cos(phi)) * zy
        m10 = sin * zx * sign
        m11 = (-sin * tf.sin(phi) + cos * tf.cos(phi)) * zy
        cx, cy = (w - 1) / 2, (h - 1) / 2
        row0 = [m00, m01, cx + tx - m00 * cx - m01 * cy]
        row1 = [m10, m11, cy + ty - m10 * cx - m11 * cy]
        transforms = tf.stack([*row0, *row1, tf.zeros([batch]), tf.zeros([batch])], axis=1)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=tf.stack([height, width]),
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="NEAREST",
        )

    return apply


def sample_weights(data, indices, *, outputs=OUTPUTS):
    """Balanced per-image weights for each output: ``n / (n_classes * count(class))``, as scikit-learn's
    ``class_weight="balanced"``.

    Returns:
        dict output name -> float32 `(len(indices),)`.
    """
    labels = data.labels(indices)
    out = {}
    for name in outputs:
        y = labels[name]
        counts = np.bincount(y)
        present = np.count_nonzero(counts)
        out[name] = (len(y) / (present * counts[y])).astype(np.float32)
    return out


def make_dataset(
    data,
    indices=None,
    *,
    batch_size=32,
    training=False,
    augment=None,
    normalization="samplewise",
    image_size=None,
    shuffle=None,
    seed=0,
    cache=False,
    weights=None,
):
    """A `tf.data.Dataset` of ``(images, {"region": r, "city": c})`` batches.

    Eleven parameters, over the ~10 of the rest of the package: the data and the indices, then one keyword per
    choice of the pipeline, each with its default (as `keras.utils.image_dataset_from_directory` takes its own).

    Args:
        data: `StreetData`.
        indices: int array of the images to use (a split), default all.
        batch_size: int, default 32.
        training: bool. True shuffles each epoch and (by default) augments.
        augment: None (augment exactly when ``training``), False, True, or a dict of `augmentation` arguments
            (default: the original's rotation 20 degrees, shifts 0.15, zoom 0.15, shear 0.15, horizontal flip).
            Augmentation is refused when ``training`` is False: evaluation data is never augmented.
        normalization: one of `NORMALIZATIONS`. Default 'samplewise' (the original's); weight sources say theirs.
        image_size: None (the data's own) or int or (H, W); images are resized (bilinear, antialiased).
        shuffle: bool, default ``training``.
        seed: int, for the shuffle order and the augmentation.
        cache: False, True (in memory) or a file path: caches resized images before augmentation.
        weights: None or 'balanced': add per-output sample weights as a third element.

    Returns:
        `tf.data.Dataset` yielding float32 `(batch, H, W, 3)` images and int32 `(batch,)` labels per output
        (and float32 `(batch,)` weights per output with ``weights='balanced'``).
    """
    _check_dataset_args(normalization, training=training, augment=augment, weights=weights, batch_size=batch_size)
    indices = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=np.int64)
    if len(indices) == 0:
        raise ValueError("`indices` is empty: there are no images to feed.")
    augment = training if augment is None else augment
    shuffle = training if shuffle is None else shuffle
    gather = _image_gatherer(data, _target_size(data, image_size))
    label_table = {name: tf.constant(values.astype(np.int32)) for name, values in data.labels().items()}
    ds = _index_batches(indices, gather, batch_size=batch_size, shuffle=shuffle, seed=seed, cache=cache)
    if augment:
        ds = _augment_batches(ds, augment, seed=seed)
    weight_table = _weight_tables(data, indices) if weights else None

    def finish(idx, x):
        labels = {name: tf.gather(values, idx) for name, values in label_table.items()}
        x = normalize(x, normalization)
        if weight_table is None:
            return x, labels
        return x, labels, {k: tf.gather(v, idx) for k, v in weight_table.items()}

    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _check_dataset_args(normalization, *, training, augment, weights, batch_size):
    check_normalization(normalization)
    if augment and not training:
        raise ValueError("`augment` needs `training=True`: validation and test data are never augmented.")
    if weights not in (None, "balanced"):
        raise ValueError(f"Invalid `weights`. Expected None or 'balanced'. Received: weights={weights!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Invalid `batch_size`. Expected an int >= 1. Received: batch_size={batch_size!r}")


def _target_size(data, image_size):
    """(height, width) in pixels of the images fed: the data's own when ``image_size`` is None."""
    height, width = (
        data.image_size
        if image_size is None
        else ((image_size, image_size) if isinstance(image_size, int) else tuple(image_size))
    )
    return height, width


def _image_gatherer(data, size):
    """A function ``idx -> (idx, images)``: int64 `(batch,)` image indices to float32 `(batch, H, W, 3)` images in
    [0, 255], resized to ``size`` (height, width) when it is not the data's own."""
    images = data.images

    def gather(idx):
        # Fancy indexing of the uint8 array copies only this batch.
        x = tf.numpy_function(lambda i: images[i], [idx], tf.uint8, stateful=False)
        x = tf.ensure_shape(x, (None, *data.image_size, 3))
        x = tf.cast(x, tf.float32)
        if size != data.image_size:
            x = tf.image.resize(x, size, antialias=True)
        return idx, x

    return gather


def _index_batches(indices, gather, *, batch_size, shuffle, seed, cache):
    """A dataset of ``gather(idx)`` for batches of ``indices``, shuffled (seeded) and cached as asked."""
    ds = tf.data.Dataset.from_tensor_slices(indices)
    if cache:
        # Cache the decoded, resized images once, in a fixed order; shuffle batches of indices afterwards.
        ds = ds.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.cache() if cache is True else ds.cache(str(cache))
        ds = ds.unbatch()
        if shuffle:
            ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size)
    if shuffle:
        ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)


def _augment_batches(ds, augment, *, seed):
    """Apply `augmentation` (True: the defaults; a dict: its arguments) to the images of ``(idx, images)`` batches."""
    aug = augmentation(**({} if augment is True else augment))
    # One stateless seed per batch, new each epoch and the same for the same `seed`.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip(ds, seeds).map(
        lambda batch, s: (batch[0], aug(batch[1], s)), num_parallel_calls=tf.data.AUTOTUNE
    )


def _weight_tables(data, indices):
    """dict output -> float32 `(len(data),)` balanced sample weights of ``indices``, zero elsewhere.

    Indexed by image index, so the weights follow the images through shuffling.
    """
    weight_table = {}
    for name, values in sample_weights(data, indices).items():
        table = np.zeros(len(data), dtype=np.float32)
        table[indices] = values
        weight_table[name] = tf.constant(table)
    return weight_table


def images_only(x, y):
    """Drop the labels of a ``(images, labels)`` dataset element (for `keras.Model.predict`)."""
    return x
