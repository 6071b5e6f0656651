"""Detection boxes: Pascal VOC XML and YOLO txt files -> ``Boxes`` in pixels.

Conventions
- ``Boxes.xyxy`` is float32 [N, 4] (x1, y1, x2, y2) in pixel units of the image the file
  belongs to, with pixel edges at integers (pixel i covers [i, i+1)). VOC coordinates are taken
  as written (no 1-based shift: a one-pixel offset does not matter for the box-masked loss or
  the detectors, and datasets disagree on it anyway).
- ``Boxes.labels`` is int64 [N], an index into ``Boxes.class_names``.
- Class names: for VOC, the sorted set of ``<name>`` values over the whole dataset (stable:
  the same files give the same ids); for YOLO, ``classes.txt`` next to the label files (or in
  the folder above them, like ``labels/classes.txt`` for ``labels/infrared/*.txt``); without
  one, the ids themselves ("0", "1", ...). A caller can impose a class list (``class_names=``),
  e.g. to train several datasets with one label space.

Malformed files raise UserError naming the file and the line (or, for XML, the object).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

LABEL_EXTS = (".xml", ".txt")
CLASSES_FILE = "classes.txt"


@dataclass(frozen=True)
class Boxes:
    """Boxes of one image: xyxy float32 [N, 4] in pixels, labels int64 [N], the class names."""

    xyxy: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def empty(cls, class_names=()) -> "Boxes":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), list(class_names))


# ----------------------------------------------------------------------------- VOC XML


def parse_voc(path: str | Path) -> tuple[list[str], np.ndarray]:
    """VOC XML -> (class names per object, xyxy float32 [N, 4]); no class mapping yet.

    ``difficult``/``truncated`` flags are ignored: every object is a box. A file without
    ``<object>`` elements is an annotated image with no objects.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise UserError(f"{path}:{line}: malformed XML (column {col}); fix or remove the file") from e
    except OSError as e:
        raise UserError(f"cannot read label file {path}: {e.strerror or e}") from e
    names: list[str] = []
    coords: list[list[float]] = []
    for k, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise UserError(f"{path}: object {k} has no <name>; add the class name")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise UserError(f"{path}: object {k} ({name!r}) has no <bndbox>; add xmin/ymin/xmax/ymax")
        xyxy = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = bnd.findtext(tag)
            try:
                xyxy.append(float(text))
            except (TypeError, ValueError):
                raise UserError(
                    f"{path}: object {k} ({name!r}) has a missing or non-numeric <{tag}> ({text!r}); fix the value"
                ) from None
        if xyxy[2] < xyxy[0] or xyxy[3] < xyxy[1]:
            raise UserError(f"{path}: object {k} ({name!r}) has xmax < xmin or ymax < ymin ({xyxy}); swap them")
        names.append(name)
        coords.append(xyxy)
    return names, np.asarray(coords, np.float32).reshape(-1, 4)


def voc_class_names(paths) -> list[str]:
    """The stable (sorted) class list of a set of VOC files."""
    found: set[str] = set()
    for p in paths:
        found.update(parse_voc(p)[0])
    return sorted(found)


def read_voc(path: str | Path, class_names: list[str]) -> Boxes:
    """VOC XML -> Boxes with labels indexing ``class_names``."""
    names, xyxy = parse_voc(path)
    index = {n: i for i, n in enumerate(class_names)}
    unknown = sorted({n for n in names if n not in index})
    if unknown:
        raise UserError(f"{path}: class(es) {unknown} not in the class list {list(class_names)}; add them")
    labels = np.asarray([index[n] for n in names], np.int64)
    return Boxes(xyxy, labels, list(class_names))


# ----------------------------------------------------------------------------- YOLO txt


def parse_yolo(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """YOLO txt -> (class ids int64 [N], cx cy w h float32 [N, 4] normalised to [0, 1]).

    One box per line, ``class cx cy w h``, separated by any whitespace; blank lines are
    ignored; an empty file means no objects. Anything else raises UserError naming the line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read label file {path}: {e}") from e
    ids: list[int] = []
    boxes: list[list[float]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise UserError(
                f"{path}:{lineno}: expected 'class cx cy w h' (5 fields), got {len(fields)}: {line.strip()!r}"
            )
        try:
            cls_f = float(fields[0])
            vals = [float(v) for v in fields[1:]]
        except ValueError:
            raise UserError(f"{path}:{lineno}: non-numeric field in {line.strip()!r}; fix the line") from None
        if cls_f != int(cls_f) or cls_f < 0:
            raise UserError(f"{path}:{lineno}: class id must be a non-negative integer, got {fields[0]!r}")
        if not all(np.isfinite(vals)) or vals[2] < 0 or vals[3] < 0:
            raise UserError(f"{path}:{lineno}: box width/height must be finite and >= 0: {line.strip()!r}")
        ids.append(int(cls_f))
        boxes.append(vals)
    return np.asarray(ids, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4)


def yolo_to_xyxy(cxcywh: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised (cx, cy, w, h) -> pixel (x1, y1, x2, y2) for an image of width x height."""
    cx, cy, w, h = (cxcywh[:, i] for i in range(4))
    out = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return (out * np.asarray([width, height, width, height], np.float32)).astype(np.float32)


_INDEXED_LINE = re.compile(r"^(\d+)\s+(\S.*)$")


def read_classes_txt(path: str | Path) -> list[str]:
    """``classes.txt``: one name per line (line i = class i), or ``<id> <name>`` lines."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read class list {path}: {e}") from e
    lines = [ln for ln in lines if ln]
    matches = [_INDEXED_LINE.match(ln) for ln in lines]
    if lines and all(matches):
        by_id = {int(m.group(1)): m.group(2).strip() for m in matches}
        if sorted(by_id) == list(range(len(lines))):
            return [by_id[i] for i in range(len(lines))]
    if len(set(lines)) != len(lines):
        raise UserError(f"{path}: duplicate class names; list each class once")
    return lines


def read_yolo(path: str | Path, width: int, height: int, class_names: list[str] | None = None) -> Boxes:
    """YOLO txt -> Boxes in pixels; class ids are checked against ``class_names`` when given."""
    ids, cxcywh = parse_yolo(path)
    names = list(class_names) if class_names else [str(i) for i in range(int(ids.max(initial=-1)) + 1)]
    if class_names and ids.size and int(ids.max()) >= len(names):
        raise UserError(
            f"{path}: class id {int(ids.max())} is out of range for {len(names)} classes {names}; fix classes.txt"
        )
    return Boxes(yolo_to_xyxy(cxcywh, width, height), ids, names)


# ----------------------------------------------------------------------------- label folders


class LabelFolder:
    """One folder of label files (one per image id), VOC or YOLO, parsed once up front.

    Parsing everything at construction finds malformed files before training starts, and label
    files are small. ``load(id, width, height, class_names)`` gives the boxes of one image, or
    None when the folder has no file for that id.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        files: dict[str, Path] = {}
        exts = set()
        for p in sorted(self.folder.iterdir()):
            if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in LABEL_EXTS:
                continue
            if p.name.lower() == CLASSES_FILE:
                continue
            if p.stem in files:
                raise UserError(
                    f"{self.folder}: two label files for id {p.stem!r} ({files[p.stem].name}, {p.name}); keep one"
                )
            files[p.stem] = p
            exts.add(p.suffix.lower())
        if exts == {".xml", ".txt"}:
            raise UserError(f"{self.folder} mixes VOC .xml and YOLO .txt label files; convert them to one format")
        self.files = files
        self.format = "voc" if exts == {".xml"} else "yolo"
        self.classes_file = None
        if self.format == "voc":
            self._voc = {i: parse_voc(p) for i, p in files.items()}
        else:
            self._yolo = {i: parse_yolo(p) for i, p in files.items()}
            for candidate in (self.folder / CLASSES_FILE, self.folder.parent / CLASSES_FILE):
                if candidate.is_file():
                    self.classes_file = candidate
                    break
        self.native_class_names = self._native_class_names()

    def _native_class_names(self) -> list[str]:
        """The folder's own class list (VOC: sorted names; YOLO: classes.txt or "0".."k")."""
        if self.format == "voc":
            return sorted({n for names, _ in self._voc.values() for n in names})
        if self.classes_file is not None:
            names = read_classes_txt(self.classes_file)
            for i, (ids, _) in self._yolo.items():
                if ids.size and int(ids.max()) >= len(names):
                    raise UserError(
                        f"{self.files[i]}: class id {int(ids.max())} is out of range for the "
                        f"{len(names)} classes in {self.classes_file}; fix one of them"
                    )
            return names
        top = max((int(ids.max()) for ids, _ in self._yolo.values() if ids.size), default=-1)
        return [str(i) for i in range(top + 1)]

    def load(self, image_id: str, width: int, height: int, class_names: list[str]) -> Boxes | None:
        """Boxes of one image with labels indexing ``class_names``; None without a label file."""
        if image_id not in self.files:
            return None
        path = self.files[image_id]
        index = {n: i for i, n in enumerate(class_names)}
        if self.format == "voc":
            names, xyxy = self._voc[image_id]
        else:
            ids, cxcywh = self._yolo[image_id]
            xyxy = yolo_to_xyxy(cxcywh, width, height)
            if self.classes_file is None:
                # No names in the files: the ids are positions in the caller's class list.
                if ids.size and int(ids.max()) >= len(class_names):
                    raise UserError(
                        f"{path}: class id {int(ids.max())} is out of range for the class list "
                        f"{list(class_names)}; add a classes.txt or fix the id"
                    )
                return Boxes(xyxy, ids.copy(), list(class_names))
            names = [self.native_class_names[int(i)] for i in ids]
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            raise UserError(f"{path}: class(es) {unknown} not in the class list {list(class_names)}; add them")
        labels = np.asarray([index[n] for n in names], np.int64)
        return Boxes(np.asarray(xyxy, np.float32).reshape(-1, 4), labels, list(class_names))


def shared_class_names(folders: list[LabelFolder], class_names: list[str] | None = None) -> list[str]:
    """One class list for several label folders (e.g. IR and VIS boxes of one dataset).

    ``class_names`` given: used as is (files with other names raise UserError on load). VOC
    folders: the sorted union of their names. YOLO folders: their class lists must agree.
    """
    if class_names is not None:
        names = [str(n) for n in class_names]
        if len(set(names)) != len(names):
            raise UserError(f"class_names has duplicates: {names}; list each class once")
        return names
    if not folders:
        return []
    if len({f.format for f in folders}) > 1:
        raise UserError(
            f"label folders use different formats ({', '.join(f'{f.folder}: {f.format}' for f in folders)}); "
            "convert them to one format"
        )
    if folders[0].format == "voc":
        return sorted({n for f in folders for n in f.native_class_names})
    # YOLO: ids are positions in one class list; without classes.txt a folder only knows its
    # highest id, so one list must be a prefix of the other.
    lists = [f.native_class_names for f in folders]
    longest = max(lists, key=len)
    for f, names in zip(folders, lists):
        if names != longest[: len(names)]:
            raise UserError(
                f"label folders disagree on classes ({folders[0].folder}: {lists[0]}, {f.folder}: {names}); "
                "use one classes.txt or pass class_names="
            )
    return list(longest)
