"""The pairs a checkpoint never trained on, rebuilt from its own training config.

``heldout_sets(cfg)`` gives exactly what ``moefusion-train`` held out: every ``data.val`` root whole,
``split_ids(ids, data.val_fraction, train.seed)`` of every training root, and the clips a video
entry excluded (sampled every ``HELDOUT_CLIP_STEP``-th frame). Used by ``moefusion-eval --heldout`` and
the tests of the bundled weights, so both judge the same pairs.

``evaluate_sets`` runs the methods of ``moefusion-eval`` (:mod:`moefusion.eval.runner`) on each set
and ``markdown`` writes one table of mean metric values per set: ``moefusion-eval --heldout``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..data.combine import split_ids
from ..data.datasets import PairedDataset
from ..data.pairs import Pair
from ..data.video import dataset_root, extract_frame_pairs, resolve_entry, video_clips
from . import report
from .runner import Method, check_pairs, evaluate

HELDOUT_CLIP_STEP = 30  # frames of an excluded clip used for quality (video checks use them all)


@dataclass
class HeldOutSet:
    name: str  # e.g. "roadscene (17 of 111 held out)"
    dataset: PairedDataset  # the pairs, no transform


def excluded_clips(cfg: dict) -> list[tuple[str, str]]:
    """(video root as the config names it, clip) for every clip a video entry of ``data.train``
    held out whole, in config order (the video checks run on these)."""
    d = cfg.get("data", {})
    entries = [resolve_entry(e, d.get("root")) for e in d.get("train", [])]
    return [(entry["video"], clip) for entry in entries if isinstance(entry, dict) for clip in entry.get("exclude", [])]


def heldout_sets(cfg: dict, clip_step: int = HELDOUT_CLIP_STEP) -> list[HeldOutSet]:
    d = cfg["data"]
    sets = []
    for entry in d["val"]:
        ds = PairedDataset(dataset_root(entry, d.get("root")))
        sets.append(HeldOutSet(f"{ds.name} (whole sequence)", ds))
    for entry in d["train"]:
        entry = resolve_entry(entry, d.get("root"))
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


def unseen_sets(roots, limit: int | None) -> list[HeldOutSet]:
    """Folders never used in training, evaluated whole up to their first ``limit`` pairs."""
    sets = []
    for root in roots:
        ds = PairedDataset(str(root))
        ds = ds.subset(ds.ids[:limit] if limit else ds.ids, transform=None)
        sets.append(HeldOutSet(f"{ds.name} (never seen, first {len(ds)} pairs)", ds))
    return sets


def dataset_pairs(ds: PairedDataset, limit: int | None = None) -> list[Pair]:
    """The pairs of a dataset as moefusion-eval reads them (the first ``limit``)."""
    n = len(ds) if limit is None else min(len(ds), limit)
    return [Pair(ds.ids[i], *(Path(p) for p in ds.paths(i))) for i in range(n)]


@dataclass
class SetResult:
    name: str
    images: int
    mean: dict  # method label -> metric -> mean over the images
    failures: list = field(default_factory=list)  # report.Row with an error
    sheet: list = field(default_factory=list)  # contact sheet rows (report.contact_sheet)


def evaluate_sets(sets: list[HeldOutSet], methods: list[Method], metric_names: list[str],
                  convention: str = "default", limit: int | None = None, sheet_rows: int = 0,
                  progress=None) -> list[SetResult]:
    """Every method on every set (the first ``limit`` pairs of each), as ``moefusion-eval --data``
    would measure them on the set's folder. ``progress(name)`` is called before each set."""
    labels = [m.label for m in methods]
    results = []
    for held in sets:
        if progress:
            progress(held.name)
        pairs = dataset_pairs(held.dataset, limit)
        check_pairs(pairs)
        rows, sheet = evaluate(pairs, methods, metric_names, convention, sheet_rows)
        results.append(SetResult(held.name, len(pairs), report.means(rows, labels, metric_names),
                                 [r for r in rows if r.error], sheet))
    return results


def markdown(results: list[SetResult], metric_names: list[str], title: str) -> str:
    """``title``, then per set a heading and a table of the methods' mean values."""
    lines = [title, ""]
    for r in results:
        lines += [f"### {r.name}", "", table(r.mean, metric_names), ""]
    return "\n".join(lines)


def table(mean: dict, metric_names: list[str]) -> str:
    rows = ["| method | " + " | ".join(metric_names) + " |", "| --- |" + " --- |" * len(metric_names)]
    for method, values in mean.items():
        rows.append(f"| {method} | " + " | ".join(_fmt(values.get(m)) for m in metric_names) + " |")
    return "\n".join(rows)


def _fmt(v) -> str:
    if v is None or math.isnan(v):
        return "-"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.3f}"
