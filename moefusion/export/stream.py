"""The stream graph's state I/O (``moefusion-export --stream``): names, docs and the metadata the
runtime needs to build the first (zero) state for any frame size.

The state's shapes come from ``model.stream.state_shapes`` (the one definition), evaluated here at a
few padded sizes to tell which dims are the batch, which follow the padded height or width (and by
what divisor) and which are fixed. The result is the ``moefusion.stream`` metadata (JSON)::

    {"pad_stride": 32, "states": [{"name": "sources", "input": "state_sources", "output": "next_sources",
                                   "dims": ["B", 2, "H/2", "W/2"], "dtype": "float32"}, ...]}

where ``"H/d"`` is ``ceil(H / pad_stride) * pad_stride / d`` for frames of H rows (``W/d`` likewise)
and ``"B"`` the batch. ``runtime.backends.stream_state`` reads it (numpy only).
"""
from __future__ import annotations

from ..model import stream as streaming
from .wrapper import STATE_INPUTS, STATE_OUTPUTS

STATE_DOCS = {
    "scalars": "valid (1 after the first frame), brightness offset, the IR, VIS and raw fused means [B, 5]",
    "sources": "the previous IR and VIS luminance at half the padded resolution (motion) [B, 2, Hp/2, Wp/2]",
    "maps": "the decoder's smoothed output (the pyramid head's blend maps) [B, C, Hp/s, Wp/s]",
    "detail": "the temporally smoothed detail the head's gain lifts [B, 1, Hp, Wp]",
    **{f"route_{n}": f"{n}'s smoothed gate logits and last frame's experts (one-hot) [B, 2, E]"
       for n in streaming.MOE_LAYERS},
}


def state_spec(cfg) -> dict:
    """The ``moefusion.stream`` metadata of a model config (see the module docstring)."""
    stride = cfg.pad_stride
    b, h, w = 7, 6 * stride, 10 * stride  # distinct, padded sizes: each dim's dependence is unambiguous
    base = streaming.state_shapes(cfg, b, h, w)
    taller = streaming.state_shapes(cfg, b, 2 * h, w)
    wider = streaming.state_shapes(cfg, b, h, 2 * w)
    states = []
    for name, inp, out in zip(streaming.STATE_NAMES, STATE_INPUTS, STATE_OUTPUTS):
        dims = []
        for i, d in enumerate(base[name]):
            if i == 0:
                dims.append("B")
            elif taller[name][i] != d:
                dims.append(f"H/{h // d}")
            elif wider[name][i] != d:
                dims.append(f"W/{w // d}")
            else:
                dims.append(int(d))
        states.append({"name": name, "input": inp, "output": out, "dims": dims, "dtype": "float32"})
    return {"pad_stride": stride, "states": states}


def dim_name(dim) -> str | int:
    """An ONNX dim_param for a spec dim: 'H/2' -> 'Hp_2' (padded H over 2), 'H/1' -> 'Hp'."""
    if not isinstance(dim, str) or dim == "B":
        return dim
    axis, div = dim.split("/")
    return f"{axis}p" + ("" if div == "1" else f"_{div}")


def io_docs() -> dict:
    """IO_DOC rows (kind, range, description) of the state inputs and outputs."""
    rows = {}
    for name, inp, out in zip(streaming.STATE_NAMES, STATE_INPUTS, STATE_OUTPUTS):
        doc = f"stream state, previous frame's {out} (zeros before the first frame): {STATE_DOCS[name]}"
        rows[inp] = ("input", None, doc)
        rows[out] = ("output", None, f"stream state for the next frame's {inp}: {STATE_DOCS[name]}")
    return rows
