"""Paired IR/VIS data: image conventions (preprocess), file reading, boxes, datasets, augmentation.

See docs/data.md for the supported folder layouts and box formats.

Names are imported lazily: ``moefusion.data.preprocess`` is used by the live runtime, which may
run without torch, and importing this package must not pull torch in.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
        "read_image": "io",
    "read_image_size": "io",
    "Boxes": "boxes",
    "parse_voc": "boxes",
    "parse_yolo": "boxes",
    "read_classes_txt": "boxes",
    "read_voc": "boxes",
    "read_yolo": "boxes",
    "LAYOUTS": "layouts",
    "ConcatPairs": "combine",
    "PairedDataset": "datasets",
    "collate_pairs": "combine",
    "detect_layout": "layouts",
    "split_ids": "combine",
    "CenterCrop": "augment",
    "Compose": "augment",
    "RandomCrop": "augment",
    "RandomHorizontalFlip": "augment",
    "RandomScale": "augment",
    "VisibleJitter": "augment",
    "train_transform": "augment",
    "val_transform": "augment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
