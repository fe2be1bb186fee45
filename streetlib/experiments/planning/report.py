"""A plan as the command line shows it: whether it fits each budget, as text and as JSON."""

import dataclasses
import json

from streetlib.experiments.planning.units import format_bytes, format_duration, format_passes
from streetlib.experiments.planning.work import CHECKPOINTS, HOST_SHARE


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
        "time": (plan.seconds(calibration), seconds, format_duration),
        "host memory": (plan.host_bytes, host_bytes, format_bytes),
        "device memory": (plan.device_bytes, device_bytes, format_bytes),
        "disk": (plan.disk_bytes, disk_bytes, format_bytes),
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
            format_passes(w.passes),
            format_duration(w.seconds(calibration)),
        )
        for w in plan.work
    ]
    rows.append(
        ("", "total", "", "", "", "", "", "", format_passes(plan.passes), format_duration(plan.seconds(calibration)))
    )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    runs = sum(w.runs for w in plan.work if w.epochs is not None)
    lines += [
        "",
        f"Passes and times are per configuration, all seeds (features a 'shared' cache serves extracted once); epochs "
        f"are at most (early stopping may end sooner). {runs} training runs.",
        f"Peak host memory {format_bytes(plan.host_bytes)} (the Python runtime + uint8 images + "
        f"{HOST_SHARE[plan.on_cpu]}), device memory {format_bytes(plan.device_bytes)} "
        f"(parameters, optimiser state, one batch's activations), disk {format_bytes(plan.disk_bytes)} "
        f"(models x {len(CHECKPOINTS)} checkpoints, baseline features, the largest disk cache).",
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
