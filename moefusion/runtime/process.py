"""Per-frame work around inference: preprocessing, postprocessing and the output views.

``Preprocessor`` turns an (IR, VIS) frame pair into the network inputs. It computes exactly what
``moefusion.data.preprocess.prepare_pair`` computes (tests compare them) but on the fast path of
live video (uint8 VIS, uint8/uint16 IR) it avoids the temporaries. Two deliberate differences,
both for speed: the 16-bit IR AGC takes its percentiles from every 4th pixel in each direction
(a 1/16 sample, within a few counts of the full percentiles), and the results are written into
arrays from a ``BufferPool``. Other dtypes go through ``prepare_pair``'s functions.

Two differences in geometry, both said once in the log and the statistics' warnings:
- IR of another size than VIS (no ``--registration``) is scaled keeping its aspect ratio into
  the VIS frame, centred, with black (no thermal signal) bands where it does not reach; equal
  aspect ratios need no band. ``prepare_pair`` stretches it.
- A fixed-size model gets the frames fitted to its input (``fit.ModelFit``: letterbox or stretch)
  and its output is brought back to the frame's size in ``postprocess``.

Buffers: every large array of a frame (network inputs, the visible frame's YCrCb, the output
picture) comes from a ``BufferPool`` and goes back to it when the frame has been written
(``Prepared.release``), so a steady stream of frames allocates nothing: fresh large arrays cost
page faults (one per 4 KiB page, ~650-870 per 640x480 frame before the pool).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..data.preprocess import DEFAULT_AGC_PERCENTILES, VisibleParts, ir_to_unit, merge_visible, split_visible
from .fit import ModelFit, from_model, letterbox_into, letterbox_rect, to_model
from .yuv import I420Frame, unit_to_y, y_to_unit

VIEWS = ("fused", "side-by-side", "grid")


class BufferPool:
    """Reusable numpy arrays by (shape, dtype). ``get`` hands out a free one (or a new one);
    ``put`` takes arrays back once nothing uses them. At most ``keep`` free arrays per shape and
    ``shapes`` shapes are kept (frames of many sizes, e.g. an image folder, do not pile up).
    Thread-safe. An array that is never put back (a frame dropped in a queue) is simply freed."""

    def __init__(self, keep: int = 32, shapes: int = 24):
        self.keep, self.shapes = keep, shapes
        self._free: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.allocated = 0  # arrays created (a steady run stops allocating after its first frames)

    def get(self, shape, dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            lst = self._free.get(key)
            if lst:
                self._free.move_to_end(key)
                return lst.pop()
            self.allocated += 1
        return np.empty(shape, dtype)

    def put(self, *arrays) -> None:
        with self._lock:
            for a in arrays:
                if a is None:
                    continue
                key = (a.shape, a.dtype.str)
                lst = self._free.get(key)
                if lst is None:
                    lst = self._free[key] = []
                    while len(self._free) > self.shapes:
                        self._free.popitem(last=False)
                self._free.move_to_end(key)
                if len(lst) < self.keep:
                    lst.append(a)


class _NoPool:
    """Fresh arrays every time (``Preprocessor()`` without a pool: tests, one-off use)."""

    allocated = 0

    @staticmethod
    def get(shape, dtype):
        return np.empty(shape, dtype)

    @staticmethod
    def put(*arrays):
        pass


@dataclass
class Prepared:
    ir_unit: np.ndarray  # [1, 1, H, W] float32 at the frame's size
    vis_y: np.ndarray  # [1, 1, H, W] float32
    ycrcb: np.ndarray | None  # uint8 (H, W, 3) of a BGR visible frame (fast path), reused by postprocess
    parts: VisibleParts | None  # slow path
    vis: np.ndarray | I420Frame  # the visible frame as fused (registered/cropped); I420: its Y is replaced
    fit: ModelFit | None = None  # how the frame reaches the model (None or native: as it is)
    model_ir: np.ndarray | None = None  # the network inputs [1, 1, h, w] at the model's size
    model_vis: np.ndarray | None = None
    pool: object = None
    owned: list = field(default_factory=list)  # arrays that go back to the pool with release()

    def __post_init__(self):
        if self.model_ir is None:
            self.model_ir, self.model_vis = self.ir_unit, self.vis_y

    def release(self) -> None:
        """Give this frame's arrays back to the pool (after its output was written)."""
        if self.pool is not None and self.owned:
            self.pool.put(*self.owned)
        self.owned = []


def agc16_fast(img: np.ndarray, out: np.ndarray, percentiles=DEFAULT_AGC_PERCENTILES, step: int = 4) -> np.ndarray:
    """Percentile AGC of a 16-bit frame to [0, 1] into ``out`` (float32, same H, W); percentiles
    from a strided sample."""
    sample = img[::step, ::step]
    lo, hi = np.percentile(sample, percentiles)
    if hi - lo < 1e-6:
        out[...] = 0.0
        return out
    np.subtract(img, np.float32(lo), out=out, dtype=np.float32)
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


_U8_TO_UNIT = (np.arange(256, dtype=np.float32) / np.float32(255.0)).reshape(1, 256)


def _to_unit(u8: np.ndarray, out: np.ndarray) -> None:
    """uint8 -> float32 in [0, 1] (exactly ``u8 / 255``), into ``out``: one table lookup per pixel,
    one pass over memory (cheaper than a cast and a scale when the frame is not in the cache)."""
    cv2.LUT(u8, _U8_TO_UNIT, dst=out)


class Preprocessor:
    """``pre(ir, vis) -> Prepared``. ``pool``: where the arrays come from (``BufferPool``);
    ``fit_for(h, w)``: the ``ModelFit`` for frames of that size (None: the model takes any size);
    ``on_note(key, text)``: told about a geometry change (IR letterboxed into VIS)."""

    def __init__(self, agc_percentiles=DEFAULT_AGC_PERCENTILES, *, pool: BufferPool | None = None,
                 fit_for=None, on_note=None):
        self.agc = agc_percentiles
        self.pool = pool or _NoPool()
        self.fit_for = fit_for
        self.on_note = on_note
        self._noted: set = set()

    def __call__(self, ir: np.ndarray, vis: np.ndarray) -> Prepared:
        pool = self.pool
        if ir.ndim == 3 and ir.shape[2] == 1:
            ir = ir[:, :, 0]
        if vis.ndim == 3 and vis.shape[2] == 1:
            vis = vis[:, :, 0]
        h, w = vis.shape[:2]
        owned = []
        vis_y = pool.get((1, 1, h, w), np.float32)
        ir_unit = pool.get((1, 1, h, w), np.float32)
        owned += [vis_y, ir_unit]
        ycrcb = parts = None
        if isinstance(vis, I420Frame):  # the Y plane as it is: no colour conversion (yuv.py)
            y_to_unit(vis.y, vis_y[0, 0])
        elif vis.dtype == np.uint8 and (vis.ndim == 2 or vis.shape[2] == 3):
            if vis.ndim == 3:
                ycrcb = cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb, dst=pool.get((h, w, 3), np.uint8))
                y8 = cv2.extractChannel(ycrcb, 0, dst=pool.get((h, w), np.uint8))
                owned.append(ycrcb)
            else:
                y8 = vis
            _to_unit(y8, vis_y[0, 0])
            if y8 is not vis:
                pool.put(y8)
        else:
            parts = split_visible(vis)
            vis_y[0, 0] = parts.y
        same = ir.shape[:2] == (h, w)
        dst = ir_unit[0, 0] if same else pool.get(ir.shape[:2], np.float32)
        if ir.ndim == 2 and ir.dtype == np.uint8:
            _to_unit(ir, dst)
        elif ir.ndim == 2 and ir.dtype == np.uint16:
            agc16_fast(ir, dst, self.agc)
        else:
            dst[...] = ir_to_unit(ir, self.agc)
        if not same:
            self._note_ir_size(ir.shape[:2], (h, w))
            letterbox_into(dst, ir_unit[0, 0], 0.0)
            pool.put(dst)
        fit = self.fit_for(h, w) if self.fit_for is not None else None
        model_ir = model_vis = None
        if fit is not None and not fit.native:
            mh, mw = fit.model
            x, y, iw, ih = fit.inner
            tmp = pool.get((ih, iw), np.float32) if (iw, ih) != (mw, mh) else None
            model_ir = pool.get((1, 1, mh, mw), np.float32)
            model_vis = pool.get((1, 1, mh, mw), np.float32)
            to_model(ir_unit[0, 0], fit, model_ir[0, 0], tmp)
            to_model(vis_y[0, 0], fit, model_vis[0, 0], tmp)
            if tmp is not None:
                pool.put(tmp)
            owned += [model_ir, model_vis]
        return Prepared(ir_unit, vis_y, ycrcb, parts, vis, fit, model_ir, model_vis,
                        pool=pool if isinstance(pool, BufferPool) else None, owned=owned)

    def _note_ir_size(self, ir_hw, vis_hw) -> None:
        key = (tuple(ir_hw), tuple(vis_hw))
        if key in self._noted:
            return
        self._noted.add(key)
        (ih, iw), (vh, vw) = key
        x, y, w, h = letterbox_rect((iw, ih), (vw, vh))
        if (w, h) == (vw, vh):
            how = f"scaled to {vw}x{vh} (same aspect ratio)"
        else:
            bands = f"{x}+{vw - w - x} px black bands left/right" if w < vw else f"{y}+{vh - h - y} px black bands top/bottom"
            how = f"scaled keeping its aspect ratio to {w}x{h}, centred in the VIS frame, with {bands}"
        text = (f"IR frames are {iw}x{ih} but VIS frames {vw}x{vh} and no --registration is given: IR is {how}, "
                "assuming both cameras are centred on the same view; for a real alignment calibrate the rig "
                "(moefusion-calibrate register) and pass --registration")
        if self.on_note is not None:
            self.on_note("ir_size", text)


def postprocess(fused_y: np.ndarray, prep: Prepared, in_place: bool = True):
    """Fused luminance [h, w] in [0, 1] (at the model's size) -> image in the visible frame's
    format and size (as ``merge_visible``): BGR uint8 for a colour camera, gray for a gray one,
    an ``I420Frame`` for an I420 one (its Y replaced: in the frame itself when ``in_place``, else
    in a copy, so that the visible frame can still be shown beside it)."""
    pool = prep.pool or _NoPool()
    fh, fw = prep.vis_y.shape[2:]
    if prep.fit is not None and not prep.fit.native:
        native = from_model(fused_y, prep.fit, pool.get((fh, fw), np.float32))
        prep.owned.append(native)
        fused_y = native
    if isinstance(prep.vis, I420Frame):
        out = prep.vis
        if not in_place:
            out = I420Frame(pool.get(out.data.shape, np.uint8), fw, fh)
            np.copyto(out.data, prep.vis.data)
            prep.owned.append(out.data)
        scratch = pool.get((fh, fw), np.float32)
        unit_to_y(fused_y, out.y, scratch)
        pool.put(scratch)
        return out
    if prep.parts is not None:
        return merge_visible(fused_y, prep.parts)
    _, clamped = cv2.threshold(fused_y, 0.0, 0.0, cv2.THRESH_TOZERO, dst=pool.get((fh, fw), np.float32))  # < 0 -> 0
    y8 = cv2.convertScaleAbs(clamped, dst=pool.get((fh, fw), np.uint8), alpha=255.0)  # rounds, saturates at 255
    pool.put(clamped)
    if prep.ycrcb is None:
        prep.owned.append(y8)
        return y8
    ycrcb = prep.ycrcb  # owned by this frame: overwrite Y in place
    cv2.insertChannel(y8, ycrcb, 0)
    pool.put(y8)
    bgr = cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR, dst=pool.get((fh, fw, 3), np.uint8))
    prep.owned.append(bgr)
    return bgr


def attention_to_frame(attention: np.ndarray | None, prep: Prepared) -> np.ndarray | None:
    """The attention map [h, w] at the model's size -> the frame's size."""
    if attention is None or prep.fit is None or prep.fit.native:
        return attention
    return from_model(attention, prep.fit)


def to_bgr8(img) -> np.ndarray:
    if isinstance(img, I420Frame):
        return img.to_bgr()
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        else:
            img = cv2.convertScaleAbs(np.clip(img, 0, 1), alpha=255.0)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img


def _label(img: np.ndarray, text: str) -> np.ndarray:
    scale = max(0.4, img.shape[0] / 700)
    th = max(1, int(round(scale * 1.5)))
    cv2.putText(img, text, (6, int(18 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
    cv2.putText(img, text, (6, int(18 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), th, cv2.LINE_AA)
    return img


def compose(view: str, fused, prep: Prepared, attention: np.ndarray | None):
    """The output frame for ``--view``: fused (as ``postprocess`` made it: BGR, or I420 on the
    fast path) | side-by-side (IR, VIS, fused) | grid (IR, VIS / fused, attention) (BGR uint8)."""
    if view == "fused":
        return fused if isinstance(fused, I420Frame) else to_bgr8(fused)
    out = to_bgr8(fused)
    ir = to_bgr8(cv2.convertScaleAbs(prep.ir_unit[0, 0], alpha=255.0))
    vis = to_bgr8(prep.vis)
    tiles = [_label(ir, "IR"), _label(vis.copy() if vis is prep.vis else vis, "VIS"), _label(out.copy(), "fused")]
    if view == "side-by-side":
        return cv2.hconcat(tiles)
    if attention is not None:
        att = cv2.applyColorMap(cv2.convertScaleAbs(np.maximum(attention, 0.0), alpha=255.0), cv2.COLORMAP_INFERNO)
        att = _label(att, "attention")
    else:
        att = _label(np.zeros_like(out), "attention: n/a for this backend")
    return cv2.vconcat([cv2.hconcat(tiles[:2]), cv2.hconcat([tiles[2], att])])


def draw_overlay(img, lines: list[str]):
    """FPS/latency text in the bottom-left corner (in place; on an I420 frame in its Y plane:
    white on black instead of yellow)."""
    if isinstance(img, I420Frame):
        # luma: white text on black; chroma under the text neutral, so it is not tinted by the picture
        h = img.height
        band = min(h, int(max(0.4, h / 900) * 22 + 4) * len(lines) + 16) & ~1
        mask = np.zeros((band, img.width), np.uint8)
        draw_overlay_gray(img.y[h - band:], lines, mask, full_h=h)
        cmask = cv2.resize(mask, (img.width // 2, band // 2), interpolation=cv2.INTER_AREA) > 0
        img.u[(h - band) // 2:][cmask] = 128
        img.v[(h - band) // 2:][cmask] = 128
        return img
    scale = max(0.4, img.shape[0] / 900)
    th = max(1, int(round(scale * 1.5)))
    step = int(22 * scale) + 4
    y = img.shape[0] - 8 - step * (len(lines) - 1)
    for line in lines:
        cv2.putText(img, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
        cv2.putText(img, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 255, 255), th, cv2.LINE_AA)
        y += step
    return img


def draw_overlay_gray(y: np.ndarray, lines: list[str], mask: np.ndarray | None = None, full_h: int | None = None):
    """``draw_overlay`` on a luma plane (limited range: black 16, white 235), laid out for a frame of
    ``full_h`` rows (default: the plane's), which may be its bottom band; ``mask``: where text went."""
    scale = max(0.4, (full_h or y.shape[0]) / 900)
    th = max(1, int(round(scale * 1.5)))
    step = int(22 * scale) + 4
    row = y.shape[0] - 8 - step * (len(lines) - 1)
    for line in lines:
        for plane, dark, light in ((y, 16, 235), (mask, 255, 255)):
            if plane is not None:
                cv2.putText(plane, line, (8, row), cv2.FONT_HERSHEY_SIMPLEX, scale, dark, th + 2, cv2.LINE_AA)
                cv2.putText(plane, line, (8, row), cv2.FONT_HERSHEY_SIMPLEX, scale, light, th, cv2.LINE_AA)
        row += step
    return y
