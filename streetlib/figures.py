"""One plotting style for streetlib's figures: confusion matrices, reliability diagrams, dendrograms, histories,
and the set drawn for one evaluation (`score_figures`).

Figures are built on `matplotlib.figure.Figure` (no pyplot state, nothing to close) and returned; `save` writes them
atomically. Every title says which data and which weights produced the figure (`title`), so a figure of the
synthetic demo data can never pass for one of Street10.
"""

import functools
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from streetlib.classes import OUTPUTS
from streetlib.paths import atomic_path

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
}
CMAP = "Blues"  # the original's confusion matrices
REGION_COLORS = ("#1f4e9c", "#b2182b", "#2ca02c", "#7f3c8d")


def styled(plot):
    """Decorator: ``plot`` draws its figure inside the shared style (`STYLE`)."""

    @functools.wraps(plot)
    def in_style(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return plot(*args, **kwargs)

    return in_style


def title(what, *, data_label, weights_label):
    """A figure title naming the data and the weights: ``"<what>\\n<data_label> - weights: <weights_label>"``."""
    return f"{what}\n{data_label} - weights: {weights_label}"


def normalize_rows(cm):
    """Each row divided by its sum (rows summing to 0 stay 0). Returns float64 array of ``cm``'s shape."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


@styled
def plot_confusion(cm, *, class_names, title=None, normalize=True, ax=None, cmap=CMAP):
    """Draw a confusion matrix as the original study did: true classes as rows, a blue scale, values in the cells.

    Args:
        cm: array `(n, n)`, counts (or rates); rows are true classes, columns predicted classes.
        class_names: list of str `(n,)`.
        title: str or None.
        normalize: bool. True (default) divides each row by its sum, so the diagonal is per-class recall.
        ax: a matplotlib Axes to draw on, or None for a new figure.
        cmap: str, matplotlib colormap. Default 'Blues'.

    Returns:
        `matplotlib.figure.Figure`.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"`cm` must be square with one row per class ({len(class_names)}). Received shape {cm.shape}.")
    values = normalize_rows(cm) if normalize else cm
    n = len(class_names)
    if ax is None:
        size = max(3.5, 0.5 * n + 1.5)
        ax = Figure(figsize=(size + 0.8, size)).add_subplot()
    image = ax.imshow(values, interpolation="nearest", cmap=cmap, vmin=0, vmax=1 if normalize else None)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    threshold = values.max() / 2.0
    for i in range(n):
        for j in range(n):
            text = f"{values[i, j]:.2f}" if normalize else f"{values[i, j]:g}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if values[i, j] > threshold else "black",
            )
    ax.set_ylabel("True label")
    ax.set_xlabel("Predicted label")
    if title:
        ax.set_title(title)
    return ax.figure


@styled
def plot_reliability(table, *, ece, title=None, ax=None):
    """A reliability diagram: accuracy against confidence per bin, with the diagonal of perfect calibration.

    Args:
        table: pandas DataFrame with one row per bin: ``lower``, ``upper``, ``count``, ``confidence``, ``accuracy``
            (see `streetlib.evaluation.evaluate.reliability`).
        ece: float, the expected calibration error, written on the plot.
        title: str or None.
        ax: Axes or None.

    Returns:
        `matplotlib.figure.Figure`.
    """
    if ax is None:
        ax = Figure(figsize=(4.2, 4.2)).add_subplot()
    filled = table[table["count"] > 0]
    width = (table["upper"] - table["lower"]).to_numpy()
    ax.bar(
        table["lower"],
        table["accuracy"].fillna(0),
        width=width,
        align="edge",
        color="#4c72b0",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    ax.bar(
        filled["lower"],
        filled["confidence"] - filled["accuracy"],
        bottom=filled["accuracy"],
        width=(filled["upper"] - filled["lower"]).to_numpy(),
        align="edge",
        color="#dd8452",
        alpha=0.5,
        edgecolor="#dd8452",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("Confidence (top probability)")
    ax.set_ylabel("Accuracy")
    ax.text(0.04, 0.92, f"ECE = {ece:.3f}", transform=ax.transAxes)
    ax.legend(loc="lower right", fontsize=7)
    if title:
        ax.set_title(title)
    return ax.figure


@styled
def plot_dendrogram(distances, *, labels, title=None, label_colors=None, ax=None):
    """Average-linkage dendrogram of classes from a distance matrix.

    Args:
        distances: symmetric array `(n, n)` with zero diagonal.
        labels: list of str `(n,)`.
        title: str or None.
        label_colors: dict label -> colour for the tick labels (e.g. by region), or None.
        ax: Axes or None.

    Returns:
        `matplotlib.figure.Figure`.
    """
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    distances = np.asarray(distances, dtype=np.float64)
    condensed = squareform((distances + distances.T) / 2.0, checks=False)
    if ax is None:
        ax = Figure(figsize=(5.5, 0.3 * len(labels) + 1.5)).add_subplot()
    dendrogram(
        linkage(condensed, method="average"),
        labels=list(labels),
        orientation="left",
        ax=ax,
        color_threshold=0,
        above_threshold_color="#4c72b0",
    )
    if label_colors:
        for tick in ax.get_yticklabels():
            tick.set_color(label_colors.get(tick.get_text(), "black"))
    ax.set_xlabel("Distance")
    if title:
        ax.set_title(title)
    return ax.figure


def draw_seed_bars(ax, groups, *, labels, colors=None):
    """One horizontal bar per group, top to bottom: the mean of its per-seed values, their standard deviation as the
    error bar, each seed a dot; accuracies, so the axis spans [0, 1].

    Args:
        ax: a matplotlib Axes.
        groups: list of 1-d arrays, the per-seed values of each bar.
        labels: list of str, one per bar.
        colors: list of colours, one per bar, or None for one blue.
    """
    for i, values in enumerate(groups):
        values = np.asarray(values, dtype=np.float64)
        ax.barh(
            i,
            values.mean(),
            xerr=values.std(ddof=1) if len(values) > 1 else 0,
            color="#4c72b0" if colors is None else colors[i],
            alpha=0.6,
            capsize=2,
        )
        ax.plot(values, np.full(len(values), i), "k.", markersize=3)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()


def region_colors(spec):
    """A colour per class name, by its region: `REGION_COLORS` in region order, black beyond the fourth region.

    Args:
        spec: `streetlib.classes.ClassSpec`.

    Returns:
        dict class name -> colour.
    """
    # Not strict: regions beyond the four colours are drawn in black.
    palette = dict(zip(spec.region_names, REGION_COLORS, strict=False))
    return {c: palette.get(r, "black") for c, r in zip(spec.classes, spec.regions, strict=True)}


def score_figures(scores, *, what, data_label, weights_label, label_colors=None):
    """The figures of one evaluation: both confusion matrices, the city reliability diagram, the city dendrogram.

    Args:
        scores: `streetlib.evaluation.evaluate.Scores`.
        what: str, what was scored (run, weights, subset, n), the first line of every title.
        data_label: str, the data's label, named in every title.
        weights_label: str, what the weights are, named in every title.
        label_colors: dict city name -> colour for the dendrogram's labels (see `region_colors`), or None.

    Returns:
        dict figure name -> `matplotlib.figure.Figure`, names ``confusion-region``, ``confusion-city``,
        ``reliability`` and ``similarity`` (the file name endings `evaluate_run` uses).
    """
    label = {"data_label": data_label, "weights_label": weights_label}
    drawn = {
        f"confusion-{output}": plot_confusion(
            scores.confusion[output],
            class_names=scores.class_names[output],
            title=title(f"{output} confusion: {what}", **label),
        )
        for output in OUTPUTS
    }
    drawn["reliability"] = plot_reliability(
        scores.reliability, ece=scores.ece, title=title(f"city calibration: {what}", **label)
    )
    drawn["similarity"] = plot_dendrogram(
        scores.distances,
        labels=scores.class_names["city"],
        label_colors=label_colors,
        title=title(f"city similarity ({scores.similarity}): {what}", **label),
    )
    return drawn


def save(fig, path):
    """Write a figure to ``path`` (format from the suffix), atomically, and close it. Returns the `Path`."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with matplotlib.rc_context(STYLE), atomic_path(path) as tmp:
        fig.savefig(tmp)
    # A pyplot figure stays in pyplot's registry (and memory) until closed; other figures are unaffected.
    plt.close(fig)
    return path


def save_all(drawn, folder, *, stem):
    """Write figures to ``<folder>/<stem>.<name>.png``, each with `save`.

    Args:
        drawn: dict name -> Figure (e.g. from `score_figures`).
        folder: directory, created if missing.
        stem: str, the file names' common start, e.g. ``<run>.<checkpoint>.<subset>``.

    Returns:
        list of the `Path` written.
    """
    return [save(fig, Path(folder) / f"{stem}.{name}.png") for name, fig in drawn.items()]
