"""moefusion-bench: argument validation, the backends table, statistics, and real runs on the CPU.

The real run is tiny (edge preset, 64x96, --iters 2, one thread) but real: PyTorch, an ONNX exported by the
project's exporter and run by ONNX Runtime, the runtime pipeline over MPEG-4 files; TensorRT cannot run
here and its rows must say why.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moefusion.bench import cli
from moefusion.bench.measure import summarize, write_clips
from moefusion.bench.table import availability, backends

TINY = ["--presets", "edge", "--imgsz", "64", "96", "--iters", "2", "--device", "cpu", "--threads", "1"]


def _one_line_error(capsys, rc, *names):
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for n in names:
        assert n in lines[0], (n, lines[0])
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--backends", "tensorflow"), ("--backends", "torch,tflite"), ("--presets", "huge"), ("--precisions", "int4"),
    ("--device", "tpu"),
])
def test_unknown_name_is_one_line_error_naming_it(flag, value, capsys, tmp_path):
    out = tmp_path / "r.json"
    rc = cli.main([flag, value, "--json", str(out)])
    bad = value.split(",")[-1]
    line = _one_line_error(capsys, rc, flag, bad)
    assert "use one of" in line
    assert not out.exists()


def test_int8_precision_error_says_how(capsys):
    line = _one_line_error(capsys, cli.main(["--precisions", "int8"]), "--precisions", "int8")
    assert "moefusion-export" in line


@pytest.mark.parametrize("argv, names", [
    (["--imgsz", "0", "64"], ["--imgsz"]),
    (["--imgsz", "1", "2", "3"], ["--imgsz"]),
    (["--batch", "0"], ["--batch"]),
    (["--iters", "0"], ["--iters"]),
    (["--iters", "two"], ["--iters", "two"]),
    (["--budget", "0"], ["--budget"]),
    (["--min-fps", "-1"], ["--min-fps"]),
    (["--min-fps-of", "gpu"], ["--min-fps-of", "gpu"]),
    (["--frames", "5", "--no-pipeline"], ["--frames", "--no-pipeline"]),
    (["--plot", "chart.jpg"], ["--plot", "chart.png"]),
    (["--weights", "/nonexistent/w.pt"], ["--weights", "/nonexistent/w.pt"]),
    (["--weights", "/nonexistent/w.pt", "--presets", "edge"], ["--weights", "--presets"]),
    (["--no-such-flag"], ["--no-such-flag"]),
    (["--overhead", "--no-pipeline"], ["--overhead", "--no-pipeline"]),
    (["--compare", "a.onnx", "b.onnx", "--backends", "torch"], ["--compare", "--backends"]),
    (["--compare", "a.onnx", "b.onnx", "--flops"], ["--compare", "--flops"]),
    (["--compare", "a.onnx", "b.onnx", "--min-fps-of", "model"], ["--compare", "--min-fps-of"]),
    (["--compare", "a.onnx", "b.onnx", "--imgsz", "64", "96", "--imgsz", "32", "32"], ["--imgsz", "--compare"]),
    (["--compare", "/nonexistent/a.onnx", "/nonexistent/b.onnx"], ["--compare", "/nonexistent/a.onnx"]),
    (["--compare", "a.onnx"], ["--compare"]),
])
def test_bad_arguments_are_one_line_errors(argv, names, capsys):
    _one_line_error(capsys, cli.main(argv), *names)


def test_unwritable_output_is_refused_before_any_work(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(capsys, cli.main(["--json", str(blocker / "r.json")]), str(blocker / "r.json"), "--json")


def test_console_script_unknown_backend_exit_2():
    exe = Path(sys.executable).with_name("moefusion-bench")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "moefusion.bench"]
    p = subprocess.run(cmd + ["--backends", "tflite"], check=False, capture_output=True, text=True,
                       timeout=120,
                       env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()]
    assert "--backends tflite" in p.stderr and "Traceback" not in p.stderr


# ----------------------------------------------------------------------------------------------
# the table and the statistics
# ----------------------------------------------------------------------------------------------

def test_backends_come_from_the_export_formats_table():
    from moefusion.export.formats import FORMATS

    table = backends()
    assert list(table) == ["torch", "torch-kernels", "onnxruntime", "tensorrt"]
    assert table["onnxruntime"].export_format == "onnx"
    assert table["tensorrt"].export_format == "engine"
    assert "triton" not in table  # a server package of the same ONNX/engine
    for b in (table["onnxruntime"], table["tensorrt"]):
        fmt = FORMATS[b.export_format]
        assert ("fp16" in b.precisions) == ("half" in fmt.options)
        assert set(fmt.modules) <= set(b.modules)
    assert table["tensorrt"].devices == ("cuda",)


def test_availability_on_cpu_never_falls_back():
    table = backends()
    assert availability(table["torch"], "fp32", "cpu") is None
    assert availability(table["torch"], "fp16", "cpu") == "unsupported on cpu"
    assert availability(table["onnxruntime"], "fp16", "cpu") == "unsupported on cpu"
    assert availability(table["torch-kernels"], "fp32", "cpu").startswith("unavailable: ")
    assert availability(table["tensorrt"], "fp32", "cpu").startswith("unavailable: ")


def test_summarize_clips_far_outliers_only():
    s = summarize([10.0, 10.5, 9.5, 10.2, 9.8, 10.1, 9.9, 10.0, 250.0])
    assert s["clipped"] == 1 and s["n"] == 9
    assert s["p50"] == pytest.approx(10.0) and s["max"] == 250.0 and s["p99"] < 11
    few = summarize([10.0, 300.0, 11.0])  # too few samples to call any an outlier
    assert few["clipped"] == 0 and few["p99"] > 200


def test_odd_sizes_get_exact_image_sequences(tmp_path):
    import cv2

    ir, vis = write_clips(tmp_path, (33, 47), 2)
    assert ir.endswith("/") and vis.endswith("/")
    img = cv2.imread(str(min(Path(vis).iterdir())))
    assert img.shape == (33, 47, 3)


def test_edge_uses_the_default_weights_when_present(tmp_path, monkeypatch):
    import moefusion
    from moefusion.bench import run as bench_run
    from moefusion.model import checkpoint

    monkeypatch.setattr(checkpoint, "DEFAULT_WEIGHTS", tmp_path / "absent.pt")
    _, source = bench_run.load_model("edge", None)
    assert source == bench_run.UNTRAINED
    path = tmp_path / "moefusion_edge.pt"
    checkpoint.save_checkpoint(path, moefusion.build_model("edge"))
    monkeypatch.setattr(checkpoint, "DEFAULT_WEIGHTS", path)
    model, source = bench_run.load_model("edge", None)
    assert source.startswith("bundled default weights") and model.dispatch == "sparse"


# ----------------------------------------------------------------------------------------------
# real runs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    paths = {k: d / f"bench.{k}" for k in ("json", "md", "png")}
    argv = TINY + ["--backends", "torch", "onnxruntime", "tensorrt", "--json", str(paths["json"]),
                   "--markdown", str(paths["md"]), "--plot", str(paths["png"])]
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue(), paths


def _rows(result, backend, precision=None):
    return [r for r in result["rows"] if r["backend"] == backend and not r["reference"]
            and (precision is None or r["precision"] == precision)]


def test_tiny_run_outputs(tiny_run):
    rc, out, err, paths = tiny_run
    assert rc == 0, err
    result = json.loads(paths["json"].read_text())
    assert result["load_start"] and result["machine"]["cores"]
    assert result["models"]["edge"]  # where the model came from (untrained or the default weights)

    ref = [r for r in result["rows"] if r["reference"]]
    assert len(ref) == 1
    ref = ref[0]
    assert (ref["backend"], ref["dispatch"], ref["precision"], ref["status"]) == ("torch", "published", "fp32", "ok")
    assert ref["speedup"] == 1.0 and ref["latency_ms"]["n"] == 2

    for backend in ("torch", "onnxruntime"):
        (row,) = _rows(result, backend, "fp32")
        assert row["status"] == "ok", row["error_detail"]
        assert row["size"] == [64, 96] and row["size_text"] == "96x64"
        assert row["latency_ms"]["p50"] > 0 and row["latency_ms"]["p99"] >= row["latency_ms"]["p50"]
        assert row["fps"] > 0 and row["throughput"]["batch"] == 1
        assert row["speedup"] == pytest.approx(ref["latency_ms"]["p50"] / row["latency_ms"]["p50"], rel=1e-2)
        assert row["pipeline"]["frames"] == 3 and row["pipeline"]["fps"] > 0
        assert row["pipeline"]["latency_ms"]["p50"] > 0 and row["pipeline"]["latency_ms"]["p95"] > 0
    (onnx_row,) = _rows(result, "onnxruntime", "fp32")
    assert onnx_row["export_s"] > 0 and "onnxruntime (CPU" in onnx_row["describe"]
    assert _rows(result, "torch", "fp16")[0]["status"] == "unsupported on cpu"
    assert _rows(result, "onnxruntime", "fp16")[0]["status"] == "unsupported on cpu"
    trt = _rows(result, "tensorrt")
    assert len(trt) == 2 and all(r["status"].startswith("unavailable: ") and len(r["status"]) > 20 for r in trt)
    assert all(r["latency_ms"] is None for r in trt)

    # the console table: every row, the reference first, the TensorRT reason given in full below it
    assert "torch, published dispatch (reference)" in out
    for col in ("backend", "precision", "size", "status", "ms/frame", "FPS", "speed-up vs reference"):
        assert col in out
    assert len([ln for ln in out.splitlines() if ln.startswith("edge   | ")]) == 7
    assert trt[0]["status"] in out

    md = paths["md"].read_text()
    assert "moefusion-bench --presets edge --imgsz 64 96" in md and "load average" in md
    assert "| torch, published dispatch (reference) | fp32 | 96x64 | ok |" in md
    assert "| edge | tensorrt | fp32 | 96x64 | unavailable: " in md

    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_min_fps_checks_the_measured_rows(tiny_run):
    _, _, _, paths = tiny_run
    result = json.loads(paths["json"].read_text())
    assert cli.below_min_fps(result, 1e-6) == []
    bad = cli.below_min_fps(result, 1e9)
    assert len(bad) == 2 and all("FPS" in b for b in bad)  # torch and onnxruntime fp32; not the reference
    assert not any("tensorrt" in b for b in bad)  # unavailable rows are not failures
    assert len(cli.below_min_fps(result, 1e9, "pipeline")) == 2


def test_min_fps_above_reach_exits_nonzero(capsys):
    rc = cli.main(TINY + ["--iters", "1", "--backends", "torch", "--precisions", "fp32", "--no-pipeline",
                          "--min-fps", "1000000"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "below --min-fps 1e+06" in err and "edge torch fp32 96x64" in err
    assert "speed-up vs reference" in out


def test_failing_backend_shows_its_error_and_the_run_goes_on(capsys, monkeypatch):
    from moefusion.bench import run as bench_run

    def broken_export(self, model, batch):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(bench_run._Factory, "_export", broken_export)
    rc = cli.main(TINY + ["--iters", "1", "--backends", "onnxruntime", "torch", "--precisions", "fp32",
                          "--no-pipeline"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "error: RuntimeError: exporter exploded" in out
    assert "1 row(s) failed" in err
    torch_line = [ln for ln in out.splitlines() if ln.startswith("edge   | torch ")]
    assert torch_line and "| ok " in torch_line[0]


@pytest.mark.slow  # two ONNX exports: about 25 s here
def test_batch_throughput_uses_a_batch_export(tmp_path, capsys):
    out_json = tmp_path / "b.json"
    rc = cli.main(TINY + ["--iters", "1", "--batch", "2", "--backends", "onnxruntime", "--precisions", "fp32",
                          "--no-pipeline", "--json", str(out_json)])
    assert rc == 0, capsys.readouterr()
    result = json.loads(out_json.read_text())
    for r in result["rows"]:
        assert r["throughput"]["batch"] == 2 and r["throughput"]["fps"] > 0
        assert r["latency_ms"]["n"] == 1
    assert "(b2)" in capsys.readouterr().out
    assert np.isfinite([r["fps"] for r in result["rows"]]).all()


def test_report_and_run_do_not_import_each_other():
    """bench/run imports bench/report (machine facts); report needs nothing of run (shared constants live in table)."""
    code = "import sys, moefusion.bench.report; print('moefusion.bench.run' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "False"


# ----------------------------------------------------------------------------------------------
# --flops, --compare, --overhead
# ----------------------------------------------------------------------------------------------

class _Convs(torch.nn.Module):
    """A model with the runtime's contract (ir, vis -> fused, attention) and a known cost: ``n`` 3x3
    convolutions of ``c`` channels on a 2-channel input, no bias."""

    def __init__(self, n=1, c=4):
        super().__init__()
        torch.manual_seed(0)
        self.inp = torch.nn.Conv2d(2, c, 3, padding=1, bias=False)
        self.body = torch.nn.Sequential(*[torch.nn.Conv2d(c, c, 3, padding=1, bias=False) for _ in range(n - 1)])
        self.out = torch.nn.Conv2d(c, 1, 3, padding=1, bias=False)

    def forward(self, ir, vis):
        a = torch.sigmoid(self.out(self.body(self.inp(torch.cat([ir, vis], 1)))))
        return (a * ir + (1 - a) * vis).clamp(0, 1), a


def test_count_flops_of_a_known_model():
    from moefusion.bench.flops import count_flops

    h, w, c = 16, 24, 4
    res = count_flops(_Convs(n=2, c=c), (h, w))
    macs = h * w * 9 * (2 * c + c * c + c * 1)  # three convolutions: 2->c, c->c, c->1
    assert res["flops"] == 2 * macs
    assert res["params"] == 9 * (2 * c + c * c + c)


def test_flops_option_adds_the_column(tmp_path, capsys):
    out_json = tmp_path / "f.json"
    rc = cli.main(TINY + ["--iters", "1", "--backends", "torch", "--precisions", "fp32", "--no-pipeline", "--flops",
                          "--json", str(out_json)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads(out_json.read_text())
    fl = result["flops"]["edge"]["96x64"]
    assert fl["flops"] > 1e6 and 1e6 < fl["params"] < 3e6  # the edge budget: <= 3 M parameters
    assert "GFLOP/frame" in out and f"{fl['flops'] / 1e9:.2f}" in out


def _export_convs(path, n, h=64, w=96):
    import warnings

    x = torch.rand(1, 1, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Convs(n=n, c=16).eval(), (x, x), str(path), input_names=["ir", "vis"],
                          output_names=["fused", "attention"], opset_version=17, dynamo=False)
    return str(path)


def test_compare_reports_the_ratio_of_two_models(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    a = _export_convs(tmp_path / "small.onnx", 1)
    b = _export_convs(tmp_path / "big.onnx", 12)
    out_json, out_md = tmp_path / "ab.json", tmp_path / "ab.md"
    rc = cli.main(["--compare", a, b, "--iters", "8", "--warmup", "1", "--device", "cpu", "--threads", "1",
                   "--json", str(out_json), "--markdown", str(out_md)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads(out_json.read_text())
    assert result["size"] == [64, 96] and result["rounds"] == 8  # the fixed export's own size
    first, second = result["models"]
    assert first["ratio"] == 1.0 and first["latency_ms"]["n"] == 8 and second["latency_ms"]["n"] == 8
    assert second["ratio"] == pytest.approx(second["latency_ms"]["p50"] / first["latency_ms"]["p50"], rel=1e-3)
    assert second["ratio"] > 1.5 and second["ratio_paired_median"] > 1.5  # 12 convolutions against 1
    assert f"| {b} |" in out and f"{second['ratio']:.3f}x" in out
    assert "alternating rounds" in out_md.read_text()
    # a fixed-size model refuses another --imgsz, naming both
    rc = cli.main(["--compare", a, b, "--imgsz", "32", "32", "--device", "cpu"])
    _one_line_error(capsys, rc, "--imgsz", "96x64")


def test_overhead_adds_a_no_model_row_and_columns(tmp_path, capsys):
    out_json = tmp_path / "o.json"
    rc = cli.main(TINY + ["--backends", "torch", "--precisions", "fp32", "--overhead", "--json", str(out_json)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    result = json.loads(out_json.read_text())
    (avg,) = [r for r in result["rows"] if r["backend"] == "average"]
    assert avg["status"] == "ok" and avg["speedup"] is None and avg["label"].startswith("no model")
    (row,) = _rows(result, "torch", "fp32")
    for r in (avg, row):
        pl = r["pipeline"]
        assert pl["frames"] == 3 and pl["cpu_ms_per_frame"] > 0 and r["cpu_ms"] > 0
        assert pl["overhead_ms"] is not None and pl["cpu_ms_outside_model"] is not None
        assert "infer" in pl["stage_mean_ms"]
    assert "overhead ms/frame" in out and "CPU ms/frame outside the model" in out
    assert "no model (average of the inputs)" in out
    assert cli.below_min_fps(result, 1e9) == ["edge torch fp32 96x64: " + f"{row['fps']:.2f} FPS"]
