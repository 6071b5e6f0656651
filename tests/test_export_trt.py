"""TensorRT engines through moefusion.export's builder.

CI (no GPU, no full TensorRT): TensorRT for RTX (``tensorrt_rtx``) parses and builds both presets'
ONNX, fp32 and fp16, through the same code users run; sidecar, reuse, verification and the bad
inputs are checked on those builds.

On a Jetson / a machine with TensorRT and a GPU, the marked tests build real TensorRT engines, run
them with the runtime's TensorRT backend and calibrate INT8::

    pytest -m "tensorrt or gpu" tests/test_export_trt.py tests/test_calibration_int8.py
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("onnx")
from helpers import exported, ort_session, real_inputs  # noqa: E402

from moefusion.errors import UserError  # noqa: E402
from moefusion.export import _files  # noqa: E402
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
    if trt.typed_precision:  # TensorRT-RTX: precision from the ONNX types
        assert side["onnx_metadata"]["precision"] == side["precision"] and side["strongly_typed"]
        assert side["gpu"] is None or side["gpu"]["name"]
    else:
        assert ("FP16" in side["builder_flags"]) == half


def test_engine_reuse_only_when_everything_matches(tmp_path, trt):
    onnx_path, _, _ = exported("edge")
    engine = _engine(tmp_path)
    opts = validate({"format": "engine", "dynamic": ((16, 16), (1088, 1920))})
    first = build_engine(onnx_path, engine, opts, trt=trt)
    assert not first.reused
    again = build_engine(onnx_path, engine, opts, trt=trt)
    assert again.reused and again.sidecar["engine_sha256"] == first.sidecar["engine_sha256"]
    wanted = {k: first.sidecar[k] for k in ("onnx_sha256", "tensorrt", "gpu", "precision", "profile",
                                            "plugin_libraries", "plugin_sha256", "int8_calibration")}
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
    assert "engine: " in out and "built in" in out
    assert cli.main(["--weights", str(onnx_path), "--format", "engine", "--half", "-o", str(engine)]) == 0
    assert "reused" in capsys.readouterr().out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["e.fp16.engine", "e.fp16.engine.json"] + (["e.fp16.onnx"] if trt.typed_precision else [])


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------

def test_parser_errors_name_the_nodes(tmp_path, trt):
    """The plugin flavour without its plugin library: every failing node by name, and the fix."""
    onnx_path, _, _ = exported("edge", flavour="plugin", opset=17)
    with pytest.raises(UserError) as e:
        build_engine(onnx_path, tmp_path / "p.engine", validate({"format": "engine"}), trt=trt)
    msg = str(e.value)
    assert "\n" not in msg and str(onnx_path) in msg
    assert "MoEGate" in msg and "--plugin-lib" in msg
    assert not any(tmp_path.iterdir()), "nothing written"


def test_missing_plugin_library(tmp_path, trt, monkeypatch):
    onnx_path, _, _ = exported("edge", flavour="plugin", opset=17)
    with pytest.raises(UserError) as e:
        run_export({"weights": str(onnx_path), "format": "engine", "plugins": "on",
                    "plugin_libs": [str(tmp_path / "libmoefusion_trt_plugins.so")],
                    "output": str(tmp_path / "p.engine")}, trt=trt)
    msg = str(e.value)
    assert "\n" not in msg and "libmoefusion_trt_plugins.so: no such file" in msg and "moefusion.kernels.build" in msg
    monkeypatch.delenv("MOEFUSION_TRT_PLUGINS", raising=False)
    monkeypatch.setattr("moefusion.runtime.backends.default_plugin_library", lambda: None)
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


def test_int8_where_it_cannot_be_built(tmp_path, trt, shared_data):
    """No silent fallback: --int8 (and --half) fail where this TensorRT/GPU lacks them, before any export."""
    onnx_path, _, _ = exported("edge")
    given = {"weights": str(onnx_path), "format": "engine", "int8": True,
             "calib_data": str(shared_data("tno_seq_tree")), "calib_frames": 8, "output": str(tmp_path / "m.engine")}
    if trt.rtx:
        with pytest.raises(UserError) as e:
            run_export(given, trt=trt)
        assert "TensorRT-RTX has no INT8 calibration" in str(e.value) and "\n" not in str(e.value)
    else:
        class NoFast:
            platform_has_fast_int8 = False
            platform_has_fast_fp16 = False

        with pytest.raises(UserError) as e:
            trt.check_precision(NoFast(), "int8", {"name": "old GPU", "compute_capability": "5.0"})
        assert "has no fast INT8" in str(e.value)
    assert not (tmp_path / "m.engine").exists()


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
    if half:
        assert side["builder_flags"] == ["FP16"] and side["fp32_pinned_layers"] > 0
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
def test_tensorrt_int8_with_calibration_cache(tmp_path, shared_data):
    trt = TRT(import_trt("tensorrt"))
    onnx_path, _, _ = exported("edge", dynamic=False)
    engine = tmp_path / "m.int8.engine"
    given = {"weights": str(onnx_path), "format": "engine", "int8": True, "calib_data": str(shared_data("roadscene")),
             "calib_frames": 32, "output": str(engine)}
    res = run_export(given, trt=trt)
    cache = tmp_path / "m.int8.engine.calib"
    assert cache.is_file() and res.engine.sidecar["precision"] == "int8"
    assert res.engine.sidecar["int8_calibration"]["frames"] == 32
    assert "INT8" in res.engine.sidecar["builder_flags"]
    assert run_export(given, trt=trt).engine.reused
    # a later build may start from the cache alone
    res2 = run_export({"weights": str(onnx_path), "format": "engine", "int8": True, "calib_cache": str(cache),
                       "output": str(tmp_path / "again.engine")}, trt=trt)
    assert res2.engine.sidecar["int8_calibration"]["source"] is None


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_trt
@needs_gpu
def test_tensorrt_plugin_flavour_engine(tmp_path, shared_data):
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
    ref_path, _, _ = exported("edge")
    sess = ort_session(ref_path)
    backend = TensorRTBackend(str(engine))
    for name, ir, vis in real_inputs(shared_data, (64, 96))[:4]:
        fused, _ = backend.infer(ir, vis)
        np.testing.assert_allclose(fused, sess.run(None, {"ir": ir, "vis": vis})[0], atol=1e-3, err_msg=name)
