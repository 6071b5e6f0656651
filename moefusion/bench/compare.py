"""``moefusion-bench --compare A B``: two models timed alternately in one process, reported as a ratio.

Each model file runs with the backend its kind calls for (``.onnx``: ONNX Runtime; ``.pt``: PyTorch,
the runtime's TorchBackend; ``.engine``: TensorRT) on the same preprocessed frame of the runtime's
synthetic scene. Rounds alternate the order (A B, B A, ...), so machine noise falls on both alike:
the ratio B/A of the medians is the result, the absolute medians vary from run to run. This is how the
speed of new weights is compared with old ones on a noisy machine (docs/benchmark.md).
"""
from __future__ import annotations

import datetime as _dt
import time
from pathlib import Path

from ..errors import UserError
from ..runtime.backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend, model_kind
from .measure import CpuTimed, input_frames, make_timer, sample_alternating, summarize
from .report import _load_text, machine_info, read_loadavg

MAX_ROUNDS = {"cpu": 200, "cuda": 1000}
KINDS = ("onnx", "checkpoint", "engine")


def check_model_file(path: str) -> None:
    """A one-line UserError naming ``--compare`` when ``path`` is not a model file this can time."""
    if not Path(path).is_file():
        raise UserError(f"--compare {path}: no such file")
    if model_kind(path) not in KINDS:
        raise UserError(f"--compare {path}: expected an .onnx, a checkpoint (.pt) or an .engine")


def open_backend(path: str, device: str, threads: int = 0):
    kind = model_kind(path)
    if kind == "onnx":
        b = OnnxRuntimeBackend(path, device=device, threads=threads)
        b.set_stream_mode(b.stream_capable)  # a stream graph (--stream) is timed as it runs: its state carried
        return b
    if kind == "engine":
        return TensorRTBackend(path)
    b = TorchBackend(path, device=device, precision="fp32" if device == "cpu" else "auto")
    b.load()
    return b


def _size(backends, sizes) -> tuple[int, int]:
    fixed = {b.size_range[0] for b in backends if b.size_range and b.size_range[0] == b.size_range[1]}
    if len(fixed) > 1:
        raise UserError("--compare: the models take different fixed sizes (" + ", ".join(
            f"{w}x{h}" for h, w in sorted(fixed)) + "); export both with the same --imgsz")
    if fixed:
        size = fixed.pop()
        if sizes and tuple(sizes[0]) != tuple(size):
            raise UserError(f"--imgsz {sizes[0][0]} {sizes[0][1]} with --compare: the models take {size[1]}x{size[0]} "
                            "frames; drop --imgsz or export them again")
        return tuple(size)
    return tuple(sizes[0]) if sizes else (480, 640)


def run_compare(paths: list[str], *, device: str, sizes, iters: int | None, warmup: int, budget_s: float,
                threads: int = 0, command: str = "moefusion-bench --compare") -> dict:
    """Time the models alternately; the first is the baseline of every ratio."""
    import torch

    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    started = _dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    load_start = read_loadavg()
    backends = []
    try:
        for p in paths:
            backends.append(open_backend(p, device, threads))
        size = _size(backends, sizes)
        ir, vis = input_frames(size, 1)
        timers = [CpuTimed(make_timer(b, ir, vis, device)[0]) for b in backends]
        hows = [make_timer(b, ir, vis, device)[1] for b in backends[:1]]
        samples = sample_alternating(timers, warmup=warmup, iters=iters, budget_s=budget_s,
                                     max_iters=MAX_ROUNDS[device])
        describe = [b.describe() for b in backends]
    finally:
        for b in backends:
            b.close()
        torch.set_num_threads(threads_before)
    stats = [summarize(s) for s in samples]
    base = stats[0]["p50"]
    paired = [sorted(b / a for a, b in zip(samples[0], s)) for s in samples]
    models = [{"path": p, "describe": d, "latency_ms": st, "cpu_ms_per_call": t.cpu_ms,
               "ratio": round(st["p50"] / base, 4), "ratio_paired_median": round(pr[len(pr) // 2], 4)}
              for p, d, st, t, pr in zip(paths, describe, stats, timers, paired)]
    return {"tool": "moefusion-bench --compare", "command": command, "started": started.isoformat(timespec="seconds"),
            "machine": machine_info(device), "load_start": load_start, "load_end": read_loadavg(),
            "device": device, "size": list(size), "rounds": len(samples[0]), "warmup": warmup,
            "timing": hows[0], "models": models, "duration_s": round(time.perf_counter() - t0, 1)}


def compare_lines(result: dict) -> list[str]:
    """The report (Markdown, also fine as text)."""
    m = result["machine"]
    h, w = result["size"]
    dev = m["gpu"] if result["device"] == "cuda" else f"CPU ({m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s))"
    lines = [f"- command: `{result['command']}`",
             f"- started {result['started']}, took {result['duration_s']} s; device {result['device']}: {dev}",
             f"- load average at start {_load_text(result['load_start'])}, at end {_load_text(result['load_end'])}",
             f"- {w}x{h}, batch 1, {result['warmup']} warm-up call(s) each, {result['rounds']} alternating rounds "
             f"(A B, B A, ...); timing: {result['timing']}; ratio = median / the first model's median "
             "(paired: median of the per-round ratios)", "",
             "| model | median ms | p99 ms | min / max ms | n | CPU ms/call | ratio | paired ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["models"]:
        st = r["latency_ms"]
        lines.append(f"| {r['path']} | {st['p50']:.1f} | {st['p99']:.1f} | {st['min']:.1f} / {st['max']:.1f} | "
                     f"{st['n']} | {r['cpu_ms_per_call'] if r['cpu_ms_per_call'] is not None else '-'} | "
                     f"{r['ratio']:.3f}x | {r['ratio_paired_median']:.3f}x |")
    return lines


def compare_markdown(result: dict) -> str:
    return "\n".join(["# moefusion-bench --compare", ""] + compare_lines(result) + [""])
