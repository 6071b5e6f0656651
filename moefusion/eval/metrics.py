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

This module is the registry (``METRICS``, ``resolve_names``, ``compute``) and re-exports every metric;
they live by kind in :mod:`~moefusion.eval.info_metrics` (EN, SD, SF, AG, MI, SCD, CC, PSNR, VIF),
:mod:`~moefusion.eval.edge_metrics` (Qabf, Nabf) and :mod:`~moefusion.eval.ssim_metrics` (SSIM,
MS-SSIM), on the helpers of :mod:`~moefusion.eval.metric_utils`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

from ..errors import UserError
from .edge_metrics import QABF_MAX, nabf, qabf
from .info_metrics import (
    VIF_MIN_SIDE,
    ag,
    cc,
    en,
    mi,
    mutual_information,
    psnr,
    scd,
    sd,
    sf,
    vif,
    vif_index,
)
from .metric_utils import CONVENTIONS, _check_conv, _three, to_gray255
from .ssim_metrics import MS_SSIM_WEIGHTS, ms_ssim, ms_ssim_index, ssim, ssim_index

__all__ = [
    "CONVENTIONS", "METRICS", "MS_SSIM_WEIGHTS", "QABF_MAX", "VIF_MIN_SIDE", "MetricInfo", "ag", "cc", "compute", "en",
    "mi", "ms_ssim", "ms_ssim_index", "mutual_information", "nabf", "psnr", "qabf", "resolve_names", "scd", "sd",
    "sf", "ssim", "ssim_index", "to_gray255", "vif", "vif_index",
]


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
