"""The study's experiments, as the notebooks run them: running transfer and fine-tuning over split seeds, and
reading the runs back (scores per seed, the headline model chosen on validation, histories). The questions the runs
answer, paired over seeds, are `streetlib.experiments.questions`.

`run_transfer` and `run_finetune` run `streetlib.training.train.run_phase` over split seeds and evaluate the saved
checkpoints with `evaluation.evaluate`, so a notebook is parameters plus one call per step. A run that already
finished with the same parameters is reused, not trained again (``reuse=True``); one whose model files are missing,
as in a fresh clone of the committed demo results, is trained again with a warning.
"""

import dataclasses
import json

import keras
import pandas as pd

from streetlib import figures
from streetlib.classes import OUTPUTS
from streetlib.evaluation import evaluate
from streetlib.models import weights as weights_lib
from streetlib.runs import RunId, RunLayout, with_variant
from streetlib.training import train
from streetlib.training.config import ARCHITECTURE, PHASES, Execution, RunConfig


def transfer_config(source, variant=""):
    """The configuration name of the transfer runs from weight source ``source``: ``<source>-transfer``, plus
    ``-<variant>`` for a variant (see `streetlib.runs.with_variant`)."""
    return with_variant(f"{source}-transfer", variant)


def finetune_config(source, finetune_from, variant=""):
    """The configuration name of the runs fine-tuning ``source``'s transfer runs from the backbone layer
    ``finetune_from`` (e.g. 'block4_pool'): ``<source>-finetune-<block>``; ``<source>-finetune-all`` when
    ``finetune_from`` is None (every layer trains); plus ``-<variant>`` for a variant."""
    return with_variant(f"{source}-finetune-{'all' if finetune_from is None else finetune_from.split('_')[0]}", variant)


def available_sources(sources):
    """Split weight sources into those usable here and those that are not.

    Sources with a download (``imagenet``, ``places365``) are fetched into the Keras cache, or found there.

    Returns:
        (list of available names, dict name -> reason for each unavailable one).
    """
    available, missing = [], {}
    for source in sources:
        weights_lib.check_weights(source)
        if weights_lib.WEIGHT_SOURCES.get(source) is not None and weights_lib.WEIGHT_SOURCES[source].url:
            try:
                weights_lib.fetch(source)
            except weights_lib.WeightsDownloadError as err:
                missing[source] = str(err)
                continue
        available.append(source)
    return available, missing


def _evaluate_seeds(data, results, *, experiment, config_name, split_kwargs=None):
    """Score each seed's best checkpoint on the validation split (rows only: what configurations are chosen on)
    and on the test split (rows and figures)."""
    from streetlib.data.splits import make_split

    layout, frames = RunLayout(dataset=data.name), []
    for seed, result in results.items():
        split = make_split(data, seed=seed, **(split_kwargs or {}))
        run = RunId(experiment, config_name, seed)
        model = keras.models.load_model(layout.model(run, "best"), safe_mode=True, compile=False)
        record = result.manifest["config"]
        scores = evaluate.score_run(model, data, split, normalization=record["normalization"], subset="val")
        label = {"dataset": data.label, "weights": record["weights_label"]}
        val = evaluate.eval_rows(scores, **label, run=run, checkpoint="best", subset="val")
        evaluate.append_evals(val, layout.evals(run))
        test = evaluate.evaluate_run(model, data, split, run=run, checkpoint="best", subset="test", layout=layout)
        frames += [val, test]
        del result.model
    return frames


def run_transfer(
    data, config, *, sources, seeds, experiment, variant="", scratch_epochs=0, split_kwargs=None, execution=None
):
    """Transfer learning from each weight source, over split seeds, then evaluation.

    ``random`` as a source means a frozen random backbone (the floor of what features alone give). With
    ``scratch_epochs`` > 0, a ``scratch`` run (random init, everything trains: the original's "random" arm) is
    added, with ``config``'s other settings.

    Args:
        data: `StreetData`.
        config: `RunConfig` of the transfer runs (e.g. ``RunConfig.preset("transfer", epochs=30)``);
            each source replaces its ``weights``.
        sources: list of weight sources, all available (see `available_sources`).
        seeds: list of int split seeds.
        experiment: str, the experiment name (folder under hists/, models/, figs/).
        variant: str added to the configuration names (see `transfer_config`), or '' for none.
        scratch_epochs: int, epochs of the from-scratch run; 0 skips it.
        split_kwargs: dict of `make_split` arguments.
        execution: `streetlib.training.config.Execution` (strategy, verbosity, ...). Runs that already finished with the
            same configuration are always reused (``reuse=True``).

    Returns:
        DataFrame of every evaluation row (see `streetlib.evaluation.evaluate.evaluate_run`).
    """
    _check_phase(config, "transfer")
    # Every configuration is made (and checked) before the first run trains.
    configs = {transfer_config(source, variant): config.replace(weights=source) for source in sources}
    if scratch_epochs:
        scratch = {**PHASES["scratch"], "phase": "scratch", "epochs": scratch_epochs}
        configs[with_variant("random-scratch", variant)] = config.replace(**scratch)
    return _run_configs(
        data, configs, seeds=seeds, experiment=experiment, split_kwargs=split_kwargs, execution=execution
    )


def run_finetune(
    data,
    config,
    *,
    sources,
    seeds,
    experiment,
    transfer_experiment,
    variant="",
    transfer_variant="",
    split_kwargs=None,
    execution=None,
):
    """Fine-tune each source's best transfer model (per seed), then evaluate.

    The model's architecture and input (`config.ARCHITECTURE` fields: backbone, cut, head, image size,
    normalisation...) are those of the transfer runs, read from their manifests, so the two phases cannot disagree.

    Args:
        config: `streetlib.training.config.RunConfig` of the fine-tune runs, e.g. ``RunConfig.preset("finetune",
            frozen_through="block3_pool")`` ('block4_pool': block5 and the head train; 'block3_pool': block4 too;
            None: every layer trains). Its `ARCHITECTURE` fields are replaced by the transfer runs'.
        transfer_experiment: str, where `run_transfer` saved the models (configurations `transfer_config`).
        variant: str added to the configuration names of the fine-tune runs (see `finetune_config`), or ''.
        transfer_variant: str, the variant of the transfer runs fine-tuned (`run_transfer`'s ``variant``), or ''.
        Other arguments as in `run_transfer`.

    Returns:
        DataFrame of every evaluation row.
    """
    _check_phase(config, "finetune")
    layout = RunLayout(dataset=data.name)
    configs, init = {}, {}
    for source in sources:
        name = finetune_config(source, config.frozen_through, variant)
        runs = {s: RunId(transfer_experiment, transfer_config(source, transfer_variant), s) for s in seeds}
        init[name] = {s: layout.model(run, "best") for s, run in runs.items()}
        missing = [str(p) for p in init[name].values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"No best transfer model for {source!r}: {missing}. Run the transfer phase first (notebook 03)."
            )
        transfer = RunConfig.from_manifest(json.loads(layout.manifest(runs[seeds[0]]).read_text())["config"])
        configs[name] = config.replace(weights=source, **{f: getattr(transfer, f) for f in ARCHITECTURE})
    return _run_configs(
        data, configs, seeds=seeds, experiment=experiment, split_kwargs=split_kwargs, execution=execution, init=init
    )


def _check_phase(config, phase):
    if config.phase != phase:
        raise ValueError(f"Expected a config of phase={phase!r}. Received: phase={config.phase!r}")


def _run_configs(data, configs, *, seeds, experiment, split_kwargs, execution, init=None):
    """Train (or reuse) each configuration over the seeds and evaluate its checkpoints. Returns a DataFrame."""
    execution = dataclasses.replace(execution or Execution(), reuse=True)
    frames = []
    for name, config in configs.items():
        results = train.run_seeds(
            data,
            config,
            seeds=seeds,
            experiment=experiment,
            config_name=name,
            split_kwargs=split_kwargs,
            init_from=None if init is None else init[name],
            execution=execution,
        )
        frames += _evaluate_seeds(data, results, experiment=experiment, config_name=name, split_kwargs=split_kwargs)
    return pd.concat(frames, ignore_index=True)


def summary(frame, *, checkpoint="best", subset="test"):
    """Mean, spread and count over seeds of accuracy (both outputs) and top-3 city accuracy, per configuration.

    Returns:
        DataFrame indexed by config with columns ``<output> <metric>`` mean and std, and ``seeds``.
    """
    parts = {}
    for output, metric in (("region", "accuracy"), ("city", "accuracy"), ("city", "top3")):
        scores = evaluate.seed_scores(frame, metric=metric, output=output, checkpoint=checkpoint, subset=subset)
        spread = scores.groupby("config")["value"].agg(["mean", "std", "count"])
        parts[f"{output} {metric} mean"] = spread["mean"]
        parts[f"{output} {metric} std"] = spread["std"]
        parts["seeds"] = spread["count"]
    return pd.DataFrame(parts)


def histories(experiments, *, layout):
    """Every run's history of the given experiments in ``layout`` (one dataset's `RunLayout`), long format:
    experiment, run, epoch and the CSV's columns."""
    frames = []
    for experiment in experiments:
        for path in sorted(layout.hists(experiment).glob("*.csv")):
            if path.name.endswith(".eval.csv"):
                continue
            frame = train.read_history(path).reset_index()
            frame.insert(0, "run", path.stem)
            frame.insert(0, "experiment", experiment)
            frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"No histories under {layout.hists_dir} for experiments {list(experiments)}.")
    return pd.concat(frames, ignore_index=True)


def plot_learning_curves(history, *, output, data_label):
    """Validation accuracy of every run over epochs, for one output, on one figure. Returns the figure."""
    import matplotlib.pyplot as plt

    if output not in OUTPUTS:
        raise ValueError(f"Invalid `output`. Expected one of {OUTPUTS}. Received: output={output!r}")
    fig, ax = plt.subplots(figsize=(9, 5))
    for (experiment, run), runs in history.groupby(["experiment", "run"], sort=False):
        ax.plot(runs["epoch"] + 1, runs[f"val_{output}_accuracy"], label=f"{experiment}/{run}", linewidth=1)
    ax.set_xlabel("epoch (of each phase)")
    ax.set_ylabel(f"validation {output} accuracy")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(
        figures.title(
            f"learning curves, {output}", data_label=data_label, weights_label="all runs (weights in the run names)"
        )
    )
    fig.tight_layout()
    return fig


# -- reading every result (notebook 06) ---------------------------------------------------------------------------

# The original study's test accuracies on Street10 (its own splits; region, city), for reference lines only.
ORIGINAL_RESULTS = pd.DataFrame(
    [
        ("fine-tuned Places365, block5", 0.8290, 0.6010),
        ("fine-tuned ImageNet, block5", 0.8242, 0.5748),
        ("transfer Places365, avg", 0.8195, 0.5582),
        ("random init, from scratch", 0.7340, 0.3729),
        ("SVM on pooled Places365 features", 0.8118, 0.5288),
    ],
    columns=["run", "region", "city"],
)


def cnn_scores(experiments, *, layout, checkpoint="best", subset="test"):
    """Per-seed accuracy of every CNN run of the given experiments in ``layout`` (one dataset's `RunLayout`: only its
    runs are read), tidy: family, config, seed, output, value, experiment. ``subset`` is 'test' (default) or 'val'
    (what configurations are chosen on)."""
    frames = []
    for experiment in experiments:
        evals = evaluate.read_evals(experiment, layout=layout)
        for output in OUTPUTS:
            scores = evaluate.seed_scores(evals, output=output, checkpoint=checkpoint, subset=subset)
            frames.append(scores.assign(family=f"CNN ({experiment})", output=output, experiment=experiment))
    return pd.concat(frames, ignore_index=True)[["family", "config", "seed", "output", "value", "experiment"]]


def headline(experiments, *, layout, config=None):
    """The headline model: the CNN configuration with the best mean validation accuracy (see `best_config`).

    Args:
        experiments: list of experiment names whose runs compete.
        layout: `RunLayout` of the dataset whose runs compete (``RunLayout(dataset=...)``).
        config: str or None. A configuration name to use instead of choosing (it must exist).

    Returns:
        (experiment, config, ranked): str, str and the DataFrame of `best_config` (every configuration's mean
        validation accuracy per output, best first).
    """
    val = cnn_scores(experiments, subset="val", layout=layout)
    best, ranked = best_config(val)
    chosen = config or best
    where = val.loc[val["config"] == chosen, "experiment"].unique()
    if len(where) != 1:
        raise ValueError(
            f"Invalid `config`: {chosen!r} is in {len(where)} of the experiments {list(experiments)}. "
            f"Expected one of {list(ranked.index)}."
        )
    return where[0], chosen, ranked


def baseline_scores(path, *, classifier="svm-rbf", subset="test"):
    """Per-seed accuracy of the baselines in ``path`` (notebook 02's CSV), same columns as `cnn_scores`.

    Rows on deep features are family ``SVM on deep features`` (config ``<weights> <layer> <pooling> features,
    <classifier>``); rows on no network (``weights`` 'none', see `classifiers.FLOORS`) are family ``floor``
    (config ``<kind> (no network), <classifier>``).

    Args:
        path: the baselines CSV.
        classifier: str, the classifier whose rows are read. Default 'svm-rbf' (the original's).
        subset: 'test' (default) or 'val'.
    """
    if subset not in ("val", "test"):
        raise ValueError(f"Invalid `subset`. Expected 'val' or 'test'. Received: subset={subset!r}")
    table = pd.read_csv(path)
    # The plain configuration of each weight source and pooling: no augmented copies, no search.
    table = table[(table["classifier"] == classifier) & (table["augment_copies"] == 0) & ~table["search"].astype(bool)]
    if table.empty:
        raise ValueError(f"No {classifier!r} rows in {path}.")
    floor = table["weights"].astype(str) == "none"
    deep = table["weights"].astype(str) + " " + table["layer"].astype(str) + " " + table["pooling"].astype(str)
    config = deep.where(~floor, table["backbone"].astype(str) + " (no network)").where(floor, deep + " features") + (
        ", " + classifier
    )
    return pd.DataFrame(
        {
            "family": floor.map({True: "floor (02-baselines)", False: "SVM on deep features (02-baselines)"}),
            "config": config,
            "seed": table["seed"],
            "output": table["output"],
            "value": table[f"{subset}_acc"],
        }
    )


def best_config(scores, *, output="city"):
    """The configuration with the highest mean score over seeds on one output (ties: the other output decides).

    Args:
        scores: tidy scores (`cnn_scores` or `baseline_scores` columns) of the *validation* split: choosing on test
            would make the chosen model's test score optimistic.
        output: str, the output compared first. Default 'city'.

    Returns:
        (str config, pandas DataFrame of every configuration's mean per output, best first).
    """
    means = scores.groupby(["config", "output"])["value"].mean().unstack("output")
    other = [o for o in OUTPUTS if o != output]
    ranked = means.sort_values([output, *other], ascending=False)
    return ranked.index[0], ranked
