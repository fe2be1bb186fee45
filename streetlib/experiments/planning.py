"""What ``streetlib run --profile NAME`` would do, and whether it fits, before anything runs.

`make_plan` reads the parameters the run would use (`runner.plan`: the same profile, overrides and checks) and lists
the work of each notebook: every training run of notebooks 03 and 04 (`study.transfer_config`,
`study.finetune_config` and, for 04's ``continued_control``, `study.continued_config` names, one per weight source,
over the split seeds), the baselines' feature extractions (02) and the attribution work (05). Work is counted in
*passes*: forward passes of the whole VGG16 convolutional base over one image at the profile's image size. A layer's
share of a pass is its multiply-adds, ``H*W*k*k*Cin*Cout`` for a convolution (the kernel's size times the output's
positions), over VGG16's; a backward pass counts twice its forward. The time is the passes times the seconds a pass
takes here (`calibrate`: a few timed batches of VGG16 with random weights), so it says what this device would take:
run the plan on the machine that will run the profile.

Memory and disk follow the run's own decisions: the feature cache of each training run is what `train.plan_cache`
decides for it (in memory, on disk or none). Peak host memory is the notebook process's runtime (`RUNTIME_BYTES`),
the uint8 images and the largest work's host share: its feature cache held in memory and, on a CPU, whose memory is
the device's too, its device memory (parameters, optimiser state, one batch's activations).
"""

import dataclasses
import inspect
import json
import math
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from streetlib import paths
from streetlib.attribution import explainer
from streetlib.attribution import leaderboard as board_lib
from streetlib.attribution.registry import METHODS, ORIGINAL
from streetlib.classes import STREET10, STREET10_COUNTS, SYNTH10
from streetlib.data import loaders
from streetlib.data.splits import _part_sizes, make_split
from streetlib.experiments import runner, study
from streetlib.models import network
from streetlib.training import train
from streetlib.training.config import ARCHITECTURE, Execution, RunConfig

# A gradient pass: one forward and one backward (twice the forward's work), as (forward, backward) passes.
GRADIENT_PASS = (1, 2)
# Optimiser slots per trainable parameter (Keras): Adam and Nadam keep two moments, SGD with momentum and RMSprop one.
OPTIMIZER_SLOTS = {"adam": 2, "nadam": 2, "sgd": 1, "rmsprop": 1}
CHECKPOINTS = ("best", "final")
# Resident memory of a notebook's Python process before it loads data or builds a model: TensorFlow, Keras, numpy,
# pandas, matplotlib and streetlib imported (688 MB measured, VmRSS, TensorFlow 2.20 on Linux, 2026-12-04).
RUNTIME_BYTES = 700 * 10**6
# What the format says the largest work holds in host memory, on a CPU (True) or beside an accelerator (False).
HOST_SHARE = {
    False: "the largest feature cache held",
    True: "the work holding the most: its feature cache and, the device being the CPU, its device memory",
}
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


# -- the data ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataCounts:
    """The images a run would load, counted without loading them.

    Attributes:
        path: Path of the dataset.
        counts: dict class name -> int images.
        image_shape: (H, W) of the images as stored (the run holds them as uint8 at this size).
        assumed: bool, True when the counts come from the parameters, not from files.
        note: str, one line saying where the counts come from.
    """

    path: Path
    counts: dict
    image_shape: tuple
    assumed: bool
    note: str

    @property
    def total(self):
        return sum(self.counts.values())

    def split_sizes(self):
        """Images per split as `make_split` sizes them (per class, test then validation rounding up): dict
        'train', 'val', 'test' -> int. Identical images, kept together by `make_split`, are counted apart."""
        defaults = inspect.signature(make_split).parameters
        test_size, val_size = defaults["test_size"].default, defaults["val_size"].default
        parts = np.array([_part_sizes(n, test_size, val_size) for n in self.counts.values()]).sum(axis=0)
        return {"train": int(parts[2]), "val": int(parts[1]), "test": int(parts[0])}


def count_images(path, *, source="street10", classes=None, per_class=100, image_size=224):
    """Count a dataset's images per class without loading them.

    A folder of ``<class>.npy`` files (Street10 format) is counted from the arrays' headers (memory-mapped, never
    read); an image folder from its image files per class. A missing dataset is planned with what the parameters say:
    ``per_class`` images of each of the 10 synthetic classes for ``source='synth'``, Street10's published 4,151 images
    otherwise, marked as assumed.

    Args:
        path: str or Path of the dataset.
        source: notebook 00's ``source``: 'synth', 'street10' or 'folder'.
        classes: None or a class spec (see `streetlib.classes.get_class_spec`), as the notebooks pass it.
        per_class: int, images per class of a synthetic dataset not generated yet.
        image_size: int, the size synthetic images are made at and folder images resized to, in pixels.

    Returns:
        `DataCounts`.
    """
    path = Path(path)
    if any(path.glob("*.npy")):
        # The loader's own choice of classes, so the plan counts the files the run reads.
        spec = loaders._resolve_spec(path, classes)
        shapes = {c: np.load(path / f"{c}.npy", mmap_mode="r", allow_pickle=False).shape for c in spec.classes}
        first = next(iter(shapes.values()))
        counts = {c: int(s[0]) for c, s in shapes.items()}
        return DataCounts(path, counts, tuple(first[1:3]), False, f"{path}: {sum(counts.values())} images (.npy)")
    if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        spec = loaders._resolve_spec(path, classes)
        counts = {
            c: sum(p.suffix.lower() in loaders.IMAGE_EXTENSIONS for p in (path / c).iterdir())
            for c in spec.classes
            if (path / c).is_dir()
        }
        note = f"{path}: {sum(counts.values())} image files"
        return DataCounts(path, counts, (image_size, image_size), False, note)
    if source == "synth":
        counts = dict.fromkeys(SYNTH10.classes, per_class)
        note = f"{path} not generated yet: counts assumed from per_class={per_class} x {len(counts)} classes"
        return DataCounts(path, counts, (image_size, image_size), True, note)
    counts = dict(zip(STREET10.classes, STREET10_COUNTS, strict=True))
    note = f"{path} not found: counts assumed from Street10's published {sum(counts.values()):,} images"
    return DataCounts(path, counts, (224, 224), True, note)


# -- passes ------------------------------------------------------------------------------------------------------------


def layer_flops(model):
    """Multiply-adds per image of every convolution and dense layer of ``model`` (nested models expanded), in order:
    the kernel's size times the output positions (``H*W*k*k*Cin*Cout`` for a convolution). Returns a list of
    (layer name, int)."""
    out = []
    for layer in explainer.all_layers(model):
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and not isinstance(layer, keras.Model):
            positions = math.prod(layer.output.shape[1:-1])
            out.append((layer.name, math.prod(kernel.shape) * positions))
    return out


def _model_flops(model):
    return sum(f for _, f in layer_flops(model))


def vgg16_flops(image_size):
    """Multiply-adds of one forward pass of VGG16's convolutional base over one ``image_size`` px image: the unit of a
    pass. Returns int."""
    return _model_flops(network.build_backbone("vgg16", weights="random", input_shape=(image_size, image_size, 3)))


def training_passes(n_train, n_val, *, epochs, frozen, trainable, cached_copies):
    """Passes of one training run, as (forward, backward).

    With a feature cache (``cached_copies`` > 0) the frozen part runs once per cached image (each augmented copy of
    the training set, and the validation set), then only the trainable part runs each epoch; without one, the whole
    model runs each epoch. Backward passes go through the trainable part only, at twice its forward work.

    Args:
        n_train, n_val: int, training and validation images.
        epochs: int, at most this many epochs (early stopping may end sooner).
        frozen, trainable: float, the frozen and the trainable part's share of a pass (see `vgg16_flops`).
        cached_copies: int, copies of the training set cached (`train.plan_cache`'s ``copies``), 0 for no cache.

    Returns:
        (float forward passes, float backward passes).
    """
    if cached_copies:
        forward = frozen * (cached_copies * n_train + n_val) + epochs * trainable * (n_train + n_val)
    else:
        forward = epochs * (frozen + trainable) * (n_train + n_val)
    return forward, epochs * GRADIENT_PASS[1] * trainable * n_train


def method_passes(method, params, *, channels, image_size):
    """One attribution method's passes per image of its model, as (forward, backward), from its parameters (the
    costs the methods' docstrings state; `streetlib.benchmarks` measures them, BENCHMARKS.md).

    Args:
        method: a `registry.METHODS` name.
        params: dict of the method's parameters (its defaults fill the rest).
        channels: int, channels of the layer a CAM reads (Score-CAM runs one forward pass per channel).
        image_size: int, pixels (occlusion's positions).
    """
    p = {**METHODS[method].params, **params}
    if method == "score_cam":
        return 1 + channels, 0
    if method == "occlusion":
        return 1 + math.ceil((image_size - p["patch"]) / p["stride"] + 1) ** 2, 0
    if method == "rise":
        return 1 + p["masks"], 0
    if method == "smoothgrad":
        return 1 + p["samples"], GRADIENT_PASS[1] * p["samples"]
    if method == "integrated_gradients":
        return p["steps"] + 1, GRADIENT_PASS[1] * (p["steps"] + 1)
    if method == "guided_grad_cam":
        return GRADIENT_PASS[0] + 1, GRADIENT_PASS[1]
    if METHODS[method].family == "cam":
        # They differentiate only the head above their layer: about one forward pass.
        return 1, 0
    return GRADIENT_PASS


# -- memory ------------------------------------------------------------------------------------------------------------


def _outputs(model):
    """Per-image float32 values of each layer's output, and whether the layer has a non-linear activation (whose
    input a backward pass needs too)."""
    out = []
    for layer in explainer.all_layers(model):
        if isinstance(layer, (keras.Model, keras.layers.InputLayer)):
            continue
        activation = getattr(getattr(layer, "activation", None), "__name__", "linear")
        out.append((math.prod(layer.output.shape[1:]), activation != "linear"))
    return out


def activation_bytes(model, *, batch_size, training):
    """Device bytes of one batch's activations: for training, every output the backward pass reads (an activated
    layer's input too) plus the two largest outputs' gradients in flight; for inference, the two largest outputs
    (a layer's input and output). Returns int."""
    sizes = _outputs(model)
    largest = sorted((n for n, _ in sizes), reverse=True)[:2]
    kept = sum(n * (2 if activated else 1) for n, activated in sizes) if training else 0
    return int((kept + sum(largest)) * batch_size * 4)


def training_device_bytes(model, *, frozen, rest, cached, optimizer, batch_size):
    """Device bytes of a training run: parameters, gradients and optimiser state of the trainable ones, and the
    larger of the feature extraction's and a training step's activations. Returns int."""
    counts = network.count_params(model)
    state = counts["total"] + counts["trainable"] * (1 + OPTIMIZER_SLOTS[optimizer])
    if cached:
        step = max(activation_bytes(frozen, batch_size=batch_size, training=False), _step_bytes(rest, batch_size))
    elif frozen is not None:
        step = activation_bytes(frozen, batch_size=batch_size, training=False) + _step_bytes(rest, batch_size)
    else:
        step = _step_bytes(model, batch_size)
    return int(state * 4 + step)


def _step_bytes(model, batch_size):
    return activation_bytes(model, batch_size=batch_size, training=True)


# -- the plan ----------------------------------------------------------------------------------------------------------


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
        cache: str, the feature cache (`train.plan_cache`'s decision), or ''.
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

    @property
    def runs(self):
        return max(1, len(self.seeds))

    @property
    def passes(self):
        """Passes of all its runs (forward + backward)."""
        return (self.forward + self.backward) * self.runs

    def seconds(self, calibration):
        """Estimated seconds of all its runs on the calibrated device."""
        return self.runs * (self.forward * calibration.forward + self.backward * calibration.backward)


@dataclass(frozen=True)
class Calibration:
    """Seconds per pass on a device (see `calibrate`).

    Attributes:
        forward: float, seconds of one forward pass (one image, VGG16, at ``image_size``).
        backward: float, seconds of one backward-pass equivalent (half a backward pass: the passes count a backward
            pass as two).
        device: str, 'CPU (model)' or the GPU's name.
        image_size: int, pixels.
        batch_size: int, images per timed batch.
    """

    forward: float
    backward: float
    device: str = "given"
    image_size: int = 0
    batch_size: int = 0


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
            model = network.build_model(**fields, weights="random", input_shape=shape, spec=self.spec)
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


def _training_work(ctx, notebook, name, config, seeds):
    """The `Work` of one configuration over its seeds."""
    model = ctx.model(config)
    n_train, n_val = ctx.splits["train"], ctx.splits["val"]
    cache = train.plan_cache(
        config.cache,
        model,
        through=config.frozen_through,
        augment=bool(config.augment),
        copies=config.augment_copies,
        n_train=n_train,
        n_val=n_val,
        max_bytes=Execution().max_cache_bytes,
        directory=ctx.root_dir / "models",
    )
    if config.frozen_through is None:
        frozen, rest = None, model
    else:
        frozen, rest = network.split_model(model, through=config.frozen_through)
    unit = ctx.unit(config.image_size)
    shares = {"frozen": (_model_flops(frozen) if frozen else 0) / unit, "trainable": _model_flops(rest) / unit}
    cached = cache["mode"] == "features"
    forward, backward = training_passes(
        n_train, n_val, epochs=config.epochs, cached_copies=cache["copies"] if cached else 0, **shares
    )
    params = network.count_params(model)["total"]
    return Work(
        notebook=notebook,
        name=name,
        weights=config.weights,
        seeds=tuple(seeds),
        images=f"{n_train}/{n_val}/{ctx.splits['test']}",
        epochs=config.epochs,
        image_size=config.image_size,
        forward=forward,
        backward=backward,
        cache=f"{cache['store']} {_size(cache['bytes'])}" if cached else "none",
        host_bytes=cache["bytes"] if cache["store"] == "memory" else 0,
        device_bytes=training_device_bytes(
            model, frozen=frozen, rest=rest, cached=cached, optimizer=config.optimizer, batch_size=config.batch_size
        ),
        disk_bytes=params * 4 * len(CHECKPOINTS) * len(seeds),
        scratch_bytes=cache["bytes"] if cache["store"] == "disk" else 0,
        batch_size=config.batch_size,
    )


def _plan_transfer(ctx, params):
    config = transfer_run_config(params)
    sources, seeds, variant = params["weight_sources"], params["split_seeds"], params["variant"]
    work = [
        _training_work(ctx, "03", study.transfer_config(s, variant), config.replace(weights=s), seeds) for s in sources
    ]
    if params["scratch_epochs"]:
        scratch = RunConfig.preset("scratch", **{f: getattr(config, f) for f in ARCHITECTURE})
        scratch = scratch.replace(epochs=params["scratch_epochs"], batch_size=config.batch_size)
        work.append(_training_work(ctx, "03", f"random-scratch{'-' + variant if variant else ''}", scratch, seeds))
    return work


def _plan_finetune(ctx, params):
    """Notebook 04: each source's fine-tuning runs, then (``continued_control``) its transfer runs continued as many
    epochs with their own recipe (`study.run_continued`)."""
    transfer = transfer_run_config(ctx.params_of("03"))
    frozen = params["finetune_from"] or None
    sources, seeds, variant = params["weight_sources"], params["split_seeds"], params["variant"]
    work = [
        _training_work(
            ctx,
            "04",
            study.finetune_config(s, frozen, variant),
            finetune_run_config(params, transfer.replace(weights=s)),
            seeds,
        )
        for s in sources
    ]
    if params.get("continued_control"):
        continued = transfer.replace(epochs=params["epochs"])
        work += [
            _training_work(ctx, "04", study.continued_config(s, variant), continued.replace(weights=s), seeds)
            for s in sources
        ]
    return work


def _plan_baselines(ctx, params):
    """Notebook 02: each weight source's features of every image, plus augmented copies of each training split."""
    size = params["image_size"]
    backbone = network.build_backbone(params["backbone"], weights="random", input_shape=(size, size, 3))
    layer = params["layer"] or backbone.layers[-1].name
    cut = network.cut_backbone(backbone, layer)
    share = _model_flops(cut) / ctx.unit(size)
    seeds = params["split_seeds"]
    images = ctx.data.total + sum(k * len(seeds) * ctx.splits["train"] for k in params["augment_copies"])
    *grid, channels = cut.output.shape[1:]
    dims = {"avg": channels, "max": channels, "avgmax": 2 * channels, "flatten": math.prod(grid) * channels}
    feature_bytes = images * sum(dims[p] for p in params["poolings"]) * 4
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
    """Notebook 05: the leaderboard, then the explanations, the randomisation check and the concepts, on a model of
    the transfer runs' layers (the fine-tuned ones have the same)."""
    transfer = transfer_run_config(ctx.params_of("03"))
    model = ctx.model(transfer)
    size = transfer.image_size
    share = _model_flops(model) / ctx.unit(size)
    layer = params["layer"] or explainer.default_layer(model)
    channels = explainer.find_layer_path(model, layer)[-1].output.shape[-1]
    spec = board_lib.LeaderboardSpec(
        outputs=params["leaderboard_outputs"],
        layers=[layer] if params["layer"] else None,
        params=params["method_params"],
        images=params["method_images"],
        control_images=params["control_images"],
        curve_steps=params["curve_steps"],
    )
    explained = min(params["max_images"], ctx.splits["test"])
    scored = min(params["leaderboard_images"], explained)
    board = _leaderboard_passes(spec, scored, channels=channels, image_size=size)
    other = _other_attribution_passes(params, model, explained, ctx.splits["test"])
    common = {"notebook": "05", "weights": "the headline model", "seeds": (), "epochs": None, "image_size": size}
    # The costly methods push their copies through the model in batches of their `batch_size`, with gradients.
    batch = max(p.get("batch_size", 1) for p in (m.params for m in METHODS.values()))
    device = network.count_params(model)["total"] * 4 + activation_bytes(model, batch_size=batch, training=True)
    return [
        Work(
            name=f"leaderboard: {len(spec.methods)} methods x {len(spec.outputs)} outputs",
            images=f"{scored} test",
            forward=board[0] * share,
            backward=board[1] * share,
            device_bytes=device,
            **common,
        ),
        Work(
            name="explanations, randomisation check, concepts",
            images=f"{explained} test",
            forward=other[0] * share,
            backward=other[1] * share,
            device_bytes=device,
            **common,
        ),
    ]


def _leaderboard_passes(spec, images, *, channels, image_size):
    """(forward, backward) passes of the model for `board_lib.leaderboard` on ``images`` images: per output and
    method, its maps (and a 1-image tracing call), the two sanity checks' maps and the deletion and insertion curves
    on its control images; the random floor's curves; one timing forward pass of every image."""
    forward = backward = 0.0
    layers = len(spec.layers or [None])
    for method in spec.methods:
        n = min(spec.images.get(method, images), images)
        k = min(spec.control_images or n, n)
        f, b = method_passes(method, spec.params.get(method, {}), channels=channels, image_size=image_size)
        times = (layers if METHODS[method].uses_layer else 1) * len(spec.outputs)
        forward += times * ((n + 1 + 2 * k) * f + 2 * k * (spec.curve_steps + 1))
        backward += times * (n + 1 + 2 * k) * b
    k = min(spec.control_images or images, images)
    forward += len(spec.outputs) * (images + 2 * k * (spec.curve_steps + 1))
    return forward, backward


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
    return {**runner.notebook_parameters(notebook), **params}


PLANNERS = {"02": _plan_baselines, "03": _plan_transfer, "04": _plan_finetune, "05": _plan_attribution}


def make_plan(notebooks=None, *, profile="demo", overrides=None, grid=None, device=None):
    """The plan of ``streetlib run``: every notebook's work, with its data counted and its peaks estimated.

    Args:
        notebooks, profile, overrides, grid: as in `runner.run` (checked the same way, by `runner.plan`).
        device: str, the device the run would use, as `device_name` says ('CPU (...)' or a GPU's name). Default:
            this machine's. On a CPU the peak host memory includes the device memory.

    Returns:
        `Plan`. Times need a `Calibration` (`calibrate`): ``plan.seconds(calibration)``.

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


# -- calibration -------------------------------------------------------------------------------------------------------


def device_name():
    """'CPU (<model name>)' or the first GPU's name."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text()) if cpuinfo.is_file() else []
    return f"CPU ({names[0].strip() if names else platform.processor() or 'unknown'})"


def calibrate(image_size, *, batch_size=32, budget=6.0):
    """Time VGG16 (random weights) forward and forward + backward at ``image_size`` on the current device.

    Each is traced and run once untimed, then timed over as many batches as fit its half of ``budget`` (at least
    one). On a CPU a batch holds 2 images at 224 px (as much work at smaller sizes), so that with the two untimed
    calls calibration takes about 10-20 s; on a GPU, ``batch_size`` images (a GPU is slow on small batches).

    Args:
        image_size: int, pixels.
        batch_size: int, the profile's batch size (the most images a timed batch holds).
        budget: float, seconds of timed batches.

    Returns:
        `Calibration`.
    """
    import tensorflow as tf

    device = device_name()
    batch = batch_size if not device.startswith("CPU") else max(1, min(batch_size, round(2 * (224 / image_size) ** 2)))
    model = network.build_backbone("vgg16", weights="random", input_shape=(image_size, image_size, 3))
    images = tf.random.uniform((batch, image_size, image_size, 3))

    @tf.function
    def forward(x):
        return model(x, training=False)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model(x, training=True))
        return tape.gradient(loss, model.trainable_weights)

    seconds_forward = _seconds_per_image(forward, images, budget / 2)
    seconds_step = _seconds_per_image(step, images, budget / 2)
    # The passes count a backward pass as two forward ones: a unit of backward is half the backward's measured time.
    backward = max(seconds_step - seconds_forward, 0.0) / GRADIENT_PASS[1]
    return Calibration(seconds_forward, backward, device, image_size, batch)


def _seconds_per_image(fn, images, budget):
    """The least seconds per image of timed calls of ``fn(images)`` after one untimed call, within ``budget``."""
    np.asarray(_first(fn(images)))
    times = []
    while not times or (sum(times) < budget and len(times) < 5):
        start = time.perf_counter()
        np.asarray(_first(fn(images)))
        times.append(time.perf_counter() - start)
    return min(times) / len(images)


def _first(result):
    return result[0] if isinstance(result, (list, tuple)) else result


# -- budgets and output ------------------------------------------------------------------------------------------------


def parse_bytes(text):
    """'12GB', '15 GiB', '500MB' -> bytes (int). GB is 10^9 bytes, GiB 2^30.

    Raises:
        ValueError: not a size.
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS or not _is_number(match.group(1)):
        raise ValueError(f"Invalid size {text!r}. Expected a number and a unit, e.g. 12GB, 15GiB or 500MB.")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_seconds(text):
    """'12h', '90m', '1.5h', '3600s', '2d' -> seconds (float).

    Raises:
        ValueError: not a duration.
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-z]+)\s*", str(text).lower())
    if not match or match.group(2) not in _SECONDS or not _is_number(match.group(1)):
        raise ValueError(f"Invalid duration {text!r}. Expected a number and a unit, e.g. 12h, 90m or 3600s.")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def _is_number(text):
    return re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text) is not None


def check_budgets(plan, calibration, *, seconds=None, host_bytes=None, device_bytes=None, disk_bytes=None):
    """Whether the plan fits each budget given.

    Args:
        plan: `Plan`.
        calibration: `Calibration`, for the time.
        seconds, host_bytes, device_bytes, disk_bytes: the budgets (None: not checked).

    Returns:
        list of dict ``what``, ``needed``, ``given`` (numbers), ``fits`` (bool) and ``line`` ('time: fits (...)' or
        'time: does not fit: X needed, Y given').
    """
    needs = {
        "time": (plan.seconds(calibration), seconds, _duration),
        "host memory": (plan.host_bytes, host_bytes, _size),
        "device memory": (plan.device_bytes, device_bytes, _size),
        "disk": (plan.disk_bytes, disk_bytes, _size),
    }
    rows = []
    for what, (needed, given, show) in needs.items():
        if given is None:
            continue
        fits = needed <= given
        verdict = "fits" if fits else "does not fit"
        line = f"{what}: {verdict}: {show(needed)} needed, {show(given)} given"
        rows.append({"what": what, "needed": needed, "given": given, "fits": fits, "line": line})
    return rows


def _size(n):
    """Bytes as text: '596 MB', '4.2 GB'."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def _duration(seconds):
    """Seconds as text: '40 s', '12 min', '3.4 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.3g} h"


def _passes(n):
    return f"{n:,.0f}" if n >= 10 else f"{n:.2g}"


def format_plan(plan, calibration, budgets=()):
    """The plan as text: one line on the data, one on the device, a table of the work, the peaks and the budgets."""
    counts = "assumed" if plan.data.assumed else "counted"
    split = plan.data.split_sizes()
    lines = [
        f"Plan of profile {plan.profile!r} (nothing runs). Data: {plan.data.note}.",
        f"Each split seed: train {split['train']}, val {split['val']}, test {split['test']} ({counts}).",
        f"Device: {calibration.device}; a pass (one image through VGG16's conv base, {calibration.image_size} px): "
        f"forward {calibration.forward * 1e3:.0f} ms, backward {calibration.backward * 2e3:.0f} ms "
        f"(calibrated on batches of {calibration.batch_size}).",
        "",
    ]
    header = ("nb", "work", "weights", "seeds", "images tr/val/test", "epochs", "px", "feature cache", "passes", "time")
    rows = [
        (
            w.notebook,
            w.name,
            w.weights,
            ",".join(map(str, w.seeds)) or "-",
            w.images,
            "-" if w.epochs is None else f"<={w.epochs}",
            str(w.image_size),
            w.cache or "-",
            _passes(w.passes),
            _duration(w.seconds(calibration)),
        )
        for w in plan.work
    ]
    rows.append(("", "total", "", "", "", "", "", "", _passes(plan.passes), _duration(plan.seconds(calibration))))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    runs = sum(w.runs for w in plan.work if w.epochs is not None)
    lines += [
        "",
        f"Passes and times are per configuration, all seeds; epochs are at most (early stopping may end sooner). "
        f"{runs} training runs.",
        f"Peak host memory {_size(plan.host_bytes)} (the Python runtime + uint8 images + {HOST_SHARE[plan.on_cpu]}), "
        f"device memory {_size(plan.device_bytes)} "
        f"(parameters, optimiser state, one batch's activations), disk "
        f"{_size(plan.disk_bytes)} (models x {len(CHECKPOINTS)} checkpoints, baseline features, the largest disk "
        "cache).",
    ]
    lines += [row["line"] for row in budgets]
    return "\n".join(lines)


def to_json(plan, calibration, budgets=()):
    """The plan as a JSON document (str)."""
    doc = {
        "profile": plan.profile,
        "data": {**dataclasses.asdict(plan.data), "path": str(plan.data.path), "splits": plan.data.split_sizes()},
        "calibration": dataclasses.asdict(calibration),
        "work": [{**dataclasses.asdict(w), "passes": w.passes, "seconds": w.seconds(calibration)} for w in plan.work],
        "passes": plan.passes,
        "seconds": plan.seconds(calibration),
        "host_bytes": plan.host_bytes,
        "host_includes_device": plan.on_cpu,
        "device_bytes": plan.device_bytes,
        "disk_bytes": plan.disk_bytes,
        "budgets": list(budgets),
    }
    return json.dumps(doc, indent=1)
