import dataclasses
import json
from pathlib import Path

import pytest

from streetlib.runs import RunId
from streetlib.training.config import PHASES, ExecutionConfig, RunConfig

HISTS = Path(__file__).resolve().parents[1] / "hists"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phase": "fine-tune"}, r"Invalid `phase`. Expected one of \['transfer', 'finetune', 'scratch'\]"),
        ({"epochs": 0}, r"Invalid `epochs`. Expected an int >= 1. Received: epochs=0"),
        ({"epochs": True}, r"Invalid `epochs`. Expected an int >= 1. Received: epochs=True"),
        ({"seed": 1.5}, r"Invalid `seed`. Expected an int >= 0. Received: seed=1.5"),
        ({"image_size": 16}, r"Invalid `image_size`. Expected an int >= 32. Received: image_size=16"),
        ({"units": 0}, r"Invalid `units`. Expected None or an int >= 1. Received: units=0"),
        ({"dropout": 1.0}, r"Invalid `dropout`. Expected a float in \[0, 1\). Received: dropout=1.0"),
        ({"learning_rate": -1}, r"Invalid `learning_rate`. Expected a float > 0. Received: learning_rate=-1"),
        ({"cache": "yes"}, r"Invalid `cache`. Expected one of \['auto', 'features', 'none'\]. Received: cache='yes'"),
        ({"optimizer": "adagrad"}, r"Invalid `optimizer`.*Received: optimizer='adagrad'"),
        ({"pooling": "sum"}, r"Invalid `pooling`.*Received: pooling='sum'"),
        ({"backbone": "vgg99"}, r"Invalid `backbone`.*Received: backbone='vgg99'"),
        ({"normalization": "none"}, r"Invalid `normalization`.*Received: normalization='none'"),
        ({"augment": {"spin": 5}}, r"Invalid `augment`. Expected a bool or a dict with keys among .*'spin': 5\}"),
        ({"loss_weights": {"city": 1.0}}, r"Invalid `loss_weights`.*Received: loss_weights=\{'city': 1.0\}"),
        ({"early_stopping": 0}, r"Invalid `early_stopping`. Expected None or an int >= 1"),
        ({"mixed_precision": "yes"}, r"Invalid `mixed_precision`. Expected a bool"),
        ({"momentum": 0.5}, r"`momentum` applies to optimizer='sgd' only. Received: optimizer='nadam'"),
        ({"weights": None}, r"`weights=None` is for phase='finetune' only"),
        ({"weights": "no-such-source"}, r"weights"),
    ],
)
def test_invalid_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**change)


def test_an_unknown_setting_fails_where_the_config_is_made():
    with pytest.raises(TypeError, match="epoch"):
        RunConfig.preset("transfer", epoch=3)
    with pytest.raises(TypeError):
        RunConfig("transfer")  # keyword-only


def test_a_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().epochs = 3


def test_presets_follow_the_original_phases():
    transfer = RunConfig.preset("transfer")
    assert transfer == RunConfig()  # the field defaults are the transfer phase
    assert (transfer.weights, transfer.frozen_through, transfer.epochs) == ("hed-bsds500", "backbone", 50)
    assert transfer.optimizer_config == {"name": "nadam", "learning_rate": 0.002}

    finetune = RunConfig.preset("finetune", weights="imagenet")
    assert (finetune.frozen_through, finetune.epochs) == ("block4_pool", 100)
    assert finetune.optimizer_config == {"name": "sgd", "learning_rate": 1e-4, "momentum": 0.9, "nesterov": True}
    assert RunConfig.preset("finetune").weights is None  # the source of the model it starts from
    # Another optimiser drops the phase's SGD momentum; a momentum asked for with it is still refused.
    adam = RunConfig.preset("finetune", optimizer="adam", learning_rate=2e-4)
    assert adam.momentum is None and adam.optimizer_config == {"name": "adam", "learning_rate": 2e-4}
    with pytest.raises(ValueError, match="`momentum` applies to optimizer='sgd' only"):
        RunConfig.preset("finetune", optimizer="adam", momentum=0.5)

    scratch = RunConfig.preset("scratch", epochs=7)
    assert (scratch.weights, scratch.frozen_through, scratch.epochs) == ("random", None, 7)
    assert scratch.input_normalization == "samplewise"
    with pytest.raises(ValueError, match=r"Invalid `phase`.*Received: phase='fine-tune'"):
        RunConfig.preset("fine-tune")
    assert set(PHASES) == {"transfer", "finetune", "scratch"}


def test_equal_settings_make_equal_configs():
    # Stored in one form: numpy-free ints and floats, the registry's backbone name, sgd's default momentum, a
    # normalisation equal to the weight source's as the default.
    a = RunConfig(backbone="VGG16", learning_rate=1, normalization="caffe-bvlc", loss_weights={"region": 1, "city": 2})
    b = RunConfig(backbone="vgg16", learning_rate=1.0, loss_weights={"region": 1.0, "city": 2.0})
    assert a == b and a.normalization is None and a.input_normalization == "caffe-bvlc"
    assert RunConfig(optimizer="sgd") == RunConfig(optimizer="sgd", momentum=0.9)
    # Another weight source brings its own normalisation unless one was chosen.
    assert RunConfig().replace(weights="random").input_normalization == "samplewise"
    assert RunConfig(normalization="raw").replace(weights="random").input_normalization == "raw"


@pytest.mark.parametrize(
    "path", sorted(HISTS.glob("*/0[34]-*/*.json")), ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}"
)
def test_the_manifest_record_round_trips_the_committed_runs(path):
    record = json.loads(path.read_text())["config"]
    config = RunConfig.from_manifest(record)
    run = RunId.from_name(record["experiment"], record["run"])
    written = config.to_manifest(
        run, init_from=record["init_from"], weights_file=record["weights_file"], xla=record["xla"]
    )
    # Runs recorded before the learning-rate schedule was a setting trained with the plateau one (its default).
    assert written == {**record, "lr_schedule": record.get("lr_schedule", "plateau")}
    assert [k for k in written if k != "lr_schedule"] == [k for k in record if k != "lr_schedule"]  # same order
    assert RunConfig.from_manifest(written) == config


def test_a_transfer_record_is_the_one_training_writes():
    config = RunConfig.preset("transfer", epochs=30, augment_copies=2, seed=42)
    assert config.to_manifest(RunId("03-pretrained", "hed-bsds500-transfer", 42)) == {
        "experiment": "03-pretrained",
        "run": "hed-bsds500-transfer-seed42",
        "phase": "transfer",
        "weights": "hed-bsds500",
        "weights_label": "HED-BSDS500 (VGG16 conv layers of an edge detector, not a scene classifier)",
        "weights_file": None,
        "init_from": None,
        "backbone": "vgg16",
        "image_size": 64,
        "normalization": "caffe-bvlc",
        "epochs": 30,
        "batch_size": 32,
        "cut": None,
        "head": "dense",
        "pooling": "avg",
        "units": None,
        "filters": 64,
        "head_stride": 2,
        "dropout": 0.5,
        "augment": True,
        "cache": "auto",
        "augment_copies": 2,
        "seed": 42,
        "frozen_through": "backbone",
        "optimizer": {"name": "nadam", "learning_rate": 0.002},
        "loss_weights": {"region": 0.5, "city": 1.0},
        "early_stopping": None,
        "lr_schedule": "plateau",
        "mixed_precision": False,
        "xla": False,
        "monitor": "val_city_accuracy",
    }


def test_execution_options_are_not_part_of_the_identity():
    config = RunConfig.preset("transfer", seed=3)
    run = RunId("e", "c", 3)
    with_xla = config.to_manifest(run, xla=True)
    assert with_xla["xla"] is True  # recorded ...
    assert RunConfig.from_manifest(with_xla) == RunConfig.from_manifest(config.to_manifest(run))  # ... not compared
    execution_fields = {f.name for f in dataclasses.fields(ExecutionConfig)}
    assert not execution_fields & {f.name for f in dataclasses.fields(RunConfig)}
    with pytest.raises(ValueError, match=r"Invalid `verbose`. Expected one of \['auto'\] or an int in \[0, 2\]"):
        ExecutionConfig(verbose=3)
    with pytest.raises(ValueError, match=r"Invalid `force`. Expected a bool. Received: force=1"):
        ExecutionConfig(force=1)


def test_changes_leave_out_the_resumable_fields_when_resuming():
    started = RunConfig(epochs=10)
    resumed = started.replace(epochs=20, early_stopping=5, seed=1)
    assert resumed.changes(started) == {"epochs": (10, 20), "early_stopping": (None, 5), "seed": (0, 1)}
    assert resumed.changes(started, resuming=True) == {"seed": (0, 1)}
    assert RunConfig.resumable == ("epochs", "early_stopping")
    # Under the cosine schedule the epochs set every epoch's learning rate: a run cannot resume with others.
    cosine = started.replace(lr_schedule="cosine")
    assert cosine.replace(epochs=20).changes(cosine, resuming=True) == {"epochs": (10, 20)}
    assert cosine.changes(started, resuming=True) == {"lr_schedule": ("plateau", "cosine")}


def test_an_unknown_learning_rate_schedule_is_named():
    with pytest.raises(ValueError, match=r"Invalid `lr_schedule`.*'plateau', 'cosine'.*Received: lr_schedule='step'"):
        RunConfig(lr_schedule="step")
