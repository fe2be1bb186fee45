"""Every registered attribution method's cost per image, in forward passes of the same batch on the same model
(BENCHMARKS.md's table, and the leaderboard's ``cost`` column)."""

import functools
import time

import numpy as np

from streetlib.benchmarks.explainers import flat_vgg16

# The methods whose work grows with a parameter (forward or gradient passes per image): they run on their own smaller
# batch, each over a forward pass of that batch size.
COSTLY_METHODS = ("score_cam", "smoothgrad", "integrated_gradients", "occlusion", "rise")


def method_cost_params(size, *, quick=False):
    """The costly methods' parameters of `bench_method_costs` at ``size`` px: dict method -> params.

    Occlusion: a square of a quarter of the side moved by an eighth, 7 x 7 = 49 positions at any size (patch 56,
    stride 28 at 224 px). Score-CAM keeps its default chunking (its cost is set by the layer's channels: 512 at
    block5_conv3). ``quick`` takes fewer masks, samples and steps.
    """
    return {
        "score_cam": {},
        "smoothgrad": {"samples": 4 if quick else 16, "seed": 0},
        "integrated_gradients": {"steps": 4 if quick else 16},
        "occlusion": {"patch": size // 4, "stride": size // 8},
        "rise": {"masks": 64 if quick else 200, "seed": 0},
    }


def method_costs_settings(*, quick=False):
    """`bench_method_costs`'s arguments in `run_all`: 224 px, batch 8 (the costly methods 2), best of 3 calls
    within 10 s; ``quick``: 32 px, batch 2, fewer masks, samples and steps, the costly methods timed once."""
    size = 32 if quick else 224
    return {
        "size": size,
        "batch": 2 if quick else 8,
        "costly_batch": 2,
        "params": method_cost_params(size, quick=quick),
        "repeats": 2 if quick else 3,
        "budget": 1.0 if quick else 10.0,
    }


def _best_seconds(fn, *, repeats, budget):
    """The least of up to ``repeats`` timed calls of ``fn``, stopping early once the calls so far took ``budget``
    seconds (one long call is itself the sum of many batched passes, so its noise averages out)."""
    times = []
    while len(times) < repeats and sum(times) < budget:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _warmup_params(name, params, size):
    """Parameters for a method's untimed warm-up call on its batch: the same compiled functions at the least work
    (one mask, sample, step or position). None for Score-CAM, which has no cheaper setting: its warm-up is Grad-CAM's
    (the same layer gradients, then the forward pass every method shares)."""
    cheap = {
        "smoothgrad": {"samples": 1},
        "integrated_gradients": {"steps": 1},
        "occlusion": {"patch": size, "stride": size},
        "rise": {"masks": 1},
    }
    return None if name == "score_cam" else {**params, **cheap.get(name, {})}


def bench_method_costs(
    *,
    size=224,
    batch=8,
    costly_batch=2,
    params=None,
    repeats=3,
    budget=10.0,
    layer="block5_conv3",
    methods=None,
    report=None,
):
    """Every method of `streetlib.attribution.registry.METHODS`: seconds per image, and that as a multiple of the
    seconds per image of one forward pass (logits) of the same batch on the same model, as
    `streetlib.attribution.leaderboard` defines a method's cost.

    The model is a flat VGG16 with two outputs (random weights, `flat_vgg16`), the batch ``batch`` random ``size``
    px images, the city output explained for each image's predicted class; CAM methods (and Guided Grad-CAM) read
    ``layer``. Each method is called through `registry.attribute` (so its maps' upsampling and normalisation count)
    once untimed on its batch (tracing, see `_warmup_params`), then timed: the least of up to ``repeats`` calls
    (`_best_seconds` with ``budget``). The forward pass likewise (warm-up on the whole batch, then the least of at
    least 3 calls). `COSTLY_METHODS` run on the first ``costly_batch`` images, with ``params`` (default
    `method_cost_params`), over a forward pass of that batch size. ``methods``: None (every registry method) or a
    list of names, to measure a few.

    Returns:
        dict: ``size``, ``batch``, ``costly_batch``, ``layer``, ``forward`` (dict batch size -> seconds per image)
        and ``rows``, one per method in registry order: ``method``, ``family``, ``differentiates``, ``layer`` (None
        for methods that read none), ``params`` (every parameter of the method, defaults included), ``batch``,
        ``seconds_per_image``, ``forward_seconds_per_image`` and ``cost`` (their ratio). ``report``, if given, is
        called with each row as soon as it is measured.
    """
    from streetlib.attribution.explainer import explainer
    from streetlib.attribution.registry import METHODS

    params = method_cost_params(size) if params is None else params
    methods = list(METHODS) if methods is None else list(methods)
    unknown = sorted((set(params) | set(methods)) - set(METHODS))
    if unknown:
        raise ValueError(
            f"Invalid `params` or `methods`: {unknown} are not methods. Expected some of {sorted(METHODS)}."
        )
    model = flat_vgg16(size, regions=4)
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    ex = explainer(model, layer=layer)
    targets = np.argmax(ex.logits(x, output="city"), axis=1)
    batches = sorted({batch, min(costly_batch, batch)}, reverse=True)
    forward = _forward_seconds(ex, x, batches, repeats=max(repeats, 3), budget=budget)
    rows = []
    for name in methods:
        n = min(costly_batch, batch) if name in COSTLY_METHODS else batch
        timing = {"repeats": repeats, "budget": budget}
        rows.append(_method_row(model, x[:n], targets[:n], name, layer, params.get(name, {}), forward[n], **timing))
        if report is not None:
            report(rows[-1])
    return {
        "size": size,
        "batch": batch,
        "costly_batch": min(costly_batch, batch),
        "layer": layer,
        "forward": forward,
        "rows": rows,
    }


def _forward_seconds(ex, x, batches, *, repeats, budget):
    """Seconds per image of one forward pass (the city logits) at each batch size of ``batches``: the least of the
    timed calls (`_best_seconds`) after an untimed one. Returns dict batch size -> float."""
    forward = {}
    for n in batches:
        ex.logits(x[:n], output="city")  # traces once; the first call at a batch size also sets up its kernels
        logits = functools.partial(ex.logits, x[:n], output="city")
        forward[n] = _best_seconds(logits, repeats=repeats, budget=budget) / n
    return forward


def _method_row(model, x, targets, name, layer, params, forward, *, repeats, budget):
    """One method's row of `bench_method_costs` on the images ``x`` (their classes ``targets``): one untimed call
    (`_warmup_params`), then the least of the timed ones, over ``forward`` (seconds per image of a forward pass)."""
    from streetlib.attribution.registry import METHODS, attribute

    method = METHODS[name]
    where = method.layer_of(layer)

    def call(method_name, method_layer, method_params):
        return attribute(
            x, model, method=method_name, output="city", layer=method_layer, target=targets, **method_params
        )

    warm = _warmup_params(name, params, x.shape[1])
    call(*((name, where, warm) if warm is not None else ("grad_cam", layer, {})))
    seconds = _best_seconds(functools.partial(call, name, where, params), repeats=repeats, budget=budget) / len(x)
    return {
        "method": name,
        "family": method.family,
        "differentiates": method.differentiates,
        "layer": where,
        "params": {**method.params, **params},
        "batch": len(x),
        "seconds_per_image": seconds,
        "forward_seconds_per_image": forward,
        "cost": seconds / forward,
    }
