"""Does every part of a model earn its place? Routing, forced experts, zeroed layers, the attention.

Every effect is the mean absolute change of the fused image, in grey levels (0..255), when one
part of the model is changed on the same input:

- :func:`forced_expert_change`: a MoE layer computes its output with experts it did not choose
  (the gate's weights kept; :func:`forced_experts`);
- :func:`zeroed_layer_change`: a MoE layer's output is replaced by zeros;
- :func:`attention_change`: the attention map is replaced by a uniform value (inside a mask, or
  everywhere);

and :func:`routing_report` gathers them with the routing statistics of every MoE layer
(:class:`moefusion.eval.routing.RoutingStats`), the attention inside/outside labelled boxes and the
person-minus-surround contrast (:func:`moefusion.eval.contrast.target_contrast`: do warm targets
stay bright?) over held-out pairs: ``moefusion-eval --routing-report``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from ..data.io import read_image
from ..data.preprocess import prepare_pair
from ..model.gating import Gating, unchosen
from ..model.moe import GatedExperts
from .baselines import laplacian_pyramid_fusion
from .contrast import RING_PX, box_union_mask, target_contrast
from .routing import RoutingStats

TARGET_CLASSES = (0, 2)  # person, car: the boxes the attention is judged on
PERSON = 0  # the IR person boxes the target contrast is measured in
UNIFORM_ATTENTION = 0.5


def moe_layers(model: torch.nn.Module) -> dict[str, GatedExperts]:
    """Name -> MoE layer, in the model's order (``mole_fg``, ``mole_bg``, ``moge`` for MoEFusion)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, GatedExperts)}


def to_tensors(ir_raw: np.ndarray, vis_raw: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw frames -> ([1, 1, H, W] IR, visible luminance) in [0, 1], as ``fuse()`` prepares them."""
    ir_u, parts = prepare_pair(ir_raw, vis_raw)
    return (torch.from_numpy(np.ascontiguousarray(a))[None, None].float() for a in (ir_u, parts.y))


def fused_grey(model, ir: torch.Tensor, vis: torch.Tensor, **kwargs) -> torch.Tensor:
    """The model's fused image in grey levels, [B, 1, H, W] in 0..255."""
    return model(ir, vis, **kwargs).fused.clamp(0, 1) * 255


@contextlib.contextmanager
def forced_experts(layer: GatedExperts, choose=unchosen):
    """Within the block, ``layer`` runs the experts ``choose(indices, num_experts)`` gives ([B, k])
    in place of the ones its gate chose, with the gate's weights."""
    route = layer.route

    def forced(gate_features, stream=None):
        g, state = route(gate_features, stream)
        idx = choose(g.indices, layer.num_experts)
        gates = torch.zeros_like(g.gates).scatter(1, idx, g.weights.to(g.gates.dtype))
        return Gating(idx, g.weights, gates, (gates > 0).sum(0).to(gates.dtype)), state

    layer.route = forced
    try:
        yield layer
    finally:
        del layer.route  # back to the class's method


@contextlib.contextmanager
def zeroed(layer: GatedExperts):
    """Within the block, ``layer``'s output is zeros."""
    hook = layer.register_forward_hook(lambda m, i, o: o._replace(y=torch.zeros_like(o.y)))
    try:
        yield layer
    finally:
        hook.remove()


def _mean_abs(a: torch.Tensor, b: torch.Tensor, mask: np.ndarray | None = None) -> float:
    d = (a - b).abs()[0, 0].cpu().numpy()
    return float(d[mask].mean() if mask is not None else d.mean())


@torch.inference_mode()
def forced_expert_change(model, ir, vis, layer: str, base: torch.Tensor | None = None) -> float:
    """Mean |change| of the fused image (grey levels) when ``layer`` runs experts it did not choose."""
    base = fused_grey(model, ir, vis) if base is None else base
    with forced_experts(moe_layers(model)[layer]):
        return _mean_abs(fused_grey(model, ir, vis), base)


@torch.inference_mode()
def zeroed_layer_change(model, ir, vis, layer: str, base: torch.Tensor | None = None) -> float:
    """Mean |change| of the fused image (grey levels) when ``layer``'s output is zeroed."""
    base = fused_grey(model, ir, vis) if base is None else base
    with zeroed(moe_layers(model)[layer]):
        return _mean_abs(fused_grey(model, ir, vis), base)


@torch.inference_mode()
def attention_change(model, ir, vis, mask: np.ndarray | None = None, value: float = UNIFORM_ATTENTION,
                     base: torch.Tensor | None = None) -> float:
    """Mean |change| of the fused image (grey levels; inside ``mask`` when given) when the attention
    is ``value`` everywhere."""
    base = fused_grey(model, ir, vis) if base is None else base
    changed = fused_grey(model, ir, vis, attention_override=torch.full_like(ir, value))
    return _mean_abs(changed, base, mask)


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------
@dataclass
class RoutingReport:
    pairs: int = 0
    routing: RoutingStats = field(default_factory=RoutingStats)
    forced: dict = field(default_factory=dict)  # layer -> [change per pair]
    zeroed: dict = field(default_factory=dict)  # layer -> [change per pair]; not the last layer
    attention: list = field(default_factory=list)  # (set, id, mean inside boxes, mean outside, uniform change inside)
    contrast: list = field(default_factory=list)  # (set, id, IR, VIS, average, laplacian, model) person contrast
    maps: list = field(default_factory=list)  # BGR rows IR | VIS | attention | fused, the chosen experts on it
    per_set: dict = field(default_factory=dict)  # set name -> RoutingStats: where each expert is chosen

    def layers(self) -> list[str]:
        return list(self.forced)


def _target_boxes(ds, n: int) -> np.ndarray:
    b_ir, b_vis = ds.annotations(n)
    parts = [b.xyxy[np.isin(b.labels, TARGET_CLASSES)] for b in (b_ir, b_vis) if b is not None]
    return np.concatenate(parts) if parts else np.zeros((0, 4), np.float32)


def chosen_experts(gatings: dict) -> str:
    """'mole_fg 1+3  mole_bg 0+2  moge 2+0': each layer's chosen experts for the first sample, best first."""
    return "  ".join(f"{name} " + "+".join(str(int(i)) for i in g.indices[0].tolist()) for name, g in gatings.items())


def _caption(img: np.ndarray, text: str, y: int) -> None:
    for color, width in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # white on a dark outline: legible anywhere
        cv2.putText(img, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, width, cv2.LINE_8)


def _map_row(ir, vis, att, fused, title: str = "", experts: str = "", size=(320, 240)) -> np.ndarray:
    row = [ir[0, 0].numpy(), vis[0, 0].numpy(), att, fused[0, 0].numpy() / 255]
    row = [cv2.resize((np.clip(x, 0, 1) * 255).astype(np.uint8), size) for x in row]
    row[2] = cv2.applyColorMap(row[2], cv2.COLORMAP_INFERNO)
    row = np.hstack([cv2.cvtColor(x, cv2.COLOR_GRAY2BGR) if x.ndim == 2 else x for x in row])
    _caption(row, title[:48], 14)
    _caption(row, experts, size[1] - 8)
    return row


@torch.inference_mode()
def routing_report(model, sets, limit: int | None = None, maps: int = 0, progress=None) -> RoutingReport:
    """Routing, forced-expert and zeroed-layer effects of every MoE layer, and the attention on
    labelled pairs, over ``sets`` (``HeldOutSet``s: ``.name``, ``.dataset``); at most ``limit`` pairs
    per set, spread evenly over it; ``maps``: how many picture rows to keep (the first pair of each set,
    its chosen experts written on it)."""
    model = model.float().eval()
    layers = moe_layers(model)
    rep = RoutingReport(forced={n: [] for n in layers}, zeroed={n: [] for n in list(layers)[:-1]})
    for held in sets:
        ds = held.dataset
        count = len(ds) if limit is None else min(len(ds), limit)
        for i, n in enumerate(np.unique(np.linspace(0, len(ds) - 1, count).round().astype(int)).tolist()):
            if progress:
                progress(held.name, ds.ids[n])
            ir, vis = to_tensors(*(read_image(p) for p in ds.paths(n)))
            out = model(ir, vis)
            rep.routing.add(out.gatings)
            rep.per_set.setdefault(held.name, RoutingStats()).add(out.gatings)
            rep.pairs += 1
            base = out.fused.clamp(0, 1) * 255
            att = out.attention[0, 0].cpu().numpy()
            if i == 0 and len(rep.maps) < maps:
                rep.maps.append(_map_row(ir, vis, att, base, f"{held.name} {ds.ids[n]}", chosen_experts(out.gatings)))
            for name in layers:
                rep.forced[name].append(forced_expert_change(model, ir, vis, name, base))
            for name in rep.zeroed:
                rep.zeroed[name].append(zeroed_layer_change(model, ir, vis, name, base))
            if not ds.has_boxes:
                continue
            inside = box_union_mask(_target_boxes(ds, n), ir.shape[-2:])
            if not inside.any() or inside.all():
                continue
            rep.attention.append((held.name, ds.ids[n], float(att[inside].mean()), float(att[~inside].mean()),
                                  attention_change(model, ir, vis, inside, base=base)))
            rep.contrast += _person_contrast(held.name, ds, n, ir, vis, base)
    return rep


def _person_contrast(name, ds, n, ir, vis, fused) -> list:
    """[(set, id, IR, VIS, average, laplacian, model)] in the IR person boxes, or [] without any."""
    b_ir = ds.annotations(n)[0]
    if b_ir is None or not (b_ir.labels == PERSON).any():
        return []
    persons = b_ir.xyxy[b_ir.labels == PERSON]
    a, b = ir[0, 0].numpy().astype(np.float64), vis[0, 0].numpy().astype(np.float64)
    lap = np.rint(np.clip(laplacian_pyramid_fusion(a.astype(np.float32), b.astype(np.float32)), 0, 1) * 255)
    images = (a * 255, b * 255, (a + b) * 127.5, lap, fused[0, 0].cpu().numpy().astype(np.float64))
    values = [target_contrast(x, persons) for x in images]
    return [] if values[0] is None else [(name, ds.ids[n], *values)]


def format_report(rep: RoutingReport, title: str = "") -> str:
    """Markdown: a table of the MoE layers, collapsed layers, the attention summary and per pair."""
    s = rep.routing.summary()
    lines = ([title, ""] if title else []) + [
        f"{rep.pairs} pairs.", "",
        ("| layer | times each expert was chosen | distinct expert sets | median smallest selected weight | "
         "mean change when forced to unchosen experts (grey levels) | mean change when zeroed (grey levels) |"),
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in rep.layers():
        zero = f"{np.mean(rep.zeroed[name]):.2f}" if rep.zeroed.get(name) else "-"
        forced = f"{np.mean(rep.forced[name]):.2f}" if rep.forced[name] else "-"
        lines.append(f"| {name} | {s[name + '_experts']} | {s[name + '_sets']} | {s[name + '_minw']:.3f} | "
                     f"{forced} | {zero} |")
    lines.append("")
    lines += [f"collapsed: {problem}" for problem in rep.routing.collapsed()] or ["no collapsed layer"]
    if rep.per_set:
        lines += ["", "Where each expert is chosen: times each expert was chosen, per set (k per pair).", "",
                  "| set | pairs | " + " | ".join(rep.layers()) + " |", "| --- | --- |" + " --- |" * len(rep.layers())]
        for name, stats in rep.per_set.items():
            per = stats.summary()
            pairs = len(next(iter(stats.min_weights.values())))  # one smallest weight per sample
            lines.append(f"| {name} | {pairs} | " + " | ".join(per[f"{layer}_experts"] for layer in rep.layers())
                         + " |")
    if rep.attention:
        inside = np.mean([a[2] for a in rep.attention])
        outside = np.mean([a[3] for a in rep.attention])
        ratio = np.mean([a[2] / max(a[3], 1e-6) for a in rep.attention])
        change = np.mean([a[4] for a in rep.attention])
        lines += ["", (f"Attention on {len(rep.attention)} labelled pairs (person and car boxes): mean {inside:.3f} "
                       f"inside the boxes, {outside:.3f} outside (per pair {ratio:.1f}x on average); a uniform "
                       f"{UNIFORM_ATTENTION} attention moves the fused image inside the boxes by {change:.2f} grey "
                       "levels."),
                  "", "| set | pair | attention inside | outside | change inside with uniform attention |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {a[0]} | {a[1]} | {a[2]:.3f} | {a[3]:.3f} | {a[4]:.2f} |" for a in rep.attention]
    else:
        lines += ["", "No labelled pair with person or car boxes: no attention measurement."]
    if rep.contrast:
        lines += ["", ("Person-minus-surround contrast in the IR person boxes (mean inside minus the mean of a "
                       f"{RING_PX}-pixel ring, grey levels; warm targets should stay bright, as in IR):"), "",
                  "| set | pair | IR | VIS | average | laplacian | model |", "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {c[0]} | {c[1]} | " + " | ".join(f"{v:.1f}" for v in c[2:]) + " |" for c in rep.contrast]
    return "\n".join(lines)
