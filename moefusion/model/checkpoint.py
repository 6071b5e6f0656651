"""Checkpoints that rebuild their own model (``moefusion.load`` of a .pt comes here).

A checkpoint is a ``torch.save``d dict:
    format: "moefusion-checkpoint", format_version: 2, moefusion_version,
    preset: the preset it started from, config: the full ModelConfig (so it alone rebuilds the model),
    state_dict, weights_dtype ("float32" or "float16": release checkpoints store fp16 to stay small),
    meta: free-form (training config, step, metrics, data), and for resumable training checkpoints
    optimizer / scaler / scheduler / rng states.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from .._version import __version__
from ..errors import UserError
from .fusion import MoEFusion
from .presets import ModelConfig, validate_config

CHECKPOINT_FORMAT = "moefusion-checkpoint"
FORMAT_VERSION = 2
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
# Config fields added in format 2, with the values that format-1 checkpoints were built with.
FORMAT1_CONFIG = {"encoder_relu": True, "gate_pool": "grid", "backbone_weights": None, "detector_norm": "batch",
                  "decoder_skips_last_block": True, "decoder_attention": False}
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "moefusion_edge.pt"


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temp file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror}; choose a writable output path") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_dict(model: MoEFusion, meta: dict | None = None, half: bool = False, **extra) -> dict:
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": FORMAT_VERSION,
        "moefusion_version": __version__,
        "preset": model.preset,
        "config": model.cfg.to_dict(),
        "state_dict": state,
        "weights_dtype": "float16" if half else "float32",
        "meta": meta or {},
        **extra,
    }


def save_checkpoint(path, model: MoEFusion, meta: dict | None = None, half: bool = False, **extra) -> None:
    atomic_torch_save(checkpoint_dict(model, meta, half, **extra), path)


def read_checkpoint(path) -> dict:
    """Load and validate a checkpoint file (on the CPU); UserError names the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors: not a torch file, truncated, or foreign objects
        raise UserError(
            f"{path} is not a readable moefusion checkpoint ({type(e).__name__}); "
            "pass a .pt written by moefusion-train, an .onnx or an .engine"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"{path} is a PyTorch file but not a moefusion checkpoint (no 'format: {CHECKPOINT_FORMAT}'); "
            "pass a .pt written by moefusion-train"
        )
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {ckpt['format_version']}, newer than this moefusion "
            f"({__version__}) reads; upgrade moefusion"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict, dispatch: str = "sparse", source: str = "checkpoint") -> MoEFusion:
    try:
        saved = dict(ckpt["config"])
        if ckpt.get("format_version", 1) < 2:
            saved = {**FORMAT1_CONFIG, **saved}
        cfg = validate_config(ModelConfig.from_dict(saved))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{source}: invalid model config in checkpoint ({e})") from None
    model = MoEFusion(cfg, dispatch=dispatch, preset=ckpt.get("preset"))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{source}: weights do not match its config "
            f"(missing {len(missing)}, e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]})"
        )
    model.meta = ckpt.get("meta", {})
    return model.eval()


def default_weights() -> Path:
    if not DEFAULT_WEIGHTS.is_file():
        raise UserError(
            f"bundled default weights are missing ({DEFAULT_WEIGHTS}); reinstall moefusion or pass a model path"
        )
    return DEFAULT_WEIGHTS


def load_checkpoint(path=None, device: str | torch.device | None = None, dispatch: str = "sparse") -> MoEFusion:
    """A torch ``MoEFusion`` in eval mode from a checkpoint (.pt/.pth/.ckpt); None = bundled default.

    ``device`` defaults to CUDA when available, else the CPU. ``moefusion.load`` also opens .onnx
    and .engine files (through the runtime); this is its PyTorch part.
    """
    path = default_weights() if path is None else Path(path)
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise UserError(f"{path}: unknown model file type {suffix!r}; pass a .pt checkpoint, an .onnx or an .engine")
    model = model_from_checkpoint(read_checkpoint(path), dispatch=dispatch, source=str(path))
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device)
