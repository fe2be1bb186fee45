"""Evaluating trained runs: accuracy, top-3, per-class scores, confusion, calibration and city similarity.

Computing, saving and drawing are separate steps: `score` (or `score_run`, which predicts first) returns `Scores`
and writes nothing; `eval_rows` labels them as tidy rows and `append_evals` saves those;
`streetlib.figures.score_figures` draws them. `evaluate_run` does all three for one model (best or final weights)
on one subset and writes:

- ``hists/<experiment>/<run>.eval.csv``: tidy rows ``dataset, weights, experiment, run, config_name, seed,
  checkpoint, subset, output, metric, class, predicted, value`` (re-evaluating a checkpoint and subset replaces its
  rows);
- ``figs/<experiment>/<run>.<checkpoint>.<subset>.<figure>.png``: normalised confusion matrices (region and city),
  a reliability diagram, and a dendrogram of city similarity.

`seed_scores` reads one score per run repeated over split seeds (`streetlib.runs.RunId` with a seed, as
`streetlib.training.train.run_seeds` trains them), by the rows' ``config_name`` and ``seed``: what
`streetlib.experiments.questions` compares, paired by seed, with `streetlib.evaluation.stats`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score

from streetlib import figures
from streetlib.classes import OUTPUTS
from streetlib.data import pipeline
from streetlib.models.network import head_layers
from streetlib.paths import atomic_path
from streetlib.runs import CHECKPOINTS, RunId, dataset_layout

SIMILARITY = ("confusion", "embedding")
COLUMNS = [
    "dataset",
    "weights",
    "experiment",
    "run",
    "config_name",
    "seed",
    "checkpoint",
    "subset",
    "output",
    "metric",
    "class",
    "predicted",
    "value",
]


# -- metrics ------------------------------------------------------------------------------------------------------


def reliability(y_true, probs, *, n_bins=10):
    """Confidence bins for calibration: equal-width bins of the top probability over (0, 1].

    Args:
        y_true: int `(n,)`.
        probs: float `(n, classes)`.
        n_bins: int, default 10. Bin ``b`` holds confidences in ``(b/n_bins, (b+1)/n_bins]``.

    Returns:
        pandas DataFrame, one row per bin: ``lower``, ``upper``, ``count`` (int), ``confidence`` (mean top
        probability) and ``accuracy`` (NaN for an empty bin).
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(y_true)
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else np.nan,
                "accuracy": float(correct[members].mean()) if count else np.nan,
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(y_true, probs, *, n_bins=10):
    """Expected calibration error: sum over bins of ``count / n * |accuracy - confidence|``. Returns float."""
    table = reliability(y_true, probs, n_bins=n_bins)
    filled = table[table["count"] > 0]
    return float((filled["count"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / table["count"].sum())


def confusion(y_true, y_pred, num_classes):
    """Confusion counts, int64 `(num_classes, num_classes)`: rows true classes, columns predictions."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).astype(np.int64)


def confusion_distances(cm):
    """City distances from confusion: ``1 - (C[i, j] + C[j, i]) / 2`` on the row-normalised matrix, 0 on the
    diagonal. Cities often mistaken for each other are close. Returns float64 `(n, n)` in [0, 1]."""
    rates = figures.normalize_rows(cm)
    distances = 1.0 - (rates + rates.T) / 2.0
    np.fill_diagonal(distances, 0.0)
    return distances


def centroid_distances(embeddings, y_true, num_classes):
    """Cosine distances between the classes' mean embeddings. Returns float64 `(n, n)`; a class with no samples
    gets distance 1 to every other."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    centroids = np.zeros((num_classes, embeddings.shape[1]))
    for c in range(num_classes):
        if np.any(y_true == c):
            centroids[c] = embeddings[y_true == c].mean(axis=0)
    norms = np.linalg.norm(centroids, axis=1, keepdims=True)
    unit = np.divide(centroids, norms, out=np.zeros_like(centroids), where=norms > 1e-12)
    distances = np.clip(1.0 - unit @ unit.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    return distances


def metric_rows(y_true, probs, class_names, *, output, n_bins=10):
    """Tidy metric rows for one output.

    Args:
        y_true: int `(n,)`.
        probs: float `(n, classes)`.
        class_names: list of str.
        output: str, 'region' or 'city'.
        n_bins: int, calibration bins. Default 10.

    Returns:
        list of dict with ``output``, ``metric``, ``class`` (None for overall metrics), ``predicted`` (for
        confusion rows) and ``value``. Metrics: accuracy, top3 (more than 3 classes; by
        `sklearn.metrics.top_k_accuracy_score`, which ranks the higher class index first among equal
        probabilities), ece, n, per-class precision, recall, f1, support, and ``confusion`` counts.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(probs).argmax(axis=1)
    n = len(class_names)
    rows = [("accuracy", None, None, float(np.mean(y_pred == y_true)))]
    if n > 3:
        rows.append(("top3", None, None, top_k_accuracy_score(y_true, probs, k=3, labels=np.arange(n))))
    rows += [
        ("ece", None, None, expected_calibration_error(y_true, probs, n_bins=n_bins)),
        ("n", None, None, float(len(y_true))),
    ]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(n), zero_division=0
    )
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1), ("support", support)):
        rows += [(name, class_names[c], None, float(values[c])) for c in range(n)]
    cm = confusion(y_true, y_pred, n)
    rows += [("confusion", class_names[i], class_names[j], float(cm[i, j])) for i in range(n) for j in range(n)]
    return [{"output": output, "metric": m, "class": c, "predicted": p, "value": v} for m, c, p, v in rows]


# -- one run ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """What `score` computes for one model on one subset. Nothing here has been written to disk.

    Attributes:
        metrics: pandas DataFrame of tidy rows ``output, metric, class, predicted, value`` (see `metric_rows`),
            region rows first.
        class_names: dict output -> list of str.
        confusion: dict output -> int64 `(k, k)` counts, rows true classes, columns predictions.
        reliability: pandas DataFrame, the city output's calibration bins (see `reliability`).
        ece: float, the city output's expected calibration error.
        similarity: str, how ``distances`` were measured: 'confusion' or 'embedding'.
        distances: float64 `(cities, cities)`, city distances in [0, 1] (confusion) or [0, 2] (embedding).
        n: int, the number of samples scored.
    """

    metrics: pd.DataFrame
    class_names: dict
    confusion: dict
    reliability: pd.DataFrame
    ece: float
    similarity: str
    distances: np.ndarray = field(repr=False)
    n: int


def _check_checkpoint(checkpoint):
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"Invalid `checkpoint`. Expected one of {CHECKPOINTS}. Received: checkpoint={checkpoint!r}")


def _check_similarity(similarity):
    if similarity not in SIMILARITY:
        raise ValueError(f"Invalid `similarity`. Expected one of {SIMILARITY}. Received: similarity={similarity!r}")


def score(truth, predictions, class_names, *, similarity="confusion", n_bins=10):
    """Score predictions of both outputs: accuracy, top-3, calibration, per-class scores, confusion, city distances.

    Args:
        truth: dict output -> int `(n,)`, the true classes of 'region' and 'city'.
        predictions: dict output -> float `(n, classes)` probabilities of 'region' and 'city', plus ``embedding``
            float `(n, d)` when ``similarity='embedding'`` (as `predict` returns).
        class_names: dict output -> list of str.
        similarity: 'confusion' (default: cities the model mixes up are close, see `confusion_distances`) or
            'embedding' (cosine distance between the cities' mean embeddings, see `centroid_distances`).
        n_bins: int, calibration bins. Default 10.

    Returns:
        `Scores`.
    """
    _check_similarity(similarity)
    rows, matrices = [], {}
    for output in OUTPUTS:
        rows += metric_rows(truth[output], predictions[output], class_names[output], output=output, n_bins=n_bins)
        matrices[output] = confusion(truth[output], predictions[output].argmax(axis=1), len(class_names[output]))
    city_truth, city_probs = truth["city"], predictions["city"]
    if similarity == "confusion":
        distances = confusion_distances(matrices["city"])
    else:
        distances = centroid_distances(predictions["embedding"], city_truth, len(class_names["city"]))
    return Scores(
        metrics=pd.DataFrame(rows),
        class_names={output: list(class_names[output]) for output in OUTPUTS},
        confusion=matrices,
        reliability=reliability(city_truth, city_probs, n_bins=n_bins),
        ece=expected_calibration_error(city_truth, city_probs, n_bins=n_bins),
        similarity=similarity,
        distances=distances,
        n=len(city_truth),
    )


def predict(model, data, indices, *, normalization, image_size, batch_size=32):
    """Probabilities of both outputs and the embedding: the vector the logits read (the dense head's 128-d
    ``fc2`` block, or the conv head's pooled features).

    Returns:
        dict: ``region`` float32 `(n, num_regions)`, ``city`` float32 `(n, num_classes)`, ``embedding`` float32
        `(n, d)`, in the order of ``indices``.
    """
    embedding = head_layers(model)[-1].output
    probe = keras.Model(model.inputs[0], {**{o: model.get_layer(o).output for o in OUTPUTS}, "embedding": embedding})
    ds = pipeline.make_dataset(
        data, indices, batch_size=batch_size, training=False, normalization=normalization, image_size=image_size
    )
    out = probe.predict(ds.map(pipeline.images_only), verbose=0)
    return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


def score_run(model, data, split, *, normalization, subset="test", similarity="confusion", n_bins=10, batch_size=32):
    """Predict one subset with a model and `score` it. Writes nothing.

    Args:
        model: a `keras.Model`; images are resized to its input size.
        data: `StreetData`.
        split: `Split`.
        normalization: str, the normalisation the model was trained with (its manifest's).
        subset: 'test' (default), 'val' or 'train'.
        similarity: 'confusion' (default) or 'embedding', see `score`.
        n_bins: int, calibration bins. Default 10.
        batch_size: int. Default 32.

    Returns:
        `Scores`.
    """
    _check_similarity(similarity)  # before predicting, which takes the time
    indices = split[subset]
    image_size = int(model.inputs[0].shape[1])  # `model.input` is a list on a model loaded by Keras 3.10
    out = predict(model, data, indices, normalization=normalization, image_size=image_size, batch_size=batch_size)
    names = {output: data.spec.class_names(output) for output in OUTPUTS}
    return score(data.labels(indices), out, names, similarity=similarity, n_bins=n_bins)


def eval_rows(scores, *, dataset, weights, run, checkpoint, subset):
    """A run's eval rows: the scores' metrics labelled with what was scored.

    Args:
        scores: `Scores`.
        dataset: str, the data's label.
        weights: str, what the weights are (the manifest's ``weights_label``).
        run: `streetlib.runs.RunId`, the run scored (its experiment, name, configuration name and seed label the
            rows; the seed is empty for a run without one).
        checkpoint: 'best' or 'final'.
        subset: 'test', 'val' or 'train'.

    Returns:
        pandas DataFrame with columns `COLUMNS`.
    """
    _check_checkpoint(checkpoint)
    labels = {
        "dataset": dataset,
        "weights": weights,
        "experiment": run.experiment,
        "run": run.name,
        "config_name": run.config_name,
        "seed": run.seed,
        "checkpoint": checkpoint,
        "subset": subset,
    }
    return scores.metrics.assign(**labels)[COLUMNS]


def append_evals(frame, path):
    """Write eval rows into a run's eval CSV, atomically, replacing earlier rows of the same checkpoint and subset.

    Args:
        frame: pandas DataFrame with `COLUMNS` (see `eval_rows`).
        path: the CSV, ``hists/<experiment>/<run>.eval.csv``; created if missing.

    Returns:
        the `Path` written.
    """
    path = Path(path)
    if path.is_file():
        old = _with_run_ids(pd.read_csv(path))
        replaced = set(zip(frame["checkpoint"], frame["subset"], strict=True))
        kept = [pair not in replaced for pair in zip(old["checkpoint"], old["subset"], strict=True)]
        frame = pd.concat([old[kept], frame], ignore_index=True)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def evaluate_run(
    model,
    data,
    split,
    *,
    run,
    checkpoint="best",
    subset="test",
    similarity="confusion",
    layout=None,
):
    """Score a model on one subset, append the rows to the run's eval CSV and save its figures.

    `score_run`, `eval_rows`, `append_evals` and `streetlib.figures.score_figures` in one call, with the
    normalisation and weights label read from the run's manifest. Use those to score without writing.

    Args:
        model: a `keras.Model` or a path to a ``.keras`` file (loaded in safe mode).
        data: `StreetData`.
        split: `Split`.
        run: `streetlib.runs.RunId`; its manifest (``layout.manifest(run)``) must exist.
        checkpoint: str, which weights these are: 'best' (default) or 'final'.
        subset: 'test' (default), 'val' or 'train'.
        similarity: 'confusion' (default) or 'embedding', see `score`.
        layout: `streetlib.runs.RunLayout`, where the run's files are. Default ``RunLayout(dataset=data.name)``.

    Returns:
        pandas DataFrame of this evaluation's rows (columns `COLUMNS`).
    """
    _check_checkpoint(checkpoint)
    _check_similarity(similarity)
    layout = dataset_layout(layout, data.name)
    manifest = layout.manifest(run)
    config = json.loads(manifest.read_text())["config"] if manifest.is_file() else {}
    if "normalization" not in config or "weights_label" not in config:
        raise ValueError(
            f"No manifest with `normalization` and `weights_label` at {manifest}. To evaluate weights without one, "
            "use `score_run`, `eval_rows` and `append_evals`."
        )
    if not isinstance(model, keras.Model):
        model = keras.models.load_model(model, safe_mode=True, compile=False)

    scores = score_run(model, data, split, normalization=config["normalization"], subset=subset, similarity=similarity)
    label = {"dataset": data.label, "weights": config["weights_label"]}
    frame = eval_rows(scores, **label, run=run, checkpoint=checkpoint, subset=subset)
    append_evals(frame, layout.evals(run))
    drawn = figures.score_figures(
        scores,
        what=f"{run.name} ({checkpoint} weights, {subset} set, n={scores.n})",
        data_label=data.label,
        weights_label=config["weights_label"],
        label_colors=figures.region_colors(data.spec),
    )
    prefix = layout.figure_prefix(run, checkpoint, subset)
    figures.save_all(drawn, prefix.parent, stem=prefix.name)
    return frame


def read_evals(experiment, runs=None, *, layout):
    """The eval CSVs of an experiment's runs, concatenated.

    Args:
        experiment: str, the experiment's folder name.
        runs: list of run names (`streetlib.runs.RunId.name`); None (default): every run with an eval CSV.
        layout: `streetlib.runs.RunLayout` of the dataset whose runs are read (``RunLayout(dataset=...)``): only
            that dataset's runs are read.

    Returns:
        pandas DataFrame with `COLUMNS`.
    """
    hists = layout.hists(experiment)
    if runs is None:
        files = sorted(hists.glob("*.eval.csv"))
    else:
        files = [layout.evals(RunId.from_name(experiment, r)) for r in runs]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        raise FileNotFoundError(f"No evaluation results: missing {missing or hists / '*.eval.csv'}. Run evaluate_run.")
    return _with_run_ids(pd.concat([pd.read_csv(f) for f in files], ignore_index=True))


def _with_run_ids(frame):
    """Eval rows with ``config_name`` and ``seed`` everywhere, in `COLUMNS` order. Rows written before the rows
    carried them (committed results) get them from their run's name."""
    frame = frame.reindex(columns=COLUMNS).astype({"config_name": object, "seed": float})
    unlabelled = frame["config_name"].isna()
    if unlabelled.any():
        old = frame.loc[unlabelled]
        ids = [RunId.from_name(e, r) for e, r in zip(old["experiment"], old["run"], strict=True)]
        frame.loc[unlabelled, "config_name"] = [i.config_name for i in ids]
        frame.loc[unlabelled, "seed"] = [np.nan if i.seed is None else float(i.seed) for i in ids]
    return frame.astype({"seed": "Int64"})


# -- repeated runs ------------------------------------------------------------------------------------------------


def seed_scores(frame, *, metric="accuracy", output="city", checkpoint="best", subset="test"):
    """One score per seeded run, from eval rows (see `read_evals`). Returns a DataFrame with columns config, seed,
    value."""
    rows = frame[
        (frame["metric"] == metric)
        & (frame["output"] == output)
        & (frame["checkpoint"] == checkpoint)
        & (frame["subset"] == subset)
        & frame["class"].isna()
    ]
    if rows.empty:
        raise ValueError(
            f"No rows for metric={metric!r}, output={output!r}, checkpoint={checkpoint!r}, subset={subset!r}."
        )
    unseeded = rows["seed"].isna()
    if unseeded.any():
        bad = sorted(rows.loc[unseeded, "run"].unique())
        raise ValueError(f"Runs {bad} have no seed: compare runs trained over split seeds (train.run_seeds).")
    return pd.DataFrame(
        {"config": rows["config_name"], "seed": rows["seed"].astype(int), "value": rows["value"].astype(float)}
    ).reset_index(drop=True)
