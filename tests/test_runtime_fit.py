"""Frame geometry (moefusion/runtime/fit.py): frames to a fixed-size model and back, letterboxing
a picture into a frame of another size, and the preprocessing that uses them (IR of another size
than VIS, buffers from the pool)."""
from __future__ import annotations

import numpy as np
import pytest

from moefusion.runtime.fit import from_model, letterbox_into, letterbox_rect, plan_model_fit, to_model
from moefusion.runtime.process import BufferPool, Preprocessor, postprocess


def smooth(h, w, seed=0):
    """A smooth picture (scaling it down and up again changes it little)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.5, 2.0, 2)
    return (0.5 + 0.4 * np.sin(a * x / w * np.pi) * np.cos(b * y / h * np.pi)).astype(np.float32)


def test_letterbox_rect_keeps_the_aspect_ratio_and_centres():
    assert letterbox_rect((360, 270), (640, 480)) == (0, 0, 640, 480)  # same aspect: no bars
    assert letterbox_rect((1280, 720), (640, 480)) == (0, 60, 640, 360)  # 16:9 into 4:3: bars top/bottom
    assert letterbox_rect((640, 512), (1280, 720)) == (190, 0, 900, 720)  # 5:4 into 16:9: bars left/right


def test_plan_model_fit():
    # dynamic models, and frames inside an engine profile's range: native size
    assert plan_model_fit((270, 360), None).native
    assert plan_model_fit((270, 361), ((64, 64), (1088, 1920))).native
    # a fixed 640x480 input
    f = plan_model_fit((270, 360), ((480, 640), (480, 640)))
    assert (f.mode, f.model, f.inner) == ("letterbox", (480, 640), (0, 0, 640, 480))
    f = plan_model_fit((720, 1280), ((480, 640), (480, 640)))
    assert (f.model, f.inner) == ((480, 640), (0, 60, 640, 360))
    assert "letterboxed into the model input 640x480" in f.describe() and "60+60 px top/bottom" in f.describe()
    f = plan_model_fit((720, 1280), ((480, 640), (480, 640)), "stretch")
    assert (f.mode, f.model, f.inner) == ("stretch", (480, 640), (0, 0, 640, 480))
    assert "stretched" in f.describe()
    # a range: shrunk to fit its maximum (aspect kept), padded up to its minimum, never enlarged
    f = plan_model_fit((1200, 1600), ((64, 64), (1088, 1920)))
    assert f.model == (1088, 1451) and f.inner == (0, 0, 1451, 1088)
    f = plan_model_fit((40, 600), ((64, 64), (1088, 1920)))
    assert f.model == (64, 600) and f.inner == (0, 12, 600, 40)
    with pytest.raises(ValueError):
        plan_model_fit((10, 10), None, "crop")


@pytest.mark.parametrize("frame,mode", [((270, 360), "letterbox"), ((188, 256), "letterbox"), ((720, 1280), "letterbox"),
                                        ((188, 256), "stretch")])
def test_to_model_and_back(frame, mode):
    fit = plan_model_fit(frame, ((480, 640), (480, 640)), mode)
    img = smooth(*frame)
    model = np.full((480, 640), -1.0, np.float32)
    to_model(img, fit, model)
    x, y, w, h = fit.inner
    assert (model >= 0).all()  # every input pixel written
    # the border repeats the picture's edge pixels
    if y:
        np.testing.assert_allclose(model[:y], np.repeat(model[y:y + 1], y, axis=0))
        np.testing.assert_allclose(model[y + h:], np.repeat(model[y + h - 1:y + h], 480 - y - h, axis=0))
    if x:
        np.testing.assert_allclose(model[:, :x], np.repeat(model[:, x:x + 1], x, axis=1))
    back = from_model(model, fit)
    assert back.shape == frame
    assert np.abs(back - img).mean() < 0.01  # a smooth picture survives the round trip


def test_letterbox_into_fills_bars_with_the_value():
    img = np.full((100, 200, 3), 200, np.uint8)
    out = letterbox_into(img, np.empty((150, 150, 3), np.uint8), 0)
    x, y, w, h = letterbox_rect((200, 100), (150, 150))
    assert (x, w) == (0, 150) and h == 75
    assert (out[:y] == 0).all() and (out[y + h:] == 0).all() and (out[y:y + h] == 200).all()


def test_ir_of_another_size_is_letterboxed_into_vis_and_said_once():
    notes = []
    pre = Preprocessor(on_note=lambda key, text: notes.append((key, text)))
    ir = np.full((256, 320), 255, np.uint8)  # 5:4
    vis = np.full((360, 640, 3), 128, np.uint8)  # 16:9
    p = pre(ir, vis)
    x, y, w, h = letterbox_rect((320, 256), (640, 360))
    assert (x, y, w, h) == (95, 0, 450, 360)
    ir_u = p.ir_unit[0, 0]
    assert (ir_u[:, :x] == 0).all() and (ir_u[:, x + w:] == 0).all()  # black: no thermal signal there
    np.testing.assert_allclose(ir_u[:, x:x + w], 1.0)
    pre(ir, vis)
    assert len(notes) == 1 and "IR frames are 320x256 but VIS frames 640x360" in notes[0][1]
    assert "black bands left/right" in notes[0][1] and "--registration" in notes[0][1]
    # the same aspect ratio: scaled, no bands
    notes.clear()
    p = pre(np.full((180, 320), 255, np.uint8), vis)
    np.testing.assert_allclose(p.ir_unit[0, 0], 1.0)
    assert "same aspect ratio" in notes[0][1]


def test_pool_reuses_the_arrays_of_written_frames():
    pool = BufferPool()
    fit = plan_model_fit((240, 320), ((480, 640), (480, 640)))
    pre = Preprocessor(pool=pool, fit_for=lambda h, w: fit)
    rng = np.random.default_rng(0)
    ir = rng.integers(0, 256, (240, 320), np.uint8)
    vis = rng.integers(0, 256, (240, 320, 3), np.uint8)
    outs = []
    for _ in range(6):
        p = pre(ir, vis)
        assert p.model_ir.shape == p.model_vis.shape == (1, 1, 480, 640)
        fused = (p.model_ir[0, 0] + p.model_vis[0, 0]) / 2
        outs.append(postprocess(fused, p).copy())
        p.release()
    n = pool.allocated
    for _ in range(6):
        p = pre(ir, vis)
        postprocess((p.model_ir[0, 0] + p.model_vis[0, 0]) / 2, p)
        p.release()
    assert pool.allocated == n  # steady state: nothing new
    assert all(np.array_equal(o, outs[0]) for o in outs) and outs[0].shape == (240, 320, 3)


def test_i420_fast_path_matches_the_bgr_path():
    """A colour frame as I420 (GStreamer's fast path) gives the network the same luminance as the
    BGR path (within the 8-bit limited-range quantisation) and the same fused picture back."""
    import cv2

    from moefusion.data.preprocess import merge_visible, prepare_pair
    from moefusion.runtime.process import draw_overlay
    from moefusion.runtime.yuv import I420Frame

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:96, 0:128].astype(np.float32)
    bgr = np.stack([40 + 1.4 * xx, 30 + 2.0 * yy, 60 + 0.5 * (xx + yy)], axis=2).astype(np.uint8)  # smooth colour
    ir = rng.integers(0, 256, (96, 128), np.uint8)
    yuv = I420Frame.from_bgr(bgr)
    p = Preprocessor(pool=BufferPool())(ir, yuv)
    ref_ir, parts = prepare_pair(ir, bgr)
    np.testing.assert_allclose(p.ir_unit[0, 0], ref_ir, atol=1e-6)
    assert np.abs(p.vis_y[0, 0] - parts.y).max() < 2.5 / 255  # BT.601 limited range vs OpenCV's YCrCb
    fused = (p.ir_unit[0, 0] + p.vis_y[0, 0]) / 2
    out = postprocess(fused, p, in_place=False)
    assert isinstance(out, I420Frame) and out is not p.vis and out.shape == (96, 128, 3)
    want = merge_visible((ref_ir + parts.y) / 2, parts)
    d = np.abs(out.to_bgr().astype(np.int16) - want.astype(np.int16))
    assert d.mean() < 2.0 and np.percentile(d, 99) < 8  # chroma subsampled 2x2 in I420
    np.testing.assert_array_equal(p.vis.data, yuv.data)  # not in place: the VIS frame is unchanged
    assert postprocess(fused, p) is p.vis  # in place: the fused luma written into the frame itself
    # the overlay on an I420 frame: white text on black in the luma, neutral chroma under it
    before = yuv.copy()
    draw_overlay(yuv, ["12.3 FPS"])
    changed = yuv.y != before.y
    assert changed[-30:, :70].any() and not changed[:40].any()
    assert yuv.y[changed].max() > 200 and yuv.y[changed].min() < 40  # anti-aliased text
    assert set(np.unique(yuv.u[yuv.u != before.u])) <= {128}
