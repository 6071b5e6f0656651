"""The export formats: one table drives argument validation, the CLI help and the benchmark.

Each row says which options a format accepts and which Python modules it needs. ``validate``
turns the options a user gave (None = not given) into complete ``ExportOptions`` or raises a
``UserError`` naming the conflicting or unsupported flags. No asserts: user input never reaches
an ``assert``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from ..calibration.int8 import DEFAULT_CALIB_FRAMES, MIN_CALIB_FRAMES
from ..errors import UserError
from .wrapper import DISPATCHES

# Option name (ExportOptions field) -> the flag users type.
FLAGS = {
    "weights": "--weights", "format": "--format", "output": "-o/--output", "imgsz": "--imgsz",
    "dynamic": "--dynamic", "batch": "--batch", "dispatch": "--dispatch", "half": "--half", "int8": "--int8",
    "calib_data": "--calib-data", "calib_frames": "--calib-frames",
    "workspace": "--workspace", "plugins": "--plugins", "plugin_libs": "--plugin-lib", "opset": "--opset",
    "detections": "--detections", "timing_cache": "--timing-cache", "rebuild": "--rebuild",
    "triton_platform": "--triton-platform", "triton_name": "--triton-name",
    "triton_instances": "--triton-instances", "stream": "--stream",
}

_COMMON = frozenset({"weights", "format", "output", "imgsz", "dynamic", "batch", "dispatch", "half", "plugins",
                     "plugin_libs", "opset", "stream"})
_TRT = frozenset({"int8", "calib_data", "calib_frames", "workspace", "timing_cache", "rebuild"})


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]  # accepted output suffixes, first = default ("" = a folder)
    description: str
    modules: tuple[str, ...]  # importable modules it needs ("tensorrt" = tensorrt or tensorrt_rtx)
    options: frozenset[str]
    runs_here: str  # how the benchmark can time it on a CPU machine ("onnxruntime" or "")


FORMATS: dict[str, Format] = {
    "onnx": Format(
        "onnx", (".onnx",), "ONNX with in-graph routing (ONNX Runtime, trtexec, DeepStream's nvinfer)",
        ("onnx", "onnxscript"), _COMMON | {"detections"}, "onnxruntime",
    ),
    "engine": Format(
        "engine", (".engine", ".plan", ".trt"),
        "TensorRT serialized engine (plain, loadable by trtexec/DeepStream) + <engine>.json sidecar",
        ("onnx", "onnxscript", "tensorrt"), _COMMON | _TRT, "",
    ),
    "triton": Format(
        "triton", ("",), "Triton Inference Server model repository (config.pbtxt + 1/model.onnx or model.plan)",
        ("onnx", "onnxscript"), _COMMON | _TRT | {"triton_platform", "triton_name", "triton_instances"},
        "onnxruntime",
    ),
}

PLUGIN_MODES = ("auto", "on", "off")
TRITON_PLATFORMS = ("onnxruntime", "tensorrt")
DEFAULT_IMGSZ = (480, 640)
DEFAULT_DYNAMIC = ((64, 64), (1088, 1920))
DEFAULT_OPSET = 18  # torch.onnx dynamo exporter; 17 and lower use the TorchScript exporter
DETECTIONS_OPSET = 17  # torchvision's detection heads export only through the TorchScript exporter
MIN_OPSET = 17


@dataclass
class ExportOptions:
    weights: str | None = None  # .pt checkpoint (or an .onnx / .engine to package); None = bundled default
    format: str = "onnx"
    output: str | None = None
    imgsz: tuple[int, int] = DEFAULT_IMGSZ  # (H, W): the static size, or the profile's optimum
    dynamic: tuple[tuple[int, int], tuple[int, int]] | None = None  # ((min H, min W), (max H, max W))
    batch: int = 1
    dispatch: str = "sparse"
    half: bool = False
    int8: bool = False
    calib_data: str | None = None
    calib_frames: int = DEFAULT_CALIB_FRAMES
    workspace: float | None = None  # GiB
    plugins: str = "auto"
    plugin_libs: list[str] = field(default_factory=list)
    opset: int = DEFAULT_OPSET
    detections: bool = False
    timing_cache: str | None = None
    rebuild: bool = False
    triton_platform: str = "onnxruntime"
    triton_name: str | None = None
    triton_instances: int = 1
    stream: bool = False  # the stream graph: temporal state as inputs state_* and outputs next_* (model/stream.py)

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp16" if self.half else "fp32"

    @property
    def batch_dynamic(self) -> bool:
        """Only the dense dispatch has a dynamic batch axis (sparse: ONNX Conv's group is static)."""
        return self.dispatch == "dense" and self.dynamic is not None

    def shapes(self) -> dict[str, tuple[int, int, int, int]]:
        """The TensorRT profile of the inputs: min / opt / max [B, 1, H, W]."""
        h, w = self.imgsz
        if self.dynamic is None:
            s = (self.batch, 1, h, w)
            return {"min": s, "opt": s, "max": s}
        (h0, w0), (h1, w1) = self.dynamic
        b0 = 1 if self.batch_dynamic else self.batch
        return {"min": (b0, 1, h0, w0), "opt": (self.batch, 1, h, w), "max": (self.batch, 1, h1, w1)}


def _flags(names) -> str:
    return ", ".join(FLAGS[n] for n in names)


def module_available(name: str) -> bool:
    if name == "tensorrt":
        return any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx"))
    return importlib.util.find_spec(name) is not None


def parse_hw(text: str, flag: str) -> tuple[int, int]:
    """'480x640' (H x W) or '512' (square) -> (H, W)."""
    try:
        parts = [int(p) for p in text.lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise UserError(f"{flag} {text!r}: expected HxW with positive integers, e.g. 480x640")
    return parts[0], parts[1]


def parse_dynamic(text: str | None, imgsz: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """'--dynamic' alone: a default range widened to contain imgsz; 'MINHxMINW:MAXHxMAXW' otherwise."""
    if text in (None, "", "default"):
        (h0, w0), (h1, w1) = DEFAULT_DYNAMIC
        return (min(h0, imgsz[0]), min(w0, imgsz[1])), (max(h1, imgsz[0]), max(w1, imgsz[1]))
    if ":" not in text:
        raise UserError(f"--dynamic {text!r}: expected MINHxMINW:MAXHxMAXW, e.g. 240x320:1080x1920")
    lo, hi = text.split(":", 1)
    return parse_hw(lo, "--dynamic"), parse_hw(hi, "--dynamic")


def validate(given: dict, *, onnx_source: bool = False) -> ExportOptions:
    """Options as given (None = not given) -> complete ExportOptions, or a UserError naming the flags.

    ``onnx_source``: --weights is an ONNX (a Q/DQ ONNX needs no --calib-data; the export's plan decides).
    """
    given = {k: v for k, v in given.items() if v is not None and v is not False and v != []}
    unknown = sorted(set(given) - set(FLAGS))
    if unknown:
        raise TypeError(f"unknown export option(s): {', '.join(unknown)}")
    fmt_name = given.get("format", "onnx")
    if fmt_name not in FORMATS:
        raise UserError(f"--format {fmt_name}: unknown; use one of {', '.join(FORMATS)}")
    fmt = FORMATS[fmt_name]
    unsupported = [n for n in given if n not in fmt.options]
    if unsupported:
        takers = sorted({f for n in unsupported for f, row in FORMATS.items() if n in row.options})
        raise UserError(f"{_flags(unsupported)} not supported with --format {fmt_name}"
                        + (f" (only with --format {'/'.join(takers)})" if takers else ""))
    opts = ExportOptions(**given)

    # -- values -----------------------------------------------------------------------------
    if min(opts.imgsz) < 1:
        raise UserError(f"--imgsz {opts.imgsz[0]} {opts.imgsz[1]}: height and width must be positive")
    if opts.batch < 1:
        raise UserError(f"--batch {opts.batch}: must be at least 1")
    if opts.dispatch not in DISPATCHES:
        raise UserError(f"--dispatch {opts.dispatch}: use one of {', '.join(DISPATCHES)}")
    if opts.plugins not in PLUGIN_MODES:
        raise UserError(f"--plugins {opts.plugins}: use one of {', '.join(PLUGIN_MODES)}")
    if opts.workspace is not None and not opts.workspace > 0:
        raise UserError(f"--workspace {opts.workspace}: must be a positive number of GiB")
    if opts.triton_platform not in TRITON_PLATFORMS:
        raise UserError(f"--triton-platform {opts.triton_platform}: use one of {', '.join(TRITON_PLATFORMS)}")
    if opts.triton_instances < 1:
        raise UserError(f"--triton-instances {opts.triton_instances}: must be at least 1")
    if opts.calib_frames < MIN_CALIB_FRAMES:
        raise UserError(f"--calib-frames {opts.calib_frames}: INT8 calibration needs at least "
                        f"{MIN_CALIB_FRAMES} frames (a few hundred recommended)")
    if opts.dynamic is not None:
        (h0, w0), (h1, w1) = opts.dynamic
        h, w = opts.imgsz
        if not (1 <= h0 <= h <= h1 and 1 <= w0 <= w <= w1):
            raise UserError(f"--dynamic {h0}x{w0}:{h1}x{w1} must contain --imgsz {h} {w} "
                            "(min <= imgsz <= max in each dimension)")

    # -- opset and exporter ---------------------------------------------------------------------
    import onnx

    max_opset = onnx.defs.onnx_opset_version()
    if "opset" not in given:
        opts.opset = DETECTIONS_OPSET if opts.detections else DEFAULT_OPSET
    if not MIN_OPSET <= opts.opset <= max_opset:
        raise UserError(f"--opset {opts.opset}: use {MIN_OPSET}..{max_opset} (17 for TensorRT 8.6 / JetPack 6.0)")
    if opts.detections and opts.opset > DETECTIONS_OPSET:
        raise UserError(f"--detections with --opset {opts.opset}: the detection heads (NMS, RoIAlign) export only "
                        f"with the TorchScript exporter, opset <= {DETECTIONS_OPSET}; drop --opset or use 17")

    # -- conflicts ------------------------------------------------------------------------------
    trt_target = fmt_name == "engine" or (fmt_name == "triton" and opts.triton_platform == "tensorrt")
    if fmt_name == "triton" and not trt_target:
        bad = [n for n in given if n in _TRT]
        if bad:
            raise UserError(f"{_flags(bad)} need a TensorRT model: add --triton-platform tensorrt")
    if opts.int8:
        if not opts.calib_data and not onnx_source:
            raise UserError("--int8 needs calibration frames: --calib-data DIR|IR_VIDEO,VIS_VIDEO "
                            "(real IR/VIS pairs of the scenes the model will see)")
        if opts.plugins == "on":
            raise UserError("--int8 with --plugins on: ONNX Runtime calibrates the Q/DQ graph and cannot run the "
                            "plugin nodes; use --plugins off (or auto)")
    else:
        bad = [n for n in ("calib_data", "calib_frames") if n in given]
        if bad:
            raise UserError(f"{_flags(bad)} only apply to --int8")
    if opts.plugins == "on" and opts.dispatch == "dense":
        raise UserError("--plugins on with --dispatch dense: the plugin flavour runs the k chosen experts "
                        "(MoECombine); use --dispatch sparse or --plugins off")
    if opts.plugins == "on" and fmt_name == "triton" and not trt_target:
        raise UserError("--plugins on with --triton-platform onnxruntime: ONNX Runtime cannot run the plugin nodes; "
                        "use --triton-platform tensorrt or --plugins off")
    if opts.plugin_libs and opts.plugins == "off":
        raise UserError("--plugin-lib with --plugins off: drop one of them")
    if opts.detections:
        if opts.batch != 1:
            raise UserError(f"--detections with --batch {opts.batch}: detections export for batch 1 only")
    if opts.stream and opts.plugins == "on":
        raise UserError("--stream with --plugins on: the stream graph routes on logits smoothed over frames, which the "
                        "MoEGate plugin (top-k of one frame's logits) cannot take; use --plugins off (or auto)")
    if opts.stream and fmt_name == "triton" and opts.dynamic is not None:
        raise UserError("--stream with --format triton and --dynamic: Triton's implicit state starts each sequence "
                        "from zeros of fixed dims; export a fixed --imgsz (one model per camera resolution)")
    if opts.stream and opts.detections:
        raise UserError("--stream with --detections: the detectors' boxes are a debugging output of the per-frame "
                        "graph; drop one of them")
    if opts.half and opts.plugins == "on":
        raise UserError("--half with --plugins on: fp16 comes from the ONNX's types (strongly typed TensorRT) and "
                        "the plugin nodes have no fp16 conversion yet; use --plugins off (or auto) for fp16")

    # -- output ---------------------------------------------------------------------------------
    if opts.output is not None:
        out = Path(opts.output)
        if fmt.suffixes != ("",) and out.suffix.lower() not in fmt.suffixes:
            raise UserError(f"-o {out}: --format {fmt_name} writes a {'/'.join(fmt.suffixes)} file; "
                            f"name it {out.with_suffix(fmt.suffixes[0]).name}")
        if fmt.suffixes == ("",) and out.suffix.lower() in (".onnx", ".engine", ".plan", ".pbtxt"):
            raise UserError(f"-o {out}: --format triton writes a model repository folder; give a folder name")
    return opts


def missing_modules(fmt: Format, opts: ExportOptions) -> list[str]:
    mods = list(fmt.modules)
    if fmt.name == "triton" and opts.triton_platform == "tensorrt":
        mods.append("tensorrt")
    return [m for m in mods if not module_available(m)]


def format_table() -> str:
    """The table, for --help and docs."""
    rows = []
    for f in FORMATS.values():
        only = sorted(FLAGS[o] for o in f.options - _COMMON)
        rows.append(f"  {f.name:7s} {f.description}" + (f"\n          also: {' '.join(only)}" if only else ""))
    return "\n".join(rows)


def replace(opts: ExportOptions, **changes) -> ExportOptions:
    return dataclasses.replace(opts, **changes)
