"""Temporal stability of fused video: does the fusion pump or flicker more than the sources do?

For a sequence of fused frames F_1..F_T (luminance, 0..255, in time order):

- ``change``: mean over t of mean |F_t - F_{t-1}| (grey levels per frame). Part of it is real motion
  and sensor noise, which every method passes on; compare methods on the same sequence.
- ``brightness_sd``: standard deviation over t of the frame mean (grey levels): pumping.
- ``change_excess``: mean over t of mean max(0, |F_t - F_{t-1}| - max(|IR_t - IR_{t-1}|,
  |VIS_t - VIS_{t-1}|)): change at pixels beyond what either source did there. A stable fusion of
  a static pixel stays static; a routing switch or an attention jump shows up here.

``moefusion-eval --temporal`` reports them per method (the pairs in natural id order are the
frames); the averaging baseline is the reference of a method with no temporal behaviour of its own.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..data.io import read_image
from ..data.pairs import pair_folders

TEMPORAL_METRICS = ("change", "brightness_sd", "change_excess")


class TemporalStats:
    """Accumulates the temporal metrics one frame at a time (no sequence kept in memory)."""

    def __init__(self):
        self._prev = None
        self._prev_src = None
        self._changes: list[float] = []
        self._excess: list[float] = []
        self._means: list[float] = []

    def add(self, fused: np.ndarray, ir: np.ndarray | None = None, vis: np.ndarray | None = None) -> None:
        f = np.asarray(fused, np.float64)
        self._means.append(float(f.mean()))
        src = None if ir is None or vis is None else (np.asarray(ir, np.float64), np.asarray(vis, np.float64))
        if self._prev is not None and self._prev.shape == f.shape:
            d = np.abs(f - self._prev)
            self._changes.append(float(d.mean()))
            if src is not None and self._prev_src is not None:
                allowed = np.maximum(np.abs(src[0] - self._prev_src[0]), np.abs(src[1] - self._prev_src[1]))
                self._excess.append(float(np.maximum(d - allowed, 0.0).mean()))
        self._prev, self._prev_src = f, src

    @property
    def frames(self) -> int:
        return len(self._means)

    def result(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "change": float(np.mean(self._changes)) if self._changes else nan,
            "brightness_sd": float(np.std(self._means)) if len(self._means) > 1 else nan,
            "change_excess": float(np.mean(self._excess)) if self._excess else nan,
        }


def temporal_metrics(frames, irs=None, viss=None) -> dict[str, float]:
    """The metrics of a whole sequence (lists of 2-D arrays, 0..255)."""
    stats = TemporalStats()
    for i, f in enumerate(frames):
        stats.add(f, None if irs is None else irs[i], None if viss is None else viss[i])
    return stats.result()


def sequence_frames(root: str | Path):
    """(IR, VIS) frames of a ROOT/ir + ROOT/vis image sequence, in natural id order."""
    root = Path(root)
    for pair in pair_folders(root / "ir", root / "vis"):
        yield read_image(pair.ir), read_image(pair.vis)


def clip_frames(ir_video: str | Path, vis_video: str | Path, count: int):
    """The first ``count`` (IR gray, VIS BGR) frames of two synchronised video files."""
    caps = [cv2.VideoCapture(str(p)) for p in (ir_video, vis_video)]
    try:
        for n in range(count):
            (ok_ir, ir), (ok_vis, vis) = (c.read() for c in caps)
            if not (ok_ir and ok_vis):
                raise ValueError(f"{ir_video if not ok_ir else vis_video}: no frame {n} (asked for {count})")
            yield cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY), vis
    finally:
        for c in caps:
            c.release()
