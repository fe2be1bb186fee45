import numpy as np
import pytest
import yaml

from streetlib.classes import STREET10, SYNTH10, ClassSpec, get_class_spec


def test_street10_default_order_and_regions():
    assert STREET10.classes[:5] == ("london", "moscow", "nyc", "paris", "vancouver")
    assert STREET10.classes[5:] == ("beijing", "kyoto", "seoul", "singapore", "tokyo")
    assert STREET10.region_names == ("western", "eastern")
    np.testing.assert_array_equal(STREET10.region_of_class, [0] * 5 + [1] * 5)


def test_class_names_of_each_output():
    assert STREET10.class_names("region") == ["western", "eastern"]
    assert STREET10.class_names("city") == list(STREET10.classes)
    with pytest.raises(ValueError, match=r"Invalid `output`. Expected one of \('region', 'city'\)"):
        STREET10.class_names("country")


def test_synthetic_names_are_not_city_names():
    assert not set(SYNTH10.classes) & set(STREET10.classes)
    assert all(c.startswith("synth-") for c in SYNTH10.classes)
    assert SYNTH10.num_classes == 10 and SYNTH10.num_regions == 2


def test_yaml_round_trip_keeps_order(tmp_path):
    path = tmp_path / "cities.yaml"
    path.write_text("name: mine\nregions:\n  north: [oslo, helsinki]\n  south: [lisbon]\n")
    spec = get_class_spec(str(path))
    assert spec.name == "mine"
    assert spec.classes == ("oslo", "helsinki", "lisbon")
    np.testing.assert_array_equal(spec.region_of_class, [0, 0, 1])
    spec.to_yaml(tmp_path / "again.yaml")
    assert ClassSpec.from_yaml(tmp_path / "again.yaml") == spec


@pytest.mark.parametrize(
    "doc, match",
    [
        ({"name": "x", "regions": {"a": ["p", "p"]}}, "unique.*'p' \\(under 'a', 'a'\\)"),
        ({"name": "x", "regions": {"a": ["p"]}}, "at least 2 classes"),
        ({"name": "x", "regions": {"a": []}}, "at least one class"),
        ({"name": "x"}, "regions"),
        ({"name": "x", "regions": {"a": ["p", "../q"]}}, "plain file name"),
    ],
)
def test_invalid_specs_are_refused(doc, match):
    with pytest.raises(ValueError, match=match):
        ClassSpec.from_dict(doc)


def test_unknown_spec_name_lists_choices(tmp_path):
    with pytest.raises(ValueError, match="street10.*synth10.*Received: classes='strret10'"):
        get_class_spec("strret10")
    with pytest.raises(FileNotFoundError, match="Class spec file not found"):
        get_class_spec(str(tmp_path / "missing.yaml"))


def test_classes_in_region():
    assert STREET10.classes_in("eastern")[0] == "beijing"
    with pytest.raises(ValueError, match="Unknown region 'asia'"):
        STREET10.classes_in("asia")


@pytest.mark.parametrize(
    "text, where, problem",
    [
        ("name: x\nregions:\n\twestern: [a, b]\n", "line 3, column 1", "found character '\\t'"),
        ("name: x\nregions: {western: [a, b]\n", "line 3, column 1", "expected ',' or '}'"),
        ("!!python/object:os.system\nname: x\n", "line 1, column 1", "python/object"),
    ],
)
def test_malformed_yaml_names_the_file_line_and_fix(tmp_path, text, where, problem):
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        get_class_spec(path)
    assert not isinstance(info.value, yaml.YAMLError)
    message = str(info.value)
    assert message.startswith(f"Invalid class spec file {path}: {where}: ")
    assert problem in message and "\n" not in message
    assert "Fix the YAML" in message and "'street10' or 'synth10'" in message


def test_class_listed_twice_names_file_class_and_regions(tmp_path):
    path = tmp_path / "cities.yaml"
    path.write_text("name: mine\nregions:\n  west: [paris, oslo]\n  east: [hanoi, paris, oslo, oslo]\n")
    with pytest.raises(ValueError) as info:
        ClassSpec.from_yaml(path)
    message = str(info.value)
    assert message.startswith(f"Invalid class spec in {path}: ")
    assert "'oslo' (under 'west', 'east', 'east')" in message
    assert "'paris' (under 'west', 'east')" in message
    assert "'hanoi'" not in message
