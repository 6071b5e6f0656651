"""The main loop: capture -> sync -> preprocess -> infer -> postprocess -> sink.

Threads and queues::

    capture IR  --\\                                  (bounded)          (bounded)
                   >-- inbox --> sync + preprocess --> infer queue --> infer --> output queue --> post + sink
    capture VIS --/

Live sources never build up latency: every queue is short and a full queue drops its oldest
item, counted by cause (``queue_full_ir``, ``busy_infer``, ``busy_output``; camera-side losses
as ``source_gap_*``; pairing as ``unpaired_*``). File sources are processed completely: the
queues block instead of dropping, and the run ends at the end of the first file to end (or
loops with ``--*-loop``). When a file or image folder is paired with a live camera (or with
``--realtime``) it is played at its own rate and treated like a live source. Two image folders
pair by file name (``uri.pair_by_stem``). A run without a single output frame is an error.

Stopping (``stop()``, SIGINT/SIGTERM, ``--max-frames``, window closed): the captures stop,
what is already queued is finished, and the sink is finalised (EOS through the muxer), so the
output file is complete and playable.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .backends import Backend
from .capture import ROLE_NAMES, SourceError, SourceThread, Status, make_capture
from .fit import FIT_MODES, plan_model_fit
from .output_clock import HeldFrame, OutputClock
from .precheck import Checked, precheck
from .process import BufferPool, Preprocessor, attention_to_frame, compose, draw_overlay, postprocess
from .queues import _END, BoundedQueue, Inbox
from .sinks import Sink
from .stats import Stats
from .sync import Pairer
from .uri import StreamOptions, StreamURI, parse_output_uri

log = logging.getLogger("moefusion.runtime")

@dataclass
class PipelineConfig:
    ir: StreamURI
    vis: StreamURI
    ir_opts: StreamOptions = field(default_factory=StreamOptions)
    vis_opts: StreamOptions = field(default_factory=StreamOptions)
    outputs: list = field(default_factory=lambda: [parse_output_uri("none")])
    view: str = "fused"
    overlay: bool = False
    sync_tolerance_ms: float = 25.0
    sync_offset_ms: float = 0.0
    max_wait_ms: float = 150.0
    registration: str | None = None
    max_frames: int = 0
    queue_size: int | None = None  # between stages; default: 1 for live sources (lowest latency), 4 for files
    realtime: bool = False
    stats_interval: float = 5.0
    stall_timeout: float = 3.0
    reconnect_timeout: float = -1.0
    encoder: str = "auto"
    output_fps: float | None = None
    segment_s: float = 0.0  # file outputs: a new file every segment_s seconds (0: one file)
    overwrite: bool = False  # file outputs: replace an existing recording instead of adding a suffix
    model_fit: str = "letterbox"  # fixed-size models: letterbox | stretch (see fit.py)


@dataclass
class Item:
    prep: object
    capture_ns: int
    ts_ns: int
    fused: np.ndarray | None = None
    attention: np.ndarray | None = None
    frames: tuple = ()  # the source frames (their pooled buffers go back once the output is written)


class Pipeline:
    def __init__(self, cfg: PipelineConfig, backend: Backend | None = None, *, stats: Stats | None = None,
                 backend_reason: str = "", checked: Checked | None = None):
        """``checked``: the result of ``precheck.precheck(cfg)`` when it ran before the backend was
        built (run_pipeline: before a model is loaded); else ``run`` does it."""
        self.cfg = cfg
        self.backend = backend
        self.backend_reason = backend_reason
        self.stats = stats or Stats()
        self.stop_event = threading.Event()
        self.stop_reason = ""
        self.errors: list[str] = []
        self.output_path: str | None = None
        self.sink: Sink | None = None
        self._threads: list[threading.Thread] = []
        self.sources: dict[str, SourceThread] = {}
        self.pool = BufferPool()  # frames' arrays, reused (see process.BufferPool)
        self.notes: dict[str, str] = {}  # warnings said once: geometry changes, output resizing
        self._fits: dict = {}
        self._fit_lock = threading.Lock()
        self._registrar = None
        self._image_pairing = None
        self._prechecked = False
        if checked is not None:
            self._use_checks(checked)

    # -- control ---------------------------------------------------------------------------
    def stop(self, reason: str = "stop requested") -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            log.info("stopping: %s", reason)
        self.stop_event.set()

    def _fail(self, msg: str) -> None:
        if msg not in self.errors:
            self.errors.append(msg)
            log.error("%s", msg)
        self.stop(f"error: {msg}")

    def _note(self, key: str, text: str) -> None:
        """A warning said once (log and the statistics' ``warnings``)."""
        if key not in self.notes:
            self.notes[key] = text
            log.warning("%s", text)

    def _fit_for(self, h: int, w: int):
        """How frames of h x w reach the model (``fit.ModelFit``), planned once per size and logged."""
        fit = self._fits.get((h, w))
        if fit is not None:
            return fit
        with self._fit_lock:
            fit = self._fits.get((h, w))
            if fit is None:
                fit = plan_model_fit((h, w), getattr(self.backend, "size_range", None), self.cfg.model_fit)
                self._fits[(h, w)] = fit
                if not fit.native:
                    rng = self.backend.size_range
                    takes = (f"{rng[0][1]}x{rng[0][0]} only" if rng[0] == rng[1] else
                             f"{rng[0][1]}x{rng[0][0]} to {rng[1][1]}x{rng[1][0]}")
                    log.info("model input: %s takes %s; %s (--model-fit %s)", self.backend.path or self.backend.name,
                             takes, fit.describe(), self.cfg.model_fit)
                    self.stats.info.setdefault("model_fit", fit.describe())
        return fit

    def _guard(self, fn, name):
        def run():
            try:
                fn()
            except UserError as e:
                self._fail(str(e))
            except BaseException as e:  # noqa: BLE001 - surfaced as a run error with its traceback logged
                log.exception("%s thread failed", name)
                self._fail(f"{name}: {type(e).__name__}: {e}")
        return run

    # -- set-up ----------------------------------------------------------------------------
    def _open_sources(self):
        cfg = self.cfg
        any_live = cfg.ir.is_live or cfg.vis.is_live
        mixed = any_live and (cfg.ir.is_finite or cfg.vis.is_finite)
        self.paced = cfg.realtime or mixed
        if mixed:
            log.info("a file or image folder is paired with a live source: it is played at its own rate")
        caps = {}
        pairing, files, rate = self._image_pairing or (None, {}, None)
        for role, uri, opts in (("ir", cfg.ir, cfg.ir_opts), ("vis", cfg.vis, cfg.vis_opts)):
            def factory(uri=uri, opts=opts, role=role):
                return make_capture(uri, opts, role, paced=self.paced and uri.is_finite, pairing=pairing,
                                    files=files.get(role), rate=rate, pool=self.pool, yuv=role == "vis")
            cap = factory()
            if cap.launch:
                log.info("%s source %s: %s", ROLE_NAMES[role], uri.raw, cap.describe())
            try:
                cap.open()
            except SourceError as e:
                for c, _ in caps.values():
                    c.close()
                raise UserError(str(e))
            except BaseException:
                for c, _ in caps.values():
                    c.close()
                raise
            if cap.kind == "images":
                log.info("%s source %s: %s", ROLE_NAMES[role], uri.raw, cap.describe())
            caps[role] = (cap, factory)
        return caps

    def precheck(self) -> None:
        """Everything that can be checked before loading a model or starting a camera (``precheck.precheck``)."""
        self._use_checks(precheck(self.cfg))

    def _use_checks(self, checked: Checked) -> None:
        self._registrar, self.sink, self._image_pairing = checked.registrar, checked.sink, checked.image_pairing
        self.stats.info.update(checked.info)
        self._prechecked = True

    def run(self) -> dict:
        cfg, stats = self.cfg, self.stats
        if not self._prechecked:
            self.precheck()
        registrar = self._registrar
        caps = self._open_sources()
        try:
            first = {}
            for role, (cap, _) in caps.items():
                st, fr = cap.peek(10.0)
                if st is not Status.OK:
                    raise UserError(f"{cap.what}: no first frame ({st.value}{': ' + cap.error if cap.error else ''})")
                first[role] = fr
            ir0, vis0 = first["ir"].image, first["vis"].image
            if registrar is not None:
                ir0, vis0 = registrar.apply(ir0, vis0)
            h, w = vis0.shape[:2]
            if cfg.model_fit not in FIT_MODES:
                raise UserError(f"--model-fit {cfg.model_fit}: use one of {', '.join(FIT_MODES)}")
            fit = self._fit_for(h, w)
            mh, mw = fit.model
            t0 = time.perf_counter()
            warm = self.backend.warmup(mh, mw, iters=2)
            log.info("backend: %s (%s); warm-up %.0f ms, then %.1f ms per frame at %dx%d", self.backend.describe(),
                     self.backend_reason or self.backend.name, (time.perf_counter() - t0) * 1000, warm, mw, mh)
        except BaseException:
            for cap, _ in caps.values():
                cap.close()
            raise
        rates = [c.fps for c, _ in caps.values() if c.fps]
        fps = cfg.output_fps or (min(rates) if rates else 30.0)
        self.sink.fps = fps
        stats.info.update({
            "backend": self.backend.name, "backend_detail": self.backend.describe(), "backend_reason": self.backend_reason,
            "ir": cfg.ir.raw, "vis": cfg.vis.raw, "output": [o.raw for o in cfg.outputs], "view": cfg.view,
            "size": [w, h], "model_size": [mw, mh], "registration": cfg.registration,
            "sync_tolerance_ms": cfg.sync_tolerance_ms,
            "mode": "files (lockstep)" if not (cfg.ir.is_live or cfg.vis.is_live or cfg.realtime) else "live",
        })
        live = {}
        for role, (cap, _) in caps.items():
            live[role] = cap.live
            if cap.live:  # the peeked frame is stale after warm-up
                cap.discard_peeked()
                cap.restart_counting()
        self.live = live
        any_live = any(live.values())
        inbox = self._inbox = Inbox(live, cap=4, stats=stats, stop_event=self.stop_event)
        for role, (cap, factory) in caps.items():
            stall = max(self.cfg.stall_timeout, 5.0 / cap.fps if cap.fps else 0)
            self.sources[role] = SourceThread(cap, lambda f, r=role: inbox.put(r, f), self.stop_event,
                                              factory=factory, stall_timeout=stall,
                                              reconnect_timeout=cfg.reconnect_timeout)
        qsize = cfg.queue_size or (1 if any_live else 4)
        infer_q = BoundedQueue(qsize, any_live, lambda: stats.drop("busy_infer"), self.stop_event)
        out_q = BoundedQueue(qsize, any_live, lambda: stats.drop("busy_output"), self.stop_event)
        self._threads = [
            threading.Thread(target=self._guard(lambda: self._sync_loop(inbox, infer_q, registrar, any_live), "sync"),
                             name="sync", daemon=True),
            threading.Thread(target=self._guard(lambda: self._infer_loop(infer_q, out_q), "infer"), name="infer", daemon=True),
            threading.Thread(target=self._guard(lambda: self._output_loop(out_q, fps, any_live), "output"),
                             name="output", daemon=True),
        ]
        for t in list(self.sources.values()) + self._threads:
            t.start()
        self._supervise()
        if stats.frames_out == 0 and not self.errors:
            self.errors.append(self._why_no_output())
            log.error("%s", self.errors[-1])
        return self.summary()

    def _why_no_output(self) -> str:
        """One line: why a run ended without a single output frame."""
        cfg, st = self.cfg, self.stats
        n = {r: st.frames_in.get(r, 0) for r in ("ir", "vis")}
        why = f" (the run stopped: {self.stop_reason})" if self.stop_reason and self.stop_reason != "end of input" else ""
        for role, uri in (("ir", cfg.ir), ("vis", cfg.vis)):
            if n[role] == 0:
                return f"no output frame: the {ROLE_NAMES[role]} source {uri.raw} gave no frame{why}"
        if st.pairs == 0:
            return (f"no output frame: none of {n['ir']} IR and {n['vis']} VIS frames were within --sync-tolerance "
                    f"{cfg.sync_tolerance_ms:g} ms of each other{why}; check that the two sources overlap in time "
                    "(--sync-offset, --sync-tolerance; --realtime plays files and image folders at their rate)")
        return f"no output frame: {st.pairs} pairs were made but none reached the output{why}"

    # -- threads ---------------------------------------------------------------------------
    def _sync_loop(self, inbox: Inbox, infer_q: BoundedQueue, registrar, any_live: bool):
        cfg, stats = self.cfg, self.stats
        pairer = Pairer(int(cfg.sync_tolerance_ms * 1e6), finite=not any_live,
                        offset_ns=int(cfg.sync_offset_ms * 1e6), max_wait_ns=int(cfg.max_wait_ms * 1e6))
        pre = Preprocessor(pool=self.pool, fit_for=self._fit_for, on_note=self._note)
        ended = {"ir": False, "vis": False}
        reconnects = {"ir": 0, "vis": 0}
        try:
            while not self.stop_event.is_set():
                eos_seen = {r: s.eos.is_set() for r, s in self.sources.items()}
                batch = inbox.take(0.02 if any_live else 0.1)
                t0 = time.perf_counter()  # "sync" is the pairing work, not the wait for frames
                for role, src in self.sources.items():
                    if src.counters.reconnects != reconnects[role]:  # timestamps restart after a reconnect
                        reconnects[role] = src.counters.reconnects
                        pairer.reset_stream(role)
                for role in ("ir", "vis"):
                    for f in batch[role]:
                        for cause, _ in pairer.push(role, f):
                            stats.drop(cause)
                for role, seen in eos_seen.items():
                    if seen and not ended[role]:
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
                    ir, vis = p.ir.image, p.vis.image
                    if registrar is not None:
                        ir, vis = registrar.apply(ir, vis)
                    prep = pre(ir, vis)
                    stats.stage_time("preprocess", time.perf_counter() - t1)
                    item = Item(prep, min(p.ir.capture_ns, p.vis.capture_ns), p.vis.ts_ns, frames=(p.ir, p.vis))
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

    def _count_leftovers(self, pending: dict | None = None) -> None:
        """Frames still in the pairer or the inbox when the run ends are counted as drops."""
        rest = self._inbox.take(0)
        for role in ("ir", "vis"):
            left = (pending or {}).get(role, 0) + len(rest[role])
            if self.stop_reason == "end of input":
                self.stats.drop(f"unpaired_{role}", left)  # the other file ended: no partner can come
            else:
                self.stats.drop("unprocessed_at_stop", left)

    def _infer_loop(self, infer_q: BoundedQueue, out_q: BoundedQueue):
        stats, backend = self.stats, self.backend
        try:
            while True:
                item = infer_q.get()
                if item is _END:
                    return
                t0 = time.perf_counter()
                fused, att = backend.infer(item.prep.model_ir, item.prep.model_vis)
                stats.stage_time("infer", time.perf_counter() - t0)
                item.fused = fused[0, 0]
                item.attention = att[0, 0] if att is not None else None
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
                if clock.full():
                    stats.drop("unprocessed_at_stop")
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
                out = postprocess(item.fused, item.prep, in_place=cfg.view == "fused")
                att = attention_to_frame(item.attention, item.prep) if cfg.view == "grid" else None
                frame = compose(cfg.view, out, item.prep, att)
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

    def _supervise(self):
        cfg, stats = self.cfg, self.stats
        out_thread = self._threads[-1]
        next_line = time.monotonic() + cfg.stats_interval
        while out_thread.is_alive():
            out_thread.join(0.1)
            for role, src in self.sources.items():
                if src.fatal and src.live and not src.finite:
                    self._fail(src.fatal)
            if cfg.stats_interval > 0 and time.monotonic() >= next_line:
                next_line += cfg.stats_interval
                self._sync_counters()
                log.info("%s", stats.line())
        self.stop_event.set()
        for t in list(self.sources.values()) + self._threads:
            t.join(5.0)
        self._count_leftovers()  # frames delivered after the sync thread finished
        self._sync_counters()
        for src in self.sources.values():
            if src.fatal and src.fatal not in self.errors:
                self.errors.append(src.fatal)

    def _sync_counters(self):
        for role, src in self.sources.items():
            self.stats.set_drop(f"source_gap_{role}", src.counters.gaps)
            self.stats.reconnects[role] = src.counters.reconnects

    def summary(self) -> dict:
        d = self.stats.summary()
        d["output_file"] = self.output_path
        d["output_files"] = list(self.sink.files) if self.sink is not None else []
        d["stop_reason"] = self.stop_reason
        d["errors"] = list(self.errors)
        d["warnings"] = (list(self.notes.values()) + [s.warning for s in self.sources.values() if s.warning]
                         + (list(self.sink.warnings) if self.sink is not None else []))
        d["ok"] = not self.errors
        return d
