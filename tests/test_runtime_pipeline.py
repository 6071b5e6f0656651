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
from helpers import gst_test

from moefusion.runtime import gst as gstmod
from moefusion.runtime.cli import main

ROOT = Path(__file__).resolve().parents[1]


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


def camera_that_dies(monkeypatch):
    """A live test pattern with num-buffers stands for a camera that stops: its end of stream is
    taken as a failure, as a camera's is (a finite test stream otherwise ends the run)."""
    from moefusion.runtime.capture import GstCapture

    monkeypatch.setattr(GstCapture, "ends", property(lambda self: self.uri.is_finite))


@gst_test
def test_live_source_that_ends_is_reconnected_and_the_run_continues(tmp_path, monkeypatch):
    camera_that_dies(monkeypatch)
    rc, st = run(["--ir", "test://ball?num-buffers=15", "--ir-width", "48", "--ir-height", "32",
                  "--vis", "test://smpte", "--vis-width", "48", "--vis-height", "32",
                  "--output", str(tmp_path / "o.mp4"), "--backend", "average", "--max-frames", "40"], tmp_path)
    assert rc == 0 and st["frames_out"] == 40 and st["ok"]
    assert st["reconnects"]["ir"] >= 2 and st["reconnects"]["vis"] == 0
    assert len(read_video(tmp_path / "o.mp4")) == 40


@gst_test
def test_live_source_gone_for_good_fails_with_one_line(tmp_path, capsys, monkeypatch):
    camera_that_dies(monkeypatch)
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
@pytest.mark.slow
def test_demo_runs_without_a_camera(tmp_path, monkeypatch):
    """The demo as shipped: the real clips at 640x480 through the default weights (on a CPU: their cached
    ONNX export in ONNX Runtime, --backend auto)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc = main(["--demo", "--max-frames", "3", "--stats-interval", "0", "--log-level", "warning"])
    assert rc == 0
    st = json.loads((tmp_path / "out" / "run_pipeline_demo.json").read_text())
    assert st["frames_out"] == 3 and st["view"] == "grid" and st["backend"] == "onnxruntime"  # the default weights
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
    twin = tmp_path / f"twin{ext}"  # run_pipeline refuses the same file as IR and VIS
    twin.write_bytes(data)
    rc, st = run(["--ir", str(full), "--vis", str(twin), "--output", "none", "--backend", "average"], tmp_path)
    assert rc == 0 and st["frames_out"] == 60 and st["warnings"] == []
    capsys.readouterr()
    rc, st = run(["--ir", str(full), "--vis", str(cut), "--output", "none", "--backend", "average"], tmp_path)
    err = capsys.readouterr().err
    n = st["frames_in"]["vis"]
    assert rc == 0 and 10 < n < 50 and st["frames_out"] == n
    assert st["warnings"] == [f"VIS source {cut} (--vis): ended after {n} of the 60 frames its header announces, "
                              f"{60 - n} missing (truncated or corrupt file?)"]
    assert st["warnings"][0] in err


# -- fixed-size models: frames scaled to the model's input and back -------------------------------

@pytest.fixture(scope="module")
def edge_onnx_640x480(tmp_path_factory):
    """MoE-Fusion edge (untrained: this checks the geometry, not the fusion) exported by
    moefusion-export with a fixed 640x480 input, as for a TensorRT engine on a Jetson."""
    pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    import moefusion
    from moefusion.model.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("edge_onnx")
    torch.manual_seed(0)
    save_checkpoint(str(d / "edge.pt"), moefusion.build_model("edge"))
    onnx = d / "edge_480x640.onnx"
    r = subprocess.run([sys.executable, "-m", "moefusion.export", "--weights", str(d / "edge.pt"), "--format", "onnx",
                        "--imgsz", "480", "640", "-o", str(onnx)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and onnx.exists(), r.stderr[-2000:]
    return onnx


def ort_reference(onnx, ir_u8, vis_y8, inner, model_hw=(480, 640)):
    """What a fixed-size model should give for one frame, computed by hand: both planes scaled into
    ``inner`` (x, y, w, h) of the model input, edges repeated, the model, the picture cropped and
    scaled back to the frame's size; as uint8 luminance."""
    import onnxruntime as ort

    x, y, w, h = inner
    mh, mw = model_hw
    fh, fw = vis_y8.shape

    def box(img):
        interp = cv2.INTER_AREA if w * h < fw * fh else cv2.INTER_LINEAR
        small = cv2.resize(img.astype(np.float32) / 255, (w, h), interpolation=interp)
        return cv2.copyMakeBorder(small, y, mh - h - y, x, mw - w - x, cv2.BORDER_REPLICATE)[None, None]

    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    fused = sess.run(["fused"], {"ir": box(ir_u8), "vis": box(vis_y8)})[0][0, 0, y:y + h, x:x + w]
    interp = cv2.INTER_AREA if fw * fh < w * h else cv2.INTER_LINEAR
    return np.clip(np.rint(cv2.resize(fused, (fw, fh), interpolation=interp) * 255), 0, 255)


def luma(img):
    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)[:, :, 0]


@gst_test
@pytest.mark.slow
def test_fixed_640x480_onnx_runs_on_360x270_frames(edge_onnx_640x480, shared_data, tmp_path):
    stems = copy_tno(shared_data, tmp_path, n=2)
    out = tmp_path / "fused.mkv"
    rc, st = run(["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vis"), "--model", str(edge_onnx_640x480),
                  "--output", str(out)], tmp_path)
    assert rc == 0 and st["ok"] and st["frames_out"] == 2
    assert st["size"] == [360, 270] and st["model_size"] == [640, 480]
    assert st["model_fit"].startswith("frames 360x270 are letterboxed into the model input 640x480: scaled 1.78x to "
                                      "640x480, no padding")  # the choice, as logged
    frames = read_video(out)
    assert len(frames) == 2 and frames[0].shape == (270, 360, 3)
    for f, s in zip(frames, stems):
        ir = cv2.imread(str(tmp_path / "ir" / f"{s}.bmp"), cv2.IMREAD_GRAYSCALE)
        vis = luma(cv2.imread(str(tmp_path / "vis" / f"{s}.bmp"), cv2.IMREAD_UNCHANGED))
        want = ort_reference(edge_onnx_640x480, ir, vis, (0, 0, 640, 480))
        d = np.abs(luma(f).astype(np.float64) - want)
        assert d.mean() < 4.0, d.mean()  # H.264 is lossy


@gst_test
@pytest.mark.slow
def test_fixed_640x480_onnx_on_a_registration_crop_of_a_720p_camera(edge_onnx_640x480, tmp_path):
    """samples/jetson/moefusion-pipeline.env's set-up: a 640x512 thermal camera registered into a
    1280x720 visible one, and an engine built for 480x640: the crop is letterboxed into 640x480."""
    from moefusion.calibration import cli as calib

    reg = tmp_path / "rig.yaml"
    assert calib.main(["register", "--points", "0,0:190,0", "639,0:1089,0", "639,511:1089,719", "0,511:190,719",
                       "80,100:302.5,140.6", "--ir-size", "640x512", "--vis-size", "1280x720", "-o", str(reg)]) == 0
    out = tmp_path / "rig.mkv"
    rc, st = run(["--ir", "test://ball?is-live=false&num-buffers=2", "--ir-format", "GRAY8", "--ir-width", "640",
                  "--ir-height", "512", "--vis", "test://smpte?is-live=false&num-buffers=2", "--vis-width", "1280",
                  "--vis-height", "720", "--registration", str(reg), "--model", str(edge_onnx_640x480),
                  "--output", str(out)], tmp_path)
    assert rc == 0 and st["ok"] and st["frames_out"] == 2
    w, h = st["size"]
    assert 880 <= w <= 900 and 700 <= h <= 720 and st["model_size"] == [640, 480]
    assert st["model_fit"].startswith(f"frames {w}x{h} are letterboxed into the model input 640x480")
    assert "left/right" in st["model_fit"]
    frames = read_video(out)
    assert len(frames) == 2 and frames[0].shape == (h - h % 2, w - w % 2, 3)
    assert frames[0].std() > 10  # a picture, not a uniform frame


# -- no silent rescaling: IR of another size, output frames of other sizes ------------------------

@gst_test
def test_ir_of_another_size_is_letterboxed_into_vis_with_one_warning(tmp_path):
    """A 5:4 thermal camera beside a 16:9 visible one, no --registration: IR keeps its aspect ratio
    (scaled to 450x360, centred) with black bands, not stretched to 640x360; said once."""
    out = tmp_path / "bands.mkv"
    rc, st = run(["--ir", "test://white?is-live=false&num-buffers=3", "--ir-format", "GRAY8", "--ir-width", "320",
                  "--ir-height", "256", "--vis", "test://solid-color?is-live=false&num-buffers=3&foreground-color=0xff808080",
                  "--vis-width", "640", "--vis-height", "360", "--output", str(out), "--backend", "average"], tmp_path)
    assert rc == 0 and st["frames_out"] == 3
    ir_warn = [w for w in st["warnings"] if w.startswith("IR frames are 320x256 but VIS frames 640x360")]
    assert len(ir_warn) == 1 and "450x360, centred in the VIS frame, with 95+95 px black bands left/right" in ir_warn[0]
    f = read_video(out)[0][:, :, 1].astype(np.float64)
    band = np.concatenate([f[:, 5:88], f[:, 552:635]], axis=1).mean()  # average of VIS and nothing (0)
    inside = f[:, 102:538].mean()  # average of VIS and white IR
    assert 110 < inside - band < 130 and 40 < band < 90, (inside, band)  # white: 235 or 255
    assert f[:, 5:88].std() < 3 and f[:, 102:538].std() < 3  # no stretched IR edge inside the bands


@gst_test
def test_output_frames_of_other_sizes_are_letterboxed_not_squeezed(shared_data, tmp_path):
    """RoadScene pairs have many sizes: the output takes the first frame's size, and a later frame of
    another aspect ratio is scaled keeping it, with black bars; said once."""
    import shutil

    rs = shared_data("roadscene")
    names = ["FLIR_00006.jpg", "FLIR_00018.jpg", "FLIR_00288.jpg"]  # 500x329, 478x322, 609x346
    for role in ("ir", "vis"):
        (tmp_path / role).mkdir()
        for n in names:
            shutil.copy(rs / role / n, tmp_path / role / n)
    out = tmp_path / "rs.mkv"
    rc, st = run(["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vis"), "--output", str(out),
                  "--backend", "average"], tmp_path)
    assert rc == 0 and st["frames_out"] == 3
    out_warn = [w for w in st["warnings"] if w.startswith("output: a frame of")]
    assert len(out_warn) == 1 and "478x322 does not match the output size 500x328" in out_warn[0]
    frames = read_video(out)
    assert len(frames) == 3 and all(f.shape == (328, 500, 3) for f in frames)
    # the wide frame (609x346 -> 500x284): bars top and bottom, the picture undistorted in between
    ir = cv2.imread(str(tmp_path / "ir" / names[2]), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    vis = cv2.imread(str(tmp_path / "vis" / names[2]))
    ycc = cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb)
    ycc[:, :, 0] = np.rint((ir + ycc[:, :, 0]) / 2).astype(np.uint8)
    want = cv2.resize(cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR), (500, 284), interpolation=cv2.INTER_AREA)
    got = frames[2].astype(np.float64)
    assert got[:20].mean() < 4 and got[-20:].mean() < 4  # black bars (22 px each; H.264 bleeds a little)
    d = np.abs(got[22:306] - want)
    assert d.mean() < 5.0, d.mean()


# -- real footage: the five M3SVD clip pairs --------------------------------------------------------

M3SVD_CLIPS = ["0111_1716", "0113_1714", "0117_1605", "0117_1620", "1230_1202"]


@gst_test
@pytest.mark.parametrize("clip", M3SVD_CLIPS)
def test_m3svd_clips_end_to_end(clip, shared_data, tmp_path):
    """Real synchronised thermal + visible video (MPEG-4, decoded by GStreamer): lockstep pairing,
    every frame out (the whole of the shortest clip, 151 frames; the first 60 of the others with
    --max-frames), each output frame the fusion of IR frame k and VIS frame k as decoded
    independently by OpenCV."""
    root = shared_data("m3svd_video")
    ir_path, vis_path = root / "ir" / f"{clip}.mp4", root / "vis" / f"{clip}.mp4"
    whole = clip == "0111_1716"
    n = 151 if whole else 60
    out = tmp_path / f"{clip}.mkv"
    rc, st = run(["--ir", str(ir_path), "--vis", str(vis_path), "--output", str(out), "--backend", "average"]
                 + ([] if whole else ["--max-frames", str(n)]), tmp_path)
    assert rc == 0 and st["ok"] and st["mode"].startswith("files")
    assert st["frames_out"] == n and st["size"] == [640, 480]
    if whole:  # every frame of both files, paired one to one, nothing dropped
        assert st["frames_in"] == {"ir": n, "vis": n} and st["pairs"] == n and st["drops_total"] == 0
        assert st["stop_reason"] == "end of input" and st["warnings"] == []
    else:  # frames read ahead when --max-frames stopped the run are counted, nothing else
        assert st["pairs"] >= n and set(st["drops"]) <= {"unprocessed_at_stop"}
    assert st["skew_ms"]["abs"]["max"] == 0.0  # frame k with frame k
    frames = read_video(out)
    assert len(frames) == n
    ir_cap, vis_cap = cv2.VideoCapture(str(ir_path)), cv2.VideoCapture(str(vis_path))
    for k in range(n):
        ir, vis = ir_cap.read()[1], vis_cap.read()[1]
        if k % 20:
            continue
        want = (cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY).astype(np.float64) + luma(vis)) / 2
        d = np.abs(luma(frames[k]).astype(np.float64) - want)
        assert d.mean() < 4.0, (clip, k, d.mean())  # MPEG-4 in, H.264 out: both lossy


@gst_test
def test_demo_plays_the_real_m3svd_clips(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    rc = main(["--demo", "--max-frames", "2", "--backend", "average", "--stats-interval", "0", "--log-level", "warning"])
    assert rc == 0
    st = json.loads((tmp_path / "out" / "run_pipeline_demo.json").read_text())
    assert st["ir"].endswith("m3svd_0117_1620_ir.mp4") and st["vis"].endswith("m3svd_0117_1620_vis.mp4")
    assert st["registration"] is None and st["size"] == [640, 480] and st["view"] == "grid"
    frames = read_video(tmp_path / "out" / "run_pipeline_demo.mp4")
    assert len(frames) == 2 and frames[0].shape == (960, 1280, 3)
    demo = ROOT / "samples" / "demo"
    assert "Copyright (c) 2025 Linfeng Tang" in (demo / "LICENSE_M3SVD.txt").read_text()
    assert sum((demo / f).stat().st_size for f in ("m3svd_0117_1620_ir.mp4", "m3svd_0117_1620_vis.mp4")) < 3_000_000
    cap = cv2.VideoCapture(str(demo / "m3svd_0117_1620_vis.mp4"))
    assert 150 <= cap.get(cv2.CAP_PROP_FRAME_COUNT) <= 240 and cap.get(cv2.CAP_PROP_FPS) == 30  # 5-8 s


# -- --output-rate: another rate, the same duration ------------------------------------------------

@gst_test
@pytest.mark.parametrize("rate", [10, 60])
def test_output_rate_changes_the_rate_not_the_speed(rate, tmp_path):
    write_clip(tmp_path / "ir.mp4", 30, 30.0)  # one second at 30 Hz; frame i has background 30 + 6 i
    write_clip(tmp_path / "vis.mp4", 30, 30.0)
    out = tmp_path / f"r{rate}.mkv"
    rc, st = run(["--ir", str(tmp_path / "ir.mp4"), "--vis", str(tmp_path / "vis.mp4"), "--output", str(out),
                  "--backend", "average", "--output-rate", str(rate)], tmp_path)
    assert rc == 0 and st["pairs"] == 30
    cap = cv2.VideoCapture(str(out))
    assert abs(cap.get(cv2.CAP_PROP_FPS) - rate) < 0.5
    frames = read_video(out)
    assert len(frames) == st["frames_out"] == rate  # one second of output, at the new rate
    level = [float(np.median(f[:, :, 1])) for f in frames]
    if rate == 10:  # every third source frame; the others skipped and counted
        assert st["drops"] == {"output_rate": 20} and st["repeated"] == 0
        want = [30 + 6 * 3 * k for k in range(10)]
    else:  # every source frame twice
        assert st["repeated"] == 30 and not st["drops"]
        want = [30 + 6 * (k // 2) for k in range(60)]
    assert np.abs(np.array(level[: len(want)]) - want).max() < 5, level


# -- the display: an explicit window sink, checked before anything starts ---------------------------

def _free_display() -> int:
    import os

    for n in range(61, 200):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            return n
    pytest.skip("no free X display number")


@pytest.fixture
def xvfb():
    """A real X server (Xvfb) for the window sinks; skipped with the fix when Xvfb is not installed."""
    import os
    import shutil

    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb; scripts/install.sh does)")
    n = _free_display()
    p = subprocess.Popen([exe, f":{n}", "-screen", "0", "800x600x24", "-nolisten", "tcp"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: os.path.exists(f"/tmp/.X11-unix/X{n}") or p.poll() is not None, timeout=30)
        if p.poll() is not None:
            pytest.skip(f"Xvfb :{n} did not start")
        yield f":{n}"
    finally:
        p.terminate()
        p.wait(10)


def run_cli(args, cwd, env_extra, timeout=300):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MOEFUSION_DISPLAY_SINK")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "moefusion.runtime.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


SMALL_FILES = ["--ir", "test://ball?is-live=false&num-buffers=30", "--vis", "test://smpte?is-live=false&num-buffers=30",
               "--ir-width", "160", "--ir-height", "120", "--vis-width", "160", "--vis-height", "120",
               "--backend", "average", "--stats-interval", "0"]


@gst_test
def test_display_on_a_real_x_server(xvfb, tmp_path):
    out = tmp_path / "also.mkv"
    r = run_cli(SMALL_FILES + ["--output", "display://0", "--output", str(out), "--max-frames", "5",
                               "--log-level", "info", "--stats-json", str(tmp_path / "s.json")], tmp_path, {"DISPLAY": xvfb})
    assert r.returncode == 0, r.stderr[-3000:]
    sink = next(ln for ln in r.stderr.splitlines() if "window sink" in ln).rsplit(" ", 1)[-1]
    assert sink in ("xvimagesink", "glimagesink", "ximagesink")
    assert any("output pipeline:" in ln and f"! videoconvert ! {sink} sync=false" in ln for ln in r.stderr.splitlines())
    st = json.loads((tmp_path / "s.json").read_text())
    assert st["frames_out"] == 5 and len(read_video(out)) == 5


@gst_test
def test_display_that_cannot_open_is_one_line_before_anything_starts(tmp_path):
    n = _free_display()  # nothing listens there
    out = tmp_path / "never.mkv"
    r = run_cli(SMALL_FILES + ["--output", "display://0", "--output", str(out)], tmp_path, {"DISPLAY": f":{n}"})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert err[-1].startswith(f"error: --output display://0: no window can be opened (DISPLAY=:{n}; tried xvimagesink: ")
    assert "install gstreamer1.0-x and gstreamer1.0-gl" in err[-1] and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("never*"))  # checked before the sources, the model and the file
    # the demo's window is optional: without a usable display the demo still writes its file
    r = run_cli(["--demo", "--max-frames", "2", "--backend", "average", "--stats-interval", "0"], tmp_path,
                {"DISPLAY": f":{n}"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no window can be opened" in r.stderr and (tmp_path / "out" / "run_pipeline_demo.mp4").exists()
