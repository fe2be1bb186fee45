"""The concept report: every class's top concept of each source (the trained model, its randomised-weights copy,
the baseline without the model), found on the discovery images and scored on held-out images against the cue
masks, each question judged by `streetlib.evaluation.stats`; the same report on fresh images of the generator
(`confirmation_report`), and the report in words (`report_findings`).

The report's rule, fixed before any test image was scored with it (issue #24: the score had been changed after test
results were seen):

1. Discovery (`discover.discover_sources`) sees only the discovery images (the training split): the trained model's
   concepts of each class, the randomised copy's (on the same images) and the baseline's clusters, each class's
   *top* concept (or purest cluster) chosen there. Nothing later changes them.
2. Scoring (`held_out_report`) projects those fixed directions (and assigns patches to those fixed clusters) on
   held-out images it refuses to share with discovery: the test split (`class_report`), and a confirmation set drawn
   by the synthetic generator with a seed the dataset was not made with (`confirmation_report`). The images scored
   for a class are its held-out images selected as discovery selects (``config.selection``, by default labelled and
   predicted as the class by the trained model); all three sources are scored on the same images.
3. Per class and source, on the scored images (those with a cue pixel, where the map has mass: a concept that does
   not fire in an image has no share there, and the pooled share gives it no weight anyway), BOTH shares:
   the *per-image* share (the mean over images of the share of the map's mass inside the cue mask) and the *pooled*
   share (the share of the mass summed over the images: a ratio estimator). Each is compared by `stats.compare`
   (``overlap=0``: images share nothing) with the target ``share_target`` (the trained model's concept only) and with
   chance (the mask's area; mass-weighted for the pooled share), equivalence margin ``share_margin``. The per-image
   share's unit is the image (``share_i - reference_i``); the pooled share's are its linearised values
   (`score.share_differences`), whose mean is the pooled share minus the reference and whose spread gives the
   delta-method standard error. The deletion test compares, per image, the probability drop of removing the
   concept's region with that of random regions of the same area and shape, margin ``drop_margin``.
4. All of one report's questions form one `stats.family`: Holm over them, verdicts in the module's three words.
"""

import numpy as np
import pandas as pd

from streetlib.attribution.concepts.activations import concept_layer, predicted_classes
from streetlib.attribution.concepts.config import check_images
from streetlib.attribution.concepts.discover import SOURCES, discover_sources, select_images
from streetlib.attribution.concepts.doersch import PatchClusters, patch_cluster_maps
from streetlib.attribution.concepts.score import (
    concept_deletion,
    concept_projection,
    scored_shares,
    share_differences,
)
from streetlib.data import synth
from streetlib.data.loaders import StreetData, content_hash
from streetlib.evaluation import stats

# The questions of a report, and the column of `held_out_report`'s table that holds each one's verdict.
QUESTIONS = {
    "per-image share vs target": "per_image_vs_target",
    "pooled share vs target": "pooled_vs_target",
    "per-image share vs chance": "per_image_vs_chance",
    "pooled share vs chance": "pooled_vs_chance",
    "deletion vs random regions": "deletion",
}


def _mean_interval(values, margin):
    """(mean, low, high): the mean of per-image values and its 95% t interval, as `stats.compare` computes it."""
    out = stats.compare(values, a="0", b="mean", margin=margin)
    return out["difference"], out["low"], out["high"]


def share_questions(maps, masks, *, margin, target=None):
    """Steps 3 of the report's rule for one concept's maps over a class's held-out images: both shares, each with
    its 95% interval, and their questions for `stats.family`.

    Args:
        maps: float `(n, H, W)`, non-negative: one concept's maps of the class's held-out images.
        masks: `(n, H, W)`, their cue masks.
        margin: float > 0, the equivalence margin (`ConceptConfig.share_margin`).
        target: None, or float in (0, 1): ask whether each share is above, at or below it too.

    Returns:
        (summary, questions): dict with ``scored`` (images with a cue pixel where the map has mass), and for the
        prefixes ``per_image`` and ``pooled``: ``<prefix>_share``, ``<prefix>_low``, ``<prefix>_high`` and
        ``<prefix>_chance`` (NaN without a scored image); list of `stats.compare` dicts, each with a ``question``
        (a key of `QUESTIONS`): ``a`` is 'chance' or 'target', ``b`` 'concept'.
    """
    shares, mass, area = scored_shares(maps, masks)
    summary, questions = {"scored": len(shares)}, []
    for prefix, weights in (("per_image", None), ("pooled", mass)):
        mean, low, high = _mean_interval(share_differences(shares, 0.0, weights), margin)
        chance = float(np.average(area, weights=weights)) if len(area) else np.nan
        summary |= {f"{prefix}_share": mean, f"{prefix}_low": low, f"{prefix}_high": high, f"{prefix}_chance": chance}
        references = {"chance": area} if target is None else {"target": target, "chance": area}
        for name, reference in references.items():
            differences = share_differences(shares, reference, weights)
            compared = stats.compare(differences, a=name, b="concept", margin=margin)
            questions.append({"question": f"{prefix.replace('_', '-')} share vs {name}", **compared})
    return summary, questions


def _source_maps(found, source, pictures, model, *, discovery, normalization):
    """One source's top concept (or cluster) ``k`` on one class's held-out images: (k, its maps float `(n, H, W)`,
    its contribution maps of the same shape, or None for the baseline, which has none)."""
    k = int(found.order[0])
    n, size = len(pictures), pictures.shape[1:3]
    if isinstance(found, PatchClusters):
        return k, patch_cluster_maps(pictures, found)[..., k] if n else np.zeros((n, *size)), None
    if not n:
        return k, np.zeros((n, *size)), np.zeros((n, *size))
    scorer = discovery.randomized if source == SOURCES[1] else model
    projected = concept_projection(
        pictures, scorer, found, normalization=normalization, batch_size=discovery.config.batch_size
    )
    return k, projected["maps"][..., k], projected["contributions"][..., k]


def _deletion(found, pictures, maps, model, *, discovery, normalization):
    """The deletion test of one top concept on one class's held-out images: the row's columns and the question."""
    config = discovery.config
    drops = np.zeros(0)
    drop_concept = drop_random = np.nan
    if len(pictures):
        deleted = concept_deletion(
            pictures,
            model,
            maps,
            normalization=normalization,
            output=discovery.output,
            target=found.target_class,
            area=config.deletion_area,
            repeats=config.deletion_repeats,
            seed=config.seed,
            batch_size=config.batch_size,
        )
        drops = deleted["concept"] - deleted["random"]
        drop_concept, drop_random = float(deleted["concept"].mean()), float(deleted["random"].mean())
    compared = stats.compare(drops, a="random regions", b="concept", margin=config.drop_margin)
    columns = {
        "drop_concept": drop_concept,
        "drop_random": drop_random,
        "drop_difference": compared["difference"],
        "drop_low": compared["low"],
        "drop_high": compared["high"],
    }
    return columns, {"question": "deletion vs random regions", **compared}


def _held_out_row(found, source, pictures, masks, model, *, discovery, normalization):
    """One source's top concept (or cluster), fixed at discovery, scored on one class's held-out images ``pictures``:
    the table row and its questions."""
    config = discovery.config
    common = {"discovery": discovery, "normalization": normalization}
    k, maps, contributions = _source_maps(found, source, pictures, model, **common)
    target = config.share_target if source == SOURCES[0] else None
    summary, questions = share_questions(maps, masks, margin=config.share_margin, target=target)
    counts = np.full(3, np.nan)
    if contributions is not None:
        shares, mass, _ = scored_shares(contributions, masks)
        counts = _mean_interval(share_differences(shares, 0.0, mass), config.share_margin)
    row = {
        "concept": k,
        "images": len(found.indices),
        "selected": len(pictures),
        "share_target": config.share_target,
        **summary,
        **dict(zip(("contribution_share", "contribution_low", "contribution_high"), counts, strict=True)),
    }
    if source == SOURCES[1]:
        return row, questions  # the deletion test asks what the trained model relies on, not a random one
    columns, question = _deletion(found, pictures, maps, model, **common)
    return row | columns, [*questions, question]


def held_out_report(discovery, images, masks, labels, model, *, normalization, scored_on="held-out images"):
    """Steps 2 to 4 of the report's rule (module docstring): every class's top concept of each source, fixed by
    ``discovery``, scored on held-out images against the cue masks and by the deletion test, every question of the
    report in one `stats.family`.

    Args:
        discovery: `discover.Discovery` (`discover.discover_sources`), found on other images.
        images: uint8 `(n, H, W, 3)` RGB held-out images of every class; none of them among the discovery images.
        masks: `(n, H, W)` their cue masks.
        labels: int `(n,)`, each image's true ``discovery.output`` class.
        model: the trained `keras.Model` (the one ``discovery`` was made with).
        normalization: the model's input normalisation.
        scored_on: str, what ``images`` are, for the tables. Default 'held-out images'.

    Returns:
        (table, verdicts): `pandas.DataFrame` ``table``, one row per class x source (`discover.SOURCES`), with
        ``class``, ``source``, ``found_on``, ``scored_on``, ``concept`` (its index in the bank, or 0, the purest
        cluster), ``images`` (discovery images it was found on), ``selected`` (held-out images of the class selected
        as ``config.selection`` says, scored by all three sources), ``share_target``, `share_questions`'s summary
        (``scored``, ``per_image_share``/``_low``/``_high``/``_chance``, ``pooled_share``/``_low``/``_high``/
        ``_chance``), ``contribution_share``/``_low``/``_high`` (the pooled share of its contribution map; NaN for
        the baseline, which has none), for the model and the baseline ``drop_concept``, ``drop_random`` (mean
        probability drops), ``drop_difference``, ``drop_low``, ``drop_high`` (their paired difference and its
        interval), and the verdict columns of `QUESTIONS` (NaN where a question is not asked: the target for the
        control and the baseline, deletion for the control); ``verdicts``, `stats.family` of every question, one
        row each, labelled by ``class``, ``source``, ``question`` and ``scored_on``.

    Raises:
        ValueError: shapes that do not match, or held-out images that were discovery images.
    """
    config = discovery.config
    images, masks, labels = _check_held_out(discovery, images, masks, labels)
    predicted = predicted_classes(
        images,
        model,
        normalization=normalization,
        output=discovery.output,
        layer=concept_layer(model, config.layer),
        batch_size=config.batch_size,
    )
    rows, questions = [], []
    labels_of = {"found_on": discovery.found_on, "scored_on": scored_on}
    for target in discovery.concepts:
        picked = select_images(labels, predicted, target, config.selection, discovery.output)
        for source, found in discovery.sources(target).items():
            row, asked = _held_out_row(
                found, source, images[picked], masks[picked], model, discovery=discovery, normalization=normalization
            )
            rows.append({"class": target, "source": source, **labels_of, **row})
            questions += [{"class": target, "source": source, "scored_on": scored_on, **q} for q in asked]
    verdicts = stats.family(questions)
    return _with_verdicts(pd.DataFrame(rows), verdicts), verdicts


def _check_held_out(discovery, images, masks, labels):
    """The held-out arrays, refused if their shapes differ or if any image was a discovery image."""
    images, masks, labels = check_images(images), np.asarray(masks), np.asarray(labels)
    if masks.shape != images.shape[:3] or labels.shape != (len(images),):
        raise ValueError(
            f"`masks` must have shape {images.shape[:3]} and `labels` ({len(images)},) to match `images`. "
            f"Received {masks.shape} and {labels.shape}."
        )
    seen = sum(content_hash(image) in discovery.image_hashes for image in images)
    if seen:
        raise ValueError(
            f"Invalid `images`: {seen} of the {len(images)} images to score are among the {discovery.found_on} the "
            f"concepts were found on. Score held-out images: the test split, or `confirmation_report`'s fresh ones."
        )
    return images, masks, labels


def _with_verdicts(table, verdicts):
    """``table`` with one column of verdicts per question of `QUESTIONS` (in that order, at the end)."""
    if len(verdicts):
        wide = verdicts.pivot(index=["class", "source"], columns="question", values="verdict").rename(columns=QUESTIONS)
        table = table.join(wide, on=["class", "source"])
    columns = [c for c in table.columns if c not in QUESTIONS.values()]
    return table.reindex(columns=[*columns, *QUESTIONS.values()])


def class_report(
    images,
    labels,
    model,
    *,
    test_images,
    test_masks,
    test_labels,
    normalization,
    output="region",
    config=None,
    patch_config=None,
    found_on="training images",
    scored_on="test images",
):
    """The report's rule on a split: concepts found on the training images (`discover.discover_sources`), scored on
    the test images (`held_out_report`).

    Twelve parameters, over the ~10 of the rest of the package: the two sets of images with their labels (and the
    test masks) are data, and the rest are `discover.discover_sources`' and `held_out_report`'s settings passed
    through unchanged; grouping the test arrays would hide which images are held out.

    Args:
        images: uint8 `(n, H, W, 3)` RGB, the discovery (training) images.
        labels: int `(n,)`, their true ``output`` class.
        model: the trained `keras.Model`.
        test_images, test_masks, test_labels: the held-out (test) images, their cue masks and true classes.
        normalization: the model's input normalisation.
        output: str. Default 'region'.
        config: `ConceptConfig` (discovery and the scoring rule). Default ``ConceptConfig()``.
        patch_config: `PatchConfig` of the baseline. Default ``PatchConfig()``.
        found_on, scored_on: str, what the two sets of images are, for the tables.

    Returns:
        (table, verdicts, discovery): `held_out_report`'s two frames, and the `discover.Discovery` (its ``concepts``
        for the galleries, all of it for `confirmation_report`).
    """
    common = {"normalization": normalization}
    discovery = discover_sources(
        images, labels, model, output=output, config=config, patch_config=patch_config, found_on=found_on, **common
    )
    table, verdicts = held_out_report(
        discovery, test_images, test_masks, test_labels, model, scored_on=scored_on, **common
    )
    return table, verdicts, discovery


def synthetic_confirmation(data, *, seed, per_class):
    """Fresh images of ``data``'s classes from the synthetic generator with another generator seed: images nobody
    has seen, for a confirmation the test split cannot give once its results have been read.

    Args:
        data: `streetlib.data.loaders.StreetData` made by `streetlib.data.synth` (its ``dataset.json`` says so and
            records the seed).
        seed: int >= 0, the generator seed; not the one ``data`` was made with.
        per_class: int >= 1, images per class.

    Returns:
        `StreetData` of ``per_class`` images per class (class-major), with their cue masks, at ``data``'s image size,
        named ``<data.name>-seed<seed>``, in memory.

    Raises:
        ValueError: ``data`` was not made by the generator, or ``seed`` is the one it was made with.
    """
    made = data.meta or {}
    if not data.synthetic or made.get("generator") != synth.__name__:
        raise ValueError(
            f"A confirmation set is drawn by the synthetic generator: {data.name} was not made by {synth.__name__} "
            f"(its dataset.json records generator={made.get('generator')!r}). Run the confirmation on the demo data."
        )
    if seed == made.get("seed"):
        raise ValueError(
            f"Invalid `seed`: {data.name} was made with generator seed {seed}, so those are its own images. "
            "Pass a seed it was not made with."
        )
    height, width = data.image_size
    if height != width:
        raise ValueError(f"The generator draws square images; {data.name} has {height}x{width} px.")
    # In this process: a few hundred images take seconds, less than spawning workers that import numpy and Pillow.
    # A dataset.json from before tasks existed was made by the cues task.
    task = made.get("task", "cues")
    images, masks = synth.make_synthetic(
        per_class=per_class, size=height, seed=seed, classes=data.spec, task=task, workers=1
    )
    return StreetData(
        images=np.concatenate(list(images.values())),
        city=np.repeat(np.arange(data.spec.num_classes), per_class),
        spec=data.spec,
        name=f"{data.name}-seed{seed}",
        source=f"{synth.__name__}, in memory",
        synthetic=True,
        masks=np.concatenate(list(masks.values())),
        meta={"generator": synth.__name__, "per_class": per_class, "size": height, "seed": seed, "task": task},
    )


def confirmation_report(discovery, data, model, *, normalization, seed, per_class=30):
    """The same report (`held_out_report`) on fresh images of the synthetic generator drawn with an unused seed
    (`synthetic_confirmation`): the concepts found on the training images, the model not retrained.

    Args:
        discovery: `discover.Discovery` of ``model`` on ``data``'s training images (`class_report`).
        data: the `StreetData` the model was trained on, made by `streetlib.data.synth`.
        model: the trained `keras.Model`.
        normalization: the model's input normalisation.
        seed: int >= 0, a generator seed ``data`` was not made with.
        per_class: int >= 1, fresh images per class. Default 30 (the demo test split's 10% of 300).

    Returns:
        (table, verdicts, fresh): `held_out_report`'s frames (``scored_on`` names the seed; their own family: a
        replication, not more questions of the test report) and the fresh `StreetData`.
    """
    fresh = synthetic_confirmation(data, seed=seed, per_class=per_class)
    table, verdicts = held_out_report(
        discovery,
        fresh.images,
        fresh.masks,
        fresh.labels()[discovery.output],
        model,
        normalization=normalization,
        scored_on=f"confirmation images (generator seed {seed})",
    )
    return table, verdicts, fresh


def _share_words(row, prefix):
    """'0.44 [0.37, 0.51] (vs the 50% target: <verdict>; vs chance 0.11: <verdict>)' for one share of a row."""
    words = f"{row[f'{prefix}_share']:.2f} [{row[f'{prefix}_low']:.2f}, {row[f'{prefix}_high']:.2f}] ("
    if isinstance(row.get(f"{prefix}_vs_target"), str):
        words += f"vs the {row['share_target']:.0%} target: {row[f'{prefix}_vs_target']}; "
    return words + f"vs chance {row[f'{prefix}_chance']:.2f}: {row[f'{prefix}_vs_chance']})"


def report_findings(table, *, names):
    """The report in words, every number and verdict read from ``table`` (`held_out_report`).

    Args:
        table: the `held_out_report` (or `class_report`) DataFrame.
        names: list of str, the class names of the output, by index.

    Returns:
        list of str, one line per class and source.
    """
    lines = []
    for row in table.to_dict("records"):
        line = (
            f"{names[row['class']]}, {row['source']}: top concept #{row['concept']} (found on {row['images']} "
            f"{row['found_on']}), on {row['scored']} of {row['selected']} {row['scored_on']}: "
        )
        if row["scored"]:
            line += (
                f"{_share_words(row, 'pooled')} of its map mass (pooled over the images) on cue pixels; "
                f"per-image mean {_share_words(row, 'per_image')}"
            )
        else:
            line += "no image with a cue pixel where it fires, so no share"
        if row["scored"] and np.isfinite(row.get("contribution_share", np.nan)):
            line += (
                f"; where it counts for the class (its contribution map), {row['contribution_share']:.2f} "
                f"[{row['contribution_low']:.2f}, {row['contribution_high']:.2f}]"
            )
        if isinstance(row.get("deletion"), str) and row["selected"]:
            line += (
                f"; deleting where it fires most drops the class probability by {row['drop_concept']:.2f}, random "
                f"regions of the same area and shape by {row['drop_random']:.2f}, a difference of "
                f"{row['drop_difference']:.2f} [{row['drop_low']:.2f}, {row['drop_high']:.2f}]: {row['deletion']}"
            )
        lines.append(line + ".")
    return lines
