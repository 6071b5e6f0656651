"""The export's INT8 stage: a float32 ONNX -> an ONNX with explicit Q/DQ nodes (NVIDIA ModelOpt's ONNX
post-training quantization), calibrated on real pairs made exactly as ``run_pipeline`` makes them.

TensorRT 10 and 11 (and TensorRT-RTX) build INT8 from Q/DQ nodes in a strongly typed network; there
is no implicit (calibrator) INT8 in TensorRT 11 and TensorRT-RTX. The plan for this model:

- INT8: the convolutions whose weights are constants, as far as ModelOpt's rules quantize them (the
  detectors' backbones and FPN, the fusion conv, the attention heads; ModelOpt leaves the encoders' first
  layers alone), and the residual Adds TensorRT fuses into them; no other op gets Q/DQ nodes;
- float16: everything else, in particular the experts' convolutions, whose weights are gathered per frame
  at run time (``Gather`` of the stacked expert weights: not constants, so not quantizable ahead of time);
- float32: the gates (the descriptor ``Resize``, the ``MatMul`` with ``w_gate``, ``TopK``, ``Softmax``), so
  routing decisions are not moved by quantization noise.

``layer_report`` says per ONNX which convolutions got INT8 and which stayed float16; the export prints it
and records it in the ONNX's metadata and the engine's sidecar. Frames come from
``moefusion.calibration.int8.CalibrationData`` (one direction: calibration knows nothing of export).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import files as _files
from ..errors import UserError
from .fp16 import _gate_nodes

log = logging.getLogger("moefusion.export")

INSTALL_HINT = "pip install 'moefusion[int8]' (NVIDIA ModelOpt's ONNX quantization: nvidia-modelopt and its ONNX tools)"
CALIBRATION_METHOD = "entropy"
FP32_OP_TYPES = ["MatMul", "TopK", "Softmax"]  # the gates: the only MatMuls in our graphs are x @ w_gate
# Q/DQ on convolutions only (ModelOpt adds them on the residual Adds TensorRT fuses into them): with ModelOpt's
# default op list, the Mul/Concat/pooling ops of the gates' descriptor path were quantized too and the routing of
# the edge weights (moments gates, near-tied experts) changed on 15 of 27 layer decisions on 9 real pairs;
# convolutions only: 4 of 27.
QUANTIZED_OP_TYPES = ["Conv"]


@dataclass
class QdqExport:
    path: Path
    info: dict  # sidecar "quantization"
    seconds: float
    reused: bool = False


def modelopt_version() -> str | None:
    try:
        return importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        return None


def require_modelopt() -> str:
    """ModelOpt's version, or a one-line UserError with the install command (checked before any export)."""
    version = modelopt_version()
    if version is None:
        raise UserError(f"--int8 needs NVIDIA ModelOpt to insert Q/DQ nodes: {INSTALL_HINT}")
    try:
        with _quiet():
            import modelopt.onnx.quantization  # noqa: F401
    except ImportError as e:
        raise UserError(f"--int8: nvidia-modelopt {version} is installed but its ONNX quantization does not import "
                        f"({str(e).splitlines()[0]}); {INSTALL_HINT}") from None
    return version


@contextlib.contextmanager
def _quiet():
    """ModelOpt logs every step at INFO through its own handlers and prints; keep the CLI output ours."""
    loggers = [logging.getLogger(n) for n in ("modelopt", "modelopt.onnx", "modelopt.onnx.autocast", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


# ------------------------------------------------------------------------------------------------
# Which layers: the plan and the report
# ------------------------------------------------------------------------------------------------

def gate_nodes(graph) -> list[str]:
    """The gate nodes (kept float32): TopK/Softmax, MatMul with w_gate, the Resize/reshapes feeding them."""
    producers = {o: n for n in graph.node for o in n.output}
    return sorted(_gate_nodes(graph, producers))


def _constant_test(graph):
    consts = {i.name for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}

    def constant(name: str) -> bool:
        if name in consts:
            return True
        p = producers.get(name)
        if p is None:
            return False
        if p.op_type == "Constant":
            return True
        if p.op_type in ("DequantizeLinear", "Cast", "Identity"):
            return constant(p.input[0])
        return False

    return constant, producers


def expert_convs(graph) -> list[str]:
    """Convolutions whose weight is computed in the graph (the experts' weights gathered per frame)."""
    constant, _ = _constant_test(graph)
    return [n.name for n in graph.node if n.op_type == "Conv" and not constant(n.input[1])]


def layer_report(proto) -> dict:
    """Which layers of a Q/DQ ONNX run in which precision.

    {'int8': [conv], 'fp16_experts': [conv], 'fp16_other': [conv], 'fp32': [gate nodes], 'qdq_pairs': n};
    a convolution is INT8 when both its input and its weight come from DequantizeLinear nodes.
    """
    g = proto.graph
    _, producers = _constant_test(g)
    experts = set(expert_convs(g))

    def dq(name):
        return name in producers and producers[name].op_type == "DequantizeLinear"

    int8, fp16_experts, fp16_other = [], [], []
    for n in g.node:
        if n.op_type != "Conv":
            continue
        if dq(n.input[0]) and dq(n.input[1]):
            int8.append(n.name)
        else:
            (fp16_experts if n.name in experts else fp16_other).append(n.name)
    return {"int8": int8, "fp16_experts": fp16_experts, "fp16_other": fp16_other, "fp32": gate_nodes(g),
            "qdq_pairs": sum(n.op_type == "QuantizeLinear" for n in g.node)}


def describe_layers(report: dict) -> str:
    """One line: how many convolutions are INT8, which stay float16 and what is float32."""
    parts = [f"{len(report['int8'])} convolutions INT8"]
    if report["fp16_experts"]:
        parts.append(f"{len(report['fp16_experts'])} expert convolutions fp16 (weights gathered per frame)")
    other = report["fp16_other"]
    if other:
        shown = ", ".join(other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        parts.append(f"{len(other)} other convolutions fp16 (ModelOpt left them unquantized: {shown})")
    parts.append(f"gates fp32 ({len(report['fp32'])} nodes: descriptor, MatMul w_gate, TopK, Softmax); "
                 "all other ops fp16")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------
# Calibration frames
# ------------------------------------------------------------------------------------------------

def calibration_arrays(data, batch: int) -> dict[str, np.ndarray]:
    """{'ir', 'vis'}: [N, 1, H, W] float32 of the calibration pairs, N a multiple of ``batch``."""
    irs, viss = [], []
    for _, ir_u, vis_y in data.inputs():
        irs.append(ir_u)
        viss.append(vis_y)
    n = len(irs) - len(irs) % batch
    if n == 0:
        raise UserError(f"--calib-data {data.spec}: {len(irs)} pairs, fewer than one batch of {batch}")
    return {"ir": np.ascontiguousarray(np.concatenate(irs[:n])), "vis": np.ascontiguousarray(np.concatenate(viss[:n]))}


def calibration_fingerprint(data) -> str:
    """sha256 of what the calibration reads: the pairs (paths, sizes, mtimes), their count and the input size."""
    h = hashlib.sha256()
    h.update(json.dumps([data.spec, data.frames, list(data.size or [])]).encode())
    files = []
    if data.kind == "folder":
        for p in data.pairs:
            files += [p.ir, p.vis]
    else:
        files = list(data.videos)
        h.update(json.dumps([p.ir for p in data.pairs]).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------

def quantize_onnx(src: str | Path, out: str | Path, data, *, batch: int, extra_metadata: dict | None = None) -> QdqExport:
    """``src`` (a float32 moefusion ONNX, standard flavour) -> ``out`` with Q/DQ nodes, INT8 + fp16 + fp32 gates.

    ``data``: a ``CalibrationData`` at the engine's input size. Written atomically; ``out`` carries our
    metadata with ``moefusion.precision`` = int8 and ``moefusion.quantization`` (JSON: tool, method,
    calibration set, layer report).
    """
    import onnx

    version = require_modelopt()
    src, out = Path(src), _files.check_writable(out)
    proto = onnx.load(str(src), load_external_data=False)
    custom = sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise UserError(f"--int8: {src} has plugin nodes ({', '.join(custom)}); ONNX Runtime, which calibrates, cannot "
                        "run them: use the standard flavour (--plugins off)")
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("moefusion.precision", "fp32") != "fp32":
        raise UserError(f"--int8: {src} is a {meta.get('moefusion.precision')} ONNX; quantize the float32 export "
                        "(drop --half, or pass the fp32 .onnx)")
    arrays = calibration_arrays(data, batch)
    h, w = arrays["ir"].shape[-2:]
    shape = f"{batch}x1x{h}x{w}"
    excluded = ["^" + re.escape(n) + "$" for n in gate_nodes(proto.graph) + expert_convs(proto.graph)]
    t0 = time.perf_counter()
    from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory(prefix="moefusion-qdq-") as work:
        tmp = Path(work) / "model.qdq.onnx"
        try:
            with _quiet():
                quantize(str(src), quantize_mode="int8", calibration_data=arrays,
                         calibration_method=CALIBRATION_METHOD, calibration_shapes=f"ir:{shape},vis:{shape}",
                         calibration_eps=["cpu"], nodes_to_exclude=excluded, op_types_to_quantize=QUANTIZED_OP_TYPES,
                         op_types_to_exclude_fp16=FP32_OP_TYPES, high_precision_dtype="fp16",
                         output_path=str(tmp), log_level="ERROR")
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - ModelOpt raises many kinds; one line with the cause
            raise UserError(f"--int8: ModelOpt {version} could not quantize {src} "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
        qproto = onnx.load(str(tmp))
    report = layer_report(qproto)
    seconds = time.perf_counter() - t0
    info = {"tool": f"nvidia-modelopt {version}", "method": f"ModelOpt ONNX PTQ int8, {CALIBRATION_METHOD} calibration",
            "calibration": data.describe(), "calib_data": data.spec, "frames": int(arrays["ir"].shape[0]),
            "size": [int(h), int(w)], "fingerprint": calibration_fingerprint(data),
            "int8_layers": report["int8"], "fp16_expert_layers": report["fp16_experts"],
            "fp16_other_layers": report["fp16_other"], "fp32_layers": report["fp32"],
            "qdq_pairs": report["qdq_pairs"], "summary": describe_layers(report)}
    del qproto.metadata_props[:]
    merged = dict(meta)
    merged["moefusion.precision"] = "int8"
    merged["moefusion.quantization"] = json.dumps({k: v for k, v in info.items()
                                                   if not k.endswith("_layers")})
    merged.update(extra_metadata or {})
    for k, v in merged.items():
        qproto.metadata_props.add(key=k, value=v)
    _files.atomic_write_bytes(out, qproto.SerializeToString())
    return QdqExport(out, info, seconds)
