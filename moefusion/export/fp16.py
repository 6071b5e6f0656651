"""float32 -> float16 conversion of our exported graphs (for strongly typed TensorRT builds).

TensorRT-RTX (and TensorRT's STRONGLY_TYPED networks) take precision from the ONNX types, not from
a builder flag, so ``--half`` there needs an fp16 graph. Rules, chosen for this model:

- Inputs ``ir``/``vis`` and all outputs stay float32 (the runtime contract); Casts at the edges.
- Only the *image data path* changes: tensors computed from the float inputs' values. Shape
  arithmetic (from Shape nodes, constants, integer Casts) keeps its types, so sizes stay exact.
- The gates stay float32: the descriptor Resize feeding a gate MatMul, the MatMul with ``w_gate``,
  TopK and Softmax. Routing decisions are then as in the fp32 model up to the fp16 rounding of the
  features the gate sees.
- Resize's roi/scales, Pad's pads and every integer input are left alone; weights used by fp16
  nodes get fp16 copies.
"""
from __future__ import annotations

import numpy as np

FLOAT, FLOAT16 = 1, 10
SHAPE_OPS = {"Shape", "Size"}
FP32_OPS = {"TopK", "Softmax"}
# Input positions that carry image data (the rest: shapes, indices, scales...). Default: all.
DATA_POSITIONS = {
    "Resize": (0,), "Upsample": (0,), "Pad": (0, 2), "Reshape": (0,), "Expand": (0,), "Slice": (0,),
    "Gather": (0,), "GatherND": (0,), "GatherElements": (0,), "TopK": (0,), "Unsqueeze": (0,), "Squeeze": (0,),
    "Tile": (0,), "ReduceMean": (0,), "ReduceMax": (0,), "ReduceMin": (0,), "ReduceSum": (0,),
    "ReduceLogSumExp": (0,), "Split": (0,), "Where": (1, 2), "ScatterElements": (0, 2), "ScatterND": (0, 2),
    "Transpose": (0,), "Flatten": (0,), "Identity": (0,), "MaxPool": (0,), "Dropout": (0,),
}


def _tensor_types(model) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in inferred.graph.initializer:
        types[init.name] = init.data_type
    return types


def _gate_nodes(graph, producers) -> set[str]:
    """Node names that stay fp32: TopK/Softmax, MatMuls with a w_gate, and the Resize/reshapes feeding them."""
    keep = set()
    for n in graph.node:
        if n.op_type in FP32_OPS:
            keep.add(n.name)
        elif n.op_type == "MatMul" and any(i.endswith("w_gate") for i in n.input):
            keep.add(n.name)
            t = n.input[0]  # back through view-like ops to the gate's descriptor Resize
            while t in producers and producers[t].op_type in ("Reshape", "Flatten", "Resize"):
                p = producers[t]
                keep.add(p.name)
                if p.op_type == "Resize":
                    break
                t = p.input[0]
    return keep


def convert_to_fp16(model):
    """Return a new ModelProto computing the image path in float16 (see module doc)."""
    import onnx
    from onnx import helper, numpy_helper

    custom = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        raise ValueError(f"fp16 conversion handles standard ONNX only, not {', '.join(custom)}: "
                         "plugin-flavour engines get fp16 from TensorRT's builder flags")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    types = _tensor_types(model)
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    keep32 = _gate_nodes(g, producers)

    # Which tensors are on the float image path.
    data = {i.name for i in g.input if i.type.tensor_type.elem_type == FLOAT}
    for n in g.node:  # nodes are topologically sorted in a valid ONNX graph
        if n.op_type in SHAPE_OPS:
            continue
        if any(i in data for i in n.input):
            for o in n.output:
                if types.get(o) == FLOAT:
                    data.add(o)

    dtype = {}  # current element type of every float tensor we touched (default: as inferred)
    new_nodes, new_inits = [], []
    cast_cache = {}
    half_copies = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in cast_cache:
            out = f"{name}__to{'16' if to == FLOAT16 else '32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}_cast"))
            cast_cache[key] = out
            dtype[out] = to
        return cast_cache[key]

    def as_type(name: str, to: int) -> str:
        cur = dtype.get(name, types.get(name))
        if cur not in (FLOAT, FLOAT16) or cur == to:
            return name
        if name in inits and to == FLOAT16:
            if name not in half_copies:
                arr = numpy_helper.to_array(inits[name]).astype(np.float16)
                half = numpy_helper.from_array(arr, f"{name}__fp16")
                new_inits.append(half)
                half_copies[name] = half.name
                dtype[half.name] = FLOAT16
            return half_copies[name]
        return cast(name, to)

    # Inputs: fp16 copies right at the start.
    for i in g.input:
        if i.name in data:
            dtype[i.name] = FLOAT

    for n in list(g.node):
        on_path = any(i in data for i in n.input) and n.op_type not in SHAPE_OPS
        if not on_path:
            new_nodes.append(n)
            continue
        compute = FLOAT if n.name in keep32 else FLOAT16
        positions = DATA_POSITIONS.get(n.op_type)
        for idx, name in enumerate(n.input):
            if not name:
                continue
            if positions is not None and idx not in positions:
                continue
            n.input[idx] = as_type(name, compute)
        if n.op_type == "Cast":
            to = next(a for a in n.attribute if a.name == "to")
            if to.i == FLOAT:
                to.i = compute
        new_nodes.append(n)
        for o in n.output:
            t = types.get(o)
            if t == FLOAT:
                dtype[o] = compute

    # Outputs back to float32 under their public names.
    renamed = {}
    for out in g.output:
        if dtype.get(out.name) == FLOAT16:
            inner = f"{out.name}__fp16"
            renamed[out.name] = inner
    if renamed:
        for n in new_nodes:
            for k, o in enumerate(n.output):
                if o in renamed:
                    n.output[k] = renamed[o]
            for k, i in enumerate(n.input):
                if i in renamed:
                    n.input[k] = renamed[i]
        for public, inner in renamed.items():
            new_nodes.append(helper.make_node("Cast", [inner], [public], to=FLOAT, name=f"{public}_to_float32"))

    # Drop initializers nobody reads any more (fp32 originals replaced by fp16 copies).
    used = {i for n in new_nodes for i in n.input}
    kept_inits = [i for i in g.initializer if i.name in used] + [i for i in new_inits if i.name in used]
    del g.node[:]
    g.node.extend(new_nodes)
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    del g.value_info[:]  # new nodes come right before their first consumer: still topologically sorted
    return model
