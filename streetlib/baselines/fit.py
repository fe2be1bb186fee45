"""Fitting one scikit-learn classifier on features: the pipeline ``StandardScaler -> classifier``, the optional
hyper-parameter search on the validation split, and the scores of the result (`Fit`).

Each classifier is fitted on the training split only; a search fits one pipeline per candidate on the training split
and keeps the best on the validation split. The test split is only ever predicted.
"""

import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import top_k_accuracy_score
from sklearn.model_selection import ParameterGrid
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from threadpoolctl import threadpool_limits

CLASSIFIERS = ("svm-rbf", "linear-svm", "logreg")
# Candidates for the optional search on the validation split; C=1 (the original's SVM) is in every grid. The RBF
# kernel's width is searched as ``gamma_scale``, gamma in units of 1/d (`sklearn_params`), so one grid suits features
# of any width d; 1 is the original's (scikit-learn's gamma='scale' on standardised features).
SEARCH_GRIDS = {
    "svm-rbf": {"C": [1.0, 10.0, 100.0], "gamma_scale": [0.1, 0.3, 1.0]},
    "linear-svm": {"C": [0.001, 0.01, 0.1, 1.0]},
    "logreg": {"C": [0.01, 0.1, 1.0, 10.0]},
}


def _check_classifier(name):
    if name not in CLASSIFIERS:
        raise ValueError(f"Invalid `classifier`. Expected one of {CLASSIFIERS}. Received: classifier={name!r}")
    return name


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


def check_search(search, classifier):
    """The candidate grid of ``search`` (see `fit_baseline`) for ``classifier``: a dict ``{param: [values]}``, or
    None without search. Raises ValueError for a ``search`` that has no grid for ``classifier``."""
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
        test_top3: float in [0, 1], top-3 accuracy of `class_scores` (`sklearn.metrics.top_k_accuracy_score`;
            of equal scores the higher class index ranks first); NaN with 3 classes or fewer.
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
    grid = check_search(search, _check_classifier(classifier))
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
    if num_classes > 3:
        # scikit-learn refuses infinite scores: an untrained class's -inf becomes the lowest float, in the same order.
        scores = np.nan_to_num(class_scores(best, x_test, num_classes), neginf=np.finfo(np.float64).min)
        top3 = top_k_accuracy_score(y_test, scores, k=3, labels=np.arange(num_classes))
    else:
        top3 = np.nan
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
