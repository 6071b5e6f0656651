"""moefusion-export --format triton: repository layout, config.pbtxt, the frames ensemble.

The config.pbtxt files are parsed with protobuf's text format against Triton's own ModelConfig
(model_config.proto): ``tests/data/triton_model_config.pb`` is its serialized FileDescriptorProto,
taken from tritonclient 2.73.0 (``tritonclient/grpc/model_config_pb2.py``, the argument of
``AddSerializedFile``), so a misspelt field or enum, or two scheduling choices, fails here as it
would in tritonserver. The ensemble's Python-backend steps run here outside Triton (a fake
``triton_python_backend_utils``), wired by the ensemble's own config, the model step by ONNX Runtime
as Triton's onnxruntime backend runs it, on real frames, and their output is compared with
run_pipeline's processing of the same frames.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnx")
from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    text_format,
)
from helpers import (
    exported,
    make_model,
    ort_session,
    read_pair,
    real_inputs,
    torch_outputs,
)

from moefusion.errors import UserError
from moefusion.export.api import run_export
from moefusion.export.triton import config_pbtxt, io_from_metadata
from moefusion.export.trt_shim import import_trt

DESCRIPTOR = Path(__file__).parent / "data" / "triton_model_config.pb"


def _model_config_class():
    """Triton's ModelConfig message, from its real schema."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(DESCRIPTOR.read_bytes()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _model_config_class()
DataType = ModelConfig.DESCRIPTOR.file.pool.FindEnumTypeByName("inference.DataType").values_by_name


def parse_config(path):
    return text_format.Parse(path.read_text(), ModelConfig())


def test_onnxruntime_repository_layout_and_config(tmp_path, shared_data):
    onnx_path, _, model = exported("edge", opset=17)
    repo = tmp_path / "model_repository"
    (repo / "other_model" / "1").mkdir(parents=True)  # models already there stay
    res = run_export({"weights": str(onnx_path), "format": "triton", "output": str(repo), "triton_instances": 2})
    model_dir = repo / "moefusion_edge"
    assert res.outputs == [model_dir] + [repo / f"moefusion_edge_{s}" for s in ("pre", "post", "frames")]
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == [
        "moefusion_edge", "moefusion_edge/1", "moefusion_edge/1/model.onnx", "moefusion_edge/config.pbtxt",
        "moefusion_edge_frames", "moefusion_edge_frames/1", "moefusion_edge_frames/config.pbtxt",
        "moefusion_edge_post", "moefusion_edge_post/1", "moefusion_edge_post/1/model.py",
        "moefusion_edge_post/config.pbtxt",
        "moefusion_edge_pre", "moefusion_edge_pre/1", "moefusion_edge_pre/1/model.py", "moefusion_edge_pre/config.pbtxt",
        "other_model", "other_model/1"]
    cfg = parse_config(model_dir / "config.pbtxt")
    assert cfg.name == "moefusion_edge" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 0
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("ir", [1, 1, -1, -1]), ("vis", [1, 1, -1, -1])]
    outs = {o.name: (o.data_type, list(o.dims)) for o in cfg.output}
    assert outs["fused"] == (ModelConfig.DESCRIPTOR.file.pool.FindEnumTypeByName("inference.DataType")
                             .values_by_name["TYPE_FP32"].number, [1, 1, -1, -1])
    assert set(outs) >= {"fused", "attention"}
    assert cfg.instance_group[0].count == 2 and not cfg.HasField("dynamic_batching")
    # warmed up at load: one request of zeros at the export size (the dims are dynamic)
    warm, = cfg.model_warmup
    assert warm.batch_size == 1 and sorted(warm.inputs) == ["ir", "vis"]
    assert list(warm.inputs["ir"].dims) == [1, 1, 480, 640] and warm.inputs["ir"].zero_data
    assert warm.inputs["vis"].data_type == DataType["TYPE_FP32"].number
    # what Triton would load is the model the runtime would load
    (name, ir, vis), = real_inputs(shared_data, (64, 96), pairs=(("msrs_det", "00004N"),))
    got = ort_session(model_dir / "1" / "model.onnx").run(None, {"ir": ir, "vis": vis})
    np.testing.assert_allclose(got[0], torch_outputs(model, ir, vis)[0], atol=1e-4)
    # exporting again replaces the model folder as a whole
    run_export({"weights": str(onnx_path), "format": "triton", "output": str(repo)})
    assert parse_config(model_dir / "config.pbtxt").instance_group[0].count == 1
    assert not [p for p in repo.iterdir() if p.name.startswith(".")], "no temp folders left"


def test_dynamic_batch_config_for_a_camera_fleet():
    meta = {"inputs": ["ir", "vis"], "outputs": ["fused", "attention"], "batch": "8", "batch_dynamic": True,
            "dynamic": [[64, 64], [1088, 1920]], "imgsz": [480, 640]}
    ins, outs, max_batch, dyn = io_from_metadata(meta)
    assert max_batch == 8 and dyn and ins[0] == ("ir", "float32", [1, -1, -1])
    text = config_pbtxt("fleet", "tensorrt", ins, outs, max_batch_size=max_batch, instances=2, dynamic_batching=dyn)
    cfg = text_format.Parse(text, ModelConfig())
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.max_batch_size == 8 and list(cfg.input[0].dims) == [1, -1, -1]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    static = io_from_metadata({**meta, "batch_dynamic": False, "batch": "1", "dynamic": None})
    assert static[2] == 0 and static[0][0] == ("ir", "float32", [1, 1, 480, 640]) and not static[3]


def test_dense_dynamic_export_gives_a_batching_repository(tmp_path):
    onnx_path, _, _ = exported("edge", opset=17, dispatch="dense", batch=4, routes=True)
    res = run_export({"weights": str(onnx_path), "format": "triton", "output": str(tmp_path / "repo"),
                      "triton_name": "fleet"})
    cfg = parse_config(res.outputs[0] / "config.pbtxt")
    assert cfg.name == "fleet" and cfg.max_batch_size == 4 and cfg.HasField("dynamic_batching")
    sess = ort_session(res.outputs[0] / "1" / "model.onnx")
    x = np.random.default_rng(0).random((3, 1, 64, 96), dtype=np.float32)
    assert sess.run(None, {"ir": x, "vis": x[::-1].copy()})[0].shape == (3, 1, 64, 96)
    assert [o.name for o in cfg.output][:2] == ["fused", "attention"]


@pytest.mark.skipif(import_trt() is None, reason="neither tensorrt nor tensorrt_rtx is installed")
def test_tensorrt_repository(tmp_path):
    """Full TensorRT: a plan beside its sidecar. TensorRT-RTX: a one-line error before any work (Triton's
    TensorRT backend cannot load TensorRT-RTX plans), nothing written."""
    onnx_path, _, _ = exported("edge", opset=17)
    given = {"weights": str(onnx_path), "format": "triton", "triton_platform": "tensorrt", "half": True,
             "output": str(tmp_path / "repo")}
    if import_trt().__name__ == "tensorrt_rtx":
        with pytest.raises(UserError) as e:
            run_export(given)
        msg = str(e.value)
        assert "\n" not in msg and "Triton's TensorRT backend cannot load" in msg and "--triton-platform onnxruntime" in msg
        assert not (tmp_path / "repo").exists()
        return
    res = run_export(given)
    model_dir = res.outputs[0]
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.plan", "model.plan.json"]
    cfg = parse_config(model_dir / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 0
    assert res.engine.sidecar["precision"] == "fp16" and "TensorRT engine" in res.engine.sidecar["runs_on"]["summary"]


def test_triton_bad_inputs(tmp_path):
    onnx_path, _, _ = exported("edge", opset=17)
    with pytest.raises(UserError) as e:
        run_export({"weights": str(onnx_path), "format": "triton", "triton_name": "bad name!",
                    "output": str(tmp_path / "r")})
    assert "--triton-name" in str(e.value)
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"0")
    with pytest.raises(UserError) as e:
        run_export({"weights": str(engine), "format": "triton", "output": str(tmp_path / "r")})
    assert "add --triton-platform tensorrt" in str(e.value)


# ------------------------------------------------------------------------------------------------
# The frames ensemble: <name>_pre (Python) -> <name> (the model) -> <name>_post (Python)
# ------------------------------------------------------------------------------------------------

class _TritonError(Exception):
    def message(self):
        return str(self)


class _Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class _Response:
    def __init__(self, output_tensors, error=None):
        self.tensors, self.error = output_tensors, error


def _fake_pb_utils():
    """What the steps use of triton_python_backend_utils (the module exists only inside Triton)."""
    m = types.ModuleType("triton_python_backend_utils")
    m.Tensor, m.InferenceResponse, m.TritonError = _Tensor, _Response, _TritonError
    m.get_input_tensor_by_name = lambda request, name: request.get(name)
    return m


class FakeTriton:
    """Runs a model repository's ensemble as tritonserver would: the steps in order, tensors routed by
    the ensemble config's input/output maps, each tensor checked against the config of the model that
    takes or gives it (data type, dims with -1 as a wildcard, the batch axis when max_batch_size > 0);
    Python-backend models loaded from their model.py and initialised with their config as JSON;
    ONNX models run by ONNX Runtime."""

    def __init__(self, repo: Path, monkeypatch):
        self.repo = repo
        monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
        self.models = {}

    def config(self, name):
        return parse_config(self.repo / name / "config.pbtxt")

    def _check(self, cfg, section, arrays):
        decl = {t.name: t for t in getattr(cfg, section)}
        for name, a in arrays.items():
            t = decl[name]
            dtype = {DataType["TYPE_UINT8"].number: np.uint8, DataType["TYPE_FP32"].number: np.float32,
                     DataType["TYPE_INT64"].number: np.int64}[t.data_type]
            assert a.dtype == dtype, (cfg.name, name, a.dtype)
            dims = ([-1] if cfg.max_batch_size > 0 else []) + list(t.dims)
            assert a.ndim == len(dims) and all(d in (-1, n) for d, n in zip(dims, a.shape)), (cfg.name, name, a.shape, dims)

    def _load(self, name):
        if name not in self.models:
            cfg = self.config(name)
            if cfg.backend == "python":
                spec = importlib.util.spec_from_file_location(f"triton_model_{name}", self.repo / name / "1" / "model.py")
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
                model = mod.TritonPythonModel()
                model.initialize({"model_config": json_format.MessageToJson(cfg, preserving_proto_field_name=True),
                                  "model_name": name, "model_version": "1"})
                self.models[name] = model
            else:
                assert cfg.platform == "onnxruntime_onnx"
                self.models[name] = ort_session(self.repo / name / "1" / "model.onnx")
        return self.models[name]

    def infer(self, name, inputs: dict) -> dict:
        cfg = self.config(name)
        self._check(cfg, "input", inputs)
        model = self._load(name)
        if cfg.backend == "python":
            response, = model.execute([{k: _Tensor(k, v) for k, v in inputs.items()}])
            if response.error is not None:
                raise response.error
            outs = {t.name(): t.as_numpy() for t in response.tensors}
        else:
            names = [o.name for o in cfg.output]
            outs = dict(zip(names, model.run(names, inputs)))
        self._check(cfg, "output", outs)
        return outs

    def ensemble(self, name, inputs: dict) -> dict:
        cfg = self.config(name)
        assert cfg.platform == "ensemble"
        self._check(cfg, "input", inputs)
        tensors = dict(inputs)
        for step in cfg.ensemble_scheduling.step:
            outs = self.infer(step.model_name, {k: tensors[v] for k, v in step.input_map.items()})
            tensors.update({v: outs[k] for k, v in step.output_map.items()})
        result = {o.name: tensors[o.name] for o in cfg.output}
        self._check(cfg, "output", result)
        return result


def _run_pipeline_processing(model_file, ir, vis, model_fit="letterbox"):
    """What run_pipeline does with one pair (runtime.process + the ONNX Runtime backend), uint8 (H, W, C) out."""
    from moefusion.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from moefusion.runtime.fit import plan_model_fit
    from moefusion.runtime.process import Preprocessor, postprocess

    backend = OnnxRuntimeBackend(str(model_file), device="cpu")
    pre = Preprocessor(fit_for=lambda h, w: plan_model_fit((h, w), backend.size_range, model_fit))
    prep = pre(ir, vis)
    fused, _ = backend.infer(prep.model_ir, prep.model_vis)
    out = postprocess(fused[0, 0], prep)
    return out if out.ndim == 3 else out[:, :, None]


def _frames(shared_data):
    """Real pairs as a camera gives them, uint8 (H, W, C): BGR VIS with gray IR of the same size; a gray
    VIS with an IR of another size and aspect (scaled into it); a 3-channel IR (LLVIP stores gray as RGB)."""
    ir, vis = read_pair(shared_data("msrs_det"), "00004N")
    a = (cv2.resize(ir, (320, 240), interpolation=cv2.INTER_AREA)[:, :, None],
         cv2.resize(vis, (320, 240), interpolation=cv2.INTER_AREA))
    ir, vis = read_pair(shared_data("tno_seq_duine"), "7400")
    b = (cv2.resize(ir, (300, 160), interpolation=cv2.INTER_AREA)[:, :, None], vis[:, :, None])
    ir, vis = read_pair(shared_data("llvip_samples"), "010001")
    c = (cv2.resize(ir, (256, 208), interpolation=cv2.INTER_AREA), cv2.resize(vis, (256, 208), interpolation=cv2.INTER_AREA))
    return {"msrs_det/00004N bgr": a, "tno_seq_duine/7400 gray, other ir size": b, "llvip/010001 3-channel ir": c}


def test_frames_ensemble_configs(tmp_path):
    """The three folders parse as Triton model configs and wire up: each step's maps name its model's
    inputs and outputs, every tensor a step takes was given before, with the same type and dims."""
    onnx_path, _, _ = exported("edge", opset=17)
    repo = tmp_path / "repo"
    run_export({"weights": str(onnx_path), "format": "triton", "output": str(repo)})
    ens = parse_config(repo / "moefusion_edge_frames" / "config.pbtxt")
    assert ens.platform == "ensemble" and ens.max_batch_size == 0 and not ens.model_warmup
    assert [(t.name, t.data_type, list(t.dims)) for t in ens.input] == [
        ("ir_frame", DataType["TYPE_UINT8"].number, [-1, -1, -1]), ("vis_frame", DataType["TYPE_UINT8"].number, [-1, -1, -1])]
    assert [(t.name, list(t.dims)) for t in ens.output] == [("fused_frame", [-1, -1, -1])]
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["moefusion_edge_pre", "moefusion_edge",
                                                                    "moefusion_edge_post"]
    have = {t.name: (t.data_type, list(t.dims)) for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        cfg = parse_config(repo / step.model_name / "config.pbtxt")
        ins = {t.name: (t.data_type, list(t.dims)) for t in cfg.input}
        outs = {t.name: (t.data_type, list(t.dims)) for t in cfg.output}
        assert set(step.input_map) == set(ins), step.model_name  # every input fed
        for key, tensor in step.input_map.items():
            assert have[tensor] == ins[key], (step.model_name, key)
        assert set(step.output_map) <= set(outs)
        have.update({tensor: outs[key] for key, tensor in step.output_map.items()})
        if cfg.backend == "python":
            assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
            params = {k: v.string_value for k, v in cfg.parameters.items()}
            assert params["step"] in ("pre", "post") and params["model_fit"] == "letterbox"
            assert params["size_range"] == "null" and params["batched"] == "false"  # ONNX Runtime, dynamic H, W
            assert (repo / step.model_name / "1" / "model.py").read_text() == \
                (Path(__file__).parents[1] / "moefusion" / "export" / "triton_steps.py").read_text()
    assert have["fused_frame"] == (DataType["TYPE_UINT8"].number, [-1, -1, -1])
    # Triton's Python loads model.py by its path: it must not pull in torch (nor GStreamer, ONNX Runtime)
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('m', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print(sorted({'torch', 'gi', 'onnxruntime', 'tensorrt'} & set(sys.modules)))")
    r = subprocess.run([sys.executable, "-c", code, str(repo / "moefusion_edge_pre" / "1" / "model.py")],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_frames_ensemble_on_real_frames_equals_run_pipeline(tmp_path, shared_data, monkeypatch):
    """uint8 frames in, the fused frame out, equal to run_pipeline's processing of the same frames
    (and within a grey level of moefusion.load(...).fuse, which stretches an IR of another size)."""
    import moefusion

    onnx_path, _, _ = exported("edge", opset=17)
    repo = tmp_path / "repo"
    run_export({"weights": str(onnx_path), "format": "triton", "output": str(repo)})
    triton = FakeTriton(repo, monkeypatch)
    model_file = repo / "moefusion_edge" / "1" / "model.onnx"
    for case, (ir, vis) in _frames(shared_data).items():
        got = triton.ensemble("moefusion_edge_frames", {"ir_frame": ir, "vis_frame": vis})["fused_frame"]
        want = _run_pipeline_processing(model_file, ir, vis)
        assert got.shape == vis.shape and got.dtype == np.uint8, case
        np.testing.assert_array_equal(got, want, err_msg=case)
        assert got.std() > 5, case  # a picture
        if ir.shape[:2] == vis.shape[:2]:
            api = moefusion.load(model_file).fuse(ir, vis)
            assert np.abs(api.reshape(got.shape).astype(int) - got).max() <= 1, case
    # a bad request (past Triton's own checks of type and rank) is that request's error, saying what is wrong
    bad, good = triton._load("moefusion_edge_pre").execute([
        {"ir_frame": _Tensor("ir_frame", ir), "vis_frame": _Tensor("vis_frame", vis[:, :, :2])},
        {"ir_frame": _Tensor("ir_frame", ir), "vis_frame": _Tensor("vis_frame", vis)}])
    assert "vis_frame must be (H, W, 1) or (H, W, 3), got shape" in bad.error.message() and not bad.tensors
    assert good.error is None and [t.name() for t in good.tensors] == ["ir", "vis", "vis_ycrcb"]


def test_frames_ensemble_fits_frames_to_a_fixed_size_model(tmp_path, shared_data, monkeypatch):
    """A model exported for one size (96x128 here): the pre step letterboxes each frame into it and the
    post step brings the output back, as run_pipeline does (the step's size_range is the model's)."""
    repo = tmp_path / "repo"
    res = run_export({"format": "triton", "imgsz": (96, 128), "opset": 17, "output": str(repo), "triton_name": "fixed"},
                     model=make_model("edge"))
    pre = parse_config(repo / "fixed_pre" / "config.pbtxt")
    assert json.loads(pre.parameters["size_range"].string_value) == [[96, 128], [96, 128]]
    assert [list(t.dims) for t in pre.output][:2] == [[1, 1, 96, 128], [1, 1, 96, 128]]
    assert list(parse_config(repo / "fixed" / "config.pbtxt").model_warmup[0].inputs["ir"].dims) == [1, 1, 96, 128]
    triton = FakeTriton(repo, monkeypatch)
    ir, vis = _frames(shared_data)["msrs_det/00004N bgr"]
    ir, vis = ir[20:220], vis[20:220]  # 320x200: letterboxed into 128x96 with bands top and bottom
    got = triton.ensemble("fixed_frames", {"ir_frame": ir, "vis_frame": vis})["fused_frame"]
    assert got.shape == vis.shape
    np.testing.assert_array_equal(got, _run_pipeline_processing(res.outputs[0] / "1" / "model.onnx", ir, vis))


def test_frames_ensemble_with_a_batching_model(tmp_path, shared_data, monkeypatch):
    """The dense dispatch's dynamic batch: the ensemble batches too (frames [B, H, W, C]); each frame
    of a batch comes out as it does alone."""
    onnx_path, _, _ = exported("edge", opset=17, dispatch="dense", batch=4, routes=True)
    repo = tmp_path / "repo"
    run_export({"weights": str(onnx_path), "format": "triton", "output": str(repo), "triton_name": "fleet"})
    ens = parse_config(repo / "fleet_frames" / "config.pbtxt")
    assert ens.max_batch_size == 4 and list(ens.input[0].dims) == [-1, -1, -1]
    assert parse_config(repo / "fleet_pre" / "config.pbtxt").parameters["batched"].string_value == "true"
    assert list(parse_config(repo / "fleet" / "config.pbtxt").model_warmup[0].inputs["ir"].dims) == [1, 480, 640]
    triton = FakeTriton(repo, monkeypatch)
    ir, vis = _frames(shared_data)["llvip/010001 3-channel ir"]
    ir2, vis2 = ir[:, ::-1].copy(), cv2.GaussianBlur(vis, (5, 5), 0)
    got = triton.ensemble("fleet_frames", {"ir_frame": np.stack([ir, ir2]), "vis_frame": np.stack([vis, vis2])})
    model_file = repo / "fleet" / "1" / "model.onnx"
    for i, (a, b) in enumerate(((ir, vis), (ir2, vis2))):
        np.testing.assert_array_equal(got["fused_frame"][i], _run_pipeline_processing(model_file, a, b))


CLIENT = Path(__file__).parents[1] / "samples" / "triton" / "client.py"


def _fake_tritonclient(triton: FakeTriton, calls: list):
    """tritonclient.http's calls the client makes, served by FakeTriton (no server, no tritonclient)."""
    http = types.ModuleType("tritonclient.http")

    class InferInput:
        def __init__(self, name, shape, datatype):
            self.name, self.shape, self.datatype, self.data = name, shape, datatype, None

        def set_data_from_numpy(self, a):
            assert list(a.shape) == list(self.shape) and {"UINT8": np.uint8}[self.datatype] == a.dtype
            self.data = a

    class InferRequestedOutput:
        def __init__(self, name):
            self.name = name

    class Result:
        def __init__(self, outs):
            self.outs = outs

        def as_numpy(self, name):
            return self.outs[name]

    class InferenceServerClient:
        def __init__(self, url):
            self.url = url

        def is_model_ready(self, name):
            return (triton.repo / name / "config.pbtxt").is_file()

        def infer(self, model_name, inputs, outputs=None, **kw):
            calls.append((model_name, kw))
            outs = triton.ensemble(model_name, {i.name: i.data for i in inputs})
            return Result({o.name: outs[o.name] for o in outputs})

    http.InferInput, http.InferRequestedOutput, http.InferenceServerClient = InferInput, InferRequestedOutput, InferenceServerClient
    pkg = types.ModuleType("tritonclient")
    pkg.http = http
    return pkg, http


def test_client_needs_only_numpy_and_tritonclient():
    import ast

    top = set()
    for node in ast.walk(ast.parse(CLIENT.read_text())):
        if isinstance(node, ast.Import):
            top |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split(".")[0])
    assert top - set(sys.stdlib_module_names) == {"numpy", "tritonclient", "cv2"}  # cv2: image files only, optional


def test_client_against_the_ensemble(tmp_path, shared_data, monkeypatch):
    """samples/triton/client.py's requests, served by the exported repository's ensemble (FakeTriton)."""
    onnx_path, _, _ = exported("edge", opset=17)
    repo = tmp_path / "repo"
    run_export({"weights": str(onnx_path), "format": "triton", "output": str(repo)})
    triton, calls = FakeTriton(repo, monkeypatch), []
    pkg, http = _fake_tritonclient(triton, calls)
    monkeypatch.setitem(sys.modules, "tritonclient", pkg)
    monkeypatch.setitem(sys.modules, "tritonclient.http", http)
    spec = importlib.util.spec_from_file_location("moefusion_triton_client", CLIENT)
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    ir, vis = _frames(shared_data)["msrs_det/00004N bgr"]
    np.save(tmp_path / "ir.npy", ir[:, :, 0])  # (H, W): the client adds the channel axis
    np.save(tmp_path / "vis.npy", vis)
    assert client.main(["--ir", str(tmp_path / "ir.npy"), "--vis", str(tmp_path / "vis.npy"),
                        "-o", str(tmp_path / "fused.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "fused.npy"),
                                  _run_pipeline_processing(repo / "moefusion_edge" / "1" / "model.onnx", ir, vis))
    assert client.main(["--check"]) == 0
    out = list(client.fuse_video(http.InferenceServerClient("x"), [(ir, vis)] * 3, sequence_id=7))
    assert len(out) == 3 and [c[1] for c in calls[-3:]] == [
        {"sequence_id": 7, "sequence_start": True, "sequence_end": False},
        {"sequence_id": 7, "sequence_start": False, "sequence_end": False},
        {"sequence_id": 7, "sequence_start": False, "sequence_end": True}]
    with pytest.raises(ValueError, match="uint8 frames only"):
        client.fuse(http.InferenceServerClient("x"), ir.astype(np.uint16), vis)
