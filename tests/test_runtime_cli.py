"""run_pipeline's command line: every numeric flag checked while parsing (one line, exit 2, nothing
created), the backend aliases, and the output checks made before any source or model starts
(stream hosts, writable folders, free space, --stats-json), IR and VIS the same file, and the
demo's line when there is no display."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moefusion.runtime import argtypes, precheck
from moefusion.runtime import cli
from moefusion.runtime.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
IR_CLIP, VIS_CLIP = str(ROOT / "samples" / "demo" / "ir.mp4"), str(ROOT / "samples" / "demo" / "vis.mp4")

# (flag, bad value): every numeric flag of run_pipeline --help, with non-finite, negative, zero (where
# not allowed), too large and non-numeric values.
BAD_VALUES = [
    *[(f"--{s}-{f}", v) for s in ("ir", "vis") for f in ("width", "height") for v in ("0", "-5", "3.5", "99999", "x")],
    *[(f"--{s}-rate", v) for s in ("ir", "vis") for v in ("inf", "nan", "0", "-30", "1e999", "5000")],
    *[(f"--{s}-loop", v) for s in ("ir", "vis") for v in ("-1", "-2", "1.5")],
    *[("--sync-tolerance", v) for v in ("0", "-25", "inf", "nan", "1e6")],
    *[("--sync-offset", v) for v in ("nan", "inf", "-inf", "1e300")],
    *[("--output-rate", v) for v in ("0", "-1", "inf", "nan", "2000")],
    *[("--segment", v) for v in ("-1", "0.5", "inf", "nan")],
    *[("--stats-interval", v) for v in ("-1", "inf", "nan")],
    *[("--max-frames", v) for v in ("-1", "2.5", "inf")],
    *[("--queue-size", v) for v in ("0", "-1", "1000", "x")],
    *[("--stall-timeout", v) for v in ("0", "-1", "inf", "nan")],
    *[("--reconnect-timeout", v) for v in ("-2", "-0.5", "inf", "nan")],
]


def run_main(argv, tmp_path, monkeypatch):
    """main() in-process in an empty folder whose outputs would go to out/; returns (rc, stderr lines)."""
    monkeypatch.chdir(tmp_path)
    return main(argv)


def assert_one_line_and_nothing_written(rc, capsys, tmp_path, needle):
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1, err
    assert needle in err[0], err
    assert "Traceback" not in cap.err and cap.out == ""
    assert list(tmp_path.iterdir()) == []  # no output folder, file or statistics
    return err[0]


@pytest.mark.parametrize("flag,value", BAD_VALUES)
def test_bad_numeric_value_is_one_line_exit_2_and_nothing_written(flag, value, capsys, tmp_path, monkeypatch):
    rc = run_main(["--ir", IR_CLIP, "--vis", VIS_CLIP, "--backend", "average", "--output", "out/fused.mp4",
                   "--stats-json", "out/stats.json",
                   # argparse takes -inf for an option; the = form passes it as the value
                   *([f"{flag}={value}"] if value.startswith("-i") else [flag, value])], tmp_path, monkeypatch)
    line = assert_one_line_and_nothing_written(rc, capsys, tmp_path, f"run_pipeline: error: {flag}: got ")
    assert value in line and "allowed: " in line


def test_every_numeric_flag_has_a_checked_type():
    """A numeric flag added later without an argtypes type would take inf/nan/negatives again."""
    numeric = {"PX", "HZ", "MS", "S", "N"}
    actions = [a for a in build_parser()._actions if a.metavar in numeric]
    flags = {a.option_strings[0] for a in actions}
    assert flags == {f for f, _ in BAD_VALUES}
    for a in actions:
        assert hasattr(a.type, "allowed"), a.option_strings


@pytest.mark.parametrize("argv,attr,expected", [
    (["--segment", "0"], "segment", 0.0),
    (["--segment", "1"], "segment", 1.0),
    (["--stats-interval", "0"], "stats_interval", 0.0),
    (["--reconnect-timeout", "0"], "reconnect_timeout", 0.0),
    ([], "reconnect_timeout", -1.0),  # retry forever
    (["--reconnect-timeout", "-1"], "reconnect_timeout", -1.0),  # as samples/jetson/moefusion-pipeline.service says
    (["--ir-loop"], "ir_loop", -1),  # forever
    (["--ir-loop", "2"], "ir_loop", 2),
    (["--sync-offset", "-40.5"], "sync_offset", -40.5),
    (["--sync-tolerance", "10000"], "sync_tolerance", 10000.0),
    (["--vis-rate", "29.97"], "vis_rate", 29.97),
    (["--max-frames", "0"], "max_frames", 0),
    (["--queue-size", "100"], "queue_size", 100),
    (["--ir-width", "16384"], "ir_width", 16384),
])
def test_good_values_are_accepted(argv, attr, expected):
    assert getattr(build_parser().parse_args(argv), attr) == expected


def test_other_parse_errors_are_one_line_too(capsys, tmp_path, monkeypatch):
    rc = run_main(["--ir", IR_CLIP, "--vis", VIS_CLIP, "--backend", "tflite"], tmp_path, monkeypatch)
    assert_one_line_and_nothing_written(rc, capsys, tmp_path, "run_pipeline: error: --backend: invalid choice: 'tflite'")
    rc = run_main(["--ir", IR_CLIP, "--vis", VIS_CLIP, "--vis-rate"], tmp_path, monkeypatch)
    assert_one_line_and_nothing_written(rc, capsys, tmp_path, "--vis-rate: expected one argument")


def test_console_script_prints_one_line_and_does_not_hang(tmp_path):
    """The issue's cases through the real console script (--sync-offset nan hung before)."""
    exe = Path(sys.executable).parent / "run_pipeline"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moefusion.runtime.cli"]
    for extra in (["--vis-rate", "inf"], ["--sync-offset", "nan"]):
        r = subprocess.run(cmd + ["--ir", IR_CLIP, "--vis", VIS_CLIP, "--output", "out.mp4", *extra],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith(f"run_pipeline: error: {extra[0]}: got ")
        assert list(tmp_path.iterdir()) == []


# -- --backend aliases -------------------------------------------------------------------------------

@pytest.mark.parametrize("given,name", [("onnx", "onnxruntime"), ("ONNX", "onnxruntime"), ("onnxruntime", "onnxruntime"),
                                        ("trt", "tensorrt"), ("average", "average")])
def test_backend_aliases(given, name):
    assert build_parser().parse_args(["--backend", given]).backend == name


def test_help_names_the_onnx_alias():
    assert "onnx is accepted for onnxruntime" in " ".join(build_parser().format_help().split())


def tiny_onnx(path: Path) -> Path:
    """A real ONNX model with run_pipeline's interface: fused = (ir + vis) / 2, attention = ir."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    dims = ["b", 1, "h", "w"]
    g = helper.make_graph(
        [helper.make_node("Add", ["ir", "vis"], ["s"]),
         helper.make_node("Mul", ["s", "half"], ["fused"]),
         helper.make_node("Identity", ["ir"], ["attention"])],
        "tiny",
        [helper.make_tensor_value_info("ir", TensorProto.FLOAT, dims),
         helper.make_tensor_value_info("vis", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("fused", TensorProto.FLOAT, dims),
         helper.make_tensor_value_info("attention", TensorProto.FLOAT, dims)],
        [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_backend_onnx_runs_onnxruntime(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    model = tiny_onnx(tmp_path / "tiny.onnx")
    monkeypatch.chdir(tmp_path)
    sj = tmp_path / "stats.json"
    rc = main(["--ir", IR_CLIP, "--vis", VIS_CLIP, "--backend", "onnx", "--model", str(model), "--output", "none",
               "--max-frames", "2", "--stats-interval", "0", "--stats-json", str(sj), "--log-level", "warning"])
    st = json.loads(sj.read_text())
    assert rc == 0 and st["frames_out"] == 2
    assert st["backend"] == "onnxruntime", st["backend"]


# -- outputs, checked before any source or model starts ----------------------------------------------

@pytest.mark.parametrize("uri", ["udp://no.such.host.invalid:5600", "rtsp://no.such.host.invalid:8554/live"])
def test_unresolvable_stream_host_is_exit_2_before_start(uri, capsys, tmp_path, monkeypatch):
    # a file output too: its folder must not be created; --log-level info: nothing else may be said first
    rc = run_main(["--ir", IR_CLIP, "--vis", VIS_CLIP, "--backend", "average", "--output", "rec/fused.mp4",
                   "--output", uri, "--stats-json", "rec/stats.json", "--log-level", "info"], tmp_path, monkeypatch)
    line = assert_one_line_and_nothing_written(rc, capsys, tmp_path, f"error: --output {uri}: cannot resolve the host")
    assert "no.such.host.invalid" in line


def test_resolvable_host_passes(tmp_path):
    args = build_parser().parse_args(["--ir", IR_CLIP, "--vis", VIS_CLIP, "--output", "udp://127.0.0.1:5600",
                                      "--output", "udp://localhost:5601"])
    assert precheck.check_outputs(cli.config_from_args(args)) == []


@pytest.mark.parametrize("flag,target", [("--output", "afile/fused.mp4"), ("--output", "afile/deeper/fused.mp4"),
                                         ("--stats-json", "afile/stats.json")])
def test_output_under_a_file_is_exit_2_before_start(flag, target, capsys, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("not a folder")
    argv = ["--ir", IR_CLIP, "--vis", VIS_CLIP, "--backend", "average", "--log-level", "info"]
    argv += [flag, target] + (["--output", "none"] if flag != "--output" else [])
    rc = run_main(argv, tmp_path, monkeypatch)
    (tmp_path / "afile").unlink()
    assert_one_line_and_nothing_written(rc, capsys, tmp_path, f"error: {flag} {target}: cannot write there: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_read_only_folder_is_exit_2_before_start(capsys, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc = run_main(["--ir", IR_CLIP, "--vis", VIS_CLIP, "--backend", "average", "--output", "ro/fused.mp4"],
                      tmp_path, monkeypatch)
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not writable" in err[0], err
    assert list(ro.iterdir()) == []


def test_unwritable_folder_is_exit_2_before_start_even_as_root(capsys, tmp_path, monkeypatch):
    """As above, with the permission check answered 'no' for that folder (root passes chmod 555)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real_access(p, mode, **kw))
    for argv in (["--output", "ro/sub/fused.mp4"], ["--output", "none", "--stats-json", "ro/stats.json"]):
        rc = run_main(["--ir", IR_CLIP, "--vis", VIS_CLIP, "--backend", "average", *argv], tmp_path, monkeypatch)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"the folder {ro} is not writable" in err[0], err
        assert list(ro.iterdir()) == []


def test_low_free_space_is_a_warning(tmp_path, monkeypatch, caplog):
    args = build_parser().parse_args(["--ir", IR_CLIP, "--vis", VIS_CLIP, "--output", str(tmp_path / "new" / "a.mp4"),
                                      "--output", str(tmp_path / "b.mkv")])
    cfg = cli.config_from_args(args)
    assert precheck.check_outputs(cfg) == []
    monkeypatch.setattr(precheck, "LOW_SPACE_BYTES", 1 << 62)  # every disk is short of that
    warnings = precheck.check_outputs(cfg)
    assert len(warnings) == 2 and all(" GB (" in w and "free on the file system of" in w
                                      for w in warnings)
    assert not (tmp_path / "new").exists()  # checked, not created


# -- IR and VIS the same file ------------------------------------------------------------------------

def same_file_variants(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(Path(IR_CLIP).read_bytes())
    (tmp_path / "link.mp4").symlink_to(clip)
    os.link(clip, tmp_path / "hard.mp4")
    return [(str(clip), str(clip)), (str(clip), "./clip.mp4"), (str(clip), f"file://{clip}"),
            (str(clip), str(tmp_path / "link.mp4")), (str(clip), str(tmp_path / "hard.mp4")),
            (str(tmp_path), str(tmp_path) + "/")]


def test_ir_and_vis_the_same_file_is_refused(capsys, tmp_path, monkeypatch):
    for ir, vis in same_file_variants(tmp_path):
        before = sorted(tmp_path.iterdir())
        rc = run_main(["--ir", ir, "--vis", vis, "--backend", "average", "--output", "out/fused.mp4"],
                      tmp_path, monkeypatch)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "are the same file" in err[0] and "--demo" in err[0], (ir, vis, err)
        assert sorted(tmp_path.iterdir()) == before


def test_different_files_are_not_the_same(tmp_path):
    from moefusion.runtime.uri import parse_input_uri

    precheck.check_sources_differ(parse_input_uri(IR_CLIP), parse_input_uri(VIS_CLIP))
    precheck.check_sources_differ(parse_input_uri("test://ball"), parse_input_uri("test://ball"))  # two patterns


# -- the demo without a display ----------------------------------------------------------------------

def test_demo_without_display_says_why_no_window(capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    cli._setup_logging("info")
    assert cli._window_possible() is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "no window opens: no display ($DISPLAY and $WAYLAND_DISPLAY are not set)" in err[0]
    assert os.path.abspath(cli.DEMO_OUTPUT) in err[0]


def test_the_cached_export_is_per_checkpoint_and_per_graph_code(tmp_path, monkeypatch):
    """A changed checkpoint or a changed model/exporter source gives another cache file (the version
    string alone would keep serving an export made by older code)."""
    from moefusion.export import cache

    code = tmp_path / "model"
    code.mkdir()
    (code / "stream.py").write_text("STATE = 1\n")
    monkeypatch.setattr(cache, "GRAPH_CODE", (code,))
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"weights 1")
    first = cache.cached_path(ckpt, tmp_path)
    assert cache.cached_path(ckpt, tmp_path) == first and first.parent == tmp_path and first.name.endswith("-stream.onnx")
    (code / "stream.py").write_text("STATE = 2\n")
    second = cache.cached_path(ckpt, tmp_path)
    ckpt.write_bytes(b"weights 2")
    assert len({first, second, cache.cached_path(ckpt, tmp_path)}) == 3


def test_argtypes_messages():
    with pytest.raises(Exception, match=r"got inf; allowed: a finite number, 0 < HZ <= 1000"):
        argtypes.rate_hz("inf")
    assert argtypes.segment_s("0") == 0 and argtypes.segment_s("2.5") == 2.5


def test_auto_backend_on_a_cpu_runs_the_checkpoints_cached_onnx_export():
    """--backend auto without a CUDA GPU: the default weights' ONNX export, made once and reused
    (the same file, not rewritten, on the next start); other choices are left alone."""
    pytest.importorskip("onnxruntime")
    from moefusion.export.cache import cached_path
    from moefusion.model.checkpoint import DEFAULT_WEIGHTS
    from moefusion.runtime.cli import cpu_onnx_model

    assert cpu_onnx_model("torch", None, "cpu") is None
    assert cpu_onnx_model("auto", "model.onnx", "cpu") is None
    assert cpu_onnx_model("auto", None, "cuda") is None
    path = cpu_onnx_model("auto", None, "cpu")
    assert path == str(cached_path(DEFAULT_WEIGHTS)) and os.path.getsize(path) > 1_000_000
    stamp = os.stat(path).st_mtime_ns
    assert cpu_onnx_model("auto", None, "auto") == path and os.stat(path).st_mtime_ns == stamp
