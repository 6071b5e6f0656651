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

from ..errors import UserError
from .backends import Backend
from .capture import ROLE_NAMES, SourceError, SourceThread, Status, make_capture
from .fit import FIT_MODES
from .fusion import FrameFusion
from .precheck import Checked, precheck
from .process import BufferPool
from .queues import BoundedQueue, Inbox
from .sinks import Sink
from .stages import Item, Stages  # noqa: F401 - Item is part of this module's API
from .stats import Stats
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
    stream_mode: bool = True  # carry the model's temporal state from frame to frame, where the backend can
    shutdown_timeout: float = 30.0  # s from a stop to the end of the run, draining and finalising included
    hurry_timeout: float = 5.0  # the same after a second SIGINT/SIGTERM (queued frames are dropped)


class Pipeline(Stages):
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
        self.fusion: FrameFusion | None = None  # the processing of a pair (fusion.py), made by run()
        self._registrar = None
        self._image_pairing = None
        self._prechecked = False
        self._hurry = threading.Event()
        self._stop_at = None
        self._left, self._left_lock = 0, threading.Lock()  # see _unprocessed
        if checked is not None:
            self._use_checks(checked)

    # -- control ---------------------------------------------------------------------------
    def stop(self, reason: str = "stop requested") -> None:
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self._stop_at = time.monotonic()
            log.info("stopping: %s", "after the error above" if reason.startswith("error: ") else reason)
        self.stop_event.set()

    def hurry(self, reason: str) -> None:
        """A second SIGINT/SIGTERM: what is still queued is dropped (``unprocessed_at_stop``) and the
        output finalised at once, within ``cfg.hurry_timeout``; what was written is kept."""
        if not self._hurry.is_set():
            log.warning("%s again: dropping what is queued and finalising the output now", reason)
        self._hurry.set()
        self.stop(reason)

    def _fail(self, msg: str) -> None:
        """An error on any thread: the first one is the run's error (the one line at exit), the
        others are logged; the run stops."""
        if msg not in self.errors:
            self.errors.append(msg)
            if len(self.errors) == 1:
                log.error("%s", msg)
            else:
                log.info("after the first error: %s", msg)
        self.stop(f"error: {msg}")

    @property
    def stream_resets(self) -> int:
        """Stream mode: times the state started afresh after the first frame."""
        return self.fusion.resets if self.fusion is not None else 0

    def _unprocessed(self, n: int = 1) -> None:
        """Frames still queued when the run stopped: counted here and published once, when every
        stage has stopped (``_supervise``), so the status lines and the summary give one figure."""
        with self._left_lock:
            self._left += n

    def _note(self, key: str, text: str) -> None:
        """A warning said once (log and the statistics' ``warnings``)."""
        if key not in self.notes:
            self.notes[key] = text
            log.warning("%s", text)

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
                                    files=files.get(role), rate=rate, pool=self.pool, yuv=role == "vis",
                                    media_clock=self.paced and not any_live)
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
            if cfg.model_fit not in FIT_MODES:
                raise UserError(f"--model-fit {cfg.model_fit}: use one of {', '.join(FIT_MODES)}")
            self.fusion = FrameFusion(self.backend, registrar=registrar, view=cfg.view, model_fit=cfg.model_fit,
                                      pool=self.pool, info=stats.info, on_note=self._note)
            w, h, mw, mh = self.fusion.start(first["ir"].image, first["vis"].image, stream_mode=cfg.stream_mode,
                                             backend_reason=self.backend_reason)
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
            if cap.live and not cap.ends:  # the peeked frame is stale after warm-up (a finite stream keeps it)
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
            threading.Thread(target=self._guard(lambda: self._sync_loop(inbox, infer_q, any_live), "sync"),
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

    def _supervise(self):
        """Wait for the stages, print status lines, and bound the shutdown: once the run is
        stopping, the stages get ``cfg.shutdown_timeout`` seconds (``cfg.hurry_timeout`` after a
        second signal) to drain and finalise the output; then the sink is aborted (a writer waiting
        on the output gives up, finished files and segments stay) and the run ends anyway."""
        cfg, stats = self.cfg, self.stats
        out_thread = self._threads[-1]
        next_line = time.monotonic() + cfg.stats_interval
        aborted = False
        while out_thread.is_alive():
            out_thread.join(0.1)
            for src in self.sources.values():
                if src.fatal and src.live and not src.finite:
                    self._fail(src.fatal)
            if self._stop_at is not None:
                limit = cfg.hurry_timeout if self._hurry.is_set() else cfg.shutdown_timeout
                waited = time.monotonic() - self._stop_at
                if waited > limit and not aborted:
                    log.warning("the stages did not stop within %g s; aborting the output", limit)
                    self.sink.abort()
                    aborted = True
                if waited > limit + 5.0:
                    self._fail(f"shutdown did not finish within {limit:g} s (output {self._output_names()}); "
                               "finished files are kept")
                    break
            if cfg.stats_interval > 0 and time.monotonic() >= next_line:
                next_line += cfg.stats_interval
                self._sync_counters()
                log.info("%s", stats.line())
        self.stop_event.set()
        deadline = time.monotonic() + 5.0
        for t in list(self.sources.values()) + self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._count_leftovers()  # frames delivered after the sync thread finished
        self._sync_counters()
        stats.set_drop("unprocessed_at_stop", self._left)  # once, every stage has stopped
        if cfg.stats_interval > 0:
            log.info("%s", stats.line())  # the last status line: the figures of the summary
        for src in self.sources.values():
            if src.fatal and src.fatal not in self.errors:
                self.errors.append(src.fatal)

    def _output_names(self) -> str:
        return ", ".join(o.raw for o in self.cfg.outputs)

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
        d["stream_resets"] = self.stream_resets
        d["ok"] = not self.errors
        return d
