"""Model: gating invariants, dispatch equivalence, sizes, routing, budgets, checkpoints."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import moefusion
from moefusion.errors import UserError
from moefusion import load
from moefusion.model.checkpoint import read_checkpoint, save_checkpoint
from moefusion.model.experts import DISPATCH_MODES, DISPATCHERS, ExpertBank
from moefusion.model.gating import (balancing_loss, gate_descriptor, gated_logsumexp, randomize_gates,
                                    top_k_gating)


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
    return randomize_gates(moefusion.build_model("edge")).eval()


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


def test_randomize_gates_makes_a_moments_gate_route_by_content():
    """The one gate randomiser (moefusion.model.gating.randomize_gates) on moments gates: the chosen
    experts differ from the untrained (zero-gate) model's, and differ between inputs."""
    torch.manual_seed(0)
    plain = moefusion.build_model("edge").eval()
    assert {m.pool for m in (plain.mole_fg, plain.mole_bg, plain.moge)} == {"moments"}
    randomized = randomize_gates(copy.deepcopy(plain))
    ir, vis = varied_batch()
    with torch.no_grad():
        before, after = plain(ir, vis).routes, randomized(ir, vis).routes
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert all(len({tuple(r) for r in before[n].tolist()}) == 1 for n in before)  # zero gates: one route
    assert any(len({tuple(r) for r in after[n].tolist()}) > 1 for n in after)  # random gates: routes vary
    assert randomized.training is False and not torch.equal(plain.moge.w_gate, randomized.moge.w_gate)


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


# -- presets and their fields ----------------------------------------------------------------

def test_moments_descriptor_is_the_same_for_a_crop_and_the_whole_frame():
    """A scene's statistics do not depend on the crop's scale or aspect; a grid descriptor does."""
    g = torch.Generator().manual_seed(0)
    tile = torch.rand(1, 3, 48, 48, generator=g)
    frame = tile.repeat(1, 1, 5, 8)  # a 240x384 frame made of the same texture
    crop = frame[..., :96, :96]
    for a, b in ((frame, crop), (frame, tile)):
        torch.testing.assert_close(gate_descriptor(a, (4, 4), "moments"), gate_descriptor(b, (4, 4), "moments"),
                                   rtol=1e-4, atol=1e-5)
    assert gate_descriptor(frame, (4, 4), "moments").shape == (1, 6)
    # mean and (population) std per channel, in that order
    x = torch.arange(8.0).reshape(1, 2, 2, 2)
    torch.testing.assert_close(gate_descriptor(x, (1, 1), "moments"),
                               torch.tensor([[1.5, 5.5, 1.118034, 1.118034]]), rtol=1e-5, atol=1e-5)
    ramp = frame * torch.linspace(0.5, 1.5, frame.shape[-1])  # a scene brighter to the right
    assert not torch.allclose(gate_descriptor(ramp, (4, 4)), gate_descriptor(ramp[..., :96, :96], (4, 4)), atol=0.05)


def test_preset_fields():
    paper, edge = moefusion.model.preset_config("paper"), moefusion.model.preset_config("edge")
    assert not paper.encoder_relu and paper.gate_pool == "grid" and paper.detector_norm == "frozen"
    assert edge.gate_pool == "moments" and edge.k == 2
    assert paper.backbone_weights == edge.backbone_weights == "DEFAULT"
    with pytest.raises(ValueError, match="gate_pool"):
        moefusion.build_model("edge", gate_pool="pyramid")
    with pytest.raises(ValueError, match="k=5"):
        moefusion.build_model("edge", k=5)
    # k is a preset field: k=1 runs one expert per sample
    m = moefusion.build_model("edge", k=1).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64))
    assert all(r.shape == (2, 1) for r in out.routes.values())


def test_encoder_relu_field_is_the_only_difference():
    torch.manual_seed(0)
    linear = moefusion.build_model("edge", encoder_relu=False).eval()
    relu = moefusion.build_model("edge", encoder_relu=True).eval()
    relu.load_state_dict(linear.state_dict())
    x = torch.rand(1, 1, 32, 32) - 0.5
    feats_l, feats_r = torch.cat(linear.enc_vis(x), 1), torch.cat(relu.enc_vis(x), 1)
    assert (feats_l < 0).any() and (feats_r >= 0).all()


@pytest.mark.parametrize("with_ir,with_vis", [(True, False), (False, True), (True, True)])
def test_detector_heads_train_on_their_own_modality(with_ir, with_vis):
    """IR boxes without VIS boxes (and the reverse) train that modality's detector only."""
    torch.manual_seed(0)
    model = moefusion.build_model("edge", detector_norm="group", backbone_weights=None).train()
    x = torch.rand(2, 1, 128, 128)
    t = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])}] * 2
    out = model(x, x, targets_ir=t if with_ir else None, targets_vis=t if with_vis else None)
    prefixes = {k.split("_")[0] for k in out.det_losses}
    assert prefixes == {m for m, on in (("ir", with_ir), ("vis", with_vis)) if on}
    sum(out.det_losses.values()).backward()
    heads = {"ir": model.attention.det_ir, "vis": model.attention.det_vis}
    for m, head in heads.items():
        has_grad = any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
        assert has_grad == (m in prefixes), m
    assert out.detections is None and len(out.attention_maps) == 2


def test_group_norm_attention_works_at_batch_one():
    model = moefusion.build_model("edge", detector_norm="group", backbone_weights=None).train()
    out = model(torch.rand(1, 1, 96, 96), torch.rand(1, 1, 96, 96))
    a_vis, a_ir = out.attention_maps
    assert a_vis.shape == (1, 1, 24, 24) and torch.isfinite(a_ir).all()


@pytest.mark.parametrize("detector,enum_name", [("mobilenet_v3_small", "MobileNet_V3_Small_Weights"),
                                                 ("resnet50", "ResNet50_Weights")])
def test_pretrained_backbones_load_from_torchvision_cache(tmp_path, monkeypatch, detector, enum_name):
    """The path users take: torchvision's weight enum, its cache file, RGB stem summed to one channel,
    the stem frozen. No download is possible here, so a state dict is saved where torchvision looks."""
    import torchvision
    from torchvision import models as tvm

    from moefusion.model.attention import BACKBONE_WEIGHTS, backbone_weights_enum

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        weights = backbone_weights_enum(detector, "DEFAULT")
        assert BACKBONE_WEIGHTS[detector].__name__ == enum_name and weights is getattr(tvm, enum_name).DEFAULT
        torch.manual_seed(1)
        builder = torchvision.models.mobilenet_v3_small if detector == "mobilenet_v3_small" else torchvision.models.resnet50
        classifier = builder(weights=None)
        cache = tmp_path / "hub" / "checkpoints"
        cache.mkdir(parents=True)
        torch.save(classifier.state_dict(), cache / weights.url.rsplit("/", 1)[-1])

        kw = {"detector": detector, "detector_norm": "frozen", "fpn_channels": 32}
        model = moefusion.build_model("edge", **kw)
        frozen = model.attention.load_pretrained("DEFAULT")
        body = model.attention.backbone_ir.body
        first = body["0"][0] if detector == "mobilenet_v3_small" else body.conv1
        src = classifier.features[0][0].weight if detector == "mobilenet_v3_small" else classifier.conv1.weight
        torch.testing.assert_close(first.weight, src.sum(dim=1, keepdim=True))
        assert frozen and not first.weight.requires_grad
        assert any(p.requires_grad for p in body.parameters())  # only the stem is frozen
        with pytest.raises(ValueError, match="IMAGENET9K"):
            backbone_weights_enum(detector, "IMAGENET9K")
    finally:
        torch.hub.set_dir(str(tmp_path / "unused"))


def test_format1_checkpoints_keep_their_architecture(tmp_path):
    """Checkpoints written before the preset fields existed rebuild as they were trained."""
    from moefusion.model.checkpoint import FORMAT1_CONFIG, checkpoint_dict

    model = moefusion.build_model("edge", **FORMAT1_CONFIG)
    ckpt = checkpoint_dict(model)
    ckpt["format_version"] = 1
    for k in FORMAT1_CONFIG:
        del ckpt["config"][k]
    torch.save(ckpt, tmp_path / "v1.pt")
    again = load(tmp_path / "v1.pt", device="cpu")
    assert again.cfg.gate_pool == "grid" and again.cfg.encoder_relu and again.cfg.detector_norm == "batch"


def test_moments_gate_standardises_with_running_statistics_in_training_too():
    """A batch holds one dataset: batch statistics would erase the differences between scenes the
    gate must see, so training normalises with the running statistics (and updates them)."""
    from moefusion.model.moe import GatedExperts

    layer = GatedExperts(4, 2, [3, 4, 3], 3, (4, 4), 0.1, pool="moments").train()
    bright = torch.rand(4, 3, 16, 16) + 2.0
    for _ in range(400):  # running statistics settle on a mix of dark and bright scenes
        layer.normalise(torch.cat([layer_desc(bright), layer_desc(bright - 2.0)]))
    d_bright = layer.normalise(layer_desc(bright))
    assert (d_bright[:, :3] > 0.5).all()  # bright scenes stay above the mean: not standardised away
    layer.eval()
    torch.testing.assert_close(layer.normalise(layer_desc(bright)), d_bright)
    assert moefusion.build_model("paper").moge.desc_norm is None  # the grid gate is the paper's


def layer_desc(x):
    return gate_descriptor(x, (4, 4), "moments")


def test_decoder_sees_the_last_block_only_through_mole_in_edge():
    model = moefusion.build_model("edge").eval()
    cfg = model.cfg
    assert not cfg.decoder_skips_last_block and cfg.decoder_attention
    assert cfg.decoder_in == 2 * (cfg.encoder_out - cfg.growth) + 2 * cfg.growth + 1
    assert moefusion.build_model("paper").cfg.decoder_in == 160  # upstream: every encoder feature
    early = cfg.encoder_out - cfg.growth
    fv = (torch.rand(1, early, 8, 8), torch.rand(1, cfg.growth, 8, 8))  # encoders' (early, last block)
    fi = (torch.rand(1, early, 8, 8), torch.rand(1, cfg.growth, 8, 8))
    y_fg, y_bg, att = torch.rand(1, cfg.growth, 8, 8), torch.rand(1, cfg.growth, 8, 8), torch.rand(1, 1, 8, 8)
    enc = model.decoder_input(fv, fi, y_fg, y_bg, att)
    assert enc.shape[1] == cfg.decoder_in
    full = torch.cat([fv[0], fi[0], y_fg, y_bg, att], 1)  # no last block; attention last
    assert cfg.decoder_stride == 2  # edge's decoder sees it average-pooled by 2
    torch.testing.assert_close(enc, F.avg_pool2d(full, 2))
    paper = moefusion.build_model("paper").eval()  # upstream: every encoder feature, in order
    torch.testing.assert_close(paper.decoder_input(fv, fi, y_fg, y_bg, att), torch.cat([*fv, *fi, y_fg, y_bg], 1))


def test_a_decoder_that_sees_no_encoder_features_takes_everything_through_mole():
    """decoder_sees_encoders=False (the edge recipe's): MoGE's input is MoLE's outputs and the attention
    only, so changing the encoders' early features cannot reach it except through a chosen expert."""
    model = moefusion.build_model("edge", decoder_sees_encoders=False).eval()
    cfg = model.cfg
    assert cfg.decoder_in == 2 * cfg.growth + 1 and model.moge.experts.channels[0] == cfg.decoder_in
    early = cfg.encoder_out - cfg.growth
    last = torch.rand(1, cfg.growth, 8, 8)
    y_fg, y_bg, att = torch.rand(1, cfg.growth, 8, 8), torch.rand(1, cfg.growth, 8, 8), torch.rand(1, 1, 8, 8)
    a = model.decoder_input((torch.rand(1, early, 8, 8), last), (torch.rand(1, early, 8, 8), last), y_fg, y_bg, att)
    b = model.decoder_input((torch.zeros(1, early, 8, 8), last), (torch.ones(1, early, 8, 8), last), y_fg, y_bg, att)
    torch.testing.assert_close(a, F.avg_pool2d(torch.cat([y_fg, y_bg, att], 1), 2))
    torch.testing.assert_close(a, b)
    ir, vis = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    with torch.no_grad():  # and the whole model runs, with a different MoLE output giving a different image
        base = model(ir, vis).fused
        model.mole_fg.experts.biases[-1].add_(1.0)
        assert (model(ir, vis).fused - base).abs().mean() > 0


def test_network_stride_runs_the_network_at_half_size_and_blends_full_size_pyramids():
    """network_stride=2: the encoders see half-size frames; with the decoder's maps at zero the output
    is exactly the classical pyramid blend of the full-size sources (no detail lost to the stride)."""
    from moefusion.model.pyramid import pyramid_fuse

    torch.manual_seed(0)
    model = moefusion.build_model("edge", network_stride=2, pyramid_attention_gain=0.0).eval()
    with torch.no_grad():
        model.moge.experts.weights[-1].zero_()
        model.moge.experts.biases[-1].zero_()
    seen = []
    model.enc_vis.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    g = torch.Generator().manual_seed(1)
    ir, vis = torch.rand(1, 1, 97, 131, generator=g), torch.rand(1, 1, 97, 131, generator=g)
    with torch.no_grad():
        out = model(ir, vis)
    assert out.fused.shape == out.attention.shape == (1, 1, 97, 131)
    assert seen == [(64, 96)]  # padded to 128 x 192 (a multiple of 64), then halved
    pad = lambda x: F.pad(x, (0, 192 - 131, 0, 128 - 97), mode="replicate")  # noqa: E731
    ref = pyramid_fuse(pad(ir), pad(vis), torch.zeros(1, 6, 128, 192), 5, model.cfg.pyramid_sharpness,
                       model.cfg.pyramid_detail_gain)[..., :97, :131]
    torch.testing.assert_close(out.fused, ref, atol=1e-6, rtol=0)
    assert moefusion.build_model("edge", network_stride=1).cfg.pad_stride == 32
    with pytest.raises(ValueError, match="network_stride=3"):
        moefusion.build_model("edge", network_stride=3)


def test_network_stride_exports_and_onnx_runtime_matches(shared_data, tmp_path):
    """A half-size network exports (the padding to 64 and the x2 upsampling) and ONNX Runtime computes
    the PyTorch model's output on a real pair of odd size."""
    ort = pytest.importorskip("onnxruntime")
    from helpers import real_inputs
    from moefusion.export.api import run_export
    from moefusion.model.gating import randomize_gates

    torch.manual_seed(0)
    model = randomize_gates(moefusion.build_model("edge", network_stride=2, range_margin=4 / 255)).eval()
    res = run_export({"output": str(tmp_path / "ns2.onnx"), "dynamic": ((16, 16), (1088, 1920))}, model=model)
    sess = ort.InferenceSession(str(res.onnx.path), providers=["CPUExecutionProvider"])
    (_, ir, vis), = real_inputs(shared_data, (101, 143), pairs=(("roadscene", "FLIR_00006"),))
    got = sess.run(None, {"ir": ir, "vis": vis})
    with torch.no_grad():
        want = model(torch.from_numpy(ir), torch.from_numpy(vis))
    np.testing.assert_allclose(got[0], want.fused.clamp(0, 1).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], want.attention.numpy(), atol=1e-4, rtol=0)


# -- the paper preset against upstream (docs/model.md, "paper preset fidelity") ---------------

@pytest.fixture(scope="module")
def small_paper():
    """``paper``'s fields with small detectors and gates (fast): what differs from edge is kept."""
    torch.manual_seed(0)
    return moefusion.build_model("paper", detector="mobilenet_v3_small", fpn_channels=32, roi_representation=64,
                                 mole_grid=(8, 8), moge_grid=(4, 4), backbone_weights=None).eval()


def test_paper_fields_follow_upstream_and_edge_keeps_its_own():
    paper, edge = moefusion.model.preset_config("paper"), moefusion.model.preset_config("edge")
    assert paper.stem_relu and not paper.encoder_relu  # MoE_fusion_head.py:53-54: a ReLU after the stem only
    assert paper.detector_input_norm == "imagenet" and paper.attention_init_std == 0.01
    # edge as it was: its encoder has ReLUs everywhere already; mid-grey input; PyTorch's init
    assert edge.encoder_relu and not edge.stem_relu
    assert edge.detector_input_norm == "mid_grey" and edge.attention_init_std is None
    from moefusion.model.attention import INPUT_MEAN, INPUT_STD
    from moefusion.model.presets import DETECTOR_INPUT_NORMS
    assert (INPUT_MEAN, INPUT_STD) == DETECTOR_INPUT_NORMS["mid_grey"] == (0.5, 0.25)
    mean, std = DETECTOR_INPUT_NORMS["imagenet"]
    assert abs(mean - 0.449) < 5e-4 and abs(std - 0.226) < 5e-4
    with pytest.raises(ValueError, match="detector_input_norm"):
        moefusion.model.preset_config("edge", detector_input_norm="rgb")
    with pytest.raises(ValueError, match="attention_init_std"):
        moefusion.model.preset_config("edge", attention_init_std=0)


def test_paper_stem_relu_only_after_the_stem(small_paper):
    from moefusion.model.fusion import DenseEncoder
    x = torch.rand(1, 1, 32, 32) - 0.5
    stem = small_paper.cfg.stem
    with torch.no_grad():
        early, last = small_paper.enc_vis(x)
        assert (early[:, :stem] >= 0).all() and (early[:, :stem] == 0).any()  # the stem's ReLU
        assert (early[:, stem:] < 0).any() and (last < 0).any()  # the dense convs stay linear
        off = DenseEncoder(stem, small_paper.cfg.growth, relu=False, stem_relu=False)
        off.load_state_dict(small_paper.enc_vis.state_dict())  # the field adds no weights
        assert (off(x)[0][:, :stem] < 0).any()


def test_detectors_see_the_presets_input_normalisation(small_paper, edge_model):
    """paper: ImageNet's mean and std (configs/MoE_Fusion.py:149-150, averaged over upstream's three
    equal gray channels); edge: (x - 0.5) / 0.25 as before. The export module normalises as the model."""
    ir, vis = torch.rand(1, 1, 64, 64), torch.rand(1, 1, 64, 64)
    for model, (mean, std) in ((small_paper, (0.449, 0.226)), (edge_model, (0.5, 0.25))):
        seen = []
        hook = model.attention.backbone_ir.body.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0]))
        with torch.no_grad():
            model.attention.level0_maps(vis, ir)
        hook.remove()
        torch.testing.assert_close(seen[0], (ir - mean) / std, rtol=0, atol=2e-3)
    from moefusion.export.wrapper import ExportModule
    with torch.no_grad():
        fused = ExportModule(small_paper)(ir, vis)[0]
        torch.testing.assert_close(fused, small_paper(ir, vis).fused.clamp(0, 1), rtol=1e-4, atol=1e-5)


def test_paper_initialises_attention_convs_as_upstream(small_paper, edge_model):
    """normal(0, 0.01) weights and zero biases (mmcv normal_init, detectors/MoEFusion.py:108-112);
    edge keeps PyTorch's default initialisation."""
    att = small_paper.attention
    convs = [att.fusion_conv, att.att_vis.conv1, att.att_vis.conv2, att.att_ir.conv1, att.att_ir.conv2]
    weights = torch.cat([c.weight.detach().flatten() for c in convs])
    assert abs(float(weights.std()) - 0.01) < 0.001 and abs(float(weights.mean())) < 0.001
    assert float(att.fusion_conv.bias.detach().abs().max()) == 0.0
    edge = edge_model.attention
    assert float(edge.fusion_conv.weight.detach().std()) > 0.03 and float(edge.fusion_conv.bias.detach().abs().max()) > 0
