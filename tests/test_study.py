"""Reading the study's runs: per-seed summaries, configurations chosen on validation, the baselines' scores."""

import pandas as pd
import pytest

from streetlib.experiments import study
from streetlib.runs import RunId


def _scores(values, *, family="CNN (03-pretrained)"):
    """Tidy scores from {config: {output: [per-seed values for seeds 1, 2, 3]}}."""
    rows = [
        {"family": family, "config": config, "seed": seed, "output": output, "value": value}
        for config, outputs in values.items()
        for output, per_seed in outputs.items()
        for seed, value in zip((1, 2, 3), per_seed, strict=True)
    ]
    return pd.DataFrame(rows)


def test_best_config_ranks_by_city_then_region():
    scores = _scores(
        {
            "a": {"city": [0.5, 0.6, 0.7], "region": [0.9, 0.9, 0.9]},
            "b": {"city": [0.7, 0.6, 0.5], "region": [0.95, 0.95, 0.95]},  # same city mean: region decides
            "c": {"city": [0.4, 0.4, 0.4], "region": [1.0, 1.0, 1.0]},
        }
    )
    best, ranked = study.best_config(scores)
    assert best == "b" and list(ranked.index) == ["b", "a", "c"]
    assert ranked.loc["a", "city"] == pytest.approx(0.6)


def test_baseline_scores_separate_floors_from_deep_features(tmp_path):
    base = {"classifier": "svm-rbf", "augment_copies": 0, "search": False, "output": "city"}
    rows = [
        {**base, "backbone": "vgg16", "weights": "hed-bsds500", "layer": "block1_pool", "pooling": "avg"},
        {**base, "backbone": "pixels", "weights": "none", "layer": "none", "pooling": "none"},
        {
            **base,
            "backbone": "vgg16",
            "weights": "random",
            "layer": "block1_pool",
            "pooling": "avg",
            "classifier": "logreg",
        },
    ]
    table = pd.DataFrame([{**r, "seed": 42, "val_acc": 0.5 + i / 10, "test_acc": 0.4} for i, r in enumerate(rows)])
    path = tmp_path / "baselines.csv"
    table.to_csv(path, index=False)
    val = study.baseline_scores(path, subset="val")
    assert val["config"].tolist() == ["hed-bsds500 block1_pool avg features, svm-rbf", "pixels (no network), svm-rbf"]
    assert val["family"].tolist() == ["SVM on deep features (02-baselines)", "floor (02-baselines)"]
    assert val["value"].tolist() == [0.5, 0.6]  # validation accuracy, not test
    assert study.baseline_scores(path)["value"].tolist() == [0.4, 0.4]
    with pytest.raises(ValueError, match=r"Invalid `subset`. Expected 'val' or 'test'. Received: subset='train'"):
        study.baseline_scores(path, subset="train")


def test_summary_gives_mean_spread_and_seeds_per_configuration():
    rows = [
        {"run": RunId("e", config, seed).name, "config_name": config, "seed": seed, "checkpoint": "best",
         "subset": "test", "output": output, "metric": metric, "class": None, "value": value}
        for config, values in {"A": [0.50, 0.60, 0.55], "B": [0.60, 0.65, 0.70]}.items()
        for seed, value in zip((1, 2, 3), values, strict=True)
        for output, metric in (("region", "accuracy"), ("city", "accuracy"), ("city", "top3"))
    ]  # fmt: skip
    table = study.summary(pd.DataFrame(rows))
    assert table.loc["A", "city accuracy mean"] == pytest.approx(0.55)
    assert table.loc["A", "city accuracy std"] == pytest.approx(0.05) and table.loc["B", "seeds"] == 3
    assert table.loc["B", "city top3 mean"] == pytest.approx(0.65)


def test_baseline_scores_take_the_classifier_tuned_on_validation_when_the_grid_searched(tmp_path):
    base = {"classifier": "svm-rbf", "augment_copies": 0, "output": "city", "seed": 42, "backbone": "vgg16"}
    deep = {"weights": "hed-bsds500", "layer": "block1_pool", "pooling": "grid2"}
    table = pd.DataFrame(
        [
            {**base, **deep, "search": False, "val_acc": 0.5, "test_acc": 0.4},
            {**base, **deep, "search": True, "val_acc": 0.6, "test_acc": 0.45},
        ]
    )
    path = tmp_path / "baselines.csv"
    table.to_csv(path, index=False)
    scores = study.baseline_scores(path)
    assert scores["config"].tolist() == ["hed-bsds500 block1_pool grid2 features, svm-rbf tuned"]
    assert scores["value"].tolist() == [0.45]


def test_training_table_says_whether_a_run_still_improved_at_its_end():
    history = pd.DataFrame(
        {
            "experiment": "e",
            "run": ["a-seed1"] * 5 + ["b-seed1"] * 5,
            "epoch": list(range(5)) * 2,
            "val_city_accuracy": [0.1, 0.5, 0.4, 0.45, 0.3] + [0.1, 0.2, 0.3, 0.4, 0.6],
        }
    )
    table = study.training_table(history, last=3).set_index("config")
    assert table.loc["a", "best_epoch"] == 2 and table.loc["a", "gain_last"] == 0  # stopped improving
    assert table.loc["b", "best_epoch"] == 5 and table.loc["b", "gain_last"] == pytest.approx(0.4)  # still improving
    assert table.loc["b", "seed"] == 1 and table.loc["b", "epochs"] == 5


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory):
    """Notebook 03's and 04's calls on toy data: hed-bsds500 and random transfer over two seeds (random fed
    caffe-bvlc images), then hed-bsds500's runs continued one epoch; passes over a dataset counted."""
    import keras  # noqa: F401  (TensorFlow loaded before the monkeypatch, as in the notebooks)
    from conftest import make_toy_data

    from streetlib.training import cache
    from streetlib.training.config import ExecutionConfig, RunConfig

    root = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.setenv("STREETLIB_ROOT", str(root))
    sizes, extract = [], cache.extract_features

    def counted(frozen, datasets, *, size, **kwargs):
        sizes.append(size)
        return extract(frozen, datasets, size=size, **kwargs)

    mp.setattr(cache, "extract_features", counted)
    data = make_toy_data(per_class=6, size=32)
    config = RunConfig.preset(
        "transfer", image_size=32, epochs=1, batch_size=16, cut="block1_pool", head="conv", filters=8, augment=False
    )
    quiet = ExecutionConfig(verbose=0)
    common = {"seeds": [0, 1], "split_kwargs": {"test_size": 0.15, "val_size": 0.2}, "execution": quiet}
    try:
        transfer = study.run_transfer(
            data,
            config,
            sources=["hed-bsds500", "random"],
            experiment="03-pretrained",
            random_normalization="caffe-bvlc",
            **common,
        )
        after_transfer = list(sizes)
        continued = study.run_continued(
            data, sources=["hed-bsds500"], epochs=1, experiment="04-finetune", transfer_experiment="03-pretrained",
            **common,
        )  # fmt: skip
    finally:
        mp.undo()
    return root, data, transfer, continued, after_transfer, sizes


def test_transfer_runs_extract_a_pretrained_source_once_and_random_weights_once_a_seed(study_runs):
    _, data, transfer, _, after_transfer, _ = study_runs
    # hed-bsds500: one pass for both seeds; random: its own weights on each seed.
    assert after_transfer == [len(data)] * 3
    assert set(transfer["config_name"]) == {"hed-bsds500-transfer", "random-transfer"}
    rows = transfer[(transfer["metric"] == "accuracy") & transfer["class"].isna()]
    assert set(zip(rows["seed"], rows["subset"], strict=True)) == {(s, p) for s in (0, 1) for p in ("val", "test")}


def test_random_weights_get_the_normalisation_asked_for(study_runs):
    import json

    root, *_ = study_runs
    for seed in (0, 1):
        manifest = json.loads(
            (root / "hists" / "toy" / "03-pretrained" / f"random-transfer-seed{seed}.json").read_text()
        )
        assert manifest["config"]["normalization"] == "caffe-bvlc" and manifest["config"]["weights"] == "random"


def test_figures_are_drawn_for_the_first_seed_only(study_runs):
    root, *_ = study_runs
    figs = root / "figs" / "toy" / "03-pretrained"
    assert (figs / "hed-bsds500-transfer-seed0.best.test.confusion-city.png").is_file()
    assert not list(figs.glob("*-seed1.*"))


def test_continued_runs_start_from_each_seeds_best_transfer_model_and_share_one_extraction(study_runs):
    import json

    root, data, _, continued, after_transfer, sizes = study_runs
    assert sizes[len(after_transfer) :] == [len(data)]  # one pass for both seeds
    assert set(continued["config_name"]) == {study.continued_config("hed-bsds500")}
    for seed in (0, 1):
        manifest = json.loads(
            (root / "hists" / "toy" / "04-finetune" / f"hed-bsds500-transfer-continued-seed{seed}.json").read_text()
        )
        record = manifest["config"]
        assert record["init_from"].endswith(f"03-pretrained/hed-bsds500-transfer-seed{seed}.best.keras")
        assert record["phase"] == "transfer" and record["epochs"] == 1 and record["seed"] == seed
        assert record["cut"] == "block1_pool" and record["optimizer"]["name"] == "nadam"  # the transfer's recipe
    with pytest.raises(FileNotFoundError, match="No best transfer model for 'random'"):
        study.run_continued(
            data, sources=["random"], seeds=[0], epochs=1, experiment="x", transfer_experiment="nothing-here"
        )
