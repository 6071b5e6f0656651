"""Inference backends behind one small interface.

A backend takes the preprocessed network inputs and returns the fused luminance and the
attention map, all float32 numpy arrays shaped ``[B, 1, H, W]`` in [0, 1]::

    fused_y, attention = backend.infer(ir_unit, vis_y)   # attention may be None

Backends, one module each: ``torch_backend`` (a checkpoint; CUDA: fp16 autocast
and CUDA graphs; CPU: fp32), ``onnxruntime_backend`` (an .onnx with inputs ``ir``, ``vis`` and
outputs ``fused``, ``attention``; TensorRT/CUDA execution providers when present, else CPU),
``tensorrt_backend`` (a serialized engine and its plugin library, found through
``moefusion.kernels.plugins``; device memory through cuda-python; no torch import) and ``average``
(the classical per-pixel average: no model, any machine); ``base`` the interface.
``selection``: ``select_backend("auto", model_path)`` picks the fastest that can run and says why;
``open_model_file`` opens an .onnx or an engine as a model with ``fuse``.
"""
from ...kernels.plugins import default_plugin_library, plugin_libraries
from .average import AverageBackend
from .base import BACKEND_ALIASES, BACKENDS, ENGINE_EXTS, Backend, _check_inputs, backend_name
from .onnxruntime_backend import OnnxRuntimeBackend
from .selection import BackendModel, _cuda_device_count_no_torch, model_kind, open_model_file, select_backend
from .tensorrt_backend import TensorRTBackend, _cuda_check, import_cudart, import_tensorrt
from .torch_backend import TorchBackend, _find_unit_module

__all__ = [
    "BACKENDS", "BACKEND_ALIASES", "ENGINE_EXTS", "AverageBackend", "Backend", "BackendModel", "OnnxRuntimeBackend",
    "TensorRTBackend", "TorchBackend", "backend_name", "default_plugin_library", "import_cudart", "import_tensorrt",
    "model_kind", "open_model_file", "plugin_libraries", "select_backend",
]
