"""Tests of attribution.perturbation: occlusion against a hand computation, RISE's normalisation and its finding of
the one region a model looks at, and both methods on the nested two-output model."""

import numpy as np
import pytest
from conftest import assert_same_computation
from scipy.special import softmax
from test_attribution import convention_model, random_inputs
from test_gradients import assert_explains_any_class, linear_model

from streetlib.attribution import explainer
from streetlib.attribution import perturbation as P

METHODS = {
    "occlusion": (P.occlusion, {"patch": 8, "stride": 6}),
    "rise": (P.rise, {"masks": 24, "cells": 4, "seed": 0}),
}


# ---------------------------------------------------------------------------------------------------------------
# Occlusion by hand

# A 2x3 one-channel image of ones; class 1's logit weighs the pixels by W_OCC, class 0's is zero.
W_OCC = np.array([[1.0, 2.0, -4.0], [0.0, 1.0, -1.0]], np.float32)


@pytest.mark.parametrize("stride", [1, 2])
def test_occlusion_by_hand(stride):
    model = linear_model(np.stack([np.zeros_like(W_OCC), W_OCC], axis=-1)[:, :, None])
    ex = explainer.explainer(model)
    x = np.ones((1, 2, 3, 1), np.float32)
    # A 2x2 patch has two positions: columns 0-1 (hiding 1 + 2 + 0 + 1, a drop of 4) and columns 1-2 (hiding
    # 2 - 4 + 1 - 1, a rise of 2). With stride 2 the second is the one added flush with the right edge.
    # Column 0: 4; column 1: the mean of both, 1; column 2: -2, clipped to 0.
    result = P.occlusion(ex, x, target=1, patch=2, stride=stride)
    np.testing.assert_allclose(result.maps[0], [[4.0, 1.0, 0.0], [4.0, 1.0, 0.0]], atol=1e-6)  # sums of small ints
    np.testing.assert_array_equal(result.target, [1])
    # Filling with the pixels' own value hides nothing.
    np.testing.assert_array_equal(P.occlusion(ex, x, target=1, patch=2, stride=stride, baseline=1.0).maps, 0.0)


def test_occlusion_baseline_is_per_channel():
    weights = np.zeros((2, 2, 2, 2), np.float32)
    weights[..., 0, 1] = 1.0  # class 1 reads channel 0 only
    model = linear_model(weights)
    ex = explainer.explainer(model)
    x = np.ones((1, 2, 2, 2), np.float32)
    # Channel 0 filled with -1 (each pixel drops by 2, four pixels per patch); channel 1's fill is not read.
    result = P.occlusion(ex, x, target=1, patch=2, stride=1, baseline=[-1.0, 5.0])
    np.testing.assert_allclose(result.maps[0], np.full((2, 2), 8.0), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# RISE


def test_rise_keeping_everything_gives_the_clean_probability():
    # With p = 1 every mask keeps every pixel, so the map is N * P(x) / (N * 1) = P(x) everywhere.
    model = linear_model(np.random.default_rng(0).normal(size=(8, 8, 3, 4)).astype(np.float32) * 0.1)
    ex = explainer.explainer(model)
    x = random_inputs(2, 8)
    result = P.rise(ex, x, masks=5, cells=3, p=1.0, seed=0, rank=2)
    probs = softmax(ex.logits(x), axis=1)[np.arange(2), result.target]
    # float32 softmax and a sum of five equal terms.
    np.testing.assert_allclose(result.maps, np.broadcast_to(probs[:, None, None], (2, 8, 8)), rtol=1e-5)


def test_rise_of_a_model_that_ignores_the_image_is_its_probability():
    # Zero weights: P = 1/4 whatever the mask. Bilinear upsampling keeps a cell's mean, so a mask's expected value is
    # p at every pixel and the map's expectation is 1/4 everywhere: the division by p is what makes it so.
    model = linear_model(np.zeros((16, 16, 1, 4), np.float32))
    ex = explainer.explainer(model)
    maps = P.rise(ex, np.ones((1, 16, 16, 1), np.float32), masks=300, cells=4, p=0.3, seed=0).maps
    # The image-wide mean of one mask has a standard deviation of about sqrt(p (1 - p) / 16) = 0.11 (16 cells), so
    # the mean over 300 masks, divided by p, is off by about 0.11 / sqrt(300) / 0.3 = 2% (0.005 in 0.25); 0.03 is
    # about 6 standard deviations (seeds 0-4 gave 0.247 to 0.262), while forgetting p would give 0.25 * 0.3.
    np.testing.assert_allclose(maps.mean(), 0.25, atol=0.03)


def test_rise_finds_the_region_the_model_reads():
    # Class 1's logit is 4 x (the mean of the top-left 8x8 quarter of a 16x16 image of ones) - 2, against 0 for
    # class 0: P(class 1) = sigmoid(4 f - 2), f the kept fraction of the quarter; the rest of the image is ignored.
    weights = np.zeros((16, 16, 1, 2), np.float32)
    weights[:8, :8, 0, 1] = 4 / 64
    model = linear_model(weights, np.array([2.0, 0.0], np.float32))
    ex = explainer.explainer(model)
    maps = P.rise(ex, np.ones((1, 16, 16, 1), np.float32), target=1, masks=1000, cells=4, seed=0).maps[0]
    cue, rest = maps[:8, :8], maps.copy()
    rest[:8, :8] = np.nan
    # Keeping a pixel of the quarter raises f, so E[P | kept] is higher there: measured over seeds 0-5, the
    # quarter's mean exceeds the rest's by 0.07 to 0.09 and its core's minimum exceeds the far side's maximum by
    # 0.04 to 0.07, against a Monte Carlo error of a pixel's estimate of about 0.01 with 1000 masks. Near the
    # quarter's edges the soft masks straddle both sides, so only its core and the far side are compared.
    assert cue.mean() > np.nanmean(rest) + 0.04
    row, col = np.unravel_index(maps.argmax(), maps.shape)
    assert row < 8 and col < 8
    assert cue[1:6, 1:6].min() > max(np.nanmax(rest[10:, :]), np.nanmax(rest[:, 10:]))


def test_rise_explains_the_clean_images_class_in_every_copy():
    # A random linear model: masking moves its prediction, so a class re-picked per copy would differ.
    model = linear_model(np.random.default_rng(1).normal(size=(8, 8, 3, 4)).astype(np.float32))
    ex = explainer.explainer(model)
    x = random_inputs(3, 8, seed=2)
    first = P.rise(ex, x, masks=20, cells=3, seed=1)
    np.testing.assert_array_equal(first.target, ex.logits(x).argmax(axis=1))
    halves = x.copy()
    halves[:, :, 4:] = 0  # a mask-like change: keep the left half only
    assert (ex.logits(halves).argmax(axis=1) != first.target).any(), "hiding half the image changed no prediction"
    np.testing.assert_array_equal(P.rise(ex, x, masks=20, cells=3, seed=1, target=first.target).maps, first.maps)


# ---------------------------------------------------------------------------------------------------------------
# The nested two-output model


@pytest.fixture(scope="module")
def nested():
    model = convention_model(32)
    return model, explainer.explainer(model), random_inputs(3, 32)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("output", ["region", "city"])
def test_maps_of_every_method_on_the_nested_model(nested, name, output):
    _, ex, x = nested
    method, kwargs = METHODS[name]
    assert_explains_any_class(method, name, ex, x, output, **kwargs)


@pytest.mark.parametrize("name", METHODS)
def test_batch_size_does_not_change_the_maps(nested, name):
    _, ex, x = nested
    method, kwargs = METHODS[name]
    one = method(ex, x, batch_size=1, **kwargs).maps
    # Occlusion has 5 x 5 positions per image and RISE 24 masks: chunks of 7 straddle images.
    # Same copies through kernels of another batch shape, summed in another order: see conftest.
    assert_same_computation(method(ex, x, batch_size=7, **kwargs).maps, one)
    assert_same_computation(method(ex, x, batch_size=100, **kwargs).maps, one)


def test_rise_seed_reproduces(nested):
    _, ex, x = nested
    first = P.rise(ex, x, masks=8, cells=4, seed=5).maps
    np.testing.assert_array_equal(P.rise(ex, x, masks=8, cells=4, seed=5).maps, first)
    assert not np.allclose(P.rise(ex, x, masks=8, cells=4, seed=6).maps, first)


def test_bad_arguments_raise_clear_errors(nested):
    _, ex, x = nested
    with pytest.raises(ValueError, match=r"Invalid `patch`: expected at most 32"):
        P.occlusion(ex, x, patch=40)
    with pytest.raises(ValueError, match=r"Invalid `stride`: expected an int >= 1"):
        P.occlusion(ex, x, stride=0)
    with pytest.raises(ValueError, match=r"Invalid `baseline`: expected a float or 3 per-channel values"):
        P.occlusion(ex, x, baseline=[0.0, 1.0])
    with pytest.raises(ValueError, match=r"Invalid `masks`: expected an int >= 1"):
        P.rise(ex, x, masks=0)
    with pytest.raises(ValueError, match=r"Invalid `p`: expected a probability in \(0, 1\]"):
        P.rise(ex, x, p=0.0)
    with pytest.raises(ValueError, match=r"Invalid `rank` for output 'region'"):
        P.rise(ex, x, output="region", rank=3)
