"""The study's questions as paired comparisons over split seeds, and what the design can resolve.

Every question compares two configurations ``a`` and ``b`` (CNN runs of notebooks 03 and 04, SVMs and floors of
notebook 02) on the split seeds both were run on: same seed, same split, so each seed gives one paired difference
``b - a`` per output. `compare` turns them into one `streetlib.evaluation.stats.family`: the corrected resampled t
(the resampled splits overlap, `split_overlap`), Holm's correction over every question and output the notebook asks,
the equivalence test with the margin stated beforehand, and the three verdicts of `streetlib.evaluation.stats`.
`power_table` is the design's resolution: the smallest difference the seeds run can resolve, and the seeds a
difference of the margin's size would need.

`question_pairs` names notebook 06's four questions and question 2's control; which SVM, floor and CNN stand for
their kind is chosen on the validation split, never on test. `side_by_side` and `plot_side_by_side` put every
configuration's scores next to each other.

Scores are tidy: columns family, config, seed, output, value (`streetlib.experiments.study.cnn_scores` and
`streetlib.experiments.study.baseline_scores`).
"""

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from streetlib import figures
from streetlib.classes import OUTPUTS
from streetlib.data.splits import make_splits
from streetlib.evaluation import stats
from streetlib.experiments import study

# The margin within which two accuracies count as equivalent, fixed before any test split was read (issue #24).
EQUIVALENCE_MARGIN = 0.03

QUESTIONS = (
    "1. does the starting point matter? (transfer)",
    "2. does fine-tuning beat transfer?",
    "2b. does fine-tuning beat transfer trained as many epochs more?",
    "3. do CNNs beat SVMs on deep features?",
    "4. what does the CNN add over a floor baseline?",
)
# Question -> the family prefix (`study.baseline_scores`) of the baselines it chooses the best of on validation.
_BASELINE_QUESTIONS = {QUESTIONS[3]: "SVM on deep features", QUESTIONS[4]: "floor"}

# The most split seeds `power_table` considers a design could run.
MOST_SEEDS = 200

COLUMNS = ["question", "output", "a", "b", "n", "mean_a", "mean_b", "difference", "std", "low", "high", "p", "p_holm",
           "margin", "p_equivalence", "p_equivalence_holm", "overlap", "verdict"]  # fmt: skip
# What depends on which questions are asked together (Holm's family): notebook 06 asks every question as one.
FAMILY_COLUMNS = ["p_holm", "p_equivalence_holm", "verdict"]
POWER_COLUMNS = ["question", "output", "n", "std", "tests", "detectable", "margin", "seeds_needed"]


def _distinct(split, subset):
    """Distinct images of one subset of a split: identical images, kept together by `make_split`, count once."""
    members = set(split[subset].tolist())
    return len(members) - sum(len(group) - 1 for group in split.duplicates if group[0] in members)


def split_overlap(data, seeds, **split_kwargs):
    """The overlap ``n_test / n_train`` of the resampled splits of ``data`` for ``seeds`` (`stats.overlap`), from the
    saved splits (made if missing, as every notebook makes them); 0 when the splits share no image (seeds drawing
    from distinct replicates of a synthetic dataset, `streetlib.data.splits.pool_of`): their differences are then
    independent, and the corrected t is the ordinary paired t.

    The corrected resampled t assumes one design: every split has the same sizes. `make_split` sizes each class
    alike for every seed; identical images are kept together, so a subset's image count can move by a few between
    seeds while its count of distinct images cannot: the sizes compared are the distinct ones.

    Args:
        data: `StreetData`.
        seeds: list of int split seeds (at least one).
        **split_kwargs: `streetlib.data.splits.make_split` arguments (test_size, val_size, directory).

    Returns:
        float >= 0.

    Raises:
        ValueError: no seed, or splits of different sizes (naming each seed's), which cannot be one design.
    """
    if not len(seeds):
        raise ValueError("No split seeds: pass the seeds the compared runs were trained on.")
    splits = make_splits(data, seeds=seeds, **split_kwargs)
    sizes = {split.seed: (_distinct(split, "train"), _distinct(split, "test")) for split in splits}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"seed {seed}: {train} train / {test} test" for seed, (train, test) in sizes.items())
        raise ValueError(
            f"The splits of {data.name!r} differ in size ({listed}): the corrected t needs resampled splits of one "
            "design. Compare runs whose splits were made from the same data with the same test_size and val_size."
        )
    pools = [split.pool for split in splits]
    if len(pools) > 1 and len(np.unique(np.concatenate(pools))) == sum(len(pool) for pool in pools):
        return 0.0
    return stats.overlap(*next(iter(sizes.values())))


def question_pairs(val_scores, *, headline, pretrained_source, finetune_from):
    """Notebook 06's four questions and question 2's control as (question, a, b) pairs, ``b - a`` compared.

    1. ``random-transfer`` vs ``<pretrained_source>-transfer``: does the starting point matter?
    2. ``<pretrained_source>-transfer`` vs its fine-tuned runs: does fine-tuning beat transfer?
    2b. its control: ``<pretrained_source>-transfer-continued`` (the transfer runs trained as many epochs more with the
       backbone frozen, notebook 04's ``continued_control``) vs the fine-tuned runs, so that a gain of fine-tuning is
       not the extra epochs of its head;
    3. the best SVM on deep features vs the headline CNN;
    4. the best floor (no network) vs the headline CNN.

    The best SVM and floor are those with the best mean validation city accuracy (`study.best_config`).

    Args:
        val_scores: tidy *validation* scores of the CNN runs and, for questions 3 and 4, the baselines.
        headline: str, the headline CNN's configuration (`study.headline`, chosen on validation).
        pretrained_source: str, the weight source of questions 1 and 2 (e.g. 'places365').
        finetune_from: str or None, notebook 04's ``finetune_from`` (None: every layer was fine-tuned).

    Returns:
        (pairs, skipped): the list of (question, a, b) whose two configurations have runs, and a list of str, one per
        question that cannot be asked here, saying what is missing.
    """
    transfer = study.transfer_config(pretrained_source)
    finetune = study.finetune_config(pretrained_source, finetune_from)
    pairs = [
        (QUESTIONS[0], study.transfer_config("random"), transfer),
        (QUESTIONS[1], transfer, finetune),
        (QUESTIONS[2], study.continued_config(pretrained_source), finetune),
    ]
    skipped = []
    for question, family in _BASELINE_QUESTIONS.items():
        kind = val_scores[val_scores["family"].str.startswith(family)]
        if kind.empty:
            skipped.append(f"{question}: skipped, no {family} results (notebook 02)")
        else:
            pairs.append((question, study.best_config(kind)[0], headline))
    present = set(val_scores["config"])
    asked = []
    for question, a, b in pairs:
        missing = [c for c in (a, b) if c not in present]
        if missing:
            skipped.append(f"{question}: skipped, no runs of {missing}")
        else:
            asked.append((question, a, b))
    return asked, skipped


def compare(scores, pairs, *, overlap, margin=EQUIVALENCE_MARGIN, alpha=0.05):
    """Every pair on every output, paired by split seed, as ONE family: Holm's correction covers them all.

    Args:
        scores: tidy *test* scores (columns family, config, seed, output, value).
        pairs: list of (question, a, b): the configuration names compared as ``b - a``.
        overlap: float >= 0, ``n_test / n_train`` of the splits the seeds made (`split_overlap`).
        margin: float > 0, the equivalence margin in accuracy. Default 0.03, fixed before test was read.
        alpha: float in (0, 1), the family-wise level. Default 0.05.

    Returns:
        pandas DataFrame, one row per pair and output (`COLUMNS`): question, output, a, b, n (seeds both share),
        mean_a, mean_b (over those seeds), difference (mean of ``b - a``), std (of the differences), low and high
        (the corrected ``1 - alpha`` interval), p and p_holm (difference = 0), margin, p_equivalence and
        p_equivalence_holm (TOST), overlap, verdict (`streetlib.evaluation.stats.verdict`).

    Raises:
        ValueError: a configuration of a pair has no scores.
    """
    found = set(scores["config"])
    rows = []
    for question, a, b in pairs:
        missing = [c for c in (a, b) if c not in found]
        if missing:
            raise ValueError(f"No scores for configuration(s) {missing} ({question}). Found: {sorted(found)}")
        for output in OUTPUTS:
            part = scores[(scores["output"] == output) & scores["config"].isin([a, b])]
            wide = part.pivot_table(index="seed", columns="config", values="value").reindex(columns=[a, b]).dropna()
            row = stats.compare(wide[b] - wide[a], a=a, b=b, margin=margin, overlap=overlap, alpha=alpha)
            means = {"mean_a": float(wide[a].mean()), "mean_b": float(wide[b].mean())}
            rows.append({"question": question, "output": output, **means, **row})
    return stats.family(rows, alpha=alpha).reindex(columns=COLUMNS)


def paired_differences(scores, pairs, *, overlap, margin=EQUIVALENCE_MARGIN, alpha=0.05):
    """`compare`'s table without what depends on the family (`FAMILY_COLUMNS`): each pair's difference, corrected
    interval and unadjusted p-values. For a notebook that asks part of the study's questions (03, 04): its own Holm
    family would give a question a second verdict beside notebook 06's, which asks them all as one family.

    Args and raises: as `compare`.

    Returns:
        pandas DataFrame, `COLUMNS` less `FAMILY_COLUMNS`.
    """
    table = compare(scores, pairs, overlap=overlap, margin=margin, alpha=alpha)
    return table.drop(columns=FAMILY_COLUMNS)


def power_table(comparisons, *, alpha=0.05, power=0.8):
    """What the design can resolve, per question and output of `compare`'s table.

    Args:
        comparisons: the DataFrame of `compare` (its n, std, overlap and margin columns are read).
        alpha: float, the family-wise level. Default 0.05.
        power: float, the chance of resolving a true difference of the size given. Default 0.8.

    Returns:
        pandas DataFrame (`POWER_COLUMNS`): question, output, n (seeds run), std (seed spread of the
        differences), tests (the family's size: the questions x outputs that could be asked), detectable
        (`stats.detectable_difference` at n seeds: the smallest difference this design resolves), margin,
        seeds_needed (`stats.seeds_needed` for a difference of the margin's size; missing when no number up to
        `MOST_SEEDS` suffices). Rows with fewer than 2 seeds have no spread, hence neither of the last two.
    """
    tests = int(comparisons["p"].notna().sum())
    rows = []
    for r in comparisons.itertuples(index=False):
        detectable, needed = np.nan, None
        if r.n >= 2 and not np.isnan(r.std):
            kwargs = {"overlap": r.overlap, "alpha": alpha, "power": power, "tests": tests}
            detectable = stats.detectable_difference(r.std, r.n, **kwargs)
            needed = stats.seeds_needed(r.std, r.margin, most=MOST_SEEDS, **kwargs)
        rows.append(
            {
                "question": r.question,
                "output": r.output,
                "n": r.n,
                "std": r.std,
                "tests": tests,
                "detectable": detectable,
                "margin": r.margin,
                "seeds_needed": needed,
            }
        )
    return pd.DataFrame(rows, columns=POWER_COLUMNS).astype({"seeds_needed": "Int64"})


def power_findings(table):
    """`power_table` in words, one line per question and output: the smallest difference the design resolves."""
    lines = []
    for r in table.itertuples(index=False):
        if np.isnan(r.detectable):
            lines.append(f"{r.question} ({r.output}): {r.n} seed(s), too few to measure a spread.")
            continue
        needed = f"no number up to {MOST_SEEDS} does" if pd.isna(r.seeds_needed) else f"{r.seeds_needed} seeds would"
        lines.append(
            f"{r.question} ({r.output}): differences spread {r.std:.3f} over {r.n} seeds; this design resolves "
            f"{r.detectable:.3f} or more (Holm over {r.tests} tests); to resolve {r.margin:g}, {needed}."
        )
    return lines


def side_by_side(scores):
    """Mean, std and number of seeds per family, config and output, one column pair per output."""
    summary = scores.groupby(["family", "config", "output"], sort=False)["value"].agg(["mean", "std", "count"])
    wide = summary.unstack("output")
    wide.columns = [f"{output} {stat}" for stat, output in wide.columns]
    ordered = [f"{o} {s}" for o in OUTPUTS for s in ("mean", "std")] + [f"{OUTPUTS[-1]} count"]
    return wide[ordered].rename(columns={f"{OUTPUTS[-1]} count": "seeds"})


@figures.styled
def plot_side_by_side(scores, *, data_label, reference=None):
    """Test accuracy per configuration (mean and seed spread, seeds as dots), one panel per output, with the
    original study's numbers (`study.ORIGINAL_RESULTS`) as reference lines when ``reference`` is given. Returns the
    figure."""
    configs = scores[["family", "config"]].drop_duplicates().reset_index(drop=True)
    labels = [f"{f}: {c}" for f, c in configs.itertuples(index=False)]
    colors = ["#4c72b0" if family.startswith("CNN") else "#dd8452" for family in configs["family"]]
    fig = Figure(figsize=(13, 0.4 * len(labels) + 2))
    axes = fig.subplots(1, len(OUTPUTS), sharey=True)
    for ax, output in zip(axes, OUTPUTS, strict=True):
        rows = scores[scores["output"] == output]
        groups = [
            rows.loc[(rows["family"] == family) & (rows["config"] == config), "value"].to_numpy()
            for family, config in configs.itertuples(index=False)
        ]
        figures.draw_seed_bars(ax, groups, labels=labels, colors=colors)
        if reference is not None:
            for _, row in reference.iterrows():
                ax.axvline(row[output], linestyle=":", linewidth=0.8, color="gray")
                ax.text(row[output], -0.6, row["run"], rotation=90, fontsize=5, va="top", color="gray")
        ax.tick_params(axis="y", labelsize=7)
        ax.set_xlabel(f"test {output} accuracy (mean ± std over split seeds; dots: seeds)")
    fig.suptitle(
        figures.title(
            "all results side by side", data_label=data_label, weights_label="per configuration (in the labels)"
        )
        + ("\ndotted: the original study on Street10 (its own splits)" if reference is not None else "")
    )
    fig.tight_layout()
    return fig
