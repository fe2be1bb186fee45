"""Cheap baselines on backbone features, on exactly the CNNs' splits: scikit-learn classifiers, records, figures.

Beside the deep features, optional floor baselines (`FLOORS`) fit the same classifiers on features computed without
any network (`floor_features`: downsampled pixels, colour statistics), so a reader sees what the deep features add.

Each classifier is a pipeline ``StandardScaler -> classifier`` fitted on the training split only; an optional
hyper-parameter search fits one pipeline per candidate on the training split and keeps the best on the validation
split. The test split is only ever predicted.

`run_grid` fits a `BaselineGrid` (what to fit, checked when it is made) on given splits and writes:

- ``hists/<experiment>/<dataset>.csv``: one tidy row per backbone x weights x layer x pooling x augmented copies x
  classifier x seed x output (`COLUMNS`), with train, validation and test accuracy and, for the city output, test
  top-3 accuracy. Floor rows name the floor as their backbone and ``"none"`` as weights, layer, pooling and
  normalisation. Rerunning a configuration replaces its rows.
- ``figs/<experiment>/<dataset>-<run>.test.confusion-<output>.png``: normalised test confusion matrices, drawn by
  `streetlib.figures.plot_confusion` as the CNNs' are.
"""

import dataclasses
import inspect
import itertools
import json
import numbers
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from threadpoolctl import threadpool_limits

from streetlib import figures, paths
from streetlib.baselines.features import (
    POOLING_NAMES,
    FeatureExtractor,
    area_average,
    area_weights,
    check_poolings,
    is_pooling,
)
from streetlib.classes import OUTPUTS
from streetlib.constraints import Items, Keys, Options, validate_parameters
from streetlib.data.pipeline import NORMALIZATIONS
from streetlib.evaluation import stats
from streetlib.evaluation.evaluate import confusion, top_k_accuracy
from streetlib.models import weights as weights_lib
from streetlib.runs import dataset_layout

CLASSIFIERS = ("svm-rbf", "linear-svm", "logreg")
# Candidates for the optional search on the validation split; C=1 (the original's SVM) is in every grid. The RBF
# kernel's width is searched as ``gamma_scale``, gamma in units of 1/d (`sklearn_params`), so one grid suits features
# of any width d; 1 is the original's (scikit-learn's gamma='scale' on standardised features).
SEARCH_GRIDS = {
    "svm-rbf": {"C": [1.0, 10.0, 100.0], "gamma_scale": [0.1, 0.3, 1.0]},
    "linear-svm": {"C": [0.001, 0.01, 0.1, 1.0]},
    "logreg": {"C": [0.01, 0.1, 1.0, 10.0]},
}
# Baselines without a network: what any classifier gets from the pixels alone (see `floor_features`).
FLOORS = ("pixels", "colour-stats")
# The side of the "pixels" floor's downsampled image, and the bins of each channel's histogram in "colour-stats".
FLOOR_GRID = 8
FLOOR_BINS = 8
# liblinear (LinearSVC) shuffles with a random generator shared by the whole process, which every libsvm and
# liblinear fit reseeds: beside another fit, a LinearSVC fit could draw a different order and give other results. These
# classifiers are therefore fitted one at a time, never beside another fit.
_SHARED_RANDOM_STATE = ("linear-svm",)
CONFIG = [
    "data",
    "backbone",
    "weights",
    "layer",
    "pooling",
    "image_size",
    "normalization",
    "augment_copies",
    "classifier",
    "search",
]
COLUMNS = [
    *CONFIG,
    "params",
    "seed",
    "output",
    "dim",
    "train_acc",
    "val_acc",
    "test_acc",
    "test_top3",
    "n_train",
    "n_val",
    "n_test",
    "seconds",
]


def _check_classifier(name):
    if name not in CLASSIFIERS:
        raise ValueError(f"Invalid `classifier`. Expected one of {CLASSIFIERS}. Received: classifier={name!r}")
    return name


def floor_features(data, kind, *, chunk=64):
    """Features without any network, one vector per image of ``data``: the floor a classifier gets from the pixels.

    Args:
        data: `StreetData` (uint8 images `(n, H, W, 3)`).
        kind: one of `FLOORS`:

            - ``"pixels"``: the image downsampled to 8x8 by area averaging (each output pixel the mean of the
              pixels under it; pixels straddling two cells count in each by their overlap, so any H and W work),
              scaled to [0, 1] and flattened in (row, column, channel) order: 192 values.
            - ``"colour-stats"``: per channel (red, green, blue in turn) the mean and the standard deviation
              (population, ddof=0) of its values scaled to [0, 1], then an 8-bin histogram of its 0-255 values
              (bins of width 32, as fractions of the pixels, summing to 1): 3 x (2 + 8) = 30 values.
        chunk: int, images processed at a time (bounds the float copy in memory). Default 64.

    Returns:
        float32 `(len(data), 192)` for "pixels", `(len(data), 30)` for "colour-stats".
    """
    if kind not in FLOORS:
        raise ValueError(f"Invalid `kind`. Expected one of {FLOORS}. Received: kind={kind!r}")
    images = data.images
    n, height, width, _ = images.shape
    if kind == "pixels":
        rows, cols = area_weights(height, FLOOR_GRID), area_weights(width, FLOOR_GRID)
    out = []
    for start in range(0, n, chunk):
        x = images[start : start + chunk]
        if kind == "pixels":
            out.append(area_average(x.astype(np.float64) / 255.0, rows, cols).reshape(len(x), -1))
        else:
            flat = x.reshape(len(x), -1, 3)
            scaled = flat.astype(np.float64) / 255.0
            bins = flat // (256 // FLOOR_BINS)
            hist = np.stack([(bins == b).mean(axis=1) for b in range(FLOOR_BINS)], axis=-1)  # (n, 3 channels, bins)
            stats = np.concatenate([scaled.mean(axis=1)[..., None], scaled.std(axis=1)[..., None], hist], axis=-1)
            out.append(stats.reshape(len(x), -1))
    dim = 3 * FLOOR_GRID**2 if kind == "pixels" else 3 * (2 + FLOOR_BINS)
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


def make_classifier(name, *, seed=0, **params):
    """A scikit-learn pipeline ``StandardScaler -> classifier`` (steps named ``scaler`` and ``clf``).

    Args:
        name: 'svm-rbf' (SVC, RBF kernel, C=1, as the original's SVM), 'linear-svm' (LinearSVC, one-vs-rest) or
            'logreg' (multinomial LogisticRegression).
        seed: int, the classifier's random_state. Default 0.
        **params: overrides of the classifier's parameters, e.g. ``C=10.0``.

    Returns:
        an unfitted `sklearn.pipeline.Pipeline`.
    """
    if name == "svm-rbf":
        clf = SVC(kernel="rbf", C=1.0, gamma="scale", random_state=seed)
    elif name == "linear-svm":
        # The dual solver: several times faster than the primal one that dual='auto' picks when n > d.
        clf = LinearSVC(C=1.0, dual=True, max_iter=20000, random_state=seed)
    elif name == "logreg":
        clf = LogisticRegression(C=1.0, max_iter=5000)
    else:
        raise ValueError(f"Invalid `classifier`. Expected one of {CLASSIFIERS}. Received: classifier={name!r}")
    clf.set_params(**params)
    return Pipeline([("scaler", StandardScaler()), ("clf", clf)])


def sklearn_params(params, dim):
    """A search candidate as the classifier's own parameters: ``gamma_scale`` becomes scikit-learn's ``gamma =
    gamma_scale / dim`` (``dim`` the features' width). Returns a new dict."""
    params = dict(params)
    if "gamma_scale" in params:
        params["gamma"] = params.pop("gamma_scale") / dim
    return params


def class_scores(model, x, num_classes):
    """Per-class scores of a fitted pipeline: probabilities when it has them, else decision values.

    Top-k accuracy only needs the order of the scores, so SVMs' decision values rank as well as probabilities (and
    spare SVC's five-fold Platt scaling). Classes absent from training get -inf.

    Returns:
        float64 `(len(x), num_classes)`.
    """
    raw = model.predict_proba(x) if hasattr(model, "predict_proba") else model.decision_function(x)
    if raw.ndim == 1:  # a binary decision function: the score of classes_[1]
        raw = np.stack([-raw, raw], axis=1)
    scores = np.full((len(x), num_classes), -np.inf)
    scores[:, model.classes_] = raw
    return scores


def _check_search(search, classifier):
    """The candidate grid for ``classifier``: None without search."""
    if search is False:
        return None
    if search is True:
        return SEARCH_GRIDS[classifier]
    if isinstance(search, dict) and classifier in search:
        return search[classifier]
    raise ValueError(
        f"Invalid `search`. Expected False, True or a dict classifier -> {{param: [values]}} with an entry for "
        f"{classifier!r}. Received: search={search!r}"
    )


@dataclass
class Fit:
    """One fitted baseline and its scores.

    Attributes:
        model: the fitted `Pipeline` (the search's best when searching).
        params: dict, the classifier parameters chosen by the search (empty without search).
        train_acc, val_acc, test_acc: float in [0, 1], on the non-augmented images of each split.
        test_top3: float in [0, 1], top-3 accuracy from `class_scores`; NaN with 3 classes or fewer.
        test_pred: int64 `(n_test,)`, the test predictions.
        seconds: float, the wall time of fitting (all search candidates included).
    """

    model: Pipeline
    params: dict
    train_acc: float
    val_acc: float
    test_acc: float
    test_top3: float
    test_pred: np.ndarray = field(repr=False)
    seconds: float


def fit_baseline(features, labels, split, *, classifier="svm-rbf", search=False, augmented=None, seed=0, threads=1):
    """Fit one classifier on a split's training features and score it on every split.

    Args:
        features: float `(n, d)`, one vector per image of the dataset (indexed by the split).
        labels: int `(n,)`, the class of each image.
        split: `streetlib.data.splits.Split` (or any object with int ``train``, ``val``, ``test`` index arrays).
        classifier: str, one of `CLASSIFIERS`. Default 'svm-rbf'.
        search: False (default: the classifier's defaults), True (`SEARCH_GRIDS`) or a dict classifier ->
            ``{param: [values]}``. Each candidate is fitted on the training split and the best validation accuracy
            wins (the first on ties); validation and test data are never fitted on.
        augmented: None or float `(copies, len(split.train), d)`: augmented training features, fitted on together
            with the plain ones (and their labels repeated).
        seed: int, the classifier's random_state. Default 0.
        threads: int or None, BLAS threads while fitting. Default 1: these problems are small, and on a busy CPU
            competing BLAS threads made logistic regression tens of times slower. None leaves the library default.

    Returns:
        `Fit`.
    """
    grid = _check_search(search, _check_classifier(classifier))
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(
            f"`features` must be (n, d) with one row per label ({len(labels)}). Received shape {features.shape}."
        )
    x_train, y_train = features[split.train], labels[split.train]
    if augmented is not None:
        augmented = np.asarray(augmented)
        if augmented.shape[1:] != x_train.shape:
            raise ValueError(
                f"`augmented` must have shape (copies, {len(split.train)}, {features.shape[1]}). "
                f"Received {augmented.shape}."
            )
        x_fit = np.concatenate([x_train, augmented.reshape(-1, features.shape[1])])
        y_fit = np.concatenate([y_train, np.tile(y_train, len(augmented))])
    else:
        x_fit, y_fit = x_train, y_train
    x_val, y_val = features[split.val], labels[split.val]
    start = time.perf_counter()
    best, best_params, best_val = None, {}, -1.0
    with threadpool_limits(limits=threads):
        for params in ParameterGrid(grid) if grid else [{}]:
            model = make_classifier(classifier, seed=seed, **sklearn_params(params, x_fit.shape[1])).fit(x_fit, y_fit)
            val_acc = float(np.mean(model.predict(x_val) == y_val))
            if val_acc > best_val:
                best, best_params, best_val = model, params, val_acc
    seconds = time.perf_counter() - start
    x_test, y_test = features[split.test], labels[split.test]
    test_pred = best.predict(x_test)
    num_classes = int(labels.max()) + 1
    top3 = top_k_accuracy(y_test, class_scores(best, x_test, num_classes), 3) if num_classes > 3 else np.nan
    return Fit(
        model=best,
        params=best_params,
        train_acc=float(np.mean(best.predict(x_train) == y_train)),
        val_acc=best_val,
        test_acc=float(np.mean(test_pred == y_test)),
        test_top3=top3,
        test_pred=np.asarray(test_pred, dtype=np.int64),
        seconds=seconds,
    )


def run_name(*, backbone, weights, layer, pooling, classifier, augment_copies=0, search=False, seed):
    """The name of one baseline run, for figure files: ``<backbone>-<weights>-<layer>-<pooling>[-aug<K>]
    [-search]-<classifier>-seed<N>``."""
    weights = Path(weights).stem if isinstance(weights, Path) else weights
    aug = f"-aug{augment_copies}" if augment_copies else ""
    tuned = "-search" if search else ""
    return f"{backbone}-{weights}-{layer}-{pooling}{aug}{tuned}-{classifier}-seed{seed}"


def _is_copies(k):
    return isinstance(k, int) and not isinstance(k, bool) and k >= 0


def _is_source(w):
    return isinstance(w, (str, os.PathLike))


# The `FeatureExtractor` arguments a grid's ``extractor`` may set (``weights`` is the grid's own field).
EXTRACTOR_ARGS = tuple(p for p in inspect.signature(FeatureExtractor).parameters if p != "weights")


@dataclass(frozen=True, kw_only=True)
class BaselineGrid:
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
            _check_search(self.search, classifier)
        # Stored in one form: tuples (poolings without repeats), and copies of the dicts.
        for name in ("weights", "classifiers", "outputs", "augment_copies", "floors"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "poolings", check_poolings(self.poolings))
        if isinstance(self.search, dict):
            object.__setattr__(self, "search", dict(self.search))
        if self.extractor is not None:
            object.__setattr__(self, "extractor", dict(self.extractor))

    def replace(self, **changes):
        """A copy with some fields changed (and checked again). Returns `BaselineGrid`."""
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
    grid: BaselineGrid
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
    `BaselineGrid`, and for every floor x classifier x split x output.

    Features are extracted once per weight source for all images (cached, see `features`), then indexed
    by each split; augmented training copies are extracted per split. Floor features (`floor_features`) are computed
    once per floor and fitted exactly as the deep ones, by the same loop.

    Args:
        data: `StreetData`.
        splits: list of `streetlib.data.splits.Split` (those of the CNNs: `streetlib.data.splits.make_splits`).
        grid: `BaselineGrid`, what to fit (checked when it was made).
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
    if not isinstance(grid, BaselineGrid):
        raise TypeError(
            f"Invalid `grid`. Expected a `BaselineGrid`, e.g. BaselineGrid(weights=['random'], poolings=['avg']). "
            f"Received: grid={grid!r}"
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
    except weights_lib.WeightsDownloadError as err:
        run.unavailable[str(source)] = str(err)
        return
    plain = fx.features(data, poolings=grid.poolings, cache_dir=run.cache_dir, progress=run.progress)
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
            name, fig = _confusion_figure(data, split, fit, row, setting["_weights"])
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


def _confusion_figure(data, split, fit, row, weights):
    """The normalised test confusion of one baseline (``row`` from `_run_one`; ``weights`` the weight source, None
    for a floor). Returns (run name, Figure)."""
    output = row["output"]
    names = data.spec.class_names(output)
    run = run_name(
        backbone=row["backbone"],
        weights=row["weights"] if weights is None else weights,
        layer=row["layer"],
        pooling=row["pooling"],
        classifier=row["classifier"],
        augment_copies=row["augment_copies"],
        search=row["search"],
        seed=split.seed,
    )
    cm = confusion(data.labels()[output][split.test], fit.test_pred, len(names))
    heading = figures.title(
        f"{output} confusion: {run} (test set, n={len(split.test)})",
        data_label=data.label,
        weights_label="none (no network)" if weights is None else weights_lib.describe(weights),
    )
    return run, figures.plot_confusion(cm, class_names=names, title=heading)


def results_path(data, *, experiment="02-baselines", layout=None):
    """Where a dataset's baseline results go: ``hists/<dataset>/<experiment>/baselines.csv`` (``layout``, default
    ``RunLayout(dataset=data.name)``). Returns a `Path`."""
    return dataset_layout(layout, data.name).hists(experiment) / "baselines.csv"


def save_results(table, path):
    """Write baseline rows to a CSV, replacing earlier rows of the same configuration, seed and output, and keeping
    the others. Written atomically. Returns the `Path`."""
    path = Path(path)
    if path.is_file():
        old = pd.read_csv(path)
        keys = [*CONFIG, "seed", "output"]
        # Compare as text: the CSV round trip turns bools and ints into their own types, the new rows are Python's.
        new_keys = set(map(tuple, table[keys].astype(str).to_numpy()))
        kept = old[[tuple(k) not in new_keys for k in old[keys].astype(str).to_numpy()]]
        table = pd.concat([kept, table], ignore_index=True) if len(kept) else table
    with paths.atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def summarize(table, *, metric="test_acc"):
    """Mean and spread of a metric over split seeds, per configuration and output.

    Returns:
        pandas DataFrame indexed by the configuration columns that vary plus ``output``, with ``n`` (seeds),
        ``mean``, ``std`` (sample, ddof=1; NaN for one seed), ``min`` and ``max``.
    """
    keys = [c for c in CONFIG if table[c].nunique() > 1] + ["output"]
    return table.groupby(keys)[metric].agg(n="count", mean="mean", std="std", min="min", max="max")


def compare(table, *, column, a, b, margin, overlap, metric="test_acc"):
    """Paired comparisons of two values of one configuration column, on the split seeds both have, each by
    `streetlib.evaluation.stats.compare`: pass every comparison a notebook makes to `streetlib.evaluation.stats.family`
    together, which adjusts them for each other and words their verdicts.

    For every configuration that differs only in ``column`` (e.g. ``column="weights"``, ``a="random"``,
    ``b="hed-bsds500"``), the same seeds mean the same splits, so the per-seed differences ``b - a`` are paired.
    Columns that follow from ``column`` (the normalisation of each weight source) are not matched on. A column in
    which one side has a single value that the other never has (a floor's ``pooling="none"`` against a backbone's
    poolings, with ``column="backbone"``) does not apply to that side: its rows pair with every value of the other.
    A floor (`FLOORS`, with ``column="backbone"``) has no weights, layer, pooling or augmentation: its rows pair with
    every value the other side has in each column where the floor has a single value (``augment_copies=0`` too).

    Args:
        table: baseline rows (`COLUMNS`).
        column: str, one of `CONFIG`; a, b: its two values compared, as ``b - a``.
        margin: float > 0, the equivalence margin in ``metric``'s unit, fixed before the test split is read.
        overlap: float >= 0, ``n_test / n_train`` of the resampled splits (`streetlib.evaluation.stats.overlap`).
        metric: str, a score column. Default 'test_acc'.

    Returns:
        list of dicts, one per configuration and output: `stats.compare`'s fields (``a`` and ``b`` as str, ``n``
        the shared seeds, ``difference``...) labelled with ``column``, the other varying configuration columns,
        ``output``, and ``mean_a`` and ``mean_b`` over the shared seeds.
    """
    if column not in CONFIG:
        raise ValueError(f"Invalid `column`. Expected one of {CONFIG}. Received: column={column!r}")
    values = set(table[column].astype(str))
    missing = [v for v in (a, b) if str(v) not in values]
    if missing:
        raise ValueError(f"No rows with {column}={missing[0]!r}. Found: {sorted(values)}.")
    # Columns that follow from the compared one (the normalisation of a weight source) are not part of the pairing.
    within = table.groupby(column)
    keys = [c for c in CONFIG if c != column and table[c].nunique() > 1 and within[c].nunique().max() > 1]
    keys.append("output")
    sides = table.assign(_side=table[column].astype(str))
    sides = sides[sides["_side"].isin([str(a), str(b)])]
    floors = {str(v) for v in (a, b) if column == "backbone" and str(v) in FLOORS}
    sides = _broadcast_unmatched(sides, keys[:-1], str(a), str(b), floors=floors)
    wide = sides.pivot_table(index=[*keys, "seed"], columns="_side", values=metric)[[str(a), str(b)]].dropna()
    if wide.empty:
        raise ValueError(f"{column}={a!r} and {column}={b!r} share no configuration and seed: nothing to pair.")
    comparisons = []
    for labels, seeds in wide.groupby(level=keys):
        result = stats.compare(seeds[str(b)] - seeds[str(a)], a=str(a), b=str(b), margin=margin, overlap=overlap)
        means = {"mean_a": float(seeds[str(a)].mean()), "mean_b": float(seeds[str(b)].mean())}
        comparisons.append({"column": column, **dict(zip(keys, labels, strict=True)), **means, **result})
    return comparisons


def _broadcast_unmatched(sides, keys, a, b, *, floors=()):
    """Rows of side ``a`` and ``b`` (by ``_side``) where, per key column, a side with one value that the other side
    lacks (or any single value, for a side in ``floors``) is copied once per value of the other side, so it pairs with
    all of them."""
    for key in keys:
        values = {s: set(sides.loc[sides["_side"] == s, key].astype(str)) for s in (a, b)}
        for side, other in ((a, b), (b, a)):
            unmatched = values[side].isdisjoint(values[other]) or side in floors
            if len(values[side]) == 1 and values[other] and values[other] != values[side] and unmatched:
                own = sides[sides["_side"] == side]
                others = sides.loc[sides["_side"] == other, key].drop_duplicates()
                copies = [own.assign(**{key: v}) for v in others]
                sides = pd.concat([sides[sides["_side"] != side], *copies], ignore_index=True)
                break
    return sides


def seed_table(table, *, metric="test_acc"):
    """`summarize` as text for reading: ``"mean ± std"`` per configuration, one column per output.

    Returns:
        pandas DataFrame of str, indexed by the configuration columns that vary.
    """
    summary = summarize(table, metric=metric)
    text = summary["mean"].map("{:.3f}".format) + " ± " + summary["std"].map("{:.3f}".format)
    text = text.rename(metric)
    return text.unstack("output") if summary.index.nlevels > 1 else text.to_frame().T


def plot_summary(table, *, metric="test_acc", title=None):
    """Mean and seed spread of a metric per configuration, one panel per output; each seed is a dot.

    Args:
        table: baseline rows (`COLUMNS`).
        metric: str, a score column. Default 'test_acc'.
        title: str or None, the figure title (see `streetlib.figures.title`).

    Returns:
        `matplotlib.figure.Figure`.
    """
    import matplotlib
    from matplotlib.figure import Figure

    keys = [c for c in CONFIG if table[c].nunique() > 1]
    outputs = [o for o in OUTPUTS if o in set(table["output"])]
    configs = table[keys].drop_duplicates().reset_index(drop=True) if keys else pd.DataFrame(index=[0])
    labels = [" / ".join(str(v) for v in row) for row in configs.itertuples(index=False)] if keys else ["all"]
    with matplotlib.rc_context(figures.STYLE):
        fig = Figure(figsize=(4.5 * len(outputs) + 2, 0.35 * len(labels) + 1.5))
        axes = fig.subplots(1, len(outputs), sharey=True, squeeze=False)[0]
        for ax, output in zip(axes, outputs, strict=True):
            rows = table[table["output"] == output]
            for i, config in enumerate(configs.to_dict("records")):
                scores = rows.loc[(rows[list(config)] == pd.Series(config)).all(axis=1), metric].to_numpy()
                ax.barh(
                    i,
                    scores.mean(),
                    xerr=scores.std(ddof=1) if len(scores) > 1 else 0,
                    color="#4c72b0",
                    alpha=0.6,
                    capsize=2,
                )
                ax.plot(scores, np.full(len(scores), i), "k.", markersize=3)
            ax.set_yticks(range(len(labels)), labels)
            ax.set_xlim(0, 1)
            ax.set_xlabel(f"{output} {metric} (mean ± std over seeds; dots: seeds)")
            ax.invert_yaxis()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig
