"""The install files must agree: pyproject's dependency ranges, the pins of requirements.lock (what `make` installs),
of requirements-floor.txt (the oldest stack tested, `make test-floor`) and of environment.yml."""

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# Tools whose versions change what `make test` reports (formatting, contract checks): pinned exactly, not a range.
EXACT_TOOLS = {"ruff", "import-linter"}


def _pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def _project():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(*, extras=True):
    project = _project()
    deps = list(project["dependencies"])
    if extras:
        deps += [d for group in project["optional-dependencies"].values() for d in group]
    return [Requirement(d) for d in deps]


def _file_pins(name):
    return _pins((ROOT / name).read_text().splitlines())


def _bounds(req):
    return {s.operator: Version(s.version) for s in req.specifier}


def test_every_dependency_is_a_bounded_range():
    # Exact pins would make pip replace an existing TensorFlow / numpy / pandas (Colab's) on install (issue #23).
    for req in _requirements():
        if canonicalize_name(req.name) in EXACT_TOOLS:
            assert {s.operator for s in req.specifier} == {"=="}, req
            continue
        assert set(_bounds(req)) == {">=", "<"}, f"{req}: want a floor (>=) and a ceiling (<)"
        assert _bounds(req)[">="] < _bounds(req)["<"], req


@pytest.mark.parametrize("pin_file", ["requirements.lock", "requirements-floor.txt"])
def test_pins_fall_inside_the_ranges(pin_file):
    pins = _file_pins(pin_file)
    for req in _requirements():
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is not pinned in {pin_file}"
        assert req.specifier.contains(pin, prereleases=True), f"{req.name}=={pin} ({pin_file}) is outside {req}"


def test_the_declared_floor_is_the_tested_floor():
    # A floor lower than requirements-floor.txt's pin would promise versions that `make test-floor` never ran.
    floor = _file_pins("requirements-floor.txt")
    for req in _requirements():
        bounds = _bounds(req)
        if ">=" not in bounds:
            continue
        lower = bounds[">="].release
        assert Version(floor[canonicalize_name(req.name)]).release[: len(lower)] == lower, (
            f"{req}: requirements-floor.txt tests {floor[canonicalize_name(req.name)]}"
        )


def test_floor_stack_is_colabs_mid_2025_stack():
    floor = _file_pins("requirements-floor.txt")
    colab = {"tensorflow": "2.19", "keras": "3.10", "numpy": "2.0", "pandas": "2.2", "scikit-learn": "1.6"}
    for name, minor in colab.items():
        assert floor[name].startswith(minor + "."), (name, floor[name])


def test_installed_versions_fall_inside_the_ranges():
    # Whichever venv runs the tests (the lock's, the floor's, a Python 3.13 one), it is a stack the ranges admit.
    for req in _requirements():
        version = importlib.metadata.version(req.name)
        assert req.specifier.contains(version, prereleases=True), f"installed {req.name} {version} is outside {req}"


def test_environment_yml_pins_the_lock_versions():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = _pins(next(d["pip"] for d in env["dependencies"] if isinstance(d, dict)))
    lock = _file_pins("requirements.lock")
    assert set(pip) == {canonicalize_name(r.name) for r in _requirements()}
    assert pip == {name: lock[name] for name in pip}


def test_readme_has_exactly_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)", block, flags=re.M)
    assert commands == ["make demo", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    # CI runs the README's test command on the lock, then the same tests on the oldest stack the ranges admit.
    assert ci.index("make test\n") < ci.index("make test-floor")
