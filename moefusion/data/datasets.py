"""Paired infrared/visible datasets for training and evaluation.

``PairedDataset(root)`` finds the IR and VIS folders of a known layout, pairs the files by id
(file stem), checks every pair once at construction and loads boxes when the layout has them.
Nothing is dropped silently: a pair that cannot be used (one side missing, sizes differ, a file
is unreadable) is either a UserError (``strict=True``) or listed in ``dataset.skipped`` and
``dataset.report()`` and logged as a warning. See docs/data.md.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError
from .boxes import Boxes, LabelFolder, shared_class_names
from .io import is_image_file, read_image, read_image_size
from .layouts import (
    EXPECTED_LAYOUTS,
    IR_BOX_DIRS,
    LAYOUTS,
    VIS_BOX_DIRS,
    child_folder,
    detect_layout,
    list_images,
    natural_key,
)
from .preprocess import ir_to_unit, split_visible

log = logging.getLogger(__name__)


# Pair counts up to which scan="auto" fully decodes every image (catching truncated files up
# front); above it only headers are read and a corrupt file is reported when it is loaded.
AUTO_DECODE_MAX_PAIRS = 256

# Boxes smaller than this (pixels, either side) after clipping to the image are dropped and
# counted: detectors fail on degenerate boxes.
MIN_BOX_SIDE = 1.0


@dataclass
class _Pair:
    id: str
    ir_path: Path
    vis_path: Path
    width: int
    height: int
    boxes_ir: Boxes | None = None
    boxes_vis: Boxes | None = None


class PairedDataset(Dataset):
    """Registered IR/VIS image pairs of one folder, with optional per-modality boxes.

    Args:
        root: the dataset folder.
        layout: "auto" or one of LAYOUTS ("generic", "m3fd", "llvip", "msrs").
        boxes: "auto" (the layout's label folder when present), None (no boxes) or a label folder.
            A label folder with ``infrared/`` and ``visible/`` sub-folders gives per-modality boxes.
        transform: an ``augment`` transform applied to the numpy sample before tensors are made.
        ids: use only these ids (e.g. from ``split_ids``); an unknown id is a UserError.
        strict: True: any unusable pair is a UserError; False (default): skipped and reported.
        scan: "header" (read image sizes from headers), "decode" (decode every image, which also
            finds truncated files) or "auto" (decode up to AUTO_DECODE_MAX_PAIRS pairs).
        split: a sub-folder of the IR/VIS (and label) folders, e.g. "train" for LLVIP.
        class_names: impose a class list (label files with other names are a UserError).
        name: the name used in reports (default: the root folder's name, plus the split).

    Items: dict with ``id`` (str), ``ir`` / ``vis`` float32 [1, H, W] in [0, 1] (IR via
    ``ir_to_unit``, VIS luminance via ``split_visible``), ``boxes_ir`` / ``labels_ir``,
    ``boxes_vis`` / ``labels_vis`` (float32 [N, 4] xyxy pixels / int64 [N]; one box set serves
    both modalities when the layout has one), ``boxes`` / ``labels`` (their union),
    ``has_boxes_ir`` / ``has_boxes_vis`` (a label file exists for that modality) and
    ``has_boxes`` (either does: an image with a label file but no objects has has_boxes=True and
    zero boxes; one without a label file has has_boxes=False).
    """

    def __init__(
        self,
        root,
        layout: str = "auto",
        boxes="auto",
        transform=None,
        ids=None,
        *,
        strict: bool = False,
        scan: str = "auto",
        split: str | None = None,
        class_names=None,
        name: str | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"dataset folder not found: {self.root}")
        if layout == "auto":
            layout = detect_layout(self.root)
        elif layout not in LAYOUTS:
            raise UserError(f"unknown layout {layout!r}; use 'auto' or one of {sorted(LAYOUTS)}")
        if scan not in ("auto", "header", "decode"):
            raise UserError(f"scan must be 'auto', 'header' or 'decode', got {scan!r}")
        self.layout = layout
        self.split = split
        self.name = name or (self.root.name + (f"/{split}" if split else ""))
        self.transform = transform
        self.strict = strict
        self.ir_dir, self.vis_dir = self._image_dirs()

        ir_files, vis_files = list_images(self.ir_dir), list_images(self.vis_dir)
        self._image_ids = set(ir_files) | set(vis_files)
        all_ids = sorted(self._image_ids, key=natural_key)
        if ids is not None:
            wanted = [str(i) for i in ids]
            unknown = [i for i in wanted if i not in ir_files and i not in vis_files]
            if unknown:
                raise UserError(
                    f"{self.name}: {len(unknown)} requested id(s) not in {self.ir_dir} or {self.vis_dir}, "
                    f"e.g. {unknown[:3]}; check the ids"
                )
            all_ids = sorted(dict.fromkeys(wanted), key=natural_key)
        decode = scan == "decode" or (scan == "auto" and len(all_ids) <= AUTO_DECODE_MAX_PAIRS)

        self.skipped: list[tuple[str, str]] = []
        self._pairs: list[_Pair] = []
        for image_id in all_ids:
            pair, reason = self._check_pair(image_id, ir_files.get(image_id, []), vis_files.get(image_id, []), decode)
            if reason is not None:
                self.skipped.append((image_id, reason))
            else:
                self._pairs.append(pair)
        if self.skipped and strict:
            first_id, first = self.skipped[0]
            raise UserError(
                f"{self.name}: {len(self.skipped)} unusable pair(s), first {first_id}: {first}; "
                "fix the files or use strict=False to skip them"
            )
        if not self._pairs:
            why = f" ({len(self.skipped)} skipped, first: {self.skipped[0][1]})" if self.skipped else ""
            raise UserError(
                f"{self.root}: no usable IR/VIS pairs{why}; expected {EXPECTED_LAYOUTS} with matching file names"
            )

        # (IR label folder, VIS label folder); the same folder twice when one set serves both.
        self.label_dirs = self._label_dirs(boxes)
        self.boxes_shared = self.label_dirs[0] is not None and self.label_dirs[0] == self.label_dirs[1]
        self.dropped_boxes = 0
        self.orphan_labels = 0
        self.class_names: list[str] = list(class_names) if class_names is not None else []
        if self.has_boxes:
            self._load_boxes(class_names)
        self._remap = None
        if self.skipped:
            log.warning("%s", self.report())

    # ------------------------------------------------------------------ construction helpers

    def _image_dirs(self) -> tuple[Path, Path]:
        lay = LAYOUTS[self.layout]
        dirs = []
        for modality, folder in (("IR", lay.ir), ("VIS", lay.vis)):
            d = child_folder(self.root, folder)
            if d is None:
                raise UserError(
                    f"{self.root}: no {folder}/ folder ({modality} images) for the {self.layout} layout; "
                    f"expected {EXPECTED_LAYOUTS}"
                )
            if self.split is not None:
                if not (d / self.split).is_dir():
                    raise UserError(f"{d}: no split folder {self.split!r}; pass an existing split= or none")
                d = d / self.split
            elif not any(is_image_file(p) for p in d.iterdir()):
                subdirs = sorted(p.name for p in d.iterdir() if p.is_dir())
                if subdirs:
                    raise UserError(
                        f"{d} has no images but sub-folders {subdirs}; pass split= (e.g. split={subdirs[0]!r})"
                    )
            dirs.append(d)
        return dirs[0], dirs[1]

    def _check_pair(self, image_id, ir_paths, vis_paths, decode):
        """(pair, None) when usable, else (None, reason naming the file)."""
        for paths in (ir_paths, vis_paths):
            if len(paths) > 1:
                return None, f"ambiguous: {', '.join(map(str, paths))} share the id; keep one"
        if not vis_paths:
            return None, f"no visible image for {ir_paths[0]} (expected {self.vis_dir}/{image_id}.*)"
        if not ir_paths:
            return None, f"no infrared image for {vis_paths[0]} (expected {self.ir_dir}/{image_id}.*)"
        sizes = []
        for path in (ir_paths[0], vis_paths[0]):
            try:
                if decode:
                    img = read_image(path)
                    sizes.append((img.shape[1], img.shape[0]))
                else:
                    sizes.append(read_image_size(path))
            except UserError as e:
                return None, str(e)
        (iw, ih), (vw, vh) = sizes
        if (iw, ih) != (vw, vh):
            return None, f"size mismatch: {ir_paths[0]} is {iw}x{ih} but {vis_paths[0]} is {vw}x{vh}"
        return _Pair(image_id, ir_paths[0], vis_paths[0], iw, ih), None

    def _label_dirs(self, boxes) -> tuple[Path | None, Path | None]:
        """(IR label folder, VIS label folder), each None when that modality has no boxes."""
        if boxes is None or boxes is False or boxes == "none":
            return None, None
        if boxes == "auto":
            folder = None
            for cand in LAYOUTS[self.layout].labels:
                folder = child_folder(self.root, cand)
                if folder is not None:
                    break
            if folder is None:
                return None, None
        else:
            folder = Path(boxes)
            if not folder.is_dir() and (self.root / folder).is_dir():
                folder = self.root / folder
            if not folder.is_dir():
                raise UserError(f"label folder not found: {boxes}; pass an existing folder, 'auto' or None")
        if self.split is not None and (folder / self.split).is_dir():
            folder = folder / self.split
        ir_sub = next((d for d in (child_folder(folder, n) for n in IR_BOX_DIRS) if d is not None), None)
        vis_sub = next((d for d in (child_folder(folder, n) for n in VIS_BOX_DIRS) if d is not None), None)
        if ir_sub is not None or vis_sub is not None:
            # Per-modality boxes; a modality without its sub-folder simply has none.
            return ir_sub, vis_sub
        return folder, folder

    def _load_boxes(self, class_names) -> None:
        ir_dir, vis_dir = self.label_dirs
        folders = {d: LabelFolder(d) for d in (ir_dir, vis_dir) if d is not None}
        self.label_format = next(iter(folders.values())).format
        self.class_names = shared_class_names(list(folders.values()), class_names)
        for pair in self._pairs:
            loaded = {
                d: self._clean(f.load(pair.id, pair.width, pair.height, self.class_names), pair)
                for d, f in folders.items()
            }
            pair.boxes_ir, pair.boxes_vis = loaded.get(ir_dir), loaded.get(vis_dir)
        # Label files whose id has no image at all usually mean misnamed files: report them.
        self.orphan_labels = sum(1 for f in folders.values() for i in f.files if i not in self._image_ids)

    def _clean(self, boxes: Boxes | None, pair: _Pair) -> Boxes | None:
        """Clip to the image; drop (and count) boxes thinner than MIN_BOX_SIDE after clipping."""
        if boxes is None or len(boxes) == 0:
            return boxes
        lim = np.asarray([pair.width, pair.height, pair.width, pair.height], np.float32)
        xyxy = np.clip(boxes.xyxy, 0, lim)
        keep = ((xyxy[:, 2] - xyxy[:, 0]) >= MIN_BOX_SIDE) & ((xyxy[:, 3] - xyxy[:, 1]) >= MIN_BOX_SIDE)
        self.dropped_boxes += int((~keep).sum())
        return Boxes(xyxy[keep], boxes.labels[keep], boxes.class_names)

    # ------------------------------------------------------------------ public API

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self._pairs]

    @property
    def has_boxes(self) -> bool:
        """True when the dataset has a label folder at all."""
        return any(d is not None for d in self.label_dirs)

    @property
    def unlabelled(self) -> int:
        """Pairs without any label file, in a dataset that has a label folder."""
        if not self.has_boxes:
            return 0
        return sum(1 for p in self._pairs if p.boxes_ir is None and p.boxes_vis is None)

    def size_of(self, index: int) -> tuple[int, int]:
        """(width, height) of pair ``index`` without loading it."""
        p = self._pairs[index]
        return p.width, p.height

    def paths(self, index: int) -> tuple[Path, Path]:
        """(IR file, VIS file) of pair ``index``."""
        p = self._pairs[index]
        return p.ir_path, p.vis_path

    def annotations(self, index: int) -> tuple[Boxes | None, Boxes | None]:
        """(IR boxes, VIS boxes) of pair ``index`` as loaded (no augmentation, no class remap);
        None where there is no label file."""
        p = self._pairs[index]
        return p.boxes_ir, p.boxes_vis

    def num_boxes(self) -> tuple[int, int]:
        """Total (IR, VIS) boxes over the dataset, before augmentation."""
        n_ir = sum(len(p.boxes_ir) for p in self._pairs if p.boxes_ir is not None)
        n_vis = sum(len(p.boxes_vis) for p in self._pairs if p.boxes_vis is not None)
        return n_ir, n_vis

    def report(self, max_reasons: int = 20) -> str:
        """One line "name: N pairs, K skipped" (+ box notes), then one line per skipped pair."""
        line = f"{self.name}: {len(self)} pairs, {len(self.skipped)} skipped"
        notes = []
        if self.unlabelled:
            notes.append(f"{self.unlabelled} pairs without label files")
        if self.orphan_labels:
            notes.append(f"{self.orphan_labels} label files without images")
        if self.dropped_boxes:
            notes.append(f"{self.dropped_boxes} degenerate boxes dropped")
        if notes:
            line += "; " + ", ".join(notes)
        lines = [line] + [f"  skipped {i}: {r}" for i, r in self.skipped[:max_reasons]]
        if len(self.skipped) > max_reasons:
            lines.append(f"  ... and {len(self.skipped) - max_reasons} more (see dataset.skipped)")
        return "\n".join(lines)

    def subset(self, ids, transform="same") -> "PairedDataset":
        """The same dataset restricted to ``ids`` (no rescan), optionally with another transform."""
        index = {p.id: p for p in self._pairs}
        missing = [i for i in ids if i not in index]
        if missing:
            raise UserError(f"{self.name}: {len(missing)} id(s) not in the dataset, e.g. {missing[:3]}")
        out = copy.copy(self)
        out._pairs = [index[i] for i in ids]
        if transform != "same":
            out.transform = transform
        return out

    def with_class_names(self, class_names) -> "PairedDataset":
        """A view whose labels index ``class_names`` (a superset of this dataset's classes)."""
        class_names = list(class_names)
        missing = [n for n in self.class_names if n not in class_names]
        if missing:
            raise UserError(f"{self.name}: classes {missing} are missing from the new class list {class_names}")
        out = copy.copy(self)
        out._remap = np.asarray([class_names.index(n) for n in self.class_names], np.int64)
        out.class_names = class_names
        return out

    def __len__(self) -> int:
        return len(self._pairs)

    def __repr__(self) -> str:
        return (
            f"PairedDataset({str(self.root)!r}, layout={self.layout!r}, pairs={len(self)}, "
            f"skipped={len(self.skipped)})"
        )

    def load_sample(self, index: int) -> dict:
        """The numpy sample of pair ``index`` before the transform (see augment.py)."""
        p = self._pairs[index]
        ir = read_image(p.ir_path)
        vis = read_image(p.vis_path)
        for path, img in ((p.ir_path, ir), (p.vis_path, vis)):
            if img.shape[:2] != (p.height, p.width):  # header said otherwise; the file changed?
                raise UserError(
                    f"{path} is {img.shape[1]}x{img.shape[0]}, its header said {p.width}x{p.height}; re-save the file"
                )
        sample = {"id": p.id, "ir": ir_to_unit(ir), "vis": split_visible(vis).y}
        for key, boxes in (("ir", p.boxes_ir), ("vis", p.boxes_vis)):
            b = boxes if boxes is not None else Boxes.empty(self.class_names)
            labels = b.labels if self._remap is None else self._remap[b.labels]
            sample[f"boxes_{key}"], sample[f"labels_{key}"] = b.xyxy.copy(), labels.copy()
        return sample

    def __getitem__(self, index: int) -> dict:
        p = self._pairs[index]
        sample = self.load_sample(index)
        if self.transform is not None:
            sample = self.transform(sample)
        if self.boxes_shared or not self.has_boxes:
            union_boxes, union_labels = sample["boxes_ir"], sample["labels_ir"]
        else:
            union_boxes, union_labels = _union(
                sample["boxes_ir"], sample["labels_ir"], sample["boxes_vis"], sample["labels_vis"]
            )
        item = {
            "id": sample["id"],
            "ir": torch.from_numpy(np.ascontiguousarray(sample["ir"], np.float32))[None],
            "vis": torch.from_numpy(np.ascontiguousarray(sample["vis"], np.float32))[None],
        }
        for key in ("ir", "vis"):
            item[f"boxes_{key}"] = torch.from_numpy(np.asarray(sample[f"boxes_{key}"], np.float32).reshape(-1, 4))
            item[f"labels_{key}"] = torch.from_numpy(np.asarray(sample[f"labels_{key}"], np.int64))
        item["boxes"] = torch.from_numpy(np.asarray(union_boxes, np.float32).reshape(-1, 4))
        item["labels"] = torch.from_numpy(np.asarray(union_labels, np.int64))
        item["has_boxes_ir"] = p.boxes_ir is not None
        item["has_boxes_vis"] = p.boxes_vis is not None
        item["has_boxes"] = item["has_boxes_ir"] or item["has_boxes_vis"]
        return item


def _union(b1, l1, b2, l2):
    """Boxes of both modalities, exact duplicates (same box and class) once."""
    boxes = np.concatenate([np.asarray(b1, np.float32).reshape(-1, 4), np.asarray(b2, np.float32).reshape(-1, 4)])
    labels = np.concatenate([np.asarray(l1, np.int64), np.asarray(l2, np.int64)])
    if len(labels) == 0:
        return boxes, labels
    rows = np.concatenate([boxes.astype(np.float64), labels[:, None].astype(np.float64)], axis=1)
    _, first = np.unique(rows, axis=0, return_index=True)
    first.sort()
    return boxes[first], labels[first]
