"""Routing statistics of the MoE layers: how often each expert is chosen, the distinct expert sets,
the smallest selected weight, and which layers collapsed."""
from __future__ import annotations

import numpy as np

# A layer counts as collapsed when an expert is never chosen, or when the median of its smallest
# selected weight falls below this (its k-th expert then contributes nothing: a dead expert's FLOPs).
COLLAPSE_MIN_WEIGHT = 0.01


class RoutingStats:
    """Per MoE layer: how often each expert is chosen, the distinct expert sets, and the smallest
    selected weight per sample (median reported)."""

    def __init__(self):
        self.counts: dict[str, np.ndarray] = {}
        self.sets: dict[str, set] = {}
        self.min_weights: dict[str, list] = {}

    def add(self, gatings: dict) -> None:
        for name, g in gatings.items():
            idx = g.indices.detach().cpu().numpy()
            e = g.gates.shape[1]
            self.counts.setdefault(name, np.zeros(e, np.int64))
            np.add.at(self.counts[name], idx.reshape(-1), 1)
            self.sets.setdefault(name, set()).update(tuple(sorted(r)) for r in idx.tolist())
            self.min_weights.setdefault(name, []).extend(g.weights.detach().float().min(dim=1).values.cpu().tolist())

    def summary(self, prefix: str = "") -> dict:
        out = {}
        for name, counts in self.counts.items():
            out[f"{prefix}{name}_experts"] = "/".join(str(int(c)) for c in counts)
            out[f"{prefix}{name}_sets"] = len(self.sets[name])
            out[f"{prefix}{name}_minw"] = round(float(np.median(self.min_weights[name])), 4)
        return out

    def collapsed(self) -> list[str]:
        """Descriptions of the layers that collapsed, empty when all are alive."""
        bad = []
        for name, counts in self.counts.items():
            dead = [str(i) for i, c in enumerate(counts) if c == 0]
            minw = float(np.median(self.min_weights[name]))
            if dead:
                bad.append(f"{name}: expert(s) {', '.join(dead)} never chosen")
            elif minw < COLLAPSE_MIN_WEIGHT:
                bad.append(f"{name}: median smallest selected weight {minw:.2g} < {COLLAPSE_MIN_WEIGHT}")
        return bad


