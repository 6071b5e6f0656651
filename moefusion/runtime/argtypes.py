"""argparse ``type=`` functions for run_pipeline's numeric flags: every number is checked here, while
the command line is parsed, before any file is opened or any source or model starts.

Each function turns the text into an int or a float, refuses what is not finite (``inf``, ``nan``,
``1e999``) and what is out of range, and says in one phrase what it got and what is allowed, e.g.
``got inf; allowed: a finite number, 0 < HZ <= 1000``; argparse puts the flag in front. The ranges
are the ones the runtime can honour; the upper bounds catch unit mistakes (seconds for milliseconds)
and values that would overflow the nanosecond clocks.
"""
from __future__ import annotations

import argparse
import math

MAX_PIXELS = 16384  # --*-width / --*-height
MAX_RATE_HZ = 1000.0  # --*-rate, --output-rate
MAX_TOLERANCE_MS = 10_000.0  # --sync-tolerance: 10 s
MAX_OFFSET_MS = 3_600_000.0  # --sync-offset: one hour either way
MAX_QUEUE = 100  # --queue-size: frames per queue


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def bounded(kind: type = float, lo=None, hi=None, *, lo_open: bool = False, name: str = "N", hint: str = "",
            also: tuple = ()):
    """A ``type=`` function: ``kind`` (int or float) within [lo, hi] (``lo_open``: lo itself excluded),
    finite; ``also``: values allowed besides the range (0 that switches something off, -1 for
    'forever')."""
    if lo is not None and hi is not None:
        rng = f"{_fmt(lo)} {'<' if lo_open else '<='} {name} <= {_fmt(hi)}"
    elif lo is not None:
        rng = f"{name} {'>' if lo_open else '>='} {_fmt(lo)}"
    else:
        rng = f"{name} <= {_fmt(hi)}" if hi is not None else ""
    what = "a whole number" if kind is int else "a finite number"
    allowed = f"{what}, {rng}" if rng else what
    if also:
        allowed = f"{' or '.join(_fmt(a) for a in also)} or {allowed}"
    if hint:
        allowed += f" ({hint})"

    def convert(text: str):
        s = str(text).strip()
        try:
            v = int(s) if kind is int else float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"got {text}; allowed: {allowed}")
        if v in also:
            return v
        if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"got {text}; allowed: {allowed}")
        return v

    convert.__name__ = f"{kind.__name__}_{name}"
    convert.allowed = allowed  # for the documentation and the tests
    return convert


def positive_int(name: str = "N", hi=None, hint: str = ""):
    return bounded(int, 1, hi, name=name, hint=hint)


def non_negative_int(name: str = "N", hi=None, hint: str = ""):
    return bounded(int, 0, hi, name=name, hint=hint)


def positive_float(name: str = "X", hi=None, hint: str = ""):
    return bounded(float, 0, hi, lo_open=True, name=name, hint=hint)


def non_negative_float(name: str = "X", hi=None, hint: str = ""):
    return bounded(float, 0, hi, name=name, hint=hint)


def finite_float(name: str = "X", lo=None, hi=None, hint: str = ""):
    return bounded(float, lo, hi, name=name, hint=hint)


# The flags' types (one each, shared by --ir-* and --vis-*).
pixels = positive_int("PX", MAX_PIXELS)
rate_hz = positive_float("HZ", MAX_RATE_HZ, "frames per second")
loop_count = non_negative_int("N", hint="play N more times; the flag without N loops forever")
sync_tolerance_ms = positive_float("MS", MAX_TOLERANCE_MS, "milliseconds")
sync_offset_ms = finite_float("MS", -MAX_OFFSET_MS, MAX_OFFSET_MS, "milliseconds, added to IR timestamps")
segment_s = bounded(float, 1, name="S", also=(0,), hint="seconds per file; 0: one file")
stats_interval_s = non_negative_float("S", hint="seconds; 0: off")
max_frames = non_negative_int("N", hint="0: no limit")
queue_size = positive_int("N", MAX_QUEUE, "frames")
stall_timeout_s = positive_float("S", hint="seconds")
reconnect_timeout_s = bounded(float, 0, name="S", also=(-1,), hint="seconds; 0: never retry; -1: retry forever")
