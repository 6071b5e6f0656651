"""Classical fusion baselines: average, max, Laplacian pyramid, guided-filter fusion (GFF).

Every baseline takes ``(ir_unit, vis_y)``: two float32 (H, W) arrays in [0, 1] of the same size
(IR and visible luminance as :func:`moefusion.data.preprocess.prepare_pair` gives them) and
returns the fused luminance, float32 (H, W) in [0, 1]. ``BASELINES`` maps the method names used by
``moefusion-eval --methods`` to these functions.

- ``average``: (IR + VIS) / 2.
- ``max``: per-pixel max(IR, VIS).
- ``laplacian``: Laplacian pyramid fusion (Burt & Adelson 1983/1985): OpenCV 5-tap Gaussian
  pyramid (``pyrDown``/``pyrUp``), ``levels`` detail levels (default 4, fewer for small images);
  detail coefficients chosen by max absolute value, base (coarsest Gaussian level) averaged.
- ``gff``: guided filtering based fusion (S. Li, X. Kang, J. Hu, "Image fusion with guided
  filtering", IEEE TIP 22(7), 2013), a two-scale method: base = 31x31 mean filter, detail =
  image - base; saliency = |3x3 Laplacian| smoothed by an 11x11 Gaussian (sigma 5); binary weight
  maps (the most salient source per pixel) refined by guided filtering with the source as guide,
  r1 = 45, eps1 = 0.3 for the base and r2 = 7, eps2 = 1e-6 for the detail layer; the paper's
  parameters.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

from ..errors import UserError

__all__ = ["average", "maximum", "max", "laplacian_pyramid_fusion", "gff", "guided_filter", "BASELINES"]


def _inputs(ir, vis_y):
    for name, x in (("IR", ir), ("visible luminance", vis_y)):
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise UserError(f"{name} must be a 2-D array in [0, 1], got {getattr(x, 'shape', type(x).__name__)}")
    if ir.shape != vis_y.shape:
        raise UserError(f"IR {ir.shape[1]}x{ir.shape[0]} and visible {vis_y.shape[1]}x{vis_y.shape[0]} differ in size")
    return ir.astype(np.float32, copy=False), vis_y.astype(np.float32, copy=False)


def _out(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)


def average(ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
    """Per-pixel mean of IR and visible luminance."""
    a, b = _inputs(ir, vis_y)
    return _out(0.5 * (a + b))


def maximum(ir: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
    """Per-pixel maximum of IR and visible luminance."""
    a, b = _inputs(ir, vis_y)
    return _out(np.maximum(a, b))


max = maximum  # noqa: A001 - the registry/CLI name; the builtin is not used in this module


def _pyr_levels(h: int, w: int, levels: int) -> int:
    """As many levels as asked while the coarsest level keeps >= 8 px on its short side."""
    n = 0
    while n < levels and min(h, w) / 2 ** (n + 1) >= 8:
        n += 1
    return n


def _laplacian_pyr(x: np.ndarray, levels: int) -> list[np.ndarray]:
    pyr = []
    cur = x
    for _ in range(levels):
        down = cv2.pyrDown(cur)
        up = cv2.pyrUp(down, dstsize=(cur.shape[1], cur.shape[0]))
        pyr.append(cur - up)
        cur = down
    pyr.append(cur)
    return pyr


def laplacian_pyramid_fusion(ir: np.ndarray, vis_y: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian pyramid fusion: max-abs detail coefficients, averaged base."""
    a, b = _inputs(ir, vis_y)
    n = _pyr_levels(a.shape[0], a.shape[1], levels)
    pa, pb = _laplacian_pyr(a, n), _laplacian_pyr(b, n)
    fused = [np.where(np.abs(da) >= np.abs(db), da, db) for da, db in zip(pa[:-1], pb[:-1])]
    out = 0.5 * (pa[-1] + pb[-1])
    for detail in reversed(fused):
        out = cv2.pyrUp(out, dstsize=(detail.shape[1], detail.shape[0])) + detail
    return _out(out)


def _box(x: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Gray-guide guided filter (He, Sun & Tang 2010/2013), (2r+1)^2 box windows."""
    i = guide.astype(np.float32, copy=False)
    p = src.astype(np.float32, copy=False)
    mi, mp = _box(i, r), _box(p, r)
    cov = _box(i * p, r) - mi * mp
    var = _box(i * i, r) - mi * mi
    a = cov / (var + np.float32(eps))
    b = mp - a * mi
    return _box(a, r) * i + _box(b, r)


def gff(
    ir: np.ndarray,
    vis_y: np.ndarray,
    r1: int = 45,
    eps1: float = 0.3,
    r2: int = 7,
    eps2: float = 1e-6,
    base_size: int = 31,
) -> np.ndarray:
    """Guided filtering based fusion (Li, Kang & Hu 2013) of two images."""
    a, b = _inputs(ir, vis_y)
    srcs = (a, b)
    bases = [cv2.blur(x, (base_size, base_size), borderType=cv2.BORDER_REFLECT) for x in srcs]
    details = [x - base for x, base in zip(srcs, bases)]
    sal = [
        cv2.GaussianBlur(np.abs(cv2.Laplacian(x, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)), (11, 11), 5.0,
                         borderType=cv2.BORDER_REFLECT)
        for x in srcs
    ]
    smax = np.maximum(sal[0], sal[1])
    masks = [(s >= smax).astype(np.float32) for s in sal]  # ties: both sources get weight 1
    wb = [guided_filter(x, m, r1, eps1) for x, m in zip(srcs, masks)]
    wd = [guided_filter(x, m, r2, eps2) for x, m in zip(srcs, masks)]
    base = _weighted(wb, bases)
    detail = _weighted(wd, details)
    return _out(base + detail)


def _weighted(weights, layers) -> np.ndarray:
    """Normalised weighted sum; weights clipped to [0, 1], equal weights where both are ~0."""
    w0 = np.clip(weights[0], 0.0, 1.0)
    w1 = np.clip(weights[1], 0.0, 1.0)
    s = w0 + w1
    flat = s < 1e-6
    w0 = np.where(flat, 0.5, w0)
    w1 = np.where(flat, 0.5, w1)
    s = np.where(flat, 1.0, s)
    return ((w0 * layers[0] + w1 * layers[1]) / s).astype(np.float32)


BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "average": average,
    "max": maximum,
    "laplacian": laplacian_pyramid_fusion,
    "gff": gff,
}
