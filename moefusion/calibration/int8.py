"""INT8 calibration frames: paired frames -> the runtime's network inputs.

``moefusion-export --int8 --calib-data SRC`` reads its calibration frames here (its quantization stage,
``moefusion.export.quantize``, inserts Q/DQ nodes with NVIDIA ModelOpt); this module knows nothing of the
export (one direction only).

Frames come from an image folder pair (any layout ``moefusion.data`` knows: ir/+vis/, Ir/+Vis/,
infrared/+visible/, ir/+vi/; pairs matched by file name) or from two synchronised videos
``IR_VIDEO,VIS_VIDEO`` (frame i of one pairs with frame i of the other). The chosen frames are
spread evenly over the set.

Each pair becomes network inputs exactly as ``run_pipeline`` makes them: the capture's format and
size step (``moefusion.runtime.capture.to_role_format`` with the engine's input size as
``--ir-width/--ir-height`` and ``--vis-width/--vis-height``), then the runtime's
``moefusion.runtime.process.Preprocessor`` (= ``moefusion.data.preprocess.prepare_pair`` on the
same frames, see there). Pairs must already be registered (the runtime's ``--registration`` warp
is not applied here).

Command line: ``moefusion-calibrate int8 --calib-data DIR`` reads, preprocesses and counts the frames
(what ``moefusion-export --int8`` will calibrate on) and prints the export command.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..data.io import read_image
from ..errors import UserError
from ..runtime.capture import to_role_format
from ..runtime.process import Preprocessor
from ..runtime.uri import StreamOptions

log = logging.getLogger("moefusion.calibration")

MIN_CALIB_FRAMES = 8  # below this, calibration histograms are noise
DEFAULT_CALIB_FRAMES = 256


def network_inputs(ir_raw: np.ndarray, vis_raw: np.ndarray, size: tuple[int, int] | None = None):
    """Raw frames (as read from files/cameras) -> (ir_unit, vis_y), float32 [1, 1, H, W], as run_pipeline.

    ``size`` = (H, W) of the engine input: the frames are scaled to it the way the runtime's capture
    scales to ``--*-width/--*-height``. None: the visible frame's own size.
    """
    opts = StreamOptions() if size is None else StreamOptions(width=int(size[1]), height=int(size[0]))
    ir = to_role_format(ir_raw, "ir", opts)
    vis = to_role_format(vis_raw, "vis", opts)
    prep = Preprocessor()(ir, vis)
    return prep.ir_unit, prep.vis_y


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n), then the others (spares for unreadable ones)."""
    if n <= 0:
        return []
    first = sorted({round(float(x)) for x in np.linspace(0, n - 1, num=min(k, n))})
    chosen = set(first)
    return first + [i for i in range(n) if i not in chosen]


@dataclass
class _Pair:
    id: str
    ir: object  # a path, or a frame index for videos
    vis: object


class CalibrationData:
    """The calibration frames of ``spec`` (a folder, or 'IR_VIDEO,VIS_VIDEO'), validated up front.

    Raises UserError naming the source and the count when fewer than ``frames`` usable pairs exist.
    """

    def __init__(self, spec: str, frames: int = DEFAULT_CALIB_FRAMES, size: tuple[int, int] | None = None,
                 flag: str = "--calib-data"):
        self.spec, self.frames, self.size, self.flag = str(spec), int(frames), size, flag
        if self.frames < MIN_CALIB_FRAMES:
            raise UserError(f"--calib-frames {frames}: INT8 calibration needs at least {MIN_CALIB_FRAMES} frames "
                            "(a few hundred recommended)")
        self.skipped: list[tuple[str, str]] = []
        parts = [p.strip() for p in self.spec.split(",")] if "," in self.spec else [self.spec]
        if len(parts) == 2:
            self.kind = "videos"
            self.videos = (Path(os.path.expanduser(parts[0])), Path(os.path.expanduser(parts[1])))
            for p in self.videos:
                if not p.is_file():
                    raise UserError(f"{flag} {self.spec}: no such video file {p}; give IR_VIDEO,VIS_VIDEO")
            candidates = self._video_candidates()
        elif len(parts) == 1 and Path(os.path.expanduser(parts[0])).is_dir():
            self.kind = "folder"
            self.root = Path(os.path.expanduser(parts[0]))
            candidates = self._folder_candidates()
        else:
            raise UserError(f"{flag} {self.spec}: not a folder and not IR_VIDEO,VIS_VIDEO; give a folder with "
                            "ir/ and vis/ images (or infrared/+visible/, ir/+vi/) or two videos separated by a comma")
        self.candidates = len(candidates)
        order, pos, good = _spread(len(candidates), self.frames), 0, []
        while len(good) < self.frames and pos < len(order):
            chunk = order[pos:pos + self.frames - len(good)]
            pos += len(chunk)
            good += self._usable(candidates, chunk)
        self.pairs = [candidates[i] for i in sorted(good)]
        if len(self.pairs) < self.frames:
            why = f" ({len(self.skipped)} unusable, e.g. {self.skipped[0][1]})" if self.skipped else ""
            raise UserError(f"{flag} {self.spec}: {len(self.pairs)} usable IR/VIS pairs{why}, --calib-frames asks "
                            f"for {self.frames}; add pairs or lower --calib-frames (at least {MIN_CALIB_FRAMES})")

    def _usable(self, candidates, indices) -> list[int]:
        """The indices whose pair can be read (the others go to ``skipped`` with the reason)."""
        if self.kind == "videos":
            read = {p.ir for p, _, _ in self._read_video_frames([candidates[i] for i in indices])}
            for i in indices:
                if candidates[i].ir not in read:
                    self.skipped.append((candidates[i].id, f"frame {candidates[i].ir} cannot be read from both videos"))
            return [i for i in indices if candidates[i].ir in read]
        ok = []
        for i in indices:
            try:
                self._read(candidates[i])
            except UserError as e:
                self.skipped.append((candidates[i].id, str(e)))
                continue
            ok.append(i)
        return ok

    # -- sources -------------------------------------------------------------------------------
    def _folder_candidates(self) -> list[_Pair]:
        from ..data.datasets import PairedDataset  # here: imports torch (+2.1 s CPU, 3.7 s wall on moefusion-calibrate --help)

        ds = PairedDataset(self.root, boxes=None, scan="header")  # UserError when no IR/VIS folders
        self.skipped += list(ds.skipped)
        return [_Pair(i, *ds.paths(k)) for k, i in enumerate(ds.ids)]

    def _video_candidates(self) -> list[_Pair]:
        counts = []
        for p in self.videos:
            cap = cv2.VideoCapture(str(p))
            if not cap.isOpened():
                raise UserError(f"{self.flag} {self.spec}: OpenCV cannot open the video {p}")
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if n <= 0:  # no count in the container: count by reading
                n = 0
                while cap.grab():
                    n += 1
            cap.release()
            counts.append(n)
        if counts[0] != counts[1]:
            log.warning("%s: %d IR frames but %d VIS frames; using the first %d of each", self.spec, counts[0],
                        counts[1], min(counts))
        return [_Pair(f"frame{i}", i, i) for i in range(min(counts))]

    @staticmethod
    def _read(pair: _Pair):
        return read_image(pair.ir), read_image(pair.vis)

    def _read_video_frames(self, pairs: list[_Pair]):
        """[(pair, ir, vis)] for the given frame indices, reading both videos once, in order."""
        want = {p.ir: p for p in pairs}
        caps = [cv2.VideoCapture(str(p)) for p in self.videos]
        out = []
        try:
            last = max(want) if want else -1
            for i in range(last + 1):
                if i in want:
                    frames = [c.read() for c in caps]
                    if all(ok for ok, _ in frames):
                        out.append((want[i], frames[0][1], frames[1][1]))
                elif not all(c.grab() for c in caps):
                    break
        finally:
            for c in caps:
                c.release()
        return out

    # -- frames and batches ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.pairs)

    def raw_pairs(self):
        """(id, ir, vis) raw frames of the chosen pairs, in source order."""
        if self.kind == "folder":
            for p in self.pairs:
                ir, vis = self._read(p)
                yield p.id, ir, vis
        else:
            for p, ir, vis in self._read_video_frames(self.pairs):
                yield p.id, ir, vis

    def inputs(self):
        """(id, ir_unit, vis_y) network inputs [1, 1, H, W] float32 of the chosen pairs."""
        for pid, ir, vis in self.raw_pairs():
            ir_u, vis_y = network_inputs(ir, vis, self.size)
            yield pid, ir_u, vis_y

    def batches(self, batch: int = 1):
        """{'ir': [B,1,H,W], 'vis': [B,1,H,W]} float32, C-contiguous; a last incomplete batch is dropped."""
        irs, viss = [], []
        for _, ir_u, vis_y in self.inputs():
            if self.size is None and irs and ir_u.shape != irs[0].shape:
                raise UserError(f"{self.flag} {self.spec}: frames of different sizes; give the engine size (--imgsz)")
            irs.append(ir_u)
            viss.append(vis_y)
            if len(irs) == batch:
                yield {"ir": np.ascontiguousarray(np.concatenate(irs)), "vis": np.ascontiguousarray(np.concatenate(viss))}
                irs, viss = [], []
        if irs:
            log.info("calibration: last %d frame(s) do not fill a batch of %d; not used", len(irs), batch)

    def describe(self) -> str:
        what = f"folder {self.root}" if self.kind == "folder" else f"videos {self.videos[0]}, {self.videos[1]}"
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "native size"
        return (f"{len(self.pairs)} pairs of {self.candidates} from {what} at {size}"
                + (f" ({len(self.skipped)} unusable)" if self.skipped else ""))


# ------------------------------------------------------------------------------------------------
# moefusion-calibrate int8
# ------------------------------------------------------------------------------------------------

def add_int8_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-data", required=True, metavar="DIR|IR_VIDEO,VIS_VIDEO",
                   help="calibration pairs: a folder with ir/ and vis/ images (or infrared/+visible/, ir/+vi/), "
                        "or two synchronised videos")
    p.add_argument("--calib-frames", type=int, default=DEFAULT_CALIB_FRAMES, metavar="N",
                   help=f"pairs to use, spread over the set (default {DEFAULT_CALIB_FRAMES}; at least {MIN_CALIB_FRAMES})")
    p.add_argument("--imgsz", type=int, nargs="+", metavar="H W", default=None,
                   help="engine input size (default 480 640); frames are scaled to it as the runtime's capture does")
    p.add_argument("--check", action="store_true",
                   help="accepted for compatibility: this command always only reads and reports the frames")


def run_int8(args: argparse.Namespace) -> int:
    """Read and preprocess the calibration frames, report them, and print the export command that uses them."""
    imgsz = (480, 640)
    if args.imgsz is not None:
        if len(args.imgsz) not in (1, 2) or min(args.imgsz) < 1:
            raise UserError(f"--imgsz {' '.join(map(str, args.imgsz))}: give H W (or one size for both)")
        imgsz = (args.imgsz[0], args.imgsz[-1])
    data = CalibrationData(args.calib_data, args.calib_frames, imgsz)
    lo, hi = np.inf, -np.inf
    for _, ir_u, vis_y in data.inputs():
        lo, hi = min(lo, ir_u.min(), vis_y.min()), max(hi, ir_u.max(), vis_y.max())
    print(f"calibration data OK: {data.describe()}; inputs in [{lo:.3f}, {hi:.3f}]")
    print(f"build the INT8 engine: moefusion-export --weights W.pt --format engine --int8 --calib-data {args.calib_data} "
          f"--calib-frames {args.calib_frames} --imgsz {imgsz[0]} {imgsz[1]}")
    return 0
