"""Stream mode (model/stream.py): temporal state carried from frame to frame, motion-aware.

Built scenes: a textured static background with a warm square moving 6 px per frame, and a 4 px
per frame pan. The stream must leave no trail (it equals the per-frame fusion where things move)
and must matter where nothing moves (routing held, brightness steadied)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import moefusion
from moefusion.model import stream as streaming
from moefusion.model.gating import randomize_gates

H, W, FRAMES = 128, 288, 40  # the square ends at x = 4 + 6 * 39 + 32 = 270 < W


def _texture(seed: int, h: int, w: int, blur: float, lo: float, hi: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), blur)
    return cv2.normalize(t, None, lo, hi, cv2.NORM_MINMAX)


BG_VIS = _texture(0, H, W + 4 * FRAMES, 1.5, 30, 220)
BG_IR = _texture(1, H, W + 4 * FRAMES, 3.0, 60, 120)


def square_scene(t: int):
    """(ir, vis, x of the square's left edge): a warm square moving right 6 px per frame."""
    ir, vis = BG_IR[:, :W].copy(), BG_VIS[:, :W].copy()
    x = 4 + 6 * t
    ir[40:80, x:x + 32] = 230
    vis[40:80, x:x + 32] *= 0.6
    return ir.astype(np.uint8), vis.astype(np.uint8), x


def pan_scene(t: int):
    return BG_IR[:, 4 * t:4 * t + W].astype(np.uint8), BG_VIS[:, 4 * t:4 * t + W].astype(np.uint8), None


@pytest.fixture(scope="module")
def shipped():
    torch.manual_seed(0)
    return moefusion.load(device="cpu")


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return randomize_gates(moefusion.build_model("edge")).eval()


def run_stream(model, scene, frames=FRAMES):
    stream = model.stream()
    for t in range(frames):
        ir, vis, x = scene(t)
        out = stream.fuse(ir, vis).astype(np.float32)
    return out, model.fuse(ir, vis).astype(np.float32), x


def test_the_first_frame_of_a_stream_is_the_per_frame_fusion(untrained):
    ir, vis, _ = square_scene(3)
    stream = untrained.stream()
    assert np.abs(stream.fuse(ir, vis).astype(int) - untrained.fuse(ir, vis).astype(int)).max() <= 1
    stream.fuse(*square_scene(4)[:2])
    stream.reset()  # a reset starts the stream afresh
    assert np.abs(stream.fuse(ir, vis).astype(int) - untrained.fuse(ir, vis).astype(int)).max() <= 1


@pytest.mark.slow
def test_no_trail_behind_a_moving_warm_square(shipped):
    out, ref, x = run_stream(shipped, square_scene)
    diff = np.abs(out - ref)
    inside, band = diff[40:80, x:x + 32].mean(), diff[40:80, x - 6:x].mean()
    assert inside <= 3 and band <= 3 and diff.mean() <= 3, (inside, band, diff.mean())


@pytest.mark.slow
def test_no_smear_in_a_pan(shipped):
    out, ref, _ = run_stream(shipped, pan_scene)
    assert np.abs(out - ref).mean() <= 3


def test_motion_awareness_is_what_prevents_the_trail(untrained, monkeypatch):
    """With motion ignored (every block treated as static), the same scene leaves a trail: the
    stream's last frame departs from the per-frame fusion where the square was."""
    moving, ref, x = run_stream(untrained, square_scene, 12)
    monkeypatch.setattr(streaming, "MOTION_LOW", 10.0)
    monkeypatch.setattr(streaming, "MOTION_HIGH", 11.0)
    blind, _, _ = run_stream(untrained, square_scene, 12)
    band = (slice(40, 80), slice(x - 12, x))
    assert np.abs(moving - ref)[band].mean() < 0.5 * np.abs(blind - ref)[band].mean()


def test_size_change_or_scene_cut_restarts_the_stream(untrained):
    stream = untrained.stream()
    for t in range(3):
        stream.fuse(*square_scene(t)[:2])
    small_ir, small_vis = square_scene(5)[0][:96, :128], square_scene(5)[1][:96, :128]
    out = stream.fuse(small_ir, small_vis)  # another size: no error, a fresh state
    assert np.abs(out.astype(int) - untrained.fuse(small_ir, small_vis).astype(int)).max() <= 1
    cut_ir = _texture(7, H, W, 2.0, 0, 255).astype(np.uint8)  # a different shot: both pictures change
    cut_vis = _texture(8, H, W, 1.0, 0, 255).astype(np.uint8)
    stream.fuse(*square_scene(0)[:2])
    out = stream.fuse(cut_ir, cut_vis)
    assert np.abs(out.astype(int) - untrained.fuse(cut_ir, cut_vis).astype(int)).max() <= 1


def test_the_visible_cameras_exposure_jump_does_not_jump_the_picture(untrained):
    """VIS brightens 1.6x from frame 6 on (auto-exposure), IR does not change: the per-frame
    fusion's mean jumps with it; the stream's hardly moves, then settles where the model puts it."""
    ir, vis, _ = pan_scene(0)
    frames = [(ir, vis if t < 6 else np.clip(vis * 1.6, 0, 255).astype(np.uint8)) for t in range(60)]
    stream = untrained.stream()
    per_frame = [untrained.fuse(i, v).astype(np.float32).mean() for i, v in frames[5:7]]
    streamed = [stream.fuse(i, v).astype(np.float32).mean() for i, v in frames]
    jump_model, jump_stream = per_frame[1] - per_frame[0], streamed[6] - streamed[5]
    assert jump_model > 4 and abs(jump_stream) < 0.1 * jump_model, (jump_model, jump_stream)
    assert max(abs(np.diff(streamed[6:]))) < 0.1 * jump_model  # it fades in, without a jump
    assert abs(streamed[-1] - per_frame[1]) < 0.5 * jump_model  # and settles towards the model's own brightness


def test_routing_is_held_across_near_tied_frames(untrained):
    """Frames that drift slowly (the visible camera's gamma) change the per-frame routes; the stream
    keeps its experts."""
    ir, vis, _ = square_scene(0)
    frames = [(ir, np.clip(255 * (vis / 255.0) ** (0.5 + 0.25 * k), 0, 255).astype(np.uint8)) for k in range(8)]
    routes = lambda out: tuple(tuple(v.flatten().tolist()) for v in out.routes.values())  # noqa: E731
    from moefusion.data.preprocess import prepare_pair

    tensors = []
    for ir_raw, vis_raw in frames:
        ir_u, parts = prepare_pair(ir_raw, vis_raw)
        tensors.append((torch.from_numpy(ir_u)[None, None], torch.from_numpy(parts.y)[None, None]))
    with torch.no_grad():
        plain = {routes(untrained(i, v)) for i, v in tensors}
        state, held = untrained.initial_state(1, H, W), set()
        for i, v in tensors:
            out = untrained(i, v, state=state)
            state = out.state
            held.add(routes(out))
    assert len(plain) > 1 and len(held) < len(plain), (len(plain), len(held))


def test_state_update_functions_have_fixed_shapes_and_ranges():
    cfg = moefusion.build_model("edge").cfg
    state = streaming.initial_state(cfg, 2, 100, 130)
    shapes = streaming.state_shapes(cfg, 2, 100, 130)
    assert tuple(state.maps.shape) == shapes["maps"] == (2, cfg.decoder_out, 128 // cfg.decoder_stride, 160 // cfg.decoder_stride)
    src = torch.rand(2, 2, 64, 80)
    beta, keep = streaming.follow_factor(src, state.sources, state.scalars)
    assert torch.equal(keep, torch.zeros(2, 1)) and bool((beta == 1).all())  # first frame: follow it
    scalars = torch.ones(2, 4)
    beta, keep = streaming.follow_factor(src, src, scalars)  # nothing moved: smoothed
    assert bool((keep == 1).all()) and torch.allclose(beta, torch.full_like(beta, streaming.BETA_STATIC))
    moved = src.clone()
    moved[:, :, :16, :16] += 0.5
    beta, _ = streaming.follow_factor(moved, src, scalars)
    assert float(beta[..., :2, :2].min()) == 1.0 and float(beta[..., -1, -1].max()) == streaming.BETA_STATIC


def test_an_odd_frame_size_streams_pixel_for_pixel(untrained):
    """97 x 131 frames (the model pads to 128 x 160 and crops back; the state is kept padded): the
    first frame is the per-frame fusion, and a static scene stays on it frame after frame."""
    ir, vis = square_scene(0)[0][:97, :131], square_scene(0)[1][:97, :131]
    stream, ref = untrained.stream(), untrained.fuse(ir, vis).astype(int)
    outs = [stream.fuse(ir, vis) for _ in range(3)]
    assert all(o.shape == (97, 131) for o in outs)
    assert max(np.abs(o.astype(int) - ref).max() for o in outs) <= 1
