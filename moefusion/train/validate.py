"""Validation during training: the model against the Laplacian pyramid on held-out images."""
from __future__ import annotations

import logging

import numpy as np
import torch

from ..eval.baselines import laplacian_pyramid_fusion
from ..eval.metrics import compute
from ..eval.routing import RoutingStats

log = logging.getLogger("moefusion.train")


@torch.no_grad()
def validate(model, val_set, device, max_images: int) -> dict:
    """Metrics of the model and of a 4-level Laplacian pyramid (the strongest simple baseline) on
    ``max_images`` held-out images drawn evenly from each held-out set (a mean over mixed sets hides
    a set where the model loses), plus how many sets the model beats the pyramid on in Qabf."""
    names = ["EN", "SD", "SF", "AG", "Qabf"]
    was_training = model.training
    model.eval()
    parts = getattr(val_set, "datasets", [val_set])
    per_set = max(1, max_images // max(1, len(parts))) if max_images else 0
    scores = {n: [] for n in names}
    base = {n: [] for n in names}
    sets_above, sets_seen = 0, 0
    routing = RoutingStats()
    for part in parts:
        count = min(len(part), per_set)
        first = len(scores["Qabf"])  # this set's images are scores[...][first:]
        for i in np.linspace(0, len(part) - 1, count).round().astype(int) if count else []:
            item = part[int(i)]
            ir, vis = item["ir"][None].to(device), item["vis"][None].to(device)
            out = model(ir, vis)
            routing.add(out.gatings)
            fused = out.fused.clamp(0, 1)[0, 0].float().cpu().numpy()
            ir_np, vis_np = item["ir"][0].numpy(), item["vis"][0].numpy()
            for n, v in compute(names, fused * 255, ir_np * 255, vis_np * 255).items():
                scores[n].append(v)
            for n, v in compute(names, laplacian_pyramid_fusion(ir_np, vis_np) * 255, ir_np * 255, vis_np * 255).items():
                base[n].append(v)
        if count:
            sets_seen += 1
            sets_above += float(np.mean(scores["Qabf"][first:])) > float(np.mean(base["Qabf"][first:]))
    model.train(was_training)
    out = {n: float(np.mean(v)) for n, v in scores.items() if v}
    out.update({f"laplacian_{n}": float(np.mean(v)) for n, v in base.items() if v})
    if sets_seen:
        out["Qabf_sets_above_laplacian"] = f"{sets_above}/{sets_seen}"
    out.update(routing.summary("val_"))
    for problem in routing.collapsed():
        log.warning("validation: MoE layer collapsed: %s", problem)
    return out

