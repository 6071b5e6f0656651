"""Motion between successive video frames, measured on the two SOURCES (not on a fused image).

The temporal measures of :mod:`moefusion.eval.temporal` compare each fused frame with the previous
one warped onto it (the flow warping error of Lai et al., "Learning Blind Video Temporal
Consistency", ECCV 2018). The flow comes from the cameras, so that a fusion cannot make its own
flicker look like motion:

- OpenCV DIS optical flow (Kroeger et al. 2016), preset MEDIUM, on the 8-bit IR frames and on the
  8-bit visible luminance frames, both directions (t -> t-1 and t-1 -> t).
- Per pixel of frame t, the backward flow (t -> t-1) of the source whose own photometric residual
  |S_t(x) - S_{t-1}(x + w_S(x))|, averaged over a 5x5 box around x, is lower (ties: IR). A thermal
  camera sees motion where the visible one is dark or smoke-filled, and the other way round; the
  box keeps a single noisy pixel from choosing (a per-pixel argmin picks whichever flow happens to
  fit that pixel's noise).
- Occlusion: the forward-backward check of Sundaram et al. (ECCV 2010) with the constants of
  Ruder et al. (2016), also used by Lai et al.: with w the backward flow at x and w' the forward
  flow at x + w, a pixel is occluded when |w + w'|^2 > 0.01 (|w|^2 + |w'|^2) + 0.5 (pixels^2),
  computed for the chosen source's flows. Pixels whose match x + w falls outside frame t-1 are
  excluded too. ``valid`` is the rest: pixels visible in both frames.
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
FB_RELATIVE = 0.01  # forward-backward check: |w + w'|^2 > FB_RELATIVE (|w|^2 + |w'|^2) + FB_ABSOLUTE
FB_ABSOLUTE = 0.5
RESIDUAL_WINDOW = 5  # box (pixels) over which the two sources' photometric residuals are compared


def to_u8(img: np.ndarray) -> np.ndarray:
    """A 2-D grey image on the 0..255 scale as uint8 (rounded, clipped), as DIS needs it."""
    a = np.asarray(img)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D grey frame, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def dis_flow(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """DIS flow (MEDIUM) from ``src`` to ``dst``: src(x) ~ dst(x + flow(x)); (H, W, 2) float32, x then y."""
    dis = cv2.DISOpticalFlow_create(DIS_PRESET)
    return dis.calc(to_u8(src), to_u8(dst), None)


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``img`` sampled at x + flow(x) (bilinear, border replicated): the previous frame brought onto
    the current one when ``flow`` is the backward flow. float32, same channels as ``img``."""
    gx, gy = _grid(*flow.shape[:2])
    return cv2.remap(np.asarray(img, np.float32), gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def inside(flow: np.ndarray) -> np.ndarray:
    """Pixels whose match x + flow(x) lies inside the frame (bool (H, W))."""
    h, w = flow.shape[:2]
    gx, gy = _grid(h, w)
    x, y = gx + flow[..., 0], gy + flow[..., 1]
    return (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)


def consistent(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Forward-backward check: True where the round trip t -> t-1 -> t returns close to its start."""
    fw_at = warp(forward, backward)  # the forward flow at each pixel's match in frame t-1
    sq = lambda v: v[..., 0] * v[..., 0] + v[..., 1] * v[..., 1]
    round_trip = sq(backward + fw_at)
    bound = FB_RELATIVE * (sq(backward) + sq(fw_at)) + FB_ABSOLUTE
    return round_trip <= bound


def source_flow(ir_prev, ir, vis_prev, vis) -> tuple[np.ndarray, np.ndarray]:
    """Backward flow (frame t -> t-1) for the pair (IR, visible luminance), from both sources.

    All four frames: 2-D, the same size, 0..255 (uint8 or float). Returns ``(flow, valid)``:
    ``flow`` (H, W, 2) float32 such that frame_t(x) ~ frame_{t-1}(x + flow(x)), per pixel that of
    the source with the lower photometric residual (5x5 box mean); ``valid`` (H, W) bool, pixels visible in both
    frames (forward-backward consistent, match inside the frame). Warp a previous frame with
    :func:`warp` ``(prev, flow)``.
    """
    frames = [to_u8(x) for x in (ir_prev, ir, vis_prev, vis)]
    if len({f.shape for f in frames}) != 1:
        raise ValueError(f"source_flow needs four frames of one size, got {[f.shape for f in frames]}")
    flows, residuals, oks = [], [], []
    for prev, cur in ((frames[0], frames[1]), (frames[2], frames[3])):
        backward, forward = dis_flow(cur, prev), dis_flow(prev, cur)
        residual = np.abs(cur.astype(np.float32) - warp(prev, backward))
        residuals.append(cv2.blur(residual, (RESIDUAL_WINDOW, RESIDUAL_WINDOW)))
        flows.append(backward)
        oks.append(consistent(backward, forward) & inside(backward))
    use_ir = residuals[0] <= residuals[1]
    flow = np.where(use_ir[..., None], flows[0], flows[1])
    valid = np.where(use_ir, oks[0], oks[1])
    return flow, valid
