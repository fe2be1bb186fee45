"""Every attribution figure, drawn on `matplotlib.figure.Figure` and returned (`figures.save` writes it in the shared
style of `streetlib.figures`; no pyplot state, nothing to close). Each function takes results (`Attribution`s, maps,
tables, concepts), never a model, and a `ClassSpec` as ``classes=`` where it names classes.

The maps of any registered method can be drawn: the original study's figures show Grad-CAM by default and take
``method=`` (or the method's `Attribution`) for another.
"""

import numpy as np
from matplotlib.figure import Figure

from streetlib import figures
from streetlib.attribution.concepts.config import check_images
from streetlib.attribution.concepts.discover import top_patches
from streetlib.attribution.maps import gradient_to_rgb, map_to_original, overlay
from streetlib.attribution.metrics.registry import METRICS
from streetlib.attribution.verdicts import row_label, text_columns
from streetlib.classes import OUTPUTS

# ---------------------------------------------------------------------------------------------------------------
# The original study's figures and every method's maps

# How the original study's figures name the methods they show; others are named by their registry name.
_SHOWN_NAMES = {"grad_cam": "Grad-CAM"}


def shown_name(method):
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


@figures.styled
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
    name = shown_name(method)
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


@figures.styled
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


@figures.styled
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
        text = f"{shown_name(a.method)} {output}: {_label(classes.class_names(output), a, i)}"
        _show(ax, overlay(original, cam), text)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


@figures.styled
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
    fig.suptitle(title or f"{shown_name(attribution.method)} of the predicted city, {region} cities")
    fig.tight_layout()
    return fig


@figures.styled
def plot_mean_cams(mean_cams, counts, *, classes, title=None, cmap="viridis"):
    """One panel per class: its mean map over correctly classified images.

    Args:
        mean_cams: float `(num_classes, H, W)`, as in `summaries.street_features`'s ``mean_cams``.
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


@figures.styled
def plot_patch_gallery(patches, *, classes, title=None):
    """One row per class: the image patches with the highest attribution.

    Args:
        patches: list (one per class) of uint8 `(k, p, p, 3)`, as in `summaries.street_features`'s ``patches``.
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


@figures.styled
def plot_quadrants(quadrants, attribution, *, classes, title=None):
    """The four quadrants of an image, each classified and explained on its own: images on top, maps below.

    Args:
        quadrants: uint8 `(4, H, W, 3)`, as from `summaries.quadrant_images`.
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


# ---------------------------------------------------------------------------------------------------------------
# The leaderboard and the randomisation check


@figures.styled
def plot_leaderboard(table, *, output="region", title=None):
    """One panel per metric: the methods ranked best first, each with its 95% interval, the random map's value as
    the floor (dashed) and the chance level (dotted) where there is one.

    Args:
        table: the `leaderboard.leaderboard` DataFrame (or its CSV read back).
        output: str, which output's rows to draw. Default 'region'.
        title: str or None, the figure's title (say which data and weights).

    Returns:
        `matplotlib.figure.Figure`, panels in the order of `metrics.registry.METRICS`.
    """
    table = text_columns(table)
    rows = table[table["output"] == output]
    names = [m for m in METRICS if m in set(rows["metric"])]
    fig = Figure(figsize=(4.2 * 4, 3.6 * ((len(names) + 3) // 4)), layout="constrained")
    axes = fig.subplots((len(names) + 3) // 4, 4, squeeze=False).ravel()
    for ax, metric in zip(axes, names, strict=False):
        r = rows[rows["metric"] == metric]
        floor = r[r["family"] == "floor"]
        higher = METRICS[metric].higher_is_better
        r = r[r["family"] != "floor"].sort_values("mean", ascending=not higher, kind="stable")
        labels = [row_label(row, rows) for _, row in r.iterrows()]
        y = np.arange(len(r))[::-1]
        ax.errorbar(r["mean"], y, xerr=[r["mean"] - r["low"], r["high"] - r["mean"]], fmt="o", ms=4, capsize=2)
        ax.set_yticks(y, labels, fontsize=7)
        if len(floor):
            ax.axvline(floor["mean"].iloc[0], color="grey", ls="--", lw=1, label="random map")
        if np.isfinite(r["chance"]).any():
            ax.axvline(r["chance"].iloc[0], color="black", ls=":", lw=1, label="chance")
        ax.set_title(f"{metric} ({METRICS[metric].direction} is better)", fontsize=9)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="lower right")
    intervals = "; ".join(sorted(set(rows["interval"])))
    seeds = int(rows["seeds"].max()) if len(rows) else 0
    fig.suptitle(
        f"{title or f'Attribution leaderboard, {output} output'}\nmean and 95% interval ({intervals}), {seeds} seed(s)"
    )
    return fig


@figures.styled
def plot_randomization(table, *, title=None):
    """Rank correlation with the trained model's maps as layers are randomised from the top down, per method.

    Args:
        table: `summaries.randomization_table` of a `metrics.sanity.randomization_check`.
        title: str or None, the figure's title (say which data and weights).

    Returns:
        `matplotlib.figure.Figure`.
    """
    fig = Figure(figsize=(10, 4.5))
    ax = fig.subplots()
    for method, rows in table.groupby("method", sort=False):
        ax.errorbar(rows["step"], rows["spearman_mean"], yerr=rows["spearman_std"], marker="o", capsize=2, label=method)
    layers = table.drop_duplicates("step")
    ax.set_xticks(layers["step"], layers["layer"], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("Spearman rank correlation with the trained model's maps")
    ax.set_xlabel("randomised down to (cumulative, from the output)")
    ax.axhline(0, color="gray", linewidth=0.5)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Concepts (`streetlib.attribution.concepts`): galleries of a class's concepts, concepts in photographs


@figures.styled
def plot_concept_gallery(images, concepts, *, title, concepts_shown=None, top=None, shares=None):
    """One row per concept, most important first: an example image with the concept's map over it, then its top
    patches; each row labelled with the concept's score (and its mask share, if given).

    Args:
        images: uint8 `(n, H, W, 3)`: the same array given to `concepts.discover.discover_concepts` (or
            `concepts.doersch.doersch_baseline`).
        concepts: `concepts.discover.Concepts` or `concepts.doersch.PatchClusters`.
        title: str, the figure's title: say which data, class and weights (e.g. `streetlib.figures.title`).
        concepts_shown: None (all) or int >= 1, rows drawn (the best ones).
        top: None (the configuration's ``top_patches``) or int >= 1, patches per row.
        shares: None or float `(K,)`, each concept's mask share (`concepts.score.concept_table`'s
            ``pooled_share``), added to its label.

    Returns:
        `matplotlib.figure.Figure`.
    """
    images = check_images(images)
    order = list(concepts.order[: concepts_shown or len(concepts.order)])
    top = top or concepts.config.top_patches
    fig, axes = _gallery_axes(len(order), top)
    for row, k in zip(axes, order, strict=True):
        label = f"#{k} {concepts.score_name} {float(concepts.scores[k]):.3g}"
        if shares is not None:
            label += f"\non cues {float(shares[k]):.0%}"
        _gallery_row(row, images, concepts, int(k), top=top, label=label)
    fig.suptitle(title, fontsize=10)
    return fig


@figures.styled
def plot_class_concepts(images, found, *, names, title, top=None):
    """One row per class: its most important concept, an example image with the concept's map over it, then its top
    patches (the per-city gallery).

    Args:
        images: uint8 `(n, H, W, 3)`: the array given to `concepts.discover.discover_classes`.
        found: dict class index -> `concepts.discover.Concepts` (`concepts.discover.discover_classes`).
        names: list of str, the class names by index.
        title: str, the figure's title (say which data and weights).
        top: None (the configuration's ``top_patches``) or int >= 1, patches per row.

    Returns:
        `matplotlib.figure.Figure`.
    """
    images = check_images(images)
    if not found:
        raise ValueError("`found` is empty: no class had images to find concepts in.")
    top = top or next(iter(found.values())).config.top_patches
    fig, axes = _gallery_axes(len(found), top)
    for row, (c, concepts) in zip(axes, found.items(), strict=True):
        k = int(concepts.order[0])
        label = f"{names[c]}: #{k} ({len(concepts.indices)} images)"
        _gallery_row(row, images, concepts, k, top=top, label=label)
    fig.suptitle(title, fontsize=10)
    return fig


@figures.styled
def plot_photo_concepts(pictures, maps, *, names, title):
    """Where named concepts fire in a few pictures: one row per picture, the picture then one overlay per concept.

    Args:
        pictures: uint8 `(n, H, W, 3)` at the model's input size (e.g. `streetlib.inference.analyze_images`'s
            fitted photographs).
        maps: dict label -> float `(n, H, W)`, one concept's maps of the pictures (`concepts.score.concept_maps`),
            each shown normalised to its own maximum over all pictures, so their strengths compare across a column.
        names: list of str, the pictures' names.
        title: str, the figure's title (say which model and that the pictures are not its training data).

    Returns:
        `matplotlib.figure.Figure`.
    """
    pictures = check_images(pictures, "pictures")
    fig = Figure(figsize=(1.9 * (1 + len(maps)), 1.9 * len(pictures) + 0.6), layout="constrained")
    axes = fig.subplots(len(pictures), 1 + len(maps), squeeze=False)
    for i, row in enumerate(axes):
        for ax in row:
            ax.axis("off")
        row[0].imshow(pictures[i])
        row[0].set_title(names[i], fontsize=7)
        for ax, (label, m) in zip(row[1:], maps.items(), strict=True):
            peak = float(np.max(m))
            ax.imshow(overlay(pictures[i], m[i] / peak if peak > 0 else m[i]))
            ax.set_title(f"{label}: {float(m[i].mean()) / peak if peak > 0 else 0:.2f}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig


def _gallery_axes(rows, top):
    fig = Figure(figsize=(1.3 * (1 + top) + 0.6, 1.45 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, 1 + top, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes


def _gallery_row(row, images, concepts, k, *, top, label):
    """An example image with concept ``k``'s map over it, then its ``top`` patches, along the axes of ``row``."""
    gallery = top_patches(images, concepts, k, top=top)
    best = int(np.flatnonzero(concepts.indices == gallery["index"][0])[0])
    heat = concepts.maps[best, ..., k]
    peak = heat.max()
    row[0].imshow(overlay(images[gallery["index"][0]], heat / peak if peak > 0 else heat))
    row[0].set_title(label, fontsize=7, loc="left")
    for ax, crop in zip(row[1:], gallery["patches"], strict=False):
        ax.imshow(crop)
