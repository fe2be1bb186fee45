"""Tests of attribution.gradients: saliency and SmoothGrad against tf-keras-vis, gradient x input and Integrated
Gradients against hand computations on tiny models, and every method on the nested two-output model.

`linear_model` builds a model whose logits are a known linear function of the pixels, and
`assert_explains_any_class` checks a method on any class; test_perturbation imports both.
"""

import keras
import numpy as np
import pytest
from conftest import assert_same_computation
from test_attribution import convention_model, random_inputs

from streetlib.attribution import explainer
from streetlib.attribution import gradients as G

METHODS = {
    "saliency": (G.saliency, {}),
    "gradient_x_input": (G.gradient_x_input, {}),
    "smoothgrad": (G.smoothgrad, {"samples": 5, "seed": 0}),
    "integrated_gradients": (G.integrated_gradients, {"steps": 5}),
}


def linear_model(weights, bias=None):
    """A model whose ``city`` logits are ``sum_{h,w,c} x[h, w, c] * weights[h, w, c, k] + bias[k]``.

    An identity 1x1 convolution comes first so that the Explainer has a convolution to default to.
    """
    H, W, C, n = weights.shape
    inp = keras.Input((H, W, C), name="image")
    conv = keras.layers.Conv2D(C, 1, use_bias=False, name="conv")
    dense = keras.layers.Dense(n, name="city_logits")
    logits = dense(keras.layers.Flatten()(conv(inp)))
    model = keras.Model(inp, {"city": keras.layers.Activation("softmax", name="city")(logits)})
    conv.set_weights([np.eye(C, dtype=np.float32).reshape(1, 1, C, C)])
    dense.set_weights([weights.reshape(-1, n).astype(np.float32), np.zeros(n, np.float32) if bias is None else bias])
    return model


def flat_model(size=16, classes=5):
    """A small flat conv net with linear ``predictions``, for the comparisons with tf-keras-vis."""
    keras.utils.set_random_seed(2)
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inp, keras.layers.Dense(classes, name="predictions")(x), name="flat")


# ---------------------------------------------------------------------------------------------------------------
# Agreement with tf-keras-vis


# tf-keras-vis calls the model with a list of inputs; Keras warns that the structure differs from its one input.
@pytest.mark.filterwarnings("ignore:The structure of `inputs`")
def test_saliency_agrees_with_tf_keras_vis():
    saliency = pytest.importorskip("tf_keras_vis.saliency")
    from tf_keras_vis.utils import normalize
    from tf_keras_vis.utils.scores import CategoricalScore

    model = flat_model()
    x = random_inputs(3, 16, seed=1)
    targets = np.array([0, 2, 4])
    theirs = saliency.Saliency(model, clone=False)(CategoricalScore(list(targets)), x)
    ours = G.saliency(explainer.explainer(model), x, output="predictions", target=targets)
    np.testing.assert_array_equal(ours.target, targets)
    assert (ours.maps.max(axis=(1, 2)) > ours.maps.min(axis=(1, 2))).all(), "flat maps would agree trivially"
    # One computation, the same gradient graph, through different kernels: see SAME_COMPUTATION_RTOL in conftest.
    assert_same_computation(normalize(ours.maps), np.asarray(theirs))


@pytest.mark.filterwarnings("ignore:The structure of `inputs`")
def test_smoothgrad_agrees_with_tf_keras_vis_on_the_same_noise(monkeypatch):
    saliency = pytest.importorskip("tf_keras_vis.saliency")
    from tf_keras_vis.utils import normalize
    from tf_keras_vis.utils.scores import CategoricalScore

    model = flat_model()
    x = random_inputs(2, 16, seed=3)
    targets, samples, seed = np.array([1, 3]), 8, 7
    # tf-keras-vis draws all noise at once from numpy's global generator, laid out (samples, batch, H, W, C), as
    # ``np.random.normal(0, sigma, shape)``. Hand it the standard normals our documented stream gives each copy
    # (image-major), scaled by its sigma, so both compute on identical noisy images.
    z = np.random.default_rng(seed).standard_normal((2 * samples, 16, 16, 3), dtype=np.float32)
    z = z.reshape(2, samples, 16, 16, 3).swapaxes(0, 1)
    calls = []

    def normal(loc, scale, size):
        calls.append(tuple(size))
        return loc + np.asarray(scale, np.float32) * z

    monkeypatch.setattr(np.random, "normal", normal)
    theirs = saliency.Saliency(model, clone=False)(
        CategoricalScore(list(targets)), x, smooth_samples=samples, smooth_noise=0.2
    )
    monkeypatch.undo()
    assert calls == [(samples, 2, 16, 16, 3)], "tf-keras-vis no longer draws its noise the way this test assumes"
    ours = G.smoothgrad(explainer.explainer(model), x, output="predictions", target=targets, samples=samples, seed=seed)
    vanilla = G.saliency(explainer.explainer(model), x, output="predictions", target=targets).maps
    assert not np.allclose(normalize(ours.maps), normalize(vanilla), atol=0.05), "the noise changed nothing"
    # Same images, same gradients, summed in a different order through different kernels: see conftest.
    assert_same_computation(normalize(ours.maps), np.asarray(theirs))


# ---------------------------------------------------------------------------------------------------------------
# Hand computations

# A 2x2 image with 2 channels and 2 classes; class 1 is the linear function W1 of the pixels, class 0 is zero.
X_LIN = np.array([[[1.0, 2.0], [-1.0, 0.5]], [[3.0, -2.0], [0.0, 4.0]]], np.float32)[None]
W1 = np.array([[[1.0, 1.0], [2.0, -1.0]], [[0.5, 1.0], [-3.0, 1.0]]], np.float32)
W_LIN = np.stack([np.zeros_like(W1), W1], axis=-1)


def test_gradient_x_input_on_a_linear_model_by_hand():
    model = linear_model(W_LIN)  # the explainer holds the model weakly
    ex = explainer.explainer(model)
    # |x * w summed over channels|: [[|1 + 2|, |-2 - 0.5|], [|1.5 - 2|, |0 + 4|]].
    expected = np.array([[3.0, 2.5], [0.5, 4.0]], np.float32)
    result = G.gradient_x_input(ex, X_LIN, target=1)
    np.testing.assert_allclose(result.maps[0], expected, atol=1e-6)  # float32 products of small exact numbers
    np.testing.assert_array_equal(result.target, [1])
    # The gradient of a linear logit is its weights: saliency is the largest |weight| of each pixel.
    np.testing.assert_allclose(G.saliency(ex, X_LIN, target=1).maps[0], [[1.0, 2.0], [1.0, 3.0]], atol=1e-6)


@pytest.mark.parametrize("baseline", [0.0, 0.5, X_LIN[..., ::-1]], ids=["zero", "scalar", "image"])
def test_integrated_gradients_on_a_linear_model_is_exact(baseline):
    model = linear_model(W_LIN)
    ex = explainer.explainer(model)
    # The gradient is the constant W1, and the trapezoid weights sum to 1: IG = (x - baseline) * W1 for any steps.
    expected = np.abs(((X_LIN - baseline) * W1).sum(axis=-1))
    for steps in (1, 3):
        result = G.integrated_gradients(ex, X_LIN, target=1, baseline=baseline, steps=steps)
        np.testing.assert_allclose(result.maps, expected, atol=1e-5)  # sums of a few float32 terms of size ~10


def monotone_model(size=6, seed=0):
    """A non-linear model whose ``city_logits`` increase with every input: positive weights and increasing
    activations, with a 3x3 convolution so that neighbouring pixels interact."""
    rng = np.random.default_rng(seed)
    inp = keras.Input((size, size, 3), name="image")
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="softplus", name="conv")
    hidden = keras.layers.Dense(5, activation="tanh", name="hidden")
    logits = keras.layers.Dense(2, name="city_logits")
    model = keras.Model(inp, logits(hidden(keras.layers.Flatten()(conv(inp)))))
    conv.set_weights([rng.uniform(0, 0.5, (3, 3, 3, 4)).astype(np.float32), np.zeros(4, np.float32)])
    hidden.set_weights([rng.uniform(0, 0.01, (size * size * 4, 5)).astype(np.float32), -np.ones(5, np.float32)])
    logits.set_weights([rng.uniform(0.5, 2, (5, 2)).astype(np.float32), np.zeros(2, np.float32)])
    return model


def test_integrated_gradients_completeness_within_the_trapezoid_error():
    model = monotone_model()
    ex = explainer.explainer(model)
    x = np.random.default_rng(1).uniform(0, 1, (2, 6, 6, 3)).astype(np.float32)
    # Every weight is positive and every activation increasing, so with x >= baseline = 0 each attribution is >= 0:
    # the map |sum over channels| loses no sign, and its sum is the sum of the attributions.
    delta = ex.logits(x)[:, 1] - ex.logits(np.zeros_like(x))[:, 1]

    def slope(a):  # d/da logit(a x) = gradient(a x) . x, the integrand of IG's sum
        return (ex.input_gradients(a * x, target=1).gradients * x).sum(axis=(1, 2, 3))

    # The trapezoid rule's excess on [0, 1] with n intervals is (g'(1) - g'(0)) / (12 n^2) plus O(1 / n^4)
    # (Euler-Maclaurin), g the integrand; g' by finite differences over 1/100 of the path.
    h = 0.01
    curvature = (slope(1.0) - slope(1.0 - h)) / h - (slope(h) - slope(0.0)) / h
    assert (np.abs(curvature) > np.abs(delta)).all(), "a nearly linear path would make any rule exact"
    for steps in (4, 32):
        total = G.integrated_gradients(ex, x, target=1, steps=steps).maps.sum(axis=(1, 2))
        # rtol 0.25: the one-sided differences are off by O(h) (a few %) and the O(1 / n^4) terms are small
        # beside the leading one from n = 4 on; atol: float32 sums of ~100 terms of size ~0.1. A Riemann sum's
        # O(1 / n) error, or the midpoint rule's opposite sign, would fail.
        np.testing.assert_allclose(total - delta, curvature / (12 * steps**2), rtol=0.25, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The nested two-output model


@pytest.fixture(scope="module")
def nested():
    model = convention_model(32)
    return model, explainer.explainer(model), random_inputs(3, 32)


def assert_explains_any_class(method, name, ex, x, output, **kwargs):
    """``method`` gives finite, non-negative maps at input resolution for the predicted class, the runner-up
    (``rank=2``, the same maps as naming it as ``target``) and a given class; test_perturbation uses it too."""
    result = method(ex, x, output=output, **kwargs)
    assert result.method == name and result.output == output
    assert result.maps.shape == (len(x), *x.shape[1:3]) and result.maps.dtype == np.float32
    assert np.isfinite(result.maps).all() and result.maps.min() >= 0 and result.maps.max() > 0
    logits = ex.logits(x, output=output)
    np.testing.assert_array_equal(result.target, logits.argmax(axis=1))
    # rank 2 explains the runner-up, and gives the maps of naming that class as the target.
    second = method(ex, x, output=output, rank=2, **kwargs)
    runner_up = np.argsort(-logits, axis=1)[:, 1]
    np.testing.assert_array_equal(second.target, runner_up)
    assert_same_computation(method(ex, x, output=output, target=runner_up, **kwargs).maps, second.maps)
    assert np.abs(second.maps - result.maps).max() > 1e-3 * result.maps.max(), "rank 2 explained the same class"
    np.testing.assert_array_equal(method(ex, x, output=output, target=1, **kwargs).target, np.ones(len(x)))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("output", ["region", "city"])
def test_maps_of_every_method_on_the_nested_model(nested, name, output):
    _, ex, x = nested
    method, kwargs = METHODS[name]
    assert_explains_any_class(method, name, ex, x, output, **kwargs)


@pytest.mark.parametrize("name", ["smoothgrad", "integrated_gradients"])
def test_batch_size_does_not_change_the_maps(nested, name):
    _, ex, x = nested
    method, kwargs = METHODS[name]
    one = method(ex, x, batch_size=1, **kwargs).maps
    # 15 copies in chunks of 4: chunks that straddle two images.
    # Same gradients, each through kernels of another batch shape and summed in another order: see conftest.
    assert_same_computation(method(ex, x, batch_size=4, **kwargs).maps, one)
    assert_same_computation(method(ex, x, batch_size=64, **kwargs).maps, one)


def test_smoothgrad_seed_reproduces(nested):
    _, ex, x = nested
    first = G.smoothgrad(ex, x, samples=4, seed=3).maps
    np.testing.assert_array_equal(G.smoothgrad(ex, x, samples=4, seed=3).maps, first)
    assert not np.allclose(G.smoothgrad(ex, x, samples=4, seed=4).maps, first)


def test_smoothgrad_explains_the_clean_images_class_in_every_copy():
    # The untrained nested model predicts the same class for everything; a random linear model's prediction moves.
    model = linear_model(np.random.default_rng(0).normal(size=(8, 8, 3, 4)).astype(np.float32))
    ex = explainer.explainer(model)
    x = random_inputs(3, 8, seed=5)
    first = G.smoothgrad(ex, x, samples=6, noise=0.5, seed=3)
    np.testing.assert_array_equal(first.target, ex.logits(x).argmax(axis=1))
    # The copies as documented: this much noise changes the predicted class of some of them...
    sigma = 0.5 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    z = np.random.default_rng(3).standard_normal((18, 8, 8, 3), dtype=np.float32)
    noisy = np.repeat(x, 6, axis=0) + np.repeat(sigma, 6)[:, None, None, None] * z
    assert (ex.logits(noisy).argmax(axis=1) != np.repeat(first.target, 6)).any(), "the noise changed no prediction"
    # ...yet each is explained for its clean image's class: the same maps as naming that class.
    by_target = G.smoothgrad(ex, x, samples=6, noise=0.5, seed=3, target=first.target)
    np.testing.assert_array_equal(by_target.maps, first.maps)


def test_bad_arguments_raise_clear_errors(nested):
    _, ex, x = nested
    with pytest.raises(ValueError, match=r"Invalid `samples`: expected an int >= 1"):
        G.smoothgrad(ex, x, samples=0)
    with pytest.raises(ValueError, match=r"Invalid `noise`: expected a float >= 0"):
        G.smoothgrad(ex, x, noise=-0.1)
    with pytest.raises(ValueError, match=r"Invalid `batch_size`: expected an int >= 1"):
        G.integrated_gradients(ex, x, batch_size=0)
    with pytest.raises(ValueError, match=r"Invalid `steps`: expected an int >= 1"):
        G.integrated_gradients(ex, x, steps=2.5)
    with pytest.raises(ValueError, match=r"Invalid `baseline`: expected a float or an array broadcastable"):
        G.integrated_gradients(ex, x, baseline=np.zeros((5, 32, 32, 3)))
    with pytest.raises(ValueError, match="Pass either `target` or `rank`"):
        G.smoothgrad(ex, x, target=1, rank=2)
