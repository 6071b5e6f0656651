"""MoE-Fusion Edge: real-time infrared + visible image fusion.

Public API (stable): ``build_model(preset, dispatch="sparse", **overrides)``, ``load(path=None)``
and ``model.fuse(ir, vis)``.

This module is the top layer (docs/architecture.md): it may import every package, and no package
imports it. Its imports sit inside the two functions because this file runs before every
submodule and command (``run_pipeline --help``, ``moefusion-export``): importing torch and the
runtime here would cost each of them seconds of start-up (measured: docs/architecture.md).
"""
from pathlib import Path

from ._version import __version__

__all__ = ["__version__", "build_model", "load"]

MODEL_FILE_SUFFIXES = (".onnx", ".engine", ".plan")  # opened by the runtime; anything else is a checkpoint


def build_model(preset: str, dispatch: str = "sparse", **overrides):
    """Build an untrained MoE-Fusion model from a named preset (see ``moefusion.model.presets``)."""
    from .model import build_model as _build

    return _build(preset, dispatch=dispatch, **overrides)


def load(path=None, device=None, dispatch: str = "sparse", **backend_options):
    """Load a fusion model: a checkpoint (.pt), an .onnx or an .engine; None = bundled default.

    The result has ``fuse(ir, vis) -> np.ndarray``. Checkpoints give a torch ``MoEFusion`` in eval
    mode on ``device`` (default: CUDA when available, else the CPU); .onnx and .engine files open in
    the runtime's ONNX Runtime / TensorRT backend with ``backend_options``.
    """
    if path is not None and Path(path).suffix.lower() in MODEL_FILE_SUFFIXES:
        from .runtime.backends import open_model_file

        return open_model_file(path, **backend_options)
    from .model.checkpoint import load_checkpoint

    return load_checkpoint(path, device=device, dispatch=dispatch)
