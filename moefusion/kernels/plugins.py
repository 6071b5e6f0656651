"""TensorRT plugin libraries: where to find them, and loading each once per process.

Discovery, one place for every user (the export's flavour choice and engine build, the runtime's
TensorRT backend): the libraries given on the command line, else (an engine) its sidecar
``<engine>.json``, else ``$MOEFUSION_TRT_PLUGINS`` (``PLUGIN_ENV``, paths separated by ``os.pathsep``),
else the library ``python -m moefusion.kernels.build`` writes (the package's ``kernels/lib`` or the
checkout's ``build/kernels``).

Loading: TensorRT's plugin registry refuses a second ``load_library`` of a library it already holds
("creator of MoEGate exists already"), and the registry is process-wide. So every part of moefusion
that needs the plugins (one engine or many, an export earlier in the same process) loads them through
``load_plugin_libraries``, which remembers what each TensorRT module (``tensorrt``, ``tensorrt_rtx``:
separate registries) has loaded: by real path, and by content (the same file copied into the package
and left in build/kernels is one library).

No torch, no onnx, no TensorRT import here: the runtime imports this without the export stack.
"""
from __future__ import annotations

import ctypes
import json
import os
import threading

from ..errors import UserError
from ..files import sha256_file
from .build import BUILD_COMMAND, DEFAULT_BUILD_DIR, PACKAGE_LIB_DIR, PLUGIN_LIB_NAME

PLUGIN_ENV = "MOEFUSION_TRT_PLUGINS"
BUILD_HINT = BUILD_COMMAND

__all__ = ["BUILD_HINT", "PLUGIN_ENV", "PLUGIN_LIB_NAME", "candidate_libraries", "default_plugin_library",
           "env_plugin_libraries", "load_plugin_libraries", "load_plugin_library", "loaded_libraries",
           "plugin_libraries", "plugin_names"]


# ------------------------------------------------------------------------------------------------
# Discovery
# ------------------------------------------------------------------------------------------------

def env_plugin_libraries() -> list[str]:
    """The libraries named by ``$MOEFUSION_TRT_PLUGINS`` (empty entries skipped)."""
    return [p for p in os.environ.get(PLUGIN_ENV, "").split(os.pathsep) if p]


def default_plugin_library() -> str | None:
    """The plugin library installed in the package or built in the repository, if any (the places
    moefusion.kernels.build writes to)."""
    for p in (PACKAGE_LIB_DIR / PLUGIN_LIB_NAME, DEFAULT_BUILD_DIR / PLUGIN_LIB_NAME):
        if p.is_file():
            return str(p)
    return None


def candidate_libraries(explicit: list[str] | None) -> list[str]:
    """``explicit`` (a command-line flag), else ``$MOEFUSION_TRT_PLUGINS``, else the built library."""
    if explicit:
        return list(explicit)
    libs = env_plugin_libraries()
    if libs:
        return libs
    lib = default_plugin_library()
    return [lib] if lib else []


def plugin_libraries(engine_path: str, explicit: list[str] | None) -> list[str]:
    """Plugin libraries to load before deserializing an engine: ``explicit`` (``--trt-plugins``), the
    engine's sidecar ``<engine>.json`` (key ``plugin_libraries`` or ``plugin_library``; relative paths
    from the engine's folder), ``$MOEFUSION_TRT_PLUGINS``. Empty when none says (the caller may then try
    ``default_plugin_library``)."""
    libs = list(explicit or [])
    side = engine_path + ".json"
    if not libs and os.path.isfile(side):
        try:
            with open(side) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            meta = {}
        v = meta.get("plugin_libraries") or meta.get("plugin_library") or []
        libs = [v] if isinstance(v, str) else list(v)
        libs = [p if os.path.isabs(p) else os.path.join(os.path.dirname(engine_path), p) for p in libs]
    if not libs:
        libs = env_plugin_libraries()
    return libs


# ------------------------------------------------------------------------------------------------
# Loading, once per process
# ------------------------------------------------------------------------------------------------

_lock = threading.Lock()
# TensorRT module name -> {real path: sha256}
_loaded: dict[str, dict[str, str]] = {}
_nvinfer_plugins_initialised: set[str] = set()


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
                        f"{PLUGIN_ENV} at the library")
    real = os.path.realpath(path)
    digest = sha256_file(real)
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
