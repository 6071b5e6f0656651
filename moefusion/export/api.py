"""``run_export``: what ``moefusion-export`` does, callable from Python (tests, benchmark). Stages 1-3 are in plan.py.

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

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import files as _files
from .._version import __version__
from .engine import build_engine, sidecar_path, verify_engine
from .formats import ExportOptions, replace
from .fp16 import convert_to_fp16
from .onnx_export import OnnxExport, build_metadata, export_onnx, read_metadata
from .plan import (  # noqa: F401 (the last two: public here)
    Plan,
    Source,
    make_options,
    make_plan,
    plugin_library_candidates,
    resolve_flavour,
)
from .quantize import calibration_fingerprint, quantize_onnx
from .triton import (
    ENSEMBLE,
    config_pbtxt,
    frames_ensemble,
    io_from_metadata,
    model_dir_files,
    stream_states,
    warmup_inputs,
)
from .wrapper import DETECTION_OUTPUTS, MOE_LAYERS, STATE_OUTPUTS

log = logging.getLogger("moefusion.export")



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
# 4 onnx
# ------------------------------------------------------------------------------------------------

def _output_names(opts: ExportOptions, routes: bool) -> list[str]:
    names = ["fused", "attention"]
    if routes:
        names += [f"route_{n}" for n in MOE_LAYERS]
    if opts.detections:
        names += list(DETECTION_OUTPUTS)
    if opts.stream:
        names += list(STATE_OUTPUTS)
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
    opts = make_options(given, model)
    src = Source(opts, model, weights_info)
    plan = make_plan(opts, src, trt, given, routes)
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
            side = verify_engine(src.path, trt=plan.trt)
            shutil.copyfile(src.path, files["model"])
            shutil.copyfile(sidecar_path(src.path), sidecar_path(files["model"]))
            meta = dict(side.get("onnx_metadata", {}))
        else:
            art = _model_onnx(plan, Path(work) / "model.onnx", Path(work), reuse=False, lines=lines)
            build = engine_stage(plan, art, files["model"], lines)
            meta = dict(build.sidecar.get("onnx_metadata", {}))
        meta = _decoded(meta)
        ins, outs, max_batch, dyn_batch = io_from_metadata(meta)
        states = stream_states(meta)
        warm = warmup_inputs(ins, meta)
        files["config"].write_text(config_pbtxt(
            name, opts.triton_platform, ins, outs, max_batch_size=max_batch, instances=opts.triton_instances,
            dynamic_batching=dyn_batch, states=states,
            warmup=None if states else (f"zeros {warm[0][2][-1]}x{warm[0][2][-2]}", warm)))
        lines[:] = [ln.replace(str(tmp), str(model_dir)) for ln in lines]
    # the ensemble for uint8 frames: run_pipeline's pre- and postprocessing as Python-backend steps
    folders = []
    for folder, contents in frames_ensemble(name, ins, outs, max_batch, meta, platform=opts.triton_platform,
                                            instances=opts.triton_instances, version=__version__).items():
        with _files.atomic_dir(repo / folder) as tmp:
            for rel, text in contents.items():
                target = tmp / rel
                if rel.endswith("/"):
                    target.mkdir(parents=True, exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text)
        folders.append(repo / folder)
    lines.append(f"Triton: {model_dir} ({opts.triton_platform}, max_batch_size {max_batch}, "
                 f"{opts.triton_instances} instance(s){'' if states else ', warmed up at start'}); serve it with "
                 f"tritonserver --model-repository={repo.resolve()}")
    lines.append(f"Triton ensemble {name}{ENSEMBLE}: uint8 ir_frame, vis_frame -> fused_frame (run_pipeline's "
                 f"processing in the Python steps {name}_pre, {name}_post: Triton's Python needs moefusion "
                 "without torch, see docs/export.md); client: samples/triton/client.py")
    return ExportResult("triton", [model_dir, *folders], lines, onnx=art.export if art else None, engine=build,
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
