"""Gradient attributions: vanilla saliency, gradient x input, SmoothGrad and Integrated Gradients, batched.

Every method here differentiates one output's class *logit* (not its softmax probability, whose gradient vanishes
where the model is confident) with respect to the model input, through the model's own ReLUs, using
`explainer.Explainer.input_gradients`. Conventions shared by the family:

- ``ex`` is an `explainer.Explainer` (see `explainer.explainer`) of a model with one image input: nested or flat, any
  output with a ``<output>_logits`` layer (or a linear layer named ``output``).
- ``inputs`` are float32 `(batch, H, W, C)`, normalised as the model expects. Noise levels and baselines are in that
  space, not in pixel values.
- The explained class is fixed once per image from the clean input: ``target`` (an int or int `(batch,)`) or, when it
  is None, the class of rank ``rank`` (1 the predicted class, 2 the runner-up, ...). Noisy copies and points on the
  integration path are explained for that same class, even where the model would rank them otherwise.
- The result is a `maps.Attribution` with maps float32 `(batch, H, W)` at input resolution, non-negative and not
  normalised (`registry.attribute` divides each by its maximum), and the logits of the clean inputs.
- Copies of an image (noisy samples, path points) go through the model at most ``batch_size`` at a time, so memory
  does not grow with ``samples`` or ``steps``; the result does not depend on ``batch_size`` beyond float rounding.
- Costs are counted per image in passes through the model: a gradient costs one forward and one backward pass.
"""

import numpy as np

from streetlib.attribution.explainer import check_counts, copy_batches
from streetlib.attribution.maps import Attribution


def saliency(ex, inputs, *, output="city", target=None, rank=1):
    """Vanilla gradient saliency (Simonyan et al. 2014): how much a small change of each pixel moves the logit.

    The map is the absolute gradient of the class logit w.r.t. the input, reduced over channels by the maximum: the
    default of tf-keras-vis's `Saliency` (``gradient_modifier=abs``, ``keepdims=False``), so the two compare.
    (`guided.guided_backprop` sums the absolute guided gradients over channels instead.)

    Args:
        ex: `explainer.Explainer` of the model.
        inputs: float32 `(batch, H, W, C)`, normalised as the model expects.
        output: str, the output to explain. Default 'city'.
        target: None (default: the class of rank ``rank``), an int class index, or int `(batch,)`.
        rank: int >= 1, which class to explain when ``target`` is None. Default 1 (the predicted class).

    Returns:
        `Attribution` 'saliency', maps float32 `(batch, H, W)`: ``max_c |d logit / d x[..., c]|``.

    Cost per image: one forward and one backward pass.
    """
    g = ex.input_gradients(inputs, output=output, target=target, rank=rank)
    return Attribution("saliency", output, g.target, np.abs(g.gradients).max(axis=-1), logits=g.logits)


def gradient_x_input(ex, inputs, *, output="city", target=None, rank=1):
    """Gradient x input (Shrikumar et al. 2016): the first-order Taylor share of each pixel in the logit.

    For a model linear in its input (no bias) the signed per-channel terms add up to the logit exactly; the map
    keeps the magnitude of each pixel's share: ``|sum_c gradient * input|``. "Input" is the normalised input, so the
    share is measured against the model-space zero.

    Args: as `saliency`.

    Returns:
        `Attribution` 'gradient_x_input', maps float32 `(batch, H, W)`.

    Cost per image: one forward and one backward pass.
    """
    g = ex.input_gradients(inputs, output=output, target=target, rank=rank)
    maps = np.abs((g.gradients * g.activations).sum(axis=-1))
    return Attribution("gradient_x_input", output, g.target, maps, logits=g.logits)


def smoothgrad(ex, inputs, *, output="city", target=None, rank=1, samples=50, noise=0.2, seed=None, batch_size=64):
    """SmoothGrad (Smilkov et al. 2017): the saliency map averaged over noisy copies of the image.

    Each image gets ``samples`` copies ``x + N(0, sigma^2)`` with ``sigma = noise * (max(x) - min(x))`` over that
    image (all pixels and channels). The map is the mean over copies of ``|gradient|``, then the maximum over
    channels: tf-keras-vis's `Saliency` with ``smooth_samples`` and its defaults (the absolute value is taken per
    copy, before averaging, so opposite signs do not cancel), so the two compare.

    Args:
        ex, inputs, output, target, rank: as `saliency`; the class is picked on the clean image.
        samples: int >= 1, noisy copies per image. Default 50 (past which the paper saw diminishing returns).
        noise: float >= 0, the noise standard deviation as a fraction of each image's value range. Default 0.2
            (tf-keras-vis's; the paper recommends 0.1 to 0.2).
        seed: None or int, for the noise. The copies of image ``i`` take the ``i``-th block of ``samples`` from
            ``numpy.random.default_rng(seed).standard_normal((batch * samples, H, W, C), dtype=float32)``, whatever
            ``batch_size``.
        batch_size: int >= 1, copies per pass through the model. Default 64.

    Returns:
        `Attribution` 'smoothgrad', maps float32 `(batch, H, W)`.

    Cost per image: one forward pass (to pick the class) plus ``samples`` forward and backward passes.
    """
    check_counts(samples=samples, batch_size=batch_size)
    if not noise >= 0:
        raise ValueError(f"Invalid `noise`: expected a float >= 0. Received: noise={noise!r}")
    x = ex.check_inputs(inputs)
    logits, classes = ex.classes(x, output=output, target=target, rank=rank)
    sigma = (noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))).astype(np.float32)
    rng = np.random.default_rng(seed)

    def noisy(image):
        # Drawn chunk by chunk in copy order: the same stream as one draw of every copy at once.
        return x[image] + sigma[image, None, None, None] * rng.standard_normal(x[image].shape, dtype=np.float32)

    total = np.zeros(x.shape, np.float32)
    for image, _ in copy_batches(len(x), samples, batch_size):
        gradients = ex.input_gradients(noisy(image), output=output, target=classes[image]).gradients
        np.add.at(total, image, np.abs(gradients))
    return Attribution("smoothgrad", output, classes, (total / samples).max(axis=-1), logits=logits)


def integrated_gradients(ex, inputs, *, output="city", target=None, rank=1, baseline=0.0, steps=32, batch_size=64):
    """Integrated Gradients (Sundararajan et al. 2017): the gradient integrated along the straight path from a
    baseline to the image, times the distance travelled.

    ``IG = (x - baseline) * integral_0^1 gradient(baseline + a (x - baseline)) da``, the integral by the trapezoid
    rule on ``steps`` equal intervals (``steps + 1`` points, ``a = k / steps``). Its error is O(1 / steps^2) where the
    logit is smooth along the path; ReLU networks are only piecewise smooth there, so theirs shrinks more slowly.
    Completeness: summed over pixels and channels, IG adds up to ``logit(x) - logit(baseline)``, within the
    trapezoid rule's error. The map is ``|sum_c IG|``.

    Args:
        ex, inputs, output, target, rank: as `saliency`; the class is picked on the clean image.
        baseline: float or float array broadcastable to `(batch, H, W, C)`, the "absent" input, in the model's input
            space. Default 0.0: the model-space zero, which is not a black image for most normalisations: with
            per-image standardisation ('samplewise') it is the image's mean value, with 'caffe' and 'torch' the
            ImageNet mean colour, with 'unit' black and with 'raw' black.
        steps: int >= 1, intervals of the trapezoid rule. Default 32.
        batch_size: int >= 1, path points per pass through the model. Default 64.

    Returns:
        `Attribution` 'integrated_gradients', maps float32 `(batch, H, W)`.

    Cost per image: ``steps + 1`` forward and backward passes (the one at the image itself also picks the class).
    """
    check_counts(steps=steps, batch_size=batch_size)
    x = ex.check_inputs(inputs)
    try:
        base = np.broadcast_to(np.asarray(baseline, np.float32), x.shape)
    except ValueError as err:
        raise ValueError(
            f"Invalid `baseline`: expected a float or an array broadcastable to {x.shape}. "
            f"Received shape {np.shape(baseline)}."
        ) from err
    # The end of the path is the image itself: its gradient picks the class and is the last trapezoid point.
    clean = ex.input_gradients(x, output=output, target=target, rank=rank)
    alphas = (np.arange(steps) / steps).astype(np.float32)
    weights = np.full(steps, 1 / steps, np.float32)
    weights[0] /= 2
    total = clean.gradients / (2 * steps)

    for image, step in copy_batches(len(x), steps, batch_size):
        on_path = base[image] + alphas[step, None, None, None] * (x[image] - base[image])
        gradients = ex.input_gradients(on_path, output=output, target=clean.target[image]).gradients
        np.add.at(total, image, weights[step, None, None, None] * gradients)
    maps = np.abs(((x - base) * total).sum(axis=-1))
    return Attribution("integrated_gradients", output, clean.target, maps, logits=clean.logits)
