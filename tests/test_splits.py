import json

import numpy as np
import pytest
from PIL import Image

from streetlib.classes import STREET10
from streetlib.cli.commands import main
from streetlib.data.loaders import StreetData, load_dataset
from streetlib.data.splits import balanced_subset, make_split, make_splits

STREET10_COUNTS = [482, 379, 503, 436, 354, 434, 553, 353, 275, 382]


def _data(counts, *, seed=0, size=3, name="toy", spec=STREET10):
    rng = np.random.default_rng(seed)
    n = sum(counts)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    city = np.repeat(np.arange(len(counts)), counts)
    return StreetData(images=images, city=city, spec=spec, name=name)


def _hash_sets(data, split):
    h = data.content_hashes()
    return {s: {h[i] for i in split[s]} for s in ("train", "val", "test")}


def test_street10_sizes_match_the_original(tmp_path):
    data = _data(STREET10_COUNTS)
    split = make_split(data, seed=42, directory=tmp_path)
    assert (len(split.train), len(split.val), len(split.test)) == (3166, 564, 421)
    table = split.table(data)
    assert table.loc["london", "test"] == 49 and table.loc["london", "val"] == 65
    assert table.loc["all", "total"] == 4151


def test_split_is_a_partition_and_stratified(tmp_path):
    data = _data([40, 20, 60, 30, 30, 30, 30, 30, 30, 30])
    split = make_split(data, seed=3, directory=tmp_path)
    everything = np.concatenate([split.train, split.val, split.test])
    assert sorted(everything.tolist()) == list(range(len(data)))
    for cls, n in enumerate([40, 20, 60]):
        n_test = np.sum(data.city[split.test] == cls)
        assert n_test == int(np.ceil(0.1 * n))


def test_same_seed_same_split_in_any_order(tmp_path):
    data = _data([30] * 10)
    a = make_split(data, seed=7, directory=tmp_path / "a")
    order = np.random.default_rng(1).permutation(len(data))
    shuffled = StreetData(images=data.images[order], city=data.city[order], spec=data.spec, name="toy")
    b = make_split(shuffled, seed=7, directory=tmp_path / "b")
    assert _hash_sets(data, a) == _hash_sets(shuffled, b)
    c = make_split(data, seed=8, directory=tmp_path / "c")
    assert _hash_sets(data, a)["test"] != _hash_sets(data, c)["test"]


def test_saved_split_is_reused(tmp_path):
    data = _data([20] * 10)
    first = make_split(data, seed=1, directory=tmp_path)
    assert first.path == tmp_path / "toy-seed1.json"
    doc = json.loads(first.path.read_text())
    # Move one image from test to train in the file: a reload must follow the file, not recompute.
    moved = doc["hashes"]["test"].pop()
    doc["hashes"]["train"].append(moved)
    first.path.write_text(json.dumps(doc))
    again = make_split(data, seed=1, directory=tmp_path)
    assert len(again.test) == len(first.test) - 1
    assert moved in {data.content_hashes()[i] for i in again.train}


def test_duplicates_never_cross_splits(tmp_path):
    data = _data([20] * 10)
    images = data.images.copy()
    images[1] = images[0]  # a duplicate within a class
    images[25] = images[0]  # and one in another class
    images[60:70] = images[100]  # many copies
    dup = StreetData(images=images, city=data.city, spec=data.spec, name="dups")
    split = make_split(dup, seed=0, directory=tmp_path)
    where = {i: s for s in ("train", "val", "test") for i in split[s]}
    assert where[0] == where[1] == where[25]
    assert len({where[i] for i in [100, *range(60, 70)]}) == 1
    groups = sorted(sorted(g) for g in split.duplicates)
    assert groups == [[0, 1, 25], [*range(60, 70), 100]]
    assert sorted(sorted(g) for g in split.cross_class_duplicates) == groups
    doc = json.loads(split.path.read_text())
    assert len(doc["duplicates"]) == 2
    assert sum(doc["counts"].values()) == len(dup)


def test_several_seeds(tmp_path):
    data = _data([20] * 10)
    splits = make_splits(data, seeds=[0, 1, 2], directory=tmp_path)
    assert [s.seed for s in splits] == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"toy-seed{i}.json" for i in range(3)]
    assert len({tuple(s.test) for s in splits}) == 3


def test_seeds_of_a_replicated_dataset_split_their_own_replicate(tmp_path):
    data = _data([24] * 10)
    data.replicate = np.tile(np.repeat([0, 1, 2], 8), 10)
    splits = make_splits(data, seeds=[42, 43, 44, 45], directory=tmp_path)
    assert [s.replicate for s in splits] == [0, 1, 2, 0]
    for split in splits:
        used = np.concatenate([split.train, split.val, split.test])
        np.testing.assert_array_equal(np.sort(used), np.flatnonzero(data.replicate == split.replicate))
        np.testing.assert_array_equal(split.pool, np.sort(used))
        assert (len(split.train), len(split.val), len(split.test)) == (50, 20, 10)  # 8 a class: 1 test, 2 val
    # Three consecutive seeds share no image; the reloaded file gives the same split.
    assert not set(splits[0].pool) & set(splits[1].pool) and not set(splits[1].pool) & set(splits[2].pool)
    again = make_split(data, seed=43, directory=tmp_path)
    np.testing.assert_array_equal(again.test, splits[1].test)
    assert json.loads(again.path.read_text())["replicate"] == 1


def test_changed_data_or_fractions_are_refused(tmp_path):
    data = _data([20] * 10)
    make_split(data, seed=1, directory=tmp_path)
    with pytest.raises(ValueError, match="made with test_size=0.1, val_size=0.15, not test_size=0.2"):
        make_split(data, seed=1, test_size=0.2, directory=tmp_path)
    other = _data([20] * 10, seed=5)
    with pytest.raises(ValueError, match="does not match dataset 'toy': 200 of its images.*Delete toy-seed1.json"):
        make_split(other, seed=1, directory=tmp_path)


def test_a_class_too_small_to_train_on_is_refused(tmp_path):
    with pytest.raises(ValueError) as info:
        make_split(_data([20, 2] + [20] * 8), directory=tmp_path)
    message = str(info.value)
    assert message.startswith(
        "Class 'moscow' has 2 distinct images: with test_size=0.1, val_size=0.15 it gets 1 test, 1 val and 0 train."
    )
    assert "Each class needs at least 3 images for these fractions" in message and "\n" not in message
    assert not any(tmp_path.iterdir())  # nothing saved
    with pytest.raises(ValueError, match="'moscow' has 3 distinct images: .* 1 test, 2 val and 0 train.*at least 5"):
        make_split(_data([20, 3] + [20] * 8), test_size=0.3, val_size=0.6, directory=tmp_path)
    smallest = make_split(_data([20, 3] + [20] * 8), directory=tmp_path)
    assert np.sum(smallest.train < 23) == 15 + 1  # london's 15 and moscow's 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"test_size": 0}, "Invalid `test_size`"),
        ({"val_size": 1.5}, "Invalid `val_size`"),
        ({"seed": "42"}, "Invalid `seed`"),
    ],
)
def test_invalid_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_split(_data([5] * 10), directory=tmp_path, **kwargs)


def _cli_error(capsys, argv):
    """Run ``streetlib`` with ``argv``; check it failed with status 2 and return its one stderr line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("via_option", [False, True])
def test_data_split_cli_names_a_malformed_classes_yaml(tmp_path, capsys, via_option):
    root = tmp_path / "ds"
    root.mkdir()
    for cls in STREET10.classes:
        np.save(root / f"{cls}.npy", np.zeros((2, 4, 4, 3), np.uint8))
    spec_path = (tmp_path if via_option else root) / "classes.yaml"
    spec_path.write_text("name: x\nregions:\n\twestern: [london, paris]\n")
    err = _cli_error(capsys, ["data", "split", str(root)] + (["--classes", str(spec_path)] if via_option else []))
    assert err.startswith(f"streetlib data: error: Invalid class spec file {spec_path}: line 3, column 1: ")
    assert "Fix the YAML" in err


def test_data_split_cli_says_what_to_do_with_an_unreadable_image(tmp_path, capsys):
    root = tmp_path / "photos"
    for cls in STREET10.classes:
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / cls / "0.png")
    (root / "paris" / "1-broken.jpg").write_bytes(b"not a jpeg")
    err = _cli_error(capsys, ["data", "split", str(root)])
    assert err.startswith(f"streetlib data: error: Cannot read image {root / 'paris' / '1-broken.jpg'}: ")
    assert "Replace or remove the file" in err and "streetlib data build" in err


def _photo_folder(tmp_path, per_class=4):
    """An image folder of three cities, 40 x 30 photos, and its class spec."""
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for cls in ("london", "paris", "tokyo"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "classes.yaml").write_text("name: three\nregions:\n  western: [london, paris]\n  eastern: [tokyo]\n")
    return root


def test_a_split_made_by_data_split_holds_at_any_image_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path))
    root = _photo_folder(tmp_path)
    assert main(["data", "split", str(root), "--seed", "3"]) == 0  # loads at 224 px
    saved = tmp_path / "data" / "splits" / "photos-seed3.json"
    assert f"-> {saved}" in capsys.readouterr().out
    first = json.loads(saved.read_text())
    for size, policy in [(64, "crop"), (24, "pad")]:
        split = make_split(load_dataset(root, size=size, policy=policy), seed=3)
        assert split.path == saved and [len(split[s]) for s in ("train", "val", "test")] == [6, 3, 3]
    assert json.loads(saved.read_text()) == first  # reused, not rewritten


def test_an_image_folder_split_saved_with_resized_pixel_hashes_is_still_accepted(tmp_path):
    """Split files made before image folders were keyed by their source images hold the hashes of the pixels at
    the size they were loaded at: at that size they still load, with the same assignment."""
    data = load_dataset(_photo_folder(tmp_path), size=32)
    pixels_only = StreetData(images=data.images, city=data.city, spec=data.spec, name=data.name)
    old = make_split(pixels_only, seed=1, directory=tmp_path / "splits")
    again = make_split(data, seed=1, directory=tmp_path / "splits")
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(again[s], old[s])
    with pytest.raises(ValueError, match="does not match dataset 'photos': 12 of its images .*another image size"):
        make_split(load_dataset(tmp_path / "photos", size=16), seed=1, directory=tmp_path / "splits")


def test_a_balanced_subset_keeps_every_prefix_balanced():
    indices = np.arange(100, 160)  # class-major, as a split of a class-major dataset: classes 0, 1, 2 in turn
    labels = np.repeat([0, 1, 2], [30, 20, 10])
    subset = balanced_subset(indices, labels, 45, seed=3)
    assert len(subset) == 45 and len(set(subset)) == 45 and set(subset) <= set(indices)
    cls = labels[subset - 100]
    for k in (3, 10, 30):  # while every class lasts, any prefix has each class within one image of the others
        counts = np.bincount(cls[:k], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert np.bincount(cls, minlength=3).tolist() == [18, 17, 10]  # class 2 runs out after 10 rounds
    np.testing.assert_array_equal(subset, balanced_subset(indices, labels, 45, seed=3))
    assert not np.array_equal(subset, balanced_subset(indices, labels, 45, seed=4))
    with pytest.raises(ValueError, match="Invalid `count`"):
        balanced_subset(indices, labels, 0)
    with pytest.raises(ValueError, match="`labels` must have shape"):
        balanced_subset(indices, labels[:5], 10)
