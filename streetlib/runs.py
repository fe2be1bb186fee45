"""What a training run is called and where its files go: `RunId` and `RunLayout`.

A run is identified by its experiment (a folder under ``hists/``, ``models/`` and ``figs/``), its configuration
name (with a variant's suffix, see `with_variant`) and, for runs repeated over split seeds, the seed:
``RunId("03-pretrained", "hed-bsds500-transfer", 42)`` is the run named ``hed-bsds500-transfer-seed42``.
`RunLayout` turns an identity into every file of the run:

- ``hists/<dataset>/<experiment>/<run>.csv`` (history), ``<run>.json`` (manifest), ``<run>.eval.csv`` (evaluation
  rows);
- ``models/<dataset>/<experiment>/<run>.best.keras`` and ``<run>.final.keras``, each with a sidecar
  ``<run>.<checkpoint>.json`` (what a user of the model needs to feed it), and ``<run>.backup/`` (`RunBackup`) while
  the run is unfinished;
- ``figs/<dataset>/<experiment>/<run>.<checkpoint>.<subset>.<figure>.png``.

Names are only ever built here; a name is read back into an identity by `RunId.from_name`, which accepts it only
if building the identity gives the same name again.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from streetlib import paths

CHECKPOINTS = ("best", "final")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SEED = "-seed"


def check_name(value, name):
    """Check that ``value`` can be a file name of its own (letters, digits, '.', '_', '-'). Returns it.

    Args:
        value: the name to check.
        name: str, the argument's name, for the error message.

    Raises:
        ValueError: ``value`` is not such a str.
    """
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"Invalid `{name}`. Expected a plain file name (letters, digits, '.', '_', '-'). Received: {name}={value!r}"
        )
    return value


def with_variant(config_name, variant):
    """The configuration name of a variant: ``<config_name>-<variant>``, or ``config_name`` for no variant ('').

    A variant tells apart runs of one configuration that differ in other settings, such as the points of a
    ``streetlib run --grid``: without it they would share their run names, and so their files.

    Args:
        config_name: str, the configuration name (e.g. ``hed-bsds500-transfer``).
        variant: str, e.g. ``pooling-max``, or ''.

    Returns:
        str.

    Raises:
        ValueError: ``variant`` is not '' or a plain file name.
    """
    return f"{config_name}-{check_name(variant, 'variant')}" if variant else config_name


def sidecar_path(model_path):
    """Where the sidecar of a model file lives: the same path with the suffix ``.json``.

    Args:
        model_path: path of a ``.keras`` file.

    Returns:
        `Path`.
    """
    return Path(model_path).with_suffix(".json")


@dataclass(frozen=True)
class RunId:
    """The identity of one training run.

    Attributes:
        experiment: str, the experiment's folder name.
        config_name: str, what was trained (e.g. ``hed-bsds500-transfer``).
        seed: int, the split and training seed of a run repeated over seeds, or None for a single run.
    """

    experiment: str
    config_name: str
    seed: int | None = None

    def __post_init__(self):
        check_name(self.experiment, "experiment")
        check_name(self.config_name, "config_name")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise ValueError(f"Invalid `seed`. Expected None or an int >= 0. Received: seed={self.seed!r}")

    @property
    def name(self):
        """The run's name, the common start of its file names: ``<config_name>-seed<N>``, or ``<config_name>``
        without a seed."""
        return self.config_name if self.seed is None else f"{self.config_name}{_SEED}{self.seed}"

    @classmethod
    def from_name(cls, experiment, run):
        """The identity of the run called ``run`` in ``experiment``.

        A name ending in ``-seed<N>`` is a seeded run, when ``<N>`` is written as the identity writes it (no
        leading zeros); any other name is a single run whose configuration name is the whole name.

        Args:
            experiment: str, the experiment's folder name.
            run: str, the run's name.

        Returns:
            `RunId` whose `name` is ``run``.
        """
        check_name(run, "run")
        config_name, _, seed = run.rpartition(_SEED)
        if config_name and seed.isdigit() and str(int(seed)) == seed and _NAME.match(config_name):
            return cls(experiment, config_name, int(seed))
        return cls(experiment, run)

    def __str__(self):
        return f"{self.experiment}/{self.name}"


class RunLayout:
    """Where every file of every run goes, under three output roots, one tree per dataset.

    Results of two datasets never share a folder: with ``dataset``, each root gets the dataset's name below it
    (``hists/<dataset>/<experiment>/<run>.csv``), so a notebook reading the runs of one dataset cannot see another's,
    and the same run names on two datasets never block each other.

    Args:
        dataset: str or None, the dataset's name (`StreetData.name`, e.g. ``synth-demo``). None: the roots as given,
            with no dataset level (a caller that chose its own folders).
        hists_dir: root of histories, manifests and evaluation rows. Default `streetlib.paths.hists_dir()`.
        models_dir: root of saved models. Default `streetlib.paths.models_dir()`.
        figs_dir: root of figures. Default `streetlib.paths.figs_dir()`.
    """

    def __init__(self, hists_dir=None, models_dir=None, figs_dir=None, *, dataset=None):
        self.dataset = None if dataset is None else check_name(dataset, "dataset")
        below = () if dataset is None else (dataset,)
        # The defaults are read now, not at import, so that a changed STREETLIB_ROOT is followed.
        self.hists_dir = Path(hists_dir or paths.hists_dir()).joinpath(*below)
        self.models_dir = Path(models_dir or paths.models_dir()).joinpath(*below)
        self.figs_dir = Path(figs_dir or paths.figs_dir()).joinpath(*below)

    def __repr__(self):
        return (
            f"RunLayout(hists_dir={self.hists_dir!r}, models_dir={self.models_dir!r}, figs_dir={self.figs_dir!r}, "
            f"dataset={self.dataset!r})"
        )

    # -- experiment folders

    def hists(self, experiment):
        """The experiment's folder of histories, manifests and tables: ``hists/<experiment>``."""
        return self.hists_dir / check_name(experiment, "experiment")

    def models(self, experiment):
        """The experiment's folder of models: ``models/<experiment>``."""
        return self.models_dir / check_name(experiment, "experiment")

    def figs(self, experiment):
        """The experiment's folder of figures: ``figs/<experiment>``."""
        return self.figs_dir / check_name(experiment, "experiment")

    @property
    def feature_cache(self):
        """The folder where runs keep their cached features for later runs (`ExecutionConfig.feature_dir`):
        ``models/feature-cache``."""
        return self.models_dir / "feature-cache"

    # -- one run's files (``run`` is a `RunId`)

    def history(self, run):
        """The per-epoch history CSV: ``hists/<experiment>/<run>.csv``."""
        return self.hists(run.experiment) / f"{run.name}.csv"

    def manifest(self, run):
        """The manifest JSON: ``hists/<experiment>/<run>.json``."""
        return self.hists(run.experiment) / f"{run.name}.json"

    def evals(self, run):
        """The evaluation rows: ``hists/<experiment>/<run>.eval.csv``."""
        return self.hists(run.experiment) / f"{run.name}.eval.csv"

    def model(self, run, checkpoint):
        """A saved model: ``models/<experiment>/<run>.<checkpoint>.keras``, ``checkpoint`` 'best' or 'final'."""
        if checkpoint not in CHECKPOINTS:
            raise ValueError(
                f"Invalid `checkpoint`. Expected one of {CHECKPOINTS}. Received: checkpoint={checkpoint!r}"
            )
        return self.models(run.experiment) / f"{run.name}.{checkpoint}.keras"

    def sidecar(self, run, checkpoint):
        """The sidecar JSON of a saved model: ``models/<experiment>/<run>.<checkpoint>.json``."""
        return sidecar_path(self.model(run, checkpoint))

    def backup(self, run):
        """The state of the run while it is unfinished (`streetlib.training.callbacks.RunBackup`):
        ``models/<experiment>/<run>.backup``."""
        return self.models(run.experiment) / f"{run.name}.backup"

    def figure_prefix(self, run, checkpoint, subset):
        """The common start of an evaluation's figures: ``figs/<experiment>/<run>.<checkpoint>.<subset>`` (each
        figure adds ``.<figure>.png``)."""
        return self.figs(run.experiment) / f"{run.name}.{checkpoint}.{subset}"

    def files(self, run):
        """The files a training run writes. Returns dict of `Path`: history, manifest, best_model, final_model,
        backup."""
        return {
            "history": self.history(run),
            "manifest": self.manifest(run),
            "best_model": self.model(run, "best"),
            "final_model": self.model(run, "final"),
            "backup": self.backup(run),
        }


def dataset_layout(layout, dataset):
    """The layout of one dataset's runs: ``layout``, or ``RunLayout(dataset=dataset)`` when it is None.

    Args:
        layout: `RunLayout` or None.
        dataset: str, the name of the data the run is trained or evaluated on (`StreetData.name`).

    Returns:
        `RunLayout`.

    Raises:
        ValueError: ``layout`` belongs to another dataset, so the run's files would be filed with another dataset's.
    """
    if layout is None:
        return RunLayout(dataset=dataset)
    if layout.dataset is not None and layout.dataset != dataset:
        raise ValueError(
            f"The run layout is for dataset {layout.dataset!r}, the data are {dataset!r}: pass "
            f"RunLayout(dataset={dataset!r}) (results of two datasets are never mixed)."
        )
    return layout
