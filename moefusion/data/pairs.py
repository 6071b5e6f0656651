"""Strict pairing of two image folders by file stem (for offline fusion and evaluation).

Training datasets (datasets.py) skip and report unusable pairs; tools that produce one output
per input pair refuse unpaired folders instead, so that no image is left out unnoticed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .io import IMAGE_EXTS, is_image_file
from .layouts import natural_key


@dataclass(frozen=True)
class Pair:
    id: str
    ir: Path
    vis: Path


def scan_images(folder: Path) -> dict[str, Path]:
    """id (file stem) -> image path; two images with one id is an error naming both."""
    by_id: dict[str, Path] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith(".") or not p.is_file() or not is_image_file(p):
            continue
        if p.stem in by_id:
            raise UserError(
                f"{by_id[p.stem]} and {p} have the same id {p.stem!r}; pairs are matched by file stem, keep one of them"
            )
        by_id[p.stem] = p
    return by_id


def pair_folders(ir_dir: Path, vis_dir: Path) -> list[Pair]:
    """Pairs of IR/VIS images with the same stem, in natural order; an unpaired image is an error."""
    ir_dir, vis_dir = Path(ir_dir), Path(vis_dir)
    ir, vis = scan_images(ir_dir), scan_images(vis_dir)
    if not ir and not vis:
        raise UserError(f"no images in {ir_dir} or {vis_dir} (looked for {', '.join(IMAGE_EXTS)})")
    only_ir = sorted(set(ir) - set(vis), key=natural_key)
    only_vis = sorted(set(vis) - set(ir), key=natural_key)
    if only_ir or only_vis:
        n = len(only_ir) + len(only_vis)
        path, other = (ir[only_ir[0]], vis_dir) if only_ir else (vis[only_vis[0]], ir_dir)
        more = f" (and {n - 1} more unpaired)" if n > 1 else ""
        raise UserError(
            f"unpaired image {path}: no file with id {path.stem!r} in {other}{more}; this tool refuses unpaired "
            "folders rather than skipping images: add the missing file or move the extra one out"
        )
    return [Pair(i, ir[i], vis[i]) for i in sorted(ir, key=natural_key)]
