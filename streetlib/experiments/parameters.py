"""The notebooks' parameters: what a parameters cell declares, the parameters every notebook shares, and the types
and ranges a value must have, checked before any kernel starts (`check_types`, `check_ranges`).

The notebooks' configurations check their values again, but only after a kernel has started and loaded the data;
these checks refuse a bad ``-p NAME VALUE``, profile entry or grid point with one message first. No TensorFlow here:
`streetlib run` stays light.
"""

import ast
import json
import numbers
from pathlib import Path

from streetlib.constraints import Interval, Items

_POSITIVE = Interval(numbers.Integral, 1, None, closed="left")
_NATURAL = Interval(numbers.Integral, 0, None, closed="left")
_COUNTS = Items("a non-empty list of ints >= 0", test=_NATURAL.is_satisfied_by, nonempty=True)
_NAMES = Items("a non-empty list of names", test=lambda v: isinstance(v, str) and v != "", nonempty=True)
_MARGIN = Interval(numbers.Real, 0, None, closed="neither")


class _Values:
    """A constraint (see `streetlib.constraints`): a dict whose values each satisfy ``constraint``, with exactly the
    keys ``keys`` when given (else the keys are left to the notebook, which knows the registry they name). ``text``
    says what is expected, in the error."""

    def __init__(self, text, constraint, *, keys=None):
        self.text, self.constraint, self.keys = text, constraint, keys

    def is_satisfied_by(self, value):
        if not isinstance(value, dict) or (self.keys is not None and set(value) != set(self.keys)):
            return False
        return all(self.constraint.is_satisfied_by(v) for v in value.values())

    def __str__(self):
        return self.text


# Parameters that mean one thing in every notebook that has them: the data, how it is split, the pretrained source the
# study's questions ask about, the fine-tuning boundary, the margin within which two accuracies are equivalent, where
# outputs go. Their notebook defaults are equal (a test checks it), and a profile sets them under `all`, never for one
# notebook, so no two notebooks of a run disagree.
SHARED_PARAMETERS = (
    "data_dir",
    "classes",
    "image_size",
    "split_seeds",
    "finetune_from",
    "pretrained_source",
    "equivalence_margin",
    "colab_install",
    "output_root",
)

# The ranges of notebook parameters, checked before any kernel starts. The notebooks' configurations check them
# again, but only after a kernel has started and loaded the data, and an empty list fails deep inside pandas.
# ("*", name) holds in every notebook with that parameter; ("NN", name) in notebook NN only, instead of ("*", name).
# Names from registries in Keras modules (weight sources, poolings, optimizers) are left to the notebooks: this
# module does not import Keras.
PARAMETER_RANGES = {
    ("*", "image_size"): [_POSITIVE],
    ("*", "per_class"): [_POSITIVE],
    ("*", "replicates"): [_POSITIVE],
    ("*", "samples_per_class"): [_POSITIVE],
    ("*", "split_seed"): [_NATURAL],
    ("*", "split_seeds"): [_COUNTS],
    ("*", "synth_seed"): [_NATURAL],
    ("*", "init_seed"): [_NATURAL],
    ("*", "epochs"): [_POSITIVE],
    ("*", "batch_size"): [_POSITIVE],
    ("*", "filters"): [_POSITIVE],
    ("*", "dropout"): [Interval(numbers.Real, 0, 1, closed="left")],
    ("*", "learning_rate"): [Interval(numbers.Real, 0, None, closed="neither")],
    ("*", "early_stopping"): [_NATURAL],
    ("*", "scratch_epochs"): [_NATURAL],
    # Notebooks 03 and 04: augmented copies of the training set; 02: a list of such counts, 0 for none.
    ("*", "augment_copies"): [_POSITIVE, _COUNTS],
    ("*", "weight_sources"): [_NAMES],
    # Notebook 02 may fit its floors alone, without a network.
    ("02", "weight_sources"): [Items("a list of names", test=lambda v: isinstance(v, str) and v != "")],
    ("*", "poolings"): [_NAMES],
    ("*", "classifiers"): [_NAMES],
    ("*", "max_images"): [_POSITIVE],
    ("*", "randomization_images"): [_POSITIVE],
    ("*", "leaderboard_images"): [_POSITIVE],
    ("*", "control_images"): [_POSITIVE],
    ("*", "curve_steps"): [_POSITIVE],
    ("*", "n_concepts"): [_POSITIVE],
    ("*", "concept_images"): [_NATURAL],
    ("*", "equivalence_margin"): [_MARGIN],
    # Notebook 02: the seeds whose confusion figures are drawn; empty: the first split seed.
    ("*", "figure_seeds"): [Items("a list of ints >= 0", test=_NATURAL.is_satisfied_by)],
    # Notebook 05. The tolerance is in pixels at 224 px; the leaderboard takes it as a fraction of the side, in [0, 1).
    ("*", "pointing_tolerance"): [Interval(numbers.Real, 0, 224, closed="left")],
    # 0: as many epochs as the permuted-label model's configuration has.
    ("*", "permuted_epochs"): [_NATURAL],
    ("*", "method_images"): [_Values("a dict of method name -> int >= 1", _POSITIVE)],
    ("*", "margins"): [_Values("a dict of metric family -> float > 0", _MARGIN)],
    ("*", "concept_target"): [Interval(numbers.Real, 0, 1, closed="neither")],
    ("*", "concept_margins"): [
        _Values("a dict of a float > 0 for each of 'share', 'deletion'", _MARGIN, keys=("share", "deletion"))
    ],
    ("*", "confirmation_seed"): [_NATURAL],
    ("*", "confirmation_per_class"): [_POSITIVE],
}


def notebook_parameters(notebook):
    """The parameters cell of a notebook: dict name -> default value (plain literals).

    Raises:
        ValueError: no cell tagged 'parameters', or a parameter that is not a plain literal.
    """
    nb = json.loads(Path(notebook).read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook} must have exactly one cell tagged 'parameters'; it has {len(cells)}.")
    source = "".join(cells[0]["source"])
    params = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{notebook}: the parameters cell must hold only `name = literal` lines.")
        try:
            params[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError as err:
            raise ValueError(f"{notebook}: parameter {node.targets[0].id!r} is not a plain literal.") from err
    return params


def _describe_type(default):
    """What a value must be to replace ``default``: 'an int', 'a list of str', ..."""
    if isinstance(default, list):
        kinds = {_describe_type(v) for v in default}
        return f"a list of {kinds.pop().split(' ', 1)[1]}" if len(kinds) == 1 else "a list"
    names = {bool: "a bool (True or False)", int: "an int", float: "a number", str: "a str", dict: "a dict"}
    return names.get(type(default), "a " + type(default).__name__)


def _matches(value, default):
    if default is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, list):
        kinds = {type(v) for v in default}
        # An empty default, or one of mixed kinds, says nothing about the elements.
        return isinstance(value, list) and (len(kinds) != 1 or all(_matches(v, default[0]) for v in value))
    return type(value) is type(default)


def _invalid(notebook, name, value, expected, where):
    source = f" ({where})" if where else ""
    return ValueError(
        f"Invalid parameter {name!r} for {Path(notebook).name}{source}. Expected {expected}. Received: {name}={value!r}"
    )


def check_types(notebook, params, *, where=""):
    """Every value must have the type of the notebook's default for that name (an int for an int, a number for a
    float, a list of str for a list of str...); a default of None accepts anything.

    Args:
        notebook: path of the notebook.
        params: dict of parameters.
        where: str, where the parameters come from (e.g. 'grid file grid.yaml') for the message, or ''.

    Raises:
        ValueError: naming the notebook, the parameter, the expected type and the received value.
    """
    defaults = notebook_parameters(notebook)
    for name, value in params.items():
        if name in defaults and not _matches(value, defaults[name]):
            expected = f"{_describe_type(defaults[name])}, like its default {defaults[name]!r}"
            raise _invalid(notebook, name, value, expected, where)


def check_ranges(notebook, params, *, where=""):
    """Every value with a declared range (`PARAMETER_RANGES`) must be within it.

    Args:
        notebook: path of the notebook (its number picks the notebook's own ranges).
        params: dict of parameters, of the right types (see `check_types`).
        where: str, where the parameters come from for the message, or ''.

    Raises:
        ValueError: naming the notebook, the parameter, the allowed range and the received value.
    """
    number = Path(notebook).stem.split("_", 1)[0]
    for name, value in params.items():
        constraints = PARAMETER_RANGES.get((number, name)) or PARAMETER_RANGES.get(("*", name), [])
        if constraints and not any(c.is_satisfied_by(value) for c in constraints):
            raise _invalid(notebook, name, value, " or ".join(str(c) for c in constraints), where)


def check_overrides(notebooks, overrides):
    """Every override must be a parameter of at least one of the notebooks to run."""
    known = set().union(*(notebook_parameters(nb) for nb in notebooks))
    unknown = sorted(set(overrides) - known)
    if unknown:
        names = ", ".join(nb.name for nb in notebooks)
        raise ValueError(f"Unknown parameter(s) {unknown} for {names}. Valid names: {sorted(known)}.")


def parse_value(text):
    """A ``-p NAME VALUE`` value: a Python literal when it parses as one (3, 0.5, True, [1, 2]), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
