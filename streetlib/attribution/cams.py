"""The CAM family: Grad-CAM, Grad-CAM++, HiResCAM, XGrad-CAM, LayerCAM, Eigen-CAM and Score-CAM, batched.

Every method is a function ``method(ex, inputs, *, output="city", target=None, rank=1) -> Attribution`` on an
`Explainer` (``streetlib.attribution.explainer.explainer(model, layer=...)``), so it works on the nested two-output
models and on flat ones alike, at the explainer's layer. Shared conventions:

- ``inputs``: float32 `(batch, H, W, C)`, normalised as the model expects.
- ``output``: the output explained, 'region' or 'city' (or, for a flat model, the name of a linear layer; see
  `explainer.logits_tensor`). Default 'city'.
- ``target``: None (default: the class of rank ``rank`` for each image), an int class index, or int `(batch,)`.
  ``rank``: 1 (default) the predicted class, 2 the runner-up, ...; only with ``target=None``.
- Gradient methods differentiate the class *logit*, never the softmax probability (which saturates, so its gradient
  vanishes exactly where the model is most confident), w.r.t. the feature map ``A`` of the explainer's layer.
- A map is ``relu(sum_c W_c * A_c)`` for per-channel (`(batch, 1, 1, c)`) or per-position (`(batch, h, w, c)`)
  weights ``W``, which is all that tells the methods apart (Eigen-CAM aside).
- Result: `Attribution` with ``maps`` float32 `(batch, h, w)` at the feature map's resolution, non-negative and not
  normalised (`registry.attribute` upsamples and normalises them), ``target`` int64 `(batch,)` the class explained
  (for class-agnostic Eigen-CAM: the class picked from the logits, for the record) and the ``logits``.
"""

import numpy as np
from scipy.special import softmax

from streetlib.attribution.explainer import check_counts, copy_batches
from streetlib.attribution.maps import Attribution, normalize_maps, upsample_maps


def _weighted_maps(method, g, weights):
    """``relu(sum_c weights * A)`` over the channels of ``g.activations`` as the ``method``'s `Attribution`."""
    maps = np.maximum(np.sum(g.activations * weights, axis=-1), 0)
    return Attribution(method, g.output, g.target, maps.astype(np.float32), logits=g.logits)


def _spatial_sum(array):
    """Sum over the positions of `(batch, h, w, c)`, kept as `(batch, 1, 1, c)` to broadcast against it."""
    return np.sum(array, axis=(1, 2), keepdims=True)


def _divide(numerator, denominator):
    """``numerator / denominator``, 0 where the denominator is 0 (a weight that would be NaN or inf)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


def grad_cam(ex, inputs, *, output="city", target=None, rank=1):
    """Grad-CAM (Selvaraju et al. 2017): ``relu(sum_c mean_ij(dS/dA_c) * A_c)``, S the class logit.

    Differentiates the logit w.r.t. the feature map at ``ex.layer``: `explainer.Explainer.grad_cam`, the primitive
    Guided Grad-CAM shares. Arguments as the module's conventions.

    Returns:
        `Attribution`, ``maps`` float32 `(batch, h, w)`.
    """
    return ex.grad_cam(inputs, output=output, target=target, rank=rank)


def grad_cam_plus_plus(ex, inputs, *, output="city", target=None, rank=1):
    """Grad-CAM++ (Chattopadhay et al. 2018), the closed form of its eq. 19 with the logit's gradient ``g = dS/dA``,
    as the authors' code and tf-keras-vis compute it.

    Per channel c and position ij: ``alpha_cij = g^2 / (2 g^2 + sum_ab(A_cab) g^3)`` (0 where the denominator is
    0, e.g. ``g = 0``), divided by ``sum_ij alpha_cij`` where that is not 0 (the authors' normalisation); channel
    weights ``w_c = sum_ij alpha_cij relu(g_cij)``; map ``relu(sum_c w_c A_c)``. The closed form assumes the score
    ``exp(S)``: its gradients are ``exp(S) g``, and the positive per-image factor ``exp(S)`` cancels in alpha and
    only scales the map, so it is left out (it overflows float32 for logits above ~88, giving inf and NaN).

    Differentiates the logit w.r.t. the feature map at ``ex.layer``. Arguments as the module's conventions.

    Returns:
        `Attribution`, ``maps`` float32 `(batch, h, w)`.
    """
    g = ex.layer_gradients(inputs, output=output, target=target, rank=rank)
    # In float64: alpha = 1 / (2 + g sum(A)) has a pole, and near it (negative g, whose alphas still enter the
    # normalisation) float32 roundoff of g and sum(A) is amplified (about a thousandfold in tests/test_cams.py).
    grads = g.gradients.astype(np.float64)
    alphas = _divide(grads**2, 2 * grads**2 + _spatial_sum(g.activations.astype(np.float64)) * grads**3)
    total = _spatial_sum(alphas)
    alphas = alphas / np.where(total != 0, total, 1)
    return _weighted_maps("grad_cam_plus_plus", g, _spatial_sum(alphas * np.maximum(grads, 0)))


def hires_cam(ex, inputs, *, output="city", target=None, rank=1):
    """HiResCAM (Draelos & Carin 2020): ``relu(sum_c g_c * A_c)``, g = dS/dA of the class logit S.

    The gradient multiplies the feature map element-wise instead of being averaged first (Grad-CAM), so the map is
    the logit's first-order attribution to each position of the feature map. Differentiates the logit w.r.t. the
    feature map at ``ex.layer``. Arguments as the module's conventions.

    Returns:
        `Attribution`, ``maps`` float32 `(batch, h, w)`.
    """
    g = ex.layer_gradients(inputs, output=output, target=target, rank=rank)
    return _weighted_maps("hires_cam", g, g.gradients)


def xgrad_cam(ex, inputs, *, output="city", target=None, rank=1):
    """XGrad-CAM (Fu et al. 2020): channel weights ``w_c = sum_ij(g_cij A_cij) / sum_ij(A_cij)``, map
    ``relu(sum_c w_c A_c)``, g = dS/dA of the class logit S; a channel whose activations sum to 0 gets weight 0.

    Differentiates the logit w.r.t. the feature map at ``ex.layer``. Arguments as the module's conventions.

    Returns:
        `Attribution`, ``maps`` float32 `(batch, h, w)`.
    """
    g = ex.layer_gradients(inputs, output=output, target=target, rank=rank)
    weights = _divide(_spatial_sum(g.gradients * g.activations), _spatial_sum(g.activations))
    return _weighted_maps("xgrad_cam", g, weights)


def layer_cam(ex, inputs, *, output="city", target=None, rank=1):
    """LayerCAM (Jiang et al. 2021): ``relu(sum_c relu(g_c) * A_c)``, g = dS/dA of the class logit S.

    Only positions where raising the activation raises the logit count. Differentiates the logit w.r.t. the feature
    map at ``ex.layer``. Arguments as the module's conventions.

    Returns:
        `Attribution`, ``maps`` float32 `(batch, h, w)`.
    """
    g = ex.layer_gradients(inputs, output=output, target=target, rank=rank)
    return _weighted_maps("layer_cam", g, np.maximum(g.gradients, 0))


def eigen_cam(ex, inputs, *, output="city", target=None, rank=1):
    """Eigen-CAM (Muhammad & Yeasin 2020): the feature map at ``ex.layer`` projected on its first principal
    component, per image. Class-agnostic: no gradient, and the map is the same whatever ``output``, ``target`` and
    ``rank`` (they only set the ``target`` recorded in the result).

    Per image the activations form a matrix `(h * w, c)`; as in the paper it is not centred (centring would make
    every map zero-mean, so the ReLU would cut half of it whatever the image), and its first right singular vector
    ``v`` gives the map ``A v``. The sign of a singular vector is arbitrary, so it is chosen to make the map sum to a
    non-negative value (the map is mostly positive); what stays negative is clipped to 0.

    Arguments as the module's conventions.

    Returns:
        `Attribution`, ``maps`` float32 `(batch, h, w)`.
    """
    g = ex.layer_gradients(inputs, output=output, target=target, rank=rank)
    batch, h, w, c = g.activations.shape
    matrix = g.activations.reshape(batch, h * w, c)
    _, _, vt = np.linalg.svd(matrix, full_matrices=False)
    projection = np.einsum("bpc,bc->bp", matrix, vt[:, 0, :])
    projection *= np.where(projection.sum(axis=1, keepdims=True) < 0, -1, 1)
    maps = np.maximum(projection, 0).reshape(batch, h, w).astype(np.float32)
    return Attribution("eigen_cam", g.output, g.target, maps, logits=g.logits)


def score_cam(ex, inputs, *, output="city", target=None, rank=1, chunk_size=32):
    """Score-CAM (Wang et al. 2020): channel weights are the model's confidence in the class when it sees only
    what the channel highlights. No gradient.

    For each image and channel c of the feature map at ``ex.layer``: ``A_c`` is upsampled to the input size
    (`maps.upsample_maps`, bilinear with half-pixel centres, as the displayed maps), min-max normalised to
    [0, 1] (a constant channel gives an all-zero mask) and multiplies the input (broadcast over the colour
    channels); the weight ``w_c`` is the softmax probability of the target class for that masked input. As the
    authors' code and tf-keras-vis: the probability itself, with no baseline subtracted (the paper's "increase of
    confidence" over a blank image shifts every weight by the same amount). Map ``relu(sum_c w_c A_c)``. The
    target is picked on the unmasked input's logits.

    Args:
        ex, inputs, output, target, rank: as the module's conventions.
        chunk_size: int >= 1, default 32: at most this many masked images (image-channel pairs of the batch) are
            built and go through the model at once, which bounds memory: VGG16's block5_conv3 (512 channels) on a
            224 px image needs 512 forward passes, done 32 at a time.

    Returns:
        `Attribution`, ``maps`` float32 `(batch, h, w)`.
    """
    check_counts(chunk_size=chunk_size)
    x = ex.check_inputs(inputs)
    g = ex.layer_gradients(x, output=output, target=target, rank=rank)
    batch, _, _, channels = g.activations.shape
    weights = np.zeros((batch, channels), np.float32)
    for image, channel in copy_batches(batch, channels, chunk_size):
        masks = upsample_maps(g.activations[image, :, :, channel], x.shape[1:3])
        masks = normalize_maps(masks - masks.min(axis=(1, 2), keepdims=True))
        probs = softmax(ex.logits(x[image] * masks[..., None], output=output), axis=1)
        weights[image, channel] = probs[np.arange(len(image)), g.target[image]]
    return _weighted_maps("score_cam", g, weights[:, None, None, :])
