"""The leaderboard in words: which method is best on a metric, which pass the sanity checks, and the findings,
every judgement a verdict of `streetlib.attribution.leaderboard`'s paired comparisons. Reads the `leaderboard`
DataFrame, or its CSV read back (`text_columns`).
"""

import numpy as np

from streetlib.attribution.leaderboard import VERDICT_COLUMNS, row_name
from streetlib.attribution.metrics.registry import (
    METRICS,
    RANKED_ON,
    RANKED_ON_WITHOUT_MASKS,
    get_metric,
    of_family,
)
from streetlib.evaluation import stats

CHECKS = ("passes", "fails", "unclear")  # of a sanity check, see `sanity`
FLOORS = {"random": "the random map", "edge": "the edge map"}


def text_columns(table):
    """``table`` with its text columns as text: a CSV round trip reads an empty layer or verdict as NaN."""
    text = [c for c in ("layer", *VERDICT_COLUMNS) if c in table]
    return table.assign(**{c: table[c].fillna("").astype(str) for c in text})


def _needing_masks():
    """The names of the metrics scored against cue masks."""
    return [name for name, metric in METRICS.items() if "masks" in metric.needs]


def has_ground_truth(table):
    """True when ``table`` (a `leaderboard.leaderboard` DataFrame) was scored against cue masks (it has rows of a
    metric that needs them)."""
    return bool(table["metric"].isin(_needing_masks()).any())


def row_label(row, rows):
    """A row's name as shown: with its layer when ``rows`` hold several layers, and its number of images when it
    explained fewer than the most any row of its metric did."""
    label = row_name(row["method"], row["layer"], len(set(rows["layer"]) - {""}) > 1)
    if row["images"] < rows[rows["metric"] == row["metric"]]["images"].max():
        label += f" (n={row['images']})"
    return label


def _winner(verdict):
    """The name a '<name> higher' verdict puts higher, else None."""
    return verdict.removesuffix(" higher") if verdict and stats.verdict_kind(verdict) == "higher" else None


def _shown_better(row, column, reference, rows):
    """Whether ``row``'s verdict in ``column`` shows it better than ``reference`` (a row name) on its metric."""
    winner = _winner(row[column])
    higher = get_metric(row["metric"]).higher_is_better
    return winner == (
        row_name(row["method"], row["layer"], len(set(rows["layer"]) - {""}) > 1) if higher else reference
    )


def ranking(table, *, output="region", metric=RANKED_ON):
    """The methods of one output ranked on one metric, best first, with the verdicts of their paired comparisons.

    Args:
        table: the `leaderboard.leaderboard` DataFrame (or its CSV read back).
        output: str. Default 'region'.
        metric: a `metrics.registry.METRICS` name. Default `metrics.registry.RANKED_ON`
            ('relevance_mass_accuracy').

    Returns:
        `pandas.DataFrame` with the rows of ``table`` for that output and metric (the random map excluded, the edge
        map included), best first: every column, among them ``vs_best`` ('best', or the verdict of the row against
        the best), ``vs_random`` and ``vs_edge`` (against the two floors; '' for the sanity metrics, judged against
        the threshold in ``vs_threshold``).
    """
    higher = get_metric(metric).higher_is_better
    table = text_columns(table)
    rows = table[(table["output"] == output) & (table["metric"] == metric)]
    if rows.empty and metric in _needing_masks() and not has_ground_truth(table):
        raise ValueError(
            f"Cannot rank on {metric!r}: the leaderboard was scored without cue masks (no ground truth). Rank on one "
            f"of {[m for m in METRICS if m not in _needing_masks()]}."
        )
    if rows.empty:
        raise ValueError(f"The table has no {metric!r} rows for output={output!r}.")
    return rows[rows["family"] != "floor"].sort_values("mean", ascending=not higher, kind="stable")


def sanity(table):
    """Which methods pass the sanity checks (the metrics of the family 'sanity'), per output, from their verdicts
    against the threshold.

    A method *passes* a check when its rank correlation is shown below the threshold (its map changes with the
    class, the weights or the labels: the verdict names the threshold higher), *fails* when shown above it (the map
    mostly survives: it reflects the image more than the model), and is *unclear* otherwise (equivalent to the
    threshold within the margin, or inconclusive).

    Args:
        table: the `leaderboard.leaderboard` DataFrame.

    Returns:
        `pandas.DataFrame` with columns method, layer, output, metric (of the family 'sanity'), mean, low, high, images,
        seeds, vs_threshold (the verdict) and check ('passes', 'fails' or 'unclear').
    """
    rows = text_columns(table)
    rows = rows[rows["metric"].isin(of_family("sanity"))]
    winners = rows["vs_threshold"].map(_winner)
    check = np.where(
        winners.str.startswith("rank correlation", na=False), CHECKS[0], np.where(winners.notna(), CHECKS[1], CHECKS[2])
    )
    columns = ["method", "layer", "output", "metric", "mean", "low", "high", "images", "seeds", "vs_threshold"]
    return rows[columns].assign(check=check).reset_index(drop=True)


def _value(row, rows):
    return f"{row_label(row, rows)} {row['mean']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"


def headline_metric(table):
    """The metric ``table`` (a `leaderboard.leaderboard` DataFrame) is ranked on by default:
    `metrics.registry.RANKED_ON` when it was scored against cue masks, else `metrics.registry.RANKED_ON_WITHOUT_MASKS`
    (it needs no mask)."""
    return RANKED_ON if has_ground_truth(table) else RANKED_ON_WITHOUT_MASKS


def findings(table, *, output="region", metric=None):
    """The leaderboard in words, every judgement a verdict of `leaderboard.leaderboard`'s paired comparisons.

    Args:
        table: the `leaderboard.leaderboard` DataFrame (or its CSV read back).
        output: str. Default 'region'.
        metric: the metric methods are ranked on. Default None: `headline_metric`'s, and without cue masks the
            first line says so.

    Returns:
        list of str: the best method on ``metric`` (value and interval, over how many seeds and images), those not
        shown below it (equivalent or inconclusive), those not shown better than the random map and than the edge
        map, and which pass and fail each sanity check on ``output``.
    """
    lines = []
    table = text_columns(table)
    if metric is None:
        metric = headline_metric(table)
    if not has_ground_truth(table):
        lines.append(
            f"Localisation ({', '.join(_needing_masks())}): no ground truth (the data have no cue masks); methods are "
            f"ranked on {metric}."
        )
    ranked = ranking(table, output=output, metric=metric)
    rows = table[table["output"] == output]
    best = ranked.iloc[0]
    others = ranked.iloc[1:]
    kinds = others["vs_best"].map(lambda v: stats.verdict_kind(v) if v else "")
    direction = get_metric(metric).direction
    lead = "Finds the cues best" if metric in _needing_masks() else "Best"
    lines.append(
        f"{lead} ({metric}, {output} output): {_value(best, rows)} ({best['interval']}, {best['seeds']} seeds, "
        f"{best['images']} images; {direction} is better); equivalent to it within ±{best['margin']:g}: "
        f"{', '.join(_value(r, rows) for _, r in others[kinds == 'equivalent'].iterrows()) or 'none'}; not resolved "
        f"from it: {', '.join(_value(r, rows) for _, r in others[kinds == 'inconclusive'].iterrows()) or 'none'}."
    )
    for column, reference in (("vs_random", "random"), ("vs_edge", "edge")):
        if not (rows["method"] == reference).any() or ranked[column].eq("").all():
            continue
        judged = ranked[ranked["method"] != reference]
        below = [row_label(r, rows) for _, r in judged.iterrows() if not _shown_better(r, column, reference, rows)]
        lines.append(f"Not shown better than {FLOORS[reference]} ({reference}): {', '.join(below) or 'none'}.")
    checks = sanity(table)
    for name in of_family("sanity"):
        rows_of = checks[(checks["output"] == output) & (checks["metric"] == name)]
        if rows_of.empty:
            continue
        names = {v: [row_label(r, rows) for _, r in rows_of[rows_of["check"] == v].iterrows()] for v in CHECKS}
        verdicts = "; ".join(f"{v}: {', '.join(names[v]) or 'none'}" for v in CHECKS)
        threshold = rows[rows["metric"] == name]["threshold"].iloc[0]
        lines.append(f"{name} check ({METRICS[name].description}, shown below {threshold:g}) - {verdicts}.")
    return lines
