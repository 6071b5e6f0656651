"""The pairs a checkpoint never trained on, rebuilt from its own training config.

``heldout_sets(cfg)`` gives exactly what ``moefusion-train`` held out: every ``data.val`` root whole,
``split_ids(ids, data.val_fraction, train.seed)`` of every training root, and the clips a video
entry excluded (sampled every ``HELDOUT_CLIP_STEP``-th frame). Used by scripts/eval_heldout.py and
the tests of the bundled weights, so both judge the same pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..data.datasets import PairedDataset, split_ids

HELDOUT_CLIP_STEP = 30  # frames of an excluded clip used for quality (video checks use them all)


@dataclass
class HeldOutSet:
    name: str  # e.g. "roadscene (17 of 111 held out)"
    dataset: PairedDataset  # the pairs, no transform


def excluded_clips(cfg: dict) -> list[tuple[str, str]]:
    """(video root as the config names it, clip) for every clip a video entry of ``data.train``
    held out whole, in config order (the video checks run on these)."""
    return [(entry["video"], clip) for entry in cfg.get("data", {}).get("train", [])
            if isinstance(entry, dict) for clip in entry.get("exclude", [])]


def heldout_sets(cfg: dict, clip_step: int = HELDOUT_CLIP_STEP) -> list[HeldOutSet]:
    from ..data.video import extract_frame_pairs, video_clips
    from ..train import dataset_root

    d = cfg["data"]
    sets = []
    for entry in d["val"]:
        ds = PairedDataset(dataset_root(entry))
        sets.append(HeldOutSet(f"{ds.name} (whole sequence)", ds))
    for entry in d["train"]:
        if d["val_fraction"]:
            ds = PairedDataset(dataset_root(entry))
            _, val_ids = split_ids(ds.ids, d["val_fraction"], seed=cfg["train"]["seed"])
            if val_ids:
                name = ds.name if not isinstance(entry, dict) else f"{entry['video']} frames"
                sets.append(HeldOutSet(f"{name} ({len(val_ids)} of {len(ds)} held out)", ds.subset(val_ids, transform=None)))
        if isinstance(entry, dict) and entry.get("exclude"):
            others = [c[0] for c in video_clips(entry["video"]) if c[0] not in entry["exclude"]]
            for clip in entry["exclude"]:
                root = extract_frame_pairs(entry["video"], clip_step, exclude=others + [c for c in entry["exclude"] if c != clip])
                sets.append(HeldOutSet(f"clip {clip} (every {clip_step}th frame, whole clip held out)", PairedDataset(root)))
    return sets
