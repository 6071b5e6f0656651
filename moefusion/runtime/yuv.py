"""Visible frames as 4:2:0 YUV (I420), end to end: the fast path for colour cameras.

The network needs the visible luminance only, and the fused picture keeps the visible chroma. So a
colour frame is taken from GStreamer as I420 (BT.601, limited range: ``colorimetry=bt601``, the
caps every camera pipeline can deliver), its Y plane goes to the model, the fused Y is written
back into the same frame, and the frame goes to the encoder or window as I420 again: no BGR <->
YCrCb conversion in Python, and none before the encoder either (the encoders take I420).

``I420Frame`` holds the planes the way OpenCV lays out ``COLOR_YUV2BGR_I420`` data: one uint8
array of ``(h * 3 // 2, w)``, the Y rows, then U, then V, each tightly packed; width and height
are even. OpenCV's I420 conversions use the same BT.601 limited-range matrix, so ``to_bgr`` and
``from_bgr`` agree with GStreamer's ``videoconvert`` for these caps (to rounding).

Luminance in the model's [0, 1] scale is full range (as OpenCV's YCrCb, which the model was
trained with): Y 16..235 maps to 0..1 (``Y_TO_UNIT``) and back (``unit_to_y``).
"""
from __future__ import annotations

import cv2
import numpy as np

COLORIMETRY = "bt601"  # in caps: BT.601 matrix, limited range (Y 16..235, chroma 16..240)
Y_TO_UNIT = np.clip((np.arange(256, dtype=np.float32) - 16.0) / 219.0, 0.0, 1.0).reshape(1, 256)


class I420Frame:
    """An I420 picture in one ``(h * 3 // 2, w)`` uint8 array (see the module docstring)."""

    __slots__ = ("data", "width", "height")
    ndim = 3  # reads as an (h, w, 3) colour frame to code that only asks for the size
    dtype = np.dtype(np.uint8)

    def __init__(self, data: np.ndarray, width: int, height: int):
        if width % 2 or height % 2 or data.shape != (height * 3 // 2, width):
            raise ValueError(f"I420 needs even sizes and a ({height * 3 // 2}, {width}) array, got {data.shape}")
        self.data, self.width, self.height = data, width, height

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, 3

    @property
    def y(self) -> np.ndarray:
        return self.data[: self.height]

    @property
    def u(self) -> np.ndarray:
        h, w = self.height, self.width
        n = (h // 2) * (w // 2)  # the planes are packed: U need not start or end on a row of ``data``
        return self.data.reshape(-1)[h * w: h * w + n].reshape(h // 2, w // 2)

    @property
    def v(self) -> np.ndarray:
        h, w = self.height, self.width
        n = (h // 2) * (w // 2)
        return self.data.reshape(-1)[h * w + n:].reshape(h // 2, w // 2)

    def to_bgr(self, out: np.ndarray | None = None) -> np.ndarray:
        return cv2.cvtColor(self.data, cv2.COLOR_YUV2BGR_I420, dst=out)

    @classmethod
    def from_bgr(cls, bgr: np.ndarray) -> "I420Frame":
        h, w = bgr.shape[:2]
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        bgr = bgr[: h - h % 2, : w - w % 2]
        return cls(cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2YUV_I420), bgr.shape[1], bgr.shape[0])

    def copy(self) -> "I420Frame":
        return I420Frame(self.data.copy(), self.width, self.height)

    def crop(self, x: int, y: int, w: int, h: int, out: np.ndarray | None = None) -> "I420Frame":
        """The rectangle (even x, y, w, h: see ``even_rect``) as a new frame (a copy)."""
        if (x | y | w | h) & 1:
            raise ValueError(f"an I420 crop needs even x, y, width and height, got {(x, y, w, h)}")
        data = out if out is not None else np.empty((h * 3 // 2, w), np.uint8)
        f = I420Frame(data, w, h)
        np.copyto(f.y, self.y[y:y + h, x:x + w])
        np.copyto(f.u, self.u[y // 2:(y + h) // 2, x // 2:(x + w) // 2])
        np.copyto(f.v, self.v[y // 2:(y + h) // 2, x // 2:(x + w) // 2])
        return f


def even_rect(x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
    """The largest rectangle with even corners and sizes inside (x, y, w, h) (4:2:0 chroma is
    shared by 2x2 pixels; a crop must not split those)."""
    x2, y2 = x + (x & 1), y + (y & 1)
    return x2, y2, max(2, (w - (x2 - x)) & ~1), max(2, (h - (y2 - y)) & ~1)


def y_to_unit(y8: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Limited-range luma (uint8) -> full-range [0, 1] float32, one table lookup per pixel."""
    return cv2.LUT(y8, Y_TO_UNIT, dst=out)


def unit_to_y(fused: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Full-range [0, 1] float32 -> limited-range luma (uint8, 16..235), clipped."""
    cv2.threshold(fused, 0.0, 0.0, cv2.THRESH_TOZERO, dst=scratch)  # < 0 -> 0
    cv2.convertScaleAbs(scratch, dst=out, alpha=219.0, beta=16.0)  # rounds; saturates at 255
    return cv2.min(out, 235, dst=out)
