"""The ``moefusion`` GStreamer element (moefusion/runtime/gstplugin/python/gstmoefusion.py, its work in
moefusion/runtime/element.py): gst-launch-1.0 fuses the real M3SVD clip like ``moefusion.load().fuse``,
pairs by running time, refuses bad properties and caps with a clear message, and gst-inspect-1.0
lists its pads and properties. The gst-launch tests need gst-python's plugin loader (Debian:
gstreamer1.0-python3-plugin-loader, installed by scripts/install.sh) and skip with that reason
without it; the pure functions are tested without GStreamer."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from moefusion.errors import UserError
from moefusion.runtime import element as el
from moefusion.runtime.rawframes import FULL_TO_LIMITED_C, FULL_TO_LIMITED_Y, LIMITED_TO_FULL, Layout, read_frame
from moefusion.runtime.yuv import I420Frame

ROOT = Path(__file__).resolve().parents[1]
DEMO_IR = ROOT / "samples" / "demo" / "m3svd_0117_1620_ir.mp4"
DEMO_VIS = ROOT / "samples" / "demo" / "m3svd_0117_1620_vis.mp4"
SIZE = (160, 120)  # the clip (640x480) scaled in the pipeline: the edge model takes ~4 s a frame at 640x480 here
COMPRESSED = 16  # frames taken from each file (counted before the decoder: identity eos-after behind it is not exact)


def _loader_missing() -> str:
    if shutil.which("gst-launch-1.0") is None or shutil.which("gst-inspect-1.0") is None:
        return "gst-launch-1.0 / gst-inspect-1.0 not installed (gstreamer1.0-tools)"
    r = subprocess.run(["gst-inspect-1.0", "python"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return ("gst-python's plugin loader is not installed (apt-get install gstreamer1.0-python3-plugin-loader; "
                "scripts/install.sh does it)")
    return ""


_MISSING = _loader_missing()
needs_loader = pytest.mark.skipif(bool(_MISSING), reason=_MISSING)


def gst_test(fn):
    return pytest.mark.gstreamer(needs_loader(fn))


@pytest.fixture(scope="module")
def gst_env(tmp_path_factory):
    """GST_PLUGIN_PATH at the element; a registry of this module's own (scanned once)."""
    env = dict(os.environ)
    env["GST_PLUGIN_PATH"] = el.PLUGIN_PATH
    env["GST_REGISTRY"] = str(tmp_path_factory.mktemp("gst") / "registry.bin")
    env.pop("GST_PLUGIN_PATH_1_0", None)
    return env


def launch(env, pipeline: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(["gst-launch-1.0", "-q", *pipeline.split()], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _source(path: Path, n: int = COMPRESSED, size=SIZE) -> str:
    return (f"filesrc location={path} ! qtdemux ! identity eos-after={n} ! decodebin ! videoscale ! "
            f"video/x-raw,width={size[0]},height={size[1]}")


def _decoded(path: Path, n: int = COMPRESSED, size=SIZE) -> list[np.ndarray]:
    """The frames the element is given (the same launch string up to it), as BGR."""
    from moefusion.runtime import gst as gstmod

    Gst = gstmod.import_gst()
    pipe = Gst.parse_launch(f"{_source(path, n, size)} ! videoconvert ! video/x-raw,format=I420 ! "
                            "appsink name=s sync=false")
    sink = pipe.get_by_name("s")
    pipe.set_state(Gst.State.PLAYING)
    frames = []
    w, h = size
    try:
        while True:
            sample = sink.emit("pull-sample")
            if sample is None:
                break
            buf = sample.get_buffer()
            ok, mi = buf.map(Gst.MapFlags.READ)
            assert ok
            i420 = np.frombuffer(mi.data, np.uint8, count=w * h * 3 // 2).reshape(h * 3 // 2, w).copy()
            buf.unmap(mi)
            frames.append(cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420))
    finally:
        pipe.set_state(Gst.State.NULL)
    return frames


def _read_video(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            return frames
        frames.append(f)


def _clean(r: subprocess.CompletedProcess) -> str:
    return "\n".join(line for line in (r.stdout + r.stderr).splitlines() if "should be floating" not in line)


# -- gst-launch-1.0 and gst-inspect-1.0 ---------------------------------------------------------
@gst_test
def test_gst_inspect_lists_the_pads_and_properties(gst_env):
    r = subprocess.run(["gst-inspect-1.0", "moefusion"], capture_output=True, text=True, env=gst_env, timeout=120)
    out = r.stdout
    assert r.returncode == 0, _clean(r)
    for pad in ("SINK: 'ir'", "SINK: 'vis'", "SRC: 'src'"):
        assert pad in out
    assert "GstAggregator" in out
    for prop in ("model", "backend", "device", "registration", "stream-mode", "view", "model-fit", "sync-tolerance",
                 "sync-offset", "latency"):
        assert f"\n  {prop} " in out.replace(f"{prop}:", f"{prop} :"), prop
    for fmt in ("GRAY8", "GRAY16_LE", "I420", "NV12", "BGR", "BGRx"):
        assert f"(string){fmt}," in out or f"(string){fmt} " in out, fmt


@gst_test
@pytest.mark.slow
def test_fuses_the_m3svd_clip_like_load_fuse(gst_env, tmp_path):
    """The acceptance run: decoded files into f.ir / f.vis, stream-mode=false, H.264 in MP4; every
    frame within 3 grey levels (mean) of moefusion.load().fuse on the same pair, and nearer to its
    own pair than to the next one (the pairing is exact)."""
    import moefusion

    out = tmp_path / "fused.mp4"
    r = launch(gst_env, f"moefusion name=f stream-mode=false ! videoconvert ! x264enc ! mp4mux ! filesink location={out} "
                        f"{_source(DEMO_IR)} ! f.ir {_source(DEMO_VIS)} ! f.vis")
    assert r.returncode == 0, _clean(r)
    got = _read_video(out)
    ir, vis = _decoded(DEMO_IR), _decoded(DEMO_VIS)
    assert len(ir) == len(vis) >= COMPRESSED - 2 and len(got) == len(ir)
    model = moefusion.load()
    ref = [model.fuse(cv2.cvtColor(a, cv2.COLOR_BGR2GRAY), b) for a, b in zip(ir, vis)]

    def gray_diff(a, b):
        return float(np.abs(cv2.cvtColor(a, cv2.COLOR_BGR2GRAY).astype(np.int16) -
                            cv2.cvtColor(b, cv2.COLOR_BGR2GRAY).astype(np.int16)).mean())

    same = [gray_diff(g, f) for g, f in zip(got, ref)]
    shifted = [gray_diff(g, f) for g, f in zip(got, ref[1:])]
    assert max(same) <= 3.0, same
    assert np.mean(same) < np.mean(shifted) / 2, (same, shifted)


@gst_test
def test_pairs_by_running_time_and_averages(gst_env, tmp_path):
    """A 9 Hz IR stream (GRAY16_LE) and a 30 Hz VIS stream (GRAY8): 9 pairs, each IR frame with the
    VIS frame nearest in running time; the average backend gives the mean of the two."""
    out = tmp_path / "out.raw"
    w, h = 64, 48
    r = launch(gst_env, f"moefusion name=f backend=average ! video/x-raw,format=BGR ! filesink location={out} "
                        f"videotestsrc num-buffers=9 pattern=white ! video/x-raw,format=GRAY8,width={w},height={h},"
                        f"framerate=9/1 ! f.ir videotestsrc num-buffers=30 pattern=black ! video/x-raw,format=GRAY8,"
                        f"width={w},height={h},framerate=30/1 ! f.vis")
    assert r.returncode == 0, _clean(r)
    frames = np.fromfile(out, np.uint8).reshape(-1, h, w * 3)  # BGR rows of 192 bytes: no padding
    assert len(frames) == 9
    assert np.abs(frames.astype(int) - 126).max() <= 1  # videotestsrc's GRAY8 white is 235, black 16


@gst_test
@pytest.mark.parametrize("prop, message", [
    ("view=bogus", "moefusion: view='bogus' is not valid; use one of fused, side-by-side, grid"),
    ("backend=nope", "moefusion: backend='nope' is not valid; use one of auto, torch, onnxruntime"),
    ("model=/no/such/weights.pt", "moefusion: model=/no/such/weights.pt: no such file"),
    ("sync-tolerance=0", "moefusion: sync-tolerance=0 is out of range"),
])
def test_a_bad_property_value_is_a_clear_error(gst_env, prop, message):
    src = "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=48"
    r = launch(gst_env, f"moefusion name=f {prop} ! fakesink {src} ! f.ir {src} ! f.vis", timeout=120)
    text = _clean(r)
    assert r.returncode != 0
    assert message in text, text
    assert "Traceback" not in text


@gst_test
def test_caps_that_cannot_be_fused_are_a_clear_error(gst_env):
    r = launch(gst_env, "moefusion name=f backend=average ! fakesink videotestsrc num-buffers=2 ! "
                        "video/x-raw,format=YUY2,width=64,height=48 ! f.ir "
                        "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=48 ! f.vis", timeout=120)
    text = _clean(r)
    assert r.returncode != 0
    assert "moefusion: the ir pad cannot take YUY2 frames" in text and "put videoconvert before it" in text, text
    assert "Traceback" not in text


# -- the element's work without GStreamer ---------------------------------------------------------
def _layout(fmt, w, h, planes, size):
    return Layout(fmt, w, h, tuple(planes), size)


def test_read_frame_takes_every_input_format_with_strides():
    rng = np.random.default_rng(0)
    w, h = 6, 4
    y = rng.integers(0, 256, (h, w), dtype=np.uint8)
    u, v = (rng.integers(0, 256, (h // 2, w // 2), dtype=np.uint8) for _ in range(2))
    # NV12, rows padded to 8 bytes: Y, then interleaved UV
    data = np.zeros(8 * h + 8 * h // 2, np.uint8)
    data[: 8 * h].reshape(h, 8)[:, :w] = y
    uv = data[8 * h:].reshape(h // 2, 8)[:, :w].reshape(h // 2, w // 2, 2)
    uv[..., 0], uv[..., 1] = u, v
    nv12 = _layout("NV12", w, h, [(0, 8), (8 * h, 8)], data.size)
    img, own = read_frame(data.data, nv12)
    assert isinstance(img, I420Frame) and own is img.data
    np.testing.assert_array_equal(img.y, y)
    np.testing.assert_array_equal(img.u, u)
    np.testing.assert_array_equal(img.v, v)
    gray, _ = read_frame(data.data, nv12, gray=True, lut=LIMITED_TO_FULL)  # the IR pad: its luma, full range
    np.testing.assert_array_equal(gray, LIMITED_TO_FULL[y])
    full, _ = read_frame(data.data, nv12, lut=FULL_TO_LIMITED_Y, chroma_lut=FULL_TO_LIMITED_C)
    np.testing.assert_array_equal(full.y, FULL_TO_LIMITED_Y[y])
    np.testing.assert_array_equal(full.v, FULL_TO_LIMITED_C[v])
    # BGRx, rows of 28 bytes
    bgrx = rng.integers(0, 256, (h, 28), dtype=np.uint8)
    lay = _layout("BGRx", w, h, [(0, 28)], bgrx.size)
    img, _ = read_frame(bgrx.data, lay)
    np.testing.assert_array_equal(img, bgrx[:, :24].reshape(h, w, 4)[:, :, :3])
    gray, _ = read_frame(bgrx.data, lay, gray=True)
    np.testing.assert_array_equal(gray, cv2.cvtColor(np.ascontiguousarray(bgrx[:, :24].reshape(h, w, 4)),
                                                     cv2.COLOR_BGRA2GRAY))
    # GRAY16_LE, rows of 16 bytes
    g16 = rng.integers(0, 65536, (h, 8), dtype=np.uint16)
    img, _ = read_frame(g16.view(np.uint8).data, _layout("GRAY16_LE", w, h, [(0, 16)], g16.nbytes))
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(img, g16[:, :w])


def test_input_formats_refuse_what_cannot_be_fused_and_keep_the_fast_path():
    lay = _layout("I420", 64, 48, [(0, 64), (3072, 32), (3840, 32)], 4608)
    ir = el.input_format("ir", lay, limited=True)
    assert ir.gray and ir.lut is LIMITED_TO_FULL
    assert el.input_format("ir", lay, limited=False).lut is None
    vis = el.input_format("vis", lay, limited=True, colorimetry="bt709")
    assert not vis.gray and vis.lut is None and vis.colorimetry == "bt709"  # the I420 fast path, untouched
    mjpg = el.input_format("vis", lay, limited=False)
    assert mjpg.lut is FULL_TO_LIMITED_Y and mjpg.chroma_lut is FULL_TO_LIMITED_C
    with pytest.raises(UserError, match="cannot take YUY2 frames.*put videoconvert before it"):
        el.input_format("ir", _layout("YUY2", 64, 48, [(0, 128)], 6144), limited=True)


def test_output_format_follows_the_picture_unless_downstream_takes_only_the_other():
    i420 = I420Frame.from_bgr(np.zeros((4, 6, 3), np.uint8))
    bgr = np.zeros((5, 7, 3), np.uint8)
    assert el.choose_output_format(i420, ["I420", "BGR"]) == "I420"
    assert el.choose_output_format(bgr, ["I420", "BGR"]) == "BGR"
    assert el.choose_output_format(bgr, ["I420"]) == "I420"  # x264enc
    assert el.to_output(bgr, "I420").shape == (4, 6, 3)  # 4:2:0: even sizes
    out = el.Output(el.to_output(i420, "I420"), "I420", 0, 33_333_333, "bt709")
    assert el.output_caps(out, 30.0) == ("video/x-raw,format=I420,width=6,height=4,framerate=30/1,"
                                         "pixel-aspect-ratio=1/1,colorimetry=bt709")
    assert "framerate=30000/1001" in el.output_caps(out, 30000 / 1001)


def test_settings_and_messages_speak_in_properties():
    el.Settings().check()
    for kw, match in [({"view": "mosaic"}, "view='mosaic' is not valid"), ({"device": "tpu"}, "device='tpu'"),
                      ({"model_fit": "crop"}, "model-fit='crop'"), ({"sync_offset_ms": float("nan")}, "sync-offset"),
                      ({"registration": "/no/rig.yaml"}, "registration=/no/rig.yaml: no such file")]:
        with pytest.raises(UserError, match=match):
            el.Settings(**kw).check()
    el.Settings(backend="ONNX").check()  # the CLI's aliases, any case
    assert el.property_message("--backend tensorrt needs an engine file (--model X.engine)") == \
        "backend=tensorrt needs an engine file (model=X.engine)"
    assert el.property_message("and no --registration is given") == "and no registration is given"
    assert el.property_message("off (--no-stream-mode)") == "off (stream-mode=false)"
