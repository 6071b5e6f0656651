"""The one place that knows how ``tensorrt`` (JetPack / x86 TensorRT 8.6-10.x) and ``tensorrt_rtx``
(TensorRT for RTX) differ for what the builder uses.

Differences handled here:
- module: ``tensorrt`` preferred (it is what the engines run on for Jetson, trtexec and DeepStream),
  else ``tensorrt_rtx``;
- precision: TensorRT takes ``--half``/``--int8`` as builder flags on a float32 network (weakly
  typed; the gates are pinned to float32 with layer precisions). TensorRT-RTX has no precision
  flags and no INT8 calibration: networks are strongly typed, so ``--half`` means parsing a float16
  ONNX (``moefusion.export.fp16``) and ``--int8`` is an error;
- network flags: EXPLICIT_BATCH exists (and is required) before TensorRT 10 only;
- the GPU: TensorRT needs one to build; TensorRT-RTX builds on a CPU-only machine (its engines run
  on RTX GPUs; compute capability 8.0, 8.6, 8.9, 12.x);
- timing cache: a no-op in TensorRT-RTX (skipped there);
- plugin registry listing: ``all_creators`` (10.x) or ``plugin_creator_list`` (8.x).
"""
from __future__ import annotations

import ctypes
import logging
import os
import re

from ..errors import UserError

log = logging.getLogger("moefusion.export")

INSTALL_HINT = ("on Jetson it comes with JetPack (python3-libnvinfer; JetPack 6+); on x86 pip install tensorrt; "
                "for RTX GPUs pip install tensorrt-rtx-cu13")


def import_trt(prefer: str | None = None):
    """The TensorRT module (``tensorrt`` first, then ``tensorrt_rtx``), or None."""
    names = [prefer] if prefer else ["tensorrt", "tensorrt_rtx"]
    for name in names:
        try:
            return __import__(name)
        except ImportError:
            continue
    return None


class _Logger:
    """A TensorRT ILogger that keeps errors (for one-line messages) and forwards to logging."""

    def __new__(cls, trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                    self.errors.append(msg)
                    log.error("TensorRT: %s", msg)
                elif severity == trt.ILogger.Severity.WARNING:
                    log.info("TensorRT warning: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

        return Logger()


class TRT:
    """A thin facade over the imported TensorRT module."""

    def __init__(self, module=None):
        module = module or import_trt()
        if module is None:
            raise UserError(f"--format engine needs TensorRT, which is not installed: {INSTALL_HINT}")
        self.trt = module
        self.module = module.__name__
        self.version = module.__version__
        self.rtx = self.module == "tensorrt_rtx"
        self.major = int(self.version.split(".")[0])
        if not self.rtx and tuple(int(x) for x in self.version.split(".")[:2]) < (8, 6):
            raise UserError(f"{self.describe()} cannot parse the gates' TopK (needs TensorRT >= 8.6): upgrade to "
                            "JetPack 6 (TensorRT 8.6/10.x), or run the .onnx with ONNX Runtime")
        self.logger = _Logger(module)
        self._plugins_initialised = False

    def describe(self) -> str:
        return f"{self.module} {self.version}"

    @property
    def has_timing_cache(self) -> bool:
        """TensorRT-RTX keeps the API but its timing cache operations are no-ops (deprecated)."""
        return not self.rtx

    # -- precision ------------------------------------------------------------------------------
    @property
    def typed_precision(self) -> bool:
        """True: precision comes from the ONNX types (an fp16 ONNX for --half), not builder flags."""
        return self.rtx

    def check_precision(self, builder, precision: str, gpu: dict | None) -> None:
        """UserError when this TensorRT / GPU cannot build ``precision`` (never a silent fallback)."""
        if precision == "fp32":
            return
        if self.rtx:
            if precision == "int8":
                raise UserError("--int8: TensorRT-RTX has no INT8 calibration (implicit quantization); build INT8 "
                                "engines with TensorRT (JetPack on Jetson, pip install tensorrt on x86)")
            return  # fp16 through a float16 ONNX
        where = f"{gpu['name']} (compute capability {gpu['compute_capability']})" if gpu else "this GPU"
        fast = getattr(builder, f"platform_has_fast_{'fp16' if precision == 'fp16' else 'int8'}", None)
        if fast is None and gpu:  # removed in newer TensorRT: decide from the compute capability
            major, minor = (int(x) for x in gpu["compute_capability"].split("."))
            fast = (major, minor) >= ((5, 3) if precision == "fp16" else (6, 1))
        if fast is False:
            raise UserError(f"--{'half' if precision == 'fp16' else 'int8'}: {where} has no fast "
                            f"{precision.upper()}; build without it (fp32) or on a GPU that has it")

    def set_precision(self, config, precision: str) -> list[str]:
        """Builder flags for ``precision`` (weakly typed TensorRT only); returns their names."""
        if self.rtx or precision == "fp32":
            return []
        flags = ["FP16"] if precision in ("fp16", "int8") else []
        if precision == "int8":
            flags.append("INT8")
        for f in flags:
            config.set_flag(getattr(self.trt.BuilderFlag, f))
        return flags

    def pin_fp32(self, network, config, node_names) -> int:
        """Keep the layers of these ONNX nodes in float32 (TensorRT with precision flags only)."""
        if self.rtx or not node_names:
            return 0
        trt = self.trt
        flag = getattr(trt.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS", None) or getattr(
            trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None)
        if flag is None:
            return 0
        names = set(node_names)

        def of_node(layer_name: str) -> bool:
            # the layer of node N is named N, or N plus a suffix for nodes that become several layers;
            # N_3 is another node of the same type, not a part of N
            if layer_name in names:
                return True
            for n in names:
                rest = layer_name[len(n):]
                if layer_name.startswith(n) and rest[:1] in ("_", " ", ".", ":", "[", "(") and not rest[1:].isdigit():
                    return True
            return False

        pinned = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if not of_node(layer.name):
                continue
            if layer.type in (trt.LayerType.SHAPE, trt.LayerType.CONSTANT, trt.LayerType.IDENTITY):
                continue
            if all(layer.get_output(j).dtype in (trt.float32, trt.float16) for j in range(layer.num_outputs)):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
                pinned += 1
        if pinned:
            config.set_flag(flag)
        return pinned

    # -- network ----------------------------------------------------------------------------------
    def create_network(self, builder, strongly_typed: bool = False):
        trt = self.trt
        flags = 0
        if self.major < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if strongly_typed and not self.rtx:
            if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
                raise UserError(f"{self.describe()} has no strongly typed networks; use TensorRT >= 10")
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return builder.create_network(flags)

    def set_workspace(self, config, gib: float | None) -> None:
        if gib is not None:
            config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, int(gib * (1 << 30)))

    # -- GPU --------------------------------------------------------------------------------------
    @staticmethod
    def gpu() -> dict | None:
        """{'name', 'compute_capability'} of CUDA device 0, from cuda-python or torch; None without one."""
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            try:
                from cuda import cudart  # type: ignore
            except ImportError:
                cudart = None
        if cudart is not None:
            try:
                err, n = cudart.cudaGetDeviceCount()
                if int(err) == 0 and n > 0:
                    err, prop = cudart.cudaGetDeviceProperties(0)
                    if int(err) == 0:
                        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
                        return {"name": name.strip("\x00 "), "compute_capability": f"{prop.major}.{prop.minor}"}
            except Exception:  # noqa: BLE001 - no driver / no device
                pass
        try:
            import torch

            if torch.cuda.is_available():
                major, minor = torch.cuda.get_device_capability(0)
                return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
        except Exception:  # noqa: BLE001
            pass
        return None

    def require_gpu(self) -> dict | None:
        gpu = self.gpu()
        if gpu is None and not self.rtx:
            raise UserError(f"{self.describe()} needs the CUDA GPU the engine will run on to build it; none is "
                            "visible (check nvidia-smi / tegrastats), or build on the target device")
        return gpu

    # -- plugins ----------------------------------------------------------------------------------
    def load_plugin_libraries(self, paths) -> None:
        """Load plugin libraries: the registry's load_library (TensorRT 10, IPluginV3 getCreators), else ctypes."""
        if not self._plugins_initialised and hasattr(self.trt, "init_libnvinfer_plugins"):
            self.trt.init_libnvinfer_plugins(self.logger, "")
            self._plugins_initialised = True
        registry = self.trt.get_plugin_registry()
        for p in paths:
            if not os.path.isfile(p):
                raise UserError(f"--plugin-lib {p}: no such file; build the plugins (python -m moefusion.kernels.build) "
                                "or point --plugin-lib / MOEFUSION_TRT_PLUGINS at the library")
            path = os.path.abspath(p)
            try:
                if hasattr(registry, "load_library"):
                    if registry.load_library(path) is None:
                        raise OSError("the plugin registry refused it")
                else:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except (OSError, RuntimeError, TypeError) as e:
                raise UserError(f"--plugin-lib {p}: cannot load it ({e}); rebuild it for this TensorRT "
                                f"({self.describe()}) with python -m moefusion.kernels.build") from None

    def plugin_names(self) -> set[str]:
        reg = self.trt.get_plugin_registry()
        creators = getattr(reg, "all_creators", None)
        if creators is None:
            creators = getattr(reg, "plugin_creator_list", [])
        return {c.name for c in creators}

    # -- parser ------------------------------------------------------------------------------------
    @staticmethod
    def parser_errors(parser) -> list[str]:
        out = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            name = e.node_name() if hasattr(e, "node_name") else ""
            op = e.node_operator() if hasattr(e, "node_operator") else ""
            where = f"node {name!r} ({op})" if name else f"node #{e.node()}"
            desc = re.sub(r"\s+", " ", str(e.desc())).strip()
            out.append(f"{where}: {desc}")
        return out


def gpu_slug(gpu: dict | None) -> str:
    if gpu is None:
        return "nogpu"
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{gpu['name']}-sm{gpu['compute_capability']}").strip("-").lower()
