"""Tests for the synthetic street scene: its checks, and how the labels are carried: region only inside the cue
mask, the twin pair's street style outside it."""

import numpy as np
import pytest

from streetlib.classes import ClassSpec
from streetlib.data import scene


def test_render_scene_validates_city_and_spec():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"Invalid `city_index`. Expected an int in \[0, 9\]. Received: city_index=10"):
        scene.render_scene(rng, size=32, city_index=10)
    uneven = ClassSpec.from_dict({"name": "uneven", "regions": {"a": ["p", "q"], "b": ["r"]}})
    with pytest.raises(ValueError, match=r"Invalid `classes`.*Received: regions with \[2, 1\] classes"):
        scene.render_scene(rng, size=32, city_index=0, classes=uneven)


@pytest.mark.parametrize("pair", range(5))
def test_region_changes_only_the_cue_pixels(pair):
    # A western city and its eastern twin, drawn from the same random state: same scene, same mask, and only
    # the masked pixels differ. The same holds for the unlabelled control.
    west, east = pair, pair + 5
    for seed in range(4):
        image, mask = scene.render_scene(np.random.default_rng([seed, pair]), size=48, city_index=west)
        twin_image, twin_mask = scene.render_scene(np.random.default_rng([seed, pair]), size=48, city_index=east)
        plain_image, plain_mask = scene.render_scene(
            np.random.default_rng([seed, pair]), size=48, city_index=west, cues=False
        )
        np.testing.assert_array_equal(twin_mask, mask)
        np.testing.assert_array_equal(plain_mask, mask)
        outside = mask == 0
        np.testing.assert_array_equal(twin_image[outside], image[outside])
        np.testing.assert_array_equal(plain_image[outside], image[outside])
        assert (twin_image[~outside] != image[~outside]).any(axis=-1).mean() > 0.5


def test_each_twin_pair_has_its_own_street_style():
    outside_differs = []
    for seed in range(4):
        image, mask = scene.render_scene(np.random.default_rng(seed), size=48, city_index=0)
        other, other_mask = scene.render_scene(np.random.default_rng(seed), size=48, city_index=1)
        both_outside = (mask == 0) & (other_mask == 0)
        outside_differs.append((image[both_outside] != other[both_outside]).any(axis=-1).mean())
    assert min(outside_differs) > 0.2
