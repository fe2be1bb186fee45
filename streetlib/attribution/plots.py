"""Every attribution figure. Each takes `Attribution`s (or tables made from them) and a `ClassSpec` as ``classes=``,
and returns a `matplotlib.figure.Figure` outside pyplot's state, so there is nothing to close; `streetlib.figures`
saves them in the shared style.

The maps of any registered method can be drawn: the original study's figures show Grad-CAM by default and take
``method=`` (or the method's `Attribution`) for another.
"""

import numpy as np
from matplotlib.figure import Figure

from streetlib.attribution.maps import gradient_to_rgb, map_to_original, overlay
from streetlib.classes import OUTPUTS

# How the original study's figures name the methods they show; others are named by their registry name.
_SHOWN_NAMES = {"grad_cam": "Grad-CAM"}


def _shown_name(method):
    return _SHOWN_NAMES.get(method, method.replace("_", " "))


def _label(names, attribution, i):
    cls = int(attribution.target[i])
    rank = int(np.sum(attribution.logits[i] > attribution.logits[i, cls])) + 1
    text = f"{names[cls]} {attribution.target_prob[i]:.2f}"
    return text if rank == 1 else f"{text} (rank {rank})"


def _show(ax, picture, title):
    ax.imshow(picture)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def plot_explanation(image, explanation, i=0, *, classes, normalization, method="grad_cam", title=None):
    """The original study's per-image figure, 2 x 3: input, Grad-CAM region, Guided Grad-CAM region / guided
    backprop (city), Grad-CAM city, Guided Grad-CAM city; or the same with another method in Grad-CAM's place.

    A "Guided" panel is the guided-backprop gradients times the method's map, shown as colours: for Grad-CAM, Guided
    Grad-CAM (the 'guided_grad_cam' method's ``per_channel``).

    Args:
        image: uint8 `(H, W, 3)` RGB, the image as the model saw it.
        explanation: dict method -> dict output -> `Attribution`, as `registry.explain` returns it, with ``method``
            and 'guided_backprop' for 'region' and 'city', explaining the same classes.
        i: int, the image's index in the explained batch. Default 0.
        classes: the `ClassSpec` naming the classes.
        normalization: the model's normalisation (for the colour order of gradients).
        method: str, the registered method drawn over the image. Default 'grad_cam'.
        title: str or None, the figure title.

    Returns:
        `matplotlib.figure.Figure`.
    """
    if method not in explanation or "guided_backprop" not in explanation:
        raise ValueError(
            f"`explanation` needs the maps of {method!r} and 'guided_backprop': compute them with "
            f"registry.explain(..., methods=({method!r}, 'guided_backprop'))."
        )
    shown, guided = explanation[method], explanation["guided_backprop"]
    for output in OUTPUTS:
        if not np.array_equal(shown[output].target, guided[output].target):
            raise ValueError(f"{method!r} and 'guided_backprop' explain different {output} classes in `explanation`.")
    name = _shown_name(method)
    rgb = {
        output: gradient_to_rgb(
            guided[output].per_channel[i : i + 1] * shown[output].maps[i : i + 1, ..., None],
            normalization=normalization,
        )[0]
        for output in OUTPUTS
    }
    region, city = shown["region"], shown["city"]
    fig = Figure(figsize=(9, 6.8))
    axes = fig.subplots(2, 3)
    _show(axes[0, 0], image, f"input {image.shape[1]}x{image.shape[0]}")
    _show(
        axes[0, 1], overlay(image, region.maps[i]), f"{name} region: {_label(classes.class_names('region'), region, i)}"
    )
    _show(axes[0, 2], rgb["region"], f"Guided {name} region")
    city_name = classes.class_names("city")[city.target[i]]
    _show(
        axes[1, 0],
        gradient_to_rgb(guided["city"].per_channel[i : i + 1], normalization=normalization)[0],
        f"guided backprop ({city_name})",
    )
    _show(axes[1, 1], overlay(image, city.maps[i]), f"{name} city: {_label(classes.class_names('city'), city, i)}")
    _show(axes[1, 2], rgb["city"], f"Guided {name} city")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_methods(image, attributions, i=0, *, classes, title=None):
    """Every method's map of one image side by side: one row per output, the image first, then one column per method,
    each titled with the class it explains.

    Args:
        image: uint8 `(H, W, 3)` RGB, the image as the model saw it.
        attributions: dict method name -> dict output -> `Attribution` with maps `(batch, H, W)` in [0, 1] (as
            `registry.explain` returns them).
        i: int, the image's index in the batch. Default 0.
        classes: the `ClassSpec` naming the classes.
        title: str or None, the figure title.

    Returns:
        `matplotlib.figure.Figure`.
    """
    methods = list(attributions)
    outputs = list(attributions[methods[0]])
    fig = Figure(figsize=(2.1 * (len(methods) + 1), 2.3 * len(outputs)), layout="constrained")
    axes = fig.subplots(len(outputs), len(methods) + 1, squeeze=False)
    for row, output in zip(axes, outputs, strict=True):
        names = classes.class_names(output)
        _show(row[0], image, f"{output}: {names[int(attributions[methods[0]][output].target[i])]}")
        for ax, method in zip(row[1:], methods, strict=True):
            _show(ax, overlay(image, attributions[method][output].maps[i]), method.replace("_", " "))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_cam_only(original, attributions, i=0, *, classes, policy, title=None):
    """The original study's CAM-only figure, 1 x 3 at the original image's resolution: the image, then the maps of
    the region and the city.

    Args:
        original: uint8 `(H, W, 3)` RGB at its own size.
        attributions: dict output -> `Attribution` of one method, 'region' and 'city' (e.g.
            ``registry.explain(..., methods=("grad_cam",))["grad_cam"]``).
        i: int, the image's index in the explained batch. Default 0.
        classes: the `ClassSpec`.
        policy: how the image was fitted to the model ('crop', 'pad', 'stretch'); see `maps.map_to_original`.
        title: str or None.

    Returns:
        `matplotlib.figure.Figure`.
    """
    H, W = original.shape[:2]
    fig = Figure(figsize=(12, 4 * H / W + 0.6))
    axes = fig.subplots(1, 3)
    _show(axes[0], original, f"input {W}x{H}")
    for ax, output in zip(axes[1:], OUTPUTS, strict=True):
        a = attributions[output]
        cam = map_to_original(a.maps[i], (H, W), policy=policy)
        text = f"{_shown_name(a.method)} {output}: {_label(classes.class_names(output), a, i)}"
        _show(ax, overlay(original, cam), text)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_class_grid(images, attribution, labels, *, classes, region, per_class=5, title=None):
    """For each city of one region, a row of its images and below it a row of their maps, each titled with the
    prediction (the original study's appendix figures; call once per region).

    Args:
        images: uint8 `(n, H, W, 3)` RGB.
        attribution: the city output's `Attribution` of the images' predicted classes (``rank=1``): maps `(n, H, W)`
            in [0, 1], ``target`` the predicted cities.
        labels: int `(n,)`, true city indices.
        classes: the `ClassSpec`.
        region: str, one of ``classes.region_names``.
        per_class: int, images per city (the first ones of each). Default 5.
        title: str or None; default names the method and the region.

    Returns:
        `matplotlib.figure.Figure` with ``2 * len(classes.classes_in(region))`` rows of axes.
    """
    if attribution.output != "city":
        raise ValueError(f"`attribution` must explain the city output. Received output={attribution.output!r}.")
    cities = classes.classes_in(region)
    labels, predicted, probs = np.asarray(labels), attribution.target, attribution.target_prob
    fig = Figure(figsize=(2 * per_class, 4.2 * len(cities)))
    axes = fig.subplots(2 * len(cities), per_class, squeeze=False)
    for row, city in enumerate(cities):
        members = np.flatnonzero(labels == classes.classes.index(city))[:per_class]
        for col in range(per_class):
            top, bottom = axes[2 * row, col], axes[2 * row + 1, col]
            top.axis("off")
            bottom.axis("off")
            if col >= len(members):
                continue
            k = members[col]
            mark = "" if predicted[k] == labels[k] else " (wrong)"
            _show(top, images[k], city if col == 0 else "")
            _show(
                bottom, overlay(images[k], attribution.maps[k]), f"{classes.classes[predicted[k]]} {probs[k]:.2f}{mark}"
            )
    fig.suptitle(title or f"{_shown_name(attribution.method)} of the predicted city, {region} cities")
    fig.tight_layout()
    return fig


def plot_mean_cams(mean_cams, counts, *, classes, title=None, cmap="viridis"):
    """One panel per class: its mean map over correctly classified images.

    Args:
        mean_cams: float `(num_classes, H, W)`, as in `metrics.street_features`'s ``mean_cams``.
        counts: int `(num_classes,)`, images averaged per class.
        classes: the `ClassSpec`.
        title: str or None; default names Grad-CAM.
        cmap: str, a matplotlib colour map. Default 'viridis'.

    Returns:
        `matplotlib.figure.Figure`.
    """
    n = classes.num_classes
    if len(mean_cams) != n or len(counts) != n:
        raise ValueError(
            f"`mean_cams` and `counts` need one entry per class of {classes.name!r} ({n}). "
            f"Received {len(mean_cams)} and {len(counts)}."
        )
    cols = min(n, 5)
    rows = -(-n // cols)
    fig = Figure(figsize=(2.4 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(mean_cams[k], cmap=cmap, vmin=0, vmax=1)
            ax.set_title(f"{classes.classes[k]} (n={int(counts[k])})", fontsize=9)
    fig.suptitle(title or "Mean Grad-CAM of correctly classified images")
    fig.tight_layout()
    return fig


def plot_patch_gallery(patches, *, classes, title=None):
    """One row per class: the image patches with the highest attribution.

    Args:
        patches: list (one per class) of uint8 `(k, p, p, 3)`, as in `metrics.street_features`'s ``patches``.
        classes: the `ClassSpec`.
        title: str or None.

    Returns:
        `matplotlib.figure.Figure`.
    """
    if len(patches) != classes.num_classes:
        raise ValueError(
            f"`patches` needs one entry per class of {classes.name!r} ({classes.num_classes}). Received {len(patches)}."
        )
    cols = max(1, max(len(p) for p in patches))
    fig = Figure(figsize=(1.3 * cols + 1, 1.4 * len(patches)))
    axes = fig.subplots(len(patches), cols, squeeze=False)
    for row, crops in enumerate(patches):
        for col in range(cols):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(crops):
                ax.imshow(crops[col])
        axes[row, 0].set_title(classes.classes[row], fontsize=8, loc="left")
    fig.suptitle(title or "Most attributed patches per class")
    fig.tight_layout()
    return fig


def plot_quadrants(quadrants, attribution, *, classes, title=None):
    """The four quadrants of an image, each classified and explained on its own: images on top, maps below.

    Args:
        quadrants: uint8 `(4, H, W, 3)`, as from `metrics.quadrant_images`.
        attribution: the `Attribution` of one output for that batch of 4 (any method).
        classes: the `ClassSpec`.
        title: str or None.

    Returns:
        `matplotlib.figure.Figure`.
    """
    names = classes.class_names(attribution.output)
    fig = Figure(figsize=(11, 6))
    axes = fig.subplots(2, 4)
    for q, where in enumerate(("top left", "top right", "bottom left", "bottom right")):
        _show(axes[0, q], quadrants[q], where)
        _show(axes[1, q], overlay(quadrants[q], attribution.maps[q]), _label(names, attribution, q))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
