"""The baseline grid: every weight source x pooling x augmented copies x classifier x split x output of a
`BaselineGridConfig` (what to fit, checked when it is made), plus the floors, fitted on exactly the CNNs' splits.

`run_grid` writes:

- ``hists/<dataset>/<experiment>/baselines.csv``: the rows (`streetlib.baselines.results`).
- ``figs/<dataset>/<experiment>/<dataset>-<run>.test.confusion-<output>.png``: normalised test confusion matrices
  (`streetlib.baselines.plots.confusion_figure`), drawn as the CNNs' are.
"""

import dataclasses
import inspect
import itertools
import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from threadpoolctl import threadpool_limits

from streetlib import figures
from streetlib.baselines.features import POOLING_NAMES, FeatureExtractor, check_poolings, is_pooling
from streetlib.baselines.fit import CLASSIFIERS, check_search, fit_baseline
from streetlib.baselines.floors import FLOORS, floor_features
from streetlib.baselines.plots import confusion_figure
from streetlib.baselines.results import COLUMNS, CONFIG, results_path, save_results
from streetlib.classes import OUTPUTS
from streetlib.constraints import Items, Keys, Options, validate_parameters
from streetlib.data.pipeline import NORMALIZATIONS
from streetlib.models.weights import WeightsDownloadError
from streetlib.runs import dataset_layout

# liblinear (LinearSVC) shuffles with a random generator shared by the whole process, which every libsvm and
# liblinear fit reseeds: beside another fit, a LinearSVC fit could draw a different order and give other results. These
# classifiers are therefore fitted one at a time, never beside another fit.
_SHARED_RANDOM_STATE = ("linear-svm",)


def _is_copies(k):
    return isinstance(k, int) and not isinstance(k, bool) and k >= 0


def _is_source(w):
    return isinstance(w, (str, os.PathLike))


# The `FeatureExtractor` arguments a grid's ``extractor`` may set (``weights`` is the grid's own field).
EXTRACTOR_ARGS = tuple(p for p in inspect.signature(FeatureExtractor).parameters if p != "weights")


@dataclass(frozen=True, kw_only=True)
class BaselineGridConfig:
    """What a baseline grid is made of: the weight sources, poolings, classifiers, outputs, search, augmentation and
    floors that `run_grid` crosses with the splits.

    Every field is checked when the grid is made, against ``_parameter_constraints`` (as `RunConfig` is), so a
    mistake fails before any feature is extracted or any file written. Lists are stored as tuples, poolings without
    repeats. Which split seeds get confusion figures is not part of the grid but an argument of `run_grid`
    (``figure_seeds``): it changes what is drawn, never the rows, as the output folders do not either.

    Attributes:
        weights: list of weight sources (names or file paths), possibly empty when only ``floors`` are wanted. A
            source that cannot be downloaded is skipped by `run_grid` and reported in ``unavailable``. Default
            ('hed-bsds500', 'random').
        poolings: non-empty list of poolings: `streetlib.models.network.POOLINGS` or 'grid<k>' (the map averaged
            over a k x k grid, see `streetlib.baselines.features.grid_pool`). Default ('avg', 'flatten').
        classifiers: list of `CLASSIFIERS`. Default all.
        outputs: non-empty list of 'region' and 'city'. Default both.
        search: the validation-split search, see `fit_baseline`: False, True or a dict classifier ->
            ``{param: [values]}`` with an entry for each of ``classifiers``. Default False.
        augment_copies: non-empty list of int >= 0: 0 fits on the plain training images, K > 0 adds K augmented
            copies. Default (0,).
        extractor: None or a dict of `FeatureExtractor` arguments other than ``weights`` (`EXTRACTOR_ARGS`:
            backbone, layer, image_size, normalization, init_seed, batch_size), checked by the extractor when
            `run_grid` makes it. Default None: VGG16's output at the data's size.
        floors: list of `FLOORS`, baselines without a network: each classifier x split x output is also fitted on
            `floor_features` of that kind (never augmented; ``search`` applies as to the deep features). Their
            rows have ``backbone=<floor>`` (e.g. 'pixels'), ``weights``, ``layer``, ``pooling`` and
            ``normalization`` 'none', ``augment_copies=0`` and the data's ``image_size``. Default () (none).
            ``weights`` and ``floors`` may not both be empty.
        random_normalization: None (default: each source's own normalisation, 'samplewise' for random weights) or a
            `streetlib.data.pipeline.NORMALIZATIONS` mode fed to the ``random`` source instead (over ``extractor``'s):
            a pretrained source's, so that random and pretrained features differ in their weights alone.
    """

    weights: tuple = ("hed-bsds500", "random")
    poolings: tuple = ("avg", "flatten")
    classifiers: tuple = CLASSIFIERS
    outputs: tuple = OUTPUTS
    search: bool | dict = False
    augment_copies: tuple = (0,)
    extractor: dict | None = None
    floors: tuple = ()
    random_normalization: str | None = None

    _parameter_constraints: ClassVar[dict] = {
        "weights": [Items("a list of weight sources (names or file paths)", test=_is_source)],
        "poolings": [Items(f"a non-empty list of {POOLING_NAMES}", test=is_pooling, nonempty=True)],
        "classifiers": [Items(f"a list of {CLASSIFIERS}", values=CLASSIFIERS)],
        "outputs": [Items(f"a non-empty list of {OUTPUTS}", values=OUTPUTS, nonempty=True)],
        "search": [bool, Keys(CLASSIFIERS)],
        "augment_copies": [Items("a non-empty list of ints >= 0", test=_is_copies, nonempty=True)],
        "extractor": [None, Keys(EXTRACTOR_ARGS)],
        "floors": [Items(f"a list of {FLOORS}", values=FLOORS)],
        "random_normalization": [None, Options(sorted(NORMALIZATIONS))],
    }

    def __post_init__(self):
        validate_parameters(self)
        if not self.weights and not self.floors:
            raise ValueError(
                f"Nothing to fit: `weights` and `floors` are both empty. Received: weights={self.weights!r}, "
                f"floors={self.floors!r}"
            )
        for classifier in self.classifiers:
            check_search(self.search, classifier)
        # Stored in one form: tuples (poolings without repeats), and copies of the dicts.
        for name in ("weights", "classifiers", "outputs", "augment_copies", "floors"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "poolings", check_poolings(self.poolings))
        if isinstance(self.search, dict):
            object.__setattr__(self, "search", dict(self.search))
        if self.extractor is not None:
            object.__setattr__(self, "extractor", dict(self.extractor))

    def replace(self, **changes):
        """A copy with some fields changed (and checked again). Returns `BaselineGridConfig`."""
        return dataclasses.replace(self, **changes)


@dataclass
class GridResult:
    """What `run_grid` produced.

    Attributes:
        table: pandas DataFrame with `COLUMNS`, the rows of this call.
        unavailable: dict weight source -> why it could not be used (its download error).
        path: `Path` of the results CSV (it also keeps rows of earlier calls with other configurations).
        figures: list of `Path`, the confusion figures written.
    """

    table: pd.DataFrame
    unavailable: dict
    path: Path
    figures: list


@dataclass
class _GridRun:
    """One `run_grid` call: what its helpers share, and the rows, unavailable sources and figures they collect."""

    data: object
    splits: list
    grid: BaselineGridConfig
    figure_seeds: object
    figs: Path
    cache_dir: object
    progress: bool
    n_jobs: int
    rows: list = field(default_factory=list)
    unavailable: dict = field(default_factory=dict)
    written: list = field(default_factory=list)


def run_grid(
    data,
    splits,
    grid,
    *,
    figure_seeds=None,
    experiment="02-baselines",
    cache_dir=None,
    layout=None,
    progress=True,
    n_jobs=2,
):
    """Baselines for every weight source x pooling x augmented copies x classifier x split x output of a
    `BaselineGridConfig`, and for every floor x classifier x split x output.

    Features are extracted once per weight source for all images (cached, see `features`), then indexed
    by each split; augmented training copies are extracted per split. Floor features (`floor_features`) are computed
    once per floor and fitted exactly as the deep ones, by the same loop.

    Args:
        data: `StreetData`.
        splits: list of `streetlib.data.splits.Split` (those of the CNNs: `streetlib.data.splits.make_splits`).
        grid: `BaselineGridConfig`, what to fit (checked when it was made).
        figure_seeds: None (confusion figures for every split) or a list of split seeds to draw. Floor baselines
            are drawn too, as ``<dataset>-<floor>-none-none-none-<classifier>-seed<N>.test.confusion-<output>.png``.
        experiment: str, the folder under ``hists/`` and ``figs/``. Default '02-baselines'.
        cache_dir: root of the feature cache. Default `streetlib.paths.features_dir()`.
        layout: `streetlib.runs.RunLayout` of the results and figures. Default ``RunLayout(dataset=data.name)``.
        progress: bool, progress bars while extracting. Default True.
        n_jobs: int >= 1, baselines fitted at once, on threads (libsvm releases the GIL while fitting and predicting;
            'linear-svm' fits still run one at a time, see `_fit_all`). Rows, their order and figures are the same
            whatever it is; only ``seconds``, the wall time of each fit, grows when fits share the CPU. Default 2.

    Returns:
        `GridResult`.
    """
    if not isinstance(grid, BaselineGridConfig):
        raise TypeError(
            "Invalid `grid`. Expected a `BaselineGridConfig`, e.g. "
            f"BaselineGridConfig(weights=['random'], poolings=['avg']). Received: grid={grid!r}"
        )
    _check_figure_seeds(figure_seeds)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral) or n_jobs < 1:
        raise ValueError(f"Invalid `n_jobs`. Expected an int >= 1. Received: n_jobs={n_jobs!r}")
    run = _GridRun(
        data=data,
        splits=list(splits),
        grid=grid,
        figure_seeds=figure_seeds,
        figs=dataset_layout(layout, data.name).figs(experiment),
        cache_dir=cache_dir,
        progress=progress,
        n_jobs=int(n_jobs),
    )
    for source in grid.weights:
        _fit_weight_source(run, source)
    for kind in grid.floors:
        _fit_floor(run, kind)
    table = pd.DataFrame(run.rows, columns=COLUMNS)
    path = results_path(data, experiment=experiment, layout=layout)
    save_results(table, path)
    return GridResult(table=table, unavailable=run.unavailable, path=path, figures=run.written)


def _check_figure_seeds(figure_seeds):
    """``figure_seeds`` must be None or a list (tuple, set) of int split seeds."""
    seeds = isinstance(figure_seeds, (list, tuple, set, frozenset)) and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in figure_seeds
    )
    if figure_seeds is not None and not seeds:
        raise ValueError(
            f"Invalid `figure_seeds`. Expected None or a list of split seeds (ints). Received: "
            f"figure_seeds={figure_seeds!r}"
        )


def _fit_weight_source(run, source):
    """Every augmented copies x split x pooling x classifier x output on one weight source's features. A source that
    cannot be downloaded is recorded in ``run.unavailable`` and skipped."""
    grid, data = run.grid, run.data
    extractor = dict(grid.extractor or {})
    if source == "random" and grid.random_normalization:
        extractor["normalization"] = grid.random_normalization
    try:
        fx = FeatureExtractor(weights=source, **extractor)
    except WeightsDownloadError as err:
        run.unavailable[str(source)] = str(err)
        return
    plain = _features_of_used_images(run, fx)
    size = fx.size_for(data)
    setting = {
        "backbone": fx.backbone,
        "weights": fx.weights_name,
        "layer": fx.layer_name(data),
        "image_size": f"{size[0]}x{size[1]}",
        "normalization": fx.normalization,
        "_weights": fx.weights,
    }
    for copies in grid.augment_copies:
        for split in run.splits:
            augmented = (
                fx.augmented(
                    data,
                    split,
                    copies=copies,
                    seed=split.seed,
                    poolings=grid.poolings,
                    cache_dir=run.cache_dir,
                    progress=run.progress,
                )
                if copies
                else {}
            )
            plain_split = {p: plain[p] for p in grid.poolings}
            _fit_splits(run, [(split, plain_split, augmented)], {**setting, "augment_copies": copies})


def _features_of_used_images(run, fx):
    """pooling -> float32 `(len(data), d)`: the features of the images the splits use, NaN for every other image.

    A dataset drawn as replicates is split one replicate per seed, so the other replicates are not extracted. A fit
    that reached an image outside its split would meet NaN, which scikit-learn refuses, rather than a made-up row.
    """
    used = np.unique(np.concatenate([np.concatenate([s.train, s.val, s.test]) for s in run.splits]))
    subset = fx.features(run.data, used, poolings=run.grid.poolings, cache_dir=run.cache_dir, progress=run.progress)
    out = {}
    for pooling, rows in subset.items():
        out[pooling] = np.full((len(run.data), rows.shape[1]), np.nan, dtype=np.float32)
        out[pooling][used] = rows
    return out


def _fit_floor(run, kind):
    """Every split x classifier x output on one floor's features (`floor_features`)."""
    features = floor_features(run.data, kind)
    size = run.data.image_size
    setting = {
        "backbone": kind,
        "weights": "none",
        "layer": "none",
        "image_size": f"{size[0]}x{size[1]}",
        "normalization": "none",
        "augment_copies": 0,
        "_weights": None,
    }
    # All splits at once: more fits to share between the threads than one split's few.
    _fit_splits(run, [(split, {"none": features}, {}) for split in run.splits], setting)


def _fit_splits(run, parts, setting):
    """Every pooling x classifier x output of each ``(split, plain, augmented)`` in ``parts`` (``plain`` and
    ``augmented``: pooling -> features), fitted by `_fit_all`; rows and figures appended to ``run`` in that order."""
    data, grid = run.data, run.grid
    jobs = [
        (split, plain, augmented, pooling, classifier, output)
        for split, plain, augmented in parts
        for pooling, classifier, output in itertools.product(plain, grid.classifiers, grid.outputs)
    ]
    tasks = [
        (
            classifier,
            delayed(_run_one)(
                data,
                split,
                plain[pooling],
                augmented.get(pooling),
                {**setting, "pooling": pooling},
                classifier=classifier,
                search=grid.search,
                output=output,
            ),
        )
        for split, plain, augmented, pooling, classifier, output in jobs
    ]
    for (split, *_, output), (row, fit) in zip(jobs, _fit_all(tasks, run.n_jobs), strict=True):
        run.rows.append(row)
        # Drawn here, one at a time in this thread: Matplotlib is not thread-safe.
        if run.figure_seeds is None or split.seed in run.figure_seeds:
            name, fig = confusion_figure(data, split, fit, row, weights=setting["_weights"])
            run.written.append(figures.save(fig, run.figs / f"{data.name}-{name}.test.confusion-{output}.png"))


def _fit_all(tasks, n_jobs):
    """Run ``tasks`` (pairs of classifier name and a joblib ``delayed`` call) on up to ``n_jobs`` threads, except
    those of `_SHARED_RANDOM_STATE`, run alone afterwards. Returns their results, in the order of ``tasks``."""
    results = [None] * len(tasks)
    together = [i for i, (classifier, _) in enumerate(tasks) if classifier not in _SHARED_RANDOM_STATE]
    alone = [i for i, (classifier, _) in enumerate(tasks) if classifier in _SHARED_RANDOM_STATE]
    # One BLAS thread per fit, set once around all of them: `fit_baseline` sets it too, but threadpool_limits changes
    # process-wide state, and contexts entered and left by concurrent fits would restore each other's settings.
    with threadpool_limits(limits=1):
        done = Parallel(n_jobs=n_jobs, backend="threading")(tasks[i][1] for i in together)
        for i, result in zip(together, done, strict=True):
            results[i] = result
        for i in alone:
            function, args, kwargs = tasks[i][1]
            results[i] = function(*args, **kwargs)
    return results


def _run_one(data, split, features, augmented, setting, *, classifier, search, output):
    """Fit and score one baseline on ``features``, with ``setting`` the row's backbone, weights, layer, pooling,
    image_size, normalization and augment_copies. Returns (row of `COLUMNS`, `Fit`)."""
    labels = data.labels()[output]
    fit = fit_baseline(
        features, labels, split, classifier=classifier, search=search, augmented=augmented, seed=split.seed
    )
    row = {
        "data": data.label,
        **{c: setting[c] for c in CONFIG if c not in ("data", "classifier", "search")},
        "classifier": classifier,
        "search": bool(search),
        "params": json.dumps(fit.params, sort_keys=True),
        "seed": split.seed,
        "output": output,
        "dim": features.shape[1],
        "train_acc": fit.train_acc,
        "val_acc": fit.val_acc,
        "test_acc": fit.test_acc,
        "test_top3": fit.test_top3,
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "seconds": fit.seconds,
    }
    return row, fit
