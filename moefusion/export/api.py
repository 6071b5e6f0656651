"""``run_export``: what ``moefusion-export`` does, callable from Python (tests, benchmark, calibration CLI)."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from . import _files
from .formats import FORMATS, ExportOptions, missing_modules, validate
from .onnx_export import OnnxExport, build_metadata, export_onnx, load_checkpoint_model, read_moefusion_onnx

log = logging.getLogger("moefusion.export")

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
PLUGIN_ENV = "MOEFUSION_TRT_PLUGINS"
PLUGIN_NODES = ("MoEGate", "MoECombine")


@dataclass
class ExportResult:
    format: str
    outputs: list[Path]
    lines: list[str] = field(default_factory=list)
    onnx: OnnxExport | None = None
    engine: object | None = None  # engine.EngineBuild
    seconds: float = 0.0


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


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
    return g


def _check_onnx_fits(path: str, meta: dict, opts: ExportOptions) -> None:
    """An existing ONNX must support the shapes/flavour asked for."""
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
    want = "plugin" if opts.plugins == "on" else None
    if want and meta.get("flavour") != want:
        raise UserError(f"--plugins on but --weights {path} is the {meta.get('flavour')} flavour; re-export it with "
                        "--plugins on, or use --plugins off")


def _model_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _default_output(opts: ExportOptions, stem: str, flavour: str) -> Path:
    fmt = FORMATS[opts.format]
    if opts.format == "triton":
        return Path.cwd() / "model_repository"
    tags = ""
    if opts.precision != "fp32":
        tags += f".{opts.precision}"
    if flavour == "plugin":
        tags += ".plugins"
    return Path.cwd() / f"{stem}{tags}{fmt.suffixes[0]}"


def plugin_library_candidates(opts: ExportOptions) -> list[str]:
    """--plugin-lib, else $MOEFUSION_TRT_PLUGINS, else the library moefusion.kernels.build writes."""
    if opts.plugin_libs:
        return list(opts.plugin_libs)
    if os.environ.get(PLUGIN_ENV):
        return [p for p in os.environ[PLUGIN_ENV].split(os.pathsep) if p]
    from ..runtime.backends import default_plugin_library

    lib = default_plugin_library()
    return [lib] if lib else []


def resolve_flavour(opts: ExportOptions, trt=None) -> tuple[str, list[str], str]:
    """(flavour, plugin libraries, why) for these options and this TensorRT (None: not a TensorRT target)."""
    if opts.plugins == "off":
        return "standard", [], "--plugins off"
    if trt is None:  # ONNX Runtime (or a bare ONNX file)
        if opts.plugins == "on":
            return "plugin", [], "--plugins on (a TensorRT-only ONNX)"
        return "standard", [], "ONNX Runtime runs the standard flavour"
    if opts.plugins == "auto" and opts.dispatch == "dense":
        return "standard", [], "auto: --dispatch dense (the plugin flavour runs the sparse dispatch)"
    libs = plugin_library_candidates(opts)
    if opts.plugins == "on":
        if not libs:
            raise UserError(f"--plugins on: no TensorRT plugin library found; build it (python -m moefusion.kernels.build) "
                            f"and pass --plugin-lib build/kernels/libmoefusion_trt_plugins.so or set {PLUGIN_ENV}")
        trt.load_plugin_libraries(libs)
        have = trt.plugin_names()
        lacking = [n for n in PLUGIN_NODES if n not in have]
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
    have = trt.plugin_names()
    if all(n in have for n in PLUGIN_NODES):
        return "plugin", libs, f"auto: plugins found in {', '.join(libs)}"
    return "standard", [], "auto: the plugin library lacks MoEGate/MoECombine"


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


class _Source:
    """What is being exported: an in-memory model, a checkpoint, an existing ONNX or an engine."""

    def __init__(self, opts: ExportOptions, model=None, weights_info=None):
        self.kind = "model" if model is not None else _source_kind(opts.weights)
        self.model, self.info = model, weights_info
        self.path = opts.weights
        if self.kind == "model":
            self.info = weights_info or {"name": "in-memory model", "sha256": _model_hash(model)}
            self.stem = f"moefusion_{model.preset}"
        elif self.kind == "checkpoint":
            from ..model.checkpoint import default_weights

            self.path = str(default_weights()) if opts.weights is None else opts.weights
            self.stem = Path(self.path).stem
        else:
            self.stem = Path(self.path).stem.split(".")[0]

    def load(self):
        if self.model is None:
            self.model, self.info = load_checkpoint_model(self.path)
        return self.model

    @property
    def preset(self) -> str:
        if self.model is not None:
            return str(self.model.preset)
        if self.kind == "onnx":
            return str(read_moefusion_onnx(self.path).get("preset", "model"))
        if self.kind == "engine":
            from .engine import read_sidecar

            return str((read_sidecar(self.path) or {}).get("onnx_metadata", {}).get("preset", "model"))
        return str(self.load().preset)


def _make_onnx(src: _Source, opts: ExportOptions, out: Path, flavour: str, *, half: bool, routes: bool,
               reuse: bool, lines: list[str]) -> tuple[Path, dict, OnnxExport | None]:
    """The ONNX to build from: the given one (converted to fp16 if needed) or a fresh/reused export."""
    from .formats import replace
    from .onnx_export import read_metadata

    if src.kind == "onnx":
        meta = read_moefusion_onnx(src.path)
        _check_onnx_fits(src.path, meta, opts)
        if half and meta.get("precision") != "fp16":
            import onnx

            from .fp16 import convert_to_fp16

            proto = convert_to_fp16(onnx.load(src.path))
            for p in proto.metadata_props:
                if p.key == "moefusion.precision":
                    p.value = "fp16"
            _files.atomic_write_bytes(out, proto.SerializeToString())
            lines.append(f"ONNX: {out} (fp16 copy of {src.path}, {_mb(out)})")
            return out, read_metadata(out), None
        return Path(src.path), meta, None
    model = src.load()
    onnx_opts = replace(opts, half=half)
    if reuse and not opts.rebuild:
        wanted = build_metadata(model, onnx_opts, flavour, "fp16" if half else "fp32",
                                _output_names(opts, routes), src.info)
        if _onnx_reusable(out, wanted):
            lines.append(f"ONNX: {out} reused (same weights, options and moefusion version)")
            return out, read_metadata(out), None
    res = export_onnx(model, out, onnx_opts, flavour=flavour, routes=routes, weights_info=src.info)
    lines.append(_onnx_line(res, opts))
    return res.path, read_metadata(res.path), res


def _output_names(opts: ExportOptions, routes: bool) -> list[str]:
    from .wrapper import DETECTION_OUTPUTS, MOE_LAYERS

    names = ["fused", "attention"]
    if routes:
        names += [f"route_{n}" for n in MOE_LAYERS]
    if opts.detections:
        names += list(DETECTION_OUTPUTS)
    return names


def _onnx_line(res: OnnxExport, opts: ExportOptions) -> str:
    size = (f"dynamic {opts.dynamic[0][0]}x{opts.dynamic[0][1]}..{opts.dynamic[1][0]}x{opts.dynamic[1][1]}"
            if opts.dynamic else f"{opts.imgsz[0]}x{opts.imgsz[1]}")
    batch = f"batch 1..{opts.batch}" if opts.batch_dynamic else f"batch {opts.batch}"
    return (f"ONNX: {res.path} ({_mb(res.path)}, {res.flavour} flavour, {res.metadata['moefusion.dispatch']} dispatch, "
            f"{res.precision}, opset {opts.opset}, {size}, {batch}) in {res.seconds:.1f} s")


def _calibration(opts: ExportOptions, engine_path: Path):
    """(calibrator factory, sidecar info) for --int8, validating the frames before any long work."""
    if not opts.int8:
        return None, None
    from ..calibration.int8 import CalibrationData, make_entropy_calibrator

    cache = Path(opts.calib_cache) if opts.calib_cache else Path(str(engine_path) + ".calib")
    h, w = opts.shapes()["opt"][2:]
    data = CalibrationData(opts.calib_data, opts.calib_frames, (h, w)) if opts.calib_data else None
    if data is None and not cache.is_file():
        raise UserError(f"--calib-cache {cache}: no such file; calibrate with --calib-data DIR|IR_VIDEO,VIS_VIDEO")
    info = {"cache": str(cache.resolve()),
            "source": opts.calib_data, "frames": len(data) if data else None, "size": [h, w]}

    def factory(trt, opt_shape):
        return make_entropy_calibrator(trt.trt, data, int(opt_shape[0]), cache)

    return factory, info


def _gate_node_names(onnx_path: Path) -> list[str]:
    import onnx

    from .fp16 import _gate_nodes

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    producers = {o: n for n in g.node for o in n.output}
    return sorted(_gate_nodes(g, producers))


def _build(src, opts, engine_path: Path, onnx_path: Path, trt, lines, *, routes=False, reuse_onnx=True):
    """ONNX (exported or given) -> engine at engine_path. Returns (EngineBuild, OnnxExport|None)."""
    from .engine import build_engine, sidecar_path

    gpu = trt.require_gpu()
    trt.check_precision(trt.trt.Builder(trt.logger), opts.precision, gpu)  # before minutes of export
    flavour, libs, why = resolve_flavour(opts, trt)
    factory, calib_info = _calibration(opts, engine_path)
    typed_half = trt.typed_precision and opts.precision == "fp16"
    if typed_half and flavour == "plugin":
        raise UserError(f"--half with the plugin flavour: {trt.describe()} takes precision from the ONNX types and "
                        "the plugin nodes have no fp16 conversion; use --plugins off (or TensorRT's FP16 flag)")
    path, meta, res = _make_onnx(src, opts, onnx_path, flavour, half=typed_half, routes=routes, reuse=reuse_onnx,
                                 lines=lines)
    onnx_meta = dict(meta)
    fp32_nodes = _gate_node_names(path) if not trt.typed_precision and opts.precision != "fp32" else []
    build = build_engine(path, engine_path, opts, trt=trt, plugin_libs=libs, onnx_meta=onnx_meta,
                         calibrator_factory=factory, calib_info=calib_info, fp32_nodes=fp32_nodes)
    gpu_txt = f"{build.sidecar['gpu']['name']}" if build.sidecar.get("gpu") else "no GPU (TensorRT-RTX)"
    verb = "reused" if build.reused else f"built in {build.seconds:.1f} s"
    lines.append(f"engine: {engine_path} ({_mb(engine_path)}, {opts.precision}, {flavour} flavour ({why}), "
                 f"{trt.describe()}, {gpu_txt}) {verb}; sidecar {sidecar_path(engine_path).name}")
    return build, res


def run_export(given, *, model=None, weights_info=None, routes: bool = False, trt=None) -> ExportResult:
    """Export as ``moefusion-export`` does. ``given``: option dict (None = not given) or ExportOptions.

    ``model``: export this in-memory MoEFusion instead of ``--weights`` (tests, benchmarks).
    ``routes``: also output the chosen experts (tests). ``trt``: a TRT shim to use (tests).
    """
    t0 = time.perf_counter()
    if isinstance(given, ExportOptions):
        opts = given
    else:
        given = {k: v for k, v in given.items()}
        if model is None and given.get("weights") and str(given["weights"]).lower().endswith(".onnx") \
                and given.get("format") != "onnx":
            given = _fill_from_onnx(given)
        opts = validate(given)
    fmt = FORMATS[opts.format]
    missing = missing_modules(fmt, opts)
    if missing:
        hints = {"onnx": "pip install 'moefusion[export]'", "onnxscript": "pip install 'moefusion[export]'",
                 "tensorrt": "TensorRT: JetPack's python3-libnvinfer, pip install tensorrt, or tensorrt-rtx-cu13"}
        raise UserError(f"--format {opts.format} needs {', '.join(missing)}: "
                        + "; ".join(dict.fromkeys(hints.get(m, f'pip install {m}') for m in missing)))
    src = _Source(opts, model, weights_info)
    lines: list[str] = []

    if opts.format == "onnx":
        if src.kind != "checkpoint" and src.kind != "model":
            raise UserError(f"--weights {src.path} with --format onnx: nothing to export; pass a checkpoint (.pt)")
        flavour, _, _ = resolve_flavour(opts)
        out = _files.check_writable(opts.output or _default_output(opts, src.stem, flavour))
        res = export_onnx(src.load(), out, opts, flavour=flavour, routes=routes, weights_info=src.info)
        lines.append(_onnx_line(res, opts))
        if flavour == "plugin":
            lines.append("note: the plugin flavour runs in TensorRT with the moefusion plugins only "
                         "(trtexec --dynamicPlugins=libmoefusion_trt_plugins.so), not in ONNX Runtime")
        return ExportResult("onnx", [out], lines, onnx=res, seconds=time.perf_counter() - t0)

    if opts.format == "engine":
        from .trt_shim import TRT

        if src.kind == "engine":
            raise UserError(f"--weights {src.path} is already an engine; to package it use --format triton "
                            "--triton-platform tensorrt")
        trt = trt or TRT()
        opts = _opset_for(trt, opts, given)
        engine_path = _files.check_writable(opts.output or _default_output(opts, src.stem, "standard"))
        onnx_path = engine_path.with_suffix(".onnx")
        build, res = _build(src, opts, engine_path, onnx_path, trt, lines, routes=routes)
        lines.append(f"run it: run_pipeline --model {engine_path} --ir IR --vis VIS   "
                     f"(or trtexec --loadEngine={engine_path.name})")
        return ExportResult("engine", [engine_path, Path(str(engine_path) + ".json"), onnx_path], lines,
                            onnx=res, engine=build, seconds=time.perf_counter() - t0)

    return _triton(src, opts, lines, t0, routes=routes, trt=trt, given=given)


def _opset_for(trt, opts: ExportOptions, given) -> ExportOptions:
    """TensorRT 8.6 (JetPack 6.0) parses opset 17 at most: use it unless --opset was given."""
    from .formats import replace

    if trt.major < 10 and opts.opset > 17 and (isinstance(given, ExportOptions) or given.get("opset") is None):
        log.info("%s: exporting with opset 17 (its ONNX parser's newest)", trt.describe())
        return replace(opts, opset=17)
    return opts


def _triton(src: _Source, opts: ExportOptions, lines, t0, *, routes=False, trt=None, given=None) -> ExportResult:
    from .onnx_export import read_metadata
    from .triton import config_pbtxt, io_from_metadata, model_dir_files

    name = opts.triton_name or f"moefusion_{src.preset}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UserError(f"--triton-name {name!r}: use letters, digits, '_', '.' and '-' only")
    repo = Path(opts.output) if opts.output else _default_output(opts, src.stem, "standard")
    if repo.exists() and not repo.is_dir():
        raise UserError(f"cannot write {repo}: a file of that name exists; give the repository folder with -o")
    model_dir = repo / name
    tensorrt = opts.triton_platform == "tensorrt"
    if tensorrt:
        from .trt_shim import TRT

        trt = trt or TRT()
        opts = _opset_for(trt, opts, given)
    if src.kind == "engine" and not tensorrt:
        raise UserError(f"--weights {src.path} is an engine: add --triton-platform tensorrt")
    build = res = None
    with _files.atomic_dir(model_dir) as tmp:
        files = model_dir_files(tmp, opts.triton_platform)
        files["model"].parent.mkdir(parents=True)
        if not tensorrt:
            flavour, _, _ = resolve_flavour(opts)
            if src.kind == "onnx":
                meta = read_moefusion_onnx(src.path)
                _check_onnx_fits(src.path, meta, opts)
                if opts.half and meta.get("precision") != "fp16":
                    _make_onnx(src, opts, files["model"], flavour, half=True, routes=routes, reuse=False, lines=lines)
                else:
                    shutil.copyfile(src.path, files["model"])
                meta = read_metadata(files["model"])
            else:
                res = export_onnx(src.load(), files["model"], opts, flavour=flavour, routes=routes,
                                  weights_info=src.info)
                lines.append(_onnx_line(res, opts))
                meta = read_metadata(files["model"])
        elif src.kind == "engine":
            from .engine import sidecar_path, verify_engine

            side = verify_engine(src.path, trt=trt)
            shutil.copyfile(src.path, files["model"])
            shutil.copyfile(sidecar_path(src.path), sidecar_path(files["model"]))
            meta = dict(side.get("onnx_metadata", {}))
        else:
            with tempfile.TemporaryDirectory(prefix="moefusion-triton-") as work:
                build, res = _build(src, opts, files["model"], Path(work) / "model.onnx", trt, lines, routes=routes,
                                    reuse_onnx=False)
                meta = dict(build.sidecar.get("onnx_metadata", {}))
        ins, outs, max_batch, dyn_batch = io_from_metadata(_decoded(meta))
        files["config"].write_text(config_pbtxt(name, opts.triton_platform, ins, outs, max_batch_size=max_batch,
                                                instances=opts.triton_instances, dynamic_batching=dyn_batch))
        lines[:] = [ln.replace(str(tmp), str(model_dir)) for ln in lines]
    lines.append(f"Triton: {model_dir} ({opts.triton_platform}, max_batch_size {max_batch}, "
                 f"{opts.triton_instances} instance(s)); serve it with "
                 f"tritonserver --model-repository={repo.resolve()}")
    return ExportResult("triton", [model_dir], lines, onnx=res, engine=build, seconds=time.perf_counter() - t0)


def _decoded(meta: dict) -> dict:
    """Metadata with JSON strings decoded (sidecar copies keep them as strings)."""
    import json

    out = {}
    for k, v in meta.items():
        if isinstance(v, str) and k in ("inputs", "outputs", "imgsz", "dynamic", "batch_dynamic", "config", "io"):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out
