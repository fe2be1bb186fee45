"""Every attribution figure, drawn on `matplotlib.figure.Figure` in the shared style of `streetlib.figures`
(`figures.STYLE`) and returned (`figures.save` writes it; no pyplot state, nothing to close). Each function takes
results (maps, tables, concepts), never a model.
"""

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from streetlib import figures
from streetlib.attribution.concepts.config import check_images
from streetlib.attribution.concepts.discover import top_patches
from streetlib.attribution.methods import overlay
from streetlib.attribution.metrics.registry import METRICS
from streetlib.attribution.verdicts import row_label, text_columns

# ---------------------------------------------------------------------------------------------------------------
# The leaderboard and the randomisation check


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
    with matplotlib.rc_context(figures.STYLE):
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
            f"{title or f'Attribution leaderboard, {output} output'}\nmean and 95% interval ({intervals}), "
            f"{seeds} seed(s)"
        )
    return fig


def plot_randomization(table, *, title=None):
    """Rank correlation with the trained model's maps as layers are randomised from the top down, per method.

    Args:
        table: `summaries.randomization_table` of a `metrics.sanity.randomization_check`.
        title: str or None, the figure's title (say which data and weights).

    Returns:
        `matplotlib.figure.Figure`.
    """
    with matplotlib.rc_context(figures.STYLE):
        fig = Figure(figsize=(10, 4.5))
        ax = fig.subplots()
        for method, rows in table.groupby("method", sort=False):
            ax.errorbar(
                rows["step"], rows["spearman_mean"], yerr=rows["spearman_std"], marker="o", capsize=2, label=method
            )
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
        shares: None or float `(K,)`, each concept's mask share (`concepts.score.concept_table`'s pooled
            ``mask_share``), added to its label.

    Returns:
        `matplotlib.figure.Figure`.
    """
    images = check_images(images)
    order = list(concepts.order[: concepts_shown or len(concepts.order)])
    top = top or concepts.config.top_patches
    with matplotlib.rc_context(figures.STYLE):
        fig, axes = _gallery_axes(len(order), top)
        for row, k in zip(axes, order, strict=True):
            label = f"#{k} {concepts.score_name} {float(concepts.scores[k]):.3g}"
            if shares is not None:
                label += f"\non cues {float(shares[k]):.0%}"
            _gallery_row(row, images, concepts, int(k), top=top, label=label)
        fig.suptitle(title, fontsize=10)
    return fig


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
    with matplotlib.rc_context(figures.STYLE):
        fig, axes = _gallery_axes(len(found), top)
        for row, (c, concepts) in zip(axes, found.items(), strict=True):
            k = int(concepts.order[0])
            label = f"{names[c]}: #{k} ({len(concepts.indices)} images)"
            _gallery_row(row, images, concepts, k, top=top, label=label)
        fig.suptitle(title, fontsize=10)
    return fig


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
    with matplotlib.rc_context(figures.STYLE):
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
