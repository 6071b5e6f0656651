"""Edge-transfer fusion metrics: Qabf (Xydeas & Petrovic 2000) and Nabf (artifacts). Conventions:
:mod:`moefusion.eval.metrics`."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .metric_utils import _check_conv, _three

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
