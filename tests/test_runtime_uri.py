"""URI parsing, per-stream options and the GStreamer launch-string builders (pure functions)."""
from __future__ import annotations

import argparse
import logging

import pytest

from moefusion.errors import UserError
from moefusion.runtime import gst
from moefusion.runtime.jetson import JetsonFacts, read_facts
from moefusion.runtime.sinks import launch
from moefusion.runtime.uri import (
    StreamOptions,
    add_stream_args,
    expand_images,
    normalize_format,
    parse_input_uri,
    parse_output_uri,
    rate_fraction,
)

INPUTS = [
    ("/dev/video0", "v4l2", "/dev/video0", True),
    ("v4l2:///dev/video2", "v4l2", "/dev/video2", True),
    ("v4l2://1", "v4l2", "/dev/video1", True),
    ("csi://0", "csi", "0", True),
    ("rtsp://192.168.1.10:554/stream1", "rtsp", "rtsp://192.168.1.10:554/stream1", True),
    ("rtsps://cam.local/live", "rtsp", "rtsps://cam.local/live", True),
    ("file:///data/clip.mp4", "file", "/data/clip.mp4", False),
    ("file://clip.mkv", "file", "clip.mkv", False),
    ("clip.mp4", "file", "clip.mp4", False),
    ("/data/frames/", "images", "/data/frames/", False),
    ("file:///data/frames/*.png", "images", "/data/frames/*.png", False),
    ("frames/img_*.bmp", "images", "frames/img_*.bmp", False),
    ("one.png", "images", "one.png", False),
    ("test://ball", "test", "ball", True),
    ("test://", "test", "smpte", True),
]


@pytest.mark.parametrize("uri,kind,location,live", INPUTS)
def test_input_uri_table(uri, kind, location, live):
    u = parse_input_uri(uri, "--ir")
    assert (u.kind, u.location, u.is_live) == (kind, location, live)
    assert u.raw == uri
    assert u.is_finite == (kind in ("file", "images"))


def test_query_params_become_properties():
    u = parse_input_uri("test://ball?num-buffers=30&is-live=false", "--ir")
    assert dict(u.params) == {"num-buffers": "30", "is-live": "false"}
    assert not u.is_live and u.is_finite  # a non-live test pattern behaves like a file
    u = parse_input_uri("/dev/video0?io-mode=2", "--vis")
    assert u.location == "/dev/video0" and dict(u.params) == {"io-mode": "2"}


@pytest.mark.parametrize("uri,needle", [
    ("foo://bar", "unknown URI scheme 'foo://'"),
    ("http://x/y.mp4", "unknown URI scheme 'http://'"),
    ("csi://front", "csi://N"),
    ("rtsp:///nohost", "needs a host"),
    ("test://nosuchpattern", "unknown test pattern"),
    ("v4l2://camera", "v4l2:///dev/videoN"),
    ("", "--ir is missing"),
    ("test://ball?Bad_Prop=1", "bad property name"),
])
def test_bad_input_uris(uri, needle):
    with pytest.raises(UserError) as e:
        parse_input_uri(uri, "--ir")
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


OUTPUTS = [
    ("display://0", "display", "0"),
    ("display", "display", "0"),
    ("file://out.mp4", "file", "out.mp4"),
    ("out/fused.mkv", "file", "out/fused.mkv"),
    ("rtsp://localhost:8554/fused", "rtsp", "rtsp://localhost:8554/fused"),
    ("udp://192.168.1.20:5000", "udp", "192.168.1.20:5000"),
    ("none", "none", ""),
    (None, "none", ""),
]


@pytest.mark.parametrize("uri,kind,location", OUTPUTS)
def test_output_uri_table(uri, kind, location):
    u = parse_output_uri(uri)
    assert (u.kind, u.location) == (kind, location)


@pytest.mark.parametrize("uri,needle", [
    ("out.gif", "must end in one of"),
    ("udp://host", "udp://HOST:PORT"),
    ("ftp://x/y.mp4", "unknown output scheme"),
    ("display://left", "display://N"),
])
def test_bad_output_uris(uri, needle):
    with pytest.raises(UserError) as e:
        parse_output_uri(uri)
    assert needle in str(e.value)


def test_udp_host_port():
    u = parse_output_uri("udp://10.0.0.5:5600")
    assert (u.host, u.port) == ("10.0.0.5", 5600)


def test_stream_options_from_prefixed_flags():
    p = argparse.ArgumentParser()
    add_stream_args(p, "ir", "IR")
    add_stream_args(p, "vis", "VIS")
    a = p.parse_args(["--ir", "/dev/video1", "--ir-width", "640", "--ir-height", "512", "--ir-rate", "9",
                      "--ir-format", "y16", "--ir-flip", "rotate-180", "--vis-loop"])
    ir, vis = StreamOptions.from_args(a, "ir"), StreamOptions.from_args(a, "vis")
    assert (ir.width, ir.height, ir.rate, ir.format, ir.flip, ir.loop) == (640, 512, 9.0, "GRAY16_LE", "rotate-180", 0)
    assert vis.loop == -1 and vis.flip == "none"


@pytest.mark.parametrize("kw,needle", [
    ({"width": 0}, "--ir-width"), ({"rate": -1}, "--ir-rate"), ({"format": "H265"}, "--ir-format"),
    ({"flip": "sideways"}, "--ir-flip"), ({"loop": -5}, "--ir-loop"),
])
def test_bad_stream_options(kw, needle):
    with pytest.raises(UserError) as e:
        StreamOptions(**kw).validate("ir")
    assert needle in str(e.value)


def test_formats_and_rates():
    assert normalize_format("YUYV") == "YUY2" and normalize_format("mjpeg") == "MJPG" and normalize_format("Y16") == "GRAY16_LE"
    assert rate_fraction(30) == "30/1" and rate_fraction(7.5) == "15/2" and rate_fraction(29.97) == "30000/1001"
    assert rate_fraction(8.7) == "87/10"


def test_expand_images_natural_order(tmp_path):
    import cv2
    import numpy as np

    for i in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"f_{i}.png"), np.zeros((4, 4), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    u = parse_input_uri(str(tmp_path), "--ir")
    assert [p.rsplit("/", 1)[1] for p in expand_images(u, "--ir")] == ["f_1.png", "f_2.png", "f_10.png"]
    with pytest.raises(UserError, match="no such file or folder"):
        expand_images(parse_input_uri(str(tmp_path / "nope.png"), "--ir"), "--ir")


# -- launch strings -------------------------------------------------------------------------

def L(uri, role="ir", **kw):
    return gst.source_launch(parse_input_uri(uri, f"--{role}"), StreamOptions(**kw).validate(role), role)


def test_v4l2_launch_thermal_y16():
    s = L("/dev/video1", "ir", width=640, height=512, rate=30, format="Y16")
    assert s.startswith("v4l2src device=/dev/video1 ! video/x-raw,format=GRAY16_LE,width=640,height=512,framerate=30/1 ! ")
    assert s.endswith("video/x-raw,format=GRAY16_LE ! appsink name=sink max-buffers=2 drop=true sync=false enable-last-sample=false")


def test_v4l2_launch_mjpg_and_yuyv_vis(monkeypatch):
    monkeypatch.delenv("MOEFUSION_MJPEG_DECODER", raising=False)
    monkeypatch.setattr(gst.jetsonmod, "read_facts", lambda: JetsonFacts())  # not a Jetson: jpegdec
    s = L("v4l2:///dev/video0", "vis", width=1280, height=720, rate=30, format="MJPG", flip="horizontal")
    assert "image/jpeg,width=1280,height=720,framerate=30/1 ! jpegdec ! videoconvert ! videoflip video-direction=horiz" in s
    assert "video/x-raw,format=BGR ! appsink" in s
    s = L("/dev/video0?io-mode=2", "vis", format="YUYV")
    assert s.startswith("v4l2src device=/dev/video0 io-mode=2 ! video/x-raw,format=YUY2 ! videoconvert")
    assert L("/dev/video0", "vis").startswith("v4l2src device=/dev/video0 ! videoconvert")


def has(*names):
    """A faked element registry."""
    return lambda name: name in names


ORIN_NANO = "NVIDIA Jetson Orin Nano Developer Kit"
ORIN_NX = "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
JETPACK = ("nvv4l2decoder", "nvjpegdec", "nvvidconv", "nvv4l2h264enc", "videoconvert", "h264parse")


def test_mjpeg_decoder_choice():
    """MJPG cameras: on a Jetson the JPEG engine (nvv4l2decoder mjpeg=1, else nvjpegdec) where the
    element is installed; elsewhere, or without them, jpegdec on the CPU."""
    pick = gst.pick_mjpeg_decoder
    assert pick(jetson=False, has_element=has(*JETPACK)) == "jpegdec"
    assert pick(jetson=True, has_element=has(*JETPACK)) == "nvv4l2decoder"
    assert pick(jetson=True, has_element=has("nvv4l2decoder", "nvjpegdec")) == "nvjpegdec"  # no nvvidconv
    assert pick(jetson=True, has_element=has("nvjpegdec")) == "nvjpegdec"
    assert pick(jetson=True, has_element=has()) == "jpegdec"
    assert pick(jetson=True, has_element=has(*JETPACK), forced="jpegdec") == "jpegdec"
    with pytest.raises(UserError, match="MOEFUSION_MJPEG_DECODER=avdec_mjpeg: use one of nvv4l2decoder, nvjpegdec, jpegdec"):
        pick(jetson=True, has_element=has(*JETPACK), forced="avdec_mjpeg")

    uri, opts = parse_input_uri("/dev/video0", "--vis"), StreamOptions(width=1280, height=720, rate=30, format="MJPG").validate("vis")
    hw = gst.source_launch(uri, opts, "vis", mjpeg_decoder="nvv4l2decoder")
    assert ("v4l2src device=/dev/video0 ! image/jpeg,width=1280,height=720,framerate=30/1 ! nvv4l2decoder mjpeg=1 ! "
            "nvvidconv ! video/x-raw ! videoconvert ! video/x-raw,format=BGR ! appsink") in hw
    assert gst.launch_elements(hw) == ["v4l2src", "nvv4l2decoder", "nvvidconv", "videoconvert", "appsink"]
    nj = gst.source_launch(uri, opts, "vis", mjpeg_decoder="nvjpegdec", yuv=True)
    assert "framerate=30/1 ! nvjpegdec ! video/x-raw ! videoconvert ! video/x-raw,format=I420,colorimetry=bt601 ! appsink" in nj
    assert "! jpegdec ! videoconvert !" in gst.source_launch(uri, opts, "vis", mjpeg_decoder="jpegdec")
    assert gst.ELEMENT_PACKAGES["nvv4l2decoder"].startswith("NVIDIA JetPack")


def test_mjpeg_decoder_from_this_machines_facts(monkeypatch, caplog):
    """source_launch without a decoder asks the machine (faked here) and logs the choice."""
    monkeypatch.setattr(logging.getLogger("moefusion"), "propagate", True)  # whatever a CLI test set before
    monkeypatch.delenv("MOEFUSION_MJPEG_DECODER", raising=False)
    monkeypatch.setattr(gst, "element_exists", has(*JETPACK))
    monkeypatch.setattr(gst.jetsonmod, "read_facts", lambda: JetsonFacts(model=ORIN_NANO, tegra_release=True))
    with caplog.at_level(logging.INFO, logger="moefusion.runtime"):
        s = L("/dev/video0", "vis", format="MJPG")
    assert "! nvv4l2decoder mjpeg=1 ! nvvidconv ! video/x-raw ! videoconvert" in s
    assert f"MJPG camera decoder: nvv4l2decoder (hardware JPEG decode on {ORIN_NANO})" in caplog.text
    monkeypatch.setattr(gst, "element_exists", has())
    with caplog.at_level(logging.INFO, logger="moefusion.runtime"):
        assert "! jpegdec !" in L("/dev/video0", "vis", format="MJPG")
    assert "on the CPU: neither nvv4l2decoder (with nvvidconv) nor nvjpegdec is installed" in caplog.text
    monkeypatch.setattr(gst, "element_exists", has(*JETPACK))
    monkeypatch.setattr(gst.jetsonmod, "read_facts", lambda: JetsonFacts())  # a PC with the elements: still jpegdec
    assert "! jpegdec !" in L("/dev/video0", "vis", format="MJPG")
    monkeypatch.setattr(gst.jetsonmod, "read_facts", lambda: JetsonFacts(model=ORIN_NX))
    monkeypatch.setenv("MOEFUSION_MJPEG_DECODER", "jpegdec")
    assert "! jpegdec !" in L("/dev/video0", "vis", format="MJPG")


def test_jetson_facts(tmp_path, monkeypatch):
    """Module and NVENC from the device-tree model and /dev (as samples/jetson/jetson_detect.sh)."""
    model, dev, rel = tmp_path / "model", tmp_path / "dev", tmp_path / "nv_tegra_release"
    dev.mkdir()
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")

    def facts():
        return read_facts(str(model), str(dev), tegra_release_file=str(rel))

    f = facts()
    assert f.model == "NVIDIA Jetson AGX Orin Developer Kit" and f.is_jetson and not f.is_orin_nano
    assert not f.has_nvenc  # no device node
    (dev / "nvhost-msenc").touch()
    assert facts().has_nvenc and facts().nvenc_nodes == ("nvhost-msenc",)
    model.write_bytes(ORIN_NANO.encode() + b"\0")
    assert facts().is_orin_nano and not facts().has_nvenc  # a node, but a Nano: no NVENC
    model.write_bytes(ORIN_NX.encode() + b"\0")
    (dev / "nvhost-msenc").unlink()
    (dev / "v4l2-nvenc").touch()
    assert facts().has_nvenc
    pc = read_facts(str(tmp_path / "missing"), str(tmp_path / "nodev"), tegra_release_file=str(rel))
    assert (pc.model, pc.is_jetson, pc.has_nvenc, pc.name) == ("", False, False, "this machine")
    rel.touch()
    assert read_facts(str(tmp_path / "missing"), str(dev), tegra_release_file=str(rel)).is_jetson
    monkeypatch.setenv("MOEFUSION_DT_MODEL", str(model))
    monkeypatch.setenv("MOEFUSION_DEV", str(dev))
    assert read_facts(tegra_release_file=str(rel)) == JetsonFacts(model=ORIN_NX, tegra_release=True,
                                                                  nvenc_nodes=("v4l2-nvenc",))


def test_auto_encoder_needs_nvenc(caplog, monkeypatch):
    """--encoder auto: nvv4l2h264enc only where the module has NVENC; an Orin Nano (the element
    installed, no NVENC) and a PC get a software encoder. The element registry is faked."""
    monkeypatch.setattr(logging.getLogger("moefusion"), "propagate", True)  # whatever a CLI test set before
    pick = launch.pick_encoder
    every = has(*JETPACK, "x264enc", "openh264enc")
    nano = JetsonFacts(model=ORIN_NANO, tegra_release=True, nvenc_nodes=("nvhost-msenc",))
    nx = JetsonFacts(model=ORIN_NX, tegra_release=True, nvenc_nodes=("v4l2-nvenc",))
    assert pick(has_element=every, facts=nx) == "nvv4l2h264enc"
    with caplog.at_level(logging.INFO, logger="moefusion.runtime"):
        assert pick(has_element=every, facts=nano) == "x264enc"
    assert f"H.264 encoder: x264enc (--encoder auto; nvv4l2h264enc is installed but {ORIN_NANO} has no NVENC" in caplog.text
    assert pick(has_element=every, facts=JetsonFacts()) == "x264enc"
    assert pick(has_element=has(*JETPACK, "openh264enc"), facts=nano) == "openh264enc"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="moefusion.runtime"):
        assert pick(has_element=has(*JETPACK), facts=nano) is None  # only the hardware element: none usable
    assert "no software H.264 encoder" in caplog.text and "gstreamer1.0-plugins-ugly" in caplog.text
    assert pick(has_element=has("videoconvert", "h264parse"), facts=nx) is None
    # an explicit choice is kept (warned where no NVENC is found); a missing element is None
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="moefusion.runtime"):
        assert pick("nvv4l2h264enc", has_element=every, facts=nano) == "nvv4l2h264enc"
    assert "--encoder nvv4l2h264enc" in caplog.text and "no NVENC" in caplog.text
    assert pick("x264enc", has_element=has(*JETPACK), facts=nx) is None
    assert pick("openh264enc", has_element=every, facts=nano) == "openh264enc"


def test_v4l2_gray8_ir_default_format():
    assert L("/dev/video3", "ir", format="GRAY8").endswith(
        "video/x-raw,format=GRAY8 ! appsink name=sink max-buffers=2 drop=true sync=false enable-last-sample=false")


def test_csi_launch():
    s = L("csi://1", "vis", width=1920, height=1080, rate=30, flip="rotate-180")
    assert s.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1,format=NV12 ! nvvidconv flip-method=2 ! ")
    assert "video/x-raw,format=BGR ! appsink" in s
    assert "video/x-raw,format=GRAY8 ! appsink" in L("csi://0", "ir")


def test_rtsp_launch():
    s = L("rtsp://10.0.0.2:554/thermal", "ir")
    assert s.startswith("rtspsrc location=rtsp://10.0.0.2:554/thermal latency=200 ! decodebin ! videoconvert ! ")


def test_file_launch_scale_rate_and_pacing():
    s = L("file:///v/clip one.mp4", "vis", width=320, height=240, rate=10)
    assert s.startswith('filesrc location="/v/clip one.mp4" ! decodebin ! videorate ! video/x-raw,framerate=10/1 ! videoconvert ! videoscale ! video/x-raw,format=BGR,width=320,height=240 ! appsink')
    assert "drop=false sync=false" in s  # files: back-pressure, as fast as consumed
    paced = gst.source_launch(parse_input_uri("a.mp4"), StreamOptions(), "vis", sync=True)
    assert "drop=true sync=true" in paced


def test_test_launch():
    s = L("test://ball?num-buffers=5", "ir", width=64, height=48, rate=9, format="GRAY16_LE")
    assert s.startswith("videotestsrc pattern=ball num-buffers=5 is-live=true ! video/x-raw,format=GRAY16_LE,width=64,height=48,framerate=9/1 ! videoconvert")
    assert "drop=true" in s
    s = L("test://smpte?is-live=false", "vis")
    assert "width=640,height=480,framerate=30/1" in s and "drop=false" in s


def test_launch_elements_and_sinks():
    s = launch.file_sink_launch("/o/out.mp4", 640, 480, 30, "x264enc")
    assert gst.launch_elements(s) == ["appsrc", "videoconvert", "x264enc", "h264parse", "mp4mux", "filesink"]
    assert "x264enc speed-preset=ultrafast tune=zerolatency bitrate=2000 key-int-max=30" in s
    # crash-safe: fragmented MP4 (a fragment a second), written through (no stdio buffer lost on a kill)
    assert s.endswith("mp4mux fragment-duration=1000 ! filesink location=/o/out.mp4 buffer-mode=unbuffered")
    assert "qtmux fragment-duration=1000 !" in launch.file_sink_launch("a.mov", 64, 48, 30, "x264enc")
    assert launch.file_sink_launch("a.mkv", 64, 48, 30, "openh264enc").split(" ! ")[-2] == "matroskamux"
    u = launch.udp_sink_launch("10.0.0.9", 5000, 64, 48, 30, "x264enc")
    assert u.endswith("rtph264pay config-interval=1 pt=96 ! udpsink host=10.0.0.9 port=5000 sync=false async=false")
    assert gst.launch_elements(gst.source_launch(parse_input_uri("csi://0"), StreamOptions(), "vis"))[:2] == [
        "nvarguscamerasrc", "nvvidconv"]


def test_quote():
    assert gst.quote("/a/b.mp4") == "/a/b.mp4"
    assert gst.quote('a "b" c') == '"a \\"b\\" c"'


def test_pair_by_stem():
    from moefusion.runtime.uri import pair_by_stem

    ir = [f"/a/ir/{i}.png" for i in (1, 2, 3, 4, 10)]
    vis = [f"/b/vis/{i}.jpg" for i in (1, 2, 4, 10, 11)]
    p = pair_by_stem(ir, vis)
    # slots over the union 1 2 3 4 10 11: a missing frame keeps its slot, later pairs stay aligned
    assert p.ir_slots == (0, 1, 2, 3, 4) and p.vis_slots == (0, 1, 3, 4, 5) and p.n_slots == 6
    assert p.only_ir == ("3",) and p.only_vis == ("11",)
    assert pair_by_stem(["/x/a.png"], ["/y/b.png"]).ir_slots == (0,)  # two single images pair anyway
    with pytest.raises(UserError, match="no file name in common"):
        pair_by_stem(["/a/ir_1.png", "/a/ir_2.png"], ["/b/vis_1.png", "/b/vis_2.png"])
    with pytest.raises(UserError, match="same name '1'"):
        pair_by_stem(["/a/1.png", "/a/1.jpg"], ["/b/1.png"])


@pytest.mark.parametrize("fps,gop", [(9, 9), (30, 30), (15, 15), (7.5, 8), (29.97, 30), (0.5, 1)])
def test_stream_sinks_use_the_real_rate_and_a_key_frame_a_second(fps, gop):
    """UDP/RTSP/display launch strings carry the output rate they are built with (the pipeline
    builds them with the real rate once the sources are open), and a key frame about every second."""
    rate = rate_fraction(fps)
    u = launch.udp_sink_launch("10.0.0.9", 5000, 478, 270, fps, "x264enc")
    assert f"framerate={rate} !" in u and f"key-int-max={gop} " in u
    assert u.endswith("rtph264pay config-interval=1 pt=96 ! udpsink host=10.0.0.9 port=5000 sync=false async=false")
    r = launch.rtsp_sink_launch("rtsp://srv:8554/f", 322, 240, fps, "openh264enc")
    assert f"framerate={rate} !" in r and f"gop-size={gop} " in r and r.endswith("rtspclientsink location=rtsp://srv:8554/f")
    j = launch.encoder_chain("nvv4l2h264enc", width=1280, height=720, fps=fps)
    assert f"iframeinterval={gop} idrinterval={gop} " in j
    d = launch.display_sink_launch(478, 270, fps)
    assert d.startswith(f"appsrc name=src ") and f"caps=video/x-raw,format=BGR,width=478,height=270,framerate={rate}" in d
    assert launch.keyframe_interval(fps) == gop


def test_segment_launch():
    pat = launch.segment_pattern("/rec/cam 1/out.mp4")
    assert pat == "/rec/cam 1/out_%05d.partial.mp4"
    assert launch.segment_pattern("/r/100%.mkv") == "/r/100%%_%05d.partial.mkv"
    s = launch.file_sink_launch(pat, 640, 480, 10, "x264enc", segment_s=60, start_index=7)
    assert gst.launch_elements(s) == ["appsrc", "videoconvert", "x264enc", "h264parse", "splitmuxsink"]
    assert ('splitmuxsink name=mux location="/rec/cam 1/out_%05d.partial.mp4" max-size-time=60000000000 '
            'send-keyframe-requests=true start-index=7 async-finalize=true muxer-factory=mp4mux '
            'muxer-properties="properties,fragment-duration=1000" sink-factory=filesink '
            'sink-properties="properties,buffer-mode=2"') in s
    m = launch.file_sink_launch(launch.segment_pattern("o.mkv"), 64, 48, 30, "x264enc", segment_s=5)
    assert "muxer-factory=matroskamux sink-factory=filesink" in m and "muxer-properties" not in m


def test_display_sink_is_chosen_explicitly():
    """Never autovideosink (it can fall through to kmssink and crash): the window sinks to try,
    best first, from the environment; MOEFUSION_DISPLAY_SINK forces one."""
    c = launch.display_sink_candidates
    assert c(x11=True, wayland=False, jetson=False) == ["xvimagesink", "glimagesink", "ximagesink"]
    assert c(x11=False, wayland=True, jetson=False) == ["waylandsink", "glimagesink"]
    assert c(x11=True, wayland=True, jetson=False) == ["waylandsink", "glimagesink", "xvimagesink", "ximagesink"]
    assert c(x11=True, wayland=False, jetson=True)[0] == "nv3dsink"
    assert c(x11=True, wayland=False, jetson=False, forced="ximagesink") == ["ximagesink"]
    assert c(x11=False, wayland=False, jetson=False) == []
    d = launch.display_sink_launch(322, 240, 15, "glimagesink", "I420")
    assert d.endswith("! videoconvert ! glimagesink sync=false") and "autovideosink" not in d
    assert "caps=video/x-raw,format=I420,colorimetry=bt601,width=322,height=240,framerate=15/1" in d
    assert gst.ELEMENT_PACKAGES["xvimagesink"] == "gstreamer1.0-x" and gst.ELEMENT_PACKAGES["glimagesink"] == "gstreamer1.0-gl"


def test_i420_fast_path_caps():
    """A colour VIS stream can be delivered as I420 in BT.601 limited range (the fast path); IR
    and gray VIS never are."""
    from moefusion.runtime.uri import StreamOptions, parse_input_uri

    v = gst.source_launch(parse_input_uri("clip.mp4"), StreamOptions(), "vis", yuv=True)
    assert v.endswith("videoconvert ! video/x-raw,format=I420,colorimetry=bt601 ! appsink name=sink max-buffers=4 "
                      "drop=false sync=false enable-last-sample=false")
    assert "format=GRAY8 !" in gst.source_launch(parse_input_uri("clip.mp4"), StreamOptions(), "ir", yuv=True)
    assert "format=GRAY8 !" in gst.source_launch(parse_input_uri("clip.mp4"), StreamOptions(format="GRAY8"), "vis", yuv=True)
    assert "format=BGR !" in gst.source_launch(parse_input_uri("clip.mp4"), StreamOptions(), "vis")
    csi = gst.source_launch(parse_input_uri("csi://0"), StreamOptions(), "vis", yuv=True)
    assert "nvvidconv flip-method=0 ! video/x-raw,format=I420 ! videoconvert ! video/x-raw,format=I420,colorimetry=bt601" in csi
    f = launch.file_sink_launch("o.mp4", 640, 480, 30, "x264enc", fmt="I420")
    assert "caps=video/x-raw,format=I420,colorimetry=bt601,width=640,height=480,framerate=30/1 ! videoconvert ! " \
           "video/x-raw,format=I420 ! x264enc" in f
