"""Which explanation finds the cues? Every attribution method scored against the ground-truth cue masks, on the
models of every split seed, and compared pair by pair.

For each model, every method of `registry.METHODS` x output x layer (CAM methods at each layer asked; the others read
no layer) explains the same images' predicted classes (`score`), and each map is scored per image by every metric of
`metrics.registry.METRICS` (or those `LeaderboardConfig.metrics` names): localisation against the cue masks,
faithfulness (deletion, insertion), sanity (random logit, model and data randomisation). The registry says which
way each is better, its chance level and what it needs; this module has no metric knowledge of its own.

Data without cue masks (Street10, a user's photographs) have no ground truth for the metrics that need masks: they
are left out of the table (`verdicts.has_ground_truth` tells) and the rest is scored as usual; so is the data
randomisation check without a permuted-label model. `streetlib.attribution.verdicts` reads the table into words.

Two floors: the random map (method 'random', family 'floor': uniform noise, knows nothing) and the edge map (registry
method 'edge', family 'model-free': the image's Sobel gradient magnitude, knows the image but not the model), ranked
with the methods. A method that does not beat the edge map shows no more than the image's edges do.

**Statistics** (`streetlib.evaluation.stats`, the one rule of the code base). `leaderboard` summarises and compares
the per-image scores of one model or of several split seeds' models:

- *Unit: the split seed.* Each seed's model is explained on its own test images; a row's value per seed is its mean
  over them, and two rows are compared by their paired per-seed differences (each seed's mean of the per-image
  differences, on the images both rows scored) with the corrected resampled t of Nadeau & Bengio (``overlap`` =
  n_test / n_train of the splits, `stats.overlap`). The claims are about the configuration, whatever model a split
  gives it: the images of one seed share one model, so pooling every seed's per-image differences as independent
  units would resolve from one model's images a difference that changes from model to model, and the models of two
  seeds share most of their training images, which the correction accounts for. With one model (one seed) the units
  are its images (``overlap`` 0) and the claims are about that model.
- *Intervals:* 95%, the same t over the same units; that of a metric whose per-image values are hits
  (`Metric.hits`: the pointing game) is exact (Clopper-Pearson, `stats.proportion_interval`) over every image of
  every seed (a tied maximum counts its share, the sum rounded to whole hits). The ``interval`` column says which.
- *Families:* one `stats.family` (Holm) per output and metric: every row against the best row (``vs_best``), the
  random map (``vs_random``) and the edge map (``vs_edge``); for the sanity metrics, every row against the
  rank correlation ``threshold`` (``vs_threshold``): a map that changed with the class, the weights or the labels is
  shown below it. Verdicts are `stats`'s three: '<name> higher' (of the metric's values: for the metrics where lower
  is better, the higher one is the worse), 'equivalent within ±<margin>', 'inconclusive'.
- *Margins:* `MARGINS`, one per metric family, stated before any test result was read.

Each method's cost per image is measured as a multiple of one forward pass of the same batch.

*The Grad-CAM layer.* By default the CAM methods read the model's last convolution (Selvaraju et al.). Which layer's
maps point into the cues can differ (a strided head's first convolution can keep what its second pools away):
`localization_by_layer` scores Grad-CAM at several layers of one model, and `best_layer` picks one from that table,
computed on validation images so that no test image takes part in the choice.
"""

import json
import numbers
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from streetlib.attribution.explainer import explainer, find_layer_path, model_inputs
from streetlib.attribution.metrics.localization import ZHANG_TOLERANCE, random_maps, scaled_tolerance
from streetlib.attribution.metrics.registry import FAMILIES, METRICS, get_metric, of_family
from streetlib.attribution.metrics.sanity import random_logit_targets, randomized_copy
from streetlib.attribution.registry import METHODS, attribute
from streetlib.classes import OUTPUTS
from streetlib.constraints import Interval, Items, Keys, validate, validate_parameters
from streetlib.evaluation import stats

# Equivalence margins per metric family, fixed before any test result was read (issue #24). Localisation: 0.05 of a
# hit rate, a share of mass or of top pixels, or an AUC - on the demo's cues (about a tenth of the image) a smaller
# difference does not change which map shows them. Faithfulness: 0.05 of the area under a probability curve.
# Sanity: 0.1 of rank correlation, a tenth of the way from a map that kept its ranking to one that lost it.
MARGINS = {"localization": 0.05, "faithfulness": 0.05, "sanity": 0.1}
THRESHOLD = 0.5  # the rank correlation a sanity check is judged against: half of the pixels' ranking survives
SCORE_COLUMNS = ("seed", "image", "method", "family", "output", "layer", "metric", "value", "chance", "cost", "params")
COLUMNS = (
    "method",
    "family",
    "output",
    "layer",
    "metric",
    "mean",
    "low",
    "high",
    "interval",
    "chance",
    "images",
    "seeds",
    "cost",
    "params",
    "margin",
    "threshold",
    "vs_best",
    "vs_random",
    "vs_edge",
    "vs_threshold",
)
VERDICT_COLUMNS = ("vs_best", "vs_random", "vs_edge", "vs_threshold")


@dataclass(frozen=True, kw_only=True)
class LeaderboardConfig:
    """What `score` runs: methods, outputs, layers, the costly methods' settings and the pointing game's tolerance.

    Attributes:
        methods: list of `registry.METHODS` names. Default all (the edge map included).
        metrics: None (every metric of `metrics.registry.METRICS`, read when scoring) or a list of their names;
            scored in the registry's order.
        outputs: list of output names. Default ('region', 'city').
        layers: None (the model's last convolution) or a list of layer names; CAM methods (and Guided Grad-CAM) run
            at each, the others once.
        params: dict method name -> dict of that method's parameters (e.g. ``{"rise": {"masks": 500}}``), so a
            profile sets how many masks, samples and steps the costly methods use. Default {} (their defaults).
        curve_steps: int >= 1, points of the deletion and insertion curves minus one. Default 8.
        images: dict method name -> int >= 1: that method explains only the first so many images (everything it is
            scored on, localisation included, and its chance level, are of those images). Lets a profile keep the
            costly methods (occlusion, RISE, Score-CAM...) to a budget while the cheap ones use every image.
            Default {} (every method, every image).
        control_images: None (all) or int >= 1: the metrics that run the model (`Metric.runs_model`: the deletion
            and insertion curves, one model call per image and curve, and the sanity checks, every map computed
            again) use the first ``control_images`` of a method's images only; localisation uses all of them.
        pointing_tolerance: float in [0, 1), the pointing game's tolerance as a fraction of the image's side.
            Default `metrics.localization.ZHANG_TOLERANCE` (15 / 224: 4 px at 64 px).
        seed: int >= 0, for random logits, randomised weights, random maps, tie-breaking and the methods that draw
            random numbers (SmoothGrad, RISE) unless ``params`` gives them a seed. Default 0.

    Every field is checked when the configuration is made, against ``_parameter_constraints`` (see
    `streetlib.constraints`).
    """

    methods: tuple = tuple(METHODS)
    metrics: tuple | None = None
    outputs: tuple = OUTPUTS
    layers: tuple | None = None
    params: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    curve_steps: int = 8
    control_images: int | None = None
    pointing_tolerance: float = ZHANG_TOLERANCE
    seed: int = 0

    _parameter_constraints: ClassVar[dict] = {
        "methods": [Items(f"a non-empty list of {sorted(METHODS)}", values=METHODS, nonempty=True)],
        "metrics": [
            None,
            Items(
                "a non-empty list of `METRICS` names", test=lambda v: isinstance(v, str) and v in METRICS, nonempty=True
            ),
        ],
        "outputs": [Items(f"a non-empty list of {list(OUTPUTS)}", values=OUTPUTS, nonempty=True)],
        "layers": [None, Items("a non-empty list of layer names", test=lambda v: isinstance(v, str), nonempty=True)],
        "params": [Keys(METHODS)],
        "images": [Keys(METHODS)],
        "curve_steps": [Interval(numbers.Integral, 1, None, closed="left")],
        "control_images": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "pointing_tolerance": [Interval(numbers.Real, 0, 1, closed="left")],
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
        for name in ("methods", "metrics", "outputs", "layers"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else tuple(value))


# -- per-image scores of one model ----------------------------------------------------------------------------------


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
    """What every method of one output is scored against: the same images, classes, controls and metrics."""

    inputs: np.ndarray
    model: object
    output: str
    target: np.ndarray
    forward: float
    config: LeaderboardConfig
    metrics: tuple
    given: dict
    split_seed: int


def _context(images, masks, model, permuted, normalization, output, config, split_seed):
    """The `_Context` of one output: its predicted classes, the models and targets of the controls the metrics ask
    for (only those: a randomised copy costs a clone of the model), and the forward pass's time."""
    metrics = tuple(m for name, m in METRICS.items() if config.metrics is None or name in config.metrics)
    needs = {name for metric in metrics for name in metric.needs}
    inputs = model_inputs(images, normalization=normalization)
    logits = explainer(model).logits(inputs, output=output)
    target = np.argmax(logits, axis=1)
    randomized = randomized_copy(model, output=output, seed=config.seed) if "randomized_model" in needs else None
    other = random_logit_targets(logits, target, seed=config.seed) if "other_target" in needs else None
    given = {
        "masks": masks,
        "tolerance": scaled_tolerance(min(images.shape[1:3]), fraction=config.pointing_tolerance),
        "images": images,
        "model": model,
        "output": output,
        "target": target,
        "normalization": normalization,
        "steps": config.curve_steps,
        "seed": config.seed,
        "other_target": other,
        "randomized_model": randomized,
        "permuted_model": permuted,
    }
    return _Context(
        inputs=inputs,
        model=model,
        output=output,
        target=target,
        forward=_forward_seconds(model, inputs, output),
        config=config,
        metrics=metrics,
        given=given,
        split_seed=split_seed,
    )


def _padded(values, n):
    """Per-image values of the first images, NaN for the rest of ``n``: float64 `(n,)`."""
    out = np.full(n, np.nan)
    out[: len(values)] = values
    return out


def _first(given, count):
    """``given`` with its per-image arrays cut to the first ``count`` images."""
    per_image = ("masks", "images", "target", "other_target")
    return {k: v[:count] if k in per_image and v is not None else v for k, v in given.items()}


def _values(ctx, maps, explain=None):
    """Per-image values of every metric available for ``maps`` (float `(n, H, W)` of the first n images), NaN
    beyond the images a metric scored: a metric that runs the model scores the first ``control_images`` only, one
    that re-explains (``explain``) is left out of the random map's, and one whose inputs are missing is left out."""
    n = len(maps)
    k = min(ctx.config.control_images or n, n)
    values = {}
    for metric in ctx.metrics:
        count = k if metric.runs_model else n
        given = {**_first(ctx.given, count), "explain": explain}
        if metric.available(given):
            values[metric.name] = _padded(metric(maps[:count], given), n)
    return values


def _method_params(config, method):
    """A method's parameters as the leaderboard runs it: ``config.params``'s, plus ``config.seed`` for a method that
    draws random numbers (SmoothGrad's noise, RISE's masks) when they set none, so that a leaderboard is
    reproducible and its sanity checks compare maps made with the same draws."""
    params = dict(config.params.get(method, {}))
    if "seed" in METHODS[method].params:
        params.setdefault("seed", config.seed)
    return params


def _method_scores(ctx, method, layer):
    """Per-image values of every metric for one method at one layer (NaN beyond the images a metric scored), its
    cost in forward passes and the number of images it explained."""
    params = _method_params(ctx.config, method)
    n = min(ctx.config.images.get(method, len(ctx.inputs)), len(ctx.inputs))

    def run(model, target):
        inputs = ctx.inputs[: len(target)]
        return attribute(inputs, model, method=method, output=ctx.output, layer=layer, target=target, **params).maps

    # Traces once, on one image: a costly method's warm-up (Score-CAM: 513 forward passes an image) is not free.
    attribute(ctx.inputs[:1], ctx.model, method=method, output=ctx.output, layer=layer, **params)
    maps, seconds = _seconds(lambda: run(ctx.model, ctx.target[:n]))
    return _values(ctx, maps, explain=run), seconds / n / ctx.forward, n


def _floor_scores(ctx):
    """The random map's values: what a map that knows nothing scores (other noise for each split seed, so that its
    per-seed means vary as a method's do)."""
    maps = random_maps(ctx.given["images"].shape[:3], seed=(ctx.config.seed, ctx.split_seed))
    return _values(ctx, maps)


def _frame(ctx, values, *, method, family, layer, cost, params):
    """`SCORE_COLUMNS` rows of one method at one layer, from its per-image values."""
    n = len(next(iter(values.values())))
    given = _first(ctx.given, n)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "seed": ctx.split_seed,
                    "image": np.arange(len(per_image)),
                    "method": method,
                    "family": family,
                    "output": ctx.output,
                    "layer": layer or "",
                    "metric": metric,
                    "value": np.asarray(per_image, np.float64),
                    "chance": METRICS[metric].chance_of(given, n),
                    "cost": cost,
                    "params": json.dumps(params, sort_keys=True),
                }
            )
            for metric, per_image in values.items()
        ],
        ignore_index=True,
    )


def score(images, masks, model, *, normalization, config=None, permuted=None, split_seed=0):
    """Every method and metric of ``config`` on one model: per-image scores, what `leaderboard` summarises and
    compares.

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size (the model's test images).
        masks: `(n, H, W)` cue masks in {0, 1}, or None for data without a ground truth: the metrics that need masks
            (localisation) are then left out, and the others and the costs are scored all the same.
        model: the `keras.Model` (one image input, ``<output>_logits`` layers).
        normalization: the model's input normalisation.
        config: `LeaderboardConfig`. Default ``LeaderboardConfig()``: every method and metric, both outputs, the
            last convolution.
        permuted: None, or the model of the data randomisation test (`metrics.sanity.data_randomized_copy`: the
            same architecture trained on permuted labels); without it the 'data_randomization' metric is left out.
        split_seed: int, the seed of the split the model was trained on (the ``seed`` column, the unit of
            `leaderboard`'s comparisons). Default 0.

    Returns:
        `pandas.DataFrame` with `SCORE_COLUMNS`, one row per method x output x layer x metric x image: ``image`` the
        image's position in ``images``, ``value`` (NaN where the metric did not score it: past the method's or the
        controls' images, or an image without a cue), ``chance`` (the metric's chance level on that image, NaN
        without one), ``cost`` (seconds per image over one forward pass's; NaN for the random map) and ``params``
        (JSON). The method 'random' (family 'floor') is the random map.
    """
    config = LeaderboardConfig() if config is None else config
    images = np.asarray(images)
    masks = None if masks is None else np.asarray(masks)
    if masks is not None and images.shape[:3] != masks.shape:
        raise ValueError(f"`masks` must have shape {images.shape[:3]} to match `images`. Received {masks.shape}.")
    frames = []
    for output in config.outputs:
        ctx = _context(images, masks, model, permuted, normalization, output, config, split_seed)
        for method in config.methods:
            info = METHODS[method]
            for layer in (config.layers or (None,)) if info.uses_layer else (None,):
                values, cost, _ = _method_scores(ctx, method, layer)
                if not values:
                    continue
                shown = layer or (explainer(model).layer if info.uses_layer else None)
                params = {**info.params, **_method_params(config, method)}
                frame = _frame(ctx, values, method=method, family=info.family, layer=shown, cost=cost, params=params)
                frames.append(frame)
        floor = _floor_scores(ctx)
        if floor:
            frames.append(_frame(ctx, floor, method="random", family="floor", layer=None, cost=np.nan, params={}))
    if not frames:
        raise ValueError(
            f"Nothing to score: none of the metrics {[m.name for m in ctx.metrics]} has what it needs (masks, a "
            "permuted-label model). Pass them, or choose other `metrics` in the configuration."
        )
    return pd.concat(frames, ignore_index=True)


# -- the table and its comparisons -------------------------------------------------------------------------------


def row_name(method, layer, layered):
    """A row's name in verdicts: its method, with its layer when the table holds several (``layered``)."""
    return f"{method} @{layer}" if layered and layer else method


def _summary(values, metric, *, by_seed, overlap, alpha):
    """Mean, interval and counts of one row from its per-image values (a Series indexed by seed and image)."""
    seeds = values.index.get_level_values("seed").nunique()
    if get_metric(metric).hits:
        mean, low, high = stats.proportion_interval(round(values.sum()), len(values), confidence=1 - alpha)
        kind = "Clopper-Pearson over images"
    else:
        units = _units(values, by_seed)
        # The interval of a mean is compare's interval of its difference from 0 (the margin plays no part in it).
        interval = stats.compare(units, a="0", b="mean", margin=1.0, overlap=overlap if by_seed else 0.0, alpha=alpha)
        mean, low, high = float(units.mean()), interval["low"], interval["high"]
        kind = f"corrected t over seed means (overlap {overlap:.3f})" if by_seed else "t over images"
    return {"mean": mean, "low": low, "high": high, "interval": kind, "images": len(values), "seeds": seeds}


def _units(values, by_seed):
    """The units of the comparisons: per-seed means of per-image values (several seeds), else the images."""
    return values.groupby(level="seed").mean() if by_seed else values


def _paired(values, reference, by_seed):
    """Per-unit differences ``values - reference`` on the images both scored."""
    both = pd.concat({"b": values, "a": reference}, axis=1, join="inner").dropna()
    return _units(both["b"] - both["a"], by_seed)


def _row(part, values, *, output, metric, by_seed, overlap, margin, threshold, alpha):
    """One board row (a dict of `COLUMNS`, verdicts empty) from the score rows ``part`` of one method and layer."""
    scored = part["value"].notna()
    return {
        "method": part["method"].iloc[0],
        "family": part["family"].iloc[0],
        "output": output,
        "layer": part["layer"].iloc[0],
        "metric": metric,
        **_summary(values, metric, by_seed=by_seed, overlap=overlap, alpha=alpha),
        "chance": part.loc[scored, "chance"].mean() if scored.any() else np.nan,
        "cost": part.groupby("seed")["cost"].first().mean(),
        "params": part["params"].iloc[0],
        "margin": margin,
        "threshold": threshold if get_metric(metric).family == "sanity" else np.nan,
        **dict.fromkeys(VERDICT_COLUMNS, ""),
    }


def _questions(metric, info):
    """What each row of one output and metric is compared with: a dict verdict column -> reference, the reference a
    row key (method, layer) or 'threshold'; the best row gets 'best' in ``info``."""
    ranked = [key for key in info if info[key]["family"] != "floor"]
    if get_metric(metric).family == "sanity":
        return {key: {"vs_threshold": "threshold"} for key in ranked}
    if not ranked:
        return {}
    sign = 1 if get_metric(metric).higher_is_better else -1
    best = max(ranked, key=lambda k: sign * info[k]["mean"])
    info[best]["vs_best"] = "best"
    references = {"vs_best": best, "vs_random": ("random", ""), "vs_edge": ("edge", "")}
    return {key: {column: ref for column, ref in references.items() if ref != key and ref in info} for key in ranked}


def _judge(scores, *, overlap, margins, threshold, alpha):
    """The leaderboard's rows and every comparison behind their verdicts: (board, comparisons) DataFrames."""
    if "seed" not in scores:
        scores = scores.assign(seed=0)
    margins = {**MARGINS, **(margins or {})}
    by_seed = scores["seed"].nunique() > 1
    used = overlap if by_seed else 0.0
    rows, families = [], []
    for (output, metric), group in scores.groupby(["output", "metric"], sort=False):
        layered = len(set(scores.loc[scores["output"] == output, "layer"]) - {""}) > 1
        margin = margins[get_metric(metric).family]
        values, info = {}, {}
        for key, part in group.groupby(["method", "layer"], sort=False):
            values[key] = part.set_index(["seed", "image"])["value"].dropna()
            info[key] = _row(
                part,
                values[key],
                output=output,
                metric=metric,
                by_seed=by_seed,
                overlap=overlap,
                margin=margin,
                threshold=threshold,
                alpha=alpha,
            )
        asked = {}
        for key, questions in _questions(metric, info).items():
            for reference in questions.values():
                if (key, reference) in asked:
                    continue
                if reference == "threshold":
                    differences, a = _units(values[key] - threshold, by_seed), f"rank correlation {threshold:g}"
                else:
                    differences, a = _paired(values[key], values[reference], by_seed), row_name(*reference, layered)
                labels = {"output": output, "metric": metric, "method": key[0], "layer": key[1]}
                asked[key, reference] = labels | stats.compare(
                    differences, a=a, b=row_name(*key, layered), margin=margin, overlap=used, alpha=alpha
                )
        family = stats.family(list(asked.values()), alpha=alpha)
        verdicts = dict(zip(asked, family["verdict"], strict=True))
        for key, questions in _questions(metric, info).items():
            for column, reference in questions.items():
                info[key][column] = verdicts[key, reference]
        families.append(family)
        rows += info.values()
    return pd.DataFrame(rows, columns=list(COLUMNS)), pd.concat(families, ignore_index=True)


_JUDGE_CONSTRAINTS = {
    "overlap": [Interval(numbers.Real, 0, None, closed="left")],
    "threshold": [Interval(numbers.Real, 0, 1, closed="neither")],
    "alpha": [Interval(numbers.Real, 0, 1, closed="neither")],
}


def _check_judge(scores, overlap, margins, threshold, alpha):
    validate({"overlap": overlap, "threshold": threshold, "alpha": alpha}, _JUDGE_CONSTRAINTS)
    missing = sorted(set(SCORE_COLUMNS) - {"seed"} - set(scores.columns))
    if missing:
        raise ValueError(f"Invalid `scores`: columns {missing} are missing. Pass what `score` returns.")
    unknown = sorted(set(margins or {}) - set(FAMILIES))
    bad = {k: v for k, v in (margins or {}).items() if not isinstance(v, numbers.Real) or not v > 0}
    if unknown or bad:
        raise ValueError(
            f"Invalid `margins`: expected a dict of some of {list(FAMILIES)} to margins > 0. "
            f"Received: margins={margins!r}"
        )


def leaderboard(scores, *, overlap=0.0, margins=None, threshold=THRESHOLD, alpha=0.05):
    """The leaderboard: each row's mean and 95% interval over the units, and the verdicts of its comparisons.

    Args:
        scores: `pandas.DataFrame` of `score` rows: one model's, or several split seeds' concatenated (the ``seed``
            column tells them apart; see the module docstring for the units).
        overlap: float >= 0, ``n_test / n_train`` of the splits (`stats.overlap`), for several seeds; unused for
            one. Default 0.
        margins: None (`MARGINS`) or a dict of some of `metrics.registry.FAMILIES` to equivalence margins (> 0).
        threshold: float in (0, 1), the rank correlation the sanity checks are judged against. Default `THRESHOLD`.
        alpha: float in (0, 1), the family-wise level of each output x metric's comparisons. Default 0.05.

    Returns:
        `pandas.DataFrame` with `COLUMNS`, one row per method x output x layer x metric: ``mean``, ``low`` and
        ``high`` (the ``interval`` column says over what), ``chance`` (localisation metrics), ``images`` and
        ``seeds`` (how many scored it), ``cost`` (mean over seeds; NaN for the random map), ``params`` (JSON) and
        the verdicts (``vs_best``: 'best' or a verdict against it; ``vs_random``, ``vs_edge``; ``vs_threshold``
        for the sanity metrics; '' where not asked). `comparisons` gives the numbers behind every verdict.
    """
    _check_judge(scores, overlap, margins, threshold, alpha)
    return _judge(scores, overlap=overlap, margins=margins, threshold=threshold, alpha=alpha)[0]


def comparisons(scores, *, overlap=0.0, margins=None, threshold=THRESHOLD, alpha=0.05):
    """Every comparison behind `leaderboard`'s verdicts, as `stats.family` gives them.

    Args: as `leaderboard`.

    Returns:
        `pandas.DataFrame`, one row per comparison: ``output``, ``metric``, ``method`` and ``layer`` (the row judged)
        and `stats.family`'s columns (``a`` the reference: the best row, 'random', 'edge' or the threshold; ``b`` the
        row judged; ``n`` units, ``difference`` = b - a, interval, p-values raw and Holm-adjusted over its output
        and metric, ``margin``, ``overlap``, ``verdict``).
    """
    _check_judge(scores, overlap, margins, threshold, alpha)
    return _judge(scores, overlap=overlap, margins=margins, threshold=threshold, alpha=alpha)[1]


# -- the Grad-CAM layer -----------------------------------------------------------------------------------------

# Notebook 05's `layer` value that asks for the layer `best_layer` picks from validation images, not a test image.
CHOSEN_ON_VALIDATION = "validation"


def localization_by_layer(images, masks, model, *, normalization, layers, pointing_tolerance=ZHANG_TOLERANCE):
    """Grad-CAM's localisation of the region output at each of ``layers`` of one model, beside the random map.

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size.
        masks: `(n, H, W)` cue masks in {0, 1}.
        model: the `keras.Model`.
        normalization: the model's input normalisation.
        layers: non-empty list of convolution names, e.g. the model's last three.
        pointing_tolerance: the pointing game's tolerance as a fraction of the image side.

    Returns:
        `pandas.DataFrame`, one row per layer in the order given, then 'random': ``layer``, ``grid`` (the map's
        rows x columns, empty for the random map), the mean of each localisation metric over the images, each
        metric's mean chance level (``<metric>_chance``) and ``images`` (those with a cue).
    """
    config = LeaderboardConfig(
        methods=["grad_cam"],
        outputs=["region"],
        layers=list(layers),
        metrics=of_family("localization"),
        pointing_tolerance=pointing_tolerance,
    )
    scored = score(images, masks, model, normalization=normalization, config=config)
    scored = scored[scored["value"].notna()]
    scored = scored.assign(layer=scored["layer"].mask(scored["method"] == "random", "random"))
    means = scored.pivot_table(index="layer", columns="metric", values="value", sort=False)
    chances = scored.pivot_table(index="layer", columns="metric", values="chance", sort=False).add_suffix("_chance")
    table = means.join(chances).assign(images=scored.groupby("layer")["image"].nunique())
    table = table.rename_axis(columns=None).reset_index()
    grids = {name: "x".join(map(str, find_layer_path(model, name)[-1].output.shape[1:3])) for name in layers}
    table.insert(1, "grid", [grids.get(name, "") for name in table["layer"]])
    return table


def best_layer(table, *, metric="pointing_game"):
    """The layer of a `localization_by_layer` table whose maps score ``metric`` best (the random map excluded); of
    tied layers, the one listed first. Returns str."""
    if metric not in table.columns:
        raise ValueError(f"Invalid `metric`: {metric!r} is not a column of the table ({list(table.columns)}).")
    layers = table[table["layer"] != "random"]
    if layers.empty or layers[metric].isna().all():
        raise ValueError(f"The table scores no layer on {metric!r}: score layers on images with cues first.")
    return str(layers.loc[layers[metric].idxmax(), "layer"])


def chosen_layer(layer, table):
    """Notebook 05's ``layer`` parameter as a layer name: a name as given, '' as None (the model's last convolution),
    `CHOSEN_ON_VALIDATION` as `best_layer` of ``table`` (a `localization_by_layer` table of validation images, or
    None for data without cue masks, an error)."""
    if layer != CHOSEN_ON_VALIDATION:
        return layer or None
    if table is None:
        raise ValueError(
            f"layer={layer!r} chooses the Grad-CAM layer by its maps' hits in the cue masks of validation images, and "
            "these data have no cue masks (only the synthetic data have them): name a layer, or leave it empty for "
            "the model's last convolution."
        )
    return best_layer(table)
