"""moefusion-fuse: fuse an infrared/visible image pair, or two folders of pairs, offline.

    moefusion-fuse --ir ir.png --vis vis.png -o fused.png
    moefusion-fuse --ir data/ir --vis data/vis -o out/          # pairs matched by file name
    moefusion-fuse --ir seq/ir --vis seq/vis -o out/ --sequence # the frames of one video, in order
    moefusion-fuse --ir a.tiff --vis b.jpg -o f.png --model my.pt

The output has the visible image's size and format: BGR if the visible image is colour (fused
luminance + the visible chroma), gray otherwise. 16-bit thermal goes through a percentile AGC.

Folders: each pair is fused alone, unless --sequence: the pairs, in natural order of their names
(frame_2 before frame_10), are the frames of one video, fused as one stream (``model.stream()``, the
model's stream mode: temporal state carried from frame to frame, as run_pipeline does; see
docs/model.md). The first frame is the same either way.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import moefusion

from .data.io import read_image
from .data.pairs import pair_folders
from .errors import UserError, cli_entry

log = logging.getLogger("moefusion.fuse")


def write_image(path: Path, img: np.ndarray) -> None:
    """cv2.imwrite through a temp file and a rename: never a half-written image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix or ".png"
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if not cv2.imwrite(tmp, img):
            raise UserError(f"cannot write {path}: OpenCV has no encoder for {suffix!r}; use .png, .jpg or .tif")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moefusion-fuse", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--ir", required=True, help="infrared image or folder")
    p.add_argument("--vis", required=True, help="visible image or folder (same names as --ir)")
    p.add_argument("-o", "--output", required=True, help="output image (for a pair) or folder (for folders)")
    p.add_argument("--model", help="checkpoint (.pt), .onnx or .engine (default: bundled weights)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (checkpoints only; default: CUDA if available)")
    p.add_argument("--ext", default=".png", help="output extension for folders (default .png)")
    p.add_argument("--sequence", action="store_true",
                   help="folders: the pairs in natural name order are one video, fused as one stream (the "
                        "model's stream mode: steadier over time); default: each pair alone")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    ir, vis, out = Path(args.ir), Path(args.vis), Path(args.output)
    for flag, path in (("--ir", ir), ("--vis", vis)):
        if not path.exists():
            raise UserError(f"{flag} {path}: no such file or folder")
    if ir.is_dir() != vis.is_dir():
        raise UserError("--ir and --vis must both be files or both be folders")
    if ir.is_dir():
        if out.exists() and not out.is_dir():
            raise UserError(f"-o {out}: is a file; give a folder for folder inputs")
        ext = args.ext if args.ext.startswith(".") else "." + args.ext
        jobs = [(p.id, p.ir, p.vis, out / f"{p.id}{ext}") for p in pair_folders(ir, vis)]
    else:
        if args.sequence:
            raise UserError("--sequence fuses a folder of frames as one video; give folders to --ir and --vis")
        target = out / f"{vis.stem}.png" if out.is_dir() else out
        jobs = [(vis.stem, ir, vis, target)]

    kw = {"device": args.device} if args.device else {}
    model = moefusion.load(args.model, **kw)
    fuser = model
    if args.sequence:
        if not callable(getattr(model, "stream", None)):
            raise UserError(f"--sequence: {args.model or 'the model'} has no stream mode (model.stream()); "
                            "use a checkpoint (.pt), or drop --sequence to fuse each pair alone")
        fuser = model.stream()
        log.info("--sequence: %d frames fused as one stream, in natural name order", len(jobs))
    t0 = time.perf_counter()
    for n, (image_id, ir_path, vis_path, target) in enumerate(jobs, 1):
        fused = fuser.fuse(read_image(ir_path), read_image(vis_path))
        write_image(target, fused)
        log.info("[%d/%d] %s -> %s", n, len(jobs), image_id, target)
    dt = time.perf_counter() - t0
    log.info("fused %d pair(s) in %.2f s (%.1f ms/pair)", len(jobs), dt, 1000 * dt / len(jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
