"""Live statistics: FPS, end-to-end latency percentiles, drops per cause, skew, stage times.

Thread-safe (one lock); cheap enough to update per frame. Percentiles are over the last
``window`` frames for the periodic line and over the whole run for the summary: up to
``Reservoir.CAP`` samples per figure, then a uniform reservoir sample of them, held in a fixed
numpy array, so a run of any length uses the same memory (a long live run grew 14 kB/s when every
sample was kept, up to a million per figure, as Python floats).
"""
from __future__ import annotations

import random
import threading
import time
from collections import defaultdict, deque

import numpy as np


def percentiles(values, ps=(50, 95, 99)) -> dict:
    if len(values) == 0:
        return {f"p{p}": None for p in ps} | {"max": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    out = {f"p{p}": round(float(np.percentile(a, p)), 3) for p in ps}
    out["max"] = round(float(a.max()), 3)
    out["mean"] = round(float(a.mean()), 3)
    return out


class Reservoir:
    """At most ``cap`` samples (a uniform sample of all once more came), in a fixed array."""

    CAP = 20_000

    def __init__(self, cap: int = CAP, seed: int = 0):
        self.cap, self.n = cap, 0
        self._buf = np.empty(cap, np.float64)
        self._rng = random.Random(seed)

    @property
    def data(self) -> np.ndarray:
        return self._buf[: min(self.n, self.cap)]

    def add(self, v: float):
        if self.n < self.cap:
            self._buf[self.n] = v
        else:
            j = self._rng.randrange(self.n + 1)
            if j < self.cap:
                self._buf[j] = v
        self.n += 1


class Stats:
    STAGES = ("capture", "sync", "preprocess", "infer", "postprocess", "sink")

    def __init__(self, window: int = 300):
        self.lock = threading.Lock()
        self.t_start = time.monotonic()
        self.t_first_out = None
        self.frames_in = defaultdict(int)
        self.pairs = 0
        self.frames_out = 0
        self.repeated = 0
        self.drops = defaultdict(int)
        self.latency = Reservoir()
        self.latency_win = deque(maxlen=window)
        self.skew = Reservoir()
        self.skew_win = deque(maxlen=window)
        self.stage = {s: Reservoir() for s in self.STAGES}
        self.out_times = deque(maxlen=window)
        self.reconnects = defaultdict(int)
        self.info: dict = {}

    def count_in(self, role: str):
        with self.lock:
            self.frames_in[role] += 1

    def drop(self, cause: str, n: int = 1):
        if n:
            with self.lock:
                self.drops[cause] += n

    def set_drop(self, cause: str, n: int):
        """For counters kept elsewhere (e.g. capture gaps): set, not add."""
        with self.lock:
            if n:
                self.drops[cause] = n

    def pair(self, skew_ns: int):
        with self.lock:
            self.pairs += 1
            self.skew.add(skew_ns / 1e6)
            self.skew_win.append(skew_ns / 1e6)

    def stage_time(self, stage: str, seconds: float):
        with self.lock:
            self.stage[stage].add(seconds * 1000.0)

    def output(self, capture_ns: int, now_ns: int | None = None, *, repeat: bool = False):
        """A frame went to the output. ``repeat``: the previous frame again, to fill a slot of
        ``--output-rate`` (counted in ``frames_out`` and ``repeated``, no latency sample)."""
        now_ns = now_ns or time.monotonic_ns()
        lat = (now_ns - capture_ns) / 1e6
        t = time.monotonic()
        with self.lock:
            self.frames_out += 1
            if self.t_first_out is None:
                self.t_first_out = t
            self.out_times.append(t)
            if repeat:
                self.repeated += 1
                return
            self.latency.add(lat)
            self.latency_win.append(lat)

    def fps_window(self) -> float:
        with self.lock:
            if len(self.out_times) < 2:
                return 0.0
            span = self.out_times[-1] - self.out_times[0]
            return (len(self.out_times) - 1) / span if span > 0 else 0.0

    def fps_overall(self) -> float:
        with self.lock:
            if self.t_first_out is None or self.frames_out < 2:
                return 0.0
            span = self.out_times[-1] - self.t_first_out
            return (self.frames_out - 1) / span if span > 0 else 0.0

    def latency_window(self) -> dict:
        with self.lock:
            vals = list(self.latency_win)
        return percentiles(vals)

    def line(self) -> str:
        """One periodic status line."""
        lat = self.latency_window()
        with self.lock:
            drops = dict(self.drops)
            skew = list(self.skew_win)
            out, ins = self.frames_out, dict(self.frames_in)
        d = ", ".join(f"{k} {v}" for k, v in sorted(drops.items()) if v) or "none"
        sk = percentiles(np.abs(skew)) if skew else {"p95": None}
        lat_s = f"{lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f}" if lat["p50"] is not None else "-"
        sk_s = f"{sk['p95']:.1f}" if sk["p95"] is not None else "-"
        stream = "" if "stream_mode" not in self.info else f" | stream {'on' if self.info['stream_mode'] else 'off'}"
        return (f"{self.fps_window():.1f} FPS | latency p50/p95/p99 {lat_s} ms | |skew| p95 {sk_s} ms | "
                f"in IR {ins.get('ir', 0)} VIS {ins.get('vis', 0)} out {out} | drops: {d}{stream}")

    def summary(self) -> dict:
        with self.lock:
            lat = self.latency.data.copy()
            skew = self.skew.data.copy()
            stage = {k: percentiles(v.data.copy(), (50, 95)) for k, v in self.stage.items() if v.n}
            d = {
                "duration_s": round(time.monotonic() - self.t_start, 3),
                "frames_in": dict(self.frames_in),
                "pairs": self.pairs,
                "frames_out": self.frames_out,
                "repeated": self.repeated,
                "drops": dict(sorted(self.drops.items())),
                "drops_total": int(sum(self.drops.values())),
                "reconnects": dict(self.reconnects),
            }
        d["fps"] = round(self.fps_overall(), 3)
        d["latency_ms"] = percentiles(lat)
        d["skew_ms"] = percentiles(skew) | {"abs": percentiles(np.abs(skew)) if len(skew) else None}
        d["stage_ms"] = stage
        d.update(self.info)
        return d
