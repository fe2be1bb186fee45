"""Tests for the synthetic street scene: its checks, and how the labels are carried: region only inside the cue
mask, the twin pair's street style outside it; in the layout task, region only in which panel of a pair is on top."""

import numpy as np
import pytest

from streetlib.classes import ClassSpec
from streetlib.data import cues, scene
from streetlib.data.canvas import Camera, Canvas


def test_render_scene_validates_city_and_spec():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"Invalid `city_index`. Expected an int in \[0, 9\]. Received: city_index=10"):
        scene.render_scene(rng, size=32, city_index=10)
    uneven = ClassSpec.from_dict({"name": "uneven", "regions": {"a": ["p", "q"], "b": ["r"]}})
    with pytest.raises(ValueError, match=r"Invalid `classes`.*Received: regions with \[2, 1\] classes"):
        scene.render_scene(rng, size=32, city_index=0, classes=uneven)


@pytest.mark.parametrize("task, size", [("cues", 48), ("layout", 64)])
@pytest.mark.parametrize("pair", range(5))
def test_region_changes_only_the_cue_pixels(pair, task, size):
    # A western city and its eastern twin, drawn from the same random state: same scene, same mask, and only
    # the masked pixels differ. The same holds for the unlabelled control. (A layout pair swaps bands and bars,
    # which differ on about half of a panel's pixels.)
    west, east = pair, pair + 5
    for seed in range(4):
        rng = np.random.default_rng
        image, mask = scene.render_scene(rng([seed, pair]), size=size, city_index=west, task=task)
        twin_image, twin_mask = scene.render_scene(rng([seed, pair]), size=size, city_index=east, task=task)
        plain_image, plain_mask = scene.render_scene(
            rng([seed, pair]), size=size, city_index=west, cues=False, task=task
        )
        np.testing.assert_array_equal(twin_mask, mask)
        np.testing.assert_array_equal(plain_mask, mask)
        outside = mask == 0
        assert outside.mean() > 0.6
        np.testing.assert_array_equal(twin_image[outside], image[outside])
        np.testing.assert_array_equal(plain_image[outside], image[outside])
        if not outside.all():  # a picture whose cue objects all fell too small or behind something has none
            assert (twin_image[~outside] != image[~outside]).any(axis=-1).mean() > (0.5 if task == "cues" else 0.25)


def _blank_pair(height, *, top_bands, min_gap=12):
    """One pair of panels ``height`` pixels high (1 pixel a metre at depth 100), alone on a black 128-px canvas."""
    canvas = Canvas(np.zeros((128, 128, 3), np.uint8))
    cam = Camera(focal=100.0, cx=64.0, horizon=64.0, height=0.0)
    cue = {"kind": "blade", "x": 0.0, "y": 0.0, "z": 100.0, "width": 30.0, "height": float(height)}
    style = cues.pair_style(np.random.default_rng(0), 0, top_bands=top_bands)
    drawn = cues.draw_pair(canvas, cam, np.random.default_rng(1), cue, style, min_gap=min_gap)
    return drawn, np.asarray(canvas.image).astype(int), np.asarray(canvas.mask)


@pytest.mark.parametrize("top_bands", [True, False])
def test_a_pair_puts_bands_and_bars_in_the_order_asked(top_bands):
    drawn, image, mask = _blank_pair(60, top_bands=top_bands)
    rows = np.flatnonzero(mask.any(axis=1))
    # Two panels of 21 rows (35% of 60) with a strip of 18 rows of the background between them, none masked.
    assert drawn and len(rows) == 42 and rows[20] + 19 == rows[21]
    top, bottom = image[rows[:21]][:, mask.any(axis=0)], image[rows[21:]][:, mask.any(axis=0)]
    for panel, bands in ((top, top_bands), (bottom, not top_bands)):
        along_rows, along_columns = np.ptp(panel, axis=1).max(), np.ptp(panel, axis=0).max()
        # Bands: every row one colour, the colour changing down the panel; bars: the other way round.
        assert (along_rows == 0) == bands and (along_columns == 0) != bands
        assert max(along_rows, along_columns) > 0


def test_a_pair_too_small_to_keep_its_panels_apart_is_not_drawn():
    drawn, image, mask = _blank_pair(30, top_bands=True, min_gap=12)  # a strip of 30 - 2 * 10 = 10 < 12 pixels
    assert not drawn and not mask.any() and not image.any()


def test_render_scene_names_an_unknown_task():
    with pytest.raises(ValueError, match=r"Invalid `task`. Expected one of \('cues', 'layout'\). Received: task='x'"):
        scene.render_scene(np.random.default_rng(0), size=64, city_index=0, task="x")


def test_each_twin_pair_has_its_own_street_style():
    outside_differs = []
    for seed in range(4):
        image, mask = scene.render_scene(np.random.default_rng(seed), size=48, city_index=0)
        other, other_mask = scene.render_scene(np.random.default_rng(seed), size=48, city_index=1)
        both_outside = (mask == 0) & (other_mask == 0)
        outside_differs.append((image[both_outside] != other[both_outside]).any(axis=-1).mean())
    assert min(outside_differs) > 0.2
