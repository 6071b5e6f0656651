"""Triton Inference Server model repositories.

Layout (one model; other models already in the repository are left alone)::

    <repository>/<name>/config.pbtxt
    <repository>/<name>/1/model.onnx          (platform onnxruntime_onnx)
    <repository>/<name>/1/model.plan          (platform tensorrt_plan; + model.plan.json, the sidecar)

Batching follows the model: the sparse dispatch has a fixed batch (ONNX Conv's ``group`` is
static), so ``max_batch_size: 0`` and the dims include the batch; the dense dispatch exported with
``--dynamic`` has a dynamic batch: ``max_batch_size: N``, dims without it, and Triton's dynamic
batcher groups requests from many cameras into one call.

A stream graph (``--stream``, fixed size) gets Triton's sequence batcher with implicit state: the
``state_*`` / ``next_*`` pairs are listed under ``sequence_batching { state [...] }`` (not as
inputs/outputs), zero-initialised at each sequence's start; the client sends ir, vis with a sequence
id (correlation id) per camera and sequence_start on its first frame (docs/export.md).
"""
from __future__ import annotations

import json
from pathlib import Path

PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}


def _dims(shape) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def config_pbtxt(name: str, platform: str, inputs, outputs, *, max_batch_size: int, instances: int = 1,
                 kind: str = "KIND_GPU", dynamic_batching: bool = False, max_queue_delay_us: int = 2000,
                 states=(), max_sequence_idle_us: int = 5_000_000) -> str:
    """config.pbtxt text. inputs/outputs: [(name, dtype, dims without the batch when max_batch_size > 0)];
    states: [(input name, output name, dtype, dims)] carried by the sequence batcher (implicit state)."""
    platform_name = PLATFORMS[platform][0]
    lines = [f'name: "{name}"', f'platform: "{platform_name}"', f"max_batch_size: {max_batch_size}"]
    if platform == "tensorrt":
        lines.append(f'default_model_filename: "{PLATFORMS[platform][1]}"')
    for section, tensors in (("input", inputs), ("output", outputs)):
        lines.append(f"{section} [")
        body = []
        for tname, dtype, dims in tensors:
            body.append(f'  {{\n    name: "{tname}"\n    data_type: {TYPES[dtype]}\n    dims: {_dims(dims)}\n  }}')
        lines.append(",\n".join(body))
        lines.append("]")
    lines.append(f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]")
    if states:
        body = []
        for iname, oname, dtype, dims in states:
            body.append(f'    {{\n      input_name: "{iname}"\n      output_name: "{oname}"\n'
                        f"      data_type: {TYPES[dtype]}\n      dims: {_dims(dims)}\n"
                        f"      initial_state: {{\n        data_type: {TYPES[dtype]}\n        dims: {_dims(dims)}\n"
                        f'        zero_data: true\n        name: "new stream"\n      }}\n    }}')
        lines.append(f"sequence_batching {{\n  max_sequence_idle_microseconds: {max_sequence_idle_us}\n"
                     "  state [\n" + ",\n".join(body) + "\n  ]\n}")
    elif dynamic_batching:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}")
    lines.append('version_policy: { latest: { num_versions: 1 } }')
    return "\n".join(lines) + "\n"


def stream_states(meta: dict) -> list:
    """config_pbtxt's ``states`` of a stream graph (fixed size and batch): [(state_*, next_*, dtype, dims)]."""
    spec = meta.get("stream")
    if not spec:
        return []
    if isinstance(spec, str):
        spec = json.loads(spec)
    h, w = meta.get("imgsz")
    pad, batch = int(spec.get("pad_stride", 32)), int(meta.get("batch", 1))

    def dim(d):
        if d == "B":
            return batch
        if isinstance(d, str):
            axis, div = d.split("/")
            return ((h if axis == "H" else w) + pad - 1) // pad * pad // int(div)
        return int(d)

    return [(s["input"], s["output"], "float32", [dim(d) for d in s["dims"]]) for s in spec["states"]]


def io_from_metadata(meta: dict, *, fp16_io: bool = False):
    """(inputs, outputs, max_batch_size, dynamic_batching) for config_pbtxt from our ONNX metadata
    (the state of a stream graph is not among them: ``stream_states``)."""
    batch_dynamic = bool(meta.get("batch_dynamic"))
    batch = int(meta.get("batch", 1))
    hw = [-1, -1] if meta.get("dynamic") else list(meta.get("imgsz", [-1, -1]))
    img = [1, *hw] if batch_dynamic else [batch, 1, *hw]
    ins = [(n, "float32", img) for n in meta.get("inputs", ["ir", "vis"]) if not n.startswith("state_")]
    outs = []
    for n in meta.get("outputs", ["fused", "attention"]):
        if n in ("fused", "attention"):
            outs.append((n, "float32", img))
        elif n.startswith("route_"):
            k = 2
            try:
                k = int(meta.get("config", {}).get("k", 2))
            except (TypeError, ValueError, AttributeError):
                pass
            outs.append((n, "int64", [k] if batch_dynamic else [batch, k]))
    max_batch = batch if batch_dynamic else 0
    return ins, outs, max_batch, batch_dynamic


def model_dir_files(model_dir: Path, platform: str) -> dict[str, Path]:
    return {"config": model_dir / "config.pbtxt", "model": model_dir / "1" / PLATFORMS[platform][1]}
