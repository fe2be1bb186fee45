"""Sanity: do the maps change when what they should explain changes?

- The random-logit test (Sixt et al. 2020; Quantus's ``RandomLogit``): the maps of the explained class against those
  of a random other class (`random_logit_targets`).
- The model-parameter randomisation test (Adebayo et al. 2018): against the maps of a copy of the model whose layers
  are re-initialised, all at once (`randomized_copy`) or one more at a time from the output down (the cascading
  `randomization_check`).
- The data randomisation test (Adebayo et al. 2018): against the maps of the model's configuration trained on
  permuted labels (`data_randomized_copy`).

Each is a rank correlation of two maps of the same image (`rank_correlation`): a map that explains the decision must
change, so lower is better. `random_logit`, `randomization` and `data_randomization` are the registry's functions.
"""

import dataclasses
import json
import re
from pathlib import Path

import keras
import numpy as np
from scipy import stats

from streetlib.attribution.explainer import all_layers, clone_with_weights, explainer, find_layer_path, logits_tensor
from streetlib.attribution.registry import METHODS, ORIGINAL, attribute
from streetlib.runs import RunId
from streetlib.training import train
from streetlib.training.config import ExecutionConfig, RunConfig


def rank_correlation(a, b):
    """Spearman rank correlation of each pair of maps (ties get average ranks).

    Args:
        a, b: float `(n, ...)`, the same shape.

    Returns:
        float32 `(n,)` in [-1, 1]; 0 where either map is constant (it ranks nothing).
    """
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"`a` and `b` must have the same shape. Received {a.shape} and {b.shape}.")
    ra, rb = stats.rankdata(a, axis=1), stats.rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denom = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    return np.divide((ra * rb).sum(axis=1), denom, out=np.zeros(len(a)), where=denom > 0).astype(np.float32)


def random_logit_targets(logits, target, *, seed=0):
    """Classes for the random-logit test (Sixt et al. 2020; Quantus's ``RandomLogit``): for each image, a class drawn
    uniformly among the classes other than its ``target``.

    The test is ``rank_correlation(maps for target, maps for random_logit_targets(...))``: a map that explains the
    decision should differ for another class, so low similarity is the pass; a map that only shows the image's
    edges is the same for every class and fails.

    Args:
        logits: float `(n, C)`, the explained output's logits (they give n and C), C >= 2.
        target: int `(n,)`, the explained class of each image, in [0, C).
        seed: int. Default 0.

    Returns:
        int64 `(n,)`, each different from ``target`` and in [0, C).
    """
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"`logits` must have shape (n, C) with C >= 2. Received shape {logits.shape}.")
    n, classes = logits.shape
    target = np.asarray(target)
    if target.shape != (n,) or not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"`target` must be int of shape ({n},). Received {target.dtype} {target.shape}.")
    if target.min(initial=0) < 0 or target.max(initial=0) >= classes:
        raise ValueError(f"`target` must be in [0, {classes}). Received values in [{target.min()}, {target.max()}].")
    # One of the C - 1 other classes: draw an index among them and skip over the target (as Quantus does).
    draw = np.random.default_rng(seed).integers(0, classes - 1, size=n)
    return (draw + (draw >= target)).astype(np.int64)


def randomization_layers(model, *, output=None):
    """Names of the layers the randomisation check randomises, from the output towards the input: every layer
    with a kernel (convolutions, dense layers), nested models expanded.

    Args:
        model: the `keras.Model`.
        output: None (all such layers) or an output name: only layers that feed it.
    """
    scope = model if output is None else keras.Model(model.inputs[0], logits_tensor(model, output))
    return [layer.name for layer in reversed(all_layers(scope)) if hasattr(layer, "kernel")]


def _reinitialize(layer, rng):
    """Redraw a layer's kernel and bias from a normal distribution with the standard deviation of their trained
    values, so that activations keep their scale."""
    for var in (layer.kernel, getattr(layer, "bias", None)):
        if var is not None:
            values = keras.ops.convert_to_numpy(var)
            var.assign(rng.normal(0.0, values.std(), values.shape).astype(values.dtype))


def randomized_copy(model, *, output=None, seed=0):
    """The end of the cascading randomisation check: a copy of ``model`` with every layer of `randomization_layers`
    re-initialised (not permuted), drawn as `randomization_check` draws them one at a time. The model is not changed.

    Args:
        model: the `keras.Model`.
        output: None (every layer with a kernel) or an output name: only the layers that feed it.
        seed: int.

    Returns:
        the randomised `keras.Model` copy.
    """
    clone, _ = clone_with_weights(model)
    rng = np.random.default_rng(seed)
    for name in randomization_layers(clone, output=output):
        _reinitialize(find_layer_path(clone, name)[-1], rng)
    return clone


def permuted_labels(data, *, seed=0):
    """The data of the data randomisation test (Adebayo et al. 2018): the same images with their city labels
    permuted across the whole dataset (each region follows its city), so that nothing links an image to its label.

    Args:
        data: `streetlib.data.loaders.StreetData`.
        seed: int, for the permutation.

    Returns:
        `StreetData`, a copy whose ``city`` is a permutation of ``data.city`` (class counts kept); images, masks
        and name shared.
    """
    return dataclasses.replace(data, city=np.random.default_rng(seed).permutation(data.city))


def first_phase(run, *, layout):
    """The run a run starts from, followed back to its first phase: ``run`` itself for a transfer (or scratch) run,
    the transfer run a fine-tune was initialised from (its manifest's ``init_from``), and so on.

    Args:
        run: `streetlib.runs.RunId`.
        layout: the `streetlib.runs.RunLayout` of its dataset.

    Returns:
        (`RunId`, `streetlib.training.config.RunConfig`) of the first phase.
    """
    record = json.loads(layout.manifest(run).read_text())["config"]
    while record["phase"] == "finetune":
        model = Path(record["init_from"])
        run = RunId.from_name(model.parent.name, re.sub(r"\.(best|final)\.keras$", "", model.name))
        record = json.loads(layout.manifest(run).read_text())["config"]
    return run, RunConfig.from_manifest(record)


def data_randomized_copy(data, split, run, *, layout, experiment, epochs=None, execution=None):
    """The model of the data randomisation test (Adebayo et al. 2018): ``run``'s configuration trained on
    `permuted_labels` of ``data``.

    Cheaply: only its first phase (`first_phase`) is trained again - for the demo's recipe, the conv head on the
    frozen backbone's cached block1 features, not the fine-tuning of every layer on images - so a fine-tuned model's
    copy keeps the weight source's backbone. Its final weights are kept: the validation labels are permuted too, so
    the best epoch would be chosen on noise. The run is saved like any other (``<config>-permuted-labels-seed<N>``
    in ``experiment``) and reused when it finished with the same configuration.

    Args:
        data: `StreetData` with the true labels.
        split: `streetlib.data.splits.Split` the copy trains on (its seed seeds the permutation and the run).
        run: `RunId` of the explained model (a seed's headline run).
        layout: the `RunLayout` of ``data``'s runs.
        experiment: str, where the copy's run goes (e.g. '05-attribution').
        epochs: None (the first phase's own) or int >= 1.
        execution: `streetlib.training.config.ExecutionConfig`. Default: reuse a finished run, no progress bar.

    Returns:
        the trained `keras.Model`.
    """
    origin, config = first_phase(run, layout=layout)
    config = config.replace(epochs=epochs or config.epochs, early_stopping=None, seed=split.seed)
    copy = RunId(experiment, f"{origin.config_name}-permuted-labels", split.seed)
    execution = execution or ExecutionConfig(reuse=True, verbose=0)
    permuted = permuted_labels(data, seed=split.seed)
    return train.run_phase(permuted, split, config, run=copy, layout=layout, execution=execution).model


def randomization_check(inputs, model, *, methods=ORIGINAL, output="city", layer=None, target=None, seed=0):
    """The cascading model-parameter randomisation check (Adebayo et al. 2018).

    A copy of the model has its layers re-initialised one more at a time, from the output down; after each, the
    maps are recomputed and compared with the trained model's. A map that explains the model must change (low rank
    correlation) once the weights it depends on are random. The user's model is never changed. Each kernel and bias
    is redrawn from a normal distribution with the standard deviation of the trained values, so activations keep
    their scale; batch normalisation statistics are left as they are.

    Args:
        inputs: float32 `(n, H, W, C)`, normalised model inputs.
        model: the `keras.Model`.
        methods: sequence of `registry.METHODS` names. Default `registry.ORIGINAL` (the original study's three).
        output: str, the output explained. Default 'city'.
        layer: str or None, the layer of the methods that read one (default: the model's last convolution).
        target: None (the trained model's predicted classes, kept fixed throughout) or int `(n,)`.
        seed: int.

    Returns:
        dict with ``layers`` (list of str, in randomisation order) and ``spearman`` (dict method -> float32
        `(len(layers), n)`, the rank correlation after randomising each layer and all above it).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or isinstance(methods, str):
        raise ValueError(f"Invalid `methods`. Expected a sequence of {sorted(METHODS)}. Received: methods={methods!r}")
    if target is None:
        target = np.argmax(explainer(model, layer=layer).logits(inputs, output=output), axis=1)
    kwargs = {m: dict(output=output, layer=METHODS[m].layer_of(layer), target=target) for m in methods}
    original = {m: attribute(inputs, model, method=m, **kwargs[m]).maps for m in methods}
    clone, _ = clone_with_weights(model)
    rng = np.random.default_rng(seed)
    names = randomization_layers(clone, output=output)
    spearman = {m: np.zeros((len(names), len(inputs)), np.float32) for m in methods}
    for i, name in enumerate(names):
        _reinitialize(find_layer_path(clone, name)[-1], rng)
        for m in methods:
            maps = attribute(inputs, clone, method=m, **kwargs[m]).maps
            spearman[m][i] = rank_correlation(original[m], maps)
    return {"layers": names, "spearman": spearman}


def random_logit(maps, *, explain, model, other_target):
    """The random-logit test's per-image values: the rank correlation of ``maps`` with the same method's maps of
    another class of the same model.

    Args:
        maps: float `(n, H, W)`, the maps of the explained classes.
        explain: callable ``(model, target) -> float (n, H, W)``, the same method's maps of the same images.
        model: the explained `keras.Model`.
        other_target: int `(n,)`, a random other class of each image (`random_logit_targets`).

    Returns:
        float32 `(n,)` in [-1, 1].
    """
    return rank_correlation(maps, explain(model, other_target))


def randomization(maps, *, explain, randomized_model, target):
    """The model-parameter randomisation test's per-image values: the rank correlation of ``maps`` with the same
    method's maps of the same classes on the model with every layer re-initialised (`randomized_copy`).

    Args:
        maps: float `(n, H, W)`, the maps of the explained classes.
        explain: callable ``(model, target) -> float (n, H, W)``, the same method's maps of the same images.
        randomized_model: the `keras.Model` copy with its layers re-initialised.
        target: int `(n,)`, the explained classes.

    Returns:
        float32 `(n,)` in [-1, 1].
    """
    return rank_correlation(maps, explain(randomized_model, target))


def data_randomization(maps, *, explain, permuted_model, target):
    """The data randomisation test's per-image values: the rank correlation of ``maps`` with the same method's maps
    of the same classes on the model trained on permuted labels (`data_randomized_copy`).

    Args:
        maps: float `(n, H, W)`, the maps of the explained classes.
        explain: callable ``(model, target) -> float (n, H, W)``, the same method's maps of the same images.
        permuted_model: the `keras.Model` trained on permuted labels.
        target: int `(n,)`, the explained classes.

    Returns:
        float32 `(n,)` in [-1, 1].
    """
    return rank_correlation(maps, explain(permuted_model, target))
