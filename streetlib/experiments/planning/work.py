"""The work of each notebook of a run, counted before anything runs (`make_plan`).

`make_plan` reads the parameters the run would use (`runner.plan`: the same profile, overrides and checks) and lists
the work of each notebook: every training run of notebooks 03 and 04 (`study.transfer_config`,
`study.finetune_config` and, for 04's ``continued_control``, `study.continued_config` names, one per weight source,
over the split seeds), the baselines' feature extractions (02) and the attribution work of 05 (the leaderboard on
every split seed's headline model, the permuted-label model of its data randomisation check, the explanations, checks
and concepts of the first seed's). Work is counted in passes (`costs`); `calibration` turns them into time.

Memory and disk follow the run's own decisions: the feature cache of each training run is what `cache.plan_cache`
decides for it (in memory, on disk or none), or, without augmentation, a `cache.FeatureStore` shared by the runs of
one notebook's call, which runs a frozen part over the whole dataset once (once per seed for random weights, drawn
per seed). Peak host memory is the notebook process's runtime (`RUNTIME_BYTES`), the uint8 images and the largest
work's host share: its feature cache held in memory and, on a CPU, whose memory is the device's too, its device
memory (parameters, optimiser state, one batch's activations). A cache kept on disk for a later notebook
(`ExecutionConfig.feature_dir`: 03's ``keep_features``, read by 04's continued runs) counts as disk, and the run that
reads it makes no pass of its frozen part.
"""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from streetlib import paths
from streetlib.attribution import explainer
from streetlib.attribution.leaderboard import CHOSEN_ON_VALIDATION, LeaderboardConfig
from streetlib.attribution.registry import METHODS, ORIGINAL
from streetlib.classes import STREET10, SYNTH10
from streetlib.experiments import runner, study
from streetlib.experiments.parameters import notebook_parameters
from streetlib.experiments.planning.calibration import device_name
from streetlib.experiments.planning.costs import (
    GRADIENT_PASS,
    activation_bytes,
    leaderboard_passes,
    method_passes,
    model_flops,
    training_device_bytes,
    training_passes,
    vgg16_flops,
)
from streetlib.experiments.planning.counts import DataCounts, count_images
from streetlib.experiments.planning.units import format_bytes
from streetlib.models import network
from streetlib.training.cache import feature_bytes, plan_cache
from streetlib.training.config import ARCHITECTURE, ExecutionConfig, RunConfig

CHECKPOINTS = ("best", "final")
# Resident memory of a notebook's Python process before it loads data or builds a model: TensorFlow, Keras, numpy,
# pandas, matplotlib and streetlib imported (688 MB measured, VmRSS, TensorFlow 2.20 on Linux, 2026-12-04).
RUNTIME_BYTES = 700 * 10**6
# What the format says the largest work holds in host memory, on a CPU (True) or beside an accelerator (False).
HOST_SHARE = {
    False: "the largest feature cache held",
    True: "the work holding the most: its feature cache and, the device being the CPU, its device memory",
}


@dataclass
class Work:
    """One line of a plan: a training configuration over its seeds, or a notebook's other work.

    Attributes:
        notebook: str, the notebook's number ('03').
        name: str, the configuration name (`study.transfer_config`...) or what the work is.
        weights: str, the weight source(s).
        seeds: tuple of int split seeds (one run each), () for work done once.
        images: str, the images it works on ('3166/564/421' train/val/test).
        epochs: int or None.
        image_size: int, pixels.
        forward, backward: float passes of one run (one seed).
        shared: float forward passes done once for all its seeds: the frozen part over the whole dataset, in a
            `cache.FeatureStore` its runs share (0 when each run extracts its own features).
        cache: str, the feature cache (`cache.plan_cache`'s decision), or ''.
        host_bytes: int, host memory beyond the dataset (the feature cache it holds).
        device_bytes: int, device memory.
        disk_bytes: int, disk it leaves behind (models, baseline features), for all its seeds.
        scratch_bytes: int, disk it uses while it runs (a feature cache on disk, removed at the end).
        batch_size: int, images per training batch (0 for work that does not train).
    """

    notebook: str
    name: str
    weights: str
    seeds: tuple
    images: str
    epochs: int | None
    image_size: int
    forward: float
    backward: float = 0.0
    cache: str = ""
    host_bytes: int = 0
    device_bytes: int = 0
    disk_bytes: int = 0
    scratch_bytes: int = 0
    batch_size: int = 0
    shared: float = 0.0

    @property
    def runs(self):
        return max(1, len(self.seeds))

    @property
    def passes(self):
        """Passes of all its runs (forward + backward), the shared ones once."""
        return (self.forward + self.backward) * self.runs + self.shared

    def seconds(self, calibration):
        """Estimated seconds of all its runs on the calibrated device."""
        per_run = self.forward * calibration.forward + self.backward * calibration.backward
        return self.runs * per_run + self.shared * calibration.forward


@dataclass
class Plan:
    """What a profile would run: its data, its work, and the peaks it would reach.

    ``host_bytes`` counts the device memory of the largest work too when ``on_cpu`` (the device is the CPU).
    """

    profile: str
    data: DataCounts
    work: list
    image_size: int
    host_bytes: int
    device_bytes: int
    disk_bytes: int
    on_cpu: bool = False

    @property
    def passes(self):
        return sum(w.passes for w in self.work)

    @property
    def batch_size(self):
        """The largest training batch (32 when nothing trains): what a calibration batch holds at most."""
        return max((w.batch_size for w in self.work), default=0) or 32

    def seconds(self, calibration):
        return sum(w.seconds(calibration) for w in self.work)


class _Context:
    """What planning the notebooks of one run shares: the profile, the data and the models built so far."""

    def __init__(self, profile, overrides, root_dir):
        self.profile, self.overrides, self.root_dir = runner.load_profile(profile), overrides, root_dir
        self.data, self.splits = None, None
        self._models, self._unit = {}, {}

    def set_data(self, data):
        """The counted (or assumed) data, and its split sizes."""
        self.data, self.splits = data, data.split_sizes()

    def params_of(self, number):
        """Every parameter notebook ``number`` would run with (for notebooks another one depends on)."""
        notebook = runner.find_notebook(number)
        return _with_defaults(notebook, runner.resolve_parameters(notebook, self.profile, self.overrides))

    def unit(self, image_size):
        if image_size not in self._unit:
            self._unit[image_size] = vgg16_flops(image_size)
        return self._unit[image_size]

    def model(self, config):
        """The run's model (random weights: the same layers), frozen as the run freezes it. Cached per architecture."""
        key = (tuple(getattr(config, f) for f in ARCHITECTURE), config.frozen_through)
        if key not in self._models:
            fields = {f: getattr(config, f) for f in ARCHITECTURE if f not in ("image_size", "normalization")}
            shape = (config.image_size, config.image_size, 3)
            model = network.build_model(**fields, weights="random", input_shape=shape, classes=self.spec)
            self._models[key] = network.freeze(model, through=config.frozen_through)
        return self._models[key]

    @property
    def spec(self):
        return STREET10 if set(self.data.counts) == set(STREET10.classes) else SYNTH10


def transfer_run_config(params):
    """Notebook 03's `RunConfig` from its parameters, as its configuration cell builds it (a test compares the two:
    tests/test_planning.py)."""
    return RunConfig.preset(
        "transfer",
        image_size=params["image_size"],
        epochs=params["epochs"],
        batch_size=params["batch_size"],
        cut=params["cut"] or None,
        head=params["head"],
        pooling=params["pooling"],
        filters=params["filters"],
        dropout=params["dropout"],
        optimizer=params["optimizer"],
        learning_rate=params["learning_rate"],
        early_stopping=params["early_stopping"] or None,
        augment=params["augment"],
        augment_copies=params["augment_copies"],
        mixed_precision=params.get("mixed_precision", False),
    )


def finetune_run_config(params, transfer):
    """Notebook 04's `RunConfig` from its parameters, with the layers of the transfer runs it starts from."""
    config = RunConfig.preset(
        "finetune",
        frozen_through=params["finetune_from"] or None,
        epochs=params["epochs"],
        batch_size=params["batch_size"],
        optimizer=params["optimizer"],
        learning_rate=params["learning_rate"],
        augment=params["augment"],
        augment_copies=params["augment_copies"],
        mixed_precision=params.get("mixed_precision", False),
    )
    return config.replace(weights=transfer.weights, **{f: getattr(transfer, f) for f in ARCHITECTURE})


class _SharedFeatures:
    """The `cache.FeatureStore` of one `study` call (notebook 03's runs; 04's fine-tuning runs, then its continued
    runs): which runs it serves and what it holds.

    Args:
        max_bytes: int, the store's memory (`ExecutionConfig.max_cache_bytes`).
    """

    def __init__(self, max_bytes):
        self.max_bytes, self.held = max_bytes, 0

    def serves(self, cache, entry_bytes, entries):
        """Whether a run with this cache decision (`cache.plan_cache`'s) trains on the store's features, as
        `run_phase` decides (features of one copy, no augmentation, and the dataset's fit the store); if so the
        store takes ``entries`` entries of ``entry_bytes``. Returns bool."""
        if cache["mode"] != "features" or cache["copies"] != 1 or entry_bytes > self.max_bytes:
            return False
        # The least recently used entries are dropped to make room: the store never holds more than max_bytes.
        self.held = min(self.max_bytes, self.held + entries * entry_bytes)
        return True


def _training_work(ctx, notebook, name, config, seeds, store=None, keep=None):
    """The `Work` of one configuration over its seeds; ``store`` the `_SharedFeatures` of its `study` call, or None
    for a run that caches its own split (`run_phase` without a store). ``keep``: None, or how a run that caches its own
    split uses the kept caches (`ExecutionConfig.feature_dir`): 'write' (kept on disk until notebook 04 removes them)
    or 'read' (an earlier notebook's: no pass of the frozen part)."""
    model = ctx.model(config)
    n_train, n_val = ctx.splits["train"], ctx.splits["val"]
    cache = plan_cache(
        config.cache,
        model,
        through=config.frozen_through,
        augment=bool(config.augment),
        copies=config.augment_copies,
        n_train=n_train,
        n_val=n_val,
        max_bytes=ExecutionConfig().max_cache_bytes,
        directory=ctx.root_dir / "models",
    )
    if config.frozen_through is None:
        frozen, rest = None, model
    else:
        frozen, rest = network.split_model(model, through=config.frozen_through)
    unit = ctx.unit(config.image_size)
    shares = {"frozen": (model_flops(frozen) if frozen else 0) / unit, "trainable": model_flops(rest) / unit}
    cached = cache["mode"] == "features"
    entry = ctx.data.pool * feature_bytes(frozen) if frozen is not None else 0
    # Random weights are drawn per seed, and seeds of a replicated dataset draw from pools of their own: each seed's
    # features are then an entry of its own, extracted for that seed.
    per_seed = config.weights == "random" or ctx.data.replicates > 1
    shared = store is not None and store.serves(cache, entry, len(seeds) if per_seed else 1)
    kept = keep if cached and not shared else None
    forward, backward = training_passes(
        n_train,
        n_val,
        epochs=config.epochs,
        cached_copies=cache["copies"] if cached else 0,
        shared=shared or kept == "read",
        **shares,
    )
    extraction = shares["frozen"] * ctx.data.pool if shared else 0.0
    if shared:
        cache = {**cache, "store": "shared", "bytes": entry}
    if kept:
        cache = {**cache, "store": f"kept ({kept})"}
    params = network.count_params(model)["total"]
    return Work(
        notebook=notebook,
        name=name,
        weights=config.weights,
        seeds=tuple(seeds),
        images=f"{n_train}/{n_val}/{ctx.splits['test']}",
        epochs=config.epochs,
        image_size=config.image_size,
        forward=forward + (extraction if per_seed else 0.0),
        backward=backward,
        shared=0.0 if per_seed else extraction,
        cache=f"{cache['store']} {format_bytes(cache['bytes'])}" if cached else "none",
        host_bytes=store.held if shared else cache["bytes"] if cache["store"] == "memory" else 0,
        device_bytes=training_device_bytes(
            model, frozen=frozen, rest=rest, cached=cached, optimizer=config.optimizer, batch_size=config.batch_size
        ),
        disk_bytes=(params * 4 * len(CHECKPOINTS) + (cache["bytes"] if kept == "write" else 0)) * len(seeds),
        scratch_bytes=cache["bytes"] if cache["store"] == "disk" else 0,
        batch_size=config.batch_size,
    )


def _plan_transfer(ctx, params):
    """Notebook 03: each source's transfer runs (and the scratch run), one `study.run_transfer` call: one store."""
    config = transfer_run_config(params)
    sources, seeds, variant = params["weight_sources"], params["split_seeds"], params["variant"]
    store = _SharedFeatures(ExecutionConfig().max_cache_bytes)
    keep = "write" if params.get("keep_features") else None
    work = [
        _training_work(ctx, "03", study.transfer_config(s, variant), config.replace(weights=s), seeds, store, keep)
        for s in sources
    ]
    if params["scratch_epochs"]:
        scratch = RunConfig.preset("scratch", **{f: getattr(config, f) for f in ARCHITECTURE})
        scratch = scratch.replace(epochs=params["scratch_epochs"], batch_size=config.batch_size)
        name = f"random-scratch{'-' + variant if variant else ''}"
        work.append(_training_work(ctx, "03", name, scratch, seeds, store))
    return work


def _plan_finetune(ctx, params):
    """Notebook 04: each source's fine-tuning runs, then (``continued_control``) its transfer runs continued as many
    epochs with their own recipe (`study.run_continued`); each of the two `study` calls has its own store."""
    transfer = transfer_run_config(ctx.params_of("03"))
    frozen = params["finetune_from"] or None
    sources, seeds, variant = params["weight_sources"], params["split_seeds"], params["variant"]
    store = _SharedFeatures(ExecutionConfig().max_cache_bytes)
    work = [
        _training_work(
            ctx,
            "04",
            study.finetune_config(s, frozen, variant),
            finetune_run_config(params, transfer.replace(weights=s)),
            seeds,
            store,
        )
        for s in sources
    ]
    if params.get("continued_control"):
        continued = transfer.replace(epochs=params["epochs"])
        store = _SharedFeatures(ExecutionConfig().max_cache_bytes)
        keep = "read" if ctx.params_of("03").get("keep_features") else "write"
        work += [
            _training_work(
                ctx, "04", study.continued_config(s, variant), continued.replace(weights=s), seeds, store, keep
            )
            for s in sources
        ]
    return work


def _plan_baselines(ctx, params):
    """Notebook 02: each weight source's features of every image, plus augmented copies of each training split."""
    size = params["image_size"]
    backbone = network.build_backbone(params["backbone"], weights="random", input_shape=(size, size, 3))
    layer = params["layer"] or backbone.layers[-1].name
    cut = network.cut_backbone(backbone, layer)
    share = model_flops(cut) / ctx.unit(size)
    seeds = params["split_seeds"]
    images = ctx.data.total + sum(k * len(seeds) * ctx.splits["train"] for k in params["augment_copies"])
    *grid, channels = cut.output.shape[1:]
    dims = {"avg": channels, "max": channels, "avgmax": 2 * channels, "flatten": math.prod(grid) * channels}
    # 'grid<k>': the map averaged over k x k cells (`baselines.features.grid_pool`).
    sizes = [dims[p] if p in dims else int(p.removeprefix("grid")) ** 2 * channels for p in params["poolings"]]
    feature_bytes = images * sum(sizes) * 4
    return [
        Work(
            notebook="02",
            name=f"features {layer} {'+'.join(params['poolings'])}",
            weights=", ".join(params["weight_sources"]) or "-",
            seeds=(),
            images=f"{images} ({ctx.data.total} + augmented copies)" if images > ctx.data.total else str(images),
            epochs=None,
            image_size=size,
            forward=share * images * len(params["weight_sources"]),
            host_bytes=feature_bytes,
            device_bytes=network.count_params(cut)["total"] * 4
            + activation_bytes(cut, batch_size=params["batch_size"], training=False),
            disk_bytes=feature_bytes * len(params["weight_sources"]),
        )
    ]


def _plan_attribution(ctx, params):
    """Notebook 05, on a model of the transfer runs' layers (the fine-tuned ones have the same): the permuted-label
    model of the data randomisation check (the headline's first phase, a transfer run, trained once on the first
    seed's split, `metrics.data_randomized_copy`), the leaderboard on every split seed's headline model, then the
    explanations, the cascading randomisation check and the concepts of the first seed's."""
    transfer = transfer_run_config(ctx.params_of("03"))
    seeds = params["split_seeds"]
    permuted = transfer.replace(epochs=params["permuted_epochs"] or transfer.epochs, early_stopping=None)
    model = ctx.model(transfer)
    size = transfer.image_size
    share = model_flops(model) / ctx.unit(size)
    layer = _named_layer(params) or explainer.default_layer(model)
    channels = explainer.find_layer_path(model, layer)[-1].output.shape[-1]
    spec = attribution_spec(params)
    explained = min(params["max_images"], ctx.splits["test"])
    scored = min(per_seed_share(params["leaderboard_images"], seeds), ctx.splits["test"])
    board = leaderboard_passes(spec, scored, channels=channels, image_size=size, permuted=True)
    other = _other_attribution_passes(params, model, explained, ctx.splits["test"])
    common = {"notebook": "05", "weights": "the headline model", "epochs": None, "image_size": size}
    # The costly methods push their copies through the model in batches of their `batch_size`, with gradients.
    batch = max(p.get("batch_size", 1) for p in (m.params for m in METHODS.values()))
    device = network.count_params(model)["total"] * 4 + activation_bytes(model, batch_size=batch, training=True)
    return [
        dataclasses.replace(
            _training_work(ctx, "05", "the headline's first phase, permuted labels", permuted, seeds[:1]),
            weights="the headline model's source",
        ),
        Work(
            name=f"leaderboard: {len(spec.methods)} methods x {len(spec.outputs)} outputs",
            seeds=tuple(seeds),
            images=f"{scored} test a seed",
            forward=board[0] * share,
            backward=board[1] * share,
            device_bytes=device,
            **common,
        ),
        Work(
            name="explanations, randomisation check, concepts",
            seeds=(),
            images=f"{explained} test",
            forward=other[0] * share,
            backward=other[1] * share,
            device_bytes=device,
            **common,
        ),
    ]


def _named_layer(params):
    """Notebook 05's Grad-CAM layer when its parameters name one; None for the last convolution or a layer chosen on
    validation images (`leaderboard.CHOSEN_ON_VALIDATION`), which is planned as the last convolution."""
    return None if params["layer"] in ("", CHOSEN_ON_VALIDATION) else params["layer"]


def per_seed_share(total, seeds):
    """Each seed's equal share of ``total`` images, as notebook 05 divides its image budgets over the split seeds
    (rounded up, so the seeds together use at least ``total``). Returns int."""
    return -(-total // len(seeds))


def attribution_spec(params):
    """The `LeaderboardConfig` notebook 05 scores each seed's model with, from its parameters (its budgets of images
    divided over the seeds, `per_seed_share`); the tolerance, which costs nothing, is left at its default."""
    seeds = params["split_seeds"]
    layer = _named_layer(params)
    return LeaderboardConfig(
        outputs=params["leaderboard_outputs"],
        layers=[layer] if layer else None,
        params=params["method_params"],
        images={method: per_seed_share(n, seeds) for method, n in params["method_images"].items()},
        control_images=per_seed_share(params["control_images"], seeds),
        curve_steps=params["curve_steps"],
    )


def _other_attribution_passes(params, model, explained, n_test):
    """(forward, backward) passes of notebook 05 beside the leaderboard: Grad-CAM and Guided Backprop of every
    explained image and output, the cascading randomisation check (the original three methods after each of the
    model's weighted layers), Grad-CAM per compared layer, one gradient pass per concept image and output."""
    original = [method_passes(m, {}, channels=0, image_size=0) for m in ORIGINAL]
    three = tuple(map(sum, zip(*original, strict=True)))
    layers = sum(1 for layer in explainer.all_layers(model) if layer.weights and not hasattr(layer, "layers"))
    concept_images = params["concept_images"] or n_test
    compared = len(params["compare_layers"]) or 3
    passes = [
        (explained * 2 * 2, explained * 2 * GRADIENT_PASS[1]),
        (
            params["randomization_images"] * (layers + 1) * three[0],
            params["randomization_images"] * (layers + 1) * three[1],
        ),
        (compared * explained, 0),
        (concept_images * 2 * GRADIENT_PASS[0], concept_images * 2 * GRADIENT_PASS[1]),
    ]
    return tuple(map(sum, zip(*passes, strict=True)))


def _with_defaults(notebook, params):
    """Every parameter a notebook runs with: its parameters cell's defaults, then those papermill passes."""
    return {**notebook_parameters(notebook), **params}


PLANNERS = {"02": _plan_baselines, "03": _plan_transfer, "04": _plan_finetune, "05": _plan_attribution}


def make_plan(notebooks=None, *, profile="demo", overrides=None, grid=None, device=None):
    """The plan of ``streetlib run``: every notebook's work, with its data counted and its peaks estimated.

    Args:
        notebooks, profile, overrides, grid: as in `runner.run` (checked the same way, by `runner.plan`).
        device: str, the device the run would use, as `device_name` says ('CPU (...)' or a GPU's name). Default:
            this machine's. On a CPU the peak host memory includes the device memory.

    Returns:
        `Plan`. Times need a `calibration.Calibration` (`calibration.calibrate`): ``plan.seconds(calibration)``.

    Raises:
        ValueError: a profile, notebook or parameter that is wrong (as `runner.plan` says).
    """
    overrides = dict(overrides or {})
    jobs = runner.plan(notebooks, profile=profile, overrides=overrides, grid=grid)
    first, _, shared = jobs[0]
    root_dir = runner._output_root(first, shared)
    ctx = _Context(profile, overrides, root_dir)
    data_params = ctx.params_of("00")
    given = data_params["data_dir"]
    path = Path(given).expanduser() if given else paths.demo_data_dir().relative_to(paths.root())
    data = count_images(
        path if path.is_absolute() else root_dir / path,
        source=data_params["source"],
        classes=data_params["classes"] or None,
        per_class=data_params["per_class"],
        image_size=data_params["image_size"],
        replicates=data_params["replicates"],
    )
    ctx.set_data(data)
    work = []
    for nb, _, params in jobs:
        planner = PLANNERS.get(nb.stem.split("_", 1)[0])
        work += planner(ctx, _with_defaults(nb, params)) if planner else []
    dataset_bytes = data.total * math.prod(data.image_shape) * 3
    on_cpu = (device or device_name()).startswith("CPU")
    largest = max((w.host_bytes + (w.device_bytes if on_cpu else 0) for w in work), default=0)
    return Plan(
        profile=profile,
        data=data,
        work=work,
        image_size=data_params["image_size"],
        host_bytes=RUNTIME_BYTES + dataset_bytes + largest,
        on_cpu=on_cpu,
        device_bytes=max((w.device_bytes for w in work), default=0),
        disk_bytes=sum(w.disk_bytes for w in work) + max((w.scratch_bytes for w in work), default=0),
    )
