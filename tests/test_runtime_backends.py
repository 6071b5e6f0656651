"""Inference backends: the classical average, torch (a real tiny module with forward_unit),
ONNX Runtime (a real .onnx exported here with the export contract's names) and TensorRT
(needs full TensorRT and a GPU: skipped here with a reason)."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest

from moefusion.errors import UserError
from moefusion.kernels.plugins import plugin_libraries
from moefusion.runtime.backends import (
    AverageBackend,
    OnnxRuntimeBackend,
    TensorRTBackend,
    TorchBackend,
    model_kind,
    select_backend,
)

HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def inputs(h=30, w=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((1, 1, h, w), dtype=np.float32), rng.random((1, 1, h, w), dtype=np.float32)


def test_average_backend():
    b = AverageBackend()
    ir, vis = inputs()
    fused, att = b.infer(ir, vis)
    np.testing.assert_allclose(fused, (ir + vis) / 2, rtol=1e-6)
    assert att is None and fused.shape == ir.shape and fused.dtype == np.float32
    assert b.warmup(8, 8) >= 0
    with pytest.raises(ValueError):
        b.infer(ir, vis[:, :, :10])


def _tiny_module():
    import torch
    from torch import nn

    class Tiny(nn.Module):
        """A small attention-weighted fuser with the runtime's contract (not MoE-Fusion)."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.att = nn.Conv2d(2, 1, 3, padding=1)

        def forward(self, ir, vis):
            a = torch.sigmoid(self.att(torch.cat([ir, vis], 1)))
            return a * ir + (1 - a) * vis, a

        def forward_unit(self, ir, vis):
            return self.forward(ir, vis)

    return Tiny().eval()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    if not (HAVE_TORCH and HAVE_ORT):
        pytest.skip("needs torch and onnxruntime")
    import torch

    m = _tiny_module()
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    ir, vis = inputs(16, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.from_numpy(ir), torch.from_numpy(vis)), str(path), input_names=["ir", "vis"],
                          output_names=["fused", "attention"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {2: "h", 3: "w"} for n in ("ir", "vis", "fused", "attention")})
    return path, m


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
def test_torch_backend_with_a_module_exposing_forward_unit():
    import torch

    m = _tiny_module()
    b = TorchBackend(model=m, device="cpu")
    ir, vis = inputs()
    fused, att = b.infer(ir, vis)
    with torch.no_grad():
        ref_f, ref_a = m(torch.from_numpy(ir), torch.from_numpy(vis))
    np.testing.assert_allclose(fused, ref_f.numpy(), atol=1e-6)
    np.testing.assert_allclose(att, ref_a.numpy(), atol=1e-6)
    assert "cpu, fp32" in b.describe()

    class Wrapper:  # what moefusion.load may return: an object holding the torch model
        def __init__(self, model):
            self.model = model

    f2, _ = TorchBackend(model=Wrapper(m), device="cpu").infer(ir, vis)
    np.testing.assert_allclose(f2, fused)
    with pytest.raises(UserError, match="no forward_unit"):
        TorchBackend(model=object(), device="cpu").load()
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        TorchBackend(model=m, device="cpu", precision="fp16").load()


def test_onnxruntime_backend_runs_the_exported_model(tiny_onnx):
    import torch

    path, m = tiny_onnx
    b = OnnxRuntimeBackend(str(path))
    assert b.providers[-1] == "CPUExecutionProvider" and b.out_names == ["fused", "attention"]
    for h, w in ((30, 40), (48, 64)):  # dynamic H/W
        ir, vis = inputs(h, w, seed=h)
        fused, att = b.infer(ir, vis)
        with torch.no_grad():
            rf, ra = m(torch.from_numpy(ir), torch.from_numpy(vis))
        np.testing.assert_allclose(fused, rf.numpy(), atol=1e-5)
        np.testing.assert_allclose(att, ra.numpy(), atol=1e-5)
    assert "onnxruntime (CPU" in b.describe()
    sel, why = select_backend("auto", str(path), device="cpu")
    assert isinstance(sel, OnnxRuntimeBackend) and "onnxruntime" in why


@pytest.fixture(scope="module")
def fixed_size_onnx(tmp_path_factory):
    """The tiny model exported without dynamic axes: it takes 20x16 frames only."""
    if not (HAVE_TORCH and HAVE_ORT):
        pytest.skip("needs torch and onnxruntime")
    import torch

    path = tmp_path_factory.mktemp("onnx") / "fixed.onnx"
    ir, vis = inputs(16, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_tiny_module(), (torch.from_numpy(ir), torch.from_numpy(vis)), str(path),
                          input_names=["ir", "vis"], output_names=["fused", "attention"], opset_version=17, dynamo=False)
    return path


def test_fixed_size_model_names_its_size_and_the_fix(fixed_size_onnx):
    b = OnnxRuntimeBackend(str(fixed_size_onnx))
    assert b.size_range == ((16, 20), (16, 20))
    b.infer(*inputs(16, 20))
    with pytest.raises(UserError) as e:
        b.infer(*inputs(30, 40))
    msg = str(e.value)
    assert "fixed.onnx" in msg and "takes 20x16 frames, not 40x30" in msg and "--imgsz 30 40" in msg
    with pytest.raises(UserError, match="not 40x30"):
        b.warmup(30, 40)


def test_run_pipeline_fits_frames_to_a_fixed_size_model(fixed_size_onnx, tmp_path, capsys):
    """The 20x16 model runs on the demo's registration crop (254x186: 256x188 at (31, 23) in VIS
    pixels, shrunk to even corners for 4:2:0): letterboxed into 20x16 and back, the choice logged;
    the output is what ONNX Runtime gives on the letterboxed frame."""
    from pathlib import Path

    import cv2
    import onnxruntime as ort

    from moefusion.runtime.cli import main
    from moefusion.runtime.registration import Registrar
    from moefusion.runtime.yuv import I420Frame

    demo = Path(__file__).resolve().parents[1] / "samples" / "demo"
    out, sj = tmp_path / "fixed.mkv", tmp_path / "s.json"
    code = main(["--ir", str(demo / "ir.mp4"), "--vis", str(demo / "vis.mp4"), "--registration",
                 str(demo / "registration.yaml"), "--model", str(fixed_size_onnx), "--output", str(out),
                 "--max-frames", "2", "--stats-interval", "0", "--stats-json", str(sj)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "frames 254x186 are letterboxed into the model input 20x16" in err
    import json

    st = json.loads(sj.read_text())
    assert st["size"] == [254, 186] and st["model_size"] == [20, 16] and "letterboxed" in st["model_fit"]
    cap = cv2.VideoCapture(str(out))
    ok, got = cap.read()
    assert ok and got.shape == (186, 254, 3)
    # reference: the first frames decoded by OpenCV, registered, letterboxed by hand, the model, back
    ir = cv2.cvtColor(cv2.VideoCapture(str(demo / "ir.mp4")).read()[1], cv2.COLOR_BGR2GRAY)
    vis = cv2.VideoCapture(str(demo / "vis.mp4")).read()[1]
    ir, vis = Registrar.from_file(str(demo / "registration.yaml")).apply(ir, I420Frame.from_bgr(vis))
    y = cv2.cvtColor(vis.to_bgr(), cv2.COLOR_BGR2YCrCb)[:, :, 0]
    w, h = 20, 15  # 254x186 scaled by 20/254 -> 20x15, one padded row at the bottom

    def box(img):
        small = cv2.resize(img.astype(np.float32) / 255, (w, h), interpolation=cv2.INTER_AREA)
        return cv2.copyMakeBorder(small, 0, 16 - h, 0, 0, cv2.BORDER_REPLICATE)[None, None]

    sess = ort.InferenceSession(str(fixed_size_onnx), providers=["CPUExecutionProvider"])
    fused = sess.run(["fused"], {"ir": box(ir), "vis": box(y)})[0][0, 0]
    want = np.clip(cv2.resize(fused[:h, :w], (254, 186), interpolation=cv2.INTER_LINEAR) * 255, 0, 255)
    got_y = cv2.cvtColor(got, cv2.COLOR_BGR2YCrCb)[:, :, 0].astype(np.float32)
    assert np.abs(got_y - want).mean() < 4.0  # H.264 is lossy


def test_onnxruntime_backend_rejects_a_model_with_other_names(tiny_onnx, tmp_path):
    import onnx

    path, _ = tiny_onnx
    model = onnx.load(str(path))
    model.graph.input[0].name = "x"
    for node in model.graph.node:
        node.input[:] = ["x" if i == "ir" else i for i in node.input]
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(UserError) as e:
        OnnxRuntimeBackend(str(bad))
    assert "expected inputs ir, vis" in str(e.value) and "'x'" in str(e.value)


@pytest.mark.parametrize("args,needle", [
    (("onnxruntime", None), "needs an .onnx"),
    (("tensorrt", None), "needs an engine file"),
    (("nope", None), "unknown"),
    (("auto", "/no/such/model.onnx"), "no such file"),
])
def test_backend_selection_errors(args, needle):
    with pytest.raises(UserError) as e:
        select_backend(*args)
    assert needle in str(e.value)


def test_model_kinds_and_average_choice(tmp_path):
    assert model_kind("a.engine") == "engine" and model_kind("a.plan") == "engine"
    assert model_kind("a.onnx") == "onnx" and model_kind("a.pt") == "checkpoint" and model_kind(None) == "checkpoint"
    b, why = select_backend("average")
    assert isinstance(b, AverageBackend) and "average" in why


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
def test_auto_without_model_does_not_fall_back_to_averaging(tmp_path, monkeypatch, capsys):
    """Default weights that cannot be loaded (here: not where the install put them) are an error
    for --backend auto, a one-line one, not a silent switch to the classical average."""
    from moefusion.model import checkpoint
    from moefusion.runtime.cli import main

    monkeypatch.setattr(checkpoint, "DEFAULT_WEIGHTS", tmp_path / "moefusion_edge.pt")
    with pytest.raises(UserError, match="--backend auto: the default weights cannot be loaded .*--backend average"):
        select_backend("auto", None, device="cpu")
    demo = __import__("pathlib").Path(__file__).resolve().parents[1] / "samples" / "demo"
    rc = main(["--ir", str(demo / "ir.mp4"), "--vis", str(demo / "vis.mp4"), "--output", "none", "--log-level", "error"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: --backend auto: the default weights cannot be loaded")
    assert "Traceback" not in "\n".join(err)


def test_engine_that_cannot_load_is_a_user_error(tmp_path):
    eng = tmp_path / "model.engine"
    eng.write_bytes(b"\0" * 64)
    with pytest.raises(UserError) as e:
        select_backend("auto", str(eng))
    assert str(eng) in str(e.value) or "TensorRT" in str(e.value)


def test_plugin_libraries_from_sidecar(tmp_path, monkeypatch):
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"")
    (tmp_path / "m.engine.json").write_text('{"plugin_libraries": ["libmoe_plugins.so"]}')
    assert plugin_libraries(str(eng), None) == [str(tmp_path / "libmoe_plugins.so")]
    assert plugin_libraries(str(eng), ["/x/lib.so"]) == ["/x/lib.so"]
    (tmp_path / "m.engine.json").unlink()
    monkeypatch.setenv("MOEFUSION_TRT_PLUGINS", "/a.so:/b.so")
    assert plugin_libraries(str(eng), None) == ["/a.so", "/b.so"]


def _tensorrt_and_gpu():
    try:
        import tensorrt  # noqa: F401  (full TensorRT; TensorRT-RTX engines cannot run on the GPUs here)
    except ImportError:
        return "full TensorRT (module tensorrt) is not installed"
    from moefusion.runtime.backends import _cuda_device_count_no_torch

    if _cuda_device_count_no_torch() == 0:
        return "no CUDA GPU"
    return ""


@pytest.mark.tensorrt
@pytest.mark.skipif(bool(_tensorrt_and_gpu()), reason=f"TensorRT engine run: {_tensorrt_and_gpu()}")
def test_tensorrt_backend_matches_onnxruntime(tiny_onnx, tmp_path):
    import tensorrt as trt

    path, _ = tiny_onnx
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    net = builder.create_network(0)
    parser = trt.OnnxParser(net, logger)
    assert parser.parse(path.read_bytes())
    cfg = builder.create_builder_config()
    prof = builder.create_optimization_profile()
    for n in ("ir", "vis"):
        prof.set_shape(n, (1, 1, 16, 16), (1, 1, 48, 64), (1, 1, 64, 64))
    cfg.add_optimization_profile(prof)
    eng = tmp_path / "tiny.engine"
    eng.write_bytes(bytes(builder.build_serialized_network(net, cfg)))
    b = TensorRTBackend(str(eng))
    ir, vis = inputs(48, 64)
    f_trt, a_trt = b.infer(ir, vis)
    f_ort, a_ort = OnnxRuntimeBackend(str(path), device="cpu").infer(ir, vis)
    np.testing.assert_allclose(f_trt, f_ort, atol=1e-3)
    np.testing.assert_allclose(a_trt, a_ort, atol=1e-3)
    b.close()


def test_moefusion_load_of_an_onnx_gives_fuse(tiny_onnx):
    """moefusion.load(path.onnx) goes through runtime.backends.open_model_file."""
    import moefusion

    path, m = tiny_onnx
    model = moefusion.load(str(path))
    rng = np.random.default_rng(4)
    ir = rng.integers(0, 255, (30, 40), dtype=np.uint8)
    vis = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    out = model.fuse(ir, vis)
    assert out.shape == vis.shape and out.dtype == np.uint8
    assert "onnxruntime" in model.describe()
