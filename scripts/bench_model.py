#!/usr/bin/env python
"""FLOPs and parameters per preset, and CPU (or GPU) ms/frame for each dispatch mode.

    python scripts/bench_model.py                      # both presets, 640x480, all dispatch modes
    python scripts/bench_model.py --presets edge --iters 20 --markdown out.md

FLOPs are counted by torch.utils.flop_counter (2 per multiply-add) on the inference path
(attention + fusion, no detections). Times: median of --iters runs after warm-up, one process,
so the ratios between rows are the meaningful numbers on a noisy machine.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import moefusion
from moefusion.model import DISPATCH_MODES


def count(model, h, w):
    x = torch.rand(1, 1, h, w)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, x)
    return fc.get_total_flops(), sum(p.numel() for p in model.parameters())


def time_ms(model, h, w, iters, device):
    g = torch.Generator().manual_seed(0)
    ir = torch.rand(1, 1, h, w, generator=g).to(device)
    vis = torch.rand(1, 1, h, w, generator=g).to(device)
    with torch.no_grad():
        for _ in range(2):
            model(ir, vis)
        times = []
        for _ in range(iters):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(ir, vis)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="edge,paper")
    p.add_argument("--dispatch", default=",".join(DISPATCH_MODES))
    p.add_argument("--imgsz", nargs=2, type=int, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--markdown", help="also write the table here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = args.imgsz
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device {device}{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else ''}, "
        f"torch {torch.__version__}, input {w}x{h}, median of {args.iters}",
        "",
        "| preset | params (M) | GFLOP/frame | dispatch | ms/frame | vs reference |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        model = moefusion.build_model(preset).eval()
        flops, params = count(model, h, w)
        model.to(device)
        ref = None
        for mode in args.dispatch.split(","):
            model.set_dispatch(mode)
            ms = time_ms(model, h, w, args.iters, device)
            ref = ms if mode == "reference" else ref
            ratio = f"{ref / ms:.2f}x" if ref else "-"
            lines.append(f"| {preset} | {params / 1e6:.2f} | {flops / 1e9:.1f} | {mode} | {ms:.1f} | {ratio} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
