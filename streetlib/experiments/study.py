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
from pathlib import Path

import keras
import pandas as pd
from matplotlib.figure import Figure

from streetlib import figures
from streetlib.classes import OUTPUTS
from streetlib.evaluation import evaluate
from streetlib.models.weights import WEIGHT_SOURCES, WeightsDownloadError, check_weights, fetch
from streetlib.runs import RunId, RunLayout, with_variant
from streetlib.training import train
from streetlib.training.cache import FeatureStore
from streetlib.training.config import ARCHITECTURE, PHASES, ExecutionConfig, RunConfig


def transfer_config(source, variant=""):
    """The configuration name of the transfer runs from weight source ``source``: ``<source>-transfer``, plus
    ``-<variant>`` for a variant (see `streetlib.runs.with_variant`)."""
    return with_variant(f"{source}-transfer", variant)


def continued_config(source, variant=""):
    """The configuration name of ``source``'s transfer runs continued from their best weights (`run_continued`):
    ``<source>-transfer-continued``, plus ``-<variant>`` for a variant."""
    return with_variant(f"{source}-transfer-continued", variant)


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
        check_weights(source)
        if WEIGHT_SOURCES.get(source) is not None and WEIGHT_SOURCES[source].url:
            try:
                fetch(source)
            except WeightsDownloadError as err:
                missing[source] = str(err)
                continue
        available.append(source)
    return available, missing


def _evaluate_seeds(data, results, *, experiment, config_name, split_kwargs=None):
    """Score each seed's best checkpoint on the validation split (rows only: what configurations are chosen on)
    and on the test split (rows; figures for the first seed only: the others' would be the same figures again, and
    drawing them took a few seconds a run)."""
    from streetlib.data.splits import make_split

    layout, frames = RunLayout(dataset=data.name), []
    for i, (seed, result) in enumerate(results.items()):
        split = make_split(data, seed=seed, **(split_kwargs or {}))
        run = RunId(experiment, config_name, seed)
        model = keras.models.load_model(layout.model(run, "best"), safe_mode=True, compile=False)
        record = result.manifest["config"]
        scores = evaluate.score_run(model, data, split, normalization=record["normalization"], subset="val")
        label = {"dataset": data.label, "weights": record["weights_label"]}
        val = evaluate.eval_rows(scores, **label, run=run, checkpoint="best", subset="val")
        evaluate.append_evals(val, layout.evals(run))
        if i == 0:
            test = evaluate.evaluate_run(model, data, split, run=run, checkpoint="best", subset="test", layout=layout)
        else:
            scores = evaluate.score_run(model, data, split, normalization=record["normalization"], subset="test")
            test = evaluate.eval_rows(scores, **label, run=run, checkpoint="best", subset="test")
            evaluate.append_evals(test, layout.evals(run))
        frames += [val, test]
        del result.model
    return frames


def run_transfer(
    data,
    config,
    *,
    sources,
    seeds,
    experiment,
    variant="",
    scratch_epochs=0,
    random_normalization=None,
    split_kwargs=None,
    execution=None,
):
    """Transfer learning from each weight source, over split seeds, then evaluation.

    ``random`` as a source means a frozen random backbone (the floor of what features alone give), drawn anew for
    each seed. With ``scratch_epochs`` > 0, a ``scratch`` run (random init, everything trains: the original's
    "random" arm) is added, with ``config``'s other settings. Every configuration's seeds share one
    `streetlib.training.cache.FeatureStore`: a pretrained backbone is run over the dataset once for all of them.

    Args:
        data: `StreetData`.
        config: `RunConfig` of the transfer runs (e.g. ``RunConfig.preset("transfer", epochs=30)``);
            each source replaces its ``weights``.
        sources: list of weight sources, all available (see `available_sources`).
        seeds: list of int split seeds.
        experiment: str, the experiment name (folder under hists/, models/, figs/).
        variant: str added to the configuration names (see `transfer_config`), or '' for none.
        scratch_epochs: int, epochs of the from-scratch run; 0 skips it.
        random_normalization: None (default: random weights get their own normalisation, 'samplewise', as in the
            original) or a `streetlib.data.pipeline.NORMALIZATIONS` mode for the ``random`` source (and the scratch
            run): pass the pretrained source's (e.g. 'caffe-bvlc' for hed-bsds500 and places365) so that the two arms
            of a comparison differ in their weights alone.
        split_kwargs: dict of `make_split` arguments.
        execution: `streetlib.training.config.ExecutionConfig` (strategy, verbosity, ...). Runs that already
            finished with the same configuration are always reused (``reuse=True``).

    Returns:
        DataFrame of every evaluation row (see `streetlib.evaluation.evaluate.evaluate_run`).
    """
    _check_phase(config, "transfer")
    # Every configuration is made (and checked) before the first run trains.
    random = {"normalization": random_normalization}
    configs = {
        transfer_config(source, variant): config.replace(weights=source, **(random if source == "random" else {}))
        for source in sources
    }
    if scratch_epochs:
        scratch = {**PHASES["scratch"], "phase": "scratch", "epochs": scratch_epochs}
        configs[with_variant("random-scratch", variant)] = config.replace(**scratch, **random)
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
    configs, init = {}, {}
    for source in sources:
        name = finetune_config(source, config.frozen_through, variant)
        init[name], transfer = _transfer_runs(data, source, seeds, transfer_experiment, transfer_variant)
        configs[name] = config.replace(weights=source, **{f: getattr(transfer, f) for f in ARCHITECTURE})
    return _run_configs(
        data, configs, seeds=seeds, experiment=experiment, split_kwargs=split_kwargs, execution=execution, init=init
    )


def run_continued(
    data,
    *,
    sources,
    seeds,
    epochs,
    experiment,
    transfer_experiment,
    variant="",
    transfer_variant="",
    split_kwargs=None,
    execution=None,
):
    """The control of "does fine-tuning beat transfer?": each source's transfer runs (per seed) trained ``epochs``
    more from their best weights with their own recipe (backbone frozen, their optimiser, learning rate, batch size
    and head), then evaluated. Fine-tuning adds ``epochs`` of training to a transfer run; comparing it with this run
    of as many epochs separates what unfreezing the backbone adds from what more training of the head adds.

    The runs are named `continued_config` (``<source>-transfer-continued``); the transfer's configuration is read
    from its manifest, its seed from each run's split, and its optimiser state starts afresh, as a fine-tune's does.

    Args:
        epochs: int >= 1, the epochs to add: the fine-tuning runs' (notebook 04's ``epochs``).
        Other arguments as in `run_finetune`.

    Returns:
        DataFrame of every evaluation row.
    """
    configs, init = {}, {}
    for source in sources:
        name = continued_config(source, variant)
        init[name], transfer = _transfer_runs(data, source, seeds, transfer_experiment, transfer_variant)
        configs[name] = transfer.replace(epochs=epochs)
    return _run_configs(
        data, configs, seeds=seeds, experiment=experiment, split_kwargs=split_kwargs, execution=execution, init=init
    )


def _transfer_runs(data, source, seeds, experiment, variant):
    """The best models of ``source``'s transfer runs in ``experiment`` and their configuration: (dict seed -> model
    path, `RunConfig` of the first seed's run). Raises FileNotFoundError naming the missing models."""
    layout = RunLayout(dataset=data.name)
    runs = {s: RunId(experiment, transfer_config(source, variant), s) for s in seeds}
    paths = {s: layout.model(run, "best") for s, run in runs.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"No best transfer model for {source!r}: {missing}. Run the transfer phase first (notebook 03)."
        )
    return paths, RunConfig.from_manifest(json.loads(layout.manifest(runs[seeds[0]]).read_text())["config"])


def _check_phase(config, phase):
    if config.phase != phase:
        raise ValueError(f"Expected a config of phase={phase!r}. Received: phase={config.phase!r}")


def _run_configs(data, configs, *, seeds, experiment, split_kwargs, execution, init=None):
    """Train (or reuse) each configuration over the seeds and evaluate its checkpoints. Returns a DataFrame."""
    execution = dataclasses.replace(execution or ExecutionConfig(), reuse=True)
    store = FeatureStore(execution.max_cache_bytes)
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
            store=store,
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
            # A run's history has its manifest beside it; evaluations and tables (training.csv) do not.
            if path.name.endswith(".eval.csv") or not path.with_suffix(".json").is_file():
                continue
            frame = train.read_history(path).reset_index()
            frame.insert(0, "run", path.stem)
            frame.insert(0, "experiment", experiment)
            frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"No histories under {layout.hists_dir} for experiments {list(experiments)}.")
    return pd.concat(frames, ignore_index=True)


def training_table(history, *, last=3, metric="val_city_accuracy"):
    """What each run's validation history says about its length: did it stop improving before it ended?

    Args:
        history: `histories` of some experiments.
        last: int >= 1, the final epochs examined. Default 3.
        metric: str, a validation column of the histories. Default 'val_city_accuracy' (what the best checkpoint is
            chosen on).

    Returns:
        pandas DataFrame, one row per run: experiment, run, config, seed, epochs (trained), best_epoch (1-based, of
        the best ``metric``), best (its value), gain_last (the best minus the best before the final ``last`` epochs:
        0 when those epochs added nothing; NaN for a run of ``last`` epochs or fewer).
    """
    rows = []
    for (experiment, run), epochs in history.groupby(["experiment", "run"], sort=False):
        values = epochs.sort_values("epoch")[metric].to_numpy()
        identity = RunId.from_name(experiment, run)
        rows.append(
            {
                "experiment": experiment,
                "run": run,
                "config": identity.config_name,
                "seed": identity.seed,
                "epochs": len(values),
                "best_epoch": int(values.argmax()) + 1,
                "best": float(values.max()),
                "gain_last": float(values.max() - values[:-last].max()) if len(values) > last else float("nan"),
            }
        )
    return pd.DataFrame(rows)


@figures.styled
def plot_learning_curves(history, *, output, data_label):
    """Validation accuracy of every run over epochs, for one output, on one figure. Returns the figure."""
    if output not in OUTPUTS:
        raise ValueError(f"Invalid `output`. Expected one of {OUTPUTS}. Received: output={output!r}")
    ax = Figure(figsize=(9, 5)).add_subplot()
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
    ax.figure.tight_layout()
    return ax.figure


# -- reading every result (notebook 06) ---------------------------------------------------------------------------

# The original study's test accuracies on Street10 (region, city; ``split_seed`` empty for the SVMs' own split), as
# published: the reference lines of notebook 06 and the source of every original number quoted in prose.
ORIGINAL_STUDY_CSV = Path(__file__).resolve().parent / "original-study.csv"
ORIGINAL_RESULTS = pd.read_csv(ORIGINAL_STUDY_CSV).dropna(subset=["region"])


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
    <classifier>``); rows on no network (``weights`` 'none', see `floors.FLOORS`) are family ``floor``
    (config ``<kind> (no network), <classifier>``).

    Args:
        path: the baselines CSV.
        classifier: str, the classifier whose rows are read. Default 'svm-rbf' (the original's).
        subset: 'test' (default) or 'val'.
    """
    if subset not in ("val", "test"):
        raise ValueError(f"Invalid `subset`. Expected 'val' or 'test'. Received: subset={subset!r}")
    table = pd.read_csv(path)
    # One configuration of each weight source and pooling: no augmented copies; the hyper-parameters searched on
    # validation when the grid searched them (a tuned classifier stands for its kind), else the defaults.
    table = table[(table["classifier"] == classifier) & (table["augment_copies"] == 0)]
    searched = table["search"].astype(bool)
    table = table[searched] if searched.any() else table
    if table.empty:
        raise ValueError(f"No {classifier!r} rows in {path}.")
    floor = table["weights"].astype(str) == "none"
    deep = table["weights"].astype(str) + " " + table["layer"].astype(str) + " " + table["pooling"].astype(str)
    config = deep.where(~floor, table["backbone"].astype(str) + " (no network)").where(floor, deep + " features") + (
        ", " + classifier + (" tuned" if searched.any() else "")
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
