"""Sizes and durations: read from the command line's budgets (``12GB``, ``12h``) and written in a plan."""

import re

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_bytes(text):
    """'12GB', '15 GiB', '500MB' -> bytes (int). GB is 10^9 bytes, GiB 2^30.

    Raises:
        ValueError: not a size.
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS or not _is_number(match.group(1)):
        raise ValueError(f"Invalid size {text!r}. Expected a number and a unit, e.g. 12GB, 15GiB or 500MB.")
    return int(float(match.group(1)) * _UNITS[unit])


def parse_seconds(text):
    """'12h', '90m', '1.5h', '3600s', '2d' -> seconds (float).

    Raises:
        ValueError: not a duration.
    """
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-z]+)\s*", str(text).lower())
    if not match or match.group(2) not in _SECONDS or not _is_number(match.group(1)):
        raise ValueError(f"Invalid duration {text!r}. Expected a number and a unit, e.g. 12h, 90m or 3600s.")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def _is_number(text):
    return re.fullmatch(r"[0-9]+(\.[0-9]*)?|\.[0-9]+", text) is not None


def format_bytes(n):
    """Bytes as text: '596 MB', '4.2 GB'."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def format_duration(seconds):
    """Seconds as text: '40 s', '12 min', '3.4 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.3g} h"


def format_passes(n):
    """Passes as text: '4,271,296', '0.25'."""
    return f"{n:,.0f}" if n >= 10 else f"{n:.2g}"
