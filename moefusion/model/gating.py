"""Top-k gating as pure functions with fixed shapes (after Shazeer et al. 2017 and fairscale).

The gate of every MoE layer here is:

    descriptor = resize(features, grid)            # bilinear, align_corners=True  -> [B, C*gh*gw]
                 (or per-channel mean and std: [B, 2C], see gate_descriptor)
    logits     = descriptor @ w_gate                # [B, E]
    (training) logits += N(0, 1) * (softplus(descriptor @ w_noise) + eps)
    idx, top   = topk(logits, k)                    # [B, k], sorted descending
    weights    = softmax(top)                       # [B, k], sums to 1
    y          = logsumexp_j(expert_idx_j(x) + log weights_j)   # = log sum_j w_j exp(y_j)

Resizing the descriptor to a fixed grid (instead of flattening features of a fixed image size)
lets one set of weights run at any resolution; with the paper's grid at 640x480 it is exactly the
paper's x0.25 / x0.125 bilinear downsampling.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class Gating(NamedTuple):
    indices: torch.Tensor  # int64 [B, k]: the chosen experts, best first
    weights: torch.Tensor  # [B, k]: softmax over the chosen logits, sums to 1
    gates: torch.Tensor  # [B, E]: weights scattered to all experts (exactly k non-zero per row)
    load: torch.Tensor  # [E]: (soft, when noisy) number of samples routed to each expert


MOMENTS_EPS = 1e-6


def gate_descriptor(features: torch.Tensor, grid: tuple[int, int], pool: str = "grid") -> torch.Tensor:
    """Features [B, C, H, W] -> fixed-size gate descriptor.

    ``grid``: resized to ``grid`` and flattened, [B, C*gh*gw] (the paper's, position-specific).
    ``moments``: per-channel mean and standard deviation over the whole map, [B, 2C]: the same for
    a crop and the whole frame of a scene, at any size and aspect.
    """
    if pool == "moments":
        f = features.float()
        mean = f.mean(dim=(2, 3))
        std = (f.var(dim=(2, 3), unbiased=False) + MOMENTS_EPS).sqrt()
        return torch.cat([mean, std], dim=1)
    if pool != "grid":
        raise ValueError(f"unknown gate pool {pool!r}")
    if tuple(features.shape[-2:]) != tuple(grid):
        features = F.interpolate(features, size=tuple(grid), mode="bilinear", align_corners=True)
    return features.flatten(1)


def gate_descriptor_size(channels: int, grid: tuple[int, int], pool: str = "grid") -> int:
    return 2 * channels if pool == "moments" else channels * grid[0] * grid[1]


def _prob_in_top_k(clean, noisy, noise_std, top_values, k):
    """Probability that each expert stays in the top k under resampled noise (differentiable load)."""
    threshold_in = top_values[:, k : k + 1]  # the (k+1)-th value: an expert above it is in
    threshold_out = top_values[:, k - 1 : k]  # the k-th value: an expert must beat it to get in
    normal = torch.distributions.Normal(torch.zeros((), device=clean.device), torch.ones((), device=clean.device))
    is_in = noisy > threshold_in
    prob_if_in = normal.cdf((clean - threshold_in) / noise_std)
    prob_if_out = normal.cdf((clean - threshold_out) / noise_std)
    return torch.where(is_in, prob_if_in, prob_if_out)


def top_k_gating(
    descriptor: torch.Tensor,
    w_gate: torch.Tensor,
    k: int,
    w_noise: torch.Tensor | None = None,
    train: bool = False,
    noise_epsilon: float = 1e-2,
    generator: torch.Generator | None = None,
) -> Gating:
    """Noisy top-k gating. Noise (and the differentiable load) only when ``train`` and w_noise given."""
    num_experts = w_gate.shape[1]
    if not 1 <= k <= num_experts:
        raise ValueError(f"k must be in 1..{num_experts}, got {k}")
    clean = descriptor.float() @ w_gate.float()
    noisy_mode = train and w_noise is not None
    if noisy_mode:
        noise_std = F.softplus(descriptor.float() @ w_noise.float()) + noise_epsilon
        noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        logits = clean + noise * noise_std
    else:
        logits = clean
    m = min(k + 1, num_experts)
    top_values, top_indices = logits.topk(m, dim=1)
    indices = top_indices[:, :k]
    weights = torch.softmax(top_values[:, :k], dim=1)
    gates = torch.zeros_like(logits).scatter(1, indices, weights)
    if noisy_mode and k < num_experts:
        load = _prob_in_top_k(clean, logits, noise_std, top_values, k).sum(0)
    else:
        load = (gates > 0).sum(0).to(gates.dtype)
    return Gating(indices, weights, gates, load)


def unchosen(indices: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Per sample, k experts the gate did not choose (lowest index first; chosen ones fill up when
    fewer than k are left). What an expert-choice ablation runs, and what training compares with."""
    out = []
    for row in indices.tolist():
        others = [e for e in range(num_experts) if e not in row] + row
        out.append(others[: len(row)])
    return torch.tensor(out, dtype=indices.dtype, device=indices.device)


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation: var / mean^2 (0 for a single value)."""
    x = x.float()
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var() / (x.mean() ** 2 + eps)


def balancing_loss(gating: Gating) -> torch.Tensor:
    """cv^2(importance) + cv^2(load): pushes the batch to use the experts evenly."""
    return cv_squared(gating.gates.sum(0)) + cv_squared(gating.load)


def gated_logsumexp(expert_outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """log(sum_j w_j exp(y_j)) computed stably as logsumexp(y_j + log w_j).

    expert_outputs: [B, k, ...] outputs of the chosen experts; weights: [B, k] (>= 0).

    A confident gate's softmax underflows to an exact 0 for its second choice (logit gaps over ~100
    in fp32); log(0) would make the backward pass 0 * inf = NaN, so weights are clamped to the
    smallest normal number first (that expert's contribution stays ~0, its gradient finite).
    """
    shape = weights.shape + (1,) * (expert_outputs.dim() - weights.dim())
    w = weights.to(expert_outputs.dtype)
    log_w = torch.log(w.clamp_min(torch.finfo(w.dtype).tiny)).reshape(shape)
    return torch.logsumexp(expert_outputs + log_w, dim=1)


def _mean_gate_descriptors(model: torch.nn.Module, layers: list) -> dict:
    """The normalised gate descriptor of each layer, averaged over a few varied probe inputs."""
    seen: dict = {}

    def hook(mod, args):
        desc = gate_descriptor(args[0], mod.grid, mod.pool)
        seen.setdefault(mod, []).append(mod.normalise(desc) if hasattr(mod, "normalise") else desc)

    hooks = [layer.register_forward_pre_hook(hook) for layer in layers]
    device = layers[0].w_gate.device
    g = torch.Generator().manual_seed(1234)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ir = torch.rand(4, 1, 64, 64, generator=g) * torch.linspace(0.1, 1, 4).reshape(4, 1, 1, 1)
            vis = torch.rand(4, 1, 64, 64, generator=g) ** torch.linspace(0.5, 3, 4).reshape(4, 1, 1, 1)
            model(ir.to(device), vis.to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {layer: torch.cat(seen[layer]).float().mean(0) for layer in layers if layer in seen}


def randomize_gates(model: torch.nn.Module, seed: int = 0, scale: float | None = 0.05) -> torch.nn.Module:
    """Draw every gate's weights (each module's ``w_gate``) at random, in place; returns ``model``.

    Untrained gates are zero: every input ties every expert, so routing would not depend on the input.
    Tests and benchmarks need trained-like routing that changes from input to input. ``scale``: the
    standard deviation of the weights (None: ``1/sqrt(descriptor size)``, logits of order 1).

    ``grid`` gates: independent normal weights. ``moments`` gates (per-channel mean and std) see
    descriptors that share a large common part across inputs, so random weights alone would rank the
    experts the same for every input: the direction of the mean (normalised) descriptor of varied probe
    inputs is projected out of the weights, which are then rescaled to the same column norm.
    """
    layers = [m for m in model.modules() if isinstance(getattr(m, "w_gate", None), torch.nn.Parameter)]
    moments = [m for m in layers if getattr(m, "pool", "grid") == "moments"]
    common = _mean_gate_descriptors(model, moments) if moments else {}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            fan_in = layer.w_gate.shape[0]
            s = fan_in ** -0.5 if scale is None else scale
            w = torch.randn(layer.w_gate.shape, generator=g) * s
            if layer in common:
                d = common[layer].cpu()
                d = d / d.norm().clamp_min(1e-12)
                w = w - d[:, None] * (d @ w)[None, :]
                w = w * (s * fan_in ** 0.5 / w.norm(dim=0, keepdim=True).clamp_min(1e-12))
            layer.w_gate.copy_(w.to(layer.w_gate.device, layer.w_gate.dtype))
    return model
