"""Stream mode: temporal state carried from one video frame to the next, in the model's own terms.

Fusing every frame as if it were the only one makes video shimmer: near-tied experts take turns,
the blend maps follow the sensors' noise, the detail gain lifts that noise, and the brightness
follows the visible camera's auto-exposure. The stream state holds what the next frame needs to
avoid that, and every update is motion-aware: where the sources changed the state follows the new
frame at once (a walking person leaves no trail, a pan does not smear), where they did not it is
smoothed.

State (tensors, batch first, all zero for "no previous frame"; ``initial_state`` makes them):

- ``scalars`` [B, 5]: valid (1 after the first frame), brightness offset, the IR, VIS and raw fused means;
- ``sources`` [B, 2, Hp/2, Wp/2]: the previous IR and VIS luminance at half resolution (motion);
- ``maps`` [B, C, Hd, Wd]: the decoder's output (the pyramid head's blend maps) at decoder resolution;
- ``detail`` [B, 1, Hp, Wp]: the temporally smoothed detail the head's gain lifts (pyramid head);
- ``route_<layer>`` [B, 2, E]: each MoE layer's smoothed gate logits and its chosen experts (one-hot).

Hp, Wp are the frame size padded to a multiple of 32 (as the model pads). Every op is a fixed
pooling, resize or arithmetic op with no data-dependent control flow, so the same functions run
in PyTorch and inside an exported ONNX / TensorRT graph, where the state is a graph input and output.

Update rules (per frame t):

- motion m: mean over 8x8 blocks of max(|IR_t - IR_t-1|, |VIS_t - VIS_t-1|) at half resolution
  (the 2x2 average keeps sensor noise below the thresholds), dilated by one block; follow factor
  beta = BETA_STATIC + (1 - BETA_STATIC) * clamp((m - MOTION_LOW) / (MOTION_HIGH - MOTION_LOW), 0, 1);
- a scene cut (both sources' mean change above CUT_MOTION), a first frame or a reset: beta = 1 and every
  smoothed quantity restarts from the new frame;
- blend maps and the lifted detail: s_t = s_t-1 + beta * (new_t - s_t-1);
- routing: logits_t = ROUTE_PAST * logits_t-1 + (1 - ROUTE_PAST) * new logits; the experts chosen
  last frame get ROUTE_MARGIN added before top-k (a switch needs a clear win), weights are the
  softmax of the smoothed logits of the chosen experts;
- detail gain g: fused = base + detail + (g - 1) * smoothed detail, so the gain lifts the structure
  that persists, not the noise of one frame (that is change neither camera made);
- brightness: the change of the raw fused frame's mean is held to what both cameras agree on
  (between 0 and the smaller of the two sources' mean changes when they change the same way, else 0);
  the rest goes into an offset that fades (BRIGHTNESS_DECAY per frame, about a second): a jump of
  one camera's exposure (or a routing switch) does not jump the picture, and the picture still
  settles where the model puts it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

BETA_STATIC = 0.25  # weight of the new frame where nothing moved
MOTION_LOW = 3.0 / 255  # block motion (unit range) below which a block counts as static
MOTION_HIGH = 8.0 / 255  # ... above which it follows the new frame completely
CUT_MOTION = 24.0 / 255  # mean change of each source in a scene cut (a new shot, a camera swap)
MOTION_BLOCK = 8  # motion is measured per MOTION_BLOCK x MOTION_BLOCK pixels (of the padded frame)
ROUTE_PAST = 0.8  # weight of the past in the gate logits' moving average
ROUTE_MARGIN = 0.5  # logit bonus of last frame's experts
BRIGHTNESS_DECAY = 0.95  # per frame: an offset fades to a third in about 20 frames
MOE_LAYERS = ("mole_fg", "mole_bg", "moge")
STATE_NAMES = ("scalars", "sources", "maps", "detail") + tuple(f"route_{n}" for n in MOE_LAYERS)


class StreamState(NamedTuple):
    scalars: torch.Tensor
    sources: torch.Tensor
    maps: torch.Tensor
    detail: torch.Tensor
    route_mole_fg: torch.Tensor
    route_mole_bg: torch.Tensor
    route_moge: torch.Tensor


def padded_size(h: int, w: int, stride: int = 32) -> tuple[int, int]:
    return (h + stride - 1) // stride * stride, (w + stride - 1) // stride * stride


def state_shapes(cfg, batch: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the state tensors of a model config for frames of h x w (unpadded)."""
    hp, wp = padded_size(h, w, cfg.pad_stride)
    s = cfg.map_stride
    return {
        "scalars": (batch, 5),
        "sources": (batch, 2, hp // 2, wp // 2),
        "maps": (batch, cfg.decoder_out, hp // s, wp // s),
        "detail": (batch, 1, hp, wp),
        "route_mole_fg": (batch, 2, cfg.mole_experts),
        "route_mole_bg": (batch, 2, cfg.mole_experts),
        "route_moge": (batch, 2, cfg.moge_experts),
    }


def initial_state(cfg, batch: int, h: int, w: int, device=None, dtype=torch.float32) -> StreamState:
    """The state before the first frame of a stream (all zeros: 'no previous frame')."""
    shapes = state_shapes(cfg, batch, h, w)
    return StreamState(*(torch.zeros(shapes[n], device=device, dtype=dtype) for n in STATE_NAMES))


def state_matches(state: StreamState, cfg, batch: int, h: int, w: int) -> bool:
    shapes = state_shapes(cfg, batch, h, w)
    return all(tuple(getattr(state, n).shape) == shapes[n] for n in STATE_NAMES)


def half_res(ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
    """[B, 2, Hp/2, Wp/2]: the padded sources' luminance averaged over 2x2."""
    return F.avg_pool2d(torch.cat([ir, vis], dim=1).float(), 2)


def follow_factor(sources: torch.Tensor, previous: torch.Tensor, scalars: torch.Tensor):
    """(beta [B, 1, Hp/16, Wp/16] in [BETA_STATIC, 1], keep [B, 1]): how much each block follows the
    new frame, and 1 where the past counts at all (0 on a first frame or a scene cut)."""
    per_source = (sources - previous).abs()
    change = per_source.amax(dim=1, keepdim=True)
    motion = F.avg_pool2d(change, MOTION_BLOCK)  # blocks of MOTION_BLOCK half-resolution pixels
    motion = F.max_pool2d(motion, 3, stride=1, padding=1)  # a moving edge's neighbour blocks follow too
    ramp = ((motion - MOTION_LOW) / (MOTION_HIGH - MOTION_LOW)).clamp(0.0, 1.0)
    beta = BETA_STATIC + (1.0 - BETA_STATIC) * ramp
    # A cut changes both pictures; one camera's exposure jump changes one of them.
    cut = (per_source.mean(dim=(2, 3)).amin(dim=1) > CUT_MOTION).to(scalars.dtype)[:, None]
    keep = scalars[:, :1] * (1.0 - cut)  # [B, 1]
    beta = 1.0 - keep[:, :, None, None] * (1.0 - beta)
    return beta, keep


def at_size(beta: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(beta, size=like.shape[-2:], mode="bilinear", align_corners=False).to(like.dtype)


def smooth(new: torch.Tensor, previous: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    b = at_size(beta, new)
    return previous.to(new.dtype) + b * (new - previous.to(new.dtype))


def route(logits: torch.Tensor, k: int, state: torch.Tensor, keep: torch.Tensor):
    """(indices [B, k], weights [B, k], new state [B, 2, E]) of one MoE layer's gate in a stream."""
    logits = logits.float()
    past = ROUTE_PAST * keep
    smoothed = past * state[:, 0] + (1.0 - past) * logits
    bonus = ROUTE_MARGIN * keep * state[:, 1]
    _, idx = (smoothed + bonus).topk(k, dim=1)
    weights = torch.softmax(smoothed.gather(1, idx), dim=1)
    chosen = torch.zeros_like(smoothed).scatter(1, idx, 1.0)
    return idx, weights, torch.stack([smoothed, chosen], dim=1)


def brightness(fused: torch.Tensor, ir: torch.Tensor, vis: torch.Tensor, scalars: torch.Tensor, keep: torch.Tensor):
    """(offset [B, 1, 1, 1] to add to the fused frame, new scalars [B, 5]); means over the frame."""
    mean = lambda x: x.float().mean(dim=(1, 2, 3))[:, None]  # noqa: E731
    raw, m_ir, m_vis = mean(fused), mean(ir), mean(vis)
    d_ir, d_vis, d_raw = m_ir - scalars[:, 2:3], m_vis - scalars[:, 3:4], raw - scalars[:, 4:5]
    agreed = torch.where(d_ir * d_vis > 0, torch.where(d_ir.abs() < d_vis.abs(), d_ir, d_vis), torch.zeros_like(d_ir))
    allowed = torch.minimum(torch.maximum(d_raw, torch.minimum(agreed, torch.zeros_like(agreed))),
                            torch.maximum(agreed, torch.zeros_like(agreed)))
    offset = keep * BRIGHTNESS_DECAY * (scalars[:, 1:2] + allowed - d_raw)
    new = torch.cat([torch.ones_like(raw), offset, m_ir, m_vis, raw], dim=1)
    return offset[:, :, None, None], new
