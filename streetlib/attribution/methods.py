"""Attribution maps: Grad-CAM, Guided Backpropagation and Guided Grad-CAM, batched, with their figures.

What differs from the original study, and why:

- Grad-CAM takes the gradient of the class *logit*: the softmax probability saturates, so its gradient vanishes
  exactly where the model is most confident.
- One compiled function per model, layer and output serves every batch; the original built a gradient graph per image.
- Nested backbone-plus-head models work: the model is split at the chosen layer into "input -> feature map" and
  "feature map -> logits" sub-models made of the model's own layers (so they share its weights and see later
  training), through every level of nesting. Libraries that ask Keras for ``model.get_layer(...).output`` of a layer
  inside a nested backbone fail there ("not connected to inputs").
- Guided Backpropagation runs on a clone whose ReLUs (activations of Conv/Dense layers, standalone ``ReLU`` and
  ``Activation("relu")`` layers) have the guided gradient; the user's model is never changed, and the clone's weights
  are refreshed from the model before every call.
- Maps are normalised per image with a guard, so an all-zero map stays zero instead of becoming NaN.
- Figures use a perceptual colour map and show RGB images as RGB; guided gradients of models fed BGR ('caffe'
  normalisations) are flipped back to RGB before display. They are `matplotlib.figure.Figure` objects, outside
  pyplot's state, so there is nothing to close.

Model convention: a single image input; for each output name ``o`` (``"region"``, ``"city"``) a linear layer
``o_logits`` feeding a softmax. Flat models without ``*_logits`` layers work when ``output`` names a linear layer
(its output is taken as the logits) or an ``Activation``/``Softmax`` layer (its input is taken).
"""

import weakref
from dataclasses import dataclass

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from PIL import Image
from scipy.special import softmax

from streetlib.classes import OUTPUTS
from streetlib.data.pipeline import check_normalization, normalize

DEFAULT_CMAP = "inferno"
# Normalisations that feed the model BGR channels: gradients w.r.t. the input come back in BGR order.
BGR_NORMALIZATIONS = ("caffe", "caffe-bvlc")
_CONV_TYPES = (
    keras.layers.Conv2D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Conv2DTranspose,
)


@tf.custom_gradient
def guided_relu(x):
    """ReLU whose gradient passes only where both the input and the incoming gradient are positive
    (Springenberg et al. 2015). Forward: ``max(x, 0)``; backward: ``dy * (x > 0) * (dy > 0)``."""

    def grad(dy):
        return dy * tf.cast(x > 0, dy.dtype) * tf.cast(dy > 0, dy.dtype)

    return tf.nn.relu(x), grad


# ---------------------------------------------------------------------------------------------------------------
# Finding layers and logits


def all_layers(model):
    """Every layer of ``model`` in forward order, nested models expanded (each nested model before its layers)."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out += all_layers(layer)
    return out


def find_layer_path(model, name):
    """The chain of layers from ``model`` down to the layer called ``name``: ``[nested, ..., layer]``.

    Raises:
        ValueError: no layer, or more than one, has that name.
    """
    paths = []

    def walk(container, prefix):
        for layer in container.layers:
            if layer.name == name:
                paths.append(prefix + [layer])
            if isinstance(layer, keras.Model):
                walk(layer, prefix + [layer])

    walk(model, [])
    if not paths:
        convs = [layer.name for layer in all_layers(model) if isinstance(layer, _CONV_TYPES)]
        raise ValueError(f"Invalid `layer`: no layer named {name!r} in model {model.name!r}. Conv layers: {convs}")
    if len(paths) > 1:
        where = ["/".join(p.name for p in path) for path in paths]
        raise ValueError(f"Invalid `layer`: the name {name!r} is ambiguous in model {model.name!r}: {where}")
    return paths[0]


def default_layer(model):
    """Name of the layer Grad-CAM uses by default: the model's last convolution, nested models searched too (the
    backbone's last one under the dense head; ``head_conv2`` under the conv head, the last map the logits read).

    Raises:
        ValueError: the model has no convolution layer.
    """
    convs = [layer.name for layer in all_layers(model) if isinstance(layer, _CONV_TYPES)]
    if not convs:
        raise ValueError(f"Model {model.name!r} has no convolution layer for Grad-CAM. Pass `layer=` a 4-D layer.")
    return convs[-1]


def _node_in(container, layer):
    """The node where ``layer`` is called inside ``container`` (exactly one)."""
    # Keras keeps no public map from a layer to its call sites in one model; `_nodes_by_depth` is that map.
    nodes = [n for ns in container._nodes_by_depth.values() for n in ns if n.operation is layer]
    if len(nodes) != 1:
        raise ValueError(
            f"Layer {layer.name!r} is called {len(nodes)} times in {container.name!r}; attribution needs a layer that "
            f"is called once."
        )
    return nodes[0]


def _single(tensors, what):
    if len(tensors) != 1:
        raise ValueError(f"{what} has {len(tensors)} tensors; attribution supports single-input, single-output parts.")
    return tensors[0]


def _model_between(start, end):
    """`keras.Model(start, end)` for two tensors of one model, refused with ValueError when ``end`` also depends on
    a tensor before ``start`` (the model's input past a skip connection): no "start -> end" part exists.

    Keras 3.11 and later refuse such a model themselves; Keras 3.10 builds it and fails only when it is called, with
    a KeyError from inside its graph walk. So the graph is walked back from ``end`` here, node by node as Keras
    records them, and every path must reach ``start`` before an input layer.
    """
    seen, stack = {id(start)}, [end]
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        operation, node_index, _ = tensor._keras_history
        node = operation._inbound_nodes[node_index]
        if node.is_input:
            raise ValueError(f"{end.name} depends on the input {tensor.name}, not only on {start.name}")
        stack.extend(node.input_tensors)
    return keras.Model(start, end)


def logits_tensor(model, output):
    """The symbolic logits of one output of ``model``, shape `(batch, classes)`.

    Args:
        model: a functional `keras.Model`.
        output: str. The layer ``f"{output}_logits"`` if the model has it (the streetlib convention); otherwise
            the layer named ``output``: a linear layer's output, or an ``Activation``/``Softmax`` layer's input.

    Raises:
        ValueError: no such layer, the layer applies a non-linear activation, or its output is not 2-D.
    """
    names = [layer.name for layer in model.layers]
    if f"{output}_logits" in names:
        tensor = _node_in(model, model.get_layer(f"{output}_logits")).output_tensors[0]
    elif output in names:
        layer = model.get_layer(output)
        node = _node_in(model, layer)
        activation = getattr(layer, "activation", None)
        if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
            tensor = _single(node.input_tensors, f"Layer {output!r} input")
        elif activation is None or activation is keras.activations.linear:
            tensor = node.output_tensors[0]
        else:
            raise ValueError(
                f"Invalid `output`: layer {output!r} applies activation {activation.__name__!r}; attribution needs "
                f"the logits. Name a linear layer, or rebuild the top with a linear activation."
            )
    else:
        outs = getattr(model, "output_names", None)
        raise ValueError(
            f"Invalid `output`: model {model.name!r} has no layer {output + '_logits'!r} or {output!r}. "
            f"Its outputs: {outs}. Expected a model with `region` and `city` outputs, or the name of a linear layer."
        )
    if len(tensor.shape) != 2:
        raise ValueError(f"Invalid `output`: {output!r} has shape {tensor.shape}; expected (batch, classes).")
    return tensor


def _guided_clone_layer(layer):
    """clone_model hook: a fresh copy of ``layer`` whose ReLU, if any, has the guided gradient."""
    if isinstance(layer, keras.layers.ReLU):
        cfg = layer.get_config()
        if cfg.get("max_value") is None and not cfg.get("negative_slope") and not cfg.get("threshold"):
            return keras.layers.Activation(guided_relu, name=layer.name)
    if isinstance(layer, keras.layers.Activation) and layer.activation is keras.activations.relu:
        return keras.layers.Activation(guided_relu, name=layer.name)
    clone = layer.__class__.from_config(layer.get_config())
    if getattr(layer, "activation", None) is keras.activations.relu:
        clone.activation = guided_relu
    return clone


def clone_with_weights(model, *, clone_function=None):
    """A copy of ``model`` (nested models copied too) with its own variables holding the model's current weights.

    Args:
        model: a functional `keras.Model`.
        clone_function: None or a function layer -> new layer, as `keras.models.clone_model`'s.

    Returns:
        (clone, pairs): the `keras.Model` and the list of (clone variable, model variable) pairs.
    """
    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    # Not strict: a length mismatch is refused just below, with a message that says what it means.
    pairs = list(zip(clone.weights, model.weights, strict=False))
    if len(clone.weights) != len(model.weights) or any(c.shape != m.shape for c, m in pairs):
        raise ValueError(f"The clone of {model.name!r} does not have the model's weights; it cannot stand in for it.")
    for clone_var, model_var in pairs:
        clone_var.assign(model_var)
    return clone, pairs


# ---------------------------------------------------------------------------------------------------------------
# The explainer


@dataclass
class Explanation:
    """Attribution of one model output for a batch.

    Attributes:
        output: str, the output explained ('region' or 'city').
        logits: float32 `(batch, classes)`.
        target: int64 `(batch,)`, the class explained for each image.
        cam: float32 `(batch, H, W)` in [0, 1], Grad-CAM at input resolution.
        guided: float32 `(batch, H, W, C)` or None, guided-backprop gradients w.r.t. the model input (channel order
            of the model input).
        guided_cam: float32 `(batch, H, W, C)` or None, Guided Grad-CAM: ``guided * cam``.
    """

    output: str
    logits: np.ndarray
    target: np.ndarray
    cam: np.ndarray
    guided: np.ndarray = None
    guided_cam: np.ndarray = None

    @property
    def probs(self):
        """float32 `(batch, classes)`: softmax of the logits."""
        return softmax(self.logits, axis=1).astype(np.float32)

    @property
    def target_prob(self):
        """float32 `(batch,)`: the probability of each image's explained class."""
        return np.take_along_axis(self.probs, self.target[:, None], axis=1)[:, 0]


@dataclass
class LayerGradients:
    """A feature map (or the input) and the gradient of one class logit w.r.t. it, for a batch.

    Attributes:
        output: str, the output explained ('region' or 'city').
        logits: float32 `(batch, classes)`.
        target: int64 `(batch,)`, the class explained for each image.
        activations: float32 `(batch, h, w, channels)`.
        gradients: float32 `(batch, h, w, channels)`, d logit[target] / d activations.
    """

    output: str
    logits: np.ndarray
    target: np.ndarray
    activations: np.ndarray
    gradients: np.ndarray


@dataclass
class Attribution:
    """One method's raw maps for a batch: what every method of `streetlib.attribution.registry` returns.

    Attributes:
        method: str, the method's name in the registry.
        output: str, the output explained ('region' or 'city').
        target: int64 `(batch,)`, the class explained for each image.
        maps: float32 `(batch, h, w)`, non-negative, at the method's own resolution (the feature map's for CAMs,
            the input's for gradient and perturbation methods), not normalised.
    """

    method: str
    output: str
    target: np.ndarray
    maps: np.ndarray


class Explainer:
    """Compiled Grad-CAM / Guided Backprop for one model and one feature layer.

    Each output gets one `tf.function` (traced once, for any batch size); the guided clone is built on first use.

    Args:
        model: a functional `keras.Model` with one image input; nested models (a ``backbone``) are followed.
        layer: str, the name of a layer with a 4-D output (anywhere, nested included). Default: `default_layer`.

    Raises:
        ValueError: the model has several inputs, the layer does not exist or is not 4-D, or the model cannot be
            split at that layer.
    """

    def __init__(self, model, *, layer=None):
        if not isinstance(model, keras.Model):
            raise TypeError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
        _single(model.inputs, f"Model {model.name!r} input")
        # A weak reference, so that the cache in `explainer` (keyed weakly by model) can let the model go.
        self._model = weakref.ref(model)
        self.layer = default_layer(model) if layer is None else layer
        path = find_layer_path(model, self.layer)
        containers = [model] + path[:-1]
        nodes = [_node_in(c, child) for c, child in zip(containers, path, strict=True)]
        shape = nodes[-1].output_tensors[0].shape
        if len(shape) != 4:
            raise ValueError(
                f"Invalid `layer`: {self.layer!r} has output shape {shape}; Grad-CAM needs a 4-D feature map "
                f"(batch, h, w, channels), e.g. a convolution."
            )
        try:
            # pre[i]: container i's input -> the nested model's input (or, innermost, the layer's output).
            self._pre = [
                keras.Model(_single(c.inputs, c.name), _single(n.input_tensors, n.operation.name))
                for c, n in zip(containers[:-1], nodes[:-1], strict=True)
            ]
            innermost = containers[-1]
            self._pre.append(keras.Model(_single(innermost.inputs, innermost.name), nodes[-1].output_tensors[0]))
            # post[i] (i >= 1): nested model i's layer output -> its own output (none where they are the same
            # tensor); the outer model's part, per output, is built in `_layer_fn`.
            self._post = [
                _model_between(n.output_tensors[0], out)
                for c, n in zip(containers[1:], nodes[1:], strict=True)
                if (out := _single(c.outputs, f"Nested model {c.name!r} output")) is not n.output_tensors[0]
            ]
        except ValueError as err:
            raise ValueError(f"Cannot split model {model.name!r} at layer {self.layer!r}: {err}") from err
        self._split_at = nodes[0].output_tensors[0]
        self._layer_fns, self._input_fns, self._logit_fns, self._guided_fns = {}, {}, {}, {}
        self._guided_model, self._weight_pairs = None, None
        self._signature = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)
        # (inputs, target per image or -1 for "by rank", rank)
        self._call_signature = [self._signature, tf.TensorSpec((None,), tf.int32), tf.TensorSpec((), tf.int32)]

    @property
    def model(self):
        """The explained `keras.Model`."""
        model = self._model()
        if model is None:
            raise RuntimeError("The model of this Explainer was deleted; keep a reference to it while explaining.")
        return model

    # -- compiled functions ------------------------------------------------------------------------------------

    def _num_classes(self, output):
        return int(logits_tensor(self.model, output).shape[-1])

    def _pick(self, logits, target, rank):
        ranked = tf.argsort(logits, axis=1, direction="DESCENDING", stable=True)[:, rank - 1]
        return tf.where(target >= 0, target, ranked)

    def _layer_fn(self, output):
        if output not in self._layer_fns:
            logits = logits_tensor(self.model, output)
            try:
                head = _model_between(self._split_at, logits)
            except ValueError as err:
                raise ValueError(f"Cannot split model {self.model.name!r} at layer {self.layer!r}: {err}") from err
            pre, post = self._pre, self._post

            @tf.function(input_signature=self._call_signature)
            def fn(x, target, rank):
                with tf.GradientTape() as tape:
                    h = x
                    for part in pre:
                        h = part(h, training=False)
                    features = h
                    tape.watch(features)
                    for part in reversed(post):
                        h = part(h, training=False)
                    logits = head(h, training=False)
                    idx = self._pick(logits, target, rank)
                    score = tf.gather(logits, idx, axis=1, batch_dims=1)
                return features, tape.gradient(score, features), logits, idx

            self._layer_fns[output] = fn
        return self._layer_fns[output]

    def _input_fn(self, output):
        if output not in self._input_fns:
            self._input_fns[output] = self._compile_input_gradients(self.model, output)
        return self._input_fns[output]

    def _compile_input_gradients(self, model, output):
        """One `tf.function` (inputs, target, rank) -> (d logit[target] / d inputs, logits, target) of ``model``."""
        logit_model = keras.Model(model.inputs[0], logits_tensor(model, output))

        @tf.function(input_signature=self._call_signature)
        def fn(x, target, rank):
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = logit_model(x, training=False)
                idx = self._pick(logits, target, rank)
                score = tf.gather(logits, idx, axis=1, batch_dims=1)
            return tape.gradient(score, x), logits, idx

        return fn

    def _logit_fn(self, output):
        if output not in self._logit_fns:
            model = keras.Model(self.model.inputs[0], logits_tensor(self.model, output))
            self._logit_fns[output] = tf.function(lambda x: model(x, training=False), input_signature=[self._signature])
        return self._logit_fns[output]

    def _guided_fn(self, output):
        if self._guided_model is None:
            self._guided_model, self._weight_pairs = clone_with_weights(self.model, clone_function=_guided_clone_layer)
        if output not in self._guided_fns:
            self._guided_fns[output] = self._compile_input_gradients(self._guided_model, output)
        # The clone keeps its own variables: copy the model's current weights so later training is seen.
        for clone_var, model_var in self._weight_pairs:
            clone_var.assign(model_var)
        return self._guided_fns[output]

    # -- argument checks -----------------------------------------------------------------------------------------

    def check_inputs(self, inputs):
        """``inputs`` as float32 `(batch, H, W, C)` of the model's input shape; a ValueError naming the shape
        expected otherwise, or for an empty batch."""
        x = np.asarray(inputs, dtype=np.float32)
        expected = self._signature.shape
        if x.ndim != 4 or not expected[1:].is_compatible_with(x.shape[1:]):
            raise ValueError(
                f"Invalid `inputs`: expected float32 of shape {tuple(expected)} (a batch of normalised images). "
                f"Received shape {x.shape}."
            )
        if len(x) == 0:
            raise ValueError("`inputs` is an empty batch.")
        return x

    def _targets(self, target, rank, batch, output):
        n = self._num_classes(output)
        if not isinstance(rank, (int, np.integer)) or isinstance(rank, bool) or not 1 <= rank <= n:
            raise ValueError(
                f"Invalid `rank` for output {output!r}: expected an int in [1, {n}]. Received: rank={rank!r}"
            )
        if target is None:
            return np.full(batch, -1, np.int32), int(rank)
        if rank != 1:
            raise ValueError(f"Pass either `target` or `rank`, not both. Received: target={target!r}, rank={rank!r}")
        t = np.asarray(target)
        if not np.issubdtype(t.dtype, np.integer) or t.ndim > 1:
            raise ValueError(
                f"Invalid `target`: expected an int or an int array of shape ({batch},). Received: {target!r}"
            )
        t = np.broadcast_to(t, (batch,)) if t.ndim == 0 else t
        if t.shape != (batch,) or t.min() < 0 or t.max() >= n:
            raise ValueError(
                f"Invalid `target` for output {output!r}: expected class indices in [0, {n}) of shape ({batch},). "
                f"Received shape {t.shape}, values {t.min()}..{t.max()}."
            )
        return t.astype(np.int32), 1

    # -- public methods ------------------------------------------------------------------------------------------

    def logits(self, inputs, *, output="city"):
        """Logits of one output: float32 `(batch, classes)`.

        Args:
            inputs: float32 `(batch, H, W, C)`, normalised as the model expects.
            output: str, default 'city'.
        """
        return self._logit_fn(output)(self.check_inputs(inputs)).numpy()

    def classes(self, inputs, *, output="city", target=None, rank=1):
        """The logits of clean inputs and the class each image is explained for, in one forward pass: what the
        methods that perturb or add noise to the input fix before they start.

        Args: as `layer_gradients`.

        Returns:
            (logits float32 `(batch, classes)`, target int64 `(batch,)`).
        """
        x = self.check_inputs(inputs)
        t, r = self._targets(target, rank, len(x), output)
        logits = self.logits(x, output=output)
        return logits, self._pick(logits, t, r).numpy().astype(np.int64)

    def layer_gradients(self, inputs, *, output="city", target=None, rank=1):
        """The feature map at ``layer`` and the gradient of the class logit w.r.t. it, in one pass: what every CAM
        method is computed from.

        Args:
            inputs: float32 `(batch, H, W, C)`, normalised as the model expects.
            output: str, the output to explain. Default 'city'.
            target: None (default: the class of rank ``rank``), an int class index, or int `(batch,)`.
            rank: int >= 1, which class to explain when ``target`` is None: 1 (default) the predicted class,
                2 the runner-up, ...

        Returns:
            `LayerGradients` (activations and gradients float32 `(batch, h, w, channels)`).
        """
        x = self.check_inputs(inputs)
        t, r = self._targets(target, rank, len(x), output)
        features, grads, logits, idx = self._layer_fn(output)(x, t, r)
        return LayerGradients(
            output=output,
            logits=logits.numpy(),
            target=idx.numpy().astype(np.int64),
            activations=features.numpy(),
            gradients=grads.numpy(),
        )

    def input_gradients(self, inputs, *, output="city", target=None, rank=1):
        """The gradient of the class logit w.r.t. the model input, through the model's own ReLUs (not guided).

        Args: as `layer_gradients`.

        Returns:
            `LayerGradients` whose ``activations`` are the inputs and ``gradients`` the input gradients, float32
            `(batch, H, W, C)` in the model input's channel order.
        """
        return self._gradients_at_input(self._input_fn(output), inputs, output, target, rank)

    def guided_gradients(self, inputs, *, output="city", target=None, rank=1):
        """As `input_gradients`, through guided ReLUs (Guided Backpropagation). Args: as `layer_gradients`."""
        return self._gradients_at_input(self._guided_fn(output), inputs, output, target, rank)

    def _gradients_at_input(self, fn, inputs, output, target, rank):
        x = self.check_inputs(inputs)
        t, r = self._targets(target, rank, len(x), output)
        grads, logits, idx = fn(x, t, r)
        return LayerGradients(
            output=output,
            logits=logits.numpy(),
            target=idx.numpy().astype(np.int64),
            activations=x,
            gradients=grads.numpy(),
        )

    def grad_cam(self, inputs, *, output="city", target=None, rank=1, upsample=True, normalize=True):
        """Grad-CAM (Selvaraju et al. 2017) of the class logit.

        Channel weights are the spatially averaged gradients of the logit w.r.t. the feature map; the weighted sum
        of the feature maps goes through a ReLU, is upsampled bilinearly to the input size and divided by its
        per-image maximum (an all-zero map stays zero).

        Args:
            inputs: float32 `(batch, H, W, C)`, normalised as the model expects.
            output: str, the output to explain. Default 'city'.
            target: None (default: the class of rank ``rank``), an int class index, or int `(batch,)`.
            rank: int >= 1, which class to explain when ``target`` is None: 1 (default) the predicted class,
                2 the runner-up, ...
            upsample: bool, default True. False returns the map at feature-map resolution `(batch, h, w)`.
            normalize: bool, default True. False returns the raw non-negative map.

        Returns:
            `Explanation` with ``cam`` float32 `(batch, H, W)` in [0, 1] (shapes and range as set by ``upsample``
            and ``normalize``), and no guided maps.
        """
        x = self.check_inputs(inputs)
        g = self.layer_gradients(x, output=output, target=target, rank=rank)
        weights = g.gradients.mean(axis=(1, 2))  # (batch, channels)
        cam = np.maximum(np.einsum("bhwc,bc->bhw", g.activations, weights), 0).astype(np.float32)
        if upsample:
            cam = upsample_maps(cam, x.shape[1:3])
        if normalize:
            cam = normalize_maps(cam)
        return Explanation(output=output, logits=g.logits, target=g.target, cam=cam)

    def guided_backprop(self, inputs, *, output="city", target=None, rank=1):
        """Guided Backpropagation: the gradient of the class logit w.r.t. the input, through guided ReLUs.

        Args: as `grad_cam`.

        Returns:
            float32 `(batch, H, W, C)`, raw gradients in the model input's channel order.
        """
        return self.guided_gradients(inputs, output=output, target=target, rank=rank).gradients

    def explain(self, inputs, *, outputs=OUTPUTS, rank=1, target=None, guided=True):
        """Grad-CAM, and optionally Guided Backprop and Guided Grad-CAM, for several outputs at once.

        Args:
            inputs: float32 `(batch, H, W, C)`, normalised as the model expects.
            outputs: sequence of output names. Default ('region', 'city').
            rank: int >= 1, default 1 (the predicted class); capped at each output's number of classes, so
                ``rank=3`` explains the 3rd city and the last of two regions.
            target: None, or a dict output name -> int or int `(batch,)`; outputs not in it use ``rank``.
            guided: bool, default True: also compute ``guided`` and ``guided_cam``.

        Returns:
            dict output name -> `Explanation`; maps at input resolution, CAMs in [0, 1].
        """
        if isinstance(outputs, str):
            raise TypeError(f"`outputs` must be a sequence of output names. Received the string {outputs!r}.")
        target = {} if target is None else dict(target)
        unknown = sorted(set(target) - set(outputs))
        if unknown:
            raise ValueError(f"Invalid `target`: outputs {unknown} are not in outputs={list(outputs)}.")
        result = {}
        for output in outputs:
            out_rank = 1 if output in target else min(rank, self._num_classes(output))
            e = self.grad_cam(inputs, output=output, target=target.get(output), rank=out_rank)
            if guided:
                # Explain exactly the classes Grad-CAM explained, whatever ``rank`` picked.
                e.guided = self.guided_backprop(inputs, output=output, target=e.target)
                e.guided_cam = e.guided * e.cam[..., None]
            result[output] = e
        return result


_EXPLAINERS = weakref.WeakKeyDictionary()


def explainer(model, *, layer=None):
    """The cached `Explainer` of ``model`` and ``layer`` (built on first use, dropped with the model)."""
    per_model = _EXPLAINERS.setdefault(model, {})
    key = default_layer(model) if layer is None else layer
    if key not in per_model:
        per_model[key] = Explainer(model, layer=key)
    return per_model[key]


def grad_cam(inputs, model, *, output="city", layer=None, target=None, rank=1, upsample=True, normalize=True):
    """Grad-CAM maps of a batch: float32 `(batch, H, W)` in [0, 1]. See `Explainer.grad_cam` for the arguments."""
    e = explainer(model, layer=layer).grad_cam(
        inputs, output=output, target=target, rank=rank, upsample=upsample, normalize=normalize
    )
    return e.cam


def guided_backprop(inputs, model, *, output="city", target=None, rank=1):
    """Guided-backprop gradients of a batch: float32 `(batch, H, W, C)`. See `Explainer.guided_backprop`."""
    return explainer(model).guided_backprop(inputs, output=output, target=target, rank=rank)


def guided_grad_cam(inputs, model, *, output="city", layer=None, target=None, rank=1):
    """Guided Grad-CAM of a batch, float32 `(batch, H, W, C)`: guided backprop times the Grad-CAM map."""
    target = None if target is None else {output: target}
    return explain(inputs, model, outputs=(output,), layer=layer, rank=rank, target=target)[output].guided_cam


def explain(inputs, model, *, outputs=OUTPUTS, layer=None, rank=1, target=None, guided=True):
    """All maps for several outputs: dict output -> `Explanation`. See `Explainer.explain`."""
    return explainer(model, layer=layer).explain(inputs, outputs=outputs, rank=rank, target=target, guided=guided)


# ---------------------------------------------------------------------------------------------------------------
# Inputs and map utilities


def copy_batches(batch, count, batch_size):
    """Number ``count`` copies of each of ``batch`` images and hand them out at most ``batch_size`` at a time: how
    the methods that run many perturbed copies (or channels) per image bound their memory.

    Copies are numbered image by image (all of image 0's, then image 1's, ...), the same order whatever
    ``batch_size``, so a random generator drawn in that order gives each copy the same draw.

    Args:
        batch: int, the number of images.
        count: int, copies per image.
        batch_size: int >= 1, copies per chunk.

    Yields:
        (image, copy): int `(n,)` arrays, the image each copy is made from and its number among that image's copies.
    """
    total = batch * count
    for start in range(0, total, batch_size):
        yield np.divmod(np.arange(start, min(start + batch_size, total)), count)


def check_counts(**counts):
    """Refuse any count that is not an int >= 1 with a ValueError naming it (``check_counts(steps=steps)``)."""
    for name, value in counts.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Invalid `{name}`: expected an int >= 1. Received: {name}={value!r}")


def model_inputs(images, *, normalization):
    """uint8 RGB images `(batch, H, W, 3)` -> float32 model inputs, normalised as `pipeline.normalize`."""
    check_normalization(normalization)
    return normalize(tf.convert_to_tensor(np.asarray(images), dtype=tf.float32), normalization).numpy()


def model_input_size(model):
    """(H, W) of the model's image input, or None where the model accepts any size."""
    h, w = _single(model.inputs, f"Model {model.name!r} input").shape[1:3]
    return None if h is None or w is None else (int(h), int(w))


def normalize_maps(maps):
    """Divide each non-negative map by its maximum; all-zero maps stay zero (no NaN).

    Args:
        maps: float `(batch, ...)`, non-negative.

    Returns:
        float32, same shape, in [0, 1].
    """
    maps = np.asarray(maps, dtype=np.float32)
    top = maps.max(axis=tuple(range(1, maps.ndim)), keepdims=True)
    return np.divide(maps, top, out=np.zeros_like(maps), where=top > 0)


def upsample_maps(maps, size):
    """Bilinear resize of maps `(batch, h, w)` to ``size`` (H, W): float32 `(batch, H, W)`."""
    maps = np.asarray(maps, dtype=np.float32)
    if tuple(maps.shape[1:3]) == tuple(size):
        return maps
    return tf.image.resize(maps[..., None], tuple(size), method="bilinear").numpy()[..., 0]


def gradient_to_rgb(gradients, *, normalization):
    """Gradient maps as displayable RGB images: standardised per image, then ``0.5 + 0.15 * z`` clipped.

    Args:
        gradients: float `(batch, H, W, 3)`, in the model input's channel order.
        normalization: the model's normalisation (see `streetlib.data.pipeline.NORMALIZATIONS`); 'caffe' modes feed
            BGR, so their gradients are flipped to RGB.

    Returns:
        float32 `(batch, H, W, 3)` in [0, 1], RGB.
    """
    check_normalization(normalization)
    g = np.asarray(gradients, dtype=np.float32)
    if g.ndim != 4 or g.shape[-1] != 3:
        raise ValueError(f"`gradients` must have shape (batch, H, W, 3). Received shape {g.shape}.")
    if normalization in BGR_NORMALIZATIONS:
        g = g[..., ::-1]
    g = g - g.mean(axis=(1, 2, 3), keepdims=True)
    g = g / (g.std(axis=(1, 2, 3), keepdims=True) + 1e-8)
    return np.clip(0.5 + 0.15 * g, 0.0, 1.0).astype(np.float32)


def map_to_original(cam, shape, *, policy):
    """Bring a map computed on a fitted image back onto the original image's pixels.

    Args:
        cam: float `(h, w)`, a map over the fitted (model-size) image.
        shape: (H, W) of the original image.
        policy: how the original was fitted, as `streetlib.data.loaders.fit_image`: 'crop' (centre crop), 'pad' (the
            padding is cut off) or 'stretch'.

    Returns:
        float32 `(H, W)`; NaN where the model did not see the image (outside the crop).
    """
    cam = np.asarray(cam, dtype=np.float32)
    h, w = cam.shape
    H, W = shape
    if policy == "stretch":
        return _resize(cam, (H, W))
    if policy == "crop":
        scale = max(h / H, w / W)  # the fitted image covers the crop box
        ch, cw = min(H, round(h / scale)), min(W, round(w / scale))
        top, left = (H - ch) // 2, (W - cw) // 2
        out = np.full((H, W), np.nan, np.float32)
        out[top : top + ch, left : left + cw] = _resize(cam, (ch, cw))
        return out
    if policy == "pad":
        scale = min(h / H, w / W)  # the original fits inside the fitted image
        ih, iw = max(1, round(H * scale)), max(1, round(W * scale))
        top, left = (h - ih) // 2, (w - iw) // 2
        return _resize(cam[top : top + ih, left : left + iw], (H, W))
    raise ValueError(f"Invalid `policy`. Expected one of ('crop', 'pad', 'stretch'). Received: policy={policy!r}")


def _resize(array, size):
    """Bilinear resize of a float 2-D array to (H, W)."""
    H, W = size
    if array.shape == (H, W):
        return array.astype(np.float32)
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((W, H), Image.Resampling.BILINEAR))


# ---------------------------------------------------------------------------------------------------------------
# Figures


def overlay(image, cam, *, cmap=DEFAULT_CMAP, alpha=0.5):
    """Blend a map over an image.

    Args:
        image: uint8 `(H, W, 3)`, RGB.
        cam: float `(h, w)` in [0, 1]; resized bilinearly to (H, W) if needed. NaN pixels (not seen by the
            model, see `map_to_original`) show the image alone.
        cmap: str, a matplotlib colour map. Default 'inferno' (perceptually uniform).
        alpha: float in [0, 1], the weight of the map. Default 0.5.

    Returns:
        float32 `(H, W, 3)` in [0, 1], RGB.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be uint8 RGB of shape (H, W, 3). Received {image.dtype} {image.shape}.")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"Invalid `alpha`: expected a float in [0, 1]. Received: alpha={alpha!r}")
    cam = _resize(np.asarray(cam, dtype=np.float32), image.shape[:2])
    seen = np.isfinite(cam)[..., None]
    heat = matplotlib.colormaps[cmap](np.clip(np.nan_to_num(cam), 0, 1))[..., :3]
    picture = image / 255.0
    return np.where(seen, (1 - alpha) * picture + alpha * heat, picture).astype(np.float32)


def _label(names, explanation, i):
    cls = int(explanation.target[i])
    rank = int(np.sum(explanation.logits[i] > explanation.logits[i, cls])) + 1
    text = f"{names[cls]} {explanation.target_prob[i]:.2f}"
    return text if rank == 1 else f"{text} (rank {rank})"


def _show(ax, picture, title):
    ax.imshow(picture)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def plot_explanation(image, explanations, i=0, *, spec, normalization, title=None):
    """The original study's per-image figure, 2 x 3: input, Grad-CAM region, Guided Grad-CAM region / guided
    backprop (city), Grad-CAM city, Guided Grad-CAM city.

    Args:
        image: uint8 `(H, W, 3)` RGB, the image as the model saw it.
        explanations: dict with 'region' and 'city' `Explanation`s computed with ``guided=True``.
        i: int, the image's index in the explained batch. Default 0.
        spec: the `ClassSpec` naming the classes.
        normalization: the model's normalisation (for the colour order of gradients).
        title: str or None, the figure title.

    Returns:
        `matplotlib.figure.Figure`.
    """
    region, city = explanations["region"], explanations["city"]
    if region.guided is None or city.guided is None:
        raise ValueError("`explanations` need guided maps: compute them with explain(..., guided=True).")
    rgb = {k: gradient_to_rgb(e.guided_cam[i : i + 1], normalization=normalization)[0] for k, e in explanations.items()}
    fig = Figure(figsize=(9, 6.8))
    axes = fig.subplots(2, 3)
    _show(axes[0, 0], image, f"input {image.shape[1]}x{image.shape[0]}")
    region_title = f"Grad-CAM region: {_label(spec.class_names('region'), region, i)}"
    _show(axes[0, 1], overlay(image, region.cam[i]), region_title)
    _show(axes[0, 2], rgb["region"], "Guided Grad-CAM region")
    city_name = spec.class_names("city")[city.target[i]]
    _show(
        axes[1, 0],
        gradient_to_rgb(city.guided[i : i + 1], normalization=normalization)[0],
        f"guided backprop ({city_name})",
    )
    _show(axes[1, 1], overlay(image, city.cam[i]), f"Grad-CAM city: {_label(spec.class_names('city'), city, i)}")
    _show(axes[1, 2], rgb["city"], "Guided Grad-CAM city")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_methods(image, attributions, i=0, *, spec, title=None):
    """Every method's map of one image side by side: one row per output, the image first, then one column per method,
    each titled with the class it explains.

    Args:
        image: uint8 `(H, W, 3)` RGB, the image as the model saw it.
        attributions: dict method name -> dict output -> `Attribution` with maps `(batch, H, W)` in [0, 1] (as
            `streetlib.attribution.registry.attribute` returns them).
        i: int, the image's index in the batch. Default 0.
        spec: the `ClassSpec` naming the classes.
        title: str or None, the figure title.

    Returns:
        `matplotlib.figure.Figure`.
    """
    methods = list(attributions)
    outputs = list(attributions[methods[0]])
    fig = Figure(figsize=(2.1 * (len(methods) + 1), 2.3 * len(outputs)), layout="constrained")
    axes = fig.subplots(len(outputs), len(methods) + 1, squeeze=False)
    for row, output in zip(axes, outputs, strict=True):
        names = spec.class_names(output)
        _show(row[0], image, f"{output}: {names[int(attributions[methods[0]][output].target[i])]}")
        for ax, method in zip(row[1:], methods, strict=True):
            _show(ax, overlay(image, attributions[method][output].maps[i]), method.replace("_", " "))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_cam_only(original, explanations, i=0, *, spec, policy, title=None):
    """The original study's CAM-only figure, 1 x 3 at the original image's resolution: the image, Grad-CAM
    region, Grad-CAM city.

    Args:
        original: uint8 `(H, W, 3)` RGB at its own size.
        explanations: dict with 'region' and 'city' `Explanation`s.
        i: int, the image's index in the explained batch.
        spec: the `ClassSpec`.
        policy: how the image was fitted to the model ('crop', 'pad', 'stretch'); see `map_to_original`.
        title: str or None.

    Returns:
        `matplotlib.figure.Figure`.
    """
    H, W = original.shape[:2]
    fig = Figure(figsize=(12, 4 * H / W + 0.6))
    axes = fig.subplots(1, 3)
    _show(axes[0], original, f"input {W}x{H}")
    for ax, output in zip(axes[1:], OUTPUTS, strict=True):
        e = explanations[output]
        cam = map_to_original(e.cam[i], (H, W), policy=policy)
        _show(ax, overlay(original, cam), f"Grad-CAM {output}: {_label(spec.class_names(output), e, i)}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_class_grid(images, cams, labels, predicted, probs, *, spec, region, per_class=5, title=None):
    """For each class of one region, a row of its images and below it a row of their maps, each titled with
    the prediction (the original study's appendix figures; call once per region).

    Args:
        images: uint8 `(n, H, W, 3)` RGB.
        cams: float `(n, H, W)` in [0, 1].
        labels: int `(n,)`, true class indices.
        predicted: int `(n,)`, predicted class indices.
        probs: float `(n,)`, the predicted class's probability.
        spec: the `ClassSpec`.
        region: str, one of ``spec.region_names``.
        per_class: int, images per class (the first ones of each class). Default 5.
        title: str or None; default names the region.

    Returns:
        `matplotlib.figure.Figure` with ``2 * len(spec.classes_in(region))`` rows of axes.
    """
    classes = spec.classes_in(region)
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    fig = Figure(figsize=(2 * per_class, 4.2 * len(classes)))
    axes = fig.subplots(2 * len(classes), per_class, squeeze=False)
    for row, cls in enumerate(classes):
        members = np.flatnonzero(labels == spec.classes.index(cls))[:per_class]
        for col in range(per_class):
            top, bottom = axes[2 * row, col], axes[2 * row + 1, col]
            top.axis("off")
            bottom.axis("off")
            if col >= len(members):
                continue
            k = members[col]
            mark = "" if predicted[k] == labels[k] else " (wrong)"
            _show(top, images[k], cls if col == 0 else "")
            _show(bottom, overlay(images[k], cams[k]), f"{spec.classes[predicted[k]]} {probs[k]:.2f}{mark}")
    fig.suptitle(title or f"Grad-CAM of the predicted city, {region} cities")
    fig.tight_layout()
    return fig


def plot_mean_cams(mean_cams, counts, *, spec, title=None, cmap="viridis"):
    """One panel per class: its mean Grad-CAM over correctly classified images.

    Args:
        mean_cams: float `(num_classes, H, W)`.
        counts: int `(num_classes,)`, images averaged per class.
        spec: the `ClassSpec`.

    Returns:
        `matplotlib.figure.Figure`.
    """
    n = spec.num_classes
    if len(mean_cams) != n or len(counts) != n:
        raise ValueError(
            f"`mean_cams` and `counts` need one entry per class of {spec.name!r} ({n}). "
            f"Received {len(mean_cams)} and {len(counts)}."
        )
    cols = min(n, 5)
    rows = -(-n // cols)
    fig = Figure(figsize=(2.4 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(mean_cams[k], cmap=cmap, vmin=0, vmax=1)
            ax.set_title(f"{spec.classes[k]} (n={int(counts[k])})", fontsize=9)
    fig.suptitle(title or "Mean Grad-CAM of correctly classified images")
    fig.tight_layout()
    return fig


def plot_patch_gallery(patches, *, spec, title=None):
    """One row per class: the image patches with the highest attribution.

    Args:
        patches: list (one per class) of uint8 `(k, p, p, 3)`, as in `street_features`'s ``patches``.
        spec: the `ClassSpec`.

    Returns:
        `matplotlib.figure.Figure`.
    """
    if len(patches) != spec.num_classes:
        raise ValueError(
            f"`patches` needs one entry per class of {spec.name!r} ({spec.num_classes}). Received {len(patches)}."
        )
    cols = max(1, max(len(p) for p in patches))
    fig = Figure(figsize=(1.3 * cols + 1, 1.4 * len(patches)))
    axes = fig.subplots(len(patches), cols, squeeze=False)
    for row, crops in enumerate(patches):
        for col in range(cols):
            ax = axes[row, col]
            ax.axis("off")
            if col < len(crops):
                ax.imshow(crops[col])
        axes[row, 0].set_title(spec.classes[row], fontsize=8, loc="left")
    fig.suptitle(title or "Most attributed patches per class")
    fig.tight_layout()
    return fig


def plot_quadrants(quadrants, explanation, *, spec, output="city", title=None):
    """The four quadrants of an image, each classified and explained on its own: images on top, maps below.

    Args:
        quadrants: uint8 `(4, H, W, 3)`, as from `streetlib.attribution.summaries.quadrant_images`.
        explanation: the `Explanation` of ``output`` for that batch of 4.
        spec: the `ClassSpec`.
        output: str, default 'city'.

    Returns:
        `matplotlib.figure.Figure`.
    """
    names = spec.class_names(output)
    fig = Figure(figsize=(11, 6))
    axes = fig.subplots(2, 4)
    for q, where in enumerate(("top left", "top right", "bottom left", "bottom right")):
        _show(axes[0, q], quadrants[q], where)
        _show(axes[1, q], overlay(quadrants[q], explanation.cam[q]), _label(names, explanation, q))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
