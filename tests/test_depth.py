"""Tests for the depth probe: what it fits (every layer x source x split x output, the floors once, random features
read as the pretrained source's), the table read off its rows, chance, and the command that writes it."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import make_toy_data, toy_split

from streetlib.baselines import depth, features
from streetlib.baselines.floors import FLOORS
from streetlib.cli.commands import main
from streetlib.data import synth
from streetlib.models import weights
from streetlib.runs import RunLayout


def test_the_probe_fits_every_layer_and_source_and_the_floors_once(tmp_path, monkeypatch):
    def offline(source):
        raise weights.WeightsDownloadError(f"Could not download the {source!r} weights: offline")

    monkeypatch.setattr(weights, "fetch", offline)
    monkeypatch.setattr(features, "fetch", offline)
    data = make_toy_data(per_class=6, size=32)
    splits = [toy_split(data, seed=s) for s in (0, 1)]
    layout = RunLayout(hists_dir=tmp_path / "h", figs_dir=tmp_path / "g")
    rows = depth.run_depth_probe(
        data,
        splits,
        weights=("imagenet", "random"),
        layers=("block1_pool", "block2_pool"),
        cache_dir=tmp_path / "f",
        layout=layout,
        progress=False,
    )
    deep = rows[rows["weights"] != "none"]
    # ImageNet is unavailable offline, so only random features, read as ImageNet's images would be.
    assert set(deep["weights"]) == {"random"} and set(deep["normalization"]) == {"caffe"}
    assert sorted(deep["layer"].unique()) == ["block1_pool", "block2_pool"]
    assert set(deep["pooling"]) == {"avg"} and set(deep["classifier"]) == {"logreg"} and deep["search"].all()
    assert deep["dim"].tolist() == [64] * 4 + [128] * 4  # 2 splits x 2 outputs; each block's channels
    floors = rows[rows["weights"] == "none"]
    assert sorted(floors["backbone"].unique()) == sorted(FLOORS) and len(floors) == len(FLOORS) * 2 * 2
    assert len(rows) == len(rows.drop_duplicates(["backbone", "layer", "seed", "output"]))
    written = pd.read_csv(layout.hists("depth-probe") / "baselines.csv")
    assert len(written) == len(rows)


def _rows():
    """Probe rows by hand: two seeds of a floor and of two layers, region only."""
    cells = [
        ("pixels", "none", "none", (0.50, 0.56), (0.4, 0.6)),
        ("vgg16", "random", "block1_pool", (0.52, 0.54), (0.5, 0.5)),
        ("vgg16", "random", "block4_pool", (0.80, 0.90), (0.7, 0.9)),
    ]
    rows = []
    for backbone, source, layer, val, test in cells:
        for seed, v, t in zip((42, 43), val, test, strict=True):
            rows.append(
                {"backbone": backbone, "weights": source, "layer": layer, "seed": seed, "output": "region"}
                | {"val_acc": v, "test_acc": t}
            )
    return pd.DataFrame(rows)


def test_the_depth_table_gives_means_over_seeds_and_which_read_nothing():
    table = depth.depth_table(_rows().iloc[::-1], chance={"region": 0.5}, margin=0.07)
    assert list(table.columns) == depth.DEPTH_COLUMNS
    assert list(zip(table["source"], table["layer"], strict=True)) == [
        ("pixels", "none"),
        ("random", "block1_pool"),
        ("random", "block4_pool"),
    ]
    np.testing.assert_allclose(table["val_acc"], [0.53, 0.53, 0.85])
    np.testing.assert_allclose(table["test_acc"], [0.5, 0.5, 0.8])
    np.testing.assert_allclose(table["val_above_chance"], [0.03, 0.03, 0.35])
    assert table["near_chance"].tolist() == [True, True, False] and (table["n"] == 2).all()
    with pytest.raises(ValueError, match=r"No chance accuracy for output\(s\) \['region'\]"):
        depth.depth_table(_rows(), chance={"city": 0.1})


def test_chance_is_the_training_majority_scored_on_validation():
    data = SimpleNamespace(region=np.array([0, 0, 0, 1, 1, 0, 1, 1]))
    splits = [
        SimpleNamespace(train=np.array([0, 1, 3]), val=np.array([5, 6, 7])),  # majority 0: 1 of 3 right
        SimpleNamespace(train=np.array([3, 4, 0]), val=np.array([5, 6])),  # majority 1: 1 of 2 right
    ]
    assert depth.chance_accuracy(data, splits, "region") == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_the_probe_command_writes_the_depth_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path))
    root = synth.generate(tmp_path / "data" / "tiny", per_class=4, size=32, progress=False, workers=1)
    assert main(["probe", str(root), "--seed", "1", "--weights", "random", "--layers", "block1_pool"]) == 0
    path = tmp_path / "hists" / "tiny" / "depth-probe" / "depth.csv"
    assert f"Wrote {path}" in capsys.readouterr().out
    table = pd.read_csv(path)
    assert list(table.columns) == depth.DEPTH_COLUMNS
    assert sorted(set(table["source"])) == sorted([*FLOORS, "random"]) and set(table["n"]) == {1}
    assert main(["probe", str(root), "--seed", "1", "--weights", "random", "--layers", "block9_pool"]) == 2
    assert "block9_pool" in capsys.readouterr().err
