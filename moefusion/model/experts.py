"""Convolutional experts and the ways to dispatch samples to them.

All experts of one MoE layer live in one ``ExpertBank``: per layer a stacked weight
``[E, Cout, Cin, 3, 3]`` and bias ``[E, Cout]`` (3x3 convs, zero padding, ReLU between layers,
none after the last). Every dispatch mode reads the same parameters, so a checkpoint does not
depend on the mode, and every mode computes the same function:

    y[b] = log sum_j w[b, j] * exp(expert_{idx[b, j]}(x_{idx[b, j]}[b]))

- ``reference``: a per-sample Python loop (host reads the indices; the definition).
- ``dense``: every expert on every sample, then the chosen ones are gathered.
- ``sparse``: only the k chosen experts run per sample, as grouped convolutions over gathered
  weights; static shapes and no host synchronisation, so it exports and graph-captures.
- ``published``: the upstream SparseDispatcher (nonzero / sort / split sizes read back to the
  host / index_add, exp then log); kept as the benchmark's "as published" baseline.

The expert input ``x_e`` may depend on the expert: MoLE gives the visible features to the first
half of its experts and the infrared features to the second half (``inputs`` is then a tuple
of per-modality tensors, one per group of E/len(inputs) consecutive experts).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .gating import gated_logsumexp

DISPATCH_MODES = ("reference", "dense", "sparse", "published")


class ExpertBank(nn.Module):
    """E experts of identical shape: 3x3 conv stacks with the given channel widths."""

    def __init__(self, num_experts: int, channels: list[int] | tuple[int, ...]):
        super().__init__()
        if len(channels) < 2:
            raise ValueError("an expert needs at least an input and an output width")
        self.num_experts = num_experts
        self.channels = tuple(int(c) for c in channels)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for cin, cout in zip(self.channels[:-1], self.channels[1:]):
            w = torch.empty(num_experts, cout, cin, 3, 3)
            b = torch.empty(num_experts, cout)
            for e in range(num_experts):  # nn.Conv2d's default initialisation, per expert
                nn.init.kaiming_uniform_(w[e], a=math.sqrt(5))
                bound = 1.0 / math.sqrt(cin * 9)
                nn.init.uniform_(b[e], -bound, bound)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(b))

    @property
    def num_layers(self) -> int:
        return len(self.weights)

    def run_expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """One expert on a batch x [N, Cin, H, W]."""
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = F.conv2d(x, w[e], b[e], padding=1)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x

    def run_gathered(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Run expert ``indices[b, j]`` for every (b, j) without leaving the device.

        x: [B, Cin, H, W] (the same input for all chosen experts of a sample) or
        [B, k, Cin, H, W] (one input per slot). Returns [B, k, Cout, H, W].
        The first layer of a shared input is one conv per sample with the k experts' filters
        stacked (the input is not replicated); later layers are grouped per (sample, slot).
        """
        b, k = (int(s) for s in indices.shape)  # static: ONNX grouped convs fix their group count
        h, w_ = x.shape[-2], x.shape[-1]
        per_slot = x.dim() == 5
        # constant channel counts keep the reshape exportable by the TorchScript exporter too
        x = x.reshape(1, b * (k if per_slot else 1) * self.channels[0], h, w_)
        for i, (w, bias) in enumerate(zip(self.weights, self.biases)):
            cout, cin = int(w.shape[1]), int(w.shape[2])
            wg = w[indices].reshape(b * k * cout, cin, 3, 3)  # gathered filters [B*k*Cout, Cin, 3, 3]
            bg = bias[indices].reshape(b * k * cout)
            groups = b if (i == 0 and not per_slot) else b * k
            x = F.conv2d(x, wg, bg, padding=1, groups=groups)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x.reshape(b, k, self.channels[-1], h, w_)


def _expert_input(inputs, e: int, num_experts: int) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        return inputs
    group = num_experts // len(inputs)
    return inputs[e // group]


def dispatch_reference(bank: ExpertBank, inputs, indices, weights) -> torch.Tensor:
    outs = []
    for b in range(indices.shape[0]):
        ys = [
            bank.run_expert(e, _expert_input(inputs, e, bank.num_experts)[b : b + 1])
            for e in indices[b].tolist()
        ]
        outs.append(gated_logsumexp(torch.stack(ys, dim=1), weights[b : b + 1]))
    return torch.cat(outs, dim=0)


def dispatch_dense(bank: ExpertBank, inputs, indices, weights) -> torch.Tensor:
    all_out = torch.stack(
        [bank.run_expert(e, _expert_input(inputs, e, bank.num_experts)) for e in range(bank.num_experts)],
        dim=1,
    )  # [B, E, C, H, W]
    shape = indices.shape + (1,) * (all_out.dim() - 2)
    chosen = torch.gather(all_out, 1, indices.reshape(shape).expand(-1, -1, *all_out.shape[2:]))
    return gated_logsumexp(chosen, weights)


def dispatch_sparse(bank: ExpertBank, inputs, indices, weights) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        x = inputs
    else:
        # Each slot takes the input of its expert's modality: gather from the stacked modalities.
        group = bank.num_experts // len(inputs)
        stacked = torch.stack(tuple(inputs), dim=1)  # [B, M, C, H, W]
        modality = torch.div(indices, group, rounding_mode="floor")  # [B, k]
        shape = modality.shape + (1, 1, 1)
        x = torch.gather(stacked, 1, modality.reshape(shape).expand(-1, -1, *stacked.shape[2:]))
    return gated_logsumexp(bank.run_gathered(x, indices), weights)


def dispatch_published(bank: ExpertBank, inputs, indices, weights) -> torch.Tensor:
    """The upstream SparseDispatcher, as a baseline: host sync, split sizes, exp/index_add/log."""
    b = indices.shape[0]
    gates = torch.zeros(b, bank.num_experts, dtype=weights.dtype, device=weights.device)
    gates = gates.scatter(1, indices, weights)
    nz = torch.nonzero(gates)
    sorted_experts, order = nz.sort(0)
    expert_index = sorted_experts[:, 1:2]
    batch_index = nz[order[:, 1], 0]
    part_sizes = (gates > 0).sum(0).tolist()  # host synchronisation, as published
    nonzero_gates = torch.gather(gates[batch_index], 1, expert_index)
    outs = []
    for e in range(bank.num_experts):
        x = _expert_input(inputs, e, bank.num_experts)
        outs.append(x[batch_index])
    stitched = []
    offset = 0
    for e, size in enumerate(part_sizes):
        part = outs[e][offset : offset + size]
        stitched.append(bank.run_expert(e, part) if size else part.new_zeros((0, bank.channels[-1]) + part.shape[2:]))
        offset += size
    y = torch.cat(stitched, 0).exp() * nonzero_gates.reshape(-1, 1, 1, 1).to(stitched[0].dtype)
    combined = torch.zeros((b,) + y.shape[1:], dtype=y.dtype, device=y.device).index_add(0, batch_index, y)
    combined = torch.where(combined == 0, torch.full_like(combined, torch.finfo(combined.dtype).eps), combined)
    return combined.log()


DISPATCHERS = {
    "reference": dispatch_reference,
    "dense": dispatch_dense,
    "sparse": dispatch_sparse,
    "published": dispatch_published,
}
