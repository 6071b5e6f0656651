"""FLOPs per frame and parameters of a model (``moefusion-bench --flops``).

FLOPs are counted by ``torch.utils.flop_counter`` (2 per multiply-add) over one forward pass of the
inference path (attention and fusion; no detections in eval mode) on a batch of one frame of the
given size. What runs is counted: the sparse dispatch runs only the k chosen experts, so the count is
that of the model's dispatch as given (the benchmark counts the sparse one).
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(model: torch.nn.Module, size: tuple[int, int]) -> dict:
    """{"flops": FLOPs of one frame of size (H, W), "params": parameter count} of ``model``."""
    h, w = size
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    ir = torch.rand(1, 1, h, w, generator=g).to(device)
    vis = torch.rand(1, 1, h, w, generator=g).to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(ir, vis)
    finally:
        model.train(was_training)
    return {"flops": int(counter.get_total_flops()), "params": int(sum(p.numel() for p in model.parameters()))}
