"""What one piece of work costs, in passes and in device memory.

A *pass* is one image through VGG16's convolutional base at the profile's image size. A layer's share of a pass is
its multiply-adds, ``H*W*k*k*Cin*Cout`` for a convolution (the kernel's size times the output's positions), over
VGG16's; a backward pass counts twice its forward. Device memory is parameters, optimiser state and one batch's
activations.
"""

import math

import keras

from streetlib.attribution import explainer
from streetlib.attribution.registry import METHODS
from streetlib.models import network

# A gradient pass: one forward and one backward (twice the forward's work), as (forward, backward) passes.
GRADIENT_PASS = (1, 2)
# Optimiser slots per trainable parameter (Keras): Adam and Nadam keep two moments, SGD with momentum and RMSprop one.
OPTIMIZER_SLOTS = {"adam": 2, "nadam": 2, "sgd": 1, "rmsprop": 1}


def layer_flops(model):
    """Multiply-adds per image of every convolution and dense layer of ``model`` (nested models expanded), in order:
    the kernel's size times the output positions (``H*W*k*k*Cin*Cout`` for a convolution). Returns a list of
    (layer name, int)."""
    out = []
    for layer in explainer.all_layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and not isinstance(layer, keras.Model):
            positions = math.prod(layer.output.shape[1:-1])
            out.append((layer.name, math.prod(kernel.shape) * positions))
    return out


def model_flops(model):
    """Multiply-adds per image of ``model``'s convolution and dense layers (see `layer_flops`). Returns int."""
    return sum(f for _, f in layer_flops(model))


def vgg16_flops(image_size):
    """Multiply-adds of one forward pass of VGG16's convolutional base over one ``image_size`` px image: the unit of a
    pass. Returns int."""
    return model_flops(network.build_backbone("vgg16", weights="random", input_shape=(image_size, image_size, 3)))


def training_passes(n_train, n_val, *, epochs, frozen, trainable, cached_copies, shared=False):
    """Passes of one training run, as (forward, backward).

    With a feature cache (``cached_copies`` > 0) the frozen part runs once per cached image (each augmented copy of
    the training set, and the validation set), then only the trainable part runs each epoch; without one, the whole
    model runs each epoch. Backward passes go through the trainable part only, at twice its forward work.

    Args:
        n_train, n_val: int, training and validation images.
        epochs: int, at most this many epochs (early stopping may end sooner).
        frozen, trainable: float, the frozen and the trainable part's share of a pass (see `vgg16_flops`).
        cached_copies: int, copies of the training set cached (`cache.plan_cache`'s ``copies``), 0 for no cache.
        shared: bool, the cached features come from a `cache.FeatureStore` several runs share: the frozen part's
            passes are the store's (over the whole dataset, once for all the runs it serves), not the run's.
            Default False.

    Returns:
        (float forward passes, float backward passes).
    """
    if cached_copies:
        extraction = 0.0 if shared else frozen * (cached_copies * n_train + n_val)
        forward = extraction + epochs * trainable * (n_train + n_val)
    else:
        forward = epochs * (frozen + trainable) * (n_train + n_val)
    return forward, epochs * GRADIENT_PASS[1] * trainable * n_train


def method_passes(method, params, *, channels, image_size):
    """One attribution method's passes per image of its model, as (forward, backward), from its parameters (the
    costs the methods' docstrings state; `streetlib.benchmarks` measures them, BENCHMARKS.md).

    Args:
        method: a `registry.METHODS` name.
        params: dict of the method's parameters (its defaults fill the rest).
        channels: int, channels of the layer a CAM reads (Score-CAM runs one forward pass per channel).
        image_size: int, pixels (occlusion's positions).
    """
    p = {**METHODS[method].params, **params}
    if method == "score_cam":
        return 1 + channels, 0
    if method == "occlusion":
        return 1 + math.ceil((image_size - p["patch"]) / p["stride"] + 1) ** 2, 0
    if method == "rise":
        return 1 + p["masks"], 0
    if method == "smoothgrad":
        return 1 + p["samples"], GRADIENT_PASS[1] * p["samples"]
    if method == "integrated_gradients":
        return p["steps"] + 1, GRADIENT_PASS[1] * (p["steps"] + 1)
    if method == "guided_grad_cam":
        return GRADIENT_PASS[0] + 1, GRADIENT_PASS[1]
    if METHODS[method].family == "cam":
        # They differentiate only the head above their layer: about one forward pass.
        return 1, 0
    return GRADIENT_PASS


def _outputs(model):
    """Per-image float32 values of each layer's output, and whether the layer has a non-linear activation (whose
    input a backward pass needs too)."""
    out = []
    for layer in explainer.all_layers(model):
        if isinstance(layer, (keras.Model, keras.layers.InputLayer)):
            continue
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        out.append((math.prod(layer.output.shape[1:]), activation != "linear"))
    return out


def activation_bytes(model, *, batch_size, training):
    """Device bytes of one batch's activations: for training, every output the backward pass reads (an activated
    layer's input too) plus the two largest outputs' gradients in flight; for inference, the two largest outputs
    (a layer's input and output). Returns int."""
    sizes = _outputs(model)
    largest = sorted((n for n, _ in sizes), reverse=True)[:2]
    kept = sum(n * (2 if activated else 1) for n, activated in sizes) if training else 0
    return int((kept + sum(largest)) * batch_size * 4)


def training_device_bytes(model, *, frozen, rest, cached, optimizer, batch_size):
    """Device bytes of a training run: parameters, gradients and optimiser state of the trainable ones, and the
    larger of the feature extraction's and a training step's activations. Returns int."""
    counts = network.count_params(model)
    state = counts["total"] + counts["trainable"] * (1 + OPTIMIZER_SLOTS[optimizer])
    if cached:
        step = max(activation_bytes(frozen, batch_size=batch_size, training=False), _step_bytes(rest, batch_size))
    elif frozen is not None:
        step = activation_bytes(frozen, batch_size=batch_size, training=False) + _step_bytes(rest, batch_size)
    else:
        step = _step_bytes(model, batch_size)
    return int(state * 4 + step)


def _step_bytes(model, batch_size):
    return activation_bytes(model, batch_size=batch_size, training=True)


# Model calls of `leaderboard.score` per output beside the methods': the targets' logits (one pass an image), then the
# timing of a forward pass: a 2-image warm-up call and 3 timed calls on every image.
LEADERBOARD_LOGITS = (1 + 3, 2)
# Sanity checks every method's maps are compared in: a random logit, randomised weights and, given the model trained
# on permuted labels, data randomisation (each recomputes the maps of the control images).
SANITY_CHECKS = {False: 2, True: 3}


def leaderboard_passes(spec, images, *, channels, image_size, permuted):
    """(forward, backward) passes of the model for one `leaderboard.score` call on ``images`` images.

    Per output: the targets' logits and the timing calls (`LEADERBOARD_LOGITS`), then per method (and layer, for a
    method that takes one): its maps, a 1-image tracing call, the sanity checks' maps (`SANITY_CHECKS`) and the
    deletion and insertion curves (``curve_steps + 1`` forward passes each) on its control images; the random
    floor's curves.

    Args:
        spec: `leaderboard.LeaderboardConfig`.
        images: int, the images scored.
        channels, image_size: as in `method_passes`.
        permuted: bool, whether the model trained on permuted labels is given (the data randomisation check).

    Returns:
        (float forward passes, float backward passes).
    """
    checks = SANITY_CHECKS[bool(permuted)]
    curve = 2 * (spec.curve_steps + 1)
    layers = len(spec.layers or [None])
    forward = backward = 0.0
    for method in spec.methods:
        n = min(spec.images.get(method, images), images)
        k = min(spec.control_images or n, n)
        f, b = method_passes(method, spec.params.get(method, {}), channels=channels, image_size=image_size)
        times = (layers if METHODS[method].uses_layer else 1) * len(spec.outputs)
        forward += times * ((n + 1 + checks * k) * f + curve * k)
        backward += times * (n + 1 + checks * k) * b
    k = min(spec.control_images or images, images)
    per_image, fixed = LEADERBOARD_LOGITS
    forward += len(spec.outputs) * (per_image * images + fixed + curve * k)
    return forward, backward
