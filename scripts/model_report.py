#!/usr/bin/env python
"""Does every part of a checkpoint earn its place? Routing, ablations and attention on held-out pairs.

    python scripts/model_report.py --weights moefusion/weights/moefusion_edge.pt [--maps maps.png]

On the pairs the checkpoint never trained on (moefusion.eval.heldout, from its saved training
config), per MoE layer: how often each expert is chosen, the distinct expert sets, the median
smallest selected weight, and how far the fused image moves (mean |change|, grey levels) when the
layer's output is zeroed. For the attention: mean attention inside the labelled person/car boxes
over the mean outside, and how far a uniform 0.5 attention moves the fused image inside the boxes.
``--maps`` writes a picture of real attention maps (IR | VIS | attention | fused) for docs.
``--limit N`` uses at most N pairs per set (quick looks at checkpoints during training).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch

from moefusion.data.io import read_image
from moefusion.data.preprocess import prepare_pair
from moefusion.eval.contrast import box_union_mask
from moefusion.eval.heldout import heldout_sets
from moefusion.model.checkpoint import model_from_checkpoint, read_checkpoint
from moefusion.train import RoutingStats

LAYERS = ("mole_fg", "mole_bg", "moge")
TARGET_CLASSES = (0, 2)  # person, car


def tensors(ir_raw, vis_raw):
    ir_u, parts = prepare_pair(ir_raw, vis_raw)
    t = lambda a: torch.from_numpy(a)[None, None].float()  # noqa: E731
    return t(ir_u), t(parts.y)


@torch.inference_mode()
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--maps", help="write a PNG of attention maps on held-out labelled pairs")
    args = p.parse_args()
    state = read_checkpoint(args.weights)
    model = model_from_checkpoint(state).float().eval()
    cfg = state["meta"]["train_config"]
    routing = RoutingStats()
    effects = {n: [] for n in LAYERS[:-1]}
    ratios, steer, tiles = [], [], []
    for held in heldout_sets(cfg):
        ds = held.dataset
        n_pairs = len(ds) if args.limit is None else min(len(ds), args.limit)
        for n in np.linspace(0, len(ds) - 1, n_pairs).round().astype(int):
            ir_path, vis_path = ds.paths(int(n))
            ir, vis = tensors(read_image(ir_path), read_image(vis_path))
            out = model(ir, vis)
            routing.add(out.gatings)
            fused = out.fused.clamp(0, 1) * 255
            for name in effects:
                hook = getattr(model, name).register_forward_hook(lambda m, i, o: o._replace(y=torch.zeros_like(o.y)))
                try:
                    effects[name].append(float((model(ir, vis).fused.clamp(0, 1) * 255 - fused).abs().mean()))
                finally:
                    hook.remove()
            if ds.has_boxes:
                b_ir, b_vis = ds.annotations(int(n))
                xyxy = np.concatenate([b.xyxy[np.isin(b.labels, TARGET_CLASSES)] for b in (b_ir, b_vis) if b is not None])
                inside = box_union_mask(xyxy, ir.shape[-2:])
                if inside.any():
                    att = out.attention[0, 0].numpy()
                    ratios.append((ds.ids[int(n)], float(att[inside].mean()), float(att[~inside].mean())))
                    uni = model(ir, vis, attention_override=torch.full_like(ir, 0.5)).fused.clamp(0, 1) * 255
                    steer.append(float((uni - fused).abs()[0, 0].numpy()[inside].mean()))
                    if args.maps and len(tiles) < 4:
                        row = [ir[0, 0].numpy(), vis[0, 0].numpy(), att, fused[0, 0].numpy() / 255]
                        row = [cv2.resize((np.clip(x, 0, 1) * 255).astype(np.uint8), (320, 240)) for x in row]
                        row[2] = cv2.applyColorMap(row[2], cv2.COLORMAP_INFERNO)
                        tiles.append(np.hstack([cv2.cvtColor(x, cv2.COLOR_GRAY2BGR) if x.ndim == 2 else x for x in row]))
    print(f"held-out pairs: {sum(len(v) for v in routing.min_weights.values()) // len(LAYERS)}")
    print("| layer | times each expert was chosen | distinct expert sets | median smallest selected weight | "
          "mean change when zeroed (grey levels) |")
    print("| --- | --- | --- | --- | --- |")
    s = routing.summary()
    for name in LAYERS:
        eff = f"{np.mean(effects[name]):.2f}" if name in effects else "(makes the image)"
        print(f"| {name} | {s[name + '_experts']} | {s[name + '_sets']} | {s[name + '_minw']:.3f} | {eff} |")
    for problem in routing.collapsed():
        print("collapsed:", problem)
    if ratios:
        inside = np.mean([r[1] for r in ratios])
        outside = np.mean([r[2] for r in ratios])
        per_pair = np.mean([r[1] / max(r[2], 1e-6) for r in ratios])
        print(f"attention on {len(ratios)} labelled pairs: inside boxes {inside:.3f}, outside {outside:.3f}, "
              f"mean per-pair ratio {per_pair:.2f}; uniform 0.5 attention moves the fused image inside the "
              f"boxes by {np.mean(steer):.2f} grey levels")
        for i, a, b in ratios:
            print(f"  {i}: inside {a:.3f} outside {b:.3f}")
    if args.maps and tiles:
        Path(args.maps).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(args.maps, np.vstack(tiles))
        print(f"attention maps: {args.maps} (IR | VIS | attention | fused)")


if __name__ == "__main__":
    main()
