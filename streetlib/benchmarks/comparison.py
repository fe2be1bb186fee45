"""What a side-by-side benchmark measures: one `Comparison` (ours and the references, the ratio against its target,
how we checked both compute the same thing) and the timing every benchmark shares."""

import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Comparison:
    """One side-by-side measurement.

    Attributes:
        name: what is compared.
        ours, reference: dict label -> list of measured values (seconds, images/s or bytes).
        unit: 's' (lower is better), 'img/s' (higher is better) or 'MB' (lower is better).
        target: float, or dict reference label -> float: the ratio to reach (ours over reference, in the "better"
            direction).
        check: str, how we checked both compute the same thing, with its outcome.
        notes: str.
        max_diff: None or float, the largest difference the check found, as a number (where it is one).
    """

    name: str
    ours: dict
    reference: dict
    unit: str
    target: float
    check: str = ""
    notes: str = ""
    max_diff: float | None = None
    ratios: dict = field(default_factory=dict)

    def __post_init__(self):
        ours = statistics.median(next(iter(self.ours.values())))
        for label, values in self.reference.items():
            ref = statistics.median(values)
            self.ratios[label] = ref / ours if self.unit in ("s", "MB") else ours / ref


def timed(fn, *, repeats, warmup=1):
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed. Returns a list of seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summary(values):
    med = statistics.median(values)
    spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
    return med, spread
