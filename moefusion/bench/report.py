"""The benchmark's outputs: the console table, Markdown, JSON and a PNG bar chart, and the machine facts."""
from __future__ import annotations

import json
import os
import platform

from .._version import __version__
from ..files import atomic_path, atomic_write_text
from .table import DEFAULT_WARMUP

COLUMNS = ("preset", "backend", "precision", "size", "status", "ms/frame", "p99 ms", "FPS", "pipeline FPS",
           "pipeline latency p50/p95 ms", "speed-up vs reference")
FLOPS_COLUMNS = ("GFLOP/frame", "params (M)")  # --flops
OVERHEAD_COLUMNS = ("overhead ms/frame", "CPU ms/frame outside the model")  # --overhead


def columns(result: dict) -> tuple[str, ...]:
    s = result["settings"]
    return COLUMNS + (FLOPS_COLUMNS if s.get("flops") else ()) + (OVERHEAD_COLUMNS if s.get("overhead") else ())


# ----------------------------------------------------------------------------------------------
# machine
# ----------------------------------------------------------------------------------------------

def read_loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages (/proc/loadavg), or None where there is none."""
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        try:
            return [round(x, 2) for x in os.getloadavg()]
        except (OSError, AttributeError):
            return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        m = __import__(module)
    except Exception:  # noqa: BLE001 - absent or broken: not part of this run
        return None
    return getattr(m, "__version__", "?")


def machine_info(device: str) -> dict:
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "host": platform.node(), "os": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(),
        "cores_usable": usable, "python": platform.python_version(), "moefusion": __version__,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "onnxruntime": _version("onnxruntime"), "tensorrt": _version("tensorrt"),
        "tensorrt_rtx": _version("tensorrt_rtx"), "device": device, "gpu": None,
    }
    if torch.cuda.is_available():
        i = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(i)
        info["gpu"] = f"{torch.cuda.get_device_name(i)} (compute capability {major}.{minor})"
        info["cuda"] = torch.version.cuda
    return info


# ----------------------------------------------------------------------------------------------
# table
# ----------------------------------------------------------------------------------------------

def _f(v, digits=2) -> str:
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v:.0f}"
    if v >= 100:
        return f"{v:.1f}"
    return f"{v:.{digits}f}"


def row_cells(r: dict, result: dict | None = None) -> list[str]:
    lat, tp, pl = r.get("latency_ms"), r.get("throughput"), r.get("pipeline")
    fps = "-" if not tp else _f(tp["fps"]) + (f" (b{tp['batch']})" if tp["batch"] != 1 else "")
    pl_lat = "-"
    if pl:
        pl_lat = f"{_f(pl['latency_ms'].get('p50'), 1)} / {_f(pl['latency_ms'].get('p95'), 1)}"
    return [
        r["preset"], r["label"], r["precision"], r["size_text"], r["status"],
        _f(lat["p50"]) if lat else "-", _f(lat["p99"]) if lat else "-", fps,
        _f(pl["fps"]) if pl else "-", pl_lat,
        f"{r['speedup']:.2f}x" if r.get("speedup") is not None else "-",
    ] + _extra_cells(r, result)


def _extra_cells(r: dict, result: dict | None) -> list[str]:
    if result is None:
        return []
    s, out = result["settings"], []
    if s.get("flops"):
        fl = result.get("flops", {}).get(r["preset"], {}).get(r["size_text"])
        model_row = fl and r["backend"] != "average"
        out += [f"{fl['flops'] / 1e9:.2f}" if model_row else "-", f"{fl['params'] / 1e6:.2f}" if model_row else "-"]
    if s.get("overhead"):
        pl = r.get("pipeline") or {}
        out += [_f(pl.get("overhead_ms")), _f(pl.get("cpu_ms_outside_model"))]
    return out


STATUS_WIDTH = 48


def text_table(result: dict) -> str:
    """The console table; statuses longer than STATUS_WIDTH are cut and given in full under it."""
    cols = columns(result)
    cells, notes = [list(cols)], []
    status_col = cols.index("status")
    for r in result["rows"]:
        c = row_cells(r, result)
        if len(c[status_col]) > STATUS_WIDTH:
            notes.append(f"[{len(notes) + 1}] {c[status_col]}")
            mark = f" [{len(notes)}]"
            c[status_col] = c[status_col][:STATUS_WIDTH - len(mark) - 3] + "..." + mark
        cells.append(c)
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = []
    for j, c in enumerate(cells):
        lines.append(" | ".join(x.ljust(widths[i]) for i, x in enumerate(c)).rstrip())
        if j == 0:
            lines.append("-+-".join("-" * w for w in widths))
    return "\n".join(lines + ([""] + notes if notes else []))


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown_table(result: dict) -> str:
    cols = columns(result)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for r in result["rows"]:
        lines.append("| " + " | ".join(_md_escape(c) for c in row_cells(r, result)) + " |")
    return "\n".join(lines)


def _load_text(load) -> str:
    return "unknown" if not load else " / ".join(f"{x:.2f}" for x in load)


def describe_run(result: dict) -> list[str]:
    """Lines about the command, machine, load and what was measured (Markdown, also fine as text)."""
    m, s = result["machine"], result["settings"]
    dev = m["gpu"] if s["device"] == "cuda" else f"CPU ({m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch thread(s))"
    lines = [
        f"- command: `{result['command']}`",
        (f"- started {result['started']}, took {result.get('duration_s', '?')} s; moefusion {m['moefusion']}, "
         f"torch {m['torch']}, onnxruntime {m['onnxruntime'] or '-'}, "
         f"TensorRT {m['tensorrt'] or '-'}{', tensorrt_rtx ' + m['tensorrt_rtx'] if m.get('tensorrt_rtx') else ''}"),
        f"- device: {s['device']}: {dev}; host {m['host']} ({m['os']})",
        (f"- load average (1/5/15 min, /proc/loadavg) at start {_load_text(result.get('load_start'))}, "
         f"at end {_load_text(result.get('load_end'))} on {m['cores_usable']} usable cores"),
        "- models: " + "; ".join(f"`{p}`: {src}" for p, src in result["models"].items()),
    ]
    for w in result.get("warnings", []):
        lines.append(f"- warning: {w}")
    timings = sorted({r["timing"] for r in result["rows"] if r.get("timing")})
    iters = str(s["iters"]) if s["iters"] else f"adaptive to a budget of {s['budget_s']:g} s per measurement (at least 3)"
    warm = s["warmup"] if s["warmup"] is not None else DEFAULT_WARMUP[s["device"]]
    lines.append(f"- model-only: batch 1, {warm} warm-up call(s), timed iterations {iters}; timing: "
                 + "; ".join(timings) if timings else "- model-only: nothing measured")
    sizes = ", ".join(f"{w}x{h}" for h, w in s["sizes"])
    lines.append("- ms/frame = median at batch 1, p99 likewise, far outliers (beyond 3 IQR) clipped; FPS = frames/s "
                 f"at batch {s['batch']} from the clipped mean; pipeline = run_pipeline's loop over two {sizes} "
                 "MPEG-4 files of the runtime's synthetic scene, output none, every frame processed "
                 "(FPS and capture-to-output latency from its statistics; for files the latency includes the "
                 "read-ahead queues)" if s["pipeline"] else "- pipeline: not run (--no-pipeline)")
    if s.get("flops"):
        lines.append("- GFLOP/frame: torch.utils.flop_counter (2 per multiply-add) over one forward pass of the PyTorch "
                     "model (sparse dispatch: the k chosen experts) at the row's size; params: the model's parameters")
    if s.get("overhead"):
        lines.append("- overhead ms/frame = 1000 / pipeline FPS - the model's mean ms/frame (wall; meaningful when the "
                     "model is the bottleneck); CPU ms/frame outside the model = the process's CPU time (all threads: "
                     "capture, decoding, pairing, pre/postprocessing, sink) per pipeline frame - the model's CPU time "
                     "per call; the no-model row runs the runtime's average of the inputs: the pipeline's own ceiling")
    lines.append("- speed-up = the reference row's ms/frame / this row's ms/frame, same preset, size and run; "
                 "reference = PyTorch with the dispatch as published (nonzero/sort/index_add, split sizes read back "
                 "to the host), eager, fp32")
    return lines


def markdown(result: dict) -> str:
    out = ["# moefusion-bench", ""] + describe_run(result) + ["", markdown_table(result), ""]
    return "\n".join(out)


def write_json(result: dict, path) -> None:
    atomic_write_text(path, json.dumps(result, indent=2, default=str) + "\n")


def write_markdown(result: dict, path) -> None:
    atomic_write_text(path, markdown(result))


# ----------------------------------------------------------------------------------------------
# chart
# ----------------------------------------------------------------------------------------------

def write_plot(result: dict, path) -> None:
    """Horizontal bars: model FPS (the table's FPS column) and pipeline FPS per row, speed-up written beside; rows that
    did not run are listed with their status."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [f"{r['preset']} {r['label'].replace(' (reference)', ' (ref)')} {r['precision']} {r['size_text']}"
              for r in rows]
    model_fps = [r["fps"] or 0.0 for r in rows]  # the table's FPS column
    pipe_fps = [r["pipeline"]["fps"] if r.get("pipeline") else 0.0 for r in rows]
    n = len(rows)
    fig, ax = plt.subplots(figsize=(11, 1.6 + 0.45 * n))
    y = list(range(n))[::-1]
    h = 0.38
    ax.barh([v + h / 2 for v in y], model_fps, height=h, color="#3b75af",
            label=f"model only (the FPS column: batch {result['settings']['batch']})")
    ax.barh([v - h / 2 for v in y], pipe_fps, height=h, color="#ef8636", label="pipeline over files, output none")
    positive = [v for v in model_fps + pipe_fps if v > 0]
    if positive and max(positive) / min(positive) > 30:
        ax.set_xscale("log")
    top = max(positive) if positive else 1.0
    for yi, r, fps in zip(y, rows, model_fps):
        if r.get("fps"):
            txt = f"{r['speedup']:.2f}x" if r.get("speedup") is not None else ""
            ax.text(fps * 1.02 if fps else 0, yi + h / 2, f" {fps:.3g} FPS {txt}", va="center", fontsize=8)
        else:
            status = r["status"] if len(r["status"]) <= 70 else r["status"][:67] + "..."
            ax.text(0.005, yi, status, va="center", fontsize=8, color="#a33", transform=ax.get_yaxis_transform())
    ax.set_xlim(right=top * (4 if ax.get_xscale() == "log" else 1.35))
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("frames per second (higher is better)")
    m = result["machine"]
    dev = m["gpu"] if result["settings"]["device"] == "cuda" else f"CPU: {m['cpu']}, {m['cores']} cores"
    fig.suptitle(f"moefusion-bench on {dev}; load average {_load_text(result.get('load_start'))}", fontsize=9)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
