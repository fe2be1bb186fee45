"""Tests of streetlib.attribution.metrics: the pointing games and the other localisation metrics, deletion/insertion,
the randomisation and random-logit checks (with cross-checks against Quantus where it is installed), bootstrap
intervals, dataset-level street features and quadrants."""

import matplotlib

matplotlib.use("Agg")


import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402
from test_attribution import convention_model, random_inputs  # noqa: E402

from streetlib.attribution import explainer, plots, registry  # noqa: E402
from streetlib.attribution import metrics as M  # noqa: E402
from streetlib.attribution.registry import ORIGINAL  # noqa: E402
from streetlib.classes import STREET10, ClassSpec  # noqa: E402


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
    np.testing.assert_allclose(M.pointing_game(maps, masks), [1.0, 0.0, 0.25])
    masks[2] = 0
    assert np.isnan(M.pointing_game(maps, masks)[2])


def test_pointing_game_tolerance_widens_the_mask():
    masks = np.zeros((1, 9, 9), np.uint8)
    masks[0, 4, 4] = 1
    maps = np.zeros((1, 9, 9), np.float32)
    maps[0, 4, 6] = 1.0  # two pixels right of the cue
    assert M.pointing_game(maps, masks, tolerance=1)[0] == 0.0
    assert M.pointing_game(maps, masks, tolerance=2)[0] == 1.0
    with pytest.raises(ValueError, match="Invalid `tolerance`"):
        M.pointing_game(maps, masks, tolerance=-1)


def test_the_tolerance_is_zhang_s_15_pixels_at_224_scaled_to_the_image():
    assert M.ZHANG_TOLERANCE == 15 / 224
    assert [M.scaled_tolerance(side) for side in (224, 112, 64, 32, 16)] == [15, 8, 4, 2, 1]
    assert M.scaled_tolerance(64, fraction=0) == 0
    # The widened mask is a disk: a pixel at distance 2 is in it at tolerance 2, a diagonal one at distance 2.8 not.
    masks = np.zeros((1, 9, 9), np.uint8)
    masks[0, 4, 4] = 1
    widened = M.dilate_masks(masks, 2)[0]
    assert widened[4, 6] and widened[2, 4] and not widened[6, 6] and widened.sum() == 13
    with pytest.raises(ValueError, match="Invalid `side`"):
        M.scaled_tolerance(0)
    with pytest.raises(ValueError, match="Invalid `fraction`"):
        M.scaled_tolerance(64, fraction=1.5)


def test_energy_pointing_game_by_hand():
    masks, maps = masks_and_maps()
    # 1 of 1 on the cue; 0.5 of 1.5; the all-zero map counts as uniform: 4/16.
    np.testing.assert_allclose(M.energy_pointing_game(maps, masks), [1.0, 1 / 3, 0.25], rtol=1e-6)
    masks[0] = 0
    assert np.isnan(M.energy_pointing_game(maps, masks)[0])


def test_maps_are_validated():
    masks, maps = masks_and_maps()
    with pytest.raises(ValueError, match="must be finite and non-negative"):
        M.pointing_game(maps - 1, masks)
    with pytest.raises(ValueError, match=r"`masks` must match `maps`: expected shape \(3, 4, 4\)"):
        M.energy_pointing_game(maps, masks[:2])
    with pytest.raises(ValueError, match=r"`maps` must have shape \(n, H, W\)"):
        M.pointing_game(maps[0], masks[0])


def test_localization_table_ranks_a_perfect_map_above_the_random_floor():
    rng = np.random.default_rng(0)
    masks = (rng.random((40, 16, 16)) < 0.2).astype(np.uint8)
    table = M.localization_table({"oracle": masks.astype(np.float32) + 0.01 * rng.random((40, 16, 16))}, masks)
    assert list(table["method"]) == ["oracle", "random"]
    oracle, floor = table.iloc[0], table.iloc[1]
    assert oracle["pointing_game"] == 1.0 and oracle["energy_pointing_game"] > 0.9
    assert abs(floor["energy_pointing_game"] - floor["chance"]) < 0.02
    assert floor["pointing_game"] < 0.5 and floor["images"] == 40
    assert floor["pointing_chance"] == floor["chance"]  # no tolerance: the same mask
    widened = M.localization_table({"oracle": masks.astype(np.float32)}, masks, tolerance=1).iloc[1]
    assert widened["pointing_chance"] == pytest.approx(M.dilate_masks(masks, 1).mean())
    assert widened["pointing_chance"] > widened["chance"]
    with pytest.raises(ValueError, match="`maps` is empty"):
        M.localization_table({}, masks)


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
    ours = M.pointing_game(maps, masks)
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
    np.testing.assert_allclose(M.relevance_rank_accuracy(maps, masks), [0.75, 0.25, 0.0])
    full = np.ones((1, 4, 4), np.uint8)
    assert M.relevance_rank_accuracy(maps[:1], full)[0] == 1.0  # K = every pixel
    masks[1] = 0
    result = M.relevance_rank_accuracy(maps, masks)
    assert np.isnan(result[1]) and result[0] == 0.75


def test_relevance_rank_accuracy_shares_tied_slots_evenly():
    masks = quarter_mask()
    maps = np.zeros((1, 4, 4), np.float32)
    maps[0, 0, 0] = 2.0  # the top pixel, on the cue
    # Six pixels tie at 1 for the 3 remaining slots: 2 on the cue, 4 off. Each counts 3/6: (1 + 2 * 0.5) / 4.
    for y, x in [(0, 1), (1, 0), (3, 0), (3, 1), (3, 2), (3, 3)]:
        maps[0, y, x] = 1.0
    score = M.relevance_rank_accuracy(maps, masks)[0]
    assert score == 0.5
    # The rule does not depend on where the tied pixels are: flipping map and mask together changes nothing.
    flipped = M.relevance_rank_accuracy(maps[:, ::-1, ::-1], masks[:, ::-1, ::-1])[0]
    assert flipped == score
    # It is the mean over random tie-breaks: jitter the tied values far below the gap to the next value.
    rng = np.random.default_rng(0)
    tied = maps == 1.0
    draws = [M.relevance_rank_accuracy(maps + tied * 1e-3 * rng.random(maps.shape), masks)[0] for _ in range(2000)]
    # One draw's score has standard deviation about 0.16 (hypergeometric), the mean of 2000 about 0.0035.
    assert abs(np.mean(draws) - score) < 0.02


def test_relevance_mass_accuracy_is_the_energy_pointing_game():
    masks, maps = masks_and_maps()
    # 1 of 1 on the cue; 0.5 of 1.5; the all-zero map counts as uniform: 4/16.
    np.testing.assert_allclose(M.relevance_mass_accuracy(maps, masks), [1.0, 1 / 3, 0.25], rtol=1e-6)
    rng = np.random.default_rng(4)
    maps, masks = rng.random((10, 8, 8)), rng.random((10, 8, 8)) < 0.3
    np.testing.assert_array_equal(M.relevance_mass_accuracy(maps, masks), M.energy_pointing_game(maps, masks))
    masks[3] = False
    assert np.isnan(M.relevance_mass_accuracy(maps, masks)[3])


def test_relevance_mass_accuracy_and_energy_pointing_game_share_one_computation(monkeypatch):
    sentinel = np.array([0.123], np.float32)
    monkeypatch.setattr(M, "_mass_inside", lambda maps, masks: sentinel)
    masks, maps = masks_and_maps()
    assert M.relevance_mass_accuracy(maps, masks) is sentinel
    assert M.energy_pointing_game(maps, masks) is sentinel


def test_mask_auc_by_hand():
    masks = quarter_mask(2)
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 1, 0] = 4, 3, 2  # the cue: 4, 3, 2, 0
    maps[0, 3, 3] = 3  # the 12 others: one 3 and eleven 0
    # Per cue pixel, the others below it plus half the others equal to it: 12 + (11 + 0.5) + 11 + 11 / 2 = 40,
    # out of 4 x 12 pairs.
    maps[1] = 0.3  # constant: every pair ties, 0.5
    np.testing.assert_allclose(M.mask_auc(maps, masks), [40 / 48, 0.5], rtol=1e-6)
    np.testing.assert_allclose(M.mask_auc(7 * maps, masks), M.mask_auc(maps, masks))  # scale does not matter
    np.testing.assert_allclose(M.mask_auc(maps.max() - maps, masks)[0], 8 / 48, rtol=1e-6)  # reversed: 1 - AUC
    masks[0], masks[1] = 0, 1  # empty and full masks have no positives or no negatives
    assert np.isnan(M.mask_auc(maps, masks)).all()


def test_mask_auc_agrees_with_sklearn():
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    rng = np.random.default_rng(5)
    maps = np.round(rng.random((30, 12, 12)), 1).astype(np.float32)  # rounded: many ties
    masks = rng.random((30, 12, 12)) < rng.uniform(0.05, 0.6, (30, 1, 1))
    maps[masks] += 0.2 * rng.random()  # some signal
    expected = [roc_auc_score(masks[i].ravel(), maps[i].ravel()) for i in range(30)]
    # Both are exact ratios of pair counts; ours is then rounded to float32 (6e-8 at most in [0, 1]).
    np.testing.assert_allclose(M.mask_auc(maps, masks), expected, atol=1e-6)


def test_average_ranks_match_scipy():
    rng = np.random.default_rng(6)
    x = np.round(rng.random((20, 50)), 1)
    x[0] = 1.0  # one all-tied row
    np.testing.assert_array_equal(M._average_ranks(x), stats.rankdata(x, axis=1))


def test_localisation_metrics_agree_with_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(7)
    # Continuous maps: no ties, where our rank accuracy shares slots and Quantus's takes them by position.
    maps = rng.random((20, 16, 16)).astype(np.float32)
    masks = (rng.random((20, 16, 16)) < 0.3).astype(np.uint8)
    masks[:10, 4:12, 4:12] = 1  # some larger cues, so scores spread
    rank = M.relevance_rank_accuracy(maps, masks)
    assert rank.std() > 0
    # Both are a ratio of the same integer counts; they differ only by our final rounding to float32.
    np.testing.assert_allclose(rank, quantus_localisation(quantus.RelevanceRankAccuracy, maps, masks), atol=1e-7)
    # Sums of 256 float32 values in [0, 1], in possibly different orders: relative error far below 1e-5.
    mass = M.relevance_mass_accuracy(maps, masks)
    np.testing.assert_allclose(mass, quantus_localisation(quantus.RelevanceMassAccuracy, maps, masks), rtol=1e-5)


def test_localisation_metrics_rank_an_oracle_above_random_maps():
    rng = np.random.default_rng(8)
    masks = rng.random((50, 16, 16)) < 0.2
    oracle = masks + 0.01 * rng.random((50, 16, 16))
    floor = M.random_maps((50, 16, 16), seed=1)
    chance = masks.mean(axis=(1, 2))
    for metric, at_chance in [(M.relevance_rank_accuracy, chance), (M.mask_auc, 0.5)]:
        assert (metric(oracle, masks) == 1.0).all()
        np.testing.assert_allclose(metric(floor, masks).mean(), np.mean(at_chance), atol=0.05)


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap intervals


def test_bootstrap_interval_by_hand():
    assert M.bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)  # every resample has mean 2
    # Two images, 0 and 1: a resample's mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4. The central 95 %
    # reaches both ends; the central 40 % (quantiles 0.3 and 0.7) lies inside the middle half.
    assert M.bootstrap_interval([0.0, 1.0], resamples=10000) == (0.5, 0.0, 1.0)
    assert M.bootstrap_interval([0.0, 1.0], confidence=0.4, resamples=10000) == (0.5, 0.5, 0.5)
    mean, low, high = M.bootstrap_interval(np.array([1.0, np.nan, 3.0]))  # NaNs are dropped
    assert mean == 2.0 and 1.0 <= low <= high <= 3.0


def test_weighted_bootstrap_interval_is_the_share_of_the_pooled_weight():
    # Scores 0.2 and 0.8 weighing 1 and 3: the weighted mean is (0.2 + 2.4) / 4 = 0.65, not the plain 0.5. A
    # resample holds the first image 0, 1 or 2 times: 0.8, 0.65 or 0.2, so the 95 % interval spans them all.
    assert M.bootstrap_interval([0.2, 0.8], weights=[1.0, 3.0], resamples=10000) == pytest.approx((0.65, 0.2, 0.8))
    # A NaN score drops its weight with it; unit weights are the plain mean.
    assert M.bootstrap_interval([0.2, np.nan, 0.8], weights=[1.0, 100.0, 3.0])[0] == pytest.approx(0.65)
    values = np.random.default_rng(11).random(40)
    np.testing.assert_allclose(M.bootstrap_interval(values, weights=np.ones(40)), M.bootstrap_interval(values))
    # A zero-weight image does not count in the mean.
    assert M.bootstrap_interval([0.2, 0.8, 0.9], weights=[1.0, 3.0, 0.0])[0] == pytest.approx(0.65)
    # Seed 0's one resample draws the zero-weight image twice: no mean, so no interval, and the error says so.
    with pytest.raises(ValueError, match="none of the 1 resamples drew an image of positive weight"):
        M.bootstrap_interval([0.2, 0.8], weights=[1.0, 0.0], resamples=1, seed=0)


@pytest.mark.parametrize(
    "weights, match",
    [([1.0], "one per score"), ([1.0, -1.0], "non-negative"), ([1.0, np.inf], "finite"), ([0.0, 0.0], "sum")],
)
def test_bad_bootstrap_weights_are_named(weights, match):
    with pytest.raises(ValueError, match="`weights`") as error:
        M.bootstrap_interval([0.2, 0.8], weights=weights)
    assert match in str(error.value)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_images():
    rng = np.random.default_rng(9)
    values = rng.normal(0.6, 1.0, 10000)
    few, many = M.bootstrap_interval(values[:100]), M.bootstrap_interval(values[:10000])
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
    assert M.bootstrap_interval(values, seed=3) == M.bootstrap_interval(values, seed=3)
    assert M.bootstrap_interval(values, seed=3)[1:] != M.bootstrap_interval(values, seed=4)[1:]
    low90, high90 = M.bootstrap_interval(values, confidence=0.9)[1:]
    low99, high99 = M.bootstrap_interval(values, confidence=0.99)[1:]
    assert low99 < low90 and high90 < high99


def test_bootstrap_interval_validates_its_arguments():
    for confidence in (0, 1, 95, "0.9", True):
        with pytest.raises(ValueError, match="Invalid `confidence`"):
            M.bootstrap_interval([1.0, 2.0], confidence=confidence)
    for resamples in (0, 2.5):
        with pytest.raises(ValueError, match="Invalid `resamples`"):
            M.bootstrap_interval([1.0, 2.0], resamples=resamples)
    for values in ([], [np.nan, np.nan], [1.0, np.inf]):
        with pytest.raises(ValueError, match="Invalid `values`"):
            M.bootstrap_interval(values)


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
    g = M.perturbation_curves(image, good, model, **kw)
    b = M.perturbation_curves(image, bad, model, **kw)
    assert g["deletion"].shape == (1, 9) and g["fractions"][[0, -1]].tolist() == [0.0, 1.0]
    intact = model(image / 255.0).numpy()[0, 0]
    assert intact > 0.85
    np.testing.assert_allclose([g["deletion"][0, 0], g["insertion"][0, -1]], [intact, intact], rtol=1e-5)
    # Removing the checkerboard first kills the score at once; adding it first restores it at once.
    assert g["deletion_auc"][0] < b["deletion_auc"][0] - 0.2
    assert g["insertion_auc"][0] > b["insertion_auc"][0] + 0.2
    with pytest.raises(ValueError, match="`target` must have shape"):
        M.perturbation_curves(image, good, model, **{**kw, "target": np.array([0, 1])})
    with pytest.raises(ValueError, match="Invalid `steps`"):
        M.perturbation_curves(image, good, model, **{**kw, "steps": 0})
    with pytest.raises(ValueError, match=r"`maps` must have shape \(1, 16, 16\) to match `images`"):
        M.perturbation_curves(image, good[:, :4], model, **kw)
    with pytest.raises(ValueError, match="`images` must be uint8"):
        M.perturbation_curves(image.astype(np.float32), good, model, **kw)


def test_curves_of_several_images_share_model_calls_without_mixing_them_up():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    maps = rng.random((5, 16, 16)).astype(np.float32)  # no ties, so the tie-breaking draws do not matter
    target = np.array([0, 1, 0, 1, 1])
    model = checker_model()
    kw = dict(output="city", normalization="unit", steps=8)
    # batch_size 20 puts two images' 9 + 9 copies in a call (the last call holds one image).
    together = M.perturbation_curves(images, maps, model, target=target, batch_size=20, **kw)
    for i in range(5):
        alone = M.perturbation_curves(images[i : i + 1], maps[i : i + 1], model, target=target[i : i + 1], **kw)
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
    np.testing.assert_allclose(M.rank_correlation(a, b), expected, atol=1e-6)
    np.testing.assert_allclose(M.rank_correlation(a, a), 1.0, atol=1e-6)
    np.testing.assert_allclose(M.rank_correlation(a, -a), -1.0, atol=1e-6)
    assert M.rank_correlation(a[:1], np.zeros((1, 5, 5)))[0] == 0.0
    with pytest.raises(ValueError, match="must have the same shape"):
        M.rank_correlation(a, b[:2])


def test_random_logit_targets_draw_uniformly_among_the_other_classes():
    logits = np.zeros((3000, 4), np.float32)
    target = np.arange(3000) % 4
    other = M.random_logit_targets(logits, target, seed=1)
    assert other.dtype == np.int64 and other.shape == (3000,)
    assert (other != target).all() and other.min() >= 0 and other.max() <= 3
    # For each target, each of the 3 other classes about a third of 750 times (standard error about 0.017).
    for k in range(4):
        shares = np.bincount(other[target == k], minlength=4) / 750
        assert shares[k] == 0
        np.testing.assert_allclose(np.delete(shares, k), 1 / 3, atol=0.07)
    np.testing.assert_array_equal(other, M.random_logit_targets(logits, target, seed=1))
    assert (other != M.random_logit_targets(logits, target, seed=2)).any()
    # With two classes there is one other.
    np.testing.assert_array_equal(M.random_logit_targets(np.zeros((3, 2)), np.array([0, 1, 1])), [1, 0, 0])


def test_random_logit_test_passes_a_class_sensitive_map_and_fails_a_class_blind_one():
    rng = np.random.default_rng(11)
    per_class = rng.random((3, 8, 8))  # a class-sensitive "method": a different map for every class
    target = np.array([0, 1, 2, 0])
    other = M.random_logit_targets(np.zeros((4, 3)), target)
    assert (np.abs(M.rank_correlation(per_class[target], per_class[other])) < 0.5).all()
    edges = rng.random((4, 8, 8))  # a class-blind one: the same map whatever the class
    np.testing.assert_allclose(M.rank_correlation(edges, edges), 1.0, atol=1e-6)


def test_random_logit_targets_validate_their_arguments():
    with pytest.raises(ValueError, match=r"`logits` must have shape \(n, C\) with C >= 2"):
        M.random_logit_targets(np.zeros((3, 1)), np.zeros(3, int))
    with pytest.raises(ValueError, match=r"`logits` must have shape"):
        M.random_logit_targets(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ValueError, match=r"`target` must be int of shape \(3,\)"):
        M.random_logit_targets(np.zeros((3, 4)), np.zeros(2, int))
    with pytest.raises(ValueError, match="`target` must be int"):
        M.random_logit_targets(np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(ValueError, match=r"`target` must be in \[0, 4\)"):
        M.random_logit_targets(np.zeros((3, 4)), np.array([0, 4, 1]))


def test_randomization_layers_go_from_the_output_down_through_the_backbone():
    model = convention_model(32)
    assert M.randomization_layers(model, output="city") == ["city_logits", "fc2", "fc1", "block5_conv3", "block1_conv1"]
    assert "region_logits" in M.randomization_layers(model)


def test_randomization_check_randomises_a_copy_only():
    model = convention_model(32)
    weights = [w.copy() for w in model.get_weights()]
    x = random_inputs(4, 32)
    result = M.randomization_check(x, model, output="city", seed=0)
    assert result["layers"] == M.randomization_layers(model, output="city")
    for method in ORIGINAL:
        corr = result["spearman"][method]
        assert corr.shape == (5, 4) and np.all(np.abs(corr) <= 1)
    # With only the top layer randomised, Grad-CAM changes; Guided Backprop hardly does: it fails the check.
    assert result["spearman"]["grad_cam"][0].mean() < 0.5
    assert result["spearman"]["guided_backprop"][0].mean() > 0.9
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="Invalid `methods`"):
        M.randomization_check(x, model, methods=("lime",))


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
    assert list(theirs)[1:] == M.randomization_layers(model)
    original, randomised = seen[1], seen[2:]
    for layer, maps in zip(list(theirs)[1:], randomised, strict=True):
        expected = np.asarray(theirs[layer], dtype=np.float64)
        defined = np.isfinite(expected)  # scipy gives NaN for a constant map, where we give 0
        assert defined.sum() >= 3
        np.testing.assert_allclose(M.rank_correlation(original, maps)[defined], expected[defined], atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Beyond one image


def test_street_features_by_hand():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    images[:, :4, 4:] = 200  # a bright top-right corner
    cams = np.zeros((4, 8, 8), np.float32)
    cams[:, :4, 4:] = [[1.0]], [[0.5]], [[0.8]], [[1.0]]
    labels = np.array([0, 0, 1, 1])
    predicted = np.array([0, 0, 1, 0])  # image 3 is misclassified
    f = M.street_features(images, cams, labels, predicted, num_classes=3, patch_size=4, top=8)
    np.testing.assert_array_equal(f["counts"], [2, 1, 0])
    np.testing.assert_allclose(f["mean_cams"][0], (cams[0] + cams[1]) / 2)
    np.testing.assert_array_equal(f["mean_cams"][2], 0.0)
    assert f["patches"][0].shape == (2, 4, 4, 3) and (f["patches"][0] == 200).all()
    np.testing.assert_array_equal(f["patch_info"][0]["index"], [0, 1])  # best first
    np.testing.assert_array_equal(f["patch_info"][0]["yx"], [[0, 4], [0, 4]])
    np.testing.assert_allclose(f["patch_info"][0]["score"], [1.0, 0.5])
    assert f["patches"][2].shape == (0, 4, 4, 3)
    spec = ClassSpec.from_dict({"name": "three", "regions": {"west": ["a", "b"], "east": ["c"]}})
    gallery = plots.plot_patch_gallery(f["patches"], classes=spec)
    assert [ax.get_title(loc="left") for ax in gallery.axes[::2]] == ["a", "b", "c"]
    assert len(gallery.axes[0].images) == 1 and len(gallery.axes[2].images) == 1 and not gallery.axes[4].images
    means = plots.plot_mean_cams(f["mean_cams"], f["counts"], classes=spec)
    assert [ax.get_title() for ax in means.axes] == ["a (n=2)", "b (n=1)", "c (n=0)"]
    with pytest.raises(ValueError, match="one entry per class of 'street10'"):
        plots.plot_mean_cams(f["mean_cams"], f["counts"], classes=STREET10)
    with pytest.raises(ValueError, match="`patches` needs one entry per class"):
        plots.plot_patch_gallery(f["patches"], classes=STREET10)
    with pytest.raises(ValueError, match="Invalid `patch_size`"):
        M.street_features(images, cams, labels, predicted, num_classes=3, patch_size=9)
    with pytest.raises(ValueError, match="must match `images`"):
        M.street_features(images, cams, labels[:3], predicted, num_classes=3)


def test_quadrants_are_cut_in_reading_order_and_explained():
    image = np.zeros((40, 60, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    image[:20, :30], image[:20, 30:], image[20:, :30], image[20:, 30:] = colours
    quads = M.quadrant_images(image, size=16)
    assert quads.shape == (4, 16, 16, 3)
    for q, colour in zip(quads, colours, strict=True):
        np.testing.assert_array_equal(q[8, 8], colour)
    with pytest.raises(ValueError, match="must be uint8 RGB"):
        M.quadrant_images(image[:1], size=16)
    model = convention_model(32)
    quads, ex = M.explain_quadrants(image, model, normalization="samplewise")
    assert quads.shape == (4, 32, 32, 3)
    assert ex["city"].maps.shape == (4, 32, 32) and ex["city"].method == "grad_cam"
    fig = plots.plot_quadrants(quads, ex["city"], classes=STREET10)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["top left", "top right", "bottom left", "bottom right"]
    assert titles[4].startswith(STREET10.classes[ex["city"].target[0]] + " ")
    np.testing.assert_allclose(
        ex["city"].logits,
        explainer.explainer(model).logits(explainer.model_inputs(quads, normalization="samplewise")),
        atol=1e-5,
    )


def test_pixel_ranks_order_by_value_and_break_ties_at_random():
    # Two distinct values and a tie of six pixels: the larger values come first, the tie's order depends on the seed.
    map_ = np.array([[0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 9.0]])
    ranks = [M.pixel_ranks(map_, np.random.default_rng(seed)) for seed in range(20)]
    for rank in ranks:
        assert sorted(rank) == list(range(8))
        assert rank[7] == 0 and rank[4] == 1
    ties = {tuple(rank[[0, 1, 2, 3, 5, 6]]) for rank in ranks}
    assert len(ties) > 1
    assert np.array_equal(M.pixel_ranks(map_, np.random.default_rng(3)), ranks[3])
