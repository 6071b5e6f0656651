"""ONNX -> TensorRT engine with the Python API, a sidecar ``<engine>.json``, reuse and verification.

The engine file is the plain serialized engine (``trtexec --loadEngine``, DeepStream's nvinfer and
``run_pipeline --model X.engine`` load it as is); nothing is prepended. Everything else goes to the
sidecar: TensorRT module and version, GPU, what the engine runs on (``runs_on``), precision, profile,
plugin libraries, the INT8 quantization, the sha256 of the ONNX it was built from and of the engine
itself, the ONNX's metadata. An existing engine is reused only when all of those match what a new
build would record. Networks are strongly typed: the precision is the ONNX's (fp32, fp16, Q/DQ INT8).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import files as _files
from .._version import __version__
from ..errors import UserError
from .trt_shim import TRT, gpu_slug

log = logging.getLogger("moefusion.export")

ENGINE_FORMAT = "moefusion-engine"
SIDECAR_VERSION = 2  # 2: strongly typed builds, "runs_on", "quantization" (was "int8_calibration")
REUSE_KEYS = ("onnx_sha256", "tensorrt", "gpu", "precision", "profile", "plugin_libraries", "plugin_sha256",
              "quantization")


@dataclass
class EngineBuild:
    path: Path
    sidecar: dict
    reused: bool
    seconds: float
    reason: str = ""


def sidecar_path(engine: str | Path) -> Path:
    return Path(str(engine) + ".json")


def read_sidecar(engine: str | Path) -> dict | None:
    side = sidecar_path(engine)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == ENGINE_FORMAT else None


def default_timing_cache(trt: TRT, gpu: dict | None) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "moefusion" / "tensorrt"
    return root / f"{trt.module}-{trt.version}-{gpu_slug(gpu)}.timing"


def _profile(shapes: dict) -> dict:
    return {name: {k: list(v) for k, v in shapes.items()} for name in ("ir", "vis")}


def _wanted(trt: TRT, gpu, precision, onnx_sha, shapes, plugin_libs, quantization) -> dict:
    libs = [str(Path(p).resolve()) for p in plugin_libs]
    return {
        "onnx_sha256": onnx_sha,
        "tensorrt": {"module": trt.module, "version": trt.version},
        "gpu": gpu,
        "precision": precision,
        "profile": _profile(shapes),
        "plugin_libraries": libs,
        "plugin_sha256": {p: _files.sha256_file(p) for p in libs},
        "quantization": quantization,
    }


def reuse_reason(engine: Path, wanted: dict) -> tuple[bool, str]:
    """(True, '') when the engine on disk matches ``wanted``; else (False, why it must be rebuilt)."""
    if not engine.is_file():
        return False, "no engine yet"
    side = read_sidecar(engine)
    if side is None:
        return False, f"{sidecar_path(engine).name} is missing or not ours"
    for key in REUSE_KEYS:
        if side.get(key) != wanted.get(key):
            return False, f"{key} differs (engine: {side.get(key)!r}, now: {wanted.get(key)!r})"
    if side.get("engine_sha256") != _files.sha256_file(engine):
        return False, "the engine file changed since its sidecar was written"
    return True, ""


def custom_nodes(onnx_path: str | Path) -> list[str]:
    """'domain::op' of the nodes outside the standard ONNX domains (plugin nodes), sorted, unique."""
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    return sorted({f"{n.domain}::{n.op_type}" for n in g.node if n.domain not in ("", "ai.onnx")})


def onnx_precision(onnx_path: str | Path) -> str:
    """The precision an ONNX carries: from our metadata, else int8 when it has Q/DQ nodes, else fp32."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("moefusion.precision"):
        return meta["moefusion.precision"]
    return "int8" if any(n.op_type == "QuantizeLinear" for n in proto.graph.node) else "fp32"


def build_engine(onnx_path: str | Path, engine_path: str | Path, opts, *, trt: TRT | None = None,
                 plugin_libs=(), onnx_meta: dict | None = None, quantization: dict | None = None) -> EngineBuild:
    """Build (or reuse) ``engine_path`` from ``onnx_path`` for ``opts`` (shapes, workspace, timing cache...).

    The precision is the ONNX's own (fp32, an fp16 graph, or INT8 Q/DQ nodes): the network is strongly
    typed, no precision flags. ``opts.precision`` must agree with it (the export's ONNX stage sees to that).
    """
    trt = trt or TRT()
    gpu = trt.require_gpu()
    onnx_path, engine_path = Path(onnx_path), _files.check_writable(engine_path)
    precision = onnx_precision(onnx_path)
    if precision != opts.precision:
        raise UserError(f"{onnx_path} is a {precision} ONNX but {opts.precision} was asked for; export it again with "
                        "the precision flag you want (--half, --int8) or drop the flag")
    trt.check_precision(precision, gpu)
    if not trt.supports_plugin_layers:
        custom = custom_nodes(onnx_path)
        if custom:
            raise UserError(f"{onnx_path}: has plugin nodes ({', '.join(custom)}), which {trt.describe()} cannot take "
                            "(its ONNX parser aborts on plugin layers); export with --plugins off")
    shapes = opts.shapes()
    wanted = _wanted(trt, gpu, precision, _files.sha256_file(onnx_path), shapes, plugin_libs, quantization)
    if not opts.rebuild:
        ok, why = reuse_reason(engine_path, wanted)
        if ok:
            log.info("reusing %s: same ONNX, TensorRT, GPU, precision, profile and plugins", engine_path)
            return EngineBuild(engine_path, read_sidecar(engine_path), True, 0.0, "up to date")
        log.info("building %s (%s)", engine_path, why)
        reason = why
    else:
        reason = "--rebuild"

    t0 = time.perf_counter()
    builder = trt.trt.Builder(trt.logger)
    if plugin_libs:
        trt.load_plugin_libraries(plugin_libs)  # once per process
    network = trt.create_network(builder)
    parser = trt.trt.OnnxParser(network, trt.logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = trt.parser_errors(parser) or trt.logger.errors[-3:] or ["(no details)"]
        hint = "upgrade TensorRT (JetPack 6+, TensorRT >= 8.6) or export with --opset 17"
        if any("moefusion" in e or "MoE" in e or "plugin" in e.lower() for e in errors):
            hint = ("load the MoE plugins: build them (python -m moefusion.kernels.build) and pass --plugin-lib "
                    "build/kernels/libmoefusion_trt_plugins.so, or export with --plugins off")
        raise UserError(f"{onnx_path}: TensorRT ({trt.describe()}) cannot parse it, {len(errors)} error(s): "
                        f"{'; '.join(errors)}; {hint}")
    # here: runtime.backends' __init__ imports every backend (torch), not wanted by `import moefusion.export.engine`
    from ..runtime.backends.stream_state import stream_spec_from_metadata

    names = [network.get_input(i).name for i in range(network.num_inputs)]
    meta = onnx_meta if onnx_meta is not None else _metadata(onnx_path)
    spec, _ = stream_spec_from_metadata({k.removeprefix("moefusion."): v for k, v in meta.items()}, names)
    if sorted(n for n in names if spec is None or n not in spec.inputs) != ["ir", "vis"]:
        raise UserError(f"{onnx_path}: network inputs {names} are not ir, vis (and a stream graph's state_*); "
                        "export it with moefusion-export")

    config = builder.create_builder_config()
    trt.set_workspace(config, opts.workspace)
    profile = builder.create_optimization_profile()
    for name in ("ir", "vis"):
        profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    if spec is not None:  # the state's shapes follow the frames' (runtime.backends.stream_state)
        per = {k: spec.shapes(v[0], v[2], v[3]) for k, v in shapes.items()}
        for name in spec.inputs:
            profile.set_shape(name, per["min"][name], per["opt"][name], per["max"][name])
    config.add_optimization_profile(profile)

    cache_path = None
    if opts.timing_cache != "none" and trt.has_timing_cache:
        cache_path = Path(opts.timing_cache or default_timing_cache(trt, gpu))
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, ignore_mismatch=False):
            log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", cache_path)
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)

    trt.logger.errors.clear()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        first = trt.logger.errors[0] if trt.logger.errors else "no error was logged"
        raise UserError(f"{onnx_path}: TensorRT ({trt.describe()}) could not build the engine: "
                        f"{' '.join(first.split())[:400]}; a larger --workspace may help")
    data = bytes(memoryview(serialized))
    seconds = time.perf_counter() - t0

    outputs = [network.get_output(i).name for i in range(network.num_outputs)]
    runs_on = trt.runs_on(gpu)
    sidecar = {
        "format": ENGINE_FORMAT,
        "format_version": SIDECAR_VERSION,
        "engine": engine_path.name,
        "engine_bytes": len(data),
        "onnx": str(onnx_path.resolve()),
        **wanted,
        "runs_on": runs_on,
        "builder_flags": [],
        "strongly_typed": trt.strongly_typed,
        "inputs": names,
        "outputs": outputs,
        "workspace_gib": opts.workspace,
        "timing_cache": str(cache_path) if cache_path else None,
        "onnx_metadata": onnx_meta if onnx_meta is not None else _metadata(onnx_path),
        "moefusion_version": __version__,
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 2),
        "note": runs_on["summary"],
    }
    # Engine first, then its sidecar (with the engine's hash): a crash in between leaves a mismatch -> rebuild.
    _files.atomic_write_bytes(engine_path, data)
    sidecar["engine_sha256"] = _files.sha256_file(engine_path)
    _files.atomic_write_text(sidecar_path(engine_path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    if cache_path is not None:
        try:
            _files.atomic_write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
        except UserError as e:
            log.warning("timing cache not saved: %s", e)
    return EngineBuild(engine_path, sidecar, False, seconds, reason)


def _metadata(onnx_path: Path) -> dict:
    from .onnx_export import read_metadata  # here: imports torch (+3.8 s CPU on `from moefusion.export import verify_engine`)

    return read_metadata(onnx_path)


def verify_engine(engine: str | Path, *, precision: str | None = None, trt: TRT | None = None,
                  flag: str = "--weights") -> dict:
    """Check an existing engine against this machine; UserError (one line, with the fix) if it cannot load.

    Checks: the file and its sidecar exist and agree (sha256), the TensorRT module/version and the GPU
    are the ones it was built with, and (when given) the precision.
    """
    engine = Path(engine)
    rebuild = "rebuild it here with moefusion-export --weights W.pt --format engine"
    if not engine.is_file():
        raise UserError(f"{flag} {engine}: no such file")
    side = read_sidecar(engine)
    if side is None:
        raise UserError(f"{flag} {engine}: no moefusion sidecar {sidecar_path(engine).name}, so its TensorRT "
                        f"version, GPU and precision are unknown; {rebuild}")
    if side.get("engine_sha256") != _files.sha256_file(engine):
        raise UserError(f"{flag} {engine}: the file differs from the one its sidecar describes; {rebuild}")
    trt = trt or TRT()
    built = side.get("tensorrt", {})
    if (built.get("module"), built.get("version")) != (trt.module, trt.version):
        raise UserError(f"{flag} {engine}: built with {built.get('module')} {built.get('version')}, this machine has "
                        f"{trt.describe()} (engines load only in the TensorRT that built them); {rebuild}")
    gpu = trt.gpu()
    if side.get("gpu") and gpu and side["gpu"] != gpu:
        raise UserError(f"{flag} {engine}: built for {side['gpu']['name']} (sm {side['gpu']['compute_capability']}), "
                        f"this GPU is {gpu['name']} (sm {gpu['compute_capability']}); {rebuild}")
    if precision is not None and side.get("precision") != precision:
        raise UserError(f"{flag} {engine}: a {side.get('precision')} engine, {precision} was asked for; "
                        f"{rebuild} and the precision flag you want")
    return side
