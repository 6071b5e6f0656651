"""Image conventions shared by training, offline fusion and the live runtime.

- The network sees two single-channel float32 images in [0, 1]: the infrared image and the
  luminance (Y of YCrCb, BT.601 as OpenCV computes it) of the visible image.
- Visible: uint8 or uint16, gray (H, W) / (H, W, 1) or BGR (H, W, 3). A BGR input is fused in
  luminance and recombined with its own chroma, so the output is BGR too; gray in, gray out.
- Infrared: uint8, uint16 or float, 1 or 3 channels (3 channels are converted to gray).
  8-bit IR is divided by 255. 16-bit IR (radiometric Y16 from FLIR Boson/Lepton and the like)
  goes through a robust percentile AGC: the ``agc_percentiles`` (default 1st and 99th) of the
  frame map to 0 and 1, clipped; that keeps a hot spot from flattening the whole scene.
  Float IR already in [0, 1] is used as is; float IR outside [0, 1] (temperatures, say) gets
  the same AGC.
- When IR and VIS differ in size, IR is resized (bilinear) to the VIS size: the output is
  always shaped like VIS. Registration (a homography) is the runtime's job.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import UserError

DEFAULT_AGC_PERCENTILES = (1.0, 99.0)


def _as_hw_or_hwc(img: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise UserError(f"{name} must be a numpy array, got {type(img).__name__}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise UserError(f"{name} must be (H, W), (H, W, 1) or (H, W, 3), got shape {img.shape}")
    if img.ndim == 3 and img.shape[2] == 4:  # BGRA: drop alpha
        img = img[:, :, :3]
    if img.shape[0] < 2 or img.shape[1] < 2:
        raise UserError(f"{name} is too small: {img.shape[1]}x{img.shape[0]}")
    return img


def agc16(img: np.ndarray, percentiles=DEFAULT_AGC_PERCENTILES) -> np.ndarray:
    """Robust automatic gain control of a 16-bit (or any integer/float) frame to [0, 1]."""
    x = img.astype(np.float32)
    lo, hi = np.percentile(x, percentiles)
    if hi - lo < 1e-6:
        return np.zeros(x.shape, np.float32)
    return np.clip((x - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)


def ir_to_unit(ir: np.ndarray, agc_percentiles=DEFAULT_AGC_PERCENTILES) -> np.ndarray:
    """Infrared frame (any supported dtype/channels) -> float32 (H, W) in [0, 1]."""
    ir = _as_hw_or_hwc(ir, "IR image")
    if ir.ndim == 3:
        if ir.dtype == np.uint16:
            ir = ir.mean(axis=2)
        else:
            ir = cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY)
    if ir.dtype == np.uint8:
        return ir.astype(np.float32) / 255.0
    if ir.dtype in (np.uint16, np.int16, np.int32, np.uint32):
        return agc16(ir, agc_percentiles)
    if np.issubdtype(ir.dtype, np.floating):
        if float(ir.min()) < 0.0 or float(ir.max()) > 1.0:  # e.g. temperatures: not a [0, 1] image
            return agc16(ir, agc_percentiles)
        return ir.astype(np.float32)
    raise UserError(f"IR image has unsupported dtype {ir.dtype}; use uint8, uint16 or float in [0, 1]")


@dataclass
class VisibleParts:
    """Luminance in [0, 1] plus what is needed to rebuild the visible image's format."""

    y: np.ndarray  # float32 (H, W) in [0, 1]
    crcb: np.ndarray | None  # uint8/uint16 (H, W, 2) chroma, None for gray input
    dtype: np.dtype


def split_visible(vis: np.ndarray) -> VisibleParts:
    """Visible frame -> luminance in [0, 1] and chroma (BGR) or None (gray)."""
    vis = _as_hw_or_hwc(vis, "visible image")
    if vis.dtype not in (np.uint8, np.uint16) and not np.issubdtype(vis.dtype, np.floating):
        raise UserError(f"visible image has unsupported dtype {vis.dtype}; use uint8, uint16 or float")
    scale = 255.0 if vis.dtype == np.uint8 else 65535.0 if vis.dtype == np.uint16 else 1.0
    if vis.ndim == 2:
        return VisibleParts(np.clip(vis.astype(np.float32) / scale, 0, 1), None, vis.dtype)
    src = vis if vis.dtype != np.float64 else vis.astype(np.float32)
    ycrcb = cv2.cvtColor(src, cv2.COLOR_BGR2YCrCb)
    y = np.clip(ycrcb[:, :, 0].astype(np.float32) / scale, 0, 1)
    return VisibleParts(y, ycrcb[:, :, 1:].copy(), vis.dtype)


def merge_visible(fused_y: np.ndarray, parts: VisibleParts) -> np.ndarray:
    """Fused luminance (float, [0, 1]) + the visible chroma -> image in the visible's format."""
    y = np.clip(fused_y.astype(np.float32), 0.0, 1.0)
    if parts.dtype == np.uint8:
        y_out = np.rint(y * 255.0).astype(np.uint8)
    elif parts.dtype == np.uint16:
        y_out = np.rint(y * 65535.0).astype(np.uint16)
    else:
        y_out = y
    if parts.crcb is None:
        return y_out
    ycrcb = np.concatenate([y_out[:, :, None], parts.crcb.astype(y_out.dtype)], axis=2)
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR)


def prepare_pair(ir: np.ndarray, vis: np.ndarray, agc_percentiles=DEFAULT_AGC_PERCENTILES):
    """(IR, VIS) numpy frames -> (ir_unit (H, W), VisibleParts) at the VIS size."""
    parts = split_visible(vis)
    ir_u = ir_to_unit(ir, agc_percentiles)
    h, w = parts.y.shape
    if ir_u.shape != (h, w):
        ir_u = cv2.resize(ir_u, (w, h), interpolation=cv2.INTER_LINEAR)
    return ir_u, parts
