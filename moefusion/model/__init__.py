"""Training-side PyTorch MoE-Fusion: gating, experts, MoLE/MoGE, attention, presets, losses."""
from __future__ import annotations

from .experts import DISPATCH_MODES
from .fusion import FusionOutput, MoEFusion
from .presets import PRESETS, ModelConfig, list_presets, preset_config

__all__ = ["DISPATCH_MODES", "FusionOutput", "MoEFusion", "ModelConfig", "PRESETS", "build_model", "list_presets"]


def build_model(preset: str = "edge", dispatch: str = "sparse", **overrides) -> MoEFusion:
    """An untrained model from a preset; ``overrides`` replace ModelConfig fields."""
    cfg = preset_config(preset, **overrides)
    return MoEFusion(cfg, dispatch=dispatch, preset=preset)
