import json

import numpy as np
import pytest

from streetlib.cli.commands import main
from streetlib.data.loaders import load_street10


def test_synth_then_split(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path))
    out = tmp_path / "demo"
    assert main(["data", "synth", "--out", str(out), "--per-class", "3", "--size", "32", "--seed", "1"]) == 0
    data = load_street10(out)
    assert len(data) == 30 and data.synthetic and data.images.shape[1:] == (32, 32, 3)
    assert json.loads((out / "dataset.json").read_text())["seed"] == 1

    assert (
        main(["data", "synth", "--out", str(out), "--per-class", "3", "--size", "32", "--seed", "1", "--if-missing"])
        == 0
    )
    assert "Reusing" in capsys.readouterr().out
    np.testing.assert_array_equal(load_street10(out).images, data.images)

    assert main(["data", "synth", "--out", str(out), "--per-class", "4", "--size", "32", "--if-missing"]) == 2
    assert "holds a dataset made with" in capsys.readouterr().err
    assert main(["data", "synth", "--out", str(out), "--per-class", "3", "--size", "32"]) == 2
    assert "already holds a dataset" in capsys.readouterr().err

    assert main(["data", "split", str(out), "--seed", "5", "6"]) == 0
    printed = capsys.readouterr().out
    assert "seed 5: train" in printed and "seed 6: train" in printed
    assert sorted(p.name for p in (tmp_path / "data" / "splits").iterdir()) == ["demo-seed5.json", "demo-seed6.json"]


def test_synth_replicates_then_split_each_seed_on_its_replicate(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path))
    out = tmp_path / "demo"
    args = ["data", "synth", "--out", str(out), "--per-class", "10", "--size", "32", "--replicates", "2"]
    assert main(args) == 0
    data = load_street10(out)
    assert len(data) == 200 and data.replicates == 2
    assert main(["data", "split", str(out), "--seed", "4", "5"]) == 0
    # 10 images a class per seed: 1 test, 2 validation, 7 training, from that seed's replicate.
    assert "seed 4: train 70, val 20, test 10" in capsys.readouterr().out
    assert main([*args, "--replicates", "0"]) == 2
    assert "replicates" in capsys.readouterr().err


def test_synth_task_is_drawn_and_recorded(tmp_path, capsys):
    out = tmp_path / "layout"
    args = ["data", "synth", "--out", str(out), "--per-class", "2", "--size", "64", "--task"]
    assert main([*args, "layout"]) == 0
    assert load_street10(out).meta["task"] == "layout"
    assert main([*args, "cues", "--if-missing"]) == 2
    assert "task='layout', not task='cues'" in capsys.readouterr().err
    assert main([*args, "shapes", "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Invalid `task`. Expected one of ('cues', 'layout')" in err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["data", "split", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Dataset directory not found" in err


def test_unknown_subcommand_is_refused():
    with pytest.raises(SystemExit) as exc:
        main(["data", "crawl-everything"])
    assert exc.value.code == 2


def test_build_packages_an_image_folder(tmp_path, capsys):
    from PIL import Image

    raw = tmp_path / "raw"
    rng = np.random.default_rng(0)
    for cls in ("aa", "bb"):
        (raw / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).resize((96, 72)).save(raw / cls / f"{i}.png")
    (raw / "classes.yaml").write_text("name: two\nregions:\n  r1: [aa]\n  r2: [bb]\n")
    assert main(["data", "build", "--raw", str(raw), "--out", str(tmp_path / "out"), "--size", "32"]) == 0
    data = load_street10(tmp_path / "out")
    assert data.images.shape == (6, 32, 32, 3) and data.spec.classes == ("aa", "bb")
    assert main(["data", "build", "--raw", str(raw), "--out", str(tmp_path / "out"), "--size", "32"]) == 2
    assert "error" in capsys.readouterr().err


def test_an_os_error_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    """Issue #22: a file that cannot be written (here a folder where the report goes) ends as one line, exit 2."""
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path))
    (tmp_path / "hists" / "README.md").mkdir(parents=True)
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("streetlib report: error: ")
    assert "Is a directory" in err and str(tmp_path / "hists" / "README.md") in err


def test_a_corrupt_manifest_is_named_by_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path))
    manifest = tmp_path / "hists" / "synth-demo" / "03-pretrained" / "random-transfer-seed42.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"config": {"experiment": ')
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(manifest) in err and "not valid JSON" in err
    manifest.write_text('{"config": {}}')
    assert main(["report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(manifest) in err and "'experiment'" in err


def test_a_negative_timeout_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "crawl", "--cities", "street10", "--out", "x", "--per-city", "1", "--timeout", "-1"])
    assert exc.value.code == 2
    assert "--timeout: expected a number > 0, not '-1'" in capsys.readouterr().err


def test_sigterm_between_notebooks_is_one_line_and_exit_143(monkeypatch, capsys):
    from streetlib.experiments import runner

    def stopped(*args, **kwargs):
        raise runner.Terminated()

    monkeypatch.setattr(runner, "run", stopped)
    assert main(["run", "01"]) == 143
    err = capsys.readouterr().err
    assert err == "streetlib run: stopped (SIGTERM). Run the same command again to resume.\n"
