"""Build libmoefusion_kernels.so (and the TensorRT plugins where TensorRT is found) with CMake.

    python -m moefusion.kernels.build                      # -> build/kernels/libmoefusion_kernels.so
    python -m moefusion.kernels.build --archs native       # only this machine's GPU (faster)
    python -m moefusion.kernels.build --install            # also copy it into the package (moefusion/kernels/lib)

Needs nvcc (CUDA >= 12), CMake >= 3.18 and a generator (Ninja preferred, Make otherwise). The same
function serves the tests, the GPU check script and a pip build hook.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

try:
    from ..errors import UserError, cli_entry
except ImportError:  # loaded as a standalone file by a setup.py build hook (no package, no torch)
    class UserError(Exception):
        pass

    def cli_entry(main):
        return main

ROOT = Path(__file__).resolve().parents[2]  # the project checkout (holds CMakeLists.txt)
DEFAULT_BUILD_DIR = ROOT / "build" / "kernels"
PACKAGE_LIB_DIR = Path(__file__).resolve().parent / "lib"
LIB_NAME = "libmoefusion_kernels.so"
PLUGIN_LIB_NAME = "libmoefusion_trt_plugins.so"

BUILD_COMMAND = "python -m moefusion.kernels.build"


class BuildError(UserError):
    """The CUDA library could not be built; the message says which step failed and why."""


def find_nvcc() -> str | None:
    """nvcc from $CUDACXX, $CUDA_HOME/bin, the PATH or /usr/local/cuda/bin."""
    candidates = [os.environ.get("CUDACXX")]
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates += [shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def toolchain_problem() -> str | None:
    """Why the library cannot be built here (None when nvcc and cmake are present)."""
    if find_nvcc() is None:
        return "nvcc not found (install the CUDA toolkit or set CUDACXX / CUDA_HOME)"
    if shutil.which("cmake") is None:
        return "cmake not found (pip install cmake, or apt install cmake)"
    return None


def _run_bounded(cmd: list[str], cwd: Path, quiet: bool, timeout: float | None) -> subprocess.CompletedProcess:
    """subprocess.run, except that at ``timeout`` the whole process group (cmake, ninja, every nvcc) is killed."""
    if timeout is None:
        return subprocess.run(cmd, cwd=cwd, capture_output=quiet, text=True, check=False)
    pipe = subprocess.PIPE if quiet else None
    # its own process group, killed as a whole (no threads here: preexec_fn is safe)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=pipe, stderr=pipe, text=True, preexec_fn=os.setpgrp)  # noqa: PLW1509
    timeout = max(1.0, timeout)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        raise BuildError(f"CMake timed out after {timeout:.0f} s ({' '.join(cmd)}); the compiler's last output:\n"
                         f"{((out or '') + (err or ''))[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _cmake(src: Path, out: Path, configure_args: list[str], targets: list[str] | None, jobs: int | None,
           quiet: bool, timeout: float | None = None, run_build: bool = True) -> str:
    """Configure (once per build folder) and build; returns the configure step's output. Raises BuildError.
    ``timeout``: seconds for configure and build together (None: no bound); ``run_build=False``: configure only."""
    deadline = None if timeout is None else time.monotonic() + timeout
    out.mkdir(parents=True, exist_ok=True)
    configure = ["cmake", "-S", str(src), "-B", str(out), *configure_args]
    if not (out / "CMakeCache.txt").exists():
        configure += ["-G", "Ninja"] if shutil.which("ninja") else []
    configure.append(f"-DCMAKE_CUDA_COMPILER={find_nvcc()}")
    build_cmd = ["cmake", "--build", str(out)]
    for t in targets or []:
        build_cmd += ["--target", t]
    if jobs:
        build_cmd += ["-j", str(jobs)]
    configure_log = ""
    for step, cmd in (("configure", configure), ("build", build_cmd))[: 2 if run_build else 1]:
        res = _run_bounded(cmd, src, quiet, None if deadline is None else deadline - time.monotonic())
        if step == "configure":
            configure_log = res.stdout or ""
        if quiet and res.stdout and step == "configure":
            for line in res.stdout.splitlines():  # say what is built and why
                if "moefusion kernels:" in line or "TensorRT plugins:" in line:
                    print(line.strip("- ").strip(), file=sys.stderr)
        if res.returncode != 0:
            detail = ((res.stdout or "") + (res.stderr or ""))[-3000:] if quiet else ""
            raise BuildError(f"CMake {step} failed ({' '.join(cmd)}):\n{detail}")
    return configure_log


def _configure_args(trt: str, archs: str | None, cudart: str | None, trt_include=None, selftest: bool = True):
    args = [f"-DMOEFUSION_TRT={trt}"]
    if archs:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
    if cudart:
        args.append(f"-DMOEFUSION_CUDART={cudart}")
    if trt_include:
        args.append(f"-DTensorRT_INCLUDE_DIR={Path(trt_include).resolve()}")
    if not selftest:
        args.append("-DMOEFUSION_BUILD_SELFTEST=OFF")
    return args


def build(
    build_dir: str | os.PathLike | None = None,
    archs: str | None = None,
    trt: str = "AUTO",
    jobs: int | None = None,
    quiet: bool = True,
    source_dir: str | os.PathLike | None = None,
    cudart: str | None = None,
    trt_include: str | os.PathLike | None = None,
    timeout: float | None = None,
) -> Path:
    """Configure and build; return the path of libmoefusion_kernels.so. Raises BuildError.

    ``trt_include``: the folder with TensorRT's NvInfer.h (-DTensorRT_INCLUDE_DIR); headers are all the
    plugin library needs to compile. ``timeout``: seconds for CMake's configure and build together; past
    it every compiler process is killed and BuildError says so (None: no bound).
    """
    problem = toolchain_problem()
    if problem:
        raise BuildError(f"cannot build the CUDA kernels: {problem}")
    src = Path(source_dir) if source_dir else ROOT
    if not (src / "CMakeLists.txt").is_file():
        raise BuildError(f"no CMakeLists.txt in {src}: the CUDA sources ship with the project checkout only")
    out = Path(build_dir) if build_dir else DEFAULT_BUILD_DIR
    _cmake(src, out, _configure_args(trt, archs, cudart, trt_include), None, jobs, quiet, timeout)
    lib = out / LIB_NAME
    if not lib.is_file():
        raise BuildError(f"the build finished but {lib} is missing")
    return lib


def configure(build_dir: str | os.PathLike, archs: str | None = None, timeout: float | None = None) -> str:
    """CMake's configure step alone (finds nvcc, checks the architectures, writes the build files): a
    seconds-long check of the toolchain where compiling would take minutes. Returns its output; raises
    BuildError."""
    problem = toolchain_problem()
    if problem:
        raise BuildError(f"cannot build the CUDA kernels: {problem}")
    if not (ROOT / "CMakeLists.txt").is_file():
        raise BuildError(f"no CMakeLists.txt in {ROOT}: the CUDA sources ship with the project checkout only")
    return _cmake(ROOT, Path(build_dir), _configure_args("AUTO", archs, None), None, None, True, timeout, run_build=False)


def build_plugins(build_dir: str | os.PathLike, trt_include: str | os.PathLike, archs: str | None = None,
                  jobs: int | None = None, quiet: bool = True) -> Path:
    """Only libmoefusion_trt_plugins.so (MoEGate, MoECombine and the kernels they call) against the TensorRT
    headers in ``trt_include``; returns its path. Raises BuildError (with the compiler's output)."""
    problem = toolchain_problem()
    if problem:
        raise BuildError(f"cannot build the TensorRT plugins: {problem}")
    if not (Path(trt_include) / "NvInfer.h").is_file():
        raise BuildError(f"no NvInfer.h in {trt_include}")
    out = Path(build_dir)
    _cmake(ROOT, out, _configure_args("ON", archs, None, trt_include, selftest=False), ["moefusion_trt_plugins"],
           jobs, quiet)
    lib = out / PLUGIN_LIB_NAME
    if not lib.is_file():
        raise BuildError(f"the build finished but {lib} is missing")
    return lib


def install_into_package(lib: Path) -> Path:
    """Copy the built library (and the plugin library, if built) into moefusion/kernels/lib/."""
    PACKAGE_LIB_DIR.mkdir(parents=True, exist_ok=True)
    dst = PACKAGE_LIB_DIR / LIB_NAME
    shutil.copy2(lib, dst)
    plugins = lib.parent / PLUGIN_LIB_NAME
    if plugins.is_file():
        shutil.copy2(plugins, PACKAGE_LIB_DIR / PLUGIN_LIB_NAME)
    return dst


def setuptools_hook(dest_dir: str | os.PathLike, build_dir: str | os.PathLike | None = None) -> Path | None:
    """For a setup.py build_py step: build the library and copy it (and the TensorRT plugins) to dest_dir.

    $MOEFUSION_BUILD_KERNELS: "0" skips, "1" makes a failure an error, unset/"auto" builds when nvcc and
    cmake are there and otherwise prints how to build later. $MOEFUSION_CUDA_ARCHS picks architectures.
    """
    mode = os.environ.get("MOEFUSION_BUILD_KERNELS", "auto").lower()
    if mode in ("0", "off", "no", "false"):
        print("moefusion: CUDA kernels not built (MOEFUSION_BUILD_KERNELS=0)", file=sys.stderr)
        return None
    problem = toolchain_problem()
    if problem and mode not in ("1", "on", "yes", "true"):
        print(f"moefusion: CUDA kernels not built: {problem}. The package works without them (PyTorch ops); "
              f"build them later with `{BUILD_COMMAND}` in the project checkout.", file=sys.stderr)
        return None
    lib = build(build_dir or DEFAULT_BUILD_DIR, archs=os.environ.get("MOEFUSION_CUDA_ARCHS"))
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    for f in (lib, lib.parent / PLUGIN_LIB_NAME):
        if f.is_file():
            shutil.copy2(f, dest / f.name)
    return dest / LIB_NAME


@cli_entry
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moefusion.kernels.build", description=__doc__.splitlines()[0])
    ap.add_argument("--build-dir", default=str(DEFAULT_BUILD_DIR))
    ap.add_argument("--archs", help='CMAKE_CUDA_ARCHITECTURES, e.g. "87;90-real" (default) or "native"')
    ap.add_argument("--trt", default="AUTO", choices=["AUTO", "ON", "OFF"], help="TensorRT plugins")
    ap.add_argument("--trt-include", metavar="DIR", help="folder with TensorRT's NvInfer.h (-DTensorRT_INCLUDE_DIR), "
                    "e.g. ../shared/third_party/tensorrt/v10.3.0/include")
    ap.add_argument("--cudart", choices=["Static", "Shared"], help="cudart linkage (default Static)")
    ap.add_argument("--install", action="store_true", help="copy the library into moefusion/kernels/lib/")
    ap.add_argument("-j", "--jobs", type=int)
    ap.add_argument("--timeout", type=float, metavar="S", help="seconds for configure + build (default: no bound)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    lib = build(args.build_dir, args.archs, args.trt, args.jobs, quiet=not args.verbose, cudart=args.cudart,
                trt_include=args.trt_include, timeout=args.timeout)
    print(lib)
    if args.install:
        print(install_into_package(lib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
