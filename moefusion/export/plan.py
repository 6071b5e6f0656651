"""Stages 1-3 of ``run_export``: the options (formats table), the source model and the plan, in which
every decision is made before any long work (all one-line errors happen here)."""

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import files as _files
from ..calibration.int8 import CalibrationData
from ..errors import UserError
from ..kernels import plugins
from ..model.checkpoint import default_weights
from .engine import read_sidecar
from .formats import FORMATS, ExportOptions, missing_modules, replace, validate
from .onnx_export import load_checkpoint_model, read_moefusion_onnx
from .quantize import require_modelopt
from .trt_shim import TRT

log = logging.getLogger("moefusion.export")

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
PLUGIN_NODES = ("MoEGate", "MoECombine")


# ------------------------------------------------------------------------------------------------
# 1 options
# ------------------------------------------------------------------------------------------------

def _fill_from_onnx(given: dict) -> dict:
    """With --weights X.onnx, options the user did not give come from the ONNX's metadata."""
    meta = read_moefusion_onnx(given["weights"])
    g = dict(given)
    if g.get("imgsz") is None and meta.get("imgsz"):
        g["imgsz"] = tuple(meta["imgsz"])
    if g.get("dynamic") is None and meta.get("dynamic"):
        g["dynamic"] = tuple(tuple(x) for x in meta["dynamic"])
    if g.get("batch") is None and meta.get("batch"):
        g["batch"] = int(meta["batch"])
    if g.get("dispatch") is None and meta.get("dispatch"):
        g["dispatch"] = meta["dispatch"]
    if g.get("opset") is None and meta.get("opset"):
        g["opset"] = int(meta["opset"])
    if g.get("plugins") in (None, "auto") and meta.get("flavour") == "plugin":
        g["plugins"] = "on"
    if meta.get("precision") == "fp16" and not g.get("int8"):
        g["half"] = True  # an fp16 ONNX builds an fp16 engine
    if meta.get("precision") == "int8" and not g.get("half"):
        g["int8"] = True  # a Q/DQ ONNX builds an INT8 engine: its scales are in the graph
    return g


def make_options(given, model) -> ExportOptions:
    if isinstance(given, ExportOptions):
        opts = given
    else:
        given = dict(given)
        weights = str(given.get("weights") or "")
        from_onnx = model is None and weights.lower().endswith(".onnx") and given.get("format") not in (None, "onnx")
        if from_onnx:
            given = _fill_from_onnx(given)
        opts = validate(given, onnx_source=from_onnx)
    missing = missing_modules(FORMATS[opts.format], opts)
    if missing:
        hints = {"onnx": "pip install 'moefusion[export]'", "onnxscript": "pip install 'moefusion[export]'",
                 "tensorrt": "TensorRT: JetPack's python3-libnvinfer, pip install tensorrt, or tensorrt-rtx-cu13"}
        raise UserError(f"--format {opts.format} needs {', '.join(missing)}: "
                        + "; ".join(dict.fromkeys(hints.get(m, f'pip install {m}') for m in missing)))
    return opts


# ------------------------------------------------------------------------------------------------
# 2 source
# ------------------------------------------------------------------------------------------------

def _source_kind(weights: str | None) -> str:
    if weights is None:
        return "checkpoint"
    suffix = Path(weights).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    raise UserError(f"--weights {weights}: unknown file type {suffix or '(none)'}; pass a moefusion checkpoint (.pt), "
                    "or an .onnx / .engine written by moefusion-export (--format engine/triton)")


def _model_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Source:
    """What is being exported: an in-memory model, a checkpoint, an existing ONNX or an engine."""

    def __init__(self, opts: ExportOptions, model=None, weights_info=None):
        self.kind = "model" if model is not None else _source_kind(opts.weights)
        self.model, self.info = model, weights_info
        self.path = opts.weights
        self.onnx_meta: dict | None = None
        if self.kind == "model":
            self.info = weights_info or {"name": "in-memory model", "sha256": _model_hash(model)}
            self.stem = f"moefusion_{model.preset}"
        elif self.kind == "checkpoint":
            self.path = str(default_weights()) if opts.weights is None else opts.weights
            self.stem = Path(self.path).stem
        else:
            self.stem = Path(self.path).stem.split(".")[0]
            if self.kind == "onnx":
                self.onnx_meta = read_moefusion_onnx(self.path)

    def load(self):
        if self.model is None:
            self.model, self.info = load_checkpoint_model(self.path)
        return self.model

    @property
    def preset(self) -> str:
        if self.model is not None:
            return str(self.model.preset)
        if self.kind == "onnx":
            return str(self.onnx_meta.get("preset", "model"))
        if self.kind == "engine":
            return str((read_sidecar(self.path) or {}).get("onnx_metadata", {}).get("preset", "model"))
        return str(self.load().preset)


# ------------------------------------------------------------------------------------------------
# 3 plan
# ------------------------------------------------------------------------------------------------

def plugin_library_candidates(opts: ExportOptions) -> list[str]:
    """--plugin-lib, else $MOEFUSION_TRT_PLUGINS, else the library moefusion.kernels.build writes."""
    return plugins.candidate_libraries(opts.plugin_libs)


def resolve_flavour(opts: ExportOptions, trt=None) -> tuple[str, list[str], str]:
    """(flavour, plugin libraries, why) for these options and this TensorRT (None: not a TensorRT target).

    Loads the plugin library (once per process) only when the plugin flavour is possible.
    """
    if opts.plugins == "off":
        return "standard", [], "--plugins off"
    if opts.stream:  # formats.validate refuses --plugins on with --stream
        return "standard", [], "--stream routes on smoothed logits (the standard gate)"
    if trt is None:  # ONNX Runtime (or a bare ONNX file)
        if opts.plugins == "on":
            return "plugin", [], "--plugins on (a TensorRT-only ONNX)"
        return "standard", [], "ONNX Runtime runs the standard flavour"
    if not trt.supports_plugin_layers:
        if opts.plugins == "on":
            raise UserError(f"--plugins on: {trt.describe()} cannot take plugin layers (its ONNX parser aborts the "
                            "process on them and it has no add_plugin_v3); use --plugins auto or off (standard flavour)")
        return "standard", [], f"auto: {trt.describe()} takes no plugin layers"
    if opts.precision != "fp32":
        if opts.plugins == "on":
            raise UserError(f"--plugins on with --{'half' if opts.precision == 'fp16' else 'int8'}: strongly typed "
                            "builds take precision from the ONNX, and the plugin nodes have no fp16/Q/DQ conversion "
                            "yet; use --plugins off (or auto) for fp16/INT8, or build the plugin flavour in fp32")
        return "standard", [], f"auto: {opts.precision} builds use the standard flavour"
    if opts.plugins == "auto" and opts.dispatch == "dense":
        return "standard", [], "auto: --dispatch dense (the plugin flavour runs the sparse dispatch)"
    libs = plugin_library_candidates(opts)
    if opts.plugins == "on":
        if not libs:
            raise UserError(f"--plugins on: no TensorRT plugin library found; build it (python -m moefusion.kernels.build) "
                            f"and pass --plugin-lib build/kernels/libmoefusion_trt_plugins.so or set {plugins.PLUGIN_ENV}")
        trt.load_plugin_libraries(libs)
        lacking = [n for n in PLUGIN_NODES if n not in trt.plugin_names()]
        if lacking:
            raise UserError(f"--plugin-lib {', '.join(libs)}: does not register {', '.join(lacking)} with "
                            f"{trt.describe()}; rebuild the plugins for this TensorRT")
        return "plugin", libs, "--plugins on"
    if not libs:
        return "standard", [], "auto: no plugin library found"
    try:
        trt.load_plugin_libraries(libs)
    except UserError as e:
        log.warning("--plugins auto: %s; using the standard flavour", e)
        return "standard", [], f"auto: plugin library not usable ({e})"
    if all(n in trt.plugin_names() for n in PLUGIN_NODES):
        return "plugin", libs, f"auto: plugins found in {', '.join(libs)}"
    return "standard", [], "auto: the plugin library lacks MoEGate/MoECombine"


@dataclass
class Plan:
    opts: ExportOptions
    src: Source
    output: Path  # the .onnx, the .engine or the Triton repository
    trt: object | None = None  # trt_shim.TRT for TensorRT targets
    gpu: dict | None = None
    flavour: str = "standard"
    plugin_libs: list[str] = field(default_factory=list)
    flavour_why: str = ""
    calib: object | None = None  # calibration.int8.CalibrationData for --int8 (None: the ONNX has Q/DQ already)
    routes: bool = False

    @property
    def tensorrt(self) -> bool:
        return self.trt is not None


def _default_output(opts: ExportOptions, stem: str, flavour: str) -> Path:
    if opts.format == "triton":
        return Path.cwd() / "model_repository"
    tags = ""
    if opts.precision != "fp32":
        tags += f".{opts.precision}"
    if flavour == "plugin":
        tags += ".plugins"
    return Path.cwd() / f"{stem}{tags}{FORMATS[opts.format].suffixes[0]}"


def opset_for(trt, opts: ExportOptions, given) -> ExportOptions:
    """TensorRT 8.6 (JetPack 6.0) parses opset 17 at most: use it unless --opset was given."""
    if trt.major < 10 and not trt.rtx and opts.opset > 17 and (isinstance(given, ExportOptions)
                                                               or given.get("opset") is None):
        log.info("%s: exporting with opset 17 (its ONNX parser's newest)", trt.describe())
        return replace(opts, opset=17)
    return opts


def _check_onnx_fits(path: str, meta: dict, opts: ExportOptions) -> None:
    """An existing ONNX must support the shapes/flavour/precision asked for."""
    if meta.get("dynamic") is None:
        if opts.dynamic is not None or list(opts.imgsz) != list(meta.get("imgsz") or []):
            raise UserError(f"--weights {path} is a static {meta.get('imgsz')} ONNX; drop --imgsz/--dynamic or "
                            "re-export it from the checkpoint with the sizes you need")
    elif opts.dynamic is not None:
        (h0, w0), (h1, w1) = opts.dynamic
        (m0, n0), (m1, n1) = meta["dynamic"]
        if h0 < m0 or w0 < n0 or h1 > m1 or w1 > n1:
            log.warning("--dynamic %s goes beyond the range %s recorded in %s (the graph itself is size-generic)",
                        opts.dynamic, meta["dynamic"], path)
    if not meta.get("batch_dynamic") and int(meta.get("batch", 1)) != opts.batch:
        raise UserError(f"--weights {path} has a fixed batch of {meta.get('batch')}; use --batch {meta.get('batch')} or "
                        "re-export it")
    if opts.stream and not meta.get("stream"):
        raise UserError(f"--stream but --weights {path} is a per-frame ONNX (no state inputs); re-export it from the "
                        "checkpoint with --stream")
    if opts.plugins == "on" and meta.get("flavour") != "plugin":
        raise UserError(f"--plugins on but --weights {path} is the {meta.get('flavour')} flavour; re-export it with "
                        "--plugins on, or use --plugins off")
    have = meta.get("precision", "fp32")
    if have != "fp32" and have != opts.precision:
        raise UserError(f"--weights {path} is a {have} ONNX, {opts.precision} was asked for; pass the fp32 ONNX or "
                        "the checkpoint to build another precision")


def make_plan(opts: ExportOptions, src: Source, trt, given, routes: bool) -> Plan:
    fmt = opts.format
    if fmt == "onnx" and src.kind not in ("checkpoint", "model"):
        raise UserError(f"--weights {src.path} with --format onnx: nothing to export; pass a checkpoint (.pt)")
    if fmt == "engine" and src.kind == "engine":
        raise UserError(f"--weights {src.path} is already an engine; to package it use --format triton "
                        "--triton-platform tensorrt")
    tensorrt = fmt == "engine" or (fmt == "triton" and opts.triton_platform == "tensorrt")
    if fmt == "triton" and src.kind == "engine" and not tensorrt:
        raise UserError(f"--weights {src.path} is an engine: add --triton-platform tensorrt")
    plan = Plan(opts, src, Path("."), routes=routes)
    if fmt == "triton" and src.kind == "engine":
        built = ((read_sidecar(src.path) or {}).get("tensorrt") or {}).get("module")
        if built == "tensorrt_rtx":
            raise UserError(f"--weights {src.path} is a TensorRT-RTX plan, which Triton's TensorRT backend cannot load; "
                            "package the ONNX (--triton-platform onnxruntime) or build the plan with the Triton "
                            "container's TensorRT")
    if tensorrt:
        plan.trt = trt or TRT()
        if fmt == "triton" and plan.trt.rtx and src.kind != "engine":  # an engine given: verify_engine says
            raise UserError(f"--triton-platform tensorrt: {plan.trt.describe()} builds TensorRT-RTX plans, which Triton's "
                            "TensorRT backend cannot load; package the ONNX (--triton-platform onnxruntime) or run the "
                            "export where the Triton container's TensorRT is installed")
        plan.opts = opts = opset_for(plan.trt, opts, given)
        plan.gpu = plan.trt.require_gpu()
        plan.trt.check_precision(opts.precision, plan.gpu)  # before minutes of export
    if src.kind != "engine":
        plan.flavour, plan.plugin_libs, plan.flavour_why = resolve_flavour(opts, plan.trt if tensorrt else None)
    if src.kind == "onnx":
        _check_onnx_fits(src.path, src.onnx_meta, opts)
    if opts.int8:
        needs_frames = not (src.kind == "onnx" and src.onnx_meta.get("precision") == "int8") and src.kind != "engine"
        if needs_frames:
            require_modelopt()
            if not opts.calib_data:
                raise UserError(f"--int8 with --weights {src.path or 'a checkpoint'}: calibration frames are needed "
                                "to insert Q/DQ nodes: --calib-data DIR|IR_VIDEO,VIS_VIDEO")
            h, w = opts.shapes()["opt"][2:]
            plan.calib = CalibrationData(opts.calib_data, opts.calib_frames, (h, w))  # read and checked now
    if fmt == "triton":
        name = opts.triton_name or f"moefusion_{src.preset}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise UserError(f"--triton-name {name!r}: use letters, digits, '_', '.' and '-' only")
        plan.output = Path(opts.output) if opts.output else _default_output(opts, src.stem, "standard")
        if plan.output.exists() and not plan.output.is_dir():
            raise UserError(f"cannot write {plan.output}: a file of that name exists; give the repository folder with -o")
    else:
        plan.output = _files.check_writable(opts.output or _default_output(opts, src.stem, plan.flavour))
    return plan
