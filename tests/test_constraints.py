"""Tests of streetlib.constraints: each constraint's edges and the one error validate_parameters raises."""

import numbers
from dataclasses import dataclass
from typing import ClassVar

import pytest

from streetlib.constraints import Interval, Items, Keys, Options, validate_parameters


def test_interval_bounds_types_and_closed_sides():
    unit = Interval(numbers.Real, 0, 1, closed="left")
    assert unit.is_satisfied_by(0) and unit.is_satisfied_by(0.5) and not unit.is_satisfied_by(1)
    assert not unit.is_satisfied_by(True)  # a bool is not a number here, though Python says it is an int
    count = Interval(numbers.Integral, 1, None, closed="left")
    assert count.is_satisfied_by(10**9) and not count.is_satisfied_by(0) and not count.is_satisfied_by(2.0)
    assert str(unit) == "a float in [0, 1)" and str(count) == "an int >= 1"
    assert str(Interval(numbers.Real, 0, None, closed="neither")) == "a float > 0"


def test_options_keys_and_items():
    assert Options(["adam", "sgd"]).is_satisfied_by("sgd") and not Options(["adam"]).is_satisfied_by(["adam"])
    assert Keys(["region", "city"]).is_satisfied_by({"city": 1}) and not Keys(["region"]).is_satisfied_by({"x": 1})
    assert not Keys(["region", "city"], exact=True).is_satisfied_by({"city": 1})
    names = Items("a list of names", values=("a", "b"), nonempty=True)
    assert names.is_satisfied_by(("a", "b")) and names.is_satisfied_by(["a"])
    assert not names.is_satisfied_by([]) and not names.is_satisfied_by("a") and not names.is_satisfied_by(["c"])
    assert Items("ints", test=lambda v: isinstance(v, int)).is_satisfied_by([])


@dataclass(frozen=True)
class _Config:
    rate: float = 0.1
    mode: str | None = None
    _parameter_constraints: ClassVar[dict] = {
        "rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "mode": [None, Options(["fast", "slow"])],
    }

    def __post_init__(self):
        validate_parameters(self)


def test_validate_parameters_names_the_first_field_that_fits_no_constraint():
    _Config(rate=2, mode="fast")
    _Config(mode=None)
    with pytest.raises(ValueError, match=r"^Invalid `rate`. Expected a float > 0. Received: rate=0$"):
        _Config(rate=0, mode="medium")
    with pytest.raises(ValueError, match=r"Invalid `mode`. Expected None or one of \['fast', 'slow'\]"):
        _Config(mode="medium")
