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

The model's config warms it up (``model_warmup``: one call on zeros at the export size, so the first
client does not pay ONNX Runtime's or TensorRT's first-run set-up; not for a stream graph, whose
implicit state a warm-up request would leave behind).

Beside the model, an ensemble takes uint8 frames and returns the fused frame (``frames_ensemble``)::

    <repository>/<name>_pre/     Python backend: ir_frame, vis_frame (uint8) -> ir, vis, vis_ycrcb
    <repository>/<name>_post/    Python backend: fused, vis_ycrcb -> fused_frame (uint8, BGR or gray)
    <repository>/<name>_frames/  the ensemble: pre -> <name> -> post (an empty version folder 1/)

The two Python steps are ``triton_steps.py`` (run_pipeline's preprocessing and postprocessing,
imported from ``moefusion.runtime.process``), with what the model takes in their parameters.
"""
from __future__ import annotations

import json
from pathlib import Path

PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
         "uint8": "TYPE_UINT8"}
PRE, POST, ENSEMBLE = "_pre", "_post", "_frames"  # suffixes of the ensemble's model folders
STEPS_SOURCE = Path(__file__).with_name("triton_steps.py")


def _dims(shape) -> str:
    return "[ " + ", ".join(str(d) for d in shape) + " ]"


def _io_lines(inputs, outputs) -> list[str]:
    lines = []
    for section, tensors in (("input", inputs), ("output", outputs)):
        lines.append(f"{section} [")
        body = []
        for tname, dtype, dims in tensors:
            body.append(f'  {{\n    name: "{tname}"\n    data_type: {TYPES[dtype]}\n    dims: {_dims(dims)}\n  }}')
        lines.append(",\n".join(body))
        lines.append("]")
    return lines


def _instances(count: int, kind: str) -> str:
    return f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]"


def _parameters(params: dict) -> list[str]:
    return [f'parameters: {{\n  key: "{k}"\n  value: {{ string_value: {json.dumps(str(v))} }}\n}}'
            for k, v in params.items()]


def _warmup(name: str, inputs) -> str:
    """model_warmup: one request of zeros; inputs: [(name, dtype, dims without the batch)]."""
    body = "".join(f'    inputs {{\n      key: "{n}"\n      value: {{\n        data_type: {TYPES[dt]}\n'
                   f"        dims: {_dims(dims)}\n        zero_data: true\n      }}\n    }}\n"
                   for n, dt, dims in inputs)
    return f'model_warmup [\n  {{\n    name: "{name}"\n    batch_size: 1\n{body}  }}\n]'


def config_pbtxt(name: str, platform: str, inputs, outputs, *, max_batch_size: int, instances: int = 1,
                 kind: str = "KIND_GPU", dynamic_batching: bool = False, max_queue_delay_us: int = 2000,
                 states=(), max_sequence_idle_us: int = 5_000_000, warmup=None) -> str:
    """config.pbtxt text. inputs/outputs: [(name, dtype, dims without the batch when max_batch_size > 0)];
    states: [(input name, output name, dtype, dims)] carried by the sequence batcher (implicit state);
    warmup: (name, [(input, dtype, concrete dims)]) for ``model_warmup``, or None."""
    platform_name = PLATFORMS[platform][0]
    lines = [f'name: "{name}"', f'platform: "{platform_name}"', f"max_batch_size: {max_batch_size}"]
    if platform == "tensorrt":
        lines.append(f'default_model_filename: "{PLATFORMS[platform][1]}"')
    lines += _io_lines(inputs, outputs)
    lines.append(_instances(instances, kind))
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
    if warmup is not None:
        lines.append(_warmup(*warmup))
    lines.append('version_policy: { latest: { num_versions: 1 } }')
    return "\n".join(lines) + "\n"


def warmup_inputs(inputs, meta: dict):
    """model_warmup's inputs: the model's inputs with the dynamic H, W at the export size (``imgsz``)."""
    h, w = (int(v) for v in meta.get("imgsz", (480, 640)))
    out = []
    for n, dt, dims in inputs:
        dims = list(dims)
        dims[-2:] = [h if dims[-2] < 0 else dims[-2], w if dims[-1] < 0 else dims[-1]]
        out.append((n, dt, dims))
    return out


def step_size_range(inputs, meta: dict, platform: str):
    """What the model takes, as a runtime backend's ``size_range``: a fixed size; for dynamic H, W
    ONNX Runtime takes any (None) and a TensorRT plan its profile's range (the export's --dynamic)."""
    h, w = inputs[0][2][-2:]
    if h > 0 and w > 0:
        return [[h, w], [h, w]]
    rng = meta.get("dynamic")
    if platform == "tensorrt" and isinstance(rng, (list, tuple)) and len(rng) == 2:
        return [[int(v) for v in rng[0]], [int(v) for v in rng[1]]]
    return None


def frames_ensemble(name: str, inputs, outputs, max_batch_size: int, meta: dict, *, platform: str,
                    instances: int = 1, model_fit: str = "letterbox", version: str = "") -> dict[str, dict[str, str]]:
    """The ensemble around model ``name`` (its config's inputs/outputs, as ``io_from_metadata`` gives them):
    {model folder: {path inside it: text}} for ``<name>_pre``, ``<name>_post`` and ``<name>_frames``
    (a path ending in "/" is a folder)."""
    model_in = {n: (dt, dims) for n, dt, dims in inputs}
    model_out = {n: (dt, dims) for n, dt, dims in outputs}
    batched = max_batch_size > 0 or model_in["ir"][1][0] != 1
    frame = [-1, -1, -1] if max_batch_size > 0 or not batched else [model_in["ir"][1][0], -1, -1, -1]
    params = {"size_range": json.dumps(step_size_range(inputs, meta, platform)), "model_fit": model_fit,
              "batched": str(batched).lower(), "moefusion_version": version}
    source = STEPS_SOURCE.read_text()

    def step(suffix, which, ins, outs):
        lines = [f'name: "{name}{suffix}"', 'backend: "python"', f"max_batch_size: {max_batch_size}"]
        lines += _io_lines(ins, outs)
        lines.append(_instances(instances, "KIND_CPU"))
        lines += _parameters({"step": which, **params})
        lines.append('version_policy: { latest: { num_versions: 1 } }')
        return {"config.pbtxt": "\n".join(lines) + "\n", "1/model.py": source}

    pre = step(PRE, "pre", [("ir_frame", "uint8", frame), ("vis_frame", "uint8", frame)],
               [("ir", *model_in["ir"]), ("vis", *model_in["vis"]), ("vis_ycrcb", "uint8", frame)])
    post = step(POST, "post", [("fused", *model_out["fused"]), ("vis_ycrcb", "uint8", frame)],
                [("fused_frame", "uint8", frame)])

    def maps(kind, pairs):
        return "".join(f'      {kind} {{ key: "{k}" value: "{v}" }}\n' for k, v in pairs)

    steps = [(f"{name}{PRE}", [("ir_frame", "ir_frame"), ("vis_frame", "vis_frame")],
              [("ir", "model_ir"), ("vis", "model_vis"), ("vis_ycrcb", "vis_ycrcb")]),
             (name, [("ir", "model_ir"), ("vis", "model_vis")], [("fused", "fused_y")]),
             (f"{name}{POST}", [("fused", "fused_y"), ("vis_ycrcb", "vis_ycrcb")], [("fused_frame", "fused_frame")])]
    body = ",\n".join(f'    {{\n      model_name: "{m}"\n      model_version: -1\n{maps("input_map", i)}'
                      f"{maps('output_map', o)}    }}" for m, i, o in steps)
    lines = [f'name: "{name}{ENSEMBLE}"', 'platform: "ensemble"', f"max_batch_size: {max_batch_size}"]
    lines += _io_lines([("ir_frame", "uint8", frame), ("vis_frame", "uint8", frame)],
                       [("fused_frame", "uint8", frame)])
    lines.append(f"ensemble_scheduling {{\n  step [\n{body}\n  ]\n}}")
    ensemble = {"config.pbtxt": "\n".join(lines) + "\n", "1/": ""}  # "/": an (empty) version folder
    return {f"{name}{PRE}": pre, f"{name}{POST}": post, f"{name}{ENSEMBLE}": ensemble}


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
