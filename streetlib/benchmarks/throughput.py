"""Benchmarks of compute: a transfer phase on cached features versus the frozen backbone every epoch, and VGG16's
throughput as a fraction of this CPU's measured peak."""

import functools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from streetlib.benchmarks.comparison import Comparison, timed
from streetlib.benchmarks.pipelines import street_data


def bench_transfer(*, data=None, per_class=100, size=64, epochs=10, repeats=2):
    """Wall time of a transfer phase (frozen VGG16, no augmentation): cached features versus plain ``fit``."""
    from streetlib.data.splits import make_split
    from streetlib.runs import RunId, RunLayout
    from streetlib.training.config import Execution, RunConfig
    from streetlib.training.train import run_phase

    data = street_data(per_class * 10, size) if data is None else data
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
