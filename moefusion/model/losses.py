"""Training losses as published (MoE-Fusion, ICCV 2023).

    total = 10 * L_grad + 1 * L_pixel + aux (MoLE 0.01, MoGE 0.02 balancing) + detection losses

- L_grad = mean |S(F) - max(S(VIS), S(IR))| with S(x) = |Sobel_x * x| + |Sobel_y * x| (zero padding).
- L_pixel = (sum_inside |F - max(VIS, IR)| + sum_outside |F - (VIS + IR) / 2|) / N, where
  "inside" is the union of the ground-truth boxes (pixel rows floor(y1)..ceil(y2)-1, columns
  likewise, clipped to the image) and N the number of pixels. Without boxes the whole image is
  background: the fused image is pulled to the mean of the sources and the gradient term
  supplies the detail.

Option (training config ``loss.signed_grad``, not published): the gradient term on signed Sobel
responses, see :func:`signed_gradient_loss`.
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


def box_mask(boxes_per_image, shape, device=None) -> torch.Tensor:
    """Union of xyxy pixel boxes per image -> [B, 1, H, W] float mask."""
    b, _, h, w = shape
    mask = torch.zeros(shape, device=device)
    for i, boxes in enumerate(boxes_per_image):
        for x1, y1, x2, y2 in (boxes.tolist() if boxes is not None else []):
            r0, r1 = max(0, math.floor(y1)), min(h, math.ceil(y2))
            c0, c1 = max(0, math.floor(x1)), min(w, math.ceil(x2))
            if r1 > r0 and c1 > c0:
                mask[i, :, r0:r1, c0:c1] = 1.0
    return mask


def pixel_loss(fused, vis, ir, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Box-masked L1: max of the sources inside boxes, their mean outside."""
    if mask is None:
        mask = torch.zeros_like(fused)
    inside = (fused - torch.maximum(vis, ir)).abs() * mask
    outside = (fused - (vis + ir) / 2).abs() * (1 - mask)
    return (inside + outside).mean()


def fusion_losses(fused, vis, ir, boxes_per_image=None, aux_loss=None, det_losses=None,
                  grad_weight: float = GRAD_WEIGHT, pixel_weight: float = PIXEL_WEIGHT,
                  signed_grad: bool = False) -> dict:
    """All loss terms (already weighted) and their sum under 'total'. ``signed_grad`` replaces the
    published gradient loss by :func:`signed_gradient_loss`."""
    mask = box_mask(boxes_per_image, fused.shape, fused.device) if boxes_per_image is not None else None
    grad = signed_gradient_loss if signed_grad else gradient_loss
    terms = {
        "grad": grad_weight * grad(fused, vis, ir),
        "pixel": pixel_weight * pixel_loss(fused, vis, ir, mask),
    }
    if aux_loss is not None:
        terms["balance"] = aux_loss
    if det_losses:
        terms["det"] = sum(det_losses.values())
    terms["total"] = sum(terms.values())
    return terms
