"""Shared by the fusion metrics: the two conventions, gray conversion to 0..255 float64, helpers
(see :mod:`moefusion.eval.metrics` for the conventions)."""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..errors import UserError

CONVENTIONS = ("default", "published")

_LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# input conversion
# --------------------------------------------------------------------------------------------
def to_gray255(img, name: str = "image") -> np.ndarray:
    """Any supported image -> float64 (H, W) on the 0..255 scale (colour -> BT.601 luminance)."""
    if not isinstance(img, np.ndarray):
        img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] in (3, 4):
        scale = 1.0 / 257.0 if img.dtype == np.uint16 else 1.0
        bgr = img[:, :, :3].astype(np.float64)
        y = 0.114 * bgr[:, :, 0] + 0.587 * bgr[:, :, 1] + 0.299 * bgr[:, :, 2]
        return y * scale if scale != 1.0 else y
    if img.ndim != 2:
        raise UserError(f"{name} must be (H, W), (H, W, 1) or (H, W, 3) BGR, got shape {img.shape}")
    if img.dtype == np.float64:
        return img
    if img.dtype == np.uint16:
        return img.astype(np.float64) / 257.0
    if img.dtype == np.bool_ or not (np.issubdtype(img.dtype, np.number)):
        raise UserError(f"{name} has unsupported dtype {img.dtype}")
    return img.astype(np.float64)


def _check_conv(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise UserError(f"unknown metric convention {convention!r}; use one of: {', '.join(CONVENTIONS)}")
    return convention


def _three(f, a, b):
    f = to_gray255(f, "fused image")
    a = to_gray255(a, "source image A")
    b = to_gray255(b, "source image B")
    if not (f.shape == a.shape == b.shape):
        raise UserError(
            f"fused and source images must have the same size, got fused {f.shape[1]}x{f.shape[0]}, "
            f"A {a.shape[1]}x{a.shape[0]}, B {b.shape[1]}x{b.shape[0]}"
        )
    return f, a, b


def _valid(x: np.ndarray, k: int) -> np.ndarray:
    """Crop the border that a centred k x k filter ('same' output) computes from padding."""
    r = k // 2
    return x[r : x.shape[0] - r, r : x.shape[1] - r]


def _filter_valid(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D correlation with a (symmetric, odd) kernel, 'valid' part only (MATLAB filter2 'valid')."""
    out = cv2.filter2D(x, cv2.CV_64F, kernel, borderType=cv2.BORDER_REFLECT_101)
    return _valid(out, kernel.shape[0])


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two arrays; 0.0 when either is constant (the 0/0 case)."""
    xm = x - x.mean()
    ym = y - y.mean()
    den = math.sqrt(float((xm * xm).sum()) * float((ym * ym).sum()))
    if den == 0.0:
        return 0.0
    return float((xm * ym).sum()) / den
