#!/usr/bin/env python3
"""ONNX Runtime CPU ms/frame of several exported models, timed alternately in one process.

    moefusion-export -o new.onnx
    python scripts/compare_onnx_speed.py old.onnx new.onnx --rounds 14

Each round runs every model once on the same input, so machine noise (other jobs, clocks) falls on
all of them alike; the ratios to the first model are the result, the absolute medians vary from run
to run. This is how the speed budget of new weights against old ones is measured (docs/benchmark.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help=".onnx files written by moefusion-export (the first is the reference)")
    p.add_argument("--rounds", type=int, default=12, help="timed runs per model (default 12)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (default: its own)")
    args = p.parse_args(argv)
    import onnxruntime as ort

    for m in args.models:
        if not Path(m).is_file():
            print(f"error: {m}: no such file; export it with moefusion-export -o {m}", file=sys.stderr)
            return 2
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sessions = [ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"]) for m in args.models]
    rng = np.random.default_rng(0)
    feeds = []
    for s in sessions:
        feed = {}
        for i in s.get_inputs():
            if not all(isinstance(d, int) for d in i.shape):
                print(f"error: {i.name} of a model has a dynamic shape {i.shape}; export with a fixed --imgsz",
                      file=sys.stderr)
                return 2
            feed[i.name] = rng.random(i.shape, dtype=np.float32)
        feeds.append(feed)
    for s, f in zip(sessions, feeds):
        for _ in range(2):  # warm-up
            s.run(None, f)
    times = [[] for _ in sessions]
    for _ in range(args.rounds):
        for k, (s, f) in enumerate(zip(sessions, feeds)):
            t = time.perf_counter()
            s.run(None, f)
            times[k].append((time.perf_counter() - t) * 1e3)
    ref = statistics.median(times[0])
    for m, t in zip(args.models, times):
        med = statistics.median(t)
        print(f"{m}: median {med:.1f} ms (min {min(t):.1f}, max {max(t):.1f}, n={len(t)}), {med / ref:.3f}x the first")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
