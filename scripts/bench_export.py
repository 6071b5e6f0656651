#!/usr/bin/env python3
"""Export benchmark: export time, ONNX size and ONNX Runtime CPU ms/frame at 640x480, per preset and
dispatch flavour (the "Measure" of the export issue; numbers in docs/export.md come from here).

    .venv/bin/python scripts/bench_export.py                       # both presets, sparse/dense/plugin
    .venv/bin/python scripts/bench_export.py --presets edge --iters 20 --out out/bench_export.md

Formats are taken from moefusion.export.formats.FORMATS: a format is timed with ONNX Runtime when its
row says it runs here (``runs_here == "onnxruntime"``); the plugin flavour is exported and sized
only (it needs the TensorRT plugins). Without --weights an untrained model of the preset with random
gates is exported (export time, size and speed do not depend on the weights' values).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import moefusion
from moefusion.export.api import run_export
from moefusion.export.formats import FORMATS


def model_for(preset: str, weights: str | None):
    if weights:
        return moefusion.load(weights, device="cpu").eval()
    torch.manual_seed(0)
    model = moefusion.build_model(preset).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in (model.mole_fg, model.mole_bg, model.moge):
            layer.w_gate.copy_(torch.randn(layer.w_gate.shape, generator=g) * 0.05)
    return model


def ort_ms(path: Path, h: int, w: int, iters: int, threads: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"ir": rng.random((1, 1, h, w), dtype=np.float32), "vis": rng.random((1, 1, h, w), dtype=np.float32)}
    sess.run(None, feeds)  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        sess.run(None, feeds)
    return (time.perf_counter() - t0) * 1000 / iters


def torch_ms(model, h: int, w: int, iters: int) -> float:
    x = torch.rand(1, 1, h, w)
    with torch.no_grad():
        model(x, x)
        t0 = time.perf_counter()
        for _ in range(iters):
            model(x, x)
    return (time.perf_counter() - t0) * 1000 / iters


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["edge", "paper"])
    p.add_argument("--flavours", nargs="+", default=["sparse", "dense", "plugin"])
    p.add_argument("--weights", help="a checkpoint to export instead of untrained presets (one preset)")
    p.add_argument("--imgsz", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    p.add_argument("--opset", type=int, default=18, help="18: dynamo exporter (default); 17: TorchScript exporter")
    p.add_argument("--static", action="store_true", help="export a static 640x480 graph (default: --dynamic)")
    p.add_argument("--iters", type=int, default=0, help="timed runs per model (default: 10 edge, 3 paper)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--torch", action="store_true", help="also time PyTorch eager (sparse dispatch) on the CPU")
    p.add_argument("--out", help="also write the table (.md) and the raw numbers (.json) here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = args.imgsz
    timed_formats = [f.name for f in FORMATS.values() if f.runs_here == "onnxruntime"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as work:
        for preset in args.presets:
            model = model_for(preset, args.weights)
            iters = args.iters or (10 if preset == "edge" else 3)
            if args.torch:
                rows.append({"preset": preset, "flavour": "torch eager (sparse)", "export_s": None, "onnx_mb": None,
                             "ms_per_frame": round(torch_ms(model, h, w, iters), 1), "iters": iters})
                print(rows[-1], flush=True)
            for flavour in args.flavours:
                given = {"format": "onnx", "opset": args.opset, "imgsz": (h, w),
                         "output": str(Path(work) / f"{preset}-{flavour}.onnx")}
                if not args.static:
                    given["dynamic"] = ((64, 64), (1088, 1920))
                if flavour == "plugin":
                    given["plugins"] = "on"
                else:
                    given["dispatch"] = flavour
                res = run_export(given, model=model)
                path = res.outputs[0]
                ms = None
                if flavour != "plugin" and "onnx" in timed_formats:
                    ms = round(ort_ms(path, h, w, iters, args.threads), 1)
                rows.append({"preset": preset, "flavour": flavour, "export_s": round(res.onnx.seconds, 1),
                             "onnx_mb": round(path.stat().st_size / 1e6, 1), "ms_per_frame": ms, "iters": iters})
                print(rows[-1], flush=True)
    import onnxruntime

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, "
               f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, Python {platform.python_version()}")
    cmd = "python scripts/bench_export.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"Command: `{cmd.strip()}`  ", f"Machine: {machine}; load average at the end "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}  ",
             f"Export: opset {args.opset} ({'dynamo' if args.opset >= 18 else 'TorchScript'} exporter), "
             f"{'static' if args.static else 'dynamic H/W'}; ONNX Runtime CPU at {w}x{h}, batch 1, "
             f"{args.threads} threads", "",
             "| preset | flavour | export s | ONNX MB | ORT CPU ms/frame |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['flavour']} | {r['export_s'] if r['export_s'] is not None else '-'} | "
                     f"{r['onnx_mb'] if r['onnx_mb'] is not None else '-'} | "
                     f"{r['ms_per_frame'] if r['ms_per_frame'] is not None else 'n/a (TensorRT plugins)'} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(table + "\n")
        out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
