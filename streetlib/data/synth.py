"""The synthetic datasets: street scenes (`streetlib.data.scene`) of every class, drawn in parallel, their cue
masks, and the Street10-format folder with its ``dataset.json`` (how it was made, so it is reused only when made the
same way).

Image ``i`` of class ``c`` is seeded from ``(seed, c, i)``: the same seed gives byte-identical arrays whatever the
number of worker processes.

A dataset can be drawn as ``replicates`` independent datasets of ``per_class`` images per class, stored one after
the other in each class file (replicate ``k`` holds images ``k * per_class`` to ``(k + 1) * per_class - 1``; replicate
0 is the dataset drawn with ``replicates=1``). The split of seed ``s`` then draws from replicate ``s mod replicates``
only (`streetlib.data.splits.make_split`), so as many consecutive seeds as replicates train and test on disjoint
images: their differences are independent, and a comparison over them needs no correction for overlapping splits.
"""

import concurrent.futures
import json
import multiprocessing
import numbers
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from streetlib.classes import SYNTH10
from streetlib.data.loaders import write_street10
from streetlib.data.scene import MIN_SIZE, check_int, check_task, render_scene, twin_layout
from streetlib.paths import atomic_dir

# Recorded in dataset.json; a dataset is reused only when these and the parameters that made it match. The name is
# this module's (`streetlib.attribution.concepts` checks a dataset's generator by it).
_GENERATOR = "streetlib.data.synth"
_VERSION = 1


def cue_fraction(masks):
    """Fraction of each image covered by cue objects.

    Args:
        masks: uint8 or bool `(n, H, W)`, nonzero on cue pixels.

    Returns:
        float64 `(n,)` in [0, 1].
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"Invalid `masks`. Expected an array of shape (n, H, W). Received: shape={masks.shape}")
    return (masks.reshape(len(masks), -1) != 0).mean(axis=1)


# Images drawn per task in a worker process: enough that sending the arrays back costs little next to drawing them
# (about 8 ms an image at 64 px), few enough that the progress bar moves and the workers finish together.
_CHUNK = 25
# A worker process takes about a second to start (a fresh interpreter importing numpy and Pillow), so each one needs
# this many images to pay for itself; smaller datasets get fewer workers, down to none (drawn in this process).
_IMAGES_PER_WORKER = 150
_MAX_DEFAULT_WORKERS = 4


def _check_workers(workers):
    """The number of worker processes asked for: ``workers`` itself, or for None the CPUs this process may use, at
    most `_MAX_DEFAULT_WORKERS`."""
    if workers is None:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, min(usable or 1, _MAX_DEFAULT_WORKERS))
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"Invalid `workers`. Expected None or an int >= 1. Received: workers={workers!r}")
    return int(workers)


def _render_chunk(start, stop, *, per_class, size, seed, classes, cues, task):
    """Images ``start`` to ``stop - 1`` of the dataset in class-major order (image ``k`` is image
    ``k % per_class`` of class ``k // per_class``), each seeded from ``(seed, class, i)``.

    Returns:
        (images, masks): uint8 `(stop - start, size, size, 3)` and uint8 `(stop - start, size, size)`.
    """
    images = np.empty((stop - start, size, size, 3), np.uint8)
    masks = np.empty((stop - start, size, size), np.uint8)
    for k in range(start, stop):
        idx, i = divmod(k, per_class)
        rng = np.random.default_rng(np.random.SeedSequence([seed, idx, i]))
        images[k - start], masks[k - start] = render_scene(
            rng, size=size, city_index=idx, classes=classes, cues=cues, task=task
        )
    return images, masks


def _rendered(total, workers, **scene):
    """Draw images 0 to ``total - 1`` (see `_render_chunk`) in chunks of `_CHUNK`, on up to ``workers`` processes.

    Yields:
        (start, images, masks) per chunk, in the order chunks finish.
    """
    chunks = [(start, min(start + _CHUNK, total)) for start in range(0, total, _CHUNK)]
    workers = min(workers, -(-total // _IMAGES_PER_WORKER), len(chunks))
    if workers <= 1:
        for start, stop in chunks:
            yield start, *_render_chunk(start, stop, **scene)
        return
    # Spawned, not forked: the caller (a notebook kernel) may already run TensorFlow's threads, and a fork of a
    # process with running threads can deadlock in the child.
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(_render_chunk, start, stop, **scene): start for start, stop in chunks}
        for future in concurrent.futures.as_completed(futures):
            yield futures[future], *future.result()
    finally:
        # After an error (or an interrupt), chunks not yet started are dropped rather than drawn for nothing.
        pool.shutdown(cancel_futures=True)


def make_synthetic(
    *, per_class=100, size=64, seed=0, classes=SYNTH10, cues=True, task="cues", progress=False, workers=None
):
    """Generate the synthetic street dataset in memory.

    Image ``i`` of class ``c`` is seeded from ``(seed, c, i)``, so the same seed gives byte-identical arrays and a
    larger ``per_class`` only appends images. The same holds whatever ``workers`` is: each image depends only on its
    own seed, never on which process drew it or when.

    Args:
        per_class: int >= 1, images per class. Default 100.
        size: int >= 32, image height and width in pixels. Default 64.
        seed: int >= 0. Default 0.
        classes: `ClassSpec` with 2 regions of equally many classes (at most 5 each). Default `SYNTH10`.
        cues: bool, False for the control where cue objects carry no label (see `render_scene`). Default True.
        task: 'cues' or 'layout', what carries the region (`streetlib.data.scene.TASKS`). Default 'cues'.
        progress: bool, show a progress bar. Default False.
        workers: None or int >= 1, processes drawing images in parallel (spawned, each takes about a second to
            start). Small datasets use fewer, one per 150 images, and 1 draws in this process. Default None: the
            CPUs available, at most 4.

    Returns:
        (images_by_class, masks_by_class): dicts class name -> uint8 `(per_class, size, size, 3)` and
        class name -> uint8 `(per_class, size, size)` in {0, 1}, in ``classes.classes`` order.
    """
    per_class = check_int(per_class, "per_class", 1)
    size = check_int(size, "size", MIN_SIZE)
    seed = check_int(seed, "seed", 0)
    workers = _check_workers(workers)
    task = check_task(task)
    twin_layout(classes)
    total = per_class * classes.num_classes
    images = np.empty((total, size, size, 3), np.uint8)
    masks = np.empty((total, size, size), np.uint8)
    scene = {"per_class": per_class, "size": size, "seed": seed, "classes": classes, "cues": cues, "task": task}
    with tqdm(total=total, desc="synthetic streets", unit="img", disable=not progress) as bar:
        for start, chunk_images, chunk_masks in _rendered(total, workers, **scene):
            images[start : start + len(chunk_images)] = chunk_images
            masks[start : start + len(chunk_masks)] = chunk_masks
            bar.update(len(chunk_images))
    shape = (classes.num_classes, per_class)
    images, masks = images.reshape(*shape, size, size, 3), masks.reshape(*shape, size, size)
    return dict(zip(classes.classes, images, strict=True)), dict(zip(classes.classes, masks, strict=True))


def _recipe(per_class, size, seed, replicates, task):
    """What ``dataset.json`` records of how a synthetic dataset was made, once each parameter is checked."""
    return {
        "generator": _GENERATOR,
        "version": _VERSION,
        "per_class": check_int(per_class, "per_class", 1),
        "size": check_int(size, "size", MIN_SIZE),
        "seed": check_int(seed, "seed", 0),
        "replicates": check_int(replicates, "replicates", 1),
        "task": check_task(task),
    }


_RECIPE_KEYS = ("per_class", "size", "seed", "replicates", "task")


def _describe(values, keys=_RECIPE_KEYS):
    return ", ".join(f"{key}={values.get(key)!r}" for key in keys)


def generate(
    out_dir, *, per_class=100, size=64, seed=0, replicates=1, task="cues", overwrite=False, progress=True, workers=None
):
    """Generate the synthetic Street10-format dataset (`SYNTH10` classes, with cue masks) and write it.

    The files are written into a temporary folder beside ``out_dir`` and moved into place at the end, so a failure
    (a full disk, Ctrl-C) leaves no partial dataset. ``dataset.json`` records the parameters (see `ensure`).

    Args:
        out_dir: str or Path, the directory to write; its name becomes the dataset name.
        per_class: int >= 1, images per class (of each replicate). Default 100.
        size: int >= 32, image height and width in pixels. Default 64.
        seed: int >= 0. Default 0.
        replicates: int >= 1, independent datasets drawn one after the other (see the module docstring): each class
            file holds ``per_class * replicates`` images. Default 1.
        task: 'cues' or 'layout', what carries the region (`streetlib.data.scene.TASKS`; recorded in
            ``dataset.json``). Default 'cues'.
        overwrite: bool. If False (default), refuse to write over an existing dataset.
        progress: bool, show a progress bar. Default True.
        workers: None or int >= 1, processes drawing images (see `make_synthetic`); the dataset is the same whatever
            it is. Default None: the CPUs available, at most 4.

    Returns:
        Path of ``out_dir``, loadable with `streetlib.data.loaders.load_street10`.

    Raises:
        ValueError: an invalid parameter, before anything is drawn.
        FileExistsError: ``out_dir`` holds a dataset and ``overwrite`` is False.
        OSError: writing failed (the message names ``out_dir``); nothing was left there.
    """
    out_dir = Path(out_dir)
    recipe = _recipe(per_class, size, seed, replicates, task)
    # Checked before drawing too, so a taken directory fails at once rather than after the whole dataset is made.
    if not overwrite and any(out_dir.glob("*.npy")):
        raise FileExistsError(f"{out_dir} already holds a dataset. Choose another --out or pass overwrite=True.")
    images, masks = make_synthetic(
        per_class=recipe["per_class"] * recipe["replicates"],
        size=size,
        seed=seed,
        task=task,
        progress=progress,
        workers=workers,
    )
    meta = {
        "name": out_dir.name,
        "synthetic": True,
        **recipe,
        "mean_cue_fraction": float(cue_fraction(np.concatenate(list(masks.values()))).mean()),
    }
    with atomic_dir(out_dir) as tmp:
        write_street10(tmp, images, classes=SYNTH10, masks_by_class=masks, meta=meta)
    return out_dir


def ensure(
    out_dir,
    *,
    per_class=100,
    size=64,
    seed=0,
    replicates=1,
    task="cues",
    overwrite=False,
    progress=True,
    workers=None,
    report=print,
):
    """The synthetic dataset in ``out_dir`` made with these parameters: reused when it is there, generated when the
    folder holds no dataset.

    The one rule by which notebook 00 and ``streetlib data synth --if-missing`` reuse data, so that a changed
    parameter never silently reads images made with the old one.

    Args:
        out_dir: str or Path.
        per_class, size, seed, replicates, task: as in `generate`; checked before anything is read or drawn.
        overwrite: bool. If True, a dataset made otherwise (or an incomplete one) is replaced. Default False.
        progress, workers: as in `generate`.
        report: callable taking one line of text, saying whether the dataset was reused or written. Default print.

    Returns:
        Path of ``out_dir``.

    Raises:
        ValueError: an invalid ``per_class``, ``size``, ``seed``, ``replicates`` or ``task``.
        FileExistsError: ``out_dir`` holds a dataset made with other parameters, one this generator did not make,
            or class files without ``dataset.json`` (an incomplete dataset), and ``overwrite`` is False. The message
            says which parameters differ.
    """
    out_dir = Path(out_dir)
    recipe = _recipe(per_class, size, seed, replicates, task)
    problem = _how_it_differs(out_dir, recipe)
    if problem is None and (out_dir / "dataset.json").is_file():
        report(f"Reusing the synthetic dataset in {out_dir} ({_describe(recipe)})")
        return out_dir
    if problem is not None and not overwrite:
        raise FileExistsError(
            f"{out_dir} {problem}. Choose another data_dir (--out), or pass overwrite=True (--overwrite) to replace it."
        )
    generate(
        out_dir, **{key: recipe[key] for key in _RECIPE_KEYS}, overwrite=overwrite, progress=progress, workers=workers
    )
    report(f"Wrote the synthetic dataset to {out_dir} ({_describe(recipe)})")
    return out_dir


def _how_it_differs(out_dir, recipe):
    """None if ``out_dir`` holds no dataset or one made by ``recipe``; else how it differs, as a phrase."""
    meta_path = out_dir / "dataset.json"
    if not meta_path.is_file():
        return "holds class files but no dataset.json: an incomplete dataset" if any(out_dir.glob("*.npy")) else None
    try:
        made = json.loads(meta_path.read_text())
    except ValueError as err:
        return f"holds a dataset whose dataset.json is not valid JSON ({err})"
    if not isinstance(made, dict) or made.get("generator") != _GENERATOR:
        return f"holds a dataset not made by {_GENERATOR}"
    # A dataset.json from before replicates and tasks existed holds one replicate of the cues task.
    made = {"replicates": 1, "task": "cues", **made}
    differ = [key for key in ("version", *_RECIPE_KEYS) if made.get(key) != recipe[key]]
    if differ:
        return f"holds a dataset made with {_describe(made, differ)}, not {_describe(recipe, differ)}"
    return None
