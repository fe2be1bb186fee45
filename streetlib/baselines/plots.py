"""Figures of the baselines: each run's test confusion matrix, and the scores per configuration over split seeds.
Both are drawn with the shared style (`streetlib.figures`) and returned as Figures; nothing here writes a file."""

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from streetlib import figures
from streetlib.baselines.results import CONFIG
from streetlib.classes import OUTPUTS
from streetlib.evaluation.evaluate import confusion
from streetlib.models.weights import describe


def run_name(*, backbone, weights, layer, pooling, classifier, augment_copies=0, search=False, seed):
    """The name of one baseline run, for figure files: ``<backbone>-<weights>-<layer>-<pooling>[-aug<K>]
    [-search]-<classifier>-seed<N>``."""
    weights = Path(weights).stem if isinstance(weights, Path) else weights
    aug = f"-aug{augment_copies}" if augment_copies else ""
    tuned = "-search" if search else ""
    return f"{backbone}-{weights}-{layer}-{pooling}{aug}{tuned}-{classifier}-seed{seed}"


def confusion_figure(data, split, fit, row, *, weights):
    """The normalised test confusion matrix of one baseline.

    Args:
        data: `StreetData`, the images the baseline was fitted on.
        split: `streetlib.data.splits.Split`, its split (its test images and seed).
        fit: `streetlib.baselines.fit.Fit`, the fitted baseline (its test predictions).
        row: dict, its results row (`streetlib.baselines.results.COLUMNS`).
        weights: the weight source (a name or a file path), or None for a floor.

    Returns:
        (str, `matplotlib.figure.Figure`): the run's name (`run_name`) and the figure.
    """
    output = row["output"]
    names = data.spec.class_names(output)
    run = run_name(
        backbone=row["backbone"],
        weights=row["weights"] if weights is None else weights,
        layer=row["layer"],
        pooling=row["pooling"],
        classifier=row["classifier"],
        augment_copies=row["augment_copies"],
        search=row["search"],
        seed=split.seed,
    )
    cm = confusion(data.labels()[output][split.test], fit.test_pred, len(names))
    heading = figures.title(
        f"{output} confusion: {run} (test set, n={len(split.test)})",
        data_label=data.label,
        weights_label="none (no network)" if weights is None else describe(weights),
    )
    return run, figures.plot_confusion(cm, class_names=names, title=heading)


@figures.styled
def plot_summary(table, *, metric="test_acc", title=None):
    """Mean and seed spread of a metric per configuration, one panel per output; each seed is a dot.

    Args:
        table: baseline rows (`COLUMNS`).
        metric: str, a score column. Default 'test_acc'.
        title: str or None, the figure title (see `streetlib.figures.title`).

    Returns:
        `matplotlib.figure.Figure`.
    """
    keys = [c for c in CONFIG if table[c].nunique() > 1]
    outputs = [o for o in OUTPUTS if o in set(table["output"])]
    configs = table[keys].drop_duplicates().reset_index(drop=True) if keys else pd.DataFrame(index=[0])
    labels = [" / ".join(str(v) for v in row) for row in configs.itertuples(index=False)] if keys else ["all"]
    fig = Figure(figsize=(4.5 * len(outputs) + 2, 0.35 * len(labels) + 1.5))
    axes = fig.subplots(1, len(outputs), sharey=True, squeeze=False)[0]
    for ax, output in zip(axes, outputs, strict=True):
        rows = table[table["output"] == output]
        groups = [
            rows.loc[(rows[list(config)] == pd.Series(config)).all(axis=1), metric].to_numpy()
            for config in configs.to_dict("records")
        ]
        figures.draw_seed_bars(ax, groups, labels=labels)
        ax.set_xlabel(f"{output} {metric} (mean ± std over seeds; dots: seeds)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
