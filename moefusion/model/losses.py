"""Training losses as published (MoE-Fusion, ICCV 2023).

    total = 10 * L_grad + 1 * L_pixel + aux (MoLE 0.01, MoGE 0.02 balancing) + detection losses

- L_grad = mean |S(F) - max(S(VIS), S(IR))| with S(x) = |Sobel_x * x| + |Sobel_y * x| (zero padding).
- L_pixel = (sum_inside |F - max(VIS, IR)| + sum_outside |F - (VIS + IR) / 2|) / N, where
  "inside" is the union of the ground-truth boxes (pixel rows floor(y1)..ceil(y2)-1, columns
  likewise, clipped to the image; ``loss.box_rounding: int``: int(y1)..int(y2)-1, upstream's) and N
  the number of pixels. Without boxes the whole image is background: the fused image is pulled to
  the mean of the sources and the gradient term supplies the detail.

Options of the training config (not published; ``edge.yaml`` uses them, ``paper.yaml`` does not):
- ``loss.signed_grad``: the gradient term on signed Sobel responses, see :func:`signed_gradient_loss`.
- ``loss.background_max``: the pixel target outside the targets moves from the sources' mean
  (0, published) towards their max (1, SeAFusion / CDDFuse's intensity term: keeps the contrast of
  whichever source has it). Below 1, targets are still brighter than the background target, so
  the attention decides something.
- ``loss.background_max_weak``: the same, on frames where the visible camera sees little (dark or
  low contrast: night, smoke, fog; :func:`visible_weakness`), blended per frame from
  ``background_max``: a scene-dependent target, so the best fusion differs between day and night
  and the gates have something to route by.
- ``loss.ssim``: weight of 1 - (SSIM(F, VIS) + SSIM(F, IR)) / 2 (SwinFusion's structure term).
- ``loss.pseudo_targets``: the "inside" mask is the union of the boxes and a thermal-saliency mask
  (:func:`thermal_saliency`: warm objects in IR, on every frame, labelled or not).
- ``loss.attention``: weight of a loss that teaches the level-0 attention that mask directly
  (:func:`attention_loss`), so it finds targets without pretrained detectors.
- ``loss.pixel_levels``: the pixel term on the base layer only (after that many pyramid reductions).
- ``loss.detail``: weight of :func:`pyramid_detail_loss` (the detail of the stronger source at
  several scales, as a Laplacian pyramid fusion keeps it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GRAD_WEIGHT = 10.0
PIXEL_WEIGHT = 1.0

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_SOBEL_Y = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def sobel(x: torch.Tensor) -> torch.Tensor:
    """(Gx, Gy) of [B, 1, H, W] images (zero padding) -> [B, 2, H, W]."""
    k = torch.stack([_SOBEL_X, _SOBEL_Y])[:, None].to(x.device, x.dtype)
    return F.conv2d(x, k, padding=1)


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|Gx| + |Gy| of [B, 1, H, W] images (zero padding)."""
    return sobel(x).abs().sum(dim=1, keepdim=True)


def gradient_loss(fused, vis, ir) -> torch.Tensor:
    target = torch.maximum(sobel_magnitude(vis), sobel_magnitude(ir))
    return (sobel_magnitude(fused) - target).abs().mean()


def signed_gradient_loss(fused, vis, ir) -> torch.Tensor:
    """mean |G(F) - G(S)|_1 with S, per pixel, the source of larger |Gx| + |Gy|.

    The published loss compares magnitudes only, so an edge may come out with either sign: a
    small model can learn a warm pedestrian as a dark silhouette. Matching the signed Sobel
    responses of the stronger source keeps its polarity (same value where the signs agree).
    """
    g_vis, g_ir = sobel(vis), sobel(ir)
    ir_stronger = g_ir.abs().sum(1, keepdim=True) > g_vis.abs().sum(1, keepdim=True)
    target = torch.where(ir_stronger, g_ir, g_vis)
    return (sobel(fused) - target).abs().sum(1, keepdim=True).mean()


_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    """cv2.pyrDown: 5x5 binomial blur (reflect-101 borders), every second pixel."""
    k = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(x.device, x.dtype)[None, None]
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, stride=2)


def _pyr_detail(x: torch.Tensor, reduced: torch.Tensor) -> torch.Tensor:
    """One Laplacian level: ``x`` minus its reduction brought back to its size."""
    return x - F.interpolate(reduced, size=x.shape[-2:], mode="bilinear", align_corners=False)


def pyramid_detail_loss(fused, vis, ir, levels: int = 3) -> torch.Tensor:
    """sum over Laplacian levels l of mean |L_l(F) - T_l|, T_l per pixel the level-l detail of the
    source with the larger magnitude there.

    The 3x3 gradient term sees only the finest scale; this asks for the stronger source's detail at
    ``levels`` scales (1, 2, 4 px), which is what a Laplacian pyramid with max-abs selection keeps and
    what sharpness (SF, AG) and edge transfer (Qabf) reward.
    """
    total = fused.new_zeros(())
    f, v, i = fused, vis, ir
    for _ in range(levels):
        if min(f.shape[-2:]) < 8:
            break
        fd, vd, idn = _pyr_down(f), _pyr_down(v), _pyr_down(i)
        lf, lv, li = _pyr_detail(f, fd), _pyr_detail(v, vd), _pyr_detail(i, idn)
        target = torch.where(li.abs() > lv.abs(), li, lv)
        total = total + (lf - target).abs().mean()
        f, v, i = fd, vd, idn
    return total


# How box_mask turns a box's fractional pixel coordinates into rows and columns: ``outward`` (rows
# floor(y1)..ceil(y2)-1: every pixel the box touches is inside) or ``int`` (rows int(y1)..int(y2)-1,
# upstream's DetcropPixelLoss, fusion_loss.py:83-108: a fractional far edge loses its last pixel).
BOX_ROUNDINGS = ("outward", "int")


def box_mask(boxes_per_image, shape, device=None, rounding: str = "outward") -> torch.Tensor:
    """Union of xyxy pixel boxes per image -> [B, 1, H, W] float mask (``rounding``: BOX_ROUNDINGS)."""
    if rounding not in BOX_ROUNDINGS:
        raise ValueError(f"box rounding {rounding!r}; choose from {', '.join(BOX_ROUNDINGS)}")
    start, end = (math.floor, math.ceil) if rounding == "outward" else (int, int)
    b, _, h, w = shape
    mask = torch.zeros(shape, device=device)
    for i, boxes in enumerate(boxes_per_image):
        for x1, y1, x2, y2 in (boxes.tolist() if boxes is not None else []):
            r0, r1 = max(0, start(y1)), min(h, end(y2))
            c0, c1 = max(0, start(x1)), min(w, end(x2))
            if r1 > r0 and c1 > c0:
                mask[i, :, r0:r1, c0:c1] = 1.0
    return mask


def pixel_loss(fused, vis, ir, mask: torch.Tensor | None = None, background_max: float = 0.0,
               levels: int = 0) -> torch.Tensor:
    """Masked L1: max of the sources inside the mask; outside, their mean moved ``background_max``
    of the way to their max (0: the published mean).

    ``levels`` > 0 compares the fused image and that target after ``levels`` pyramid reductions
    (cv2.pyrDown), i.e. only their base layers: at full resolution the mean pulls the detail of the
    stronger source to half its amplitude, against the gradient and detail terms."""
    if mask is None:
        mask = torch.zeros_like(fused)
    high = torch.maximum(vis, ir)
    mean = (vis + ir) / 2
    low = mean + background_max * (high - mean) if isinstance(background_max, torch.Tensor) or background_max else mean
    if not levels:
        inside = (fused - high).abs() * mask
        outside = (fused - low).abs() * (1 - mask)
        return (inside + outside).mean()
    diff = fused - (mask * high + (1 - mask) * low)
    for _ in range(levels):
        if min(diff.shape[-2:]) < 8:
            break
        diff = _pyr_down(diff)
    return diff.abs().mean()


# The visible camera "sees little" when its frame is dark (mean below VIS_DARK of full scale) or flat
# (standard deviation below VIS_FLAT): MSRS/LLVIP night frames have means of 0.02-0.15, day 0.3-0.5.
VIS_DARK = 0.25
VIS_FLAT = 0.06


def visible_weakness(vis: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] visible luminance -> [B, 1, 1, 1] in [0, 1]: 0 for a bright, contrasted frame,
    1 for a black or uniform one (night, smoke)."""
    v = vis.float()
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    std = v.std(dim=(1, 2, 3), keepdim=True)
    return 1 - (mean / VIS_DARK).clamp(0, 1) * (std / VIS_FLAT).clamp(0, 1)


# Thermal saliency: a pixel is part of a warm object when it is this much (in [0, 1] units) above
# the mean of a window of SALIENCY_WINDOW x the shorter image side around it, and above
# SALIENCY_FLOOR; the mask is opened (3x3 erosion, then SALIENCY_GROW px dilation).
SALIENCY_DELTA = 0.08
SALIENCY_WINDOW = 0.1
SALIENCY_FLOOR = 0.3
SALIENCY_GROW = 9


@torch.no_grad()
def thermal_saliency(ir: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] IR in [0, 1] -> {0, 1} mask of warm objects (people, engines, animals).

    Self-supervised targets for frames without boxes: what is warmer than its surroundings is
    exactly what fusion must keep. Precise (few false pixels on MSRS's IR person boxes), not
    complete: it marks the warm core of a target, the boxes mark all of it.
    """
    k = max(15, int(round(min(ir.shape[-2:]) * SALIENCY_WINDOW))) | 1
    local = F.avg_pool2d(F.pad(ir.float(), (k // 2,) * 4, mode="replicate"), k, stride=1)
    m = ((ir - local > SALIENCY_DELTA) & (ir > SALIENCY_FLOOR)).float()
    m = -F.max_pool2d(-m, 3, 1, 1)
    return F.max_pool2d(m, SALIENCY_GROW, 1, SALIENCY_GROW // 2)


def target_mask(shape, device, boxes_per_image=None, ir: torch.Tensor | None = None,
                rounding: str = "outward") -> torch.Tensor | None:
    """Union of the boxes (if any; ``rounding`` as box_mask) and, when ``ir`` is given, its thermal
    saliency; None if neither."""
    mask = box_mask(boxes_per_image, shape, device, rounding) if boxes_per_image is not None else None
    if ir is not None:
        sal = thermal_saliency(ir)
        mask = sal if mask is None else torch.maximum(mask, sal)
    return mask


def attention_loss(maps, mask: torch.Tensor) -> torch.Tensor:
    """Teach level-0 attention maps ``(a_vis, a_ir)`` (stride 4) the target mask (full size).

    Class-balanced BCE (targets cover a few percent of a frame) on max(a_vis, a_ir), the map the
    fusion uses, plus a soft Dice term so thin targets are not lost to the background.
    """
    att = torch.maximum(*maps).float().clamp(1e-6, 1 - 1e-6)
    target = F.adaptive_avg_pool2d(mask.float(), att.shape[-2:])
    pos = target.mean(dim=(1, 2, 3), keepdim=True).clamp(0.01, 0.99)
    weight = target * (0.5 / pos) + (1 - target) * (0.5 / (1 - pos))
    bce = F.binary_cross_entropy(att, target, weight=weight)
    inter = (att * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (att.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + dice.mean()


def _gauss_window(size: int = 11, sigma: float = 1.5, device=None, dtype=None) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of [B, 1, H, W] images in [0, 1] (Gaussian 11x11, sigma 1.5, as Wang et al.)."""
    w = _gauss_window(device=a.device, dtype=a.dtype)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    var_a = F.conv2d(a * a, w) - mu_a**2
    var_b = F.conv2d(b * b, w) - mu_b**2
    cov = F.conv2d(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def expert_choice_loss(fused: torch.Tensor, others: dict, margin: float) -> torch.Tensor:
    """Mean over MoE layers and samples of relu(margin - mean |other - fused|): the image a layer's
    unchosen experts make (``FusionOutput.forced``) must differ from the chosen experts' by at least
    ``margin`` (0..1 units), so that which experts a gate picks matters. The chosen image is the
    reference, detached: the term moves the experts that were not chosen away from what the chosen
    ones make of this input, not the chosen ones away from their target."""
    ref = fused.detach().clamp(0, 1)
    gaps = [F.relu(margin - (o.float().clamp(0, 1) - ref).abs().mean(dim=(1, 2, 3))) for o in others.values()]
    return torch.stack(gaps).mean()


def fusion_losses(fused, vis, ir, boxes_per_image=None, aux_loss=None, det_losses=None,
                  grad_weight: float = GRAD_WEIGHT, pixel_weight: float = PIXEL_WEIGHT,
                  signed_grad: bool = False, background_max: float = 0.0, ssim_weight: float = 0.0,
                  mask: torch.Tensor | None = None, attention_maps=None, attention_weight: float = 0.0,
                  detail_weight: float = 0.0, pixel_levels: int = 0, background_max_weak: float | None = None,
                  box_rounding: str = "outward", forced: dict | None = None, expert_weight: float = 0.0,
                  expert_margin: float = 0.0) -> dict:
    """All loss terms (already weighted) and their sum under 'total'. ``signed_grad`` replaces the
    published gradient loss by :func:`signed_gradient_loss`; ``mask`` (default: the boxes, rasterised
    with ``box_rounding``) is the pixel loss's "inside" and the attention loss's target; ``forced``
    (the unchosen experts' images) with ``expert_weight`` adds :func:`expert_choice_loss`."""
    for name, value in (("background_max", background_max), ("background_max_weak", background_max_weak)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"loss.{name}={value!r} must be in [0, 1]")
    if background_max_weak is not None and background_max_weak != background_max:
        background_max = background_max + (background_max_weak - background_max) * visible_weakness(vis)
    if mask is None and boxes_per_image is not None:
        mask = box_mask(boxes_per_image, fused.shape, fused.device, box_rounding)
    grad = signed_gradient_loss if signed_grad else gradient_loss
    terms = {
        "grad": grad_weight * grad(fused, vis, ir),
        "pixel": pixel_weight * pixel_loss(fused, vis, ir, mask, background_max, pixel_levels),
    }
    if detail_weight:
        terms["detail"] = detail_weight * pyramid_detail_loss(fused, vis, ir)
    if ssim_weight:
        terms["ssim"] = ssim_weight * (1 - (ssim(fused, vis) + ssim(fused, ir)) / 2)
    if attention_weight and attention_maps is not None and mask is not None:
        terms["attention"] = attention_weight * attention_loss(attention_maps, mask)
    if expert_weight and forced:
        terms["experts"] = expert_weight * expert_choice_loss(fused, forced, expert_margin)
    if aux_loss is not None:
        terms["balance"] = aux_loss
    if det_losses:
        terms["det"] = sum(det_losses.values())
    terms["total"] = sum(terms.values())
    return terms
