"""Tests of attribution.explainer, attribution.maps and the original study's figures in attribution.plots: Grad-CAM
against hand-computed values and tf-keras-vis, guided ReLU, the user's model left unchanged, nested and flat models,
`registry.explain`, the map utilities and the figures.

`convention_model` builds stand-ins that follow the project's model convention (input ``image``, nested
``backbone``, ``*_logits`` layers, softmax outputs ``region`` and ``city``); the other attribution test files
import it from here.
"""

import gc
import weakref

import matplotlib

matplotlib.use("Agg")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from streetlib.attribution import explainer, maps, plots, registry  # noqa: E402
from streetlib.attribution.maps import Attribution  # noqa: E402
from streetlib.classes import STREET10  # noqa: E402
from streetlib.models import network as models  # noqa: E402


def tiny_backbone(size):
    """A small nested backbone with Keras VGG16 layer names (fast stand-in for VGG16)."""
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv1")(inp)
    x = keras.layers.MaxPooling2D(name="block1_pool")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="block5_conv3")(x)
    x = keras.layers.MaxPooling2D(name="block5_pool")(x)
    return keras.Model(inp, x, name="backbone")


def convention_model(size=32, *, backbone="tiny", pool="avg", num_regions=2, num_cities=10, seed=0):
    """A random-weights model following the streetlib convention, with a nested backbone."""
    keras.utils.set_random_seed(seed)
    if backbone == "vgg16":
        vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
        net = keras.Model(vgg.input, vgg.output, name="backbone")
    else:
        net = tiny_backbone(size)
    inp = keras.Input((size, size, 3), name="image")
    x = net(inp)
    pools = {
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
        "flatten": keras.layers.Flatten,
    }
    x = pools[pool](name="pool")(x)
    for name, width in (("fc1", 32), ("fc2", 16)):
        x = keras.layers.Dense(width, name=name)(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
        x = keras.layers.Dropout(0.5, name=f"{name}_dropout")(x)
    outputs = {}
    for output, n in (("region", num_regions), ("city", num_cities)):
        logits = keras.layers.Dense(n, name=f"{output}_logits")(x)
        outputs[output] = keras.layers.Activation("softmax", name=output)(logits)
    return keras.Model(inp, outputs, name=f"standin_{backbone}")


def random_inputs(n, size, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Grad-CAM against a hand computation

# A 2x2 one-channel image; a 1x1 convolution makes the feature maps A0 = x and A1 = 0.5 x; Flatten; Dense.
X_HAND = np.array([[1.0, -2.0], [3.0, 8.0]], np.float32).reshape(1, 2, 2, 1)
CONV_KERNEL = np.array([1.0, 0.5], np.float32).reshape(1, 1, 1, 2)
# Dense kernel rows are flattened (i, j, k). Class 0 has zero weights; class 1: channel 0 weights [1, 0, 0, 1]
# (mean 0.5), channel 1 weights [-1, -1, 0, 0] (mean -0.5).
DENSE_KERNEL = np.zeros((8, 2), np.float32)
DENSE_KERNEL[[0, 6], 1] = 1.0
DENSE_KERNEL[[1, 3], 1] = -1.0
# By hand: cam = relu(0.5 * A0 - 0.5 * A1) = relu(0.25 x) = [[0.25, 0], [0.75, 2]]; divided by its max 2.
CAM_RAW = np.array([[0.25, 0.0], [0.75, 2.0]], np.float32)
CAM_NORMALISED = np.array([[0.125, 0.0], [0.375, 1.0]], np.float32)


def hand_model(nested):
    inp = keras.Input((2, 2, 1), name="image")
    conv = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")
    if nested:
        inner_in = keras.Input((2, 2, 1))
        x = keras.Model(inner_in, conv(inner_in), name="backbone")(inp)
    else:
        x = conv(inp)
    x = keras.layers.Flatten(name="pool")(x)
    dense = keras.layers.Dense(2, name="city_logits")
    logits = dense(x)
    model = keras.Model(inp, {"city": keras.layers.Activation("softmax", name="city")(logits)})
    conv.set_weights([CONV_KERNEL])
    dense.set_weights([DENSE_KERNEL, np.zeros(2, np.float32)])
    return model


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_grad_cam_matches_hand_computation(nested):
    model = hand_model(nested)
    raw = explainer.explainer(model).grad_cam(X_HAND, target=1).maps
    np.testing.assert_allclose(raw[0], CAM_RAW, atol=1e-6)
    np.testing.assert_allclose(registry.attribute(X_HAND, model, target=1).maps[0], CAM_NORMALISED, atol=1e-6)


def test_grad_cam_all_zero_map_is_zero_not_nan():
    # Class 0 has zero weights: zero gradients, a zero map, which the original turned into NaN by dividing by 0.
    cam = registry.attribute(X_HAND, hand_model(False), target=0).maps
    assert np.isfinite(cam).all()
    np.testing.assert_array_equal(cam, 0.0)
    np.testing.assert_array_equal(maps.normalize_maps(np.zeros((2, 3, 3))), 0.0)


def test_rank_picks_classes_and_probs_are_softmax_of_logits():
    model = hand_model(False)
    e = explainer.explainer(model).grad_cam(X_HAND, rank=2)
    logits = explainer.explainer(model).logits(X_HAND)
    assert e.target[0] == np.argsort(-logits[0])[1]
    np.testing.assert_allclose(e.probs, tf.nn.softmax(logits).numpy(), atol=1e-6)


def test_nested_and_flat_models_agree():
    # The same layers, once inside a nested backbone and once flat, give the same maps.
    nested = convention_model(32)
    inner = nested.get_layer("backbone")
    inp = keras.Input((32, 32, 3), name="image")
    x = inp
    for layer in inner.layers[1:]:
        x = layer(x)
    for name in ("pool", "fc1", "fc1_bn", "fc1_relu", "fc1_dropout", "fc2", "fc2_bn", "fc2_relu", "fc2_dropout"):
        x = nested.get_layer(name)(x)
    flat = keras.Model(inp, {o: nested.get_layer(o)(nested.get_layer(f"{o}_logits")(x)) for o in ("region", "city")})
    x = random_inputs(3, 32)
    for output in ("region", "city"):
        cams = [registry.attribute(x, m, output=output).maps for m in (nested, flat)]
        np.testing.assert_allclose(*cams, atol=1e-5)
        guided = [registry.attribute(x, m, method="guided_backprop", output=output).per_channel for m in (nested, flat)]
        np.testing.assert_allclose(*guided, atol=1e-6)


def test_default_layer_is_the_last_conv_the_logits_read():
    assert explainer.default_layer(convention_model(32)) == "block5_conv3"
    conv_head = models.build_model(input_shape=(32, 32, 3), cut="block1_pool", head="conv", filters=4, seed=0)
    assert explainer.default_layer(conv_head) == "head_conv2"
    flat = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=3, classifier_activation=None)
    assert explainer.default_layer(flat) == "block5_conv3"
    inp = keras.Input((4, 4, 3))
    no_conv = keras.Model(inp, keras.layers.Dense(2, name="city_logits")(keras.layers.Flatten()(inp)))
    with pytest.raises(ValueError, match="has no convolution layer"):
        explainer.default_layer(no_conv)


def test_any_layer_and_output_on_nested_model():
    model = convention_model(32)
    x = random_inputs(2, 32)
    early = explainer.explainer(model, layer="block1_conv1").grad_cam(x, output="region").maps
    assert early.shape == (2, 32, 32)
    late = explainer.explainer(model, layer="block5_pool").grad_cam(x, output="region").maps
    assert late.shape == (2, 8, 8)
    assert registry.attribute(x, model, output="region", layer="block5_pool").maps.shape == (2, 32, 32)
    assert registry.attribute(x, model, output="city").maps.shape == (2, 32, 32)


def test_compiled_once_for_any_batch_size():
    model = convention_model(32)
    ex = explainer.explainer(model)
    ex.grad_cam(random_inputs(3, 32))
    ex.grad_cam(random_inputs(5, 32), rank=2)
    ex.grad_cam(random_inputs(1, 32), target=4)
    assert ex._layer_fn("city").experimental_get_tracing_count() == 1
    assert explainer.explainer(model) is ex


def test_explainer_cache_does_not_keep_the_model_alive():
    model = convention_model(32)
    registry.explain(random_inputs(1, 32), model)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------------------------------------------------------
# Agreement with tf-keras-vis


def test_grad_cam_agrees_with_tf_keras_vis_on_flat_vgg16():
    gradcam = pytest.importorskip("tf_keras_vis.gradcam")
    from tf_keras_vis.utils import normalize
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    keras.utils.set_random_seed(1)
    model = keras.applications.VGG16(weights=None, input_shape=(64, 64, 3), classes=5, classifier_activation=None)
    x = random_inputs(3, 64, seed=1)
    targets = [0, 2, 4]
    theirs = gradcam.Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore(targets), x, penultimate_layer="block5_conv3", expand_cam=False, normalize_cam=True
    )
    ours = explainer.explainer(model).grad_cam(x, output="predictions", target=np.array(targets)).maps
    assert ours.shape == (3, 4, 4)
    assert (ours.max(axis=(1, 2)) > ours.min(axis=(1, 2))).all(), "degenerate maps would agree trivially"
    np.testing.assert_allclose(normalize(ours), np.asarray(theirs), atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# Guided backpropagation


def test_guided_relu_gradient_by_hand():
    x = tf.constant([-1.0, 2.0, 3.0, 0.5])
    upstream = tf.constant([1.0, -1.0, 2.0, 1.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = explainer.guided_relu(x)
    np.testing.assert_array_equal(y.numpy(), [0.0, 2.0, 3.0, 0.5])
    # Passes only where the input and the upstream gradient are both positive.
    np.testing.assert_array_equal(tape.gradient(y, x, output_gradients=upstream).numpy(), [0.0, 0.0, 2.0, 1.0])


X_LINE = np.array([-1.0, 2.0, 3.0, 0.5], np.float32).reshape(1, 1, 4, 1)
W_LINE = np.array([1.0, -1.0, 2.0, 1.0], np.float32)


def relu_model(kind):
    """Input -> 1x1 identity conv -> ReLU (as `kind`) -> Flatten -> Dense with weights W_LINE."""
    inp = keras.Input((1, 4, 1), name="image")
    conv = keras.layers.Conv2D(1, 1, use_bias=False, activation="relu" if kind == "conv" else None, name="conv")
    x = conv(inp)
    if kind == "ReLU":
        x = keras.layers.ReLU(name="relu")(x)
    elif kind == "Activation":
        x = keras.layers.Activation("relu", name="relu")(x)
    dense = keras.layers.Dense(1, use_bias=False, name="city_logits")
    model = keras.Model(inp, dense(keras.layers.Flatten()(x)))
    conv.set_weights([np.ones((1, 1, 1, 1), np.float32)])
    dense.set_weights([W_LINE.reshape(4, 1)])
    return model


def plain_gradient(model, x):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(model(x))
    return tape.gradient(y, x).numpy().ravel()


@pytest.mark.parametrize("kind", ["conv", "ReLU", "Activation"])
def test_guided_backprop_catches_every_relu_and_leaves_the_model_unchanged(kind):
    model = relu_model(kind)
    weights = [w.copy() for w in model.get_weights()]
    layer_types = [type(layer) for layer in model.layers]
    # The plain gradient lets negative upstream gradients through where x > 0; the guided one does not.
    np.testing.assert_array_equal(plain_gradient(model, X_LINE), [0.0, -1.0, 2.0, 1.0])
    guided = registry.attribute(X_LINE, model, method="guided_backprop", output="city_logits", target=0).per_channel
    np.testing.assert_array_equal(guided.ravel(), [0.0, 0.0, 2.0, 1.0])
    # The user's model is untouched: same layers, activations, weights and gradients.
    assert [type(layer) for layer in model.layers] == layer_types
    expected = keras.activations.relu if kind == "conv" else keras.activations.linear
    assert model.get_layer("conv").activation is expected
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(plain_gradient(model, X_LINE), [0.0, -1.0, 2.0, 1.0])


def test_guided_backprop_sees_later_weight_changes():
    model = relu_model("ReLU")

    def guided():
        return registry.attribute(X_LINE, model, method="guided_backprop", output="city_logits", target=0).per_channel

    guided()
    model.get_layer("city_logits").set_weights([-W_LINE.reshape(4, 1)])
    np.testing.assert_array_equal(guided().ravel(), [0.0, 1.0, 0.0, 0.0])


def test_explain_gives_all_maps_for_both_outputs():
    model = convention_model(32)
    x = random_inputs(2, 32)
    result = registry.explain(x, model, rank=3)
    assert list(result) == list(registry.ORIGINAL) and all(list(r) == ["region", "city"] for r in result.values())
    city, region = result["grad_cam"]["city"], result["grad_cam"]["region"]
    guided, guided_cam = result["guided_backprop"]["city"], result["guided_grad_cam"]["city"]
    assert city.maps.shape == (2, 32, 32) and guided.per_channel.shape == (2, 32, 32, 3)
    assert city.layer == guided_cam.layer == "block5_conv3" and guided.layer is None
    np.testing.assert_allclose(guided_cam.per_channel, guided.per_channel * city.maps[..., None])
    # rank 3 for the city; the region output has two classes, so its rank is capped at 2.
    np.testing.assert_array_equal(city.target, np.argsort(-city.logits, axis=1)[:, 2])
    np.testing.assert_array_equal(region.target, np.argmin(region.logits, axis=1))
    for output in ("region", "city"):  # every method explains the classes the first one picked
        for method in registry.ORIGINAL:
            np.testing.assert_array_equal(result[method][output].target, result["grad_cam"][output].target)
    alone = registry.attribute(x, model, method="guided_grad_cam", output="city", rank=3)
    np.testing.assert_allclose(alone.per_channel, guided_cam.per_channel, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_bad_arguments_raise_clear_errors():
    model = convention_model(32)
    x = random_inputs(2, 32)
    with pytest.raises(TypeError, match="must be a keras.Model"):
        explainer.Explainer("model.keras")
    with pytest.raises(ValueError, match="no layer named 'block9_conv1'"):
        registry.attribute(x, model, layer="block9_conv1")
    with pytest.raises(ValueError, match="needs a 4-D feature map"):
        registry.attribute(x, model, layer="fc1")
    with pytest.raises(ValueError, match="has no layer 'country_logits' or 'country'"):
        registry.attribute(x, model, output="country")
    with pytest.raises(ValueError, match=r"Invalid `rank` for output 'region': expected an int in \[1, 2\]"):
        registry.attribute(x, model, output="region", rank=3)
    with pytest.raises(ValueError, match=r"Invalid `target` for output 'city': expected class indices in \[0, 10\)"):
        registry.attribute(x, model, target=np.array([0, 10]))
    with pytest.raises(ValueError, match="expected an int or an int array"):
        registry.attribute(x, model, target=1.5)
    with pytest.raises(ValueError, match="Pass either `target` or `rank`"):
        registry.attribute(x, model, target=1, rank=2)
    with pytest.raises(ValueError, match=r"Invalid `inputs`: expected float32 of shape \(None, 32, 32, 3\)"):
        registry.attribute(x[:, :16], model)
    with pytest.raises(ValueError, match="empty batch"):
        registry.attribute(x[:0], model)
    with pytest.raises(TypeError, match="sequence of output names"):
        registry.explain(x, model, outputs="city")
    with pytest.raises(TypeError, match="sequence of method names"):
        registry.explain(x, model, methods="grad_cam")
    with pytest.raises(ValueError, match=r"Invalid `method`. Expected one of .* Received: method='lime'"):
        registry.explain(x, model, methods=["grad_cam", "lime"])
    with pytest.raises(ValueError, match=r"outputs \['country'\] are not in"):
        registry.explain(x, model, target={"country": 1})


def test_layer_names_must_be_unique_and_layers_called_once():
    inp = keras.Input((8, 8, 3), name="image")
    inner_in = keras.Input((8, 8, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(2, 1, name="conv")(inner_in), name="backbone")
    x = keras.layers.Conv2D(3, 1, name="conv")(inp)
    out = keras.layers.Dense(2, name="city_logits")(keras.layers.Flatten()(inner(x)))
    with pytest.raises(ValueError, match="the name 'conv' is ambiguous"):
        explainer.Explainer(keras.Model(inp, out), layer="conv")
    shared = keras.layers.Conv2D(3, 1, name="shared")
    out = keras.layers.Dense(2, name="city_logits")(keras.layers.Flatten()(shared(shared(inp))))
    with pytest.raises(ValueError, match="'shared' is called 2 times"):
        explainer.Explainer(keras.Model(inp, out), layer="shared")


def test_models_that_cannot_be_split_or_explained():
    inp = keras.Input((8, 8, 3), name="image")
    conv = keras.layers.Conv2D(3, 1, name="conv")(inp)
    # The logits also see the input directly, past the conv layer: no "feature map -> logits" part exists.
    skip = keras.layers.Add()([conv, inp])
    flat = keras.Model(inp, keras.layers.Dense(2, name="city_logits")(keras.layers.Flatten()(skip)))
    with pytest.raises(ValueError, match="Cannot split model .* at layer 'conv'"):
        registry.attribute(random_inputs(1, 8), flat)
    inner_in = keras.Input((8, 8, 3))
    inner_conv = keras.layers.Conv2D(3, 1, name="conv")(inner_in)
    backbone = keras.Model(inner_in, keras.layers.Add()([inner_conv, inner_in]), name="backbone")
    nested = keras.Model(inp, keras.layers.Dense(2, name="city_logits")(keras.layers.Flatten()(backbone(inp))))
    with pytest.raises(ValueError, match="Cannot split model .* at layer 'conv'"):
        explainer.Explainer(nested)
    # Both inputs feed the logits: Keras 3.10 refuses a model with an unused input before attribution could.
    extra = keras.Input((2,))
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(conv), extra])
    two = keras.Model([inp, extra], keras.layers.Dense(2, name="city_logits")(joined))
    with pytest.raises(ValueError, match="has 2 tensors; attribution supports single-input"):
        explainer.Explainer(two)


def test_explainer_needs_its_model_alive():
    model = hand_model(False)
    ex = explainer.Explainer(model)
    del model
    gc.collect()
    with pytest.raises(RuntimeError, match="was deleted"):
        ex.grad_cam(X_HAND)


def test_clone_with_weights_refuses_a_clone_that_changes_the_weights():
    model = hand_model(False)

    def drop_bias(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.Dense):
            config["use_bias"] = False
        return layer.__class__.from_config(config)

    clone, pairs = explainer.clone_with_weights(model)
    assert len(pairs) == 3 and clone is not model  # conv kernel, dense kernel and bias
    np.testing.assert_array_equal(clone.get_layer("city_logits").get_weights()[0], DENSE_KERNEL)
    with pytest.raises(ValueError, match="does not have the model's weights"):
        explainer.clone_with_weights(model, clone_function=drop_bias)


def test_softmax_class_layer_is_refused_and_activation_layer_input_is_used():
    keras.utils.set_random_seed(0)
    flat = keras.applications.VGG16(weights=None, input_shape=(32, 32, 3), classes=3)
    with pytest.raises(ValueError, match="applies activation 'softmax'; attribution needs the logits"):
        registry.attribute(random_inputs(1, 32), flat, output="predictions")
    # Without `city_logits`, naming the softmax layer finds the logits under it.
    inp = keras.Input((4, 4, 3), name="image")
    scores = keras.layers.Dense(3, name="scores")(keras.layers.Flatten()(keras.layers.Conv2D(2, 1, name="conv")(inp)))
    model = keras.Model(inp, keras.layers.Activation("softmax", name="city")(scores))
    x = random_inputs(2, 4)
    np.testing.assert_array_equal(
        explainer.explainer(model).logits(x, output="city"),
        model.get_layer("scores")(keras.Model(inp, model.get_layer("scores").input)(x)).numpy(),
    )
    vector = keras.layers.Conv2D(2, 1, name="conv")(inp)
    with pytest.raises(ValueError, match=r"expected \(batch, classes\)"):
        explainer.logits_tensor(keras.Model(inp, vector), "conv")


# ---------------------------------------------------------------------------------------------------------------
# Display helpers and figures


def test_overlay_keeps_rgb_order_and_skips_unseen_pixels():
    red = np.zeros((4, 6, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(maps.overlay(red, np.zeros((2, 3)), alpha=0.0)[0, 0], [1.0, 0.0, 0.0])
    hot = maps.overlay(red, np.ones((4, 6)), alpha=1.0)
    np.testing.assert_allclose(hot[0, 0], matplotlib.colormaps["inferno"](1.0)[:3], atol=1e-6)
    cam = np.ones((4, 6))
    cam[:, :2] = np.nan
    mixed = maps.overlay(red, cam, alpha=1.0)
    np.testing.assert_allclose(mixed[0, 0], [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="must be uint8 RGB"):
        maps.overlay(red.astype(np.float32), cam)
    with pytest.raises(ValueError, match="Invalid `alpha`"):
        maps.overlay(red, cam, alpha=2)


def test_gradient_to_rgb_flips_bgr_inputs():
    g = np.zeros((1, 2, 2, 3), np.float32)
    g[..., 0] = 1.0  # the first input channel: blue for 'caffe' (BGR), red otherwise
    assert maps.gradient_to_rgb(g, normalization="caffe")[0, 0, 0].argmax() == 2
    assert maps.gradient_to_rgb(g, normalization="samplewise")[0, 0, 0].argmax() == 0
    with pytest.raises(ValueError, match="Invalid `normalization`"):
        maps.gradient_to_rgb(g, normalization="imagenet")
    with pytest.raises(ValueError, match=r"must have shape \(batch, H, W, 3\)"):
        maps.gradient_to_rgb(g[..., :2], normalization="unit")


def test_map_to_original_follows_the_resize_policy():
    cam = np.arange(16, dtype=np.float32).reshape(4, 4)
    crop = maps.map_to_original(cam, (4, 8), policy="crop")
    assert crop.shape == (4, 8)
    assert np.isnan(crop[:, :2]).all() and np.isnan(crop[:, 6:]).all()
    np.testing.assert_allclose(crop[:, 2:6], cam)
    pad = maps.map_to_original(cam, (2, 4), policy="pad")  # fitted: rows 1-2 are the image, rows 0 and 3 padding
    np.testing.assert_allclose(pad, maps._resize(cam[1:3], (2, 4)))
    assert maps.map_to_original(cam, (8, 2), policy="stretch").shape == (8, 2)
    with pytest.raises(ValueError, match="Invalid `policy`"):
        maps.map_to_original(cam, (4, 4), policy="fit")


def test_figures_have_the_original_layouts():
    model = convention_model(32)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ex = registry.explain(explainer.model_inputs(images, normalization="samplewise"), model)
    cams = ex["grad_cam"]
    fig = plots.plot_explanation(images[1], ex, 1, classes=STREET10, normalization="samplewise", title="t")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 6
    assert titles[1].startswith("Grad-CAM region: " + STREET10.region_names[cams["region"].target[1]])
    assert titles[4].startswith("Grad-CAM city: " + STREET10.classes[cams["city"].target[1]])
    assert titles[3] == f"guided backprop ({STREET10.classes[cams['city'].target[1]]})"
    assert titles[2] == "Guided Grad-CAM region" and titles[5] == "Guided Grad-CAM city"
    # The "Guided Grad-CAM" panels are the guided_grad_cam method's colours.
    guided_cam = maps.gradient_to_rgb(ex["guided_grad_cam"]["city"].per_channel[1:2], normalization="samplewise")[0]
    np.testing.assert_array_equal(fig.axes[5].images[0].get_array(), guided_cam)
    original = np.zeros((30, 50, 3), np.uint8)
    fig = plots.plot_cam_only(original, cams, 0, classes=STREET10, policy="crop")
    assert [ax.images[0].get_array().shape[:2] for ax in fig.axes] == [(30, 50)] * 3
    assert fig.axes[2].get_title().startswith("Grad-CAM city: ")
    with pytest.raises(ValueError, match="needs the maps of 'grad_cam' and 'guided_backprop'"):
        plots.plot_explanation(
            images[0],
            registry.explain(explainer.model_inputs(images, normalization="unit"), model, methods=["grad_cam"]),
            classes=STREET10,
            normalization="unit",
        )


def test_class_grid_has_two_rows_per_class_titled_with_predictions():
    n = 10
    images = np.zeros((n, 8, 8, 3), np.uint8)
    labels = np.arange(n) % 10
    predicted = labels.copy()
    predicted[0] = 5
    # Logits giving the predicted class a probability of 0.5: log(9) against nine zeros.
    logits = np.zeros((n, 10), np.float32)
    logits[np.arange(n), predicted] = np.log(9)
    city = Attribution("grad_cam", "city", predicted, np.zeros((n, 8, 8), np.float32), logits=logits)
    fig = plots.plot_class_grid(images, city, labels, classes=STREET10, region="western", per_class=2)
    grid = np.array(fig.axes).reshape(10, 2)
    assert grid[0, 0].get_title() == "london"
    assert grid[1, 0].get_title() == "beijing 0.50 (wrong)"  # image 0 is london, predicted as class 5
    assert grid[3, 0].get_title() == "moscow 0.50"
    assert fig.get_suptitle() == "Grad-CAM of the predicted city, western cities"
    with pytest.raises(ValueError, match="must explain the city output"):
        plots.plot_class_grid(
            images,
            Attribution("grad_cam", "region", predicted % 2, city.maps, logits=logits[:, :2]),
            labels,
            classes=STREET10,
            region="western",
        )
