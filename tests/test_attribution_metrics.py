"""Tests of streetlib.attribution.metrics: the pointing game and the other localisation metrics with their chance
levels, deletion/insertion, the randomisation and random-logit checks (with cross-checks against Quantus where it is
installed), bootstrap intervals, and the registry."""

import matplotlib

matplotlib.use("Agg")


import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from test_attribution import convention_model, random_inputs  # noqa: E402

from streetlib.attribution import registry  # noqa: E402
from streetlib.attribution.metrics import faithfulness, intervals, localization, sanity  # noqa: E402
from streetlib.attribution.metrics.registry import INPUTS, METRICS, Metric, get_metric, of_family  # noqa: E402
from streetlib.attribution.registry import ORIGINAL  # noqa: E402


def masks_and_maps():
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[:, :2, :2] = 1  # the top-left quarter is the cue
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 0, 1] = 1.0  # max on the cue
    maps[1, 3, 3] = 1.0  # max off the cue
    maps[1, 0, 0] = 0.5
    return masks, maps  # maps[2] is all zero


# ---------------------------------------------------------------------------------------------------------------
# Pointing games


def test_pointing_game_by_hand():
    masks, maps = masks_and_maps()
    # A hit, a miss, and the constant map scoring its chance level (4 of 16 pixels).
    np.testing.assert_allclose(localization.pointing_game(maps, masks), [1.0, 0.0, 0.25])
    masks[2] = 0
    assert np.isnan(localization.pointing_game(maps, masks)[2])


def test_pointing_game_tolerance_widens_the_mask():
    masks = np.zeros((1, 9, 9), np.uint8)
    masks[0, 4, 4] = 1
    maps = np.zeros((1, 9, 9), np.float32)
    maps[0, 4, 6] = 1.0  # two pixels right of the cue
    assert localization.pointing_game(maps, masks, tolerance=1)[0] == 0.0
    assert localization.pointing_game(maps, masks, tolerance=2)[0] == 1.0
    with pytest.raises(ValueError, match="Invalid `tolerance`"):
        localization.pointing_game(maps, masks, tolerance=-1)


def test_the_tolerance_is_zhang_s_15_pixels_at_224_scaled_to_the_image():
    assert localization.ZHANG_TOLERANCE == 15 / 224
    assert [localization.scaled_tolerance(side) for side in (224, 112, 64, 32, 16)] == [15, 8, 4, 2, 1]
    assert localization.scaled_tolerance(64, fraction=0) == 0
    # The widened mask is a disk: a pixel at distance 2 is in it at tolerance 2, a diagonal one at distance 2.8 not.
    masks = np.zeros((1, 9, 9), np.uint8)
    masks[0, 4, 4] = 1
    widened = localization.dilate_masks(masks, 2)[0]
    assert widened[4, 6] and widened[2, 4] and not widened[6, 6] and widened.sum() == 13
    with pytest.raises(ValueError, match="Invalid `side`"):
        localization.scaled_tolerance(0)
    with pytest.raises(ValueError, match="Invalid `fraction`"):
        localization.scaled_tolerance(64, fraction=1.5)


def test_maps_are_validated():
    masks, maps = masks_and_maps()
    with pytest.raises(ValueError, match="must be finite and non-negative"):
        localization.pointing_game(maps - 1, masks)
    with pytest.raises(ValueError, match=r"`masks` must match `maps`: expected shape \(3, 4, 4\)"):
        localization.relevance_mass_accuracy(maps, masks[:2])
    with pytest.raises(ValueError, match=r"`maps` must have shape \(n, H, W\)"):
        localization.pointing_game(maps[0], masks[0])


def test_chance_levels_and_the_random_floor():
    rng = np.random.default_rng(0)
    masks = (rng.random((40, 16, 16)) < 0.2).astype(np.uint8)
    oracle = masks.astype(np.float32) + 0.01 * rng.random((40, 16, 16))
    assert (localization.pointing_game(oracle, masks) == 1.0).all()
    assert localization.relevance_mass_accuracy(oracle, masks).mean() > 0.9
    floor = localization.random_maps((40, 16, 16), seed=0)
    area = localization.mask_area(masks)
    assert area.dtype == np.float64 and area.mean() == pytest.approx(masks.mean())
    # Random maps spread their mass evenly (the cue's area) and seldom point at the cue.
    assert abs(localization.relevance_mass_accuracy(floor, masks).mean() - area.mean()) < 0.02
    assert localization.pointing_game(floor, masks).mean() < 0.5
    # No tolerance: the same mask; widened, the pointing game's chance grows.
    np.testing.assert_array_equal(localization.widened_area(masks, tolerance=0), area)
    widened = localization.widened_area(masks, tolerance=1)
    assert widened.mean() == pytest.approx(localization.dilate_masks(masks, 1).mean())
    assert widened.mean() > area.mean()


def test_pointing_game_agrees_with_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(1)
    maps = rng.random((20, 16, 16)).astype(np.float32)  # continuous: a unique maximum, as Quantus assumes
    masks = (rng.random((20, 16, 16)) < 0.3).astype(np.uint8)
    theirs = quantus.PointingGame(disable_warnings=True, normalise=False, abs=False)(
        model=None,
        x_batch=np.zeros((20, 1, 16, 16), np.float32),
        y_batch=np.zeros(20, int),
        a_batch=maps[:, None],
        s_batch=masks[:, None],
        channel_first=True,
    )
    ours = localization.pointing_game(maps, masks)
    assert 0 < ours.mean() < 1
    np.testing.assert_array_equal(ours, np.asarray(theirs, dtype=np.float32))


def quarter_mask(n=1):
    """A 4 x 4 mask whose top-left quarter (4 of 16 pixels) is the cue."""
    masks = np.zeros((n, 4, 4), np.uint8)
    masks[:, :2, :2] = 1
    return masks


def quantus_localisation(metric, maps, masks):
    """Per-image scores of a Quantus localisation metric on precomputed maps: the model is never called."""
    n, H, W = maps.shape
    scores = metric(disable_warnings=True, normalise=False, abs=False)(
        model=None,
        x_batch=np.zeros((n, 1, H, W), np.float32),
        y_batch=np.zeros(n, int),
        a_batch=maps[:, None],
        s_batch=masks[:, None],
        channel_first=True,
    )
    return np.asarray(scores, dtype=np.float64)


def test_relevance_rank_accuracy_by_hand():
    masks = quarter_mask(3)
    maps = np.zeros((3, 4, 4), np.float32)
    # K = 4: the top four are 5 (off the cue), 4, 3, 2 (on it); the cue's 1 is fifth: 3 of 4.
    maps[0, 3, 3], maps[0, 0, 0], maps[0, 0, 1], maps[0, 1, 0], maps[0, 1, 1] = 5, 4, 3, 2, 1
    maps[1] = 0.7  # constant: the chance level, 4 / 16
    maps[2, 2:, 2:] = 1.0  # all on the wrong quarter
    np.testing.assert_allclose(localization.relevance_rank_accuracy(maps, masks), [0.75, 0.25, 0.0])
    full = np.ones((1, 4, 4), np.uint8)
    assert localization.relevance_rank_accuracy(maps[:1], full)[0] == 1.0  # K = every pixel
    masks[1] = 0
    result = localization.relevance_rank_accuracy(maps, masks)
    assert np.isnan(result[1]) and result[0] == 0.75


def test_relevance_rank_accuracy_shares_tied_slots_evenly():
    masks = quarter_mask()
    maps = np.zeros((1, 4, 4), np.float32)
    maps[0, 0, 0] = 2.0  # the top pixel, on the cue
    # Six pixels tie at 1 for the 3 remaining slots: 2 on the cue, 4 off. Each counts 3/6: (1 + 2 * 0.5) / 4.
    for y, x in [(0, 1), (1, 0), (3, 0), (3, 1), (3, 2), (3, 3)]:
        maps[0, y, x] = 1.0
    score = localization.relevance_rank_accuracy(maps, masks)[0]
    assert score == 0.5
    # The rule does not depend on where the tied pixels are: flipping map and mask together changes nothing.
    flipped = localization.relevance_rank_accuracy(maps[:, ::-1, ::-1], masks[:, ::-1, ::-1])[0]
    assert flipped == score
    # It is the mean over random tie-breaks: jitter the tied values far below the gap to the next value.
    rng = np.random.default_rng(0)
    tied = maps == 1.0
    draws = [
        localization.relevance_rank_accuracy(maps + tied * 1e-3 * rng.random(maps.shape), masks)[0] for _ in range(2000)
    ]
    # One draw's score has standard deviation about 0.16 (hypergeometric), the mean of 2000 about 0.0035.
    assert abs(np.mean(draws) - score) < 0.02


def test_relevance_mass_accuracy_by_hand():
    masks, maps = masks_and_maps()
    # 1 of 1 on the cue; 0.5 of 1.5; the all-zero map counts as uniform: 4/16.
    np.testing.assert_allclose(localization.relevance_mass_accuracy(maps, masks), [1.0, 1 / 3, 0.25], rtol=1e-6)
    masks[0] = 0
    assert np.isnan(localization.relevance_mass_accuracy(maps, masks)[0])
    rng = np.random.default_rng(4)
    maps, masks = rng.random((10, 8, 8)), rng.random((10, 8, 8)) < 0.3
    masks[3] = False
    assert np.isnan(localization.relevance_mass_accuracy(maps, masks)[3])


def test_mask_auc_by_hand():
    masks = quarter_mask(2)
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 1, 0] = 4, 3, 2  # the cue: 4, 3, 2, 0
    maps[0, 3, 3] = 3  # the 12 others: one 3 and eleven 0
    # Per cue pixel, the others below it plus half the others equal to it: 12 + (11 + 0.5) + 11 + 11 / 2 = 40,
    # out of 4 x 12 pairs.
    maps[1] = 0.3  # constant: every pair ties, 0.5
    np.testing.assert_allclose(localization.mask_auc(maps, masks), [40 / 48, 0.5], rtol=1e-6)
    np.testing.assert_allclose(
        localization.mask_auc(7 * maps, masks), localization.mask_auc(maps, masks)
    )  # scale does not matter
    np.testing.assert_allclose(
        localization.mask_auc(maps.max() - maps, masks)[0], 8 / 48, rtol=1e-6
    )  # reversed: 1 - AUC
    masks[0], masks[1] = 0, 1  # empty and full masks have no positives or no negatives
    assert np.isnan(localization.mask_auc(maps, masks)).all()


def test_mask_auc_agrees_with_sklearn():
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    rng = np.random.default_rng(5)
    maps = np.round(rng.random((30, 12, 12)), 1).astype(np.float32)  # rounded: many ties
    masks = rng.random((30, 12, 12)) < rng.uniform(0.05, 0.6, (30, 1, 1))
    maps[masks] += 0.2 * rng.random()  # some signal
    expected = [roc_auc_score(masks[i].ravel(), maps[i].ravel()) for i in range(30)]
    # Both are exact ratios of pair counts; ours is then rounded to float32 (6e-8 at most in [0, 1]).
    np.testing.assert_allclose(localization.mask_auc(maps, masks), expected, atol=1e-6)


def test_localisation_metrics_agree_with_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(7)
    # Continuous maps: no ties, where our rank accuracy shares slots and Quantus's takes them by position.
    maps = rng.random((20, 16, 16)).astype(np.float32)
    masks = (rng.random((20, 16, 16)) < 0.3).astype(np.uint8)
    masks[:10, 4:12, 4:12] = 1  # some larger cues, so scores spread
    rank = localization.relevance_rank_accuracy(maps, masks)
    assert rank.std() > 0
    # Both are a ratio of the same integer counts; they differ only by our final rounding to float32.
    np.testing.assert_allclose(rank, quantus_localisation(quantus.RelevanceRankAccuracy, maps, masks), atol=1e-7)
    # Sums of 256 float32 values in [0, 1], in possibly different orders: relative error far below 1e-5.
    mass = localization.relevance_mass_accuracy(maps, masks)
    np.testing.assert_allclose(mass, quantus_localisation(quantus.RelevanceMassAccuracy, maps, masks), rtol=1e-5)


def test_localisation_metrics_rank_an_oracle_above_random_maps():
    rng = np.random.default_rng(8)
    masks = rng.random((50, 16, 16)) < 0.2
    oracle = masks + 0.01 * rng.random((50, 16, 16))
    floor = localization.random_maps((50, 16, 16), seed=1)
    chance = masks.mean(axis=(1, 2))
    for metric, at_chance in [(localization.relevance_rank_accuracy, chance), (localization.mask_auc, 0.5)]:
        assert (metric(oracle, masks) == 1.0).all()
        np.testing.assert_allclose(metric(floor, masks).mean(), np.mean(at_chance), atol=0.05)


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap intervals


def test_bootstrap_interval_by_hand():
    assert intervals.bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)  # every resample has mean 2
    # Two images, 0 and 1: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4. The central 95 %
    # reaches both ends; the central 40 % (quantiles 0.3 and 0.7) lies inside the middle half.
    assert intervals.bootstrap_interval([0.0, 1.0], resamples=10000) == (0.5, 0.0, 1.0)
    assert intervals.bootstrap_interval([0.0, 1.0], confidence=0.4, resamples=10000) == (0.5, 0.5, 0.5)
    mean, low, high = intervals.bootstrap_interval(np.array([1.0, np.nan, 3.0]))  # NaNs are dropped
    assert mean == 2.0 and 1.0 <= low <= high <= 3.0


def test_weighted_bootstrap_interval_is_the_share_of_the_pooled_weight():
    # Scores 0.2 and 0.8 weighing 1 and 3: the weighted mean is (0.2 + 2.4) / 4 = 0.65, not the plain 0.5. A
    # resample holds the first image 0, 1 or 2 times: 0.8, 0.65 or 0.2, so the 95 % interval spans them all.
    assert intervals.bootstrap_interval([0.2, 0.8], weights=[1.0, 3.0], resamples=10000) == pytest.approx(
        (0.65, 0.2, 0.8)
    )
    # A NaN score drops its weight with it; unit weights are the plain mean.
    assert intervals.bootstrap_interval([0.2, np.nan, 0.8], weights=[1.0, 100.0, 3.0])[0] == pytest.approx(0.65)
    values = np.random.default_rng(11).random(40)
    np.testing.assert_allclose(
        intervals.bootstrap_interval(values, weights=np.ones(40)), intervals.bootstrap_interval(values)
    )
    # A zero-weight image does not count in the mean.
    assert intervals.bootstrap_interval([0.2, 0.8, 0.9], weights=[1.0, 3.0, 0.0])[0] == pytest.approx(0.65)
    # Seed 0's one resample draws the zero-weight image twice: no mean, so no interval, and the error says so.
    with pytest.raises(ValueError, match="none of the 1 resamples drew an image of positive weight"):
        intervals.bootstrap_interval([0.2, 0.8], weights=[1.0, 0.0], resamples=1, seed=0)


@pytest.mark.parametrize(
    "weights, match",
    [([1.0], "one per score"), ([1.0, -1.0], "non-negative"), ([1.0, np.inf], "finite"), ([0.0, 0.0], "sum")],
)
def test_bad_bootstrap_weights_are_named(weights, match):
    with pytest.raises(ValueError, match="`weights`") as error:
        intervals.bootstrap_interval([0.2, 0.8], weights=weights)
    assert match in str(error.value)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_images():
    rng = np.random.default_rng(9)
    values = rng.normal(0.6, 1.0, 10000)
    few, many = intervals.bootstrap_interval(values[:100]), intervals.bootstrap_interval(values[:10000])
    for mean, low, high in (few, many):
        assert low < mean < high
    assert few[0] == np.mean(values[:100])
    # The width goes as 1 / sqrt(n): 10 times narrower for 100 times the images (with some resampling noise).
    ratio = (few[2] - few[1]) / (many[2] - many[1])
    assert 8 < ratio < 12.5
    # And it is about 2 x 1.96 standard errors wide.
    np.testing.assert_allclose(many[2] - many[1], 2 * 1.96 * values.std() / 100, rtol=0.15)


def test_bootstrap_interval_is_reproducible_with_a_seed():
    values = np.random.default_rng(10).random(50)
    assert intervals.bootstrap_interval(values, seed=3) == intervals.bootstrap_interval(values, seed=3)
    assert intervals.bootstrap_interval(values, seed=3)[1:] != intervals.bootstrap_interval(values, seed=4)[1:]
    low90, high90 = intervals.bootstrap_interval(values, confidence=0.9)[1:]
    low99, high99 = intervals.bootstrap_interval(values, confidence=0.99)[1:]
    assert low99 < low90 and high90 < high99


def test_bootstrap_interval_validates_its_arguments():
    for confidence in (0, 1, 95, "0.9", True):
        with pytest.raises(ValueError, match="Invalid `confidence`"):
            intervals.bootstrap_interval([1.0, 2.0], confidence=confidence)
    for resamples in (0, 2.5):
        with pytest.raises(ValueError, match="Invalid `resamples`"):
            intervals.bootstrap_interval([1.0, 2.0], resamples=resamples)
    for values in ([], [np.nan, np.nan], [1.0, np.inf]):
        with pytest.raises(ValueError, match="Invalid `values`"):
            intervals.bootstrap_interval(values)


# ---------------------------------------------------------------------------------------------------------------
# Deletion and insertion


def checker_model():
    """City logit 0 = 4 x the mean ReLU'd response of a 2x2 checkerboard filter over the left half of the image
    (about 4 on a sharp checkerboard, about 0 on grey or blurred pixels); logit 1 = 2."""
    inp = keras.Input((16, 16, 3), name="image")
    conv = keras.layers.Conv2D(1, 2, use_bias=False, activation="relu", name="conv")
    dense = keras.layers.Dense(2, name="city_logits")
    logits = dense(keras.layers.Flatten()(conv(inp)))
    model = keras.Model(inp, keras.layers.Activation("softmax", name="city")(logits))
    checker = np.array([[1.0, -1.0], [-1.0, 1.0]], np.float32)
    conv.set_weights([np.repeat(checker[:, :, None, None] / 3, 3, axis=2)])
    kernel = np.zeros((15, 15, 2), np.float32)
    kernel[:, :7, 0] = 4.0 / (15 * 7)  # responses that lie wholly in the left half (columns 0-7)
    dense.set_weights([kernel.reshape(225, 2), np.array([0.0, 2.0], np.float32)])
    return model


def test_deletion_and_insertion_reward_the_faithful_map():
    image = np.full((1, 16, 16, 3), 128, np.uint8)
    rows, cols = np.indices((16, 8))
    image[0, :, :8] = (255 * ((rows + cols) % 2 == 0))[..., None]  # a sharp checkerboard on the left
    good = np.zeros((1, 16, 16), np.float32)
    good[:, :, :8] = 1.0
    bad = 1.0 - good
    model = checker_model()
    kw = dict(output="city", target=np.array([0]), normalization="unit", steps=8)
    g = faithfulness.perturbation_curves(image, good, model, **kw)
    b = faithfulness.perturbation_curves(image, bad, model, **kw)
    assert g["deletion"].shape == (1, 9) and g["fractions"][[0, -1]].tolist() == [0.0, 1.0]
    intact = model(image / 255.0).numpy()[0, 0]
    assert intact > 0.85
    np.testing.assert_allclose([g["deletion"][0, 0], g["insertion"][0, -1]], [intact, intact], rtol=1e-5)
    # Removing the checkerboard first kills the score at once; adding it first restores it at once.
    assert g["deletion_auc"][0] < b["deletion_auc"][0] - 0.2
    assert g["insertion_auc"][0] > b["insertion_auc"][0] + 0.2
    with pytest.raises(ValueError, match="`target` must have shape"):
        faithfulness.perturbation_curves(image, good, model, **{**kw, "target": np.array([0, 1])})
    with pytest.raises(ValueError, match="Invalid `steps`"):
        faithfulness.perturbation_curves(image, good, model, **{**kw, "steps": 0})
    with pytest.raises(ValueError, match=r"`maps` must have shape \(1, 16, 16\) to match `images`"):
        faithfulness.perturbation_curves(image, good[:, :4], model, **kw)
    with pytest.raises(ValueError, match="`images` must be uint8"):
        faithfulness.perturbation_curves(image.astype(np.float32), good, model, **kw)


def test_curves_of_several_images_share_model_calls_without_mixing_them_up():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    maps = rng.random((5, 16, 16)).astype(np.float32)  # no ties, so the tie-breaking draws do not matter
    target = np.array([0, 1, 0, 1, 1])
    model = checker_model()
    kw = dict(output="city", normalization="unit", steps=8)
    # batch_size 20 puts two images' 9 + 9 copies in a call (the last call holds one image).
    together = faithfulness.perturbation_curves(images, maps, model, target=target, batch_size=20, **kw)
    for i in range(5):
        alone = faithfulness.perturbation_curves(
            images[i : i + 1], maps[i : i + 1], model, target=target[i : i + 1], **kw
        )
        for kind in ("deletion", "insertion"):
            # Batches of other shapes may run other float kernels: probabilities agree to float32 rounding.
            np.testing.assert_allclose(together[kind][i], alone[kind][0], atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Randomisation check


def test_rank_correlation_matches_scipy_and_handles_constant_maps():
    rng = np.random.default_rng(0)
    a = rng.random((3, 5, 5))
    a[2] = np.round(a[2], 1)  # ties
    b = rng.random((3, 5, 5))
    expected = [stats.spearmanr(a[i].ravel(), b[i].ravel())[0] for i in range(3)]
    np.testing.assert_allclose(sanity.rank_correlation(a, b), expected, atol=1e-6)
    np.testing.assert_allclose(sanity.rank_correlation(a, a), 1.0, atol=1e-6)
    np.testing.assert_allclose(sanity.rank_correlation(a, -a), -1.0, atol=1e-6)
    assert sanity.rank_correlation(a[:1], np.zeros((1, 5, 5)))[0] == 0.0
    with pytest.raises(ValueError, match="must have the same shape"):
        sanity.rank_correlation(a, b[:2])


def test_random_logit_targets_draw_uniformly_among_the_other_classes():
    logits = np.zeros((3000, 4), np.float32)
    target = np.arange(3000) % 4
    other = sanity.random_logit_targets(logits, target, seed=1)
    assert other.dtype == np.int64 and other.shape == (3000,)
    assert (other != target).all() and other.min() >= 0 and other.max() <= 3
    # For each target, each of the 3 other classes about a third of 750 times (standard error about 0.017).
    for k in range(4):
        shares = np.bincount(other[target == k], minlength=4) / 750
        assert shares[k] == 0
        np.testing.assert_allclose(np.delete(shares, k), 1 / 3, atol=0.07)
    np.testing.assert_array_equal(other, sanity.random_logit_targets(logits, target, seed=1))
    assert (other != sanity.random_logit_targets(logits, target, seed=2)).any()
    # With two classes there is one other.
    np.testing.assert_array_equal(sanity.random_logit_targets(np.zeros((3, 2)), np.array([0, 1, 1])), [1, 0, 0])


def test_random_logit_test_passes_a_class_sensitive_map_and_fails_a_class_blind_one():
    rng = np.random.default_rng(11)
    per_class = rng.random((3, 8, 8))  # a class-sensitive "method": a different map for every class
    target = np.array([0, 1, 2, 0])
    other = sanity.random_logit_targets(np.zeros((4, 3)), target)
    assert (np.abs(sanity.rank_correlation(per_class[target], per_class[other])) < 0.5).all()
    edges = rng.random((4, 8, 8))  # a class-blind one: the same map whatever the class
    np.testing.assert_allclose(sanity.rank_correlation(edges, edges), 1.0, atol=1e-6)


def test_random_logit_targets_validate_their_arguments():
    with pytest.raises(ValueError, match=r"`logits` must have shape \(n, C\) with C >= 2"):
        sanity.random_logit_targets(np.zeros((3, 1)), np.zeros(3, int))
    with pytest.raises(ValueError, match=r"`logits` must have shape"):
        sanity.random_logit_targets(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ValueError, match=r"`target` must be int of shape \(3,\)"):
        sanity.random_logit_targets(np.zeros((3, 4)), np.zeros(2, int))
    with pytest.raises(ValueError, match="`target` must be int"):
        sanity.random_logit_targets(np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(ValueError, match=r"`target` must be in \[0, 4\)"):
        sanity.random_logit_targets(np.zeros((3, 4)), np.array([0, 4, 1]))


def test_randomization_layers_go_from_the_output_down_through_the_backbone():
    model = convention_model(32)
    assert sanity.randomization_layers(model, output="city") == [
        "city_logits",
        "fc2",
        "fc1",
        "block5_conv3",
        "block1_conv1",
    ]
    assert "region_logits" in sanity.randomization_layers(model)


def test_randomization_check_randomises_a_copy_only():
    model = convention_model(32)
    weights = [w.copy() for w in model.get_weights()]
    x = random_inputs(4, 32)
    result = sanity.randomization_check(x, model, output="city", seed=0)
    assert result["layers"] == sanity.randomization_layers(model, output="city")
    for method in ORIGINAL:
        corr = result["spearman"][method]
        assert corr.shape == (5, 4) and np.all(np.abs(corr) <= 1)
    # With only the top layer randomised, Grad-CAM changes; Guided Backprop hardly does: it fails the check.
    assert result["spearman"]["grad_cam"][0].mean() < 0.5
    assert result["spearman"]["guided_backprop"][0].mean() > 0.9
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="Invalid `methods`"):
        sanity.randomization_check(x, model, methods=("lime",))


def test_randomization_check_gives_the_layer_to_the_cam_methods_only():
    model = convention_model(32)
    x = random_inputs(2, 32)
    at_block1 = sanity.randomization_check(x, model, output="city", layer="block1_conv1", seed=0)
    default = sanity.randomization_check(x, model, output="city", seed=0)
    # Guided Backprop reads no layer, so its correlations do not depend on it; Grad-CAM's maps do.
    np.testing.assert_allclose(
        at_block1["spearman"]["guided_backprop"], default["spearman"]["guided_backprop"], atol=1e-6
    )
    assert not np.allclose(at_block1["spearman"]["grad_cam"], default["spearman"]["grad_cam"], atol=1e-3)


def small_flat_model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((16, 16, 3), name="image")
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inp)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="city_logits")(h))


def test_randomisation_correlations_agree_with_quantus_mprt_on_the_same_maps():
    quantus = pytest.importorskip("quantus")
    model = small_flat_model()
    x = random_inputs(6, 16, seed=2)
    y = np.array([0, 1, 2, 0, 1, 2])
    seen = []

    def explain_func(model, inputs, targets, **kwargs):
        # Quantus works channels-first inside and hands some calls channels-first inputs.
        inputs = np.moveaxis(inputs, 1, -1) if inputs.shape[1] == 3 else inputs
        maps = registry.attribute(inputs, model, output="city_logits", target=np.asarray(targets)).maps
        seen.append(maps)
        return maps[:, None]

    theirs = quantus.MPRT(disable_warnings=True, abs=False, normalise=False, return_average_correlation=False)(
        model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=explain_func, channel_first=False
    )
    # Quantus randomises the same layers in the same order (it permutes weights, we redraw them).
    assert list(theirs)[1:] == sanity.randomization_layers(model)
    original, randomised = seen[1], seen[2:]
    for layer, maps in zip(list(theirs)[1:], randomised, strict=True):
        expected = np.asarray(theirs[layer], dtype=np.float64)
        defined = np.isfinite(expected)  # scipy gives NaN for a constant map, where we give 0
        assert defined.sum() >= 3
        np.testing.assert_allclose(sanity.rank_correlation(original, maps)[defined], expected[defined], atol=1e-5)


def test_pixel_ranks_order_by_value_and_break_ties_at_random():
    # Two distinct values and a tie of six pixels: the larger values come first, the tie's order depends on the seed.
    map_ = np.array([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 9.0]])
    ranks = [faithfulness.pixel_ranks(map_, np.random.default_rng(seed)) for seed in range(20)]
    for rank in ranks:
        assert sorted(rank) == list(range(8))
        assert rank[7] == 0 and rank[4] == 1
    ties = {tuple(rank[[0, 1, 2, 3, 5, 6]]) for rank in ranks}
    assert len(ties) > 1
    assert np.array_equal(faithfulness.pixel_ranks(map_, np.random.default_rng(3)), ranks[3])


def test_either_curve_alone_is_the_same_as_both():
    # The leaderboard scores deletion_auc and insertion_auc one at a time: the ties are broken by the same draws, so
    # each equals its half of the curves computed together.
    rng = np.random.default_rng(12)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    maps = np.round(rng.random((5, 16, 16)), 1).astype(np.float32)  # rounded: many ties
    target = np.array([0, 1, 0, 1, 1])
    model = checker_model()
    kw = dict(output="city", target=target, normalization="unit", steps=4, seed=3)
    both = faithfulness.perturbation_curves(images, maps, model, **kw)
    for kind in faithfulness.CURVES:
        alone = faithfulness.perturbation_curves(images, maps, model, kinds=(kind,), **kw)
        assert set(alone) == {"fractions", kind, f"{kind}_auc"}
        np.testing.assert_array_equal(alone[kind], both[kind])
    np.testing.assert_array_equal(
        faithfulness.deletion_auc(maps, images=images, model=model, **kw), both["deletion_auc"]
    )
    np.testing.assert_array_equal(
        faithfulness.insertion_auc(maps, images=images, model=model, **kw), both["insertion_auc"]
    )
    for kinds in ("deletion", (), ("erosion",)):
        with pytest.raises(ValueError, match="Invalid `kinds`"):
            faithfulness.perturbation_curves(images, maps, model, kinds=kinds, **kw)


# ---------------------------------------------------------------------------------------------------------------
# The registry


def test_every_metric_is_registered_once_with_what_it_needs():
    assert list(METRICS) == [
        "pointing_game",
        "relevance_mass_accuracy",
        "relevance_rank_accuracy",
        "mask_auc",
        "deletion_auc",
        "insertion_auc",
        "random_logit",
        "randomization",
        "data_randomization",
    ]
    assert of_family("localization") == (
        "pointing_game",
        "relevance_mass_accuracy",
        "relevance_rank_accuracy",
        "mask_auc",
    )
    assert of_family("sanity") == ("random_logit", "randomization", "data_randomization")
    for metric in METRICS.values():
        assert set(metric.needs) <= set(INPUTS) and metric.description
        # Localisation needs masks and never runs the model; the others run it (the leaderboard's control images).
        assert ("masks" in metric.needs) == (metric.family == "localization") == (not metric.runs_model)
    assert get_metric("pointing_game").needs == ("masks", "tolerance") and get_metric("pointing_game").hits
    assert [m.direction for m in METRICS.values()].count("lower") == 4  # deletion and the three sanity checks
    masks = quarter_mask(2)
    given = {"masks": masks, "tolerance": 1}
    np.testing.assert_allclose(get_metric("mask_auc").chance_of(given, 2), [0.5, 0.5])
    np.testing.assert_allclose(get_metric("relevance_mass_accuracy").chance_of(given, 2), [0.25, 0.25])
    np.testing.assert_allclose(
        get_metric("pointing_game").chance_of(given, 2), localization.widened_area(masks, tolerance=1)
    )
    assert np.isnan(get_metric("insertion_auc").chance_of(given, 2)).all()
    assert get_metric("data_randomization").available({"permuted_model": None, "explain": len, "target": 0}) is False
    with pytest.raises(ValueError, match="Invalid `metric`. Expected one of"):
        get_metric("energy_pointing_game")
    with pytest.raises(ValueError, match="Invalid `family`"):
        of_family("fidelity")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"direction": "up"}, "Invalid `direction`"),
        ({"family": "fidelity"}, "Invalid `family`"),
        ({"chance": "half"}, "Invalid `chance`"),
        ({"function": lambda maps, labels: maps}, r"Invalid parameters \['labels'\] of '<lambda>'"),
        ({"chance": lambda areas: areas}, r"Invalid parameters \['areas'\]"),
    ],
)
def test_a_bad_metric_is_refused_when_made(kwargs, match):
    given = {"name": "toy", "function": lambda maps, masks: maps, "direction": "higher", "family": "localization"}
    with pytest.raises(ValueError, match=match):
        Metric(**{**given, **kwargs})
