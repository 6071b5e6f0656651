"""Export-only formulation of MoE-Fusion (the segment-anything / timm way: a wrapper, not a model change).

``ExportModule(model)`` computes exactly what ``MoEFusion.forward`` computes in eval mode, written
so that the graph exports with live routing and builds in TensorRT:

- Routing is in the graph for every input: resize to the gate grid, MatMul with ``w_gate``, TopK,
  Softmax (the eval path of ``top_k_gating``: no noise). Nothing is frozen from the dummy input.
- Padding to a multiple of 32 is ``ceil(h / 32) * 32 - h`` (no negative Mod), and the FPN top-down
  path and the attention upsampling use scale factors (2 and 4; exact because the padded size is a
  multiple of 32) instead of sizes computed from shapes: TensorRT's shape analysis (Myelin) rejects
  the ``Resize(sizes=f(Mod(-h, 32)))`` that a literal trace of the model gives.
- The combine ``log(sum_j w_j exp(y_j))`` is written as ``m + log(sum_j exp(z_j - m))`` with
  ``z = y + log w`` and ``m = max_j z_j`` (for two experts ``max(z0, z1) + log(1 + exp(-|z0 - z1|))``):
  TensorRT imports ONNX ReduceLogSumExp as exp -> sum -> log, which overflows (fp32 above 88, fp16
  above 11).
- Dispatch ``sparse``: only the k chosen experts run, as grouped convolutions over gathered expert
  weights with constant channel counts (ONNX Conv's ``group`` is static, so the batch is fixed);
  ``dense``: every expert runs and the chosen ones are combined (any batch size).
- Flavour ``plugin``: the gate and the combine are the custom-domain nodes ``moefusion::MoEGate``
  and ``moefusion::MoECombine`` (kernels/README.md) that the TensorRT plugins implement, through the
  ``torch.ops.moefusion`` ops and ONNX mappings of ``moefusion.kernels``. The experts in between
  stay standard ONNX. ONNX Runtime cannot run this flavour; it always gets ``standard``.

- The pyramid output head (``edge``) is ``MoEFusion.head`` itself: fixed convs, pooling and x2
  resizes (scale factors again), so the export computes the model's own function.

Outputs: ``fused`` [B,1,H,W] clamped to [0, 1] and ``attention`` [B,1,H,W]; with ``routes=True``
also the chosen experts of each MoE layer (``route_mole_fg`` ...; int64 [B, k]) for tests and
debugging; with ``detections=True`` (batch 1) the detectors' boxes per modality.

Stream mode (``stream=True``, model/stream.py): ``forward(ir, vis, *state)`` takes the previous
frame's state tensors (``state_<name>`` for name in ``stream.STATE_NAMES``; all zeros before the
first frame) and also returns the next frame's (``next_<name>``). Routing is ``stream.route`` on the
gate's logits, the head is ``MoEFusion.stream_head``: the model's own functions, so the graph
computes what ``model.stream()`` computes.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels import ops as kernel_ops
from ..kernels.onnx import custom_translation_table
from ..kernels.onnx import register_torchscript_symbolics as _register_torchscript_symbolics
from ..model import stream as streaming
from ..model.gating import gate_descriptor

DISPATCHES = ("sparse", "dense")
FLAVOURS = ("standard", "plugin")
MOE_LAYERS = ("mole_fg", "mole_bg", "moge")
DETECTION_OUTPUTS = tuple(f"{m}_{f}" for m in ("vis", "ir") for f in ("boxes", "scores", "labels"))
STATE_INPUTS = tuple(f"state_{n}" for n in streaming.STATE_NAMES)  # stream graphs: after ir, vis
STATE_OUTPUTS = tuple(f"next_{n}" for n in streaming.STATE_NAMES)  # ... after the other outputs

# The plugin-flavour nodes (kernels/README.md): domain "moefusion" v1, TensorRT plugins of the same names.
PLUGIN_DOMAIN = "moefusion"
PLUGIN_GATE = "MoEGate"
PLUGIN_COMBINE = "MoECombine"


def stable_gated_logsumexp(ys: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log(sum_j w_j exp(y_j)) over dim 1 as max + log(sum exp(z - max)), z = y + log w.

    Two experts (the sparse dispatch at k=2): max(z0, z1) + log(1 + exp(-|z0 - z1|)), the same
    function in half-size elementwise ops, with no reductions over a stacked [B, 2, C, H, W]
    tensor (ONNX Runtime CPU: about a third of the cost of the general form per MoE layer)."""
    log_w = torch.log(weights.to(ys.dtype)).reshape(weights.shape + (1,) * (ys.dim() - 2))
    if ys.shape[1] == 2:
        z0, z1 = ys[:, 0] + log_w[:, 0], ys[:, 1] + log_w[:, 1]
        return torch.maximum(z0, z1) + torch.log(1 + torch.exp(-(z0 - z1).abs()))
    z = ys + log_w
    m = z.amax(dim=1, keepdim=True)
    return (m + torch.log(torch.exp(z - m).sum(dim=1, keepdim=True))).squeeze(1)


def onnx_translations() -> dict:
    """custom_translation_table for torch.onnx.export(dynamo=True): kernel ops -> plugin nodes."""
    return custom_translation_table()


def register_torchscript_symbolics(opset: int) -> None:
    """The same plugin nodes for the TorchScript exporter (opset <= 17)."""
    _register_torchscript_symbolics(opset)


# ------------------------------------------------------------------------------------------------
# The export module
# ------------------------------------------------------------------------------------------------

class _LayerOut(NamedTuple):
    """What MoEFusion.stream_head reads of a MoE layer's output (MoEOutput's y and route_state)."""
    y: torch.Tensor
    route_state: torch.Tensor | None

class ExportModule(nn.Module):
    """``forward(ir, vis)`` -> (fused clamped to [0, 1], attention[, routes...][, detections...])."""

    def __init__(self, model, dispatch: str = "sparse", flavour: str = "standard",
                 routes: bool = False, detections: bool = False, stream: bool = False):
        super().__init__()
        if dispatch not in DISPATCHES:
            raise ValueError(f"dispatch must be one of {DISPATCHES}, got {dispatch!r}")
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
        self.model = model
        self.dispatch = dispatch
        self.flavour = flavour
        self.routes = routes
        self.detections = detections
        self.stream = stream
        if stream and flavour == "plugin":  # formats.validate / plan.resolve_flavour keep users from here
            raise ValueError("the stream graph routes on smoothed logits: the MoEGate plugin cannot take them")

    @property
    def input_names(self) -> list[str]:
        return ["ir", "vis"] + (list(STATE_INPUTS) if self.stream else [])

    @property
    def output_names(self) -> list[str]:
        names = ["fused", "attention"]
        if self.routes:
            names += [f"route_{n}" for n in MOE_LAYERS]
        if self.detections:
            names += list(DETECTION_OUTPUTS)
        if self.stream:
            names += list(STATE_OUTPUTS)
        return names

    # -- attention --------------------------------------------------------------------------
    def _level0(self, vis, ir):
        """DetectionAttention.level0 with the FPN top-down upsampling as exact x2 scale factors."""
        att = self.model.attention
        feats = []
        for backbone, x in ((att.backbone_vis, vis), (att.backbone_ir, ir)):
            body = list(backbone.body(att.normalise(x)).values())
            fpn = backbone.fpn
            last = fpn.get_result_from_inner_blocks(body[-1], -1)
            for idx in range(len(body) - 2, -1, -1):
                lateral = fpn.get_result_from_inner_blocks(body[idx], idx)
                last = lateral + F.interpolate(last, scale_factor=2.0, mode="nearest")
            feats.append(fpn.get_result_from_layer_blocks(last, 0))
        _, _, a_vis, a_ir = att._attend(*feats)
        return torch.maximum(a_vis, a_ir)

    # -- MoE layers --------------------------------------------------------------------------
    def _route(self, layer, features, stream=None):
        """(indices, weights, new routing state or None); ``stream`` = (layer state [B, 2, E], keep [B, 1])."""
        if stream is not None:  # the model's stream routing (GatedExperts.route): smoothed logits, sticky experts
            desc = layer.normalise(gate_descriptor(features, layer.grid, layer.pool))
            return streaming.route(desc.float() @ layer.w_gate.float(), layer.k, *stream)
        return (*self._route_frame(layer, features), None)

    def _route_frame(self, layer, features):
        if layer.pool == "moments":  # ReduceMean/Sqrt in the graph: the MoEGate plugin implements the grid only
            desc = layer.normalise(gate_descriptor(features, layer.grid, "moments"))
            top, idx = (desc @ layer.w_gate).topk(layer.k, dim=1)
            return idx, torch.softmax(top, dim=1)
        if self.flavour == "plugin":
            idx, weights = kernel_ops.gate(features, layer.w_gate, layer.grid[0], layer.grid[1], layer.k)
            return idx.long(), weights
        desc = F.interpolate(features, size=layer.grid, mode="bilinear", align_corners=True).flatten(1)
        top, idx = (desc @ layer.w_gate).topk(layer.k, dim=1)
        return idx, torch.softmax(top, dim=1)

    def _combine(self, ys, weights):
        if self.flavour == "plugin":
            return kernel_ops.combine(ys, weights)
        return stable_gated_logsumexp(ys, weights)

    @staticmethod
    def _modality_inputs(inputs, num_experts, idx):
        """Per-slot expert inputs [B, k, C, H, W] for experts split by modality (MoLE)."""
        group = num_experts // len(inputs)
        b = idx.shape[0]
        modality = torch.zeros_like(idx)
        for m in range(1, len(inputs)):  # integer compare-and-sum: no float division in the graph
            modality = modality + (idx >= m * group).to(idx.dtype)
        stacked = torch.stack(tuple(inputs), dim=1)  # [B, M, C, H, W]
        return stacked[torch.arange(b, device=idx.device).unsqueeze(1), modality]

    def _sparse(self, bank, inputs, idx):
        """Only the chosen experts: grouped 3x3 convs over gathered weights; static B, k, channels."""
        x = inputs if isinstance(inputs, torch.Tensor) else self._modality_inputs(inputs, bank.num_experts, idx)
        return bank.run_gathered(x, idx)

    def _dense(self, bank, inputs, idx, weights):
        """Every expert on every sample; the gates (zero for unchosen experts) pick the k outputs."""
        outs = []
        for e in range(bank.num_experts):
            x = inputs if isinstance(inputs, torch.Tensor) else inputs[e // (bank.num_experts // len(inputs))]
            outs.append(bank.run_expert(e, x))
        ys = torch.stack(outs, dim=1)  # [B, E, C, H, W]
        gates = torch.zeros(idx.shape[0], bank.num_experts, dtype=weights.dtype, device=weights.device)
        gates = gates.scatter(1, idx, weights)  # log 0 = -inf: unchosen experts add exp(-inf) = 0
        return stable_gated_logsumexp(ys, gates)

    def _moe(self, layer, gate_features, inputs, stream=None):
        """(output, chosen experts, new routing state or None)."""
        idx, weights, state = self._route(layer, gate_features, stream)
        if self.dispatch == "dense" and self.flavour == "standard":
            return self._dense(layer.experts, inputs, idx, weights), idx, state
        return self._combine(self._sparse(layer.experts, inputs, idx), weights), idx, state

    # -- forward ------------------------------------------------------------------------------
    def forward(self, ir, vis, *state):
        m = self.model
        h, w = ir.shape[-2], ir.shape[-1]
        stride, ns = m.cfg.pad_stride, m.cfg.network_stride
        ph = (h + stride - 1) // stride * stride - h
        pw = (w + stride - 1) // stride * stride - w
        ir = F.pad(ir, (0, pw, 0, ph), mode="replicate")
        vis = F.pad(vis, (0, pw, 0, ph), mode="replicate")
        stream = None
        if self.stream:  # as MoEFusion.forward with state=
            state = streaming.StreamState(*state)
            sources = streaming.half_res(ir, vis)
            beta, keep = streaming.follow_factor(sources, state.sources, state.scalars)
            stream = (state, sources, beta, keep)
        route = (lambda name: None) if stream is None else (lambda name: (getattr(state, f"route_{name}"), keep))

        ir_n, vis_n = m.network_inputs(ir, vis)
        dets = None
        if self.detections:
            att0, dets, _, _ = m.attention(vis_n, ir_n)
        else:
            att0 = self._level0(vis_n, ir_n)
        att = F.interpolate(att0, scale_factor=4.0, mode="bilinear", align_corners=True)
        att_full = att if ns == 1 else F.interpolate(att0, scale_factor=4.0 * ns, mode="bilinear", align_corners=True)

        early_vis, last_vis = m.enc_vis(vis_n)
        early_ir, last_ir = m.enc_ir(ir_n)
        fg = (last_vis * att, last_ir * att)
        bg = (last_vis * (1 - att), last_ir * (1 - att))
        y_fg, r_fg, s_fg = self._moe(m.mole_fg, torch.cat(fg, dim=1), fg, route("mole_fg"))
        y_bg, r_bg, s_bg = self._moe(m.mole_bg, torch.cat(bg, dim=1), bg, route("mole_bg"))
        enc = m.decoder_input((early_vis, last_vis), (early_ir, last_ir), y_fg, y_bg, att)
        y, r_dec, s_dec = self._moe(m.moge, enc, enc, route("moge"))
        att = att_full

        if stream is None:
            fused = m.head(ir, vis, y, att)[..., :h, :w]
        else:
            outs = (_LayerOut(y_fg, s_fg), _LayerOut(y_bg, s_bg), _LayerOut(y, s_dec))
            fused, new_state = m.stream_head(ir, vis, att, outs, stream, h, w)
        out = [fused.clamp(0.0, 1.0), att[..., :h, :w]]
        if self.routes:
            out += [r_fg, r_bg, r_dec]
        if self.detections:
            for modality in ("vis", "ir"):
                d = dets[modality][0]
                out += [d["boxes"] * ns, d["scores"], d["labels"] - 1]  # 0-based, frame pixels, as MoEFusion returns them
        if stream is not None:
            out += list(new_state)
        return tuple(out)
