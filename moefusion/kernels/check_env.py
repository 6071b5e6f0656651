"""The machine's facts for ``python -m moefusion.kernels.check`` (versions, GPU, tools) and the one way its
steps run a command: in its own process group, its output copied to the check's log, killed at a deadline."""
from __future__ import annotations

import importlib.util
import os
import platform
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time

from .build import ROOT, find_nvcc


def run_logged(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group, its output copied to ours (the check's log) as it comes; at
    ``timeout`` the group is killed. Returns (exit status, or None when it timed out; its output)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env or os.environ.copy(), preexec_fn=os.setpgrp)  # noqa: PLW1509 (no threads)
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    deadline = time.monotonic() + max(1.0, timeout)
    timed_out = False
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not sel.select(timeout=min(left, 1.0)):
                continue
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                break
            chunks.append(data)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
    if not timed_out:
        try:  # the output ended; so should the process
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    proc.stdout.close()
    return (None if timed_out else proc.returncode), b"".join(chunks).decode("utf-8", "replace")


def version_of(cmd: list[str], pattern: str) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(pattern, out)
    return m.group(1) if m else None


def driver_from_smi() -> str:
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    m = re.search(r"CUDA Version:\s*([0-9.]+)", out)
    d = re.search(r"Driver Version:\s*([0-9.]+)", out)
    return f"{m.group(1) if m else '?'} (driver {d.group(1) if d else '?'})"


def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    for cand in ("/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda/compute-sanitizer/compute-sanitizer"):
        if not found and os.path.isfile(cand):
            found = cand
    return found


def module_version(name: str) -> str | None:
    """The installed version of the distribution that provides module ``name`` (None: not installed)."""
    if importlib.util.find_spec(name) is None:
        return None
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    for dist in [*packages_distributions().get(name, []), name]:
        try:
            return f"{version(dist)}" + (f" ({dist})" if dist.replace("-", "_") != name else "")
        except PackageNotFoundError:
            continue
    return "?"


def machine_facts() -> dict:
    """What the machine has: Python, torch and CUDA, the GPU, the build tools, the runtimes (the env step's row)."""
    import torch  # here: the first step to import torch (4+ s); the check's own process never does

    env = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "host": platform.node(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "nvcc": version_of([find_nvcc() or "nvcc", "--version"], r"release ([0-9.]+)") if find_nvcc() else None,
        "cmake": version_of(["cmake", "--version"], r"version ([0-9.]+)") if shutil.which("cmake") else None,
        "ninja": bool(shutil.which("ninja")),
        "compute_sanitizer": find_sanitizer(),
        "onnxruntime": module_version("onnxruntime"),
        "tensorrt": module_version("tensorrt"),
        "tensorrt_rtx": module_version("tensorrt_rtx"),
        "pytest_timeout": importlib.util.find_spec("pytest_timeout") is not None,
        "git": version_of(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], r"(\w+)") if shutil.which("git")
        else None,
    }
    if env["onnxruntime"]:
        try:
            import onnxruntime as ort  # optional, as everywhere: only for its providers

            env["onnxruntime_providers"] = ort.get_available_providers()
        except Exception as e:  # noqa: BLE001
            env["onnxruntime_providers"] = [f"import failed: {type(e).__name__}: {e}"[:200]]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, cc=f"{p.major}{p.minor}", sms=p.multi_processor_count,
                   memory_gib=round(p.total_memory / 2**30, 1))
        env["cuda_driver"] = driver_from_smi()
    else:
        env.update(gpu=None, cuda_driver=None)
    return env
