"""The plugin-flavour ONNX nodes (domain "moefusion", version 1) and the exporters' mappings to them.

Schemas (also in kernels/README.md; TensorRT finds the plugins by these op types, version "1"):

    MoEGate(features T[B,C,H,W], w_gate TW[C*gh*gw, E]; grid_h, grid_w, k) -> indices int32[B,k], weights float[B,k]
    MoECombine(expert_outputs T[B,k,C,H,W], weights TW[B,k]) -> T[B,C,H,W]
    MoEAttentionSplit(x0 T[B,C,H,W], x1 T[B,C,H,W], att T[B,1,H,W]) -> fg T[B,2C,H,W], bg T[B,2C,H,W]
    MoEExpertConvCombine(hidden T[B,k,Cin,H,W], weight TW[E,Cout,Cin,3,3], bias TW[E,Cout], indices int32[B,k],
                         weights TW[B,k]) -> T[B,Cout,H,W]
    T, TW in {float, float16}.

Use:
    torch.onnx.export(model, args, dynamo=True, custom_translation_table=custom_translation_table())
    register_torchscript_symbolics(); torch.onnx.export(model, args, dynamo=False, opset_version=17)
    onnx.reference.ReferenceEvaluator(model_proto, new_ops=reference_ops())   # run on the CPU
"""
from __future__ import annotations

import threading

import numpy as np

DOMAIN = "moefusion"
VERSION = 1
NODES = ("MoEGate", "MoECombine", "MoEAttentionSplit", "MoEExpertConvCombine")

_FLOATS = ["tensor(float)", "tensor(float16)"]
_lock = threading.Lock()
_registered = False


def schemas():
    """onnx.defs.OpSchema objects of the four nodes."""
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
        OpSchema(
            "MoEAttentionSplit", DOMAIN, VERSION,
            "fg = concat(x0*att, x1*att), bg = concat(x0*(1-att), x1*(1-att)) along channels.",
            inputs=[P("x0", "T", "[B, C, H, W]"), P("x1", "T", "[B, C, H, W]"), P("att", "T", "[B, 1, H, W]")],
            outputs=[P("fg", "T", "[B, 2C, H, W]"), P("bg", "T", "[B, 2C, H, W]")],
            type_constraints=[tc[0]],
        ),
        OpSchema(
            "MoEExpertConvCombine", DOMAIN, VERSION,
            "For each sample and slot j: y_j = conv3x3(hidden[:, j], weight[indices[:, j]], pad 1) + "
            "bias[indices[:, j]]; out = logsumexp_j(y_j + log(weights[:, j])).",
            inputs=[P("hidden", "T", "[B, k, Cin, H, W]"), P("weight", "TW", "[E, Cout, Cin, 3, 3]"),
                    P("bias", "TW", "[E, Cout]"), P("indices", "tensor(int32)", "[B, k]"),
                    P("weights", "TW", "[B, k]")],
            outputs=[P("out", "T", "[B, Cout, H, W]")],
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

    from . import ops  # noqa: F401  (registers torch.ops.moefusion.*)

    register_schemas()
    opset = onnxscript.values.Opset(DOMAIN, VERSION)
    gate_op = onnxscript.values.Op(opset, "MoEGate")
    combine_op = onnxscript.values.Op(opset, "MoECombine")
    split_op = onnxscript.values.Op(opset, "MoEAttentionSplit")
    conv_op = onnxscript.values.Op(opset, "MoEExpertConvCombine")

    def gate(features, w_gate, grid_h: int, grid_w: int, k: int):
        indices, weights = gate_op(features, w_gate, grid_h=grid_h, grid_w=grid_w, k=k, _num_outputs=2)
        return indices, weights

    def combine(expert_outputs, weights):
        return combine_op(expert_outputs, weights)

    def attention_split(x0, x1, att):
        fg, bg = split_op(x0, x1, att, _num_outputs=2)
        return fg, bg

    def expert_conv3x3_combine(hidden, weight, bias, indices, weights):
        if bias is None:
            raise ValueError("MoEExpertConvCombine needs a bias input (pass zeros for none)")
        return conv_op(hidden, weight, bias, indices, weights)

    m = torch.ops.moefusion
    return {
        m.gate.default: gate,
        m.combine.default: combine,
        m.attention_split.default: attention_split,
        m.expert_conv3x3_combine.default: expert_conv3x3_combine,
    }


# ----------------------------------------------------------------------------- TorchScript exporter
def register_torchscript_symbolics(opset_version: int = 17) -> None:
    """Symbolics for torch.onnx.export(..., dynamo=False) (the TorchScript-based exporter)."""
    import torch
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    from . import ops  # noqa: F401

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

    @parse_args("v", "v", "v")
    def attention_split(g, x0, x1, att):
        fg, bg = g.op(f"{DOMAIN}::MoEAttentionSplit", x0, x1, att, outputs=2)
        s = _sizes(x0)
        sz = [s[0], s[1] * 2 if s[1] is not None else None] + s[2:] if s else None
        return _typed(fg, _dtype(x0), x0, sz), _typed(bg, _dtype(x0), x0, sz)

    @parse_args("v", "v", "v", "v", "v")
    def expert_conv3x3_combine(g, hidden, weight, bias, indices, weights):
        if indices.type().scalarType() != "Int":
            indices = g.op("Cast", indices, to_i=6)  # int32
        out = g.op(f"{DOMAIN}::MoEExpertConvCombine", hidden, weight, bias, indices, weights)
        s, ws = _sizes(hidden), _sizes(weight)
        sz = [s[0], ws[1] if ws else None] + s[3:] if s else None
        return _typed(out, _dtype(hidden), hidden, sz)

    for name, fn in (
        ("gate", gate),
        ("combine", combine),
        ("attention_split", attention_split),
        ("expert_conv3x3_combine", expert_conv3x3_combine),
    ):
        register_custom_op_symbolic(f"{DOMAIN}::{name}", fn, opset_version)


# ----------------------------------------------------------------------------- onnx.reference
def reference_ops():
    """OpRun classes for onnx.reference.ReferenceEvaluator(..., new_ops=reference_ops())."""
    from onnx.reference.op_run import OpRun

    from . import reference as R

    class MoEGate(OpRun):
        op_domain = DOMAIN

        def _run(self, features, w_gate, grid_h=None, grid_w=None, k=None):
            return R.np_gate(features, w_gate, grid_h, grid_w, k)

    class MoECombine(OpRun):
        op_domain = DOMAIN

        def _run(self, expert_outputs, weights):
            return (R.np_combine(expert_outputs, weights),)

    class MoEAttentionSplit(OpRun):
        op_domain = DOMAIN

        def _run(self, x0, x1, att):
            return R.np_attention_split(x0, x1, att)

    class MoEExpertConvCombine(OpRun):
        op_domain = DOMAIN

        def _run(self, hidden, weight, bias, indices, weights):
            return (R.np_expert_conv3x3_combine(hidden, weight, bias, np.asarray(indices), weights),)

    return [MoEGate, MoECombine, MoEAttentionSplit, MoEExpertConvCombine]
