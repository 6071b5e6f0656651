"""Fuse and measure: the methods of ``moefusion-eval`` on a list of IR/VIS pairs.

The library under :mod:`moefusion.eval.cli` and ``moefusion-eval --heldout``
(:mod:`moefusion.eval.heldout`): pairs from a ``ROOT/ir`` + ``ROOT/vis`` folder, methods parsed
from ``--methods``, and :func:`evaluate`, which gives one :class:`~moefusion.eval.report.Row` of
metric values per (image, method). Loading a model file (``moefusion.load``) is the command's job:
a ``Method`` whose ``is_model`` is true must have ``model`` set before :func:`evaluate`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.io import read_image
from ..data.pairs import Pair, pair_folders, scan_images
from ..data.preprocess import ir_to_unit, merge_visible, split_visible
from ..errors import UserError
from . import baselines as _baselines
from . import metrics as _metrics
from . import report

DEFAULT_BASELINES = ("average", "max", "laplacian", "gff")


# --------------------------------------------------------------------------------------------
# the paired folder
# --------------------------------------------------------------------------------------------
def find_pairs(root: Path) -> list[Pair]:
    """ROOT/ir and ROOT/vis -> pairs sorted by id (natural order). Refuses unpaired ids."""
    if not root.is_dir():
        raise UserError(f"--data {root}: no such folder")
    for sub in ("ir", "vis"):
        if not (root / sub).is_dir():
            raise UserError(f"--data {root}: no {sub}/ folder; expected ROOT/ir/ and ROOT/vis/ with images paired by file name")
    return pair_folders(root / "ir", root / "vis")


def check_pairs(pairs: list[Pair]) -> None:
    """Read every pair once: unreadable files and size mismatches stop the run before any work."""
    for p in pairs:
        a, b = read_image(p.ir), read_image(p.vis)
        if a.shape[:2] != b.shape[:2]:
            raise UserError(
                f"size mismatch for id {p.id!r}: {p.ir} is {a.shape[1]}x{a.shape[0]} but {p.vis} is "
                f"{b.shape[1]}x{b.shape[0]}; eval needs registered pairs of the same size (resize or register them first)"
            )
        for path, img, convert in ((p.ir, a, ir_to_unit), (p.vis, b, split_visible)):
            try:
                convert(img)
            except UserError as e:
                raise UserError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
# methods
# --------------------------------------------------------------------------------------------
@dataclass
class Method:
    label: str
    baseline: object = None  # a function (ir_unit, vis_y) -> fused y, or None
    model_path: str | None = None
    model: object = None
    fused_dir: dict[str, Path] | None = None  # fused:DIR: id -> fused image file
    stream: bool = False  # stream, stream:PATH (--temporal): the model in stream mode (model.stream())

    @property
    def is_model(self) -> bool:
        return self.baseline is None and self.fused_dir is None


def parse_methods(spec: str | None, model_arg: str | None) -> list[Method]:
    valid = ", ".join(list(_baselines.BASELINES) + ["model", "model:PATH", "stream", "stream:PATH", "fused:DIR"])
    if spec is None:
        names = list(DEFAULT_BASELINES) + (["model"] if model_arg else [])
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        if not names:
            raise UserError(f"--methods is empty; valid methods: {valid}")
    out: list[Method] = []
    for n in names:
        if n in _baselines.BASELINES:
            m = Method(n, baseline=_baselines.BASELINES[n])
        elif n.lower() in _baselines.BASELINES:
            m = Method(n.lower(), baseline=_baselines.BASELINES[n.lower()])
        elif n == "model":
            m = Method("model", model_path=model_arg)
        elif n == "stream":
            m = Method("stream", model_path=model_arg, stream=True)
        elif n.startswith(("model:", "stream:")):
            kind, path = n.split(":", 1)
            path = path.strip()
            if not path:
                raise UserError(f"method '{kind}:' needs a path, e.g. {kind}:runs/best.pt")
            m = Method(n, model_path=path, stream=kind == "stream")
        elif n.startswith("fused:"):
            folder = Path(n[len("fused:"):].strip())
            if not folder.is_dir():
                raise UserError(f"method {n!r}: no such folder {folder} (fused:DIR reads fused images named like the pairs)")
            m = Method(n, fused_dir=scan_images(folder))
        else:
            raise UserError(f"unknown method {n!r}; valid methods: {valid}")
        if any(o.label == m.label for o in out):
            raise UserError(f"method {m.label!r} is listed twice in --methods")
        out.append(m)
    if model_arg and spec is not None and not any(m.label in ("model", "stream") for m in out):
        raise UserError("--model is given but --methods does not list 'model' (or 'stream'); add it (or use model:PATH)")
    for m in out:
        if m.is_model and m.model_path is not None and not Path(m.model_path).exists():
            raise UserError(f"model file not found: {m.model_path} (method {m.label!r})")
    return out


def no_stream_methods(methods: list[Method], mode: str) -> None:
    """A UserError for a ``stream`` method outside --temporal (it needs a video)."""
    for m in methods:
        if m.stream:
            raise UserError(f"method {m.label!r} (the model in stream mode) needs a video: use it with --temporal; "
                            f"{mode} fuses each pair alone (method 'model')")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def _fuse(m: Method, pair_id: str, ir_raw, vis_raw, ir_u, parts):
    """-> (fused luminance float64 0..255, display image) for one method on one pair."""
    h, w = parts.y.shape
    if m.baseline is not None:
        y = np.asarray(m.baseline(ir_u, parts.y), dtype=np.float32)
        if y.shape != (h, w):
            raise ValueError(f"returned shape {y.shape}, expected {(h, w)}")
        y = np.clip(np.nan_to_num(y), 0.0, 1.0)
        y255 = np.rint(y.astype(np.float64) * 255.0)  # as a saved 8-bit image
        return y255, merge_visible((y255 / 255.0).astype(np.float32), parts)
    if m.fused_dir is not None:
        path = m.fused_dir.get(pair_id)
        if path is None:
            raise FileNotFoundError(f"no fused image for id {pair_id!r} in {m.label[len('fused:'):]}")
        out = read_image(path)
    else:
        out = m.model.fuse(ir_raw, vis_raw)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"fuse() returned {type(out).__name__}, expected a numpy array")
    if out.shape[:2] != (h, w):
        raise ValueError(f"fused image is {out.shape[1]}x{out.shape[0]}, expected {w}x{h}")
    return _to255(split_visible(out).y, out.dtype), out


def _to255(unit: np.ndarray, dtype) -> np.ndarray:
    """[0, 1] float32 -> float64 0..255; exact integer levels again for 8-bit sources (float32
    division by 255 leaves values like 126.99999)."""
    x = unit.astype(np.float64) * 255.0
    return np.rint(x) if dtype == np.uint8 else x


def evaluate(pairs, methods, metric_names, convention, sheet_rows, progress=None):
    """Rows of metric values per (image, method) and the contact sheet's tiles."""
    rows: list[report.Row] = []
    sheet: list[tuple[str, list]] = []
    for i, pair in enumerate(pairs):
        if progress:
            progress(i, pair)
        ir_raw, vis_raw = read_image(pair.ir), read_image(pair.vis)
        ir_u = ir_to_unit(ir_raw)
        parts = split_visible(vis_raw)
        ir255 = _to255(ir_u, ir_raw.dtype)
        vis255 = _to255(parts.y, vis_raw.dtype)
        tiles = [report.to_display(ir_u), report.to_display(vis_raw)] if i < sheet_rows else None
        for m in methods:
            row = report.Row(pair.id, m.label)
            try:
                fused255, shown = _fuse(m, pair.id, ir_raw, vis_raw, ir_u, parts)
            except Exception as e:  # a method failing on one image must not stop the others
                row.error = f"fusion failed: {type(e).__name__}: {_one_line(e)}"
                if tiles is not None:
                    tiles.append(None)
                rows.append(row)
                continue
            if tiles is not None:
                tiles.append(report.to_display(shown))
            errors = []
            for k in metric_names:
                try:
                    row.values[k] = _metrics.compute([k], fused255, ir255, vis255, convention=convention)[k]
                except Exception as e:
                    row.values[k] = math.nan
                    errors.append(f"{k}: {_one_line(e)}")
            if errors:
                row.error = "metric failed: " + "; ".join(errors)
            rows.append(row)
        if tiles is not None:
            sheet.append((pair.id, tiles))
    return rows, sheet
