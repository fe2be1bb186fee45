"""The study's experiments, as the notebooks run them: which starting point (weight source) is best for transfer,
what fine-tuning adds, and all results side by side.

Each function runs `streetlib.train.run_phase` over split seeds and evaluates the saved checkpoints with
`streetlib.evaluate`, so a notebook is parameters plus one call per step. A run that already finished with the same
parameters is reused, not trained again (``reuse=True``); one whose model files are missing, as in a fresh clone of
the committed demo results, is trained again with a warning.
"""

import dataclasses

import pandas as pd

from streetlib import evaluate, figures, train
from streetlib import weights as weights_lib
from streetlib.classes import OUTPUTS
from streetlib.config import PHASES, Execution
from streetlib.runs import RunId, RunLayout


def transfer_config(source):
    """The configuration name of the transfer runs from weight source ``source``: ``<source>-transfer``."""
    return f"{source}-transfer"


def finetune_config(source, finetune_from):
    """The configuration name of the runs fine-tuning ``source``'s transfer runs from the backbone layer
    ``finetune_from`` (e.g. 'block4_pool'): ``<source>-finetune-<block>``."""
    return f"{source}-finetune-{finetune_from.split('_')[0]}"


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
    from streetlib.splits import make_split

    frames = []
    for seed, result in results.items():
        split = make_split(data, seed=seed, **(split_kwargs or {}))
        frames.append(evaluate.evaluate_checkpoints(data, split, run=RunId(experiment, config_name, seed)))
        del result.model
    return frames


def run_transfer(data, config, *, sources, seeds, experiment, scratch_epochs=0, split_kwargs=None, execution=None):
    """Transfer learning from each weight source, over split seeds, then evaluation.

    ``random`` as a source means a frozen random backbone (the floor of what features alone give). With
    ``scratch_epochs`` > 0, a ``scratch`` run (random init, everything trains: the original's "random" arm) is
    added, with ``config``'s other settings.

    Args:
        data: `StreetData`.
        config: `streetlib.config.RunConfig` of the transfer runs (e.g. ``RunConfig.preset("transfer", epochs=30)``);
            each source replaces its ``weights``.
        sources: list of weight sources, all available (see `available_sources`).
        seeds: list of int split seeds.
        experiment: str, the experiment name (folder under hists/, models/, figs/).
        scratch_epochs: int, epochs of the from-scratch run; 0 skips it.
        split_kwargs: dict of `make_split` arguments.
        execution: `streetlib.config.Execution` (strategy, verbosity, ...). Runs that already finished with the
            same configuration are always reused (``reuse=True``).

    Returns:
        DataFrame of every evaluation row (see `streetlib.evaluate.evaluate_run`).
    """
    _check_phase(config, "transfer")
    # Every configuration is made (and checked) before the first run trains.
    configs = {transfer_config(source): config.replace(weights=source) for source in sources}
    if scratch_epochs:
        scratch = {**PHASES["scratch"], "phase": "scratch", "epochs": scratch_epochs}
        configs["random-scratch"] = config.replace(**scratch)
    return _run_configs(
        data, configs, seeds=seeds, experiment=experiment, split_kwargs=split_kwargs, execution=execution
    )


def run_finetune(data, config, *, sources, seeds, experiment, transfer_experiment, split_kwargs=None, execution=None):
    """Fine-tune each source's best transfer model (per seed), then evaluate.

    Args:
        config: `streetlib.config.RunConfig` of the fine-tune runs, e.g. ``RunConfig.preset("finetune",
            frozen_through="block3_pool")`` ('block4_pool': block5 and the head train; 'block3_pool': block4 too).
        transfer_experiment: str, where `run_transfer` saved the models (configurations `transfer_config`).
        Other arguments as in `run_transfer`.

    Returns:
        DataFrame of every evaluation row.
    """
    _check_phase(config, "finetune")
    layout = RunLayout()
    configs, init = {}, {}
    for source in sources:
        name = finetune_config(source, config.frozen_through)
        configs[name] = config.replace(weights=source)
        init[name] = {s: layout.model(RunId(transfer_experiment, transfer_config(source), s), "best") for s in seeds}
        missing = [str(p) for p in init[name].values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"No best transfer model for {source!r}: {missing}. Run the transfer phase first (notebook 03)."
            )
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
        stats = evaluate.compare_seeds(frame, metric=metric, output=output, checkpoint=checkpoint, subset=subset)
        parts[f"{output} {metric} mean"] = stats["mean"]
        parts[f"{output} {metric} std"] = stats["std"]
        parts["seeds"] = stats["n"]
    return pd.DataFrame(parts)


def histories(experiments, *, hists_dir=None):
    """Every run's history of the given experiments, long format: experiment, run, epoch and the CSV's columns."""
    layout = RunLayout(hists_dir=hists_dir)
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


# -- all results side by side (notebook 06) -------------------------------------------------------------------------

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


def cnn_scores(experiments, *, checkpoint="best", subset="test", hists_dir=None):
    """Per-seed test accuracy of every CNN run of the given experiments, tidy: family, config, seed, output, value."""
    frames = []
    for experiment in experiments:
        evals = evaluate.read_evals(experiment, hists_dir=hists_dir)
        for output in OUTPUTS:
            scores = evaluate.seed_scores(evals, output=output, checkpoint=checkpoint, subset=subset)
            frames.append(scores.assign(family=f"CNN ({experiment})", output=output))
    return pd.concat(frames, ignore_index=True)[["family", "config", "seed", "output", "value"]]


def baseline_scores(path, *, classifier="svm-rbf"):
    """Per-seed test accuracy of the baselines in ``path`` (notebook 02's CSV), same columns as `cnn_scores`."""
    table = pd.read_csv(path)
    # The plain configuration of each weight source and pooling: no augmented copies, no search.
    table = table[(table["classifier"] == classifier) & (table["augment_copies"] == 0) & ~table["search"].astype(bool)]
    if table.empty:
        raise ValueError(f"No {classifier!r} rows in {path}.")
    config = table["weights"].astype(str) + " " + table["pooling"].astype(str) + " features, " + classifier
    return pd.DataFrame(
        {
            "family": "baseline (02-baselines)",
            "config": config,
            "seed": table["seed"],
            "output": table["output"],
            "value": table["test_acc"],
        }
    )


def side_by_side(scores):
    """Mean, std and number of seeds per family, config and output, one column pair per output."""
    stats = scores.groupby(["family", "config", "output"], sort=False)["value"].agg(["mean", "std", "count"])
    wide = stats.unstack("output")
    wide.columns = [f"{output} {stat}" for stat, output in wide.columns]
    ordered = [f"{o} {s}" for o in OUTPUTS for s in ("mean", "std")] + [f"{OUTPUTS[-1]} count"]
    return wide[ordered].rename(columns={f"{OUTPUTS[-1]} count": "seeds"})


def plot_side_by_side(scores, *, data_label, reference=None):
    """Test accuracy per configuration (mean and seed spread, seeds as dots), one panel per output, with the
    original study's numbers as reference lines when ``reference`` is given. Returns the figure."""
    import matplotlib.pyplot as plt

    configs = scores[["family", "config"]].drop_duplicates().reset_index(drop=True)
    labels = [f"{f}: {c}" for f, c in configs.itertuples(index=False)]
    fig, axes = plt.subplots(1, len(OUTPUTS), figsize=(13, 0.4 * len(labels) + 2), sharey=True)
    for ax, output in zip(axes, OUTPUTS, strict=True):
        for i, (family, config) in enumerate(configs.itertuples(index=False)):
            values = scores.loc[
                (scores["family"] == family) & (scores["config"] == config) & (scores["output"] == output), "value"
            ].to_numpy()
            ax.barh(
                i,
                values.mean(),
                xerr=values.std(ddof=1) if len(values) > 1 else 0,
                alpha=0.6,
                capsize=2,
                color="#4c72b0" if family.startswith("CNN") else "#dd8452",
            )
            ax.plot(values, [i] * len(values), "k.", markersize=3)
        if reference is not None:
            for _, row in reference.iterrows():
                ax.axvline(row[output], linestyle=":", linewidth=0.8, color="gray")
                ax.text(row[output], -0.6, row["run"], rotation=90, fontsize=5, va="top", color="gray")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_xlabel(f"test {output} accuracy (mean ± std over split seeds; dots: seeds)")
    fig.suptitle(
        figures.title(
            "all results side by side", data_label=data_label, weights_label="per configuration (in the labels)"
        )
        + ("\ndotted: the original study on Street10 (its own splits)" if reference is not None else "")
    )
    fig.tight_layout()
    return fig
