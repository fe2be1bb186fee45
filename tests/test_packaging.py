"""The install files must agree: pyproject pins, environment.yml and the full lock file."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def _pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    return _pins(deps)


def test_every_dependency_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert len(_pyproject_pins()) == len(project["dependencies"]) + len(project["optional-dependencies"]["test"])


def test_environment_yml_matches_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == _pyproject_pins()


def test_lock_file_agrees_with_pyproject():
    lock = _pins((ROOT / "requirements.lock").read_text().splitlines())
    for name, version in _pyproject_pins().items():
        assert lock.get(name) == version, f"{name}: pyproject {version}, requirements.lock {lock.get(name)}"


def test_readme_has_exactly_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)", block, flags=re.M)
    assert commands == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
