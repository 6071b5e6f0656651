"""Report helpers for ``moefusion-eval``: atomic writes, the text table, CSV/JSON and the contact sheet."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------
@dataclass
class Row:
    """One (image, method) evaluation: metric values, or the error that stopped it."""

    image: str
    method: str
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # "fusion failed: ..." or "metric failed: METRIC: message; ..."


def means(rows: list[Row], methods: list[str], metrics: list[str]) -> dict[str, dict]:
    """Per method: the mean of each metric over the images where it is finite, plus counts."""
    out: dict[str, dict] = {}
    for m in methods:
        mine = [r for r in rows if r.method == m]
        entry: dict = {"n_images": len(mine), "n_failed": sum(1 for r in mine if r.error)}
        for k in metrics:
            vals = [r.values[k] for r in mine if k in r.values and math.isfinite(r.values[k])]
            entry[k] = float(np.mean(vals)) if vals else math.nan
        out[m] = entry
    return out


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.4f}"


def format_table(mean: dict[str, dict], metrics: list[str], higher_is_better: dict[str, bool]) -> str:
    """Fixed-width text table: method | ok/total | one column per metric (averaged)."""
    head = ["method", "ok"] + [f"{k}{'+' if higher_is_better[k] else '-'}" for k in metrics]
    body = []
    for m, e in mean.items():
        ok = e["n_images"] - e["n_failed"]
        body.append([m, f"{ok}/{e['n_images']}"] + [_fmt(e[k]) for k in metrics])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [head] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("(+ higher is better, - lower is better; 'ok' counts images evaluated without error)")
    return "\n".join(lines)


def to_csv(rows: list[Row], mean: dict[str, dict], metrics: list[str]) -> str:
    """CSV text: one row per (image, method) (kind=image), then one per method (kind=mean)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["kind", "image", "method", "error"] + metrics)
    for r in rows:
        w.writerow(["image", r.image, r.method, r.error or ""] + [_csv_num(r.values.get(k)) for k in metrics])
    for m, e in mean.items():
        err = f"{e['n_failed']} of {e['n_images']} images failed" if e["n_failed"] else ""
        w.writerow(["mean", "", m, err] + [_csv_num(e[k]) for k in metrics])
    return buf.getvalue()


def _csv_num(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(float(v))


def _json_num(v):
    """JSON has no NaN/inf: NaN -> null, +-inf -> the strings "inf"/"-inf"."""
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def to_json(summary: dict, rows: list[Row], mean: dict[str, dict], metrics: list[str]) -> str:
    doc = dict(summary)
    doc["mean"] = {m: {k: (_json_num(v) if k in metrics else v) for k, v in e.items()} for m, e in mean.items()}
    doc["per_image"] = [
        {"image": r.image, "method": r.method, "error": r.error, "values": {k: _json_num(r.values.get(k)) for k in metrics}}
        for r in rows
    ]
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------
def check_output_path(path: Path, flag: str) -> None:
    """Fail early (before a long run) on an output path that cannot be a file."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UserError(f"{flag} {path}: cannot create files under {parent}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then os.replace() it into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        _unlink(tmp)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        _unlink(tmp)
        raise


def _file_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777  # keep the mode of the file being replaced
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _unlink(p: str) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# contact sheet
# --------------------------------------------------------------------------------------------
TILE_HEIGHT = 160
_GAP = 4
_BG = 40


def to_display(img: np.ndarray | None, height: int = TILE_HEIGHT) -> np.ndarray | None:
    """Any image (gray/BGR, uint8/uint16/float [0, 1]) -> uint8 BGR tile of the given height."""
    if img is None:
        return None
    x = img
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[:, :, 0]
    if x.ndim == 3 and x.shape[2] == 4:
        x = x[:, :, :3]
    if x.dtype == np.uint16:
        x = (x.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif np.issubdtype(x.dtype, np.floating):
        x = (np.clip(x, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    if x.ndim == 2:
        x = cv2.cvtColor(x, cv2.COLOR_GRAY2BGR)
    h, w = x.shape[:2]
    width = max(1, round(w * height / h))
    interp = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    return cv2.resize(x, (width, height), interpolation=interp)


def _label(tile: np.ndarray, text: str, color=(255, 255, 255)) -> None:
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    cv2.rectangle(tile, (0, 0), (min(tile.shape[1] - 1, tw + 6), th + base + 5), (0, 0, 0), thickness=-1)
    cv2.putText(tile, text, (3, th + 3), font, scale, color, thick, cv2.LINE_AA)


def contact_sheet(rows: list[tuple[str, list[np.ndarray | None]]], columns: list[str], height: int = TILE_HEIGHT) -> np.ndarray:
    """Grid image: one row per image, one column per entry of ``columns`` (IR, VIS, methods).

    ``rows`` holds (image id, tiles) with tiles already made by :func:`to_display` (None: the
    method failed on that image, drawn as a dark red tile marked FAILED). Every tile is labelled.
    """
    lines = []
    for image_id, tiles in rows:
        ref = next((t for t in tiles if t is not None), None)
        width = ref.shape[1] if ref is not None else height
        cells = []
        for j, (name, t) in enumerate(zip(columns, tiles)):
            if t is None:
                t = np.zeros((height, width, 3), np.uint8)
                t[:] = (0, 0, 96)
                cv2.putText(t, "FAILED", (6, height // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
            else:
                t = t.copy()
            _label(t, f"{name}  {image_id}" if j == 0 else name)
            cells.append(t)
            cells.append(np.full((height, _GAP, 3), _BG, np.uint8))
        lines.append(np.concatenate(cells[:-1], axis=1))
    total_w = max(line.shape[1] for line in lines)
    out = []
    for line in lines:
        if line.shape[1] < total_w:
            pad = np.full((height, total_w - line.shape[1], 3), _BG, np.uint8)
            line = np.concatenate([line, pad], axis=1)
        out.append(line)
        out.append(np.full((_GAP, total_w, 3), _BG, np.uint8))
    return np.concatenate(out[:-1], axis=0)


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
