"""Pairing IR and VIS frames by timestamp.

Each IR frame is paired with the VIS frame nearest in time, if that is within the tolerance, and
each frame is used at most once. Frames left without a partner are dropped and counted per
cause (``unpaired_ir`` / ``unpaired_vis``). With a 9 Hz thermal camera and a 30 Hz RGB camera
the output runs at 9 Hz and two VIS frames in three are dropped as unpaired; that is the
intended result, and it is counted.

The decision for the earlier of the two head frames ("X", its partner candidate "Y") is final
once the next frame of X's stream is known: if that one is nearer to Y, X is dropped; else X and
Y pair. Live streams need not wait for that next frame when the stream's period (estimated from
its timestamps) shows it cannot be nearer (``gap <= period * (1 - margin) / 2``), and never wait
longer than ``max_wait_ns`` of wall-clock time; frames left waiting that long with nothing on
the other side (a camera is down) are dropped as unpaired. Finite streams (files) always wait
for the next frame or the end of the stream, so a run over files is exact and reproducible:
two files at the same rate pair one to one with no drops.

Pure logic: no threads, no clocks except the ``now_ns`` passed in. ``offset_ns`` is added to IR
timestamps (a thermal core that delivers frames late).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class Pair:
    ir: object
    vis: object
    skew_ns: int  # vis.ts - (ir.ts + offset)


class Pairer:
    def __init__(self, tolerance_ns: int, *, finite: bool = False, offset_ns: int = 0,
                 max_wait_ns: int = 150_000_000, period_margin: float = 0.25):
        self.tol = int(tolerance_ns)
        self.finite = finite
        self.offset = int(offset_ns)
        self.max_wait = int(max_wait_ns)
        self.margin = period_margin
        self.q = {"ir": deque(), "vis": deque()}
        self.ended = {"ir": False, "vis": False}
        self.period = {"ir": None, "vis": None}
        self._last_ts = {"ir": None, "vis": None}
        self.drops = {"unpaired_ir": 0, "unpaired_vis": 0, "out_of_order_ir": 0, "out_of_order_vis": 0}
        self.pairs = 0

    def ts(self, role: str, frame) -> int:
        return frame.ts_ns + self.offset if role == "ir" else frame.ts_ns

    def push(self, role: str, frame) -> list:
        """Add a frame; returns dropped frames as ``(cause, frame)`` (out-of-order ones)."""
        t = self.ts(role, frame)
        last = self._last_ts[role]
        if last is not None and t <= last:
            self.drops[f"out_of_order_{role}"] += 1
            return [(f"out_of_order_{role}", frame)]
        if last is not None:
            d = t - last
            p = self.period[role]
            if p is None:
                self.period[role] = d
            elif d < 4 * p:  # ignore gaps (reconnects, drops) in the estimate
                self.period[role] = int(0.9 * p + 0.1 * d)
        self._last_ts[role] = t
        self.q[role].append(frame)
        return []

    def end(self, role: str) -> None:
        """No more frames will come from ``role`` (end of file)."""
        self.ended[role] = True

    def reset_stream(self, role: str) -> None:
        """A live source reconnected: its timestamps start afresh."""
        self._last_ts[role] = None
        self.period[role] = None

    def pending(self, role: str) -> int:
        return len(self.q[role])

    def _drop(self, role: str, out: list, cause: str | None = None):
        f = self.q[role].popleft()
        cause = cause or f"unpaired_{role}"
        self.drops[cause] = self.drops.get(cause, 0) + 1
        out.append(("drop", cause, f))

    def poll(self, now_ns: int | None = None) -> list:
        """Decide what can be decided. Returns events in time order:
        ``("pair", Pair)`` and ``("drop", cause, frame)``."""
        out: list = []
        A, B = self.q["ir"], self.q["vis"]
        while True:
            if not A or not B:
                self._flush_lonely(out, now_ns)
                return out
            a, b = A[0], B[0]
            ta, tb = self.ts("ir", a), self.ts("vis", b)
            d = tb - ta
            if d > self.tol:
                self._drop("ir", out)
                continue
            if d < -self.tol:
                self._drop("vis", out)
                continue
            xr, yr = ("ir", "vis") if ta <= tb else ("vis", "ir")
            X, Y = self.q[xr], self.q[yr]
            tx, ty = (ta, tb) if xr == "ir" else (tb, ta)
            gap = abs(d)
            if len(X) >= 2:
                if abs(self.ts(xr, X[1]) - ty) < gap:
                    self._drop(xr, out)
                    continue
                self._pair(out)
                continue
            if self.ended[xr] or gap == 0:
                self._pair(out)
                continue
            if not self.finite:
                p = self.period[xr]
                if p and gap <= p * (1.0 - self.margin) / 2:
                    self._pair(out)
                    continue
                if now_ns is not None and now_ns - Y[0].arrival_ns > self.max_wait:
                    self._pair(out)
                    continue
            return out  # wait for the next frame of X's stream

    def _pair(self, out: list):
        a = self.q["ir"].popleft()
        b = self.q["vis"].popleft()
        self.pairs += 1
        out.append(("pair", Pair(a, b, self.ts("vis", b) - self.ts("ir", a))))

    def _flush_lonely(self, out: list, now_ns: int | None):
        """One side is empty: drop what can never be paired."""
        for role, other in (("ir", "vis"), ("vis", "ir")):
            q = self.q[role]
            if not q or self.q[other]:
                continue
            if self.ended[other]:
                while q:
                    self._drop(role, out)
            elif not self.finite and now_ns is not None:
                while q and now_ns - q[0].arrival_ns > self.max_wait:
                    self._drop(role, out)

    def finish(self) -> list:
        """End of run: everything still queued is unpaired."""
        self.ended["ir"] = self.ended["vis"] = True
        out = self.poll(None)
        for role in ("ir", "vis"):
            while self.q[role]:
                self._drop(role, out)
        return out
