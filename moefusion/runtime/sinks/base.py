"""The sink interface (``Sink``: one output size, frames of another size letterboxed into it),
``NullSink`` and ``MultiSink`` (several outputs at once)."""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from ..fit import letterbox_into, letterbox_rect
from ..yuv import I420Frame

log = logging.getLogger("moefusion.runtime")


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))

class Sink:
    kind = "none"

    def __init__(self):
        self.error = ""
        self.closed_by_user = False
        self.frames = 0
        self.size = None
        self.files: list[str] = []  # output files completed (renamed to their final names)
        self.warnings: list[str] = []  # said once each (also logged)
        self.boxed = 0  # frames letterboxed to the output's size
        self._box = None

    def describe(self) -> str:
        return self.kind

    def write(self, frame: np.ndarray, pts_ns: int) -> bool:
        """Returns False when the sink cannot take more (error, or the window was closed)."""
        self.frames += 1
        return True

    def close(self) -> str | None:
        return None

    def abort(self) -> None:
        """From another thread, at a shutdown that takes too long: a writer waiting on the output gives up."""

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        """Even width/height for 4:2:0 encoders; one size for the whole output, set by the first
        frame: a frame of another size is letterboxed into it (aspect kept, black bars), said once.
        The result may be a view with row padding (GStreamer sinks copy row by row)."""
        if self.size is None:
            h, w = frame.shape[:2]
            self.size = (w - w % 2, h - h % 2)
        w, h = self.size
        if frame.shape[1] != w or frame.shape[0] != h:
            if isinstance(frame, I420Frame):  # rare (a size change): through BGR
                return I420Frame.from_bgr(self._letterbox(frame.to_bgr()))
            if frame.shape[1] in (w, w + 1) and frame.shape[0] in (h, h + 1):
                frame = frame[:h, :w]
            else:
                frame = self._letterbox(frame)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return frame

    def _letterbox(self, frame: np.ndarray) -> np.ndarray:
        w, h = self.size
        fh, fw = frame.shape[:2]
        shape = (h, w) + frame.shape[2:]
        if self._box is None or self._box.shape != shape or self._box.dtype != frame.dtype:
            self._box = np.empty(shape, frame.dtype)
        self.boxed += 1
        if not self.warnings:
            x, y, bw, bh = letterbox_rect((fw, fh), (w, h))
            bars = "no bars" if (bw, bh) == (w, h) else (
                f"black bars left/right ({x}+{w - bw - x} px)" if bw < w else f"black bars top/bottom ({y}+{h - bh - y} px)")
            text = (f"output: a frame of {fw}x{fh} does not match the output size {w}x{h} (set by the first frame): "
                    f"it is scaled keeping its aspect ratio to {bw}x{bh} with {bars}, and so is every later frame of "
                    "another size")
            self.warnings.append(text)
            log.warning("%s", text)
        return letterbox_into(frame, self._box, 0)


class NullSink(Sink):
    kind = "none"

class MultiSink(Sink):
    """Several outputs at once (``--output`` given more than once; the demo's file + window)."""

    kind = "multi"

    def __init__(self, sinks: list[Sink]):
        super().__init__()
        self.sinks = sinks

    @property
    def fps(self):
        return self.sinks[0].fps if self.sinks and hasattr(self.sinks[0], "fps") else None

    @fps.setter
    def fps(self, value):
        for s in self.sinks:
            s.fps = value

    def describe(self):
        return " + ".join(s.describe() for s in self.sinks)

    def write(self, frame, pts_ns) -> bool:
        frame = self._fit(frame)  # one size for all outputs (a size change is said once, here)
        ok = True
        for s in self.sinks:
            if not s.write(frame, pts_ns):
                ok = False
                self.error = self.error or s.error
                self.closed_by_user = self.closed_by_user or s.closed_by_user
        self.frames += 1
        return ok

    def abort(self) -> None:
        for s in self.sinks:
            s.abort()

    def close(self):
        paths = [s.close() for s in self.sinks]
        for s in self.sinks:
            self.files.extend(s.files)
            if s.error and not self.error:
                self.error = s.error
        files = [p for p in paths if p]
        return files[0] if files else None
