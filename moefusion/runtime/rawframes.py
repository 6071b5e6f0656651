"""Raw video frames in and out of GStreamer buffers: one copy each way, laid out as the caps say
(``Layout``: format, size, each plane's offset and stride). Used by the appsink capture
(``capture/gstreamer.py``), the appsrc outputs (``sinks/gstreamer.py``) and the ``moefusion``
GStreamer element (``element.py``).

What a frame becomes (``read_frame``): GRAY8 and GRAY16_LE a 2-D uint8 / uint16 array, BGR a
(h, w, 3) array, BGRx its first three bytes; I420 and NV12 a ``yuv.I420Frame`` (odd sizes lose their
last row/column), or with ``gray=True`` (the IR stream) their Y plane. ``lut`` maps 8-bit luma (or
gray) on the way (``LIMITED_TO_FULL`` for limited-range luma that the network reads as full range);
``chroma_lut`` the 4:2:0 chroma planes (``FULL_TO_LIMITED_*``: a full-range YUV stream such as a
decoded MJPG camera made limited range like the rest of the I420 fast path, see ``yuv.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .yuv import I420Frame

# 8-bit luma 16..235 (limited range) -> 0..255; videoconvert copies Y into GRAY8 without expanding it
LIMITED_TO_FULL = np.clip(np.rint((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)
# full range -> limited range (BT.601 scaling): luma 0..255 -> 16..235, chroma 0..255 -> 16..240 around 128
FULL_TO_LIMITED_Y = np.rint(16.0 + np.arange(256) * 219.0 / 255.0).astype(np.uint8)
FULL_TO_LIMITED_C = np.clip(np.rint(128.0 + (np.arange(256) - 128.0) * 224.0 / 255.0), 16, 240).astype(np.uint8)

# format -> (dtype, channels in the buffer); I420 and NV12 are planar 4:2:0
FORMATS = {"GRAY8": (np.uint8, 1), "GRAY16_LE": (np.uint16, 1), "BGR": (np.uint8, 3), "BGRx": (np.uint8, 4),
           "I420": (np.uint8, 0), "NV12": (np.uint8, 0)}
YUV_FORMATS = ("I420", "NV12")


@dataclass(frozen=True)
class Layout:
    """How a frame lies in a buffer: GStreamer's format name, the size, (offset, stride) per plane."""

    format: str
    width: int
    height: int
    planes: tuple
    size: int

    @classmethod
    def from_info(cls, info) -> "Layout":
        """From a ``GstVideo.VideoInfo`` (the caps of the buffers)."""
        from gi.repository import GstVideo  # optional (PyGObject): only where GStreamer runs

        fmt = GstVideo.VideoFormat.to_string(info.finfo.format)
        planes = tuple((info.offset[p], info.stride[p]) for p in range(info.finfo.n_planes))
        return cls(fmt, info.width, info.height, planes, info.size)

    @property
    def even(self) -> tuple[int, int]:
        """The size a 4:2:0 frame is kept at (even width and height)."""
        return self.width & ~1, self.height & ~1


def _plane(data, layout: Layout, p: int, shape, dtype=np.uint8, pixel: int = 1) -> np.ndarray:
    off, stride = layout.planes[p]
    itemsize = np.dtype(dtype).itemsize
    if len(shape) == 2:
        return np.ndarray(shape, dtype, buffer=data, offset=off, strides=(stride, itemsize * pixel))
    return np.ndarray(shape, dtype, buffer=data, offset=off, strides=(stride, itemsize * pixel, itemsize))


def _copy(dst: np.ndarray, src: np.ndarray, lut) -> None:
    if lut is not None:
        cv2.LUT(src, lut, dst=dst)
    else:
        np.copyto(dst, src)


def _get(pool, shape, dtype=np.uint8) -> np.ndarray:
    return pool.get(shape, dtype) if pool is not None else np.empty(shape, dtype)


def read_frame(data, layout: Layout, *, gray: bool = False, pool=None, lut=None, chroma_lut=None):
    """The frame in ``data`` (a mapped buffer) as the runtime's arrays (see the module docstring).
    Returns ``(image, own)``: ``own`` is the array behind the image, from ``pool`` when given (to be
    put back once the frame is done with)."""
    fmt, w, h = layout.format, layout.width, layout.height
    if fmt not in FORMATS:
        raise ValueError(f"unsupported raw video format {fmt}")
    dtype, ch = FORMATS[fmt]
    if ch == 0:  # planar 4:2:0
        we, he = layout.even
        y = _plane(data, layout, 0, (he, we))
        if gray:
            own = _get(pool, (he, we))
            _copy(own, y, lut)
            return own, own
        own = _get(pool, (he * 3 // 2, we))
        img = I420Frame(own, we, he)
        _copy(img.y, y, lut)
        if fmt == "I420":
            u, v = _plane(data, layout, 1, (he // 2, we // 2)), _plane(data, layout, 2, (he // 2, we // 2))
        else:  # NV12: one interleaved UV plane
            uv = _plane(data, layout, 1, (he // 2, we // 2, 2), pixel=2)
            u, v = uv[:, :, 0], uv[:, :, 1]
        _copy(img.u, u, chroma_lut)
        _copy(img.v, v, chroma_lut)
        return img, own
    if ch == 4:  # BGRx: the first three bytes of each pixel
        src = _plane(data, layout, 0, (h, w, 4), pixel=4)
        if gray:
            own = _get(pool, (h, w))
            cv2.cvtColor(src, cv2.COLOR_BGRA2GRAY, dst=own)
            return own, own
        own = _get(pool, (h, w * 3))
        img = own.reshape(h, w, 3)
        np.copyto(img, src[:, :, :3])
        return img, own
    row = w * ch * np.dtype(dtype).itemsize
    stride = layout.planes[0][1]
    raw = np.frombuffer(data, np.uint8, count=stride * (h - 1) + row, offset=layout.planes[0][0])
    raw = np.lib.stride_tricks.as_strided(raw, (h, row), (stride, 1))
    if gray and ch == 3:
        own = _get(pool, (h, w))
        cv2.cvtColor(raw.reshape(h, w, 3), cv2.COLOR_BGR2GRAY, dst=own)
        return own, own
    # a copy (the mapping ends after this), into a reused array when there is a pool
    own = _get(pool, (h, row))
    _copy(own, raw, lut if dtype == np.uint8 else None)
    img = own.view(dtype)
    return (img.reshape(h, w, ch) if ch > 1 else img.reshape(h, w)), own


def write_frame(frame, data, planes) -> None:
    """A BGR (h, w, 3) array or an ``I420Frame`` into ``data`` (a mapped buffer) at the planes'
    (offset, stride): one copy, rows padded to GStreamer's strides."""
    if isinstance(frame, I420Frame):
        for (off, st), src in zip(planes, (frame.y, frame.u, frame.v)):
            np.copyto(np.ndarray(src.shape, np.uint8, buffer=data, offset=off, strides=(st, 1)), src)
    else:
        h, w = frame.shape[:2]
        off, st = planes[0]
        np.copyto(np.ndarray((h, w, 3), np.uint8, buffer=data, offset=off, strides=(st, 3, 1)), frame)
