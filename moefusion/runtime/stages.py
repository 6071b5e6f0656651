"""The pipeline's stage threads: sync + preprocess, inference, postprocess + sink (``Stages``, a
mixin of ``pipeline.Pipeline``: the loops read its configuration, statistics, sources and sink).

Each loop takes from one bounded queue and puts into the next (``queues.py``); closing a queue
ends the next stage once it is empty, so a stop drains the stages in order."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from .capture import ROLE_NAMES
from .output_clock import HeldFrame, OutputClock
from .process import draw_overlay
from .queues import _END, BoundedQueue, Inbox, nbytes
from .sync import Pairer

log = logging.getLogger("moefusion.runtime")

@dataclass
class Item:
    prep: object
    capture_ns: int
    ts_ns: int
    fused: np.ndarray | None = None
    attention: np.ndarray | None = None
    frames: tuple = ()  # the source frames (their pooled buffers go back once the output is written)
    new_stream: str = ""  # why this frame starts a new stream (stream mode's state is reset before it)



class Stages:
    """The thread loops of ``Pipeline`` (see the module docstring)."""

    def _sync_loop(self, inbox: Inbox, infer_q: BoundedQueue, any_live: bool):
        cfg, stats, fusion = self.cfg, self.stats, self.fusion
        pairer = Pairer(int(cfg.sync_tolerance_ms * 1e6), finite=not any_live,
                        offset_ns=int(cfg.sync_offset_ms * 1e6), max_wait_ns=int(cfg.max_wait_ms * 1e6))
        ended = {"ir": False, "vis": False}
        reconnects = {"ir": 0, "vis": 0}
        restart = ""  # a source reconnected: the next pair starts a new stream
        last = None  # (IR loop, VIS loop, IR size, VIS size) of the last pair
        try:
            while not self.stop_event.is_set():
                eos_seen = {r: s.eos.is_set() for r, s in self.sources.items()}
                batch = inbox.take(0.02 if any_live else 0.1, self._room(pairer))
                t0 = time.perf_counter()  # "sync" is the pairing work, not the wait for frames
                for role, src in self.sources.items():
                    if src.counters.reconnects != reconnects[role]:  # timestamps restart after a reconnect
                        reconnects[role] = src.counters.reconnects
                        pairer.reset_stream(role)
                        restart = f"{ROLE_NAMES[role]} source reconnected"
                for role in ("ir", "vis"):
                    for f in batch[role]:
                        for cause, _ in pairer.push(role, f):
                            stats.drop(cause)
                for role, seen in eos_seen.items():
                    if seen and not ended[role] and inbox.pending(role) == 0:
                        src = self.sources[role]
                        if src.fatal:
                            self._fail(src.fatal)
                            return
                        ended[role] = True
                        pairer.end(role)
                        log.info("%s source ended after %d frames", ROLE_NAMES[role], src.counters.frames)
                events = pairer.poll(time.monotonic_ns())
                n_pairs = sum(1 for ev in events if ev[0] == "pair")
                if n_pairs:  # per pair: the work of pairing since the frames arrived
                    dt = (time.perf_counter() - t0) / n_pairs
                    for _ in range(n_pairs):
                        stats.stage_time("sync", dt)
                for ev in events:
                    if ev[0] == "drop":
                        stats.drop(ev[1])
                        continue
                    p = ev[1]
                    stats.pair(p.skew_ns)
                    t1 = time.perf_counter()
                    prep = fusion.prepare(p.ir.image, p.vis.image)
                    stats.stage_time("preprocess", time.perf_counter() - t1)
                    item = Item(prep, min(p.ir.capture_ns, p.vis.capture_ns), p.vis.ts_ns, frames=(p.ir, p.vis))
                    key = (p.ir.loop, p.vis.loop, p.ir.image.shape[:2], p.vis.image.shape[:2])
                    if last is not None and key != last:  # the stream's scene jumps: its state must not carry over
                        restart = restart or ("a looping file started again" if key[:2] != last[:2] else
                                              "a source's frame size changed")
                    last = key
                    item.new_stream, restart = restart, ""
                    if not infer_q.put(item):
                        break
                if (ended["ir"] and pairer.pending("ir") == 0) or (ended["vis"] and pairer.pending("vis") == 0):
                    # a file ended: the run ends (the other stream's last frames have no partner)
                    for ev in pairer.finish():
                        if ev[0] == "drop":
                            stats.drop(ev[1])
                    self.stop("end of input")
                    return
        finally:
            self._count_leftovers({r: pairer.pending(r) for r in ("ir", "vis")})
            infer_q.close()

    def _room(self, pairer: Pairer) -> dict:
        """How many frames of each file the pairer may take in: files wait in their (bounded)
        queues rather than in the pairer, which would otherwise buffer the faster file without
        limit (all 590 VIS frames of a clip beside a slow 2560x1920 IR stream). Live streams: all
        (their queues drop the oldest)."""
        room = {}
        for role, src in self.sources.items():
            if not self.live.get(role):
                held = pairer.q[role]
                full = sum(nbytes(f) for f in held) >= self._inbox.max_bytes
                room[role] = 0 if full else max(0, self._inbox.cap - len(held))
        return room

    def _count_leftovers(self, pending: dict | None = None) -> None:
        """Frames still in the pairer or the inbox when the run ends are counted as drops."""
        rest = self._inbox.take(0)
        for role in ("ir", "vis"):
            left = (pending or {}).get(role, 0) + len(rest[role])
            if self.stop_reason == "end of input":
                self.stats.drop(f"unpaired_{role}", left)  # the other file ended: no partner can come
            else:
                self._unprocessed(left)

    def _infer_loop(self, infer_q: BoundedQueue, out_q: BoundedQueue):
        """The model, in frame order; stream mode's resets before the frames that start a new stream
        (``FrameFusion.infer``)."""
        stats, fusion = self.stats, self.fusion
        try:
            while True:
                item = infer_q.get()
                if item is _END:
                    return
                t0 = time.perf_counter()
                item.fused, item.attention = fusion.infer(item.prep, item.new_stream)
                stats.stage_time("infer", time.perf_counter() - t0)
                out_q.put(item)
        finally:
            out_q.close()

    def _release(self, item: Item) -> None:
        """The frame's arrays go back to the pool (its output has been written or dropped)."""
        item.prep.release()
        for f in item.frames:
            if f.buffer is not None:
                self.pool.put(f.buffer)
                f.buffer = None

    def _output_loop(self, out_q: BoundedQueue, fps: float, any_live: bool):
        """Postprocess, compose the view and write. Presentation times: the capture time for live
        sources, frame n at n / rate for files.

        ``--output-rate``: files are resampled to the requested rate by their media timestamps,
        sample and hold: output slot k (at k / rate) shows the latest frame at or before it, so a
        lower rate skips frames (counted as ``output_rate`` drops) and a higher one repeats them
        (``repeated``), and the output lasts as long as the input (never slow or fast motion).
        Live sources: a frame is written when the next slot is due (within half a slot), with its
        capture time; the others are skipped."""
        cfg, stats, sink = self.cfg, self.stats, self.sink
        clock = OutputClock(fps, live=any_live, convert=cfg.output_fps is not None, max_frames=cfg.max_frames)
        overlay_lines: list[str] = []

        def write_held(until_ns: float) -> bool:
            """Files with --output-rate: the held frame into every slot before ``until_ns``."""
            while clock.slot_due(until_ns):
                t1 = time.perf_counter()
                ok = self._write(clock.held.frame, clock.slot_pts())
                stats.stage_time("sink", time.perf_counter() - t1)
                if not ok:
                    return False
                stats.output(clock.held.capture_ns, repeat=clock.held.slots > 0)
                clock.slot_filled()
                if clock.full():
                    self.stop(f"--max-frames {cfg.max_frames} reached")
            return True

        try:
            while True:
                item = out_q.get()
                if item is _END:
                    if clock.held is not None:
                        write_held(clock.held.media_ns + clock.last_dt)
                        if clock.held.slots == 0:
                            stats.drop("output_rate")
                    return
                if clock.full() or self._hurry.is_set():
                    self._unprocessed()
                    self._release(item)
                    continue
                if clock.convert:
                    t = clock.media_ns(item)
                    if clock.too_early(t):
                        stats.drop("output_rate")  # too early for the next slot
                        self._release(item)
                        continue
                    if not any_live:
                        if not write_held(t):
                            self._output_failed()
                            self._release(item)
                            continue
                        if clock.held is not None:
                            clock.last_dt = t - clock.held.media_ns
                            if clock.held.slots == 0:
                                stats.drop("output_rate")  # no slot between it and this frame
                t0 = time.perf_counter()
                frame = self.fusion.render(item.fused, item.attention, item.prep)
                if cfg.overlay:
                    if clock.n % 10 == 0:
                        lat = stats.latency_window()
                        overlay_lines = [f"{stats.fps_window():.1f} FPS  latency {lat['p50'] or 0:.0f} ms",
                                         f"{self.backend.name}"]
                    draw_overlay(frame, overlay_lines)  # the frame is this item's own buffer
                t1 = time.perf_counter()
                stats.stage_time("postprocess", t1 - t0)
                if clock.convert and not any_live:  # held until the next frame says how many slots it gets
                    clock.held = HeldFrame(frame.copy(), t, item.capture_ns)
                    self._release(item)
                    continue
                pts = clock.live_pts(item, t if clock.convert else None) if any_live else clock.file_pts()
                ok = self._write(frame, pts)
                stats.stage_time("sink", time.perf_counter() - t1)
                self._release(item)
                if not ok:
                    self._output_failed()
                    continue
                stats.output(item.capture_ns)
                clock.n += 1
                if clock.full():
                    self.stop(f"--max-frames {cfg.max_frames} reached")
        finally:
            try:
                self.output_path = sink.close()
            except Exception as e:  # noqa: BLE001
                self._fail(f"finalising the output: {e}")
            if sink.error and not sink.closed_by_user and sink.error not in self.errors:
                self._fail(sink.error)

    def _write(self, frame, pts: int) -> bool:
        return self.sink.write(frame, pts)

    def _output_failed(self) -> None:
        if self.sink.closed_by_user:
            self.stop("the window was closed")
        else:
            self._fail(self.sink.error or "the output failed")
