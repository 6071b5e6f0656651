"""``moefusion-export`` (also ``python -m moefusion.export``): checkpoint -> ONNX / TensorRT engine / Triton.

    moefusion-export --weights W.pt --format onnx --dynamic
    moefusion-export --weights W.pt --format engine --half              # on the Jetson that runs it
    moefusion-export --weights W.pt --format engine --int8 --calib-data pairs/
    moefusion-export --weights W.pt --format triton -o model_repository --dispatch dense --dynamic --batch 8
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError, cli_entry
from ..kernels.plugins import PLUGIN_ENV
from .api import run_export
from .formats import (
    DEFAULT_CALIB_FRAMES,
    FORMATS,
    PLUGIN_MODES,
    TRITON_PLATFORMS,
    format_table,
    parse_dynamic,
    parse_hw,
)
from .wrapper import DISPATCHES


def _imgsz(values) -> tuple[int, int] | None:
    if values is None:
        return None
    if len(values) not in (1, 2):
        raise UserError(f"--imgsz {' '.join(map(str, values))}: give H W (or one size for both)")
    return parse_hw("x".join(str(v) for v in (values * 2)[:2]), "--imgsz")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="moefusion-export",
        description="Export MoE-Fusion for deployment: ONNX with live expert routing, TensorRT engines, "
                    "Triton model repositories.",
        epilog="formats:\n" + format_table() + "\n\nSee docs/export.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Every default is None: the formats table decides what was given and what it means.
    p.add_argument("--weights", metavar="W.pt", help="moefusion checkpoint (default: the bundled weights); "
                   "or an .onnx written by moefusion-export (engine/triton: built as is, an fp32 one converted for "
                   "--half or quantized for --int8), or an .engine (triton: packaged as is)")
    p.add_argument("--format", choices=list(FORMATS), default=None, help="what to write (default onnx)")
    p.add_argument("-o", "--output", metavar="PATH", help="output file (.onnx / .engine) or Triton repository folder "
                   "(default: <weights name>[.fp16|.int8].<ext> in the current folder; model_repository/)")
    p.add_argument("--imgsz", type=int, nargs="+", metavar="PX", help="input height and width, H W (default 480 640); "
                   "with --dynamic the size TensorRT optimises for")
    p.add_argument("--dynamic", nargs="?", const="default", metavar="MINHxMINW:MAXHxMAXW",
                   help="dynamic height/width (default range 64x64:1088x1920, widened to contain --imgsz)")
    p.add_argument("--batch", type=int, metavar="N", help="batch size (default 1): fixed for the sparse dispatch; "
                   "the maximum of a dynamic batch for --dispatch dense --dynamic")
    p.add_argument("--dispatch", choices=DISPATCHES, default=None,
                   help="sparse (default): only the k chosen experts run, fixed batch; dense: every expert runs, "
                        "any batch")
    prec = p.add_argument_group("precision (from the ONNX: strongly typed TensorRT >= 10, TensorRT-RTX)")
    prec.add_argument("--half", action="store_true", default=None,
                      help="FP16: an fp16 ONNX (gates kept fp32); engines: an error where the GPU lacks fast FP16")
    prec.add_argument("--int8", action="store_true", default=None,
                      help="INT8: Q/DQ nodes inserted by NVIDIA ModelOpt (pip install 'moefusion[int8]'), calibrated on "
                           "--calib-data; experts fp16, gates fp32 (engine/triton)")
    prec.add_argument("--calib-data", metavar="DIR|IR_VIDEO,VIS_VIDEO", help="calibration pairs for --int8")
    prec.add_argument("--calib-frames", type=int, metavar="N", help=f"pairs to calibrate on (default {DEFAULT_CALIB_FRAMES})")
    trt = p.add_argument_group("TensorRT build")
    trt.add_argument("--workspace", type=float, metavar="GiB", help="builder workspace limit")
    trt.add_argument("--plugins", choices=PLUGIN_MODES, default=None,
                     help="the MoE gate/combine as TensorRT plugins: auto (default: when the plugin library is "
                          "found, for fp32 sparse engines of full TensorRT), on, off; TensorRT-RTX takes none")
    trt.add_argument("--plugin-lib", action="append", dest="plugin_libs", metavar="SO",
                     help=f"TensorRT plugin library (default ${PLUGIN_ENV} or build/kernels/)")
    trt.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache ('none' to disable; default "
                     "~/.cache/moefusion/tensorrt/<module>-<version>-<gpu>.timing; a no-op with TensorRT-RTX)")
    trt.add_argument("--rebuild", action="store_true", default=None, help="build even if an up-to-date engine exists")
    p.add_argument("--stream", action="store_true", default=None,
                   help="the stream graph: temporal state as extra inputs state_* and outputs next_* that the runtime "
                        "carries from frame to frame (run_pipeline's stream mode; docs/export.md)")
    p.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default 18; 17 for TensorRT 8.6 / JetPack 6.0 "
                   "and with --detections)")
    p.add_argument("--detections", action="store_true", default=None,
                   help="also output the detectors' boxes, scores and labels per modality (ONNX, batch 1)")
    tri = p.add_argument_group("Triton")
    tri.add_argument("--triton-platform", choices=TRITON_PLATFORMS, default=None,
                     help="onnxruntime (default; model.onnx) or tensorrt (model.plan built here with full TensorRT; "
                          "not with TensorRT-RTX)")
    tri.add_argument("--triton-name", metavar="NAME", help="model name (default moefusion_<preset>)")
    tri.add_argument("--triton-instances", type=int, metavar="N", help="model instances per GPU (default 1)")
    p.add_argument("-v", "--verbose", action="store_true", help="log TensorRT and export details")
    return p


def options_from_args(args: argparse.Namespace) -> dict:
    given = {k: getattr(args, k) for k in (
        "weights", "format", "output", "batch", "dispatch", "half", "int8", "calib_data", "calib_frames",
        "workspace", "plugins", "plugin_libs", "opset", "detections", "timing_cache", "rebuild",
        "triton_platform", "triton_name", "triton_instances", "stream")}
    given["imgsz"] = _imgsz(args.imgsz)
    if args.dynamic is not None:
        given["dynamic"] = parse_dynamic(args.dynamic, given["imgsz"] or (480, 640))
    return given


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:
        logging.getLogger("moefusion.export").setLevel(logging.WARNING)
    result = run_export(options_from_args(args))
    for line in result.lines:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
