"""Pyramid output head (moefusion/model/pyramid.py): exact pyramids, what each map controls, the model."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import moefusion
from moefusion import load
from moefusion.model.checkpoint import save_checkpoint
from moefusion.model.pyramid import head_channels, laplacian_pyramid, pyramid_fuse, reconstruct

LEVELS, SHARP = 5, 30.0
ROOT = Path(__file__).resolve().parents[1]


def maps(base=0.0, detail=0.0, h=64, w=96):
    m = torch.zeros(1, head_channels(LEVELS), h, w)
    m[:, 0], m[:, 1:] = base, detail
    return m


def two_textures(h=64, w=96):
    """IR: a warm square with strong edges on the left; VIS: fine stripes on the right, dull left."""
    ir = torch.full((1, 1, h, w), 0.3)
    ir[..., 16:48, 8:40] = 0.9
    vis = torch.full((1, 1, h, w), 0.5)
    vis[..., :, 56:] += 0.2 * torch.sign(torch.sin(torch.arange(w - 56) * 1.5))
    return ir, vis


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (480, 640)])
def test_pyramid_reconstructs_exactly(size):
    x = torch.rand(2, 1, *size)
    pyr = laplacian_pyramid(x, LEVELS)
    assert [p.shape[-1] for p in pyr] == [size[1] // 2 ** i for i in range(LEVELS + 1)]
    torch.testing.assert_close(reconstruct(pyr), x, atol=1e-6, rtol=0)


def test_saturated_weights_select_one_source_and_equal_inputs_pass_through():
    ir, vis = torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96)
    torch.testing.assert_close(pyramid_fuse(ir, vis, maps(base=60, detail=60), LEVELS, SHARP), ir, atol=1e-5, rtol=0)
    torch.testing.assert_close(pyramid_fuse(ir, vis, maps(base=-60, detail=-60), LEVELS, SHARP), vis, atol=1e-5, rtol=0)
    # whatever the blend weights, a pair of equal sources fuses to itself (gain 1)
    m = torch.randn(1, head_channels(LEVELS), 64, 96) * 3
    torch.testing.assert_close(pyramid_fuse(ir, ir, m, LEVELS, SHARP), ir, atol=1e-5, rtol=0)


def test_zero_maps_average_the_base_and_keep_the_stronger_detail():
    ir, vis = two_textures()
    fused = pyramid_fuse(ir, vis, maps(), LEVELS, SHARP)
    mean = (ir + vis) / 2
    # the warm square's edge comes from IR at full strength (the mean would halve it)
    edge_ir = (ir[..., 30, 38] - ir[..., 30, 41]).item()
    edge_f = (fused[..., 30, 38] - fused[..., 30, 41]).item()
    assert edge_f > 0.8 * edge_ir > 0
    # the stripes come from VIS, not halved either
    stripes_vis = vis[..., 32, 60:90].std().item()
    assert fused[..., 32, 60:90].std().item() > 0.8 * stripes_vis
    assert (mean[..., 32, 60:90].std() < 0.6 * stripes_vis).item()
    # the base is the mean: the image's overall brightness is the sources' mean
    assert abs(fused.mean().item() - mean.mean().item()) < 0.01


def test_base_map_moves_brightness_and_the_detail_gain_scales_detail():
    ir, vis = two_textures()
    mean_f = pyramid_fuse(ir, vis, maps(), LEVELS, SHARP)
    toward_ir = pyramid_fuse(ir, vis, maps(base=4.0), LEVELS, SHARP)
    # the base layer is the coarsest (1/32) brightness: the map moves it from the sources' mean to IR's
    assert abs(mean_f.mean().item() - (ir.mean() + vis.mean()).item() / 2) < 0.01
    assert abs(toward_ir.mean().item() - ir.mean().item()) < 0.01
    sharp = pyramid_fuse(ir, vis, maps(), LEVELS, SHARP, detail_gain=1.5)
    p_ir, p_vis = laplacian_pyramid(ir, LEVELS), laplacian_pyramid(vis, LEVELS)
    base = reconstruct([torch.zeros_like(d) for d in p_ir[:-1]] + [(p_ir[-1] + p_vis[-1]) / 2])
    # the gain scales every detail level, not the base
    torch.testing.assert_close(sharp - base, 1.5 * (mean_f - base), atol=1e-5, rtol=0)
    assert (sharp - base).abs().mean().item() > 0.02


def test_edge_uses_the_pyramid_head_and_paper_the_pixel_head():
    edge = moefusion.model.preset_config("edge")
    assert edge.output_head == "pyramid" and edge.pyramid_detail_gain == pytest.approx(1.2)
    assert edge.pyramid_attention_gain == pytest.approx(4.0)
    assert moefusion.model.preset_config("paper").output_head == "pixel"
    assert moefusion.build_model("edge").moge.experts.channels[-1] == head_channels(LEVELS)
    assert moefusion.build_model("paper").moge.experts.channels[-1] == 1
    for bad, match in (({"output_head": "rgb"}, "output_head"), ({"pyramid_levels": 6}, "pyramid_levels"),
                       ({"pyramid_sharpness": -1.0}, "pyramid_sharpness"), ({"pyramid_detail_gain": 0}, "detail_gain"),
                       ({"pyramid_attention_gain": -1.0}, "pyramid_attention_gain")):
        with pytest.raises(ValueError, match=match):
            moefusion.build_model("edge", **bad)


def test_a_head_steering_fewer_levels_takes_the_others_from_the_prior():
    ir, vis = two_textures()
    base = torch.randn(1, 1, 64, 96)
    full = maps()
    full[:, :1] = base
    # one map: the detail weights are the energy prior's, exactly as with zero detail offsets
    torch.testing.assert_close(pyramid_fuse(ir, vis, base, LEVELS, SHARP, 1.2),
                               pyramid_fuse(ir, vis, full, LEVELS, SHARP, 1.2), atol=1e-6, rtol=0)
    # ... and that one map still moves the image: a high base logit leans to the (brighter) IR
    warm = ir + 0.3
    leaning = pyramid_fuse(warm, vis, torch.full((1, 1, 64, 96), 4.0), LEVELS, SHARP)
    mean_base = pyramid_fuse(warm, vis, base * 0, LEVELS, SHARP)
    assert (leaning - mean_base).mean() > 0.05  # (0.98 - 0.5) x the bases' gap (about 0.2)
    # three maps: the two finest levels take their offsets, the coarser ones the prior alone
    fine = torch.full((1, 2, 64, 96), -60.0)  # the two finest levels from VIS, even at the warm edge
    full[:, 1:3] = fine
    three = torch.cat([base, fine], dim=1)
    torch.testing.assert_close(pyramid_fuse(ir, vis, three, LEVELS, SHARP), pyramid_fuse(ir, vis, full, LEVELS, SHARP),
                               atol=1e-6, rtol=0)
    assert (pyramid_fuse(ir, vis, three, LEVELS, SHARP) - pyramid_fuse(ir, vis, base, LEVELS, SHARP)).abs().max() > 0.01
    with pytest.raises(ValueError, match="1 to 6 maps, got 7"):
        pyramid_fuse(ir, vis, torch.zeros(1, 7, 64, 96), LEVELS, SHARP)
    for n in (0, 2):
        model = moefusion.build_model("edge", pyramid_learned_levels=n)
        assert model.cfg.decoder_out == 1 + n and model.moge.experts.channels[-1] == 1 + n
        with torch.no_grad():
            assert model.eval()(ir, vis).fused.shape == ir.shape
    with pytest.raises(ValueError, match="pyramid_learned_levels"):
        moefusion.build_model("edge", pyramid_learned_levels=6)


def test_model_output_is_the_head_applied_to_the_decoder_maps():
    torch.manual_seed(0)
    model = moefusion.build_model("edge").eval()
    ir, vis = torch.rand(1, 1, 50, 70), torch.rand(1, 1, 50, 70)
    seen = {}
    model.moge.register_forward_hook(lambda mod, args, out: seen.update(y=out.y))
    head = model.head
    model.head = lambda *args: seen.update(head_args=args) or head(*args)
    with torch.no_grad():
        out = model(ir, vis)
    pad = lambda x: F.pad(x, (0, 26, 0, 14), mode="replicate")  # noqa: E731  (to 64x96)
    cfg = model.cfg
    att = seen["head_args"][3]  # the attention map at the padded size; the model returns its crop
    torch.testing.assert_close(att[..., :50, :70], out.attention)
    # edge's decoder runs at half resolution (decoder_stride 2); its maps are resized back for the head
    assert cfg.decoder_stride == 2 and seen["y"].shape == (1, head_channels(LEVELS), 32, 48)
    y = F.interpolate(seen["y"], scale_factor=2.0, mode="bilinear", align_corners=False)
    expected = pyramid_fuse(pad(ir), pad(vis), y, LEVELS, cfg.pyramid_sharpness, cfg.pyramid_detail_gain,
                            att, cfg.pyramid_attention_gain)
    assert cfg.pyramid_attention_gain > 0
    torch.testing.assert_close(out.fused, expected[..., :50, :70])


def test_decoder_stride_pools_what_the_decoder_sees():
    """decoder_stride 2: MoGE's input is the full-resolution decoder input average-pooled by 2, part
    by part (same weights, stride 1 vs 2), and the routing still sees the same scene statistics."""
    torch.manual_seed(0)
    half = moefusion.build_model("edge").eval()
    full = moefusion.build_model("edge", decoder_stride=1).eval()
    full.load_state_dict(half.state_dict())
    ir, vis = torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96)
    seen = {}
    for name, m in (("half", half), ("full", full)):
        m.moge.register_forward_hook(lambda mod, args, out, name=name: seen.update({name: args[0]}))
        with torch.no_grad():
            m(ir, vis)
    assert seen["half"].shape == (1, half.cfg.decoder_in, 32, 48)
    torch.testing.assert_close(seen["half"], F.avg_pool2d(seen["full"], 2), atol=1e-5, rtol=1e-5)


def test_decoder_stride_is_validated():
    with pytest.raises(ValueError, match="decoder_stride=3"):
        moefusion.build_model("edge", decoder_stride=3)
    with pytest.raises(ValueError, match="needs output_head='pyramid'"):
        moefusion.build_model("paper", decoder_stride=2)


def test_attention_pulls_the_targets_base_towards_ir():
    """attention_gain g: the base layer's IR logit gets g * attention; with zero maps a target
    (attention 1) takes sigmoid(g) of IR's brightness, the rest stays the sources' mean."""
    ir, vis = torch.full((1, 1, 128, 128), 0.8), torch.full((1, 1, 128, 128), 0.2)  # flat: base only
    att = torch.zeros(1, 1, 128, 128)
    att[..., :64, :64] = 1.0  # two 32-pixel base cells
    plain = pyramid_fuse(ir, vis, maps(h=128, w=128), LEVELS, SHARP, attention=att)  # gain 0: unused
    torch.testing.assert_close(plain, torch.full_like(ir, 0.5), atol=1e-6, rtol=0)
    fused = pyramid_fuse(ir, vis, maps(h=128, w=128), LEVELS, SHARP, attention=att, attention_gain=4.0)
    target = 0.2 + 0.6 * torch.sigmoid(torch.tensor(4.0)).item()
    assert abs(fused[0, 0, 10, 10].item() - target) < 1e-4  # inside the target, far from its edge
    assert abs(fused[0, 0, 120, 120].item() - 0.5) < 1e-4  # far outside it
    # the decoder can overrule it: a base map of -g inside the target gives the mean back
    m = maps(h=128, w=128)
    m[:, 0, :64, :64] = -4.0
    overruled = pyramid_fuse(ir, vis, m, LEVELS, SHARP, attention=att, attention_gain=4.0)
    torch.testing.assert_close(overruled, torch.full_like(ir, 0.5), atol=1e-6, rtol=0)


def test_add_pyramid_head_script_keeps_every_other_weight(tmp_path):
    torch.manual_seed(0)
    pixel = moefusion.build_model("edge", output_head="pixel", decoder_stride=1).eval()
    src, dst = tmp_path / "pixel.pt", tmp_path / "pyramid.pt"
    save_checkpoint(src, pixel)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "add_pyramid_head.py"), str(src), str(dst)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    new = load(dst).eval()
    assert new.cfg.output_head == "pyramid" and new.cfg.pyramid_detail_gain == pytest.approx(1.2)  # the preset's
    old_sd, new_sd = pixel.state_dict(), new.state_dict()
    changed = [k for k in old_sd if old_sd[k].shape != new_sd[k].shape or not torch.equal(old_sd[k], new_sd[k])]
    assert changed == ["moge.experts.weights.3", "moge.experts.biases.3"]
    assert not new_sd["moge.experts.weights.3"].any() and not new_sd["moge.experts.biases.3"].any()
    # so it starts as the classical blend: zero maps
    ir, vis = torch.rand(1, 1, 64, 96), torch.rand(1, 1, 64, 96)
    c = new.cfg
    with torch.no_grad():
        out = new(ir, vis)
        torch.testing.assert_close(out.fused, pyramid_fuse(ir, vis, maps(), LEVELS, c.pyramid_sharpness, c.pyramid_detail_gain,
                                                           out.attention, c.pyramid_attention_gain))


def test_add_pyramid_head_script_updates_an_existing_heads_fields(tmp_path):
    torch.manual_seed(0)
    old = moefusion.build_model("edge", pyramid_attention_gain=0.0).eval()
    src, dst = tmp_path / "old.pt", tmp_path / "new.pt"
    save_checkpoint(src, old, meta={"note": "kept"}, half=True)
    script = [sys.executable, str(ROOT / "scripts" / "add_pyramid_head.py")]
    r = subprocess.run(script + [str(src), str(dst)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "pyramid_attention_gain 0.0 -> 4.0" in r.stdout
    state = torch.load(dst, weights_only=True)
    assert state["weights_dtype"] == "float16" and state["meta"]["note"] == "kept"
    assert state["meta"]["head_fields_updated"] == {"pyramid_attention_gain": [0.0, 4.0]}
    new = load(dst)
    assert new.cfg.pyramid_attention_gain == 4.0
    old_sd = torch.load(src, weights_only=True)["state_dict"]
    assert all(torch.equal(old_sd[k], state["state_dict"][k]) for k in old_sd)
    r = subprocess.run(script + [str(dst), str(tmp_path / "again.pt")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "nothing to do" in r.stderr and not (tmp_path / "again.pt").exists()
    # a different level count changes MoGE's output maps: refused in one line, nothing written
    other = tmp_path / "levels4.pt"
    save_checkpoint(other, moefusion.build_model("edge", pyramid_levels=4))
    r = subprocess.run(script + [str(other), str(tmp_path / "bad.pt")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "pyramid_levels 4" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.pt").exists()


def test_add_pyramid_head_script_takes_chosen_field_values(tmp_path):
    """--set overrides the preset's value of a head field (the recipe fine-tunes a new decoder_stride
    without the attention term, then adds the term); anything else is refused in one line."""
    torch.manual_seed(0)
    src, dst = tmp_path / "old.pt", tmp_path / "new.pt"
    save_checkpoint(src, moefusion.build_model("edge", decoder_stride=1))
    script = [sys.executable, str(ROOT / "scripts" / "add_pyramid_head.py"), str(src), str(dst)]
    r = subprocess.run(script + ["--set", "pyramid_attention_gain=0"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "decoder_stride 1 -> 2" in r.stdout and "fine-tune it" in r.stdout
    new = load(dst)
    assert new.cfg.decoder_stride == 2 and new.cfg.pyramid_attention_gain == 0.0
    for bad, says in ((["--set", "detail_gain=2"], "FIELD one of"), (["--set", "decoder_stride=two"], "not an integer"),
                      (["--set", "decoder_stride=3"], "decoder_stride=3")):
        out = tmp_path / "bad.pt"
        r = subprocess.run(script[:-1] + [str(out)] + bad, capture_output=True, text=True, cwd=ROOT)
        assert r.returncode != 0 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not out.exists()
    # the same for a pixel-head checkpoint (converted, not updated)
    pixel = tmp_path / "pixel.pt"
    save_checkpoint(pixel, moefusion.build_model("edge", output_head="pixel", decoder_stride=1))
    r = subprocess.run(script[:1] + [script[1], str(pixel), str(tmp_path / "bad.pt"), "--set", "decoder_stride=3"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode != 0 and "decoder_stride=3" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "bad.pt").exists()


# -- the soft range limit (issue 23: no overshoot) -------------------------------------------------
def test_soft_range_limit_bounds_every_pixel_and_keeps_those_inside():
    from moefusion.model.pyramid import local_range, soft_range_limit

    g = torch.Generator().manual_seed(0)
    ir, vis = torch.rand(2, 1, 40, 56, generator=g), torch.rand(2, 1, 40, 56, generator=g) * 0.5
    fused = torch.randn(2, 1, 40, 56, generator=g) * 0.6 + 0.4  # far outside [0, 1] in places
    margin = 4 / 255
    lo, hi = local_range(ir, vis)
    out = soft_range_limit(fused, ir, vis, margin)
    inside = (fused >= lo) & (fused <= hi)
    assert 0.2 < inside.float().mean() < 0.9  # the case has both kinds of pixel
    torch.testing.assert_close(out[inside], fused[inside])
    assert bool((out <= hi + margin).all() and (out >= lo - margin).all())
    # the bend is monotonic, and strictly so for moderate overshoots (no hard clip into a plateau)
    higher = soft_range_limit(fused + 0.01, ir, vis, margin)
    near = (fused > hi) & (fused < hi + 2 * margin)
    assert bool((higher[fused > hi] >= out[fused > hi]).all()) and bool((higher[near] > out[near]).all())
    assert torch.equal(soft_range_limit(fused, ir, vis, 0.0), fused)  # 0: off


def test_range_margin_removes_the_models_overshoot_on_a_real_pair(shared_data):
    """The same model with and without the limit: the detail gain overshoots the sources' local range
    by more than 10 grey levels on some pixels; with range_margin none is beyond 4 grey levels."""
    from helpers import real_inputs
    from moefusion.model.gating import randomize_gates
    from moefusion.model.pyramid import local_range

    (_, ir, vis), = real_inputs(shared_data, (240, 320), pairs=(("roadscene", "FLIR_00006"),))
    ir, vis = torch.from_numpy(ir), torch.from_numpy(vis)
    out = {}
    for margin in (0.0, 4 / 255):
        torch.manual_seed(0)
        model = randomize_gates(moefusion.build_model("edge", pyramid_detail_gain=2.0, range_margin=margin)).eval()
        with torch.no_grad():
            out[margin] = model(ir, vis).fused
    lo, hi = local_range(ir, vis)
    beyond = lambda f: float(((f - hi > 10 / 255) | (lo - f > 10 / 255)).float().mean())  # noqa: E731
    assert beyond(out[0.0]) > 0.001
    assert beyond(out[4 / 255]) == 0.0
    assert float((out[4 / 255] - hi).max()) <= 4 / 255 + 1e-6
