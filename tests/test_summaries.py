"""Tests of streetlib.attribution.summaries: dataset-level street features (mean CAMs, most attributed patches),
quadrants, and the cascading randomisation check's table."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from test_attribution import convention_model  # noqa: E402

from streetlib.attribution import (  # noqa: E402
    explainer,  # noqa: E402
    plots,
    summaries,
)
from streetlib.classes import STREET10, ClassSpec  # noqa: E402


def test_street_features_by_hand():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    images[:, :4, 4:] = 200  # a bright top-right corner
    cams = np.zeros((4, 8, 8), np.float32)
    cams[:, :4, 4:] = [[1.0]], [[0.5]], [[0.8]], [[1.0]]
    labels = np.array([0, 0, 1, 1])
    predicted = np.array([0, 0, 1, 0])  # image 3 is misclassified
    f = summaries.street_features(images, cams, labels, predicted, num_classes=3, patch_size=4, top=8)
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
        summaries.street_features(images, cams, labels, predicted, num_classes=3, patch_size=9)
    with pytest.raises(ValueError, match="must match `images`"):
        summaries.street_features(images, cams, labels[:3], predicted, num_classes=3)


def test_quadrants_are_cut_in_reading_order_and_explained():
    image = np.zeros((40, 60, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    image[:20, :30], image[:20, 30:], image[20:, :30], image[20:, 30:] = colours
    quads = summaries.quadrant_images(image, size=16)
    assert quads.shape == (4, 16, 16, 3)
    for q, colour in zip(quads, colours, strict=True):
        np.testing.assert_array_equal(q[8, 8], colour)
    with pytest.raises(ValueError, match="must be uint8 RGB"):
        summaries.quadrant_images(image[:1], size=16)
    model = convention_model(32)
    quads, ex = summaries.explain_quadrants(image, model, normalization="samplewise")
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


def test_the_randomisation_table_has_a_row_per_method_and_step_and_its_figure_a_line_per_method():
    check = {
        "layers": ["city_logits", "conv"],
        "spearman": {"grad_cam": np.array([[0.5, 0.7], [0.1, np.nan]]), "saliency": np.ones((2, 2), np.float32)},
    }
    table = summaries.randomization_table(check)
    assert list(table.columns) == ["method", "step", "layer", "spearman_mean", "spearman_std"]
    assert table[["method", "step", "layer"]].values.tolist() == [
        ["grad_cam", 1, "city_logits"],
        ["grad_cam", 2, "conv"],
        ["saliency", 1, "city_logits"],
        ["saliency", 2, "conv"],
    ]
    np.testing.assert_allclose(table["spearman_mean"], [0.6, 0.1, 1.0, 1.0])  # NaNs are left out of the mean
    fig = plots.plot_randomization(table, title="toy")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["city_logits", "conv"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["grad_cam", "saliency"]
    assert isinstance(table, pd.DataFrame) and ax.get_title() == "toy"
