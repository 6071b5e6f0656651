"""CPU tests of the CUDA gated-expert kernels (no GPU needed).

- the CMake build of libmoefusion_kernels.so (nvcc compile check) and its exported C symbols;
- the CPU twins of the kernels (the same kernel code run block by block on the host) against the PyTorch
  references (moefusion/model/gating.py, moefusion/kernels/reference.py) at odd sizes, NCHW/channels-last,
  strided outputs, fp32/fp16, with poisoned outputs;
- the PyTorch ops (CPU path), their fake implementations, torch.compile tracing;
- ONNX export of the ops as moefusion-domain nodes, run back through onnx.reference;
- the sparse expert dispatch strategies of moefusion.kernels.fast against the per-sample reference.
GPU tests are in tests/test_kernels_gpu.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch

from moefusion.kernels import _lib, build as kbuild, fast, reference as R
from moefusion.model.gating import gated_logsumexp, randomize_gates


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- build
@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """Configure and build the library with CMake into a temp dir (one arch to keep it short)."""
    problem = kbuild.toolchain_problem()
    if problem:
        pytest.skip(f"cannot build the CUDA library here: {problem}")
    out = tmp_path_factory.mktemp("kernels-build")
    res = subprocess.run(
        ["cmake", "-S", str(kbuild.ROOT), "-B", str(out), "-DCMAKE_CUDA_ARCHITECTURES=87-real",
         f"-DCMAKE_CUDA_COMPILER={kbuild.find_nvcc()}"] + (["-G", "Ninja"] if shutil.which("ninja") else []),
        capture_output=True, text=True,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    configure_log = res.stdout
    res = subprocess.run(["cmake", "--build", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return out, configure_log


@pytest.fixture(scope="session")
def lib(built):
    out, _ = built
    path = out / kbuild.LIB_NAME
    old = os.environ.get(_lib.ENV_VAR)
    os.environ[_lib.ENV_VAR] = str(path)
    _lib._lib = None
    _lib._lib_path = None
    yield _lib.load_library()
    _lib._lib = None
    _lib._lib_path = None
    if old is None:
        os.environ.pop(_lib.ENV_VAR, None)
    else:
        os.environ[_lib.ENV_VAR] = old


@pytest.fixture
def host(lib):
    from moefusion.kernels import host as h

    return h


def test_cmake_build_exports_only_the_c_abi(built):
    out, configure_log = built
    so = out / kbuild.LIB_NAME
    assert so.is_file()
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not found")
    syms = subprocess.run([nm, "-D", "--defined-only", str(so)], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in syms.splitlines() if line.strip()}
    assert exported == set(_lib.EXPORTED_SYMBOLS), exported ^ set(_lib.EXPORTED_SYMBOLS)
    readelf = shutil.which("readelf")
    if readelf:
        needed = subprocess.run([readelf, "-d", str(so)], capture_output=True, text=True, check=True).stdout
        assert "cudart" not in needed, "cudart must be linked statically"
    # the configure step says what it builds and why
    assert "TensorRT plugins:" in configure_log
    if not any((p / "NvInfer.h").exists() for p in (
        kbuild.Path("/usr/include/x86_64-linux-gnu"), kbuild.Path("/usr/include/aarch64-linux-gnu"))) \
            and not os.environ.get("TensorRT_ROOT"):
        assert "TensorRT plugins: OFF (NvInfer.h not found; set TensorRT_INCLUDE_DIR or TensorRT_ROOT)" in configure_log
    assert (out / "moefusion_kernels_selftest").is_file()


def test_selftest_skips_without_gpu(built):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the GPU tests run the self-test")
    out, _ = built
    res = subprocess.run([str(out / "moefusion_kernels_selftest")], capture_output=True, text=True)
    assert res.returncode == 77, res.stdout + res.stderr


def test_library_info(lib):
    assert lib.moefusion_abi_version() == _lib.ABI_VERSION
    assert "abi 1" in _lib.build_info()


def test_missing_library_message_names_path_and_build_command(monkeypatch, tmp_path):
    monkeypatch.setattr(_lib, "_lib", None)
    monkeypatch.setattr(_lib, "_lib_path", None)
    monkeypatch.setenv(_lib.ENV_VAR, str(tmp_path / "nope.so"))
    monkeypatch.setattr(_lib, "PACKAGE_LIB_DIR", tmp_path / "pkg")
    monkeypatch.setattr(_lib, "DEFAULT_BUILD_DIR", tmp_path / "build")
    with pytest.raises(_lib.KernelLibraryError) as e:
        _lib.load_library()
    msg = str(e.value)
    assert "nope.so" in msg and "python -m moefusion.kernels.build" in msg
    assert not _lib.available()


# ----------------------------------------------------------------------------- CPU twins vs references
GATE_CASES = [
    # B, C, H, W, gh, gw, E, k
    (2, 5, 13, 17, 4, 6, 4, 2),
    (3, 19, 37, 29, 7, 5, 8, 3),
    (1, 3, 9, 9, 9, 9, 4, 1),  # grid == size: no resize
    (2, 4, 1, 1, 3, 2, 5, 5),  # 1x1 features, k == E
    (1, 2, 11, 7, 1, 1, 3, 2),  # 1x1 grid
    (1, 6, 40, 52, 20, 26, 32, 7),  # E = 32, several blocks per sample
    (2, 17, 33, 47, 30, 40, 4, 2),  # channel groups of 16 + 1, grid tiles of 256
]


@pytest.mark.parametrize("case", GATE_CASES)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_gate_twin_matches_reference(host, case, layout):
    B, C, H, W, gh, gw, E, k = case
    g = torch.Generator().manual_seed(hash(case) % 1000)
    f = torch.randn(B, C, H, W, generator=g)
    w = torch.randn(C * gh * gw, E, generator=g) * 0.1
    idx, wts = host.gate(cl(f) if layout == "cl" else f, w, gh, gw, k)
    assert idx.dtype == torch.int32 and wts.dtype == torch.float32
    _check_gate(f, w, gh, gw, k, idx, wts)
    assert torch.equal(idx, R.gate(f, w, gh, gw, k)[0])  # the float32 reference of gating.py picks the same
    assert torch.allclose(wts.sum(1), torch.ones(B), atol=1e-6)


def _check_gate(f, w, gh, gw, k, idx, wts, tol=1e-5):
    """Same experts as the float64 math (or a near-tie: logits equal within rounding), weights within tol."""
    ridx, rwts, logits = R.gate_float64(f, w, gh, gw, k)
    chosen, best = logits.gather(1, idx.long()), logits.gather(1, ridx.long())
    assert torch.allclose(chosen, best, rtol=1e-5, atol=1e-5 * logits.abs().max().item())
    if torch.equal(idx, ridx):
        assert rel(wts, rwts) < tol


def test_gate_twin_fp16_and_ties(host):
    g = torch.Generator().manual_seed(4)
    f = torch.randn(2, 8, 21, 23, generator=g).half()
    w = (torch.randn(8 * 5 * 6, 4, generator=g) * 0.1).half()
    idx, wts = host.gate(f, w, 5, 6, 2)
    _check_gate(f.float(), w.float(), 5, 6, 2, idx, wts)
    # exact ties: all logits equal -> lowest indices first, equal weights
    idx, wts = host.gate(torch.zeros(1, 2, 4, 4), torch.zeros(2 * 2 * 2, 6), 2, 2, 3)
    assert idx.tolist() == [[0, 1, 2]] and torch.allclose(wts, torch.full((1, 3), 1 / 3))


def test_gate_paper_size_twin(host):
    """The MoGE gate at 640x480 (160 channels, grid 60x80): many blocks per sample."""
    g = torch.Generator().manual_seed(3)
    f = torch.randn(1, 160, 480, 640, generator=g)
    w = torch.randn(160 * 60 * 80, 4, generator=g) * 0.01
    idx, wts = host.gate(f, w, 60, 80, 2)
    _check_gate(f, w, 60, 80, 2, idx, wts)


def test_gate_twin_rejects_bad_arguments(host):
    f = torch.randn(1, 4, 8, 8)
    with pytest.raises(_lib.KernelError, match="w_gate: 10 rows"):
        host.gate(f, torch.randn(10, 4), 2, 2, 2)
    with pytest.raises(_lib.KernelError, match="k = 5 outside"):
        host.gate(f, torch.randn(16, 4), 2, 2, 5)
    with pytest.raises(_lib.KernelError, match="NOT_SUPPORTED"):
        host.gate(f, torch.randn(16, 33), 2, 2, 2)


COMBINE_CASES = [(2, 2, 3, 5, 7), (1, 2, 16, 8, 8), (3, 1, 2, 1, 1), (2, 3, 5, 4, 8), (1, 5, 7, 3, 9), (2, 8, 4, 4, 4)]


@pytest.mark.parametrize("shape", COMBINE_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_combine_twin_matches_reference(host, shape, dtype, layout):
    B, k, C, H, W = shape
    x = (torch.randn(B, k * C, H, W) * 3)
    if layout == "cl":
        x = cl(x)  # slots as a view of a channels-last [B, k*C, H, W] tensor (what grouped convs give)
    x = x.to(dtype).view(B, k, C, H, W)
    w = torch.softmax(torch.randn(B, k), 1)
    out = host.combine(x, w)
    ref = R.combine(x, w)
    assert not torch.isnan(out).any()
    assert rel(out.float(), ref.float()) < (1e-5 if dtype == torch.float32 else 1e-3)


def test_combine_twin_writes_into_a_channel_slice(host):
    """The combine can write straight into its place in a concatenation (MoLE output in the 160 channels)."""
    x = torch.randn(2, 2, 16, 6, 8)
    w = torch.softmax(torch.randn(2, 2), 1)
    big = torch.full((2, 160, 6, 8), float("nan"))
    host.combine(x, w, out=big[:, 128:144])
    assert rel(big[:, 128:144], R.combine(x, w)) < 1e-6
    assert torch.isnan(big[:, :128]).all() and torch.isnan(big[:, 144:]).all()


def test_combine_special_values(host):
    x = torch.tensor([[[[[0.0]]], [[[float("-inf")]]]]]).expand(1, 2, 1, 1, 1).contiguous()
    w = torch.tensor([[0.25, 0.75]])
    assert torch.allclose(host.combine(x, w), torch.log(torch.tensor(0.25)).view(1, 1, 1, 1))
    x = torch.full((1, 2, 1, 1, 1), float("-inf"))
    assert host.combine(x, w).item() == float("-inf")
    x = torch.tensor([0.0, float("nan")]).view(1, 2, 1, 1, 1)
    assert torch.isnan(host.combine(x, w)).all()


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 16, 8, 8), (2, 8, 1, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_attention_split_twin_matches_reference(host, shape, dtype, layout):
    x0, x1 = torch.randn(*shape).to(dtype), torch.randn(*shape).to(dtype)
    a = torch.rand(shape[0], 1, *shape[2:]).to(dtype)
    if layout == "cl":
        x0, x1, a = cl(x0), cl(x1), cl(a)
    fg, bg = host.attention_split(x0, x1, a)
    rf, rb = R.attention_split(x0, x1, a)
    assert torch.equal(fg, rf) and torch.equal(bg, rb)  # same rounding as eager PyTorch, bit for bit


CONV_CASES = [
    # B, k, Cin, Cout, H, W, E
    (1, 2, 16, 1, 13, 37, 4),  # MoGE's last layer, tiles cut at the edges
    (2, 2, 8, 16, 9, 33, 4),  # MoLE's last layer
    (2, 3, 5, 7, 8, 32, 6),
    (1, 1, 17, 40, 10, 5, 2),  # several input chunks and output-channel groups
    (2, 8, 2, 3, 3, 3, 8),
    (1, 4, 3, 5, 17, 70, 4),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_expert_conv3x3_combine_twin_matches_reference(host, case, dtype):
    B, k, Cin, Cout, H, W, E = case
    g = torch.Generator().manual_seed(sum(case))
    h = torch.randn(B, k, Cin, H, W, generator=g).to(dtype)
    wt = (torch.randn(E, Cout, Cin, 3, 3, generator=g) * 0.3).to(dtype)
    bias = (torch.randn(E, Cout, generator=g) * 0.1).to(dtype)
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(B)]).int()
    gw = torch.softmax(torch.randn(B, k, generator=g), 1)
    out = host.expert_conv3x3_combine(h, wt, bias, idx, gw)
    ref = R.expert_conv3x3_combine(h, wt, bias, idx, gw)
    assert rel(out.float(), ref.float()) < (1e-5 if dtype == torch.float32 else 2e-3)


def test_expert_conv3x3_combine_twin_channels_last_slots_and_no_bias(host):
    B, k, Cin, Cout, H, W, E = 1, 2, 16, 1, 12, 20, 4
    hid = cl(torch.randn(B, k * Cin, H, W)).view(B, k, Cin, H, W)
    wt = torch.randn(E, Cout, Cin, 3, 3) * 0.2
    idx = torch.tensor([[3, 1]], dtype=torch.int32)
    gw = torch.tensor([[0.7, 0.3]])
    out = host.expert_conv3x3_combine(hid, wt, None, idx, gw)
    assert rel(out, R.expert_conv3x3_combine(hid, wt, None, idx, gw)) < 1e-5


def test_expert_conv3x3_combine_bad_index_gives_nan_not_a_fault(host):
    h = torch.randn(2, 2, 3, 5, 5)
    idx = torch.tensor([[0, 9], [1, 2]], dtype=torch.int32)
    out = host.expert_conv3x3_combine(h, torch.randn(4, 2, 3, 3, 3), torch.zeros(4, 2), idx,
                                      torch.full((2, 2), 0.5))
    assert torch.isnan(out[0]).all() and not torch.isnan(out[1]).any()


# ----------------------------------------------------------------------------- ops (CPU path), fake, compile
def test_ops_cpu_path_equals_reference():
    f, w = torch.randn(2, 6, 10, 12), torch.randn(6 * 3 * 4, 4)
    i, g = torch.ops.moefusion.gate(f, w, 3, 4, 2)
    ri, rg = R.gate(f, w, 3, 4, 2)
    assert torch.equal(i, ri) and torch.equal(g, rg)
    x = torch.randn(2, 2, 3, 10, 12)
    assert torch.equal(torch.ops.moefusion.combine(x, g), gated_logsumexp(x, g))
    fg, bg = torch.ops.moefusion.attention_split(f, f * 2, torch.rand(2, 1, 10, 12))
    assert fg.shape == (2, 12, 10, 12) and bg.shape == (2, 12, 10, 12)
    out = torch.ops.moefusion.expert_conv3x3_combine(x, torch.randn(4, 5, 3, 3, 3), torch.randn(4, 5), i, g)
    assert out.shape == (2, 5, 10, 12)


def test_fake_impls_give_shapes_dtypes_and_layouts():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        f = mode.from_tensor(cl(torch.randn(3, 8, 20, 30)))
        i, g = torch.ops.moefusion.gate(f, mode.from_tensor(torch.randn(8 * 4 * 5, 6)), 4, 5, 2)
        assert i.shape == (3, 2) and i.dtype == torch.int32 and g.dtype == torch.float32
        x = mode.from_tensor(cl(torch.randn(3, 2 * 16, 20, 30).half())).view(3, 2, 16, 20, 30)
        y = torch.ops.moefusion.combine(x, g)
        assert y.shape == (3, 16, 20, 30) and y.dtype == torch.float16
        assert y.is_contiguous(memory_format=torch.channels_last)
        fg, bg = torch.ops.moefusion.attention_split(f, f, f[:, :1])
        assert fg.shape == (3, 16, 20, 30) and fg.is_contiguous(memory_format=torch.channels_last)
        z = torch.ops.moefusion.expert_conv3x3_combine(
            x, mode.from_tensor(torch.randn(6, 1, 16, 3, 3)), None, i, g)
        assert z.shape == (3, 1, 20, 30)


def test_ops_trace_under_torch_compile():
    def fn(f, w, x):
        i, g = torch.ops.moefusion.gate(f, w, 3, 4, 2)
        return torch.ops.moefusion.combine(x, g), i

    f, w, x = torch.randn(2, 6, 10, 12), torch.randn(6 * 12, 4), torch.randn(2, 2, 3, 10, 12)
    compiled = torch.compile(fn, backend="eager", fullgraph=True)
    y, i = compiled(f, w, x)
    ry, ri = fn(f, w, x)
    assert torch.equal(y, ry) and torch.equal(i, ri)


# ----------------------------------------------------------------------------- ONNX
class _Tiny(torch.nn.Module):
    """Gate -> combine: the two plugin-flavour nodes (the export emits no others), routing decided per input."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w_gate = torch.nn.Parameter(torch.randn(16 * 4 * 5, 4, generator=g))

    def forward(self, x0, x1, att):
        fg = torch.cat((x0 * att, x1 * att), dim=1)
        idx, g = torch.ops.moefusion.gate(fg, self.w_gate, 4, 5, 2)
        B, C, H, W = fg.shape
        y = torch.ops.moefusion.combine(fg.reshape(B, 2, C // 2, H, W), g)
        return y, idx


def _run_onnx(model_proto, inputs):
    from onnx.reference import ReferenceEvaluator

    from moefusion.kernels import onnx as mfo

    sess = ReferenceEvaluator(model_proto, new_ops=mfo.reference_ops())
    return sess.run(None, {i.name: a.numpy() for i, a in zip(model_proto.graph.input, inputs)})


def _inputs(B, H, W, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 8, H, W, generator=g), torch.randn(B, 8, H, W, generator=g),
            torch.rand(B, 1, H, W, generator=g))


def test_onnx_dynamo_export_emits_moefusion_nodes_and_routes_per_input():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    from moefusion.kernels import onnx as mfo

    m = _Tiny().eval()
    D = torch.export.Dim
    dyn = {0: D("B"), 2: D("H"), 3: D("W")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(m, _inputs(2, 20, 30, 0), dynamo=True, external_data=False, verbose=False,
                                 custom_translation_table=mfo.custom_translation_table(),
                                 dynamic_shapes=(dyn, dyn, dyn))
    mp = prog.model_proto
    ops = {(n.domain, n.op_type) for n in mp.graph.node}
    assert {("moefusion", n) for n in mfo.NODES} <= ops
    assert ("moefusion", 1) in {(o.domain, o.version) for o in mp.opset_import}
    gate = next(n for n in mp.graph.node if n.op_type == "MoEGate")
    assert {a.name: a.i for a in gate.attribute} == {"grid_h": 4, "grid_w": 5, "k": 2}
    mfo.register_schemas()
    onnx.checker.check_model(mp)
    seen = set()
    for B, H, W, seed in [(1, 13, 17, 1), (3, 20, 30, 2), (2, 31, 9, 3)]:  # other sizes than the export's
        args = _inputs(B, H, W, seed)
        with torch.no_grad():
            ref = m(*args)
        outs = _run_onnx(mp, args)
        for o, r in zip(outs, ref):
            np.testing.assert_allclose(o, r.numpy(), rtol=1e-4, atol=1e-5)
        seen |= {tuple(row) for row in outs[1].tolist()}
    assert len(seen) > 1, "routing must not be frozen at export"


def test_onnx_torchscript_export_emits_moefusion_nodes():
    onnx = pytest.importorskip("onnx")
    from moefusion.kernels import onnx as mfo

    mfo.register_torchscript_symbolics(17)
    m = _Tiny().eval()
    args = _inputs(2, 20, 30, 0)
    import io

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, args, buf, dynamo=False, opset_version=17, input_names=["x0", "x1", "att"],
                          dynamic_axes={n: {0: "B", 2: "H", 3: "W"} for n in ("x0", "x1", "att")})
    mp = onnx.load_from_string(buf.getvalue())
    assert {("moefusion", n) for n in mfo.NODES} <= {(n.domain, n.op_type) for n in mp.graph.node}
    args = _inputs(1, 11, 14, 5)
    with torch.no_grad():
        ref = m(*args)
    for o, r in zip(_run_onnx(mp, args), ref):
        np.testing.assert_allclose(o, r.numpy(), rtol=1e-4, atol=1e-5)


def test_numpy_references_match_torch():
    f, w = torch.randn(2, 5, 13, 11), torch.randn(5 * 4 * 3, 6)
    i, g = R.np_gate(f.numpy(), w.numpy(), 4, 3, 3)
    ri, rg = R.gate(f, w, 4, 3, 3)
    assert (i == ri.numpy()).all() and np.allclose(g, rg.numpy(), rtol=1e-5)
    x = torch.randn(2, 3, 4, 5, 6)
    assert np.allclose(R.np_combine(x.numpy(), rg.numpy()), R.combine(x, rg).numpy(), rtol=1e-5, atol=1e-6)
    h, wt, b = torch.randn(2, 3, 4, 6, 7), torch.randn(6, 2, 4, 3, 3), torch.randn(6, 2)
    np.testing.assert_allclose(R.np_expert_conv3x3_combine(h.numpy(), wt.numpy(), b.numpy(), i, rg.numpy()),
                               R.expert_conv3x3_combine(h, wt, b, torch.from_numpy(i), rg).numpy(),
                               rtol=1e-4, atol=1e-5)
    x0, x1, a = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5), torch.rand(2, 1, 4, 5)
    for o, r in zip(R.np_attention_split(x0.numpy(), x1.numpy(), a.numpy()), R.attention_split(x0, x1, a)):
        assert np.array_equal(o, r.numpy())


# ----------------------------------------------------------------------------- sparse dispatch strategies
EXPERT_CASES = [
    # B, G, E, k, channels (Cin -> ... -> Cout), H, W
    (1, 1, 4, 2, [10, 6, 4, 3, 1], 9, 11),  # MoGE-shaped
    (3, 2, 4, 2, [5, 4, 5], 7, 6),  # MoLE-shaped
    (2, 2, 6, 3, [3, 4], 5, 5),  # one layer
    (2, 1, 4, 1, [4, 2], 6, 7),
]


@pytest.mark.parametrize("case", EXPERT_CASES)
@pytest.mark.parametrize("strategy", ["gathered", "dense"])
@pytest.mark.parametrize("fuse", [False, True])
def test_experts_forward_strategies_match_reference(case, strategy, fuse):
    B, G, E, k, chans, H, W = case
    g = torch.Generator().manual_seed(B * 100 + E)
    layers = [(torch.randn(E, co, ci, 3, 3, generator=g) * 0.3, torch.randn(E, co, generator=g) * 0.1)
              for ci, co in zip(chans[:-1], chans[1:])]
    x = torch.randn(B, G * chans[0], H, W, generator=g)
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(B)]).int()
    w = torch.softmax(torch.randn(B, k, generator=g), 1)
    ref = R.experts_forward(x, idx, w, layers, G)
    y = fast.experts_forward(x, idx, w, layers, G, strategy=strategy, fuse_last=fuse)
    assert y.shape == ref.shape and rel(y, ref) < 1e-5


def test_fast_gate_falls_back_to_gating_on_cpu():
    f, w = torch.randn(2, 4, 8, 8), torch.randn(4 * 16, 4)
    i, g = fast.gate(f, w, (4, 4), 2)
    ri, rg = R.gate(f, w, 4, 4, 2)
    assert torch.equal(i, ri) and torch.equal(g, rg)


# ----------------------------------------------------------------------------- the model through the kernels
def _model_with_random_gates(preset: str):
    import moefusion

    torch.manual_seed(0)
    return randomize_gates(moefusion.build_model(preset).eval(), seed=1, scale=None)


def test_accelerate_computes_the_models_function(monkeypatch):
    """fast.accelerate(model) swaps each MoE layer to fast.gate + fast.experts_forward; forced onto that
    path on the CPU (the ops run their PyTorch references there), the model's output and routes stay."""
    model = _model_with_random_gates("edge")
    ir, vis = torch.rand(2, 1, 64, 96), torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        ref = model(ir, vis)
    fast.accelerate(model)
    fast.accelerate(model)  # idempotent
    monkeypatch.setattr(fast, "kernels_usable", lambda t: True)
    with torch.no_grad():
        out = model(ir, vis)
    assert rel(out.fused, ref.fused) < 1e-5
    for name, idx in ref.routes.items():
        assert torch.equal(out.routes[name], idx), name
    model.train()  # training keeps the layers' own forward (noise, balancing loss)
    monkeypatch.setattr(fast, "kernels_usable", lambda t: (_ for _ in ()).throw(AssertionError("kernel path")))
    model(ir, vis)


def test_optimize_without_graphs_runs_the_model_in_channels_last():
    model = _model_with_random_gates("edge")
    ir, vis = torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        ref = model(ir, vis).fused
    run = fast.optimize(model, [ir, vis], dtype=None, channels_last=True, cuda_graph=False,
                        forward=lambda m, a, b: m(a, b).fused)
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and p.shape[1] > 1
               and p.shape[2] > 1 for p in model.parameters())
    assert rel(run(ir, vis), ref) < 1e-4  # other summation orders of NHWC convolutions
