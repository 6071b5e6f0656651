"""MoE-Fusion Edge: real-time infrared + visible image fusion.

Public API (stable): ``build_model(preset, dispatch="sparse", **overrides)``, ``load(path=None)``
and ``model.fuse(ir, vis)``.
"""
from ._version import __version__

__all__ = ["__version__", "build_model", "load"]


def build_model(preset: str, dispatch: str = "sparse", **overrides):
    """Build an untrained MoE-Fusion model from a named preset (see ``moefusion.model.presets``)."""
    from .model import build_model as _build

    return _build(preset, dispatch=dispatch, **overrides)


def load(path=None, **kwargs):
    """Load a fusion model: a checkpoint (.pt), an .onnx or an .engine; None = bundled default.

    The result has ``fuse(ir, vis) -> np.ndarray``.
    """
    from .model.checkpoint import load as _load

    return _load(path, **kwargs)
