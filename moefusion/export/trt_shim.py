"""The one place that knows how ``tensorrt`` (JetPack / x86 TensorRT 8.6-11.x) and ``tensorrt_rtx``
(TensorRT for RTX) differ for what the builder uses.

Differences handled here:
- module: ``tensorrt`` preferred (it is what the engines run on for Jetson, trtexec, DeepStream and
  Triton), else ``tensorrt_rtx``;
- precision comes from the network for both: strongly typed networks (TensorRT >= 10; TensorRT 11 and
  TensorRT-RTX have nothing else). ``--half`` is an fp16 ONNX (``moefusion.export.fp16``), ``--int8`` a
  Q/DQ ONNX (``moefusion.export.quantize``); no FP16/INT8 builder flags, no implicit INT8 calibration.
  TensorRT 8.6 (JetPack 6.0) has no strongly typed networks: fp32 only there;
- network flags: EXPLICIT_BATCH exists (and is required) before TensorRT 10 only;
- plugin layers: TensorRT-RTX's ONNX parser aborts the process (std::terminate) right after it creates a
  plugin layer and its network has no add_plugin_v3, so it never gets a plugin-flavour ONNX;
- the GPU: TensorRT needs one to build; TensorRT-RTX builds on a CPU-only machine, and its engines run
  only in the TensorRT-RTX runtime on RTX GPUs (``runs_on``);
- timing cache: a no-op in TensorRT-RTX (skipped there);
- plugin libraries: loaded once per process through ``moefusion.kernels.plugins``.
"""
from __future__ import annotations

import logging
import re

from ..errors import UserError
from ..kernels import plugins

log = logging.getLogger("moefusion.export")

RTX_GPUS = "compute capability 7.5 to 12.x except 8.7 and 9.0"
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

    def describe(self) -> str:
        return f"{self.module} {self.version}"

    @property
    def has_timing_cache(self) -> bool:
        """TensorRT-RTX keeps the API but its timing cache operations are no-ops (deprecated)."""
        return not self.rtx

    # -- what the engines are for ------------------------------------------------------------------
    @property
    def supports_plugin_layers(self) -> bool:
        """False for TensorRT-RTX: its ONNX parser aborts the process after creating a plugin layer."""
        return not self.rtx

    def runs_on(self, gpu: dict | None) -> dict:
        """Where an engine built here can run: {'runtime', 'gpus', 'summary'} (sidecar and CLI output)."""
        if self.rtx:
            return {"runtime": f"TensorRT-RTX {self.version} (the tensorrt_rtx runtime)",
                    "gpus": RTX_GPUS,
                    "summary": f"TensorRT-RTX engine: runs with the TensorRT-RTX {self.version} runtime on RTX GPUs "
                               f"({RTX_GPUS}); not with TensorRT, trtexec, DeepStream, Triton's TensorRT backend, "
                               "Jetson (8.7) or H100/H200 (9.0)"}
        where = f"{gpu['name']} (compute capability {gpu['compute_capability']})" if gpu else "the GPU it was built on"
        return {"runtime": f"TensorRT {self.version}",
                "gpus": where,
                "summary": f"TensorRT engine: runs with TensorRT {self.version} (run_pipeline, trtexec, DeepStream, "
                           f"Triton with the same TensorRT) on {where}"}

    # -- precision ------------------------------------------------------------------------------
    @property
    def strongly_typed(self) -> bool:
        """Networks take precision from the ONNX types (TensorRT >= 10, TensorRT-RTX)."""
        return self.rtx or self.major >= 10

    def check_precision(self, precision: str, gpu: dict | None) -> None:
        """UserError when this TensorRT / GPU cannot build ``precision`` (never a silent fallback)."""
        if precision == "fp32":
            return
        flag = "--half" if precision == "fp16" else "--int8"
        if not self.strongly_typed:
            raise UserError(f"{flag}: {self.describe()} has no strongly typed networks, which carry the precision of "
                            "the ONNX (fp16 tensors, INT8 Q/DQ); use TensorRT >= 10 (JetPack 6.1+) or build fp32")
        if self.rtx or gpu is None:
            return  # RTX GPUs all have fast FP16 and INT8
        major, minor = (int(x) for x in gpu["compute_capability"].split("."))
        if (major, minor) < ((5, 3) if precision == "fp16" else (6, 1)):
            raise UserError(f"{flag}: {gpu['name']} (compute capability {gpu['compute_capability']}) has no fast "
                            f"{precision.upper()}; build without it (fp32) or on a GPU that has it")

    # -- network ----------------------------------------------------------------------------------
    def create_network(self, builder):
        """A strongly typed network where TensorRT has them (precision from the ONNX), else explicit batch."""
        trt = self.trt
        flags = 0
        if self.major < 10 and not self.rtx and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        if not self.rtx and self.strongly_typed:  # TensorRT-RTX networks are strongly typed already
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
    def load_plugin_libraries(self, paths) -> list[str]:
        """Load plugin libraries once per process (moefusion.kernels.plugins)."""
        return plugins.load_plugin_libraries(self.trt, paths, logger=self.logger)

    def plugin_names(self) -> set[str]:
        return plugins.plugin_names(self.trt)

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
