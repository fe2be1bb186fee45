"""Where a run computes: the `tf.distribute` strategy (TPU, several GPUs, one GPU or the CPU) and the Keras dtype
policy of mixed precision on that device."""

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import keras
import tensorflow as tf

STRATEGIES = ("auto", "default", "mirrored", "tpu")


def choose_strategy(strategy=None):
    """The `tf.distribute.Strategy` to build and train under.

    Args:
        strategy: None or 'auto': a TPU if one is attached, MirroredStrategy over several GPUs, OneDeviceStrategy
            on one GPU, else the default (CPU) strategy. 'mirrored': MirroredStrategy over all GPUs, or over all
            logical CPUs when there is no GPU. 'default', 'tpu', or a `tf.distribute.Strategy` (returned as is).

    Returns:
        `tf.distribute.Strategy`.
    """
    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if strategy in (None, "auto"):
        if _tpu_attached():
            return _tpu_strategy()
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy([g.name for g in gpus])
        if len(gpus) == 1:
            return tf.distribute.OneDeviceStrategy(gpus[0].name)
        return tf.distribute.get_strategy()
    elif strategy == "default":
        return tf.distribute.get_strategy()
    elif strategy == "mirrored":
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    elif strategy == "tpu":
        return _tpu_strategy()
    else:
        raise ValueError(
            f"Invalid `strategy`. Expected one of {STRATEGIES}, None or a tf.distribute.Strategy. "
            f"Received: strategy={strategy!r}"
        )


def _tpu_attached():
    # Only look where a TPU announces itself: a resolver probe elsewhere can wait on a metadata server.
    return bool(os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")) or Path("/dev/accel0").exists()


def _tpu_strategy():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


@contextmanager
def precision_policy(mixed_precision, strategy):
    """Set Keras's dtype policy for building the model, and restore it afterwards.

    Mixed precision is 'mixed_float16' on a GPU, 'mixed_bfloat16' on a TPU and on a CPU (oneDNN has bfloat16
    kernels; fast only on CPUs with AVX512_BF16 or AMX, slow but correct elsewhere), with a warning: on a CPU it is
    for rehearsing the GPU path, not for speed. The layers keep their policy after the context ends.
    """
    if not mixed_precision:
        yield
        return
    if isinstance(strategy, tf.distribute.TPUStrategy):
        policy = "mixed_bfloat16"
    elif tf.config.list_logical_devices("GPU"):
        policy = "mixed_float16"
    else:
        policy = "mixed_bfloat16"
        warnings.warn(
            "`mixed_precision=True` without a GPU or TPU: bfloat16 compute on the CPU ('mixed_bfloat16'), meant for "
            "rehearsing the GPU path; it is usually slower than float32 on CPUs (those without AVX512_BF16 or AMX), "
            "and its numbers differ from a GPU's float16.",
            stacklevel=4,  # the caller of run_phase (through contextlib's __enter__ and run_phase)
        )
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
