"""Several paired datasets as one, batches of pairs, and deterministic train/validation splits."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from ..errors import UserError
from .layouts import natural_key


class ConcatPairs(ConcatDataset):
    """Several PairedDatasets as one, with one class list and per-root reports.

    Class lists that differ are merged (the first dataset's order, then new names in order) and
    every dataset's labels are remapped to it, so label 2 means the same class everywhere.
    """

    def __init__(self, datasets):
        datasets = list(datasets)
        if not datasets:
            raise UserError("ConcatPairs needs at least one dataset")
        merged: list[str] = []
        for d in datasets:
            merged += [n for n in d.class_names if n not in merged]
        views = []
        for d in datasets:
            if d.has_boxes and d.class_names != merged:
                d = d.with_class_names(merged)
            elif not d.has_boxes:
                d = copy.copy(d)
                d.class_names = list(merged)  # no labels to remap; empty boxes share the list
            views.append(d)
        datasets = views
        super().__init__(datasets)
        self.class_names = merged

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(f"{d.name}/{i}", r) for d in self.datasets for i, r in d.skipped]

    def report(self, max_reasons: int = 20) -> str:
        lines = [d.report(max_reasons) for d in self.datasets]
        lines.append(f"total: {len(self)} pairs from {len(self.datasets)} folders, {len(self.skipped)} skipped")
        return "\n".join(lines)


def collate_pairs(batch: list[dict]) -> dict:
    """DataLoader collate: images stacked to [B, 1, H, W]; boxes/labels/ids kept as lists."""
    if not batch:
        raise ValueError("empty batch")
    shapes = {tuple(item["ir"].shape) for item in batch} | {tuple(item["vis"].shape) for item in batch}
    if len(shapes) != 1:
        raise UserError(
            f"images in one batch differ in size ({sorted(shapes)}, ids {[b['id'] for b in batch]}); "
            "crop them to one size (train_transform(size) / val_transform(size)) or use batch_size=1"
        )
    out = {
        "id": [b["id"] for b in batch],
        "ir": torch.stack([b["ir"] for b in batch]),
        "vis": torch.stack([b["vis"] for b in batch]),
    }
    for key in batch[0]:
        if key.startswith(("boxes", "labels")):
            out[key] = [b[key] for b in batch]
        elif key.startswith("has_boxes"):
            out[key] = torch.tensor([bool(b[key]) for b in batch])
    return out


def split_ids(ids, val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic (train_ids, val_ids): a seeded shuffle of the naturally sorted ids.

    The result depends only on the set of ids, the fraction and the seed (not on input order).
    At least one id goes to each side when there are two or more and 0 < val_fraction < 1.
    Video frames next to each other are near-duplicates: hold out whole sequences (separate
    roots) for an honest validation score.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    ordered = sorted(dict.fromkeys(str(i) for i in ids), key=natural_key)
    n_val = int(round(len(ordered) * float(val_fraction)))
    if val_fraction > 0 and len(ordered) >= 2:
        n_val = min(max(n_val, 1), len(ordered) - 1)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    val_set = {ordered[i] for i in perm[:n_val]}
    return [i for i in ordered if i not in val_set], [i for i in ordered if i in val_set]
