"""The CPU twins of the CUDA kernels (moefusion_host_*): the same kernel code run one simulated thread
block at a time on CPU tensors. Slow; for tests of the index math, tiling and reductions without a GPU.
Arguments and results as in moefusion.kernels.ops (CPU torch tensors instead of CUDA ones)."""
from __future__ import annotations

import ctypes

import torch

from . import _lib


def _cpu(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.device.type != "cpu":
        raise ValueError(f"{name}: the host twins take CPU tensors, got {t.device}")
    return t


def gate_workspace_bytes(batch: int, channels: int, grid_h: int, grid_w: int, num_experts: int) -> int:
    lib = _lib.load_library()
    n = ctypes.c_size_t()
    _lib.check(lib.moefusion_gate_workspace_size(batch, channels, grid_h, grid_w, num_experts, ctypes.byref(n)),
               "moefusion_gate_workspace_size")
    return n.value


def gate(features, w_gate, grid_h: int, grid_w: int, k: int, weights_dtype=torch.float32):
    lib = _lib.load_library()
    _cpu(features, "features")
    B = features.shape[0]
    idx = torch.full((B, k), -7, dtype=torch.int32)
    wts = torch.full((B, k), float("nan"), dtype=weights_dtype)
    nbytes = gate_workspace_bytes(B, features.shape[1], grid_h, grid_w, w_gate.shape[1])
    ws = torch.empty(nbytes + 256, dtype=torch.uint8)
    off = (-ws.data_ptr()) % 256
    ptr = ws.data_ptr() + off
    _lib.check(
        lib.moefusion_host_gate(
            _lib.desc(features), _lib.desc(w_gate), grid_h, grid_w, k, _lib.desc(idx), _lib.desc(wts),
            ctypes.c_void_p(ptr), nbytes, _lib.GATE_CLEAR_WORKSPACE,
        ),
        "moefusion_host_gate",
    )
    return idx, wts


def attention_split(x0, x1, att, fg=None, bg=None):
    lib = _lib.load_library()
    B, C, H, W = x0.shape
    if fg is None:
        fg = torch.full((B, 2 * C, H, W), float("nan"), dtype=x0.dtype)
    if bg is None:
        bg = torch.full((B, 2 * C, H, W), float("nan"), dtype=x0.dtype)
    _lib.check(
        lib.moefusion_host_attention_split(_lib.desc(x0), _lib.desc(x1), _lib.desc(att), _lib.desc(fg), _lib.desc(bg)),
        "moefusion_host_attention_split",
    )
    return fg, bg


def combine(expert_outputs, weights, out=None):
    lib = _lib.load_library()
    B, k, C, H, W = expert_outputs.shape
    if out is None:
        out = torch.full((B, C, H, W), float("nan"), dtype=expert_outputs.dtype)
    _lib.check(lib.moefusion_host_combine(_lib.desc(expert_outputs), _lib.desc(weights), _lib.desc(out)),
               "moefusion_host_combine")
    return out


def expert_conv3x3_combine(hidden, weight, bias, indices, weights, out=None):
    lib = _lib.load_library()
    B, k, _, H, W = hidden.shape
    if out is None:
        out = torch.full((B, weight.shape[1], H, W), float("nan"), dtype=hidden.dtype)
    _lib.check(
        lib.moefusion_host_expert_conv3x3_combine(
            _lib.desc(hidden), _lib.desc(weight), _lib.desc(bias), _lib.desc(indices), _lib.desc(weights),
            _lib.desc(out),
        ),
        "moefusion_host_expert_conv3x3_combine",
    )
    return out
