import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import make_toy_data, toy_split

from streetlib.baselines import features
from streetlib.baselines.fit import (
    CLASSIFIERS,
    SEARCH_GRIDS,
    class_scores,
    fit_baseline,
    make_classifier,
    sklearn_params,
)
from streetlib.baselines.floors import floor_features
from streetlib.baselines.grid import BaselineGridConfig, run_grid
from streetlib.baselines.plots import plot_summary
from streetlib.baselines.results import COLUMNS, CONFIG, compare, save_results, seed_table, summarize
from streetlib.classes import SYNTH10
from streetlib.data.loaders import StreetData
from streetlib.data.splits import make_split
from streetlib.evaluation import stats
from streetlib.models import weights
from streetlib.runs import RunLayout

CLASSES = 10


def circle_features(*, per_class=8, noise=0.05, seed=0):
    """Ten well-separated classes on a circle in 2-D, one vector per image.

    Per class: ``per_class`` training images, 2 validation images and 1 test image placed exactly at its class
    centre. Two test labels are then changed by hand: the image at class 5's centre is labelled 6 (the next class on
    the circle, so still in its top 3) and the one at class 2's centre is labelled 7 (the opposite side).

    Returns:
        (features float64 `(n, 2)`, labels int64 `(n,)`, split with ``train``/``val``/``test`` index arrays).
    """
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(CLASSES) / CLASSES
    centres = 10 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    x, y, part = [], [], []
    for c in range(CLASSES):
        for name, count in (("train", per_class), ("val", 2)):
            x.append(centres[c] + rng.normal(0, noise, (count, 2)))
            y += [c] * count
            part += [name] * count
        x.append(centres[c][None])
        y.append(c)
        part.append("test")
    x, y, part = np.concatenate(x), np.array(y), np.array(part)
    test = np.flatnonzero(part == "test")
    y[test[5]], y[test[2]] = 6, 7
    split = SimpleNamespace(**{s: np.flatnonzero(part == s) for s in ("train", "val", "test")})
    return x, y, split


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_well_separated_classes_score_what_a_hand_check_says(classifier):
    x, y, split = circle_features()
    fit = fit_baseline(x, y, split, classifier=classifier)
    # Every training and validation image sits in its own tight cluster; 8 of the 10 test labels agree with
    # their cluster, and one of the two others (class 6 for an image of class 5) is a neighbour on the circle.
    assert (fit.train_acc, fit.val_acc, fit.test_acc) == (1.0, 1.0, 0.8)
    assert fit.test_top3 == pytest.approx(0.9)
    np.testing.assert_array_equal(fit.test_pred, np.arange(CLASSES))


def test_two_classes_have_no_top3():
    x, y, split = circle_features()
    region = (y >= 5).astype(np.int64)
    fit = fit_baseline(x, region, split, classifier="logreg")
    assert np.isnan(fit.test_top3)
    # The images at class 5's and class 2's centres keep their region; relabelling 2 -> 7 made one wrong.
    assert fit.test_acc == pytest.approx(0.9)


def _stretched(x, split):
    """The features with validation and test rows moved far away: a scaler that saw them has other statistics."""
    x = x.copy()
    x[split.val] += 1000.0
    x[split.test] -= 500.0
    return x


@pytest.mark.parametrize("search", [False, True])
def test_scaler_sees_only_training_data(search):
    x, y, split = circle_features()
    x = _stretched(x, split)
    fit = fit_baseline(x, y, split, classifier="logreg", search=search)
    scaler = fit.model.named_steps["scaler"]
    assert scaler.n_samples_seen_ == len(split.train)
    np.testing.assert_allclose(scaler.mean_, x[split.train].mean(axis=0))
    np.testing.assert_allclose(scaler.var_, x[split.train].var(axis=0))


def test_scaler_sees_training_images_and_their_augmented_copies_only():
    x, y, split = circle_features()
    x = _stretched(x, split)
    augmented = np.stack([x[split.train] + 0.01, x[split.train] - 0.02])
    fit = fit_baseline(x, y, split, classifier="linear-svm", augmented=augmented)
    scaler = fit.model.named_steps["scaler"]
    assert scaler.n_samples_seen_ == 3 * len(split.train)
    expected = np.concatenate([x[split.train], *augmented]).mean(axis=0)
    np.testing.assert_allclose(scaler.mean_, expected)


def test_search_keeps_the_best_on_validation():
    x, y, split = circle_features(noise=2.5, seed=1)
    grid = {"logreg": {"C": [1e-5, 1.0]}}
    fit = fit_baseline(x, y, split, classifier="logreg", search=grid)

    by_hand = {}
    for c in grid["logreg"]["C"]:
        model = make_classifier("logreg", C=c).fit(x[split.train], y[split.train])
        by_hand[c] = np.mean(model.predict(x[split.val]) == y[split.val])
    best = max(by_hand, key=by_hand.get)
    assert by_hand[1e-5] != by_hand[1.0]
    assert fit.params == {"C": best}
    assert fit.val_acc == by_hand[best]
    assert fit.model.named_steps["clf"].C == best


def test_default_grids_contain_the_original_C():
    assert all(1.0 in candidates["C"] for candidates in SEARCH_GRIDS.values())
    assert set(SEARCH_GRIDS) == set(CLASSIFIERS)
    # ... and the original's RBF width, scikit-learn's gamma='scale' (1/d on standardised features).
    assert 1.0 in SEARCH_GRIDS["svm-rbf"]["gamma_scale"]


def test_rbf_width_is_searched_in_units_of_one_over_the_width_of_the_features():
    assert sklearn_params({"C": 10.0, "gamma_scale": 0.5}, 256) == {"C": 10.0, "gamma": 0.5 / 256}
    assert sklearn_params({"C": 10.0}, 256) == {"C": 10.0}
    x, y, split = circle_features(noise=2.0, seed=3)
    fit = fit_baseline(x, y, split, classifier="svm-rbf", search={"svm-rbf": {"C": [1.0], "gamma_scale": [4.0]}})
    assert fit.params == {"C": 1.0, "gamma_scale": 4.0}  # recorded as searched
    assert fit.model.named_steps["clf"].gamma == pytest.approx(4.0 / x.shape[1])


def test_c_and_gamma_are_chosen_on_validation_only():
    # Scrambling the test labels changes the test score but not the choice: C and gamma are never chosen on test.
    x, y, split = circle_features(noise=2.5, seed=1)
    grid = {"svm-rbf": {"C": [0.01, 1.0, 100.0], "gamma_scale": [0.01, 1.0, 30.0]}}
    fit = fit_baseline(x, y, split, classifier="svm-rbf", search=grid)
    scrambled = y.copy()
    scrambled[split.test] = np.random.default_rng(0).permutation(y[split.test])
    assert (scrambled[split.test] != y[split.test]).any()
    other = fit_baseline(x, scrambled, split, classifier="svm-rbf", search=grid)
    assert other.params == fit.params and other.val_acc == fit.val_acc and other.test_acc != fit.test_acc
    # The choice is the candidate with the best validation accuracy, by hand.
    by_hand = {}
    for c in grid["svm-rbf"]["C"]:
        for g in grid["svm-rbf"]["gamma_scale"]:
            model = make_classifier("svm-rbf", C=c, gamma=g / x.shape[1]).fit(x[split.train], y[split.train])
            by_hand[(c, g)] = np.mean(model.predict(x[split.val]) == y[split.val])
    assert by_hand[(fit.params["C"], fit.params["gamma_scale"])] == max(by_hand.values()) == fit.val_acc
    assert len(set(by_hand.values())) > 1  # the candidates really differ on validation


def test_make_classifier_is_the_original_svm_after_a_scaler():
    model = make_classifier("svm-rbf", seed=3)
    assert [name for name, _ in model.steps] == ["scaler", "clf"]
    clf = model.named_steps["clf"]
    assert (clf.kernel, clf.C, clf.random_state) == ("rbf", 1.0, 3)
    assert make_classifier("linear-svm", C=0.1).named_steps["clf"].C == 0.1


def test_class_scores_rank_binary_decisions():
    x, y, split = circle_features()
    region = (y >= 5).astype(np.int64)
    model = make_classifier("linear-svm").fit(x[split.train], region[split.train])
    scores = class_scores(model, x[split.test], 2)
    assert scores.shape == (CLASSES, 2)
    np.testing.assert_array_equal(scores.argmax(axis=1), model.predict(x[split.test]))


def test_class_scores_give_untrained_classes_minus_infinity():
    x, y, split = circle_features()
    keep = split.train[y[split.train] != 9]
    model = make_classifier("logreg").fit(x[keep], y[keep])
    scores = class_scores(model, x[split.test], CLASSES)
    assert np.all(scores[:, 9] == -np.inf)
    np.testing.assert_allclose(scores[:, :9].sum(axis=1), 1.0)


def test_top3_ranks_untrained_classes_last():
    # scikit-learn's top_k_accuracy_score refuses -inf: an untrained class must still rank below every trained one.
    x, y, split = circle_features()
    split = SimpleNamespace(train=split.train[y[split.train] != 9], val=split.val, test=split.test)
    fit = fit_baseline(x, y, split, classifier="logreg")
    order = np.argsort(-class_scores(fit.model, x[split.test], CLASSES), axis=1, kind="stable")
    assert fit.test_top3 == np.mean((order[:, :3] == y[split.test, None]).any(axis=1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"classifier": "svm"}, r"Invalid `classifier`.*'svm-rbf'.*classifier='svm'"),
        ({"search": "yes"}, r"Invalid `search`.*search='yes'"),
        ({"search": {"logreg": {"C": [1.0]}}}, r"Invalid `search`.*entry for 'svm-rbf'"),
    ],
)
def test_invalid_fit_arguments(kwargs, match):
    x, y, split = circle_features()
    with pytest.raises(ValueError, match=match):
        fit_baseline(x, y, split, **kwargs)


def test_invalid_shapes():
    x, y, split = circle_features()
    with pytest.raises(ValueError, match=r"`features` must be \(n, d\) with one row per label"):
        fit_baseline(x[:-1], y, split)
    with pytest.raises(ValueError, match=r"`augmented` must have shape \(copies, 80, 2\)"):
        fit_baseline(x, y, split, augmented=np.zeros((2, 80, 3)))


def test_make_classifier_refuses_unknown_names():
    with pytest.raises(ValueError, match="Invalid `classifier`.*classifier='knn'"):
        make_classifier("knn")


# -- the grid ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """One small grid on toy data: random weights (ImageNet made unavailable), two splits, one and zero
    augmented copies."""
    root = tmp_path_factory.mktemp("grid")
    data = make_toy_data(per_class=6, size=32)
    splits = [toy_split(data, seed=s) for s in (0, 1)]
    mp = pytest.MonkeyPatch()

    def offline(source):
        raise weights.WeightsDownloadError(f"Could not download the {source!r} weights: offline")

    # Where a download is tried: the weights module, and the features' fingerprint of the source's file.
    mp.setattr(weights, "fetch", offline)
    mp.setattr(features, "fetch", offline)
    dirs = {"cache_dir": root / "features", "layout": RunLayout(hists_dir=root / "hists", figs_dir=root / "figs")}
    spec = BaselineGridConfig(
        weights=["imagenet", "random"], poolings=["avg"], classifiers=["svm-rbf", "logreg"], augment_copies=[0, 1]
    )
    result = run_grid(data, splits, spec, figure_seeds=[1], progress=False, **dirs)
    mp.undo()
    return data, splits, dirs, result


def test_random_features_can_be_fed_a_pretrained_sources_normalisation(tmp_path):
    # Question 1's confound: random weights fed their own 'samplewise' images, pretrained ones 'caffe-bvlc'. With
    # random_normalization the random source's features are those of caffe-bvlc images, and its rows say so.
    data = make_toy_data(per_class=3, size=32)
    spec = BaselineGridConfig(
        weights=["random"],
        poolings=["grid2"],
        classifiers=["logreg"],
        outputs=["city"],
        extractor={"layer": "block1_pool"},
        random_normalization="caffe-bvlc",
    )
    dirs = {"cache_dir": tmp_path / "f", "layout": RunLayout(hists_dir=tmp_path / "h", figs_dir=tmp_path / "g")}
    table = run_grid(data, [toy_split(data, seed=0)], spec, figure_seeds=[], progress=False, **dirs).table
    assert table["normalization"].tolist() == ["caffe-bvlc"] and table["pooling"].tolist() == ["grid2"]
    assert table["dim"].tolist() == [2 * 2 * 64]  # block1_pool's 16 x 16 x 64 maps at 32 px, on a 2 x 2 grid
    expected = features.FeatureExtractor(weights="random", layer="block1_pool", normalization="caffe-bvlc")
    cached = expected.features(data, poolings=["grid2"], cache_dir=tmp_path / "f", progress=False)["grid2"]
    own = features.FeatureExtractor(weights="random", layer="block1_pool").extract(
        data, poolings=["grid2"], progress=False
    )
    assert not np.allclose(cached, own["grid2"])  # another normalisation, other features


def test_grid_rows_are_tidy(grid):
    data, _, _, result = grid
    table = result.table
    assert list(table.columns) == COLUMNS
    # weights x pooling x copies x classifier x seed x output = 1 x 1 x 2 x 2 x 2 x 2
    assert len(table) == 16
    assert not table.duplicated(["augment_copies", "classifier", "seed", "output"]).any()
    assert set(table["weights"]) == {"random"} and set(table["layer"]) == {"block5_pool"}
    assert set(table["data"]) == {data.label} and set(table["normalization"]) == {"samplewise"}
    assert (table[["n_train", "n_val", "n_test"]].to_numpy() == [40, 10, 10]).all()
    assert table.loc[table["output"] == "region", "test_top3"].isna().all()
    assert table.loc[table["output"] == "city", "test_top3"].between(0, 1).all()
    assert table[["train_acc", "val_acc", "test_acc"]].stack().between(0, 1).all()


def test_grid_reports_unavailable_weights(grid):
    _, _, _, result = grid
    assert list(result.unavailable) == ["imagenet"]
    assert "offline" in result.unavailable["imagenet"]


def test_grid_writes_the_csv_and_the_figures(grid):
    data, _, dirs, result = grid
    assert result.path == dirs["layout"].hists_dir / "02-baselines" / "baselines.csv"
    saved = pd.read_csv(result.path)
    assert len(saved) == 16
    assert saved["test_acc"].tolist() == pytest.approx(result.table["test_acc"].tolist())
    # Only seed 1 is drawn: copies x classifier x output = 2 x 2 x 2 figures.
    names = sorted(p.name for p in result.figures)
    assert len(names) == 8 and all(p.is_file() for p in result.figures)
    assert "toy-vgg16-random-block5_pool-avg-aug1-svm-rbf-seed1.test.confusion-city.png" in names


def test_grid_extracts_only_the_images_its_splits_use(tmp_path, monkeypatch):
    # A dataset drawn as two replicates, split by two seeds of replicate 1: replicate 0 is never read.
    data = make_toy_data(per_class=8, size=32)
    data.replicate = np.tile([0, 1], len(data) // 2)
    splits = [make_split(data, seed=s, test_size=0.15, val_size=0.2, save=False) for s in (1, 3)]
    extracted = []
    extract = features.FeatureExtractor.extract

    def recording(self, data, indices=None, **kwargs):
        extracted.append(np.arange(len(data)) if indices is None else np.asarray(indices))
        return extract(self, data, indices, **kwargs)

    monkeypatch.setattr(features.FeatureExtractor, "extract", recording)
    spec = BaselineGridConfig(weights=["random"], poolings=["avg"], classifiers=["logreg"], outputs=["city"])
    dirs = {"cache_dir": tmp_path / "f", "layout": RunLayout(hists_dir=tmp_path / "h", figs_dir=tmp_path / "g")}
    table = run_grid(data, splits, spec, figure_seeds=[], progress=False, **dirs).table
    np.testing.assert_array_equal(np.concatenate(extracted), np.flatnonzero(data.replicate == 1))
    assert table["seed"].tolist() == [1, 3] and (table[["n_train", "n_val", "n_test"]].sum(axis=1) == 40).all()
    assert table[["train_acc", "val_acc", "test_acc"]].notna().all().all()


def test_grid_run_again_replaces_its_rows_and_keeps_others(grid, tmp_path):
    data, splits, dirs, first = grid
    spec = BaselineGridConfig(weights=["random"], poolings=["avg"], classifiers=["svm-rbf"])
    again = run_grid(data, splits[:1], spec, figure_seeds=[], progress=False, **dirs)
    saved = pd.read_csv(again.path)
    assert len(saved) == 16
    assert len(again.figures) == 0
    extra = run_grid(
        data, splits[:1], spec.replace(classifiers=["linear-svm"]), figure_seeds=[], progress=False, **dirs
    )
    assert len(pd.read_csv(extra.path)) == 18


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"outputs": ["country"]}, r"Invalid `outputs`.*'country'"),
        ({"augment_copies": [-1]}, r"Invalid `augment_copies`.*\[-1\]"),
        ({"augment_copies": []}, r"Invalid `augment_copies`"),
        ({"classifiers": ["forest"]}, r"Invalid `classifiers`.*'forest'"),
        ({"poolings": ["sum"]}, r"Invalid `poolings`. Expected a non-empty list of \('avg'.*poolings=\['sum'\]"),
        ({"poolings": ["grid0"]}, r"Invalid `poolings`.*'grid<k>' \(k >= 1\).*poolings=\['grid0'\]"),
        ({"random_normalization": "zscore"}, r"Invalid `random_normalization`.*'zscore'"),
        ({"poolings": []}, r"Invalid `poolings`. Expected a non-empty list"),
        ({"weights": "random"}, r"Invalid `weights`. Expected a list of weight sources.*weights='random'"),
        ({"search": "yes"}, r"Invalid `search`. Expected a bool or a dict"),
        ({"search": {"svm-rbf": {"C": [1.0]}}}, r"Invalid `search`.*entry for 'linear-svm'"),
        ({"extractor": {"backbone": "vgg16", "depth": 3}}, r"Invalid `extractor`.*'batch_size'.*'depth': 3"),
        ({"floors": ["hog"]}, r"Invalid `floors`.*floors=\['hog'\]"),
        ({"weights": [], "floors": []}, r"Nothing to fit: `weights` and `floors` are both empty"),
    ],
)
def test_invalid_grid_fails_when_made_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BaselineGridConfig(**kwargs)


def test_grid_is_frozen_and_stored_in_one_form():
    search = {"svm-rbf": {"C": [1.0]}}
    spec = BaselineGridConfig(
        poolings=["avg", "flatten", "avg"], classifiers=["svm-rbf"], floors=["pixels"], search=search
    )
    assert spec.poolings == ("avg", "flatten") and spec.floors == ("pixels",) and spec.outputs == ("region", "city")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.poolings = ("max",)
    assert spec.replace(weights=["random"]).weights == ("random",)
    with pytest.raises(ValueError, match=r"Invalid `outputs`"):
        spec.replace(outputs=[])
    assert spec == BaselineGridConfig(
        poolings=("avg", "flatten"), classifiers=("svm-rbf",), floors=("pixels",), search=search
    )
    assert spec.search == search and spec.search is not search


def test_run_grid_takes_a_grid_and_checks_figure_seeds(tmp_path):
    data = make_toy_data(per_class=2, size=32)
    with pytest.raises(TypeError, match=r"Invalid `grid`. Expected a `BaselineGridConfig`"):
        run_grid(data, [], {"weights": ["random"]}, layout=RunLayout(hists_dir=tmp_path))
    with pytest.raises(ValueError, match=r"Invalid `figure_seeds`.*figure_seeds=42"):
        run_grid(data, [], BaselineGridConfig(), figure_seeds=42, layout=RunLayout(hists_dir=tmp_path))
    assert list(tmp_path.iterdir()) == []


# -- summaries ---------------------------------------------------------------------------------------------------


def _table():
    """Rows of two weight sources (each with its own normalisation) over three seeds, by hand."""
    rows = []
    scores = {"random": [0.30, 0.40, 0.35], "hed-bsds500": [0.50, 0.45, 0.30]}
    for w, norm in (("random", "samplewise"), ("hed-bsds500", "caffe-bvlc")):
        for seed, score in zip((42, 43, 44), scores[w], strict=True):
            rows.append(
                {c: "x" for c in COLUMNS}
                | {
                    "weights": w,
                    "normalization": norm,
                    "augment_copies": 0,
                    "search": False,
                    "seed": seed,
                    "output": "city",
                    "test_acc": score,
                }
            )
    return pd.DataFrame(rows)


def test_summarize_gives_the_seed_spread():
    summary = summarize(_table())
    row = summary.loc[("hed-bsds500", "caffe-bvlc", "city")]
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(1.25 / 3)
    assert row["std"] == pytest.approx(np.std([0.50, 0.45, 0.30], ddof=1))


STATS = {"margin": 0.03, "overlap": 0.15}


def test_compare_pairs_seeds_and_feeds_their_differences_to_the_statistics_module():
    (row,) = compare(_table(), column="weights", a="random", b="hed-bsds500", **STATS)
    differences = [0.20, 0.05, -0.05]
    expected = stats.compare(differences, a="random", b="hed-bsds500", **STATS)
    assert {k: row[k] for k in expected} == pytest.approx(expected)
    assert row["n"] == 3 and row["difference"] == pytest.approx(np.mean(differences))
    assert row["column"] == "weights" and row["output"] == "city"
    assert row["mean_a"] == pytest.approx(0.35) and row["mean_b"] == pytest.approx(1.25 / 3)


def test_compared_baselines_get_the_statistics_modules_verdicts():
    table = _table()
    table.loc[table["weights"] == "random", "test_acc"] = 0.1
    found = stats.family(compare(table, column="weights", a="random", b="hed-bsds500", **STATS))
    assert found["verdict"].tolist() == ["hed-bsds500 higher"]
    assert found["column"].tolist() == ["weights"] and found["output"].tolist() == ["city"]
    # The same scores on both sides on every seed: exactly equivalent.
    table.loc[table["weights"] == "random", "test_acc"] = table.loc[
        table["weights"] == "hed-bsds500", "test_acc"
    ].values
    found = stats.family(compare(table, column="weights", a="random", b="hed-bsds500", **STATS))
    assert found["verdict"].tolist() == ["equivalent within ±0.03"]


def test_compare_errors():
    table = _table()
    with pytest.raises(ValueError, match="Invalid `column`.*column='seed'"):
        compare(table, column="seed", a=42, b=43, **STATS)
    with pytest.raises(ValueError, match="No rows with weights='imagenet'"):
        compare(table, column="weights", a="random", b="imagenet", **STATS)
    with pytest.raises(ValueError, match="Invalid `margin`"):
        compare(table, column="weights", a="random", b="hed-bsds500", margin=0, overlap=0.15)
    table.loc[table["weights"] == "random", "seed"] += 100
    with pytest.raises(ValueError, match="share no configuration and seed"):
        compare(table, column="weights", a="random", b="hed-bsds500", **STATS)


def test_seed_table_and_summary_plot():
    table = pd.concat([_table(), _table().assign(output="region", test_acc=0.8)], ignore_index=True)
    text = seed_table(table)
    assert text.loc[("hed-bsds500", "caffe-bvlc"), "city"] == "0.417 ± 0.104"
    assert text.loc[("random", "samplewise"), "region"] == "0.800 ± 0.000"
    fig = plot_summary(table, title="summary")
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["random / samplewise", "hed-bsds500 / caffe-bvlc"]


# -- floors: baselines without a network ---------------------------------------------------------------------------


def _crafted(images):
    """A `StreetData` of the given uint8 images, all of the first class."""
    images = np.asarray(images, dtype=np.uint8)
    return StreetData(images=images, city=np.zeros(len(images), np.int64), spec=SYNTH10, name="crafted")


def test_pixels_floor_is_the_8x8_block_means():
    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    features = floor_features(_crafted([image, 255 - image]), "pixels")
    assert features.shape == (2, 192) and features.dtype == np.float32
    # 16 x 24 px in 8 x 8 cells: each cell is a 2 x 3 block.
    blocks = image.astype(np.float64).reshape(8, 2, 8, 3, 3).mean(axis=(1, 3)) / 255
    np.testing.assert_allclose(features[0], blocks.reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(features[1], 1 - blocks.reshape(-1), rtol=1e-6)
    # A cell's value sits at index (row * 8 + column) * 3 + channel.
    assert features[0, (2 * 8 + 5) * 3 + 1] == pytest.approx(image[4:6, 15:18, 1].mean() / 255, rel=1e-6)


def test_pixels_floor_averages_by_area_when_cells_split_pixels():
    # 12 rows in 8 cells of 1.5 rows: cell 0 is row 0 and half of row 1, cell 1 the other half of row 1 and row 2.
    image = np.repeat((20 * np.arange(12, dtype=np.uint8))[:, None, None], 8, axis=1).repeat(3, axis=2)
    features = floor_features(_crafted([image]), "pixels").reshape(8, 8, 3)
    assert features[0, 0, 0] == pytest.approx((0 + 0.5 * 20) / 1.5 / 255, rel=1e-6)
    assert features[1, 5, 2] == pytest.approx((0.5 * 20 + 40) / 1.5 / 255, rel=1e-6)
    assert features[7, 0, 1] == pytest.approx((0.5 * 200 + 220) / 1.5 / 255, rel=1e-6)


def test_pixels_floor_matches_a_direct_weighted_sum():
    # 13 x 21 px: cells of 1.625 x 2.625 px, so most cells share pixels with their neighbours; 5 images in chunks of
    # 2, so the last chunk is short.
    images = np.random.default_rng(1).integers(0, 256, (5, 13, 21, 3), dtype=np.uint8)
    floor = floor_features(_crafted(list(images)), "pixels", chunk=2)
    rows, cols = features.area_weights(13, 8), features.area_weights(21, 8)
    direct = np.zeros((5, 8, 8, 3))
    for i, j in np.ndindex(8, 8):
        weights = rows[i][:, None] * cols[j][None, :]
        direct[:, i, j] = (weights[None, :, :, None] * images / 255.0).sum(axis=(1, 2))
    # Both sum in float64 (errors near 1e-16) in different orders; the float32 result can then differ by one rounding
    # step, 2**-24 ~ 6e-8 relative, far inside rtol=1e-6.
    np.testing.assert_allclose(floor, direct.reshape(5, -1), rtol=1e-6)


def test_colour_stats_floor_of_half_red_half_black():
    half = np.zeros((4, 6, 3), np.uint8)
    half[:, :3, 0] = 255
    grey = np.full((4, 6, 3), 100, np.uint8)
    features = floor_features(_crafted([half, grey]), "colour-stats")
    assert features.shape == (2, 30) and features.dtype == np.float32
    # Per channel: mean, std (of values in [0, 1]), then the fraction of pixels in each 0-255 bin of width 32.
    red = [0.5, 0.5, 0.5, 0, 0, 0, 0, 0, 0, 0.5]
    black = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(features[0], red + black + black, atol=1e-7)
    grey_channel = [100 / 255, 0, 0, 0, 0, 1, 0, 0, 0, 0]  # 100 is in bin 3 (96-127)
    np.testing.assert_allclose(features[1], grey_channel * 3, atol=1e-7)


def test_floor_features_refuse_unknown_kinds():
    with pytest.raises(ValueError, match=r"Invalid `kind`.*'pixels'.*kind='hog'"):
        floor_features(make_toy_data(per_class=1, size=8), "hog")


@pytest.fixture(scope="module")
def floor_grid(tmp_path_factory):
    """Floors only, no weight source, on toy data whose cities differ by colour: two splits."""
    root = tmp_path_factory.mktemp("floors")
    data = make_toy_data(per_class=6, size=32)
    splits = [toy_split(data, seed=s) for s in (0, 1)]
    dirs = {"cache_dir": root / "features", "layout": RunLayout(hists_dir=root / "hists", figs_dir=root / "figs")}
    spec = BaselineGridConfig(weights=[], floors=["pixels", "colour-stats"], classifiers=["svm-rbf", "logreg"])
    result = run_grid(data, splits, spec, figure_seeds=[0], progress=False, **dirs)
    return data, splits, result


def test_floor_grid_rows(floor_grid):
    data, splits, result = floor_grid
    table = result.table
    assert list(table.columns) == COLUMNS
    # floor x classifier x seed x output = 2 x 2 x 2 x 2
    assert len(table) == 16 and not table.duplicated(["backbone", "classifier", "seed", "output"]).any()
    pixels = table[table["backbone"] == "pixels"]
    assert len(pixels) == 8
    assert set(pixels["dim"]) == {192} and set(table.loc[table["backbone"] == "colour-stats", "dim"]) == {30}
    for column in ("weights", "layer", "pooling", "normalization"):
        assert set(table[column]) == {"none"}
    assert set(table["augment_copies"]) == {0} and set(table["image_size"]) == {"32x32"}
    for backbone in ("pixels", "colour-stats"):
        rows = table[table["backbone"] == backbone]
        expected = {(s.seed, o) for s in splits for o in ("region", "city")}
        assert set(zip(rows["seed"], rows["output"], strict=True)) == expected
    assert table[["train_acc", "val_acc", "test_acc"]].stack().between(0, 1).all()
    assert (table[["n_train", "n_val", "n_test"]].to_numpy() == [40, 10, 10]).all()
    assert result.unavailable == {}
    # One figure per floor x classifier x output of seed 0, named like the deep ones.
    names = sorted(p.name for p in result.figures)
    assert len(names) == 8 and all(p.is_file() for p in result.figures)
    assert "toy-colour-stats-none-none-none-logreg-seed0.test.confusion-city.png" in names
    saved = pd.read_csv(result.path)
    assert saved[CONFIG].astype(str).equals(table[CONFIG].astype(str))


def test_colour_stats_floor_beats_chance_on_colour_classes(floor_grid):
    _, _, result = floor_grid
    table = result.table
    city = table[(table["backbone"] == "colour-stats") & (table["output"] == "city")]
    # Ten cities, each its own colour: chance is 0.1.
    assert city["test_acc"].min() >= 0.7


def test_concurrent_fits_give_the_same_rows_and_figures(tmp_path):
    # Every classifier, linear-svm included (it must not run beside another fit, see `_fit_all`), on both floors.
    data = make_toy_data(per_class=6, size=32)
    splits = [toy_split(data, seed=s) for s in (0, 1)]
    spec = BaselineGridConfig(weights=[], floors=["pixels", "colour-stats"])
    results = {}
    for n_jobs in (1, 2):
        out = tmp_path / str(n_jobs)
        dirs = {"cache_dir": out / "cache", "layout": RunLayout(hists_dir=out / "hists", figs_dir=out / "figs")}
        run = run_grid(data, splits, spec, figure_seeds=[1], progress=False, n_jobs=n_jobs, **dirs)
        results[n_jobs] = run
    one, two = (results[n].table.drop(columns="seconds") for n in (1, 2))
    assert len(one) == 2 * 3 * 2 * 2
    pd.testing.assert_frame_equal(two, one, check_exact=True)
    assert [p.name for p in results[2].figures] == [p.name for p in results[1].figures]


@pytest.mark.parametrize("n_jobs", [0, 1.5, True, None])
def test_run_grid_checks_n_jobs_before_writing(tmp_path, n_jobs):
    data = make_toy_data(per_class=2, size=32)
    with pytest.raises(ValueError, match=r"Invalid `n_jobs`. Expected an int >= 1. Received: n_jobs="):
        run_grid(data, [], BaselineGridConfig(floors=["pixels"]), layout=RunLayout(hists_dir=tmp_path), n_jobs=n_jobs)
    assert list(tmp_path.iterdir()) == []


def test_floor_grid_refuses_unknown_floors_before_writing():
    match = r"Invalid `floors`. Expected .*'colour-stats'.*Received: floors=\['pixels', 'hog'\]"
    with pytest.raises(ValueError, match=match):
        BaselineGridConfig(weights=["random"], floors=["pixels", "hog"])
    with pytest.raises(ValueError, match="Nothing to fit"):
        BaselineGridConfig(weights=[])


def test_summaries_of_floor_and_deep_rows_together(grid, floor_grid):
    _, _, _, deep = grid
    _, _, floor = floor_grid
    # Through the CSV, as a notebook reads them: floor rows' "none" stay strings.
    path = floor.path.parent / "mixed.csv"
    save_results(pd.concat([deep.table, floor.table], ignore_index=True), path)
    table = pd.read_csv(path)
    assert set(table["pooling"]) == {"avg", "none"}

    summary = summarize(table)
    assert summary.loc[("pixels", "none", "none", "none", "none", 0, "svm-rbf", "city"), "n"] == 2
    text = seed_table(table)
    assert set(text.columns) == {"city", "region"} and len(text) == len(summary) // 2
    fig = plot_summary(table)
    assert len(fig.axes) == 2

    # Against the floor, each deep configuration pairs with it on the same seeds (the floor has no pooling,
    # weights or augmentation, so it is paired with every value the deep rows have).
    out = pd.DataFrame(compare(table, column="backbone", a="colour-stats", b="vgg16", **STATS))
    assert set(zip(out["augment_copies"], out["classifier"], out["output"], strict=True)) == {
        (k, c, o) for k in (0, 1) for c in ("svm-rbf", "logreg") for o in ("region", "city")
    }
    assert (out["n"] == 2).all()
    deep_rows = table[(table["backbone"] == "vgg16") & (table["augment_copies"] == 1)]
    floor_rows = table[table["backbone"] == "colour-stats"]
    keys = ["classifier", "seed", "output"]
    paired = deep_rows.merge(floor_rows, on=keys, suffixes=("_b", "_a"))
    expected = (paired["test_acc_b"] - paired["test_acc_a"]).groupby([paired["classifier"], paired["output"]]).mean()
    got = out[out["augment_copies"] == 1].set_index(["classifier", "output"])["difference"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
