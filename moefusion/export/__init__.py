"""Deployment export: torch -> ONNX (live expert routing) -> TensorRT engine / Triton model repository.

Command line: ``moefusion-export`` (see ``moefusion.export.cli`` and docs/export.md). Python::

    from moefusion.export import run_export
    run_export({"weights": "W.pt", "format": "engine", "half": True})

Modules: ``formats`` (the table that drives validation), ``wrapper`` (the export-only formulation
of the model), ``onnx_export``, ``fp16``, ``quantize`` (INT8 Q/DQ by ModelOpt), ``trt_shim`` (tensorrt
vs tensorrt_rtx), plugin libraries through ``moefusion.kernels.plugins`` (found and loaded once per process), ``engine`` (builder,
sidecar, reuse, verification), ``triton``, ``api`` (the stages, in one line), ``cli``.
"""
from __future__ import annotations

from .engine import verify_engine

__all__ = ["FORMATS", "ExportOptions", "export_onnx", "read_metadata", "run_export", "validate", "verify_engine"]


def __getattr__(name):  # lazy: importing moefusion.export must not import torch/onnx/tensorrt (engine does not)
    if name in ("FORMATS", "ExportOptions", "validate"):
        from . import formats  # here: imports torch (+4.4 s CPU, 5.5 s wall on `import moefusion.export`)

        return getattr(formats, name)
    if name in ("export_onnx", "read_metadata"):
        from . import onnx_export  # here: imports torch (+4.4 s CPU on `import moefusion.export`)

        return getattr(onnx_export, name)
    if name == "run_export":
        from .api import run_export  # here: imports torch (+4.4 s CPU on `import moefusion.export`)

        return run_export
    raise AttributeError(name)
