"""Every attribution figure, drawn in the shared style of `streetlib.figures` (`figures.STYLE`) and returned as a
`matplotlib.figure.Figure` (no pyplot state, nothing to close).
"""

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from streetlib.attribution.metrics.registry import METRICS
from streetlib.attribution.verdicts import row_label, text_columns
from streetlib.figures import STYLE

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
    with matplotlib.rc_context(STYLE):
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
    with matplotlib.rc_context(STYLE):
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
