"""torch -> ONNX with live expert routing, metadata, checks; and reading a moefusion ONNX back.

Exporters: opset >= 18 uses torch.onnx's dynamo exporter (dynamic H/W through torch.export),
opset <= 17 the TorchScript exporter (TensorRT 8.6 / JetPack 6.0 parse opset 17 at most; and
torchvision's detection heads export only through it).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import files as _files
from .._version import __version__
from ..errors import UserError
from ..kernels.onnx import register_schemas
from ..model import stream as streaming
from ..model.checkpoint import default_weights, model_from_checkpoint, read_checkpoint
from . import fp16 as fp16mod
from . import stream as stream_io
from .formats import ExportOptions
from .wrapper import (
    DETECTION_OUTPUTS,
    MOE_LAYERS,
    PLUGIN_DOMAIN,
    PLUGIN_GATE,
    ExportModule,
    onnx_translations,
    register_torchscript_symbolics,
)

log = logging.getLogger("moefusion.export")

ONNX_FORMAT = "moefusion-onnx"
ONNX_FORMAT_VERSION = 1
META = "moefusion."  # prefix of our metadata_props keys
INPUT_NAMES = ("ir", "vis")
NORMALISATION = (
    "Inputs are single-channel float32 images in [0, 1], [B, 1, H, W], registered pixel to pixel. "
    "ir: 8-bit / 255; 16-bit (radiometric Y16) robust percentile AGC (1st..99th percentile -> 0..1, clipped); "
    "3-channel IR converted to gray first. vis: luminance Y of YCrCb (BT.601 as OpenCV computes it) / 255 "
    "(or / 65535 for 16-bit); a colour visible image keeps its chroma, recombined after fusion. "
    "Exactly moefusion.data.preprocess.prepare_pair. Any H, W (padded to a multiple of 32 inside, cropped back)."
)
IO_DOC = {
    "ir": ("input", [0.0, 1.0], "infrared image, see normalisation"),
    "vis": ("input", [0.0, 1.0], "visible luminance, see normalisation"),
    "fused": ("output", [0.0, 1.0], "fused luminance, clamped to [0, 1]; recombine with the visible chroma"),
    "attention": ("output", [0.0, 1.0], "detection-driven attention max(a_vis, a_ir), upsampled to the input size"),
    **{f"route_{n}": ("output", None, f"experts chosen by {n} per sample (int64 [B, k]), best first")
       for n in MOE_LAYERS},
    **{n: ("output", None, (f"detections of the {n.split('_')[0]} detector: {n.split('_')[1]} "
                            "(boxes xyxy pixels; labels 0-based class ids)")) for n in DETECTION_OUTPUTS},
    **stream_io.io_docs(),
}


@dataclass
class OnnxExport:
    path: Path
    metadata: dict
    seconds: float
    flavour: str
    precision: str
    sha256: str = ""
    reused: bool = False
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Loading the model to export
# ------------------------------------------------------------------------------------------------

def load_checkpoint_model(weights: str | Path | None):
    """(model in eval mode, {'path', 'name', 'sha256'}) from a moefusion checkpoint (None = bundled)."""
    path = default_weights() if weights is None else Path(weights)
    if path.suffix.lower() not in (".pt", ".pth", ".ckpt"):
        raise UserError(f"--weights {path}: expected a moefusion checkpoint (.pt); "
                        "an .onnx or .engine is only accepted by --format engine/triton")
    ckpt = read_checkpoint(path)  # UserError naming the file when it is not a moefusion checkpoint
    model = model_from_checkpoint(ckpt, dispatch="sparse", source=str(path))
    return model.eval(), {"path": str(path), "name": path.name, "sha256": _files.sha256_file(path)}


# ------------------------------------------------------------------------------------------------
# Export
# ------------------------------------------------------------------------------------------------

def _sample_inputs(opts: ExportOptions, cfg=None):
    """Trace inputs: the static size, or a small size inside the dynamic range (nothing is frozen);
    with --stream also a (random) state for model config ``cfg`` (forward's ``*state``)."""
    if opts.dynamic is None:
        h, w = opts.imgsz
    else:
        (h0, w0), (h1, w1) = opts.dynamic
        h = min(max(64, h0), h1)
        w = min(max(96, w0), w1)
        if h == w:  # distinct sizes keep H and W from being unified while tracing
            w = w + 1 if w < w1 else w - 1
    g = torch.Generator().manual_seed(0)
    b = opts.batch if not opts.batch_dynamic else max(2, opts.batch)
    frames = (torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g))
    if not opts.stream:
        return frames
    shapes = streaming.state_shapes(cfg, b, h, w)
    return (*frames, *(torch.rand(shapes[n], generator=g) for n in streaming.STATE_NAMES))


def _quiet():
    """Silence the exporters' progress prints and known-harmless warnings."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def _export_dynamo(module: ExportModule, args, opts: ExportOptions, output_names):
    dyn = None
    if opts.dynamic is not None:
        # torch.export specialises sizes 0/1; at H <= 32 the deepest FPN level is 1x1, so trace with H, W >= 33.
        # The ONNX graph itself is size-generic: the real range goes to metadata and TensorRT profiles.
        hd = torch.export.Dim("H", min=33, max=16384)
        wd = torch.export.Dim("W", min=33, max=16384)
        axes = {2: hd, 3: wd}
        if opts.batch_dynamic:
            axes = {0: torch.export.Dim("B", min=1, max=max(opts.batch, 2) * 64), **axes}
        dyn = {"ir": axes, "vis": dict(axes)}
        if module.stream:  # the state's dims that follow the padded H, W (no affine relation to them: AUTO)
            dyn["state"] = tuple(
                {i: (axes[0] if d == "B" else torch.export.Dim.AUTO) for i, d in enumerate(st["dims"])
                 if isinstance(d, str) and (d != "B" or 0 in axes)}
                for st in stream_io.state_spec(module.model.cfg)["states"])
    table = None
    if module.flavour == "plugin":
        table = onnx_translations()
    with _quiet():
        prog = torch.onnx.export(
            module, args, dynamo=True, input_names=module.input_names, output_names=output_names,
            dynamic_shapes=dyn, opset_version=opts.opset, custom_translation_table=table,
            optimize=True, external_data=False, verbose=False,
        )
    return prog.model_proto


def _export_torchscript(module: ExportModule, args, opts: ExportOptions, output_names):
    import onnx

    dyn = None
    if opts.dynamic is not None:
        dyn = {n: ({0: "B"} if opts.batch_dynamic else {}) | {2: "H", 3: "W"} for n in INPUT_NAMES + ("fused", "attention")}
        if module.stream:
            for st in stream_io.state_spec(module.model.cfg)["states"]:
                axes = {i: stream_io.dim_name(d) for i, d in enumerate(st["dims"]) if isinstance(d, str)}
                axes = {i: a for i, a in axes.items() if i or opts.batch_dynamic}
                dyn[st["input"]] = dyn[st["output"]] = axes
    if module.detections:
        dyn = dict(dyn or {})
        for n in DETECTION_OUTPUTS:
            dyn[n] = {0: f"N_{n.split('_')[0]}"}
    custom = None
    if module.flavour == "plugin":
        register_torchscript_symbolics(opts.opset)
        custom = {PLUGIN_DOMAIN: 1}
    buf = io.BytesIO()
    with _quiet():
        torch.onnx.export(
            module, args, buf, dynamo=False,
            input_names=module.input_names, output_names=output_names,
            dynamic_axes=dyn, opset_version=opts.opset, do_constant_folding=True, custom_opsets=custom,
        )
    return onnx.load_from_string(buf.getvalue())


def build_metadata(model, opts: ExportOptions, flavour: str, precision: str, output_names, weights_info) -> dict:
    """The metadata_props of our ONNX files (all values strings; JSON where structured)."""
    b = "B" if opts.batch_dynamic else opts.batch
    hw = ["H", "W"] if opts.dynamic is not None else list(opts.imgsz)
    ios = []
    spec = stream_io.state_spec(model.cfg) if opts.stream else None
    state_dims = {n: st["dims"] for st in (spec or {}).get("states", []) for n in (st["input"], st["output"])}
    state_inputs = [st["input"] for st in spec["states"]] if spec else []
    for name in list(INPUT_NAMES) + state_inputs + list(output_names):
        kind, rng, doc = IO_DOC[name]
        shape = [b, 1, *hw] if name in ("ir", "vis", "fused", "attention") else None
        dtype = "float32" if rng else "int64/float32"
        if name in state_dims:
            shape, dtype = [b if d == "B" else d for d in state_dims[name]], "float32"
        ios.append({"name": name, "kind": kind, "dtype": dtype, "shape": shape, "range": rng, "description": doc})
    cfg = model.cfg
    md = {
        "format": ONNX_FORMAT,
        "format_version": str(ONNX_FORMAT_VERSION),
        "version": __version__,
        "preset": str(model.preset),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "weights": weights_info.get("name", "") if weights_info else "",
        "weights_sha256": weights_info.get("sha256", "") if weights_info else "",
        "flavour": flavour,
        "dispatch": opts.dispatch if flavour == "standard" else "sparse",
        "precision": precision,
        "routing": f"per frame in the graph: top-{cfg.k} of {cfg.moge_experts} experts in each of "
                   f"{', '.join(MOE_LAYERS)} (TopK + Softmax{' in moefusion::MoEGate' if flavour == 'plugin' else ''})",
        "inputs": json.dumps([i["name"] for i in ios if i["kind"] == "input"]),
        "outputs": json.dumps([i["name"] for i in ios if i["kind"] == "output"]),
        "io": json.dumps(ios),
        "normalisation": NORMALISATION,
        "imgsz": json.dumps(list(opts.imgsz)),
        "dynamic": json.dumps([list(opts.dynamic[0]), list(opts.dynamic[1])] if opts.dynamic else None),
        "batch": str(opts.batch),
        "batch_dynamic": json.dumps(opts.batch_dynamic),
        "opset": str(opts.opset),
        "exporter": f"torch.onnx ({'dynamo' if opts.opset >= 18 else 'torchscript'}) torch {torch.__version__}",
        "detections": json.dumps(bool(opts.detections)),
    }
    if spec:  # what the runtime needs to build the first (zero) state for any frame size (export/stream.py)
        md["stream"] = json.dumps(spec)
    return {META + k: v for k, v in md.items()}


def _name_state_dims(proto, cfg, opts: ExportOptions) -> None:
    """Readable dim names on the state inputs/outputs (the exporter's are s21, 16*((H + 31)//32)...):
    Hp_2 = the padded H over 2 (moefusion.stream metadata), B for a dynamic batch; and H, W on fused."""
    dims = {n: st["dims"] for st in stream_io.state_spec(cfg)["states"] for n in (st["input"], st["output"])}
    for vi in list(proto.graph.input) + list(proto.graph.output):
        shape = vi.type.tensor_type.shape.dim
        wanted = dims.get(vi.name) or (["B", 1, "H/", "W/"] if vi.name in ("fused", "attention") else None)
        if wanted is None:
            continue
        for d, want in zip(shape, wanted):
            if not d.dim_param:  # a static size or batch stays a number
                continue
            d.dim_param = want[0] if want in ("H/", "W/") else str(stream_io.dim_name(want))


def check_live_routing(model_proto, flavour: str) -> None:
    """A bug guard: the graph must route every input (3 gates), never constants from the dummy input.

    Each MoE layer's gate is either a ``moefusion::MoEGate`` node (plugin flavour, grid descriptor) or its
    ``MatMul`` with ``w_gate`` feeding a TopK (standard flavour; also the plugin flavour's moments gates,
    which the plugin does not implement).
    """
    nodes = model_proto.graph.node
    plugin_gates = sum(n.op_type == PLUGIN_GATE and n.domain == PLUGIN_DOMAIN for n in nodes)
    topk_inputs = {n.input[0] for n in nodes if n.op_type == "TopK"}
    # A stream graph smooths the logits before TopK: the gate's MatMul reaches TopK through a few elementwise ops.
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def reaches_topk(name: str, depth: int = 6) -> bool:
        if name in topk_inputs:
            return True
        return depth > 0 and any(reaches_topk(o, depth - 1) for c in consumers.get(name, ()) if c.op_type != "TopK"
                                 for o in c.output)

    graph_gates = sum(n.op_type == "MatMul" and any(i.endswith("w_gate") for i in n.input)
                      and reaches_topk(n.output[0]) for n in nodes)
    found = plugin_gates + graph_gates
    what = f"{PLUGIN_GATE} + w_gate MatMul -> TopK" if flavour == "plugin" else "w_gate MatMul -> TopK"
    if found != len(MOE_LAYERS) or (flavour != "plugin" and plugin_gates):
        raise RuntimeError(f"exported graph has {found} {what} gates, expected {len(MOE_LAYERS)}: "
                           "routing was frozen or lost in export (a bug)")


def export_onnx(model, output: str | Path, opts: ExportOptions, *, flavour: str = "standard", routes: bool = False,
                weights_info: dict | None = None) -> OnnxExport:
    """Export ``model`` (a MoEFusion) to ``output`` (.onnx), written atomically. fp16 when opts.half."""
    import onnx

    output = _files.check_writable(output)
    model = model.eval()
    module = ExportModule(model, dispatch=opts.dispatch, flavour=flavour, routes=routes,
                          detections=opts.detections, stream=opts.stream).eval()
    names = module.output_names
    args = _sample_inputs(opts, model.cfg)
    t0 = time.perf_counter()
    with torch.no_grad():
        if opts.opset >= 18:
            proto = _export_dynamo(module, args, opts, names)
        else:
            proto = _export_torchscript(module, args, opts, names)
    check_live_routing(proto, flavour)
    if opts.stream:
        _name_state_dims(proto, model.cfg, opts)
    precision = "fp16" if opts.half else "fp32"
    notes = []
    if opts.half:
        proto = fp16mod.convert_to_fp16(proto)
        notes.append("fp16: float16 weights and compute, float32 inputs/outputs, gates (resize, MatMul, TopK, "
                     "Softmax) in float32")
    md = build_metadata(model, opts, flavour, precision, names, weights_info)
    del proto.metadata_props[:]
    for k, v in md.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "moefusion-export"
    proto.producer_version = __version__
    proto.doc_string = (f"MoE-Fusion ({model.preset}) infrared + visible fusion, exported by moefusion {__version__}. "
                        f"Inputs ir, vis [B,1,H,W] float32 in [0,1]; outputs fused (clamped to [0,1]), attention. "
                        + ("Stream graph: also inputs state_* (zeros before a stream's first frame) and outputs "
                           "next_* (feed them back as state_* with the next frame); shapes in moefusion.stream. "
                           if opts.stream else "") +
                        f"{NORMALISATION}")
    if flavour == "plugin":
        register_schemas()  # onnx.checker then knows MoEGate / MoECombine
        if not any(o.domain == PLUGIN_DOMAIN for o in proto.opset_import):
            proto.opset_import.add(domain=PLUGIN_DOMAIN, version=1)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise RuntimeError(f"the exported ONNX fails onnx.checker (a bug): {str(e).splitlines()[0]}") from None
    data = proto.SerializeToString()
    _files.atomic_write_bytes(output, data)
    seconds = time.perf_counter() - t0
    return OnnxExport(output, md, seconds, flavour, precision, _files.sha256_file(output), notes=notes)


# ------------------------------------------------------------------------------------------------
# Reading back
# ------------------------------------------------------------------------------------------------

def read_metadata(path: str | Path) -> dict:
    """Our metadata of an ONNX file, without the ``moefusion.`` prefix; JSON values decoded."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    out = {}
    for p in proto.metadata_props:
        if not p.key.startswith(META):
            continue
        key = p.key[len(META):]
        try:
            out[key] = json.loads(p.value) if key in _JSON_KEYS else p.value
        except ValueError:
            out[key] = p.value
    return out


_JSON_KEYS = {"config", "inputs", "outputs", "io", "imgsz", "dynamic", "batch_dynamic", "detections", "quantization",
              "stream"}


def read_moefusion_onnx(path: str | Path, flag: str = "--weights") -> dict:
    """Validate that ``path`` is an ONNX written by moefusion-export; return its metadata."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors have many types
        raise UserError(f"{flag} {path}: not a readable ONNX file ({type(e).__name__}); "
                        "export one with moefusion-export --format onnx") from None
    keys = {p.key: p.value for p in proto.metadata_props}
    ins = [i.name for i in proto.graph.input]
    outs = [o.name for o in proto.graph.output]
    if keys.get(META + "format") != ONNX_FORMAT:
        raise UserError(f"{flag} {path}: an ONNX from another model (inputs {ins}, outputs {outs}, no moefusion "
                        "metadata); export a moefusion ONNX with moefusion-export --weights W.pt --format onnx")
    if int(keys.get(META + "format_version", "0")) > ONNX_FORMAT_VERSION:
        raise UserError(f"{flag} {path}: written by a newer moefusion ({keys.get(META + 'version')}); "
                        "upgrade moefusion or re-export it with this one")
    if sorted(i for i in ins if not i.startswith("state_")) != sorted(INPUT_NAMES) or "fused" not in outs:
        raise UserError(f"{flag} {path}: inputs {ins} / outputs {outs} are not ir, vis -> fused, attention; "
                        "re-export it with moefusion-export --format onnx")
    return read_metadata(path)
