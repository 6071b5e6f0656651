"""Capture from real GStreamer pipelines (videotestsrc, files written here), image sequences and
the OpenCV fallback. Small frames, a few frames each."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
from helpers import gst_test

from moefusion.errors import UserError
from moefusion.runtime import capture as capmod
from moefusion.runtime import gst as gstmod
from moefusion.runtime.capture import (
    GstCapture,
    ImageSequenceCapture,
    OpenCVCapture,
    SourceError,
    Status,
    make_capture,
)
from moefusion.runtime.uri import StreamOptions, parse_input_uri


def read_all(cap, limit=1000):
    frames = []
    while len(frames) < limit:
        st, f = cap.read(2.0)
        if st is Status.OK:
            frames.append(f)
        elif st is Status.TIMEOUT:
            continue
        else:
            return frames, st
    return frames, Status.OK


def opened(uri, role="ir", **kw):
    c = make_capture(parse_input_uri(uri, f"--{role}"), StreamOptions(**kw).validate(role), role)
    c.open()
    return c


def write_clip(path, n=12, size=(64, 48), fps=10.0, color=True):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size, isColor=color)
    assert w.isOpened()
    for i in range(n):
        v = 20 + i * 15  # frame index encoded as brightness
        img = np.full((size[1], size[0], 3) if color else (size[1], size[0]), v, np.uint8)
        w.write(img)
    w.release()


@gst_test
def test_videotestsrc_gray8_frames_and_pts():
    c = opened("test://ball?num-buffers=10&is-live=false", "ir", width=64, height=48, rate=30)
    try:
        frames, st = read_all(c)
    finally:
        c.close()
    assert st is Status.EOS and len(frames) == 10
    assert frames[0].image.shape == (48, 64) and frames[0].image.dtype == np.uint8
    assert [f.ts_ns for f in frames] == [i * 1_000_000_000 // 30 for i in range(10)]  # PTS, 33.3 ms apart
    assert [f.index for f in frames] == list(range(10))
    assert all(f.image.flags.writeable and f.image.flags.owndata or f.image.base is not None for f in frames)


@gst_test
def test_gray16_frames_from_a_radiometric_style_source():
    c = opened("test://gradient?num-buffers=3&is-live=false", "ir", width=40, height=30, format="GRAY16_LE")
    try:
        frames, st = read_all(c)
    finally:
        c.close()
    img = frames[0].image
    assert len(frames) == 3 and img.dtype == np.uint16 and img.shape == (30, 40)
    assert img.max() > 255  # real 16-bit values, not 8-bit scaled up


@gst_test
def test_bgr_with_row_padding_and_flip():
    # 30 px BGR rows are 90 bytes, padded to 92 by GStreamer: the stride must be honoured
    c = opened("test://red?num-buffers=2&is-live=false", "vis", width=30, height=20)
    frames, _ = read_all(c)
    c.close()
    img = frames[0].image
    assert img.shape == (20, 30, 3) and (img == img[0, 0]).all()
    assert tuple(img[0, 0]) == (0, 0, 255)
    c = opened("test://gradient?num-buffers=1&is-live=false", "ir", width=32, height=24, flip="vertical")
    flipped, _ = read_all(c)
    c.close()
    c = opened("test://gradient?num-buffers=1&is-live=false", "ir", width=32, height=24)
    plain, _ = read_all(c)
    c.close()
    np.testing.assert_array_equal(flipped[0].image, plain[0].image[::-1])


@gst_test
def test_live_test_source_timestamps_are_monotonic_clock():
    import time

    c = opened("test://ball?num-buffers=6", "vis", width=32, height=24, rate=30)
    t0 = time.monotonic_ns()
    frames, st = read_all(c)
    c.close()
    assert c.live and len(frames) >= 5 and st is Status.EOS
    ts = np.array([f.ts_ns for f in frames])
    assert (np.diff(ts) > 0).all()
    # base_time + PTS on GStreamer's monotonic system clock: comparable with time.monotonic_ns()
    assert abs(ts[-1] - t0) < 2e9 and ts[-1] <= time.monotonic_ns()
    assert np.median(np.diff(ts)) == pytest.approx(1e9 / 30, rel=0.05)


@gst_test
def test_video_file_written_by_the_test(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path, n=12, fps=10)
    c = opened(str(path), "vis")
    assert isinstance(c, GstCapture) and "decodebin" in c.launch
    frames, st = read_all(c)
    c.close()
    assert st is Status.EOS and len(frames) == 12
    assert frames[0].image.shape == (48, 64, 3)
    assert [f.ts_ns for f in frames] == [i * 100_000_000 for i in range(12)]
    means = [f.image.mean() for f in frames]
    assert np.all(np.diff(means) > 5)  # decoded in order
    assert c.fps == pytest.approx(10)


@gst_test
def test_file_loop_and_ir_gray(tmp_path):
    path = tmp_path / "clip.mp4"
    write_clip(path, n=5, fps=10)
    c = opened(f"file://{path}", "ir", loop=1)
    frames, st = read_all(c)
    c.close()
    assert st is Status.EOS and len(frames) == 10 and frames[0].image.ndim == 2
    ts = [f.ts_ns for f in frames]
    assert ts == sorted(ts) and len(set(ts)) == 10 and ts[5] == 500_000_000


@gst_test
@pytest.mark.parametrize("flip", ["none", "horizontal"])
def test_file_scaled_to_the_requested_size(tmp_path, flip):
    path = tmp_path / "clip.mp4"
    write_clip(path, n=3, fps=10)
    for role, shape in (("ir", (24, 40)), ("vis", (24, 40, 3))):
        c = opened(str(path), role, width=40, height=24, flip=flip)
        frames, st = read_all(c)
        c.close()
        assert st is Status.EOS and len(frames) == 3 and frames[0].image.shape == shape


@gst_test
def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        opened(str(tmp_path / "nope.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(SourceError) as e:
        opened(str(bad), "vis")
    assert "bad.mp4" in str(e.value) and "\n" not in str(e.value)


@gst_test
def test_not_negotiated_error_names_the_device_and_the_fix(tmp_path):
    """A real caps-negotiation failure from GStreamer, translated for a V4L2 source."""
    fake_dev = tmp_path / "video9"
    fake_dev.write_text("")
    clip = tmp_path / "clip.mp4"
    write_clip(clip, n=3)
    c = GstCapture(parse_input_uri(f"v4l2://{fake_dev}"), StreamOptions(format="GRAY16_LE"), "ir")
    # as with a camera, the caps are known only once it runs (decodebin's pad appears at run time);
    # the decoder produces 64x48, not 99 wide: negotiation fails in the running pipeline
    c.launch = f"filesrc location={clip} ! decodebin ! video/x-raw,width=99 ! appsink name=sink"
    with pytest.raises(SourceError) as e:
        c.open()
    msg = str(e.value)
    assert "does not support the requested mode" in msg and f"v4l2-ctl -d {fake_dev} --list-formats-ext" in msg
    assert "--ir-format" in msg and "\n" not in msg


@gst_test
def test_missing_element_names_the_package():
    c = make_capture(parse_input_uri("csi://0"), StreamOptions(), "vis")
    with pytest.raises(UserError) as e:
        c.open()
    assert "nvarguscamerasrc" in str(e.value) and "JetPack" in str(e.value)


def test_missing_v4l2_device():
    c = make_capture(parse_input_uri("/dev/video97"), StreamOptions(), "ir")
    with pytest.raises(SourceError) as e:
        c.open()
    assert "/dev/video97" in str(e.value) and "--ir" in str(e.value)


def test_image_sequence_16bit_and_rate(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((6, 8), 1000 * (i + 1), np.uint16))
    c = ImageSequenceCapture(parse_input_uri(str(tmp_path)), StreamOptions(rate=9), "ir")
    c.open()
    frames, st = read_all(c)
    assert st is Status.EOS and len(frames) == 4
    assert frames[2].image.dtype == np.uint16 and frames[2].image[0, 0] == 3000
    assert [f.ts_ns for f in frames] == [round(i * 1e9 / 9) for i in range(4)]
    c = ImageSequenceCapture(parse_input_uri(str(tmp_path / "*.png")), StreamOptions(loop=2, width=4, height=3), "ir")
    c.open()
    frames, _ = read_all(c)
    assert len(frames) == 12 and frames[0].image.shape == (3, 4)
    assert np.all(np.diff([f.ts_ns for f in frames]) > 0)


def test_opencv_fallback_reads_files_and_says_so_once(tmp_path, monkeypatch, caplog):
    path = tmp_path / "clip.mp4"
    write_clip(path, n=7, fps=10)
    monkeypatch.setenv("MOEFUSION_NO_GST", "1")
    monkeypatch.setattr(gstmod, "_GST", None)
    monkeypatch.setattr(capmod, "_FALLBACK_SAID", False)
    with caplog.at_level(logging.WARNING, logger="moefusion.runtime"):
        c1 = make_capture(parse_input_uri(str(path)), StreamOptions(), "ir")
        c2 = make_capture(parse_input_uri(str(path)), StreamOptions(), "vis")
    assert isinstance(c1, OpenCVCapture) and isinstance(c2, OpenCVCapture)
    assert sum("using OpenCV capture" in r.message for r in caplog.records) == 1
    c1.open()
    frames, st = read_all(c1)
    c1.close()
    assert st is Status.EOS and len(frames) == 7 and frames[0].image.ndim == 2
    assert [f.ts_ns for f in frames] == [i * 100_000_000 for i in range(7)]
    with pytest.raises(UserError, match="test:// needs GStreamer"):
        make_capture(parse_input_uri("test://ball"), StreamOptions(), "ir")


@gst_test
def test_torch_cpp_exceptions_survive_gstreamer_init():
    """libgstreamer pulls in libunwind; without libgcc_s first in the global scope, PyTorch's C++
    exceptions unwind through libunwind and abort (torch.jit.trace/onnx.export after cv2 + Gst)."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    code = ("import cv2\nfrom moefusion.runtime import gst\nassert gst.have_gst()\nimport torch\n"
            "torch.jit.trace(torch.nn.Conv2d(2, 1, 3), torch.rand(1, 2, 8, 8))\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
