"""The processing of one (IR, VIS) frame pair, from the frames as captured to the output picture:
registration, preprocessing (``process.Preprocessor``, the model's input fit), inference with the
stream mode's resets, and the output view (``postprocess``, ``compose``). One copy, used by
run_pipeline (its stages call ``prepare``, ``infer`` and ``render`` on their three threads) and by the
``moefusion`` GStreamer element (one after the other, in its streaming thread).

``start`` does what comes before the first pair: the model's input size for the first frames, the
stream mode (on where the backend can carry state), the warm-up, and the log line about both.
"""
from __future__ import annotations

import logging
import threading
import time

from .fit import plan_model_fit
from .process import BufferPool, Preprocessor, attention_to_frame, compose, postprocess

log = logging.getLogger("moefusion.runtime")


class FrameFusion:
    """``prepare(ir, vis) -> Prepared``, ``infer(prep, new_stream) -> (fused, attention)`` (2-D, at
    the model's size), ``render(fused, attention, prep) -> frame`` for ``view``.

    ``info``: a dict for the statistics (``model_fit``, ``stream_mode``, ``stream_mode_off``);
    ``on_note(key, text)``: a warning said once (IR of another size without a registration);
    ``off_flag``: how the user turned stream mode off, for the log (``--no-stream-mode``)."""

    def __init__(self, backend, *, registrar=None, view: str = "fused", model_fit: str = "letterbox",
                 pool: BufferPool | None = None, info: dict | None = None, on_note=None,
                 off_flag: str = "--no-stream-mode", fit_flag: str = "--model-fit"):
        self.backend = backend
        self.registrar = registrar
        self.view = view
        self.model_fit = model_fit
        self.pool = pool if pool is not None else BufferPool()
        self.info = info if info is not None else {}
        self.off_flag, self.fit_flag = off_flag, fit_flag
        self.pre = Preprocessor(pool=self.pool, fit_for=self.fit_for, on_note=on_note)
        self.resets = 0  # stream mode: times the state started afresh after the first frame
        self._fits: dict = {}
        self._fit_lock = threading.Lock()
        self._shape = None  # the model input of the last frame (stream mode: a new size is a new stream)

    # -- before the first pair ---------------------------------------------------------------
    def fit_for(self, h: int, w: int):
        """How frames of h x w reach the model (``fit.ModelFit``), planned once per size and logged."""
        fit = self._fits.get((h, w))
        if fit is not None:
            return fit
        with self._fit_lock:
            fit = self._fits.get((h, w))
            if fit is None:
                fit = plan_model_fit((h, w), getattr(self.backend, "size_range", None), self.model_fit)
                self._fits[(h, w)] = fit
                if not fit.native:
                    rng = self.backend.size_range
                    takes = (f"{rng[0][1]}x{rng[0][0]} only" if rng[0] == rng[1] else
                             f"{rng[0][1]}x{rng[0][0]} to {rng[1][1]}x{rng[1][0]}")
                    log.info("model input: %s takes %s; %s (%s %s)", self.backend.path or self.backend.name,
                             takes, fit.describe(), self.fit_flag, self.model_fit)
                    self.info.setdefault("model_fit", fit.describe())
        return fit

    def start_stream_mode(self, want: bool) -> bool:
        """Stream mode on (``want``) where the backend can carry state; logged in one line and
        recorded (``stream_mode``, and ``stream_mode_off`` saying why not)."""
        on = self.backend.set_stream_mode(want)
        if on:
            why = ""
            log.info("stream mode: on (temporal state carried from frame to frame; %s turns it off)", self.off_flag)
        elif not want:
            why = self.off_flag
            log.info("stream mode: off (%s): every frame is fused alone", why)
        else:
            why = f"{self.backend.name} backend: {self.backend.stream_unavailable}"
            log.info("stream mode: off (%s): every frame is fused alone", why)
        self.info["stream_mode"] = on
        if why:
            self.info["stream_mode_off"] = why
        return on

    def start(self, ir0, vis0, *, stream_mode: bool, backend_reason: str = "") -> tuple[int, int, int, int]:
        """Before the first pair (``ir0``, ``vis0``: the first frames as captured): plan the model
        input, start the stream mode, warm the backend up. Returns (w, h, model w, model h)."""
        if self.registrar is not None:
            ir0, vis0 = self.registrar.apply(ir0, vis0)
        h, w = vis0.shape[:2]
        mh, mw = self.fit_for(h, w).model
        stream = self.start_stream_mode(stream_mode)
        t0 = time.perf_counter()
        warm = self.backend.warmup(mh, mw, iters=2)  # in stream mode: the stream step (CUDA graphs)
        if stream:
            self.backend.reset_stream()  # the warm-up's random frames are no part of the video
        log.info("backend: %s (%s); warm-up %.0f ms, then %.1f ms per frame at %dx%d", self.backend.describe(),
                 backend_reason or self.backend.name, (time.perf_counter() - t0) * 1000, warm, mw, mh)
        return w, h, mw, mh

    # -- per pair --------------------------------------------------------------------------
    def prepare(self, ir, vis):
        """Registration (IR warped into VIS, both cropped) and the network inputs (``Prepared``)."""
        if self.registrar is not None:
            ir, vis = self.registrar.apply(ir, vis)
        return self.pre(ir, vis)

    def infer(self, prep, new_stream: str = ""):
        """The model on a prepared pair: (fused [h, w], attention [h, w] or None) at the model's
        size. In stream mode the state starts afresh before this frame when ``new_stream`` says why
        (a source reconnected, a loop, a seek) or the model's input size changed."""
        backend = self.backend
        if backend.stream_mode and (new_stream or prep.model_ir.shape != self._shape):
            if self._shape is not None:  # not the first frame (the stream was reset after warm-up)
                self.new_stream(new_stream or "the model's input size changed")
            self._shape = prep.model_ir.shape
        fused, att = backend.infer(prep.model_ir, prep.model_vis)
        return fused[0, 0], (att[0, 0] if att is not None else None)

    def new_stream(self, why: str) -> None:
        """Stream mode: forget the temporal state before the next frame (in frame order)."""
        self.backend.reset_stream()
        self.resets += 1
        log.info("stream mode: the state starts afresh (%s)", why)

    def render(self, fused, attention, prep):
        """The output picture for ``view``: the fused frame in the visible frame's format (an
        ``I420Frame`` on the fast path, else BGR), or the side-by-side / grid views (BGR)."""
        out = postprocess(fused, prep, in_place=self.view == "fused")
        att = attention_to_frame(attention, prep) if self.view == "grid" else None
        return compose(self.view, out, prep, att)
