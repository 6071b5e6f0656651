"""``run_export``: what ``moefusion-export`` does, callable from Python (tests, benchmark).

One straight line of stages, each taking the previous stage's artifact:

    1 options   validate the flags (formats table) -> ExportOptions
    2 source    the model to export: in-memory model, checkpoint, a moefusion ONNX or an engine
    3 plan      every decision before any long work: TensorRT module and GPU, precision, plugin flavour,
                output paths, INT8 calibration frames (all one-line errors happen here)
    4 onnx      the ONNX (exported, reused, given, fp16)                         -> OnnxArtifact
    5 qdq       --int8 only: Q/DQ nodes by ModelOpt on real frames (quantize.py)  -> OnnxArtifact
    6 package   nothing (--format onnx), a TensorRT engine + sidecar (engine.py), or a Triton model folder
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .. import files as _files
from ..kernels import plugins
from .formats import FORMATS, ExportOptions, missing_modules, replace, validate
from .onnx_export import OnnxExport, build_metadata, export_onnx, load_checkpoint_model, read_metadata, \
    read_moefusion_onnx

log = logging.getLogger("moefusion.export")

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
PLUGIN_NODES = ("MoEGate", "MoECombine")


@dataclass
class ExportResult:
    format: str
    outputs: list[Path]
    lines: list[str] = field(default_factory=list)
    onnx: OnnxExport | None = None
    engine: object | None = None  # engine.EngineBuild
    seconds: float = 0.0
    qdq: object | None = None  # quantize.QdqExport


@dataclass
class OnnxArtifact:
    """An ONNX on disk that the next stage takes: its metadata (decoded) and how it came about."""
    path: Path
    meta: dict
    export: OnnxExport | None = None  # a fresh export
    qdq: object | None = None  # quantize.QdqExport, for a fresh Q/DQ ONNX


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


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


def _options(given, model) -> ExportOptions:
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


class _Source:
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
            from ..model.checkpoint import default_weights

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
            from .engine import read_sidecar

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
    src: _Source
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


def _opset_for(trt, opts: ExportOptions, given) -> ExportOptions:
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
    if opts.plugins == "on" and meta.get("flavour") != "plugin":
        raise UserError(f"--plugins on but --weights {path} is the {meta.get('flavour')} flavour; re-export it with "
                        "--plugins on, or use --plugins off")
    have = meta.get("precision", "fp32")
    if have != "fp32" and have != opts.precision:
        raise UserError(f"--weights {path} is a {have} ONNX, {opts.precision} was asked for; pass the fp32 ONNX or "
                        "the checkpoint to build another precision")


def _plan(opts: ExportOptions, src: _Source, trt, given, routes: bool) -> Plan:
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
        from .engine import read_sidecar

        built = ((read_sidecar(src.path) or {}).get("tensorrt") or {}).get("module")
        if built == "tensorrt_rtx":
            raise UserError(f"--weights {src.path} is a TensorRT-RTX plan, which Triton's TensorRT backend cannot load; "
                            "package the ONNX (--triton-platform onnxruntime) or build the plan with the Triton "
                            "container's TensorRT")
    if tensorrt:
        from .trt_shim import TRT

        plan.trt = trt or TRT()
        if fmt == "triton" and plan.trt.rtx and src.kind != "engine":  # an engine given: verify_engine says
            raise UserError(f"--triton-platform tensorrt: {plan.trt.describe()} builds TensorRT-RTX plans, which Triton's "
                            "TensorRT backend cannot load; package the ONNX (--triton-platform onnxruntime) or run the "
                            "export where the Triton container's TensorRT is installed")
        plan.opts = opts = _opset_for(plan.trt, opts, given)
        plan.gpu = plan.trt.require_gpu()
        plan.trt.check_precision(opts.precision, plan.gpu)  # before minutes of export
    if src.kind != "engine":
        plan.flavour, plan.plugin_libs, plan.flavour_why = resolve_flavour(opts, plan.trt if tensorrt else None)
    if src.kind == "onnx":
        _check_onnx_fits(src.path, src.onnx_meta, opts)
    if opts.int8:
        from .quantize import require_modelopt

        needs_frames = not (src.kind == "onnx" and src.onnx_meta.get("precision") == "int8") and src.kind != "engine"
        if needs_frames:
            require_modelopt()
            if not opts.calib_data:
                raise UserError(f"--int8 with --weights {src.path or 'a checkpoint'}: calibration frames are needed "
                                "to insert Q/DQ nodes: --calib-data DIR|IR_VIDEO,VIS_VIDEO")
            from ..calibration.int8 import CalibrationData

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


# ------------------------------------------------------------------------------------------------
# 4 onnx
# ------------------------------------------------------------------------------------------------

def _output_names(opts: ExportOptions, routes: bool) -> list[str]:
    from .wrapper import DETECTION_OUTPUTS, MOE_LAYERS

    names = ["fused", "attention"]
    if routes:
        names += [f"route_{n}" for n in MOE_LAYERS]
    if opts.detections:
        names += list(DETECTION_OUTPUTS)
    return names


def _onnx_reusable(path: Path, wanted_meta: dict) -> bool:
    if not path.is_file() or not wanted_meta.get("moefusion.weights_sha256"):
        return False
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - unreadable: export again
        return False
    have = {p.key: p.value for p in proto.metadata_props}
    return all(have.get(k) == v for k, v in wanted_meta.items())


def _onnx_line(res: OnnxExport, opts: ExportOptions) -> str:
    size = (f"dynamic {opts.dynamic[0][0]}x{opts.dynamic[0][1]}..{opts.dynamic[1][0]}x{opts.dynamic[1][1]}"
            if opts.dynamic else f"{opts.imgsz[0]}x{opts.imgsz[1]}")
    batch = f"batch 1..{opts.batch}" if opts.batch_dynamic else f"batch {opts.batch}"
    return (f"ONNX: {res.path} ({_mb(res.path)}, {res.flavour} flavour, {res.metadata['moefusion.dispatch']} dispatch, "
            f"{res.precision}, opset {opts.opset}, {size}, {batch}) in {res.seconds:.1f} s")


def onnx_stage(plan: Plan, out: Path, *, half: bool, reuse: bool, lines: list[str]) -> OnnxArtifact:
    """The ONNX the next stage takes: the given one (an fp16 copy at ``out`` if needed) or a fresh/reused export."""
    src, opts = plan.src, plan.opts
    if src.kind == "onnx":
        meta = src.onnx_meta
        if half and meta.get("precision") == "fp32":
            import onnx

            from .fp16 import convert_to_fp16

            proto = convert_to_fp16(onnx.load(src.path))
            for p in proto.metadata_props:
                if p.key == "moefusion.precision":
                    p.value = "fp16"
            _files.atomic_write_bytes(out, proto.SerializeToString())
            lines.append(f"ONNX: {out} (fp16 copy of {src.path}, {_mb(out)})")
            return OnnxArtifact(out, read_metadata(out))
        return OnnxArtifact(Path(src.path), meta)
    model = src.load()
    onnx_opts = replace(opts, half=half)
    if reuse and not opts.rebuild:
        wanted = build_metadata(model, onnx_opts, plan.flavour, "fp16" if half else "fp32",
                                _output_names(opts, plan.routes), src.info)
        if _onnx_reusable(out, wanted):
            lines.append(f"ONNX: {out} reused (same weights, options and moefusion version)")
            return OnnxArtifact(out, read_metadata(out))
    res = export_onnx(model, out, onnx_opts, flavour=plan.flavour, routes=plan.routes, weights_info=src.info)
    lines.append(_onnx_line(res, opts))
    return OnnxArtifact(res.path, read_metadata(res.path), export=res)


# ------------------------------------------------------------------------------------------------
# 5 qdq (--int8)
# ------------------------------------------------------------------------------------------------

def qdq_stage(plan: Plan, out: Path, work: Path, *, reuse: bool, lines: list[str]) -> OnnxArtifact:
    """--int8: the Q/DQ ONNX at ``out``, from the float32 ONNX (exported into ``work``, or the given one)."""
    from .quantize import calibration_fingerprint, quantize_onnx

    src, opts = plan.src, plan.opts
    if plan.calib is None:  # a given Q/DQ ONNX: its scales are in the graph
        return OnnxArtifact(Path(src.path), src.onnx_meta)
    fingerprint = calibration_fingerprint(plan.calib)
    extra = {"moefusion.calibration": fingerprint}
    if src.kind != "onnx" and reuse and not opts.rebuild:
        wanted = build_metadata(src.load(), replace(opts, half=False), plan.flavour, "int8",
                                _output_names(opts, plan.routes), src.info) | extra
        if _onnx_reusable(out, wanted):
            lines.append(f"INT8: {out} reused (same weights, options and calibration frames)")
            return OnnxArtifact(out, read_metadata(out))
    fp32 = onnx_stage(plan, work / "model.fp32.onnx", half=False, reuse=False, lines=lines)
    qdq = quantize_onnx(fp32.path, out, plan.calib, batch=opts.batch if not opts.batch_dynamic else 1,
                        extra_metadata=extra)
    lines.append(f"INT8: {out} ({_mb(out)}, Q/DQ by {qdq.info['tool']}, {qdq.info['method']}, "
                 f"{plan.calib.describe()}) in {qdq.seconds:.1f} s: {qdq.info['summary']}")
    return OnnxArtifact(out, read_metadata(out), export=fp32.export, qdq=qdq)


# ------------------------------------------------------------------------------------------------
# 6 package: engine / Triton
# ------------------------------------------------------------------------------------------------

def _model_onnx(plan: Plan, onnx_out: Path, work: Path, *, reuse: bool, lines: list[str]) -> OnnxArtifact:
    """Stages 4 and 5 for a TensorRT target: the ONNX carrying the engine's precision."""
    if plan.src.kind == "onnx" and onnx_out.resolve() == Path(plan.src.path).resolve():
        onnx_out = onnx_out.with_name(f"{onnx_out.stem}.{plan.opts.precision}.onnx")  # never overwrite the source
    if plan.opts.int8:
        return qdq_stage(plan, onnx_out, work, reuse=reuse, lines=lines)
    return onnx_stage(plan, onnx_out, half=plan.opts.half, reuse=reuse, lines=lines)


def engine_stage(plan: Plan, art: OnnxArtifact, engine_path: Path, lines: list[str]):
    from .engine import build_engine, sidecar_path

    build = build_engine(art.path, engine_path, plan.opts, trt=plan.trt, plugin_libs=plan.plugin_libs,
                         onnx_meta=dict(art.meta), quantization=art.meta.get("quantization"))
    gpu = plan.gpu["name"] if plan.gpu else "no GPU"
    verb = "reused" if build.reused else f"built in {build.seconds:.1f} s"
    lines.append(f"engine: {engine_path} ({_mb(engine_path)}, {plan.opts.precision}, strongly typed, {plan.flavour} "
                 f"flavour ({plan.flavour_why}), {plan.trt.describe()}, {gpu}) {verb}; sidecar {sidecar_path(engine_path).name}")
    lines.append(f"runs on: {build.sidecar['runs_on']['summary']}")
    return build


def _run_line(plan: Plan, engine_path: Path) -> str:
    if plan.trt.rtx:
        return (f"run it: run_pipeline --model {engine_path} --ir IR --vis VIS on an RTX GPU with tensorrt_rtx "
                f"{plan.trt.version} installed (pip install tensorrt-rtx-cu13); for Jetson, trtexec, DeepStream or "
                "Triton build the engine there with full TensorRT")
    return f"run it: run_pipeline --model {engine_path} --ir IR --vis VIS   (or trtexec --loadEngine={engine_path.name})"


def run_export(given, *, model=None, weights_info=None, routes: bool = False, trt=None) -> ExportResult:
    """Export as ``moefusion-export`` does. ``given``: option dict (None = not given) or ExportOptions.

    ``model``: export this in-memory MoEFusion instead of ``--weights`` (tests, benchmarks).
    ``routes``: also output the chosen experts (tests). ``trt``: a TRT shim to use (tests).
    """
    t0 = time.perf_counter()
    opts = _options(given, model)
    src = _Source(opts, model, weights_info)
    plan = _plan(opts, src, trt, given, routes)
    opts = plan.opts
    lines: list[str] = []

    if opts.format == "onnx":
        art = onnx_stage(plan, plan.output, half=opts.half, reuse=False, lines=lines)
        if plan.flavour == "plugin":
            lines.append("note: the plugin flavour runs in TensorRT with the moefusion plugins only "
                         "(trtexec --dynamicPlugins=libmoefusion_trt_plugins.so), not in ONNX Runtime")
        return ExportResult("onnx", [plan.output], lines, onnx=art.export, seconds=time.perf_counter() - t0)

    if opts.format == "engine":
        engine_path = plan.output
        with tempfile.TemporaryDirectory(prefix="moefusion-export-") as work:
            art = _model_onnx(plan, engine_path.with_suffix(".onnx"), Path(work), reuse=True, lines=lines)
            build = engine_stage(plan, art, engine_path, lines)
        lines.append(_run_line(plan, engine_path))
        outputs = [engine_path, Path(str(engine_path) + ".json"), art.path]
        return ExportResult("engine", outputs, lines, onnx=art.export, engine=build, qdq=art.qdq,
                            seconds=time.perf_counter() - t0)

    return _triton(plan, lines, t0)


def _triton(plan: Plan, lines, t0) -> ExportResult:
    from .triton import config_pbtxt, io_from_metadata, model_dir_files

    src, opts = plan.src, plan.opts
    name = opts.triton_name or f"moefusion_{src.preset}"
    repo = plan.output
    model_dir = repo / name
    build = art = None
    with _files.atomic_dir(model_dir) as tmp, tempfile.TemporaryDirectory(prefix="moefusion-triton-") as work:
        files = model_dir_files(tmp, opts.triton_platform)
        files["model"].parent.mkdir(parents=True)
        if not plan.tensorrt:
            if src.kind == "onnx" and not (opts.half and src.onnx_meta.get("precision") == "fp32"):
                shutil.copyfile(src.path, files["model"])
            else:
                onnx_stage(plan, files["model"], half=opts.half, reuse=False, lines=lines)
            meta = read_metadata(files["model"])
        elif src.kind == "engine":
            from .engine import sidecar_path, verify_engine

            side = verify_engine(src.path, trt=plan.trt)
            shutil.copyfile(src.path, files["model"])
            shutil.copyfile(sidecar_path(src.path), sidecar_path(files["model"]))
            meta = dict(side.get("onnx_metadata", {}))
        else:
            art = _model_onnx(plan, Path(work) / "model.onnx", Path(work), reuse=False, lines=lines)
            build = engine_stage(plan, art, files["model"], lines)
            meta = dict(build.sidecar.get("onnx_metadata", {}))
        ins, outs, max_batch, dyn_batch = io_from_metadata(_decoded(meta))
        files["config"].write_text(config_pbtxt(name, opts.triton_platform, ins, outs, max_batch_size=max_batch,
                                                instances=opts.triton_instances, dynamic_batching=dyn_batch))
        lines[:] = [ln.replace(str(tmp), str(model_dir)) for ln in lines]
    lines.append(f"Triton: {model_dir} ({opts.triton_platform}, max_batch_size {max_batch}, "
                 f"{opts.triton_instances} instance(s)); serve it with "
                 f"tritonserver --model-repository={repo.resolve()}")
    return ExportResult("triton", [model_dir], lines, onnx=art.export if art else None, engine=build,
                        qdq=art.qdq if art else None, seconds=time.perf_counter() - t0)


def _decoded(meta: dict) -> dict:
    """Metadata with JSON strings decoded (sidecar copies keep them as strings)."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, str) and k in ("inputs", "outputs", "imgsz", "dynamic", "batch_dynamic", "config", "io"):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out
