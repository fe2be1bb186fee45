"""Every attribution method by name, behind one small interface.

`attribute(inputs, model, method="grad_cam", output=..., layer=..., target=..., rank=..., **params)` runs any method
on a batch and returns its maps at the input's resolution, normalised per image to [0, 1] (an all-zero map stays
zero), so that the metrics of `streetlib.attribution.metrics` compare methods on equal terms. `METHODS` maps each
name to a `Method`: the function (one per unit, in `cams`, `gradients`, `perturbation` or `guided`), its family,
whether it reads a feature layer, what it differentiates or perturbs, and its parameters with their defaults.

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
from dataclasses import dataclass, field

import numpy as np

from streetlib.attribution import cams, gradients, guided, model_free, perturbation
from streetlib.attribution.methods import Attribution, explainer, normalize_maps, upsample_maps

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


def _method(function, family, *, uses_layer, differentiates):
    signature = inspect.signature(function).parameters.values()
    params = {p.name: p.default for p in signature if p.name not in _COMMON}
    return Method(function.__name__, function, family, uses_layer, differentiates, params)


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
        layer: None (the model's last convolution, `methods.default_layer`) or a layer name; only for methods with
            ``uses_layer``.
        target: None (default: the class of rank ``rank``), an int class index, or int `(batch,)`.
        rank: int >= 1, which class to explain when ``target`` is None. Default 1 (the predicted class).
        **params: the method's own parameters (`Method.params`), e.g. ``steps=64`` for integrated gradients.

    Returns:
        `Attribution` with maps float32 `(batch, H, W)` in [0, 1].
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
    a = m.function(explainer(model, layer=layer), inputs, output=output, target=target, rank=rank, **params)
    size = np.shape(inputs)[1:3]
    maps = a.maps if a.maps.shape[1:] == tuple(size) else upsample_maps(a.maps, size)
    return Attribution(a.method, a.output, a.target, normalize_maps(maps))
