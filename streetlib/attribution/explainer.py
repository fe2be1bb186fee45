"""The model split at a layer and the compiled gradients every attribution method is computed from.

- Nested backbone-plus-head models work: the model is split at the chosen layer into "input -> feature map" and
  "feature map -> logits" sub-models made of the model's own layers (so they share its weights and see later
  training), through every level of nesting. Libraries that ask Keras for ``model.get_layer(...).output`` of a layer
  inside a nested backbone fail there ("not connected to inputs").
- One compiled function per model, layer and output serves every batch; the original built a gradient graph per image.
- Gradients are of the class *logit*: the softmax probability saturates, so its gradient vanishes exactly where the
  model is most confident.
- Guided Backpropagation runs on a clone whose ReLUs (activations of Conv/Dense layers, standalone ``ReLU`` and
  ``Activation("relu")`` layers) have the guided gradient; the user's model is never changed, and the clone's weights
  are refreshed from the model before every call.
- What the methods share besides: model inputs from uint8 images (`model_inputs`), and copies of images handed out
  in bounded chunks (`copy_batches`).

Model convention: a single image input; for each output name ``o`` (``"region"``, ``"city"``) a linear layer
``o_logits`` feeding a softmax. Flat models without ``*_logits`` layers work when ``output`` names a linear layer
(its output is taken as the logits) or an ``Activation``/``Softmax`` layer (its input is taken).
"""

import weakref
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from streetlib.attribution.maps import Attribution
from streetlib.data.pipeline import check_normalization, normalize

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


class Explainer:
    """The compiled gradients of one model at one feature layer: the feature map and the logit's gradient there
    (every CAM), the logit's gradient at the input, plain or through guided ReLUs, and the logits alone.

    Each output gets one `tf.function` per kind (traced once, for any batch size); the guided clone is built on first
    use. The methods of `streetlib.attribution.registry` take an Explainer (``explainer(model, layer=...)``).

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

    def grad_cam(self, inputs, *, output="city", target=None, rank=1):
        """Grad-CAM (Selvaraju et al. 2017) of the class logit, raw: the primitive `cams.grad_cam` registers and
        `guided.guided_grad_cam` multiplies the guided gradients by (two method families that may not import each
        other). `registry.attribute(..., method="grad_cam")` is the entry point.

        Channel weights are the spatially averaged gradients of the logit w.r.t. the feature map; the weighted sum of
        the feature maps goes through a ReLU.

        Args: as `layer_gradients`.

        Returns:
            `Attribution` 'grad_cam', maps float32 `(batch, h, w)` at the feature map's resolution, non-negative and
            not normalised.
        """
        g = self.layer_gradients(inputs, output=output, target=target, rank=rank)
        weights = g.gradients.mean(axis=(1, 2))  # (batch, channels)
        maps = np.maximum(np.einsum("bhwc,bc->bhw", g.activations, weights), 0).astype(np.float32)
        return Attribution("grad_cam", output, g.target, maps, logits=g.logits)


_EXPLAINERS = weakref.WeakKeyDictionary()


def explainer(model, *, layer=None):
    """The cached `Explainer` of ``model`` and ``layer`` (built on first use, dropped with the model)."""
    per_model = _EXPLAINERS.setdefault(model, {})
    key = default_layer(model) if layer is None else layer
    if key not in per_model:
        per_model[key] = Explainer(model, layer=key)
    return per_model[key]


# ---------------------------------------------------------------------------------------------------------------
# Inputs


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
