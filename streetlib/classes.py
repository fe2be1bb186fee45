"""The class specification: ordered class (city) names and the region each belongs to.

A `ClassSpec` fixes the index of every city and region, so labels, model outputs, histories and figures all
agree. The Street10 default follows the original study; any other set of cities comes from a small YAML file::

    name: my-cities
    regions:
      western: [lisbon, oslo]
      eastern: [hanoi, osaka]
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

# The model's outputs, in order: every label dict, prediction dict and results table is keyed by them.
OUTPUTS = ("region", "city")


@dataclass(frozen=True)
class ClassSpec:
    """Ordered classes and their regions.

    Args:
        name: str, a short name for this set of classes (used in file names and figure titles).
        classes: tuple of str, class (city) names in label order.
        regions: tuple of str, the region of each class, same length as ``classes``.
        region_names: tuple of str, region names in label order; every entry of ``regions`` must be one of them.
    """

    name: str
    classes: tuple
    regions: tuple
    region_names: tuple

    def __post_init__(self):
        if len(self.classes) < 2:
            raise ValueError(f"A class spec needs at least 2 classes. Received: classes={list(self.classes)}")
        if len(set(self.classes)) != len(self.classes):
            dupes = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"Class names must be unique. Repeated: {dupes}")
        if len(self.regions) != len(self.classes):
            raise ValueError(
                f"`regions` must give one region per class: {len(self.classes)} classes, {len(self.regions)} regions."
            )
        unknown = sorted(set(self.regions) - set(self.region_names))
        if unknown:
            raise ValueError(f"Regions {unknown} are not in region_names={list(self.region_names)}.")
        for c in self.classes:
            if not c or "/" in c or c.startswith("."):
                raise ValueError(f"Invalid class name {c!r}: it must be a plain file name (no '/', not hidden).")

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def num_regions(self):
        return len(self.region_names)

    @property
    def region_of_class(self):
        """int64 `(num_classes,)`: the region index of each class index."""
        return np.array([self.region_names.index(r) for r in self.regions], dtype=np.int64)

    def class_names(self, output):
        """Class names of one output, in label order: ``region_names`` for 'region', ``classes`` for 'city'.

        Args:
            output: str, one of `OUTPUTS`.

        Returns:
            list of str.
        """
        if output == "region":
            return list(self.region_names)
        if output == "city":
            return list(self.classes)
        raise ValueError(f"Invalid `output`. Expected one of {OUTPUTS}. Received: output={output!r}")

    def classes_in(self, region):
        """Class names of one region, in label order."""
        if region not in self.region_names:
            raise ValueError(f"Unknown region {region!r}. Expected one of {list(self.region_names)}.")
        return [c for c, r in zip(self.classes, self.regions, strict=True) if r == region]

    def to_dict(self):
        return {"name": self.name, "regions": {r: self.classes_in(r) for r in self.region_names}}

    @classmethod
    def from_dict(cls, d, *, source="dict"):
        """Build from ``{"name": str, "regions": {region: [class, ...], ...}}``; class order follows the mapping."""
        if not isinstance(d, dict) or not isinstance(d.get("regions"), dict) or not d["regions"]:
            raise ValueError(
                f"Invalid class spec in {source}: expected a mapping with `name` and `regions: {{region: [classes]}}`."
            )
        classes, regions = [], []
        for region, members in d["regions"].items():
            if not isinstance(members, list) or not members:
                raise ValueError(f"Invalid class spec in {source}: region {region!r} must list at least one class.")
            classes += [str(m) for m in members]
            regions += [str(region)] * len(members)
        _check_listed_once(classes, regions, source)
        return cls(
            name=str(d.get("name", Path(str(source)).stem)),
            classes=tuple(classes),
            regions=tuple(regions),
            region_names=tuple(str(r) for r in d["regions"]),
        )

    @classmethod
    def from_yaml(cls, path):
        """Read a class spec YAML file (see the module docstring).

        Args:
            path: str or Path.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not valid YAML (the message gives the line and column when YAML does), or not
                a valid class spec.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Class spec file not found: {path}. Pass an existing YAML file or 'street10'.")
        try:
            doc = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ValueError(
                f"Invalid class spec file {path}: {_describe_yaml_error(err)}. Fix the YAML (indent with spaces, not "
                f"tabs; plain mappings and lists, no '!!' tags), or use the built-in spec 'street10' or 'synth10'."
            ) from err
        return cls.from_dict(doc, source=str(path))

    def to_yaml(self, path):
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _check_listed_once(classes, regions, source):
    """Raise a ValueError naming ``source``, every class listed more than once and the regions it is listed under.

    Args:
        classes: list of str, class names in listing order.
        regions: list of str, the region each entry of ``classes`` is listed under.
        source: str, where the spec came from (a file path, or "dict").
    """
    listed = {}
    for c, r in zip(classes, regions, strict=True):
        listed.setdefault(c, []).append(r)
    repeated = {c: rs for c, rs in listed.items() if len(rs) > 1}
    if not repeated:
        return
    detail = ", ".join(f"{c!r} (under {', '.join(map(repr, rs))})" for c, rs in repeated.items())
    raise ValueError(
        f"Invalid class spec in {source}: class names must be unique. Listed more than once: {detail}. List each "
        f"class once, under the one region it belongs to."
    )


def _describe_yaml_error(err):
    """'line L, column C: problem (context)' from a YAML error, without the excerpt of its input that YAML appends
    (it names "<unicode string>", not the file)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if problem is None:
        return str(err).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(err, "context", None)
    return where + problem + (f" ({context})" if context else "")


STREET10 = ClassSpec.from_dict(
    {
        "name": "street10",
        "regions": {
            "western": ["london", "moscow", "nyc", "paris", "vancouver"],
            "eastern": ["beijing", "kyoto", "seoul", "singapore", "tokyo"],
        },
    }
)
# The published Street10's images per class, in `STREET10.classes` order (4,151 in all): what a plan assumes when the
# files are not there yet, and the size of the benchmarks' Street10-like data.
STREET10_COUNTS = (482, 379, 503, 436, 354, 434, 553, 353, 275, 382)

SYNTH10 = ClassSpec.from_dict(
    {
        "name": "synth10",
        "regions": {
            "synth-west": [f"synth-w{i}" for i in range(1, 6)],
            "synth-east": [f"synth-e{i}" for i in range(1, 6)],
        },
    }
)

BUILTIN_SPECS = {"street10": STREET10, "synth10": SYNTH10}


def get_class_spec(spec):
    """Resolve a class spec from a `ClassSpec`, a built-in name ('street10', 'synth10') or a YAML path."""
    if isinstance(spec, ClassSpec):
        return spec
    if isinstance(spec, str) and spec in BUILTIN_SPECS:
        return BUILTIN_SPECS[spec]
    if isinstance(spec, (str, Path)) and Path(spec).suffix in (".yaml", ".yml"):
        return ClassSpec.from_yaml(spec)
    raise ValueError(
        f"Invalid `classes`. Expected a ClassSpec, one of {sorted(BUILTIN_SPECS)} or a path to a .yaml file. "
        f"Received: classes={spec!r}"
    )
