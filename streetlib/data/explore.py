"""Data exploration: class counts, sample grids, colour statistics per region, split and duplicate tables.

Every figure title names the dataset (`StreetData.label` says when it is synthetic); figures are drawn in the shared
style (`streetlib.figures`) on `matplotlib.figure.Figure` and returned.
"""

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from streetlib import figures


def class_table(data):
    """Images per class with its region: DataFrame with columns class, region, images, share."""
    counts = data.counts()
    df = pd.DataFrame({"class": list(counts), "region": list(data.spec.regions), "images": list(counts.values())})
    df["share"] = df["images"] / df["images"].sum()
    return df


def region_table(data):
    """Images per region: DataFrame with columns region, classes, images, share."""
    df = class_table(data).groupby("region", sort=False).agg(classes=("class", "count"), images=("images", "sum"))
    df["share"] = df["images"] / df["images"].sum()
    return df.reset_index()


def colour_stats(data):
    """Per-image colour statistics.

    Returns:
        DataFrame with one row per image: class, region, red, green, blue (mean, 0-255), brightness (mean of the
        HSV value channel, 0-255), saturation (mean HSV saturation, 0-1) and contrast (std of the gray level).
    """
    x = data.images.astype(np.float32)
    rgb = x.mean(axis=(1, 2))
    value = x.max(axis=-1)
    saturation = np.where(value > 0, (value - x.min(axis=-1)) / np.maximum(value, 1e-6), 0.0)
    gray = x @ np.array([0.299, 0.587, 0.114], np.float32)
    return pd.DataFrame(
        {
            "class": np.array(data.spec.classes)[data.city],
            "region": np.array(data.spec.region_names)[data.region],
            "red": rgb[:, 0],
            "green": rgb[:, 1],
            "blue": rgb[:, 2],
            "brightness": value.mean(axis=(1, 2)),
            "saturation": saturation.mean(axis=(1, 2)),
            "contrast": gray.std(axis=(1, 2)),
        }
    )


def duplicate_table(data, split):
    """Groups of identical images: DataFrame with columns group, split, files, classes, cross_class."""
    where = {int(i): s for s in ("train", "val", "test") for i in split[s]}
    rows = []
    for g, members in enumerate(split.duplicates):
        classes = sorted({data.spec.classes[data.city[i]] for i in members})
        rows.append(
            {
                "group": g,
                "split": where[members[0]],
                "files": ", ".join(data.files[i] if data.files else str(i) for i in members),
                "classes": ", ".join(classes),
                "cross_class": len(classes) > 1,
            }
        )
    return pd.DataFrame(rows, columns=["group", "split", "files", "classes", "cross_class"])


@figures.styled
def plot_class_counts(data):
    """Bar chart of images per class, coloured by region. Returns the figure."""
    import seaborn as sns

    df = class_table(data)
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    sns.barplot(df, x="class", y="images", hue="region", dodge=False, ax=ax)
    ax.set_title(f"Images per class - {data.label}")
    ax.tick_params(axis="x", rotation=45)
    return fig


@figures.styled
def plot_samples(data, *, per_class=6, seed=0, show_masks=False):
    """A grid with one row per class of ``per_class`` random images (cue masks outlined in red if asked).

    Returns the figure.
    """
    if show_masks and data.masks is None:
        raise ValueError(f"`show_masks=True` but dataset {data.name!r} has no cue masks.")
    rng = np.random.default_rng(seed)
    k = data.spec.num_classes
    fig = Figure(figsize=(per_class * 1.3, k * 1.4))
    axes = fig.subplots(k, per_class, squeeze=False)
    for c, row in enumerate(axes):
        members = np.flatnonzero(data.city == c)
        picks = rng.choice(members, size=min(per_class, len(members)), replace=False)
        for ax in row:
            ax.axis("off")
        for ax, i in zip(row, picks, strict=False):  # a class with fewer images leaves its last axes blank
            ax.imshow(data.images[i])
            if show_masks:
                ax.contour(data.masks[i], levels=[0.5], colors="red", linewidths=0.8)
        row[0].set_title(f"{data.spec.classes[c]} ({data.spec.regions[c]})", fontsize=8, loc="left")
    fig.suptitle(f"Samples per class - {data.label}" + (" - cue masks in red" if show_masks else ""))
    fig.tight_layout()
    return fig


@figures.styled
def plot_colour_stats(stats, *, label):
    """Distributions of per-image colour statistics by region (from `colour_stats`). Returns the figure."""
    import seaborn as sns

    columns = ["red", "green", "blue", "brightness", "saturation", "contrast"]
    fig = Figure(figsize=(11, 5.5))
    axes = fig.subplots(2, 3)
    for ax, col in zip(axes.flat, columns, strict=True):
        sns.kdeplot(stats, x=col, hue="region", common_norm=False, fill=True, ax=ax, warn_singular=False)
        ax.set_title(col)
    fig.suptitle(f"Per-image colour statistics by region - {label}")
    fig.tight_layout()
    return fig
