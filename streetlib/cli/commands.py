"""The ``streetlib`` command: a thin layer over the modules.

Each subcommand parses its arguments, calls one function and prints a short result. Errors in user input and
files that cannot be read or written (a full disk, a missing permission...) end the command with one line on stderr
and exit status 2; Ctrl-C ends it with 130 and SIGTERM, where a command handles it (``streetlib run``), with 143.
"""

import argparse
import signal
import sys

from streetlib import paths


def _positive_number(text):
    """An argparse type: a number > 0. Returns a float."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")  # not a number: refused below, as nan is
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, not {text!r}")
    return value


def _cmd_synth(args):
    from streetlib.data import synth

    params = {
        "per_class": args.per_class,
        "size": args.size,
        "seed": args.seed,
        "replicates": args.replicates,
        "task": args.task,
        "overwrite": args.overwrite,
    }
    if args.if_missing:
        synth.ensure(args.out, **params)
        return
    out = synth.generate(args.out, **params)
    print(f"Wrote synthetic street dataset to {out}")


def _cmd_split(args):
    from streetlib.data.loaders import load_dataset
    from streetlib.data.splits import make_split

    data = load_dataset(args.data, classes=args.classes)
    for seed in args.seed:
        split = make_split(data, seed=seed, test_size=args.test_size, val_size=args.val_size)
        print(f"seed {seed}: train {len(split.train)}, val {len(split.val)}, test {len(split.test)} -> {split.path}")
        if split.duplicates:
            print(f"  {len(split.duplicates)} groups of identical images kept together in one split each")


def _cmd_crawl(args):
    from streetlib.data.crawl import crawl_cities

    counts = crawl_cities(
        args.cities,
        args.out,
        per_city=args.per_city,
        engine=args.engine,
        min_size=args.min_size,
        timeout=args.timeout,
        license=None if args.license == "none" else args.license,
    )
    for city, n in counts.items():
        print(f"{city}: {n['after']} files ({n['after'] - n['before']} new)")


def _cmd_build(args):
    from streetlib.data.build import build_dataset

    report = build_dataset(
        args.raw,
        args.out,
        classes=args.classes,
        size=args.size,
        policy=args.policy,
        margin=args.margin,
        min_size=args.min_size,
        threshold=args.threshold,
        rejects=args.rejects,
        overwrite=args.overwrite,
    )
    print(report.summary())


def _add_data_commands(sub):
    data = sub.add_parser("data", help="make, build and split datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    p = data_sub.add_parser("synth", help="generate the synthetic street demo dataset (Street10 format + cue masks)")
    p.add_argument("--out", default=str(paths.demo_data_dir()), help="output directory (default: %(default)s)")
    p.add_argument("--per-class", type=int, default=100, help="images per class (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels, >= 32 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--replicates",
        type=int,
        default=1,
        help="independent datasets of --per-class images per class, drawn one after the other; the split of seed s "
        "uses replicate s mod REPLICATES only (default: %(default)s)",
    )
    p.add_argument(
        "--task",
        default="cues",
        help="what carries the region: the cue objects' palette and patterns (cues), or which of two panels that "
        "look alike in both regions is on top (layout, a task for deeper features) (default: %(default)s)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument(
        "--if-missing",
        action="store_true",
        help="reuse a dataset already in --out made with the same options; one made otherwise is an error unless "
        "--overwrite",
    )
    p.set_defaults(func=_cmd_synth)

    p = data_sub.add_parser("split", help="make (or reload) the saved train/val/test splits of a dataset")
    p.add_argument("data", help="a Street10-format directory or an image folder (its split holds at every image size)")
    p.add_argument("--classes", default=None, help="'street10', 'synth10' or a class-spec YAML file")
    p.add_argument("--seed", type=int, nargs="+", default=[42], help="one or more split seeds (default: 42)")
    p.add_argument("--test-size", type=float, default=0.10)
    p.add_argument("--val-size", type=float, default=0.15)
    p.set_defaults(func=_cmd_split)

    p = data_sub.add_parser("crawl", help="download street photos per city from image search (needs internet)")
    p.add_argument("--cities", required=True, help="class-spec YAML (optional queries:/exclude:) or 'street10'")
    p.add_argument("--out", required=True, help="raw photo folder: <out>/<city>/*.jpg plus manifest.csv")
    p.add_argument("--per-city", type=int, required=True, help="photos wanted per city (a re-run adds the missing)")
    p.add_argument("--engine", choices=["google", "bing"], default="google")
    p.add_argument("--license", default="noncommercial,modify", help="licence filter, or 'none' (default: %(default)s)")
    p.add_argument("--min-size", type=int, default=256, help="smallest width and height in pixels")
    p.add_argument("--timeout", type=_positive_number, default=5.0, help="seconds per request")
    p.set_defaults(func=_cmd_crawl)

    p = data_sub.add_parser("build", help="clean, de-duplicate and package raw photos in the Street10 format")
    p.add_argument("--raw", required=True, help="raw photo folder (<raw>/<class>/*.jpg)")
    p.add_argument("--out", required=True, help="output Street10-format folder")
    p.add_argument("--classes", help="'street10' or a class-spec YAML (default: <raw>/classes.yaml)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--policy", choices=["crop", "pad", "stretch"], default="crop")
    p.add_argument("--margin", type=float, default=0.05, help="fraction cut off every side (default: %(default)s)")
    p.add_argument("--min-size", type=int, help="reject photos smaller than this (default: --size)")
    p.add_argument("--threshold", type=int, default=10, help="perceptual-hash distance for near-duplicates")
    p.add_argument("--rejects", help="text file of class/file ids to leave out (default: <raw>/rejects.txt)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_build)


def _cmd_plan(args, overrides):
    """``streetlib run --plan``: the work, the time on this device and the peaks, against the budgets given."""
    from streetlib.experiments import planning

    budgets = {
        "seconds": args.budget and planning.parse_seconds(args.budget),
        "host_bytes": args.host_memory and planning.parse_bytes(args.host_memory),
        "device_bytes": args.device_memory and planning.parse_bytes(args.device_memory),
        "disk_bytes": args.disk and planning.parse_bytes(args.disk),
    }
    plan = planning.make_plan(args.notebooks, profile=args.profile, overrides=overrides, grid=args.grid)
    calibration = planning.calibrate(plan.image_size, batch_size=plan.batch_size)
    checks = planning.check_budgets(plan, calibration, **budgets)
    print(planning.to_json(plan, calibration, checks) if args.json else planning.format_plan(plan, calibration, checks))
    return 0 if all(c["fits"] for c in checks) else 1


def _cmd_run(args):
    from streetlib.experiments import parameters, runner

    overrides = {name: parameters.parse_value(value) for name, value in args.param}
    if args.plan:
        return _cmd_plan(args, overrides)
    try:
        results = runner.run(
            args.notebooks,
            profile=args.profile,
            overrides=overrides,
            grid=args.grid,
            force=args.force,
            keep_going=args.keep_going,
            cell_timeout=args.cell_timeout,
        )
    except runner.Terminated:
        print("streetlib run: stopped (SIGTERM). Run the same command again to resume.", file=sys.stderr)
        return 128 + signal.SIGTERM
    for r in results:
        if r.status in ("failed", "interrupted"):
            print(f"{r.status.upper()} {r.output.name}: {r.error}", file=sys.stderr)
    stopped = [r.signal for r in results if r.status == "interrupted"]
    if stopped:
        print("Stopped. Run the same command again to resume.", file=sys.stderr)
        # The shell's convention: 128 + the signal, 130 for Ctrl-C, 143 for SIGTERM.
        return 128 + stopped[0]
    return 1 if any(r.status == "failed" for r in results) else 0


def _add_run_command(sub):
    p = sub.add_parser("run", help="run the numbered notebooks headless with papermill")
    p.add_argument("notebooks", nargs="*", help="notebook numbers or names (default: all, in order)")
    p.add_argument(
        "--profile",
        default="demo",
        help="a profile of streetlib/experiments/profiles.yaml: smoke, demo (default) or full",
    )
    p.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter in every notebook that has it (checked against the parameters cells)",
    )
    p.add_argument("--grid", help="YAML grid file: run one notebook over combinations of parameters")
    p.add_argument("--force", action="store_true", help="re-run notebooks that already finished")
    p.add_argument("--keep-going", action="store_true", help="after a failure, run the remaining notebooks")
    p.add_argument(
        "--cell-timeout",
        type=_positive_number,
        default=None,
        help="stop a cell after this many seconds (default: no limit; training cells run for hours)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="run nothing: print every training run and the other work, the time on this device (a short "
        "calibration), peak memory and disk, and whether they fit the budgets below (exit status 1 if not)",
    )
    p.add_argument("--budget", help="with --plan: the time available, e.g. 12h (a Colab session)")
    p.add_argument("--host-memory", help="with --plan: the host's RAM, e.g. 12GB")
    p.add_argument("--device-memory", help="with --plan: the accelerator's memory, e.g. 15GB (a T4)")
    p.add_argument("--disk", help="with --plan: the free disk, e.g. 50GB")
    p.add_argument("--json", action="store_true", help="with --plan: print the plan as JSON")
    p.set_defaults(func=_cmd_run)


def _add_analyze_command(sub):
    from streetlib.cli import analyze

    p = sub.add_parser("analyze", help="classify street photos and explain them with Grad-CAM")
    analyze.add_arguments(p)
    p.set_defaults(func=analyze.main)


def _cmd_report(args):
    from streetlib.experiments.report import write_reports

    for path in write_reports():
        print(f"Wrote {path}")


def _cmd_colab(args):
    from streetlib import colab

    if args.repository:
        changed = colab.set_repository(args.repository, ref=args.ref, branch=args.branch)
    else:
        changed = colab.sync()
    config = colab.settings()
    print(f"Colab installs {colab.install_spec(config)}; the badges open {colab.badge_base(config)}")
    for path in changed:
        print(f"Wrote {path}")


def _cmd_bench(args):
    from pathlib import Path

    from streetlib.benchmarks import bench
    from streetlib.paths import atomic_path

    results = bench.run_all(quick=args.quick)
    command = "streetlib bench" + (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out else "")
    text = bench.to_markdown(results, command=command)
    if args.quick and not args.out:
        # BENCHMARKS.md is the record of a full run: a quick look at this machine must not replace it.
        print(text)
        print("Quick mode: printed only; `--out FILE` writes it.")
        return
    out = Path(args.out or paths.REPO_ROOT / "BENCHMARKS.md")
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    with atomic_path(out.with_suffix(".json")) as tmp:
        tmp.write_text(bench.to_json(results))
    print(f"Wrote {out}")


def _cmd_probe(args):
    from streetlib.baselines import depth
    from streetlib.classes import OUTPUTS
    from streetlib.data.loaders import load_dataset
    from streetlib.data.splits import make_splits

    data = load_dataset(args.data)
    splits = make_splits(data, seeds=args.seed)
    rows = depth.run_depth_probe(data, splits, weights=args.weights, layers=args.layers or depth.BLOCKS)
    chance = {output: depth.chance_accuracy(data, splits, output) for output in OUTPUTS}
    table = depth.depth_table(rows, chance=chance)
    print(table.round(3).to_string(index=False))
    print(f"Wrote {depth.write_depth_table(table, data)}")


def _add_results_commands(sub):
    p = sub.add_parser(
        "probe",
        help="where a dataset's task becomes readable: a linear probe on each VGG16 block's averaged features per "
        "weight source, beside the floors (hists/<dataset>/depth-probe/)",
    )
    p.add_argument("data", help="a Street10-format directory (e.g. data/synth-layout)")
    p.add_argument("--seed", type=int, nargs="+", default=[42, 43, 44], help="split seeds (default: %(default)s)")
    p.add_argument(
        "--weights", nargs="+", default=["hed-bsds500", "random"], help="weight sources (default: %(default)s)"
    )
    p.add_argument("--layers", nargs="+", help="layers read (default: block1_pool ... block5_pool)")
    p.set_defaults(func=_cmd_probe)
    p = sub.add_parser("report", help="write hists/README.md and figs/README.md from the files there")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("bench", help="side-by-side benchmarks against the references; a full run writes BENCHMARKS.md")
    p.add_argument(
        "--quick", action="store_true", help="smaller sizes and fewer repeats (minutes); prints, writes only with --out"
    )
    p.add_argument("--out", help="output Markdown file (default: BENCHMARKS.md in the repository; none with --quick)")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser(
        "colab",
        help="set the repository Colab installs from and the badges open ([tool.streetlib] in pyproject.toml), "
        "and write it into the notebooks and the README",
    )
    p.add_argument("repository", nargs="?", help="OWNER/NAME of a fork on GitHub; omitted: write the current one")
    p.add_argument("--ref", default=None, help="the tag or commit Colab installs (with a repository: required)")
    p.add_argument("--branch", default="main", help="the branch the badges open (default: %(default)s)")
    p.set_defaults(func=_cmd_colab)


def build_parser():
    parser = argparse.ArgumentParser(prog="streetlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_run_command(sub)
    _add_analyze_command(sub)
    _add_results_commands(sub)
    return parser


def _error_line(err):
    """One line saying what went wrong: for an error of the operating system, what happened to which file."""
    if isinstance(err, OSError) and err.strerror:
        files = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        text = f"{err.strerror}: {files}" if files else err.strerror
    else:
        text = str(err)
    return " ".join(text.split())


def main(argv=None):
    """Entry point of the ``streetlib`` console script. Returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"streetlib {args.command}: error: {_error_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"streetlib {args.command}: interrupted (Ctrl-C). Files are written atomically: nothing finished was lost.",
            file=sys.stderr,
        )
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
