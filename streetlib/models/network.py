"""The street classifier: a pretrained (or random) backbone with the original study's two-output head.

Layout (every name is part of the contract other modules build on)::

    image (Input, float32 normalised images)
    backbone (nested keras.Model; for VGG16 Keras's names block1_conv1 ... block5_conv3, block1_pool ... block5_pool;
              cut at a layer with ``cut``, e.g. ending at block1_pool)
    head='dense' (the original's): pool -> fc1 -> fc1_bn -> fc1_relu -> fc1_dropout -> fc2 -> ... -> fc2_dropout
    head='conv': head_conv1 -> head_conv1_bn -> head_conv1_relu -> head_conv2 -> ... -> head_conv2_relu
                 -> pool -> head_dropout
    region_logits -> region (softmax)      city_logits -> city (softmax)

The head is a chain of layers from the backbone's output to the logits (`head_layers` lists it), so it can be
replayed on cached feature maps (`split_model`).

The model returns ``{"region": probabilities, "city": probabilities}``; `attribution.explainer.logits_tensor` finds
the pre-softmax scores (the ``<output>_logits`` layers).
No Lambda layers, so saved ``.keras`` files load with ``keras.models.load_model(path, safe_mode=True)``.
"""

import itertools
import re

import keras

from streetlib.classes import OUTPUTS, STREET10
from streetlib.models.backbones import get_backbone
from streetlib.models.weight_files import leaf_layers
from streetlib.models.weights import cache_dir, check_weights, download_error, load_source

# How a feature map becomes one vector: the head's ``pool`` layer, and the baselines' features (baselines.features).
POOLINGS = ("avg", "max", "flatten", "avgmax")
# 'dense': the original study's fully connected head on the backbone's last map. 'conv': two trainable 3x3
# convolutions on the map where the backbone is cut, keeping its resolution, so Grad-CAM at ``head_conv2`` sees where
# small cue objects are; then pooling, dropout and the logits.
HEADS = ("dense", "conv")


@keras.saving.register_keras_serializable(package="streetlib")
class GlobalAvgMaxPooling2D(keras.layers.Layer):
    """Global average and global max pooling side by side: `(batch, h, w, c)` -> `(batch, 2 * c)`.

    Kept only so that models saved before `avgmax_pooling` (which needs no class of streetlib's) still load:
    `CUSTOM_OBJECTS` names it for `streetlib.inference.load_model`.
    """

    def call(self, inputs):
        return keras.ops.concatenate([keras.ops.mean(inputs, axis=(1, 2)), keras.ops.max(inputs, axis=(1, 2))], -1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[-1])


def avgmax_pooling(channels, *, name="pool"):
    """Global average and global max pooling side by side, `(batch, h, w, channels)` -> `(batch, 2 * channels)`, as
    one layer.

    The max keeps a small object that fires strongly in one place, which the average dilutes by the map's area. Made
    of Keras's own layers (a nested functional model taking maps of any height and width), so a saved model loads
    with plain ``keras.models.load_model``, without importing streetlib.
    """
    maps = keras.Input((None, None, channels), name=f"{name}_input")
    pooled = [
        keras.layers.GlobalAveragePooling2D(name=f"{name}_avg")(maps),
        keras.layers.GlobalMaxPooling2D(name=f"{name}_max")(maps),
    ]
    return keras.Model(maps, keras.layers.Concatenate(name=f"{name}_concat")(pooled), name=name)


def build_backbone(name="vgg16", *, weights="random", input_shape=(224, 224, 3)):
    """Build a backbone without its top, named ``backbone``, with weights loaded.

    Args:
        name: str, a `streetlib.models.backbones.BACKBONES` name. Default 'vgg16'.
        weights: a `streetlib.models.weights.WEIGHT_SOURCES` name or a weights file path. Default 'random'.
        input_shape: tuple (H, W, 3). Default (224, 224, 3).

    Returns:
        `keras.Model` mapping float32 `(batch, H, W, 3)` normalised images to its last feature map.

    Raises:
        WeightsDownloadError: pretrained weights could not be downloaded (the message says where to put the file).
    """
    info = get_backbone(name)
    weights = check_weights(weights, backbone=info.name)
    build = getattr(keras.applications, info.constructor)
    if weights == "imagenet" and info.name != "vgg16":
        try:
            return _renamed(build(include_top=False, weights="imagenet", input_shape=tuple(input_shape)))
        except Exception as err:  # keras.utils.get_file raises a bare Exception for URL errors
            failure = re.search(r"URL fetch failure on (\S+): ", str(err))
            if failure is None:
                raise
            url = failure.group(1)
            target = cache_dir() / "models" / url.rsplit("/", 1)[-1]
            raise download_error("imagenet", url, target, err) from err
    model = _renamed(build(include_top=False, weights=None, input_shape=tuple(input_shape)))
    load_source(model, weights, backbone=info.name)
    return model


def _renamed(model):
    # Some constructors look their architecture up by `name` (EfficientNetV2), so rename by re-wrapping the graph.
    return keras.Model(model.input, model.output, name="backbone")


# Passed to `keras.models.load_model` by whoever loads a streetlib model without having imported this module (the
# registration above only runs on import): Keras would otherwise not find the class.
CUSTOM_OBJECTS = {"streetlib>GlobalAvgMaxPooling2D": GlobalAvgMaxPooling2D}


def build_model(
    *,
    backbone="vgg16",
    weights="random",
    input_shape=(224, 224, 3),
    classes=STREET10,
    cut=None,
    head="dense",
    pooling="avg",
    units=None,
    filters=64,
    head_stride=2,
    dropout=0.5,
    seed=None,
    name=None,
):
    """Build the two-output street classifier.

    Thirteen parameters, over the ~10 of the rest of the package: each is one field of the architecture a
    `RunConfig` records and passes through, with its default; an object grouping them would be a second RunConfig.

    Args:
        backbone: str, a `streetlib.models.backbones.BACKBONES` name. Default 'vgg16'.
        weights: the backbone's weight source (see `streetlib.models.weights`). Default 'random'.
        input_shape: tuple (H, W, 3). Default (224, 224, 3).
        classes: `ClassSpec`, giving the number of regions and classes. Default Street10.
        cut: str or None, the backbone layer where the backbone ends (e.g. 'block1_pool'; the layers after it are
            left out). Default None: the whole backbone.
        head: 'dense' (default, the original's fc1/fc2 head) or 'conv' (two 3x3 convolutions, then pooling).
        pooling: 'avg' (default), 'max', 'flatten' or 'avgmax' (average and max side by side).
        units: int, width of ``fc1`` ('dense' head). Default 512, or 4096 with 'flatten' (the original's variants).
        filters: int, the channels of both convolutions of the 'conv' head. Default 64.
        head_stride: int, the stride of the 'conv' head's first convolution: 2 (default) halves the map, which makes
            the head 4x cheaper and still leaves Grad-CAM an 8x8 grid on the demo's 32 px images cut at
            'block1_pool' (16x16 at 64 px).
        dropout: float in [0, 1), the rate of the head's dropout layers. Default 0.5.
        seed: int or None. If given, the global Keras, TF and NumPy seeds are set first, so random initial weights
            and dropout masks repeat.
        name: str, the model's name. Default ``"<backbone>_<pooling>"``.

    Returns:
        `keras.Model` with input ``image`` (float32 `(batch, H, W, 3)`) and outputs ``{"region": float32
        (batch, num_regions), "city": float32 (batch, num_classes)}``, softmax probabilities summing to 1.
    """
    check_head(head=head, pooling=pooling, units=units, filters=filters, head_stride=head_stride, dropout=dropout)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    info = get_backbone(backbone)
    trunk = build_backbone(info.name, weights=weights, input_shape=input_shape)
    if cut is not None:
        trunk = cut_backbone(trunk, cut, argument="cut", name="backbone")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = trunk(inputs)
    channels = int(trunk.output.shape[-1])
    head_args = {"pooling": pooling, "units": units, "filters": filters, "stride": head_stride, "dropout": dropout}
    for layer in _new_head(head, channels=channels, **head_args):
        x = layer(x)
    # float32 outputs keep the softmax and the loss stable under mixed precision.
    outputs = {}
    for output, size in (("region", classes.num_regions), ("city", classes.num_classes)):
        logits = keras.layers.Dense(size, dtype="float32", name=f"{output}_logits")(x)
        outputs[output] = keras.layers.Activation("softmax", dtype="float32", name=output)(logits)
    return keras.Model(inputs, outputs, name=name or f"{info.name}_{pooling}")


def check_head(*, head="dense", pooling, units, filters=64, head_stride=2, dropout):
    """Validate the head's settings (see `build_model`) before anything is built or written."""
    if head not in HEADS:
        raise ValueError(f"Invalid `head`. Expected one of {HEADS}. Received: head={head!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"Invalid `pooling`. Expected one of {POOLINGS}. Received: pooling={pooling!r}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"Invalid `dropout`. Expected a float in [0, 1). Received: dropout={dropout!r}")
    if units is not None and not (isinstance(units, int) and units >= 1):
        raise ValueError(f"Invalid `units`. Expected None or an int >= 1. Received: units={units!r}")
    for name, value in (("filters", filters), ("head_stride", head_stride)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"Invalid `{name}`. Expected an int >= 1. Received: {name}={value!r}")


def _new_head(head, *, channels, pooling, units, filters, stride, dropout):
    """The head's layers from the backbone's output (``channels`` deep) to the logits, in call order (a chain).
    Returns list."""
    layers = []
    if head == "conv":
        for block, strides in (("head_conv1", stride), ("head_conv2", 1)):
            layers += [
                # No bias: the batch normalisation right after has its own offset.
                keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=block),
                keras.layers.BatchNormalization(name=f"{block}_bn"),
                keras.layers.Activation("relu", name=f"{block}_relu"),
            ]
        return [*layers, _pool_layer(pooling, filters), keras.layers.Dropout(dropout, name="head_dropout")]
    layers.append(_pool_layer(pooling, channels))
    for layer, width in (("fc1", units or (4096 if pooling == "flatten" else 512)), ("fc2", 128)):
        layers += [
            keras.layers.Dense(width, name=layer),
            keras.layers.BatchNormalization(name=f"{layer}_bn"),
            keras.layers.Activation("relu", name=f"{layer}_relu"),
            keras.layers.Dropout(dropout, name=f"{layer}_dropout"),
        ]
    return layers


def _pool_layer(pooling, channels):
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="pool")
    elif pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="pool")
    elif pooling == "flatten":
        return keras.layers.Flatten(name="pool")
    elif pooling == "avgmax":
        return avgmax_pooling(channels, name="pool")
    else:
        raise ValueError(f"Invalid `pooling`. Expected one of {POOLINGS}. Received: pooling={pooling!r}")


def backbone_of(model):
    """The nested backbone model of a street classifier."""
    return model.get_layer("backbone")


def layer_index(backbone, layer, *, argument="layer", alternatives=()):
    """The position of a named layer in a backbone, where it is cut or frozen.

    Args:
        backbone: a backbone `keras.Model` (from `build_backbone`, or `backbone_of` a street classifier).
        layer: str, the name of one of its layers.
        argument: str, the caller's argument that names the layer, for the error message. Default 'layer'.
        alternatives: tuple, the other values that argument accepts, for the error message. Default none.

    Returns:
        int, the index of ``layer`` in ``backbone.layers``.

    Raises:
        ValueError: ``backbone`` has no such layer; the message suggests its pooling layers (else its last five).
    """
    names = [each.name for each in backbone.layers]
    if layer not in names:
        pools = [n for n in names if n.endswith("_pool")] or names[-5:]
        expected = f"{', '.join(map(repr, alternatives))} or " if alternatives else ""
        raise ValueError(
            f"Invalid `{argument}`. Expected {expected}a layer of the backbone (e.g. {pools}). "
            f"Received: {argument}={layer!r}"
        )
    return names.index(layer)


def cut_backbone(backbone, layer, *, argument="layer", alternatives=(), name=None):
    """The backbone up to and including one of its layers, sharing its layers and weights.

    Args:
        backbone, layer, argument, alternatives: as in `layer_index`.
        name: str, the cut model's name. Default ``backbone_to_<layer>``.

    Returns:
        `keras.Model` named ``name``, mapping the backbone's input (float32 `(batch, H, W, 3)`) to
        the output of ``layer`` (e.g. float32 `(batch, h, w, c)` for a pooling layer).

    Raises:
        ValueError: ``backbone`` has no such layer.
    """
    index = layer_index(backbone, layer, argument=argument, alternatives=alternatives)
    return keras.Model(backbone.input, backbone.layers[index].output, name=name or f"backbone_to_{layer}")


def freeze(model, *, through):
    """Set which layers train, in place.

    Args:
        model: a `build_model` model.
        through: 'backbone' freezes the whole backbone (transfer); the name of a backbone layer freezes the backbone
            up to and including it (fine-tuning, e.g. 'block4_pool' trains block5 and the head); None trains
            everything. The head always trains.

    Returns:
        ``model``. Compile it (again) afterwards: Keras reads the trainable flags at compile time.
    """
    backbone = backbone_of(model)
    # A functional model does not pass its trainable flag on to a nested model, so set each level.
    for layer in (model, backbone, *leaf_layers(model)):
        layer.trainable = True
    if through is None:
        return model
    if through == "backbone":
        backbone.trainable = False
        return model
    cut = layer_index(backbone, through, argument="through", alternatives=(None, "backbone"))
    for layer in backbone.layers[: cut + 1]:
        layer.trainable = False
    return model


def count_params(model):
    """Parameter counts: dict with int ``total``, ``trainable`` and ``non_trainable``."""
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    total = sum(int(w.numpy().size) for w in model.weights)
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}


def trainable_layers(model):
    """Names of the layers (nested ones included) that have trainable weights, in order. Returns list of str."""
    return [layer.name for layer in leaf_layers(model) if layer.trainable_weights]


def apply_head(model, features):
    """Call ``model``'s head layers (shared, not copied) on a backbone feature map.

    Args:
        model: a `build_model` model.
        features: a symbolic tensor shaped like the backbone's output.

    Returns:
        dict ``{"region": probabilities, "city": probabilities}`` of symbolic tensors.
    """
    x = features
    for layer in head_layers(model):
        x = layer(x)
    return {o: model.get_layer(o)(model.get_layer(f"{o}_logits")(x)) for o in OUTPUTS}


def head_layers(model):
    """The layers of a `build_model` model between its backbone and its logits, in call order. Returns list."""
    ends = {"image", "backbone", *OUTPUTS, *(f"{o}_logits" for o in OUTPUTS)}
    return [layer for layer in model.layers if layer.name not in ends]


def split_model(model, *, through):
    """Cut a model in two at a frozen boundary, sharing its layers: the frozen part and the part that trains.

    Args:
        model: a `build_model` model.
        through: 'backbone' (cut after the backbone) or the name of a backbone layer (the backbone must be a chain,
            e.g. VGG16 at 'block4_pool').

    Returns:
        (frozen, rest): two `keras.Model`. ``frozen`` maps images to the feature map at the cut; ``rest`` maps that
        feature map (input named ``features``) to ``{"region", "city"}`` probabilities. Training ``rest`` trains
        ``model``.
    """
    backbone = backbone_of(model)
    if through == "backbone":
        frozen = backbone
        features = keras.Input(shape=tuple(backbone.output.shape[1:]), name="features")
        return frozen, keras.Model(features, apply_head(model, features), name=f"{model.name}_head")
    cut = layer_index(backbone, through, argument="through", alternatives=("backbone",))
    if not _is_chain(backbone, cut):
        raise ValueError(
            f"The backbone's layers after {through!r} are not a single chain (skip connections?): it can only be cut "
            f"at through='backbone'. Received: through={through!r}"
        )
    frozen = cut_backbone(backbone, through)
    features = keras.Input(shape=tuple(backbone.layers[cut].output.shape[1:]), name="features")
    x = features
    for layer in backbone.layers[cut + 1 :]:
        x = layer(x)
    return frozen, keras.Model(features, apply_head(model, x), name=f"{model.name}_after_{through}")


def _inputs_of(node_args):
    """Names of the layers feeding a node, from a functional config's ``inbound_nodes`` entry."""
    if isinstance(node_args, dict):
        if node_args.get("class_name") == "__keras_tensor__":
            return [node_args["config"]["keras_history"][0]]
        return [n for v in node_args.values() for n in _inputs_of(v)]
    if isinstance(node_args, (list, tuple)):
        return [n for v in node_args for n in _inputs_of(v)]
    return []


def _is_chain(backbone, start):
    """True when every layer after index ``start`` takes exactly one input: the previous layer's output."""
    layers = backbone.get_config()["layers"]
    for prev, cur in itertools.pairwise(layers[start:]):
        nodes = cur["inbound_nodes"]
        if len(nodes) != 1 or _inputs_of(nodes[0]["args"]) != [prev["name"]]:
            return False
    return True
