"""The classical per-pixel average: no model, any machine."""
from __future__ import annotations

from .base import Backend, _check_inputs


class AverageBackend(Backend):
    """Classical fuser: the per-pixel mean of IR and visible luminance. No attention map."""

    name = "average"
    stream_unavailable = "the average fusion has no temporal state"

    def infer(self, ir_unit, vis_y):
        _check_inputs(ir_unit, vis_y)
        fused = ir_unit + vis_y
        fused *= 0.5
        return fused, None

    def describe(self):
        return "average (classical per-pixel mean of IR and visible luminance; no model)"
