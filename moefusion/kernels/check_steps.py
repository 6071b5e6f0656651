"""The steps of ``python -m moefusion.kernels.check``, in order of value, and what each one runs.

Each step runs in its own process (``python -m moefusion.kernels.check --step NAME ...``, started by the
check with a time budget); it reports through a ``StepSink`` (rows as measured, then one result). A step
that needs a GPU reports "skipped" at once in a dry run (no GPU, or ``--dry-run``); the others run their
CPU part on tiny sizes there, so that CI runs the same code as the GPU machine.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import _lib
from .build import (
    LIB_NAME,
    ROOT,
    BuildError,
    build,
    configure,
    toolchain_problem,
)
from .check_env import find_sanitizer, machine_facts, module_version, run_logged
from .check_report import Budget, Row, StepSink

GPU_TEST_FILE = "tests/test_kernels_gpu.py"
TRT_TEST_FILE = "tests/test_export_trt.py"
# the kernels against the reference (first, most valuable): test functions of GPU_TEST_FILE, every parameter
KERNEL_TESTS = ("test_gate_kernel", "test_combine_kernel", "test_attention_split_kernel",
                "test_expert_conv3x3_combine_kernel", "test_ops_match_reference_and_capture_in_cuda_graph")
SANITIZER_TEST = "test_selftest_under_compute_sanitizer"
PER_TEST_TIMEOUT_S = 120  # one hanging GPU test fails alone (pytest-timeout) instead of losing the step
NO_TENSORRT = ("full TensorRT (the `tensorrt` module) is not installed: it is not installable on the GPU machines "
               "lent here (no package registry there; its wheels are far over the 64 MiB carried with a run)")


@dataclass(frozen=True)
class Step:
    name: str
    title: str  # what it measures (the summary, --list and docs/kernels.md)
    budget: float  # seconds at most on a GPU (a cap: time not used goes to the later steps)
    dry_budget: float  # seconds at most in a dry run
    min_s: float = 20.0  # not started when less than this is left of the whole run (GPU)
    gpu_only: bool = False  # a dry run reports it skipped without starting torch
    needs_library: bool = False  # skipped when the build step failed


STEPS: tuple[Step, ...] = (
    Step("env", "machine, GPU, driver, torch, nvcc, CMake, compute-sanitizer, ONNX Runtime providers, TensorRT",
         30, 60, 5),
    Step("build", "CMake + nvcc build of libmoefusion_kernels.so and its self-test for this GPU only (sm_XY-real), "
         "time-bounded; then one kernel called from a PyTorch process (static cudart, else rebuilt with the "
         "shared one)", 150, 150, 30),
    Step("kernels", "every kernel against the PyTorch reference on the GPU (pytest: gate, combine, attention split, "
         "last conv + combine; odd sizes, NCHW and channels-last, fp32 1e-5 / fp16 1e-2, outputs poisoned with NaN; "
         "the four ops in one CUDA graph whose routing changes between replays)", 90, 20, 20,
         gpu_only=True, needs_library=True),
    Step("model-edge", "edge preset, 640x480, batch 1: eager fp32 (reference), fp16 channels-last CUDA graphs with "
         "sparse and dense dispatch, PyTorch ops and our kernels, fp32 + kernels; ms/frame, rel err vs eager, "
         "target <= 0.5 ms", 60, 90, 25),
    Step("model-paper", "paper preset, the same rows as model-edge; target <= 2.5 ms", 90, 120, 30),
    Step("model-b8", "both presets at batch 8 (fp16 CUDA graphs, both dispatches, with and without kernels): "
         "ms/batch and frames/s", 60, 20, 25, gpu_only=True),
    Step("kernel-bench", "each kernel against the PyTorch ops it replaces (fp16, channels-last, CUDA graphs), "
         "then whole MoE layers (MoGE, MoLE experts) by dispatch strategy; batch 1 and 8", 60, 60, 20),
    Step("ort-cuda", "ONNX Runtime's CUDA provider (moefusion-bench --backends onnxruntime --device cuda): both "
         "presets, fp32 and fp16, 640x480, latency and batch-8 throughput", 120, 20, 40),
    Step("tensorrt", "TensorRT engines (moefusion-bench --backends tensorrt --device cuda) when full TensorRT is "
         "installed", 120, 20, 40),
    Step("model-compile", "both presets, batch 1: fp16 CUDA graph with kernels and torch.compile", 90, 20, 60,
         gpu_only=True),
    Step("gpu-tests", "the rest of pytest -m gpu tests/test_kernels_gpu.py: ops under torch.compile, expert "
         "dispatch strategies, the graph runner, the self-test binary, the paper model through the kernels "
         "(and tests/test_export_trt.py when TensorRT is installed)", 150, 20, 30, gpu_only=True, needs_library=True),
    Step("sanitizer-memcheck", "compute-sanitizer memcheck (leak check) on the self-test binary", 90, 20, 20,
         gpu_only=True, needs_library=True),
    Step("sanitizer-racecheck", "compute-sanitizer racecheck on the self-test binary", 120, 20, 20,
         gpu_only=True, needs_library=True),
)
STEP_NAMES = tuple(s.name for s in STEPS)


@dataclass
class Context:
    device: str  # "cuda", or "cpu" in a dry run
    sink: StepSink
    budget: Budget
    iters: int = 20
    build_dir: Path = ROOT / "build" / "kernels-check"
    forward: str = "__call__"
    big_batch: int = 8

    @property
    def dry(self) -> bool:
        return self.device != "cuda"


# ----------------------------------------------------------------------------- env
def step_env(ctx: Context):
    env = machine_facts()
    gpu = f"{env['gpu']} (sm_{env['cc']})" if env.get("gpu") else "no CUDA GPU"
    detail = (f"{gpu}; torch {env['torch']} (CUDA {env['torch_cuda']}); nvcc {env['nvcc']}; "
              f"compute-sanitizer {'found' if env['compute_sanitizer'] else 'not found'}; "
              f"onnxruntime {env['onnxruntime']} {env.get('onnxruntime_providers', '')}; "
              f"tensorrt {env['tensorrt'] or 'not installed'}")
    for k, v in env.items():
        print(f"  {k}: {v}")
    return "ok", detail, env


# ----------------------------------------------------------------------------- build
_SMOKE = """
import ctypes, sys, torch
from moefusion.kernels import _lib, reference as R
lib = _lib.load_library(sys.argv[1])
x = torch.randn(2, 2, 3, 8, 16, device="cuda"); w = torch.softmax(torch.randn(2, 2, device="cuda"), 1)
out = torch.full((2, 3, 8, 16), float("nan"), device="cuda")
_lib.check(lib.moefusion_combine(_lib.desc(x), _lib.desc(w), _lib.desc(out),
           ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)), "combine")
torch.cuda.synchronize()
err = ((out - R.combine(x, w)).norm() / R.combine(x, w).norm()).item()
print("smoke rel err", err)
sys.exit(0 if err < 1e-5 else 1)
"""


def _smoke(lib: Path, timeout: float) -> tuple[bool, str]:
    """One kernel through ctypes inside a PyTorch process (its own: a broken launch stays there)."""
    code, out = run_logged([sys.executable, "-c", _SMOKE, str(lib)], timeout)
    lines = out.strip().splitlines()
    if code is None:
        return False, f"timed out after {timeout:.0f} s"
    return code == 0, (lines[-1] if lines else f"exit {code}")[:300]


def step_build(ctx: Context):
    problem = toolchain_problem()
    if problem:
        return ("skipped" if ctx.dry else "FAIL"), f"cannot build: {problem}", {}
    archs = "90-real"  # the dry run builds what an H100/H200 needs
    if not ctx.dry:
        import torch  # here: the GPU's compute capability (torch imports in 4+ s)

        major, minor = torch.cuda.get_device_capability()
        archs = f"{major}{minor}-real"
    t = time.monotonic()
    data = {"archs": archs, "build_dir": str(ctx.build_dir)}
    if ctx.dry:  # CMake's configure with the GPU build's flags: the toolchain and CMakeLists in seconds
        try:
            log = configure(ctx.build_dir, archs=archs, timeout=ctx.budget.left() - 2)
        except BuildError as e:
            print(str(e)[-4000:])
            return "FAIL", str(e).splitlines()[0][:300], data
        said = [ln.strip("- ").strip() for ln in log.splitlines() if "moefusion kernels:" in ln or "TensorRT" in ln]
        return "ok", (f"CMake configure for sm_{archs} in {time.monotonic() - t:.0f} s" +
                      (f" ({'; '.join(said)})" if said else "") +
                      "; compiling skipped in the dry run (tests/test_kernels.py compiles it)"), data
    smoke_reserve = 30.0  # one PyTorch process calling a kernel: seconds
    try:
        lib = build(ctx.build_dir, archs=archs, jobs=os.cpu_count(), timeout=ctx.budget.left() - smoke_reserve - 5)
    except BuildError as e:
        print(str(e)[-4000:])
        return "FAIL", str(e).splitlines()[0][:300], data
    data["build_s"] = round(time.monotonic() - t, 1)
    notes = []
    if not ctx.dry:
        ok, detail = _smoke(lib, max(5.0, ctx.budget.left() - 5))
        notes.append(f"kernel call from PyTorch (static cudart): {'ok' if ok else 'FAIL'} ({detail})")
        if not ok:
            # the static cudart cannot work beside PyTorch's here: link the shared one (reused by SONAME)
            try:
                lib = build(ctx.build_dir.parent / (ctx.build_dir.name + "-shared-cudart"), archs=archs,
                            jobs=os.cpu_count(), cudart="Shared", timeout=ctx.budget.left() - 25)
            except BuildError as e:
                return "FAIL", "; ".join(notes + [f"shared cudart build: {str(e).splitlines()[0][:200]}"]), data
            ok, detail = _smoke(lib, max(5.0, ctx.budget.left() - 2))
            notes.append(f"kernel call from PyTorch (shared cudart): {'ok' if ok else 'FAIL'} ({detail})")
            if not ok:
                return "FAIL", "; ".join(notes), data
    info = _lib.load_library(lib).moefusion_build_info().decode()
    data.update(library=str(lib), info=info)
    return "ok", "; ".join([f"{info} in {data['build_s']} s"] + notes), data


# ----------------------------------------------------------------------------- pytest steps
def _test_functions(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def _pytest(ctx: Context, what: str, args: list[str], nodes: list[str]):
    """Run pytest on ``nodes`` (GPU) or, in a dry run, check that they exist and that pytest is there."""
    missing = [n for n in nodes if n.split("::")[1].split("[")[0] not in _test_functions(ROOT / n.split("::")[0])] \
        if nodes else []
    if missing:
        return "FAIL", f"no such test(s) in the checkout: {', '.join(missing)}", {}
    if importlib.util.find_spec("pytest") is None:
        return ("skipped" if ctx.dry else "FAIL"), "pytest is not installed", {}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", *args]
    left = ctx.budget.left() - 3
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += [f"--timeout={int(max(10, min(PER_TEST_TIMEOUT_S, left)))}"]
    if ctx.dry:
        return "skipped", f"needs a GPU (dry run); would run {what}: {' '.join(cmd[1:])}", {"command": cmd[1:]}
    code, out = run_logged(cmd, left)
    counts = {k: 0 for k in ("passed", "failed", "skipped", "error", "errors", "deselected")}
    summary = [ln for ln in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|error|deselected)", ln)]
    for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary[-1] if summary else ""):
        counts[k] = int(n)
    counts["errors"] += counts.pop("error")
    failed = [ln.split(" ", 1)[1][:160] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    skipped = [ln.split(" ", 2)[-1][:200] for ln in out.splitlines() if ln.startswith("SKIPPED ")]
    data = dict(counts, failed_tests=failed[:20], skip_reasons=skipped[:10], command=cmd[1:])
    line = summary[-1].strip("= ") if summary else ""
    if code is None:
        return "timeout", f"pytest stopped at the step's budget; {line or 'no summary'}", data
    detail = line or f"exit {code}"
    if failed:
        detail += "; failed: " + ", ".join(f.split(" - ")[0] for f in failed[:8])
    if skipped:
        detail += "; skipped: " + skipped[0]
    if code == 0 and counts["passed"] == 0 and counts["skipped"]:
        return "skipped", detail, data
    return ("ok" if code == 0 else "FAIL"), detail, data


def step_kernels(ctx: Context):
    nodes = [f"{GPU_TEST_FILE}::{t}" for t in KERNEL_TESTS]
    return _pytest(ctx, "the kernels against the reference", ["-m", "gpu", *nodes], nodes)


def step_gpu_tests(ctx: Context):
    deselect = [f"{GPU_TEST_FILE}::{t}" for t in (*KERNEL_TESTS, SANITIZER_TEST)]
    files = [GPU_TEST_FILE] + ([TRT_TEST_FILE] if importlib.util.find_spec("tensorrt") else [])
    args = ["-m", "gpu", *files]
    for d in deselect:
        args += ["--deselect", d]
    return _pytest(ctx, "the remaining GPU tests", args, deselect)


def _sanitizer(ctx: Context, tool: str):
    node = f"{GPU_TEST_FILE}::{SANITIZER_TEST}[{tool}]"
    if find_sanitizer() is None:
        return "skipped", "compute-sanitizer not found (CUDA toolkit's bin/)", {}
    exe = Path(os.environ.get(_lib.ENV_VAR, ctx.build_dir / LIB_NAME)).parent / "moefusion_kernels_selftest"
    status, detail, data = _pytest(ctx, f"compute-sanitizer {tool}", ["-m", "gpu", node], [node])
    data["selftest"] = str(exe)
    return status, detail, data


# ----------------------------------------------------------------------------- timings
def _gpu_name(ctx: Context) -> str:
    return ctx.sink.env.get("gpu") or ("cpu (dry run)" if ctx.dry else "")


def _model(ctx: Context, plan, need: float):
    from .check_bench import (
        model_benchmarks,  # here: imports torch in the step's own process
    )

    scale = 0.05 if ctx.dry else 1.0
    iters = 1 if ctx.dry else ctx.iters
    status, detail = model_benchmarks(ctx.sink, ctx.device, scale, iters, plan, ctx.budget, ctx.forward,
                                      need=2.0 if ctx.dry else need)
    return status, detail + (" (dry run: CPU, 32x32, numbers meaningless)" if ctx.dry else ""), {}


def step_model_preset(preset: str):
    def run(ctx: Context):
        from .check_bench import DRY_VARIANTS, EAGER, GRAPH_VARIANTS

        # the dry run: edge runs both dispatches; paper (its model takes longer to build) the reference only
        variants = (DRY_VARIANTS if preset == "edge" else [EAGER]) if ctx.dry else [EAGER, *GRAPH_VARIANTS]
        return _model(ctx, [(preset, 1, v) for v in variants], need=15.0 if preset == "edge" else 20.0)

    return run


def step_model_b8(ctx: Context):
    from .check_bench import GRAPH_VARIANTS

    fp16 = [v for v in GRAPH_VARIANTS if v[2]]
    return _model(ctx, [(p, ctx.big_batch, v) for p in ("edge", "paper") for v in fp16], need=20.0)


def step_model_compile(ctx: Context):
    from .check_bench import COMPILE_VARIANT

    return _model(ctx, [(p, 1, COMPILE_VARIANT) for p in ("edge", "paper")], need=25.0)


def step_kernel_bench(ctx: Context):
    from .check_bench import (
        kernel_benchmarks,  # here: imports torch in the step's own process
    )

    if ctx.dry:
        status, detail = kernel_benchmarks(ctx.sink, "cpu", 0.05, 1, [1], ctx.budget, need=1.0)
        return status, detail + " (dry run: CPU, tiny sizes, numbers meaningless)", {}
    status, detail = kernel_benchmarks(ctx.sink, "cuda", 1.0, ctx.iters, [1, ctx.big_batch], ctx.budget, need=8.0)
    return status, detail, {}


def _bench(ctx: Context, backend: str, precisions: list[str]):
    """moefusion-bench for one backend, one preset per run (edge first: a run stopped at the budget keeps
    the preset before it); its rows become ours."""
    statuses, notes = [], []
    for preset in ("edge", "paper"):
        left = ctx.budget.left() - 3
        if left < 20:
            notes.append(f"{preset}: skipped (time budget)")
            ctx.sink.add(Row(backend, f"{preset}: {backend}", "480x640", note="skipped: time budget",
                             gpu=_gpu_name(ctx)))
            continue
        with tempfile.TemporaryDirectory(prefix="moefusion-check-bench-") as tmp:
            js = Path(tmp) / "bench.json"
            cmd = [sys.executable, "-m", "moefusion.bench", "--backends", backend, "--device", "cuda",
                   "--presets", preset, "--precisions", *precisions, "--imgsz", "480", "640", "--no-pipeline",
                   "--iters", str(ctx.iters), "--batch", str(ctx.big_batch), "--json", str(js)]
            code, out = run_logged(cmd, left)
            if code is None:
                statuses.append("timeout")
                notes.append(f"{preset}: timed out")
                continue
            try:
                result = json.loads(js.read_text())
            except (OSError, ValueError):
                statuses.append("FAIL")
                tail = out.strip().splitlines()[-1:] or [f"exit {code}"]
                notes.append(f"{preset}: moefusion-bench failed ({tail[0][:200]})")
                continue
        for r in result.get("rows", []):
            lat = (r.get("latency_ms") or {}).get("p50")
            fps = (r.get("throughput") or {}).get("fps")
            note = r.get("status", "")
            if r.get("ok"):
                note = f"{r.get('describe', '')}; batch-{(r.get('throughput') or {}).get('batch')} {fps} frames/s" + \
                    (f"; speed-up vs reference {r['speedup']}x" if r.get("speedup") else "")
            ctx.sink.add(Row(backend, f"{preset}: {r.get('label')} {r.get('precision')}", r.get("size_text", ""),
                             1, None, lat, note, _gpu_name(ctx)))
        bad = [r for r in result.get("rows", []) if str(r.get("status", "")).startswith("error")]
        unavailable = [r for r in result.get("rows", []) if str(r.get("status", "")).startswith(("unavailable",
                                                                                                   "unsupported"))]
        statuses.append("FAIL" if bad or code else ("skipped" if unavailable and len(unavailable) ==
                                                    len([r for r in result["rows"] if not r.get("reference")])
                                                    else "ok"))
        notes.append(f"{preset}: " + ("; ".join(sorted({str(r['status'])[:200] for r in bad + unavailable}))
                                      or "ok"))
    for s in ("FAIL", "timeout", "ok", "skipped"):
        if s in statuses:
            return s, "; ".join(notes), {}
    return "skipped", "; ".join(notes), {}


def step_ort(ctx: Context):
    if importlib.util.find_spec("onnxruntime") is None:
        return "skipped", "onnxruntime is not installed", {}
    import onnxruntime as ort  # optional, as everywhere: here only when installed

    providers = ort.get_available_providers()
    have = f"onnxruntime {ort.__version__} (providers: {', '.join(providers)})"
    if ctx.dry:
        return "skipped", f"needs a GPU (dry run); {have}", {"providers": providers}
    if "CUDAExecutionProvider" not in providers:
        return "skipped", (f"{have} has no CUDAExecutionProvider: install onnxruntime-gpu (in place of "
                           "onnxruntime) to time it"), {"providers": providers}
    return _bench(ctx, "onnxruntime", ["fp32", "fp16"])


def step_tensorrt(ctx: Context):
    if importlib.util.find_spec("tensorrt") is None:
        rtx = module_version("tensorrt_rtx")
        extra = (f"; tensorrt_rtx {rtx} is installed, but TensorRT-RTX runs engines only on RTX-class GPUs "
                 "(compute capability 7.5-8.9 and 12.x), not on an H100/H200 (9.0)") if rtx else ""
        return "skipped", NO_TENSORRT + extra, {}
    if ctx.dry:
        return "skipped", "needs a GPU (dry run); tensorrt is installed", {}
    return _bench(ctx, "tensorrt", ["fp32", "fp16"])


def _gpu_only(fn):
    def run(ctx: Context):
        if ctx.dry:
            return "skipped", "needs a GPU (dry run)", {}
        return fn(ctx)

    return run


RUNNERS = {
    "env": step_env,
    "build": step_build,
    "kernels": step_kernels,
    "model-edge": step_model_preset("edge"),
    "model-paper": step_model_preset("paper"),
    "model-b8": _gpu_only(step_model_b8),
    "kernel-bench": step_kernel_bench,
    "ort-cuda": step_ort,
    "tensorrt": step_tensorrt,
    "model-compile": _gpu_only(step_model_compile),
    "gpu-tests": step_gpu_tests,
    "sanitizer-memcheck": lambda ctx: _sanitizer(ctx, "memcheck"),
    "sanitizer-racecheck": lambda ctx: _sanitizer(ctx, "racecheck"),
}
assert set(RUNNERS) == set(STEP_NAMES)


def run_step(name: str, ctx: Context) -> None:
    """Run one step in this process and report its result through ``ctx.sink``."""
    try:
        status, detail, data = RUNNERS[name](ctx)
    except Exception as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        status, detail, data = "error", f"{type(e).__name__}: {e}".splitlines()[0][:300], {}
    ctx.sink.result(status, detail, data)
