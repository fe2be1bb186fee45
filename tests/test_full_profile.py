"""The study's real path, rehearsed: the `full` profile as a Colab user runs it, shrunk only in images and epochs.

Street10's format (ten ``<city>.npy`` files, uint8 and float), every weight source (ImageNet and Places365 from local
stand-in files in a private Keras cache, listed in ``STREETLIB_STAND_IN_WEIGHTS``), the whole VGG16 at 224 px with
the original's dense head, fine-tuning above ``block4_pool``, the profile's split seeds, in an output root that
already holds the committed demo results. The costly attribution methods also get fewer samples, masks and steps
(their defaults take minutes per image at 224 px on a CPU). After the profile's run, notebook 04 fine-tunes one more
run in mixed precision (one source, one seed; on a CPU 'mixed_bfloat16' stands in for a GPU's 'mixed_float16').
Assertions are on what each notebook writes, not only on its finishing.
"""

import hashlib
import json
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

from streetlib import paths
from streetlib.attribution.registry import METHODS
from streetlib.classes import STREET10
from streetlib.experiments import runner
from streetlib.models.weights import STAND_IN_ENV, VGG16_CONV_LAYERS, WEIGHT_SOURCES

pytestmark = pytest.mark.slow

DATASET = "street10-mini"
PER_CITY = 6  # the fewest a class can have and still get a training, a validation and a test image
SIZE = 224
# Two of the full profile's eight split seeds: the fewest that check every seed's runs are made, scored and paired;
# each seed adds about a third of the rehearsal's time, which CI's limit cannot spare.
SEEDS = runner.load_profile("full")["all"]["split_seeds"][:2]
SOURCES = ["imagenet", "places365", "hed-bsds500", "random"]
SHRUNK = {  # images and epochs, and the costly methods' sample counts: nothing else differs from the profile
    "epochs": 1,
    "samples_per_class": 1,
    "max_images": 4,
    "leaderboard_images": 2,
    "leaderboard_outputs": ["region"],  # every method still runs, on one output: at 224 px each costs minutes here
    "method_images": {"occlusion": 1, "rise": 1, "score_cam": 1, "smoothgrad": 1, "integrated_gradients": 1},
    "method_params": {
        "rise": {"masks": 8},
        "smoothgrad": {"samples": 2},
        "integrated_gradients": {"steps": 2},
        "occlusion": {"patch": 56, "stride": 56},
    },
    "control_images": 1,
    "randomization_images": 1,
    "curve_steps": 2,
    "concept_images": 10,
    "per_class": 1,
}
# The one mixed-precision run: notebook 04 again, on one transfer run, under its own variant, without the continued
# transfer run it trains beside each fine-tuning as a control.
MIXED = {
    "weight_sources": ["places365"],
    "split_seeds": SEEDS[:1],
    "mixed_precision": True,
    "variant": "mixed-precision",
    "continued_control": False,
}
MIXED_RUN = f"places365-finetune-block4-mixed-precision-seed{SEEDS[0]}"


def street10_mini(folder):
    """Ten ``<city>.npy`` files of `PER_CITY` images at 224 px: the western cities uint8, the eastern ones float32 in
    [0, 1] (both of Street10's published forms), each city with its own tint so there is something to learn."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, city in enumerate(STREET10.classes):
        tint = np.array([i * 25, 255 - i * 25, (i * 70) % 256], np.float32)
        images = (0.6 * rng.integers(0, 256, (PER_CITY, SIZE, SIZE, 3)) + 0.4 * tint).astype(np.uint8)
        np.save(folder / f"{city}.npy", images if i < 5 else (images / 255.0).astype(np.float32))
    return folder


def stand_in_weights(models_dir):
    """Random VGG16 conv weights in the Keras 2 layout of the real ImageNet and Places365 files, where the Keras
    cache keeps them."""
    import keras

    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    models_dir.mkdir(parents=True)
    for source in ("imagenet", "places365"):
        with h5py.File(models_dir / WEIGHT_SOURCES[source].fname, "w") as f:
            f.attrs["layer_names"] = [n.encode() for n in VGG16_CONV_LAYERS]
            for name in VGG16_CONV_LAYERS:
                group = f.create_group(name)
                arrays = vgg.get_layer(name).get_weights()
                names = [f"{name}/kernel:0", f"{name}/bias:0"]
                group.attrs["weight_names"] = [n.encode() for n in names]
                for n, array in zip(names, arrays, strict=True):
                    group.create_dataset(n, data=array)


def _digests(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    base = tmp_path_factory.mktemp("full")
    root = base / "clone"
    for folder in ("hists", "figs"):  # a clone holds the committed demo results
        shutil.copytree(paths.REPO_ROOT / folder / "synth-demo", root / folder / "synth-demo")
    demo_before = {folder: _digests(root / folder / "synth-demo") for folder in ("hists", "figs")}
    stand_in_weights(base / "keras" / "models")
    data = street10_mini(base / DATASET)
    mp = pytest.MonkeyPatch()
    # The kernels inherit these: outputs under the clone's root, the private Keras cache, the stand-ins named.
    mp.setenv("STREETLIB_ROOT", str(root))
    mp.setenv("KERAS_HOME", str(base / "keras"))
    mp.setenv(STAND_IN_ENV, "imagenet,places365")
    try:
        overrides = {"data_dir": str(data), "split_seeds": SEEDS, **SHRUNK}
        results = runner.run(profile="full", overrides=overrides, progress=False, report=lambda line: None)
        (mixed,) = runner.run(
            ["04"],
            profile="full",
            overrides={"data_dir": str(data), "epochs": SHRUNK["epochs"], **MIXED},
            out_dir=base / "executed-mixed",  # beside the profile run's executed 04, not over it
            progress=False,
            report=lambda line: None,
        )
    finally:
        mp.undo()
    return root, {r.notebook.stem: r for r in results}, demo_before, mixed


def _hists(root, experiment):
    return root / "hists" / DATASET / experiment


def test_every_notebook_of_the_full_profile_runs(rehearsal):
    _, results, *_ = rehearsal
    assert sorted(results) == [nb.stem for nb in runner.list_notebooks()]
    assert {name: r.error for name, r in results.items() if r.status != "done"} == {}


def test_00_reads_the_street10_files_and_makes_the_profiles_splits(rehearsal):
    root, *_ = rehearsal
    for seed in SEEDS:
        split = json.loads((root / "data" / "splits" / f"{DATASET}-seed{seed}.json").read_text())
        assert sum(split["counts"].values()) == 10 * PER_CITY
    assert not (root / "data" / DATASET).exists()  # nothing generated: it read the folder it was pointed at


def test_02_and_03_use_every_source_on_the_same_seeds(rehearsal):
    root, *_ = rehearsal
    baselines = pd.read_csv(_hists(root, "02-baselines") / "baselines.csv")
    deep = baselines[baselines["weights"] != "none"]
    assert set(deep["weights"]) == set(SOURCES) and set(baselines["seed"]) == set(SEEDS)
    for source in SOURCES:
        for seed in SEEDS:
            manifest = json.loads((_hists(root, "03-pretrained") / f"{source}-transfer-seed{seed}.json").read_text())
            config = manifest["config"]
            assert manifest["status"] == "complete" and config["image_size"] == SIZE
            assert config["cut"] is None and config["head"] == "dense"  # the whole VGG16, the original's head
            assert manifest["split"]["seed"] == seed
            weights_file = config.get("weights_file")
            if source == "random":
                assert weights_file is None
            else:  # the file loaded and its hash; the stand-ins are recorded as unverified
                assert len(weights_file["sha256"]) == 64
                assert weights_file["verified"] is (source == "hed-bsds500")
            if source in ("imagenet", "places365"):
                assert "STAND-IN" in config["weights_label"]


def test_04_fine_tunes_above_block4_pool_from_each_transfer_run(rehearsal):
    root, *_ = rehearsal
    for source in SOURCES:
        for seed in SEEDS:
            manifest = json.loads(
                (_hists(root, "04-finetune") / f"{source}-finetune-block4-seed{seed}.json").read_text()
            )
            assert manifest["status"] == "complete"
            assert manifest["config"]["frozen_through"] == "block4_pool"
            assert f"{source}-transfer-seed{seed}.best.keras" in manifest["config"]["init_from"]


def _layer(model, name):
    """The layer called ``name`` in ``model`` or in a model nested in it."""
    import keras

    for layer in model.layers:
        if layer.name == name:
            return layer
        if isinstance(layer, keras.Model):
            found = _layer(layer, name)
            if found is not None:
                return found
    return None


def test_04_fine_tunes_one_run_in_mixed_precision(rehearsal):
    import keras

    root, _, _, mixed = rehearsal
    assert mixed.status == "done", mixed.error
    assert "rehearsing the GPU path" in mixed.output.read_text()  # the notebook shows training's warning
    mixed_runs = sorted(p.name for p in _hists(root, "04-finetune").glob("*mixed-precision*.json"))
    assert mixed_runs == [f"{MIXED_RUN}.json"]  # exactly one run
    manifest = json.loads((_hists(root, "04-finetune") / f"{MIXED_RUN}.json").read_text())
    assert manifest["status"] == "complete" and manifest["config"]["mixed_precision"] is True
    assert manifest["config"]["frozen_through"] == "block4_pool"
    models_dir = root / "models" / DATASET / "04-finetune"
    model = keras.models.load_model(models_dir / f"{MIXED_RUN}.best.keras", safe_mode=True)
    plain = keras.models.load_model(models_dir / f"places365-finetune-block4-seed{SEEDS[0]}.best.keras", safe_mode=True)
    for layer in ("block1_conv1", "block5_conv3"):  # frozen and trained alike compute in bfloat16
        assert _layer(model, layer).dtype_policy.name == "mixed_bfloat16"
        assert _layer(model, layer).kernel.dtype == "float32"
        assert _layer(plain, layer).dtype_policy.name == "float32"
    image = np.full((1, SIZE, SIZE, 3), 100.0, np.float32)
    outputs = model(image, training=False)
    assert {name: keras.backend.standardize_dtype(p.dtype) for name, p in outputs.items()} == {
        "region": "float32",
        "city": "float32",
    }
    assert keras.config.dtype_policy().name == "float32"


def test_05_scores_what_needs_no_masks_on_real_data(rehearsal):
    root, *_ = rehearsal
    board = pd.read_csv(_hists(root, "05-attribution") / "leaderboard.csv")
    assert {"deletion_auc", "insertion_auc", "randomization", "random_logit"} <= set(board["metric"])
    assert set(board.loc[board["family"] != "floor", "method"]) == set(METHODS)
    assert not board["metric"].isin(["pointing_game", "relevance_mass_accuracy"]).any()  # no ground truth
    assert (board.loc[board["family"] != "floor", "cost"] > 0).all()


def test_06_answers_the_four_questions_and_question_2s_control_on_this_dataset_only(rehearsal):
    root, _, demo_before, _ = rehearsal
    comparisons = pd.read_csv(_hists(root, "06-results") / "comparisons.csv")
    assert sorted(set(comparisons["question"].str.split(".").str[0])) == ["1", "2", "2b", "3", "4"]
    assert (comparisons["n"] == len(SEEDS)).all()
    question_1 = comparisons[comparisons["question"].str.startswith("1.")]
    assert set(question_1["b"]) == {"places365-transfer"}  # the profile's pretrained source
    side = pd.read_csv(_hists(root, "06-results") / "side-by-side.csv")
    assert not side["config"].str.contains("finetune-all").any()  # none of the demo's runs
    # The demo's committed results are exactly as they were: nothing of theirs was read over, blocked or rewritten.
    for folder in ("hists", "figs"):
        assert _digests(root / folder / "synth-demo") == demo_before[folder]
