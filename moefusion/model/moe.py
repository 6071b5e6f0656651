"""A gated mixture of convolutional experts: the building block of MoLE and MoGE."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .experts import DISPATCHERS, ExpertBank
from .gating import Gating, balancing_loss, gate_descriptor, gate_descriptor_size, sticky_top_k, top_k_gating


class MoEOutput(NamedTuple):
    y: torch.Tensor
    aux_loss: torch.Tensor  # balancing loss, already multiplied by the layer's coefficient
    gating: Gating


class GatedExperts(nn.Module):
    """Top-k gated experts. The gate sees ``gate_features`` resized to ``grid`` (``pool="grid"``) or
    their per-channel mean and standard deviation (``pool="moments"``); the experts see
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
        pool: str = "grid",
    ):
        super().__init__()
        if dispatch not in DISPATCHERS:
            raise ValueError(f"unknown dispatch {dispatch!r}; choose from {', '.join(DISPATCHERS)}")
        if not 1 <= k <= num_experts:
            raise ValueError(f"k={k} must be between 1 and num_experts={num_experts}")
        self.k = k
        self.grid = tuple(int(g) for g in grid)
        self.pool = pool
        self.loss_coef = loss_coef
        self.dispatch = dispatch
        features = gate_descriptor_size(gate_channels, self.grid, pool)
        # Moments descriptors are standardised by running statistics (a fixed per-feature scale and
        # shift at inference). Raw moments share a large common part across scenes, so a
        # zero-initialised gate's logits barely differ and the training noise alone would route.
        # Training normalises with the running statistics too (not the batch's): a batch holds one
        # dataset, and batch statistics would hide exactly the differences between scenes.
        self.desc_norm = nn.BatchNorm1d(features, affine=False, momentum=0.03) if pool == "moments" else None
        # Zero init as in Shazeer et al.: all experts equally likely until the gate learns.
        self.w_gate = nn.Parameter(torch.zeros(features, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(features, num_experts)) if noisy_gating else None
        self.experts = ExpertBank(num_experts, channels)
        # Temporal routing smoothing for video (eval only, off by default): an exponential moving
        # average of the gate logits over successive calls and sticky expert choice (sticky_top_k).
        self.smoothing = 0.0
        self.margin = 0.0
        self._route_state = None  # (smoothed logits [B, E], indices [B, k]) of the previous call

    @property
    def num_experts(self) -> int:
        return self.experts.num_experts

    def normalise(self, desc: torch.Tensor) -> torch.Tensor:
        """The descriptor as the gate weights see it (standardised for moments, as is for a grid)."""
        norm = self.desc_norm
        if norm is None:
            return desc
        if self.training:
            with torch.no_grad():
                d = desc.detach().float()
                m = norm.momentum
                norm.running_mean.mul_(1 - m).add_(d.mean(0), alpha=m)
                if d.shape[0] > 1:
                    norm.running_var.mul_(1 - m).add_(d.var(0), alpha=m)
                norm.num_batches_tracked.add_(1)
        return F.batch_norm(desc, norm.running_mean, norm.running_var, training=False, eps=norm.eps)

    def route(self, gate_features: torch.Tensor) -> Gating:
        desc = self.normalise(gate_descriptor(gate_features, self.grid, self.pool))
        if self.training or not (self.smoothing or self.margin):
            return top_k_gating(desc, self.w_gate, self.k, self.w_noise, train=self.training)
        logits = desc.float() @ self.w_gate.float()
        previous = None
        if self._route_state is not None and self._route_state[0].shape == logits.shape:
            logits = self.smoothing * self._route_state[0] + (1 - self.smoothing) * logits
            previous = self._route_state[1]
        idx, weights = sticky_top_k(logits, self.k, previous, self.margin)
        self._route_state = (logits.detach(), idx.detach())
        gates = torch.zeros_like(logits).scatter(1, idx, weights)
        return Gating(idx, weights, gates, (gates > 0).sum(0).to(gates.dtype))

    def reset_route_state(self) -> None:
        self._route_state = None

    def forward(self, gate_features: torch.Tensor, inputs) -> MoEOutput:
        gating = self.route(gate_features)
        y = DISPATCHERS[self.dispatch](self.experts, inputs, gating.indices, gating.weights)
        return MoEOutput(y, balancing_loss(gating) * self.loss_coef, gating)
