"""Generated READMEs for browsing results on GitHub: ``hists/README.md`` (every run) and ``figs/README.md`` (every
figure).

Both are made from the files beside them and nothing else, so they stay true to them: run ``streetlib report`` after
new results.
"""

import json
from pathlib import Path

import pandas as pd

from streetlib import paths
from streetlib.classes import OUTPUTS
from streetlib.paths import atomic_path
from streetlib.runs import RunId, RunLayout


def _manifest(path):
    """The manifest in ``path``, a dict.

    Raises:
        ValueError: the file is not valid JSON; the message names it.
    """
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}). Restore it, or move it out of hists/.") from err


def _table(path, columns):
    """The CSV file ``path``, which must have ``columns``. Returns a DataFrame.

    Raises:
        ValueError: the file is not a CSV table with those columns; the message names it.
    """
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV table ({err}). Restore it, or move it out of hists/.") from err
    missing = sorted(set(columns) - set(table.columns))
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}. Restore it, or move it out of hists/.")
    return table


def run_rows(hists_dir=None):
    """One row per training run found under ``hists/<dataset>/<experiment>/<run>.json``.

    Returns:
        DataFrame with columns experiment, run, data, synthetic, weights, phase, backbone, image_size, split_seed,
        seed, status, epochs, and for each output o: ``checkpoint_val_<o>`` (validation accuracy of the best
        checkpoint: the epoch with the best validation *city* accuracy, so for the region output not its own best),
        ``final_val_<o>`` (at the last epoch), ``test_<o>`` (test accuracy of the best checkpoint, when evaluated),
        plus the history, manifest and eval paths relative to ``hists_dir``.

    Raises:
        ValueError: a manifest, history or eval file that cannot be read, naming it.
    """
    root = Path(hists_dir or paths.hists_dir())
    rows = []
    for manifest_path in sorted(root.glob("*/*/*.json")):
        manifest = _manifest(manifest_path)
        if "config" not in manifest:
            continue
        layout = RunLayout(hists_dir=root, dataset=manifest_path.parent.parent.name)
        run = RunId.from_name(manifest_path.parent.name, manifest_path.stem)
        row = _manifest_row(layout, run, manifest_path, manifest, root)
        if layout.history(run).is_file():
            row.update(_history_scores(layout.history(run)))
        if layout.evals(run).is_file():
            row.update(_test_scores(layout.evals(run)))
        rows.append(row)
    return pd.DataFrame(rows)


def _manifest_row(layout, run, manifest_path, manifest, hists):
    """What a run's manifest says, and where its files are (relative to ``hists``): the start of its row in
    `run_rows`."""
    eval_path = layout.evals(run)
    config = manifest["config"]
    try:
        return {
            "experiment": config["experiment"],
            "run": config["run"],
            "data": manifest["dataset"]["label"],
            "synthetic": manifest["dataset"]["synthetic"],
            "weights": config["weights"],
            "phase": config["phase"],
            "backbone": config["backbone"],
            "image_size": config["image_size"],
            "split_seed": manifest["split"]["seed"],
            "seed": config["seed"],
            "status": manifest["status"],
            "epochs": 0,
            "history": layout.history(run).relative_to(hists).as_posix(),
            "manifest": manifest_path.relative_to(hists).as_posix(),
            "eval": eval_path.relative_to(hists).as_posix() if eval_path.is_file() else "",
        }
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{manifest_path}: not a complete run manifest (no entry {err}). Restore it, or move it out of hists/."
        ) from err


def _history_scores(path):
    """Epochs, and validation accuracies of the best checkpoint (the epoch with the best validation city accuracy,
    the one `streetlib.training.train` saves as best) and of the last epoch."""
    history = _table(path, [f"val_{o}_accuracy" for o in OUTPUTS])
    if not len(history):
        return {}
    best = history.loc[history["val_city_accuracy"].idxmax()]
    scores = {"epochs": len(history)}
    for o in OUTPUTS:
        scores[f"checkpoint_val_{o}"] = best[f"val_{o}_accuracy"]
        scores[f"final_val_{o}"] = history[f"val_{o}_accuracy"].iloc[-1]
    return scores


def _test_scores(path):
    """Test accuracy of the best checkpoint per output, from a run's eval rows."""
    scores = _table(path, ["metric", "class", "subset", "checkpoint", "output", "value"])
    overall = scores[
        (scores["metric"] == "accuracy")
        & scores["class"].isna()
        & (scores["subset"] == "test")
        & (scores["checkpoint"] == "best")
    ]
    test = {}
    for o in OUTPUTS:
        values = overall.loc[overall["output"] == o, "value"]
        if len(values):
            test[f"test_{o}"] = float(values.iloc[-1])
    return test


def _cell(value):
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.3f}"
    return str(value)


def hists_markdown(hists_dir=None):
    """The text of ``hists/README.md``."""
    hists = Path(hists_dir or paths.hists_dir())
    runs = run_rows(hists)
    lines = [
        "# Training histories",
        "",
        "Generated by `streetlib report` from the files in this folder; do not edit by hand.",
        "Each run has a CSV history (one row per epoch), a JSON manifest (every parameter, data and split hashes, "
        "package versions, git commit, wall time) and, once evaluated, an `.eval.csv` of test metrics.",
        "",
        "*best ckpt*: the epoch with the best validation city accuracy, saved as the best model and tested; its "
        "region accuracy is the region output's at that epoch, not the best the region output reached.",
        "",
    ]
    if runs.empty:
        lines.append("No training runs yet.")
    else:
        if runs["synthetic"].any():
            lines += [
                "**Runs on synthetic demo data say nothing about real cities**: they show the code works end to end.",
                "",
            ]
        header = [
            "experiment",
            "run",
            "data",
            "weights",
            "phase",
            "split seed",
            "epochs",
            "val region (best ckpt)",
            "val city (best ckpt)",
            "final val region",
            "final val city",
            "test region",
            "test city",
            "files",
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for _, r in runs.iterrows():
            files = f"[csv]({r['history']}) [manifest]({r['manifest']})" + (
                f" [eval]({r['eval']})" if r["eval"] else ""
            )
            values = [r["experiment"], r["run"], r["data"], r["weights"], r["phase"], r["split_seed"], r["epochs"]]
            values += [r.get(f"{k}_{o}") for k in ("checkpoint_val", "final_val") for o in OUTPUTS]
            values += [r.get(f"test_{o}") for o in OUTPUTS] + [files]
            lines.append("| " + " | ".join(_cell(v) for v in values) + " |")
    tables = [p.relative_to(hists).as_posix() for p in sorted(hists.glob("*/*/*.csv")) if not _is_run_file(p)]
    if tables:
        lines += ["", "## Result tables", ""] + [f"- [{p}]({p})" for p in tables]
    return "\n".join(lines) + "\n"


def _is_run_file(path):
    """True for a run's history or eval rows (listed in the runs table), not a notebook's result table."""
    stem = path.name.removesuffix(".eval.csv").removesuffix(".csv")
    return path.with_name(f"{stem}.json").is_file()


def figure_caption(path, figs_dir):
    """A caption from a figure's place: its folder (the notebook or experiment) and its file name."""
    rel = Path(path).relative_to(figs_dir)
    words = rel.stem.replace("_", " ").replace(".", ", ")
    return f"{rel.parent.as_posix()}: {words}" if rel.parent != Path(".") else words


def figs_markdown(figs_dir=None):
    """The text of ``figs/README.md``: every PNG under ``figs/``, grouped by folder, with a caption."""
    figs = Path(figs_dir or paths.figs_dir())
    images = sorted(figs.rglob("*.png"))
    lines = [
        "# Figures",
        "",
        "Generated by `streetlib report` from the files in this folder; do not edit by hand. Every figure's title "
        "names the data (synthetic demo or Street10) and the weights that produced it.",
    ]
    folder = None
    for image in images:
        rel = image.relative_to(figs)
        if rel.parent != folder:
            folder = rel.parent
            lines += ["", f"## {folder.as_posix() if folder != Path('.') else 'figs'}", ""]
        lines += [f"![{figure_caption(image, figs)}]({rel.as_posix()})", "", f"*{figure_caption(image, figs)}*", ""]
    if not images:
        lines += ["", "No figures yet."]
    return "\n".join(lines).rstrip() + "\n"


def write_reports(*, hists_dir=None, figs_dir=None):
    """Write ``hists/README.md`` and ``figs/README.md`` atomically. Returns their paths."""
    out = []
    for path, text in (
        (Path(hists_dir or paths.hists_dir()) / "README.md", hists_markdown(hists_dir)),
        (Path(figs_dir or paths.figs_dir()) / "README.md", figs_markdown(figs_dir)),
    ):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        out.append(path)
    return out
