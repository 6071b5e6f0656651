"""moefusion-train's configuration: the defaults, YAML files, ``--set key.sub=value`` overrides."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ..errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


DEFAULTS: dict = {
    "preset": "edge",
    "model": {},  # ModelConfig overrides
    "data": {
        "root": None,  # relative data.train / data.val paths are under this folder (--data DIR sets it)
        "train": [],  # dataset roots (any layout of moefusion.data), or {video: ROOT, frame_step: N, exclude: [clip]}
        "val": [],  # explicit validation roots; else a held-out fraction of each training root
        "val_fraction": 0.15,
        "crop": [256, 256],  # training crop (h, w)
        "scale_range": [0.75, 1.25],
        "batch_size": 4,  # per process
        "workers": 2,
        "val_images": 16,  # validation images per evaluation, spread evenly over the held-out sets (full size, batch 1)
    },
    "loss": {
        "grad": 10.0,  # Sobel max-gradient L1 (paper: 10)
        "pixel": 1.0,  # box-masked pixel L1 (paper: 1)
        "signed_grad": False,  # gradient term on signed Sobel responses (keeps edge polarity; paper: False)
        "background_max": 0.0,  # pixel target outside the targets: 0 mean of the sources (paper) .. 1 their max
        "background_max_weak": None,  # the same where the visible camera sees little (night, smoke); None: as background_max
        "ssim": 0.0,  # weight of 1 - mean SSIM to both sources (paper: none)
        "pseudo_targets": False,  # targets = boxes + thermal saliency on every frame (paper: boxes only)
        "attention": 0.0,  # weight of the loss teaching the attention those targets (paper: none)
        "detail": 0.0,  # weight of the multi-scale Laplacian detail term (paper: none)
        "pixel_levels": 0,  # pixel term after this many pyramid reductions (base layer only; paper: 0)
    },
    "optim": {
        "lr": 1.0e-4,
        "weight_decay": 1.0e-4,
        "grad_clip": 35.0,
        "epochs": 24,
        "lr_steps": [16, 22],  # epochs at which the learning rate drops x0.1
        "warmup_iters": 500,
        "warmup_ratio": 0.333,
    },
    "train": {
        "out": "runs/train",
        "seed": 0,
        "amp": True,  # fp16 autocast on CUDA; ignored on the CPU
        "device": "auto",
        "val_every": 1,  # epochs
        "max_steps": None,  # stop early after this many optimiser steps (quick runs)
        "release": None,  # also write a small fp16 release checkpoint here at the end ({out}: train.out)
        "classical_start": False,  # a new pyramid-head model starts as a classical pyramid fusion (MoGE's last conv at 0)
        "init": None,  # start from these weights (fine-tuning; fresh optimiser and schedule), e.g. the bundled ones
    },
}


# Entries a config may set that DEFAULTS does not hold, with the value that applies when it does not
# set them. Kept out of DEFAULTS so that a config which does not name them (edge.yaml) loads exactly
# as before they existed: the configs recorded in earlier checkpoints still equal it (resume, recipe).
OPTIONAL: dict = {
    "data": {
        "flip": 0.5,  # probability of a horizontal flip of a training pair (upstream MoE-Fusion: 0)
        "jitter": [0.2, 0.2],  # visible brightness, contrast jitter of training pairs; null: none (upstream)
    },
    "loss": {
        "box_rounding": "outward",  # boxes -> pixel mask: outward (floor/ceil) or int (upstream's int())
        "experts": 0.0,  # weight of the expert-choice term: a layer's unchosen experts must change the image
        "expert_margin": 6.0,  # ... by at least this many grey levels (0..255) on each training crop
    },
}


def option(cfg: dict, section: str, key: str):
    """``cfg[section][key]``, or its OPTIONAL value when the config does not set it."""
    return cfg[section].get(key, OPTIONAL[section][key])


def merge_config(base: dict, new: dict, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in new.items():
        if key not in out and where != "model" and key not in OPTIONAL.get(where, {}):
            raise UserError(f"unknown config entry {where + '.' if where else ''}{key}; see moefusion/configs/edge.yaml")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value, key if not where else f"{where}.{key}")
        else:
            out[key] = value
    return out


def set_entry(cfg: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise UserError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    value = yaml.safe_load(raw)
    parts = key.strip().split(".")
    node = {}
    cur = node
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    cfg.update(merge_config(cfg, node))


def load_config(path: str | None, sets: list[str]) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        p = Path(path)
        if not p.is_file() and (CONFIG_DIR / path).is_file():
            p = CONFIG_DIR / path
        if not p.is_file():
            raise UserError(f"config file not found: {path} (bundled: {', '.join(sorted(x.name for x in CONFIG_DIR.glob('*.yaml')))})")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: a config must be a YAML mapping")
        cfg = merge_config(cfg, loaded)
    for s in sets:
        set_entry(cfg, s)
    _coerce_numbers(cfg, merge_config(DEFAULTS, OPTIONAL))
    return cfg


def _coerce_numbers(cfg: dict, defaults: dict, where: str = "") -> None:
    """YAML 1.1 (PyYAML) reads ``1e-3`` (no dot) as a string: entries whose default is a number
    are parsed as one, or named in a one-line error."""
    for key, default in defaults.items():
        name = f"{where}{key}"
        value = cfg.get(key)
        if isinstance(default, dict) and isinstance(value, dict):
            _coerce_numbers(value, default, name + ".")
        elif isinstance(default, (int, float)) and not isinstance(default, bool) and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise UserError(f"config {name}: {value!r} is not a number (e.g. --set {name}={default})") from None
            cfg[key] = int(number) if isinstance(default, int) and number.is_integer() else number

