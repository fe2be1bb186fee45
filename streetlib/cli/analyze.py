"""``streetlib analyze``: which city is this street in, and what in the picture says so?

For each image file or URL: the region probabilities and the top-K cities, and a figure of Grad-CAM / Guided
Grad-CAM maps for both outputs (or, with ``--only-cam``, the CAMs over the image itself, drawn at most
`FIGURE_MAX_SIDE` px wide; with ``--method NAME``, that attribution method's maps; with ``--method all``, every
method's maps side by side). The work is done by `streetlib.inference`; this module is the command: its options, its
printed lines and its figures.

Without ``--model``, the model is the headline model of the results on disk, the one notebook 05 explains (see
`streetlib.experiments.study.headline`); one line on stderr names it. What the model expects comes from its sidecar
(see `streetlib.inference`); ``--classes`` and ``--normalization`` override it.

Each image's results are printed before its figure is drawn. Bad input (an unreadable file or URL, a figure that
cannot be written) gets one line on stderr and the other inputs are still analysed; the exit status is then 1. A
model that cannot be loaded or lacks the ``region`` and ``city`` outputs, an invalid option or an ``--out`` that
cannot be created stops the command with status 2.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from streetlib import paths
from streetlib.data.images import RESIZE_POLICIES
from streetlib.inference import (
    MAX_DOWNLOAD_BYTES,
    URL_TIMEOUT,
    InputError,
    analyze_images,
    load_model,
    read_input,
)
from streetlib.runs import RunId, RunLayout

# Images per forward pass: bounds memory for long input lists.
BATCH_SIZE = 16
# Longest side, in px, of an image drawn in a figure: an overlay at a 13,000 px photo's own size needs gigabytes.
FIGURE_MAX_SIDE = 2048
# Where notebook 05 finds the model it explains (its defaults): the experiments whose configurations compete, and
# the split seed of the run.
HEADLINE_EXPERIMENTS = ("03-pretrained", "04-finetune")
HEADLINE_SEED = 42


def _shown(text):
    """``text`` as it can be printed: the bytes of a file name that is not UTF-8 escaped (``caf\\xe9.png``)."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def _figure_name(source, used):
    stem = Path(urlparse(str(source)).path).stem or "image"
    name, k = stem, 2
    while name in used:
        name, k = f"{stem}-{k}", k + 1
    used.add(name)
    return name


def _save_figure(fig, path):
    with paths.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def _print_result(record):
    print(f"{record['input']} ({record['size'][0]}x{record['size'][1]})")
    print("  region: " + ", ".join(f"{n} {p:.3f}" for n, p in record["region"].items()))
    cities = "  ".join(f"{k}. {c['class']} {c['probability']:.3f}" for k, c in enumerate(record["cities"], 1))
    print(f"  top {len(record['cities'])} cities: {cities}")
    explained = ", ".join(f"{o} {e['class']} (rank {e['rank']})" for o, e in record["explained"].items())
    print(f"  explained: {explained}")


def _error(message):
    print(f"streetlib analyze: error: {message}", file=sys.stderr)


def add_arguments(parser):
    """Add the ``analyze`` options to an `argparse.ArgumentParser`.

    One ``add_argument`` per option, in the order ``--help`` lists them: about 70 lines, over the ~60 of the rest of
    the package, that splitting would only scatter.
    """
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_URL", help="image files or http(s) URLs")
    parser.add_argument(
        "--model",
        default=None,
        help="a .keras model file (default: the headline model of the results on disk, the one notebook 05 explains: "
        "best mean validation city accuracy in hists/<dataset>/03-pretrained and 04-finetune; `make demo` trains it)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="without --model: the dataset whose headline model is used (default: the only one with results on disk)",
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="'street10', 'synth10' or a class-spec YAML file (default: the sidecar's, else street10)",
    )
    parser.add_argument(
        "--normalization", default=None, help="input normalisation (default: the model's sidecar, else samplewise)"
    )
    parser.add_argument("--layer", default=None, help="Grad-CAM layer (default: the backbone's last convolution)")
    parser.add_argument(
        "--method",
        default="grad_cam",
        help="attribution method: grad_cam (default: the original's figure), any name of "
        "streetlib.attribution.registry.METHODS (its maps for both outputs), or 'all' (every method side by side)",
    )
    parser.add_argument(
        "--policy",
        choices=RESIZE_POLICIES,
        default="crop",
        help="how images are fitted to the model input (default: %(default)s)",
    )
    parser.add_argument(
        "--only-cam",
        action="store_true",
        help=f"draw only the Grad-CAMs, over the image itself (at most {FIGURE_MAX_SIDE} px on its long side)",
    )
    parser.add_argument(
        "--rank",
        type=_positive_int,
        default=1,
        help="explain the class of this rank: 1 the prediction, 2 the runner-up... (default: 1)",
    )
    parser.add_argument("--top", type=_positive_int, default=3, help="cities listed per image (default: 3)")
    parser.add_argument(
        "--out", default=str(paths.figs_dir() / "analyze"), help="figure directory (default: %(default)s)"
    )
    parser.add_argument("--no-save", action="store_true", help="write no figures")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of text")
    parser.add_argument(
        "--timeout",
        type=float,
        default=URL_TIMEOUT,
        help="seconds for each URL's whole download (default: %(default)s)",
    )
    parser.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=MAX_DOWNLOAD_BYTES,
        help="largest URL download accepted (default: %(default)s)",
    )
    parser.add_argument(
        "--allow-private",
        action="store_true",
        help="also fetch URLs from private and loopback addresses, your own network (never link-local or cloud "
        "metadata ones)",
    )
    return parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, received {text!r}")
    return value


def _methods(args):
    """The methods the figures draw, computed for every image: for the default 'grad_cam', Grad-CAM and the guided
    backprop the original figure multiplies it by (Grad-CAM alone with --only-cam); else every method ('all') or
    the one named."""
    from streetlib.attribution.registry import METHODS

    if args.method == "grad_cam":
        return ["grad_cam"] if args.only_cam else ["grad_cam", "guided_backprop"]
    if args.method != "all" and args.method not in METHODS:
        raise ValueError(f"Invalid --method {args.method!r}. Expected 'all' or one of {sorted(METHODS)}.")
    if args.only_cam:
        raise ValueError("--only-cam draws Grad-CAM only: leave out --method, or --only-cam.")
    return list(METHODS) if args.method == "all" else [args.method]


def _trained_datasets():
    """The datasets with evaluation results of `HEADLINE_EXPERIMENTS` on disk (``hists/<dataset>/<experiment>/``)."""
    root = RunLayout().hists_dir
    found = {p.parent.parent.name for e in HEADLINE_EXPERIMENTS for p in root.glob(f"*/{e}/*.eval.csv")}
    return sorted(found)


def _headline_model(dataset=None):
    """The model notebook 05 explains: the best checkpoint, on split seed `HEADLINE_SEED`, of the configuration
    `streetlib.experiments.study.headline` picks in `HEADLINE_EXPERIMENTS` of one dataset's results.

    Args:
        dataset: str or None: the dataset's name; None: the only dataset with results on disk.

    Returns:
        `Path` of the model file.

    Raises:
        ValueError: no evaluation results on disk, results of several datasets and none chosen, or the headline
            model's file is missing.
    """
    from streetlib.experiments import study

    if dataset is None:
        datasets = _trained_datasets()
        if len(datasets) > 1:
            raise ValueError(f"results of several datasets on disk ({', '.join(datasets)}): pass --dataset NAME.")
        if not datasets:
            raise _no_models(RunLayout().hists_dir)
        dataset = datasets[0]
    layout = RunLayout(dataset=dataset)
    try:
        experiment, config, _ = study.headline(list(HEADLINE_EXPERIMENTS), layout=layout)
    except FileNotFoundError as err:
        raise _no_models(layout.hists_dir) from err
    path = layout.model(RunId(experiment, config, HEADLINE_SEED), "best")
    if not path.is_file():
        raise ValueError(
            f"the headline model {path} is not on disk (a fresh clone has the results, not the models). "
            "Run `make demo`, or pass --model PATH."
        )
    return path


def _no_models(where):
    return ValueError(
        f"no trained models: no evaluation results under {where} ({', '.join(HEADLINE_EXPERIMENTS)}). "
        "Run `make demo`, or pass --model PATH."
    )


def _model_path(args):
    """``--model``, else the headline model, named on stderr (stdout stays the results, plain JSON with --json)."""
    if args.model is not None:
        return args.model
    path = _headline_model(args.dataset)
    print(
        f"streetlib analyze: using the headline model {path} (best mean validation city accuracy in "
        f"{' and '.join(HEADLINE_EXPERIMENTS)} of {path.parent.parent.name}, as notebook 05). Pass --model for "
        "another.",
        file=sys.stderr,
    )
    return path


def _make_out(out):
    """Create the figure directory up front, so that one unusable for every image is one line, not one per image.

    Raises:
        ValueError: it cannot be created (a file is in the way, no permission...).
    """
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"cannot write figures to --out {out}: {err.strerror or err}. Pass another --out, or --no-save."
        ) from err


def _figure_size(image):
    """``image`` as drawn in a figure: at most `FIGURE_MAX_SIDE` px on its long side, downscaled if larger."""
    if max(image.shape[:2]) <= FIGURE_MAX_SIDE:
        return image
    picture = Image.fromarray(image)
    picture.thumbnail((FIGURE_MAX_SIDE, FIGURE_MAX_SIDE), Image.Resampling.LANCZOS)
    return np.asarray(picture)


def _figure_kind(args):
    """The end of the figure file names: what the figures show."""
    if args.method != "grad_cam":
        return "methods" if args.method == "all" else args.method
    return "cam" if args.only_cam else "gradcam"


def _draw(i, original, fitted, explanation, *, args, loaded, title):
    """The figure of the ``i``-th image of a batch, from its fitted images and `analyze_images`'s explanation."""
    from streetlib.attribution import plots

    if args.method != "grad_cam":
        return plots.plot_methods(fitted[i], explanation, i, classes=loaded.spec, title=title)
    if args.only_cam:
        picture = _figure_size(original)
        return plots.plot_cam_only(
            picture, explanation["grad_cam"], i, classes=loaded.spec, policy=args.policy, title=title
        )
    return plots.plot_explanation(
        fitted[i], explanation, i, classes=loaded.spec, normalization=loaded.normalization, title=title
    )


def _read_batch(sources, args, records):
    """Read images, appending a record for each source to ``records``; an unreadable one gets its error line.

    Returns:
        list of (index in ``records``, source, uint8 image) of the readable ones.
    """
    readable = []
    for source in sources:
        record = {"input": _shown(source), "ok": True}
        try:
            image = read_input(source, timeout=args.timeout, max_bytes=args.max_bytes, allow_private=args.allow_private)
            readable.append((len(records), source, image))
        except InputError as err:
            _error(err)
            record.update(ok=False, error=str(err))
        records.append(record)
    return readable


def main(args):
    """Run the analyzer on parsed arguments (see `add_arguments`). Returns the exit status: 0 when every input
    was analysed and its figure written, 1 when some could not be, 2 when the model, an option or ``--out`` is
    unusable."""
    try:
        methods = _methods(args)
        if not args.no_save:
            _make_out(args.out)
        loaded = load_model(_model_path(args), classes=args.classes, normalization=args.normalization)
        if args.rank > loaded.spec.num_classes or args.top > loaded.spec.num_classes:
            raise ValueError(
                f"--rank and --top must be at most {loaded.spec.num_classes} (the number of cities). "
                f"Received: --rank {args.rank}, --top {args.top}."
            )
    except ValueError as err:
        _error(err)
        return 2
    records, used = [], set()
    for start in range(0, len(args.inputs), BATCH_SIZE):
        batch = _read_batch(args.inputs[start : start + BATCH_SIZE], args, records)
        if not batch:
            continue
        try:
            results, fitted, explanation = analyze_images(
                [image for _, _, image in batch],
                loaded,
                methods=methods,
                rank=args.rank,
                top=args.top,
                layer=args.layer,
                policy=args.policy,
            )
        except ValueError as err:
            _error(err)
            return 2
        for i, ((k, source, original), result) in enumerate(zip(batch, results, strict=True)):
            record = records[k]
            record.update(size=[int(original.shape[1]), int(original.shape[0])], **result, figure=None)
            # The results are out before the figure is drawn: a figure that fails loses none of them.
            if not args.json:
                _print_result(record)
            if args.no_save:
                continue
            path = Path(args.out) / f"{_figure_name(source, used)}_{_figure_kind(args)}.png"
            title = _shown(f"{Path(urlparse(str(source)).path).name} - {loaded.path.name}")
            try:
                fig = _draw(i, original, fitted, explanation, args=args, loaded=loaded, title=title)
                record["figure"] = _shown(str(_save_figure(fig, path)))
            except OSError as err:
                record["error"] = (
                    f"cannot write the figure {_shown(str(path))} of {record['input']}: {err.strerror or err}. "
                    "Free some space or pass another --out, or --no-save."
                )
                _error(record["error"])
                continue
            if not args.json:
                print(f"  figure: {record['figure']}")
    if args.json:
        print(json.dumps(records, indent=2))
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    _parser = add_arguments(argparse.ArgumentParser(prog="streetlib analyze", description=__doc__.splitlines()[0]))
    sys.exit(main(_parser.parse_args()))
