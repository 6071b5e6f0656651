"""The plugin-flavour ONNX nodes (domain "moefusion", version 1) and the exporters' mappings to them.

Schemas (also in kernels/README.md; TensorRT finds the plugins by these op types, version "1"):

    MoEGate(features T[B,C,H,W], w_gate TW[C*gh*gw, E]; grid_h, grid_w, k) -> indices int32[B,k], weights float[B,k]
    MoECombine(expert_outputs T[B,k,C,H,W], weights TW[B,k]) -> T[B,C,H,W]
    T, TW in {float, float16}.

These are the only nodes the export emits (moefusion.export.wrapper, plugin flavour) and the only TensorRT
plugins built. The other custom ops (attention_split, expert_conv3x3_combine) serve the PyTorch fast path
(moefusion.kernels.fast) and have no ONNX node: nothing could run it.

Use:
    torch.onnx.export(model, args, dynamo=True, custom_translation_table=custom_translation_table())
    register_torchscript_symbolics(); torch.onnx.export(model, args, dynamo=False, opset_version=17)
    onnx.reference.ReferenceEvaluator(model_proto, new_ops=reference_ops())   # run on the CPU
"""
from __future__ import annotations

import threading

from . import ops  # noqa: F401  (registers torch.ops.moefusion.*)
from . import reference as R

DOMAIN = "moefusion"
VERSION = 1
NODES = ("MoEGate", "MoECombine")

_FLOATS = ["tensor(float)", "tensor(float16)"]
_lock = threading.Lock()
_registered = False


def schemas():
    """onnx.defs.OpSchema objects of the two nodes."""
    from onnx.defs import OpSchema

    P, A = OpSchema.FormalParameter, OpSchema.Attribute
    INT = OpSchema.AttrType.INT
    tc = [("T", _FLOATS, "activations"), ("TW", _FLOATS, "parameters and gate weights")]
    return [
        OpSchema(
            "MoEGate", DOMAIN, VERSION,
            "Top-k gate: bilinear resize (align_corners=True) of features to grid_h x grid_w, flatten, "
            "matmul with w_gate, top-k (descending, ties to the lower index), softmax over the k values.",
            inputs=[P("features", "T", "[B, C, H, W]"), P("w_gate", "TW", "[C*grid_h*grid_w, E]")],
            outputs=[P("indices", "tensor(int32)", "[B, k] chosen experts, best first"),
                     P("weights", "tensor(float)", "[B, k] softmax of their logits")],
            type_constraints=tc,
            attributes=[A("grid_h", INT, "gate grid height"), A("grid_w", INT, "gate grid width"),
                        A("k", INT, "experts per sample")],
        ),
        OpSchema(
            "MoECombine", DOMAIN, VERSION,
            "out = logsumexp_j(expert_outputs[:, j] + log(weights[:, j])) = log(sum_j w_j exp(y_j)).",
            inputs=[P("expert_outputs", "T", "[B, k, C, H, W]"), P("weights", "TW", "[B, k]")],
            outputs=[P("out", "T", "[B, C, H, W]")],
            type_constraints=tc,
        ),
    ]


def register_schemas() -> None:
    """Register the schemas with onnx (idempotent): onnx.checker and onnxscript then know the nodes."""
    global _registered
    import onnx.defs

    with _lock:
        if _registered:
            return
        for s in schemas():
            if not onnx.defs.has(s.name, s.domain):
                onnx.defs.register_schema(s)
        _registered = True


# ----------------------------------------------------------------------------- dynamo exporter
def custom_translation_table() -> dict:
    """{torch op overload: onnxscript function} for torch.onnx.export(..., dynamo=True)."""
    import onnxscript
    import torch

    register_schemas()
    opset = onnxscript.values.Opset(DOMAIN, VERSION)
    gate_op = onnxscript.values.Op(opset, "MoEGate")
    combine_op = onnxscript.values.Op(opset, "MoECombine")

    def gate(features, w_gate, grid_h: int, grid_w: int, k: int):
        indices, weights = gate_op(features, w_gate, grid_h=grid_h, grid_w=grid_w, k=k, _num_outputs=2)
        return indices, weights

    def combine(expert_outputs, weights):
        return combine_op(expert_outputs, weights)

    m = torch.ops.moefusion
    return {
        m.gate.default: gate,
        m.combine.default: combine,
    }


# ----------------------------------------------------------------------------- TorchScript exporter
def register_torchscript_symbolics(opset_version: int = 17) -> None:
    """Symbolics for torch.onnx.export(..., dynamo=False) (the TorchScript-based exporter)."""
    import torch
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    def _typed(value, dtype, like=None, sizes=None):
        t = value.type() if like is None else like.type()
        try:
            t = t.with_dtype(dtype)
            if sizes is not None:
                t = t.with_sizes(sizes)
        except (AttributeError, RuntimeError):
            return value
        value.setType(t)
        return value

    def _sizes(v):
        try:
            return v.type().varyingSizes()
        except (AttributeError, RuntimeError):
            return None

    def _dtype(v):
        return v.type().dtype() if hasattr(v.type(), "dtype") and v.type().scalarType() else torch.float32

    @parse_args("v", "v", "i", "i", "i")
    def gate(g, features, w_gate, grid_h, grid_w, k):
        idx, wts = g.op(f"{DOMAIN}::MoEGate", features, w_gate, grid_h_i=grid_h, grid_w_i=grid_w, k_i=k, outputs=2)
        s = _sizes(features)
        bk = [s[0], k] if s else None
        return _typed(idx, torch.int32, features, bk), _typed(wts, torch.float32, features, bk)

    @parse_args("v", "v")
    def combine(g, x, w):
        out = g.op(f"{DOMAIN}::MoECombine", x, w)
        s = _sizes(x)
        return _typed(out, _dtype(x), x, [s[0]] + s[2:] if s else None)

    for name, fn in (
        ("gate", gate),
        ("combine", combine),
    ):
        register_custom_op_symbolic(f"{DOMAIN}::{name}", fn, opset_version)


# ----------------------------------------------------------------------------- onnx.reference
def reference_ops():
    """OpRun classes for onnx.reference.ReferenceEvaluator(..., new_ops=reference_ops())."""
    from onnx.reference.op_run import OpRun

    class MoEGate(OpRun):
        op_domain = DOMAIN

        def _run(self, features, w_gate, grid_h=None, grid_w=None, k=None):
            return R.np_gate(features, w_gate, grid_h, grid_w, k)

    class MoECombine(OpRun):
        op_domain = DOMAIN

        def _run(self, expert_outputs, weights):
            return (R.np_combine(expert_outputs, weights),)

    return [MoEGate, MoECombine]
