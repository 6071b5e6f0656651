#!/usr/bin/env python
"""Spatial detail against frame-to-frame change, on the same video frames, as the detail gain varies.

    python scripts/detail_tradeoff.py --gains 1.0,1.1,1.2 [--weights W] [--data ../shared/data]

The pyramid head multiplies the blended detail by ``pyramid_detail_gain`` (1.2 in ``edge``). On the
TNO sequences (whole) and the first 60 frames of the video clip the weights' training config held
out, this prints per sequence: SF and Qabf (means over frames), frame-to-frame change and
brightness spread (moefusion.eval.temporal; route smoothing on, as for live video), and
change / SF, for the model at each gain and for the Laplacian pyramid (moefusion-eval's
``laplacian``). Issue 10 asks for SF and Qabf at least the pyramid's and change at most the
pyramid's; change / SF below the pyramid's is what meeting both needs.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from moefusion.data.preprocess import prepare_pair, split_visible
from moefusion.eval import baselines, metrics
from moefusion.eval.heldout import excluded_clips
from moefusion.eval.temporal import clip_frames, sequence_frames, temporal_metrics
from moefusion.model.checkpoint import DEFAULT_WEIGHTS, model_from_checkpoint, read_checkpoint
from moefusion.model.presets import validate_config

SEQUENCES = ("tno_seq_tree", "tno_seq_duine", "tno_seq_nato_camp")
CLIP_FRAMES = 60


def held_out_clip(ckpt: dict, path: str) -> tuple[str, str]:
    clips = excluded_clips(ckpt.get("meta", {}).get("train_config") or {})
    if not clips:
        raise SystemExit(f"error: {path}: its training config holds out no video clip (train with an m3svd_video "
                         "entry with 'exclude', or pass the bundled weights)")
    return clips[0]


def measure(fused_frames, sources) -> dict:
    per_frame = [metrics.compute(["SF", "Qabf"], f, i, v) for f, (i, v) in zip(fused_frames, sources)]
    t = temporal_metrics(fused_frames)
    sf = float(np.mean([m["SF"] for m in per_frame]))
    return {"SF": sf, "Qabf": float(np.mean([m["Qabf"] for m in per_frame])), "change": t["change"],
            "brightness_sd": t["brightness_sd"], "change/SF": t["change"] / sf}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--gains", default="1.0,1.1,1.2", help="comma-separated pyramid_detail_gain values")
    args = p.parse_args()
    ckpt = read_checkpoint(args.weights)
    model = model_from_checkpoint(ckpt).float().eval()
    model.set_route_smoothing()  # as for live video
    try:
        gains = [float(g) for g in args.gains.split(",")]
        configs = {g: validate_config(dataclasses.replace(model.cfg, pyramid_detail_gain=g)) for g in gains}
    except ValueError as e:
        raise SystemExit(f"error: --gains {args.gains}: {e}")
    video, clip = held_out_clip(ckpt, args.weights)
    data = Path(args.data)
    clip_root = data / Path(video).name  # the config names the training machine's folder
    readers = {n: (lambda n=n: sequence_frames(data / n)) for n in SEQUENCES}
    readers[f"{clip_root.name} {clip}"] = lambda: clip_frames(clip_root / "ir" / f"{clip}.mp4",
                                                            clip_root / "vis" / f"{clip}.mp4", CLIP_FRAMES)
    keys = ("SF", "Qabf", "change", "brightness_sd", "change/SF")
    print("| sequence | method | " + " | ".join(keys) + " |\n| --- | --- |" + " --- |" * len(keys))
    wins = {g: {k: 0 for k in keys[:4]} for g in gains}
    for name, read in readers.items():
        frames = list(read())
        units = [prepare_pair(ir, vis) for ir, vis in frames]
        sources = [(np.rint(u * 255.0), np.rint(parts.y * 255.0)) for u, parts in units]
        lap = measure([np.rint(np.clip(baselines.laplacian_pyramid(u, parts.y), 0, 1) * 255) for u, parts in units], sources)
        rows = {"laplacian": lap}
        for g in gains:
            model.cfg = configs[g]
            model.reset_route_state()  # each run is a new stream
            with torch.inference_mode():
                fused = [np.rint(split_visible(model.fuse(ir, vis)).y.astype(np.float64) * 255) for ir, vis in frames]
            rows[f"model, gain {g:g}"] = r = measure(fused, sources)
            for k in ("SF", "Qabf"):
                wins[g][k] += r[k] >= lap[k]
            for k in ("change", "brightness_sd"):
                wins[g][k] += r[k] <= lap[k]
        for label, r in rows.items():
            print(f"| {name} ({len(frames)} frames) | {label} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |", flush=True)
    print(f"\nsequences (of {len(readers)}) where the model at each gain is at least the pyramid in SF, Qabf "
          "and at most it in change, brightness spread:")
    for g, w in wins.items():
        print(f"  gain {g:g}: " + ", ".join(f"{k} {n}" for k, n in w.items()))


if __name__ == "__main__":
    main()
