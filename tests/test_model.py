"""Model: gating invariants, dispatch equivalence, sizes, routing, budgets, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import moefusion
from moefusion.errors import UserError
from moefusion.model.checkpoint import load, read_checkpoint, save_checkpoint
from moefusion.model.experts import DISPATCH_MODES, DISPATCHERS, ExpertBank
from moefusion.model.gating import balancing_loss, gate_descriptor, gated_logsumexp, top_k_gating


def randomise_gates(model, seed=0, scale=0.05):
    """Trained-like gates: random weights so that different inputs pick different experts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model.mole_fg, model.mole_bg, model.moge):
            layer.w_gate.copy_(torch.randn(layer.w_gate.shape, generator=g) * scale)
    return model


def varied_batch(b=4, h=64, w=96, seed=0):
    """Samples with very different content (and so different routes)."""
    g = torch.Generator().manual_seed(seed)
    ir = torch.rand(b, 1, h, w, generator=g)
    vis = torch.rand(b, 1, h, w, generator=g)
    ir = ir * torch.linspace(0.1, 1.0, b).reshape(b, 1, 1, 1)
    vis = vis.roll(shifts=7, dims=-1) ** torch.linspace(0.5, 3.0, b).reshape(b, 1, 1, 1)
    return ir, vis


# -- gating ---------------------------------------------------------------------------------

@pytest.mark.parametrize("train", [False, True])
def test_top_k_gating_invariants(train):
    torch.manual_seed(0)
    x = torch.randn(16, 40)
    w = torch.randn(40, 6, requires_grad=True)
    wn = torch.randn(40, 6) * 0.1
    out = top_k_gating(x, w, k=2, w_noise=wn, train=train)
    assert out.indices.shape == (16, 2) and out.weights.shape == (16, 2)
    assert ((out.gates > 0).sum(1) == 2).all(), "exactly k non-zero gates per sample"
    torch.testing.assert_close(out.gates.sum(1), torch.ones(16))
    torch.testing.assert_close(out.weights.sum(1), torch.ones(16))
    # the gates equal the weights at the chosen indices
    torch.testing.assert_close(out.gates.gather(1, out.indices), out.weights)
    loss = balancing_loss(out)
    loss.backward()
    assert w.grad is not None and w.grad.abs().sum() > 0, "balancing loss must reach the gate weights"


def test_no_noise_in_eval():
    x = torch.randn(8, 10)
    w = torch.randn(10, 4)
    wn = torch.ones(10, 4)
    a = top_k_gating(x, w, 2, wn, train=False)
    b = top_k_gating(x, w, 2, wn, train=False)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)
    clean = (x @ w).topk(2, dim=1)
    assert torch.equal(a.indices, clean.indices)
    # in training the noise does change the logits
    g = torch.Generator().manual_seed(1)
    c = top_k_gating(x, w, 2, wn * 10, train=True, generator=g)
    assert not torch.equal(c.weights, a.weights)


def test_noisy_load_is_differentiable():
    x = torch.randn(8, 10)
    w = torch.randn(10, 4, requires_grad=True)
    wn = torch.randn(10, 4, requires_grad=True)
    out = top_k_gating(x, w, 2, wn, train=True)
    out.load.sum().backward()
    assert wn.grad.abs().sum() > 0


def test_gate_descriptor_grid():
    x = torch.randn(2, 3, 480, 640)
    d = gate_descriptor(x, (120, 160))
    assert d.shape == (2, 3 * 120 * 160)
    # equal to the paper's x0.25 bilinear downsampling at 640x480
    ref = torch.nn.functional.interpolate(x, scale_factor=0.25, mode="bilinear", align_corners=True,
                                          recompute_scale_factor=True)
    torch.testing.assert_close(d, ref.flatten(1))
    assert gate_descriptor(torch.randn(1, 3, 271, 361), (120, 160)).shape == d[:1].shape


def test_gated_logsumexp_matches_definition_and_is_stable():
    y = torch.randn(3, 2, 4, 5, 5)
    w = torch.softmax(torch.randn(3, 2), 1)
    expect = torch.log((w[:, :, None, None, None] * y.exp()).sum(1))
    torch.testing.assert_close(gated_logsumexp(y, w), expect)
    big = gated_logsumexp(y + 1000.0, w)  # exp would overflow; logsumexp does not
    torch.testing.assert_close(big, expect + 1000.0)


def test_gated_logsumexp_gradient_is_finite_when_a_weight_underflows_to_zero():
    # A confident gate: softmax of a logit gap over ~104 is an exact 0 in fp32 (this made training NaN).
    logits = torch.tensor([[120.0, 0.0], [0.3, 0.1]], requires_grad=True)
    w = torch.softmax(logits, 1)
    assert w[0, 1] == 0
    y = torch.randn(2, 2, 3, 3, requires_grad=True)
    out = gated_logsumexp(y, w)
    torch.testing.assert_close(out[0], y[0, 0], rtol=0, atol=1e-6)  # the zero-weight expert adds nothing
    out.sum().backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(y.grad).all()


# -- dispatch -------------------------------------------------------------------------------

@pytest.mark.parametrize("shared_input", [True, False])
def test_dispatch_modes_equal_reference_on_bank(shared_input):
    torch.manual_seed(0)
    bank = ExpertBank(4, [6, 5, 3])
    b = 5
    inputs = torch.randn(b, 6, 9, 11) if shared_input else (torch.randn(b, 6, 9, 11), torch.randn(b, 6, 9, 11))
    idx = torch.tensor([[0, 1], [3, 2], [1, 3], [2, 0], [3, 1]])
    w = torch.softmax(torch.randn(b, 2), 1)
    ref = DISPATCHERS["reference"](bank, inputs, idx, w)
    for mode in DISPATCH_MODES:
        torch.testing.assert_close(DISPATCHERS[mode](bank, inputs, idx, w), ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def edge_model():
    torch.manual_seed(0)
    return randomise_gates(moefusion.build_model("edge")).eval()


def test_model_dispatch_modes_agree_and_routes_differ(edge_model):
    ir, vis = varied_batch()
    outs = {}
    with torch.no_grad():
        for mode in DISPATCH_MODES:
            edge_model.set_dispatch(mode)
            outs[mode] = edge_model(ir, vis)
    edge_model.set_dispatch("sparse")
    routes = outs["reference"].routes
    assert any(len({tuple(r) for r in routes[name].tolist()}) > 1 for name in routes), \
        "the test inputs must pick different experts"
    for mode, out in outs.items():
        torch.testing.assert_close(out.fused, outs["reference"].fused, rtol=1e-5, atol=1e-5, msg=mode)
        for name in routes:
            assert torch.equal(out.routes[name], routes[name])


def test_routes_follow_the_input(edge_model):
    ir, vis = varied_batch(b=2, seed=3)
    with torch.no_grad():
        a = edge_model(ir[:1], vis[:1]).routes
        b = edge_model(ir[1:], vis[1:]).routes
    assert any(not torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("size", [(270, 361), (33, 47), (480, 640)])
def test_any_size_round_trips(edge_model, size):
    x = torch.rand(1, 1, *size)
    with torch.no_grad():
        out = edge_model(x, x.flip(-1))
    assert out.fused.shape == (1, 1, *size)
    assert out.attention.shape == (1, 1, *size)
    assert torch.isfinite(out.fused).all()


def test_fuse_numpy_api_formats(edge_model):
    rng = np.random.default_rng(0)
    vis = rng.integers(0, 256, (41, 57, 3), dtype=np.uint8)
    ir16 = rng.integers(20000, 30000, (41, 57), dtype=np.uint16)
    out = edge_model.fuse(ir16, vis)
    assert out.shape == vis.shape and out.dtype == np.uint8
    gray = edge_model.fuse(ir16, vis[:, :, 0])
    assert gray.shape == vis.shape[:2] and gray.dtype == np.uint8
    small_ir = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)  # lower-res 3-channel thermal
    assert edge_model.fuse(small_ir, vis).shape == vis.shape


def test_detections_on_request(edge_model):
    x = torch.rand(1, 1, 64, 96)
    with torch.no_grad():
        out = edge_model(x, x, detections=True)
    assert set(out.detections) == {"vis", "ir"}
    assert set(out.detections["ir"][0]) == {"boxes", "labels", "scores"}


# -- budgets (deterministic counts, not timings) ----------------------------------------------

def test_edge_budget():
    model = moefusion.build_model("edge").eval()
    params = sum(p.numel() for p in model.parameters())
    assert params <= 3_000_000, params
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.rand(1, 1, 480, 640), torch.rand(1, 1, 480, 640))
    assert fc.get_total_flops() <= 15e9, fc.get_total_flops()


def test_paper_preset_widths():
    cfg = moefusion.model.preset_config("paper")
    assert cfg.decoder_in == 160 and cfg.moge_hidden == (64, 32, 16)
    assert cfg.mole_hidden == 8 and cfg.growth == 16 and cfg.k == 2 and cfg.mole_experts == cfg.moge_experts == 4
    # at 640x480 the gate sees exactly the paper's flattened descriptor sizes
    assert 2 * cfg.growth * cfg.mole_grid[0] * cfg.mole_grid[1] == 614_400
    assert cfg.decoder_in * cfg.moge_grid[0] * cfg.moge_grid[1] == 768_000


# -- checkpoints -----------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path, edge_model):
    path = tmp_path / "m.pt"
    save_checkpoint(path, edge_model, meta={"note": "test"})
    again = load(path, device="cpu")
    assert again.cfg == edge_model.cfg and again.preset == "edge"
    ir, vis = varied_batch(b=2)
    with torch.no_grad():
        torch.testing.assert_close(again(ir, vis).fused, edge_model(ir, vis).fused, rtol=0, atol=0)


def test_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable moefusion checkpoint"):
        read_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(UserError, match="not a moefusion checkpoint"):
        read_checkpoint(foreign)
    with pytest.raises(UserError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="unknown model file type"):
        load(tmp_path / "x.bin")
