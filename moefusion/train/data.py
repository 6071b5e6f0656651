"""Training data: the datasets a config names, batches from one root at a time, detection targets."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch.utils.data import Sampler

from ..data.augment import train_transform
from ..data.combine import ConcatPairs, split_ids
from ..data.datasets import PairedDataset
from ..data.video import dataset_root
from ..errors import UserError
from .config import option


class GroupedBatchSampler(Sampler):
    """Batches drawn from one root at a time, so annotated and unannotated sets never mix in a
    batch (the detectors must not learn that unlabelled objects are background). Shuffled per
    epoch, split across distributed ranks; the last incomplete batch of each root is kept."""

    def __init__(self, sizes: list[int], batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.sizes, self.batch_size, self.seed, self.rank, self.world = sizes, batch_size, seed, rank, world
        self.epoch = 0
        self.skip = 0  # batches of this epoch already trained (a run resumed mid-epoch)

    def _batches(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        batches, offset = [], 0
        for n in self.sizes:
            order = (torch.randperm(n, generator=g) + offset).tolist()
            batches += [order[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
            offset += n
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[i] for i in perm]
        usable = len(batches) - len(batches) % self.world if len(batches) >= self.world else len(batches)
        return batches[self.rank : usable : self.world]

    def __iter__(self):
        return iter(self._batches()[self.skip:])

    def __len__(self):
        return max(0, len(self._batches()) - self.skip)




def detection_targets(batch, modality: str, device):
    """torchvision detection targets (labels 1-based) when every image of the batch has boxes."""
    if not bool(batch[f"has_boxes_{modality}"].all()):
        return None
    return [
        {"boxes": b.to(device), "labels": (l + 1).to(device)}
        for b, l in zip(batch[f"boxes_{modality}"], batch[f"labels_{modality}"])
    ]



def data_fingerprint(datasets) -> str:
    """sha256 over every pair the run reads (dataset name, id, the two files' names and sizes):
    the same data gives the same fingerprint on any machine, a changed file or split does not."""
    h = hashlib.sha256()
    for ds in datasets:
        for i, image_id in enumerate(ds.ids):
            files = ds.paths(i)
            h.update(f"{ds.name}\t{image_id}".encode())
            for f in files:
                h.update(f"\t{Path(f).name}:{Path(f).stat().st_size}".encode())
            h.update(b"\n")
    return h.hexdigest()


def training_transform(cfg: dict):
    """The training pairs' augmentation a config asks for: random scale, crop, horizontal flip
    (``data.flip``: its probability) and visible jitter (``data.jitter``: brightness, contrast; null: none)."""
    d = cfg["data"]
    flip = float(option(cfg, "data", "flip"))
    jitter = option(cfg, "data", "jitter")
    if not 0.0 <= flip <= 1.0:
        raise UserError(f"data.flip={flip} must be a probability in [0, 1] (0: no flips)")
    if jitter is not None:
        try:
            jitter = tuple(float(v) for v in jitter)
        except (TypeError, ValueError):
            jitter = ()
        if len(jitter) != 2:
            raise UserError(f"data.jitter={option(cfg, 'data', 'jitter')!r}: give [brightness, contrast] or null")
    return train_transform(tuple(d["crop"]), scale_range=tuple(d["scale_range"]) if d["scale_range"] else None,
                           flip_p=flip, jitter=jitter)


def build_datasets(cfg: dict):
    d = cfg["data"]
    if not d["train"]:
        raise UserError("no training data: give --data ROOT (or data.train in the config)")
    root = d.get("root")
    if root and not Path(root).is_dir():
        raise UserError(f"data root not found: {root} (give the folder that holds the config's data sets: --data DIR)")
    if min(d["crop"]) < 96:
        # the detectors' coarsest level (stride 64) needs at least 2x2 cells for BatchNorm at batch 1
        raise UserError(f"data.crop={d['crop']} is too small; use at least [96, 96]")
    transform = training_transform(cfg)
    train_sets, val_sets = [], []
    for entry in d["train"]:
        full = PairedDataset(dataset_root(entry, root))
        if d["val_fraction"]:
            train_ids, val_ids = split_ids(full.ids, d["val_fraction"], seed=cfg["train"]["seed"])
        else:
            train_ids, val_ids = full.ids, []
        train_sets.append(full.subset(train_ids, transform=transform))
        if val_ids:
            val_sets.append(full.subset(val_ids, transform=None))
    for entry in d["val"]:
        val_sets.append(PairedDataset(dataset_root(entry, root)))
    train = ConcatPairs(train_sets)
    val = ConcatPairs(val_sets) if val_sets else None
    return train, val

