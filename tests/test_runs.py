import pytest

from streetlib import inference, paths
from streetlib.runs import RunId, RunLayout, dataset_layout, sidecar_path


@pytest.mark.parametrize(
    ("run", "name"),
    [
        (RunId("03-pretrained", "hed-bsds500-transfer", 42), "hed-bsds500-transfer-seed42"),
        (RunId("04-finetune", "random-finetune-block3", 0), "random-finetune-block3-seed0"),
        (RunId("e", "transfer-features"), "transfer-features"),
        # Names that merely look seeded stay whole: building them back must give the same name.
        (RunId("e", "cfg-seed007"), "cfg-seed007"),
        (RunId("e", "cfg-seed"), "cfg-seed"),
        (RunId("e", "a-seed3x"), "a-seed3x"),
    ],
)
def test_run_names_round_trip(run, name):
    assert run.name == name
    assert RunId.from_name(run.experiment, name) == run
    assert str(run) == f"{run.experiment}/{name}"


def test_run_ids_are_frozen_and_checked():
    run = RunId("e", "cfg", 1)
    with pytest.raises(AttributeError):
        run.seed = 2
    with pytest.raises(ValueError, match=r"Invalid `experiment`.*Received: experiment='a/b'"):
        RunId("a/b", "cfg", 1)
    with pytest.raises(ValueError, match=r"Invalid `config_name`.*Received: config_name=''"):
        RunId("e", "", 1)
    with pytest.raises(ValueError, match=r"Invalid `seed`.*Received: seed=-1"):
        RunId("e", "cfg", -1)
    with pytest.raises(ValueError, match=r"Invalid `seed`.*Received: seed=True"):
        RunId("e", "cfg", True)
    with pytest.raises(ValueError, match=r"Invalid `run`.*Received: run='../x-seed1'"):
        RunId.from_name("e", "../x-seed1")


def test_layout_gives_every_file_of_a_run(tmp_path):
    layout = RunLayout(hists_dir=tmp_path / "h", models_dir=tmp_path / "m", figs_dir=tmp_path / "f")
    run = RunId("03-pretrained", "hed-bsds500-transfer", 42)
    hists, saved = tmp_path / "h" / "03-pretrained", tmp_path / "m" / "03-pretrained"

    assert layout.hists("03-pretrained") == hists and layout.models("03-pretrained") == saved
    assert layout.figs("03-pretrained") == tmp_path / "f" / "03-pretrained"
    assert layout.history(run) == hists / "hed-bsds500-transfer-seed42.csv"
    assert layout.manifest(run) == hists / "hed-bsds500-transfer-seed42.json"
    assert layout.evals(run) == hists / "hed-bsds500-transfer-seed42.eval.csv"
    assert layout.model(run, "best") == saved / "hed-bsds500-transfer-seed42.best.keras"
    assert layout.model(run, "final") == saved / "hed-bsds500-transfer-seed42.final.keras"
    assert layout.sidecar(run, "best") == saved / "hed-bsds500-transfer-seed42.best.json"
    assert layout.backup(run) == saved / "hed-bsds500-transfer-seed42.backup"
    assert layout.figure_prefix(run, "best", "test") == tmp_path / "f" / "03-pretrained" / (
        "hed-bsds500-transfer-seed42.best.test"
    )
    assert layout.files(run) == {
        "history": layout.history(run),
        "manifest": layout.manifest(run),
        "best_model": layout.model(run, "best"),
        "final_model": layout.model(run, "final"),
        "backup": layout.backup(run),
    }
    with pytest.raises(ValueError, match=r"Invalid `checkpoint`.*Received: checkpoint='last'"):
        layout.model(run, "last")
    with pytest.raises(ValueError, match=r"Invalid `experiment`"):
        layout.hists("../elsewhere")


def test_layout_defaults_follow_the_output_root(tmp_path, monkeypatch):
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path))
    layout = RunLayout()
    assert (layout.hists_dir, layout.models_dir, layout.figs_dir) == (
        paths.hists_dir(),
        paths.models_dir(),
        paths.figs_dir(),
    )
    assert layout.history(RunId("e", "c", 1)) == tmp_path / "hists" / "e" / "c-seed1.csv"


def test_inference_reads_the_sidecar_training_writes(tmp_path):
    """One rule for where a model's sidecar lives, shared by the writer (training) and the reader (inference)."""
    layout = RunLayout(models_dir=tmp_path)
    run = RunId("e", "c", 2)
    assert sidecar_path(layout.model(run, "final")) == layout.sidecar(run, "final")
    layout.sidecar(run, "final").parent.mkdir(parents=True)
    layout.sidecar(run, "final").write_text('{"image_size": 48}')
    assert inference.read_sidecar(layout.model(run, "final")) == {"image_size": 48}


def test_a_variant_extends_the_configuration_name():
    """Issue #22: the points of a grid name their runs apart; the name still reads back into the same identity."""
    from streetlib.runs import with_variant

    assert with_variant("hed-bsds500-transfer", "") == "hed-bsds500-transfer"
    name = with_variant("hed-bsds500-transfer", "pooling-max__split_seeds-43")
    assert name == "hed-bsds500-transfer-pooling-max__split_seeds-43"
    run = RunId("03-pretrained", name, 43)
    assert RunId.from_name("03-pretrained", run.name) == run
    with pytest.raises(ValueError, match=r"Invalid `variant`.*Received: variant='a/b'"):
        with_variant("cfg", "a/b")


def test_each_dataset_has_its_own_tree_and_a_layout_keeps_to_its_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path))
    run = RunId("03-pretrained", "hed-bsds500-transfer", 42)
    demo, street10 = RunLayout(dataset="synth-demo"), RunLayout(dataset="street10")
    # The same run on two datasets: two sets of files, so neither blocks nor is read as the other.
    assert demo.manifest(run) == tmp_path / "hists" / "synth-demo" / "03-pretrained" / f"{run.name}.json"
    assert street10.model(run, "best") == tmp_path / "models" / "street10" / "03-pretrained" / f"{run.name}.best.keras"
    assert street10.figs("06-results") == tmp_path / "figs" / "street10" / "06-results"
    assert not set(demo.files(run).values()) & set(street10.files(run).values())
    assert dataset_layout(None, "street10").hists_dir == street10.hists_dir
    assert dataset_layout(street10, "street10") is street10
    with pytest.raises(ValueError, match=r"layout is for dataset 'synth-demo', the data are 'street10'"):
        dataset_layout(demo, "street10")
    with pytest.raises(ValueError, match="Invalid `dataset`"):
        RunLayout(dataset="../x")
