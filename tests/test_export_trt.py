"""TensorRT engines through moefusion.export's builder.

CI (no GPU, no full TensorRT): TensorRT for RTX (``tensorrt_rtx``) parses and builds both presets'
ONNX, fp32 and fp16 (strongly typed, precision from the ONNX), and the INT8 Q/DQ ONNX that ModelOpt
makes from real frames, through the same code users run; sidecar, reuse, verification and the bad
inputs are checked on those builds. The plugin library is built against TensorRT 10.3's headers
(tests/test_kernels_trt_plugins.py) and present for these tests: TensorRT-RTX must never be handed a
plugin layer (its ONNX parser aborts the process), so nothing here starts such a parse.

On a Jetson / a machine with TensorRT and a GPU, the marked tests build real TensorRT engines and run
them with the runtime's TensorRT backend::

    pytest -m "tensorrt or gpu" tests/test_export_trt.py
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("onnx")
from helpers import exported, make_model, ort_session, real_inputs  # noqa: E402
from test_kernels_trt_plugins import build_plugin_library  # noqa: E402

from moefusion.errors import UserError  # noqa: E402
from moefusion import files as _files  # noqa: E402
from moefusion.export.api import run_export  # noqa: E402
from moefusion.export.engine import build_engine, reuse_reason, sidecar_path, verify_engine  # noqa: E402
from moefusion.export.formats import validate  # noqa: E402
from moefusion.export.trt_shim import TRT, import_trt  # noqa: E402

if import_trt() is None:
    pytest.skip("neither tensorrt nor tensorrt_rtx is installed (pip install tensorrt-rtx-cu13)", allow_module_level=True)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not HAS_TRT, reason="full TensorRT is not installed (JetPack's python3-libnvinfer "
                                                   "or pip install tensorrt); TensorRT-RTX cannot stand in here")


def _has_gpu() -> bool:
    return TRT.gpu() is not None


needs_gpu = pytest.mark.skipif(not _has_gpu(), reason="no CUDA GPU visible")


@pytest.fixture(scope="module")
def trt():
    return TRT()


@pytest.fixture(scope="module")
def plugin_lib(request):
    """libmoefusion_trt_plugins.so built against TensorRT 10.3's headers (skips without nvcc/headers)."""
    return build_plugin_library(request.config, "v10.3.0")


def _engine(tmp_path, name="m.engine"):
    return tmp_path / name


# ------------------------------------------------------------------------------------------------
# Parse and build both presets, fp32 and fp16 (TensorRT-RTX in CI; TensorRT where installed)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("preset, opset", [("edge", 18), ("paper", 17), pytest.param("paper", 18, marks=pytest.mark.slow)])
def test_parse_and_build(preset, opset, half, tmp_path, trt):
    """Both presets' ONNX (standard flavour), fp32 and fp16, through the builder users run."""
    onnx_path, _, _ = exported(preset, opset=opset)
    engine = _engine(tmp_path)
    res = run_export({"weights": str(onnx_path), "format": "engine", "half": half or None, "output": str(engine)},
                     trt=trt)
    assert res.engine is not None and not res.engine.reused
    data = engine.read_bytes()
    assert len(data) > 1_000_000
    assert b"moefusion" not in data[:4096] and not data.startswith(b"{"), "the engine file must be the plain engine"
    side = json.loads(sidecar_path(engine).read_text())
    assert side["format"] == "moefusion-engine" and side["engine_sha256"] == _files.sha256_file(engine)
    assert side["tensorrt"] == {"module": trt.module, "version": trt.version}
    assert side["precision"] == ("fp16" if half else "fp32")
    assert side["profile"]["ir"] == {"min": [1, 1, 16, 16], "opt": [1, 1, 480, 640], "max": [1, 1, 1088, 1920]}
    assert side["inputs"] == ["ir", "vis"] and side["outputs"][:2] == ["fused", "attention"]
    assert side["onnx_metadata"]["preset"] == preset
    built_from = side["onnx"]
    assert side["onnx_sha256"] == _files.sha256_file(built_from)
    # precision from the ONNX types, strongly typed network, no precision builder flags
    assert side["onnx_metadata"]["precision"] == side["precision"] and side["strongly_typed"]
    assert side["builder_flags"] == []
    assert side["runs_on"]["summary"] and (trt.rtx == ("TensorRT-RTX" in side["runs_on"]["summary"]))
    if trt.rtx:
        assert "not with TensorRT, trtexec" in side["runs_on"]["summary"] and "9.0" in side["runs_on"]["gpus"]
    assert side["gpu"] is None or side["gpu"]["name"]


def test_engine_reuse_only_when_everything_matches(tmp_path, trt):
    onnx_path, _, _ = exported("edge")
    engine = _engine(tmp_path)
    opts = validate({"format": "engine", "dynamic": ((16, 16), (1088, 1920))})
    first = build_engine(onnx_path, engine, opts, trt=trt)
    assert not first.reused
    again = build_engine(onnx_path, engine, opts, trt=trt)
    assert again.reused and again.sidecar["engine_sha256"] == first.sidecar["engine_sha256"]
    wanted = {k: first.sidecar[k] for k in ("onnx_sha256", "tensorrt", "gpu", "precision", "profile",
                                            "plugin_libraries", "plugin_sha256", "quantization")}
    assert reuse_reason(engine, wanted) == (True, "")
    for key, value in (("precision", "fp16"), ("tensorrt", {"module": "tensorrt", "version": "8.6.2"}),
                       ("gpu", {"name": "Orin", "compute_capability": "8.7"}), ("onnx_sha256", "0" * 64)):
        ok, why = reuse_reason(engine, {**wanted, key: value})
        assert not ok and key in why
    other_profile = validate({"format": "engine", "dynamic": ((16, 16), (720, 1280))})
    assert not build_engine(onnx_path, engine, other_profile, trt=trt).reused
    # a changed engine file is never trusted
    engine.write_bytes(engine.read_bytes()[:-10])
    rebuilt = build_engine(onnx_path, engine, other_profile, trt=trt)
    assert not rebuilt.reused and "changed" in rebuilt.reason
    assert build_engine(onnx_path, engine, validate({"format": "engine", "rebuild": True,
                                                     "dynamic": ((16, 16), (720, 1280))}), trt=trt).reason == "--rebuild"


def test_cli_engine_then_reuse(tmp_path, capsys, trt):
    from moefusion.export import cli

    onnx_path, _, _ = exported("edge", opset=17)
    engine = tmp_path / "e.fp16.engine"
    assert cli.main(["--weights", str(onnx_path), "--format", "engine", "--half", "-o", str(engine)]) == 0
    out = capsys.readouterr().out
    assert "engine: " in out and "built in" in out and "strongly typed" in out
    assert "runs on: " + ("TensorRT-RTX engine" if trt.rtx else "TensorRT engine") in out
    if trt.rtx:
        assert "trtexec --loadEngine" not in out and "on an RTX GPU" in out
    assert cli.main(["--weights", str(onnx_path), "--format", "engine", "--half", "-o", str(engine)]) == 0
    assert "reused" in capsys.readouterr().out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["e.fp16.engine", "e.fp16.engine.json", "e.fp16.onnx"]  # the fp16 ONNX it was built from


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

def test_plugin_flavour_is_never_parsed_by_tensorrt_rtx(tmp_path, trt, plugin_lib):
    """With the plugin library loaded, TensorRT-RTX's parser would create plugin layers and abort the process:
    a plugin-flavour ONNX is refused before any parse, in one line; with full TensorRT and no plugin library
    the parser's errors name the nodes."""
    onnx_path, _, _ = exported("edge", flavour="plugin", opset=17)
    if trt.rtx:
        trt.load_plugin_libraries([str(plugin_lib)])
        with pytest.raises(UserError) as e:
            build_engine(onnx_path, tmp_path / "p.engine", validate({"format": "engine"}), trt=trt)
        msg = str(e.value)
        assert "\n" not in msg and str(onnx_path) in msg and "moefusion::MoECombine" in msg and "--plugins off" in msg
    else:
        from moefusion.kernels.plugins import loaded_libraries

        if loaded_libraries(trt.trt):
            pytest.skip("the plugin library is loaded in this process: the parser would find the plugins")
        with pytest.raises(UserError) as e:
            build_engine(onnx_path, tmp_path / "p.engine", validate({"format": "engine"}), trt=trt)
        msg = str(e.value)
        assert "\n" not in msg and str(onnx_path) in msg
        assert "MoE" in msg and "--plugin-lib" in msg
    assert not any(tmp_path.iterdir()), "nothing written"


def test_plugins_with_tensorrt_rtx(tmp_path, trt, plugin_lib, monkeypatch, capsys):
    """The library present: --plugins auto chooses the standard flavour for TensorRT-RTX (two engines in one
    process, the library loaded at most once); --plugins on is a one-line error before any export or parse."""
    if not trt.rtx:
        pytest.skip("TensorRT-RTX only (full TensorRT takes the plugin flavour: test_tensorrt_plugin_flavour_engine)")
    from moefusion.export import cli

    monkeypatch.setenv("MOEFUSION_TRT_PLUGINS", str(plugin_lib))
    onnx_path, _, _ = exported("edge", opset=17)
    for name in ("a.engine", "b.engine"):
        res = run_export({"weights": str(onnx_path), "format": "engine", "output": str(tmp_path / name)}, trt=trt)
        assert res.engine.sidecar["plugin_libraries"] == [] and res.engine.sidecar["onnx_metadata"]["flavour"] == "standard"
        assert "takes no plugin layers" in "\n".join(res.lines)
    model = make_model("edge")
    with pytest.raises(UserError) as e:
        run_export({"format": "engine", "plugins": "on", "plugin_libs": [str(plugin_lib)],
                    "output": str(tmp_path / "p.engine")}, model=model, trt=trt)
    msg = str(e.value)
    assert "\n" not in msg and "--plugins on" in msg and "cannot take plugin layers" in msg
    assert not (tmp_path / "p.engine").exists() and not (tmp_path / "p.onnx").exists()
    # the command line says it in one line too (exit 2)
    assert cli.main(["--weights", str(onnx_path), "--format", "engine", "--plugins", "on", "-o",
                     str(tmp_path / "c.engine")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot take plugin layers" in err


def test_missing_plugin_library(tmp_path, trt, monkeypatch):
    if trt.rtx:
        pytest.skip("TensorRT-RTX never loads plugins for an engine (test_plugins_with_tensorrt_rtx)")
    onnx_path, _, _ = exported("edge", flavour="plugin", opset=17)
    with pytest.raises(UserError) as e:
        run_export({"weights": str(onnx_path), "format": "engine", "plugins": "on",
                    "plugin_libs": [str(tmp_path / "libmoefusion_trt_plugins.so")],
                    "output": str(tmp_path / "p.engine")}, trt=trt)
    msg = str(e.value)
    assert "\n" not in msg and "libmoefusion_trt_plugins.so: no such file" in msg and "moefusion.kernels.build" in msg
    monkeypatch.delenv("MOEFUSION_TRT_PLUGINS", raising=False)
    monkeypatch.setattr("moefusion.kernels.plugins.default_plugin_library", lambda: None)
    with pytest.raises(UserError) as e:
        run_export({"weights": str(onnx_path), "format": "engine", "output": str(tmp_path / "p.engine")}, trt=trt)
    assert "no TensorRT plugin library found" in str(e.value) and "--plugin-lib" in str(e.value)
    assert not any(tmp_path.iterdir())


def test_engine_for_another_tensorrt_gpu_or_precision(tmp_path, trt, monkeypatch):
    onnx_path, _, _ = exported("edge")
    engine = tmp_path / "m.engine"
    build_engine(onnx_path, engine, validate({"format": "engine", "dynamic": ((16, 16), (1088, 1920))}), trt=trt)
    assert verify_engine(engine, trt=trt)["precision"] == "fp32"
    side_path = sidecar_path(engine)
    side = json.loads(side_path.read_text())

    def check(change, expect, **kw):
        side_path.write_text(json.dumps({**side, **change}))
        with pytest.raises(UserError) as e:
            verify_engine(engine, trt=trt, **kw)
        msg = str(e.value)
        assert "\n" not in msg and str(engine) in msg and expect in msg and "moefusion-export" in msg
        side_path.write_text(json.dumps(side))

    check({"tensorrt": {"module": "tensorrt", "version": "8.6.2"}}, "built with tensorrt 8.6.2")
    check({}, "a fp32 engine, fp16 was asked for", precision="fp16")
    monkeypatch.setattr(trt, "gpu", lambda: {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"})
    check({"gpu": {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}}, "built for NVIDIA GeForce RTX 4090")
    monkeypatch.undo()
    side_path.unlink()
    with pytest.raises(UserError) as e:
        verify_engine(engine, trt=trt)
    assert "no moefusion sidecar" in str(e.value)
    # packaging such an engine for Triton stops at the same check
    side_path.write_text(json.dumps({**side, "tensorrt": {"module": "tensorrt", "version": "8.6.2"}}))
    with pytest.raises(UserError) as e:
        run_export({"weights": str(engine), "format": "triton", "triton_platform": "tensorrt",
                    "output": str(tmp_path / "repo")}, trt=trt)
    assert "built with tensorrt 8.6.2" in str(e.value)
    assert not (tmp_path / "repo" / "moefusion_edge").exists()


def test_no_silent_precision_fallback(trt, monkeypatch):
    """--half/--int8 are errors where they cannot be built: TensorRT without strongly typed networks (8.6),
    a GPU without fast FP16/INT8."""
    monkeypatch.setattr(trt, "rtx", False)
    monkeypatch.setattr(trt, "major", 8)
    with pytest.raises(UserError) as e:
        trt.check_precision("fp16", {"name": "Orin", "compute_capability": "8.7"})
    assert "has no strongly typed networks" in str(e.value) and "--half" in str(e.value)
    trt.check_precision("fp32", None)
    monkeypatch.setattr(trt, "major", 10)
    with pytest.raises(UserError) as e:
        trt.check_precision("int8", {"name": "old GPU", "compute_capability": "5.0"})
    assert "has no fast INT8" in str(e.value) and "\n" not in str(e.value)
    trt.check_precision("int8", {"name": "Orin", "compute_capability": "8.7"})


# ONNX Runtime, Q/DQ vs fp32, fused image on real pairs (bundled edge weights, 64x96, 8 calibration frames). INT8
# noise in the detectors moves the attention slightly, and the moments gates of near-tied experts then pick
# another expert on some frames (about 1 decision in 7): the max is that of a changed route, the mean stays small.
INT8_TOL = {"fused_max": 0.25, "fused_mean": 0.04}


def test_int8_qdq_onnx_and_engine(tmp_path, trt, shared_data):
    """--int8: ModelOpt inserts Q/DQ nodes (calibrated on real pairs through the runtime's preprocessing);
    the Q/DQ ONNX stays within INT8_TOL of fp32 in ONNX Runtime on real pairs it was not calibrated on,
    the gates stay float32, the expert convolutions (weights gathered per frame) fp16; the builder
    parses and builds it (strongly typed), and a second run reuses both."""
    pytest.importorskip("modelopt", reason="nvidia-modelopt is not installed (pip install 'moefusion[int8]')")
    import onnx

    from moefusion.export.quantize import layer_report

    model = make_model("edge")  # the bundled trained weights where present
    engine = tmp_path / "m.int8.engine"
    given = {"format": "engine", "int8": True, "imgsz": (64, 96), "opset": 17,
             "calib_data": str(shared_data("roadscene")), "calib_frames": 8, "output": str(engine)}
    res = run_export(given, model=model, trt=trt)
    qdq = tmp_path / "m.int8.onnx"
    side = res.engine.sidecar
    assert side["precision"] == "int8" and side["strongly_typed"] and side["builder_flags"] == []
    assert side["onnx_sha256"] == _files.sha256_file(qdq)
    q = side["quantization"]
    assert q["frames"] == 8 and q["size"] == [64, 96] and "roadscene" in q["calib_data"] and "modelopt" in q["tool"]
    text = "\n".join(res.lines)
    assert "INT8: " in text and "convolutions INT8" in text and "expert convolutions fp16" in text and "gates fp32" in text
    proto = onnx.load(str(qdq))
    report = layer_report(proto)
    assert len(report["int8"]) >= 50 and len(report["fp16_experts"]) >= 6 and report["fp32"]
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(onnx.shape_inference.infer_shapes(proto).graph.value_info) + list(proto.graph.input)}
    for n in proto.graph.node:
        if n.op_type in ("TopK", "Softmax", "MatMul"):
            assert types.get(n.input[0]) == onnx.TensorProto.FLOAT, f"{n.op_type} {n.name} must stay float32"
    # accuracy: ONNX Runtime, Q/DQ against the float32 ONNX of the same model, on pairs of other sets
    fp32 = run_export({"format": "onnx", "imgsz": (64, 96), "opset": 17, "output": str(tmp_path / "m.onnx")},
                      model=model).outputs[0]
    a, b = ort_session(fp32), ort_session(qdq)
    worst = []
    for name, ir, vis in real_inputs(shared_data, (64, 96)):
        if name.startswith("roadscene"):
            continue
        ref = a.run(None, {"ir": ir, "vis": vis})[0]
        got = b.run(None, {"ir": ir, "vis": vis})[0]
        err = np.abs(got - ref)
        worst.append((float(err.max()), float(err.mean()), name))
        assert err.max() <= INT8_TOL["fused_max"] and err.mean() <= INT8_TOL["fused_mean"], (name, err.max(), err.mean())
    print("int8 vs fp32 (max, mean abs):", max(worst))
    again = run_export(given, model=model, trt=trt)
    assert again.engine.reused and "INT8: " in again.lines[0] and "reused" in again.lines[0]
    # the Q/DQ ONNX builds INT8 engines by itself: no frames needed
    res3 = run_export({"weights": str(qdq), "format": "engine", "output": str(tmp_path / "from_qdq.engine")}, trt=trt)
    assert res3.engine.sidecar["precision"] == "int8"


def test_int8_needs_modelopt_and_frames(tmp_path, trt, monkeypatch):
    onnx_path, _, _ = exported("edge", opset=17)
    with pytest.raises(UserError) as e:
        run_export({"weights": str(onnx_path), "format": "engine", "int8": True, "output": str(tmp_path / "m.engine")},
                   trt=trt)
    assert "--calib-data" in str(e.value) and "\n" not in str(e.value)
    monkeypatch.setattr("moefusion.export.quantize.modelopt_version", lambda: None)
    with pytest.raises(UserError) as e:
        run_export({"weights": str(onnx_path), "format": "engine", "int8": True, "calib_data": str(tmp_path),
                    "output": str(tmp_path / "m.engine")}, trt=trt)
    assert "pip install 'moefusion[int8]'" in str(e.value)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------
# Full TensorRT + GPU (Jetson / x86 with TensorRT): marked, skipped here with the reason
# ------------------------------------------------------------------------------------------------

@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
@needs_gpu
@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
def test_tensorrt_engine_runs_like_onnxruntime(tmp_path, shared_data, half):
    from moefusion.runtime.backends import TensorRTBackend

    trt = TRT(import_trt("tensorrt"))
    onnx_path, _, _ = exported("edge")
    engine = tmp_path / "m.engine"
    res = run_export({"weights": str(onnx_path), "format": "engine", "half": half or None, "output": str(engine)}, trt=trt)
    side = res.engine.sidecar
    assert side["gpu"]["name"] and side["tensorrt"]["module"] == "tensorrt"
    assert side["strongly_typed"] and side["builder_flags"] == []
    backend = TensorRTBackend(str(engine))
    sess = ort_session(onnx_path)
    for name, ir, vis in real_inputs(shared_data, (64, 96))[:4]:
        fused, att = backend.infer(ir, vis)
        ref = sess.run(None, {"ir": ir, "vis": vis})
        np.testing.assert_allclose(fused, ref[0], atol=2e-2 if half else 1e-3, err_msg=name)
        np.testing.assert_allclose(att, ref[1], atol=2e-2 if half else 1e-3, err_msg=name)


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
@needs_gpu
def test_tensorrt_plugin_flavour_engine(tmp_path, shared_data):
    """Two plugin-flavour engines in one process: the plugin library is loaded once."""
    from moefusion.export.api import plugin_library_candidates

    libs = plugin_library_candidates(validate({"format": "engine"}))
    if not libs:
        pytest.skip("the TensorRT plugin library is not built (python -m moefusion.kernels.build)")
    from moefusion.runtime.backends import TensorRTBackend

    trt = TRT(import_trt("tensorrt"))
    onnx_path, _, _ = exported("edge", flavour="plugin")
    engine = tmp_path / "p.engine"
    res = run_export({"weights": str(onnx_path), "format": "engine", "plugins": "on", "output": str(engine)}, trt=trt)
    assert res.engine.sidecar["plugin_libraries"]
    res2 = run_export({"weights": str(onnx_path), "format": "engine", "plugins": "on", "rebuild": True,
                       "output": str(tmp_path / "p2.engine")}, trt=trt)
    assert res2.engine.sidecar["plugin_libraries"] == res.engine.sidecar["plugin_libraries"]
    ref_path, _, _ = exported("edge")
    sess = ort_session(ref_path)
    backend = TensorRTBackend(str(engine))
    for name, ir, vis in real_inputs(shared_data, (64, 96))[:4]:
        fused, _ = backend.infer(ir, vis)
        np.testing.assert_allclose(fused, sess.run(None, {"ir": ir, "vis": vis})[0], atol=1e-3, err_msg=name)
