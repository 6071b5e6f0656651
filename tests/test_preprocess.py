"""Image conventions: luminance/chroma split and merge, IR bit depths, AGC."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from moefusion.data.preprocess import agc16, ir_to_unit, merge_visible, prepare_pair, split_visible
from moefusion.errors import UserError


def colour_scene(h=48, w=64):
    """Smooth, moderately saturated colours (inside the gamut for mid-range luminance)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    b = 110 + 50 * np.sin(xx / 9)
    g = 120 + 40 * np.cos(yy / 7)
    r = 130 + 45 * np.sin((xx + yy) / 11)
    return np.clip(np.stack([b, g, r], 2), 0, 255).astype(np.uint8)


def test_recombination_keeps_visible_chroma():
    vis = colour_scene()
    parts = split_visible(vis)
    rng = np.random.default_rng(0)
    fused_y = rng.uniform(0.35, 0.65, parts.y.shape).astype(np.float32)
    out = merge_visible(fused_y, parts)
    assert out.shape == vis.shape and out.dtype == np.uint8
    ycrcb_in = cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb).astype(int)
    ycrcb_out = cv2.cvtColor(out, cv2.COLOR_BGR2YCrCb).astype(int)
    assert np.abs(ycrcb_in[:, :, 1:] - ycrcb_out[:, :, 1:]).max() <= 2
    assert np.abs(ycrcb_out[:, :, 0] - np.rint(fused_y * 255)).max() <= 2


def test_identity_luminance_round_trip():
    vis = colour_scene()
    parts = split_visible(vis)
    assert np.abs(merge_visible(parts.y, parts).astype(int) - vis.astype(int)).max() <= 2


def test_gray_visible_stays_gray():
    vis = colour_scene()[:, :, 1]
    parts = split_visible(vis)
    assert parts.crcb is None
    out = merge_visible(parts.y, parts)
    assert out.shape == vis.shape and np.array_equal(out, vis)


def test_ir_bit_depths_and_channels():
    ir8 = np.array([[0, 255], [128, 64]], np.uint8)
    np.testing.assert_allclose(ir_to_unit(ir8), ir8 / 255.0, atol=1e-7)
    ir3 = np.repeat(ir8[:, :, None], 3, axis=2)
    np.testing.assert_allclose(ir_to_unit(ir3), ir8 / 255.0, atol=1e-7)
    rng = np.random.default_rng(0)
    ir16 = rng.integers(28000, 30000, (64, 64)).astype(np.uint16)
    ir16[0, 0] = 65535  # one hot pixel must not flatten the frame
    u = ir_to_unit(ir16)
    assert u.dtype == np.float32 and u.min() == 0.0 and u.max() == 1.0
    assert 0.3 < np.median(u) < 0.7
    kelvin = rng.uniform(280.0, 320.0, (16, 16))
    assert 0.0 <= ir_to_unit(kelvin).min() and ir_to_unit(kelvin).max() <= 1.0
    assert not agc16(np.full((4, 4), 300, np.uint16)).any()


def test_prepare_pair_resizes_ir_to_visible():
    ir = np.zeros((10, 12), np.uint8)
    vis = np.zeros((20, 24, 3), np.uint8)
    ir_u, parts = prepare_pair(ir, vis)
    assert ir_u.shape == parts.y.shape == (20, 24)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 2), np.uint8), np.zeros((1, 1), np.uint8), [[1, 2]]])
def test_bad_images_are_user_errors(bad):
    with pytest.raises(UserError):
        ir_to_unit(bad)
