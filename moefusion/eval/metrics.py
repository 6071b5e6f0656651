"""Fusion quality metrics (no reference image): EN, SD, SF, AG, MI, SCD, VIF, Qabf, Nabf, SSIM,
MS-SSIM, PSNR, CC.

Pure NumPy + OpenCV (no torch, no SciPy: both are core dependencies of the package), so the
training loop can call :func:`compute` every validation step.

Image convention
----------------
Every function takes gray images in the **0..255 range**. Inputs are converted to float64 gray:

- ``(H, W)`` or ``(H, W, 1)`` arrays are used as they are (uint8 and float values as is; uint16 is
  divided by 257 so that 65535 maps to 255). Float images must already be on the 0..255 scale
  (the model's [0, 1] outputs are multiplied by 255 by the caller).
- ``(H, W, 3)`` / ``(H, W, 4)`` arrays are BGR(A), like OpenCV reads them: they are compared in
  **luminance**, Y = 0.299 R + 0.587 G + 0.114 B (BT.601, the weights OpenCV uses for both
  ``COLOR_BGR2GRAY`` and the Y of ``COLOR_BGR2YCrCb``), computed in float64 without rounding.

``f`` is the fused image, ``a`` and ``b`` the two sources (this package passes ``a`` = IR,
``b`` = VIS luminance; every metric here is symmetric in ``a`` and ``b``).

Two conventions
---------------
``convention="default"`` is this project's: two-source metrics are the **mean** of the two
per-source values (so F = A = B gives the single-pair maximum: SSIM 1, VIF 1, CC 1), MI is in
bits, SSIM is Wang et al. (2004) with its published constants, PSNR uses the peak 255.

``convention="published"`` reproduces the field's most used Python evaluator, ``utils/Evaluator.py``
of MMIF-CDDFuse (Zhao et al., CVPR 2023; the same file is used by DDFM, EMMA, IF-FILM and many
later papers), so numbers can be put next to published tables: MI = MI(F,A) + MI(F,B) in nats
(scikit-learn's ``mutual_info_score``), SSIM = SSIM(F,A) + SSIM(F,B) with scikit-image 0.19's
defaults for float images (7x7 uniform window, sample covariance, data_range = 2), VIF = VIFF(A,F)
+ VIFF(B,F) (multiscale pixel VIF), Qabf with zero padding and that code's ratio rule, PSNR with
peak = max(F). :func:`compute` also rounds the three images to integers in that convention, as
that evaluator reads them (8-bit files, ``np.round`` of the gray conversion).
Metrics that the two conventions compute identically: EN, SD, SF, AG, SCD, CC, Nabf, MS-SSIM.
docs/metrics.md gives every formula, constant and border rule.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple

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


# --------------------------------------------------------------------------------------------
# single-image metrics
# --------------------------------------------------------------------------------------------
def _levels(x: np.ndarray) -> np.ndarray:
    """Round to integer grey levels 0..255 (the bins of EN and MI)."""
    return np.clip(np.rint(x), 0, 255).astype(np.intp)


def en(f, convention: str = "default") -> float:
    """Entropy (bits) of the 256-bin histogram of round(F), clipped to 0..255. Higher is better."""
    _check_conv(convention)
    q = _levels(to_gray255(f))
    p = np.bincount(q.ravel(), minlength=256).astype(np.float64) / q.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) + 0.0


def sd(f, convention: str = "default") -> float:
    """Standard deviation of F (population, ddof = 0). Higher is better."""
    _check_conv(convention)
    return float(np.std(to_gray255(f)))


def sf(f, convention: str = "default") -> float:
    """Spatial frequency sqrt(RF^2 + CF^2); RF^2, CF^2 = mean squared horizontal / vertical
    first difference (mean over the W-1 resp. H-1 differences per line). Higher is better."""
    _check_conv(convention)
    x = to_gray255(f)
    dx = np.diff(x, axis=1)
    dy = np.diff(x, axis=0)
    rf2 = float((dx * dx).mean()) if dx.size else 0.0
    cf2 = float((dy * dy).mean()) if dy.size else 0.0
    return math.sqrt(rf2 + cf2)


def ag(f, convention: str = "default") -> float:
    """Average gradient mean(sqrt((Gx^2 + Gy^2) / 2)), Gx, Gy = np.gradient (central differences
    inside, one-sided at the border), over all H x W pixels. Higher is better."""
    _check_conv(convention)
    x = to_gray255(f)
    gy, gx = np.gradient(x)
    return float(np.sqrt((gx * gx + gy * gy) / 2.0).mean())


# --------------------------------------------------------------------------------------------
# information-theoretic and statistical two-source metrics
# --------------------------------------------------------------------------------------------
def mutual_information(x, y, base: float = 2.0) -> float:
    """MI of two images from their 256 x 256 joint histogram of integer grey levels
    (round, clip to 0..255). ``base`` 2 gives bits, ``math.e`` nats. Symmetric."""
    qx = _levels(to_gray255(x)).ravel()
    qy = _levels(to_gray255(y)).ravel()
    if qx.shape != qy.shape:
        raise UserError("mutual information needs two images of the same size")
    joint = np.bincount(qx * 256 + qy, minlength=65536).astype(np.float64).reshape(256, 256)
    joint /= qx.size
    px = joint.sum(axis=1)
    py = joint.sum(axis=0)
    nz = joint > 0
    outer = px[:, None] * py[None, :]
    mi_nats = float((joint[nz] * np.log(joint[nz] / outer[nz])).sum())
    mi_nats = max(mi_nats, 0.0)  # clamp -1e-16 round-off, as scikit-learn does
    return mi_nats / math.log(base)


def mi(f, a, b, convention: str = "default") -> float:
    """Mutual information. default: (MI(F,A) + MI(F,B)) / 2 in bits; published: MI(F,A) + MI(F,B)
    in nats. 256 integer grey-level bins either way. Higher is better."""
    _check_conv(convention)
    f, a, b = _three(f, a, b)
    if convention == "published":
        return mutual_information(f, a, math.e) + mutual_information(f, b, math.e)
    return 0.5 * (mutual_information(f, a, 2.0) + mutual_information(f, b, 2.0))


def scd(f, a, b, convention: str = "default") -> float:
    """Sum of the correlations of differences: corr(F - B, A) + corr(F - A, B) (Aslantas & Bendes
    2015), Pearson over all pixels; a constant term counts as 0. Range [-2, 2]; higher is better."""
    _check_conv(convention)
    f, a, b = _three(f, a, b)
    return _pearson(f - b, a) + _pearson(f - a, b)


def cc(f, a, b, convention: str = "default") -> float:
    """Correlation coefficient (r(F,A) + r(F,B)) / 2, Pearson over all pixels (a constant image
    gives r = 0). Higher is better."""
    _check_conv(convention)
    f, a, b = _three(f, a, b)
    return 0.5 * (_pearson(f, a) + _pearson(f, b))


def psnr(f, a, b, convention: str = "default") -> float:
    """PSNR = 10 log10(P^2 / MSE), MSE = (MSE(F,A) + MSE(F,B)) / 2. default: P = 255;
    published: P = max(F). inf when MSE = 0. Higher is better."""
    _check_conv(convention)
    f, a, b = _three(f, a, b)
    mse = 0.5 * (float(((f - a) ** 2).mean()) + float(((f - b) ** 2).mean()))
    peak = float(f.max()) if convention == "published" else 255.0
    if mse == 0.0:
        return math.inf
    if peak <= 0.0:
        return -math.inf
    return 10.0 * math.log10(peak * peak / mse)


# --------------------------------------------------------------------------------------------
# VIF (multiscale pixel-domain VIF, Sheikh & Bovik 2006, "vifp_mscale"; called VIFF in the field)
# --------------------------------------------------------------------------------------------
_VIF_SIGMA_NSQ = 2.0
_VIF_EPS = 1e-10
VIF_MIN_SIDE = 41


def _vif_window(n: int) -> np.ndarray:
    """MATLAB fspecial('gaussian', n, n/5): tiny values (< eps * max) zeroed, then normalised."""
    sd_ = n / 5.0
    r = (n - 1) / 2.0
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    h = np.exp(-(x * x + y * y) / (2.0 * sd_ * sd_))
    h[h < np.finfo(np.float64).eps * h.max()] = 0.0
    return h / h.sum()


_VIF_WINDOWS = {s: _vif_window(2 ** (4 - s + 1) + 1) for s in range(1, 5)}


def vif_index(ref, dist) -> float:
    """Multiscale pixel VIF of ``dist`` with respect to ``ref`` (one source). 1 for dist = ref,
    > 1 for a contrast-enhanced ref, 0 when nothing of ref is left. Not symmetric."""
    ref = to_gray255(ref, "VIF reference")
    dist = to_gray255(dist, "VIF distorted image")
    if min(ref.shape) < VIF_MIN_SIDE:
        raise UserError(
            f"VIF needs images at least {VIF_MIN_SIDE} pixels on each side, got {ref.shape[1]}x{ref.shape[0]}"
        )
    num = 0.0
    den = 0.0
    for scale in range(1, 5):
        win = _VIF_WINDOWS[scale]
        if scale > 1:
            ref = _filter_valid(ref, win)[::2, ::2]
            dist = _filter_valid(dist, win)[::2, ::2]
        mu1 = _filter_valid(ref, win)
        mu2 = _filter_valid(dist, win)
        s1 = _filter_valid(ref * ref, win) - mu1 * mu1
        s2 = _filter_valid(dist * dist, win) - mu2 * mu2
        s12 = _filter_valid(ref * dist, win) - mu1 * mu2
        s1[s1 < 0] = 0.0
        s2[s2 < 0] = 0.0
        g = s12 / (s1 + _VIF_EPS)
        sv = s2 - g * s12
        m = s1 < _VIF_EPS
        g[m] = 0.0
        sv[m] = s2[m]
        s1[m] = 0.0
        m = s2 < _VIF_EPS
        g[m] = 0.0
        sv[m] = 0.0
        m = g < 0
        sv[m] = s2[m]
        g[m] = 0.0
        sv[sv <= _VIF_EPS] = _VIF_EPS
        num += float(np.log10(1.0 + g * g * s1 / (sv + _VIF_SIGMA_NSQ)).sum())
        den += float(np.log10(1.0 + s1 / _VIF_SIGMA_NSQ).sum())
    if den == 0.0:  # a flat reference: 0/0; the reference code returns 1 for its NaN
        return 1.0
    return num / den


def vif(f, a, b, convention: str = "default") -> float:
    """VIF (multiscale, sigma_n^2 = 2, 4 scales). default: (VIF(A->F) + VIF(B->F)) / 2;
    published: VIF(A->F) + VIF(B->F). Higher is better."""
    _check_conv(convention)
    f, a, b = _three(f, a, b)
    s = vif_index(a, f) + vif_index(b, f)
    return s if convention == "published" else 0.5 * s


# --------------------------------------------------------------------------------------------
# Qabf (Xydeas & Petrovic 2000) and Nabf (Petrovic; modified by B. K. Shreyamsha Kumar)
# --------------------------------------------------------------------------------------------
QABF_TG, QABF_KG, QABF_DG = 0.9994, -15.0, 0.5
QABF_TA, QABF_KA, QABF_DA = 0.9879, -22.0, 0.8
#: Qabf of F = A = B in the default convention (its maximum): Qg(1) * Qa(1) ~= 0.97480.
QABF_MAX = QABF_TG / (1.0 + math.exp(QABF_KG * (1.0 - QABF_DG))) * (
    QABF_TA / (1.0 + math.exp(QABF_KA * (1.0 - QABF_DA)))
)


def _qabf_grad(x: np.ndarray, convention: str):
    """Sobel strength and orientation atan(Sy / Sx) (pi/2 where Sx = 0)."""
    if convention == "published":
        # scipy convolve2d(x, [[-1,0,1],[-2,0,2],[-1,0,1]], 'same') with zero fill: a flipped
        # kernel, i.e. minus the OpenCV Sobel x; y: convolve2d with [[1,2,1],[0,0,0],[-1,-2,-1]].
        border = cv2.BORDER_CONSTANT
        sx = -cv2.Sobel(x, cv2.CV_64F, 1, 0, ksize=3, borderType=border)
        sy = cv2.Sobel(x, cv2.CV_64F, 0, 1, ksize=3, borderType=border)
    else:
        # float32 per pixel (sums are float64): twice as fast for the training validation call;
        # the result differs from a float64 run by ~1e-7.
        x = x.astype(np.float32)
        border = cv2.BORDER_REFLECT_101
        sx = cv2.Sobel(x, cv2.CV_32F, 1, 0, ksize=3, borderType=border)
        sy = cv2.Sobel(x, cv2.CV_32F, 0, 1, ksize=3, borderType=border)
    g = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.arctan(sy / sx)
    a[sx == 0] = math.pi / 2
    return g, a


def _qabf_q(ga, aa, gf, af, convention: str) -> np.ndarray:
    """Per-pixel edge preservation Q^{AF} = Qg(G^{AF}) * Qa(A^{AF})."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if convention == "published":
            # the reference's ratio rule, quirk included: where gA == gF it uses gF itself
            gaf = np.where(ga > gf, gf / ga, np.where(ga == gf, gf, ga / gf))
        else:
            gaf = np.minimum(ga, gf) / np.maximum(ga, gf)
            gaf[ga == gf] = 1.0
    t = ga.dtype.type  # keep float32 inputs in float32
    aaf = t(1.0) - np.abs(aa - af) * t(2.0 / math.pi)
    qg = t(QABF_TG) / (t(1.0) + np.exp(t(QABF_KG) * (gaf - t(QABF_DG))))
    qa = t(QABF_TA) / (t(1.0) + np.exp(t(QABF_KA) * (aaf - t(QABF_DA))))
    return qg * qa


def qabf(f, a, b, convention: str = "default") -> float:
    """Gradient-based fusion performance Q^{AB/F} (Xydeas & Petrovic 2000), L = 1:
    sum(Q^{AF} gA + Q^{BF} gB) / sum(gA + gB). 3x3 Sobel; default border: reflect-101, ratio
    min/max (1 where equal); published: zero padding and the reference's ratio rule.
    Maximum (F = A = B, default) ~0.9748. Higher is better."""
    _check_conv(convention)
    f, a, b = _three(f, a, b)
    ga, aa = _qabf_grad(a, convention)
    gb, ab = _qabf_grad(b, convention)
    gf, af = _qabf_grad(f, convention)
    den = float(np.sum(ga, dtype=np.float64)) + float(np.sum(gb, dtype=np.float64))
    if den == 0.0:
        return 0.0
    qa_ = _qabf_q(ga, aa, gf, af, convention)
    qb_ = _qabf_q(gb, ab, gf, af, convention)
    num = float(np.sum(qa_ * ga, dtype=np.float64)) + float(np.sum(qb_ * gb, dtype=np.float64))
    return num / den


_NABF = dict(Td=2.0, wt_min=0.001, Lg=1.5, Nrg=0.9999, kg=19.0, sigmag=0.5, Nra=0.9995, ka=22.0, sigmaa=0.5)


def _nabf_grad(x: np.ndarray):
    # Kumar's sobel_fn: Sobel / 8, image extended by mirroring without repeating the edge pixel
    gv = cv2.Sobel(x, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101) / 8.0
    gh = cv2.Sobel(x, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101) / 8.0
    g = np.sqrt(gv * gv + gh * gh)
    with np.errstate(divide="ignore", invalid="ignore"):
        ang = np.arctan(gv / gh)  # +-pi/2 where gh = 0 (MATLAB atan(x/0))
    ang[(gv == 0) & (gh == 0)] = 0.0
    return g, ang


def _nabf_q(gx, ax, gf, af) -> np.ndarray:
    p = _NABF
    with np.errstate(divide="ignore", invalid="ignore"):
        gxf = np.where((gx == 0) | (gf == 0), 0.0, np.minimum(gx, gf) / np.maximum(gx, gf))
    axf = np.abs(np.abs(ax - af) - math.pi / 2) * 2.0 / math.pi
    qg = p["Nrg"] / (1.0 + np.exp(-p["kg"] * (gxf - p["sigmag"])))
    qa = p["Nra"] / (1.0 + np.exp(-p["ka"] * (axf - p["sigmaa"])))
    return np.sqrt(qg * qa)


def nabf(f, a, b, convention: str = "default") -> float:
    """Modified fusion artifacts measure N^{AB/F} (Petrovic & Xydeas; modification by
    B. K. Shreyamsha Kumar 2013): sum over pixels where gF > gA and gF > gB of
    (1 - Q^{AF}) wA + (1 - Q^{BF}) wB, over sum(wA + wB); w = g^1.5 where g >= 2, else 0.001.
    In [0, 1]; 0 when F adds no edge stronger than both sources. Lower is better."""
    _check_conv(convention)
    f, a, b = _three(f, a, b)
    p = _NABF
    ga, aa = _nabf_grad(a)
    gb, ab = _nabf_grad(b)
    gf, af = _nabf_grad(f)
    wa = np.where(ga >= p["Td"], ga ** p["Lg"], p["wt_min"])
    wb = np.where(gb >= p["Td"], gb ** p["Lg"], p["wt_min"])
    art = (gf > ga) & (gf > gb)
    if not art.any():
        return 0.0
    qa = _nabf_q(ga, aa, gf, af)
    qb = _nabf_q(gb, ab, gf, af)
    num = float((((1.0 - qa) * wa + (1.0 - qb) * wb))[art].sum())
    return num / float((wa + wb).sum())


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


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
class MetricInfo(NamedTuple):
    fn: Callable[..., float]
    higher_is_better: bool
    description: str
    uses_sources: bool  # False: a function of the fused image only


METRICS: dict[str, MetricInfo] = {
    "EN": MetricInfo(en, True, "entropy of the fused image, bits (256 bins)", False),
    "SD": MetricInfo(sd, True, "standard deviation of the fused image (contrast)", False),
    "SF": MetricInfo(sf, True, "spatial frequency (row/column first differences)", False),
    "AG": MetricInfo(ag, True, "average gradient (sharpness)", False),
    "MI": MetricInfo(mi, True, "mutual information with the sources (default: mean, bits; published: sum, nats)", True),
    "SCD": MetricInfo(scd, True, "sum of the correlations of differences", True),
    "VIF": MetricInfo(vif, True, "multiscale pixel visual information fidelity (default: mean; published: sum)", True),
    "Qabf": MetricInfo(qabf, True, "edge information transferred from the sources (Xydeas-Petrovic)", True),
    "Nabf": MetricInfo(nabf, False, "fusion artifacts: edges stronger than in both sources (Kumar's modified Nabf)", True),
    "SSIM": MetricInfo(ssim, True, "structural similarity with the sources (default: mean, Wang 2004; published: sum, skimage 0.19)", True),
    "MS-SSIM": MetricInfo(ms_ssim, True, "multi-scale SSIM with the sources (mean)", True),
    "PSNR": MetricInfo(psnr, True, "peak signal-to-noise ratio to the sources, dB (default peak 255; published max(F))", True),
    "CC": MetricInfo(cc, True, "correlation coefficient with the sources (mean)", True),
}

_ALIASES = {k.lower(): k for k in METRICS}
_ALIASES.update({"ms_ssim": "MS-SSIM", "msssim": "MS-SSIM", "viff": "VIF", "q_abf": "Qabf", "n_abf": "Nabf"})


def resolve_names(names) -> list[str]:
    """Metric names (case-insensitive; a comma-separated string or an iterable) -> canonical names.

    Raises UserError naming the unknown metric and listing the valid names.
    """
    if isinstance(names, str):
        items = [n.strip() for n in names.split(",")]
    else:
        items = [str(n).strip() for n in names]
    items = [n for n in items if n]
    if not items:
        raise UserError(f"no metric given; valid metrics: {', '.join(METRICS)}")
    out: list[str] = []
    for n in items:
        canon = _ALIASES.get(n.lower())
        if canon is None:
            raise UserError(f"unknown metric {n!r}; valid metrics: {', '.join(METRICS)}")
        if canon not in out:
            out.append(canon)
    return out


def compute(names: Iterable[str] | str, fused, ir, vis, convention: str = "default") -> dict[str, float]:
    """Compute the named metrics for one fused image and its two sources (0..255 scale).

    ``fused``, ``ir`` and ``vis`` are converted once to float64 gray (colour -> luminance); with
    ``convention="published"`` they are also rounded to integers, as the reference evaluator
    reads 8-bit files. Returns ``{canonical name: float}`` in the order asked.
    """
    _check_conv(convention)
    keys = resolve_names(names)
    f, a, b = _three(fused, ir, vis)
    if convention == "published":
        f, a, b = np.rint(f), np.rint(a), np.rint(b)
    out: dict[str, float] = {}
    for k in keys:
        info = METRICS[k]
        if info.uses_sources:
            out[k] = float(info.fn(f, a, b, convention=convention))
        else:
            out[k] = float(info.fn(f, convention=convention))
    return out
