"""Outputs (real GStreamer encoders and muxers, OpenCV fallback, an RTP/UDP stream received by a
real pipeline) and the per-frame pre/postprocessing and views."""
from __future__ import annotations

import socket
import time

import cv2
import numpy as np
import pytest
from helpers import gst_test

from moefusion.data.preprocess import merge_visible, prepare_pair
from moefusion.errors import UserError
from moefusion.runtime import gst as gstmod
from moefusion.runtime import sinks as sinkmod
from moefusion.runtime.process import Preprocessor, compose, draw_overlay, postprocess
from moefusion.runtime.sinks import (
    GstFileSink,
    NullSink,
    OpenCVFileSink,
    launch,
    make_sink,
    partial_path,
)
from moefusion.runtime.uri import parse_output_uri


def frames(n, w=64, h=48):
    for i in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:, :, 1] = 10 + 8 * i
        cv2.circle(img, (5 + i * 2, h // 2), 6, (255, 255, 255), -1)
        yield img


def picture(w, h, i=0):
    """A test picture that H.264 keeps (smooth gradients, large solid blocks) and that shows any
    row-layout error: a shear, a wrong stride or a rejected buffer (uniform green) changes it a lot.
    The red block moves 12 px per frame, so frames cannot be confused."""
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = (40 + 180 * x + 0 * y).astype(np.uint8)  # B: left to right
    img[:, :, 1] = (30 + 150 * y + 0 * x).astype(np.uint8)  # G: top to bottom
    img[:, :, 2] = 60
    x0 = (8 + 12 * i) % max(1, w - 48)
    img[h // 4: h // 4 + 32, x0: x0 + 40] = (20, 20, 235)  # a red block
    img[h - 24:, w - 40:] = 255  # a white corner: the right edge is where a wrong stride shows first
    return img


def assert_same_picture(got, want, what):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    d = np.abs(got.astype(np.int16) - want.astype(np.int16))
    blocks = d[: d.shape[0] // 16 * 16, : d.shape[1] // 16 * 16].reshape(d.shape[0] // 16, 16, d.shape[1] // 16, 16, 3)
    worst = blocks.mean(axis=(1, 3, 4)).max()
    assert d.mean() < 4.0 and worst < 25.0, f"{what}: mean |diff| {d.mean():.1f}, worst 16x16 block {worst:.1f}"


def sample_to_bgr(Gst, sample):
    """A BGR appsink sample as (h, w, 3), honouring its row stride."""
    from gi.repository import GstVideo

    info = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
    buf = sample.get_buffer()
    ok, mi = buf.map(Gst.MapFlags.READ)
    assert ok
    try:
        rows = np.frombuffer(mi.data, np.uint8, count=info.stride[0] * info.height).reshape(info.height, info.stride[0])
        return np.array(rows[:, : info.width * 3]).reshape(info.height, info.width, 3)
    finally:
        buf.unmap(mi)


WIDTHS = [(478, 120), (322, 90), (640, 96)]


def count_frames(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), path
    n = 0
    size = None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        n += 1
        size = f.shape
    return n, size


# -- pre/postprocessing ------------------------------------------------------------------------

@pytest.mark.parametrize("ir_dtype,vis_gray", [(np.uint8, False), (np.uint8, True), (np.uint16, False)])
def test_preprocessor_matches_prepare_pair(ir_dtype, vis_gray):
    rng = np.random.default_rng(0)
    ir = rng.integers(0, np.iinfo(ir_dtype).max, (48, 64), dtype=ir_dtype)
    vis = rng.integers(0, 256, (48, 64) if vis_gray else (48, 64, 3), dtype=np.uint8)
    p = Preprocessor()(ir, vis)
    ref_ir, parts = prepare_pair(ir, vis)
    assert p.ir_unit.shape == p.vis_y.shape == (1, 1, 48, 64) and p.ir_unit.dtype == np.float32
    np.testing.assert_allclose(p.vis_y[0, 0], parts.y, atol=1e-6)
    # 16-bit AGC takes its percentiles from a 1/16 sample: close to the full-frame AGC
    np.testing.assert_allclose(p.ir_unit[0, 0], ref_ir, atol=1e-6 if ir_dtype == np.uint8 else 0.02)
    fused = rng.random((48, 64), dtype=np.float32) * 1.2 - 0.1  # out-of-range values are clipped
    np.testing.assert_array_equal(postprocess(fused, p), merge_visible(fused, parts))


def test_preprocessor_resizes_ir_and_handles_other_dtypes():
    rng = np.random.default_rng(1)
    ir = rng.integers(0, 255, (24, 32), dtype=np.uint8)
    vis = rng.random((48, 64, 3)).astype(np.float32)
    p = Preprocessor()(ir, vis)
    ref_ir, parts = prepare_pair(ir, vis)
    np.testing.assert_allclose(p.ir_unit[0, 0], ref_ir, atol=1e-6)
    np.testing.assert_allclose(p.vis_y[0, 0], parts.y, atol=1e-6)
    assert postprocess(p.vis_y[0, 0], p).dtype == np.float32


def test_views():
    rng = np.random.default_rng(2)
    ir = rng.integers(0, 255, (48, 64), dtype=np.uint8)
    vis = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    p = Preprocessor()(ir, vis)
    out = postprocess(p.vis_y[0, 0], p)
    att = rng.random((48, 64), dtype=np.float32)
    assert compose("fused", out, p, att).shape == (48, 64, 3)
    assert compose("side-by-side", out, p, att).shape == (48, 192, 3)
    g = compose("grid", out, p, None)
    assert g.shape == (96, 128, 3) and g[60:, 70:].max() > 0  # the n/a tile has its label
    gray = compose("fused", postprocess(p.vis_y[0, 0], Preprocessor()(ir, vis[:, :, 0])), p, None)
    assert gray.shape == (48, 64, 3)
    before = out.copy()
    draw_overlay(out, ["12.0 FPS", "average"])
    assert (out != before).any()


# -- sinks -------------------------------------------------------------------------------------

@gst_test
def test_gst_file_sink_writes_a_playable_h264_mp4(tmp_path):
    path = tmp_path / "out.mp4"
    s = make_sink(parse_output_uri(f"file://{path}"), 30.0)
    assert isinstance(s, GstFileSink)
    for i, f in enumerate(frames(20)):
        assert s.write(f, int(i * 1e9 / 30))
        if i == 5:
            assert not path.exists() and (tmp_path / "out.partial.mp4").exists()  # temp name until finalised
    assert s.close() == str(path)
    assert not (tmp_path / "out.partial.mp4").exists()
    n, size = count_frames(path)
    assert n == 20 and size == (48, 64, 3)
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little") in (b"avc1", b"h264", b"H264")


@gst_test
def test_gst_file_sink_odd_sizes_and_mkv(tmp_path):
    path = tmp_path / "odd.mkv"
    s = make_sink(parse_output_uri(str(path)), 15.0)
    for i, f in enumerate(frames(6, w=65, h=49)):
        s.write(f, int(i * 1e9 / 15))
    assert s.close() == str(path)
    n, size = count_frames(path)
    assert n == 6 and size == (48, 64, 3)


def test_opencv_file_sink_fallback(tmp_path, monkeypatch, caplog):
    path = tmp_path / "cv.mp4"
    monkeypatch.setenv("MOEFUSION_NO_GST", "1")
    monkeypatch.setattr(gstmod, "_GST", None)
    monkeypatch.setattr(sinkmod, "_SAID_OPENCV", False)
    with caplog.at_level("WARNING", logger="moefusion.runtime"):
        s = make_sink(parse_output_uri(str(path)), 10.0)
    assert isinstance(s, OpenCVFileSink) and any("OpenCV's mp4v" in r.message for r in caplog.records)
    for i, f in enumerate(frames(9)):
        s.write(f, 0)
    assert not path.exists() and (tmp_path / "cv.partial.mp4").exists()
    assert s.close() == str(path)
    assert count_frames(path) == (9, (48, 64, 3))
    with pytest.raises(UserError, match="needs GStreamer"):
        make_sink(parse_output_uri("udp://127.0.0.1:5000"), 30.0)


def test_explicit_opencv_encoder_and_null_sink(tmp_path):
    s = make_sink(parse_output_uri(str(tmp_path / "a.avi")), 10.0, "opencv")
    assert isinstance(s, OpenCVFileSink) and s.fourcc == "MJPG"
    for f in frames(3):
        s.write(f, 0)
    assert s.close() and count_frames(tmp_path / "a.avi")[0] == 3
    n = make_sink(parse_output_uri("none"), 30.0)
    assert isinstance(n, NullSink) and n.write(next(frames(1)), 0) and n.close() is None


def test_output_user_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if gstmod.have_gst():
        with pytest.raises(UserError, match="no display"):
            make_sink(parse_output_uri("display://0"), 30.0)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(UserError, match="is a folder"):
        make_sink(parse_output_uri(str(tmp_path / "dir.mp4")), 30.0)
    with pytest.raises(UserError, match="--encoder"):
        make_sink(parse_output_uri(str(tmp_path / "x.mp4")), 30.0, "vp9enc")
    assert partial_path("/a/b/out.mp4") == "/a/b/out.partial.mp4"


@gst_test
def test_file_output_on_a_jetson_without_nvenc_encodes_in_software(tmp_path, monkeypatch):
    """make_sink with --encoder auto on an Orin Nano (JetPack's elements faked into the registry,
    NVENC missing): x264enc; on an Orin NX (NVENC's device node): nvv4l2h264enc."""
    from moefusion.runtime.jetson import JetsonFacts

    real = gstmod.element_exists
    fake = lambda name: name in ("nvv4l2h264enc", "nvvidconv", "nvv4l2decoder") or real(name)  # noqa: E731
    monkeypatch.setattr(gstmod, "element_exists", fake)
    monkeypatch.setattr(launch, "element_exists", fake)
    if not real("x264enc"):
        pytest.skip("x264enc is not installed here")
    monkeypatch.setattr(launch.jetsonmod, "read_facts",
                        lambda: JetsonFacts(model="NVIDIA Jetson Orin Nano Developer Kit", tegra_release=True))
    s = make_sink(parse_output_uri(str(tmp_path / "nano.mp4")), 30.0)
    assert isinstance(s, GstFileSink) and s.encoder == "x264enc"
    monkeypatch.setattr(launch.jetsonmod, "read_facts",
                        lambda: JetsonFacts(model="NVIDIA Jetson Orin NX", tegra_release=True, nvenc_nodes=("v4l2-nvenc",)))
    s = make_sink(parse_output_uri(str(tmp_path / "nx.mp4")), 30.0)
    assert isinstance(s, GstFileSink) and s.encoder == "nvv4l2h264enc"  # not started: no frame was written


@gst_test
@pytest.mark.skipif(gstmod.element_exists("rtspclientsink"), reason="rtspclientsink is installed here")
def test_rtsp_output_without_rtspclientsink_names_the_package():
    with pytest.raises(UserError) as e:
        make_sink(parse_output_uri("rtsp://127.0.0.1:8554/fused"), 30.0)
    assert "rtspclientsink" in str(e.value) and "gstreamer1.0-rtsp" in str(e.value)


@gst_test
@pytest.mark.parametrize("w,h", WIDTHS)
@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_file_sink_right_picture_at_any_width(tmp_path, w, h, ext):
    """Widths whose BGR rows are not a multiple of 4 bytes (478, 322) came out uniform green."""
    path = tmp_path / f"w{w}{ext}"
    s = make_sink(parse_output_uri(str(path)), 15.0)
    want = [picture(w, h, i) for i in range(8)]
    for i, f in enumerate(want):
        assert s.write(f, int(i * 1e9 / 15)), s.error
    assert s.close() == str(path) and not s.error
    from tests.test_runtime_pipeline import read_video

    got = read_video(path)
    assert len(got) == len(want)
    for i, (g, f) in enumerate(zip(got, want)):
        assert_same_picture(g, f, f"{path.name} frame {i}")


@gst_test
@pytest.mark.parametrize("w,h", WIDTHS)
def test_display_chain_right_picture_at_any_width(w, h):
    """The display output's own pipeline (appsrc ! videoconvert ! window sink) with an appsink in
    place of the window (no display here): what would be shown is the picture, exactly."""
    Gst = gstmod.import_gst()
    build = lambda w, h, fps: launch.display_sink_launch(w, h, fps).rsplit(" ! ", 1)[0] + (  # noqa: E731
        " ! video/x-raw,format=BGR ! appsink name=out sync=false")
    s = sinkmod.GstSink("display test", 30.0, build)
    want = [picture(w, h, i) for i in range(4)]
    got = []
    for i, f in enumerate(want):
        assert s.write(f, int(i * 1e9 / 30)), s.error
        smp = s._pipe.get_by_name("out").try_pull_sample(5 * Gst.SECOND)
        assert smp is not None, f"no frame out of the display chain at width {w}"
        got.append(sample_to_bgr(Gst, smp))
    s.close()
    assert "videoconvert" in s.launch and "appsink" in s.launch
    for g, f in zip(got, want):
        np.testing.assert_array_equal(g, f)  # BGR -> BGR: no conversion loss


@gst_test
@pytest.mark.parametrize("w,h", WIDTHS)
def test_udp_stream_right_picture_at_any_width(w, h):
    """RTP/H.264 over UDP to a real gst receiver on this machine; every decoded frame is compared."""
    Gst = gstmod.import_gst()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    rx = Gst.parse_launch(
        f'udpsrc address=127.0.0.1 port={port} buffer-size=4000000 caps="application/x-rtp,media=video,'
        'encoding-name=H264,payload=96,clock-rate=90000" ! rtph264depay ! h264parse ! avdec_h264 ! videoconvert ! '
        'video/x-raw,format=BGR ! appsink name=sink sync=false max-buffers=100')
    assert rx.set_state(Gst.State.PLAYING) != Gst.StateChangeReturn.FAILURE
    want = picture(w, h, 3)
    got = []
    try:
        time.sleep(0.2)
        s = make_sink(parse_output_uri(f"udp://127.0.0.1:{port}"), 30.0)
        for i in range(20):
            assert s.write(want, int(i * 1e9 / 30)), s.error
            time.sleep(0.005)
        s.close()
        sink = rx.get_by_name("sink")
        while True:
            smp = sink.try_pull_sample(Gst.SECOND)
            if smp is None:
                break
            got.append(sample_to_bgr(Gst, smp))
    finally:
        rx.set_state(Gst.State.NULL)
    assert len(got) >= 15
    for i, g in enumerate(got):
        assert_same_picture(g, want, f"UDP frame {i} at width {w}")


@gst_test
@pytest.mark.skipif(not gstmod.element_exists("rtspclientsink"),
                    reason="rtspclientsink (gstreamer1.0-rtsp) is not installed here, and no RTSP server to publish to")
def test_rtsp_sink_uses_the_same_stride_correct_appsrc():
    s = make_sink(parse_output_uri("rtsp://127.0.0.1:8554/fused"), 30.0)
    assert isinstance(s, sinkmod.GstSink) and "rtspclientsink" in s.build(478, 120, 9.0)
