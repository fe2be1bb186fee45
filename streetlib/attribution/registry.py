"""Every attribution method by name, behind one entry point.

`attribute(inputs, model, method="grad_cam", output=..., layer=..., target=..., rank=..., **params)` runs any method
on a batch and returns its `Attribution`, maps at the input's resolution, normalised per image to [0, 1] (an
all-zero map stays zero), so that the metrics compare methods on equal terms and every figure can draw any of them.
`explain` runs several methods on several outputs, all explaining the same classes (the original study's three by
default). `METHODS` maps each name to a `Method`: the function (one per unit, in `cams`, `gradients`,
`perturbation`, `guided` or `model_free`), its family, whether it reads a feature layer, what it differentiates or
perturbs, and its parameters with their defaults.

A new method is one function ``method(ex, inputs, *, output="city", target=None, rank=1, **params) -> Attribution``
(``ex`` an `explainer.Explainer`) and one line: a `_method(...)` entry of `METHODS` in this module, or, without
editing the package, `register(function, family, uses_layer=..., differentiates=...)`. It then reaches the
leaderboard, ``streetlib analyze --method NAME`` and the figures of `plots`.

| name | family | layer | differentiates or perturbs |
|---|---|---|---|
| grad_cam, grad_cam_plus_plus, hires_cam, xgrad_cam, layer_cam | cam | yes | the class logit w.r.t. the feature map |
| eigen_cam | cam | yes | nothing: the feature map's first principal component (class-agnostic) |
| score_cam | cam | yes | the input, masked by each channel of the feature map (forward passes only) |
| saliency, gradient_x_input, smoothgrad, integrated_gradients | gradient | no | the class logit w.r.t. the input |
| occlusion, rise | perturbation | no | the input, by patches or random masks (forward passes only) |
| guided_backprop, guided_grad_cam | guided | guided_grad_cam | the class logit through guided ReLUs |
| edge | model-free | no | nothing: the image's Sobel gradient magnitude, the same for every model (a floor) |
"""

import inspect
from dataclasses import dataclass, field, replace

import numpy as np

from streetlib.attribution import cams, gradients, guided, model_free, perturbation
from streetlib.attribution.explainer import explainer, logits_tensor
from streetlib.attribution.maps import normalize_maps, upsample_maps
from streetlib.classes import OUTPUTS

# The arguments every method takes; anything else a method declares is one of its own parameters.
_COMMON = ("ex", "inputs", "output", "target", "rank")


@dataclass(frozen=True)
class Method:
    """One attribution method of the registry.

    Attributes:
        name: str, the method's name (`METHODS` key).
        function: callable ``(ex, inputs, *, output, target, rank, **params) -> Attribution``.
        family: str, 'cam', 'gradient', 'perturbation', 'guided' or 'model-free'.
        uses_layer: bool, whether the method reads the feature map of a layer (``layer=`` of `attribute`).
        differentiates: str, what the method differentiates or perturbs, for tables and docs.
        params: dict name -> default of the method's own parameters (read from its signature).
    """

    name: str
    function: object
    family: str
    uses_layer: bool
    differentiates: str
    params: dict = field(default_factory=dict)

    def layer_of(self, layer):
        """``layer`` (a name, or None for the model's last convolution) for a method that reads one, else None: what
        to pass `attribute` when one layer is asked of several methods."""
        return layer if self.uses_layer else None


def _method(function, family, *, uses_layer, differentiates):
    signature = inspect.signature(function).parameters.values()
    params = {p.name: p.default for p in signature if p.name not in _COMMON}
    return Method(function.__name__, function, family, uses_layer, differentiates, params)


def register(function, family, *, uses_layer, differentiates):
    """Add a method to `METHODS` under its function's name, from outside the package: the leaderboard, the analyzer
    and the figures find it there.

    Args:
        function: ``method(ex, inputs, *, output="city", target=None, rank=1, **params) -> Attribution``, ``ex`` an
            `explainer.Explainer`; its keyword parameters beyond these become the method's `Method.params`.
        family: str, for tables (e.g. 'cam', 'gradient', 'model-free').
        uses_layer: bool, whether the method reads the feature map of ``ex.layer``.
        differentiates: str, what the method differentiates or perturbs, for tables and docs.

    Returns:
        The `Method` added.

    Raises:
        ValueError: a method of that name is registered already.
    """
    method = _method(function, family, uses_layer=uses_layer, differentiates=differentiates)
    if method.name in METHODS:
        raise ValueError(f"Invalid `function`: a method named {method.name!r} is registered already.")
    METHODS[method.name] = method
    return method


_LOGIT_AT_LAYER = "the class logit w.r.t. the feature map"
_LOGIT_AT_INPUT = "the class logit w.r.t. the input"
METHODS = {
    m.name: m
    for m in (
        _method(cams.grad_cam, "cam", uses_layer=True, differentiates=_LOGIT_AT_LAYER),
        _method(cams.grad_cam_plus_plus, "cam", uses_layer=True, differentiates=_LOGIT_AT_LAYER),
        _method(cams.hires_cam, "cam", uses_layer=True, differentiates=_LOGIT_AT_LAYER),
        _method(cams.xgrad_cam, "cam", uses_layer=True, differentiates=_LOGIT_AT_LAYER),
        _method(cams.layer_cam, "cam", uses_layer=True, differentiates=_LOGIT_AT_LAYER),
        _method(cams.eigen_cam, "cam", uses_layer=True, differentiates="nothing (first principal component)"),
        _method(cams.score_cam, "cam", uses_layer=True, differentiates="the input masked by each channel"),
        _method(gradients.saliency, "gradient", uses_layer=False, differentiates=_LOGIT_AT_INPUT),
        _method(gradients.gradient_x_input, "gradient", uses_layer=False, differentiates=_LOGIT_AT_INPUT),
        _method(gradients.smoothgrad, "gradient", uses_layer=False, differentiates=_LOGIT_AT_INPUT),
        _method(gradients.integrated_gradients, "gradient", uses_layer=False, differentiates=_LOGIT_AT_INPUT),
        _method(perturbation.occlusion, "perturbation", uses_layer=False, differentiates="the input, by patches"),
        _method(perturbation.rise, "perturbation", uses_layer=False, differentiates="the input, by random masks"),
        _method(guided.guided_backprop, "guided", uses_layer=False, differentiates="the logit, guided ReLUs"),
        _method(guided.guided_grad_cam, "guided", uses_layer=True, differentiates="the logit, guided ReLUs x CAM"),
        _method(model_free.edge, "model-free", uses_layer=False, differentiates="nothing: the image's Sobel edges"),
    )
}


# The original study's methods: what notebook 05's figures, the randomisation check and the analyzer show by default.
ORIGINAL = ("grad_cam", "guided_backprop", "guided_grad_cam")


def get_method(name):
    """The `Method` called ``name``; a ValueError listing the valid names otherwise."""
    if name not in METHODS:
        raise ValueError(f"Invalid `method`. Expected one of {sorted(METHODS)}. Received: method={name!r}")
    return METHODS[name]


def attribute(inputs, model, *, method="grad_cam", output="city", layer=None, target=None, rank=1, **params):
    """One method's maps for a batch, at the input's resolution and normalised per image to [0, 1].

    Args:
        inputs: float32 `(batch, H, W, C)`, normalised as the model expects.
        model: a `keras.Model` with one image input and ``<output>_logits`` layers (nested backbones followed).
        method: str, a `METHODS` name. Default 'grad_cam'.
        output: str, the output to explain. Default 'city'.
        layer: None (the model's last convolution, `explainer.default_layer`) or a layer name; only for methods with
            ``uses_layer``.
        target: None (default: the class of rank ``rank``), an int class index, or int `(batch,)`.
        rank: int >= 1, which class to explain when ``target`` is None. Default 1 (the predicted class).
        **params: the method's own parameters (`Method.params`), e.g. ``steps=64`` for integrated gradients.

    Returns:
        `Attribution` with maps float32 `(batch, H, W)` in [0, 1] and ``layer`` the layer read (None for a method
        that reads none).
    """
    m = get_method(method)
    unknown = sorted(set(params) - set(m.params))
    if unknown:
        raise ValueError(
            f"Invalid parameters {unknown} for method {method!r}. Expected some of {sorted(m.params)} "
            f"(defaults {m.params})."
        )
    if layer is not None and not m.uses_layer:
        raise ValueError(f"Method {method!r} reads no layer: pass layer=None. Received: layer={layer!r}")
    ex = explainer(model, layer=layer)
    a = m.function(ex, inputs, output=output, target=target, rank=rank, **params)
    size = np.shape(inputs)[1:3]
    maps = a.maps if a.maps.shape[1:] == tuple(size) else upsample_maps(a.maps, size)
    return replace(a, maps=normalize_maps(maps), layer=ex.layer if m.uses_layer else None)


def explain(inputs, model, *, methods=ORIGINAL, outputs=OUTPUTS, layer=None, rank=1, target=None):
    """Several methods' maps for several outputs, every method explaining the classes the first one picked: what the
    original study's figures (`plots.plot_explanation`), the analyzer and notebook 05 draw.

    Args:
        inputs: float32 `(batch, H, W, C)`, normalised as the model expects.
        model: a `keras.Model`, as `attribute`'s.
        methods: sequence of `METHODS` names. Default `ORIGINAL` (Grad-CAM, Guided Backprop, Guided Grad-CAM).
        outputs: sequence of output names. Default ('region', 'city').
        layer: None (the model's last convolution) or a layer name, for the methods that read one (the others
            ignore it).
        rank: int >= 1, default 1 (the predicted class); capped at each output's number of classes, so ``rank=3``
            explains the 3rd city and the last of two regions.
        target: None, or a dict output name -> int or int `(batch,)`; outputs not in it use ``rank``.

    Returns:
        dict method -> dict output -> `Attribution` (as `attribute` returns it), in the order of ``methods`` and
        ``outputs``.
    """
    for name, value in (("outputs", outputs), ("methods", methods)):
        if isinstance(value, str):
            raise TypeError(f"`{name}` must be a sequence of {name[:-1]} names. Received the string {value!r}.")
    target = {} if target is None else dict(target)
    unknown = sorted(set(target) - set(outputs))
    if unknown:
        raise ValueError(f"Invalid `target`: outputs {unknown} are not in outputs={list(outputs)}.")
    result = {get_method(name).name: {} for name in methods}
    for output in outputs:
        classes = target.get(output)
        out_rank = 1 if classes is not None else min(rank, int(logits_tensor(model, output).shape[-1]))
        for name in result:
            where = METHODS[name].layer_of(layer)
            a = attribute(inputs, model, method=name, output=output, layer=where, target=classes, rank=out_rank)
            result[name][output] = a
            classes, out_rank = a.target, 1
    return result
