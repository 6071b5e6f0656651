"""Timestamp pairing: different rates, jitter, drops counted, skew bounded, files exact."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from moefusion.runtime.sync import Pairer

MS = 1_000_000


@dataclass
class F:
    ts_ns: int
    arrival_ns: int
    role: str
    index: int


def stream(role, rate, seconds, jitter_ms, rng, start_ms=0.0, latency_ms=(5, 25)):
    n = int(seconds * rate)
    ts = start_ms * MS + np.arange(n) * (1e9 / rate) + rng.uniform(-jitter_ms, jitter_ms, n) * MS
    ts = np.maximum.accumulate(ts.astype(np.int64))  # cameras never go back in time
    arrival = ts + rng.uniform(*latency_ms, n) * MS  # delivery latency differs per frame
    return [F(int(t), int(a), role, i) for i, (t, a) in enumerate(zip(ts, arrival))]


def run_live(frames_ir, frames_vis, tol_ms, **kw):
    """Feed both streams in arrival order, polling at each arrival like the sync thread does."""
    p = Pairer(tol_ms * MS, finite=False, **kw)
    events = sorted(frames_ir + frames_vis, key=lambda f: f.arrival_ns)
    pairs, drops = [], []
    for f in events:
        p.push(f.role, f)
        for ev in p.poll(f.arrival_ns):
            (pairs if ev[0] == "pair" else drops).append(ev[1] if ev[0] == "pair" else ev[1:])
    for ev in p.finish():
        if ev[0] == "drop":
            drops.append(ev[1:])
    return p, pairs, drops


def nearest(ir, vis_list):
    d = [abs(v.ts_ns - ir.ts_ns) for v in vis_list]
    return vis_list[int(np.argmin(d))], min(d)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_9hz_thermal_with_30hz_rgb_and_jitter(seed):
    rng = np.random.default_rng(seed)
    ir = stream("ir", 9, 10, 3.0, rng, start_ms=4)
    vis = stream("vis", 30, 10, 3.0, rng)
    p, pairs, drops = run_live(ir, vis, tol_ms=20)
    # Every IR frame pairs with the VIS frame nearest in time (the tolerance exceeds half the VIS period + jitter).
    assert len(pairs) == len(ir)
    for pr in pairs:
        best, dist = nearest(pr.ir, vis)
        assert pr.vis is best, (pr.ir.index, pr.vis.index, best.index)
        assert abs(pr.skew_ns) == dist
    skews = np.array([abs(pr.skew_ns) for pr in pairs]) / MS
    assert skews.max() <= 1000 / 30 / 2 + 2 * 3.0 + 0.01  # half a VIS period plus jitter
    # Each frame is used once or dropped once, and the drops are counted by cause.
    used_vis = {pr.vis.index for pr in pairs}
    assert len(used_vis) == len(pairs)
    assert p.drops["unpaired_vis"] == len(vis) - len(pairs)
    assert p.drops["unpaired_ir"] == 0
    assert sum(1 for d in drops if d[0] == "unpaired_vis") == len(vis) - len(pairs)


def test_tolerance_drops_ir_without_partner():
    rng = np.random.default_rng(5)
    ir = stream("ir", 9, 5, 0.0, rng, start_ms=15)
    vis = stream("vis", 30, 5, 0.0, rng)
    # VIS at 0, 33.3, 66.7 ms...; IR at 15 + k*111.1 ms: distance to the nearest VIS varies 1.7..16.7 ms
    p, pairs, _ = run_live(ir, vis, tol_ms=8)
    expected = sum(1 for f in ir if nearest(f, vis)[1] <= 8 * MS)
    assert 0 < len(pairs) == expected < len(ir)
    assert p.drops["unpaired_ir"] == len(ir) - expected
    assert all(abs(pr.skew_ns) <= 8 * MS for pr in pairs)


def test_equal_rates_with_offset_and_sync_offset():
    rng = np.random.default_rng(3)
    ir = stream("ir", 30, 3, 1.0, rng, start_ms=12)  # the thermal camera stamps 12 ms late
    vis = stream("vis", 30, 3, 1.0, rng)
    p, pairs, _ = run_live(ir, vis, tol_ms=20)
    assert len(pairs) == len(ir)
    assert all(pr.ir.index == pr.vis.index for pr in pairs)
    p2, pairs2, _ = run_live(ir, vis, tol_ms=5, offset_ns=-12 * MS)  # corrected by --sync-offset
    assert len(pairs2) == len(ir)
    assert max(abs(pr.skew_ns) for pr in pairs2) <= 3 * MS


def test_lonely_frames_are_dropped_when_a_camera_is_down():
    p = Pairer(20 * MS, max_wait_ns=100 * MS)
    for i in range(10):
        p.push("vis", F(i * 33 * MS, i * 33 * MS + MS, "vis", i))
    first = p.poll(9 * 33 * MS)  # only frames that waited longer than max_wait go
    assert [e[2].index for e in first] == [i for i in range(10) if 9 * 33 - (i * 33 + 1) > 100]
    rest = p.poll(10 * 33 * MS + 200 * MS)
    assert [e[1] for e in first + rest] == ["unpaired_vis"] * 10
    assert p.pending("vis") == 0 and p.drops["unpaired_vis"] == 10


def test_files_pair_exactly_in_lockstep_with_no_drops():
    p = Pairer(1 * MS, finite=True)
    out = []
    for i in range(50):  # IR runs ahead, as a faster decoder would
        p.push("ir", F(i * 40 * MS, 0, "ir", i))
        out += p.poll(None)
    for i in range(50):
        p.push("vis", F(i * 40 * MS, 0, "vis", i))
        out += p.poll(None)
    p.end("ir"), p.end("vis")
    out += p.finish()
    pairs = [e[1] for e in out if e[0] == "pair"]
    assert len(pairs) == 50 and all(pr.ir.index == pr.vis.index for pr in pairs)
    assert sum(p.drops.values()) == 0


def test_files_at_different_rates_are_deterministic():
    def once():
        p = Pairer(20 * MS, finite=True)
        out = []
        for i in range(30):
            p.push("vis", F(int(i * 1e9 / 30), 0, "vis", i))
        for i in range(9):
            p.push("ir", F(int(i * 1e9 / 9), 0, "ir", i))
            out += p.poll(None)
        p.end("ir"), p.end("vis")
        out += p.finish()
        return [(e[1].ir.index, e[1].vis.index) for e in out if e[0] == "pair"], dict(p.drops)

    a, da = once()
    b, db = once()
    assert a == b and da == db
    assert a == [(i, round(i * 30 / 9)) for i in range(9)]
    assert da["unpaired_vis"] == 30 - 9


def test_out_of_order_frames_are_counted():
    p = Pairer(20 * MS)
    p.push("ir", F(100 * MS, 0, "ir", 0))
    assert p.push("ir", F(90 * MS, 0, "ir", 1))[0][0] == "out_of_order_ir"
    assert p.drops["out_of_order_ir"] == 1
