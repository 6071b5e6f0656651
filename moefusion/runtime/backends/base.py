"""The backend interface: ``infer(ir_unit, vis_y) -> (fused_y, attention)`` on float32 ``[B, 1, H, W]``
arrays in [0, 1], plus size checks, warm-up and a description.

Stream mode (model/stream.py): a backend whose model carries temporal state sets ``stream_capable``;
after ``set_stream_mode(True)`` every ``infer`` call is the next frame of one stream (the backend
keeps the state, starting afresh when the frame size changes) until ``reset_stream()``."""
from __future__ import annotations

import time

import numpy as np

from ...errors import UserError

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "average")
BACKEND_ALIASES = {"onnx": "onnxruntime", "ort": "onnxruntime", "trt": "tensorrt", "pytorch": "torch"}
ENGINE_EXTS = (".engine", ".plan", ".trt")


def backend_name(text: str) -> str:
    """A backend's name as users type it: the names of BACKENDS, and the aliases (onnx for
    onnxruntime, trt for tensorrt, ...), any case."""
    name = str(text).strip().lower()
    return BACKEND_ALIASES.get(name, name)


class Backend:
    """Interface. Subclasses set ``name`` and implement ``infer``."""

    name = "base"
    path: str | None = None
    # ((min H, min W), (max H, max W)) the model accepts; None: any size. Fixed-size exports: min == max.
    size_range: tuple[tuple[int, int], tuple[int, int]] | None = None
    stream_capable = False  # the model can carry temporal state from frame to frame
    stream_mode = False  # infer() calls are successive frames of one stream
    stream_unavailable = "this backend has no model state"  # why not, when not stream_capable

    def set_stream_mode(self, on: bool) -> bool:
        """Turn stream mode on or off; returns whether it is on (off when the model cannot carry
        state: ``stream_unavailable`` says why)."""
        self.stream_mode = bool(on) and self.stream_capable
        self.reset_stream()
        return self.stream_mode

    def reset_stream(self) -> None:
        """Forget the temporal state: the next frame starts a new stream (new source, restart, seek)."""

    def infer(self, ir_unit: np.ndarray, vis_y: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def check_size(self, height: int, width: int) -> None:
        """A UserError naming the model, its sizes and the fix when it cannot take height x width frames."""
        if self.size_range is None:
            return
        (h0, w0), (h1, w1) = self.size_range
        if h0 <= height <= h1 and w0 <= width <= w1:
            return
        built = f"{w0}x{h0}" if (h0, w0) == (h1, w1) else f"{w0}x{h0} to {w1}x{h1}"
        raise UserError(f"{self.path}: this model takes {built} frames, not {width}x{height}; export it again "
                        f"with --imgsz {height} {width} (or --dynamic)")

    def warmup(self, height: int, width: int, iters: int = 2, batch: int = 1) -> float:
        """Run a few times on a (B, 1, H, W) input (builds graphs, autotunes); returns ms per call."""
        rng = np.random.default_rng(0)
        ir = rng.random((batch, 1, height, width), dtype=np.float32)
        vis = rng.random((batch, 1, height, width), dtype=np.float32)
        t0 = time.perf_counter()
        for _ in range(max(1, iters)):
            self.infer(ir, vis)
        return (time.perf_counter() - t0) * 1000 / max(1, iters)

    def describe(self) -> str:
        return self.name

    def close(self) -> None:
        pass


def _check_inputs(ir_unit, vis_y):
    if ir_unit.shape != vis_y.shape or ir_unit.ndim != 4 or ir_unit.shape[1] != 1:
        raise ValueError(f"backend inputs must both be [B,1,H,W]; got {ir_unit.shape} and {vis_y.shape}")

