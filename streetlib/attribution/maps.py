"""Attribution maps: the one result type every method returns (`Attribution`) and what is done to its maps before
they are scored or drawn: normalised per image, upsampled to the input, mapped back onto the original image,
coloured (gradients as RGB, maps over the image).

Maps are normalised per image with a guard, so an all-zero map stays zero instead of becoming NaN. Colours use a
perceptual colour map and show RGB images as RGB; gradients of models fed BGR ('caffe' normalisations) are flipped
back to RGB before display.
"""

from dataclasses import dataclass

import matplotlib
import numpy as np
import tensorflow as tf
from PIL import Image
from scipy.special import softmax

from streetlib.data.pipeline import check_normalization

DEFAULT_CMAP = "inferno"
# Normalisations that feed the model BGR channels: gradients w.r.t. the input come back in BGR order.
BGR_NORMALIZATIONS = ("caffe", "caffe-bvlc")


@dataclass
class Attribution:
    """One method's maps of one output for a batch, and what was explained: what every method of
    `streetlib.attribution.registry` returns, and what the metrics, the figures and the analyzer take.

    Attributes:
        method: str, the method's name in the registry.
        output: str, the output explained ('region' or 'city').
        target: int64 `(batch,)`, the class explained for each image.
        maps: float32 `(batch, h, w)`, non-negative. From a method: at its own resolution (the feature map's for
            CAMs, the input's for gradient and perturbation methods), not normalised. From
            `registry.attribute`: at the input's resolution, normalised per image to [0, 1].
        logits: float32 `(batch, classes)`, the output's logits for the unperturbed inputs.
        layer: str or None, the layer whose feature map the method read (None for methods that read none); set by
            `registry.attribute`. Default None.
        per_channel: float32 `(batch, H, W, C)` or None: the signed attribution of each input channel before it is
            reduced to ``maps``, in the model input's channel order (Guided Backprop and Guided Grad-CAM: the
            original study's colour figures draw it). Default None.
    """

    method: str
    output: str
    target: np.ndarray
    maps: np.ndarray
    logits: np.ndarray
    layer: str | None = None
    per_channel: np.ndarray | None = None

    @property
    def probs(self):
        """float32 `(batch, classes)`: softmax of the logits."""
        return softmax(self.logits, axis=1).astype(np.float32)

    @property
    def target_prob(self):
        """float32 `(batch,)`: the probability of each image's explained class."""
        return np.take_along_axis(self.probs, self.target[:, None], axis=1)[:, 0]


def normalize_maps(maps):
    """Divide each non-negative map by its maximum; all-zero maps stay zero (no NaN).

    Args:
        maps: float `(batch, ...)`, non-negative.

    Returns:
        float32, same shape, in [0, 1].
    """
    maps = np.asarray(maps, dtype=np.float32)
    top = maps.max(axis=tuple(range(1, maps.ndim)), keepdims=True)
    return np.divide(maps, top, out=np.zeros_like(maps), where=top > 0)


def upsample_maps(maps, size):
    """Bilinear resize of maps `(batch, h, w)` to ``size`` (H, W): float32 `(batch, H, W)`."""
    maps = np.asarray(maps, dtype=np.float32)
    if tuple(maps.shape[1:3]) == tuple(size):
        return maps
    return tf.image.resize(maps[..., None], tuple(size), method="bilinear").numpy()[..., 0]


def gradient_to_rgb(gradients, *, normalization):
    """Gradient maps as displayable RGB images: standardised per image, then ``0.5 + 0.15 * z`` clipped.

    Args:
        gradients: float `(batch, H, W, 3)`, in the model input's channel order.
        normalization: the model's normalisation (see `streetlib.data.pipeline.NORMALIZATIONS`); 'caffe' modes feed
            BGR, so their gradients are flipped to RGB.

    Returns:
        float32 `(batch, H, W, 3)` in [0, 1], RGB.
    """
    check_normalization(normalization)
    g = np.asarray(gradients, dtype=np.float32)
    if g.ndim != 4 or g.shape[-1] != 3:
        raise ValueError(f"`gradients` must have shape (batch, H, W, 3). Received shape {g.shape}.")
    if normalization in BGR_NORMALIZATIONS:
        g = g[..., ::-1]
    g = g - g.mean(axis=(1, 2, 3), keepdims=True)
    g = g / (g.std(axis=(1, 2, 3), keepdims=True) + 1e-8)
    return np.clip(0.5 + 0.15 * g, 0.0, 1.0).astype(np.float32)


def map_to_original(cam, shape, *, policy):
    """Bring a map computed on a fitted image back onto the original image's pixels.

    Args:
        cam: float `(h, w)`, a map over the fitted (model-size) image.
        shape: (H, W) of the original image.
        policy: how the original was fitted, as `streetlib.data.images.fit_image`: 'crop' (centre crop), 'pad' (the
            padding is cut off) or 'stretch'.

    Returns:
        float32 `(H, W)`; NaN where the model did not see the image (outside the crop).
    """
    cam = np.asarray(cam, dtype=np.float32)
    h, w = cam.shape
    H, W = shape
    if policy == "stretch":
        return _resize(cam, (H, W))
    if policy == "crop":
        scale = max(h / H, w / W)  # the fitted image covers the crop box
        ch, cw = min(H, round(h / scale)), min(W, round(w / scale))
        top, left = (H - ch) // 2, (W - cw) // 2
        out = np.full((H, W), np.nan, np.float32)
        out[top : top + ch, left : left + cw] = _resize(cam, (ch, cw))
        return out
    if policy == "pad":
        scale = min(h / H, w / W)  # the original fits inside the fitted image
        ih, iw = max(1, round(H * scale)), max(1, round(W * scale))
        top, left = (h - ih) // 2, (w - iw) // 2
        return _resize(cam[top : top + ih, left : left + iw], (H, W))
    raise ValueError(f"Invalid `policy`. Expected one of ('crop', 'pad', 'stretch'). Received: policy={policy!r}")


def _resize(array, size):
    """Bilinear resize of a float 2-D array to (H, W)."""
    H, W = size
    if array.shape == (H, W):
        return array.astype(np.float32)
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((W, H), Image.Resampling.BILINEAR))


def overlay(image, cam, *, cmap=DEFAULT_CMAP, alpha=0.5):
    """Blend a map over an image.

    Args:
        image: uint8 `(H, W, 3)`, RGB.
        cam: float `(h, w)` in [0, 1]; resized bilinearly to (H, W) if needed. NaN pixels (not seen by the
            model, see `map_to_original`) show the image alone.
        cmap: str, a matplotlib colour map. Default 'inferno' (perceptually uniform).
        alpha: float in [0, 1], the weight of the map. Default 0.5.

    Returns:
        float32 `(H, W, 3)` in [0, 1], RGB.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be uint8 RGB of shape (H, W, 3). Received {image.dtype} {image.shape}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Invalid `alpha`: expected a float in [0, 1]. Received: alpha={alpha!r}")
    cam = _resize(np.asarray(cam, dtype=np.float32), image.shape[:2])
    seen = np.isfinite(cam)[..., None]
    heat = matplotlib.colormaps[cmap](np.clip(np.nan_to_num(cam), 0, 1))[..., :3]
    picture = image / 255.0
    return np.where(seen, (1 - alpha) * picture + alpha * heat, picture).astype(np.float32)
