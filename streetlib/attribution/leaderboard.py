"""Which explanation finds the cues? Every attribution method scored against the ground-truth cue masks.

For one model, every method of `registry.METHODS` x output x layer (CAM methods at each layer asked; the others read
no layer) explains the same images' predicted classes, and each map is scored per image by:

| metric | what it asks | better |
|---|---|---|
| pointing_game | is the map's maximum on a cue? | higher |
| relevance_mass_accuracy | share of the map's mass on cues (the energy pointing game with masks for boxes) | higher |
| relevance_rank_accuracy | share of the K top pixels on cues, K the cue area | higher |
| mask_auc | the map as a detector of cue pixels (ROC AUC) | higher |
| deletion_auc, insertion_auc | class probability as pixels are removed / put back in map order | lower / higher |
| random_logit | rank correlation with the map of a random other class (Sixt et al. 2020) | lower |
| randomization | rank correlation with the map of the model, every layer re-initialised (Adebayo et al. 2018) | lower |

Each with its mean and 95% percentile-bootstrap interval over images, beside a random map (the floor) and the chance
level, and the method's measured cost per image as a multiple of one forward pass of the same batch. A method that
passes the sanity checks has a random-logit and a randomisation correlation near 0: its map depends on the class and
on the weights.
"""

import json
import numbers
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from streetlib.attribution import metrics
from streetlib.attribution.methods import explainer, model_inputs
from streetlib.attribution.registry import METHODS, attribute
from streetlib.classes import OUTPUTS
from streetlib.constraints import Interval, Items, Keys, validate_parameters

HIGHER_IS_BETTER = {
    "pointing_game": True,
    "relevance_mass_accuracy": True,
    "relevance_rank_accuracy": True,
    "mask_auc": True,
    "deletion_auc": False,
    "insertion_auc": True,
    "random_logit": False,
    "randomization": False,
}
LOCALIZATION = ("pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "mask_auc")
COLUMNS = ("method", "family", "output", "layer", "metric", "mean", "low", "high", "chance", "images", "cost", "params")


@dataclass(frozen=True, kw_only=True)
class LeaderboardSpec:
    """What the leaderboard runs: methods, outputs, layers and the costly methods' settings.

    Attributes:
        methods: list of `registry.METHODS` names. Default all.
        outputs: list of output names. Default ('region', 'city').
        layers: None (the model's last convolution) or a list of layer names; CAM methods (and Guided Grad-CAM) run
            at each, the others once.
        params: dict method name -> dict of that method's parameters (e.g. ``{"rise": {"masks": 500}}``), so a
            profile sets how many masks, samples and steps the costly methods use. Default {} (their defaults).
        curve_steps: int >= 1, points of the deletion and insertion curves minus one. Default 8.
        control_images: None (all) or int >= 1: the costly measurements - the deletion and insertion curves (one
            model call per image and curve) and the two sanity checks (every map computed again) - use the first
            ``control_images`` images only; localisation always uses all.
        resamples: int >= 1, bootstrap resamples of the intervals. Default 1000.
        seed: int >= 0, for random logits, randomised weights, random maps, tie-breaking and the bootstrap.
            Default 0.

    Every field is checked when the spec is made, against ``_parameter_constraints`` (see `streetlib.constraints`).
    """

    methods: tuple = tuple(METHODS)
    outputs: tuple = OUTPUTS
    layers: tuple | None = None
    params: dict = field(default_factory=dict)
    curve_steps: int = 8
    control_images: int | None = None
    resamples: int = 1000
    seed: int = 0

    _parameter_constraints: ClassVar[dict] = {
        "methods": [Items(f"a non-empty list of {sorted(METHODS)}", values=tuple(METHODS), nonempty=True)],
        "outputs": [Items(f"a non-empty list of {list(OUTPUTS)}", values=OUTPUTS, nonempty=True)],
        "layers": [None, Items("a non-empty list of layer names", test=lambda v: isinstance(v, str), nonempty=True)],
        "params": [Keys(METHODS)],
        "curve_steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "control_images": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "resamples": [Interval(numbers.Integral, 1, None, closed="left")],
        "seed": [Interval(numbers.Integral, 0, None, closed="left")],
    }

    def __post_init__(self):
        validate_parameters(self)
        for method, params in self.params.items():
            if method not in self.methods or not isinstance(params, dict) or set(params) - set(METHODS[method].params):
                raise ValueError(
                    f"Invalid `params` for {method!r}: expected a dict of some of {sorted(METHODS[method].params)} "
                    f"for a method in `methods`. Received: {params!r}"
                )
        for name in ("methods", "outputs", "layers"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else tuple(value))


def _seconds(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _forward_seconds(model, inputs, output):
    """Seconds per image of one forward pass (logits) of the batch, the best of three after a warm-up call."""
    ex = explainer(model)
    ex.logits(inputs[:2], output=output)
    return min(_seconds(lambda: ex.logits(inputs, output=output))[1] for _ in range(3)) / len(inputs)


@dataclass
class _Context:
    """What every method of one output is scored against: the same images, classes and controls."""

    images: np.ndarray
    masks: np.ndarray
    inputs: np.ndarray
    model: object
    randomized: object
    normalization: str
    output: str
    target: np.ndarray
    other: np.ndarray
    forward: float
    spec: LeaderboardSpec


def _context(images, masks, model, normalization, output, spec):
    inputs = model_inputs(images, normalization=normalization)
    logits = explainer(model).logits(inputs, output=output)
    target = np.argmax(logits, axis=1)
    return _Context(
        images=images,
        masks=masks,
        inputs=inputs,
        model=model,
        randomized=metrics.randomized_copy(model, output=output, seed=spec.seed),
        normalization=normalization,
        output=output,
        target=target,
        other=metrics.random_logit_targets(logits, target, seed=spec.seed),
        forward=_forward_seconds(model, inputs, output),
        spec=spec,
    )


def _curves(ctx, maps):
    k = ctx.spec.control_images or len(maps)
    return metrics.perturbation_curves(
        ctx.images[:k],
        maps[:k],
        ctx.model,
        output=ctx.output,
        target=ctx.target[:k],
        normalization=ctx.normalization,
        steps=ctx.spec.curve_steps,
        seed=ctx.spec.seed,
    )


def _localization(maps, masks):
    return {
        "pointing_game": metrics.pointing_game(maps, masks),
        "relevance_mass_accuracy": metrics.relevance_mass_accuracy(maps, masks),
        "relevance_rank_accuracy": metrics.relevance_rank_accuracy(maps, masks),
        "mask_auc": metrics.mask_auc(maps, masks),
    }


def _method_scores(ctx, method, layer):
    """Per-image values of every metric for one method at one layer, and its cost in forward passes."""
    params = ctx.spec.params.get(method, {})

    k = ctx.spec.control_images or len(ctx.inputs)

    def run(model, target, n):
        inputs = ctx.inputs[:n]
        return attribute(inputs, model, method=method, output=ctx.output, layer=layer, target=target[:n], **params).maps

    attribute(ctx.inputs[:2], ctx.model, method=method, output=ctx.output, layer=layer, **params)  # traces once
    maps, seconds = _seconds(lambda: run(ctx.model, ctx.target, len(ctx.inputs)))
    curves = _curves(ctx, maps)
    values = {
        **_localization(maps, ctx.masks),
        "deletion_auc": curves["deletion_auc"],
        "insertion_auc": curves["insertion_auc"],
        "random_logit": metrics.rank_correlation(maps[:k], run(ctx.model, ctx.other, k)),
        "randomization": metrics.rank_correlation(maps[:k], run(ctx.randomized, ctx.target, k)),
    }
    return values, seconds / len(maps) / ctx.forward


def _floor_scores(ctx):
    """The random map's values: what a map that knows nothing scores."""
    maps = metrics.random_maps(ctx.masks.shape, seed=ctx.spec.seed)
    curves = _curves(ctx, maps)
    return {
        **_localization(maps, ctx.masks),
        "deletion_auc": curves["deletion_auc"],
        "insertion_auc": curves["insertion_auc"],
    }


def _chance(masks):
    """What a map that knows nothing scores on average, per localisation metric."""
    area = float((masks > 0).mean())
    return {"pointing_game": area, "relevance_mass_accuracy": area, "relevance_rank_accuracy": area, "mask_auc": 0.5}


def _rows(ctx, values, *, method, family, layer, cost, params):
    chance = _chance(ctx.masks)
    for metric, per_image in values.items():
        mean, low, high = metrics.bootstrap_interval(per_image, resamples=ctx.spec.resamples, seed=ctx.spec.seed)
        yield {
            "method": method,
            "family": family,
            "output": ctx.output,
            "layer": layer or "",
            "metric": metric,
            "mean": mean,
            "low": low,
            "high": high,
            "chance": chance.get(metric, np.nan),
            "images": int(np.isfinite(per_image).sum()),
            "cost": cost,
            "params": json.dumps(params, sort_keys=True),
        }


def leaderboard(images, masks, model, *, normalization, spec=None):
    """Score every method of ``spec`` against the cue masks, with intervals, sanity checks and costs.

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size.
        masks: `(n, H, W)` cue masks in {0, 1}.
        model: the `keras.Model` (one image input, ``<output>_logits`` layers).
        normalization: the model's input normalisation.
        spec: `LeaderboardSpec`. Default ``LeaderboardSpec()``: every method, both outputs, the last convolution.

    Returns:
        `pandas.DataFrame`, one row per method x output x layer x metric (`COLUMNS`): ``mean``, ``low`` and
        ``high`` (95% bootstrap interval over images), ``chance`` (localisation metrics), ``images``, ``cost``
        (seconds per image over one forward pass's; NaN for the floor) and ``params`` (JSON). The method 'random'
        (family 'floor') is the random map.
    """
    spec = LeaderboardSpec() if spec is None else spec
    images, masks = np.asarray(images), np.asarray(masks)
    if images.shape[:3] != masks.shape:
        raise ValueError(f"`masks` must have shape {images.shape[:3]} to match `images`. Received {masks.shape}.")
    rows = []
    for output in spec.outputs:
        ctx = _context(images, masks, model, normalization, output, spec)
        for method in spec.methods:
            info = METHODS[method]
            for layer in (spec.layers or (None,)) if info.uses_layer else (None,):
                values, cost = _method_scores(ctx, method, layer)
                params = {**info.params, **spec.params.get(method, {})}
                shown = layer or (explainer(model).layer if info.uses_layer else None)
                rows += _rows(ctx, values, method=method, family=info.family, layer=shown, cost=cost, params=params)
        rows += _rows(ctx, _floor_scores(ctx), method="random", family="floor", layer=None, cost=np.nan, params={})
    return pd.DataFrame(rows, columns=list(COLUMNS))


def plot_leaderboard(table, *, output="region", title=None):
    """One panel per metric: the methods ranked best first, each with its 95% interval, the random map's value as
    the floor (dashed) and the chance level (dotted) where there is one.

    Args:
        table: the `leaderboard` DataFrame.
        output: str, which output's rows to draw. Default 'region'.
        title: str or None, the figure's title (say which data and weights).

    Returns:
        `matplotlib.figure.Figure`.
    """
    rows = table[table["output"] == output]
    names = [m for m in HIGHER_IS_BETTER if m in set(rows["metric"])]
    fig = Figure(figsize=(4.2 * 4, 3.6 * ((len(names) + 3) // 4)), layout="constrained")
    axes = fig.subplots((len(names) + 3) // 4, 4, squeeze=False).ravel()
    for ax, metric in zip(axes, names, strict=False):
        r = rows[rows["metric"] == metric]
        floor = r[r["family"] == "floor"]
        r = r[r["family"] != "floor"].sort_values("mean", ascending=not HIGHER_IS_BETTER[metric])
        labels = [
            m if not layer or len(set(rows["layer"]) - {""}) < 2 else f"{m} @{layer}"
            for m, layer in zip(r["method"], r["layer"], strict=True)
        ]
        y = np.arange(len(r))[::-1]
        ax.errorbar(r["mean"], y, xerr=[r["mean"] - r["low"], r["high"] - r["mean"]], fmt="o", ms=4, capsize=2)
        ax.set_yticks(y, labels, fontsize=7)
        if len(floor):
            ax.axvline(floor["mean"].iloc[0], color="grey", ls="--", lw=1, label="random map")
        if np.isfinite(r["chance"]).any():
            ax.axvline(r["chance"].iloc[0], color="black", ls=":", lw=1, label="chance")
        ax.set_title(f"{metric} ({'higher' if HIGHER_IS_BETTER[metric] else 'lower'} is better)", fontsize=9)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title or f"Attribution leaderboard, {output} output (mean and 95% bootstrap interval over images)")
    return fig
