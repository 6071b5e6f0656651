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
import os
import platform
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

from ..errors import cli_entry
from . import _lib
from .build import build
from .check_bench import step_kernel_benchmarks, step_model_benchmarks
from .check_report import Budget, Report

ROOT = Path(__file__).resolve().parents[2]
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
