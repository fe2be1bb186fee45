"""Reading a layer of the model for the concepts: which layer (`concept_layer`), its activations with the gradients
of a class logit and the logits, in batches (`layer_pass`), the predicted classes (`predicted_classes`), and the
check that the activations are non-negative, as NMF needs (`non_negative`).

Negatives are clipped to 0; a layer whose negative share of the activation mass exceeds `NEGATIVE_TOLERANCE` (a
linear convolution before its batch normalisation and ReLU) is refused instead, since clipping would throw away part
of what the model computes.
"""

import keras
import numpy as np

from streetlib.attribution.explainer import all_layers, default_layer, explainer, find_layer_path, model_inputs

# Above this share of the activation mass below zero, a layer is refused rather than clipped.
NEGATIVE_TOLERANCE = 0.01


def concept_layer(model, layer=None):
    """The layer concepts are read from: ``layer`` if given; otherwise the model's default Grad-CAM layer
    (`explainer.default_layer`), or, when that layer has no ReLU of its own and is directly followed by an optional
    batch normalisation and a ReLU, that ReLU (NMF needs the non-negative map the model passes on).

    Args:
        model: the `keras.Model`.
        layer: None or str, a layer name of ``model``. Default None.

    Returns:
        str, a layer name.
    """
    if layer is not None:
        find_layer_path(model, layer)  # a clear ValueError if there is no such layer
        return layer
    name = default_layer(model)
    layers = all_layers(model)
    position = next(i for i, candidate in enumerate(layers) if candidate.name == name)
    if getattr(layers[position], "activation", None) is keras.activations.relu:
        return name
    for candidate in layers[position + 1 :]:
        if _is_relu(candidate):
            return candidate.name
        if not isinstance(candidate, keras.layers.BatchNormalization):
            break
    return name


def _is_relu(layer):
    if isinstance(layer, keras.layers.ReLU):
        config = layer.get_config()
        return config.get("max_value") is None and not config.get("negative_slope") and not config.get("threshold")
    return isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.relu


def layer_pass(images, model, *, layer, normalization, output, target, batch_size):
    """Activations at ``layer``, the gradients of the ``target`` logit w.r.t. them, and the logits, in batches.

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size.
        model: the `keras.Model`.
        layer: str, the layer read.
        normalization: the model's input normalisation.
        output: str, the output whose logit is differentiated.
        target: int, the class whose logit is differentiated.
        batch_size: int >= 1, images per model call.

    Returns:
        (activations float32 `(n, h, w, C)`, gradients float32 `(n, h, w, C)`, logits float32 `(n, classes)`).
    """
    ex = explainer(model, layer=layer)
    parts = []
    for start in range(0, len(images), batch_size):
        x = model_inputs(images[start : start + batch_size], normalization=normalization)
        parts.append(ex.layer_gradients(x, output=output, target=target))
    return (
        np.concatenate([p.activations for p in parts]),
        np.concatenate([p.gradients for p in parts]),
        np.concatenate([p.logits for p in parts]),
    )


def predicted_classes(images, model, *, normalization, output, layer, batch_size):
    """The model's predicted ``output`` class of each image, through the same explainer (split at ``layer``) that
    `layer_pass` uses, so the model is traced once.

    Args:
        images: uint8 `(n, H, W, 3)` RGB at the model's input size.
        model: the `keras.Model`.
        normalization: the model's input normalisation.
        output: str, the output whose class is predicted.
        layer: str, the layer the explainer splits the model at.
        batch_size: int >= 1, images per model call.

    Returns:
        int64 `(n,)`.
    """
    ex = explainer(model, layer=layer)
    logits = [
        ex.logits(model_inputs(images[start : start + batch_size], normalization=normalization), output=output)
        for start in range(0, len(images), batch_size)
    ]
    return np.argmax(np.concatenate(logits), axis=1)


def non_negative(activations, layer):
    """Clip negatives to 0, refusing a layer whose negative share of the mass exceeds `NEGATIVE_TOLERANCE`.

    Args:
        activations: float `(n, h, w, C)`.
        layer: str, the layer's name, for the error message.

    Returns:
        (activations of the same shape, non-negative; float, the share of the mass that was negative).
    """
    total = float(np.abs(activations).sum(dtype=np.float64))
    negative = float(-np.minimum(activations, 0).sum(dtype=np.float64))
    share = negative / total if total > 0 else 0.0
    if share > NEGATIVE_TOLERANCE:
        raise ValueError(
            f"Invalid `layer`: {share:.1%} of the activation mass of {layer!r} is negative; NMF needs a non-negative "
            f"map. Pass the layer after its ReLU (e.g. '{layer}_relu')."
        )
    return np.maximum(activations, 0), share
