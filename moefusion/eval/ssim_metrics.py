"""Structural similarity fusion metrics: SSIM (Wang et al. 2004 / scikit-image 0.19) and MS-SSIM.
Conventions: :mod:`moefusion.eval.metrics`."""
from __future__ import annotations

import cv2
import numpy as np

from ..errors import UserError
from .metric_utils import _check_conv, _three, _valid, to_gray255

# --------------------------------------------------------------------------------------------
# SSIM and MS-SSIM
# --------------------------------------------------------------------------------------------
SSIM_K1, SSIM_K2 = 0.01, 0.03
_GAUSS_WIN, _GAUSS_SIGMA = 11, 1.5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _ssim_maps_gauss(x: np.ndarray, y: np.ndarray, data_range: float = 255.0):
    """Wang et al. 2004: 11x11 Gaussian (sigma 1.5) statistics, 'valid' region. -> (ssim, cs) maps."""
    k = (_GAUSS_WIN, _GAUSS_WIN)

    def blur(z):
        return _valid(cv2.GaussianBlur(z, k, _GAUSS_SIGMA, borderType=cv2.BORDER_REFLECT_101), _GAUSS_WIN)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    vxy = blur(x * y) - mx * my
    cs = (2.0 * vxy + c2) / (vx + vy + c2)
    lum = (2.0 * mx * my + c1) / (mx * mx + my * my + c1)
    return lum * cs, cs


def _ssim_skimage019(x: np.ndarray, y: np.ndarray) -> float:
    """scikit-image 0.19 ``structural_similarity(x, y)`` for float images without data_range:
    7x7 uniform window, sample covariance (49/48), data_range = 2 (float dtype range -1..1),
    mean over the image less a 3-pixel border."""
    w = 7
    n = w * w
    cov = n / (n - 1.0)

    def box(z):
        return cv2.boxFilter(z, cv2.CV_64F, (w, w), normalize=True, borderType=cv2.BORDER_REFLECT)

    ux, uy = box(x), box(y)
    vx = cov * (box(x * x) - ux * ux)
    vy = cov * (box(y * y) - uy * uy)
    vxy = cov * (box(x * y) - ux * uy)
    r = 2.0
    c1 = (SSIM_K1 * r) ** 2
    c2 = (SSIM_K2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(_valid(s, w).mean())


def ssim_index(x, y, convention: str = "default") -> float:
    """SSIM of one image pair (symmetric). default: Wang et al. 2004 (Gaussian 11x11, sigma 1.5,
    K = 0.01, 0.03, L = 255, mean of the valid map); published: scikit-image 0.19 defaults."""
    _check_conv(convention)
    x = to_gray255(x)
    y = to_gray255(y)
    if x.shape != y.shape:
        raise UserError("SSIM needs two images of the same size")
    w = _GAUSS_WIN if convention == "default" else 7
    if min(x.shape) < w:
        raise UserError(f"SSIM needs images at least {w} pixels on each side, got {x.shape[1]}x{x.shape[0]}")
    if convention == "published":
        return _ssim_skimage019(x, y)
    return float(_ssim_maps_gauss(x, y)[0].mean())


def ssim(f, a, b, convention: str = "default") -> float:
    """SSIM. default: (SSIM(F,A) + SSIM(F,B)) / 2, Wang 2004 constants (max 1);
    published: SSIM(F,A) + SSIM(F,B) with scikit-image 0.19 defaults (max 2). Higher is better."""
    _check_conv(convention)
    f, a, b = _three(f, a, b)
    s = ssim_index(f, a, convention) + ssim_index(f, b, convention)
    return s if convention == "published" else 0.5 * s


def _half(x: np.ndarray) -> np.ndarray:
    """MATLAB msssim.m downsampling: 2x2 mean ('symmetric' edge for odd sizes), every 2nd pixel."""
    if x.shape[0] % 2:
        x = np.concatenate([x, x[-1:, :]], axis=0)
    if x.shape[1] % 2:
        x = np.concatenate([x, x[:, -1:]], axis=1)
    return 0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])


def ms_ssim_index(x, y) -> float:
    """MS-SSIM of one pair (Wang, Simoncelli & Bovik 2003), as msssim.m: 5 scales, weights
    (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 11x11 Gaussian sigma 1.5, L = 255, product of
    cs_j^w_j (j < M) and ssim_M^w_M. Negative cs/ssim values are clamped to 0. Images smaller than
    176 px use as many scales as keep >= 11 px, with the first weights renormalised to sum 1."""
    x = to_gray255(x)
    y = to_gray255(y)
    if x.shape != y.shape:
        raise UserError("MS-SSIM needs two images of the same size")
    side = min(x.shape)
    if side < _GAUSS_WIN:
        raise UserError(f"MS-SSIM needs images at least {_GAUSS_WIN} pixels on each side, got {x.shape[1]}x{x.shape[0]}")
    levels = 1
    while levels < len(MS_SSIM_WEIGHTS) and side / 2**levels >= _GAUSS_WIN:
        levels += 1
    w = np.asarray(MS_SSIM_WEIGHTS[:levels])
    w = w / w.sum()
    out = 1.0
    for j in range(levels):
        s_map, cs_map = _ssim_maps_gauss(x, y)
        v = float(s_map.mean()) if j == levels - 1 else float(cs_map.mean())
        out *= max(v, 0.0) ** w[j]
        if j < levels - 1:
            x, y = _half(x), _half(y)
    return out


def ms_ssim(f, a, b, convention: str = "default") -> float:
    """MS-SSIM = (MS-SSIM(F,A) + MS-SSIM(F,B)) / 2 in both conventions. Higher is better."""
    _check_conv(convention)
    f, a, b = _three(f, a, b)
    return 0.5 * (ms_ssim_index(f, a) + ms_ssim_index(f, b))
