"""Side-by-side benchmarks against the references, re-created here and run in the same process: `run_all` runs every
comparison (`pipelines`, `throughput`, `explainers`) and the methods' costs (`method_costs`); `to_markdown` turns the
results into ``BENCHMARKS.md``.

Each comparison times our way and the reference way on the same inputs, repeats each measurement (median and
spread), checks that both compute the same thing (so a ratio cannot come from doing less work) and reports the ratio
against its target.
"""

import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

from streetlib.benchmarks.comparison import summary
from streetlib.benchmarks.explainers import bench_attribution, bench_grad_cam
from streetlib.benchmarks.method_costs import bench_method_costs, method_costs_settings
from streetlib.benchmarks.pipelines import bench_input_pipeline, bench_memory, bench_predict
from streetlib.benchmarks.throughput import bench_transfer, bench_vgg16
from streetlib.classes import STREET10_COUNTS


def environment():
    """Machine, date and versions, for the report."""
    from streetlib.training.train import package_versions

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "versions": package_versions(("tensorflow", "keras", "numpy", "tf-keras-vis")),
    }


def run_all(*, quick=False, report=print):
    """Run every comparison; ``quick`` shrinks sizes and repeats to finish in minutes. Returns a dict."""
    results = {"environment": environment(), "quick": quick, "comparisons": []}
    for label, step in _steps(quick):
        report(f"[bench] {label} ...")
        start = time.perf_counter()
        out = step()  # a Comparison, or a list of them (one row group each in the report)
        comparisons = out if isinstance(out, list) else [out]
        results["comparisons"].extend(comparisons)
        ratios = "; ".join(f"{c.name}: {c.ratios}" for c in comparisons)
        report(f"[bench] {label}: {ratios} ({time.perf_counter() - start:.0f} s)")
    report("[bench] attribution method costs ...")
    start = time.perf_counter()
    results["method_costs"] = bench_method_costs(
        **method_costs_settings(quick=quick),
        report=lambda row: report(f"[bench]   {row['method']}: {row['cost']:.3g}x forward"),
    )
    report(f"[bench] attribution method costs ({time.perf_counter() - start:.0f} s)")
    report("[bench] VGG16 throughput ...")
    results["vgg16"] = bench_vgg16(
        sizes=(64,) if quick else (64, 128, 224), batch=8 if quick else 16, repeats=2 if quick else 3
    )
    return results


def _steps(quick):
    """`run_all`'s comparisons, in order: list of (label, callable returning a `Comparison` or a list of them)."""
    return [
        (
            "input pipeline",
            lambda: bench_input_pipeline(
                n=120 if quick else 500, batches=4 if quick else 12, repeats=2 if quick else 3
            ),
        ),
        (
            "transfer",
            lambda: bench_transfer(
                per_class=30 if quick else 100, epochs=3 if quick else 10, repeats=1 if quick else 2
            ),
        ),
        # The same at 128 px (4x the backbone's work per image, the same fixed costs), to show how the ratio grows
        # with the share of the frozen backbone in an epoch.
        *(
            []
            if quick
            else [("transfer 128 px", lambda: bench_transfer(per_class=100, size=128, epochs=10, repeats=1))]
        ),
        (
            "grad-cam",
            lambda: bench_grad_cam(size=112 if quick else 224, batch=8 if quick else 32, repeats=2 if quick else 3),
        ),
        # Grad-CAM++, LayerCAM, saliency, SmoothGrad and Score-CAM against tf-keras-vis: one comparison each, and
        # Score-CAM's memory. Score-CAM (512 forward passes per image) runs on its own smaller batch.
        (
            "attribution methods",
            lambda: bench_attribution(
                size=64 if quick else 224,
                batch=4 if quick else 32,
                scorecam_batch=1 if quick else 2,
                repeats=1 if quick else 3,
            ),
        ),
        ("predict", lambda: bench_predict(n=40 if quick else 100, repeats=2 if quick else 3)),
        (
            "memory",
            lambda: bench_memory(
                counts=tuple(c // 4 for c in STREET10_COUNTS) if quick else STREET10_COUNTS, repeats=1 if quick else 2
            ),
        ),
    ]


def _fmt(values, unit):
    med, spread = summary(values)
    precision = 0 if unit == "MB" else 1 if unit == "s" else 2 if med < 10 else 1
    return f"{med:.{precision}f} ± {spread:.{precision}f} {unit}"


def _params_cell(params):
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "-"


def method_costs_markdown(costs):
    """The lines of BENCHMARKS.md's section for `bench_method_costs` results: heading, table and note."""
    rows = costs["rows"]
    costly = [r["method"] for r in rows if r["batch"] != costs["batch"]]
    batches = f"batch {costs['batch']}" + (
        f"; {', '.join(costly)} on the first {costs['costly_batch']} of those images" if costly else ""
    )
    lines = [
        "## Attribution methods: cost per image in forward passes",
        "",
        f"Every method of `streetlib.attribution.registry.METHODS` through `registry.attribute`, on a flat VGG16 with "
        f"two outputs (random weights) at {costs['size']} px explaining the city output's predicted class, CAM "
        f"methods at {costs['layer']}; {batches}.",
        "",
        "| method | family | differentiates / layer | params | seconds per image | cost (x forward) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        where = r["differentiates"] + (f" / {r['layer']}" if r["layer"] else "")
        params = _params_cell(r["params"]) + (f" (batch of {r['batch']})" if r["batch"] != costs["batch"] else "")
        lines.append(
            f"| {r['method']} | {r['family']} | {where} | {params} | {r['seconds_per_image']:.3g} | {r['cost']:.3g}x |"
        )
    forward = ", ".join(f"{s:.3g} s at batch {n}" for n, s in sorted(costs["forward"].items(), reverse=True))
    occlusion = next((r["params"] for r in rows if r["method"] == "occlusion"), None)
    positions = ""
    if (
        occlusion
    ):  # positions per side as `perturbation.occlusion` places them: every stride, plus one flush with the edge
        free = costs["size"] - occlusion["patch"]
        side = free // occlusion["stride"] + 1 + (1 if free % occlusion["stride"] else 0)
        positions = f" ({side} x {side} = {side * side} here)"
    lines += [
        "",
        "Cost: a method's seconds per image over the seconds per image of one forward pass (the logits) of the same "
        "batch on the same model, as the attribution leaderboard's ``cost`` column "
        f"(forward pass: {forward} per image). Each is the least of a few timed calls after an untimed warm-up "
        "call, so tracing is excluded; a method's time includes upsampling its maps to the input and normalising "
        "them. A cost scales with the method's parameters: Score-CAM runs one forward pass per channel of its layer "
        "(512 at block5_conv3), RISE one per mask, "
        f"occlusion one per position of the square{positions}, "
        "SmoothGrad and Integrated Gradients one gradient pass (about 3 forward passes' work) per sample or step; "
        "copies go through the model in batches of ``batch_size`` (Score-CAM: ``chunk_size``), so at small sizes "
        "a copy can cost less than an image of a small forward batch. The CAM methods (except Score-CAM) "
        "differentiate only the head above their layer, so they cost about one forward pass.",
    ]
    return lines


def to_markdown(results, *, command):
    """The ``BENCHMARKS.md`` text for ``run_all`` results."""
    env = results["environment"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {env['date']} on {env['cpu']} ({env['cores']} cores visible), Python {env['python']}, "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + ".",
        f"Command: `{command}`{' (quick mode: smaller sizes, fewer repeats)' if results['quick'] else ''}.",
        "Each value is the median of the repeats ± half their range. Speed ratios are ours over the reference "
        "(higher is better); memory is ours as a multiple of the reference (lower is better).",
        "",
        "| comparison | ours | reference | ratio | target | met | same computation? |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results["comparisons"]:
        ((our_label, our_values),) = c.ours.items()
        for label, values in c.reference.items():
            ratio = c.ratios[label]
            target = c.target[label] if isinstance(c.target, dict) else c.target
            if c.unit == "MB":  # memory reads better as "ours is N x the reference", at most the target
                shown, wanted = f"{1 / ratio:.2f}x", f"at most {1 / target:.2f}x"
            else:
                shown, wanted = f"{ratio:.2f}x", f"at least {target:.2f}x"
            lines.append(
                f"| {c.name} | {our_label}: {_fmt(our_values, c.unit)} | {label}: {_fmt(values, c.unit)} | "
                f"{shown} | {wanted} | {'yes' if ratio >= target else 'no'} | {c.check} |"
            )
    vgg = results["vgg16"]
    lines += [
        "",
        f"## VGG16 on this CPU (batch {vgg['batch']})",
        "",
        f"Peak: the float32 FLOP/s of a 4096 x 4096 matrix product in TensorFlow here (the best of 3), "
        f"{vgg['peak_flops'] / 1e9:.0f} GFLOP/s: what this CPU delivers to TensorFlow's best-tuned kernel. VGG16's "
        "work per image is its 13 conv layers' multiply-adds x 2 as a direct convolution computes them; training is "
        "taken as 3x the forward work. A fraction above 100% means the convolution kernels do less arithmetic than "
        "that direct count (oneDNN may pick transform-based algorithms such as Winograd for 3x3 convolutions).",
        "",
        "| size | forward img/s | training img/s | forward, fraction of peak | training, fraction of peak |",
        "|---|---|---|---|---|",
    ]
    for r in vgg["rows"]:
        lines.append(
            f"| {r['size']} px | {r['forward_img_s']:.1f} | {r['train_img_s']:.1f} | "
            f"{r['forward_peak_fraction']:.0%} | {r['train_peak_fraction']:.0%} |"
        )
    if results.get("method_costs"):
        lines += ["", *method_costs_markdown(results["method_costs"])]
    notes = [f"- {c.name}: {c.notes}" for c in results["comparisons"] if c.notes]
    return "\n".join(lines + (["", "## Notes", "", *notes] if notes else [])) + "\n"


def to_json(results):
    """A JSON-serialisable copy of ``run_all`` results."""
    out = dict(results)
    out["comparisons"] = [c.__dict__ for c in results["comparisons"]]
    return json.dumps(out, indent=1, default=str)
