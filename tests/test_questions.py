"""The study's questions: which pairs notebook 06 asks, one family of paired comparisons over split seeds (Holm over
every question and output), the overlap of the resampled splits, and what the design can resolve."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import make_toy_data

from streetlib.data.splits import make_split
from streetlib.evaluation import stats
from streetlib.experiments import questions

SEEDS = (42, 43, 44, 45, 46, 47, 48, 49)


def _scores(values, *, family="CNN (03-pretrained)"):
    """Tidy scores from {config: {output: [one value per seed of SEEDS, in order]}}."""
    return pd.DataFrame(
        [
            {"family": family, "config": config, "seed": seed, "output": output, "value": value}
            for config, outputs in values.items()
            for output, per_seed in outputs.items()
            for seed, value in zip(SEEDS, per_seed, strict=True)
        ]
    )


def _flat(value):
    return [value] * len(SEEDS)


def _val_scores():
    """Validation scores of notebook 06's CNN runs (hed-bsds500 as the pretrained source) and notebook 02's
    baselines, where the best SVM and the best floor on validation are not the first listed."""
    cnn = _scores(
        {
            "random-transfer": {"city": _flat(0.3), "region": _flat(0.6)},
            "hed-bsds500-transfer": {"city": _flat(0.6), "region": _flat(0.8)},
            "hed-bsds500-transfer-continued": {"city": _flat(0.62), "region": _flat(0.8)},
            "hed-bsds500-finetune-all": {"city": _flat(0.7), "region": _flat(0.9)},
        }
    )
    svm = _scores(
        {
            "hed-bsds500 block1_pool avg features, svm-rbf": {"city": _flat(0.4), "region": _flat(0.7)},
            "hed-bsds500 block1_pool max features, svm-rbf": {"city": _flat(0.5), "region": _flat(0.7)},
        },
        family="SVM on deep features (02-baselines)",
    )
    floor = _scores(
        {
            "pixels (no network), svm-rbf": {"city": _flat(0.2), "region": _flat(0.5)},
            "colour-stats (no network), svm-rbf": {"city": _flat(0.25), "region": _flat(0.5)},
        },
        family="floor (02-baselines)",
    )
    return pd.concat([cnn, svm, floor], ignore_index=True)


def test_question_pairs_are_notebook_06s_questions_with_question_2s_control_chosen_on_validation():
    pairs, skipped = questions.question_pairs(
        _val_scores(), headline="hed-bsds500-finetune-all", pretrained_source="hed-bsds500", finetune_from=None
    )
    assert pairs == [
        (questions.QUESTIONS[0], "random-transfer", "hed-bsds500-transfer"),
        (questions.QUESTIONS[1], "hed-bsds500-transfer", "hed-bsds500-finetune-all"),
        (questions.QUESTIONS[2], "hed-bsds500-transfer-continued", "hed-bsds500-finetune-all"),
        (questions.QUESTIONS[3], "hed-bsds500 block1_pool max features, svm-rbf", "hed-bsds500-finetune-all"),
        (questions.QUESTIONS[4], "colour-stats (no network), svm-rbf", "hed-bsds500-finetune-all"),
    ]
    assert skipped == []


def test_question_pairs_skip_what_was_not_run_and_say_why():
    cnn_only = _val_scores()
    cnn_only = cnn_only[cnn_only["family"].str.startswith("CNN")]
    # Places365 was not run (offline), and fine-tuning started above block4_pool: questions 1 and 2 have no runs.
    pairs, skipped = questions.question_pairs(
        cnn_only, headline="hed-bsds500-transfer", pretrained_source="places365", finetune_from="block4_pool"
    )
    assert pairs == []
    assert skipped == [
        f"{questions.QUESTIONS[3]}: skipped, no SVM on deep features results (notebook 02)",
        f"{questions.QUESTIONS[4]}: skipped, no floor results (notebook 02)",
        f"{questions.QUESTIONS[0]}: skipped, no runs of ['places365-transfer']",
        f"{questions.QUESTIONS[1]}: skipped, no runs of ['places365-transfer', 'places365-finetune-block4']",
        f"{questions.QUESTIONS[2]}: skipped, no runs of ['places365-transfer-continued', 'places365-finetune-block4']",
    ]


# Differences b - a per seed: a clear gain, one within the margin, one too noisy to say either.
CLEAR = [0.10, 0.11, 0.09, 0.10, 0.12, 0.08, 0.10, 0.11]
SMALL = [0.002, -0.004, 0.001, 0.003, -0.002, 0.000, 0.004, -0.001]
NOISY = [0.15, -0.12, 0.05, -0.09, 0.11, -0.02, 0.08, -0.10]


def _test_scores():
    base = [0.50, 0.55, 0.60, 0.52, 0.58, 0.54, 0.56, 0.57]
    return _scores(
        {
            "a": {"city": base, "region": base},
            "b": {"city": list(np.add(base, CLEAR)), "region": list(np.add(base, SMALL))},
            "c": {"city": list(np.add(base, NOISY)), "region": list(np.add(base, CLEAR))},
        }
    )


def test_compare_pairs_by_seed_and_gives_the_three_verdicts():
    overlap = 0.13
    # Shuffled rows must pair by seed, not by position.
    table = questions.compare(_test_scores().sample(frac=1, random_state=0), [("q1", "a", "b")], overlap=overlap)
    assert list(table.columns) == questions.COLUMNS
    city, region = (table[table["output"] == o].iloc[0] for o in ("city", "region"))
    assert city["n"] == 8 and city["difference"] == pytest.approx(np.mean(CLEAR))
    assert city["mean_b"] - city["mean_a"] == pytest.approx(np.mean(CLEAR))
    assert city["verdict"] == "b higher"
    assert region["verdict"] == "equivalent within ±0.03" and region["margin"] == 0.03
    noisy = questions.compare(_test_scores(), [("q", "a", "c")], overlap=overlap)
    assert noisy.loc[noisy["output"] == "city", "verdict"].item() == "inconclusive"
    # The interval is the corrected resampled t's: wider than the plain paired t by sqrt((1/n + overlap) / (1/n)).
    plain = questions.compare(_test_scores(), [("q1", "a", "b")], overlap=0.0)
    widths = [(t["high"] - t["low"]).iloc[0] for t in (table, plain)]
    assert widths[0] / widths[1] == pytest.approx(math.sqrt((1 / 8 + overlap) * 8))


def test_holm_covers_every_question_and_output_of_the_notebook():
    pairs = [("q1", "a", "b"), ("q2", "a", "c")]
    table = questions.compare(_test_scores(), pairs, overlap=0.13)
    assert len(table) == 4  # two questions x two outputs: one family
    np.testing.assert_allclose(table["p_holm"], stats.holm(table["p"]))
    np.testing.assert_allclose(table["p_equivalence_holm"], stats.holm(table["p_equivalence"]))
    smallest = table["p"].idxmin()
    assert table.loc[smallest, "p_holm"] == pytest.approx(min(1.0, 4 * table.loc[smallest, "p"]))
    # Asked alone, question 1's p-values are adjusted for its two outputs only: asking more costs resolution.
    alone = questions.compare(_test_scores(), pairs[:1], overlap=0.13)
    assert (table.loc[table["question"] == "q1", "p_holm"].to_numpy() >= alone["p_holm"].to_numpy()).all()


def test_compare_names_a_configuration_without_scores():
    with pytest.raises(ValueError, match=r"No scores for configuration\(s\) \['z'\] \(q9\)\. Found: \['a', 'b', 'c'\]"):
        questions.compare(_test_scores(), [("q9", "a", "z")], overlap=0.1)


def test_compare_with_one_shared_seed_is_inconclusive_and_left_out_of_the_family():
    scores = _test_scores()
    scores = scores[(scores["config"] != "b") | (scores["seed"] == 42)]
    table = questions.compare(scores, [("q1", "a", "b"), ("q2", "a", "c")], overlap=0.1)
    one = table[table["question"] == "q1"]
    assert (one["n"] == 1).all() and (one["verdict"] == "inconclusive").all() and one["p"].isna().all()
    # The family is the two comparisons that could be asked: q2's smallest p is multiplied by 2, not 4.
    two = table[table["question"] == "q2"]
    assert two["p_holm"].min() == pytest.approx(min(1.0, 2 * two["p"].min()))


def test_power_table_gives_the_design_resolution_and_the_seeds_a_margin_needs():
    table = questions.compare(_test_scores(), [("q1", "a", "b"), ("q2", "a", "c")], overlap=0.13)
    power = questions.power_table(table)
    assert list(power.columns) == questions.POWER_COLUMNS
    assert (power["tests"] == 4).all()
    noisy = power[(power["question"] == "q2") & (power["output"] == "city")].iloc[0]
    assert noisy["std"] == pytest.approx(np.std(NOISY, ddof=1))
    assert noisy["detectable"] == pytest.approx(stats.detectable_difference(noisy["std"], 8, overlap=0.13, tests=4))
    # Its spread is far above the margin, and more seeds cannot beat the overlap's floor: no number suffices.
    assert noisy["detectable"] > 0.03 and pd.isna(noisy["seeds_needed"])
    clear = power[(power["question"] == "q1") & (power["output"] == "city")].iloc[0]
    needed = int(clear["seeds_needed"])  # the fewest seeds whose detectable difference is within the margin
    kwargs = {"overlap": 0.13, "tests": 4}
    assert stats.detectable_difference(clear["std"], needed, **kwargs) <= 0.03
    assert stats.detectable_difference(clear["std"], needed - 1, **kwargs) > 0.03
    lines = questions.power_findings(power)
    assert len(lines) == 4
    assert lines[0].startswith(f"q1 (region): differences spread {power['std'].iloc[0]:.3f} over 8 seeds")
    assert "no number up to 200 does" in lines[3] and f"to resolve 0.03, {needed} seeds would" in lines[1]
    # Nothing could be asked: an empty table with the same columns, no line.
    empty = questions.power_table(questions.compare(_test_scores(), [], overlap=0.13))
    assert list(empty.columns) == questions.POWER_COLUMNS and questions.power_findings(empty) == []


def test_split_overlap_is_n_test_over_n_train_of_the_saved_splits(tmp_path):
    data = make_toy_data()  # 6 images a city: 1 test, 1 validation, 4 training images each
    assert questions.split_overlap(data, [1, 2, 3], directory=tmp_path) == pytest.approx(10 / 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-seed1.json", "toy-seed2.json", "toy-seed3.json"]
    with pytest.raises(ValueError, match="No split seeds"):
        questions.split_overlap(data, [], directory=tmp_path)


def test_split_overlap_is_zero_for_seeds_of_distinct_replicates(tmp_path):
    data = make_toy_data(per_class=18)
    data.replicate = np.tile(np.repeat([0, 1, 2], 6), 10)  # three draws of 6 images a city
    # Seeds 3, 4, 5 use replicates 0, 1, 2: no image in common, independent differences.
    assert questions.split_overlap(data, [3, 4, 5], directory=tmp_path) == 0.0
    # Seeds 3 and 6 resample replicate 0: the corrected t's overlap again.
    assert questions.split_overlap(data, [3, 4, 6], directory=tmp_path) == pytest.approx(10 / 40)


def test_split_overlap_refuses_splits_of_different_sizes(tmp_path):
    data = make_toy_data()
    make_split(data, seed=2, directory=tmp_path)
    # A split file of another design: one training image moved to test.
    path = tmp_path / "toy-seed2.json"
    doc = json.loads(path.read_text())
    doc["hashes"]["test"].append(doc["hashes"]["train"].pop())
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"differ in size \(seed 1: 40 train / 10 test, seed 2: 39 train / 11 test\)"):
        questions.split_overlap(data, [1, 2], directory=tmp_path)


def test_split_overlap_counts_identical_images_once(tmp_path):
    data = make_toy_data()
    data.images[1] = data.images[0]  # two identical images of one city, kept together in every split
    splits = [make_split(data, seed=s, directory=tmp_path) for s in range(1, 9)]
    assert len({len(s.train) for s in splits}) == 2  # the pair lands in train for some seeds, not for others
    # Distinct images: the city has 5, so 3 train; 39 train and 10 test whatever the seed.
    assert questions.split_overlap(data, range(1, 9), directory=tmp_path) == pytest.approx(10 / 39)


def test_side_by_side_puts_every_configuration_in_a_row():
    table = questions.side_by_side(_test_scores())
    assert list(table.columns) == ["region mean", "region std", "city mean", "city std", "seeds"]
    row = table.loc[("CNN (03-pretrained)", "b")]
    assert row["city mean"] == pytest.approx(np.mean(_test_scores().query("config == 'b' and output == 'city'").value))
    assert row["seeds"] == 8


def test_the_side_by_side_figure_draws_each_configuration_s_mean_spread_and_seeds_in_the_shared_style():
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from streetlib import figures

    scores = _test_scores()
    before = plt.get_fignums()
    fig = questions.plot_side_by_side(scores, data_label="toy (synthetic demo data)")
    assert plt.get_fignums() == before  # a Figure of its own: no pyplot state to close
    region = fig.axes[0]
    assert [t.get_text() for t in region.get_yticklabels()] == [f"CNN (03-pretrained): {c}" for c in "abc"]
    bars = [p for p in region.patches if isinstance(p, Rectangle)]
    for bar, config in zip(bars, "abc", strict=True):
        values = scores[(scores["config"] == config) & (scores["output"] == "region")]["value"]
        assert bar.get_width() == pytest.approx(values.mean())
    dots = [line for line in region.lines if line.get_marker() == "."]
    assert [len(d.get_xdata()) for d in dots] == [8, 8, 8]
    assert region.xaxis.label.get_fontsize() == figures.STYLE["axes.labelsize"]
    assert "toy (synthetic demo data)" in fig._suptitle.get_text()


def test_paired_differences_are_compare_s_rows_without_what_the_family_decides():
    pairs = [("q1", "a", "b"), ("q2", "a", "c")]
    full = questions.compare(_test_scores(), pairs, overlap=0.1)
    # Asked alone, a pair's Holm p-value changes with the family; its difference, interval and raw p do not.
    alone = questions.compare(_test_scores(), pairs[:1], overlap=0.1)
    assert not np.allclose(alone["p_holm"], full["p_holm"].iloc[:2])
    part = questions.paired_differences(_test_scores(), pairs, overlap=0.1)
    assert list(part.columns) == [c for c in questions.COLUMNS if c not in questions.FAMILY_COLUMNS]
    pd.testing.assert_frame_equal(part, full.drop(columns=questions.FAMILY_COLUMNS))
