"""``run_benchmark``: every (preset x size x backend x precision) row, plus the reference row, in one run.

Per preset and size, the reference row comes first: the PyTorch model with the dispatch as
published (nonzero / sort / split sizes read back to the host / index_add), eager, fp32, on the
same device. Every other row's speed-up is the reference's median ms/frame divided by its own,
both measured in this run, so the ratio does not depend on how loaded the machine was that day
as much as absolute numbers do.

Per row: model-only latency at batch 1 (median, p99), throughput at ``batch`` (frames/s from the
clipped mean time per batch), and the runtime pipeline over two files with output none (FPS,
latency p50/p95 from its statistics), all with the same backend object. A row that cannot run
here says why in its status; a row that fails keeps its error in its status and the run goes on.
"""
from __future__ import annotations

import copy
import datetime as _dt
import logging
import math
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import moefusion

from ..export.api import run_export
from ..export.formats import FORMATS
from ..model import checkpoint
from ..model.gating import randomize_gates
from ..runtime.backends import AverageBackend, OnnxRuntimeBackend, TensorRTBackend, TorchBackend
from .flops import count_flops
from .measure import (
    CpuTimed,
    EagerTorchBackend,
    KernelsBackend,
    PreWarmed,
    input_frames,
    make_timer,
    run_pipeline_files,
    sample,
    summarize,
    write_clips,
)
from .report import machine_info, read_loadavg
from .table import DEFAULT_WARMUP, availability, backends

log = logging.getLogger("moefusion.bench")

REFERENCE = "reference"
NO_MODEL = "average"  # --overhead's row: the runtime's AverageBackend, the pipeline's own ceiling
MAX_ITERS = {"cpu": 200, "cuda": 1000}
PIPELINE_CAP = {"cpu": 100, "cuda": 300}  # most pipeline frames per row when adapting to the budget
UNTRAINED = ("untrained: random weights and random gates (routing varies from frame to frame as in a trained model); "
             "speed does not depend on training")


@dataclass
class Settings:
    backends: list[str]
    presets: list[str]
    precisions: list[str]
    sizes: list[tuple[int, int]]  # (H, W)
    device: str  # cpu | cuda (resolved)
    batch: int = 1
    iters: int | None = None  # None: adapt to budget_s
    warmup: int | None = None  # None: DEFAULT_WARMUP[device]
    budget_s: float = 5.0
    frames: int | None = None  # pipeline frames per row; None: from iters / budget
    pipeline: bool = True
    weights: str | None = None
    threads: int = 0
    flops: bool = False  # count FLOPs per frame and parameters of each preset at each size
    overhead: bool = False  # the pipeline's own cost: a no-model row and overhead columns
    command: str = "moefusion-bench"


@dataclass
class Row:
    preset: str
    backend: str
    precision: str
    size: tuple[int, int]  # (H, W)
    batch: int
    reference: bool = False
    dispatch: str = "sparse"
    status: str = "ok"
    timing: str = ""
    describe: str = ""
    model: str = ""
    latency_ms: dict | None = None  # batch 1
    cpu_ms: float | None = None  # the process's CPU time per batch-1 call (all threads)
    throughput: dict | None = None  # {"batch", "fps", "ms_per_batch"}
    pipeline: dict | None = None
    speedup: float | None = None
    export_s: float | None = None
    error_detail: str = ""

    @property
    def label(self) -> str:
        if self.backend == NO_MODEL:
            return "no model (average of the inputs)"
        return "torch, published dispatch (reference)" if self.reference else self.backend

    @property
    def size_text(self) -> str:
        return f"{self.size[1]}x{self.size[0]}"

    @property
    def measured(self) -> bool:
        return self.latency_ms is not None

    @property
    def fps(self) -> float | None:
        return self.throughput["fps"] if self.throughput else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(label=self.label, size=list(self.size), size_text=self.size_text, fps=self.fps,
                 ok=self.status == "ok")
        return d


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    name = type(e).__name__
    text = f"{name}: {msg}" if msg and name not in ("UserError",) else (msg or name)
    return text if len(text) <= 240 else text[:237] + "..."


# ----------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------

def load_model(preset: str, weights: str | None):
    """(model on the CPU in eval mode with the sparse dispatch, where it comes from)."""
    import torch

    if weights:
        return moefusion.load(weights, device="cpu").eval(), f"checkpoint {weights}"
    default = checkpoint.DEFAULT_WEIGHTS  # looked up per call: tests point it elsewhere
    if preset == "edge" and default.is_file():
        return moefusion.load(default, device="cpu").eval(), f"bundled default weights ({default.name})"
    torch.manual_seed(0)
    return randomize_gates(moefusion.build_model(preset, dispatch="sparse")).eval(), UNTRAINED


def checkpoint_preset(weights: str) -> str:
    return str(checkpoint.read_checkpoint(weights).get("preset") or Path(weights).stem)


# ----------------------------------------------------------------------------------------------
# backends per row
# ----------------------------------------------------------------------------------------------

class _Factory:
    """Makes the runtime backend of one row, for a batch size (ONNX and engines have a fixed batch)."""

    def __init__(self, row: Row, master, settings: Settings, workdir: Path):
        self.row, self.master, self.s, self.workdir = row, master, settings, workdir
        self.any_batch = row.reference or row.backend in ("torch", "torch-kernels", NO_MODEL)
        self.export_s = 0.0

    def __call__(self, batch: int):
        row, s = self.row, self.s
        if row.backend == NO_MODEL:
            return AverageBackend()
        model = copy.deepcopy(self.master)
        if row.reference:  # not TorchBackend: on CUDA it routes the MoE layers through the kernels
            return EagerTorchBackend(model.set_dispatch("published"), s.device)
        if row.backend == "torch":
            return TorchBackend(model=model.set_dispatch("sparse"), device=s.device, precision=row.precision)
        if row.backend == "torch-kernels":
            return KernelsBackend(model.set_dispatch("sparse"), row.precision)
        path = self._export(model, batch)
        if row.backend == "onnxruntime":
            return OnnxRuntimeBackend(str(path), device=s.device, threads=s.threads)
        if row.backend == "tensorrt":
            return TensorRTBackend(str(path))
        raise ValueError(f"no factory for backend {row.backend!r}")

    def _export(self, model, batch: int) -> Path:
        row = self.row
        fmt = FORMATS[backends()[row.backend].export_format]
        h, w = row.size
        out = self.workdir / f"{row.preset}_{w}x{h}_b{batch}_{row.precision}{fmt.suffixes[0]}"
        given = {"format": fmt.name, "imgsz": (h, w), "batch": batch, "half": True if row.precision == "fp16" else None,
                 "output": str(out)}
        t0 = time.perf_counter()
        res = run_export(given, model=model.set_dispatch("sparse"))
        self.export_s += time.perf_counter() - t0
        for line in res.lines:
            log.info("%s", line)
        return res.outputs[0]


def _close(*bs):
    for b in bs:
        if b is not None:
            try:
                b.close()
            except Exception as e:  # noqa: BLE001 - closing must not hide the row's result
                log.warning("closing %s: %s", b.name, e)


# ----------------------------------------------------------------------------------------------
# one row
# ----------------------------------------------------------------------------------------------

class _Context:
    """What the rows of one (preset, size) share: inputs, clips, workdir."""

    def __init__(self, settings: Settings, workdir: Path, size: tuple[int, int]):
        self.s, self.workdir, self.size = settings, workdir, size
        self.ir, self.vis = input_frames(size, max(settings.batch, 1))
        self._clips = None

    def clip_frames(self) -> int:
        s = self.s
        if s.frames:
            return s.frames
        if s.iters:
            return max(s.iters, MIN_PIPELINE_FRAMES)
        return PIPELINE_CAP[s.device]

    def clips(self) -> tuple[str, str]:
        if self._clips is None:
            self._clips = write_clips(self.workdir / "clips", self.size, self.clip_frames() + 2)
        return self._clips


MIN_PIPELINE_FRAMES = 3


def _pipeline_frames(ctx: _Context, latency_ms: float) -> int:
    s = ctx.s
    if s.frames:
        return s.frames
    if s.iters:
        return max(s.iters, MIN_PIPELINE_FRAMES)
    n = math.ceil(s.budget_s * 1000.0 / max(latency_ms, 1e-3))
    return max(MIN_PIPELINE_FRAMES, min(ctx.clip_frames(), n))


def _cudnn_benchmark_guard(device: str):
    """fast.optimize turns cudnn.benchmark on for the process; keep later rows as they would run alone."""
    import contextlib

    if device != "cuda":
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def guard():
        import torch

        old = torch.backends.cudnn.benchmark
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = old

    return guard()


def measure_row(row: Row, factory: _Factory, ctx: _Context) -> None:
    s = ctx.s
    warmup = DEFAULT_WARMUP[s.device] if s.warmup is None else s.warmup
    max_iters = MAX_ITERS[s.device]
    b1 = bn = None
    problems = []
    try:
        with _cudnn_benchmark_guard(s.device):
            # -- latency, batch 1 ---------------------------------------------------------------
            try:
                b1 = factory(1)
                ir1, vis1 = ctx.ir[:1], ctx.vis[:1]
                timer, how = make_timer(b1, ir1, vis1, s.device)
                timer = CpuTimed(timer)
                row.latency_ms = summarize(sample(timer, warmup=warmup, iters=s.iters, budget_s=s.budget_s,
                                                  max_iters=max_iters))
                row.cpu_ms = timer.cpu_ms
                row.timing = how
                row.describe = b1.describe()
            except Exception as e:  # noqa: BLE001 - the row shows it; the run goes on
                row.status = f"error: {_short(e)}"
                row.error_detail = traceback.format_exc()
                return
            # -- throughput at --batch ----------------------------------------------------------
            if s.batch == 1:
                row.throughput = {"batch": 1, "fps": round(1000.0 / row.latency_ms["mean"], 3),
                                  "ms_per_batch": row.latency_ms}
            else:
                try:
                    bn = b1 if factory.any_batch else factory(s.batch)
                    timer, _ = make_timer(bn, ctx.ir, ctx.vis, s.device)
                    st = summarize(sample(timer, warmup=warmup, iters=s.iters, budget_s=s.budget_s,
                                          max_iters=max_iters))
                    row.throughput = {"batch": s.batch, "fps": round(s.batch * 1000.0 / st["mean"], 3),
                                      "ms_per_batch": st}
                except Exception as e:  # noqa: BLE001
                    problems.append(f"batch {s.batch} error: {_short(e)}")
                    row.error_detail += traceback.format_exc()
                finally:
                    if bn is not b1:
                        _close(bn)
                    bn = None
            # -- end to end ---------------------------------------------------------------------
            if s.pipeline:
                try:
                    ir_path, vis_path = ctx.clips()
                    frames = _pipeline_frames(ctx, row.latency_ms["p50"])
                    h, w = row.size
                    warm = PreWarmed(b1, {(1, h, w): row.latency_ms["p50"]})
                    row.pipeline = pl = run_pipeline_files(warm, ir_path, vis_path, row.size, frames,
                                                           reason=f"moefusion-bench: {row.label} {row.precision}")
                    # the pipeline's own cost per frame: wall (meaningful when the model is the bottleneck)
                    # and CPU time outside the model's calls (less sensitive to other load)
                    pl["overhead_ms"] = round(1000.0 / pl["fps"] - row.latency_ms["mean"], 3) if pl["fps"] else None
                    pl["cpu_ms_outside_model"] = round(pl["cpu_ms_per_frame"] - (row.cpu_ms or 0.0), 3)
                except Exception as e:  # noqa: BLE001
                    problems.append(f"pipeline error: {_short(e)}")
                    row.error_detail += traceback.format_exc()
    finally:
        row.export_s = round(factory.export_s, 2) if factory.export_s else None
        _close(b1, bn)
        if problems and row.status == "ok":
            row.status = "; ".join(problems)


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------

def plan_rows(s: Settings, preset: str, size) -> list[Row]:
    rows = [Row(preset, "torch", "fp32", size, s.batch, reference=True, dispatch="published")]
    if s.overhead:
        rows.append(Row(preset, NO_MODEL, "fp32", size, s.batch, dispatch="none"))
    table = backends()
    for name in s.backends:
        for prec in s.precisions:
            dispatch = "sparse (exported)" if table[name].export_format else "sparse"
            rows.append(Row(preset, name, prec, size, s.batch, dispatch=dispatch))
    return rows


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _row_line(i: int, n: int, row: Row) -> str:
    head = f"[{i}/{n}] {row.preset} {row.label} {row.precision} {row.size_text}"
    if not row.measured:
        return f"{head}: {row.status}"
    lat = row.latency_ms
    parts = [f"{lat['p50']:.2f} ms/frame (p99 {lat['p99']:.2f}, n={lat['n']})"]
    if row.fps is not None:
        parts.append(f"{row.fps:.2f} FPS at batch {row.throughput['batch']}")
    if row.pipeline:
        pl = row.pipeline
        parts.append(f"pipeline {pl['fps']:.2f} FPS over {pl['frames']} frames")
    if row.status != "ok":
        parts.append(row.status)
    return f"{head}: " + ", ".join(parts)


def run_benchmark(s: Settings, progress=_progress) -> dict:
    """Run every row; returns the result (rows as dicts plus machine, settings, models)."""
    import torch

    threads_before = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        return _run(s, progress, torch)
    finally:
        torch.set_num_threads(threads_before)


def _run(s: Settings, progress, torch) -> dict:
    started = _dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    load_start = read_loadavg()
    result = {"tool": "moefusion-bench", "command": s.command, "started": started.isoformat(timespec="seconds"),
              "machine": machine_info(s.device), "load_start": load_start,
              "settings": {k: (list(map(list, v)) if k == "sizes" else v) for k, v in asdict(s).items()},
              "models": {}, "rows": []}
    cores = result["machine"]["cores_usable"] or 1
    if s.device == "cpu" and load_start and load_start[0] > cores and torch.get_num_threads() > 1:
        msg = (f"this machine is loaded (load average {load_start[0]:.1f} on {cores} cores): multi-threaded CPU timings "
               "swing widely when other processes take the cores (OpenMP threads wait for each other); "
               "--threads 1 gives steadier numbers")
        result["warnings"] = [msg]
        progress(f"warning: {msg}")
    all_rows: list[Row] = []
    presets = s.presets
    n_total = len(presets) * len(s.sizes) * (1 + s.overhead + len(s.backends) * len(s.precisions))
    i = 0
    with tempfile.TemporaryDirectory(prefix="moefusion-bench-") as tmp:
        workdir = Path(tmp)
        for preset in presets:
            try:
                master, source = load_model(preset, s.weights)
                model_error = None
            except Exception as e:  # noqa: BLE001
                master, source, model_error = None, f"error: {_short(e)}", e
            result["models"][preset] = source
            if model_error is None:
                progress(f"{preset}: {source}")
            for size in s.sizes:
                ctx = _Context(s, workdir / f"{size[1]}x{size[0]}", size)
                if s.flops and model_error is None:
                    result.setdefault("flops", {}).setdefault(preset, {})[f"{size[1]}x{size[0]}"] = \
                        count_flops(master, size)
                rows = plan_rows(s, preset, size)
                table = backends()
                for row in rows:
                    i += 1
                    row.model = source
                    if model_error is not None:
                        row.status = f"error: model: {_short(model_error)}"
                    else:
                        reason = None if row.reference or row.backend == NO_MODEL else \
                            availability(table[row.backend], row.precision, s.device)
                        if reason:
                            row.status = reason
                        else:
                            measure_row(row, _Factory(row, master, s, ctx.workdir), ctx)
                    progress(_row_line(i, n_total, row))
                ref = rows[0]
                for row in rows:
                    if ref.measured and row.measured and row.backend != NO_MODEL:
                        row.speedup = round(ref.latency_ms["p50"] / row.latency_ms["p50"], 3)
                all_rows.extend(rows)
            del master
    result["rows"] = [r.to_dict() for r in all_rows]
    result["load_end"] = read_loadavg()
    result["duration_s"] = round(time.perf_counter() - t0, 1)
    return result
