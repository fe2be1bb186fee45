"""Adding an attribution method from outside the package: one function and one `registry.register` line, and the
method is scored by the leaderboard, drawn by ``streetlib analyze --method NAME`` and by notebook 05's figures."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from test_attribution import convention_model  # noqa: E402

from streetlib import inference  # noqa: E402
from streetlib.attribution import explainer, leaderboard, maps, plots, registry  # noqa: E402
from streetlib.classes import STREET10  # noqa: E402
from streetlib.cli import commands as cli  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "street-samples" / "demo-street.jpg"


def centre(ex, inputs, *, output="city", target=None, rank=1, width=0.25):
    """A toy method: the same bump at the centre of every image, whatever the model (a centre bias)."""
    logits, classes = ex.classes(inputs, output=output, target=target, rank=rank)
    h, w = np.shape(inputs)[1:3]
    y, x = np.mgrid[:h, :w]
    bump = np.exp(-(((y - (h - 1) / 2) / (width * h)) ** 2 + ((x - (w - 1) / 2) / (width * w)) ** 2) / 2)
    bumps = np.broadcast_to(bump, (len(classes), h, w)).astype(np.float32)
    return maps.Attribution("centre", output, classes, bumps, logits=logits)


@pytest.fixture
def toy():
    method = registry.register(centre, "model-free", uses_layer=False, differentiates="nothing: a centre bump")
    yield method
    del registry.METHODS[method.name]


@pytest.fixture(scope="module")
def model():
    return convention_model(32)


def street_images(n=4, size=32):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_the_leaderboard_scores_a_registered_method(toy, model):
    masks = np.zeros((4, 32, 32), np.uint8)
    masks[:, 12:20, 12:20] = 1  # the cue at the centre, where the toy points
    # The method was registered after the leaderboard was imported: its settings and image budget are accepted too.
    config = leaderboard.LeaderboardConfig(
        methods=("grad_cam", "centre"),
        outputs=("city",),
        curve_steps=2,
        params={"centre": {"width": 0.5}},
        images={"centre": 3},
    )
    scores = leaderboard.score(street_images(), masks, model, normalization="samplewise", config=config)
    rows = scores[scores["method"] == "centre"]
    assert sorted(rows.loc[rows["metric"] == "pointing_game", "image"]) == [0, 1, 2]  # its budget of 3 images
    assert set(rows["family"]) == {"model-free"} and set(rows["layer"]) == {""}
    assert {"pointing_game", "relevance_mass_accuracy", "deletion_auc", "randomization"} <= set(rows["metric"])
    np.testing.assert_array_equal(rows.loc[rows["metric"] == "pointing_game", "value"], 1.0)
    # The same map for every model and class: it fails the randomisation check by construction.
    np.testing.assert_allclose(rows.loc[rows["metric"] == "randomization", "value"], 1.0, atol=1e-6)
    assert json.loads(rows["params"].iloc[0]) == {"width": 0.5}


def test_analyze_draws_a_registered_method(toy, model, tmp_path, capsys):
    path = tmp_path / "tiny.keras"
    model.save(path)
    sidecar = {"normalization": "samplewise", "classes": STREET10.to_dict()}
    inference.sidecar_path(path).write_text(json.dumps(sidecar))
    image = tmp_path / "street.png"
    if SAMPLE.is_file():
        image.write_bytes(SAMPLE.read_bytes())
    else:
        Image.fromarray(street_images(1, 64)[0]).save(image)
    status = cli.main(
        ["analyze", str(image), "--model", str(path), "--out", str(tmp_path / "figs"), "--method", "centre"]
    )
    out = capsys.readouterr().out
    assert status == 0 and f"figure: {tmp_path / 'figs' / 'street_centre.png'}" in out
    assert (tmp_path / "figs" / "street_centre.png").is_file()
    _, fitted, explanation = inference.analyze_images(
        [np.asarray(Image.open(image).convert("RGB"))], inference.load_model(path), methods=list(registry.METHODS)
    )
    assert "centre" in explanation and explanation["centre"]["city"].maps.shape == (1, *fitted.shape[1:3])


def test_notebook_05_figures_draw_a_registered_method(toy, model):
    images = street_images(2)
    inputs = explainer.model_inputs(images, normalization="samplewise")
    explanation = registry.explain(inputs, model, methods=("centre", "guided_backprop"))
    toy_maps = explanation["centre"]
    fig = plots.plot_explanation(
        images[0], explanation, 0, classes=STREET10, normalization="samplewise", method="centre"
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1].startswith("centre region: ") and titles[4].startswith("centre city: ")
    assert titles[2] == "Guided centre region" and titles[5] == "Guided centre city"
    np.testing.assert_array_equal(fig.axes[4].images[0].get_array(), maps.overlay(images[0], toy_maps["city"].maps[0]))
    fig = plots.plot_methods(
        images[0], registry.explain(inputs, model, methods=("grad_cam", "centre")), 0, classes=STREET10
    )
    assert [ax.get_title() for ax in fig.axes][1:3] == ["grad cam", "centre"]
    fig = plots.plot_class_grid(images, toy_maps["city"], np.array([0, 1]), classes=STREET10, region="western")
    assert fig.get_suptitle() == "centre of the predicted city, western cities"
    fig = plots.plot_cam_only(np.zeros((30, 50, 3), np.uint8), toy_maps, 0, classes=STREET10, policy="crop")
    assert fig.axes[2].get_title().startswith("centre city: ")
    fig = plots.plot_quadrants(
        np.repeat(images[:1], 4, axis=0),
        registry.attribute(np.repeat(inputs[:1], 4, axis=0), model, method="centre"),
        classes=STREET10,
    )
    assert len(fig.axes) == 8
