"""Temporal stability of fused video: does the fusion flicker or pump more than the sources do?

Every measure is in grey levels of the fused luminance (0..255); lower is steadier. For fused
frames F_1..F_T and the source frames S = IR, VIS (IR as ``ir_to_unit`` maps it, VIS its BT.601
luminance, both times 255), with ``warp`` the previous frame brought onto frame t by the flow of
:func:`moefusion.eval.flow.source_flow` (DIS on both sources, per pixel the better one) and V_t
the pixels visible in both frames (forward-backward check):

- ``flicker_excess``: mean over t of mean over V_t of max(0, |F_t - warp(F_{t-1})| -
  max_S |S_t - warp(S_{t-1})|): change that neither camera saw, made by the fusion itself. A
  convex per-pixel blend of the sources (the average) has none, whatever the motion.
- ``warping_error``: mean over t of mean over V_t of |F_t - warp(F_{t-1})| (Lai et al., ECCV
  2018): everything that motion does not explain, the sources' own noise and flicker included.
- ``pumping``: standard deviation over t of (mean F_t - mean F_{t-1}), whole frames: how much the
  overall brightness jumps from frame to frame.

And the raw frame-to-frame measures they replace, kept for comparison (no motion compensation, so
real motion counts as change):

- ``change``: mean over t of mean |F_t - F_{t-1}|.
- ``brightness_sd``: standard deviation over t of the frame mean.
- ``change_excess``: mean over t of mean max(0, |F_t - F_{t-1}| - max_S |S_t - S_{t-1}|).

A method is anything that turns one (IR, VIS) frame pair into a fused frame, called in time order
(:data:`Fuser`): a model fusing each frame alone (``model``), a baseline, or a stateful stream
(``stream``: the model in stream mode, a fresh ``model.stream()`` per sequence).
:func:`measure_sequence` runs several on one sequence, computing the sources' flow once per frame;
:func:`temporal_measures` measures fused frames already made. ``moefusion-eval --temporal``
reports them per method (docs/metrics.md).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from ..data.io import read_image
from ..data.pairs import pair_folders
from ..data.preprocess import ir_to_unit, split_visible
from ..errors import UserError
from .flow import source_flow, warp
from .runner import Method, _fuse, _one_line, _to255, check_pairs, find_pairs

TEMPORAL_METRICS = ("change", "brightness_sd", "change_excess")  # raw frame-to-frame (no motion compensation)
WARPED_METRICS = ("flicker_excess", "warping_error", "pumping")  # motion-compensated
MEASURES = WARPED_METRICS + TEMPORAL_METRICS
MAX_FRAMES = 60

# (ir_raw, vis_raw) -> fused frame: luminance (H, W) on 0..255, or an image like VIS (its
# luminance is used). Called once per frame in time order, so a stateful stream works.
Fuser = Callable[[np.ndarray, np.ndarray], np.ndarray]


class TemporalStats:
    """Accumulates the temporal metrics one frame at a time (no sequence kept in memory)."""

    def __init__(self):
        self._prev = None
        self._prev_src = None
        self._changes: list[float] = []
        self._excess: list[float] = []
        self._means: list[float] = []

    def add(self, fused: np.ndarray, ir: np.ndarray | None = None, vis: np.ndarray | None = None) -> None:
        f = np.asarray(fused, np.float64)
        self._means.append(float(f.mean()))
        src = None if ir is None or vis is None else (np.asarray(ir, np.float64), np.asarray(vis, np.float64))
        if self._prev is not None and self._prev.shape == f.shape:
            d = np.abs(f - self._prev)
            self._changes.append(float(d.mean()))
            if src is not None and self._prev_src is not None:
                allowed = np.maximum(np.abs(src[0] - self._prev_src[0]), np.abs(src[1] - self._prev_src[1]))
                self._excess.append(float(np.maximum(d - allowed, 0.0).mean()))
        self._prev, self._prev_src = f, src

    @property
    def frames(self) -> int:
        return len(self._means)

    def result(self) -> dict[str, float]:
        nan = float("nan")
        return {
            "change": float(np.mean(self._changes)) if self._changes else nan,
            "brightness_sd": float(np.std(self._means)) if len(self._means) > 1 else nan,
            "change_excess": float(np.mean(self._excess)) if self._excess else nan,
        }


def temporal_metrics(frames, irs=None, viss=None) -> dict[str, float]:
    """The metrics of a whole sequence (lists of 2-D arrays, 0..255)."""
    stats = TemporalStats()
    for i, f in enumerate(frames):
        stats.add(f, None if irs is None else irs[i], None if viss is None else viss[i])
    return stats.result()


class TemporalMeasures:
    """Accumulates every measure of one method, one frame at a time (only the previous frame kept).

    ``add(fused, ir, vis, flow=None)``: 2-D frames on 0..255 (the sources as the fusion saw them).
    ``flow``: the ``(flow, valid)`` of :func:`source_flow` from the previous sources to these, when
    the caller computes it once for several methods; computed here when omitted.
    """

    def __init__(self):
        self._raw = TemporalStats()
        self._prev = None  # (fused, ir, vis), float32
        self._excess: list[float] = []
        self._warping: list[float] = []
        self._steps: list[float] = []

    def add(self, fused, ir, vis, flow=None) -> None:
        f, a, b = (np.asarray(x, np.float32) for x in (fused, ir, vis))
        if not f.ndim == a.ndim == b.ndim == 2 or not f.shape == a.shape == b.shape:
            raise ValueError(f"fused, IR and VIS frames must be 2-D of one size, got {f.shape}, {a.shape}, {b.shape}")
        self._raw.add(f, a, b)
        prev = self._prev
        self._prev = (f, a, b)
        if prev is None or prev[0].shape != f.shape:
            return
        self._steps.append(float(f.mean(dtype=np.float64) - prev[0].mean(dtype=np.float64)))
        fl, valid = flow if flow is not None else source_flow(prev[1], a, prev[2], b)
        if not valid.any():
            return
        d = np.abs(f - warp(prev[0], fl))[valid]
        seen = np.maximum(np.abs(a - warp(prev[1], fl)), np.abs(b - warp(prev[2], fl)))[valid]
        self._excess.append(float(np.maximum(d - seen, 0.0).mean(dtype=np.float64)))
        self._warping.append(float(d.mean(dtype=np.float64)))

    @property
    def frames(self) -> int:
        return self._raw.frames

    def result(self) -> dict[str, float]:
        nan = float("nan")
        out = {
            "flicker_excess": float(np.mean(self._excess)) if self._excess else nan,
            "warping_error": float(np.mean(self._warping)) if self._warping else nan,
            "pumping": float(np.std(self._steps)) if self._steps else nan,
        }
        out.update(self._raw.result())
        out["frames"] = self.frames
        return out


def temporal_measures(fused_frames: Iterable, ir_frames: Iterable, vis_frames: Iterable) -> dict[str, float]:
    """Every measure (:data:`MEASURES`, plus ``frames``) of one fused sequence: three iterables of
    2-D frames on 0..255 in time order (lists or generators; consumed together)."""
    stats = TemporalMeasures()
    for f, a, b in zip(fused_frames, ir_frames, vis_frames):
        stats.add(f, a, b)
    return stats.result()


def source_luminance(ir_raw: np.ndarray, vis_raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(IR, visible luminance) on 0..255 as eval measures them (``ir_to_unit``, ``split_visible``)."""
    return _to255(ir_to_unit(ir_raw), ir_raw.dtype), _to255(split_visible(vis_raw).y, vis_raw.dtype)


def fused_luminance(fused: np.ndarray) -> np.ndarray:
    """A fuser's output as luminance on 0..255: 2-D float frames are taken as they are, other
    images (8/16-bit, colour, [0, 1] float like ``model.fuse`` gives) through ``split_visible``."""
    fused = np.asarray(fused)
    if fused.ndim == 2 and fused.dtype.kind == "f":
        return fused.astype(np.float32, copy=False)
    return _to255(split_visible(fused).y, fused.dtype).astype(np.float32)


def method_fuser(m: Method) -> Fuser:
    """The fuser of a ``moefusion-eval`` method (a baseline, or a model whose ``model`` is loaded):
    fused luminance on 0..255, baselines rounded to 8 bits as in the image metrics. A ``stream``
    method gets a fresh ``model.stream()`` (the model in stream mode, model/stream.py): call this
    once per sequence, then the fuser once per frame in time order."""
    if m.stream:
        make = getattr(m.model, "stream", None)
        if not callable(make):
            raise UserError(f"method {m.label!r}: {m.model_path or 'the model'} has no stream mode (model.stream()); "
                            "use a checkpoint (.pt), or method 'model' (each frame alone)")
        return model_fuser(make())

    def fuse(ir_raw, vis_raw):
        return _fuse(m, "", ir_raw, vis_raw, ir_to_unit(ir_raw), split_visible(vis_raw))[0]

    return fuse


def model_fuser(model) -> Fuser:
    """Any object with ``fuse(ir_raw, vis_raw)`` (``moefusion.load()``, a stream): its luminance."""
    return lambda ir_raw, vis_raw: fused_luminance(model.fuse(ir_raw, vis_raw))


def fused_sequence(fuser: Fuser, frames: Iterable) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(fused, IR, VIS) luminance frames on 0..255 of ``fuser`` over (ir_raw, vis_raw) frames."""
    for ir_raw, vis_raw in frames:
        ir, vis = source_luminance(ir_raw, vis_raw)
        yield fused_luminance(fuser(ir_raw, vis_raw)), ir, vis


def measure_sequence(frames: Iterable, fusers: dict[str, Fuser], max_frames: int | None = MAX_FRAMES,
                     progress=None) -> dict[str, dict]:
    """Every measure of each fuser on one sequence of (ir_raw, vis_raw) frames (at most ``max_frames``),
    the sources' flow computed once per frame. A fuser that raises is dropped from then on; its
    result carries ``error`` (one line) and its measures up to that frame."""
    stats = {label: TemporalMeasures() for label in fusers}
    errors: dict[str, str] = {}
    prev = None
    for n, (ir_raw, vis_raw) in enumerate(frames):
        if max_frames is not None and n >= max_frames:
            break
        if progress:
            progress(n)
        ir, vis = source_luminance(ir_raw, vis_raw)
        flow = source_flow(prev[0], ir, prev[1], vis) if prev is not None and prev[0].shape == ir.shape else None
        prev = (ir, vis)
        for label, fuse in fusers.items():
            if label in errors:
                continue
            try:
                stats[label].add(fused_luminance(fuse(ir_raw, vis_raw)), ir, vis, flow)
            except Exception as e:  # noqa: BLE001 - one method failing must not stop the others
                errors[label] = f"frame {n}: {type(e).__name__}: {_one_line(e)}"
    out = {label: s.result() for label, s in stats.items()}
    for label, e in errors.items():
        out[label]["error"] = e
    return out


def format_table(results: dict[str, dict], markdown: bool = False) -> str:
    """One row per method: the motion-compensated measures, then the raw ones."""
    head = ["method", "frames", *MEASURES]
    body = [[label, str(r.get("frames", ""))] + [f"{r[k]:.4f}" for k in MEASURES] for label, r in results.items()]
    if markdown:
        lines = [head, ["---"] * len(head)] + body
        return "\n".join("| " + " | ".join(row) + " |" for row in lines)
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in [head] + body)


def results_json(source: str, results: dict[str, dict]) -> str:
    """``measure_sequence`` results as JSON text (NaN as null)."""
    clean = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v
    doc = {"source": source, "methods": {k: {n: clean(v) for n, v in r.items()} for k, r in results.items()}}
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def sequence_frames(root: str | Path, max_frames: int | None = None):
    """(IR, VIS) frames of a ROOT/ir + ROOT/vis image sequence, in natural id order (the first
    ``max_frames``)."""
    root = Path(root)
    for pair in pair_folders(root / "ir", root / "vis")[:max_frames]:
        yield read_image(pair.ir), read_image(pair.vis)


def video_frames(ir_video: str | Path, vis_video: str | Path, max_frames: int = MAX_FRAMES):
    """Up to ``max_frames`` (IR gray, VIS BGR) frames of two synchronised video files (to the end of
    the shorter); a missing or unreadable file is a one-line UserError before any frame is read."""
    for flag, path in (("--ir-video", ir_video), ("--vis-video", vis_video)):
        if not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file")
        cap = cv2.VideoCapture(str(path))
        ok = cap.isOpened() and cap.read()[0]
        cap.release()
        if not ok:
            raise UserError(f"{flag} {path}: OpenCV cannot read a frame from it (not a video, or no codec)")
    return clip_frames(ir_video, vis_video, max_frames, at_most=True)


def open_sequence(data: str | Path | None, ir_video: str | Path | None, vis_video: str | Path | None,
                  max_frames: int = MAX_FRAMES):
    """-> (frames, description) of an image-sequence folder ``data`` (ROOT/ir + ROOT/vis, natural id
    order) or of two video files; the inputs are checked first (one-line UserError)."""
    if data and (ir_video or vis_video):
        raise UserError("--temporal takes --data ROOT or --ir-video/--vis-video, not both")
    if data:
        pairs = find_pairs(Path(data))[:max_frames]
        check_pairs(pairs)
        return sequence_frames(data, max_frames), f"{data} ({len(pairs)} frames, natural id order)"
    if ir_video and vis_video:
        return video_frames(ir_video, vis_video, max_frames), f"{ir_video} + {vis_video} (at most {max_frames} frames)"
    raise UserError("--temporal needs --data ROOT (ROOT/ir + ROOT/vis frames) or both --ir-video and --vis-video")


def clip_frames(ir_video: str | Path, vis_video: str | Path, count: int, at_most: bool = False):
    """The first ``count`` (IR gray, VIS BGR) frames of two synchronised video files; a shorter
    video is an error, or with ``at_most`` the end of the sequence."""
    caps = [cv2.VideoCapture(str(p)) for p in (ir_video, vis_video)]
    try:
        for n in range(count):
            (ok_ir, ir), (ok_vis, vis) = (c.read() for c in caps)
            if not (ok_ir and ok_vis):
                if at_most:
                    return
                raise ValueError(f"{ir_video if not ok_ir else vis_video}: no frame {n} (asked for {count})")
            yield cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY), vis
    finally:
        for c in caps:
            c.release()
