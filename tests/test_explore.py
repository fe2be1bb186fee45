import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from streetlib import figures
from streetlib.classes import SYNTH10
from streetlib.data import explore
from streetlib.data.loaders import StreetData
from streetlib.data.splits import make_split


@pytest.fixture()
def data():
    # Class c is a flat colour (20c, 10c, 5c); images 0 and 1 are identical, image 2 copies one of another class.
    city = np.repeat(np.arange(10), 4)
    images = np.stack([np.full((8, 8, 3), (20 * c, 10 * c, 5 * c), np.uint8) for c in city])
    images += np.arange(40, dtype=np.uint8)[:, None, None, None]
    images[1] = images[0]
    images[2] = images[8]
    masks = np.zeros(images.shape[:3], np.uint8)
    masks[:, :2] = 1
    return StreetData(images=images, city=city, spec=SYNTH10, name="toy", synthetic=True, masks=masks)


def test_tables(data):
    table = explore.class_table(data)
    assert table["images"].tolist() == [4] * 10 and table["share"].sum() == pytest.approx(1)
    regions = explore.region_table(data)
    assert regions["region"].tolist() == ["synth-west", "synth-east"] and regions["images"].tolist() == [20, 20]


def test_colour_stats_by_hand(data):
    stats = explore.colour_stats(data)
    row = stats.iloc[5]  # class 1, flat colour (20, 10, 5) + 5
    assert (row["red"], row["green"], row["blue"]) == (25, 15, 10)
    assert row["brightness"] == 25 and row["saturation"] == pytest.approx(15 / 25) and row["contrast"] == 0
    assert stats["region"].iloc[-1] == "synth-east"


def test_duplicate_table(data, tmp_path):
    split = make_split(data, seed=0, directory=tmp_path)
    dups = explore.duplicate_table(data, split)
    assert len(dups) == 2
    assert dups["cross_class"].tolist().count(True) == 1
    assert set(dups["split"]) <= {"train", "val", "test"}


def test_figures_name_the_dataset(data, tmp_path):
    fig = explore.plot_samples(data, per_class=2, show_masks=True)
    assert "toy (synthetic demo data)" in fig._suptitle.get_text()
    path = figures.save(fig, tmp_path / "a" / "samples.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["samples.png"]  # no temporary file left behind
    counts = explore.plot_class_counts(data)
    assert "toy (synthetic demo data)" in counts.axes[0].get_title()
    no_masks = StreetData(images=data.images, city=data.city, spec=SYNTH10, name="real")
    with pytest.raises(ValueError, match="has no cue masks"):
        explore.plot_samples(no_masks, show_masks=True)
