"""Python side of the CUDA gated-expert dispatch kernels (kernels/ in the project checkout).

- ``load_library()`` / ``available()``: libmoefusion_kernels.so (found via $MOEFUSION_KERNELS_LIB, the
  package's lib/ folder or build/kernels/; a clear error with the build command when missing);
- ``ops``: the PyTorch custom ops ``torch.ops.moefusion.*`` (CUDA kernels on CUDA tensors, the PyTorch
  reference on CPU tensors; fake implementations for torch.compile / export);
- ``onnx``: symbolics that export the ops as the plugin-flavour ONNX nodes (domain "moefusion", version 1);
- ``reference``: PyTorch and NumPy references of every kernel;
- ``fast``: the fastest GPU path (sparse expert dispatch over these ops, fp16, channels-last, CUDA graphs);
- ``build``: ``python -m moefusion.kernels.build``; ``check``: ``python -m moefusion.kernels.check``.
"""
from ._lib import KernelError, KernelLibraryError, available, build_info, library_path, load_library
from .ops import attention_split, combine, cuda_ready, expert_conv3x3_combine, gate

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
