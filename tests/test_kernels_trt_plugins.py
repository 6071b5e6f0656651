"""libmoefusion_trt_plugins.so compiled against NVIDIA's real TensorRT headers (10.3 = JetPack 6.1/6.2, and 11.1),
and loaded into TensorRT-RTX's plugin registry once per process however often it is asked for.

The headers are ../shared/third_party/tensorrt/<version>/include (Apache-2.0, headers only: the plugins
need nothing else to compile). Skipped with the reason without nvcc/cmake or without the headers;
under CI=true a build failure with the headers present fails. One CUDA architecture keeps each build
to about 20 s; the build folders live in pytest's cache, so the export tests reuse the 10.3 build.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from moefusion.kernels import build as kbuild

pytestmark = pytest.mark.slow

TRT_HEADERS = Path(os.environ.get("MOEFUSION_TRT_HEADERS", kbuild.ROOT.parent / "shared" / "third_party" / "tensorrt"))
HEADER_VERSIONS = ("v10.3.0", "v11.1")


def build_plugin_library(config, version: str = "v10.3.0") -> Path:
    """The plugin library built against ``version``'s headers (once; reused through pytest's cache), or skip."""
    problem = kbuild.toolchain_problem()
    if problem:
        pytest.skip(f"cannot build the TensorRT plugins here: {problem}")
    headers = TRT_HEADERS / version / "include"
    if not (headers / "NvInfer.h").is_file():
        pytest.skip(f"TensorRT {version} headers not found at {headers} (set MOEFUSION_TRT_HEADERS)")
    key = f"moefusion-trt-plugins-{version}-{hashlib.sha256(str(kbuild.ROOT).encode()).hexdigest()[:8]}"
    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    out = cache.mkdir(key) if cache is not None else Path(tempfile.gettempdir()) / key
    try:
        return kbuild.build_plugins(out, headers, archs="87-real")
    except kbuild.BuildError as e:
        if "CMakeCache" in str(e):  # a stale cache from another checkout: start over once
            shutil.rmtree(out, ignore_errors=True)
            return kbuild.build_plugins(out, headers, archs="87-real")
        pytest.fail(f"the plugins do not compile against TensorRT {version} headers ({headers}): {e}")


@pytest.mark.parametrize("version", HEADER_VERSIONS)
def test_plugins_compile_against_real_tensorrt_headers(version, request):
    lib = build_plugin_library(request.config, version)
    assert lib.is_file() and lib.stat().st_size > 100_000
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not found")
    syms = subprocess.run([nm, "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in syms.splitlines() if line.strip()}
    assert {"getCreators", "setLoggerFinder"} <= exported
    assert all(s in ("getCreators", "setLoggerFinder") or s.startswith("moefusion_") for s in exported), exported
    log = (lib.parent / "CMakeCache.txt").read_text()
    assert f"TensorRT_INCLUDE_DIR:PATH={(TRT_HEADERS / version / 'include').resolve()}" in log


def test_library_loads_once_per_process(request):
    """Two loads (and two shims, as two exports or engines in one process do) never reach the registry twice."""
    trt = pytest.importorskip("tensorrt_rtx")
    from moefusion.kernels.plugins import load_plugin_libraries, loaded_libraries, plugin_names
    from moefusion.export.trt_shim import TRT

    lib = build_plugin_library(request.config)
    load_plugin_libraries(trt, [str(lib)])
    assert {"MoEGate", "MoECombine"} <= plugin_names(trt)
    for shim in (TRT(trt), TRT(trt)):
        assert shim.load_plugin_libraries([str(lib)]) == [os.path.realpath(lib)]
    copy = lib.parent / "copy" / lib.name  # the same library at another path (package copy vs build folder)
    copy.parent.mkdir(exist_ok=True)
    shutil.copy2(lib, copy)
    load_plugin_libraries(trt, [str(copy)])
    assert loaded_libraries(trt).count(os.path.realpath(lib)) == 1 and os.path.realpath(copy) not in loaded_libraries(trt)
    # what the registry does with a second load of its own: refuses it (the failure this guards against)
    assert trt.get_plugin_registry().load_library(str(lib)) is None
