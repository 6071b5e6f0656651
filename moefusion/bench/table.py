"""What ``moefusion-bench`` can measure: one table, derived from the export formats table.

After Ultralytics' exporter/benchmark, one table drives both argument validation and the
benchmark. The exported backends come from :data:`moefusion.export.formats.FORMATS`: each format
whose file a runtime backend runs becomes a row (``onnx`` -> ``onnxruntime``, ``engine`` ->
``tensorrt``), with the precisions its options allow (``half`` -> fp16) and the Python modules it
needs. ``triton`` is skipped: it packages the same ONNX / engine for a server, so timing it here
would time ONNX Runtime or TensorRT again. Two rows run the PyTorch model without an export:
``torch`` (what ``run_pipeline --backend torch`` runs) and ``torch-kernels`` (the MoE layers
through the CUDA ops of :mod:`moefusion.kernels.fast`, fp16/fp32 channels-last CUDA graphs).

``availability(...)`` says, before any work, why a (backend, precision, device) cannot run here:
``"unavailable: <reason>"`` (the backend cannot run on this machine) or ``"unsupported on
<device>"`` (this precision is not supported there; never a silent fallback to another one).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..export.formats import FORMATS
from ..export.trt_shim import INSTALL_HINT, TRT
from ..kernels import _lib
from ..runtime.backends import import_cudart, import_tensorrt, model_kind

PRECISIONS = ("fp32", "fp16")
DEVICES = ("auto", "cpu", "cuda")
# Runtime backend that runs the file a format writes (keyed by moefusion.runtime.backends.model_kind).
_RUNTIME_OF_KIND = {"onnx": "onnxruntime", "engine": "tensorrt"}
# TensorRT for RTX runs its engines only on these compute capabilities (docs/export.md, ENVIRONMENT.md).
RTX_COMPUTE_CAPABILITIES = ("7.5", "8.0", "8.6", "8.9")  # and 12.x; not 8.7 (Jetson Orin) or 9.0 (H100/H200)
DEFAULT_WARMUP = {"cpu": 2, "cuda": 10}  # warm-up calls per row (run.py measures, report.py describes)


@dataclass(frozen=True)
class BenchBackend:
    name: str
    description: str
    export_format: str | None  # row of FORMATS that writes its model file; None: the PyTorch model itself
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    modules: tuple[str, ...] = ()


def _exported_backends() -> dict[str, BenchBackend]:
    out = {}
    for fmt in FORMATS.values():
        if not fmt.suffixes[0]:
            continue  # a folder (Triton repository): served by tritonserver, not a runtime backend here
        runtime = _RUNTIME_OF_KIND.get(model_kind("model" + fmt.suffixes[0]))
        if runtime is None or runtime in out:
            continue
        precisions = ("fp32",) + (("fp16",) if "half" in fmt.options else ())
        devices = ("cpu", "cuda") if fmt.runs_here else ("cuda",)
        modules = tuple(fmt.modules) + ((runtime,) if runtime == "onnxruntime" else ())
        out[runtime] = BenchBackend(runtime, f"--format {fmt.name}: {fmt.description}", fmt.name, precisions,
                                    devices, modules)
    return out


def backends() -> dict[str, BenchBackend]:
    """The benchmark's backends, in table order."""
    table = {
        "torch": BenchBackend("torch", "PyTorch model as run_pipeline --backend torch runs it (sparse dispatch; "
                              "CPU: fp32 eager; CUDA: CUDA graphs, fp16 autocast, MoE layers through the CUDA "
                              "kernels when built)", None, PRECISIONS, ("cpu", "cuda")),
        "torch-kernels": BenchBackend("torch-kernels", "the kernels' whole-model runner (moefusion.kernels.fast: "
                                      "accelerate + optimize: fp16/fp32 weights, channels-last, one CUDA graph)",
                                      None, PRECISIONS, ("cuda",)),
    }
    table.update(_exported_backends())
    return table


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _tensorrt_reason(device: str) -> str | None:
    trt = import_tensorrt()
    if trt is None:
        return f"unavailable: TensorRT is not installed ({INSTALL_HINT})"
    found = f"{trt.__name__} {getattr(trt, '__version__', '?')}"
    if device != "cuda":
        gpu = TRT.gpu()
        if gpu is None:
            extra = (", which builds engines on a CPU but runs them only on RTX-class GPUs; full TensorRT is not "
                     "installed") if trt.__name__ == "tensorrt_rtx" else ""
            return f"unavailable: no CUDA GPU (TensorRT engines run on a GPU; found {found}{extra})"
        return "unavailable: --device cpu (TensorRT engines run on the GPU; use --device cuda)"
    if import_cudart() is None:
        return "unavailable: the tensorrt backend needs cuda-python for device memory (pip install cuda-python)"
    if trt.__name__ == "tensorrt_rtx":
        gpu = TRT.gpu() or {}
        cc = gpu.get("compute_capability", "")
        if cc and cc not in RTX_COMPUTE_CAPABILITIES and not cc.startswith("12."):
            return (f"unavailable: {found} runs engines only on compute capability "
                    f"{'/'.join(RTX_COMPUTE_CAPABILITIES)}/12.x; {gpu.get('name', 'this GPU')} is {cc} "
                    "(install full TensorRT: pip install tensorrt, or JetPack on Jetson)")
    return None


def availability(backend: BenchBackend, precision: str, device: str) -> str | None:
    """None when (backend, precision) can be measured on ``device`` (cpu|cuda), else the row's status."""
    if backend.name == "tensorrt":
        reason = _tensorrt_reason(device)
        if reason:
            return reason
    if device not in backend.devices:
        if backend.name == "torch-kernels":
            return "unavailable: needs a CUDA GPU (the MoE kernels run on CUDA only; use --device cuda)"
        return f"unavailable: does not run on {device}"
    if precision not in backend.precisions:
        return f"unsupported by --format {backend.export_format}" if backend.export_format else "unsupported"
    missing = [m for m in backend.modules if m != "tensorrt" and not _have(m)]
    if missing:
        return f"unavailable: {', '.join(missing)} not installed (pip install 'moefusion[export]')"
    if backend.name == "torch-kernels":
        if not _lib.available():
            return ("unavailable: the CUDA kernel library is not built (python -m moefusion.kernels.build; "
                    "see docs/kernels.md)")
    if backend.name == "onnxruntime":
        import onnxruntime as ort

        providers = ort.get_available_providers()
        if device == "cuda" and not any(p in providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")):
            return "unavailable: this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu, never beside onnxruntime)"
        if device == "cpu" and precision == "fp16":
            # ORT's CPU provider has few float16 kernels and wraps the rest in casts to float32:
            # measuring that would report fp32 arithmetic as fp16.
            return "unsupported on cpu"
    if backend.name == "torch" and precision == "fp16" and device == "cpu":
        return "unsupported on cpu"
    return None
