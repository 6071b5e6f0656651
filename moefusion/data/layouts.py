"""Dataset folder layouts: which sub-folders hold the IR and VIS images and the labels, found by name."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .io import is_image_file


@dataclass(frozen=True)
class Layout:
    """Folder names of one dataset layout (matched case-insensitively, exact case preferred)."""

    ir: str
    vis: str
    labels: tuple[str, ...]


LAYOUTS: dict[str, Layout] = {
    "generic": Layout("ir", "vis", ("labels", "Annotations", "Annotation")),
    "m3fd": Layout("Ir", "Vis", ("Annotation", "Annotations", "labels")),
    "llvip": Layout("infrared", "visible", ("Annotations",)),
    "msrs": Layout("ir", "vi", ("labels", "Annotations", "Annotation")),
}
EXPECTED_LAYOUTS = "ir/+vis/ (generic), Ir/+Vis/ (m3fd), infrared/+visible/ (llvip) or ir/+vi/ (msrs)"

# Sub-folders of a label folder that hold per-modality boxes (like msrs_det/labels/infrared/).
IR_BOX_DIRS = ("infrared", "ir")
VIS_BOX_DIRS = ("visible", "vis", "vi")

def natural_key(s: str):
    """Sort key: "frame2" < "frame10" (video frame ids sort in time order)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def child_folder(folder: Path, name: str) -> Path | None:
    """Sub-folder ``name`` of ``folder``: exact case first, else one case-insensitive match."""
    exact = folder / name
    if exact.is_dir():
        return exact
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.lower() == name.lower()]
    return found[0] if len(found) == 1 else None


def detect_layout(root: str | Path) -> str:
    """Name of the layout whose IR and VIS folders exist under ``root``; UserError otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"dataset folder not found: {root}")
    matches: dict[tuple, list] = {}
    for name, lay in LAYOUTS.items():
        ir, vis = child_folder(root, lay.ir), child_folder(root, lay.vis)
        if ir is not None and vis is not None:
            exact = ir.name == lay.ir and vis.name == lay.vis
            # Keyed by inode: on a case-insensitive file system "Ir" and "ir" are one folder.
            key = tuple((st.st_dev, st.st_ino) for st in (ir.stat(), vis.stat()))
            matches.setdefault(key, [(ir, vis)]).append((not exact, name))
    if not matches:
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise UserError(
            f"{root}: no IR/VIS folders found (sub-folders: {subdirs or 'none'}); expected {EXPECTED_LAYOUTS}"
        )
    if len(matches) > 1:
        found = [f"{v[0][0].name}/+{v[0][1].name}/" for v in matches.values()]
        raise UserError(f"{root}: several IR/VIS folder pairs ({', '.join(found)}); pass layout= to pick one")
    # Same folders matched by several layouts (generic ir/vis vs m3fd Ir/Vis): exact case wins.
    return min(next(iter(matches.values()))[1:])[1]


def list_images(folder: Path) -> dict[str, list[Path]]:
    by_id: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_image_file(p):
            by_id.setdefault(p.stem, []).append(p)
    return by_id
