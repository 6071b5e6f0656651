"""Pyramid output head: the decoder predicts how to blend the sources' Laplacian pyramids.

With ``output_head: pixel`` (the paper's) MoGE's last conv outputs the fused pixel. With
``output_head: pyramid`` (``edge``) it outputs ``levels + 1`` maps per pixel and the fused image is
a Laplacian-pyramid blend of the two sources driven by them:

- map 0: the base layer's IR weight (a logit; 0 = the sources' mean, as a classical pyramid), plus
  ``attention_gain`` times the detection-driven attention (a preset field, 4 in ``edge``): where the
  attention finds a target the base leans to IR, keeping its thermal brightness, unless the decoder
  overrules it;
- maps 1..levels: an offset to the logit of each detail level's IR weight, added to a fixed
  local-energy prior ``sharpness * (E_ir - E_vis) / (E_ir + E_vis + eps)`` (E = |detail| averaged
  over 3x3: the stronger source wins, by region rather than by coefficient).

With ``pyramid_learned_levels: n`` below ``levels`` the decoder outputs maps 0..n only: the n
finest detail levels get its offsets, the coarser ones the prior alone.

Maps are pooled to each level's resolution. The blended detail is multiplied by ``detail_gain``
(a preset field): choosing by region instead of by coefficient keeps edges clean (Qabf) but drops
the per-coefficient maxima, so the image is softer than a classical pyramid's unless the detail
is lifted a little (docs/model.md gives the measurements).

With all maps zero the head is a classical fusion (mean base, energy-selected detail), so a
decoder whose last conv starts at zero starts there and learns where to depart from it: which
source's brightness and detail to keep where. A pixel head must learn to redraw detail it can only
copy from the features; this head cannot lose it, and the network's capacity goes to the decisions.

Shapes: inputs [B, 1, H, W] with H and W multiples of 2**levels (MoEFusion pads to 32). Every op is
a fixed conv, pooling or a x2 resize, so the head exports to ONNX with dynamic sizes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
ENERGY_EPS = 1e-3  # in [0, 1] units (a quarter of a grey level): flat regions tie instead of flipping


def head_channels(levels: int) -> int:
    """Maps the decoder outputs for a pyramid head whose ``levels`` finest detail levels it steers
    (the base's and one per level)."""
    return levels + 1


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur (replicated borders, valid at any size), every second pixel."""
    k = (_BINOMIAL[:, None] * _BINOMIAL[None, :]).to(x.device, x.dtype)[None, None]
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), k, stride=2)


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[detail_0 (full size), ..., detail_{levels-1}, base]; ``reconstruct`` inverts it exactly."""
    out = []
    for _ in range(levels):
        down = pyr_down(x)
        out.append(x - pyr_up(down))
        x = down
    out.append(x)
    return out


def reconstruct(pyramid: list[torch.Tensor]) -> torch.Tensor:
    x = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        x = pyr_up(x) + detail
    return x


def _at_level(m: torch.Tensor, level: int) -> torch.Tensor:
    return F.avg_pool2d(m, 2 ** level) if level else m


def _energy(d: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(d.abs(), 3, stride=1, padding=1, count_include_pad=False)


def detail_prior(d_ir: torch.Tensor, d_vis: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Logit of the IR weight of one detail level from the sources' local energy, in [-s, s]."""
    e_ir, e_vis = _energy(d_ir), _energy(d_vis)
    return sharpness * (e_ir - e_vis) / (e_ir + e_vis + ENERGY_EPS)


def _blend(ir, vis, maps, levels, sharpness, attention, attention_gain):
    """The blended pyramid: (base level, [detail level 0 (full size), ..., levels-1]). ``maps`` holds
    the base logit and an offset for each of the finest ``maps.shape[1] - 1`` detail levels."""
    steered = maps.shape[1] - 1
    if not 0 <= steered <= levels:
        raise ValueError(f"a pyramid head of {levels} levels takes 1 to {head_channels(levels)} maps, "
                         f"got {maps.shape[1]}")
    p_ir, p_vis = laplacian_pyramid(ir, levels), laplacian_pyramid(vis, levels)
    maps = maps.to(ir.dtype)
    base_logit = maps[:, :1]
    if attention_gain and attention is not None:
        base_logit = base_logit + attention_gain * attention.to(ir.dtype)
    w_base = torch.sigmoid(_at_level(base_logit, levels))
    base = w_base * p_ir[-1] + (1 - w_base) * p_vis[-1]
    details = []
    for level in range(levels):
        d_ir, d_vis = p_ir[level], p_vis[level]
        logit = detail_prior(d_ir, d_vis, sharpness)
        if level < steered:
            logit = logit + _at_level(maps[:, 1 + level : 2 + level], level)
        w = torch.sigmoid(logit)
        details.append(w * d_ir + (1 - w) * d_vis)
    return base, details


def pyramid_fuse(ir: torch.Tensor, vis: torch.Tensor, maps: torch.Tensor, levels: int,
                 sharpness: float, detail_gain: float = 1.0, attention: torch.Tensor | None = None,
                 attention_gain: float = 0.0) -> torch.Tensor:
    """Fused [B, 1, H, W] from the sources and the decoder's maps [B, levels + 1, H, W].

    attention [B, 1, H, W] in [0, 1] with ``attention_gain`` g: the base layer's IR-weight logit gets
    ``g * attention`` (targets keep their thermal brightness unless the decoder overrules it).
    """
    x, details = _blend(ir, vis, maps, levels, sharpness, attention, attention_gain)
    for detail in reversed(details):
        x = pyr_up(x) + detail_gain * detail
    return x


def pyramid_parts(ir: torch.Tensor, vis: torch.Tensor, maps: torch.Tensor, levels: int, sharpness: float,
                  attention: torch.Tensor | None = None, attention_gain: float = 0.0):
    """(base image, detail image), both [B, 1, H, W]: ``pyramid_fuse(..., detail_gain=g)`` equals
    base + g * detail (the reconstruction is linear). The stream mode lifts a smoothed detail."""
    base, details = _blend(ir, vis, maps, levels, sharpness, attention, attention_gain)
    detail = torch.zeros_like(base)
    for d in reversed(details):
        base, detail = pyr_up(base), pyr_up(detail) + d
    return base, detail


RANGE_WINDOW = 5  # the local range a fused pixel is held to: both sources over 5x5


def local_range(ir: torch.Tensor, vis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lowest, highest) value of both sources over each pixel's 5x5 window, [B, 1, H, W] each."""
    pad = RANGE_WINDOW // 2
    hi = F.max_pool2d(torch.maximum(ir, vis), RANGE_WINDOW, stride=1, padding=pad)
    lo = -F.max_pool2d(-torch.minimum(ir, vis), RANGE_WINDOW, stride=1, padding=pad)
    return lo, hi


def soft_range_limit(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, margin: float) -> torch.Tensor:
    """``fused`` bent into the sources' local range: inside [lo, hi] unchanged, beyond it
    ``hi + margin * tanh((x - hi) / margin)`` (and the same below ``lo``), so no pixel ends more than
    ``margin`` outside what either camera holds there, and the bend is smooth (gradients flow)."""
    if margin <= 0:
        return fused
    lo, hi = local_range(ir.to(fused.dtype), vis.to(fused.dtype))
    above = hi + margin * torch.tanh((fused - hi) / margin)
    below = lo + margin * torch.tanh((fused - lo) / margin)
    return torch.where(fused > hi, above, torch.where(fused < lo, below, fused))
