"""Every metric of attribution maps by name, behind one small interface: what `streetlib.attribution.leaderboard`
scores and judges, with no metric knowledge of its own.

A `Metric` is a function of the maps and of named inputs (its parameters after the maps: what it needs), the
direction in which it is better, its chance level, its family and, for the findings, what it asks. Adding a metric
is one function and one `METRICS` entry; the leaderboard then scores, ranks, judges and draws it.

| metric | family | what it asks | better | chance |
|---|---|---|---|---|
| pointing_game | localization | is the map's maximum on a cue, within a tolerance (Zhang et al.)? | higher | widened |
| relevance_mass_accuracy | localization | share of the map's mass on cues (energy pointing game) | higher | cue area |
| relevance_rank_accuracy | localization | share of the K top pixels on cues, K the cue area | higher | cue area |
| mask_auc | localization | the map as a detector of cue pixels (ROC AUC) | higher | 0.5 |
| deletion_auc | faithfulness | class probability as pixels are removed in map order | lower | |
| insertion_auc | faithfulness | class probability as pixels are put back in map order | higher | |
| random_logit | sanity | rank correlation with the map of a random other class (Sixt et al.) | lower | |
| randomization | sanity | the same with the model's every layer re-initialised (Adebayo et al.) | lower | |
| data_randomization | sanity | the same with a model trained on permuted labels (Adebayo et al.) | lower | |
"""

import inspect
from dataclasses import dataclass, field

import numpy as np

from streetlib.attribution.metrics import faithfulness, localization, sanity

FAMILIES = ("localization", "faithfulness", "sanity")
DIRECTIONS = ("higher", "lower")
# The inputs a metric can ask for by naming them as parameters: what the leaderboard hands it for one method's maps
# of one output (every array is of the same images as the maps).
INPUTS = {
    "masks": "`(n, H, W)` cue masks; None for data without them, and a metric that needs them is not scored",
    "tolerance": "int >= 0, the pointing game's tolerance in pixels",
    "images": "uint8 `(n, H, W, 3)` RGB at the model's input size",
    "model": "the explained `keras.Model`",
    "output": "str, the explained output",
    "target": "int `(n,)`, the explained classes (the model's predictions)",
    "normalization": "the model's input normalisation",
    "steps": "int >= 1, points of a perturbation curve minus one",
    "seed": "int, for whatever a metric draws at random",
    "explain": "callable ``(model, target) -> float (n, H, W)``: the same method's maps of the same images",
    "other_target": "int `(n,)`, a random class other than ``target`` for each image",
    "randomized_model": "the model with every layer re-initialised",
    "permuted_model": "the model trained on permuted labels; None when not given, and a metric that needs it is "
    "not scored",
}
# Inputs that run the model: a metric that needs one is costly, and the leaderboard scores it on its control images.
MODEL_INPUTS = ("model", "explain", "randomized_model", "permuted_model")


def _needs(function, *, skip):
    """The names of ``function``'s parameters after the first ``skip``, each checked against `INPUTS`."""
    names = tuple(inspect.signature(function).parameters)[skip:]
    unknown = sorted(set(names) - set(INPUTS))
    if unknown:
        raise ValueError(
            f"Invalid parameters {unknown} of {function.__name__!r}: a metric can ask for {sorted(INPUTS)}."
        )
    return names


@dataclass(frozen=True)
class Metric:
    """One metric of the registry.

    Attributes:
        name: str, the metric's name (`METRICS` key, the ``metric`` column of the leaderboard).
        function: callable ``(maps, **inputs) -> float (n,)``: one value per image of maps float `(n, H, W)`, NaN
            for an image it does not score. Its parameters after ``maps`` name the `INPUTS` it needs.
        direction: 'higher' or 'lower', which values are better.
        family: one of `FAMILIES`: 'localization' (against the cue masks), 'faithfulness' (the model on perturbed
            images) or 'sanity' (a rank correlation judged against a threshold).
        chance: None (no chance level), a float, or a callable of some `INPUTS` returning float `(n,)`: what a map
            that knows nothing scores on each image.
        hits: bool, whether the per-image values are hits (1, 0, or a tied maximum's share), so that the mean's
            interval is the exact one of a proportion. Default False.
        description: str, what the metric asks, in words (the findings quote a sanity check's).
        needs: tuple of str, the `INPUTS` ``function`` asks for (read from its signature, not given).
    """

    name: str
    function: object
    direction: str
    family: str
    chance: object = None
    hits: bool = False
    description: str = ""
    needs: tuple = field(init=False)

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"Invalid `direction`. Expected one of {DIRECTIONS}. Received: direction={self.direction!r}"
            )
        if self.family not in FAMILIES:
            raise ValueError(f"Invalid `family`. Expected one of {FAMILIES}. Received: family={self.family!r}")
        if callable(self.chance):
            _needs(self.chance, skip=0)
        elif self.chance is not None and not isinstance(self.chance, float):
            raise ValueError(f"Invalid `chance`: expected None, a float or a callable. Received: {self.chance!r}")
        object.__setattr__(self, "needs", _needs(self.function, skip=1))

    @property
    def higher_is_better(self):
        return self.direction == "higher"

    @property
    def runs_model(self):
        """Whether the metric runs the model (needs one of `MODEL_INPUTS`): a costly control."""
        return bool(set(self.needs) & set(MODEL_INPUTS))

    def available(self, inputs):
        """Whether every input the metric needs is given (not None) in ``inputs``, a dict of `INPUTS`."""
        return all(inputs.get(name) is not None for name in self.needs)

    def __call__(self, maps, inputs):
        """Per-image values of ``maps`` (float `(n, H, W)`) given ``inputs`` (a dict of at least `needs`)."""
        return self.function(maps, **{name: inputs[name] for name in self.needs})

    def chance_of(self, inputs, n):
        """The chance level of each of ``n`` images, float64 `(n,)` (NaN without one)."""
        if self.chance is None:
            return np.full(n, np.nan)
        if not callable(self.chance):
            return np.full(n, self.chance)
        return self.chance(**{name: inputs[name] for name in inspect.signature(self.chance).parameters})


METRICS = {
    m.name: m
    for m in (
        Metric(
            "pointing_game",
            localization.pointing_game,
            direction="higher",
            family="localization",
            chance=localization.widened_area,
            hits=True,
            description="is the map's maximum on a cue, within a tolerance?",
        ),
        Metric(
            "relevance_mass_accuracy",
            localization.relevance_mass_accuracy,
            direction="higher",
            family="localization",
            chance=localization.mask_area,
            description="the share of the map's mass on cues",
        ),
        Metric(
            "relevance_rank_accuracy",
            localization.relevance_rank_accuracy,
            direction="higher",
            family="localization",
            chance=localization.mask_area,
            description="the share of the K top pixels on cues, K the cue area",
        ),
        Metric(
            "mask_auc",
            localization.mask_auc,
            direction="higher",
            family="localization",
            chance=0.5,
            description="the map as a detector of cue pixels",
        ),
        Metric(
            "deletion_auc",
            faithfulness.deletion_auc,
            direction="lower",
            family="faithfulness",
            description="the class probability as pixels are removed in map order",
        ),
        Metric(
            "insertion_auc",
            faithfulness.insertion_auc,
            direction="higher",
            family="faithfulness",
            description="the class probability as pixels are put back in map order",
        ),
        Metric(
            "random_logit",
            sanity.random_logit,
            direction="lower",
            family="sanity",
            description="rank correlation with the map of a random other class",
        ),
        Metric(
            "randomization",
            sanity.randomization,
            direction="lower",
            family="sanity",
            description="rank correlation with the map of the model with every layer re-initialised",
        ),
        Metric(
            "data_randomization",
            sanity.data_randomization,
            direction="lower",
            family="sanity",
            description="rank correlation with the map of the model trained on permuted labels",
        ),
    )
}
# What a leaderboard is ranked on unless told: where the cues are, or without cue masks how much of the class
# probability the map's first pixels restore.
RANKED_ON = "relevance_mass_accuracy"
RANKED_ON_WITHOUT_MASKS = "insertion_auc"


def get_metric(name):
    """The `Metric` called ``name``; a ValueError listing the valid names otherwise."""
    if name not in METRICS:
        raise ValueError(f"Invalid `metric`. Expected one of {list(METRICS)}. Received: metric={name!r}")
    return METRICS[name]


def of_family(family):
    """The names of the registered metrics of ``family`` (one of `FAMILIES`), in registry order."""
    if family not in FAMILIES:
        raise ValueError(f"Invalid `family`. Expected one of {FAMILIES}. Received: family={family!r}")
    return tuple(name for name, metric in METRICS.items() if metric.family == family)
