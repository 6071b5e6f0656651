"""Training pairs from synchronised IR/VIS video clips (e.g. M3SVD): sparse frames to an image cache.

A video root holds ``ir/<clip>.<ext>`` and ``vis/<clip>.<ext>`` with the same clip names; frame n of
both files is the same instant. Consecutive frames are near-duplicates, so training takes every
``frame_step``-th frame. The frames are decoded once into a cache folder with the generic image
layout (``ir/<clip>_<frame>.png``, ``vis/...``), which ``PairedDataset`` then reads like any other
set; the cache folder is keyed by the clips' sizes and dates, the step and the excluded clips, and
written to a temporary folder that is renamed when complete (never a half-filled cache).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import cv2

from ..errors import UserError

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")
DEFAULT_CACHE = Path(os.environ.get("MOEFUSION_CACHE", Path.home() / ".cache" / "moefusion")) / "video_frames"


def video_clips(root: str | Path) -> list[tuple[str, Path, Path]]:
    """(clip name, IR file, VIS file) of a video root, sorted by name; UserError when unpaired."""
    root = Path(root)
    ir_dir, vis_dir = root / "ir", root / "vis"
    if not ir_dir.is_dir() or not vis_dir.is_dir():
        raise UserError(f"{root}: a video root needs ir/ and vis/ folders of clips with matching names")
    ir = {p.stem: p for p in ir_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES}
    vis = {p.stem: p for p in vis_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES}
    unpaired = sorted(set(ir) ^ set(vis))
    if unpaired:
        raise UserError(f"{root}: clips without a partner in the other folder: {', '.join(unpaired)}")
    if not ir:
        raise UserError(f"{root}: no video clips ({', '.join(VIDEO_SUFFIXES)}) in ir/ and vis/")
    return [(name, ir[name], vis[name]) for name in sorted(ir)]


def _cache_key(clips, frame_step: int) -> str:
    h = hashlib.sha256(str(frame_step).encode())
    for name, ir, vis in clips:
        for p in (ir, vis):
            st = p.stat()
            h.update(f"{name}:{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _gray_frames(path: Path, frame_step: int):
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UserError(f"{path}: cannot be decoded by OpenCV; re-encode it (e.g. to H.264 or MJPEG)")
    n = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if n % frame_step == 0:
                yield n, frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            n += 1
    finally:
        cap.release()


def extract_frame_pairs(root: str | Path, frame_step: int, exclude=(), cache_dir: str | Path | None = None) -> Path:
    """Every ``frame_step``-th frame pair of the clips of ``root`` (less ``exclude``) as an image folder.

    Returns the cache folder (generic layout). The IR of M3SVD is grey stored in three channels;
    frames are written grey (the visible luminance is what the model fuses).
    """
    if int(frame_step) < 1:
        raise UserError(f"frame_step must be >= 1, got {frame_step}")
    clips = video_clips(root)
    unknown = sorted(set(exclude) - {c[0] for c in clips})
    if unknown:
        raise UserError(f"{root}: excluded clip(s) {', '.join(unknown)} not found; clips: {', '.join(c[0] for c in clips)}")
    clips = [c for c in clips if c[0] not in set(exclude)]
    if not clips:
        raise UserError(f"{root}: every clip is excluded")
    cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    dest = cache_dir / f"{Path(root).resolve().name}_{_cache_key(clips, int(frame_step))}"
    if (dest / "ir").is_dir():
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=cache_dir))
    try:
        (tmp / "ir").mkdir()
        (tmp / "vis").mkdir()
        for name, ir_path, vis_path in clips:
            counts = []
            for modality, path in (("ir", ir_path), ("vis", vis_path)):
                count = 0
                for n, gray in _gray_frames(path, int(frame_step)):
                    cv2.imwrite(str(tmp / modality / f"{name}_{n:05d}.png"), gray)
                    count += 1
                counts.append(count)
            if counts[0] != counts[1]:
                log.warning("%s: %d IR and %d VIS frames sampled; the extra frames stay unpaired", name, *counts)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished the same cache first
            if not (dest / "ir").is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("video frames of %s (every %d-th) cached in %s", root, frame_step, dest)
    return dest


def resolve_entry(entry, root: str | None):
    """A data.train / data.val entry with its relative path taken under ``root`` (the config's
    data.root; None: as it is)."""
    if not root:
        return entry
    if isinstance(entry, dict):
        if "video" in entry and not Path(str(entry["video"])).is_absolute():
            return {**entry, "video": str(Path(root) / str(entry["video"]))}
        return entry
    return entry if Path(str(entry)).is_absolute() else str(Path(root) / str(entry))


def dataset_root(entry, root: str | None = None) -> str:
    """A data.train / data.val entry as a folder PairedDataset reads: a path as is; a video entry
    ``{video: ROOT, frame_step: N, exclude: [clips]}`` as its cached frame folder. Relative paths are
    under ``root`` (the config's data.root) when it is given."""
    entry = resolve_entry(entry, root)
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - {"video", "frame_step", "exclude"})
        if "video" not in entry or unknown:
            raise UserError(f"data entry {entry}: expected {{video: ROOT, frame_step: N, exclude: [clip, ...]}}")
        if any(not isinstance(c, str) for c in entry.get("exclude", [])):
            raise UserError(f"data entry {entry}: quote the clip names in exclude (YAML reads 0117_1620 as a number)")

        return str(extract_frame_pairs(entry["video"], int(entry.get("frame_step", 15)), entry.get("exclude", [])))
    return str(entry)

