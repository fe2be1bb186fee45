"""Declared constraints for frozen configuration objects, checked in one place (scikit-learn's
``_parameter_constraints`` is the model).

A configuration class lists, per field, the constraints a value may satisfy (any one of them); `validate_parameters`
checks an instance once, in ``__post_init__``, and names the first field that fits none, with what was expected;
`validate` does the same for a function's parameters.
A constraint is None (the value None), ``bool`` or ``str`` (an instance of it), or an object with
``is_satisfied_by(value)`` and a ``__str__`` that says what it expects: `Interval`, `Options`, `Keys`, `Items`.
Used by `streetlib.training.config.RunConfig` and ``ExecutionConfig``, `streetlib.baselines.grid.BaselineGridConfig`
and `streetlib.attribution.leaderboard.LeaderboardConfig`.
"""

import numbers
import os


class Interval:
    """Numbers of a type (int or float) within bounds; None for an open side.

    Args:
        kind: `numbers.Integral` or `numbers.Real`.
        left, right: the bounds, or None.
        closed: 'both', 'left', 'right' or 'neither'.
    """

    def __init__(self, kind, left, right, *, closed):
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def is_satisfied_by(self, value):
        if isinstance(value, bool) or not isinstance(value, self.kind):
            return False
        left_closed = self.closed in ("left", "both")
        right_closed = self.closed in ("right", "both")
        if self.left is not None and (value < self.left or (value == self.left and not left_closed)):
            return False
        return self.right is None or value < self.right or (value == self.right and right_closed)

    def __str__(self):
        kind = "an int" if self.kind is numbers.Integral else "a float"
        if self.right is None:
            return f"{kind} {'>=' if self.closed in ('left', 'both') else '>'} {self.left}"
        brackets = {"both": "[]", "left": "[)", "right": "(]", "neither": "()"}[self.closed]
        return f"{kind} in {brackets[0]}{self.left}, {self.right}{brackets[1]}"


class Options:
    """One of a fixed set of values."""

    def __init__(self, values):
        self.values = tuple(values)

    def is_satisfied_by(self, value):
        return isinstance(value, str) and value in self.values

    def __str__(self):
        return f"one of {list(self.values)}"


class Keys:
    """A dict whose keys are among ``allowed`` (or exactly ``allowed``, with ``exact``). ``allowed`` is read at each
    check, not copied, so a registry that grows (a method registered after import) is checked as it is then."""

    def __init__(self, allowed, *, exact=False):
        self.allowed, self.exact = allowed, exact

    def is_satisfied_by(self, value):
        if not isinstance(value, dict):
            return False
        return set(value) == set(self.allowed) if self.exact else set(value) <= set(self.allowed)

    def __str__(self):
        return f"a dict with {'a value for each of' if self.exact else 'keys among'} {list(self.allowed)}"


def _satisfied(constraint, value):
    if constraint is None:
        return value is None
    if constraint in (bool, str, os.PathLike):
        return isinstance(value, constraint)
    return constraint.is_satisfied_by(value)


def _describe(constraint):
    return {None: "None", bool: "a bool", str: "a str", os.PathLike: "a path"}.get(constraint) or str(constraint)


def validate(values, constraints):
    """Check named values against their constraints: ``values`` maps a name to its value, ``constraints`` a name to
    the list of constraints it may satisfy (any one of them). For the parameters of a function.

    Raises:
        ValueError: naming the first value that matches none of its constraints.
    """
    for name, allowed in constraints.items():
        value = values[name]
        if not any(_satisfied(c, value) for c in allowed):
            expected = " or ".join(_describe(c) for c in allowed)
            raise ValueError(f"Invalid `{name}`. Expected {expected}. Received: {name}={value!r}")


def validate_parameters(owner):
    """Check every field of a dataclass instance against its class's ``_parameter_constraints`` (see `validate`).

    Raises:
        ValueError: naming the first field whose value matches none of its constraints.
    """
    fields = owner._parameter_constraints
    validate({name: getattr(owner, name) for name in fields}, fields)


class Items:
    """A constraint for `validate_parameters`: a list or tuple (never a str) whose items are each one of ``values``
    or pass ``test``; non-empty with ``nonempty``. ``text`` says what is expected, in the error."""

    def __init__(self, text, *, values=None, test=None, nonempty=False):
        self.text, self.values, self.test, self.nonempty = text, values, test, nonempty

    def _ok(self, item):
        return item in self.values if self.values is not None else self.test(item)

    def is_satisfied_by(self, value):
        if not isinstance(value, (list, tuple)) or (self.nonempty and not value):
            return False
        return all(self._ok(item) for item in value)

    def __str__(self):
        return self.text
