"""Side-by-side benchmarks against the references, re-created here and run in the same process.

Each comparison times our way and the reference way on the same inputs, repeats each measurement (median and
spread), checks that both compute the same thing (so a ratio cannot come from doing less work) and reports the ratio
against its target. `to_markdown` turns the results into ``BENCHMARKS.md``.
"""

import contextlib
import functools
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from streetlib.classes import STREET10_COUNTS


@dataclass
class Comparison:
    """One side-by-side measurement.

    Attributes:
        name: what is compared.
        ours, reference: dict label -> list of measured values (seconds, images/s or bytes).
        unit: 's' (lower is better), 'img/s' (higher is better) or 'MB' (lower is better).
        target: float, or dict reference label -> float: the ratio to reach (ours over reference, in the "better"
            direction).
        check: str, how we checked both compute the same thing, with its outcome.
        notes: str.
        max_diff: None or float, the largest difference the check found, as a number (where it is one).
    """

    name: str
    ours: dict
    reference: dict
    unit: str
    target: float
    check: str = ""
    notes: str = ""
    max_diff: float | None = None
    ratios: dict = field(default_factory=dict)

    def __post_init__(self):
        ours = statistics.median(next(iter(self.ours.values())))
        for label, values in self.reference.items():
            ref = statistics.median(values)
            self.ratios[label] = ref / ours if self.unit in ("s", "MB") else ours / ref


def timed(fn, *, repeats, warmup=1):
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed. Returns a list of seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(values):
    med = statistics.median(values)
    spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
    return med, spread


# ---------------------------------------------------------------------------------------------------------------
# 1. Training input pipeline: tf.data versus ImageDataGenerator


def _street_data(n, size, seed=0):
    """``n`` synthetic street images at ``size`` px as `StreetData` (classes in turn)."""
    from streetlib.classes import SYNTH10
    from streetlib.data.loaders import StreetData
    from streetlib.data.synth import make_synthetic

    if n % SYNTH10.num_classes:
        raise ValueError(
            f"Invalid `n`. Expected a multiple of {SYNTH10.num_classes} (every class the same). Received: n={n}"
        )
    per_class = n // SYNTH10.num_classes
    images, _ = make_synthetic(per_class=per_class, size=size, seed=seed)
    return StreetData(
        images=np.concatenate(list(images.values())),
        city=np.repeat(np.arange(SYNTH10.num_classes), per_class),
        spec=SYNTH10,
        name=f"bench-{size}px",
        synthetic=True,
    )


def legacy_generator(data, indices, *, batch_size, augment=True, seed=0):
    """The original study's input path: Keras 2's ImageDataGenerator (rescale 1/255, samplewise centring and
    scaling, the original's augmentation) over float images, wrapped into a two-output generator.

    Yields ``(x float32 (batch, H, W, 3), {"region": one-hot, "city": one-hot})`` forever, like the original.
    """
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    options = (
        dict(
            rotation_range=20,
            width_shift_range=0.15,
            height_shift_range=0.15,
            shear_range=0.15,
            zoom_range=0.15,
            horizontal_flip=True,
        )
        if augment
        else {}
    )
    gen = ImageDataGenerator(rescale=1 / 255.0, samplewise_center=True, samplewise_std_normalization=True, **options)
    # The original held the whole set as floats in memory.
    x = data.images[indices].astype(np.float32)
    labels = np.stack([data.region[indices], data.city[indices]], axis=1)
    flow = gen.flow(x, labels, batch_size=batch_size, shuffle=augment, seed=seed)
    eye_r, eye_c = np.eye(data.spec.num_regions, dtype=np.float32), np.eye(data.spec.num_classes, dtype=np.float32)
    while True:
        xb, yb = next(flow)
        yield xb, {"region": eye_r[yb[:, 0]], "city": eye_c[yb[:, 1]]}


def bench_input_pipeline(*, n=500, size=224, batch_size=32, batches=12, repeats=3):
    """Images/s of the training input path, 224 px, the original's augmentation, two outputs."""
    from streetlib.data.pipeline import make_dataset

    data = _street_data(n, size)
    idx = np.arange(n)
    ours_ds = make_dataset(data, idx, batch_size=batch_size, training=True, normalization="samplewise")
    ours_it = iter(ours_ds.repeat())
    ref_it = legacy_generator(data, idx, batch_size=batch_size)

    def consume(it):
        return lambda: [next(it) for _ in range(batches)]

    images = batches * batch_size
    ours = [images / t for t in timed(consume(ours_it), repeats=repeats)]
    ref = [images / t for t in timed(consume(ref_it), repeats=repeats)]
    # Same computation without augmentation: identical labels and pixels up to float rounding.
    plain = next(iter(make_dataset(data, idx[:batch_size], batch_size=batch_size, normalization="samplewise")))
    ref_plain = next(legacy_generator(data, idx[:batch_size], batch_size=batch_size, augment=False))
    diff = float(np.max(np.abs(plain[0].numpy() - ref_plain[0])))
    same_labels = bool(np.array_equal(plain[1]["city"].numpy(), ref_plain[1]["city"].argmax(1)))
    return Comparison(
        "Training input pipeline, 224 px, original augmentation, two outputs",
        {"tf.data pipeline": ours},
        {"ImageDataGenerator, two-output generator": ref},
        "img/s",
        5.0,
        check=f"without augmentation: max |difference| {diff:.1e}, labels identical: {same_labels}",
        notes=f"{n} images, batch {batch_size}, {batches} batches per measurement. Ours runs on both cores (parallel "
        "tf.data maps), ImageDataGenerator on one; most of our time is the one bilinear warp per image "
        "(ImageProjectiveTransformV3, about 2 ms at 224 px on one core).",
    )


# ---------------------------------------------------------------------------------------------------------------
# 2. Transfer phase: cached features versus the frozen backbone every epoch


def bench_transfer(*, data=None, per_class=100, size=64, epochs=10, repeats=2):
    """Wall time of a transfer phase (frozen VGG16, no augmentation): cached features versus plain ``fit``."""
    from streetlib.data.splits import make_split
    from streetlib.runs import RunId, RunLayout
    from streetlib.training.config import Execution, RunConfig
    from streetlib.training.train import run_phase

    data = _street_data(per_class * 10, size) if data is None else data
    out = Path(tempfile.mkdtemp(prefix="streetlib-bench-"))
    split = make_split(data, seed=42, directory=out / "splits")
    results = {}

    def run(cache, k):
        config = RunConfig.preset(
            "transfer", weights="hed-bsds500", image_size=size, epochs=epochs, augment=False, cache=cache, seed=0
        )
        result = run_phase(
            data,
            split,
            config,
            run=RunId("bench", f"{cache}-{k}"),
            layout=RunLayout(hists_dir=out / "hists", models_dir=out / "models"),
            execution=Execution(verbose=0),
        )
        results[cache] = result.history

    times = {c: [] for c in ("features", "none")}
    for k in range(repeats):
        for cache in times:
            start = time.perf_counter()
            run(cache, k)
            times[cache].append(time.perf_counter() - start)
    a, b = results["features"], results["none"]
    diff = float(np.max(np.abs(a["val_city_accuracy"].to_numpy() - b["val_city_accuracy"].to_numpy())))
    loss = float(np.max(np.abs(a["loss"].to_numpy() - b["loss"].to_numpy())))
    return Comparison(
        f"Transfer phase, frozen VGG16 (hed-bsds500), {epochs} epochs, no augmentation, demo data at {size} px",
        {"cached features": times["features"]},
        {"plain fit through the frozen backbone": times["none"]},
        "s",
        8.0,
        check=f"same seed, per-epoch histories: max |val city accuracy diff| {diff:.4f}, max |loss diff| {loss:.1e}",
        notes=f"{len(data)} images at {size} px ({len(split.train)} train / {len(split.val)} val). Both paths pay the "
        "same fixed costs (building and tracing the model, saving the full VGG16 .keras file, about 0.5 s, at each "
        "better epoch); the cached path adds one pass of the frozen backbone, the plain path one per epoch. So the "
        "ratio is at most about epochs x pass / (pass + fixed costs), and grows with the pass (bigger images, more "
        "images: Street10 at 224 px) towards the number of epochs.",
    )


# ---------------------------------------------------------------------------------------------------------------
# 3. Grad-CAM: batched and compiled versus one image at a time, and versus tf-keras-vis


def _flat_vgg16(size, num_classes=10, seed=0, *, regions=None):
    """VGG16 (random weights, one flat model: no nested backbone), global average pooling and a ``city`` head
    (``city_logits`` then a softmax). With ``regions`` (an int), also a ``region`` head of that many classes, and the
    outputs are a dict ``{"region", "city"}`` as `streetlib.models.network.build_model`'s."""
    import keras

    keras.utils.set_random_seed(seed)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(base.output)
    heads = {} if regions is None else {"region": regions}
    outputs = {}
    for output, classes in {**heads, "city": num_classes}.items():
        logits = keras.layers.Dense(classes, name=f"{output}_logits")(x)
        outputs[output] = keras.layers.Activation("softmax", name=output)(logits)
    return keras.Model(base.input, outputs if regions is not None else outputs["city"], name="flat_vgg16")


def original_grad_cam(model, images, targets, *, layer="block5_conv3"):
    """The original study's way: one image at a time, a new gradient computation each, on the class probability,
    divided by the max. Returns float32 ``(n, h, w)`` maps at feature resolution."""
    import keras
    import tensorflow as tf

    maps = []
    for image, target in zip(images, targets, strict=True):
        grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
        with tf.GradientTape() as tape:
            conv, probs = grad_model(image[None])
            score = probs[:, int(target)]
        grads = tape.gradient(score, conv)
        weights = tf.reduce_mean(grads, axis=(1, 2))
        cam = tf.nn.relu(tf.einsum("bhwc,bc->bhw", conv, weights))[0].numpy()
        maps.append(cam / max(float(cam.max()), 1e-12))
    return np.stack(maps)


def _minmax(maps):
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    return (maps - lo) / np.maximum(hi - lo, 1e-12)


def bench_grad_cam(*, size=224, batch=32, repeats=3):
    """Grad-CAM for a batch: ours versus the original's per-image loop and versus tf-keras-vis."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from streetlib.attribution.explainer import Explainer

    model = _flat_vgg16(size)
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    explainer = Explainer(model, layer="block5_conv3")
    targets = np.argmax(model.predict(x, verbose=0), axis=1)
    gradcam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)

    def ours():
        return explainer.grad_cam(x, output="city", target=targets).maps

    def peer():
        return gradcam(CategoricalScore(targets.tolist()), x, penultimate_layer="block5_conv3", expand_cam=False)

    ours_t = timed(ours, repeats=repeats)
    peer_t = timed(peer, repeats=repeats)
    orig_t = timed(lambda: original_grad_cam(model, x, targets), repeats=max(1, repeats - 1), warmup=0)
    diff = float(np.max(np.abs(_minmax(np.asarray(ours())) - _minmax(np.asarray(peer())))))
    return Comparison(
        f"Grad-CAM, batch of {batch}, VGG16 at {size} px",
        {"batched, compiled": [batch / t for t in ours_t]},
        {
            "original: one image at a time": [batch / t for t in orig_t],
            "tf-keras-vis Gradcam (flat model)": [batch / t for t in peer_t],
        },
        "img/s",
        {"original: one image at a time": 4.0, "tf-keras-vis Gradcam (flat model)": 3.0},
        check=f"maps at feature resolution, min-max normalised: max |ours - tf-keras-vis| {diff:.1e}",
        notes="the original differentiates the probability, ours and tf-keras-vis the logit; tf-keras-vis runs its "
        "gradient eagerly, ours is one compiled function per model, layer and output",
    )


# ---------------------------------------------------------------------------------------------------------------
# 3b. The other attribution methods tf-keras-vis has: ours, batched, versus tf-keras-vis on the same maps


@contextlib.contextmanager
def _patched(owner, name, value):
    """``owner.name = value`` inside the block, restored after it."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


def _same_noise(x, *, samples, seed):
    """Make tf-keras-vis's SmoothGrad draw our noise inside the block.

    tf-keras-vis draws all its noise at once with ``np.random.normal(0, sigma, (samples, batch, H, W, C))``, sigma
    per image; ours gives image ``i`` the ``i``-th block of ``samples`` standard normals of
    ``default_rng(seed).standard_normal((batch * samples, H, W, C), float32)``. The patched draw returns those same
    normals, laid out its way and scaled by its sigma, so both compute on identical noisy images (as
    tests/test_gradients.py does). Refuses any other draw, so a changed tf-keras-vis cannot pass unnoticed.
    """
    batch = len(x)
    z = np.random.default_rng(seed).standard_normal((batch * samples, *x.shape[1:]), dtype=np.float32)
    z = z.reshape(batch, samples, *x.shape[1:]).swapaxes(0, 1)

    def normal(loc, scale, size):
        if tuple(size) != z.shape:
            raise RuntimeError(f"tf-keras-vis drew noise of shape {tuple(size)}, not {z.shape}: update _same_noise")
        return loc + np.asarray(scale, np.float32) * z

    return _patched(np.random, "normal", normal)


def _same_upsampling():
    """Make tf-keras-vis's Score-CAM upsample the feature map as ours inside the block.

    tf-keras-vis upsamples with scipy's ``zoom(order=1)`` (linear, corners aligned), ours with the project's
    half-pixel bilinear resize (`maps.upsample_maps`, ``tf.image.resize``); the masks, hence the weights, differ
    by that alone. The patched ``zoom`` is that same resize, so the rest of the two computations is compared.
    """
    import tensorflow as tf
    from tf_keras_vis import scorecam

    def zoom(array, factor, **_):
        array = np.asarray(array, np.float32)  # (batch, h, w, channels), factor (1, fh, fw, 1)
        size = [round(n * f) for n, f in zip(array.shape[1:3], factor[1:3], strict=True)]
        return tf.image.resize(array, size, method="bilinear").numpy()

    return _patched(scorecam, "zoom", zoom)


@dataclass(frozen=True)
class _Pair:
    """One method of `bench_attribution`: ours and tf-keras-vis's, each ``(x, targets) -> raw maps``, the
    normalisation applied to both before comparing, and what makes tf-keras-vis compute on exactly our inputs for
    the check (a context manager factory ``(x) -> context``, or None where nothing is needed); ``batch``, the number
    of images it runs on (None: all); ``check_images``, how many of them the extra check call with ``same_inputs``
    runs on (None: all; each image's maps are independent of the others', SmoothGrad's noise included);
    ``warmups``, a cheaper warm-up for (ours, tf-keras-vis) than a whole call (None: a call on one image)."""

    name: str
    ours: object
    peer: object
    normalise: object = _minmax
    same_inputs: object = None
    check_note: str = ""
    batch: int | None = None
    check_images: int | None = None
    warmups: tuple = (None, None)
    notes: str = ""


def _time_maps(fn, x, targets, *, repeats, warmup=None):
    """Images/s of ``fn(x, targets)`` over ``repeats`` calls after a warm-up (``warmup(x[:1], targets[:1])``,
    default ``fn`` itself: it traces and builds whatever a first call builds), and the maps of the last call."""
    (warmup or fn)(x[:1], targets[:1])
    last = []
    times = timed(lambda: last.append(fn(x, targets)), repeats=repeats, warmup=0)
    return [len(x) / t for t in times], last[-1]


# Score-CAM's memory, one image, in a fresh process: the growth of the resident set's peak (VmHWM, reset after the
# model is built and its functions traced) during one call.
_SCORECAM_MEMORY_SCRIPT = """
import sys
from pathlib import Path
import numpy as np
from streetlib.benchmarks.bench import _flat_vgg16

def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
    return int(line.split()[1]) * 1024

side, size, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = _flat_vgg16(size)
x = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype(np.float32)
target = np.argmax(model.predict(x, verbose=0), axis=1)
if side == "ours":
    from streetlib.attribution.cams import score_cam
    from streetlib.attribution.explainer import Explainer

    ex = Explainer(model, layer="block5_conv3")
    ex.layer_gradients(x, output="city", target=target), ex.logits(x, output="city")  # trace
    run = lambda: score_cam(ex, x, output="city", target=target, chunk_size=chunk)
else:
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    peer = Scorecam(model, model_modifier=ReplaceToLinear(), clone=True)
    peer.model.predict(x, verbose=0)  # build its predict function
    run = lambda: peer(CategoricalScore(target.tolist()), x, penultimate_layer="block5_conv3", expand_cam=False,
                       batch_size=chunk)
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS:")
run()
print(status("VmHWM:") - before)
"""


def scorecam_peak_memory(side, *, size=224, chunk_size=32):
    """Peak memory growth in MB of one Score-CAM call on one ``size`` px image of the flat VGG16 at block5_conv3,
    in a fresh process: ``side`` 'ours' (``chunk_size`` masked images at a time) or 'tf-keras-vis' (builds every
    masked image first, then predicts ``chunk_size`` at a time)."""
    out = subprocess.run(
        [sys.executable, "-c", _SCORECAM_MEMORY_SCRIPT, side, str(size), str(chunk_size)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return int(out.stdout.split()[-1]) / 2**20


def bench_attribution(
    *, size=224, batch=32, repeats=3, scorecam_batch=2, smoothgrad_samples=5, memory=True, report=None
):
    """Our batched Grad-CAM++, LayerCAM, saliency, SmoothGrad and Score-CAM versus tf-keras-vis's, on one flat
    VGG16 (random weights) and one batch of ``batch`` random ``size`` px images, CAMs at block5_conv3.

    Each side is timed on the same images and classes (warmed up on the first image), then both maps are min-max
    normalised per image and compared: SmoothGrad on identical noise, Score-CAM with identical upsampling (see
    `_same_noise`, `_same_upsampling`; the timed runs use tf-keras-vis unchanged). Score-CAM runs on the first
    ``scorecam_batch`` images only (one forward pass per image and channel: 512 per image at block5_conv3). With
    ``memory``, also Score-CAM's peak memory for one image, ours (32 masked images at a time) versus tf-keras-vis,
    each in a fresh process. ``report``, if given, is called with each `Comparison` as soon as it is measured.

    Returns:
        list of `Comparison`, one per method (img/s), then the Score-CAM memory one (MB) with ``memory``.
    """
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from streetlib.attribution import cams, gradients
    from streetlib.attribution.explainer import Explainer

    layer, seed, chunk = "block5_conv3", 0, 32
    model = _flat_vgg16(size)
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    targets = np.argmax(model.predict(x, verbose=0), axis=1)
    ex = Explainer(model, layer=layer)

    def peer(cls):  # tf-keras-vis on a clone with a linear output: its score is the logit, as ours
        return cls(model, model_modifier=ReplaceToLinear(), clone=True)

    gradcam_pp, layercam, saliency, scorecam = (peer(c) for c in (GradcamPlusPlus, Layercam, Saliency, Scorecam))
    cam_args = dict(penultimate_layer=layer, expand_cam=False, normalize_cam=False)

    def ours(method, **params):
        return lambda x, t: method(ex, x, output="city", target=t, **params).maps

    def theirs(visualiser, **params):
        def run(x, t):
            # Score-CAM's model.predict prints a progress bar it offers no way to turn off: kept out of the report.
            with contextlib.redirect_stdout(io.StringIO()):
                return np.asarray(visualiser(CategoricalScore(t.tolist()), x, **params))

        return run

    pairs = [
        _Pair("Grad-CAM++", ours(cams.grad_cam_plus_plus), theirs(gradcam_pp, **cam_args)),
        _Pair("LayerCAM", ours(cams.layer_cam), theirs(layercam, **cam_args)),
        _Pair("Saliency", ours(gradients.saliency), theirs(saliency, normalize_map=False)),
        _Pair(
            f"SmoothGrad ({smoothgrad_samples} samples, noise 0.2)",
            ours(gradients.smoothgrad, samples=smoothgrad_samples, noise=0.2, seed=seed),
            theirs(saliency, smooth_samples=smoothgrad_samples, smooth_noise=0.2, normalize_map=False),
            same_inputs=lambda x: _same_noise(x, samples=smoothgrad_samples, seed=seed),
            check_images=4,
            check_note="on identical noise (tf-keras-vis handed our normals); timed with its own noise",
        ),
        _Pair(
            "Score-CAM (its own smaller batch)",
            ours(cams.score_cam, chunk_size=chunk),
            theirs(scorecam, batch_size=chunk, **cam_args),
            same_inputs=lambda x: _same_upsampling(),
            check_note="with tf-keras-vis's scipy zoom (corners aligned) swapped for our half-pixel bilinear "
            "upsampling; timed with its own",
            batch=min(scorecam_batch, batch),
            check_images=1,
            # What a first call builds, without its 512 forward passes: our compiled functions, tf-keras-vis's
            # predict function (it builds its truncated model anew in every call).
            warmups=(
                lambda x, t: (ex.layer_gradients(x, output="city", target=t), ex.logits(x, output="city")),
                lambda x, t: scorecam.model.predict(x, verbose=0),
            ),
            notes=f"on its own batch of the first {min(scorecam_batch, batch)} of the {batch} images: one forward pass "
            f"per image and channel, {512 * min(scorecam_batch, batch)} per call, {chunk} at a time on both sides",
        ),
    ]
    comparisons = []
    for pair in pairs:
        comparisons.append(_measure_pair(pair, x, targets, repeats=repeats, size=size))
        if report is not None:
            report(comparisons[-1])
    if memory:
        comparisons.append(_scorecam_memory(size=size, layer=layer, chunk=chunk))
        if report is not None:
            report(comparisons[-1])
    return comparisons


def _measure_pair(pair, x, targets, *, repeats, size):
    """Time one `_Pair` on its images, compare both maps (min-max normalised; on identical inputs when the pair has
    ``same_inputs``) and return the `Comparison`."""
    xs = x[: pair.batch] if pair.batch else x
    ts, n = targets[: len(xs)], len(xs)
    ours_ips, mine = _time_maps(pair.ours, xs, ts, repeats=repeats, warmup=pair.warmups[0])
    peer_ips, yours = _time_maps(pair.peer, xs, ts, repeats=repeats, warmup=pair.warmups[1])
    a = pair.normalise(mine)
    flat = int(np.sum(a.max(axis=(1, 2)) == a.min(axis=(1, 2))))
    shape = f"maps {a.shape[1]} x {a.shape[2]}, min-max normalised{'' if not flat else f' ({flat} flat!)'}"
    own = float(np.max(np.abs(a - pair.normalise(yours))))
    if pair.same_inputs is None:
        diff = own
        check = f"{shape}: max |ours - tf-keras-vis| {diff:.1e}"
    else:
        k = min(n, pair.check_images or n)
        with pair.same_inputs(xs[:k]):
            same = pair.peer(xs[:k], ts[:k])
        diff = float(np.max(np.abs(a[:k] - pair.normalise(same))))
        on = "" if k == n else f" on the first {k} of the {n} images"
        check = f"{shape}, {pair.check_note}: max |ours - tf-keras-vis| {diff:.1e}{on} (as timed, unchanged: {own:.1e})"
    return Comparison(
        f"{pair.name}, batch of {n}, VGG16 at {size} px",
        {"ours, batched": ours_ips},
        {"tf-keras-vis (flat model)": peer_ips},
        "img/s",
        3.0,
        check=check,
        max_diff=diff,
        notes=pair.notes,
    )


def _scorecam_memory(*, size, layer, chunk):
    """Score-CAM's peak memory for one image, ours versus tf-keras-vis, each in a fresh process: a `Comparison`."""
    inputs = 512 * size * size * 3 * 4 / 2**20
    ours_mb = scorecam_peak_memory("ours", size=size, chunk_size=chunk)
    peer_mb = scorecam_peak_memory("tf-keras-vis", size=size, chunk_size=chunk)
    return Comparison(
        f"Score-CAM peak memory, one image, VGG16 at {size} px (512 channels at {layer})",
        {f"ours, {chunk} masked images at a time": [ours_mb]},
        {f"tf-keras-vis Scorecam, batch_size {chunk}": [peer_mb]},
        "MB",
        1.0,
        check=f"the 512 masked float32 inputs alone would be {inputs:.0f} MB (2^20 bytes): neither side holds them "
        "all with ours",
        notes="growth of the resident set's peak (VmHWM, reset after building the model and tracing) during one "
        f"call, each side in a fresh process. Ours holds at most {chunk} masked images and their forward pass, "
        "whatever the number of channels; tf-keras-vis builds every masked image (and the upsampled feature map, "
        f"tiled over the colour channels) before predicting them {chunk} at a time. Both also hold the forward pass "
        f"of {chunk} images (at 224 px one block1 activation is 32 x 224 x 224 x 64 x 4 bytes = 392 MB).",
    )


# ---------------------------------------------------------------------------------------------------------------
# 3c. Every attribution method's cost per image, in forward passes

# The methods whose work grows with a parameter (forward or gradient passes per image): they run on their own smaller
# batch, each over a forward pass of that batch size.
COSTLY_METHODS = ("score_cam", "smoothgrad", "integrated_gradients", "occlusion", "rise")


def method_cost_params(size, *, quick=False):
    """The costly methods' parameters of `bench_method_costs` at ``size`` px: dict method -> params.

    Occlusion: a square of a quarter of the side moved by an eighth, 7 x 7 = 49 positions at any size (patch 56,
    stride 28 at 224 px). Score-CAM keeps its default chunking (its cost is set by the layer's channels: 512 at
    block5_conv3). ``quick`` takes fewer masks, samples and steps.
    """
    return {
        "score_cam": {},
        "smoothgrad": {"samples": 4 if quick else 16, "seed": 0},
        "integrated_gradients": {"steps": 4 if quick else 16},
        "occlusion": {"patch": size // 4, "stride": size // 8},
        "rise": {"masks": 64 if quick else 200, "seed": 0},
    }


def method_costs_settings(*, quick=False):
    """`bench_method_costs`'s arguments in `run_all`: 224 px, batch 8 (the costly methods 2), best of 3 calls
    within 10 s; ``quick``: 32 px, batch 2, fewer masks, samples and steps, the costly methods timed once."""
    size = 32 if quick else 224
    return {
        "size": size,
        "batch": 2 if quick else 8,
        "costly_batch": 2,
        "params": method_cost_params(size, quick=quick),
        "repeats": 2 if quick else 3,
        "budget": 1.0 if quick else 10.0,
    }


def _best_seconds(fn, *, repeats, budget):
    """The least of up to ``repeats`` timed calls of ``fn``, stopping early once the calls so far took ``budget``
    seconds (one long call is itself the sum of many batched passes, so its noise averages out)."""
    times = []
    while len(times) < repeats and sum(times) < budget:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _warmup_params(name, params, size):
    """Parameters for a method's untimed warm-up call on its batch: the same compiled functions at the least work
    (one mask, sample, step or position). None for Score-CAM, which has no cheaper setting: its warm-up is Grad-CAM's
    (the same layer gradients, then the forward pass every method shares)."""
    cheap = {
        "smoothgrad": {"samples": 1},
        "integrated_gradients": {"steps": 1},
        "occlusion": {"patch": size, "stride": size},
        "rise": {"masks": 1},
    }
    return None if name == "score_cam" else {**params, **cheap.get(name, {})}


def bench_method_costs(
    *,
    size=224,
    batch=8,
    costly_batch=2,
    params=None,
    repeats=3,
    budget=10.0,
    layer="block5_conv3",
    methods=None,
    report=None,
):
    """Every method of `streetlib.attribution.registry.METHODS`: seconds per image, and that as a multiple of the
    seconds per image of one forward pass (logits) of the same batch on the same model, as
    `streetlib.attribution.leaderboard` defines a method's cost.

    The model is a flat VGG16 with two outputs (random weights, `_flat_vgg16`), the batch ``batch`` random ``size``
    px images, the city output explained for each image's predicted class; CAM methods (and Guided Grad-CAM) read
    ``layer``. Each method is called through `registry.attribute` (so its maps' upsampling and normalisation count)
    once untimed on its batch (tracing, see `_warmup_params`), then timed: the least of up to ``repeats`` calls
    (`_best_seconds` with ``budget``). The forward pass likewise (warm-up on the whole batch, then the least of at
    least 3 calls). `COSTLY_METHODS` run on the first ``costly_batch`` images, with ``params`` (default
    `method_cost_params`), over a forward pass of that batch size. ``methods``: None (every registry method) or a
    list of names, to measure a few.

    Returns:
        dict: ``size``, ``batch``, ``costly_batch``, ``layer``, ``forward`` (dict batch size -> seconds per image)
        and ``rows``, one per method in registry order: ``method``, ``family``, ``differentiates``, ``layer`` (None
        for methods that read none), ``params`` (every parameter of the method, defaults included), ``batch``,
        ``seconds_per_image``, ``forward_seconds_per_image`` and ``cost`` (their ratio). ``report``, if given, is
        called with each row as soon as it is measured.
    """
    from streetlib.attribution.explainer import explainer
    from streetlib.attribution.registry import METHODS, attribute

    params = method_cost_params(size) if params is None else params
    methods = list(METHODS) if methods is None else list(methods)
    unknown = sorted((set(params) | set(methods)) - set(METHODS))
    if unknown:
        raise ValueError(
            f"Invalid `params` or `methods`: {unknown} are not methods. Expected some of {sorted(METHODS)}."
        )
    model = _flat_vgg16(size, regions=4)
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    ex = explainer(model, layer=layer)
    targets = np.argmax(ex.logits(x, output="city"), axis=1)

    forward = {}
    for n in sorted({batch, min(costly_batch, batch)}, reverse=True):
        ex.logits(x[:n], output="city")  # traces once; the first call at a batch size also sets up its kernels
        seconds = _best_seconds(
            functools.partial(ex.logits, x[:n], output="city"), repeats=max(repeats, 3), budget=budget
        )
        forward[n] = seconds / n

    def call(images, name, where, method_params):
        return attribute(
            x[:images], model, method=name, output="city", layer=where, target=targets[:images], **method_params
        )

    rows = []
    for name in methods:
        method = METHODS[name]
        n = min(costly_batch, batch) if name in COSTLY_METHODS else batch
        where = layer if method.uses_layer else None
        warm = _warmup_params(name, params.get(name, {}), size)
        call(n, *((name, where, warm) if warm is not None else ("grad_cam", layer, {})))
        timed_call = functools.partial(call, n, name, where, params.get(name, {}))
        seconds = _best_seconds(timed_call, repeats=repeats, budget=budget) / n
        rows.append(
            {
                "method": name,
                "family": method.family,
                "differentiates": method.differentiates,
                "layer": where,
                "params": {**method.params, **params.get(name, {})},
                "batch": n,
                "seconds_per_image": seconds,
                "forward_seconds_per_image": forward[n],
                "cost": seconds / forward[n],
            }
        )
        if report is not None:
            report(rows[-1])
    return {
        "size": size,
        "batch": batch,
        "costly_batch": min(costly_batch, batch),
        "layer": layer,
        "forward": forward,
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------------------------
# 4. End-to-end prediction from memory-mapped uint8 data


def bench_predict(*, n=100, size=224, batch_size=32, repeats=3):
    """Images/s of prediction: our pipeline from memory-mapped uint8 files versus ``model.predict`` on the same
    images already in memory as normalised float32."""
    from streetlib.data.loaders import load_street10, write_street10
    from streetlib.data.pipeline import make_dataset, normalize
    from streetlib.models.network import build_model

    data = _street_data(n, size)
    root = Path(tempfile.mkdtemp(prefix="streetlib-bench-")) / "ds"
    write_street10(root, {c: data.images[data.city == i] for i, c in enumerate(data.spec.classes)}, spec=data.spec)
    loaded = load_street10(root)
    model = build_model(weights="random", input_shape=(size, size, 3), spec=loaded.spec)
    in_memory = normalize(loaded.images.astype(np.float32), "samplewise").numpy()

    def ours():
        return model.predict(make_dataset(loaded, batch_size=batch_size, normalization="samplewise"), verbose=0)

    def ref():
        return model.predict(in_memory, batch_size=batch_size, verbose=0)

    ours_t, ref_t = timed(ours, repeats=repeats), timed(ref, repeats=repeats)
    a, b = ours(), ref()
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    return Comparison(
        f"End-to-end prediction, {n} images at {size} px",
        {"pipeline from memory-mapped uint8": [n / t for t in ours_t]},
        {"model.predict on in-memory float32": [n / t for t in ref_t]},
        "img/s",
        0.9,
        check=f"same predictions: max |probability difference| {diff:.1e}",
    )


# ---------------------------------------------------------------------------------------------------------------
# 5. Peak memory loading a Street10-sized set

_MEMORY_SCRIPT = """
import sys
from pathlib import Path
from streetlib.data.loaders import load_street10

def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
    return int(line.split()[1]) * 1024

# Reset the peak resident size to the current one (Linux), so the peak below is the loader's alone.
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS:")
data = load_street10(sys.argv[1])
print(status("VmHWM:") - before, data.images.nbytes)
"""


def make_street10_like(root, *, size=224, counts=STREET10_COUNTS, dtype="float32"):
    """Write a Street10-sized dataset of random images (float in [0, 1], as the original files) to ``root``."""
    from streetlib.classes import STREET10

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for cls, n in zip(STREET10.classes, counts, strict=True):
        arr = np.lib.format.open_memmap(root / f"{cls}.npy", mode="w+", dtype=dtype, shape=(n, size, size, 3))
        for start in range(0, n, 64):
            stop = min(n, start + 64)
            arr[start:stop] = rng.integers(0, 256, (stop - start, size, size, 3)).astype(dtype) / 255.0
        arr.flush()
        del arr
    return root


def bench_memory(*, size=224, counts=STREET10_COUNTS, repeats=2):
    """Peak memory (growth of the maximum resident set) of loading a Street10-sized set from float32 files,
    each in a fresh process, against the size of the data as uint8 and the original's float64 stack."""
    root = make_street10_like(Path(tempfile.mkdtemp(prefix="streetlib-bench-")) / "street10", size=size, counts=counts)
    peaks, nbytes = [], 0
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, str(root)], capture_output=True, text=True, check=True
        )
        peak, nbytes = (int(v) for v in out.stdout.split())
        peaks.append(peak / 2**20)
    uint8 = nbytes / 2**20
    return Comparison(
        f"Peak memory loading a Street10-sized set ({sum(counts)} x {size} x {size} x 3, float32 files)",
        {"our loader": peaks},
        {"size of the data as uint8 (computed)": [uint8], "the original's float64 stack (computed)": [uint8 * 8]},
        "MB",
        1 / 1.3,
        check=f"loaded array: uint8, {uint8:.0f} MB",
        notes="peak growth of the resident set (VmHWM after resetting it) in a fresh process; the reference sizes "
        "are computed, not measured",
    )


# ---------------------------------------------------------------------------------------------------------------
# 6. VGG16 throughput and the fraction of the CPU's peak


def vgg16_flops(size):
    """Multiply-adds x 2 of VGG16's 13 conv layers for one ``size`` x ``size`` image (the head is negligible)."""
    convs = [
        (64, 3),
        (64, 64),
        (128, 64),
        (128, 128),
        (256, 128),
        (256, 256),
        (256, 256),
        (512, 256),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ]
    blocks = [2, 2, 3, 3, 3]
    flops, layer, s = 0, 0, size
    for count in blocks:
        for _ in range(count):
            cout, cin = convs[layer]
            flops += 2 * s * s * cin * cout * 9
            layer += 1
        s //= 2
    return flops


def measured_peak_flops(*, n=4096, repeats=3):
    """FLOP/s of a large float32 matrix product on this machine: the achievable peak the CPU offers TensorFlow."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    times = timed(lambda: matmul().numpy(), repeats=repeats)
    return 2 * n**3 / min(times)


def bench_vgg16(*, sizes=(64, 128, 224), batch=16, repeats=3):
    """VGG16 forward and training images/s per size, and the fraction of the measured matmul peak."""
    import keras

    from streetlib.models.network import build_model

    peak = measured_peak_flops()
    rows = []
    for size in sizes:
        model = build_model(weights="random", input_shape=(size, size, 3))
        model.compile(
            optimizer="sgd",
            loss={"region": "sparse_categorical_crossentropy", "city": "sparse_categorical_crossentropy"},
        )
        x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
        y = {"region": np.zeros(batch, np.int32), "city": np.zeros(batch, np.int32)}
        fwd = timed(functools.partial(model.predict_on_batch, x), repeats=repeats)
        train = timed(functools.partial(model.train_on_batch, x, y), repeats=repeats)
        flops = vgg16_flops(size)
        f_ips, t_ips = batch / statistics.median(fwd), batch / statistics.median(train)
        rows.append(
            {
                "size": size,
                "forward_img_s": f_ips,
                "train_img_s": t_ips,
                "forward_peak_fraction": f_ips * flops / peak,
                # Training is about 3x the forward work (forward, gradient w.r.t. inputs and weights).
                "train_peak_fraction": t_ips * 3 * flops / peak,
            }
        )
        keras.backend.clear_session()
    return {"peak_flops": peak, "rows": rows, "batch": batch}


# ---------------------------------------------------------------------------------------------------------------
# Running and writing


def environment():
    """Machine, date and versions, for the report."""
    from streetlib.training.train import package_versions

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "versions": package_versions(("tensorflow", "keras", "numpy", "tf-keras-vis")),
    }


def run_all(*, quick=False, report=print):
    """Run every comparison; ``quick`` shrinks sizes and repeats to finish in minutes. Returns a dict."""
    results = {"environment": environment(), "quick": quick, "comparisons": []}
    steps = [
        (
            "input pipeline",
            lambda: bench_input_pipeline(
                n=120 if quick else 500, batches=4 if quick else 12, repeats=2 if quick else 3
            ),
        ),
        (
            "transfer",
            lambda: bench_transfer(
                per_class=30 if quick else 100, epochs=3 if quick else 10, repeats=1 if quick else 2
            ),
        ),
        # The same at 128 px (4x the backbone's work per image, the same fixed costs), to show how the ratio grows
        # with the share of the frozen backbone in an epoch.
        *(
            []
            if quick
            else [("transfer 128 px", lambda: bench_transfer(per_class=100, size=128, epochs=10, repeats=1))]
        ),
        (
            "grad-cam",
            lambda: bench_grad_cam(size=112 if quick else 224, batch=8 if quick else 32, repeats=2 if quick else 3),
        ),
        # Grad-CAM++, LayerCAM, saliency, SmoothGrad and Score-CAM against tf-keras-vis: one comparison each, and
        # Score-CAM's memory. Score-CAM (512 forward passes per image) runs on its own smaller batch.
        (
            "attribution methods",
            lambda: bench_attribution(
                size=64 if quick else 224,
                batch=4 if quick else 32,
                scorecam_batch=1 if quick else 2,
                repeats=1 if quick else 3,
            ),
        ),
        ("predict", lambda: bench_predict(n=40 if quick else 100, repeats=2 if quick else 3)),
        (
            "memory",
            lambda: bench_memory(
                counts=tuple(c // 4 for c in STREET10_COUNTS) if quick else STREET10_COUNTS, repeats=1 if quick else 2
            ),
        ),
    ]
    for label, step in steps:
        report(f"[bench] {label} ...")
        start = time.perf_counter()
        out = step()  # a Comparison, or a list of them (one row group each in the report)
        comparisons = out if isinstance(out, list) else [out]
        results["comparisons"].extend(comparisons)
        ratios = "; ".join(f"{c.name}: {c.ratios}" for c in comparisons)
        report(f"[bench] {label}: {ratios} ({time.perf_counter() - start:.0f} s)")
    report("[bench] attribution method costs ...")
    start = time.perf_counter()
    results["method_costs"] = bench_method_costs(
        **method_costs_settings(quick=quick),
        report=lambda row: report(f"[bench]   {row['method']}: {row['cost']:.3g}x forward"),
    )
    report(f"[bench] attribution method costs ({time.perf_counter() - start:.0f} s)")
    report("[bench] VGG16 throughput ...")
    results["vgg16"] = bench_vgg16(
        sizes=(64,) if quick else (64, 128, 224), batch=8 if quick else 16, repeats=2 if quick else 3
    )
    return results


def _fmt(values, unit):
    med, spread = _summary(values)
    precision = 0 if unit == "MB" else 1 if unit == "s" else 2 if med < 10 else 1
    return f"{med:.{precision}f} ± {spread:.{precision}f} {unit}"


def _params_cell(params):
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "-"


def method_costs_markdown(costs):
    """The lines of BENCHMARKS.md's section for `bench_method_costs` results: heading, table and note."""
    rows = costs["rows"]
    costly = [r["method"] for r in rows if r["batch"] != costs["batch"]]
    batches = f"batch {costs['batch']}" + (
        f"; {', '.join(costly)} on the first {costs['costly_batch']} of those images" if costly else ""
    )
    lines = [
        "## Attribution methods: cost per image in forward passes",
        "",
        f"Every method of `streetlib.attribution.registry.METHODS` through `registry.attribute`, on a flat VGG16 with "
        f"two outputs (random weights) at {costs['size']} px explaining the city output's predicted class, CAM "
        f"methods at {costs['layer']}; {batches}.",
        "",
        "| method | family | differentiates / layer | params | seconds per image | cost (x forward) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        where = r["differentiates"] + (f" / {r['layer']}" if r["layer"] else "")
        params = _params_cell(r["params"]) + (f" (batch of {r['batch']})" if r["batch"] != costs["batch"] else "")
        lines.append(
            f"| {r['method']} | {r['family']} | {where} | {params} | {r['seconds_per_image']:.3g} | {r['cost']:.3g}x |"
        )
    forward = ", ".join(f"{s:.3g} s at batch {n}" for n, s in sorted(costs["forward"].items(), reverse=True))
    occlusion = next((r["params"] for r in rows if r["method"] == "occlusion"), None)
    positions = ""
    if (
        occlusion
    ):  # positions per side as `perturbation.occlusion` places them: every stride, plus one flush with the edge
        free = costs["size"] - occlusion["patch"]
        side = free // occlusion["stride"] + 1 + (1 if free % occlusion["stride"] else 0)
        positions = f" ({side} x {side} = {side * side} here)"
    lines += [
        "",
        "Cost: a method's seconds per image over the seconds per image of one forward pass (the logits) of the same "
        "batch on the same model, as the attribution leaderboard's ``cost`` column "
        f"(forward pass: {forward} per image). Each is the least of a few timed calls after an untimed warm-up "
        "call, so tracing is excluded; a method's time includes upsampling its maps to the input and normalising "
        "them. A cost scales with the method's parameters: Score-CAM runs one forward pass per channel of its layer "
        "(512 at block5_conv3), RISE one per mask, "
        f"occlusion one per position of the square{positions}, "
        "SmoothGrad and Integrated Gradients one gradient pass (about 3 forward passes' work) per sample or step; "
        "copies go through the model in batches of ``batch_size`` (Score-CAM: ``chunk_size``), so at small sizes "
        "a copy can cost less than an image of a small forward batch. The CAM methods (except Score-CAM) "
        "differentiate only the head above their layer, so they cost about one forward pass.",
    ]
    return lines


def to_markdown(results, *, command):
    """The ``BENCHMARKS.md`` text for ``run_all`` results."""
    env = results["environment"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores visible), Python {env['python']}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + ".",
        f"Command: `{command}`{' (quick mode: smaller sizes, fewer repeats)' if results['quick'] else ''}.",
        "Each value is the median of the repeats ± half their range. Speed ratios are ours over the reference "
        "(higher is better); memory is ours as a multiple of the reference (lower is better).",
        "",
        "| comparison | ours | reference | ratio | target | met | same computation? |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results["comparisons"]:
        ((our_label, our_values),) = c.ours.items()
        for label, values in c.reference.items():
            ratio = c.ratios[label]
            target = c.target[label] if isinstance(c.target, dict) else c.target
            if c.unit == "MB":  # memory reads better as "ours is N x the reference", at most the target
                shown, wanted = f"{1 / ratio:.2f}x", f"at most {1 / target:.2f}x"
            else:
                shown, wanted = f"{ratio:.2f}x", f"at least {target:.2f}x"
            lines.append(
                f"| {c.name} | {our_label}: {_fmt(our_values, c.unit)} | {label}: {_fmt(values, c.unit)} | "
                f"{shown} | {wanted} | {'yes' if ratio >= target else 'no'} | {c.check} |"
            )
    vgg = results["vgg16"]
    lines += [
        "",
        f"## VGG16 on this CPU (batch {vgg['batch']})",
        "",
        f"Peak: the float32 FLOP/s of a 4096 x 4096 matrix product in TensorFlow here (the best of 3), "
        f"{vgg['peak_flops'] / 1e9:.0f} GFLOP/s: what this CPU delivers to TensorFlow's best-tuned kernel. VGG16's "
        "work per image is its 13 conv layers' multiply-adds x 2 as a direct convolution computes them; training is "
        "taken as 3x the forward work. A fraction above 100% means the convolution kernels do less arithmetic than "
        "that direct count (oneDNN may pick transform-based algorithms such as Winograd for 3x3 convolutions).",
        "",
        "| size | forward img/s | training img/s | forward, fraction of peak | training, fraction of peak |",
        "|---|---|---|---|---|",
    ]
    for r in vgg["rows"]:
        lines.append(
            f"| {r['size']} px | {r['forward_img_s']:.1f} | {r['train_img_s']:.1f} | "
            f"{r['forward_peak_fraction']:.0%} | {r['train_peak_fraction']:.0%} |"
        )
    if results.get("method_costs"):
        lines += ["", *method_costs_markdown(results["method_costs"])]
    notes = [f"- {c.name}: {c.notes}" for c in results["comparisons"] if c.notes]
    return "\n".join(lines + (["", "## Notes", "", *notes] if notes else [])) + "\n"


def to_json(results):
    """A JSON-serialisable copy of ``run_all`` results."""
    out = dict(results)
    out["comparisons"] = [c.__dict__ for c in results["comparisons"]]
    return json.dumps(out, indent=1, default=str)
