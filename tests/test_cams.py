"""Tests of attribution.cams: Grad-CAM++, Score-CAM and LayerCAM against tf-keras-vis, HiResCAM, XGrad-CAM, LayerCAM,
Grad-CAM++ and Eigen-CAM against hand-worked maps, and every method on the nested two-output model.

Tolerances: the tf-keras-vis comparisons and the chunking comparison are the same float32 computation run through
different kernels (oneDNN picks the convolution and matmul kernels, hence the summation order, by instruction set,
thread count and batch shape; tf-keras-vis also sums in TensorFlow where we sum in NumPy), so they use conftest's
`assert_same_computation`, equal within 1e-4 of the largest magnitude (see `SAME_COMPUTATION_RTOL` for the bound).
The hand-worked models are a 1x1 convolution and a dense layer on 2x2 images: a handful of exact small-integer and
half-integer products, so float32 gets them to within a few units of roundoff; 1e-6 is far above that and far below
any wrong map's error.
"""

import keras
import numpy as np
import pytest
from conftest import assert_same_computation
from test_attribution import X_HAND, convention_model, hand_model, random_inputs

from streetlib.attribution import cams as C
from streetlib.attribution import explainer

CLASS_METHODS = (C.grad_cam, C.grad_cam_plus_plus, C.hires_cam, C.xgrad_cam, C.layer_cam, C.score_cam)
ALL_METHODS = (*CLASS_METHODS, C.eigen_cam)
HAND_ATOL = 1e-6


def flat_model(size, *, pool, activation="relu", seed=0):
    """A small flat model with a linear output ``predictions`` (5 classes) and its last convolution ``last_conv``
    (with ``activation``): at half the input size with ``pool``, at the input size without (where Score-CAM needs
    no upsampling)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    if pool:
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation=activation, name="last_conv")(x)
    # Flatten, not global pooling: the logit's gradient then varies over the positions, which the methods weigh.
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu")(x)
    return keras.Model(inp, keras.layers.Dense(5, name="predictions")(x))


# ---------------------------------------------------------------------------------------------------------------
# Agreement with tf-keras-vis


# Grad-CAM++'s alpha = 1 / (2 + g sum(A)) has a pole: where g sum(A) is near -2 (negative gradients, whose alphas
# still enter the per-channel normalisation) roundoff of g and sum(A) is amplified. On this test's maps the factor
# |g sum(A)| / |2 + g sum(A)| reaches ~1e3, and perturbing g and sum(A) by one float32 ulp (6e-8) moves the
# normalised map by up to 2e-4 (measured); the two libraries' gradients differ by a few ulps, so 1e-3.
GRAD_CAM_PLUS_PLUS_ATOL = 1e-3


@pytest.mark.parametrize(
    ("ours", "theirs_module", "theirs_class", "atol"),
    [
        (C.grad_cam_plus_plus, "gradcam_plus_plus", "GradcamPlusPlus", GRAD_CAM_PLUS_PLUS_ATOL),
        (C.layer_cam, "layercam", "Layercam", None),
    ],
    ids=["grad_cam_plus_plus", "layer_cam"],
)
def test_gradient_cams_agree_with_tf_keras_vis(ours, theirs_module, theirs_class, atol):
    module = pytest.importorskip(f"tf_keras_vis.{theirs_module}")
    from tf_keras_vis.utils import normalize
    from tf_keras_vis.utils.scores import CategoricalScore

    model = flat_model(32, pool=True)
    x = random_inputs(3, 32, seed=1)
    targets = [0, 2, 4]
    # The output is linear, so tf-keras-vis's score is the logit, as ours.
    theirs = getattr(module, theirs_class)(model, clone=True)(
        CategoricalScore(targets), x, penultimate_layer="last_conv", expand_cam=False, normalize_cam=True
    )
    a = ours(explainer.explainer(model, layer="last_conv"), x, output="predictions", target=np.array(targets))
    assert a.maps.shape == (3, 16, 16)
    np.testing.assert_array_equal(a.target, targets)
    assert (a.maps.max(axis=(1, 2)) > a.maps.min(axis=(1, 2))).all(), "degenerate maps would agree trivially"
    if atol is None:
        assert_same_computation(normalize(a.maps), np.asarray(theirs))
    else:
        np.testing.assert_allclose(normalize(a.maps), np.asarray(theirs), rtol=0, atol=atol)


# tf-keras-vis predicts the masked inputs as a one-element list, which Keras 3 warns about; harmless here.
@pytest.mark.filterwarnings("ignore:The structure of `inputs` doesn't match:UserWarning")
def test_score_cam_agrees_with_tf_keras_vis():
    scorecam = pytest.importorskip("tf_keras_vis.scorecam")
    from tf_keras_vis.utils import normalize
    from tf_keras_vis.utils.scores import CategoricalScore

    # The model's output is linear: tf-keras-vis applies softmax to the model's output before the score, so both
    # weigh a channel by the softmax probability of the class (a softmax output would be softmaxed twice there).
    # The feature map is at input resolution: tf-keras-vis upsamples with scipy's zoom (corners aligned), we with
    # the project's half-pixel bilinear resize; at equal sizes both are the identity, so the rest is compared.
    # A linear feature map: its channels' minima are not 0 (as after a ReLU), so the min-max scaling is checked.
    model = flat_model(16, pool=False, activation=None)
    x = random_inputs(3, 16, seed=2)
    targets = [1, 3, 4]
    theirs = scorecam.Scorecam(model, clone=True)(
        CategoricalScore(targets), x, penultimate_layer="last_conv", expand_cam=False, normalize_cam=True
    )
    a = C.score_cam(explainer.explainer(model, layer="last_conv"), x, output="predictions", target=np.array(targets))
    assert a.maps.shape == (3, 16, 16)
    assert (a.maps.max(axis=(1, 2)) > a.maps.min(axis=(1, 2))).all(), "degenerate maps would agree trivially"
    assert_same_computation(normalize(a.maps), np.asarray(theirs))


# ---------------------------------------------------------------------------------------------------------------
# Hand-worked maps

# `hand_model`: the image x = [[1, -2], [3, 8]]; a 1x1 convolution gives A0 = x, A1 = 0.5 x; Flatten; the logit of
# class 1 has gradients g0 = [[1, 0], [0, 1]] w.r.t. A0 and g1 = [[-1, -1], [0, 0]] w.r.t. A1.
HAND_MAPS = {
    # relu(g0 A0 + g1 A1) = relu([[1 - 0.5, 0 + 1], [0, 8]])
    "hires_cam": [[0.5, 1.0], [0.0, 8.0]],
    # w0 = (1 + 8) / 10 = 0.9, w1 = (-0.5 + 1) / 5 = 0.1: relu(0.9 x + 0.1 * 0.5 x) = relu(0.95 x)
    "xgrad_cam": [[0.95, 0.0], [2.85, 7.6]],
    # relu(g1) = 0: relu(g0 A0)
    "layer_cam": [[1.0, 0.0], [0.0, 8.0]],
    # alpha = 1 / (2 + g sum(A)) where g != 0: 1/12 twice in channel 0, normalised to 1/2 each, so w0 = 1;
    # channel 1's relu(g) = 0, so w1 = 0: relu(x)
    "grad_cam_plus_plus": [[1.0, 0.0], [3.0, 8.0]],
    # mean(g0) = 0.5, mean(g1) = -0.5: relu(0.5 x - 0.25 x), as in test_attribution
    "grad_cam": [[0.25, 0.0], [0.75, 2.0]],
}


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
@pytest.mark.parametrize("name", sorted(HAND_MAPS))
def test_maps_match_hand_computation(name, nested):
    model = hand_model(nested)  # the explainer holds its model weakly
    a = getattr(C, name)(explainer.explainer(model), X_HAND, target=1)
    assert a.method == name
    np.testing.assert_allclose(a.maps[0], HAND_MAPS[name], rtol=0, atol=HAND_ATOL)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_eigen_cam_matches_hand_computation(nested):
    # A = x v^T with v = [1, 0.5] (rank 1): the first principal direction is +-v / |v|, so the projection is +-x |v|
    # for the image x and for -x alike. The sign rule keeps the one that sums to a non-negative value, x |v| (sum
    # 10 |v|), for both; the other sign would leave relu(-x) |v| = [[0, 2 |v|], [0, 0]].
    model = hand_model(nested)
    ex = explainer.explainer(model)
    expected = np.maximum(X_HAND[0, ..., 0], 0) * np.sqrt(1.25)
    for x in (X_HAND, -X_HAND):
        a = C.eigen_cam(ex, x)
        assert a.method == "eigen_cam"
        np.testing.assert_allclose(a.maps[0], expected, rtol=0, atol=HAND_ATOL)


# ---------------------------------------------------------------------------------------------------------------
# The nested two-output model


@pytest.fixture(scope="module")
def nested_model():
    return convention_model(32)


@pytest.mark.parametrize("output", ["region", "city"])
@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.__name__)
def test_every_method_on_the_nested_two_output_model(nested_model, method, output):
    x = random_inputs(2, 32, seed=3)
    a = method(explainer.explainer(nested_model), x, output=output)
    assert (a.method, a.output) == (method.__name__, output)
    assert a.maps.dtype == np.float32 and a.maps.shape == (2, 16, 16)  # block5_conv3 of the 32 px backbone
    assert np.isfinite(a.maps).all() and (a.maps >= 0).all()
    assert (a.maps.max(axis=(1, 2)) > 0).all(), "an all-zero map would pass every other check"
    logits = explainer.explainer(nested_model).logits(x, output=output)
    np.testing.assert_array_equal(a.target, np.argmax(logits, axis=1))


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: m.__name__)
def test_target_and_rank_are_honoured(nested_model, method):
    ex = explainer.explainer(nested_model)
    x = random_inputs(2, 32, seed=4)
    order = np.argsort(-ex.logits(x, output="city"), axis=1, kind="stable")
    predicted, runner_up = method(ex, x, target=order[:, 0]), method(ex, x, rank=2)
    np.testing.assert_array_equal(predicted.target, order[:, 0])
    np.testing.assert_array_equal(runner_up.target, order[:, 1])
    # The runner-up named by index is the runner-up by rank: the same class, hence the same maps.
    np.testing.assert_array_equal(method(ex, x, target=order[:, 1]).maps, runner_up.maps)
    if method is C.eigen_cam:  # class-agnostic: the class is recorded, the map does not depend on it
        np.testing.assert_array_equal(predicted.maps, runner_up.maps)
    else:
        assert not np.allclose(predicted.maps, runner_up.maps), "the map must depend on the class explained"


def test_score_cam_chunk_size_bounds_batches_and_keeps_maps(nested_model, monkeypatch):
    ex = explainer.explainer(nested_model)
    x = random_inputs(3, 32, seed=5)
    whole = C.score_cam(ex, x, chunk_size=10_000)
    batches = []
    logits = ex.logits

    def counting_logits(inputs, **kwargs):
        batches.append(len(inputs))
        return logits(inputs, **kwargs)

    monkeypatch.setattr(ex, "logits", counting_logits)
    chunked = C.score_cam(ex, x, chunk_size=5)
    # 3 images x 16 channels = 48 masked images, 5 at a time.
    assert sum(batches) == 48 and max(batches) == 5
    single = C.score_cam(ex, x, chunk_size=1)
    assert max(batches[-48:]) == 1
    # Different batch shapes, different oneDNN kernels: the same computation within conftest's bound.
    assert_same_computation(chunked.maps, whole.maps)
    assert_same_computation(single.maps, whole.maps)


@pytest.mark.parametrize("chunk_size", [0, 2.5, True])
def test_score_cam_refuses_a_bad_chunk_size(chunk_size):
    model = hand_model(False)
    with pytest.raises(ValueError, match="chunk_size"):
        C.score_cam(explainer.explainer(model), X_HAND, chunk_size=chunk_size)
