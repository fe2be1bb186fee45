"""Where a task becomes readable in a backbone: a linear probe on the globally averaged features of each VGG16 block,
for every weight source, beside the floors.

A task that needs depth (the synthetic layout task, `streetlib.data.scene`) shows the floors and the first block near
chance and deeper blocks above it; a task the first convolutions already solve does not. The probe is `run_grid` once
per layer, so its rows, feature cache and validation-split search are the baselines' own
(``hists/<dataset>/<experiment>/baselines.csv``); `depth_table` reads the means over split seeds off them and says,
on the validation split, which are within a margin of chance. Pretrained and random features are read with the same
normalisation (the pretrained source's), so that they differ in their weights alone.
"""

import numpy as np
import pandas as pd

from streetlib import paths
from streetlib.baselines.floors import FLOORS
from streetlib.baselines.grid import BaselineGridConfig, run_grid
from streetlib.models.weights import normalization_for
from streetlib.runs import dataset_layout

BLOCKS = tuple(f"block{i}_pool" for i in range(1, 6))
# Issue #26's acceptance: a floor or a first-block probe within this of chance (accuracy, on validation) does not
# read the task.
NEAR_CHANCE = 0.07
DEPTH_COLUMNS = ["source", "layer", "output", "n", "val_acc", "test_acc", "chance", "val_above_chance", "near_chance"]


def run_depth_probe(
    data,
    splits,
    *,
    weights=("hed-bsds500", "random"),
    layers=BLOCKS,
    classifier="logreg",
    experiment="depth-probe",
    cache_dir=None,
    layout=None,
    progress=True,
    n_jobs=2,
):
    """Fit the probe on every layer x weight source x split x output, and the floors on every split x output.

    Args:
        data: `StreetData`.
        splits: list of `streetlib.data.splits.Split`.
        weights: list of weight sources (`BaselineGridConfig.weights`). Default ('hed-bsds500', 'random').
        layers: list of backbone layers read, each averaged over its positions. Default `BLOCKS`.
        classifier: the probe, a `streetlib.baselines.fit.CLASSIFIERS` name, its C chosen on validation. Default
            'logreg' (a linear probe).
        experiment, cache_dir, layout, progress, n_jobs: as in `run_grid`.

    Returns:
        pandas DataFrame of the rows fitted (`streetlib.baselines.results.COLUMNS`), floors included.
    """
    pretrained = [w for w in weights if w != "random"]
    normalization = normalization_for(pretrained[0]) if pretrained else None
    tables = []
    for i, layer in enumerate(layers):
        grid = BaselineGridConfig(
            weights=weights,
            poolings=("avg",),
            classifiers=(classifier,),
            search=True,
            extractor={"layer": layer},
            floors=FLOORS if i == 0 else (),
            random_normalization=normalization,
        )
        result = run_grid(
            data,
            splits,
            grid,
            figure_seeds=[],
            experiment=experiment,
            cache_dir=cache_dir,
            layout=layout,
            progress=progress,
            n_jobs=n_jobs,
        )
        tables.append(result.table)
    return pd.concat(tables, ignore_index=True)


def chance_accuracy(data, splits, output):
    """The accuracy of always answering the most frequent training class, on the validation images, averaged over
    ``splits``: what a probe that reads nothing gets. Returns float in [0, 1]."""
    labels = getattr(data, output)
    scores = []
    for split in splits:
        majority = np.bincount(labels[split.train]).argmax()
        scores.append(float(np.mean(labels[split.val] == majority)))
    return float(np.mean(scores))


def depth_table(rows, *, chance, margin=NEAR_CHANCE):
    """Means over split seeds of the probe and floor rows, per source, layer and output.

    Args:
        rows: baseline rows (`streetlib.baselines.results.COLUMNS`), e.g. of `run_depth_probe`.
        chance: dict output -> chance accuracy (`chance_accuracy`).
        margin: float >= 0, how near chance a validation accuracy counts as reading nothing. Default `NEAR_CHANCE`.

    Returns:
        pandas DataFrame with `DEPTH_COLUMNS`: ``source`` (the weights, or the floor's name), ``layer`` ('none' for a
        floor), ``n`` seeds, mean ``val_acc`` and ``test_acc``, ``chance``, ``val_above_chance`` and
        ``near_chance`` (``|val_acc - chance| <= margin``); floors first, then by source and depth.
    """
    rows = rows.assign(source=np.where(rows["weights"] == "none", rows["backbone"], rows["weights"]))
    means = rows.groupby(["source", "layer", "output"], sort=False).agg(
        n=("seed", "nunique"), val_acc=("val_acc", "mean"), test_acc=("test_acc", "mean")
    )
    table = means.reset_index()
    missing = sorted(set(table["output"]) - set(chance))
    if missing:
        raise ValueError(f"No chance accuracy for output(s) {missing}. Received: chance={chance!r}")
    table["chance"] = table["output"].map(chance)
    table["val_above_chance"] = table["val_acc"] - table["chance"]
    table["near_chance"] = table["val_above_chance"].abs() <= margin
    floor_first = (~table["source"].isin(FLOORS)).astype(int)
    order = np.lexsort((table["layer"], table["source"], table["output"] != "region", floor_first))
    return table.iloc[order][DEPTH_COLUMNS].reset_index(drop=True)


def write_depth_table(table, data, *, experiment="depth-probe", layout=None):
    """Write `depth_table`'s table to ``hists/<dataset>/<experiment>/depth.csv``, atomically. Returns its `Path`."""
    path = dataset_layout(layout, data.name).hists(experiment) / "depth.csv"
    with paths.atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path
