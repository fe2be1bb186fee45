"""Which explanation finds the cues? Every attribution method scored against the ground-truth cue masks, on the
models of every split seed, and compared pair by pair.

For each model, every method of `registry.METHODS` x output x layer (CAM methods at each layer asked; the others read
no layer) explains the same images' predicted classes (`score`), and each map is scored per image by:

| metric | what it asks | better |
|---|---|---|
| pointing_game | is the map's maximum on a cue, within a tolerance (Zhang et al.: 15 px at 224 px)? | higher |
| relevance_mass_accuracy | share of the map's mass on cues (the energy pointing game with masks for boxes) | higher |
| relevance_rank_accuracy | share of the K top pixels on cues, K the cue area | higher |
| mask_auc | the map as a detector of cue pixels (ROC AUC) | higher |
| deletion_auc, insertion_auc | class probability as pixels are removed / put back in map order | lower / higher |
| random_logit | rank correlation with the map of a random other class (Sixt et al. 2020) | lower |
| randomization | rank correlation with the map of the model, every layer re-initialised (Adebayo et al. 2018) | lower |
| data_randomization | rank correlation with the map of a model trained on permuted labels (Adebayo et al.) | lower |

Data without cue masks (Street10, a user's photographs) have no ground truth for the four localisation metrics: they
are left out of the table (`has_ground_truth` tells) and the rest, which need no mask, is scored as usual.

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
- *Intervals:* 95%, the same t over the same units; the pointing game's is exact (Clopper-Pearson, `stats.
  proportion_interval`) over every image of every seed, its per-image values being hits (a tied maximum counts its
  share, the sum rounded to whole hits). The ``interval`` column says which.
- *Families:* one `stats.family` (Holm) per output and metric: every row against the best row (``vs_best``), the
  random map (``vs_random``) and the edge map (``vs_edge``); for the three sanity metrics, every row against the
  rank correlation ``threshold`` (``vs_threshold``): a map that changed with the class, the weights or the labels is
  shown below it. Verdicts are `stats`'s three: '<name> higher' (of the metric's values: for the metrics where lower
  is better, the higher one is the worse), 'equivalent within ±<margin>', 'inconclusive'.
- *Margins:* `MARGINS`, one per metric family, stated before any test result was read.

Each method's cost per image is measured as a multiple of one forward pass of the same batch.
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
from streetlib.attribution.explainer import explainer, model_inputs
from streetlib.attribution.registry import METHODS, attribute
from streetlib.classes import OUTPUTS
from streetlib.constraints import Interval, Items, Keys, validate, validate_parameters
from streetlib.evaluation import stats

HIGHER_IS_BETTER = {
    "pointing_game": True,
    "relevance_mass_accuracy": True,
    "relevance_rank_accuracy": True,
    "mask_auc": True,
    "deletion_auc": False,
    "insertion_auc": True,
    "random_logit": False,
    "randomization": False,
    "data_randomization": False,
}
LOCALIZATION = ("pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy", "mask_auc")
FAITHFULNESS = ("deletion_auc", "insertion_auc")
SANITY = ("random_logit", "randomization", "data_randomization")
METRIC_FAMILIES = {"localization": LOCALIZATION, "faithfulness": FAITHFULNESS, "sanity": SANITY}
# Equivalence margins per metric family, fixed before any test result was read (issue #24). Localisation: 0.05 of a
# hit rate, a share of mass or of top pixels, or an AUC - on the demo's cues (about a tenth of the image) a smaller
# difference does not change which map shows them. Faithfulness: 0.05 of the area under a probability curve.
# Sanity: 0.1 of rank correlation, a tenth of the way from a map that kept its ranking to one that lost it.
MARGINS = {"localization": 0.05, "faithfulness": 0.05, "sanity": 0.1}
THRESHOLD = 0.5  # the rank correlation a sanity check is judged against: half of the pixels' ranking survives
CHECKS = ("passes", "fails", "unclear")  # of a sanity check, see `sanity`
FLOORS = {"random": "the random map", "edge": "the edge map"}
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
_VERDICT_COLUMNS = ("vs_best", "vs_random", "vs_edge", "vs_threshold")


@dataclass(frozen=True, kw_only=True)
class LeaderboardSpec:
    """What `score` runs: methods, outputs, layers, the costly methods' settings and the pointing game's tolerance.

    Attributes:
        methods: list of `registry.METHODS` names. Default all (the edge map included).
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
        control_images: None (all) or int >= 1: the costly measurements - the deletion and insertion curves (one
            model call per image and curve) and the three sanity checks (every map computed again) - use the first
            ``control_images`` of a method's images only; localisation uses all of them.
        pointing_tolerance: float in [0, 1), the pointing game's tolerance as a fraction of the image's side.
            Default `metrics.ZHANG_TOLERANCE` (15 / 224: 4 px at 64 px).
        seed: int >= 0, for random logits, randomised weights, random maps, tie-breaking and the methods that draw
            random numbers (SmoothGrad, RISE) unless ``params`` gives them a seed. Default 0.

    Every field is checked when the spec is made, against ``_parameter_constraints`` (see `streetlib.constraints`).
    """

    methods: tuple = tuple(METHODS)
    outputs: tuple = OUTPUTS
    layers: tuple | None = None
    params: dict = field(default_factory=dict)
    images: dict = field(default_factory=dict)
    curve_steps: int = 8
    control_images: int | None = None
    pointing_tolerance: float = metrics.ZHANG_TOLERANCE
    seed: int = 0

    _parameter_constraints: ClassVar[dict] = {
        "methods": [Items(f"a non-empty list of {sorted(METHODS)}", values=METHODS, nonempty=True)],
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
        for name in ("methods", "outputs", "layers"):
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
    """What every method of one output is scored against: the same images, classes, controls and tolerance."""

    images: np.ndarray
    masks: np.ndarray | None
    inputs: np.ndarray
    model: object
    randomized: object
    permuted: object
    normalization: str
    output: str
    target: np.ndarray
    other: np.ndarray
    forward: float
    tolerance: int
    spec: LeaderboardSpec
    split_seed: int


def _context(images, masks, model, permuted, normalization, output, spec, split_seed):
    inputs = model_inputs(images, normalization=normalization)
    logits = explainer(model).logits(inputs, output=output)
    target = np.argmax(logits, axis=1)
    return _Context(
        images=images,
        masks=masks,
        inputs=inputs,
        model=model,
        randomized=metrics.randomized_copy(model, output=output, seed=spec.seed),
        permuted=permuted,
        normalization=normalization,
        output=output,
        target=target,
        other=metrics.random_logit_targets(logits, target, seed=spec.seed),
        forward=_forward_seconds(model, inputs, output),
        tolerance=metrics.scaled_tolerance(min(images.shape[1:3]), fraction=spec.pointing_tolerance),
        spec=spec,
        split_seed=split_seed,
    )


def _padded(values, n):
    """Per-image values of the first images, NaN for the rest of ``n``: float64 `(n,)`."""
    out = np.full(n, np.nan)
    out[: len(values)] = values
    return out


def _curves(ctx, maps, n):
    k = min(ctx.spec.control_images or n, n)
    curves = metrics.perturbation_curves(
        ctx.images[:k],
        maps[:k],
        ctx.model,
        output=ctx.output,
        target=ctx.target[:k],
        normalization=ctx.normalization,
        steps=ctx.spec.curve_steps,
        seed=ctx.spec.seed,
    )
    return {name: _padded(curves[name], n) for name in FAITHFULNESS}


def _localization(ctx, maps):
    """Per-image values of the localisation metrics; none without masks (no ground truth to score against)."""
    if ctx.masks is None:
        return {}
    masks = ctx.masks[: len(maps)]
    return {
        "pointing_game": metrics.pointing_game(maps, masks, tolerance=ctx.tolerance),
        "relevance_mass_accuracy": metrics.relevance_mass_accuracy(maps, masks),
        "relevance_rank_accuracy": metrics.relevance_rank_accuracy(maps, masks),
        "mask_auc": metrics.mask_auc(maps, masks),
    }


def _chance(ctx, n):
    """What a map that knows nothing scores, per image and localisation metric (none without masks): the share of
    the image the cue covers (widened by the tolerance for the pointing game), 0.5 for the mask AUC."""
    if ctx.masks is None:
        return {}
    area = (ctx.masks[:n] > 0).mean(axis=(1, 2))
    widened = metrics.dilate_masks(ctx.masks[:n], ctx.tolerance).mean(axis=(1, 2))
    return {
        "pointing_game": widened,
        "relevance_mass_accuracy": area,
        "relevance_rank_accuracy": area,
        "mask_auc": np.full(n, 0.5),
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
    """Per-image values of every metric for one method at one layer (NaN beyond the images a metric scored), its
    cost in forward passes and the number of images it explained."""
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
    controls = {"random_logit": (ctx.model, ctx.other), "randomization": (ctx.randomized, ctx.target)}
    if ctx.permuted is not None:
        controls["data_randomization"] = (ctx.permuted, ctx.target)
    values = {
        **_localization(ctx, maps),
        **_curves(ctx, maps, n),
        **{
            name: _padded(metrics.rank_correlation(maps[:k], run(model, target, k)), n)
            for name, (model, target) in controls.items()
        },
    }
    return values, seconds / n / ctx.forward, n


def _floor_scores(ctx):
    """The random map's values: what a map that knows nothing scores (other noise for each split seed, so that its
    per-seed means vary as a method's do)."""
    maps = metrics.random_maps(ctx.images.shape[:3], seed=(ctx.spec.seed, ctx.split_seed))
    return {**_localization(ctx, maps), **_curves(ctx, maps, len(maps))}


def _frame(ctx, values, *, method, family, layer, cost, params, split_seed):
    """`SCORE_COLUMNS` rows of one method at one layer, from its per-image values."""
    chance = _chance(ctx, len(next(iter(values.values()))))
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "seed": split_seed,
                    "image": np.arange(len(per_image)),
                    "method": method,
                    "family": family,
                    "output": ctx.output,
                    "layer": layer or "",
                    "metric": metric,
                    "value": np.asarray(per_image, np.float64),
                    "chance": chance.get(metric, np.full(len(per_image), np.nan)),
                    "cost": cost,
                    "params": json.dumps(params, sort_keys=True),
                }
            )
            for metric, per_image in values.items()
        ],
        ignore_index=True,
    )


def score(images, masks, model, *, normalization, spec=None, permuted=None, split_seed=0):
    """Every method of ``spec`` on one model: per-image scores, what `leaderboard` summarises and compares.

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size (the model's test images).
        masks: `(n, H, W)` cue masks in {0, 1}, or None for data without a ground truth: the localisation metrics
            are then left out, and faithfulness, the sanity checks and the costs are scored all the same.
        model: the `keras.Model` (one image input, ``<output>_logits`` layers).
        normalization: the model's input normalisation.
        spec: `LeaderboardSpec`. Default ``LeaderboardSpec()``: every method, both outputs, the last convolution.
        permuted: None, or the model of the data randomisation test (`metrics.data_randomized_copy`: the same
            architecture trained on permuted labels); without it the 'data_randomization' metric is left out.
        split_seed: int, the seed of the split the model was trained on (the ``seed`` column, the unit of
            `leaderboard`'s comparisons). Default 0.

    Returns:
        `pandas.DataFrame` with `SCORE_COLUMNS`, one row per method x output x layer x metric x image: ``image`` the
        image's position in ``images``, ``value`` (NaN where the metric did not score it: past the method's or the
        controls' images, or an image without a cue), ``chance`` (a localisation metric's chance level on that
        image), ``cost`` (seconds per image over one forward pass's; NaN for the random map) and ``params`` (JSON).
        The method 'random' (family 'floor') is the random map.
    """
    spec = LeaderboardSpec() if spec is None else spec
    images = np.asarray(images)
    masks = None if masks is None else np.asarray(masks)
    if masks is not None and images.shape[:3] != masks.shape:
        raise ValueError(f"`masks` must have shape {images.shape[:3]} to match `images`. Received {masks.shape}.")
    frames = []
    for output in spec.outputs:
        ctx = _context(images, masks, model, permuted, normalization, output, spec, split_seed)
        for method in spec.methods:
            info = METHODS[method]
            for layer in (spec.layers or (None,)) if info.uses_layer else (None,):
                values, cost, _ = _method_scores(ctx, method, layer)
                shown = layer or (explainer(model).layer if info.uses_layer else None)
                params = {**info.params, **_method_params(spec, method)}
                frames.append(
                    _frame(
                        ctx,
                        values,
                        method=method,
                        family=info.family,
                        layer=shown,
                        cost=cost,
                        params=params,
                        split_seed=split_seed,
                    )
                )
        frames.append(
            _frame(
                ctx,
                _floor_scores(ctx),
                method="random",
                family="floor",
                layer=None,
                cost=np.nan,
                params={},
                split_seed=split_seed,
            )
        )
    return pd.concat(frames, ignore_index=True)


# -- the table and its comparisons -------------------------------------------------------------------------------


def _family_of(metric):
    return next(name for name, members in METRIC_FAMILIES.items() if metric in members)


def _name(method, layer, layered):
    """A row's name in verdicts: its method, with its layer when the table holds several."""
    return f"{method} @{layer}" if layered and layer else method


def _summary(values, metric, *, by_seed, overlap, alpha):
    """Mean, interval and counts of one row from its per-image values (a Series indexed by seed and image)."""
    seeds = values.index.get_level_values("seed").nunique()
    if metric == "pointing_game":
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
        "threshold": threshold if metric in SANITY else np.nan,
        **dict.fromkeys(_VERDICT_COLUMNS, ""),
    }


def _questions(metric, info):
    """What each row of one output and metric is compared with: a dict verdict column -> reference, the reference a
    row key (method, layer) or 'threshold'; the best row gets 'best' in ``info``."""
    ranked = [key for key in info if info[key]["family"] != "floor"]
    if metric in SANITY:
        return {key: {"vs_threshold": "threshold"} for key in ranked}
    if not ranked:
        return {}
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
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
        margin = margins[_family_of(metric)]
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
                    differences, a = _paired(values[key], values[reference], by_seed), _name(*reference, layered)
                labels = {"output": output, "metric": metric, "method": key[0], "layer": key[1]}
                asked[key, reference] = labels | stats.compare(
                    differences, a=a, b=_name(*key, layered), margin=margin, overlap=used, alpha=alpha
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
    unknown = sorted(set(margins or {}) - set(METRIC_FAMILIES))
    bad = {k: v for k, v in (margins or {}).items() if not isinstance(v, numbers.Real) or not v > 0}
    if unknown or bad:
        raise ValueError(
            f"Invalid `margins`: expected a dict of some of {list(METRIC_FAMILIES)} to margins > 0. "
            f"Received: margins={margins!r}"
        )


def leaderboard(scores, *, overlap=0.0, margins=None, threshold=THRESHOLD, alpha=0.05):
    """The leaderboard: each row's mean and 95% interval over the units, and the verdicts of its comparisons.

    Args:
        scores: `pandas.DataFrame` of `score` rows: one model's, or several split seeds' concatenated (the ``seed``
            column tells them apart; see the module docstring for the units).
        overlap: float >= 0, ``n_test / n_train`` of the splits (`stats.overlap`), for several seeds; unused for
            one. Default 0.
        margins: None (`MARGINS`) or a dict of some of `METRIC_FAMILIES` to equivalence margins (> 0).
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


# -- reading the table -----------------------------------------------------------------------------------------------


def _board(table):
    """``table`` with its text columns as text: a CSV round trip reads an empty layer or verdict as NaN."""
    text = [c for c in ("layer", *_VERDICT_COLUMNS) if c in table]
    return table.assign(**{c: table[c].fillna("").astype(str) for c in text})


def has_ground_truth(table):
    """True when ``table`` (a `leaderboard` DataFrame) was scored against cue masks (it has localisation rows)."""
    return bool(table["metric"].isin(LOCALIZATION).any())


def _label(row, rows):
    """A row's name as shown: with its layer when ``rows`` hold several layers, and its number of images when it
    explained fewer than the most any row of its metric did."""
    label = _name(row["method"], row["layer"], len(set(rows["layer"]) - {""}) > 1)
    if row["images"] < rows[rows["metric"] == row["metric"]]["images"].max():
        label += f" (n={row['images']})"
    return label


def _winner(verdict):
    """The name a '<name> higher' verdict puts higher, else None."""
    return verdict.removesuffix(" higher") if verdict and stats.verdict_kind(verdict) == "higher" else None


def _shown_better(row, column, reference, rows):
    """Whether ``row``'s verdict in ``column`` shows it better than ``reference`` (a row name) on its metric."""
    winner = _winner(row[column])
    higher = HIGHER_IS_BETTER[row["metric"]]
    return winner == (_name(row["method"], row["layer"], len(set(rows["layer"]) - {""}) > 1) if higher else reference)


def ranking(table, *, output="region", metric="relevance_mass_accuracy"):
    """The methods of one output ranked on one metric, best first, with the verdicts of their paired comparisons.

    Args:
        table: the `leaderboard` DataFrame (or its CSV read back).
        output: str. Default 'region'.
        metric: one of `HIGHER_IS_BETTER`. Default 'relevance_mass_accuracy'.

    Returns:
        `pandas.DataFrame` with the rows of ``table`` for that output and metric (the random map excluded, the edge
        map included), best first: every column, among them ``vs_best`` ('best', or the verdict of the row against
        the best), ``vs_random`` and ``vs_edge`` (against the two floors; '' for the sanity metrics, judged against
        the threshold in ``vs_threshold``).
    """
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"Invalid `metric`. Expected one of {list(HIGHER_IS_BETTER)}. Received: metric={metric!r}")
    table = _board(table)
    rows = table[(table["output"] == output) & (table["metric"] == metric)]
    if rows.empty and metric in LOCALIZATION and not has_ground_truth(table):
        raise ValueError(
            f"Cannot rank on {metric!r}: the leaderboard was scored without cue masks (no ground truth). Rank on one "
            f"of {[m for m in HIGHER_IS_BETTER if m not in LOCALIZATION]}."
        )
    if rows.empty:
        raise ValueError(f"The table has no {metric!r} rows for output={output!r}.")
    return rows[rows["family"] != "floor"].sort_values("mean", ascending=not HIGHER_IS_BETTER[metric], kind="stable")


def sanity(table):
    """Which methods pass the three sanity checks, per output, from their verdicts against the threshold.

    A method *passes* a check when its rank correlation is shown below the threshold (its map changes with the
    class, the weights or the labels: the verdict names the threshold higher), *fails* when shown above it (the map
    mostly survives: it reflects the image more than the model), and is *unclear* otherwise (equivalent to the
    threshold within the margin, or inconclusive).

    Args:
        table: the `leaderboard` DataFrame.

    Returns:
        `pandas.DataFrame` with columns method, layer, output, metric (one of `SANITY`), mean, low, high, images,
        seeds, vs_threshold (the verdict) and check ('passes', 'fails' or 'unclear').
    """
    rows = _board(table)
    rows = rows[rows["metric"].isin(SANITY)]
    winners = rows["vs_threshold"].map(_winner)
    check = np.where(
        winners.str.startswith("rank correlation", na=False), CHECKS[0], np.where(winners.notna(), CHECKS[1], CHECKS[2])
    )
    columns = ["method", "layer", "output", "metric", "mean", "low", "high", "images", "seeds", "vs_threshold"]
    return rows[columns].assign(check=check).reset_index(drop=True)


def _value(row, rows):
    return f"{_label(row, rows)} {row['mean']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"


def findings(table, *, output="region", metric=None):
    """The leaderboard in words, every judgement a verdict of `leaderboard`'s paired comparisons.

    Args:
        table: the `leaderboard` DataFrame (or its CSV read back).
        output: str. Default 'region'.
        metric: the metric methods are ranked on. Default None: 'relevance_mass_accuracy' when the table was scored
            against cue masks, else 'insertion_auc' (faithfulness needs no mask), and the first line says so.

    Returns:
        list of str: the best method on ``metric`` (value and interval, over how many seeds and images), those not
        shown below it (equivalent or inconclusive), those not shown better than the random map and than the edge
        map, and which pass and fail each sanity check on ``output``.
    """
    lines = []
    table = _board(table)
    if metric is None:
        metric = "relevance_mass_accuracy" if has_ground_truth(table) else "insertion_auc"
    if not has_ground_truth(table):
        lines.append(
            f"Localisation ({', '.join(LOCALIZATION)}): no ground truth (the data have no cue masks); methods are "
            f"ranked on {metric}."
        )
    ranked = ranking(table, output=output, metric=metric)
    rows = table[table["output"] == output]
    best = ranked.iloc[0]
    others = ranked.iloc[1:]
    kinds = others["vs_best"].map(lambda v: stats.verdict_kind(v) if v else "")
    direction = "higher" if HIGHER_IS_BETTER[metric] else "lower"
    lead = "Finds the cues best" if metric in LOCALIZATION else "Best"
    lines.append(
        f"{lead} ({metric}, {output} output): {_value(best, rows)} ({best['interval']}, {best['seeds']} seeds, "
        f"{best['images']} images; {direction} is better); equivalent to it within ±{best['margin']:g}: "
        f"{', '.join(_value(r, rows) for _, r in others[kinds == 'equivalent'].iterrows()) or 'none'}; not resolved "
        f"from it: {', '.join(_value(r, rows) for _, r in others[kinds == 'inconclusive'].iterrows()) or 'none'}."
    )
    for column, reference in (("vs_random", "random"), ("vs_edge", "edge")):
        if not (rows["method"] == reference).any() or ranked[column].eq("").all():
            continue
        judged = ranked[ranked["method"] != reference]
        below = [_label(r, rows) for _, r in judged.iterrows() if not _shown_better(r, column, reference, rows)]
        lines.append(f"Not shown better than {FLOORS[reference]} ({reference}): {', '.join(below) or 'none'}.")
    checks = sanity(table)
    for name, what in (
        ("randomization", "the map of the model with every layer re-initialised"),
        ("data_randomization", "the map of the model trained on permuted labels"),
        ("random_logit", "the map of a random other class"),
    ):
        rows_of = checks[(checks["output"] == output) & (checks["metric"] == name)]
        if rows_of.empty:
            continue
        names = {v: [_label(r, rows) for _, r in rows_of[rows_of["check"] == v].iterrows()] for v in CHECKS}
        verdicts = "; ".join(f"{v}: {', '.join(names[v]) or 'none'}" for v in CHECKS)
        threshold = rows[rows["metric"] == name]["threshold"].iloc[0]
        lines.append(f"{name} check (rank correlation with {what}, shown below {threshold:g}) - {verdicts}.")
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
    table = _board(table)
    rows = table[table["output"] == output]
    names = [m for m in HIGHER_IS_BETTER if m in set(rows["metric"])]
    fig = Figure(figsize=(4.2 * 4, 3.6 * ((len(names) + 3) // 4)), layout="constrained")
    axes = fig.subplots((len(names) + 3) // 4, 4, squeeze=False).ravel()
    for ax, metric in zip(axes, names, strict=False):
        r = rows[rows["metric"] == metric]
        floor = r[r["family"] == "floor"]
        r = r[r["family"] != "floor"].sort_values("mean", ascending=not HIGHER_IS_BETTER[metric], kind="stable")
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
    intervals = "; ".join(sorted(set(rows["interval"])))
    seeds = int(rows["seeds"].max()) if len(rows) else 0
    fig.suptitle(
        f"{title or f'Attribution leaderboard, {output} output'}\nmean and 95% interval ({intervals}), {seeds} seed(s)"
    )
    return fig
