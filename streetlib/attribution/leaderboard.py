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

Data without cue masks (Street10, a user's photographs) have no ground truth for the four localisation metrics: they
are left out of the table (`has_ground_truth` tells) and the rest, which need no mask, is scored as usual.

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
VERDICTS = ("passes", "fails", "unclear")  # of a sanity check, see `sanity`
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
        images: dict method name -> int >= 1: that method explains only the first so many images (everything it is
            scored on, localisation included, and its chance level, are of those images; the ``images`` column says
            how many). Lets a profile keep the costly methods (occlusion, RISE, Score-CAM...) to a budget while the
            cheap ones use every image. Default {} (every method, every image).
        control_images: None (all) or int >= 1: the costly measurements - the deletion and insertion curves (one
            model call per image and curve) and the two sanity checks (every map computed again) - use the first
            ``control_images`` of a method's images only; localisation uses all of them.
        resamples: int >= 1, bootstrap resamples of the intervals. Default 1000.
        seed: int >= 0, for random logits, randomised weights, random maps, tie-breaking, the bootstrap, and the
            methods that draw random numbers (SmoothGrad, RISE) unless ``params`` gives them a seed.
            Default 0.

    Every field is checked when the spec is made, against ``_parameter_constraints`` (see `streetlib.constraints`).
    """

    methods: tuple = tuple(METHODS)
    outputs: tuple = OUTPUTS
    layers: tuple | None = None
    params: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    curve_steps: int = 8
    control_images: int | None = None
    resamples: int = 1000
    seed: int = 0

    _parameter_constraints: ClassVar[dict] = {
        "methods": [Items(f"a non-empty list of {sorted(METHODS)}", values=tuple(METHODS), nonempty=True)],
        "outputs": [Items(f"a non-empty list of {list(OUTPUTS)}", values=OUTPUTS, nonempty=True)],
        "layers": [None, Items("a non-empty list of layer names", test=lambda v: isinstance(v, str), nonempty=True)],
        "params": [Keys(METHODS)],
        "images": [Keys(METHODS)],
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
        for method, count in self.images.items():
            if method not in self.methods or not isinstance(count, numbers.Integral) or count < 1:
                raise ValueError(
                    f"Invalid `images` for {method!r}: expected an int >= 1 for a method in `methods`. "
                    f"Received: {count!r}"
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
    masks: np.ndarray | None
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
    k = min(ctx.spec.control_images or len(maps), len(maps))
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
    """Per-image values of the localisation metrics; none without masks (no ground truth to score against)."""
    if masks is None:
        return {}
    return {
        "pointing_game": metrics.pointing_game(maps, masks),
        "relevance_mass_accuracy": metrics.relevance_mass_accuracy(maps, masks),
        "relevance_rank_accuracy": metrics.relevance_rank_accuracy(maps, masks),
        "mask_auc": metrics.mask_auc(maps, masks),
    }


def _method_params(spec, method):
    """A method's parameters as the leaderboard runs it: ``spec.params``'s, plus ``spec.seed`` for a method that draws
    random numbers (SmoothGrad's noise, RISE's masks) when they set none, so that a leaderboard is reproducible and
    its sanity checks compare maps made with the same draws."""
    params = dict(spec.params.get(method, {}))
    if "seed" in METHODS[method].params:
        params.setdefault("seed", spec.seed)
    return params


def _method_scores(ctx, method, layer):
    """Per-image values of every metric for one method at one layer, its cost in forward passes and the number of
    images it explained."""
    params = _method_params(ctx.spec, method)
    n = min(ctx.spec.images.get(method, len(ctx.inputs)), len(ctx.inputs))
    k = min(ctx.spec.control_images or n, n)

    def run(model, target, count):
        inputs = ctx.inputs[:count]
        return attribute(
            inputs, model, method=method, output=ctx.output, layer=layer, target=target[:count], **params
        ).maps

    # Traces once, on one image: a costly method's warm-up (Score-CAM: 513 forward passes an image) is not free.
    attribute(ctx.inputs[:1], ctx.model, method=method, output=ctx.output, layer=layer, **params)
    maps, seconds = _seconds(lambda: run(ctx.model, ctx.target, n))
    curves = _curves(ctx, maps)
    values = {
        **_localization(maps, None if ctx.masks is None else ctx.masks[:n]),
        "deletion_auc": curves["deletion_auc"],
        "insertion_auc": curves["insertion_auc"],
        "random_logit": metrics.rank_correlation(maps[:k], run(ctx.model, ctx.other, k)),
        "randomization": metrics.rank_correlation(maps[:k], run(ctx.randomized, ctx.target, k)),
    }
    return values, seconds / n / ctx.forward, n


def _floor_scores(ctx):
    """The random map's values: what a map that knows nothing scores."""
    maps = metrics.random_maps(ctx.images.shape[:3], seed=ctx.spec.seed)
    curves = _curves(ctx, maps)
    return {
        **_localization(maps, ctx.masks),
        "deletion_auc": curves["deletion_auc"],
        "insertion_auc": curves["insertion_auc"],
    }


def _chance(masks):
    """What a map that knows nothing scores on average, per localisation metric (none without masks)."""
    if masks is None:
        return {}
    area = float((masks > 0).mean())
    return {"pointing_game": area, "relevance_mass_accuracy": area, "relevance_rank_accuracy": area, "mask_auc": 0.5}


def _rows(ctx, values, *, method, family, layer, cost, params, images):
    chance = _chance(None if ctx.masks is None else ctx.masks[:images])
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
        masks: `(n, H, W)` cue masks in {0, 1}, or None for data without a ground truth: the localisation metrics
            are then left out, and faithfulness, the sanity checks and the costs are scored all the same.
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
    images = np.asarray(images)
    masks = None if masks is None else np.asarray(masks)
    if masks is not None and images.shape[:3] != masks.shape:
        raise ValueError(f"`masks` must have shape {images.shape[:3]} to match `images`. Received {masks.shape}.")
    rows = []
    for output in spec.outputs:
        ctx = _context(images, masks, model, normalization, output, spec)
        for method in spec.methods:
            info = METHODS[method]
            for layer in (spec.layers or (None,)) if info.uses_layer else (None,):
                values, cost, n = _method_scores(ctx, method, layer)
                params = {**info.params, **_method_params(spec, method)}
                shown = layer or (explainer(model).layer if info.uses_layer else None)
                rows += _rows(
                    ctx, values, method=method, family=info.family, layer=shown, cost=cost, params=params, images=n
                )
        floor = _floor_scores(ctx)
        rows += _rows(ctx, floor, method="random", family="floor", layer=None, cost=np.nan, params={}, images=None)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def has_ground_truth(table):
    """True when ``table`` (a `leaderboard` DataFrame) was scored against cue masks (it has localisation rows)."""
    return bool(table["metric"].isin(LOCALIZATION).any())


def _label(row, rows):
    """A method row's name as shown: with its layer when ``rows`` hold several layers, and its number of images when
    it explained fewer than the most any row of its metric did."""
    label = row["method"]
    if row["layer"] and len(set(rows["layer"]) - {""}) > 1:
        label += f" @{row['layer']}"
    if row["images"] < rows[rows["metric"] == row["metric"]]["images"].max():
        label += f" (n={row['images']})"
    return label


def _separable(a, b, higher):
    """-1, 0 or 1: ``a`` below, not separable from, or above ``b`` (rows with ``low`` and ``high``), where not separable
    means their 95% intervals overlap; 'above' is the better side of the metric."""
    if a["low"] > b["high"]:
        return 1 if higher else -1
    if a["high"] < b["low"]:
        return -1 if higher else 1
    return 0


def ranking(table, *, output="region", metric="relevance_mass_accuracy"):
    """The methods of one output ranked on one metric, best first, each judged against the best and the random map.

    Two rows are *not separable* when their 95% bootstrap intervals overlap: a conservative test (two overlapping
    intervals can still differ), so 'best' claims are never stronger than the images allow.

    Args:
        table: the `leaderboard` DataFrame.
        output: str. Default 'region'.
        metric: one of `HIGHER_IS_BETTER`. Default 'relevance_mass_accuracy'.

    Returns:
        `pandas.DataFrame` with the method rows of ``table`` for that output and metric (the floor excluded), best
        first, and two columns: ``vs_best`` ('best', 'not separable from the best' or 'below the best') and
        ``vs_random`` ('better than the random map', 'not separable from the random map' or 'worse than the random
        map'; empty for the sanity metrics, which have no floor).
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"Invalid `metric`. Expected one of {list(HIGHER_IS_BETTER)}. Received: metric={metric!r}")
    higher = HIGHER_IS_BETTER[metric]
    rows = table[(table["output"] == output) & (table["metric"] == metric)]
    if rows.empty and metric in LOCALIZATION and not has_ground_truth(table):
        raise ValueError(
            f"Cannot rank on {metric!r}: the leaderboard was scored without cue masks (no ground truth). Rank on one "
            f"of {[m for m in HIGHER_IS_BETTER if m not in LOCALIZATION]}."
        )
    if rows.empty:
        raise ValueError(f"The table has no {metric!r} rows for output={output!r}.")
    floor = rows[rows["family"] == "floor"]
    ranked = rows[rows["family"] != "floor"].sort_values("mean", ascending=not higher).reset_index(drop=True)
    best = ranked.iloc[0]
    vs_best = ["best"] + [
        "not separable from the best" if _separable(row, best, higher) == 0 else "below the best"
        for _, row in ranked.iloc[1:].iterrows()
    ]
    words = {1: "better than the random map", 0: "not separable from the random map", -1: "worse than the random map"}
    vs_random = [words[_separable(row, floor.iloc[0], higher)] if len(floor) else "" for _, row in ranked.iterrows()]
    return ranked.assign(vs_best=vs_best, vs_random=vs_random)


def sanity(table, *, threshold=0.5):
    """Which methods pass the two sanity checks, per output.

    A method *passes* a check when the 95% interval of its rank correlation lies below ``threshold`` (its map
    changes with the class, or with the weights), *fails* when the interval lies at or above it (the map mostly
    survives: it reflects the image more than the model), and is *unclear* otherwise.

    Args:
        table: the `leaderboard` DataFrame.
        threshold: float in (0, 1), the rank correlation that separates a map that changed from one that did not.
            Default 0.5: more than half of the ranking of the pixels survives.

    Returns:
        `pandas.DataFrame` with columns method, layer, output, metric ('randomization' or 'random_logit'), mean,
        low, high, images, verdict ('passes', 'fails' or 'unclear').
    """
    if not 0 < threshold < 1:
        raise ValueError(f"Invalid `threshold`. Expected a float in (0, 1). Received: threshold={threshold!r}")
    rows = table[table["metric"].isin(("randomization", "random_logit"))]
    verdict = np.where(
        rows["high"] < threshold, VERDICTS[0], np.where(rows["low"] >= threshold, VERDICTS[1], VERDICTS[2])
    )
    columns = ["method", "layer", "output", "metric", "mean", "low", "high", "images"]
    return rows[columns].assign(verdict=verdict).reset_index(drop=True)


def findings(table, *, output="region", metric=None, threshold=0.5):
    """The leaderboard in words, every judgement computed by `ranking` and `sanity`.

    Args:
        table: the `leaderboard` DataFrame.
        output: str. Default 'region'.
        metric: the metric methods are ranked on. Default None: 'relevance_mass_accuracy' when the table was scored
            against cue masks, else 'insertion_auc' (faithfulness needs no mask), and the first line says so.
        threshold: float in (0, 1), see `sanity`.

    Returns:
        list of str: which methods find the cues best on ``metric`` (with their values and intervals), which are no
        better than the random map, and which pass and fail the randomisation and random-logit checks on ``output``.
    """
    lines = []
    if metric is None:
        metric = "relevance_mass_accuracy" if has_ground_truth(table) else "insertion_auc"
    if not has_ground_truth(table):
        lines.append(
            f"Localisation ({', '.join(LOCALIZATION)}): no ground truth (the data have no cue masks); methods are "
            f"ranked on {metric}."
        )
    ranked = ranking(table, output=output, metric=metric)

    rows = table[table["output"] == output]

    def value(row):
        return f"{_label(row, rows)} {row['mean']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"

    top = ranked[ranked["vs_best"] != "below the best"]
    best = "Finds the cues best" if metric in LOCALIZATION else "Best"
    lines.append(
        f"{best} ({metric}, {output} output): {value(top.iloc[0])}; not separable from it at these "
        f"sample sizes: {', '.join(value(r) for _, r in top.iloc[1:].iterrows()) or 'none'}."
    )
    floor = ranked[ranked["vs_random"] != "better than the random map"]
    lines.append(f"Not better than a random map: {', '.join(_label(r, rows) for _, r in floor.iterrows()) or 'none'}.")
    checks = sanity(table, threshold=threshold)
    for metric, what in (
        ("randomization", "the map of the model with every layer re-initialised"),
        ("random_logit", "the map of a random other class"),
    ):
        rows_of = checks[(checks["output"] == output) & (checks["metric"] == metric)]
        names = {v: [_label(r, rows) for _, r in rows_of[rows_of["verdict"] == v].iterrows()] for v in VERDICTS}
        verdicts = "; ".join(f"{v}: {', '.join(names[v]) or 'none'}" for v in VERDICTS)
        lines.append(f"{metric} check (rank correlation with {what}, threshold {threshold}) - {verdicts}.")
    return lines


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
        labels = [_label(row, rows) for _, row in r.iterrows()]
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
