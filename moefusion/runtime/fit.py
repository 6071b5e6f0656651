"""Frame geometry: a frame into a model's fixed input size and back, and a picture of one size into
a frame of another without distorting it. Pure planning functions plus two small copy helpers.

Fixed-size models (an .onnx exported without ``--dynamic``, an engine with a fixed or bounded
profile) take frames as DeepStream's nvinfer and jetson-utils do: the frame is scaled to the
model's input and the model's output scaled back to the frame. Two ways (``--model-fit``):

- ``letterbox`` (default, nvinfer's ``maintain-aspect-ratio=1 symmetric-padding=1``): scaled
  keeping its aspect ratio, centred, the rest of the input padded by repeating the edge pixels
  (a neutral border for a fusion network: no artificial edge for it to react to); the output is
  cropped to the picture and scaled back.
- ``stretch`` (nvinfer's default, jetson-utils): scaled to fill the input, aspect changed.

Models with dynamic sizes run at the frame's native size (``native``). An engine whose profile
has a range of sizes takes a frame outside it shrunk (aspect kept) to fit its maximum and padded
up to its minimum (``letterbox``), or clamped to the range (``stretch``).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FIT_MODES = ("letterbox", "stretch")


def letterbox_rect(src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a ``src_wh`` picture goes in a ``dst_wh`` frame, scaled keeping its aspect ratio and
    centred: ``(x, y, w, h)``; one of ``w == dst w`` or ``h == dst h``."""
    sw, sh = src_wh
    dw, dh = dst_wh
    s = min(dw / sw, dh / sh)
    w = min(dw, max(1, int(round(sw * s))))
    h = min(dh, max(1, int(round(sh * s))))
    return (dw - w) // 2, (dh - h) // 2, w, h


@dataclass(frozen=True)
class ModelFit:
    """How frames of size ``frame`` (h, w) reach a model: its input size ``model`` (h, w), and the
    rectangle ``inner`` (x, y, w, h) of the input that holds the picture."""

    frame: tuple[int, int]
    model: tuple[int, int]
    inner: tuple[int, int, int, int]
    mode: str  # native | letterbox | stretch

    @property
    def native(self) -> bool:
        return self.mode == "native"

    def describe(self) -> str:
        fh, fw = self.frame
        mh, mw = self.model
        if self.native:
            return f"frames go to the model at their native size {fw}x{fh}"
        x, y, w, h = self.inner
        if self.mode == "stretch":
            return (f"frames {fw}x{fh} are stretched to the model input {mw}x{mh} (aspect changed by "
                    f"{(mw / fw) / (mh / fh):.2f}) and the output scaled back to {fw}x{fh}")
        bands = []
        if w < mw:
            bands.append(f"{x}+{mw - w - x} px left/right")
        if h < mh:
            bands.append(f"{y}+{mh - h - y} px top/bottom")
        pad = f"padded {' and '.join(bands)} (edge pixels repeated)" if bands else "no padding (same aspect ratio)"
        return (f"frames {fw}x{fh} are letterboxed into the model input {mw}x{mh}: scaled {w / fw:.3g}x to {w}x{h}, "
                f"{pad}, and the output cropped and scaled back to {fw}x{fh}")


def plan_model_fit(frame_hw: tuple[int, int], size_range, mode: str = "letterbox") -> ModelFit:
    """The fit of ``frame_hw`` frames to a model accepting ``size_range`` = ((min h, min w),
    (max h, max w)) (None: any size; min == max: one fixed size)."""
    if mode not in FIT_MODES:
        raise ValueError(f"model fit {mode!r}: use one of {FIT_MODES}")
    fh, fw = (int(v) for v in frame_hw)
    if size_range is None:
        return ModelFit((fh, fw), (fh, fw), (0, 0, fw, fh), "native")
    (h0, w0), (h1, w1) = ((int(a), int(b)) for a, b in size_range)
    if h0 <= fh <= h1 and w0 <= fw <= w1:
        return ModelFit((fh, fw), (fh, fw), (0, 0, fw, fh), "native")
    if mode == "stretch":
        mh, mw = min(max(fh, h0), h1), min(max(fw, w0), w1)
        return ModelFit((fh, fw), (mh, mw), (0, 0, mw, mh), "stretch")
    # letterbox: a fixed size takes the largest aspect-preserving picture that fits; a range takes
    # the frame as it is, shrunk only if it exceeds the maximum; padded up to the minimum
    s = min(h1 / fh, w1 / fw)
    if (h0, w0) != (h1, w1):
        s = min(s, 1.0)
    sh, sw = max(1, min(h1, int(round(fh * s)))), max(1, min(w1, int(round(fw * s))))
    mh, mw = max(sh, h0), max(sw, w0)
    return ModelFit((fh, fw), (mh, mw), ((mw - sw) // 2, (mh - sh) // 2, sw, sh), "letterbox")


def _interp(src_wh, dst_wh) -> int:
    return cv2.INTER_AREA if dst_wh[0] * dst_wh[1] < src_wh[0] * src_wh[1] else cv2.INTER_LINEAR


def to_model(plane: np.ndarray, fit: ModelFit, out: np.ndarray, tmp: np.ndarray | None = None) -> np.ndarray:
    """A frame plane (h, w) into the model input ``out`` (model h, w): scaled into ``fit.inner``,
    the border repeating the edge pixels. ``tmp``: scratch of the inner size (h, w)."""
    x, y, w, h = fit.inner
    mh, mw = fit.model
    if (w, h) == (mw, mh):
        return cv2.resize(plane, (w, h), dst=out, interpolation=_interp(plane.shape[1::-1], (w, h)))
    tmp = cv2.resize(plane, (w, h), dst=tmp, interpolation=_interp(plane.shape[1::-1], (w, h)))
    return cv2.copyMakeBorder(tmp, y, mh - h - y, x, mw - w - x, cv2.BORDER_REPLICATE, dst=out)


def from_model(plane: np.ndarray, fit: ModelFit, out: np.ndarray | None = None) -> np.ndarray:
    """A model output plane (model h, w) back to the frame's size (h, w): the picture's rectangle,
    scaled."""
    x, y, w, h = fit.inner
    fh, fw = fit.frame
    return cv2.resize(plane[y:y + h, x:x + w], (fw, fh), dst=out, interpolation=_interp((w, h), (fw, fh)))


def letterbox_into(img: np.ndarray, out: np.ndarray, value=0) -> np.ndarray:
    """``img`` scaled keeping its aspect ratio into ``out`` (another size, same channels), centred,
    the bands filled with ``value``."""
    oh, ow = out.shape[:2]
    x, y, w, h = letterbox_rect((img.shape[1], img.shape[0]), (ow, oh))
    out[...] = value
    cv2.resize(img, (w, h), dst=out[y:y + h, x:x + w], interpolation=_interp(img.shape[1::-1], (w, h)))
    return out
