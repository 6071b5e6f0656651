"""The work of the ``moefusion`` GStreamer element, apart from GStreamer's object model (the element
itself, a GstAggregator, is ``gstplugin/python/gstmoefusion.py``, loaded by gst-python's plugin
loader): its settings checked with a message naming the property and the fix (``Settings``), the
model and registration opened (``ElementFusion``), each sink pad's caps turned into how its frames
are read (``input_format``), frames paired by running time (``sync.Pairer``, as run_pipeline pairs
them), each pair fused by ``fusion.FrameFusion`` (run_pipeline's processing: registration,
preprocessing, the model, stream mode, the view) and the output picture put in the negotiated
format (``to_output``).

Everything here is plain Python and numpy; the buffers' mapped memory comes in as ``data``.
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from ..data.registration import load_registration
from ..errors import UserError
from .argtypes import MAX_OFFSET_MS, MAX_TOLERANCE_MS
from .backends import BACKEND_ALIASES, BACKENDS, backend_name, select_backend
from .fit import FIT_MODES
from .fusion import FrameFusion
from .process import VIEWS
from .rawframes import (  # noqa: F401 - Layout and write_frame: for the element (gstplugin/python)
    FORMATS,
    FULL_TO_LIMITED_C,
    FULL_TO_LIMITED_Y,
    LIMITED_TO_FULL,
    YUV_FORMATS,
    Layout,
    read_frame,
    write_frame,
)
from .registration import Registrar
from .sync import Pairer
from .yuv import COLORIMETRY, I420Frame

log = logging.getLogger("moefusion.runtime")

ELEMENT = "moefusion"
# the folder to put on GST_PLUGIN_PATH: it holds python/gstmoefusion.py, the element
PLUGIN_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gstplugin")
ROLES = ("ir", "vis")
INPUT_FORMATS = ("GRAY8", "GRAY16_LE", "I420", "NV12", "BGR", "BGRx")
OUTPUT_FORMATS = ("I420", "BGR")
DEVICES = ("auto", "cpu", "cuda")
assert set(INPUT_FORMATS) <= set(FORMATS)


def property_message(text: str) -> str:
    """A runtime message written for run_pipeline's flags, in the element's property syntax:
    ``--model X`` -> ``model=X``, ``--backend average`` -> ``backend=average``."""
    text = re.sub(r"--no-stream-mode\b", "stream-mode=false", text)
    flags = r"--(model-fit|model|backend|device|registration)\b"
    value = r"(?=\S*[/.]|[A-Z]+\b|(?:auto|torch|onnxruntime|tensorrt|average|cpu|cuda|letterbox|stretch)\b)"
    text = re.sub(flags + " " + value, r"\1=", text)  # --model X.engine -> model=X.engine
    return re.sub(flags, r"\1", text)  # no --registration is given -> no registration is given


@dataclass
class Settings:
    """The element's properties (read when it starts: READY -> PAUSED)."""

    model: str | None = None
    backend: str = "auto"
    device: str = "auto"
    registration: str | None = None
    stream_mode: bool = True
    view: str = "fused"
    model_fit: str = "letterbox"
    sync_tolerance_ms: float = 25.0
    sync_offset_ms: float = 0.0

    def check(self) -> None:
        """UserError naming the property, the value and what it takes."""
        def one_of(prop, value, choices, extra=""):
            if value not in choices:
                raise UserError(f"{ELEMENT}: {prop}={value!r} is not valid; use one of {', '.join(choices)}{extra}")

        if backend_name(self.backend) not in BACKENDS:
            aliases = ", ".join(f"{a} for {n}" for a, n in BACKEND_ALIASES.items())
            raise UserError(f"{ELEMENT}: backend={self.backend!r} is not valid; use one of {', '.join(BACKENDS)} "
                            f"(aliases: {aliases})")
        one_of("view", self.view, VIEWS)
        one_of("model-fit", self.model_fit, FIT_MODES)
        one_of("device", self.device, DEVICES)
        for prop, path, what in (("model", self.model, "a checkpoint (.pt), an .onnx or an .engine; unset: the "
                                  "bundled weights"),
                                 ("registration", self.registration, "a file from moefusion-calibrate register")):
            if path is not None and not os.path.isfile(os.path.expanduser(path)):
                raise UserError(f"{ELEMENT}: {prop}={path}: no such file (give {what})")
        tol = self.sync_tolerance_ms
        if not (math.isfinite(tol) and 0 < tol <= MAX_TOLERANCE_MS):
            raise UserError(f"{ELEMENT}: sync-tolerance={tol:g} is out of range: milliseconds, "
                            f"0 < MS <= {MAX_TOLERANCE_MS:g}")
        off = self.sync_offset_ms
        if not (math.isfinite(off) and abs(off) <= MAX_OFFSET_MS):
            raise UserError(f"{ELEMENT}: sync-offset={off:g} is out of range: milliseconds, at most "
                            f"{MAX_OFFSET_MS:g} either way")


@dataclass(frozen=True)
class InputFormat:
    """How one sink pad's buffers are read (``rawframes.read_frame``)."""

    layout: Layout
    gray: bool  # the IR pad: a gray frame (the Y plane of YUV, BGR converted)
    lut: object = None  # 8-bit luma on the way in
    chroma_lut: object = None
    fps: float | None = None
    colorimetry: str | None = None  # of a limited-range YUV stream, kept on the I420 output

    @property
    def size(self) -> tuple[int, int]:
        return self.layout.width, self.layout.height


def input_format(role: str, layout: Layout, *, limited: bool | None, fps: float | None = None,
                 colorimetry: str | None = None) -> InputFormat:
    """``role``'s frames in ``layout``; ``limited``: YUV caps in limited range (16..235), as decoders
    and YUV cameras give; False: full range (a decoded MJPG camera). UserError for a format the
    element cannot fuse.

    IR: gray; limited-range luma expanded to full range, as run_pipeline's capture does (the
    network reads IR as full range). VIS: YUV stays YUV (the I420 fast path, ``yuv.py``), made
    limited range if it is not; BGR, BGRx and gray as they are."""
    fmt = layout.format
    if fmt not in INPUT_FORMATS:
        raise UserError(f"{ELEMENT}: the {role} pad cannot take {fmt} frames; it takes {', '.join(INPUT_FORMATS)}: "
                        f"put videoconvert before it")
    if layout.width < 2 or layout.height < 2:
        raise UserError(f"{ELEMENT}: the {role} pad got {layout.width}x{layout.height} frames; at least 2x2 are needed")
    yuv = fmt in YUV_FORMATS
    if role == "ir":
        return InputFormat(layout, True, LIMITED_TO_FULL if yuv and limited else None, fps=fps)
    if yuv and limited is False:
        return InputFormat(layout, False, FULL_TO_LIMITED_Y, FULL_TO_LIMITED_C, fps=fps)
    return InputFormat(layout, False, fps=fps, colorimetry=colorimetry if yuv else None)


@dataclass
class Pending:
    """A buffer waiting on its sink pad for a partner (what ``sync.Pairer`` pairs)."""

    buffer: object  # a Gst.Buffer: mapped only once it is paired
    fmt: InputFormat
    ts_ns: int  # running time
    duration_ns: int
    arrival_ns: int = 0


@dataclass
class Output:
    """A fused picture on its way to the src pad."""

    frame: object  # BGR (h, w, 3) uint8 or yuv.I420Frame, in ``format``
    format: str
    pts_ns: int
    duration_ns: int
    colorimetry: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.frame.shape[1], self.frame.shape[0]


def choose_output_format(frame, allowed) -> str:
    """I420 for an I420 picture and BGR for a BGR one (no conversion), unless downstream takes only
    the other (``allowed``: the formats it accepts, in its order of preference)."""
    natural = "I420" if isinstance(frame, I420Frame) else "BGR"
    allowed = [f for f in allowed if f in OUTPUT_FORMATS] or list(OUTPUT_FORMATS)
    return natural if natural in allowed else allowed[0]


def to_output(frame, fmt: str):
    """The picture in ``fmt`` (I420 frames have even sizes: a BGR picture of an odd size loses its
    last row/column)."""
    if fmt == "I420":
        if isinstance(frame, I420Frame):
            return frame
        if frame.ndim == 2:
            frame = frame[:, :, None].repeat(3, axis=2)
        return I420Frame.from_bgr(frame)
    if isinstance(frame, I420Frame):
        return frame.to_bgr()
    return frame if frame.ndim == 3 else np.repeat(frame[:, :, None], 3, axis=2)


def output_caps(out: Output, fps: float | None) -> str:
    """The src pad's caps for ``out``."""
    w, h = out.size
    rate = _fraction(fps) if fps else "0/1"
    caps = f"video/x-raw,format={out.format},width={w},height={h},framerate={rate},pixel-aspect-ratio=1/1"
    if out.format == "I420":
        caps += f",colorimetry={out.colorimetry or COLORIMETRY}"
    return caps


def _fraction(fps: float) -> str:
    for den in (1, 1001, 1000):
        num = fps * den
        if abs(num - round(num)) < 1e-3 * den:
            return f"{int(round(num))}/{den}"
    return f"{int(round(fps * 1000))}/1000"


@dataclass
class Counters:
    pairs: int = 0
    frames_out: int = 0
    drops: dict = field(default_factory=dict)

    def drop(self, cause: str, n: int = 1) -> None:
        self.drops[cause] = self.drops.get(cause, 0) + n


class ElementFusion:
    """The element between start and stop: the backend and the registration opened from ``settings``
    (UserError, in property syntax, when they cannot be), then ``push(role, pending)`` and
    ``pairs()`` / ``fuse(pair)``. ``on_note(text)``: a warning said once."""

    def __init__(self, settings: Settings, *, on_note=None):
        settings.check()
        self.settings = settings
        self.notes: dict[str, str] = {}
        self._on_note = on_note
        self.info: dict = {}
        self.counters = Counters()
        try:
            registrar = None
            if settings.registration:
                path = os.path.expanduser(settings.registration)
                registrar = Registrar(load_registration(path, "registration="), path)
            backend, reason = select_backend(backend_name(settings.backend), settings.model, device=settings.device)
        except UserError as e:
            raise UserError(property_message(str(e)).replace("= ", "=")) from None
        self.backend, self.reason = backend, reason
        log.info("backend choice: %s", property_message(reason))
        self.fusion = FrameFusion(backend, registrar=registrar, view=settings.view, model_fit=settings.model_fit,
                                  info=self.info, on_note=self._note, off_flag="stream-mode=false",
                                  fit_flag="model-fit")
        self.pairer: Pairer | None = None
        self.started = False
        self._last_sizes = None
        self._restart = ""

    def _note(self, key: str, text: str) -> None:
        if key not in self.notes:
            text = property_message(text)
            self.notes[key] = text
            log.warning("%s", text)
            if self._on_note is not None:
                self._on_note(text)

    # -- pairing -------------------------------------------------------------------------------
    def begin(self, live: bool) -> None:
        """Before the first buffer: pairing as run_pipeline pairs files (``live`` False: every frame
        waits for its partner's decision, exact and reproducible) or cameras (waits bounded)."""
        s = self.settings
        self.pairer = Pairer(int(s.sync_tolerance_ms * 1e6), finite=not live, offset_ns=int(s.sync_offset_ms * 1e6))

    def push(self, role: str, pending: Pending) -> None:
        pending.arrival_ns = time.monotonic_ns()
        for cause, _ in self.pairer.push(role, pending):
            self.counters.drop(cause)

    def end(self, role: str) -> None:
        self.pairer.end(role)

    def pairs(self) -> list:
        """The pairs that can be decided now (``sync.Pair``), drops counted."""
        out = []
        for ev in self.pairer.poll(time.monotonic_ns()):
            if ev[0] == "drop":
                self.counters.drop(ev[1])
            else:
                out.append(ev[1])
        self.counters.pairs += len(out)
        return out

    def finished(self) -> bool:
        """A stream ended and every frame it gave is decided: nothing more can be paired (the run
        ends at the end of the first stream to end, as run_pipeline's does)."""
        p = self.pairer
        return any(p.ended[r] and p.pending(r) == 0 for r in ROLES)

    def restart(self, why: str) -> None:
        """The next pair starts a new stream (a seek or flush): stream mode forgets its state."""
        self._restart = why

    # -- one pair ----------------------------------------------------------------------------
    def fuse(self, ir_data, ir_fmt: InputFormat, vis_data, vis_fmt: InputFormat, allowed, write, *,
             pts_ns: int, duration_ns: int):
        """The pair in mapped buffers -> the output picture (as run_pipeline makes it) in one of
        ``allowed`` (downstream's formats), handed to ``write(Output)`` while its arrays are still
        this frame's; returns what ``write`` returns."""
        fusion, pool = self.fusion, self.fusion.pool
        ir, ir_own = read_frame(ir_data, ir_fmt.layout, gray=True, pool=pool, lut=ir_fmt.lut)
        vis, vis_own = read_frame(vis_data, vis_fmt.layout, pool=pool, lut=vis_fmt.lut, chroma_lut=vis_fmt.chroma_lut)
        prep = None
        try:
            if not self.started:
                fusion.start(ir, vis, stream_mode=self.settings.stream_mode,
                             backend_reason=property_message(self.reason))
                self.started = True
            sizes = (ir.shape[:2], vis.shape[:2])
            new_stream, self._restart = self._restart, ""
            if self._last_sizes is not None and sizes != self._last_sizes:
                new_stream = new_stream or "a source's frame size changed"
            self._last_sizes = sizes
            prep = fusion.prepare(ir, vis)
            fused, att = fusion.infer(prep, new_stream)
            frame = fusion.render(fused, att, prep)
            fmt = choose_output_format(frame, allowed)
            colorimetry = vis_fmt.colorimetry if isinstance(frame, I420Frame) and fmt == "I420" else None
            result = write(Output(to_output(frame, fmt), fmt, pts_ns, duration_ns, colorimetry))
            self.counters.frames_out += 1
            return result
        finally:
            if prep is not None:
                prep.release()
            pool.put(ir_own, vis_own)

    def summary(self) -> str:
        c = self.counters
        drops = ", ".join(f"{k} {v}" for k, v in sorted(c.drops.items()) if v) or "none"
        mode = "on" if self.info.get("stream_mode") else f"off ({self.info.get('stream_mode_off', 'not started')})"
        return (f"{c.pairs} pairs, {c.frames_out} frames out; drops: {drops}; stream mode {mode}, "
                f"state reset {self.fusion.resets} times; backend {self.backend.describe()}")

    def close(self) -> None:
        self.backend.close()

