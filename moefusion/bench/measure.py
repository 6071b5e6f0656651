"""Timing, statistics, inputs and the end-to-end pipeline run of ``moefusion-bench``.

Model-only timing: after ``warmup`` calls, ``iters`` timed calls (or as many as fit a time
budget, at least ``MIN_ITERS``); ``sample_alternating`` times several models in turn for an A/B
ratio. On a GPU, torch-based and TensorRT rows are timed with CUDA
events around the device work only (inputs already on the device, no host copies: the model's
own time); on the CPU, and for ONNX Runtime, with ``time.perf_counter`` around
``Backend.infer`` (host arrays in and out, as the pipeline calls it). Statistics: median, p99
and mean after dropping far outliers (outside Tukey's fences Q1 - 3 IQR, Q3 + 3 IQR; counted,
and only with at least ``MIN_FOR_CLIPPING`` samples), plus the raw min/max.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from ..kernels import fast
from ..runtime.backends import Backend, TensorRTBackend, TorchBackend, _check_inputs, _cuda_check
from ..runtime.pipeline import Pipeline, PipelineConfig
from ..runtime.process import Preprocessor
from ..runtime.samplegen import render_frames
from ..runtime.uri import parse_input_uri, parse_output_uri

MIN_ITERS = 3
MIN_FOR_CLIPPING = 8
OUTLIER_IQR = 3.0


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------

def summarize(samples_ms) -> dict:
    """Median / p99 / mean of the samples after dropping far outliers (counted in ``clipped``)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    kept = a
    if a.size >= MIN_FOR_CLIPPING:
        q1, q3 = np.percentile(a, (25, 75))
        iqr = q3 - q1
        lo, hi = q1 - OUTLIER_IQR * iqr, q3 + OUTLIER_IQR * iqr
        kept = a[(a >= lo) & (a <= hi)]
    return {
        "p50": round(float(np.median(kept)), 4),
        "p99": round(float(np.percentile(kept, 99)), 4),
        "mean": round(float(kept.mean()), 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
        "n": int(a.size),
        "clipped": int(a.size - kept.size),
    }


def sample(once, *, warmup: int, iters: int | None, budget_s: float, max_iters: int) -> list[float]:
    """Call ``once() -> ms`` ``warmup`` times untimed, then ``iters`` times (None: as many as fit
    ``budget_s`` judged by the first timed call, between MIN_ITERS and max_iters)."""
    for _ in range(warmup):
        once()
    samples = [once()]
    n = iters if iters else max(MIN_ITERS, min(max_iters, math.ceil(budget_s * 1000.0 / max(samples[0], 1e-3))))
    while len(samples) < n:
        samples.append(once())
    return samples


def sample_alternating(timers, *, warmup: int, iters: int | None, budget_s: float, max_iters: int) -> list[list[float]]:
    """A/B timing in one process: ``warmup`` untimed calls of each timer, then rounds of one call of each,
    the order reversed every round (A B, B A, ...) so that neither model always runs second; ``iters``
    rounds (None: as many as fit ``budget_s`` judged by the first round, between MIN_ITERS and max_iters).
    Machine noise (other jobs, clocks) falls on every model alike; compare them by ratios."""
    for once in timers:
        for _ in range(warmup):
            once()
    samples: list[list[float]] = [[once()] for once in timers]
    first = sum(s[0] for s in samples)
    n = iters if iters else max(MIN_ITERS, min(max_iters, math.ceil(budget_s * 1000.0 / max(first, 1e-3))))
    for r in range(1, n):
        order = range(len(timers)) if r % 2 == 0 else reversed(range(len(timers)))
        for k in order:
            samples[k].append(timers[k]())
    return samples


class CpuTimed:
    """Wraps a timer (``once() -> ms``) and adds up the process's CPU time (all threads) of its calls."""

    def __init__(self, once):
        self.once, self.calls, self.cpu_s = once, 0, 0.0

    def __call__(self) -> float:
        c0 = time.process_time()
        ms = self.once()
        self.cpu_s += time.process_time() - c0
        self.calls += 1
        return ms

    @property
    def cpu_ms(self) -> float | None:
        return round(self.cpu_s * 1000.0 / self.calls, 3) if self.calls else None


# ----------------------------------------------------------------------------------------------
# timers: zero-argument callables returning the milliseconds of one call
# ----------------------------------------------------------------------------------------------

def wall_timer(backend: Backend, ir: np.ndarray, vis: np.ndarray):
    def once() -> float:
        t0 = time.perf_counter()
        backend.infer(ir, vis)
        return (time.perf_counter() - t0) * 1000.0

    return once


def _torch_event_timer(torch, fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def once() -> float:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return once


def device_timer(backend: Backend, ir: np.ndarray, vis: np.ndarray):
    """(timer, how) timing only the device work of one call, or (None, why not) where there is none."""
    if isinstance(backend, TorchBackend):
        backend.load()
        if backend.device.type != "cuda":
            return None, "cpu"
        backend.infer(ir, vis)  # the same buffers (and CUDA graph) run_pipeline uses for this shape
        return _torch_event_timer(backend.torch, backend.device_call(ir, vis)), \
            "CUDA events, device work only (inputs on the GPU)"
    if isinstance(backend, EagerTorchBackend):
        if backend.device.type != "cuda":
            return None, "cpu"
        return _torch_event_timer(backend.torch, backend.device_call(ir, vis)), \
            "CUDA events, device work only (inputs on the GPU)"
    if isinstance(backend, KernelsBackend):
        torch = backend.torch
        runner = backend.runner(tuple(ir.shape))
        for dst, src in zip(runner.static_inputs, (ir, vis)):
            dst.copy_(torch.from_numpy(np.ascontiguousarray(src)))
        return _torch_event_timer(torch, runner.graph.replay), "CUDA events, device work only (inputs on the GPU)"
    if isinstance(backend, TensorRTBackend):
        backend.infer(ir, vis)  # allocates for this shape and leaves the inputs on the device
        cudart, stream, ctx = backend.cudart, backend.stream, backend.context
        start = _cuda_check(cudart.cudaEventCreate(), "cudaEventCreate")
        end = _cuda_check(cudart.cudaEventCreate(), "cudaEventCreate")

        def once() -> float:
            _cuda_check(cudart.cudaEventRecord(start, stream), "cudaEventRecord")
            if not ctx.execute_async_v3(int(stream)):
                raise RuntimeError(f"TensorRT execute_async_v3 failed for {backend.path}")
            _cuda_check(cudart.cudaEventRecord(end, stream), "cudaEventRecord")
            _cuda_check(cudart.cudaEventSynchronize(end), "cudaEventSynchronize")
            return float(_cuda_check(cudart.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

        return once, "CUDA events, device work only (inputs on the GPU)"
    return None, "host"


def make_timer(backend: Backend, ir: np.ndarray, vis: np.ndarray, device: str):
    """(timer, description of what is timed)."""
    if device == "cuda":
        t, how = device_timer(backend, ir, vis)
        if t is not None:
            return t, how
    return wall_timer(backend, ir, vis), "wall clock around Backend.infer (host arrays in and out)"


# ----------------------------------------------------------------------------------------------
# backends used only by the benchmark
# ----------------------------------------------------------------------------------------------

class EagerTorchBackend(Backend):
    """The reference row: a model run eagerly in fp32 with PyTorch ops only (no CUDA graphs, no autocast, no
    moefusion kernels; run_pipeline's torch backend uses those on CUDA). Host arrays in and out."""

    name = "torch"

    def __init__(self, model, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.model = model.float().to(self.device).eval()

    def _run(self, ir_t, vis_t):
        with self.torch.inference_mode():
            return self.model.forward_unit(ir_t, vis_t)

    def device_call(self, ir_unit, vis_y):
        """A call on inputs already on the device (for CUDA-event timing)."""
        t = self.torch
        ir_t = t.from_numpy(np.ascontiguousarray(ir_unit)).to(self.device)
        vis_t = t.from_numpy(np.ascontiguousarray(vis_y)).to(self.device)
        return lambda: self._run(ir_t, vis_t)

    def infer(self, ir_unit, vis_y):
        _check_inputs(ir_unit, vis_y)
        t = self.torch
        fused, att = self._run(t.from_numpy(np.ascontiguousarray(ir_unit)).to(self.device),
                               t.from_numpy(np.ascontiguousarray(vis_y)).to(self.device))
        return fused.float().cpu().numpy(), (att.float().cpu().numpy() if att is not None else None)

    def describe(self):
        where = self.torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else \
            f"cpu, {self.torch.get_num_threads()} threads"
        return f"torch eager fp32 ({where}; {self.model.dispatch} dispatch; PyTorch ops only)"


class KernelsBackend(Backend):
    """The MoE layers through moefusion.kernels (fast.accelerate), the whole forward as one CUDA graph per
    input shape (fast.optimize: fp16 or fp32 weights, channels-last). CUDA only."""

    name = "torch-kernels"

    def __init__(self, model, precision: str = "fp16"):
        import torch

        self.torch, self.fast, self.precision = torch, fast, precision
        self.model = fast.accelerate(model.to("cuda").eval())
        self._runners: dict = {}

    def runner(self, shape):
        r = self._runners.get(shape)
        if r is None:
            torch = self.torch
            ex = [torch.zeros(shape, device="cuda"), torch.zeros(shape, device="cuda")]
            r = self.fast.optimize(self.model, ex, dtype=torch.float16 if self.precision == "fp16" else None,
                                   channels_last=True, cuda_graph=True,
                                   forward=lambda m, ir, vis: m.forward_unit(ir, vis))
            self._runners[shape] = r
        return r

    def infer(self, ir_unit, vis_y):
        _check_inputs(ir_unit, vis_y)
        torch = self.torch
        r = self.runner(tuple(ir_unit.shape))
        fused, att = r(torch.from_numpy(np.ascontiguousarray(ir_unit)).cuda(),
                       torch.from_numpy(np.ascontiguousarray(vis_y)).cuda())
        return fused.float().cpu().numpy(), (att.float().cpu().numpy() if att is not None else None)

    def describe(self):
        name = self.torch.cuda.get_device_name()
        return f"torch-kernels (cuda: {name}, {self.precision} weights, channels-last, CUDA graph; moefusion.kernels)"


class PreWarmed(Backend):
    """Delegates to a backend the benchmark already warmed up, so that the pipeline does not spend
    two more (possibly multi-second) inferences warming it up again."""

    def __init__(self, inner: Backend, warm: dict):
        self.inner, self.warm = inner, warm  # (batch, h, w) -> ms per call measured by the benchmark
        self.name = inner.name

    def infer(self, ir_unit, vis_y):
        return self.inner.infer(ir_unit, vis_y)

    def warmup(self, height, width, iters=2, batch=1):
        key = (batch, height, width)
        if key in self.warm:
            return self.warm[key]
        return self.inner.warmup(height, width, iters=iters, batch=batch)

    def describe(self):
        return self.inner.describe()


# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------

def input_frames(size: tuple[int, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """n preprocessed (ir_unit, vis_y) pairs [n, 1, H, W] of the runtime's synthetic scene at size (H, W):
    the frames run_pipeline would feed the model (``Preprocessor``), each one different."""
    import cv2

    h, w = size
    pre = Preprocessor()
    irs, viss = [], []
    for ir, vis in render_frames(max(n, 2)):
        p = pre(cv2.resize(ir, (w, h), interpolation=cv2.INTER_AREA), cv2.resize(vis, (w, h), interpolation=cv2.INTER_AREA))
        irs.append(p.ir_unit)
        viss.append(p.vis_y)
        if len(irs) == n:
            break
    return np.ascontiguousarray(np.concatenate(irs)), np.ascontiguousarray(np.concatenate(viss))


def write_clips(folder: str | os.PathLike, size: tuple[int, int], frames: int, fps: float = 30.0) -> tuple[str, str]:
    """IR (gray) and VIS (BGR) sources of the runtime's synthetic scene at size (H, W): MPEG-4 clips, or PNG
    folders where H or W is odd (MPEG-4 writers round the size down to even)."""
    import cv2

    h, w = size
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if h % 2 or w % 2:
        ir_dir, vis_dir = folder / f"ir_{w}x{h}", folder / f"vis_{w}x{h}"
        ir_dir.mkdir(exist_ok=True)
        vis_dir.mkdir(exist_ok=True)
        for i, (ir, vis) in enumerate(render_frames(frames)):
            cv2.imwrite(str(ir_dir / f"{i:05d}.png"), cv2.resize(ir, (w, h)))
            cv2.imwrite(str(vis_dir / f"{i:05d}.png"), cv2.resize(vis, (w, h)))
        return str(ir_dir) + "/", str(vis_dir) + "/"
    ir_path, vis_path = folder / f"ir_{w}x{h}.mp4", folder / f"vis_{w}x{h}.mp4"
    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    wi = cv2.VideoWriter(str(ir_path), fourcc, fps, (w, h), isColor=False)
    wv = cv2.VideoWriter(str(vis_path), fourcc, fps, (w, h), isColor=True)
    if not (wi.isOpened() and wv.isOpened()):
        raise RuntimeError(f"OpenCV cannot write mp4v clips at {w}x{h} in {folder}")
    try:
        for ir, vis in render_frames(frames):
            wi.write(cv2.resize(ir, (w, h)))
            wv.write(cv2.resize(vis, (w, h)))
    finally:
        wi.release()
        wv.release()
    return str(ir_path), str(vis_path)


# ----------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------

def run_pipeline_files(backend: Backend, ir_path: str, vis_path: str, size: tuple[int, int], frames: int,
                       reason: str) -> dict:
    """The runtime pipeline over two files (lockstep: every frame processed), output none, ``frames``
    outputs. Returns FPS, latency percentiles and the run's own summary fields that matter here."""
    # The sources are already `size`: no --ir/--vis-width/height (no scaling step in the measured loop).
    cfg = PipelineConfig(ir=parse_input_uri(ir_path), vis=parse_input_uri(vis_path),
                         outputs=[parse_output_uri("none")], stats_interval=0, max_frames=frames)
    t0, c0 = time.perf_counter(), time.process_time()
    s = Pipeline(cfg, backend, backend_reason=reason).run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if not s.get("ok", False):
        raise RuntimeError("; ".join(s.get("errors") or ["pipeline failed"]))
    if list(s.get("size") or []) != [size[1], size[0]]:
        raise RuntimeError(f"the pipeline ran at {s.get('size')}, not at {size[1]}x{size[0]}")
    lat = s.get("latency_ms") or {}
    stage = s.get("stage_ms") or {}
    return {
        "fps": round(float(s.get("fps") or 0.0), 3),
        "frames": int(s.get("frames_out", 0)),
        "latency_ms": {k: lat.get(k) for k in ("p50", "p95", "p99", "max", "mean")},
        "infer_ms_p50": (stage.get("infer") or {}).get("p50"),
        "drops": s.get("drops", {}),
        "mode": s.get("mode"),
        "wall_s": round(wall, 2),
        # the process's CPU time (all threads: capture, decoding, pairing, pre/postprocessing, inference, sink)
        # per output frame, setup included; minus the model's CPU time per call: the pipeline's own work
        "cpu_ms_per_frame": round(cpu * 1000.0 / max(1, int(s.get("frames_out", 0))), 3),
        "stage_mean_ms": {k: (v or {}).get("mean") for k, v in stage.items()},
    }
