"""The benchmark's own logic: the references compute what ours computes, and the report says what was measured."""

import numpy as np
import pytest

from streetlib.benchmarks import bench
from streetlib.data.pipeline import make_dataset


def test_vgg16_flops_match_the_published_count():
    # VGG16's 13 conv layers: 15.35 G multiply-adds at 224 px (30.7 GFLOP); the cost scales with the pixel count.
    assert bench.vgg16_flops(224) == pytest.approx(30.7e9, rel=0.01)
    assert bench.vgg16_flops(112) == pytest.approx(bench.vgg16_flops(224) / 4, rel=0.01)


def test_legacy_generator_feeds_what_our_pipeline_feeds():
    data = bench._street_data(20, 32)
    idx = np.arange(20)
    ours_x, ours_y = next(iter(make_dataset(data, idx, batch_size=20, normalization="samplewise")))
    ref_x, ref_y = next(bench.legacy_generator(data, idx, batch_size=20, augment=False))
    np.testing.assert_allclose(ours_x.numpy(), ref_x, atol=1e-4)
    np.testing.assert_array_equal(ref_y["city"].argmax(1), ours_y["city"].numpy())
    np.testing.assert_array_equal(ref_y["region"].argmax(1), ours_y["region"].numpy())
    augmented, _ = next(bench.legacy_generator(data, idx, batch_size=20, augment=True))
    assert not np.allclose(augmented, ref_x)


def test_original_grad_cam_loop_gives_one_max_normalised_map_per_image():
    from streetlib.attribution.methods import Explainer

    model = bench._flat_vgg16(32, num_classes=3)
    x = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    targets = np.argmax(model.predict(x, verbose=0), axis=1)
    ours = Explainer(model, layer="block5_conv3").grad_cam(x, output="city", target=targets, upsample=False).cam
    original = bench.original_grad_cam(model, x, targets)
    assert original.shape == np.asarray(ours).shape == (3, 2, 2)
    assert np.isfinite(original).all()
    peaks = original.reshape(3, -1).max(axis=1)
    assert all(p == pytest.approx(1.0) or p == 0.0 for p in peaks)  # divided by its own max, as the original did


def test_comparison_ratios_point_the_better_way():
    speed = bench.Comparison("x", {"ours": [10.0, 12.0]}, {"ref": [2.0, 2.0]}, "img/s", 5.0)
    assert speed.ratios == {"ref": pytest.approx(5.5)}
    time = bench.Comparison("x", {"ours": [1.0]}, {"ref": [8.0]}, "s", 8.0)
    assert time.ratios == {"ref": 8.0}
    memory = bench.Comparison("x", {"ours": [700.0]}, {"uint8": [625.0]}, "MB", 1 / 1.3)
    assert memory.ratios["uint8"] == pytest.approx(625 / 700)


def test_markdown_report_names_machine_command_and_verdicts():
    results = {
        "environment": {
            "date": "2026-11-22 01:00 UTC",
            "cpu": "AMD EPYC",
            "cores": 2,
            "python": "3.11.7",
            "versions": {"tensorflow": "2.20.0"},
        },
        "quick": False,
        "comparisons": [
            bench.Comparison("pipeline", {"ours": [600.0]}, {"IDG": [200.0]}, "img/s", 5.0, check="same batches"),
            bench.Comparison("memory", {"ours": [650.0]}, {"uint8": [625.0]}, "MB", 1 / 1.3),
            bench.Comparison(
                "cam", {"ours": [10.0]}, {"loop": [2.0], "peer": [3.0]}, "img/s", {"loop": 4.0, "peer": 3.0}
            ),
        ],
        "vgg16": {
            "peak_flops": 1e11,
            "batch": 16,
            "rows": [
                {
                    "size": 64,
                    "forward_img_s": 24.0,
                    "train_img_s": 15.0,
                    "forward_peak_fraction": 0.6,
                    "train_peak_fraction": 1.1,
                }
            ],
        },
    }
    text = bench.to_markdown(results, command="streetlib bench")
    assert "AMD EPYC" in text and "`streetlib bench`" in text
    assert (
        "| pipeline | ours: 600.0 ± 0.0 img/s | IDG: 200.0 ± 0.0 img/s | 3.00x | at least 5.00x | no | same batches |"
        in text
    )
    assert "| 64 px | 24.0 | 15.0 | 60% | 110% |" in text
    assert "| memory | ours: 650 ± 0 MB | uint8: 625 ± 0 MB | 1.04x | at most 1.30x | yes |" in text
    assert "| 5.00x | at least 4.00x | yes |" in text and "| 3.33x | at least 3.00x | yes |" in text
