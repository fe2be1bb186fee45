"""What ``streetlib run --profile NAME`` would do, and whether it fits, before anything runs (``--plan``).

The work of each notebook is counted (`work`: runs, passes, memory and disk, from `counts` of the data and `costs`
of a run or a method), timed on this device (`calibration`) and checked against budgets and written out (`report`,
with the sizes and durations of `units`). The command line uses the names below.
"""

from streetlib.experiments.planning.calibration import Calibration, calibrate
from streetlib.experiments.planning.report import check_budgets, format_plan, to_json
from streetlib.experiments.planning.units import parse_bytes, parse_seconds
from streetlib.experiments.planning.work import make_plan

__all__ = [
    "Calibration",
    "calibrate",
    "check_budgets",
    "format_plan",
    "make_plan",
    "parse_bytes",
    "parse_seconds",
    "to_json",
]
