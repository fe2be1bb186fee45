"""Tests of attribution.registry: every method behind one interface, its parameters, and its checks."""

import numpy as np
import pytest
from scipy import ndimage
from test_attribution import convention_model, random_inputs

from streetlib.attribution import cams, explainer, maps, registry

# Cheap settings for the costly methods, so that every method runs in about a second on a 32 px model.
CHEAP = {
    "smoothgrad": {"samples": 4, "seed": 0},
    "integrated_gradients": {"steps": 4},
    "occlusion": {"patch": 8, "stride": 8},
    "rise": {"masks": 16, "seed": 0},
}


@pytest.fixture(scope="module")
def model():
    return convention_model(32)


def test_the_registry_holds_at_least_twelve_methods_with_their_own_parameters():
    assert len(registry.METHODS) >= 12
    assert set(registry.ORIGINAL) <= set(registry.METHODS)
    assert registry.METHODS["integrated_gradients"].params == {"baseline": 0.0, "steps": 32, "batch_size": 64}
    assert registry.METHODS["grad_cam"].params == {}
    for name, method in registry.METHODS.items():
        assert method.name == name and method.family in ("cam", "gradient", "perturbation", "guided", "model-free")
        assert method.uses_layer == (method.family == "cam" or name == "guided_grad_cam")


@pytest.mark.parametrize("name", sorted(registry.METHODS))
def test_every_method_gives_unit_range_maps_at_input_resolution_for_the_class_asked(model, name):
    x = random_inputs(2, 32, seed=1)
    target = np.array([3, 7])
    a = registry.attribute(x, model, method=name, output="city", target=target, **CHEAP.get(name, {}))
    assert a.method == name and a.output == "city"
    np.testing.assert_array_equal(a.target, target)
    assert a.maps.shape == (2, 32, 32) and a.maps.dtype == np.float32
    assert np.isfinite(a.maps).all() and a.maps.min() >= 0 and a.maps.max() <= 1
    # What was explained: the clean inputs' logits, and the layer read by the methods that read one.
    np.testing.assert_allclose(a.logits, explainer.explainer(model).logits(x, output="city"), atol=1e-5)
    assert a.layer == ("block5_conv3" if registry.METHODS[name].uses_layer else None)


def test_attribute_upsamples_and_normalises_the_method_s_own_map(model):
    x = random_inputs(3, 32, seed=2)
    ex = explainer.explainer(model)
    raw = cams.hires_cam(ex, x, output="region")
    # The same computation through the same kernels: only the resize and the per-image division differ.
    expected = maps.normalize_maps(maps.upsample_maps(raw.maps, (32, 32)))
    np.testing.assert_array_equal(registry.attribute(x, model, method="hires_cam", output="region").maps, expected)


def test_grad_cam_through_the_registry_is_the_explainer_s(model):
    x = random_inputs(2, 32, seed=3)
    raw = explainer.explainer(model).grad_cam(x, output="region")
    a = registry.attribute(x, model, method="grad_cam", output="region")
    np.testing.assert_array_equal(a.maps, maps.normalize_maps(maps.upsample_maps(raw.maps, (32, 32))))
    np.testing.assert_array_equal(a.logits, raw.logits)


def test_parameters_reach_the_method(model):
    x = random_inputs(1, 32, seed=4)
    coarse = registry.attribute(x, model, method="occlusion", patch=16, stride=16).maps
    fine = registry.attribute(x, model, method="occlusion", patch=8, stride=8).maps
    # A 16 px patch sliding by 16 gives a map constant on each of four quadrants; 8 px patches do not.
    assert len(np.unique(coarse)) <= 4 < len(np.unique(fine))


def test_bad_names_parameters_and_layers_are_refused(model):
    x = random_inputs(1, 32)
    with pytest.raises(ValueError, match=r"Expected one of \[.*'xgrad_cam'\]. Received: method='lime'"):
        registry.attribute(x, model, method="lime")
    with pytest.raises(ValueError, match=r"Invalid parameters \['step'\] for method 'integrated_gradients'"):
        registry.attribute(x, model, method="integrated_gradients", step=8)
    with pytest.raises(ValueError, match="reads no layer"):
        registry.attribute(x, model, method="saliency", layer="conv2")


def test_the_edge_floor_is_the_image_s_sobel_edges_whatever_the_model(model):
    x = random_inputs(2, 32, seed=5)
    other = convention_model(32, seed=1)
    first = registry.attribute(x, model, method="edge", output="city")
    # Another model, another output and another class: the same map.
    second = registry.attribute(x, other, method="edge", output="region", target=np.array([1, 0]))
    np.testing.assert_array_equal(first.maps, second.maps)
    # The Sobel gradient magnitude of each channel, combined over channels, normalised per image.
    # (One image at a time: scipy's Sobel smooths along every other axis of an array, the batch's too.)
    by_hand = np.stack(
        [
            np.sqrt(sum(ndimage.sobel(image[..., c], 0) ** 2 + ndimage.sobel(image[..., c], 1) ** 2 for c in range(3)))
            for image in x
        ]
    )
    np.testing.assert_allclose(first.maps, maps.normalize_maps(by_hand.astype(np.float32)), rtol=1e-5, atol=1e-6)
    # A step between two flat halves: the map is highest along the step and zero far from it.
    step = np.zeros((1, 32, 32, 3), np.float32)
    step[:, :, 16:] = 1.0
    edges = registry.attribute(step, model, method="edge").maps[0]
    assert set(np.flatnonzero(edges.max(axis=0) == 1.0)) == {15, 16} and edges[:, :14].max() == 0


def test_a_method_registers_once_and_is_refused_a_second_time(model):
    def constant(ex, inputs, *, output="city", target=None, rank=1, level=1.0):
        logits, classes = ex.classes(inputs, output=output, target=target, rank=rank)
        return maps.Attribution("constant", output, classes, np.full(np.shape(inputs)[:3], level, np.float32), logits)

    method = registry.register(constant, "model-free", uses_layer=False, differentiates="nothing")
    try:
        assert registry.METHODS["constant"] is method and method.params == {"level": 1.0}
        a = registry.attribute(random_inputs(1, 32), model, method="constant", level=2.0)
        np.testing.assert_array_equal(a.maps, 1.0)
        with pytest.raises(ValueError, match="a method named 'constant' is registered already"):
            registry.register(constant, "model-free", uses_layer=False, differentiates="nothing")
    finally:
        del registry.METHODS["constant"]
