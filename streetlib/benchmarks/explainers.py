"""Benchmarks of the attribution methods against the references: Grad-CAM batched and compiled versus the original's
one image at a time and tf-keras-vis, then the other methods tf-keras-vis has (the same maps, their speed, Score-CAM's
memory); and the flat VGG16 they run on."""

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np

from streetlib.benchmarks.comparison import Comparison, timed


def flat_vgg16(size, num_classes=10, seed=0, *, regions=None):
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

    model = flat_vgg16(size)
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
from streetlib.benchmarks.explainers import flat_vgg16

def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
    return int(line.split()[1]) * 1024

side, size, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
model = flat_vgg16(size)
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
    from streetlib.attribution.explainer import Explainer

    layer, chunk = "block5_conv3", 32
    model = flat_vgg16(size)
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    targets = np.argmax(model.predict(x, verbose=0), axis=1)
    ex = Explainer(model, layer=layer)
    scorecam_images = min(scorecam_batch, batch)
    pairs = _pairs(model, ex, layer=layer, chunk=chunk, batch=scorecam_images, images=batch, samples=smoothgrad_samples)
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


def _pairs(model, ex, *, layer, chunk, batch, images, samples):
    """The `_Pair` of each method `bench_attribution` compares: ours through ``ex`` (an `Explainer` of ``model`` at
    ``layer``), tf-keras-vis's on a clone of ``model``. Score-CAM runs on its own ``batch`` of the ``images``,
    ``chunk`` masked images at a time on both sides; SmoothGrad takes ``samples`` samples."""
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from streetlib.attribution import cams, gradients

    seed = 0

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

    return [
        _Pair("Grad-CAM++", ours(cams.grad_cam_plus_plus), theirs(gradcam_pp, **cam_args)),
        _Pair("LayerCAM", ours(cams.layer_cam), theirs(layercam, **cam_args)),
        _Pair("Saliency", ours(gradients.saliency), theirs(saliency, normalize_map=False)),
        _Pair(
            f"SmoothGrad ({samples} samples, noise 0.2)",
            ours(gradients.smoothgrad, samples=samples, noise=0.2, seed=seed),
            theirs(saliency, smooth_samples=samples, smooth_noise=0.2, normalize_map=False),
            same_inputs=lambda x: _same_noise(x, samples=samples, seed=seed),
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
            batch=batch,
            check_images=1,
            # What a first call builds, without its 512 forward passes: our compiled functions, tf-keras-vis's
            # predict function (it builds its truncated model anew in every call).
            warmups=(
                lambda x, t: (ex.layer_gradients(x, output="city", target=t), ex.logits(x, output="city")),
                lambda x, t: scorecam.model.predict(x, verbose=0),
            ),
            notes=f"on its own batch of the first {batch} of the {images} images: one forward pass "
            f"per image and channel, {512 * batch} per call, {chunk} at a time on both sides",
        ),
    ]
