"""``moefusion-calibrate``: camera calibration tools, one subcommand each.

    moefusion-calibrate register --points 10,12:40,31 300,15:330,30 ... --ir-size 640x512 --vis-size 1280x720 -o reg.yaml
    moefusion-calibrate register --points-file pairs.csv --ir-size 640x512 --vis-size 1280x720 -o reg.yaml
    moefusion-calibrate register --ir ir_board.png --vis vis_board.png --pattern chessboard:9x6 -o reg.yaml --preview check.png
    moefusion-calibrate register --ir /dev/video1 --vis /dev/video0 --pattern chessboard:9x6 -o reg.yaml   # live cameras

Subcommands register themselves in ``SUBCOMMANDS`` (name -> (add_arguments, run)); add one
(e.g. ``int8``) by writing those two functions and one line there.
"""
from __future__ import annotations

import argparse
import os
import sys

import cv2
import numpy as np

from ..data.registration import Registration, save_registration
from ..errors import UserError, cli_entry
from ..files import IMAGE_EXTS
from ..runtime.capture import SourceError, Status, make_capture
from ..runtime.uri import StreamOptions, parse_input_uri
from .int8 import add_int8_args, run_int8
from .register import (
    estimate_homography,
    overlay_preview,
    parse_point_pairs,
    read_point_file,
    register_from_images,
)


def _size(text: str, flag: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
        return w, h
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected WIDTHxHEIGHT, e.g. 640x512")


def _is_stream(item: str) -> bool:
    return "://" in item or item.startswith("/dev/video")


def _images(items: list[str], flag: str) -> list[str]:
    """Image files (folders expanded); camera/stream URIs are kept as they are (see _read)."""
    files = []
    for it in items:
        if os.path.isdir(it):
            files += sorted(os.path.join(it, f) for f in os.listdir(it) if f.lower().endswith(IMAGE_EXTS))
        elif os.path.isfile(it) and it.lower().endswith(IMAGE_EXTS):
            files.append(it)
        elif _is_stream(it) or os.path.isfile(it):
            files.append(it)
        else:
            raise UserError(f"{flag} {it}: no such file or folder")
    if not files:
        raise UserError(f"{flag}: no images found")
    return files


def grab_frame(uri_text: str, flag: str, skip: int = 10) -> np.ndarray:
    """One frame from a camera, stream or video (after ``skip`` frames, so exposure/AGC settle)."""
    role = "ir" if flag == "--ir" else "vis"
    uri = parse_input_uri(uri_text, flag)
    cap = make_capture(uri, StreamOptions(), role)
    try:
        cap.open()
        frame = None
        for _ in range(skip + 1):
            st, f = cap.read(5.0)
            if st is not Status.OK:
                break
            frame = f
    except SourceError as e:
        raise UserError(str(e))
    finally:
        cap.close()
    if frame is None:
        raise UserError(f"{flag} {uri_text}: no frame could be read")
    return frame.image


def _read(path: str, flag: str) -> np.ndarray:
    if not path.lower().endswith(IMAGE_EXTS):
        return grab_frame(path, flag)
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"{flag} {path}: cannot read this image")
    return img


# -- register ----------------------------------------------------------------------------------

def add_register_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("correspondences (points, or a pattern in images)")
    src.add_argument("--points", nargs="+", metavar="X,Y:U,V",
                     help="point pairs: IR pixel X,Y and the same scene point in VIS, U,V (4 or more)")
    src.add_argument("--points-file", metavar="FILE",
                     help="point pairs from a file: lines 'ir_x ir_y vis_x vis_y' (CSV or spaces), or JSON/YAML "
                          "{ir: [[x,y],...], vis: [[u,v],...]}")
    src.add_argument("--ir", nargs="+", metavar="IMG",
                     help="IR image(s) or folder showing the pattern, or a camera/stream URI (/dev/video1, csi://0, "
                          "rtsp://..., a video file) to grab a frame from")
    src.add_argument("--vis", nargs="+", metavar="IMG", help="VIS image(s), folder or camera URI, same order as --ir")
    src.add_argument("--pattern", metavar="KIND:COLSxROWS",
                     help="chessboard:9x6 (inner corners), circles:4x11 or acircles:4x11; a heated/cooled target")
    p.add_argument("--ir-size", metavar="WxH", help="IR image size (needed with points; taken from --ir images)")
    p.add_argument("--vis-size", metavar="WxH", help="VIS image size (needed with points; taken from --vis images)")
    p.add_argument("--ransac", type=float, default=3.0, metavar="PX", help="RANSAC inlier threshold (default 3 px)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="registration file to write (.yaml or .json)")
    p.add_argument("--preview", metavar="PNG", help="also write a check image (VIS with warped IR edges and the crop)")


def run_register(args: argparse.Namespace) -> int:
    if not args.output.lower().endswith((".yaml", ".yml", ".json")):
        raise UserError(f"--output {args.output}: use a .yaml, .yml or .json file name")
    have_points = bool(args.points or args.points_file)
    if args.preview:  # checked before anything is computed or written
        if not (args.ir and args.vis):
            raise UserError("--preview needs the --ir and --vis images (the check image draws the warped IR "
                            "edges on VIS); add them, or drop --preview")
        if not cv2.haveImageWriter(args.preview):
            raise UserError(f"--preview {args.preview}: cannot write that image type; use a .png name")
    if args.pattern and have_points:
        raise UserError("give either point pairs (--points/--points-file) or --pattern with --ir/--vis images, not both")
    preview_pair = None
    if args.pattern:
        if not args.ir or not args.vis:
            raise UserError("--pattern needs --ir and --vis images of the pattern")
        ir_files, vis_files = _images(args.ir, "--ir"), _images(args.vis, "--vis")
        if len(ir_files) != len(vis_files):
            raise UserError(f"--ir has {len(ir_files)} images but --vis has {len(vis_files)}; give them in pairs")
        irs = [_read(f, "--ir") for f in ir_files]
        viss = [_read(f, "--vis") for f in vis_files]
        reg, used = register_from_images(irs, viss, args.pattern, ransac_px=args.ransac)
        print(f"pattern found in {used} of {len(irs)} image pairs")
        preview_pair = (irs[0], viss[0])
    elif have_points:
        ir_pts, vis_pts = [], []
        if args.points:
            a, b = parse_point_pairs(args.points)
            ir_pts.append(a)
            vis_pts.append(b)
        if args.points_file:
            a, b = read_point_file(args.points_file)
            ir_pts.append(a)
            vis_pts.append(b)
        ir_pts, vis_pts = np.concatenate(ir_pts), np.concatenate(vis_pts)
        if args.ir and args.vis:
            preview_pair = (_read(_images(args.ir, "--ir")[0], "--ir"), _read(_images(args.vis, "--vis")[0], "--vis"))
        if args.ir_size:
            ir_size = _size(args.ir_size, "--ir-size")
        elif preview_pair is not None:
            ir_size = preview_pair[0].shape[1::-1]
        else:
            raise UserError("--ir-size WxH is needed with point pairs (or give an --ir image)")
        if args.vis_size:
            vis_size = _size(args.vis_size, "--vis-size")
        elif preview_pair is not None:
            vis_size = preview_pair[1].shape[1::-1]
        else:
            raise UserError("--vis-size WxH is needed with point pairs (or give a --vis image)")
        H, mask, rms = estimate_homography(ir_pts, vis_pts, ransac_px=args.ransac)
        reg = Registration(H, ir_size, vis_size, None, rms, len(ir_pts), int(mask.sum()), "points")
    else:
        raise UserError("give point pairs (--points X,Y:U,V ... or --points-file FILE) or a pattern "
                        "(--ir IMG --vis IMG --pattern chessboard:COLSxROWS)")
    if args.preview and preview_pair is None:
        raise UserError("--preview needs the --ir and --vis images")
    save_registration(reg, args.output)
    x, y, w, h = reg.crop
    print(f"wrote {args.output}: {reg.inliers}/{reg.points} inliers, RMS {reg.rms_px:.3f} px, "
          f"common field of view {w}x{h} at ({x}, {y}) in VIS pixels")
    if reg.rms_px is not None and reg.rms_px > 3.0:
        print(f"warning: RMS {reg.rms_px:.2f} px is high; check the point pairs", file=sys.stderr)
    if args.preview:
        if not cv2.imwrite(args.preview, overlay_preview(preview_pair[0], preview_pair[1], reg)):
            raise UserError(f"--preview {args.preview}: cannot write it (use a .png name in a writable folder)")
        print(f"wrote {args.preview}")
    return 0


SUBCOMMANDS = {
    "register": ("estimate the IR-to-VIS homography (from point pairs or a pattern) for run_pipeline --registration",
                 add_register_args, run_register),
    "int8": ("INT8 calibration frames: read, preprocess and count IR/VIS pairs for moefusion-export --int8",
             add_int8_args, run_int8),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moefusion-calibrate", description="Calibration tools for MoE-Fusion Edge.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, add_args, run) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        add_args(sp)
        sp.set_defaults(func=run)
    return p


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
