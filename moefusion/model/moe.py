"""A gated mixture of convolutional experts: the building block of MoLE and MoGE."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .experts import DISPATCHERS, ExpertBank
from . import stream as streaming
from .gating import Gating, balancing_loss, gate_descriptor, gate_descriptor_size, top_k_gating


class MoEOutput(NamedTuple):
    y: torch.Tensor
    aux_loss: torch.Tensor  # balancing loss, already multiplied by the layer's coefficient
    gating: Gating
    route_state: torch.Tensor | None = None  # stream mode: the layer's new routing state [B, 2, E]


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

    def route(self, gate_features: torch.Tensor, stream: tuple | None = None) -> tuple[Gating, torch.Tensor | None]:
        """(gating, new routing state). ``stream`` = (state [B, 2, E], keep [B, 1]) in stream mode
        (eval): the logits are smoothed over frames and last frame's experts are sticky (stream.py)."""
        desc = self.normalise(gate_descriptor(gate_features, self.grid, self.pool))
        if stream is None or self.training:
            return top_k_gating(desc, self.w_gate, self.k, self.w_noise, train=self.training), None
        idx, weights, state = streaming.route(desc.float() @ self.w_gate.float(), self.k, *stream)
        gates = torch.zeros_like(state[:, 0]).scatter(1, idx, weights)
        return Gating(idx, weights, gates, (gates > 0).sum(0).to(gates.dtype)), state

    def forward(self, gate_features: torch.Tensor, inputs, stream: tuple | None = None) -> MoEOutput:
        gating, state = self.route(gate_features, stream)
        y = self.run(inputs, gating.indices, gating.weights)
        return MoEOutput(y, balancing_loss(gating) * self.loss_coef, gating, state)

    def run(self, inputs, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The experts ``indices`` [B, k] on ``inputs``, combined with ``weights`` [B, k]."""
        return DISPATCHERS[self.dispatch](self.experts, inputs, indices, weights)
