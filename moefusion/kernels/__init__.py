"""Python side of the CUDA gated-expert dispatch kernels (kernels/ in the project checkout).

- ``load_library()`` / ``available()``: libmoefusion_kernels.so (found via $MOEFUSION_KERNELS_LIB, the
  package's lib/ folder or build/kernels/; a clear error with the build command when missing);
- ``ops``: the PyTorch custom ops ``torch.ops.moefusion.*`` (CUDA kernels on CUDA tensors, the PyTorch
  reference on CPU tensors; fake implementations for torch.compile / export);
- ``onnx``: symbolics that export the ops as the plugin-flavour ONNX nodes (domain "moefusion", version 1);
- ``reference``: PyTorch and NumPy references of every kernel;
- ``fast``: the fastest GPU path (sparse expert dispatch over these ops, fp16, channels-last, CUDA graphs);
- ``build``: ``python -m moefusion.kernels.build``; ``check``: ``python -m moefusion.kernels.check``;
- ``plugins``: the TensorRT plugin libraries: where they are found and loading each once per process.

The torch ops are imported lazily: ``moefusion.kernels.plugins`` is used by the TensorRT runtime, which
runs without torch, and importing this package must not pull torch in.
"""
from __future__ import annotations

import importlib

from ._lib import (
    KernelError,
    KernelLibraryError,
    available,
    build_info,
    library_path,
    load_library,
)

_LAZY = {name: "ops" for name in ("attention_split", "combine", "cuda_ready", "expert_conv3x3_combine", "gate")}

__all__ = [
    "KernelError",
    "KernelLibraryError",
    "attention_split",
    "available",
    "build_info",
    "combine",
    "cuda_ready",
    "expert_conv3x3_combine",
    "gate",
    "library_path",
    "load_library",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
