import json

import nbformat
import pytest

from streetlib.experiments import parameters, runner


def _notebook(path, params_source, body):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# test notebook"),
            nbformat.v4.new_code_cell(params_source, metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell(body),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    log = tmp_path / "log.txt"
    _notebook(
        nbs / "01_first.ipynb",
        "size = 8\nname = 'a'  # a comment with 'quotes'\n",
        f"open({str(log)!r}, 'a').write(f'first {{size}} {{name}}\\n')",
    )
    _notebook(
        nbs / "02_second.ipynb",
        "size = 8\nfail = False\n",
        f"import os\nif fail or os.path.exists({str(tmp_path / 'boom')!r}):\n    raise RuntimeError('boom at cell')\n"
        f"open({str(log)!r}, 'a').write(f'second {{size}}\\n')",
    )
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("p:\n  all: {size: 4, unused_elsewhere: 1}\n  notebooks:\n    01_first: {name: b}\n")
    monkeypatch.setattr(runner, "PROFILES_FILE", profiles)
    monkeypatch.setattr(runner.paths, "notebooks_dir", lambda: nbs)
    return nbs, log, tmp_path / "out"


def _run(out, **kwargs):
    return runner.run(profile="p", out_dir=out, progress=False, report=lambda line: None, **kwargs)


def test_parameters_cell_is_parsed(setup):
    nbs, _, _ = setup
    assert parameters.notebook_parameters(nbs / "01_first.ipynb") == {"size": 8, "name": "a"}
    bad = _notebook(nbs / "09_bad.ipynb", "size = 2 * 4\n", "")
    with pytest.raises(ValueError, match="'size' is not a plain literal"):
        parameters.notebook_parameters(bad)


def test_runs_in_order_then_skips_what_finished(setup):
    _, log, out = setup
    results = _run(out)
    assert [r.status for r in results] == ["done", "done"]
    assert log.read_text() == "first 4 b\nsecond 4\n"  # profile 'all' then the notebook's own entry
    assert json.loads((out / "01_first.done.json").read_text())["parameters"] == {"size": 4, "name": "b"}
    assert [r.status for r in _run(out)] == ["skipped", "skipped"]
    assert [r.status for r in _run(out, overrides={"size": 5})] == ["done", "done"]  # new parameters re-run
    assert [r.status for r in _run(out, overrides={"size": 5}, force=True)] == ["done", "done"]
    assert log.read_text().count("first 5 b") == 2
    # Only the first notebook's parameters change: the second reads its outputs, so it runs again too.
    assert [r.status for r in _run(out, overrides={"size": 5, "name": "c"})] == ["done", "done"]
    assert log.read_text().endswith("first 5 c\nsecond 5\n")
    assert [r.status for r in _run(out, overrides={"size": 5, "name": "c"})] == ["skipped", "skipped"]


def test_unknown_parameter_is_refused_before_anything_runs(setup):
    _, log, out = setup
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) \['szie'\].*Valid names: \['fail', 'name', 'size'\]"):
        _run(out, overrides={"szie": 3})
    assert not log.exists() and not out.exists()
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) \['fail'\] for 01_first.ipynb"):
        _run(out, notebooks=["01"], overrides={"fail": True})


def test_failure_keeps_the_executed_copy_and_resume_skips_finished(setup):
    nbs, log, out = setup
    (out.parent / "boom").write_text("")
    results = _run(out)
    assert [r.status for r in results] == ["done", "failed"]
    assert "RuntimeError: boom at cell" in results[1].error and "cell" in results[1].error
    executed = json.loads((out / "02_second.ipynb").read_text())
    assert any(o.get("ename") == "RuntimeError" for c in executed["cells"] for o in c.get("outputs", []))
    assert not (out / "02_second.done.json").exists()
    (out.parent / "boom").unlink()
    assert [r.status for r in _run(out)] == ["skipped", "done"]  # the interrupted run resumes
    assert log.read_text().count("first") == 1


def test_a_failure_stops_the_rest_unless_keep_going(setup):
    nbs, log, out = setup
    _notebook(nbs / "00_zero.ipynb", "fail = True\n", "if fail:\n    raise ValueError('zero failed')\n")
    lines = []
    results = runner.run(profile="p", out_dir=out, progress=False, report=lines.append)
    assert [r.status for r in results] == ["failed"]
    assert sum("[not run]" in line for line in lines) == 2
    results = _run(out, keep_going=True)
    assert [r.status for r in results] == ["failed", "done", "done"]


def test_grid_runs_every_combination(setup, tmp_path):
    _, log, out = setup
    grid = tmp_path / "grid.yaml"
    grid.write_text("notebook: '01'\ngrid:\n  size: [1, 2]\n  name: [x, y]\n")
    results = _run(out, grid=grid)
    assert [r.output.name for r in results] == [
        "01_first__size=1__name=x.ipynb",
        "01_first__size=1__name=y.ipynb",
        "01_first__size=2__name=x.ipynb",
        "01_first__size=2__name=y.ipynb",
    ]
    assert sorted(log.read_text().splitlines()) == ["first 1 x", "first 1 y", "first 2 x", "first 2 y"]
    grid.write_text("notebook: '01'\ngrid:\n  colour: [red]\n")
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) \[.colour.\].*\(grid file"):
        _run(out, grid=grid)


def test_invalid_profile_and_notebook(setup):
    with pytest.raises(ValueError, match="Invalid `profile`. Expected one of \\['p'\\]"):
        runner.load_profile("demo")
    with pytest.raises(ValueError, match="Unknown notebook '07'"):
        runner.find_notebook("07")


def test_parse_value():
    assert parameters.parse_value("3") == 3 and parameters.parse_value("0.5") == 0.5
    assert parameters.parse_value("[1, 2]") == [1, 2] and parameters.parse_value("hed-bsds500") == "hed-bsds500"


def test_parameter_types_are_checked_before_anything_runs(setup):
    nbs, log, out = setup
    _notebook(nbs / "03_typed.ipynb", "seeds = [42]\nrate = 0.5\nflag = False\nanything = None\n", "")
    typed = nbs / "03_typed.ipynb"
    parameters.check_types(typed, {"seeds": [1, 2], "rate": 1, "flag": True, "anything": "x"})
    cases = [
        (
            {"size": "abc"},
            r"Invalid parameter 'size' for 01_first.ipynb. Expected an int, like its default 8. "
            r"Received: size='abc'",
        ),
        ({"size": True}, "Expected an int"),
        ({"size": 2.5}, "Expected an int"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            _run(out, overrides=overrides)
    assert not log.exists() and not out.exists()
    with pytest.raises(
        ValueError,
        match=r"'seeds' for 03_typed.ipynb. Expected a list of int, like its default "
        r"\[42\]. Received: seeds=42",
    ):
        parameters.check_types(typed, {"seeds": 42})
    with pytest.raises(ValueError, match="Expected a list of int"):
        parameters.check_types(typed, {"seeds": [1, "2"]})
    with pytest.raises(ValueError, match=r"Expected a bool \(True or False\)"):
        parameters.check_types(typed, {"flag": 1})


def test_cli_refuses_a_wrongly_typed_parameter_in_one_line(capsys):
    """On the real notebooks and profiles: refused before a kernel starts (the notebook has never run)."""
    from streetlib.cli import commands as cli

    status = cli.main(["run", "--profile", "smoke", "01", "-p", "samples_per_class", "abc"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and "'samples_per_class'" in err and "Expected an int" in err and "'abc'" in err


def test_no_cell_time_limit_unless_asked_and_a_timeout_names_the_cell(setup, capfd):
    nbs, log, out = setup
    _notebook(nbs / "01_first.ipynb", "seconds = 0.0\nname = 'a'\n", "import time\ntime.sleep(seconds)")
    _notebook(nbs / "02_second.ipynb", "size = 8\n", "")
    results = _run(out, overrides={"seconds": 4.0}, cell_timeout=1)
    assert [r.status for r in results] == ["failed"]
    assert results[0].error.startswith("cell [3] (`import time`): no result after the cell time limit of 1 s")
    assert "Traceback" not in capfd.readouterr().err  # the stopped kernel's noise goes to its log
    assert (out / "01_first.kernel.log").is_file()
    # Without a limit the same cell finishes; the next run resumes with the notebook that did not finish.
    assert [r.status for r in _run(out, overrides={"seconds": 4.0})] == ["done", "done"]


def test_a_dead_kernel_ends_as_one_line(setup):
    nbs, log, out = setup
    _notebook(nbs / "02_second.ipynb", "size = 8\n", "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    results = _run(out)
    assert [r.status for r in results] == ["done", "failed"]
    assert results[1].error.startswith("cell [3] (`import os, signal`): the kernel died")
    assert str(out / "02_second.kernel.log") in results[1].error


def test_training_progress_is_reported_while_the_notebook_runs(setup, tmp_path):
    """The kernel appends a line to the progress file, then waits until the runner has reported it: the line must
    reach the terminal while the cell still runs, not when the notebook ends."""
    nbs, log, out = setup
    seen = tmp_path / "seen"
    _notebook(
        nbs / "01_first.ipynb",
        "name = 'a'\n",
        "import os, pathlib, time\n"
        "open(os.environ['STREETLIB_PROGRESS'], 'a').write('exp/run: epoch 1/3, 2 s elapsed\\n')\n"
        f"deadline = time.monotonic() + 60\n"
        f"while not pathlib.Path({str(seen)!r}).exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.1)\n"
        f"assert pathlib.Path({str(seen)!r}).exists()",
    )
    lines = []

    def report(line):
        lines.append(line)
        if "epoch 1/3" in line:
            seen.write_text("")

    results = runner.run(["01"], profile="p", out_dir=out, progress=False, report=report)
    assert [r.status for r in results] == ["done"]
    assert "  exp/run: epoch 1/3, 2 s elapsed" in lines


INTERRUPT_SCRIPT = """
import sys
from streetlib.cli import commands as cli
from streetlib.experiments import runner
runner.PROFILES_FILE = {profiles!r}
runner.paths.notebooks_dir = lambda: __import__("pathlib").Path({nbs!r})
sys.exit(cli.main(["run", "--profile", "p"]))
"""


def _default_sigint():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def test_ctrl_c_ends_as_one_line_and_the_next_run_resumes(setup, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    nbs, log, out = setup
    started = tmp_path / "started"
    _notebook(
        nbs / "02_second.ipynb",
        "size = 8\n",
        f"import pathlib, time\npathlib.Path({str(started)!r}).write_text('')\ntime.sleep(60)",
    )
    script = INTERRUPT_SCRIPT.format(profiles=str(tmp_path / "profiles.yaml"), nbs=str(nbs))
    # A job started in the background of a non-interactive shell (as CI may start the tests) inherits SIGINT
    # ignored, and a library in the test process may block it; either passes to this child. Give it SIGINT as a
    # terminal's foreground job has it: default disposition, unblocked.
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "STREETLIB_ROOT": str(tmp_path / "root")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the runner (the kernel runs in a session of its own)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "INTERRUPTED 02_second.ipynb: cell [3] (`import pathlib, time`): stopped by Ctrl-C" in stderr
    assert "[done] 01_first.ipynb" in stdout
    _notebook(nbs / "02_second.ipynb", "size = 8\n", "")
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path / "root"))
    assert [r.status for r in _run(None)] == ["skipped", "done"]
    assert os.path.exists(tmp_path / "root" / "notebooks" / "executed" / "p" / "02_second.done.json")


def test_run_records_follow_the_output_root(setup, tmp_path, monkeypatch):
    """Issue #22: the skip markers of one output root must not skip notebooks for another (whose data is not made)."""
    nbs, log, _ = setup
    _notebook(
        nbs / "01_first.ipynb",
        "size = 8\nname = 'a'\noutput_root = ''\n",
        f"import os\nopen({str(log)!r}, 'a').write(os.environ['STREETLIB_ROOT'] + '\\n')",
    )
    first, second = tmp_path / "root-a", tmp_path / "root-b"
    monkeypatch.setenv("STREETLIB_ROOT", str(first))
    assert [r.status for r in _run(None, notebooks=["01"])] == ["done"]
    assert (first / "notebooks" / "executed" / "p" / "01_first.done.json").is_file()
    assert [r.status for r in _run(None, notebooks=["01"])] == ["skipped"]
    monkeypatch.setenv("STREETLIB_ROOT", str(second))
    results = _run(None, notebooks=["01"])
    assert [r.status for r in results] == ["done"]
    assert results[0].output == second / "notebooks" / "executed" / "p" / "01_first.ipynb"
    # The notebooks' own output_root parameter moves the records with it; a relative one starts at the notebook.
    results = _run(None, notebooks=["01"], overrides={"output_root": "../root-c"})
    assert results[0].output == tmp_path / "root-c" / "notebooks" / "executed" / "p" / "01_first.ipynb"
    # A record kept elsewhere (out_dir) still tells the roots apart.
    out = tmp_path / "records"
    assert [r.status for r in _run(out, notebooks=["01"])] == ["done"]
    monkeypatch.setenv("STREETLIB_ROOT", str(first))
    assert [r.status for r in _run(out, notebooks=["01"])] == ["done"]
    # The kernel gets the root as an absolute path, whatever its working directory.
    roots = [first, second, tmp_path / "root-c", second, first]
    assert log.read_text().splitlines() == [str(r) for r in roots]


def test_grid_points_get_their_own_variant(setup, tmp_path):
    nbs, log, out = setup
    _notebook(
        nbs / "03_third.ipynb",
        "size = 8\nseeds = [1]\nvariant = ''\n",
        f"open({str(log)!r}, 'a').write(variant + '\\n')",
    )
    grid = tmp_path / "grid.yaml"
    grid.write_text("notebook: 3\ngrid:\n  size: [1, 2]\n  seeds: [[4, 5]]\n")
    assert [r.status for r in _run(out, grid=grid)] == ["done", "done"]
    assert log.read_text().splitlines() == ["size-1__seeds-4-5", "size-2__seeds-4-5"]
    # A variant the grid names itself is kept.
    grid.write_text("notebook: '03'\ngrid:\n  size: [3]\n  variant: [mine]\n")
    assert [r.status for r in _run(out, grid=grid)] == ["done"]
    assert log.read_text().splitlines()[-1] == "mine"


def test_readme_grid_gives_each_combination_its_own_runs(tmp_path):
    """The README's grid on the real notebook 03 and the demo profile: every point names its runs differently."""
    grid = tmp_path / "grid.yaml"
    grid.write_text('notebook: "03"\ngrid: {pooling: [avg, max], split_seeds: [[42], [43]]}\n')
    plans = runner.plan(profile="demo", grid=grid)
    assert [params["variant"] for _, _, params in plans] == [
        "pooling-avg__split_seeds-42",
        "pooling-avg__split_seeds-43",
        "pooling-max__split_seeds-42",
        "pooling-max__split_seeds-43",
    ]
    assert "variant" in parameters.notebook_parameters(runner.find_notebook("04"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("notebook: '01'\ngrid: {size: [1, 2\n", r"grid\.yaml, line 3: not valid YAML \(expected ',' or '\]', but got"),
        (
            "notebook: '01'\ngrid: {size: [1]}\nprofile: demo\n",
            r"unknown key\(s\) \['profile'\].*\['grid', 'notebook'\]",
        ),
        (
            "notebook: '01'\ngrid: {size: [abc]}\n",
            r"Invalid parameter 'size' for 01_first.ipynb \(grid file .*grid\.yaml\)",
        ),
        (
            "notebook: '01'\ngrid: {colour: [red]}\n",
            r"Unknown parameter\(s\) \['colour'\] for 01_first.ipynb \(grid file",
        ),
    ],
)
def test_a_bad_grid_file_is_one_line_naming_it(setup, tmp_path, text, message):
    _, log, out = setup
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        _run(out, grid=grid)
    assert str(grid) in str(err.value) and "\n" not in str(err.value)
    assert not log.exists()


def test_parameter_ranges_are_checked_before_any_kernel_starts(setup):
    nbs, log, out = setup
    _notebook(
        nbs / "03_third.ipynb",
        "samples_per_class = 6\nsplit_seeds = [42]\nweight_sources = ['random']\nlearning_rate = 0.1\n",
        f"open({str(log)!r}, 'a').write('third\\n')",
    )
    cases = [
        (
            {"samples_per_class": 0},
            r"'samples_per_class' for 03_third.ipynb. Expected an int >= 1. Received: samples_per_class=0",
        ),
        ({"split_seeds": []}, r"'split_seeds' for 03_third.ipynb. Expected a non-empty list of ints >= 0"),
        ({"split_seeds": [-1]}, r"Received: split_seeds=\[-1\]"),
        ({"weight_sources": []}, r"'weight_sources' for 03_third.ipynb. Expected a non-empty list"),
        ({"learning_rate": 0}, r"'learning_rate' for 03_third.ipynb. Expected a float > 0"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            _run(out, overrides=overrides)
    assert not log.exists() and not out.exists()
    # The same name may allow other values in another notebook (02's baselines may use no weight source).
    _notebook(nbs / "02_second.ipynb", "weight_sources = ['random']\n", "")
    assert [r.status for r in _run(out, notebooks=["02"], overrides={"weight_sources": []})] == ["done"]


def test_cli_refuses_an_out_of_range_parameter_in_one_line(capsys):
    """On the real notebooks: refused before a kernel starts."""
    from streetlib.cli import commands as cli

    status = cli.main(["run", "--profile", "smoke", "01", "-p", "samples_per_class", "0"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "01_data_exploration.ipynb" in err and "an int >= 1" in err and "samples_per_class=0" in err


_CONCEPT_MARGINS = "a dict of a float > 0 for each of 'share', 'deletion'"


@pytest.mark.parametrize(
    ("number", "name", "value", "expected"),
    [
        ("05", "permuted_epochs", -1, "an int >= 0"),
        ("05", "pointing_tolerance", -0.5, "a float in [0, 224)"),
        ("05", "pointing_tolerance", 224, "a float in [0, 224)"),
        ("05", "concept_target", 1.0, "a float in (0, 1)"),
        ("05", "confirmation_seed", -1, "an int >= 0"),
        ("05", "confirmation_per_class", 0, "an int >= 1"),
        ("05", "method_images", {"rise": 0}, "a dict of method name -> int >= 1"),
        ("05", "margins", {"sanity": 0.0}, "a dict of metric family -> float > 0"),
        ("05", "concept_margins", {"share": 0.05}, _CONCEPT_MARGINS),
        ("05", "concept_margins", {"share": 0.05, "deletion": -1.0}, _CONCEPT_MARGINS),
        ("02", "figure_seeds", [42, -1], "a list of ints >= 0"),
    ],
)
def test_the_notebooks_numeric_parameters_are_refused_out_of_range(number, name, value, expected):
    """On the real notebooks, before a kernel starts: one message naming the notebook, the range and the value."""
    with pytest.raises(ValueError) as err:
        runner.plan([number], profile="smoke", overrides={name: value})
    message = str(err.value)
    assert "\n" not in message and f"Invalid parameter {name!r} for {number}_" in message
    assert f"Expected {expected}" in message and f"Received: {name}={value!r}" in message


def test_the_notebooks_numeric_parameters_accept_their_range():
    overrides = {
        "permuted_epochs": 0,  # as many as the permuted-label model's configuration has
        "pointing_tolerance": 7.5,
        "method_images": {"rise": 4},
        "margins": {"sanity": 0.2},
        "concept_margins": {"share": 0.1, "deletion": 0.01},
        "figure_seeds": [],
    }
    plans = runner.plan(["02", "05"], profile="smoke", overrides=overrides)
    assert plans[1][2]["pointing_tolerance"] == 7.5 and plans[0][2]["figure_seeds"] == []


def test_every_numeric_notebook_parameter_has_a_range():
    """A new numeric parameter (a number, a list of numbers, a dict of numbers) needs its range here too."""

    def numeric(value):
        if isinstance(value, bool):
            return False
        if isinstance(value, (int, float)):
            return True
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        return any(numeric(v) for v in values)

    missing = [
        (nb.stem, name)
        for nb in runner.list_notebooks()
        for name, value in parameters.notebook_parameters(nb).items()
        if numeric(value)
        and ("*", name) not in parameters.PARAMETER_RANGES
        and (nb.stem[:2], name) not in parameters.PARAMETER_RANGES
    ]
    assert missing == []


def test_a_negative_cell_timeout_is_refused_by_the_parser(capsys):
    from streetlib.cli import commands as cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--cell-timeout", "-1", "--profile", "no-such-profile"])
    assert exc.value.code == 2
    assert "--cell-timeout: expected a number > 0, not '-1'" in capsys.readouterr().err


def test_sigterm_ends_as_one_line_shuts_the_kernel_and_the_next_run_resumes(setup, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    nbs, log, out = setup
    pid_file = tmp_path / "kernel.pid"
    _notebook(
        nbs / "02_second.ipynb",
        "size = 8\n",
        f"import os, pathlib, time\npathlib.Path({str(pid_file)!r}).write_text(str(os.getpid()))\ntime.sleep(60)",
    )
    script = INTERRUPT_SCRIPT.format(profiles=str(tmp_path / "profiles.yaml"), nbs=str(nbs))
    env = {**os.environ, "STREETLIB_ROOT": str(tmp_path / "root")}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not pid_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # the pid is written: the cell runs
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert "INTERRUPTED 02_second.ipynb: cell [3] (`import os, pathlib, time`): stopped by SIGTERM" in stderr
    kernel = int(pid_file.read_text())
    deadline = time.monotonic() + 30  # a loaded machine may take a while to shut the kernel down
    while time.monotonic() < deadline:
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"the kernel {kernel} still runs")
    _notebook(nbs / "02_second.ipynb", "size = 8\n", "")
    monkeypatch.setenv("STREETLIB_ROOT", str(tmp_path / "root"))
    assert [r.status for r in _run(None)] == ["skipped", "done"]


def test_shared_parameters_have_one_default_in_every_notebook():
    # The numbered notebooks run alone on Colab with their own defaults: the data, the split seeds, the source the
    # study's questions ask about and the fine-tuning boundary must be the same wherever they appear.
    defaults = {nb.stem: parameters.notebook_parameters(nb) for nb in runner.list_notebooks()}
    for name in parameters.SHARED_PARAMETERS:
        values = {stem: params[name] for stem, params in defaults.items() if name in params}
        assert len({json.dumps(v) for v in values.values()}) == 1, f"{name}: {values}"
    # Questions 1 and 2 of notebook 06 ask about runs that notebooks 03 and 04 make with their defaults.
    assert defaults["06_results"]["pretrained_source"] in defaults["03_pretrained_comparison"]["weight_sources"]
    assert defaults["06_results"]["finetune_from"] == defaults["04_fine_tuning"]["finetune_from"]


@pytest.mark.parametrize("profile", ["smoke", "demo", "layout", "full"])
def test_every_profile_resolves_and_gives_every_notebook_the_same_shared_values(profile):
    loaded = runner.load_profile(profile)
    resolved = {nb.stem: runner.resolve_parameters(nb, loaded, {}) for nb in runner.list_notebooks()}
    defaults = {nb.stem: parameters.notebook_parameters(nb) for nb in runner.list_notebooks()}
    for name in parameters.SHARED_PARAMETERS:
        values = {
            stem: {**defaults[stem], **params}[name] for stem, params in resolved.items() if name in defaults[stem]
        }
        assert len({json.dumps(v) for v in values.values()}) == 1, f"{profile}, {name}: {values}"
    if profile == "full":  # notebook 00 reads the photographs it is pointed at, it does not generate the demo's
        assert resolved["00_dataset"]["source"] == "street10"


def test_a_shared_parameter_set_for_one_notebook_is_refused(setup, tmp_path, monkeypatch):
    nbs, _, _ = setup
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("p:\n  notebooks:\n    01_first: {image_size: 64}\n")
    _notebook(nbs / "01_first.ipynb", "image_size = 224\n", "pass")
    with pytest.raises(ValueError, match=r"\['image_size'\] are set for 01_first.ipynb alone.*set them under `all`"):
        runner.resolve_parameters(nbs / "01_first.ipynb", runner.load_profile("p"), {})


@pytest.mark.slow
def test_a_colab_disconnect_mid_epoch_resumes_with_the_same_command(tmp_path, monkeypatch):
    # What a Colab disconnect does: the kernel dies mid-epoch (SIGKILL: no handler, no clean-up) while the outputs
    # live elsewhere (the Drive folder given as output_root). The same command then resumes the training run.
    import signal
    import threading
    import time

    import psutil

    # The smoke data's epochs take milliseconds on cached features: enough of them that the kill lands mid-run.
    epochs = 60
    root = tmp_path / "drive"
    monkeypatch.setattr(runner.paths, "notebooks_dir", lambda: runner.PROFILES_FILE.parents[2] / "notebooks")
    overrides = {"output_root": str(root), "epochs": epochs, "weight_sources": ["random"], "split_seeds": [42]}
    command = dict(profile="smoke", overrides=overrides, progress=False, report=lambda line: None)
    progress = root / "notebooks" / "executed" / "smoke" / "03_pretrained_comparison.progress.log"
    run_dir = root / "hists" / "synth-smoke" / "03-pretrained"

    def kill_the_kernel_after_epoch_2():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if progress.is_file() and f"epoch 2/{epochs}" in progress.read_text():
                for child in psutil.Process().children(recursive=True):
                    if "ipykernel" in " ".join(child.cmdline()):
                        child.send_signal(signal.SIGKILL)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_kernel_after_epoch_2, daemon=True)
    killer.start()
    first = runner.run(["00", "03"], **command)
    killer.join()
    assert [r.status for r in first] == ["done", "failed"] and "the kernel died" in first[1].error
    killed = json.loads((run_dir / "random-transfer-seed42.json").read_text())
    assert killed["status"] == "running", "the kill came after training ended: the test needs more epochs"

    again = runner.run(["00", "03"], **command)
    assert [r.status for r in again] == ["skipped", "done"]
    manifest = json.loads((run_dir / "random-transfer-seed42.json").read_text())
    assert manifest["status"] == "complete" and 2 <= manifest["resumed_at_epochs"][0] < epochs  # not from the start
    history = (run_dir / "random-transfer-seed42.csv").read_text()
    assert [int(line.split(",")[0]) for line in history.splitlines()[1:]] == list(range(epochs))  # every epoch once
