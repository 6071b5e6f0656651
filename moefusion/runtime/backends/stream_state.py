"""The state of an exported stream graph (``moefusion-export --stream``), in numpy: which inputs and
outputs carry it, their shapes for a frame size, and the zeros of a new stream.

The shapes come from the ONNX's ``moefusion.stream`` metadata (written by export/stream.py):
``"B"`` is the batch, ``"H/d"`` the frame height padded to ``pad_stride`` over d (``"W/d"`` likewise),
integers are fixed. Shared by the ONNX Runtime and TensorRT backends and the benchmark."""
from __future__ import annotations

import json

import numpy as np

STATE_INPUT_PREFIX = "state_"
STATE_OUTPUT_PREFIX = "next_"
REEXPORT = "re-export it with moefusion-export --stream to carry the temporal state"


class StreamSpec:
    """The state tensors of a stream graph: ``inputs`` (state_*), ``outputs`` (next_*, same order)."""

    def __init__(self, meta: dict | str):
        meta = json.loads(meta) if isinstance(meta, str) else meta
        self.pad = int(meta.get("pad_stride", 32))
        self.states = list(meta["states"])
        self.inputs = [s["input"] for s in self.states]
        self.outputs = [s["output"] for s in self.states]

    def _dim(self, d, batch: int, h: int, w: int) -> int:
        if d == "B":
            return batch
        if isinstance(d, str):
            axis, div = d.split("/")
            size = {"H": h, "W": w}[axis]
            return (size + self.pad - 1) // self.pad * self.pad // int(div)
        return int(d)

    def shapes(self, batch: int, h: int, w: int) -> dict[str, tuple[int, ...]]:
        """state input name -> shape for frames of h x w (unpadded)."""
        return {s["input"]: tuple(self._dim(d, batch, h, w) for d in s["dims"]) for s in self.states}

    def zeros(self, batch: int, h: int, w: int, dtypes: dict | None = None) -> dict[str, np.ndarray]:
        """The state before the first frame (all zeros: 'no previous frame')."""
        dtypes = dtypes or {}
        return {n: np.zeros(shp, dtype=dtypes.get(n, np.float32)) for n, shp in self.shapes(batch, h, w).items()}


def stream_spec_from_metadata(meta: dict, inputs) -> tuple[StreamSpec | None, str]:
    """(spec, why not) for a model with ``inputs`` and our metadata (``moefusion.``-less keys, JSON
    values decoded or not): the spec when the graph carries the state, else None and the reason."""
    state_inputs = [n for n in inputs if n.startswith(STATE_INPUT_PREFIX)]
    raw = meta.get("stream")
    if not state_inputs:
        return None, f"this model has no state inputs (exported per frame); {REEXPORT}"
    if not raw:
        return None, f"this model has state inputs {state_inputs} but no moefusion.stream metadata; {REEXPORT}"
    spec = StreamSpec(raw)
    if sorted(spec.inputs) != sorted(state_inputs):
        return None, f"state inputs {state_inputs} do not match its metadata {spec.inputs}; {REEXPORT}"
    return spec, ""


class StreamStates:
    """Per-stream state of a backend: built on the first frame and on a size change, replaced by the
    graph's next_* outputs after each frame, dropped by ``reset``."""

    def __init__(self, spec: StreamSpec, dtypes: dict | None = None):
        self.spec, self.dtypes = spec, dtypes or {}
        self.state: dict[str, np.ndarray] | None = None
        self.key = None
        self._zeros: tuple | None = None  # (key, zero state): per-frame use feeds the same zeros every call

    def reset(self) -> None:
        self.state, self.key = None, None

    def zeros(self, key) -> dict[str, np.ndarray]:
        if self._zeros is None or self._zeros[0] != key:
            self._zeros = (key, self.spec.zeros(*key, self.dtypes))
        return self._zeros[1]

    def feeds(self, batch: int, h: int, w: int, carry: bool) -> dict[str, np.ndarray]:
        """The state inputs of the next frame: the carried state when ``carry`` and the size matches,
        else zeros (a new stream; the graph reads them only)."""
        key = (batch, h, w)
        if not carry:
            return self.zeros(key)
        if self.state is None or self.key != key:
            self.state, self.key = None, key
            return self.zeros(key)
        return self.state

    def update(self, outputs: dict[str, np.ndarray], carry: bool) -> None:
        """Keep the next_* outputs as the next frame's state_* inputs (when carrying; a per-frame call
        leaves the stream's state alone)."""
        if carry:
            self.state = {i: outputs[o] for i, o in zip(self.spec.inputs, self.spec.outputs)}
