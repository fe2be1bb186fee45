"""``streetlib analyze``: which city is this street in, and what in the picture says so?

For each image file or URL: the region probabilities and the top-K cities, and a figure of Grad-CAM / Guided
Grad-CAM maps for both outputs (or, with ``--only-cam``, the CAMs at the image's own resolution; with ``--method
NAME``, that attribution method's maps; with ``--method all``, every method's maps side by side). The work is done by
`streetlib.inference`; this module is the command: its options, its printed lines and its figures.

What the model expects comes from its sidecar (see `streetlib.inference`); ``--classes`` and ``--normalization``
override it. Bad input gets one line on stderr and the other inputs are still analysed; the exit status is then 1.
A model that cannot be loaded or lacks the ``region`` and ``city`` outputs stops the command with status 2.
"""

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import urlparse

from streetlib import paths
from streetlib.data.loaders import RESIZE_POLICIES
from streetlib.inference import (
    DEFAULT_MODEL,
    MAX_DOWNLOAD_BYTES,
    URL_TIMEOUT,
    InputError,
    analyze_images,
    attribute_images,
    load_model,
    read_input,
)

# Images per forward pass: bounds memory for long input lists.
BATCH_SIZE = 16


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
    if record["figure"]:
        print(f"  figure: {record['figure']}")


def add_arguments(parser):
    """Add the ``analyze`` options to an `argparse.ArgumentParser`."""
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_URL", help="image files or http(s) URLs")
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a .keras model file (default: %(default)s)")
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
        "--only-cam", action="store_true", help="draw only the Grad-CAMs, at the image's own resolution"
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
    """The methods whose maps replace the original's figure: [] for the default 'grad_cam', else a list of names."""
    from streetlib.attribution.registry import METHODS

    if args.method == "grad_cam":
        return []
    if args.method != "all" and args.method not in METHODS:
        raise ValueError(f"Invalid --method {args.method!r}. Expected 'all' or one of {sorted(METHODS)}.")
    if args.only_cam:
        raise ValueError("--only-cam draws Grad-CAM only: leave out --method, or --only-cam.")
    return list(METHODS) if args.method == "all" else [args.method]


def main(args):
    """Run the analyzer on parsed arguments (see `add_arguments`). Returns the exit status: 0 when every input
    was analysed, 1 when some could not be, 2 when the model or an option is unusable."""
    from streetlib.attribution.methods import plot_cam_only, plot_explanation, plot_methods

    try:
        methods = _methods(args)
        loaded = load_model(args.model, classes=args.classes, normalization=args.normalization)
        if args.rank > loaded.spec.num_classes or args.top > loaded.spec.num_classes:
            raise ValueError(
                f"--rank and --top must be at most {loaded.spec.num_classes} (the number of cities). "
                f"Received: --rank {args.rank}, --top {args.top}."
            )
    except ValueError as err:
        print(f"streetlib analyze: error: {err}", file=sys.stderr)
        return 2
    records, readable = [], []
    for source in args.inputs:
        try:
            readable.append((len(records), read_input(source, timeout=args.timeout, max_bytes=args.max_bytes)))
            records.append({"input": source, "ok": True})
        except InputError as err:
            print(f"streetlib analyze: error: {err}", file=sys.stderr)
            records.append({"input": source, "ok": False, "error": str(err)})
    used = set()
    for start in range(0, len(readable), BATCH_SIZE):
        batch = readable[start : start + BATCH_SIZE]
        try:
            results, fitted, explanations = analyze_images(
                [image for _, image in batch],
                loaded,
                rank=args.rank,
                top=args.top,
                layer=args.layer,
                policy=args.policy,
                guided=not (args.only_cam or methods),
            )
            attributions = attribute_images(fitted, loaded, methods=methods, rank=args.rank, layer=args.layer)
        except ValueError as err:
            print(f"streetlib analyze: error: {err}", file=sys.stderr)
            return 2
        for i, ((k, original), result) in enumerate(zip(batch, results, strict=True)):
            record = records[k]
            record.update(size=[int(original.shape[1]), int(original.shape[0])], **result, figure=None)
            if args.no_save:
                continue
            name = _figure_name(record["input"], used)
            title = f"{Path(urlparse(record['input']).path).name} - {loaded.path.name}"
            if methods:
                fig = plot_methods(fitted[i], attributions, i, spec=loaded.spec, title=title)
                path = Path(args.out) / f"{name}_{'methods' if args.method == 'all' else args.method}.png"
            elif args.only_cam:
                fig = plot_cam_only(original, explanations, i, spec=loaded.spec, policy=args.policy, title=title)
                path = Path(args.out) / f"{name}_cam.png"
            else:
                fig = plot_explanation(
                    fitted[i], explanations, i, spec=loaded.spec, normalization=loaded.normalization, title=title
                )
                path = Path(args.out) / f"{name}_gradcam.png"
            record["figure"] = str(_save_figure(fig, path))
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for record in records:
            if record["ok"]:
                _print_result(record)
    return 0 if all(r["ok"] for r in records) else 1


if __name__ == "__main__":
    _parser = add_arguments(argparse.ArgumentParser(prog="streetlib analyze", description=__doc__.splitlines()[0]))
    sys.exit(main(_parser.parse_args()))
