"""GPU tests of the CUDA gated-expert kernels (marked gpu; skipped without a CUDA device).

Each kernel against the PyTorch reference on random inputs at several sizes including odd ones, NCHW and
channels-last, fp32 (1e-5 relative) and fp16 (1e-2), with outputs poisoned with NaN beforehand so that
every element must be written; the torch ops, CUDA-graph capture (routing changes between replays, no
host synchronisation), torch.compile, the sparse dispatch strategies, the standalone self-test and one run
under compute-sanitizer memcheck.

The library is taken from $MOEFUSION_KERNELS_LIB, the package or build/kernels; when none is there it is
built into build/kernels for this GPU (python -m moefusion.kernels.check does that first).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from moefusion.kernels import _lib, build as kbuild, fast, reference as R  # noqa: E402
from moefusion.model.gating import randomize_gates  # noqa: E402

FP32_TOL, FP16_TOL = 1e-5, 1e-2
# fp32 references must not use TF32 (about 1e-3 relative error)
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def lib():
    if _lib.library_path() is None:
        major, minor = torch.cuda.get_device_capability()
        kbuild.build(archs=f"{major}{minor}-real")
    return _lib.load_library()


def _stream():
    return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)


def _poisoned(shape, dtype, like=None, channels_last=False):
    t = torch.empty(shape, dtype=dtype, device="cuda",
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return t.fill_(float("nan")) if dtype.is_floating_point else t.fill_(-1)


# ----------------------------------------------------------------------------- the C ABI, poisoned outputs
GATE_CASES = [
    (2, 5, 13, 17, 4, 6, 4, 2),
    (3, 19, 37, 29, 7, 5, 8, 3),
    (1, 32, 480, 640, 120, 160, 4, 2),  # MoLE gate, paper preset
    (1, 160, 480, 640, 60, 80, 4, 2),  # MoGE gate, paper preset
    (8, 160, 241, 333, 60, 80, 4, 2),  # odd size, batch 8
    (2, 4, 1, 1, 3, 2, 5, 5),
    (1, 6, 40, 52, 20, 26, 32, 7),
]


@pytest.mark.parametrize("case", GATE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_gate_kernel(lib, case, dtype, layout):
    B, C, H, W, gh, gw, E, k = case
    f = torch.randn(B, C, H, W, device="cuda").to(dtype)
    f = cl(f) if layout == "cl" else f
    w = torch.randn(C * gh * gw, E, device="cuda") * (0.3 / (C * gh * gw) ** 0.5)
    idx, wts = _poisoned((B, k), torch.int32), _poisoned((B, k), torch.float32)
    n = ctypes.c_size_t()
    _lib.check(lib.moefusion_gate_workspace_size(B, C, gh, gw, E, ctypes.byref(n)), "ws")
    ws = torch.zeros(n.value + 256, dtype=torch.uint8, device="cuda")
    ptr = ws.data_ptr() + (-ws.data_ptr()) % 256
    for _ in range(3):  # the workspace's counters must reset themselves between launches
        idx.fill_(-1)
        wts.fill_(float("nan"))
        _lib.check(lib.moefusion_gate(_lib.desc(f), _lib.desc(w), gh, gw, k, _lib.desc(idx), _lib.desc(wts),
                                      ctypes.c_void_p(ptr), n.value, 0, _stream()), "gate")
        # against the same math in float64 (the float32 reference's own rounding is ~1e-5 at D = 768,000)
        ridx, rwts, logits = R.gate_float64(f, w, gh, gw, k)
        picked, best = logits.gather(1, idx.long()), logits.gather(1, ridx.long())
        assert (idx >= 0).all() and not torch.isnan(wts).any()
        # the same experts, or a near-tie between experts whose logits agree within rounding
        assert torch.allclose(picked, best, rtol=1e-5, atol=1e-5 * logits.abs().max().item())
        if torch.equal(idx, ridx):
            assert rel(wts, rwts) < FP32_TOL
    assert ws[:256].sum().item() == 0  # counters back at zero


@pytest.mark.parametrize("shape", [(2, 2, 3, 5, 7), (1, 2, 16, 480, 640), (8, 2, 16, 97, 131), (3, 5, 8, 4, 8),
                                   (2, 8, 1, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_combine_kernel(lib, shape, dtype, layout):
    B, k, C, H, W = shape
    x = torch.randn(B, k * C, H, W, device="cuda") * 3
    x = (cl(x) if layout == "cl" else x).to(dtype).view(B, k, C, H, W)
    w = torch.softmax(torch.randn(B, k, device="cuda"), 1)
    out = _poisoned((B, C, H, W), dtype, channels_last=layout == "cl")
    _lib.check(lib.moefusion_combine(_lib.desc(x), _lib.desc(w), _lib.desc(out), _stream()), "combine")
    assert rel(out.float(), R.combine(x.float(), w)) < (FP32_TOL if dtype == torch.float32 else FP16_TOL)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 16, 480, 640), (8, 16, 97, 131), (2, 8, 1, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_attention_split_kernel(lib, shape, dtype, layout):
    B, C, H, W = shape
    x0, x1 = torch.randn(*shape, device="cuda").to(dtype), torch.randn(*shape, device="cuda").to(dtype)
    a = torch.rand(B, 1, H, W, device="cuda").to(dtype)
    if layout == "cl":
        x0, x1, a = cl(x0), cl(x1), cl(a)
    fg = _poisoned((B, 2 * C, H, W), dtype, channels_last=layout == "cl")
    bg = _poisoned((B, 2 * C, H, W), dtype, channels_last=layout == "cl")
    _lib.check(lib.moefusion_attention_split(_lib.desc(x0), _lib.desc(x1), _lib.desc(a), _lib.desc(fg),
                                             _lib.desc(bg), _stream()), "attention_split")
    rf, rb = R.attention_split(x0, x1, a)
    assert torch.equal(fg, rf) and torch.equal(bg, rb)


CONV_CASES = [
    (1, 2, 16, 1, 480, 640, 4),  # MoGE's last layer, paper preset
    (1, 2, 8, 16, 480, 640, 4),  # MoLE's last layer, paper preset
    (8, 2, 16, 1, 97, 131, 4),
    (2, 3, 5, 7, 8, 32, 6),
    (1, 1, 17, 40, 10, 5, 2),
    (2, 8, 2, 3, 3, 3, 8),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_expert_conv3x3_combine_kernel(lib, case, dtype, layout):
    B, k, Cin, Cout, H, W, E = case
    h = torch.randn(B, k * Cin, H, W, device="cuda")
    h = (cl(h) if layout == "cl" else h).to(dtype).view(B, k, Cin, H, W)
    wt = (torch.randn(E, Cout, Cin, 3, 3, device="cuda") * (1.0 / (9 * Cin) ** 0.5)).to(dtype)
    bias = (torch.randn(E, Cout, device="cuda") * 0.1).to(dtype)
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(B)]).int().cuda()
    gw = torch.softmax(torch.randn(B, k, device="cuda"), 1)
    out = _poisoned((B, Cout, H, W), dtype, channels_last=layout == "cl")
    _lib.check(lib.moefusion_expert_conv3x3_combine(_lib.desc(h), _lib.desc(wt), _lib.desc(bias), _lib.desc(idx),
                                                    _lib.desc(gw), _lib.desc(out), _stream()), "conv")
    ref = R.expert_conv3x3_combine(h.float(), wt.float(), bias.float(), idx, gw)
    assert rel(out.float(), ref) < (FP32_TOL if dtype == torch.float32 else FP16_TOL)


# ----------------------------------------------------------------------------- torch ops, graphs, compile
def test_ops_match_reference_and_capture_in_cuda_graph(lib):
    """All four ops in one CUDA graph; replays with new inputs route differently and stay correct."""
    g = torch.Generator(device="cuda").manual_seed(0)
    B, C, H, W, E, k = 2, 8, 48, 64, 4, 2
    w_gate = torch.randn(2 * C * 12 * 16, E, device="cuda", generator=g) * 0.05
    wt = torch.randn(E, 3, C, 3, 3, device="cuda", generator=g) * 0.2
    bias = torch.randn(E, 3, device="cuda", generator=g)

    def step(x0, x1, a):
        fg, bg = torch.ops.moefusion.attention_split(x0, x1, a)
        idx, wts = torch.ops.moefusion.gate(fg, w_gate, 12, 16, k)
        y = torch.ops.moefusion.combine(fg.view(B, 2, C, H, W), wts)
        z = torch.ops.moefusion.expert_conv3x3_combine(bg.view(B, 2, C, H, W), wt, bias, idx, wts)
        return idx, wts, y, z

    def reference(x0, x1, a):
        fg, bg = R.attention_split(x0, x1, a)
        idx, wts = R.gate(fg, w_gate, 12, 16, k)
        return idx, wts, R.combine(fg.view(B, 2, C, H, W), wts), \
            R.expert_conv3x3_combine(bg.view(B, 2, C, H, W), wt, bias, idx, wts)

    def inputs(seed):
        gg = torch.Generator(device="cuda").manual_seed(seed)
        return [torch.randn(B, C, H, W, device="cuda", generator=gg) * 3,
                torch.randn(B, C, H, W, device="cuda", generator=gg) * 3,
                torch.rand(B, 1, H, W, device="cuda", generator=gg)]

    static = inputs(1)
    for out, ref in zip(step(*static), reference(*static)):  # eager
        assert rel(out.float(), ref.float()) < FP32_TOL
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step(*static)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # fails if anything synchronises with the host
        outs = step(*static)
    routes = set()
    for seed in range(2, 12):
        for dst, src in zip(static, inputs(seed)):
            dst.copy_(src)
        graph.replay()
        ref = reference(*static)
        assert torch.equal(outs[0], ref[0])
        for o, r in zip(outs[1:], ref[1:]):
            assert rel(o.float(), r.float()) < FP32_TOL
        routes |= {tuple(r) for r in outs[0].tolist()}
    assert len(routes) > 1, "routing must change with the input inside the graph"


def test_ops_under_torch_compile(lib):
    w_gate = torch.randn(16 * 6 * 8, 4, device="cuda") * 0.1

    def fn(x0, x1, a):
        fg, _ = torch.ops.moefusion.attention_split(x0, x1, a)
        idx, wts = torch.ops.moefusion.gate(fg, w_gate, 6, 8, 2)
        return torch.ops.moefusion.combine(fg.view(2, 2, 8, 24, 32).exp().log(), wts), idx

    args = [torch.randn(2, 8, 24, 32, device="cuda"), torch.randn(2, 8, 24, 32, device="cuda"),
            torch.rand(2, 1, 24, 32, device="cuda")]
    y, i = torch.compile(fn, fullgraph=True)(*args)
    ry, ri = fn(*args)
    assert torch.equal(i, ri) and rel(y, ry) < FP32_TOL


EXPERT_CASES = [
    (1, 1, 4, 2, [160, 64, 32, 16, 1], 120, 160),  # MoGE (paper channels, quarter size)
    (2, 1, 4, 2, [160, 64, 32, 16, 1], 61, 83),
    (1, 2, 4, 2, [16, 8, 16], 120, 160),  # MoLE
    (3, 2, 4, 2, [16, 8, 16], 47, 65),
]


@pytest.mark.parametrize("case", EXPERT_CASES)
@pytest.mark.parametrize("strategy", ["gathered", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_experts_forward_on_gpu(lib, case, strategy, dtype):
    B, G, E, k, chans, H, W = case
    layers = [(torch.randn(E, co, ci, 3, 3, device="cuda") * (2.0 / (9 * ci)) ** 0.5,
               torch.randn(E, co, device="cuda") * 0.1) for ci, co in zip(chans[:-1], chans[1:])]
    x = torch.randn(B, G * chans[0], H, W, device="cuda")
    idx = torch.stack([torch.randperm(E)[:k] for _ in range(B)]).int().cuda()
    w = torch.softmax(torch.randn(B, k, device="cuda"), 1)
    ref = R.experts_forward(x, idx, w, layers, G)
    xl = cl(x).to(dtype)
    ll = [(a.to(dtype), b.to(dtype)) for a, b in layers]
    for fuse in (False, True):
        y = fast.experts_forward(xl, idx, w, ll, G, strategy=strategy, fuse_last=fuse)
        assert rel(y.float(), ref) < (1e-4 if dtype == torch.float32 else FP16_TOL), (fuse, rel(y.float(), ref))


def test_graph_runner_matches_eager(lib):
    m = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 3, padding=1))
    m = m.cuda().eval()
    x = torch.randn(1, 2, 64, 96, device="cuda")
    with torch.inference_mode():
        ref = m(x).float()
    run = fast.optimize(m, [x], dtype=torch.float16)
    assert rel(run(x).float(), ref) < FP16_TOL


# ----------------------------------------------------------------------------- self-test, compute-sanitizer
def _selftest_binary() -> Path:
    path = _lib.library_path()
    exe = path.parent / "moefusion_kernels_selftest" if path else None
    if exe is None or not exe.is_file():
        pytest.skip(f"moefusion_kernels_selftest not next to {path} (built by CMake with the library)")
    return exe


def test_selftest_binary(lib):
    exe = _selftest_binary()
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-2000:]
    assert "PASSED" in res.stdout


def _sanitizer() -> str:
    found = shutil.which("compute-sanitizer")
    for cand in ("/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda/compute-sanitizer/compute-sanitizer"):
        if not found and os.path.isfile(cand):
            found = cand
    if not found:
        pytest.skip("compute-sanitizer not found")
    return found


# compute-sanitizer's own refusals (not errors of the code under test): no "ERROR SUMMARY" follows them
_SANITIZER_CANNOT = ("device not supported", "not supported on this", "unsupported", "unable to", "permission",
                     "insufficient", "no attachable", "terminated before first instrumented", "driver version",
                     "could not", "failed to")


def _sanitizer_cannot_run(out: str) -> str:
    """The first line in which compute-sanitizer says it cannot run here, '' when it ran (and reported)."""
    if "ERROR SUMMARY" in out or "RACECHECK SUMMARY" in out:
        return ""
    for line in out.splitlines():
        if line.lstrip().startswith("=========") and any(c in line.lower() for c in _SANITIZER_CANNOT):
            return line.strip("= ").strip()[:200]
    return ""


@pytest.mark.parametrize("tool", ["memcheck", "racecheck"])
def test_selftest_under_compute_sanitizer(lib, tool):
    exe = _selftest_binary()
    args = [_sanitizer(), "--tool", tool, "--error-exitcode", "3"]
    if tool == "memcheck":
        args += ["--leak-check", "full"]
    res = subprocess.run(args + [str(exe), "--quick"], capture_output=True, text=True, timeout=600)
    out = res.stdout + res.stderr
    cannot = _sanitizer_cannot_run(out)
    if res.returncode != 0 and cannot:
        pytest.skip(f"compute-sanitizer cannot run on this device: {cannot}")
    assert res.returncode == 0, out[-6000:]
    assert "ERROR SUMMARY: 0 errors" in out or "RACECHECK SUMMARY: 0 hazards" in out, out[-3000:]


# ----------------------------------------------------------------------------- the model through the kernels
def test_accelerated_model_matches_and_captures(lib):
    import moefusion

    torch.manual_seed(0)
    model = randomize_gates(moefusion.build_model("paper"), seed=1, scale=None).cuda().eval()
    ir, vis = torch.rand(1, 1, 224, 320, device="cuda"), torch.rand(1, 1, 224, 320, device="cuda")
    with torch.inference_mode():
        ref = model(ir, vis)
    calls = sum(fast_ops_calls().values())
    fast.accelerate(model)
    with torch.inference_mode():
        out = model(ir, vis)
    assert sum(fast_ops_calls().values()) > calls, "the accelerated model must call the kernels"
    for name, idx in ref.routes.items():
        assert torch.equal(out.routes[name].long(), idx.long()), name
    assert rel(out.fused, ref.fused) < 1e-4
    run = fast.optimize(model, [ir, vis], dtype=None, channels_last=True, forward=lambda m, a, b: m(a, b).fused)
    assert rel(run(ir, vis).float(), ref.fused) < 1e-3  # NHWC convolutions sum in other orders


def fast_ops_calls():
    from moefusion.kernels import ops

    return ops.CALLS
