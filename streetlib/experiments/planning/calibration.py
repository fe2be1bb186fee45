"""Seconds per pass on this device: a few timed batches of VGG16 with random weights (`calibrate`), which turn a
plan's passes into hours on the machine that runs it."""

import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streetlib.experiments.planning.costs import GRADIENT_PASS
from streetlib.models import network


@dataclass(frozen=True)
class Calibration:
    """Seconds per pass on a device (see `calibrate`).

    Attributes:
        forward: float, seconds of one forward pass (one image, VGG16, at ``image_size``).
        backward: float, seconds of one backward-pass equivalent (half a backward pass: the passes count a backward
            pass as two).
        device: str, 'CPU (model)' or the GPU's name.
        image_size: int, pixels.
        batch_size: int, images per timed batch.
    """

    forward: float
    backward: float
    device: str = "given"
    image_size: int = 0
    batch_size: int = 0


def device_name():
    """'CPU (<model name>)' or the first GPU's name."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.is_file() else []
    return f"CPU ({names[0].strip() if names else platform.processor() or 'unknown'})"


def calibrate(image_size, *, batch_size=32, budget=6.0):
    """Time VGG16 (random weights) forward and forward + backward at ``image_size`` on the current device.

    Each is traced and run once untimed, then timed over as many batches as fit its half of ``budget`` (at least
    one). On a CPU a batch holds 2 images at 224 px (as much work at smaller sizes), so that with the two untimed
    calls calibration takes about 10-20 s; on a GPU, ``batch_size`` images (a GPU is slow on small batches).

    Args:
        image_size: int, pixels.
        batch_size: int, the profile's batch size (the most images a timed batch holds).
        budget: float, seconds of timed batches.

    Returns:
        `Calibration`.
    """
    import tensorflow as tf

    device = device_name()
    batch = batch_size if not device.startswith("CPU") else max(1, min(batch_size, round(2 * (224 / image_size) ** 2)))
    model = network.build_backbone("vgg16", weights="random", input_shape=(image_size, image_size, 3))
    images = tf.random.uniform((batch, image_size, image_size, 3))

    @tf.function
    def forward(x):
        return model(x, training=False)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True))
        return tape.gradient(loss, model.trainable_weights)

    seconds_forward = _seconds_per_image(forward, images, budget / 2)
    seconds_step = _seconds_per_image(step, images, budget / 2)
    # The passes count a backward pass as two forward ones: a unit of backward is half the backward's measured time.
    backward = max(seconds_step - seconds_forward, 0.0) / GRADIENT_PASS[1]
    return Calibration(seconds_forward, backward, device, image_size, batch)


def _seconds_per_image(fn, images, budget):
    """The least seconds per image of timed calls of ``fn(images)`` after one untimed call, within ``budget``."""
    np.asarray(_first(fn(images)))
    times = []
    while not times or (sum(times) < budget and len(times) < 5):
        start = time.perf_counter()
        np.asarray(_first(fn(images)))
        times.append(time.perf_counter() - start)
    return min(times) / len(images)


def _first(result):
    return result[0] if isinstance(result, (list, tuple)) else result
