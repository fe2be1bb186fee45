"""The baseline results table: its columns, its CSV, and what is read off it (means over split seeds, paired
comparisons of two values of one configuration column).

``hists/<dataset>/<experiment>/baselines.csv`` holds one tidy row per backbone x weights x layer x pooling x augmented
copies x classifier x seed x output (`COLUMNS`), with train, validation and test accuracy and, for the city output,
test top-3 accuracy. Floor rows name the floor as their backbone and ``"none"`` as weights, layer, pooling and
normalisation. Rerunning a configuration replaces its rows.
"""

from pathlib import Path

import pandas as pd

from streetlib import paths
from streetlib.baselines.floors import FLOORS
from streetlib.evaluation import stats
from streetlib.runs import dataset_layout

# The columns that name a configuration; with ``seed`` and ``output`` they are a row's key.
CONFIG = [
    "data",
    "backbone",
    "weights",
    "layer",
    "pooling",
    "image_size",
    "normalization",
    "augment_copies",
    "classifier",
    "search",
]
COLUMNS = [
    *CONFIG,
    "params",
    "seed",
    "output",
    "dim",
    "train_acc",
    "val_acc",
    "test_acc",
    "test_top3",
    "n_train",
    "n_val",
    "n_test",
    "seconds",
]


def results_path(data, *, experiment="02-baselines", layout=None):
    """Where a dataset's baseline results go: ``hists/<dataset>/<experiment>/baselines.csv`` (``layout``, default
    ``RunLayout(dataset=data.name)``). Returns a `Path`."""
    return dataset_layout(layout, data.name).hists(experiment) / "baselines.csv"


def save_results(table, path):
    """Write baseline rows to a CSV, replacing earlier rows of the same configuration, seed and output, and keeping
    the others. Written atomically. Returns the `Path`."""
    path = Path(path)
    if path.is_file():
        old = pd.read_csv(path)
        keys = [*CONFIG, "seed", "output"]
        # Compare as text: the CSV round trip turns bools and ints into their own types, the new rows are Python's.
        new_keys = set(map(tuple, table[keys].astype(str).to_numpy()))
        kept = old[[tuple(k) not in new_keys for k in old[keys].astype(str).to_numpy()]]
        table = pd.concat([kept, table], ignore_index=True) if len(kept) else table
    with paths.atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def summarize(table, *, metric="test_acc"):
    """Mean and spread of a metric over split seeds, per configuration and output.

    Returns:
        pandas DataFrame indexed by the configuration columns that vary plus ``output``, with ``n`` (seeds),
        ``mean``, ``std`` (sample, ddof=1; NaN for one seed), ``min`` and ``max``.
    """
    keys = [c for c in CONFIG if table[c].nunique() > 1] + ["output"]
    return table.groupby(keys)[metric].agg(n="count", mean="mean", std="std", min="min", max="max")


def compare(table, *, column, a, b, margin, overlap, metric="test_acc"):
    """Paired comparisons of two values of one configuration column, on the split seeds both have, each by
    `streetlib.evaluation.stats.compare`: pass every comparison a notebook makes to `streetlib.evaluation.stats.family`
    together, which adjusts them for each other and words their verdicts.

    For every configuration that differs only in ``column`` (e.g. ``column="weights"``, ``a="random"``,
    ``b="hed-bsds500"``), the same seeds mean the same splits, so the per-seed differences ``b - a`` are paired.
    Columns that follow from ``column`` (the normalisation of each weight source) are not matched on. A column in
    which one side has a single value that the other never has (a floor's ``pooling="none"`` against a backbone's
    poolings, with ``column="backbone"``) does not apply to that side: its rows pair with every value of the other.
    A floor (`FLOORS`, with ``column="backbone"``) has no weights, layer, pooling or augmentation: its rows pair with
    every value the other side has in each column where the floor has a single value (``augment_copies=0`` too).

    Args:
        table: baseline rows (`COLUMNS`).
        column: str, one of `CONFIG`.
        a, b: its two values compared, as ``b - a``.
        margin: float > 0, the equivalence margin in ``metric``'s unit, fixed before the test split is read.
        overlap: float >= 0, ``n_test / n_train`` of the resampled splits (`streetlib.evaluation.stats.overlap`).
        metric: str, a score column. Default 'test_acc'.

    Returns:
        list of dicts, one per configuration and output: `stats.compare`'s fields (``a`` and ``b`` as str, ``n``
        the shared seeds, ``difference``...) labelled with ``column``, the other varying configuration columns,
        ``output``, and ``mean_a`` and ``mean_b`` over the shared seeds.
    """
    if column not in CONFIG:
        raise ValueError(f"Invalid `column`. Expected one of {CONFIG}. Received: column={column!r}")
    values = set(table[column].astype(str))
    missing = [v for v in (a, b) if str(v) not in values]
    if missing:
        raise ValueError(f"No rows with {column}={missing[0]!r}. Found: {sorted(values)}.")
    # Columns that follow from the compared one (the normalisation of a weight source) are not part of the pairing.
    within = table.groupby(column)
    keys = [c for c in CONFIG if c != column and table[c].nunique() > 1 and within[c].nunique().max() > 1]
    keys.append("output")
    sides = table.assign(_side=table[column].astype(str))
    sides = sides[sides["_side"].isin([str(a), str(b)])]
    floors = {str(v) for v in (a, b) if column == "backbone" and str(v) in FLOORS}
    sides = _broadcast_unmatched(sides, keys[:-1], str(a), str(b), floors=floors)
    wide = sides.pivot_table(index=[*keys, "seed"], columns="_side", values=metric)[[str(a), str(b)]].dropna()
    if wide.empty:
        raise ValueError(f"{column}={a!r} and {column}={b!r} share no configuration and seed: nothing to pair.")
    comparisons = []
    for labels, seeds in wide.groupby(level=keys):
        labels = labels if isinstance(labels, tuple) else (labels,)  # pandas 2.2 yields a scalar for one level
        result = stats.compare(seeds[str(b)] - seeds[str(a)], a=str(a), b=str(b), margin=margin, overlap=overlap)
        means = {"mean_a": float(seeds[str(a)].mean()), "mean_b": float(seeds[str(b)].mean())}
        comparisons.append({"column": column, **dict(zip(keys, labels, strict=True)), **means, **result})
    return comparisons


def _broadcast_unmatched(sides, keys, a, b, *, floors=()):
    """Rows of side ``a`` and ``b`` (by ``_side``) where, per key column, a side with one value that the other side
    lacks (or any single value, for a side in ``floors``) is copied once per value of the other side, so it pairs with
    all of them."""
    for key in keys:
        values = {s: set(sides.loc[sides["_side"] == s, key].astype(str)) for s in (a, b)}
        for side, other in ((a, b), (b, a)):
            unmatched = values[side].isdisjoint(values[other]) or side in floors
            if len(values[side]) == 1 and values[other] and values[other] != values[side] and unmatched:
                own = sides[sides["_side"] == side]
                others = sides.loc[sides["_side"] == other, key].drop_duplicates()
                copies = [own.assign(**{key: v}) for v in others]
                sides = pd.concat([sides[sides["_side"] != side], *copies], ignore_index=True)
                break
    return sides


def seed_table(table, *, metric="test_acc"):
    """`summarize` as text for reading: ``"mean ± std"`` per configuration, one column per output.

    Returns:
        pandas DataFrame of str, indexed by the configuration columns that vary.
    """
    summary = summarize(table, metric=metric)
    text = summary["mean"].map("{:.3f}".format) + " ± " + summary["std"].map("{:.3f}".format)
    text = text.rename(metric)
    return text.unstack("output") if summary.index.nlevels > 1 else text.to_frame().T
