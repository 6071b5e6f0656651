"""run_pipeline end to end on real pipelines: the TNO sequences (../shared/data), files at
different rates, live test sources at 9 and 30 Hz, SIGINT mid-run, a source that ends
mid-stream and is reconnected, the demo, and the one-line user errors."""
from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from moefusion.runtime import gst as gstmod
from moefusion.runtime.cli import main

ROOT = Path(__file__).resolve().parents[1]
needs_gst = [pytest.mark.gstreamer,
             pytest.mark.skipif(not gstmod.have_gst(), reason=f"GStreamer/PyGObject not available: {gstmod.gst_reason()}")]


def gst_test(fn):
    for m in needs_gst:
        fn = m(fn)
    return fn


def run(argv, tmp_path):
    """main() in-process; returns (exit code, stats dict)."""
    sj = tmp_path / f"stats_{len(list(tmp_path.iterdir()))}.json"
    rc = main(list(argv) + ["--stats-json", str(sj), "--stats-interval", "0", "--log-level", "warning"])
    return rc, (json.loads(sj.read_text()) if sj.exists() else None)


def read_video(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot open {path}"
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return out
        out.append(f)


def write_clip(path, n, fps, size=(64, 48)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(n):
        img = np.full((size[1], size[0], 3), 30 + 6 * i, np.uint8)
        cv2.circle(img, (4 + 2 * i, size[1] // 2), 5, (255, 255, 255), -1)
        w.write(img)
    w.release()


def test_tno_sequences_end_to_end(shared_data, tmp_path):
    seq = shared_data("tno_seq_nato_camp")
    n = len(list((seq / "ir").glob("*.bmp")))
    out = tmp_path / "fused.mp4"
    rc, st = run(["--ir", str(seq / "ir"), "--vis", str(seq / "vis"), "--output", str(out), "--backend", "average"],
                 tmp_path)
    assert rc == 0 and st["ok"] and st["output_file"] == str(out)
    frames = read_video(out)
    assert len(frames) == n == st["frames_out"] == st["pairs"] == 32
    assert frames[0].shape == (270, 360, 3)
    assert st["drops_total"] == 0 and st["frames_in"] == {"ir": n, "vis": n}
    assert st["skew_ms"]["abs"]["max"] == 0.0  # lockstep: same timestamps
    lat = st["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"] < 10_000
    assert st["fps"] > 1 and st["mode"].startswith("files")
    # the output is the fusion of the real frames: the average of IR and VIS luminance
    ir0 = cv2.imread(str(sorted((seq / "ir").glob("*.bmp"))[0]), cv2.IMREAD_GRAYSCALE).astype(float)
    vis0 = cv2.imread(str(sorted((seq / "vis").glob("*.bmp"))[0]), cv2.IMREAD_GRAYSCALE).astype(float)
    assert np.abs(frames[0][:, :, 1].astype(float) - (ir0 + vis0) / 2).mean() < 3.0  # H.264 is lossy


def test_tno_grid_view_with_registration(shared_data, tmp_path):
    seq = shared_data("tno_seq_tree")
    reg = tmp_path / "reg.yaml"
    reg.write_text("H: [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\nir_size: [360, 270]\nvis_size: [360, 270]\n")
    out = tmp_path / "grid.mkv"
    rc, st = run(["--ir", f"file://{seq / 'ir'}", "--vis", str(seq / "vis" / "*.bmp"), "--output", str(out),
                  "--backend", "average", "--view", "grid", "--overlay", "--registration", str(reg)], tmp_path)
    assert rc == 0
    frames = read_video(out)
    assert len(frames) == 19 and frames[0].shape[0] % 2 == 0 and frames[0].shape[0] > 500


@gst_test
def test_files_at_different_rates_pair_by_time_and_reproducibly(tmp_path):
    write_clip(tmp_path / "ir.mp4", 10, 10.0)  # a 10 Hz thermal clip
    write_clip(tmp_path / "vis.mp4", 20, 20.0)  # a 20 Hz visible clip over the same second
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}.mp4"
        rc, st = run(["--ir", str(tmp_path / "ir.mp4"), "--vis", str(tmp_path / "vis.mp4"), "--output", str(out),
                      "--backend", "average"], tmp_path)
        assert rc == 0 and st["pairs"] == 10 and st["frames_out"] == 10
        # the VIS frames between IR frames have no partner: dropped and counted, nothing else dropped
        # (how many VIS frames past the end of the IR clip were read before the run stopped varies)
        assert st["drops"].get("unpaired_vis", 0) >= 9 and set(st["drops"]) <= {"unpaired_vis"}
        assert st["frames_in"]["vis"] == st["pairs"] + st["drops"]["unpaired_vis"]
        outs.append(read_video(out))
    assert len(outs[0]) == len(outs[1]) == 10
    assert all(np.array_equal(a, b) for a, b in zip(*outs))


@gst_test
def test_live_9hz_thermal_and_30hz_rgb(tmp_path):
    rc, st = run(["--ir", "test://ball", "--ir-rate", "9", "--ir-width", "64", "--ir-height", "48",
                  "--vis", "test://smpte", "--vis-rate", "30", "--vis-width", "80", "--vis-height", "60",
                  "--output", "none", "--backend", "average", "--max-frames", "12", "--sync-tolerance", "20"], tmp_path)
    assert rc == 0 and st["frames_out"] == 12 and st["mode"] == "live"
    assert st["drops"].get("unpaired_vis", 0) >= 12  # about 2 VIS frames in 3 have no IR partner
    assert st["drops"].get("unpaired_ir", 0) <= 1
    assert st["skew_ms"]["abs"]["p95"] <= 1000 / 30 / 2 + 5  # nearest VIS frame: within half a period
    assert 6 < st["fps"] < 12  # paced by the 9 Hz camera


@gst_test
def test_live_source_that_ends_is_reconnected_and_the_run_continues(tmp_path):
    rc, st = run(["--ir", "test://ball?num-buffers=15", "--ir-width", "48", "--ir-height", "32",
                  "--vis", "test://smpte", "--vis-width", "48", "--vis-height", "32",
                  "--output", str(tmp_path / "o.mp4"), "--backend", "average", "--max-frames", "40"], tmp_path)
    assert rc == 0 and st["frames_out"] == 40 and st["ok"]
    assert st["reconnects"]["ir"] >= 2 and st["reconnects"]["vis"] == 0
    assert len(read_video(tmp_path / "o.mp4")) == 40


@gst_test
def test_live_source_gone_for_good_fails_with_one_line(tmp_path, capsys):
    rc, st = run(["--ir", "test://ball?num-buffers=5", "--vis", "test://smpte", "--ir-width", "32", "--ir-height", "24",
                  "--vis-width", "32", "--vis-height", "24", "--output", "none", "--backend", "average",
                  "--reconnect-timeout", "0"], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and not st["ok"] and err[-1].startswith("error: IR source test://ball?num-buffers=5 (--ir)")
    assert "Traceback" not in "\n".join(err)


@gst_test
def test_file_paired_with_live_camera_is_paced_and_ends_the_run(tmp_path):
    write_clip(tmp_path / "vis.mp4", 12, 30.0)
    rc, st = run(["--ir", "test://ball", "--ir-width", "64", "--ir-height", "48", "--vis", str(tmp_path / "vis.mp4"),
                  "--output", "none", "--backend", "average"], tmp_path)
    assert rc == 0 and st["stop_reason"] == "end of input"
    assert 8 <= st["frames_out"] <= 12 and st["duration_s"] >= 0.3  # played at 30 Hz, not as fast as possible


@gst_test
def test_sigint_mid_run_leaves_a_playable_file(tmp_path):
    out, sj = tmp_path / "live.mp4", tmp_path / "stats.json"
    cmd = [sys.executable, "-m", "moefusion.runtime.cli", "--ir", "test://ball", "--vis", "test://smpte",
           "--ir-width", "160", "--ir-height", "120", "--vis-width", "160", "--vis-height", "120",
           "--backend", "average", "--output", str(out), "--stats-json", str(sj), "--stats-interval", "0"]
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "live.partial.mp4"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size > 2000):
        time.sleep(0.1)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=30)
    assert p.returncode == 0, stderr
    assert out.exists() and not partial.exists()
    st = json.loads(sj.read_text())
    assert st["stop_reason"] == "SIGINT" and st["frames_out"] >= 10
    frames = read_video(out)
    assert len(frames) == st["frames_out"] and frames[0].shape == (120, 160, 3)
    assert "Traceback" not in stderr


@gst_test
def test_demo_runs_without_a_camera(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc = main(["--demo", "--max-frames", "3", "--stats-interval", "0", "--log-level", "warning"])
    assert rc == 0
    st = json.loads((tmp_path / "out" / "run_pipeline_demo.json").read_text())
    assert st["frames_out"] == 3 and st["registration"].endswith("registration.yaml") and st["view"] == "grid"
    frames = read_video(tmp_path / "out" / "run_pipeline_demo.mp4")
    assert len(frames) == 3


# -- user errors: one line naming the flag/device/element and the fix, exit 2, no traceback --------

IR_CLIP, VIS_CLIP = str(ROOT / "samples" / "demo" / "ir.mp4"), str(ROOT / "samples" / "demo" / "vis.mp4")
USER_ERRORS = [
    (["--ir", "foo://x", "--vis", VIS_CLIP], "unknown URI scheme 'foo://'"),
    (["--ir", "/dev/video97", "--vis", VIS_CLIP], "no such device /dev/video97"),
    (["--ir", IR_CLIP, "--vis", "csi://0"], "nvarguscamerasrc"),
    (["--ir", IR_CLIP, "--vis", VIS_CLIP, "--ir-format", "H265"], "--ir-format"),
    (["--ir", IR_CLIP, "--vis", VIS_CLIP, "--registration", "/no/reg.yaml"], "--registration /no/reg.yaml"),
    (["--ir", IR_CLIP, "--vis", VIS_CLIP, "--model", "/no/model.onnx", "--backend", "auto"], "--model /no/model.onnx"),
    (["--ir", IR_CLIP, "--vis", VIS_CLIP, "--output", "out.gif"], "--output out.gif"),
    (["--ir", "/no/such/clip.mp4", "--vis", VIS_CLIP], "no such file /no/such/clip.mp4"),
    (["--ir", "/dev/video0", "--vis", "v4l2:///dev/video0"], "same device"),
    (["--vis", VIS_CLIP], "--ir is missing"),
]


@pytest.mark.parametrize("argv,needle", USER_ERRORS)
def test_user_errors_are_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    if "csi://0" in argv and not gstmod.have_gst():
        pytest.skip("needs GStreamer to name the missing element")
    monkeypatch.chdir(tmp_path)
    rc = main(argv + ["--output" if "--output" not in argv else "--log-level", "none" if "--output" not in argv else "error",
                      "--backend" if "--backend" not in argv else "--log-level", "average" if "--backend" not in argv else "error"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err[-1].startswith("error: ") and needle in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not list(tmp_path.glob("*.mp4"))  # nothing written


def test_no_output_and_no_display(capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["--ir", IR_CLIP, "--vis", VIS_CLIP]) == 2
    assert "no display" in capsys.readouterr().err


def test_console_script_user_error_exit_code(tmp_path):
    exe = Path(sys.executable).parent / "run_pipeline"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moefusion.runtime.cli"]
    r = subprocess.run(cmd + ["--ir", "bogus://cam", "--vis", "/dev/video0", "--output", "none"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --ir bogus://cam")
    assert "Traceback" not in r.stderr


@gst_test
@pytest.mark.slow
def test_pipeline_with_the_real_moefusion_model_on_cpu(tmp_path):
    """The torch backend running MoEFusion (the edge preset, untrained: this checks the plumbing,
    not the fusion quality) through the whole loop."""
    torch = pytest.importorskip("torch")  # noqa: F841
    import moefusion
    from moefusion.runtime.backends import TorchBackend
    from moefusion.runtime.pipeline import Pipeline, PipelineConfig
    from moefusion.runtime.uri import parse_input_uri, parse_output_uri

    cfg = PipelineConfig(ir=parse_input_uri("test://ball?num-buffers=3&is-live=false"),
                         vis=parse_input_uri("test://smpte?is-live=false&num-buffers=3"),
                         outputs=[parse_output_uri(str(tmp_path / "m.mp4"))], view="grid", stats_interval=0)
    from moefusion.runtime.uri import StreamOptions

    cfg.ir_opts = StreamOptions(width=64, height=48)
    cfg.vis_opts = StreamOptions(width=64, height=48)
    backend = TorchBackend(model=moefusion.build_model("edge"), device="cpu")
    st = Pipeline(cfg, backend, backend_reason="test").run()
    assert st["ok"] and st["frames_out"] == 3 and st["backend"] == "torch"
    frames = read_video(tmp_path / "m.mp4")
    assert len(frames) == 3 and frames[0].shape == (96, 128, 3)


def test_without_gstreamer_opencv_takes_over(tmp_path, monkeypatch, capsys):
    """No GStreamer/PyGObject: files are read and written with OpenCV, said once, same results."""
    from moefusion.runtime import capture as capmod
    from moefusion.runtime import sinks as sinkmod

    monkeypatch.setenv("MOEFUSION_NO_GST", "1")
    monkeypatch.setattr(gstmod, "_GST", None)
    monkeypatch.setattr(capmod, "_FALLBACK_SAID", False)
    monkeypatch.setattr(sinkmod, "_SAID_OPENCV", False)
    demo = ROOT / "samples" / "demo"
    out = tmp_path / "cv.mp4"
    rc, st = run(["--ir", str(demo / "ir.mp4"), "--vis", str(demo / "vis.mp4"), "--registration",
                  str(demo / "registration.yaml"), "--output", str(out), "--backend", "average"], tmp_path)
    assert rc == 0 and st["frames_out"] == 60 and st["drops_total"] == 0
    assert len(read_video(out)) == 60
    err = capsys.readouterr().err
    assert err.count("using OpenCV capture") == 1 and err.count("OpenCV's mp4v writer") == 1


# -- image folders: pairing by file name, pacing beside a live source, runs without output ---------

def copy_tno(shared_data, tmp_path, name="tno_seq_nato_camp", n=None, drop_vis=()):
    """Real TNO frames copied into tmp folders (the shared data is never modified)."""
    import shutil

    seq = shared_data(name)
    stems = sorted(p.stem for p in (seq / "ir").glob("*.bmp"))[:n]
    for role in ("ir", "vis"):
        (tmp_path / role).mkdir()
        for s in stems:
            if not (role == "vis" and s in drop_vis):
                shutil.copy(seq / role / f"{s}.bmp", tmp_path / role / f"{s}.bmp")
    return stems


def gray(path):
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float64)


def test_image_folders_pair_by_file_name_with_a_missing_vis_frame(shared_data, tmp_path, capsys):
    stems = copy_tno(shared_data, tmp_path, drop_vis=("1805",))
    assert "1805" in stems and len(stems) == 32
    out = tmp_path / "fused.mkv"
    rc, st = run(["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vis"), "--output", str(out),
                  "--backend", "average", "--log-level", "warning"], tmp_path)
    err = capsys.readouterr().err
    assert rc == 0 and st["ok"]
    assert st["pairs"] == st["frames_out"] == 31 and st["drops"] == {"unpaired_ir": 1}
    assert st["image_pairing"] == {"by": "file name", "only_ir": 1, "only_vis": 0}
    assert "1 IR image(s) have no VIS image of the same name (1805)" in err
    frames = read_video(out)
    assert len(frames) == 31
    seq = tmp_path
    paired = [s for s in stems if s != "1805"]
    right_total = wrong_total = 0.0
    for k, (f, s) in enumerate(zip(frames, paired)):
        i = stems.index(s)
        got = f[:, :, 1].astype(np.float64)
        right = np.abs(got - (gray(seq / "ir" / f"{s}.bmp") + gray(seq / "vis" / f"{s}.bmp")) / 2).mean()
        assert right < 3.0, (s, right)  # the fusion of IR s and VIS s (H.264 is lossy)
        if i > stems.index("1805"):
            # pairing by position would have fused IR s with the VIS frame after it
            nxt = stems[min(i + 1, len(stems) - 1)]
            wrong_total += np.abs(got - (gray(seq / "ir" / f"{s}.bmp") + gray(seq / "vis" / f"{nxt}.bmp")) / 2).mean()
            right_total += right
    assert right_total < 0.8 * wrong_total


def test_image_folders_without_common_names_are_a_user_error(shared_data, tmp_path, capsys):
    copy_tno(shared_data, tmp_path, n=3)
    for p in (tmp_path / "vis").iterdir():
        p.rename(p.with_name("vis_" + p.name))
    rc = main(["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vis"), "--output", "none",
               "--backend", "average", "--log-level", "error"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: --ir ") and "no file name in common" in err[-1]


@gst_test
def test_image_folder_with_a_live_source_is_paced_and_pairs(shared_data, tmp_path):
    stems = copy_tno(shared_data, tmp_path, n=10)
    out = tmp_path / "sbs.mkv"
    rc, st = run(["--ir", "test://ball", "--ir-width", "360", "--ir-height", "270", "--vis", str(tmp_path / "vis"),
                  "--vis-rate", "10", "--output", str(out), "--view", "side-by-side", "--backend", "average"], tmp_path)
    assert rc == 0 and st["ok"] and st["mode"] == "live" and st["stop_reason"] == "end of input"
    assert st["frames_out"] >= 8 and st["duration_s"] >= 0.8  # 10 images at 10 Hz, not as fast as possible
    frames = read_video(out)
    assert len(frames) == st["frames_out"]
    vis = [gray(tmp_path / "vis" / f"{s}.bmp") for s in stems]
    shown = []
    for f in frames:  # side-by-side: IR | VIS | fused; the VIS tile is one of the images, in order
        tile = f[:, 360:720, 1].astype(np.float64)
        errs = [np.abs(tile - v).mean() for v in vis]
        assert min(errs) < 3.0
        shown.append(int(np.argmin(errs)))
    assert shown == sorted(set(shown))  # each image once, in order


def test_realtime_paces_image_folders(shared_data, tmp_path):
    copy_tno(shared_data, tmp_path, n=10)
    args = ["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vis"), "--ir-rate", "10", "--output", "none",
            "--backend", "average"]
    rc, fast = run(args, tmp_path)
    rc2, paced = run(args + ["--realtime"], tmp_path)
    assert rc == rc2 == 0 and fast["frames_out"] == 10 and fast["drops_total"] == 0
    # paced, the run is live: a pair may be replaced if a stage stalls (counted), never delayed
    assert paced["mode"] == "live" and paced["frames_out"] >= 8 and paced["pairs"] >= 8
    assert paced["duration_s"] >= 0.85 and 6 < paced["fps"] < 14  # 10 Hz, not hundreds of FPS


@gst_test
def test_a_run_without_output_frames_exits_non_zero_with_the_reason(tmp_path, capsys):
    write_clip(tmp_path / "ir.mp4", 6, 10.0)
    write_clip(tmp_path / "vis.mp4", 6, 10.0)
    rc, st = run(["--ir", str(tmp_path / "ir.mp4"), "--vis", str(tmp_path / "vis.mp4"), "--output", "none",
                  "--backend", "average", "--sync-offset", "100000"], tmp_path)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and st["frames_out"] == 0 and not st["ok"]
    assert err[-1].startswith("error: no output frame: none of 6 IR and 6 VIS frames were within --sync-tolerance 25 ms")
    assert "Traceback" not in "\n".join(err)


def test_stats_json_to_stdout_is_json_only(shared_data, tmp_path):
    copy_tno(shared_data, tmp_path, n=3)
    r = subprocess.run([sys.executable, "-m", "moefusion.runtime.cli", "--ir", str(tmp_path / "ir"), "--vis",
                        str(tmp_path / "vis"), "--output", "none", "--backend", "average", "--stats-json", "-",
                        "--stats-interval", "0"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)  # nothing else on stdout
    assert st["frames_out"] == 3 and "frames: IR 3, VIS 3" in r.stderr


@gst_test
def test_stream_output_is_built_for_the_real_rate(tmp_path, capsys, caplog):
    """A 9 Hz thermal camera with a 30 Hz one: the UDP stream is encoded at 9 fps with a key frame
    every 9 frames (one a second), not at a 30 fps guessed before the cameras were open."""
    import socket

    # the sink's own log records (moefusion's loggers do not propagate to pytest's root handler,
    # and which stream their handler writes to depends on the tests before)
    sinks_log = logging.getLogger("moefusion.runtime")
    old_level = sinks_log.level
    sinks_log.addHandler(caplog.handler)
    sinks_log.setLevel(logging.INFO)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:  # bound, so the datagrams are accepted
            rx.bind(("127.0.0.1", 0))
            port = rx.getsockname()[1]
            rc = main(["--ir", "test://ball", "--ir-rate", "9", "--ir-width", "64", "--ir-height", "48",
                       "--vis", "test://smpte", "--vis-rate", "30", "--vis-width", "64", "--vis-height", "48",
                       "--output", f"udp://127.0.0.1:{port}", "--backend", "average", "--max-frames", "5",
                       "--stats-interval", "0", "--log-level", "info"])
    finally:
        sinks_log.removeHandler(caplog.handler)
        sinks_log.setLevel(old_level)
    err = capsys.readouterr().err
    assert rc == 0, err
    line = next(m for m in caplog.messages if "output pipeline:" in m)
    assert "framerate=9/1 " in line and "key-int-max=9 " in line and "udpsink" in line


# -- recordings that survive kill -9 -------------------------------------------------------------

LIVE_REC = ["--ir", "test://ball", "--vis", "test://smpte", "--ir-width", "160", "--ir-height", "120",
            "--vis-width", "160", "--vis-height", "120", "--ir-rate", "15", "--vis-rate", "15",
            "--backend", "average", "--view", "side-by-side", "--stats-interval", "0"]


def smpte_bgr(w=160, h=120):
    Gst = gstmod.import_gst()
    p = Gst.parse_launch(f"videotestsrc pattern=smpte num-buffers=1 ! video/x-raw,width={w},height={h} ! videoconvert ! "
                         "video/x-raw,format=BGR ! appsink name=sink")
    p.set_state(Gst.State.PLAYING)
    smp = p.get_by_name("sink").try_pull_sample(5 * Gst.SECOND)
    from tests.test_runtime_sinks import sample_to_bgr

    img = sample_to_bgr(Gst, smp)
    p.set_state(Gst.State.NULL)
    return img


def start_recording(tmp_path, out, *extra):
    cmd = [sys.executable, "-m", "moefusion.runtime.cli", *LIVE_REC, "--output", str(out), *extra]
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not pred():
        time.sleep(0.1)
    assert pred(), "timed out"


def check_recorded(frames, smpte):
    """Frames of the side-by-side view: the VIS tile is the SMPTE pattern (rows between the tile's
    label and the pattern's bottom band, whose right part is random noise)."""
    assert frames and frames[0].shape == (120, 480, 3)
    for f in frames:
        d = np.abs(f[24:88, 160:320].astype(np.int16) - smpte[24:88].astype(np.int16))
        assert d.mean() < 6.0, d.mean()


@gst_test
def test_kill_9_leaves_a_playable_recording_and_a_restart_keeps_it(tmp_path):
    out = tmp_path / "rec.mp4"
    partial = tmp_path / "rec.partial.mp4"
    p = start_recording(tmp_path, out)
    wait_for(lambda: partial.exists() and partial.stat().st_size > 2000)
    time.sleep(3.0)
    p.kill()  # SIGKILL: no EOS, no index written at the end
    p.communicate(timeout=30)
    assert p.returncode == -9 and not out.exists()
    frames = read_video(partial)  # fragmented MP4: plays up to the last complete fragment
    assert len(frames) >= 15, len(frames)
    check_recorded(frames, smpte_bgr())
    size = partial.stat().st_size
    # a restart does not overwrite the recording the kill left behind
    p = start_recording(tmp_path, out, "--max-frames", "5")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert partial.stat().st_size == size and len(read_video(partial)) == len(frames)
    assert "writing " + str(tmp_path / "rec.1.mp4") in err
    assert len(read_video(tmp_path / "rec.1.mp4")) == 5 and not out.exists()


@gst_test
def test_kill_9_with_segments_keeps_every_segment(tmp_path):
    out = tmp_path / "seg.mp4"
    p = start_recording(tmp_path, out, "--segment", "1")
    wait_for(lambda: len(list(tmp_path.glob("seg_[0-9][0-9][0-9][0-9][0-9].mp4"))) >= 3, timeout=60)
    p.kill()
    p.communicate(timeout=30)
    done = sorted(tmp_path.glob("seg_[0-9][0-9][0-9][0-9][0-9].mp4"))
    left = sorted(tmp_path.glob("seg_*.partial.mp4"))
    assert [f.name for f in done[:3]] == ["seg_00000.mp4", "seg_00001.mp4", "seg_00002.mp4"]
    assert 1 <= len(left) <= 2  # the segment being written (and one being closed, when the kill came then)
    smpte = smpte_bgr()
    for f in left:  # fragmented: a killed segment plays too, up to its last fragment (if it has one yet)
        cap = cv2.VideoCapture(str(f))
        if f.stat().st_size > 0 and cap.isOpened() and cap.read()[0]:
            check_recorded(read_video(f), smpte)
    for f in done:
        frames = read_video(f)
        assert 4 <= len(frames) <= 25, (f.name, len(frames))  # about one second at 15 Hz each
        check_recorded(frames, smpte)
    # the restart continues the numbering after the highest segment, partial or not
    highest = max(int(f.name[4:9]) for f in done + left)
    p = start_recording(tmp_path, out, "--segment", "1", "--max-frames", "5")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    new = tmp_path / f"seg_{highest + 1:05d}.mp4"
    assert len(read_video(new)) == 5


@gst_test
@pytest.mark.parametrize("ext", [".mkv", ".mp4"])
def test_truncated_input_warns_with_the_count(tmp_path, capsys, ext):
    Gst = gstmod.import_gst()
    full = tmp_path / f"full{ext}"
    mux = "matroskamux" if ext == ".mkv" else "mp4mux faststart=true"
    p = Gst.parse_launch(f"videotestsrc num-buffers=60 pattern=ball ! video/x-raw,width=96,height=64,framerate=15/1 ! "
                         f"videoconvert ! x264enc speed-preset=ultrafast key-int-max=15 ! h264parse ! {mux} ! "
                         f"filesink location={full}")
    p.set_state(Gst.State.PLAYING)
    assert p.get_bus().timed_pop_filtered(30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR).type == \
        Gst.MessageType.EOS
    p.set_state(Gst.State.NULL)
    cut = tmp_path / f"cut{ext}"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])  # a copy cut short (a full disk, an interrupted transfer)
    rc, st = run(["--ir", str(full), "--vis", str(full), "--output", "none", "--backend", "average"], tmp_path)
    assert rc == 0 and st["frames_out"] == 60 and st["warnings"] == []
    capsys.readouterr()
    rc, st = run(["--ir", str(full), "--vis", str(cut), "--output", "none", "--backend", "average"], tmp_path)
    err = capsys.readouterr().err
    n = st["frames_in"]["vis"]
    assert rc == 0 and 10 < n < 50 and st["frames_out"] == n
    assert st["warnings"] == [f"VIS source {cut} (--vis): ended after {n} of the 60 frames its header announces, "
                              f"{60 - n} missing (truncated or corrupt file?)"]
    assert st["warnings"][0] in err
