"""Build, test and benchmark the CUDA kernels on a GPU machine, from the project checkout, in minutes.

    python -m moefusion.kernels.check --out kernels-check.md

Steps (each timed; later ones are skipped when the time budget runs short):
  1. build libmoefusion_kernels.so (+ the self-test) with CMake for this GPU;
  2. the GPU tests (tests/test_kernels_gpu.py: every kernel vs the PyTorch reference, poisoned outputs,
     CUDA graphs, torch.compile, the self-test binary and compute-sanitizer memcheck/racecheck);
  3. kernel benchmarks: each kernel against the PyTorch ops it replaces (fp16, channels-last, CUDA graphs),
     then whole MoE layers (MoGE and MoLE experts) by dispatch strategy, batch 1 and 8;
  4. whole model (moefusion.build_model), presets paper and edge at 640x480: eager fp32, and fp16
     channels-last CUDA graphs with dense / sparse dispatch, without and with the kernels (and with
     torch.compile when time allows), ms/frame at batch 1 and throughput at batch 8.
Prints a Markdown table (every row names the GPU) and writes it to --out (.md; a .json beside it).

Without a GPU it builds and stops (exit 2). `--device cpu` runs the benchmark code on tiny sizes on the CPU
(a smoke test of this script, numbers meaningless).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import cli_entry

ROOT = Path(__file__).resolve().parents[2]
TARGET_MS = {"paper": 2.5, "edge": 0.5}  # batch 1, fp16, H100, model only


@dataclass
class Row:
    section: str
    name: str
    config: str
    batch: int = 1
    torch_ms: float | None = None
    ours_ms: float | None = None
    note: str = ""
    gpu: str = ""

    @property
    def speedup(self) -> float | None:
        if self.torch_ms and self.ours_ms:
            return self.torch_ms / self.ours_ms
        return None


@dataclass
class Report:
    env: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    ok: bool = True
    row_errors: int = 0

    def step(self, name: str, status: str, seconds: float, detail: str = ""):
        self.steps.append({"step": name, "status": status, "seconds": round(seconds, 1), "detail": detail})
        if status == "FAIL":
            self.ok = False
        print(f"[{status}] {name} ({seconds:.1f} s){': ' + detail if detail else ''}", flush=True)

    def markdown(self) -> str:
        e = self.env
        lines = [
            "# moefusion kernels check",
            "",
            f"GPU: **{e.get('gpu', 'none')}** (sm_{e.get('cc', '?')}), driver CUDA {e.get('cuda_driver', '?')}, "
            f"torch {e.get('torch')} (CUDA {e.get('torch_cuda')}), Python {e.get('python')}, "
            f"library: {e.get('library', '-')}",
            f"Command: `{e.get('command')}`; started {e.get('started')}; total {e.get('total_s', '?')} s",
            "",
            "| step | status | s | detail |",
            "| --- | --- | --- | --- |",
        ]
        for s in self.steps:
            lines.append(f"| {s['step']} | {s['status']} | {s['seconds']} | {s['detail']} |")
        lines += ["", "| section | what | config | batch | PyTorch ms | ours ms | speed-up | note | GPU |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in self.rows:
            sp = f"{r.speedup:.2f}x" if r.speedup else ""
            lines.append(f"| {r.section} | {r.name} | {r.config} | {r.batch} | {_fmt(r.torch_ms)} | "
                         f"{_fmt(r.ours_ms)} | {sp} | {r.note} | {r.gpu} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        rows = [dict(asdict(r), speedup=r.speedup) for r in self.rows]
        return json.dumps({"env": self.env, "steps": self.steps, "rows": rows, "ok": self.ok}, indent=2)


def _fmt(v):
    return "" if v is None else f"{v:.3f}"


class Budget:
    """Seconds left for the whole check; ``reserve`` keeps time back for the whole-model rows."""

    def __init__(self, seconds: float):
        self.t0 = time.monotonic()
        self.seconds = seconds
        self.reserved = 0.0

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.t0)

    def left_before_reserve(self) -> float:
        """What earlier steps (GPU tests, kernel benchmarks) may spend without eating the reserved time."""
        return self.left() - self.reserved

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


# ----------------------------------------------------------------------------- environment, build, tests
def environment(device: str) -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "command": " ".join([Path(sys.executable).name, "-m", "moefusion.kernels.check"] + sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, cc=f"{p.major}{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1))
        try:
            v = torch.cuda.driver_version() if hasattr(torch.cuda, "driver_version") else None
        except Exception:  # noqa: BLE001
            v = None
        env["cuda_driver"] = v or _driver_from_smi()
    else:
        env.update(gpu="cpu (smoke test only)", cc="-")
    return env


def _driver_from_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
        m = re.search(r"CUDA Version:\s*([0-9.]+)", out)
        d = re.search(r"Driver Version:\s*([0-9.]+)", out)
        return f"{m.group(1) if m else '?'} (driver {d.group(1) if d else '?'})"
    except (OSError, subprocess.SubprocessError):
        return "?"


_SMOKE = """
import sys, torch
from moefusion.kernels import _lib, reference as R
lib = _lib.load_library(sys.argv[1])
x = torch.randn(2, 2, 3, 8, 16, device="cuda"); w = torch.softmax(torch.randn(2, 2, device="cuda"), 1)
out = torch.full((2, 3, 8, 16), float("nan"), device="cuda")
import ctypes
_lib.check(lib.moefusion_combine(_lib.desc(x), _lib.desc(w), _lib.desc(out),
           ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)), "combine")
torch.cuda.synchronize()
err = ((out - R.combine(x, w)).norm() / R.combine(x, w).norm()).item()
print("smoke rel err", err)
sys.exit(0 if err < 1e-5 else 1)
"""


def _smoke(lib: Path) -> tuple[bool, str]:
    """Run one kernel through ctypes inside a PyTorch process (a subprocess: a broken launch stays there)."""
    try:
        res = subprocess.run([sys.executable, "-c", _SMOKE, str(lib)], cwd=ROOT, capture_output=True, text=True,
                             timeout=180)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    out = (res.stdout + res.stderr).strip().splitlines()
    return res.returncode == 0, (out[-1] if out else f"exit {res.returncode}")[:300]


def step_build(report: Report, device: str, build_dir: Path) -> Path | None:
    import torch

    from . import _lib
    from .build import build

    t = time.monotonic()
    archs = None
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        archs = f"{major}{minor}-real"
    try:
        lib = build(build_dir, archs=archs, jobs=os.cpu_count())
    except Exception as e:  # noqa: BLE001
        report.step("build (CMake)", "FAIL", time.monotonic() - t, str(e).splitlines()[0][:300])
        print(str(e)[-4000:], file=sys.stderr)
        return None
    if device == "cuda":
        ok, detail = _smoke(lib)
        if not ok:
            # the static cudart cannot work beside PyTorch's here: link the shared one (reused by SONAME)
            report.step("kernel call from PyTorch (static cudart)", "FAIL", time.monotonic() - t, detail)
            try:
                lib = build(build_dir.parent / (build_dir.name + "-shared-cudart"), archs=archs, jobs=os.cpu_count(),
                            cudart="Shared")
            except Exception as e:  # noqa: BLE001
                report.step("build (CMake, shared cudart)", "FAIL", time.monotonic() - t, str(e).splitlines()[0][:300])
                return None
            ok, detail = _smoke(lib)
            report.step("kernel call from PyTorch (shared cudart)", "ok" if ok else "FAIL", time.monotonic() - t, detail)
            if not ok:
                return None
    os.environ[_lib.ENV_VAR] = str(lib)
    _lib._lib = None
    _lib._lib_path = None
    info = _lib.build_info()
    report.env["library"] = f"{lib} ({info})"
    report.step("build (CMake)", "ok", time.monotonic() - t, info)
    return lib


PER_TEST_TIMEOUT_S = 120  # one hanging GPU test fails alone (pytest-timeout) instead of losing every result


def step_gpu_tests(report: Report, budget: Budget) -> None:
    import importlib.util

    t = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-m", "gpu",
           str(ROOT / "tests" / "test_kernels_gpu.py")]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += [f"--timeout={PER_TEST_TIMEOUT_S}"]
    timeout = max(60.0, min(240.0, budget.left_before_reserve() - 30))
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        print(out[-3000:])
        report.step("GPU tests (pytest -m gpu)", "FAIL", time.monotonic() - t, f"timed out after {timeout:.0f} s")
        return
    out = res.stdout + res.stderr
    summary = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    detail = summary[-1].strip("= ") if summary else f"exit {res.returncode}"
    failed = [ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    sanit = [ln.split("::")[-1] for ln in out.splitlines()
             if ln.startswith("PASSED ") and "compute_sanitizer" in ln]
    if sanit:
        detail += "; compute-sanitizer passed: " + ", ".join(sanit)
    skipped_sanit = [ln for ln in out.splitlines() if "SKIPPED" in ln and "compute-sanitizer" in ln]
    if skipped_sanit:
        detail += "; compute-sanitizer skipped: " + skipped_sanit[0].split(":", 2)[-1].strip()[:160]
    if failed:
        detail += "; failed: " + ", ".join(f[:120] for f in failed[:8])
        print(out[-8000:])
    report.step("GPU tests (pytest -m gpu)", "ok" if res.returncode == 0 else "FAIL", time.monotonic() - t, detail)


# ----------------------------------------------------------------------------- timing
def _timer(device: str, iters: int):
    from . import fast

    if device == "cuda":
        return lambda fn, *a, graph=True: fast.time_cuda(fn, *a, iters=iters, warmup=3, graph=graph)
    return lambda fn, *a, graph=True: fast.time_host(fn, *a, iters=2)


def _try(fn):
    try:
        return fn(), ""
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        if os.environ.get("MOEFUSION_CHECK_DEBUG"):
            traceback.print_exc()
        return None, msg


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------- kernel benchmarks
def step_kernel_benchmarks(report: Report, device: str, scale: float, iters: int, batches, budget: Budget) -> None:
    import torch

    from ..model.gating import gate_descriptor, gated_logsumexp, top_k_gating
    from . import fast, reference as R

    t_step = time.monotonic()
    timer = _timer(device, iters)
    gpu = report.env.get("gpu", "")
    dt = torch.float16 if device == "cuda" else torch.float32
    H, W = max(8, int(480 * scale)), max(8, int(640 * scale))
    g_l = (max(1, int(120 * scale)), max(1, int(160 * scale)))  # MoLE grid
    g_g = (max(1, int(60 * scale)), max(1, int(80 * scale)))  # MoGE grid
    torch.backends.cudnn.benchmark = True

    def cl(t):
        return t.contiguous(memory_format=torch.channels_last)

    def pair(name, config, B, torch_fn, ours_fn, args, compare=True):
        if budget.left_before_reserve() < 20:
            report.rows.append(Row("kernel", name, config, B, note="skipped: time budget", gpu=gpu))
            return
        tm, err1 = _try(lambda: timer(torch_fn, *args))
        om, err2 = _try(lambda: timer(ours_fn, *args))
        note = err1 or err2
        report.row_errors += bool(err2)
        if compare and not note:
            with torch.inference_mode():
                a, b = ours_fn(*args), torch_fn(*args)
            a = a if isinstance(a, torch.Tensor) else a[-1]
            b = b if isinstance(b, torch.Tensor) else b[-1]
            note = f"rel err {_rel(a.float(), b.float()):.1e}"
        report.rows.append(Row("kernel", name, config, B, tm, om, note, gpu))
        print(f"  {name:34s} B={B} torch {_fmt(tm):>8} ms  ours {_fmt(om):>8} ms  {note}", flush=True)

    for B in batches:
        dev = device
        # MoGE gate: 160 channels at full size -> 60x80 grid; MoLE gate: 32 channels -> 120x160
        for label, C, grid in (("gate MoGE", 160, g_g), ("gate MoLE", 32, g_l)):
            f = cl(torch.randn(B, C, H, W, device=dev, dtype=dt))
            w = (torch.randn(C * grid[0] * grid[1], 4, device=dev) * 0.01).to(dt)

            def torch_gate(f, w, grid=grid):
                g = top_k_gating(gate_descriptor(f, grid), w, 2)
                return g.indices, g.weights

            def ours_gate(f, w, grid=grid):
                return torch.ops.moefusion.gate(f, w, grid[0], grid[1], 2)

            pair(label, f"{C}x{H}x{W}->{grid[0]}x{grid[1]}, E4 k2", B, torch_gate, ours_gate, (f, w))
        x0, x1 = cl(torch.randn(B, 16, H, W, device=dev, dtype=dt)), cl(torch.randn(B, 16, H, W, device=dev, dtype=dt))
        a = cl(torch.rand(B, 1, H, W, device=dev, dtype=dt))
        pair("attention split (fg+bg)", f"2x16x{H}x{W}", B, R.attention_split,
             torch.ops.moefusion.attention_split, (x0, x1, a))
        x = cl(torch.randn(B, 2 * 16, H, W, device=dev, dtype=dt)).view(B, 2, 16, H, W)
        wts = torch.softmax(torch.randn(B, 2, device=dev), 1)
        pair("combine (log-sum-exp)", f"k2x16x{H}x{W}", B, lambda x, w: gated_logsumexp(x, w),
             torch.ops.moefusion.combine, (x, wts))
        idx = torch.stack([torch.randperm(4, device=dev)[:2] for _ in range(B)]).int()
        for label, cin, cout in (("last conv+combine MoGE", 16, 1), ("last conv+combine MoLE", 8, 16)):
            h = cl(torch.randn(B, 2 * cin, H, W, device=dev, dtype=dt)).view(B, 2, cin, H, W)
            wt = (torch.randn(4, cout, cin, 3, 3, device=dev) * 0.2).to(dt)
            bias = (torch.randn(4, cout, device=dev) * 0.1).to(dt)

            def torch_last(h, wt, bias, idx, wts):
                with fast.use_kernels(False):
                    return fast.last_layer_combine(h, wt, bias, idx, wts, fuse=False)

            pair(label, f"k2 {cin}->{cout} {H}x{W}", B, torch_last, torch.ops.moefusion.expert_conv3x3_combine,
                 (h, wt, bias, idx, wts))

    # whole MoE layers by strategy
    for B in batches:
        for label, G, chans in (("MoGE experts", 1, [160, 64, 32, 16, 1]), ("MoLE experts", 2, [16, 8, 16])):
            if budget.left_before_reserve() < 20:
                report.rows.append(Row("moe layer", label, "", B, note="skipped: time budget", gpu=gpu))
                continue
            E, k = 4, 2
            layers = [((torch.randn(E, co, ci, 3, 3, device=device) * (2 / (9 * ci)) ** 0.5).to(dt),
                       (torch.randn(E, co, device=device) * 0.1).to(dt)) for ci, co in zip(chans[:-1], chans[1:])]
            x = cl(torch.randn(B, G * chans[0], H, W, device=device, dtype=dt))
            idx = torch.stack([torch.randperm(E, device=device)[:k] for _ in range(B)]).int()
            wts = torch.softmax(torch.randn(B, k, device=device), 1)
            ref = R.experts_forward(x.float(), idx, wts, [(a.float(), b.float()) for a, b in layers], G)
            variants = [
                ("per-sample loop (reference)", False, None, None),
                ("dense, PyTorch ops", False, "dense", False),
                ("gathered, PyTorch ops", False, "gathered", False),
                ("dense + kernels", True, "dense", None),
                ("gathered + kernels", True, "gathered", None),
            ]
            base = {}  # PyTorch-ops time per strategy: the '+ kernels' rows' baseline
            for vname, use, strategy, fuse in variants:
                def run(x, idx, wts, use=use, strategy=strategy, fuse=fuse):
                    if strategy is None:
                        return R.experts_forward(x, idx, wts, layers, G)
                    with fast.use_kernels(use):
                        return fast.experts_forward(x, idx, wts, layers, G, strategy=strategy, fuse_last=fuse)

                ms, err = _try(lambda: timer(run, x, idx, wts, graph=strategy is not None))
                note = err
                report.row_errors += bool(err)
                if not err:
                    with torch.inference_mode():
                        note = f"rel err {_rel(run(x, idx, wts).float(), ref):.1e}"
                if strategy and not use:
                    base[strategy] = ms
                report.rows.append(Row("moe layer", f"{label}: {vname}", f"{'->'.join(map(str, chans))} {H}x{W}",
                                       B, base.get(strategy) if strategy and use else None, ms, note, gpu))
                print(f"  {label}: {vname:30s} B={B} {_fmt(ms):>8} ms  {note}", flush=True)
    errors, report.row_errors = report.row_errors, 0
    report.step("kernel benchmarks", "FAIL" if errors else "ok", time.monotonic() - t_step,
                f"{errors} measurement(s) failed" if errors else "")


# ----------------------------------------------------------------------------- whole model
def _first_tensor(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        for key in ("fused", "fusion", "out", "y"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def _prepare_model(preset: str, dispatch: str, device: str):
    """An untrained model with the same weights for every variant, and gate weights drawn at random so
    that routing depends on the input (zero-initialised gates tie every expert)."""
    import torch

    from ..model import build_model
    from ..model.gating import randomize_gates

    torch.manual_seed(0)
    return randomize_gates(build_model(preset, dispatch=dispatch), seed=1, scale=None).to(device).eval()


def step_model_benchmarks(report: Report, device: str, scale: float, iters: int, batches, presets, budget: Budget,
                          compile_too: bool, forward: str) -> None:
    import torch

    from . import fast, ops

    t_step = time.monotonic()
    gpu = report.env.get("gpu", "")
    timer = _timer(device, iters)
    H, W = max(32, int(480 * scale) // 32 * 32), max(32, int(640 * scale) // 32 * 32)
    half = torch.float16 if device == "cuda" else None

    def call(model, ir, vis):
        fn = model if forward == "__call__" else getattr(model, forward)
        return _first_tensor(fn(ir, vis))

    # (label, dispatch, dtype, channels_last, graph, kernels, compile)
    plain = [
        ("eager fp32, sparse (reference output)", "sparse", None, False, False, False, False),
        ("fp32 CL graph, sparse + kernels", "sparse", None, True, True, True, False),
        ("fp16 CL graph, dense", "dense", half, True, True, False, False),
        ("fp16 CL graph, sparse, PyTorch ops", "sparse", half, True, True, False, False),
        ("fp16 CL graph, sparse + kernels", "sparse", half, True, True, True, False),
    ]
    compiled = [("fp16 CL graph, sparse + kernels + torch.compile", "sparse", half, True, True, True, True)]
    # the most important measurements first: batch 1 of both presets, then batch 8, then torch.compile
    plan = [(p, batches[0], v) for p in presets for v in plain]
    plan += [(p, b, v) for b in batches[1:] for p in presets for v in plain if not v[0].startswith(("eager", "fp32"))]
    if compile_too:
        plan += [(p, batches[0], v) for p in presets for v in compiled]
    references = {}
    for preset, B, (label, dispatch, dtype, chl, graph, use, comp) in plan:
        if budget.left() < (100 if comp else 25):
            report.rows.append(Row("model", f"{preset}: {label}", f"{W}x{H}", B, note="skipped: time budget", gpu=gpu))
            continue
        t = time.monotonic()
        gen = torch.Generator().manual_seed(B)
        ir = torch.rand(B, 1, H, W, generator=gen).to(device)
        vis = torch.rand(B, 1, H, W, generator=gen).to(device)

        def measure():
            model = _prepare_model(preset, dispatch, device)
            if use:
                fast.accelerate(model)
            calls0 = sum(ops.CALLS.values())
            with fast.use_kernels(use):
                if device == "cuda" and (graph or comp or dtype is not None):
                    run = fast.optimize(model, [ir, vis], dtype=dtype, channels_last=chl, cuda_graph=graph,
                                        compile=comp, forward=lambda m, a, b: call(m, a, b))
                else:
                    def run(a, b):
                        with torch.inference_mode():
                            return call(model, a, b)
                ms = timer(run, ir, vis, graph=False)
                with torch.inference_mode():
                    out = run(ir, vis)
                    out = out.float().clone() if out is not None else None
            return ms, out, sum(ops.CALLS.values()) - calls0

        res, err = _try(measure)
        note, ms = err, None
        if res is not None:
            ms, out, calls = res
            parts = []
            if label.startswith("eager"):
                references[(preset, B)] = out
            elif use:
                parts.append(f"kernel launches captured: {calls}" if calls else "model used no kernels")
            ref = references.get((preset, B))
            if ref is not None and out is not None and out is not ref and out.shape == ref.shape:
                parts.append(f"rel err vs eager fp32 {_rel(out, ref):.1e}")
            if B > 1:
                parts.append(f"{B * 1000 / ms:.0f} frames/s")
            target = TARGET_MS.get(preset)
            if B == 1 and target and device == "cuda" and dtype is not None:
                parts.append(f"target <= {target} ms {'met' if ms <= target else 'missed'}")
            note = "; ".join(parts)
        report.rows.append(Row("model", f"{preset}: {label}", f"{W}x{H} ({time.monotonic() - t:.0f} s)", B,
                               None, ms, note, gpu))
        print(f"  {preset}: {label:48s} B={B} {_fmt(ms):>8} ms  {note}", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    report.step("whole-model benchmarks", "ok", time.monotonic() - t_step)


# ----------------------------------------------------------------------------- main
@cli_entry
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moefusion.kernels.check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="kernels-check.md", help="Markdown report (a .json is written beside it)")
    ap.add_argument("--budget", type=float, default=540.0,
                    help="seconds for everything (default 540: fits one 10-minute call); the whole-model rows of "
                         "both presets keep --model-share of it")
    ap.add_argument("--model-share", type=float, default=0.55,
                    help="share of the budget kept for the whole-model rows (default 0.55; 0 with --skip-model)")
    ap.add_argument("--build-dir", default=str(ROOT / "build" / "kernels"))
    ap.add_argument("--iters", type=int, default=20, help="timed repetitions per measurement (median)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--presets", default="paper,edge")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    ap.add_argument("--forward", default="__call__",
                    help="model method that takes (ir, vis) tensors and returns the fused image")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: smoke-test this script on tiny sizes (numbers meaningless)")
    args = ap.parse_args(argv)

    import torch

    budget = Budget(args.budget)
    if not args.skip_model:
        budget.reserved = max(0.0, min(0.9, args.model_share)) * args.budget
    report = Report()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        report.env = environment("cpu")
        report.step("GPU", "FAIL", 0, "no CUDA device: building only (GPU tests and benchmarks need a GPU)")
        step_build(report, "cpu", Path(args.build_dir))
        _write(report, args.out, budget)
        return 2
    report.env = environment(device)
    print(f"GPU: {report.env.get('gpu')}  torch {report.env['torch']}  Python {report.env['python']}", flush=True)

    if step_build(report, device, Path(args.build_dir)) is None:
        _write(report, args.out, budget)
        return 1
    batches = [int(b) for b in args.batches.split(",") if b]
    scale = 1.0 if device == "cuda" else 0.1
    if device == "cuda" and not args.skip_tests:
        step_gpu_tests(report, budget)
    try:
        step_kernel_benchmarks(report, device, scale, args.iters, batches, budget)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        report.step("kernel benchmarks", "FAIL", 0, f"{type(e).__name__}: {e}"[:300])
    budget.reserved = 0.0  # the whole-model rows may now use everything that is left
    if not args.skip_model:
        try:
            step_model_benchmarks(report, device, scale, args.iters, batches,
                                  [p for p in args.presets.split(",") if p], budget,
                                  compile_too=not args.no_compile and device == "cuda", forward=args.forward)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            report.step("whole-model benchmarks", "FAIL", 0, f"{type(e).__name__}: {e}"[:300])
    _write(report, args.out, budget)
    return 0 if report.ok else 1


def _write(report: Report, out: str, budget: Budget) -> None:
    report.env["total_s"] = round(budget.elapsed(), 1)
    md = report.markdown()
    print()
    print(md)
    path = Path(out)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(report.to_json())
        path.with_suffix(".md").write_text(md)
    else:
        path.write_text(md)
        path.with_suffix(".json").write_text(report.to_json())
    print(f"written: {path} and {path.with_suffix('.json' if path.suffix != '.json' else '.md')}")


if __name__ == "__main__":
    sys.exit(main())
