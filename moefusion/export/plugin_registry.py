"""TensorRT plugin libraries, loaded once per process.

TensorRT's plugin registry refuses a second ``load_library`` of a library it already holds ("creator of
MoEGate exists already"), and the registry is process-wide. So every part of moefusion that needs the
plugins (the export's flavour choice and engine build, the runtime's TensorRT backend, one engine or
many) loads them through ``load_plugin_libraries``, which remembers what each TensorRT module
(``tensorrt``, ``tensorrt_rtx``: separate registries) has loaded: by real path, and by content (the same
file copied into the package and left in build/kernels is one library).

No torch, no onnx: the runtime imports this without the export stack.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import threading

from ..errors import UserError

BUILD_HINT = "python -m moefusion.kernels.build"

_lock = threading.Lock()
# TensorRT module name -> {real path: sha256}
_loaded: dict[str, dict[str, str]] = {}
_nvinfer_plugins_initialised: set[str] = set()


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def loaded_libraries(trt_module=None) -> list[str]:
    """The plugin libraries loaded in this process (for one TensorRT module, or for all)."""
    with _lock:
        if trt_module is None:
            return [p for libs in _loaded.values() for p in libs]
        return list(_loaded.get(trt_module.__name__, {}))


def _init_nvinfer_plugins(trt, logger) -> None:
    name = trt.__name__
    if name in _nvinfer_plugins_initialised or not hasattr(trt, "init_libnvinfer_plugins"):
        return
    trt.init_libnvinfer_plugins(logger or trt.Logger(trt.Logger.WARNING), "")
    _nvinfer_plugins_initialised.add(name)


def load_plugin_library(trt, path: str, *, logger=None, flag: str = "--plugin-lib") -> bool:
    """Load one plugin library into ``trt``'s registry unless this process already has it.

    Returns True when it was loaded now, False when it (or a byte-identical copy) was loaded before.
    A missing or refused library is a one-line UserError naming it and the build command.
    """
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such file; build the plugins ({BUILD_HINT}) or point {flag} / "
                        "MOEFUSION_TRT_PLUGINS at the library")
    real = os.path.realpath(path)
    digest = _sha256(real)
    with _lock:
        have = _loaded.setdefault(trt.__name__, {})
        if real in have or digest in have.values():
            return False
        _init_nvinfer_plugins(trt, logger)
        registry = trt.get_plugin_registry() if hasattr(trt, "get_plugin_registry") else None
        try:
            if registry is not None and hasattr(registry, "load_library"):
                if registry.load_library(real) is None:
                    raise OSError("the plugin registry refused it (built for another TensorRT, or a library with "
                                  "the same plugins was loaded already by other code in this process)")
            else:  # TensorRT 8.x: static registration when the library is opened
                ctypes.CDLL(real, mode=ctypes.RTLD_GLOBAL)
        except (OSError, RuntimeError, TypeError) as e:
            raise UserError(f"{flag} {path}: cannot load it into {trt.__name__} {trt.__version__} ({e}); rebuild it "
                            f"for this TensorRT with {BUILD_HINT}") from None
        have[real] = digest
        return True


def load_plugin_libraries(trt, paths, *, logger=None, flag: str = "--plugin-lib") -> list[str]:
    """Load each library once per process (see module doc); returns the real paths, in order."""
    out = []
    for p in paths:
        load_plugin_library(trt, p, logger=logger, flag=flag)
        out.append(os.path.realpath(p))
    return out


def plugin_names(trt) -> set[str]:
    """Names of the plugin creators in ``trt``'s registry (IPluginV3 ``all_creators``, or 8.x's list)."""
    reg = trt.get_plugin_registry()
    creators = getattr(reg, "all_creators", None)
    if creators is None:
        creators = getattr(reg, "plugin_creator_list", [])
    return {c.name for c in creators}
