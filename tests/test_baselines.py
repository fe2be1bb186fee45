from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import make_toy_data, toy_split

from streetlib import baselines, weights
from streetlib.baselines import fit_baseline, make_classifier

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


@pytest.mark.parametrize("classifier", baselines.CLASSIFIERS)
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
    assert all(1.0 in grid["C"] for grid in baselines.SEARCH_GRIDS.values())
    assert set(baselines.SEARCH_GRIDS) == set(baselines.CLASSIFIERS)


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
    scores = baselines.class_scores(model, x[split.test], 2)
    assert scores.shape == (CLASSES, 2)
    np.testing.assert_array_equal(scores.argmax(axis=1), model.predict(x[split.test]))


def test_class_scores_give_untrained_classes_minus_infinity():
    x, y, split = circle_features()
    keep = split.train[y[split.train] != 9]
    model = make_classifier("logreg").fit(x[keep], y[keep])
    scores = baselines.class_scores(model, x[split.test], CLASSES)
    assert np.all(scores[:, 9] == -np.inf)
    np.testing.assert_allclose(scores[:, :9].sum(axis=1), 1.0)


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
    mp.setattr(
        weights,
        "fetch",
        lambda source: (_ for _ in ()).throw(
            weights.WeightsDownloadError(f"Could not download the {source!r} weights: offline")
        ),
    )
    dirs = {"cache_dir": root / "features", "hists_dir": root / "hists", "figs_dir": root / "figs"}
    result = baselines.run_grid(
        data,
        splits,
        weights=["imagenet", "random"],
        poolings=["avg"],
        classifiers=["svm-rbf", "logreg"],
        augment_copies=[0, 1],
        figure_seeds=[1],
        progress=False,
        **dirs,
    )
    mp.undo()
    return data, splits, dirs, result


def test_grid_rows_are_tidy(grid):
    data, _, _, result = grid
    table = result.table
    assert list(table.columns) == baselines.COLUMNS
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
    assert result.path == dirs["hists_dir"] / "02-baselines" / "toy.csv"
    saved = pd.read_csv(result.path)
    assert len(saved) == 16
    assert saved["test_acc"].tolist() == pytest.approx(result.table["test_acc"].tolist())
    # Only seed 1 is drawn: copies x classifier x output = 2 x 2 x 2 figures.
    names = sorted(p.name for p in result.figures)
    assert len(names) == 8 and all(p.is_file() for p in result.figures)
    assert "toy-vgg16-random-block5_pool-avg-aug1-svm-rbf-seed1.test.confusion-city.png" in names


def test_grid_run_again_replaces_its_rows_and_keeps_others(grid, tmp_path):
    data, splits, dirs, first = grid
    again = baselines.run_grid(
        data,
        splits[:1],
        weights=["random"],
        poolings=["avg"],
        classifiers=["svm-rbf"],
        figure_seeds=[],
        progress=False,
        **dirs,
    )
    saved = pd.read_csv(again.path)
    assert len(saved) == 16
    assert len(again.figures) == 0
    extra = baselines.run_grid(
        data,
        splits[:1],
        weights=["random"],
        poolings=["avg"],
        classifiers=["linear-svm"],
        figure_seeds=[],
        progress=False,
        **dirs,
    )
    assert len(pd.read_csv(extra.path)) == 18


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"outputs": ["country"]}, r"Invalid `outputs`.*'country'"),
        ({"augment_copies": [-1]}, r"Invalid `augment_copies`.*\[-1\]"),
        ({"augment_copies": []}, r"Invalid `augment_copies`"),
        ({"classifiers": ["forest"]}, r"Invalid `classifier`.*'forest'"),
        ({"poolings": ["sum"]}, r"Invalid `poolings`"),
        ({"search": {"svm-rbf": {"C": [1.0]}}}, r"Invalid `search`.*entry for 'linear-svm'"),
    ],
)
def test_invalid_grid_arguments(kwargs, match):
    data = make_toy_data(per_class=2, size=32)
    with pytest.raises(ValueError, match=match):
        baselines.run_grid(data, [], **kwargs)


# -- summaries ---------------------------------------------------------------------------------------------------


def _table():
    """Rows of two weight sources (each with its own normalisation) over three seeds, by hand."""
    rows = []
    scores = {"random": [0.30, 0.40, 0.35], "hed-bsds500": [0.50, 0.45, 0.30]}
    for w, norm in (("random", "samplewise"), ("hed-bsds500", "caffe-bvlc")):
        for seed, score in zip((42, 43, 44), scores[w], strict=True):
            rows.append(
                {c: "x" for c in baselines.COLUMNS}
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
    summary = baselines.summarize(_table())
    row = summary.loc[("hed-bsds500", "caffe-bvlc", "city")]
    assert row["n"] == 3
    assert row["mean"] == pytest.approx(1.25 / 3)
    assert row["std"] == pytest.approx(np.std([0.50, 0.45, 0.30], ddof=1))


def test_compare_pairs_seeds():
    out = baselines.compare(_table(), column="weights", a="random", b="hed-bsds500")
    assert len(out) == 1
    row = out.iloc[0]
    assert row["n"] == 3 and row["b_wins"] == 2
    assert row["mean_diff"] == pytest.approx((0.20 + 0.05 - 0.05) / 3)
    assert row["std_diff"] == pytest.approx(np.std([0.20, 0.05, -0.05], ddof=1))


def test_compare_errors():
    table = _table()
    with pytest.raises(ValueError, match="Invalid `column`.*column='seed'"):
        baselines.compare(table, column="seed", a=42, b=43)
    with pytest.raises(ValueError, match="No rows with weights='imagenet'"):
        baselines.compare(table, column="weights", a="random", b="imagenet")
    table.loc[table["weights"] == "random", "seed"] += 100
    with pytest.raises(ValueError, match="share no configuration and seed"):
        baselines.compare(table, column="weights", a="random", b="hed-bsds500")


def test_verdicts_say_what_beats_what_with_the_spread():
    table = _table()
    lines = baselines.verdicts(
        baselines.compare(table, column="weights", a="random", b="hed-bsds500"), a="random", b="hed-bsds500"
    )
    assert lines == [
        "city: hed-bsds500 0.417 ± 0.104 vs random 0.350 ± 0.050, difference +0.067 ± 0.126 "
        "(hed-bsds500 higher on 2, random on 1 of 3 seeds: within the seed spread)"
    ]
    table.loc[table["weights"] == "random", "test_acc"] = 0.1
    lines = baselines.verdicts(
        baselines.compare(table, column="weights", a="random", b="hed-bsds500"), a="random", b="hed-bsds500"
    )
    assert lines[0].endswith("(hed-bsds500 higher on all 3 seeds)")
    lines = baselines.verdicts(
        baselines.compare(table, column="weights", a="hed-bsds500", b="random"), a="hed-bsds500", b="random"
    )
    assert lines[0].endswith("(hed-bsds500 higher on all 3 seeds)")


def test_seed_table_and_summary_plot():
    table = pd.concat([_table(), _table().assign(output="region", test_acc=0.8)], ignore_index=True)
    text = baselines.seed_table(table)
    assert text.loc[("hed-bsds500", "caffe-bvlc"), "city"] == "0.417 ± 0.104"
    assert text.loc[("random", "samplewise"), "region"] == "0.800 ± 0.000"
    fig = baselines.plot_summary(table, title="summary")
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["random / samplewise", "hed-bsds500 / caffe-bvlc"]
