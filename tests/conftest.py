"""Shared fixtures: tiny data that a model can learn in a few epochs, and output folders under tmp_path."""

import os
import subprocess
import sys

# Before TensorFlow is imported by any test module: keep its start-up logging out of test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from streetlib.classes import SYNTH10
from streetlib.data.loaders import StreetData
from streetlib.data.splits import make_split


def make_toy_data(*, per_class=6, size=32, seed=0):
    """A learnable toy `StreetData` of SYNTH10 classes: each city is a colour, each image that colour plus a random
    brightness gradient and noise. Deterministic in ``seed``, so a subprocess can rebuild the same data.

    Returns:
        `StreetData`, ``per_class * 10`` uint8 images of ``size`` px, marked synthetic.
    """
    rng = np.random.default_rng(seed)
    city = np.repeat(np.arange(SYNTH10.num_classes), per_class)
    hues = np.linspace(0.0, 1.0, SYNTH10.num_classes, endpoint=False)
    colours = 127.5 + 100 * np.stack([np.cos(2 * np.pi * (hues + k / 3)) for k in range(3)], axis=-1)
    ramp = np.linspace(-30, 30, size)
    images = []
    for c in city:
        gradient = rng.uniform(-1, 1) * ramp[None, :, None] + rng.uniform(-1, 1) * ramp[:, None, None]
        noise = rng.normal(0, 12, (size, size, 3))
        images.append(np.clip(colours[c] + gradient + noise, 0, 255))
    return StreetData(images=np.stack(images).astype(np.uint8), city=city, spec=SYNTH10, name="toy", synthetic=True)


# Float32 has a unit roundoff of 2**-24 (6e-8). A VGG16 feature is 13 convolutions deep, each a sum of up to
# 3 * 3 * 512 = 4,608 products whose order oneDNN chooses by instruction set (AVX2 or AVX-512), thread count and batch
# shape. Rounding errors of a sum grow about as sqrt(n) per layer, so the same image through a different kernel
# differs by about 13 * sqrt(4608) * 6e-8 ~ 5e-5 of the feature scale (measured: 3e-6 between a batch of 20 and one
# image on AVX2). Relative to each element that bound means nothing for elements near zero, so the tolerance is taken
# relative to the largest magnitude in the array.
SAME_COMPUTATION_RTOL = 1e-4


def assert_same_computation(actual, desired, *, rtol=SAME_COMPUTATION_RTOL):
    """Assert two float arrays are one computation run through different kernels: equal within ``rtol`` of the
    largest magnitude of ``desired`` (see `SAME_COMPUTATION_RTOL` for why), and not both zero."""
    scale = float(np.max(np.abs(desired)))
    assert scale > 0, "both arrays are all zero: the comparison would prove nothing"
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale)


def toy_split(data, *, seed=0):
    """The split the training tests use: per class 1 test, 1 validation and 4 training images (of 6)."""
    return make_split(data, seed=seed, test_size=0.15, val_size=0.2, save=False)


@pytest.fixture(scope="session")
def toy_data():
    """`make_toy_data()`: 60 images of 32 px, 10 cities."""
    return make_toy_data()


@pytest.fixture(scope="session")
def toy_data_split(toy_data):
    return toy_split(toy_data)


@pytest.fixture
def out_dirs(tmp_path):
    """Output roots for one test: dict with ``hists_dir``, ``models_dir`` and ``figs_dir`` under tmp_path."""
    return {name: tmp_path / name.removesuffix("_dir") for name in ("hists_dir", "models_dir", "figs_dir")}


def run_script(script, **env):
    """Run ``python -c script`` in a fresh process on the CPU, with ``env`` added to this environment, at most 5 min.

    Returns:
        `subprocess.CompletedProcess` with text ``stdout`` and ``stderr``.
    """
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},
    )
