"""PyTorch custom ops over the CUDA kernels: torch.ops.moefusion.{gate, combine, attention_split,
expert_conv3x3_combine}.

Each op runs the CUDA kernel for CUDA tensors (on the current stream, one launch, no host sync) and the
PyTorch reference (moefusion.kernels.reference) for CPU tensors, so graphs that contain them still run and
export on the CPU. Fake (meta) implementations give torch.compile and torch.export the output shapes,
dtypes and strides. Inference only: no autograd formulas.

Arguments (see kernels/README.md for the ONNX nodes these map to):
    gate(features [B,C,H,W], w_gate [C*gh*gw, E], grid_h, grid_w, k) -> (indices int32 [B,k], weights f32 [B,k])
    combine(expert_outputs [B,k,C,H,W], weights [B,k]) -> [B,C,H,W]
    attention_split(x0 [B,C,H,W], x1 [B,C,H,W], att [B,1,H,W]) -> (fg [B,2C,H,W], bg [B,2C,H,W])
    expert_conv3x3_combine(hidden [B,k,Cin,H,W], weight [E,Cout,Cin,3,3], bias [E,Cout]?, indices [B,k],
                           weights [B,k]) -> [B,Cout,H,W]
Outputs are channels-last when the (per-slot) input is, NCHW-contiguous otherwise.
"""
# No `from __future__ import annotations`: torch.library infers the op schemas from real annotations.
import ctypes
import threading

import torch
from torch import Tensor

from . import _lib, reference

__all__ = ["gate", "combine", "attention_split", "expert_conv3x3_combine", "cuda_ready", "CALLS"]

# Kernel launches requested through the ops (eager calls and graph captures; not graph replays).
CALLS = {"gate": 0, "combine": 0, "attention_split": 0, "expert_conv3x3_combine": 0}


def cuda_ready() -> bool:
    """True when the ops would run the CUDA kernels here: a CUDA device and a loadable library."""
    return torch.cuda.is_available() and _lib.available()


# ----------------------------------------------------------------------------- helpers
def _channels_last(t4: Tensor) -> bool:
    """Channels are the innermost dimension of this 4-D (view of a) tensor."""
    return t4.dim() == 4 and t4.shape[1] > 1 and t4.stride(1) == 1 and (t4.shape[3] == 1 or t4.stride(3) != 1)


def _empty_like_layout(like4: Tensor, shape, dtype=None) -> Tensor:
    fmt = torch.channels_last if _channels_last(like4) else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or like4.dtype, device=like4.device, memory_format=fmt)


def _stream(t: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(torch.cuda.current_stream(t.device).cuda_stream)


class _DeviceGuard:
    """torch.cuda.device(t.device) only when it is not already current (cheap on one GPU)."""

    def __init__(self, t: Tensor):
        self.ctx = None if t.device.index in (None, torch.cuda.current_device()) else torch.cuda.device(t.device)

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def _check_cuda(name: str, *tensors: Tensor | None) -> None:
    dev = None
    for t in tensors:
        if t is None:
            continue
        if t.device.type != "cuda":
            raise ValueError(f"moefusion::{name}: all tensors must be on one CUDA device, got {t.device}")
        if dev is None:
            dev = t.device
        elif t.device != dev:
            raise ValueError(f"moefusion::{name}: tensors on {dev} and {t.device}")


# The gate's workspace: ticket counters that every launch leaves at zero, so a buffer zeroed once can be
# reused by later launches on the same stream. During CUDA-graph capture a fresh buffer is taken from the
# graph's pool and cleared inside the graph (one memset node) instead.
_ws_lock = threading.Lock()
_ws_cache: dict[tuple[int, int], Tensor] = {}


def _gate_workspace(device: torch.device, stream: int, nbytes: int) -> tuple[Tensor, int]:
    if torch.cuda.is_current_stream_capturing():
        return torch.empty(nbytes + 256, dtype=torch.uint8, device=device), _lib.GATE_CLEAR_WORKSPACE
    key = (device.index if device.index is not None else torch.cuda.current_device(), stream)
    with _ws_lock:
        ws = _ws_cache.get(key)
        if ws is None or ws.numel() < nbytes + 256:
            ws = torch.zeros(max(nbytes, 1 << 16) + 256, dtype=torch.uint8, device=device)
            _ws_cache[key] = ws
    return ws, 0


def _aligned_ptr(ws: Tensor) -> int:
    ptr = ws.data_ptr()
    return ptr + (-ptr) % 256


# ----------------------------------------------------------------------------- gate
@torch.library.custom_op("moefusion::gate", mutates_args=())
def gate(features: Tensor, w_gate: Tensor, grid_h: int, grid_w: int, k: int) -> tuple[Tensor, Tensor]:
    if features.device.type != "cuda":
        return reference.gate(features, w_gate, grid_h, grid_w, k)
    CALLS["gate"] += 1
    _check_cuda("gate", features, w_gate)
    lib = _lib.load_library()
    B, C = features.shape[:2]
    E = w_gate.shape[1]
    w_gate = w_gate if w_gate.is_contiguous() else w_gate.contiguous()
    idx = torch.empty((B, k), dtype=torch.int32, device=features.device)
    wts = torch.empty((B, k), dtype=torch.float32, device=features.device)
    nbytes = ctypes.c_size_t()
    _lib.check(lib.moefusion_gate_workspace_size(B, C, grid_h, grid_w, E, ctypes.byref(nbytes)),
               "moefusion::gate")
    with _DeviceGuard(features):
        stream = _stream(features)
        ws, flags = _gate_workspace(features.device, stream.value or 0, nbytes.value)
        _lib.check(
            lib.moefusion_gate(
                _lib.desc(features), _lib.desc(w_gate), grid_h, grid_w, k, _lib.desc(idx), _lib.desc(wts),
                ctypes.c_void_p(_aligned_ptr(ws)), nbytes.value, flags, stream,
            ),
            "moefusion::gate",
        )
    return idx, wts


@gate.register_fake
def _gate_fake(features, w_gate, grid_h, grid_w, k):
    B = features.shape[0]
    return (
        features.new_empty((B, k), dtype=torch.int32),
        features.new_empty((B, k), dtype=torch.float32),
    )


# ----------------------------------------------------------------------------- combine
@torch.library.custom_op("moefusion::combine", mutates_args=())
def combine(expert_outputs: Tensor, weights: Tensor) -> Tensor:
    if expert_outputs.device.type != "cuda":
        return reference.combine(expert_outputs, weights).contiguous(memory_format=_fmt(expert_outputs[:, 0]))
    CALLS["combine"] += 1
    _check_cuda("combine", expert_outputs, weights)
    lib = _lib.load_library()
    B, k, C, H, W = expert_outputs.shape
    out = _empty_like_layout(expert_outputs[:, 0], (B, C, H, W))
    with _DeviceGuard(expert_outputs):
        _lib.check(
            lib.moefusion_combine(_lib.desc(expert_outputs), _lib.desc(weights), _lib.desc(out),
                                  _stream(expert_outputs)),
            "moefusion::combine",
        )
    return out


@combine.register_fake
def _combine_fake(expert_outputs, weights):
    B, k, C, H, W = expert_outputs.shape
    return _empty_like_layout(expert_outputs[:, 0], (B, C, H, W))


# ----------------------------------------------------------------------------- attention split
@torch.library.custom_op("moefusion::attention_split", mutates_args=())
def attention_split(x0: Tensor, x1: Tensor, att: Tensor) -> tuple[Tensor, Tensor]:
    if x0.device.type != "cuda":
        fg, bg = reference.attention_split(x0, x1, att)
        return fg.contiguous(memory_format=_fmt(x0)), bg.contiguous(memory_format=_fmt(x0))
    CALLS["attention_split"] += 1
    _check_cuda("attention_split", x0, x1, att)
    lib = _lib.load_library()
    B, C, H, W = x0.shape
    fg = _empty_like_layout(x0, (B, 2 * C, H, W))
    bg = _empty_like_layout(x0, (B, 2 * C, H, W))
    with _DeviceGuard(x0):
        _lib.check(
            lib.moefusion_attention_split(_lib.desc(x0), _lib.desc(x1), _lib.desc(att), _lib.desc(fg),
                                          _lib.desc(bg), _stream(x0)),
            "moefusion::attention_split",
        )
    return fg, bg


def _fmt(t: Tensor):
    return torch.channels_last if _channels_last(t) else torch.contiguous_format


@attention_split.register_fake
def _attention_split_fake(x0, x1, att):
    B, C, H, W = x0.shape
    return _empty_like_layout(x0, (B, 2 * C, H, W)), _empty_like_layout(x0, (B, 2 * C, H, W))


# ----------------------------------------------------------------------------- last expert layer + combine
@torch.library.custom_op("moefusion::expert_conv3x3_combine", mutates_args=())
def expert_conv3x3_combine(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, indices: Tensor, weights: Tensor
) -> Tensor:
    if hidden.device.type != "cuda":
        return reference.expert_conv3x3_combine(hidden, weight, bias, indices, weights).contiguous(
            memory_format=_fmt(hidden[:, 0])
        )
    CALLS["expert_conv3x3_combine"] += 1
    _check_cuda("expert_conv3x3_combine", hidden, weight, bias, indices, weights)
    lib = _lib.load_library()
    B, k, _, H, W = hidden.shape
    out = _empty_like_layout(hidden[:, 0], (B, weight.shape[1], H, W))
    weight = weight if weight.is_contiguous() else weight.contiguous()
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    if indices.dtype != torch.int32:
        indices = indices.to(torch.int32)
    with _DeviceGuard(hidden):
        _lib.check(
            lib.moefusion_expert_conv3x3_combine(
                _lib.desc(hidden), _lib.desc(weight), _lib.desc(bias), _lib.desc(indices), _lib.desc(weights),
                _lib.desc(out), _stream(hidden),
            ),
            "moefusion::expert_conv3x3_combine",
        )
    return out


@expert_conv3x3_combine.register_fake
def _expert_conv3x3_combine_fake(hidden, weight, bias, indices, weights):
    B, k, _, H, W = hidden.shape
    return _empty_like_layout(hidden[:, 0], (B, weight.shape[1], H, W))
