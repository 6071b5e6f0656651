"""References for every CUDA kernel / TensorRT plugin: PyTorch (built on moefusion.model.gating) and NumPy.

The PyTorch functions are what the kernels must equal (tests compare them on random inputs); the NumPy
functions implement the plugin-flavour ONNX nodes (kernels/README.md) for onnx.reference, so exported
graphs can be run on the CPU without TensorRT.

All arithmetic of the kernels is float32; so is the references' (inputs are upcast; outputs cast back).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..model.gating import gate_descriptor, gated_logsumexp, top_k_gating


# ----------------------------------------------------------------------------- PyTorch
def gate(features: torch.Tensor, w_gate: torch.Tensor, grid_h: int, grid_w: int, k: int):
    """MoEGate: (indices int32 [B, k], weights float32 [B, k]), eval-mode top-k gating of gating.py."""
    g = top_k_gating(gate_descriptor(features.float(), (grid_h, grid_w)), w_gate.float(), k, train=False)
    return g.indices.to(torch.int32), g.weights.float()


def gate_float64(features: torch.Tensor, w_gate: torch.Tensor, grid_h: int, grid_w: int, k: int):
    """The gate's math in float64: (indices int32 [B,k], weights float64 [B,k], logits float64 [B,E]).

    For tolerance checks at large descriptor sizes: with C*gh*gw = 768,000 terms (MoGE, paper preset) the
    float32 reference's own rounding moves the softmax weights by up to about 1e-5 relative, as much as
    any float32 implementation differs from it; against float64 the kernel's error is what is measured.
    """
    logits = gate_descriptor(features.double(), (grid_h, grid_w)) @ w_gate.double()
    top, idx = logits.topk(k, dim=1)
    return idx.to(torch.int32), torch.softmax(top, dim=1), logits


def combine(expert_outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """MoECombine: logsumexp_j(y_j + log w_j), in float32, cast to expert_outputs' dtype."""
    return gated_logsumexp(expert_outputs.float(), weights.float()).to(expert_outputs.dtype)


def attention_split(x0: torch.Tensor, x1: torch.Tensor, att: torch.Tensor):
    """MoEAttentionSplit: fg = cat(x0*a, x1*a), bg = cat(x0*(1-a), x1*(1-a)) (as the upstream encoder)."""
    inv = 1 - att
    return torch.cat((x0 * att, x1 * att), dim=1), torch.cat((x0 * inv, x1 * inv), dim=1)


def expert_conv3x3_combine(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    indices: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """MoEExpertConvCombine: the chosen experts' last 3x3 conv (per sample, per slot) + combine."""
    B, k = indices.shape
    outs = []
    for b in range(B):
        ys = []
        for j in range(k):
            e = int(indices[b, j])
            ys.append(
                F.conv2d(
                    hidden[b, j : j + 1].float(),
                    weight[e].float(),
                    None if bias is None else bias[e].float(),
                    padding=1,
                )[0]
            )
        outs.append(torch.stack(ys))
    y = torch.stack(outs)  # [B, k, Cout, H, W]
    return gated_logsumexp(y, weights.float()).to(hidden.dtype)


def experts_forward(
    inputs: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    layers,
    input_groups: int = 1,
) -> torch.Tensor:
    """Per-sample loop over the chosen experts of a stacked-parameter MoE layer, then the combine.

    inputs [B, G*Cin, H, W]; expert e reads channel group e // (E // G); layers: [(weight [E, Co, Ci, 3, 3],
    bias [E, Co]), ...], ReLU between layers, none after the last. Returns [B, Cout, H, W] (float32 math).
    """
    B, k = indices.shape
    E = layers[0][0].shape[0]
    per_group = E // input_groups
    cin = inputs.shape[1] // input_groups
    ys = []
    for b in range(B):
        slots = []
        for j in range(k):
            e = int(indices[b, j])
            g = e // per_group
            x = inputs[b : b + 1, g * cin : (g + 1) * cin].float()
            for li, (w, bias) in enumerate(layers):
                x = F.conv2d(x, w[e].float(), bias[e].float(), padding=1)
                if li < len(layers) - 1:
                    x = F.relu(x)
            slots.append(x[0])
        ys.append(torch.stack(slots))
    return gated_logsumexp(torch.stack(ys), weights.float())


# ----------------------------------------------------------------------------- NumPy
def _resize_bilinear_align_corners(x: np.ndarray, gh: int, gw: int) -> np.ndarray:
    """[B, C, H, W] -> [B, C, gh, gw] as torch's bilinear interpolate with align_corners=True (float32)."""
    x = x.astype(np.float32)
    H, W = x.shape[-2:]

    def axis(n_in, n_out):
        scale = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
        src = (scale * np.arange(n_out, dtype=np.float32)).astype(np.float32)
        i0 = np.minimum(src.astype(np.int64), n_in - 1)
        i1 = i0 + (i0 < n_in - 1)
        l1 = (src - i0).astype(np.float32)
        return i0, i1, l1, (np.float32(1) - l1)

    y0, y1, ly1, ly0 = axis(H, gh)
    x0, x1, lx1, lx0 = axis(W, gw)
    top = x[..., y0, :][..., x0] * lx0 + x[..., y0, :][..., x1] * lx1
    bot = x[..., y1, :][..., x0] * lx0 + x[..., y1, :][..., x1] * lx1
    return (top * ly0[:, None] + bot * ly1[:, None]).astype(np.float32)


def np_gate(features: np.ndarray, w_gate: np.ndarray, grid_h: int, grid_w: int, k: int):
    desc = _resize_bilinear_align_corners(features, grid_h, grid_w).reshape(features.shape[0], -1)
    logits = desc.astype(np.float32) @ w_gate.astype(np.float32)
    # stable sort of -logits: ties keep the lower index first
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(logits, order, axis=1)
    ex = np.exp(top - top[:, :1])
    return order.astype(np.int32), (ex / ex.sum(axis=1, keepdims=True)).astype(np.float32)


def np_logsumexp_weighted(y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """logsumexp over axis 1 of y + log(weights) (weights [B, k] broadcast), as torch.logsumexp."""
    a = y.astype(np.float32) + np.log(weights.astype(np.float32)).reshape(weights.shape + (1,) * (y.ndim - 2))
    m = a.max(axis=1, keepdims=True)
    m = np.where(np.isinf(m), np.float32(0), m)
    return (np.log(np.exp(a - m).sum(axis=1)) + m[:, 0]).astype(np.float32)


def np_combine(expert_outputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np_logsumexp_weighted(expert_outputs, weights).astype(expert_outputs.dtype)


def np_attention_split(x0: np.ndarray, x1: np.ndarray, att: np.ndarray):
    inv = (np.asarray(1, dtype=att.dtype) - att).astype(att.dtype)
    return np.concatenate((x0 * att, x1 * att), axis=1), np.concatenate((x0 * inv, x1 * inv), axis=1)


def _np_conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """x [Cin, H, W], w [Cout, Cin, 3, 3] -> [Cout, H, W], zero padding 1 (float32)."""
    cin, H, W = x.shape
    xp = np.zeros((cin, H + 2, W + 2), np.float32)
    xp[:, 1:-1, 1:-1] = x
    out = np.zeros((w.shape[0], H, W), np.float32)
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("oc,chw->ohw", w[:, :, dy, dx].astype(np.float32), xp[:, dy : dy + H, dx : dx + W])
    if b is not None:
        out += b.astype(np.float32)[:, None, None]
    return out


def np_expert_conv3x3_combine(hidden, weight, bias, indices, weights) -> np.ndarray:
    B, k = indices.shape
    y = np.stack(
        [
            np.stack(
                [_np_conv3x3(hidden[b, j], weight[indices[b, j]], None if bias is None else bias[indices[b, j]])
                 for j in range(k)]
            )
            for b in range(B)
        ]
    )
    return np_logsumexp_weighted(y, weights).astype(hidden.dtype)
