"""What maps show beyond one image: per-class mean CAMs and the most attributed patches (`street_features`), the
four-quadrant trick (`explain_quadrants`), and the cascading randomisation check as a table (`randomization_table`).
Their figures are in `streetlib.attribution.plots`.
"""

import numpy as np
import pandas as pd
from PIL import Image

from streetlib.attribution.explainer import model_input_size, model_inputs
from streetlib.attribution.metrics.localization import check_maps
from streetlib.attribution.registry import explain
from streetlib.classes import OUTPUTS
from streetlib.data.images import fit_image


def _best_window(cam, size):
    """Top-left corner and mean value of the ``size`` x ``size`` window (stride size // 2) with the highest mean."""
    H, W = cam.shape
    stride = max(1, size // 2)
    integral = np.pad(cam.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    ys = np.arange(0, H - size + 1, stride)
    xs = np.arange(0, W - size + 1, stride)
    y, x = np.meshgrid(ys, xs, indexing="ij")
    sums = integral[y + size, x + size] - integral[y, x + size] - integral[y + size, x] + integral[y, x]
    k = np.argmax(sums)
    return int(y.flat[k]), int(x.flat[k]), float(sums.flat[k]) / size**2


def street_features(images, cams, labels, predicted, *, num_classes, patch_size=None, top=8):
    """What the model looks at, per class: the mean CAM over correctly classified images and the most attributed
    image patches.

    Args:
        images: uint8 `(n, H, W, 3)` RGB.
        cams: float `(n, H, W)` in [0, 1], the Grad-CAM of each image's predicted class.
        labels: int `(n,)`, true classes.
        predicted: int `(n,)`, predicted classes.
        num_classes: int.
        patch_size: int, the patch side in pixels. Default ``H // 4``.
        top: int, patches kept per class (one per image at most, the best window of each). Default 8.

    Returns:
        dict with ``mean_cams`` float32 `(num_classes, H, W)` (zeros for a class with no correct image),
        ``counts`` int64 `(num_classes,)`, ``patches`` (list per class of uint8 `(k, p, p, 3)`, k <= top, best first)
        and ``patch_info`` (list per class of dicts with ``index`` int `(k,)` into ``images``, ``yx`` int `(k, 2)`
        top-left corners and ``score`` float32 `(k,)`, the window's mean CAM).
    """
    images = np.asarray(images)
    cams = check_maps(cams, name="cams")
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if cams.shape != images.shape[:3] or labels.shape != (len(images),) or predicted.shape != (len(images),):
        raise ValueError(
            f"`cams`, `labels` and `predicted` must match `images` {images.shape}: received {cams.shape}, "
            f"{labels.shape}, {predicted.shape}."
        )
    H, W = cams.shape[1:]
    size = patch_size or H // 4
    if not 1 <= size <= min(H, W):
        raise ValueError(
            f"Invalid `patch_size`: expected an int in [1, {min(H, W)}]. Received: patch_size={patch_size!r}"
        )
    mean_cams = np.zeros((num_classes, H, W), np.float32)
    counts = np.zeros(num_classes, np.int64)
    patches, info = [], []
    for k in range(num_classes):
        members = np.flatnonzero((labels == k) & (predicted == k))
        counts[k] = len(members)
        if len(members):
            mean_cams[k] = cams[members].mean(axis=0)
        windows = [_best_window(cams[i], size) for i in members]
        best = np.argsort([-w[2] for w in windows], kind="stable")[:top]
        yx = np.array([windows[j][:2] for j in best], np.int64).reshape(-1, 2)
        index = members[best]
        patches.append(
            np.stack([images[i, y : y + size, x : x + size] for i, (y, x) in zip(index, yx, strict=True)])
            if len(index)
            else np.zeros((0, size, size, 3), np.uint8)
        )
        info.append({"index": index, "yx": yx, "score": np.array([windows[j][2] for j in best], np.float32)})
    return {"mean_cams": mean_cams, "counts": counts, "patches": patches, "patch_info": info}


def quadrant_images(image, *, size, policy="crop"):
    """The four quadrants of an image (top left, top right, bottom left, bottom right), each fitted to ``size``.

    Args:
        image: uint8 `(H, W, 3)` RGB, H and W >= 2.
        size: int or (height, width).
        policy: resize policy of `streetlib.data.images.fit_image`. Default 'crop'.

    Returns:
        uint8 `(4, height, width, 3)`.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 2:
        raise ValueError(f"`image` must be uint8 RGB (H, W, 3) with H, W >= 2. Received {image.dtype} {image.shape}.")
    H, W = image.shape[:2]
    h, w = H // 2, W // 2
    parts = (image[:h, :w], image[:h, w:], image[h:, :w], image[h:, w:])
    return np.stack([fit_image(Image.fromarray(p), size, policy=policy) for p in parts])


def explain_quadrants(image, model, *, normalization, policy="crop", layer=None, outputs=OUTPUTS):
    """Classify and explain the four quadrants of an image, each as a whole input (the seed tutorial's trick).

    Args:
        image: uint8 `(H, W, 3)` RGB, any size.
        model: the `keras.Model`; quadrants are fitted to its input size (224 when it accepts any).
        normalization: the model's normalisation.
        policy: resize policy for the quadrants. Default 'crop'.
        layer: str or None, the Grad-CAM layer.
        outputs: sequence of output names. Default ('region', 'city').

    Returns:
        (quadrants uint8 `(4, h, w, 3)`, dict output -> Grad-CAM `Attribution` of the 4-image batch).
    """
    quads = quadrant_images(image, size=model_input_size(model) or (224, 224), policy=policy)
    x = model_inputs(quads, normalization=normalization)
    return quads, explain(x, model, methods=("grad_cam",), outputs=outputs, layer=layer)["grad_cam"]


def randomization_table(check):
    """`metrics.sanity.randomization_check` results as a tidy DataFrame: method, step, layer, mean and std rank
    correlation."""
    rows = []
    for method, values in check["spearman"].items():
        for step, (layer, corr) in enumerate(zip(check["layers"], values, strict=True), start=1):
            rows.append(
                {
                    "method": method,
                    "step": step,
                    "layer": layer,
                    "spearman_mean": float(np.nanmean(corr)),
                    "spearman_std": float(np.nanstd(corr)),
                }
            )
    return pd.DataFrame(rows)
