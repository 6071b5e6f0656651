"""Fusion metrics of image statistics and information: EN, SD, SF, AG (the fused image alone),
MI, SCD, CC, PSNR and VIF (against the sources). Conventions: :mod:`moefusion.eval.metrics`."""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from .metric_utils import _check_conv, _filter_valid, _pearson, _three, to_gray255


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
