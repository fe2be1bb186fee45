"""What a training run is: its settings, validated once, and how they are written to and read from its manifest.

A `RunConfig` holds every setting that changes what a run computes (two runs with equal configurations, data and
split train the same model), so it is the run's identity: a finished run is reused, or an interrupted one resumed,
only under an equal configuration. How a run is executed (resume or start over, the device strategy, XLA, the feature
cache's memory budget, verbosity) is an `ExecutionConfig`, kept apart so it never changes that identity.

Each dataclass checks its fields against a table of constraints, after scikit-learn's ``_parameter_constraints``:
field name -> list of accepted kinds of value, any of which may match.
"""

import dataclasses
import numbers
import os
from dataclasses import dataclass
from typing import ClassVar

from streetlib.classes import OUTPUTS
from streetlib.constraints import Interval, Keys, Options, validate_parameters
from streetlib.data import pipeline
from streetlib.models import backbones
from streetlib.models.network import HEADS, POOLINGS
from streetlib.models.weights import check_weights, describe, normalization_for

# The original study's phases (what `RunConfig.preset` fills in). Its from-scratch settings are not published:
# 'scratch' reuses the transfer optimiser.
PHASES = {
    "transfer": {
        "weights": "hed-bsds500",
        "frozen_through": "backbone",
        "optimizer": "nadam",
        "learning_rate": 2e-3,
        "momentum": None,
        "epochs": 50,
    },
    "finetune": {
        "weights": None,
        "frozen_through": "block4_pool",
        "optimizer": "sgd",
        "learning_rate": 1e-4,
        "momentum": 0.9,
        "epochs": 100,
    },
    "scratch": {
        "weights": "random",
        "frozen_through": None,
        "optimizer": "nadam",
        "learning_rate": 2e-3,
        "momentum": None,
        "epochs": 100,
    },
}
OPTIMIZERS = ("nadam", "adam", "sgd", "rmsprop")
LR_SCHEDULES = ("plateau", "cosine")
CACHE_MODES = ("auto", "features", "none")
LOSS_WEIGHTS = {"region": 0.5, "city": 1.0}
MONITOR = "val_city_accuracy"
# The fields that fix a model's layers and what its input looks like: a fine-tune takes them from its transfer run.
ARCHITECTURE = (
    "backbone",
    "image_size",
    "normalization",
    "cut",
    "head",
    "pooling",
    "units",
    "filters",
    "head_stride",
    "dropout",
)
SGD_MOMENTUM = 0.9


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The settings of one training run: everything that changes what it computes.

    Build one with `preset` for the original's phases. Every field is checked when the config is made, so a mistake
    fails before anything is trained or written.

    Attributes:
        phase: 'transfer' (backbone frozen), 'finetune' (from a transfer model, frozen through ``frozen_through``)
            or 'scratch' (everything trains).
        weights: the weight source (see `streetlib.models.weights`): a name or a weights file. None only for 'finetune':
            the source of the model it starts from.
        backbone: str, a `backbones.BACKBONES` name (stored as the registry writes it). Default 'vgg16'.
        image_size: int >= 32, images are resized to this square size. Default 64.
        normalization: a `streetlib.data.pipeline.NORMALIZATIONS` mode, or None (default): what the weight source
            expects (see `input_normalization`). A mode equal to that default is stored as None.
        epochs: int >= 1. Default 50.
        batch_size: int >= 1, the global batch size. Default 32.
        cut: str or None, the backbone layer where the backbone ends (e.g. 'block1_pool'), see
            `streetlib.models.network.build_model`. Default None: the whole backbone.
        head, pooling, units, filters, head_stride, dropout: the head, see `network.build_model`. Default
            the original's dense head with average pooling.
        augment: bool or dict of `streetlib.data.pipeline.augmentation` arguments. Default True (the original's).
        cache: 'auto' (default): train on cached frozen-part features when something is frozen, in memory if the
            cache fits the execution's ``max_cache_bytes``, else on disk if it has room, else without a cache;
            'features': the same but an error when neither has room; 'none': never cache.
        augment_copies: int >= 1, K augmented copies cached when augmenting and caching. Default 4.
        seed: int >= 0, seeds weights, dropout, shuffling and augmentation. Default 0.
        frozen_through: str, the layer frozen through ('backbone', a backbone layer such as 'block4_pool'), or
            None: nothing frozen.
        optimizer: one of `OPTIMIZERS`; learning_rate: float > 0; momentum: float in [0, 1) for 'sgd' (None
            means 0.9; Nesterov), None for the others.
        loss_weights: dict output -> float. Default ``{"region": 0.5, "city": 1.0}``.
        early_stopping: None (default) or int patience on the validation city loss.
        lr_schedule: how the learning rate moves from ``learning_rate`` over the epochs: 'plateau' (default: halved
            after 5 epochs without a lower validation city loss, down to 1e-6) or 'cosine' (epoch ``e`` of ``epochs``
            trains at ``learning_rate * (1 + cos(pi * e / epochs)) / 2``: the last epochs take small steps, so the
            checkpoint a run ends on jumps less with the float kernels of the CPU; its epochs are then part of what
            each epoch computes, so they cannot change on resume).
        mixed_precision: bool, 16-bit compute with float32 variables and float32 outputs: Keras's 'mixed_float16'
            policy on a GPU, 'mixed_bfloat16' on a TPU and on a CPU. On a CPU it is for rehearsing the GPU path
            (training warns so): usually slower than float32 there (fast only with AVX512_BF16 or AMX), and its
            numbers differ from a GPU's. Part of the configuration because 16-bit arithmetic changes the numbers a
            run reaches. Default False.
    """

    phase: str = "transfer"
    weights: str | None = PHASES["transfer"]["weights"]
    backbone: str = "vgg16"
    image_size: int = 64
    normalization: str | None = None
    epochs: int = PHASES["transfer"]["epochs"]
    batch_size: int = 32
    cut: str | None = None
    head: str = "dense"
    pooling: str = "avg"
    units: int | None = None
    filters: int = 64
    head_stride: int = 2
    dropout: float = 0.5
    augment: bool | dict = True
    cache: str = "auto"
    augment_copies: int = 4
    seed: int = 0
    frozen_through: str | None = PHASES["transfer"]["frozen_through"]
    optimizer: str = PHASES["transfer"]["optimizer"]
    learning_rate: float = PHASES["transfer"]["learning_rate"]
    momentum: float | None = None
    loss_weights: dict = dataclasses.field(default_factory=lambda: dict(LOSS_WEIGHTS))
    early_stopping: int | None = None
    lr_schedule: str = "plateau"
    mixed_precision: bool = False

    # Fields an interrupted run may be resumed with changed: how long it trains, not what each epoch computes (with
    # the cosine schedule, the epochs set every epoch's learning rate: see `changes`).
    resumable: ClassVar[tuple] = ("epochs", "early_stopping")

    _parameter_constraints: ClassVar[dict] = {
        "phase": [Options(PHASES)],
        "weights": [str, None],
        "backbone": [Options(backbones.BACKBONES)],
        "image_size": [Interval(numbers.Integral, 32, None, closed="left")],
        "normalization": [Options(sorted(pipeline.NORMALIZATIONS)), None],
        "epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "cut": [str, None],
        "head": [Options(HEADS)],
        "pooling": [Options(POOLINGS)],
        "units": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "filters": [Interval(numbers.Integral, 1, None, closed="left")],
        "head_stride": [Interval(numbers.Integral, 1, None, closed="left")],
        "dropout": [Interval(numbers.Real, 0, 1, closed="left")],
        "augment": [bool, Keys(pipeline.DEFAULT_AUGMENTATION)],
        "cache": [Options(CACHE_MODES)],
        "augment_copies": [Interval(numbers.Integral, 1, None, closed="left")],
        "seed": [Interval(numbers.Integral, 0, None, closed="left")],
        "frozen_through": [str, None],
        "optimizer": [Options(OPTIMIZERS)],
        "learning_rate": [Interval(numbers.Real, 0, None, closed="neither")],
        "momentum": [None, Interval(numbers.Real, 0, 1, closed="left")],
        "loss_weights": [Keys(OUTPUTS, exact=True)],
        "early_stopping": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "lr_schedule": [Options(LR_SCHEDULES)],
        "mixed_precision": [bool],
    }

    def __post_init__(self):
        if isinstance(self.weights, os.PathLike):
            # A weights file given as a Path: recorded by its str.
            self._set("weights", str(self.weights))
        if isinstance(self.backbone, str):
            self._set("backbone", backbones.get_backbone(self.backbone).name)
        validate_parameters(self)
        self._check_relations()
        self._canonicalize()

    def _set(self, name, value):
        # The dataclass is frozen for its users; only construction settles a field's stored form.
        object.__setattr__(self, name, value)

    def _check_relations(self):
        """The checks that involve several fields."""
        if self.weights is None and self.phase != "finetune":
            raise ValueError(f"`weights=None` is for phase='finetune' only. Received: phase={self.phase!r}")
        if self.weights is not None:
            check_weights(self.weights, backbone=self.backbone)
        if self.momentum is not None and self.optimizer != "sgd":
            raise ValueError(f"`momentum` applies to optimizer='sgd' only. Received: optimizer={self.optimizer!r}")
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in self.loss_weights.values()):
            raise ValueError(
                f"Invalid `loss_weights`. Expected float values. Received: loss_weights={self.loss_weights!r}"
            )

    def _canonicalize(self):
        """Store each value in one form, so equal settings make equal configs (and equal manifests)."""
        for name in (
            "image_size",
            "epochs",
            "batch_size",
            "augment_copies",
            "seed",
            "units",
            "filters",
            "head_stride",
            "early_stopping",
        ):
            if getattr(self, name) is not None:
                self._set(name, int(getattr(self, name)))
        self._set("learning_rate", float(self.learning_rate))
        self._set("loss_weights", {k: float(v) for k, v in self.loss_weights.items()})
        if self.optimizer == "sgd":
            self._set("momentum", float(SGD_MOMENTUM if self.momentum is None else self.momentum))
        if self.weights is not None and self.normalization == normalization_for(self.weights, self.backbone):
            self._set("normalization", None)

    @classmethod
    def preset(cls, phase, **overrides):
        """The original study's settings for a phase, with some changed.

        Args:
            phase: 'transfer' (HED-BSDS500 weights, backbone frozen, Nadam 2e-3, 50 epochs), 'finetune' (frozen
                through 'block4_pool', SGD 1e-4 momentum 0.9 Nesterov, 100 epochs; the weights are those of the
                model it starts from) or 'scratch' (random init, nothing frozen, Nadam 2e-3, 100 epochs).
            **overrides: `RunConfig` fields.

        Returns:
            `RunConfig`.
        """
        if phase not in PHASES:
            raise ValueError(f"Invalid `phase`. Expected one of {list(PHASES)}. Received: phase={phase!r}")
        settings = {**PHASES[phase], **overrides}
        if settings["optimizer"] != "sgd" and "momentum" not in overrides:
            settings["momentum"] = None  # the phase's SGD momentum does not carry over to another optimiser
        return cls(phase=phase, **settings)

    def replace(self, **changes):
        """A copy with some fields changed (and checked again). Returns `RunConfig`."""
        return dataclasses.replace(self, **changes)

    def _source_normalization(self):
        """The normalisation the weight source expects (see `weights.normalization_for`). Returns str."""
        return normalization_for(self.weights, self.backbone)

    @property
    def input_normalization(self):
        """The normalisation the run's images get: ``normalization``, or the weight source's. Returns str."""
        return self.normalization or self._source_normalization()

    @property
    def optimizer_config(self):
        """The optimiser as `train.make_optimizer` takes it and the manifest records it. Returns dict."""
        config = {"name": self.optimizer, "learning_rate": self.learning_rate}
        if self.optimizer == "sgd":
            config.update(momentum=self.momentum, nesterov=True)
        return config

    def changes(self, other, *, resuming=False):
        """The fields that differ from ``other``'s.

        Args:
            other: `RunConfig`.
            resuming: bool, leave out the `resumable` fields (``epochs`` stays in when either config has the
                cosine schedule).

        Returns:
            dict field -> (other's value, this config's value).
        """
        skipped = self.resumable if resuming else ()
        if self.lr_schedule == "cosine" or other.lr_schedule == "cosine":
            skipped = tuple(f for f in skipped if f != "epochs")
        return {
            f.name: (getattr(other, f.name), getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in skipped and getattr(other, f.name) != getattr(self, f.name)
        }

    def to_manifest(self, run, *, init_from=None, weights_file=None, xla=False):
        """The manifest's ``config`` record of a run of this configuration.

        Args:
            run: `streetlib.runs.RunId`.
            init_from: str or None, the portable path of the model a fine-tune started from.
            weights_file: dict or None, the file the starting weights were read from: ``path``, ``sha256``,
                ``verified`` and ``detail`` (see `streetlib.models.weights.provenance`); recorded, not part of the
                identity.
            xla: bool, whether the train step was XLA-compiled (recorded, not part of the identity).

        Returns:
            dict, JSON-ready, keys in the manifest's order.
        """
        if self.weights is None:
            raise ValueError("A fine-tune config needs its `weights` (the source of `init_from`) to be recorded.")
        return {
            "experiment": run.experiment,
            "run": run.name,
            "phase": self.phase,
            "weights": self.weights,
            "weights_label": describe(self.weights),
            "weights_file": weights_file,
            "init_from": init_from,
            "backbone": self.backbone,
            "image_size": self.image_size,
            "normalization": self.input_normalization,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "cut": self.cut,
            "head": self.head,
            "pooling": self.pooling,
            "units": self.units,
            "filters": self.filters,
            "head_stride": self.head_stride,
            "dropout": self.dropout,
            "augment": self.augment,
            "cache": self.cache,
            "augment_copies": self.augment_copies,
            "seed": self.seed,
            "frozen_through": self.frozen_through,
            "optimizer": self.optimizer_config,
            "loss_weights": self.loss_weights,
            "early_stopping": self.early_stopping,
            "lr_schedule": self.lr_schedule,
            "mixed_precision": self.mixed_precision,
            "xla": bool(xla),
            "monitor": MONITOR,
        }

    @classmethod
    def from_manifest(cls, record):
        """The configuration a manifest's ``config`` record was written from (the inverse of `to_manifest`).

        Args:
            record: dict, a manifest's ``config``.

        Returns:
            `RunConfig`.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"optimizer", "learning_rate", "momentum"}
        optimizer = record["optimizer"]
        return cls(
            **{k: v for k, v in record.items() if k in names},
            optimizer=optimizer["name"],
            learning_rate=optimizer["learning_rate"],
            momentum=optimizer.get("momentum"),
        )


@dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
    """How a run is executed: options that never change what it computes, so never its identity.

    Attributes:
        resume: bool. True (default) resumes an interrupted run of this name.
        force: bool. True deletes the run's earlier results and starts over. Default False.
        reuse: bool. True returns a run that already finished with the same configuration instead of refusing it;
            if its model files are missing (a fresh clone of committed results), it is trained again, with a
            warning. Default False.
        strategy: None or 'auto' (TPU, several GPUs, one GPU or CPU, whichever is there), 'default', 'mirrored',
            'tpu', or a `tf.distribute.Strategy` (see `streetlib.training.strategy.choose_strategy`).
        xla: bool, compile the train step with XLA. Default False.
        max_cache_bytes: int, the largest feature cache held in memory, in bytes; a larger one is written to the
            run's models folder and read from there a batch at a time (the manifest's ``cache_plan`` records what
            was decided and why). Default 2 GiB.
        feature_dir: str, `os.PathLike` or None: a folder where runs that cache their own split's features (augmented
            copies) keep them, keyed by everything they depend on (`streetlib.training.cache.split_key`), and where
            later runs, in this process or another, read them: a transfer run continued in notebook 04 reads its
            notebook-03 run's. Nothing in it is ever stale (a changed input gives another key); delete it when
            done. Default None: a run's cache lasts while it trains.
        verbose: Keras's fit verbosity: 'auto' (default, a progress bar), 0, 1 or 2.
    """

    resume: bool = True
    force: bool = False
    reuse: bool = False
    strategy: object = None
    xla: bool = False
    max_cache_bytes: int = 2 * 2**30
    feature_dir: str | os.PathLike | None = None
    verbose: str | int = "auto"

    _parameter_constraints: ClassVar[dict] = {
        "resume": [bool],
        "force": [bool],
        "reuse": [bool],
        "xla": [bool],
        "max_cache_bytes": [Interval(numbers.Integral, 0, None, closed="left")],
        "feature_dir": [str, os.PathLike, None],
        "verbose": [Options(["auto"]), Interval(numbers.Integral, 0, 2, closed="both")],
    }

    def __post_init__(self):
        validate_parameters(self)
