"""Benchmarks of getting images in: the training input pipeline (tf.data versus the original's ImageDataGenerator),
prediction from memory-mapped uint8 files versus ``model.predict`` in memory, and the peak memory of loading a
Street10-sized set; and the synthetic street images the benchmarks run on."""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from streetlib.benchmarks.comparison import Comparison, timed
from streetlib.classes import STREET10_COUNTS


def street_data(n, size, seed=0):
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

    data = street_data(n, size)
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


def bench_predict(*, n=100, size=224, batch_size=32, repeats=3):
    """Images/s of prediction: our pipeline from memory-mapped uint8 files versus ``model.predict`` on the same
    images already in memory as normalised float32."""
    from streetlib.data.loaders import load_street10, write_street10
    from streetlib.data.pipeline import make_dataset, normalize
    from streetlib.models.network import build_model

    data = street_data(n, size)
    root = Path(tempfile.mkdtemp(prefix="streetlib-bench-")) / "ds"
    write_street10(root, {c: data.images[data.city == i] for i, c in enumerate(data.spec.classes)}, classes=data.spec)
    loaded = load_street10(root)
    model = build_model(weights="random", input_shape=(size, size, 3), classes=loaded.spec)
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
