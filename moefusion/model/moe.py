"""A gated mixture of convolutional experts: the building block of MoLE and MoGE."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from .experts import DISPATCHERS, ExpertBank
from .gating import Gating, balancing_loss, gate_descriptor, top_k_gating


class MoEOutput(NamedTuple):
    y: torch.Tensor
    aux_loss: torch.Tensor  # balancing loss, already multiplied by the layer's coefficient
    gating: Gating


class GatedExperts(nn.Module):
    """Top-k gated experts. The gate sees ``gate_features`` resized to ``grid``; the experts see
    ``inputs`` (one tensor, or one per modality for experts split by modality)."""

    def __init__(
        self,
        num_experts: int,
        k: int,
        channels: list[int],
        gate_channels: int,
        grid: tuple[int, int],
        loss_coef: float,
        noisy_gating: bool = True,
        dispatch: str = "sparse",
    ):
        super().__init__()
        if dispatch not in DISPATCHERS:
            raise ValueError(f"unknown dispatch {dispatch!r}; choose from {', '.join(DISPATCHERS)}")
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={num_experts}")
        self.k = k
        self.grid = tuple(int(g) for g in grid)
        self.loss_coef = loss_coef
        self.dispatch = dispatch
        features = gate_channels * self.grid[0] * self.grid[1]
        # Zero init as in Shazeer et al.: all experts equally likely until the gate learns.
        self.w_gate = nn.Parameter(torch.zeros(features, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(features, num_experts)) if noisy_gating else None
        self.experts = ExpertBank(num_experts, channels)

    @property
    def num_experts(self) -> int:
        return self.experts.num_experts

    def route(self, gate_features: torch.Tensor) -> Gating:
        desc = gate_descriptor(gate_features, self.grid)
        return top_k_gating(desc, self.w_gate, self.k, self.w_noise, train=self.training)

    def forward(self, gate_features: torch.Tensor, inputs) -> MoEOutput:
        gating = self.route(gate_features)
        y = DISPATCHERS[self.dispatch](self.experts, inputs, gating.indices, gating.weights)
        return MoEOutput(y, balancing_loss(gating) * self.loss_coef, gating)
