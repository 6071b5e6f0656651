"""The fastest GPU path: MoE dispatch over the CUDA ops, and a whole-model fp16 / channels-last / CUDA-graph
runner.

MoE layers (MoLE, MoGE) store their experts stacked per layer: weight [E, Cout, Cin, 3, 3], bias [E, Cout],
3x3 zero-padded convolutions, ReLU between layers, none after the last. A layer's forward is then

    indices, weights = fast.gate(gate_features, w_gate, grid, k)            # one kernel
    y = fast.experts_forward(x, indices, weights, layers, input_groups=G)   # the chosen experts + combine

with `x` [B, G*Cin, H, W]: expert e reads channel group e // (E // G) (MoLE: G=2, visible then infrared;
MoGE: G=1). Everything runs on the device without host synchronisation, so it can be captured in a CUDA
graph and traced by torch.compile. On the CPU, or without the library, the same functions fall back to
PyTorch ops (same results), so models need no second code path.

Strategies of experts_forward (same function, tests compare them):
    "gathered"  per sample (a static loop over the batch), the k chosen experts' weights are gathered on the
                device; the first layer of the k experts is ONE convolution (k*C1 output channels; inputs of
                G groups through block weights), later layers are grouped convolutions (groups=k); the last
                layer and the combine are one kernel (moefusion::expert_conv3x3_combine) when fused.
    "dense"     all E experts on the whole batch (grouped convolutions, E/k times the arithmetic), then the
                chosen experts' outputs are gathered and combined. No per-sample work: fewer launches.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.gating import Gating, gate_descriptor, gated_logsumexp, top_k_gating
from ..model.moe import GatedExperts, MoEOutput
from . import _lib
from . import ops  # noqa: F401 - registers torch.ops.moefusion.* (moefusion.kernels imports it lazily)

Layers = Sequence[tuple[Tensor, Tensor | None]]


_enabled = os.environ.get("MOEFUSION_KERNELS", "1") not in ("0", "off", "false")


@contextlib.contextmanager
def use_kernels(flag: bool):
    """Temporarily use (True) or bypass (False) the CUDA ops, e.g. to compare with plain PyTorch ops."""
    global _enabled
    old, _enabled = _enabled, bool(flag)
    try:
        yield
    finally:
        _enabled = old


def kernels_usable(t: Tensor) -> bool:
    """The CUDA ops will run for this tensor: enabled, a CUDA tensor, float32/float16, the library loads."""
    return _enabled and t.is_cuda and t.dtype in (torch.float32, torch.float16) and _lib.available()


# ----------------------------------------------------------------------------- the three primitives
def gate(features: Tensor, w_gate: Tensor, grid: tuple[int, int], k: int, pool: str = "grid",
         normalise=None) -> tuple[Tensor, Tensor]:
    """(indices int32 [B, k], weights float32 [B, k]) of eval-mode top-k gating (gating.py).
    The gate kernel implements the grid descriptor; the moments descriptor (standardised by
    ``normalise``) runs in PyTorch ops."""
    if pool == "grid" and kernels_usable(features):
        return torch.ops.moefusion.gate(features, w_gate, int(grid[0]), int(grid[1]), int(k))
    desc = gate_descriptor(features.float(), tuple(grid), pool)
    if normalise is not None:
        desc = normalise(desc)
    g = top_k_gating(desc, w_gate.float(), k, train=False)
    return g.indices.to(torch.int32), g.weights


def attention_split(x0: Tensor, x1: Tensor, att: Tensor) -> tuple[Tensor, Tensor]:
    """(cat(x0*a, x1*a), cat(x0*(1-a), x1*(1-a)))."""
    if kernels_usable(x0):
        return torch.ops.moefusion.attention_split(x0, x1, att)
    inv = 1 - att
    return torch.cat((x0 * att, x1 * att), 1), torch.cat((x0 * inv, x1 * inv), 1)


def combine(expert_outputs: Tensor, weights: Tensor) -> Tensor:
    """logsumexp_j(y_j + log w_j) over dim 1 of [B, k, C, H, W]."""
    if kernels_usable(expert_outputs):
        return torch.ops.moefusion.combine(expert_outputs, weights)
    return gated_logsumexp(expert_outputs.float(), weights.float()).to(expert_outputs.dtype)


def last_layer_combine(hidden: Tensor, weight: Tensor, bias: Tensor | None, indices: Tensor, weights: Tensor,
                       fuse: bool) -> Tensor:
    """The chosen experts' last conv + combine: hidden [B, k, Cin, H, W] -> [B, Cout, H, W]."""
    B, k, cin, H, W = hidden.shape
    if fuse:
        return torch.ops.moefusion.expert_conv3x3_combine(hidden, weight, bias, indices, weights)
    cout = weight.shape[1]
    outs = []
    for b in range(B):
        idx = indices[b].long()
        w = weight.index_select(0, idx).reshape(k * cout, cin, 3, 3)
        bb = None if bias is None else bias.index_select(0, idx).reshape(-1)
        outs.append(F.conv2d(hidden[b].reshape(1, k * cin, H, W), w, bb, padding=1, groups=k))
    y = torch.cat(outs) if B > 1 else outs[0]
    return combine(y.view(B, k, cout, H, W), weights)


# ----------------------------------------------------------------------------- experts
# Fuse the last layer with the combine (moefusion::expert_conv3x3_combine, CUDA cores) up to this many
# output channels. An estimate, not yet a measurement: for MoGE's 16 -> 1 layer the fused kernel is
# memory-bound (~10 us at 640x480 on an H100) where a library convolution with one output channel is
# inefficient; MoLE's 8 -> 16 layer does 2304 FMAs per pixel and is likely faster on cuDNN's tensor
# cores. `python -m moefusion.kernels.check` measures both ("last conv+combine" rows).
FUSE_MAX_COUT = 4


def _fuse_default(x: Tensor, layers: Layers) -> bool:
    return kernels_usable(x) and layers[-1][0].shape[1] <= FUSE_MAX_COUT


def experts_forward(
    inputs: Tensor,
    indices: Tensor,
    weights: Tensor,
    layers: Layers,
    input_groups: int = 1,
    strategy: str = "gathered",
    fuse_last: bool | None = None,
) -> Tensor:
    """y[b] = logsumexp_j(expert_{indices[b,j]}(x_{b,j}) + log weights[b,j]) -> [B, Cout, H, W].

    inputs [B, G*Cin, H, W]; indices [B, k] (int32/int64); weights [B, k]; layers [(weight, bias), ...].
    fuse_last: run the last layer and the combine as one CUDA kernel (default: on CUDA with the library,
    when the last layer has at most FUSE_MAX_COUT output channels).
    """
    E = layers[0][0].shape[0]
    G = int(input_groups)
    if E % G:
        raise ValueError(f"{E} experts do not split into {G} input groups")
    if inputs.shape[1] % G:
        raise ValueError(f"{inputs.shape[1]} input channels do not split into {G} groups")
    if fuse_last is None:
        fuse_last = _fuse_default(inputs, layers)
    if strategy == "gathered":
        return _gathered(inputs, indices, weights, layers, G, fuse_last)
    if strategy == "dense":
        return _dense(inputs, indices, weights, layers, G, fuse_last)
    raise ValueError(f"unknown strategy {strategy!r} (gathered, dense)")


def _block_weights(w: Tensor, groups_of_slots: Tensor, G: int) -> Tensor:
    """w [k, Co, Ci, 3, 3] + the input group of each slot [k] -> [k*Co, G*Ci, 3, 3], zero outside the group."""
    k, co, ci = w.shape[:3]
    sel = (groups_of_slots.view(k, 1) == torch.arange(G, device=w.device).view(1, G)).to(w.dtype)  # [k, G]
    big = w.unsqueeze(2) * sel.view(k, 1, G, 1, 1, 1)  # [k, Co, G, Ci, 3, 3]
    return big.reshape(k * co, G * ci, 3, 3)


def _gathered(inputs, indices, weights, layers, G, fuse_last):
    B = inputs.shape[0]
    k = indices.shape[1]
    E = layers[0][0].shape[0]
    hidden_layers = layers[:-1] if fuse_last else layers
    outs = []
    for b in range(B):  # static loop: B is a shape, not data
        idx = indices[b].long()
        x = inputs[b : b + 1]
        for li, (w, bias) in enumerate(hidden_layers):
            wk = w.index_select(0, idx)  # [k, Co, Ci, 3, 3]
            co, ci = wk.shape[1:3]
            bk = None if bias is None else bias.index_select(0, idx).reshape(-1)
            if li == 0:
                if G == 1:
                    x = F.conv2d(x, wk.reshape(k * co, ci, 3, 3), bk, padding=1)
                else:
                    x = F.conv2d(x, _block_weights(wk, idx // (E // G), G), bk, padding=1)
            else:
                x = F.conv2d(x, wk.reshape(k * co, ci, 3, 3), bk, padding=1, groups=k)
            if li < len(layers) - 1:
                x = F.relu(x)
        H, W = x.shape[-2:]
        if fuse_last:
            if len(layers) == 1:  # the only layer is the fused one: gather the slots' input groups
                cin = inputs.shape[1] // G
                grp = idx // (E // G)
                x = x.view(1, G, cin, H, W).index_select(1, grp)
            else:
                x = x.view(1, k, -1, H, W)
            w, bias = layers[-1]
            outs.append(last_layer_combine(x, w, bias, indices[b : b + 1], weights[b : b + 1], fuse=True))
        else:
            outs.append(combine(x.view(1, k, -1, H, W), weights[b : b + 1]))
    return torch.cat(outs) if B > 1 else outs[0]


def _dense(inputs, indices, weights, layers, G, fuse_last):
    B, _, H, W = inputs.shape
    k = indices.shape[1]
    E = layers[0][0].shape[0]
    hidden_layers = layers[:-1] if fuse_last else layers
    x = inputs
    for li, (w, bias) in enumerate(hidden_layers):
        co, ci = w.shape[1:3]
        x = F.conv2d(x, w.reshape(E * co, ci, 3, 3), None if bias is None else bias.reshape(-1), padding=1,
                     groups=G if li == 0 else E)
        if li < len(layers) - 1:
            x = F.relu(x)
    idx = indices.long()
    if fuse_last and len(layers) == 1:
        cin = inputs.shape[1] // G
        x5 = inputs.view(B, G, cin, H, W)
        sel = (idx // (E // G))
    else:
        x5 = x.view(B, E, -1, H, W)
        sel = idx
    C = x5.shape[2]
    chosen = torch.gather(x5, 1, sel.view(B, k, 1, 1, 1).expand(B, k, C, H, W))  # [B, k, C, H, W]
    if fuse_last:
        w, bias = layers[-1]
        return torch.ops.moefusion.expert_conv3x3_combine(chosen, w, bias, indices, weights)
    return combine(chosen, weights)


# ----------------------------------------------------------------------------- models
def accelerate(model: torch.nn.Module, strategy: str = "gathered") -> torch.nn.Module:
    """Route every MoE layer (moefusion.model.moe.GatedExperts) of `model` through the CUDA ops.

    In eval mode on CUDA (with the library) a layer's forward becomes: fast.gate (one kernel) and
    fast.experts_forward (gathered expert weights, fused last layer + combine); in training, on the CPU,
    or with the kernels off (use_kernels(False), MOEFUSION_KERNELS=0) the layer's own forward runs.
    Same function (tests compare them); the checkpoint and the model's code are unchanged. Returns `model`.
    """
    def make_forward(layer: GatedExperts, original: Callable):
        def forward(gate_features, inputs, stream=None):
            if stream is not None or layer.training or not kernels_usable(gate_features):  # stream: its own routing
                return original(gate_features, inputs, stream)
            indices, weights = gate(gate_features, layer.w_gate, layer.grid, layer.k, layer.pool, layer.normalise)
            if isinstance(inputs, torch.Tensor):
                x, groups = inputs, 1
            else:
                x, groups = torch.cat(tuple(inputs), dim=1), len(inputs)
            bank = layer.experts
            y = experts_forward(x, indices, weights, list(zip(bank.weights, bank.biases)), groups, strategy=strategy)
            idx = indices.long()
            gates = torch.zeros(idx.shape[0], bank.num_experts, dtype=weights.dtype, device=weights.device)
            gates = gates.scatter(1, idx, weights)
            g = Gating(idx, weights, gates, (gates > 0).sum(0).to(gates.dtype))
            aux = torch.zeros((), dtype=torch.float32, device=y.device)  # balancing loss: training only
            return MoEOutput(y, aux, g)

        return forward

    for m in model.modules():
        if isinstance(m, GatedExperts) and not getattr(m, "_moefusion_accelerated", False):
            m.forward = make_forward(m, m.forward)
            m._moefusion_accelerated = True
    return model


# ----------------------------------------------------------------------------- whole-model runner
class GraphRunner:
    """Run a module on fixed-shape inputs by replaying a CUDA graph (inputs copied into static buffers).

    Built by optimize(); `runner(*inputs)` returns the graph's static outputs (overwritten by the next
    call: clone them to keep them).
    """

    def __init__(self, fn: Callable, example_inputs: Sequence[Tensor], warmup: int = 3, channels_last: bool = True,
                 dtype: torch.dtype | None = None):
        self.fn = fn
        self.dtype = dtype
        self.channels_last = channels_last
        self.static_inputs = [self._prepare(t).clone() for t in example_inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(warmup):  # cudnn autotuning, lazy module loads, workspaces: outside the capture
                fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.static_outputs = fn(*self.static_inputs)

    def _prepare(self, t: Tensor) -> Tensor:
        if self.dtype is not None and t.is_floating_point():
            t = t.to(self.dtype)
        if self.channels_last and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def __call__(self, *inputs: Tensor):
        for dst, src in zip(self.static_inputs, inputs):
            dst.copy_(src)
        self.graph.replay()
        return self.static_outputs


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """NHWC for every 4-D parameter and buffer (Module.to(memory_format=...) refuses the 5-D stacked
    expert weights)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return model


def optimize(
    model: torch.nn.Module,
    example_inputs: Sequence[Tensor],
    dtype: torch.dtype | None = torch.float16,
    channels_last: bool = True,
    cuda_graph: bool = True,
    compile: bool | str = False,
    forward: Callable | None = None,
) -> Callable:
    """The fastest inference callable for `model` at the example inputs' shapes (CUDA).

    dtype: cast parameters and inputs (None keeps them); channels_last: NHWC activations (tensor cores);
    compile: torch.compile the forward first (True = default mode, or a mode string such as
    "max-autotune-no-cudagraphs"); cuda_graph: capture the whole forward and replay it.
    forward(model, *inputs) picks what to run (default: model(*inputs)).
    """
    torch.backends.cudnn.benchmark = True
    model = model.eval()
    if dtype is not None:
        model = model.to(dtype)
    if channels_last:
        to_channels_last(model)
    call = forward or (lambda m, *xs: m(*xs))

    def fn(*xs):
        return call(model, *xs)

    if compile:
        mode = compile if isinstance(compile, str) else None
        fn = torch.compile(fn, mode=mode, dynamic=False)
    if cuda_graph:
        return GraphRunner(fn, example_inputs, channels_last=channels_last, dtype=dtype)

    def run(*xs):
        xs = [x.to(dtype) if dtype is not None and x.is_floating_point() else x for x in xs]
        if channels_last:
            xs = [x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in xs]
        with torch.inference_mode():
            return fn(*xs)

    return run


def time_cuda(fn: Callable, *args, iters: int = 50, warmup: int = 5, graph: bool = False) -> float:
    """Median milliseconds per call, timed with CUDA events (optionally as a captured CUDA graph)."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn(*args)
        torch.cuda.synchronize()
        if graph:
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                fn(*args)
            torch.cuda.current_stream().wait_stream(s)
            with torch.cuda.graph(g):
                fn(*args)
            run = g.replay
        else:
            def run():
                fn(*args)
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def time_host(fn: Callable, *args, iters: int = 5) -> float:
    """Median wall milliseconds (CPU fallback timing)."""
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]
