#!/usr/bin/env python3
"""End-to-end pipeline speed beside model-only speed, on the same machine and the same input.

    python scripts/bench_pipeline.py                                   # the default set of cases
    python scripts/bench_pipeline.py --case average --case synthetic:6 --size 640x480 --frames 200
    python scripts/bench_pipeline.py --case torch:edge --frames 20      # MoEFusion edge preset (untrained)
    python scripts/bench_pipeline.py --case model:/path/to/model.onnx
    python scripts/bench_pipeline.py --only-own                         # the pipeline's own cost per frame

Input: a pair of synthetic clips (samples' procedural scene, scaled to --size) written to a
temporary folder as MPEG-4 files, read by the real capture (GStreamer, or OpenCV when
GStreamer is missing). The pipeline runs over files in lockstep, so it processes every frame as
fast as it can: its FPS is the throughput, comparable with the model-only FPS.

Model-only: ``backend.infer`` on the preprocessed first frame pair, back to back, after warm-up.
Pipeline: capture + decode, pairing, preprocessing, inference, postprocessing, sink.
Overhead per frame outside inference, two ways: wall time, 1000/pipeline_FPS - 1000/model_FPS
(ms; meaningful when the model is the bottleneck), and CPU time: the process's CPU time per
output frame in the pipeline (all threads: GStreamer decode and colour conversion, pairing,
pre/postprocessing, sink) minus the model's CPU time per inference. The CPU figure is the cost
that has to fit beside inference, and it is far less sensitive to other load on the machine.

Cases: ``average`` (no model: the pipeline's own ceiling), ``synthetic:N`` (an ONNX Runtime
model with the runtime's contract and N 3x3 conv layers: a model of known, fixed cost),
``torch:PRESET`` (MoEFusion built from a preset, untrained), ``model:PATH`` (a checkpoint,
.onnx or .engine, through the same backend selection as run_pipeline).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings

import cv2
import numpy as np

from moefusion.runtime import gst as gstmod
from moefusion.runtime.backends import AverageBackend, OnnxRuntimeBackend, TorchBackend, select_backend
from moefusion.runtime.pipeline import Pipeline, PipelineConfig
from moefusion.runtime.process import Preprocessor
from moefusion.runtime.samplegen import render_frames
from moefusion.runtime.stats import percentiles
from moefusion.runtime.uri import StreamOptions, parse_input_uri, parse_output_uri


def write_inputs(folder: str, size: tuple[int, int], frames: int, fps: float = 30.0):
    ir_path, vis_path = os.path.join(folder, "ir.mp4"), os.path.join(folder, "vis.mp4")
    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    wi = cv2.VideoWriter(ir_path, fourcc, fps, size, isColor=False)
    wv = cv2.VideoWriter(vis_path, fourcc, fps, size, isColor=True)
    for ir, vis in render_frames(frames):
        wi.write(cv2.resize(ir, size))
        wv.write(cv2.resize(vis, size))
    wi.release()
    wv.release()
    return ir_path, vis_path


def synthetic_onnx(folder: str, layers: int) -> str:
    """A model with the export contract (ir, vis -> fused, attention) and a fixed cost."""
    import torch
    from torch import nn

    class Synthetic(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.inp = nn.Conv2d(2, 16, 3, padding=1)
            self.body = nn.Sequential(*[nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()) for _ in range(layers)])
            self.out = nn.Conv2d(16, 2, 3, padding=1)

        def forward(self, ir, vis):
            y = self.out(self.body(self.inp(torch.cat([ir, vis], 1))))
            a = torch.sigmoid(y[:, 1:2])
            return (a * ir + (1 - a) * vis + 0.01 * torch.tanh(y[:, :1])).clamp(0, 1), a

    path = os.path.join(folder, f"synthetic{layers}.onnx")
    x = torch.rand(1, 1, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Synthetic().eval(), (x, x), path, input_names=["ir", "vis"], output_names=["fused", "attention"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={n: {2: "h", 3: "w"} for n in ("ir", "vis", "fused", "attention")})
    return path


ORT_THREADS = 0


def make_backend(case: str, folder: str):
    if case == "average":
        return AverageBackend(), "average"
    kind, _, arg = case.partition(":")
    if kind == "synthetic":
        return OnnxRuntimeBackend(synthetic_onnx(folder, int(arg or 2)), device="cpu", threads=ORT_THREADS), case
    if kind == "torch":
        import moefusion

        return TorchBackend(model=moefusion.build_model(arg or "edge"), device="auto"), case
    if kind == "model":
        b, _ = select_backend("auto", arg)
        return b, case
    raise SystemExit(f"unknown case {case!r}")


def model_only(backend, ir_path, vis_path, iters: int, min_seconds: float):
    from moefusion.runtime.capture import Status, make_capture

    frames = {}
    for role, path in (("ir", ir_path), ("vis", vis_path)):
        c = make_capture(parse_input_uri(path), StreamOptions(), role)
        c.open()
        st, f = c.read(5.0)
        c.close()
        assert st is Status.OK
        frames[role] = f.image
    from moefusion.runtime.fit import plan_model_fit

    # a fixed-size model gets the frames fitted to its input, as in the pipeline
    prep = Preprocessor(fit_for=lambda h, w: plan_model_fit((h, w), backend.size_range))(frames["ir"], frames["vis"])
    backend.warmup(prep.model_vis.shape[2], prep.model_vis.shape[3], iters=3)
    times = []
    cpu0 = time.process_time()
    t_end = time.perf_counter() + min_seconds
    while len(times) < iters or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        backend.infer(prep.model_ir, prep.model_vis)
        times.append((time.perf_counter() - t0) * 1000)
        if len(times) >= 10 * iters:
            break
    cpu_ms = (time.process_time() - cpu0) * 1000 / len(times)
    return {"fps": 1000.0 / float(np.mean(times)), "ms": percentiles(times), "iters": len(times), "cpu_ms": cpu_ms}


def pipeline(backend, ir_path, vis_path, output: str, frames: int):
    cfg = PipelineConfig(ir=parse_input_uri(ir_path), vis=parse_input_uri(vis_path),
                         outputs=[parse_output_uri(output)], stats_interval=0, max_frames=frames)
    p = Pipeline(cfg, backend, backend_reason="benchmark")
    cpu0 = time.process_time()
    s = p.run()
    cpu_ms = (time.process_time() - cpu0) * 1000 / max(1, s["frames_out"])
    assert s["ok"], s["errors"]
    stages = {k: v["mean"] for k, v in s["stage_ms"].items()}
    outside = sum(v for k, v in stages.items() if k != "infer")
    return {"fps": s["fps"], "frames": s["frames_out"], "latency_ms": s["latency_ms"], "stage_mean_ms": stages,
            "outside_inference_ms": round(outside, 3), "drops": s["drops"], "cpu_ms": cpu_ms}


def pipeline_live(backend, size, rate: float, frames: int):
    """Live test sources (videotestsrc, is-live) at ``rate``: the latency a camera user sees."""
    w, h = size
    cfg = PipelineConfig(ir=parse_input_uri("test://ball"), vis=parse_input_uri("test://smpte"),
                         ir_opts=StreamOptions(width=w, height=h, rate=rate), vis_opts=StreamOptions(width=w, height=h, rate=rate),
                         outputs=[parse_output_uri("none")], stats_interval=0, max_frames=frames)
    s = Pipeline(cfg, backend, backend_reason="benchmark").run()
    assert s["ok"], s["errors"]
    return {"fps": s["fps"], "latency_ms": s["latency_ms"], "drops": s["drops"]}


def own_cpu_cost(size, frames: int = 900):
    """Steady-state cost per frame, all threads, with the average backend and non-live test sources
    (no file decoding), output none: CPU time and minor page faults of the whole pipeline, of the two
    sources alone (pattern generation, colour conversion, appsink, copy into numpy; captured exactly
    as the pipeline captures them: VIS as I420), and of the average backend's inference alone. The
    pipeline's own work (pairing, pre/postprocessing, queues, statistics) is the pipeline minus the
    sources; "without inference" also takes the backend's cost off. Setup is removed by differencing
    two run lengths (best of two runs each). Also the stage table (mean ms) of the long run."""
    import resource

    from moefusion.runtime.capture import make_capture
    from moefusion.runtime.capture import Status as St

    w, h = size

    def uris(n):
        return (parse_input_uri(f"test://ball?is-live=false&num-buffers={n}"),
                parse_input_uri(f"test://smpte?is-live=false&num-buffers={n}"))

    opts = StreamOptions(width=w, height=h)
    stages = {}

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def run_pipe(n):
        ir, vis = uris(n)
        cfg = PipelineConfig(ir=ir, vis=vis, ir_opts=opts, vis_opts=opts, outputs=[parse_output_uri("none")],
                             stats_interval=0)
        f0, c0 = faults(), time.process_time()
        s = Pipeline(cfg, AverageBackend()).run()
        stages[n] = {k: v["mean"] for k, v in s["stage_ms"].items()}
        return (time.process_time() - c0) * 1000, faults() - f0

    def run_sources(n):
        total = nf = 0.0
        for role, u in zip(("ir", "vis"), uris(n)):
            c = make_capture(u, opts, role, yuv=role == "vis")
            f0, c0 = faults(), time.process_time()
            c.open()
            while c.read(2.0)[0] is St.OK:
                pass
            c.close()
            total += (time.process_time() - c0) * 1000
            nf += faults() - f0
        return total, nf

    def per_frame(fn):
        short = 100
        long_ = [fn(frames) for _ in range(2)]
        short_ = [fn(short) for _ in range(2)]
        return tuple((min(x[i] for x in long_) - min(x[i] for x in short_)) / (frames - short) for i in (0, 1))

    pipe, pipe_f = per_frame(run_pipe)
    src, src_f = per_frame(run_sources)
    rng = np.random.default_rng(0)
    a, b = rng.random((1, 1, h, w), dtype=np.float32), rng.random((1, 1, h, w), dtype=np.float32)
    avg = AverageBackend()
    c0 = time.process_time()
    for _ in range(200):
        avg.infer(a, b)
    infer = (time.process_time() - c0) * 1000 / 200
    return {"pipeline_cpu_ms_per_frame": round(pipe, 3), "sources_cpu_ms_per_frame": round(src, 3),
            "pipeline_own_cpu_ms_per_frame": round(pipe - src, 3), "average_infer_cpu_ms": round(infer, 3),
            "pipeline_own_cpu_ms_without_inference": round(pipe - src - infer, 3),
            "page_faults_per_frame": round(pipe_f, 1), "sources_page_faults_per_frame": round(src_f, 1),
            "stage_mean_ms": stages.get(frames)}


def stage_costs(size, n: int = 400):
    """CPU time of the per-frame Python work alone (no threads, no GStreamer), on 16 different
    synthetic frames in turn (not one frame hot in the cache): preprocessing and postprocessing
    for a BGR visible frame (OpenCV, image files) and an I420 one (GStreamer's fast path), with
    buffers from a pool as in the pipeline, and page faults per frame."""
    import resource

    from moefusion.runtime.process import BufferPool, postprocess
    from moefusion.runtime.yuv import I420Frame

    w, h = size
    rng = np.random.default_rng(0)
    irs = [rng.integers(0, 256, (h, w), np.uint8) for _ in range(16)]
    bgr = [rng.integers(0, 256, (h, w, 3), np.uint8) for _ in range(16)]
    out = {}
    for name, viss in (("bgr", bgr), ("i420", [I420Frame.from_bgr(v) for v in bgr])):
        pre, avg = Preprocessor(pool=BufferPool()), AverageBackend()
        t_pre = t_post = 0.0
        for i in range(n + 20):
            if i == 20:  # after warm-up
                t_pre = t_post = 0.0
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c0 = time.process_time()
            p = pre(irs[i % 16], viss[i % 16])
            c1 = time.process_time()
            fused, _ = avg.infer(p.model_ir, p.model_vis)
            c2 = time.process_time()
            postprocess(fused[0, 0], p)
            p.release()
            t_pre += c1 - c0
            t_post += time.process_time() - c2
        out[name] = {"preprocess_ms": round(t_pre * 1000 / n, 3), "postprocess_ms": round(t_post * 1000 / n, 3),
                     "page_faults_per_frame": round((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n, 1)}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", help="average | synthetic:N | torch:PRESET | model:PATH (repeatable)")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--frames", type=int, default=150, help="frames per pipeline run")
    ap.add_argument("--output", action="append", help="sink(s) to measure: none, file (default: none and file)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--ort-threads", type=int, default=0,
                    help="ONNX Runtime intra-op threads for synthetic cases (0: its default; 1 leaves the other "
                         "cores to capture/decode/encode, as a GPU would)")
    ap.add_argument("--live-rate", type=float, default=30.0,
                    help="also run live test sources at this rate for capture-to-output latency (0: skip)")
    ap.add_argument("--no-own-cpu", dest="own_cpu", action="store_false",
                    help="skip the steady-state CPU cost measurement of the pipeline itself")
    ap.add_argument("--model-seconds", type=float, default=2.0, help="minimum time per model-only measurement")
    ap.add_argument("--only-own", action="store_true",
                    help="only the pipeline's own cost (steady-state CPU, page faults, stage costs): no cases")
    args = ap.parse_args()
    global ORT_THREADS
    ORT_THREADS = args.ort_threads
    w, h = (int(v) for v in args.size.split("x"))
    cases = [] if args.only_own else (args.case or ["average", "synthetic:1", "synthetic:4"])
    outputs = args.output or ["none", "file"]
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    info = {"load_avg_at_start": load, "machine": platform.node(), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": sys.version.split()[0], "gstreamer": gstmod.have_gst(), "size": [w, h], "frames": args.frames}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    results = []
    with tempfile.TemporaryDirectory() as d:
        ir_path, vis_path = write_inputs(d, (w, h), max(args.frames, 10)) if cases else (None, None)
        for case in cases:
            backend, name = make_backend(case, d)
            for out in outputs:
                # model-only right before and right after the pipeline run (other load on the machine drifts)
                mo_a = model_only(backend, ir_path, vis_path, iters=min(args.frames, 50), min_seconds=args.model_seconds)
                sink = "none" if out == "none" else os.path.join(d, f"out_{len(results)}.mp4")
                pl = pipeline(backend, ir_path, vis_path, sink, args.frames)
                mo_b = model_only(backend, ir_path, vis_path, iters=min(args.frames, 50), min_seconds=args.model_seconds)
                mo = {"fps": (mo_a["fps"] + mo_b["fps"]) / 2, "ms": mo_a["ms"], "cpu_ms": (mo_a["cpu_ms"] + mo_b["cpu_ms"]) / 2}
                r = {"case": name, "backend": backend.describe(), "output": out, "model_fps": round(mo["fps"], 2),
                     "model_fps_before_after": [round(mo_a["fps"], 2), round(mo_b["fps"], 2)],
                     "model_ms_p50": mo["ms"]["p50"], "pipeline_fps": round(pl["fps"], 2),
                     "ratio": round(pl["fps"] / mo["fps"], 3),
                     "overhead_ms_per_frame": round(1000 / pl["fps"] - 1000 / mo["fps"], 2),
                     "outside_inference_ms": pl["outside_inference_ms"], "latency_ms": pl["latency_ms"],
                     "cpu_ms_per_frame": round(pl["cpu_ms"], 2), "model_cpu_ms": round(mo["cpu_ms"], 2),
                     "cpu_ms_outside_inference": round(pl["cpu_ms"] - mo["cpu_ms"], 2),
                     "stage_mean_ms": pl["stage_mean_ms"], "drops": pl["drops"], "frames": pl["frames"]}
                results.append(r)
                print(f"{name:14s} out={out:4s} model {mo['fps']:8.1f} FPS ({mo_a['fps']:.1f}/{mo_b['fps']:.1f}) | pipeline "
                      f"{pl['fps']:8.1f} FPS = {r['ratio'] * 100:5.1f}% | +{r['overhead_ms_per_frame']:.2f} ms/frame | "
                      f"CPU outside inference {r['cpu_ms_outside_inference']:.2f} ms/frame | latency p50/p95/p99 "
                      f"{pl['latency_ms']['p50']:.1f}/{pl['latency_ms']['p95']:.1f}/{pl['latency_ms']['p99']:.1f} ms",
                      flush=True)
            if args.live_rate and gstmod.have_gst():
                lv = pipeline_live(backend, (w, h), args.live_rate, args.frames)
                results.append({"case": name, "output": f"live test:// at {args.live_rate:g} Hz, none", **lv})
                lat = lv["latency_ms"]
                print(f"{name:14s} live {args.live_rate:g} Hz: {lv['fps']:.1f} FPS | latency p50/p95/p99 "
                      f"{lat['p50']:.1f}/{lat['p95']:.1f}/{lat['p99']:.1f} ms | drops {lv['drops'] or 'none'}", flush=True)
            backend.close()
    own = None
    if args.own_cpu and gstmod.have_gst():
        own = own_cpu_cost((w, h))
        print(f"steady-state CPU per frame at {w}x{h} (average backend, non-live test sources): pipeline "
              f"{own['pipeline_cpu_ms_per_frame']:.2f} ms, of which the two sources {own['sources_cpu_ms_per_frame']:.2f} ms "
              f"and the pipeline's own work (pairing, pre/postprocessing, queues, statistics) "
              f"{own['pipeline_own_cpu_ms_per_frame']:.2f} ms, {own['pipeline_own_cpu_ms_without_inference']:.2f} ms "
              f"without the average backend's {own['average_infer_cpu_ms']:.2f} ms; page faults per frame "
              f"{own['page_faults_per_frame']:.0f} (sources alone {own['sources_page_faults_per_frame']:.0f}); "
              f"stage means (ms, wall) {own['stage_mean_ms']}", flush=True)
    costs = stage_costs((w, h))
    for name, c in costs.items():
        print(f"per-frame Python work alone at {w}x{h}, {name} visible frames: preprocess {c['preprocess_ms']:.2f} ms, "
              f"postprocess {c['postprocess_ms']:.2f} ms CPU, {c['page_faults_per_frame']:.1f} page faults", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results, "own_cpu": own, "stage_costs": costs}, f, indent=2)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
