"""moefusion-export --format triton: repository layout and config.pbtxt.

config.pbtxt is parsed with protobuf's text format against a descriptor of the part of Triton's
ModelConfig (model_config.proto) that we write, so a misspelt field or enum fails here as it would
in tritonserver.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format  # noqa: E402
from helpers import exported, ort_session, real_inputs, torch_outputs  # noqa: E402

from moefusion.errors import UserError  # noqa: E402
from moefusion.export.api import run_export  # noqa: E402
from moefusion.export.trt_shim import import_trt  # noqa: E402
from moefusion.export.triton import config_pbtxt, io_from_metadata  # noqa: E402


def _model_config_class():
    """ModelConfig with the fields/enums of Triton's model_config.proto that our configs use."""
    f = descriptor_pb2.FileDescriptorProto(name="mc_subset.proto", package="inference", syntax="proto3")
    dt = f.enum_type.add(name="DataType")
    for i, n in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64",
                           "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32",
                           "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):
        dt.value.add(name=n, number=i)
    T = descriptor_pb2.FieldDescriptorProto

    def msg(name, fields, nested=()):
        m = descriptor_pb2.DescriptorProto(name=name)
        for num, (fname, ftype, label, tname) in enumerate(fields, 1):
            fd = m.field.add(name=fname, number=num, type=ftype, label=label)
            if tname:
                fd.type_name = tname
        for n in nested:
            m.nested_type.add().CopyFrom(n)
        return m

    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    io = [("name", T.TYPE_STRING, opt, None), ("data_type", T.TYPE_ENUM, opt, ".inference.DataType"),
          ("dims", T.TYPE_INT64, rep, None)]
    f.message_type.add().CopyFrom(msg("ModelInput", io))
    f.message_type.add().CopyFrom(msg("ModelOutput", io))
    ig = msg("ModelInstanceGroup", [("count", T.TYPE_INT32, opt, None), ("kind", T.TYPE_ENUM, opt,
                                                                          ".inference.ModelInstanceGroup.Kind")])
    kind = ig.enum_type.add(name="Kind")
    for i, n in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=n, number=i)
    f.message_type.add().CopyFrom(ig)
    f.message_type.add().CopyFrom(msg("ModelDynamicBatching", [("max_queue_delay_microseconds", T.TYPE_UINT64, opt, None)]))
    latest = msg("Latest", [("num_versions", T.TYPE_UINT32, opt, None)])
    f.message_type.add().CopyFrom(msg("ModelVersionPolicy", [("latest", T.TYPE_MESSAGE, opt,
                                                              ".inference.ModelVersionPolicy.Latest")], [latest]))
    # sequence batching with implicit state (stream graphs): ModelSequenceBatching.State / InitialState
    init = msg("InitialState", [("data_type", T.TYPE_ENUM, opt, ".inference.DataType"), ("dims", T.TYPE_INT64, rep, None),
                                ("zero_data", T.TYPE_BOOL, opt, None), ("data_file", T.TYPE_STRING, opt, None),
                                ("name", T.TYPE_STRING, opt, None)])
    state = msg("State", [("input_name", T.TYPE_STRING, opt, None), ("output_name", T.TYPE_STRING, opt, None),
                          ("data_type", T.TYPE_ENUM, opt, ".inference.DataType"), ("dims", T.TYPE_INT64, rep, None),
                          ("initial_state", T.TYPE_MESSAGE, rep, ".inference.ModelSequenceBatching.InitialState")])
    f.message_type.add().CopyFrom(msg("ModelSequenceBatching", [
        ("max_sequence_idle_microseconds", T.TYPE_UINT64, opt, None),
        ("state", T.TYPE_MESSAGE, rep, ".inference.ModelSequenceBatching.State")], [init, state]))
    f.message_type.add().CopyFrom(msg("ModelConfig", [
        ("name", T.TYPE_STRING, opt, None), ("platform", T.TYPE_STRING, opt, None),
        ("max_batch_size", T.TYPE_INT32, opt, None), ("input", T.TYPE_MESSAGE, rep, ".inference.ModelInput"),
        ("output", T.TYPE_MESSAGE, rep, ".inference.ModelOutput"),
        ("instance_group", T.TYPE_MESSAGE, rep, ".inference.ModelInstanceGroup"),
        ("dynamic_batching", T.TYPE_MESSAGE, opt, ".inference.ModelDynamicBatching"),
        ("version_policy", T.TYPE_MESSAGE, opt, ".inference.ModelVersionPolicy"),
        ("default_model_filename", T.TYPE_STRING, opt, None),
        ("sequence_batching", T.TYPE_MESSAGE, opt, ".inference.ModelSequenceBatching"),
    ]))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _model_config_class()


def parse_config(path):
    return text_format.Parse(path.read_text(), ModelConfig())


def test_onnxruntime_repository_layout_and_config(tmp_path, shared_data):
    onnx_path, _, model = exported("edge", opset=17)
    repo = tmp_path / "model_repository"
    (repo / "other_model" / "1").mkdir(parents=True)  # models already there stay
    res = run_export({"weights": str(onnx_path), "format": "triton", "output": str(repo), "triton_instances": 2})
    model_dir = repo / "moefusion_edge"
    assert res.outputs == [model_dir]
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == [
        "moefusion_edge", "moefusion_edge/1", "moefusion_edge/1/model.onnx", "moefusion_edge/config.pbtxt",
        "other_model", "other_model/1"]
    cfg = parse_config(model_dir / "config.pbtxt")
    assert cfg.name == "moefusion_edge" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 0
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("ir", [1, 1, -1, -1]), ("vis", [1, 1, -1, -1])]
    outs = {o.name: (o.data_type, list(o.dims)) for o in cfg.output}
    assert outs["fused"] == (ModelConfig.DESCRIPTOR.file.pool.FindEnumTypeByName("inference.DataType")
                             .values_by_name["TYPE_FP32"].number, [1, 1, -1, -1])
    assert set(outs) >= {"fused", "attention"}
    assert cfg.instance_group[0].count == 2 and not cfg.HasField("dynamic_batching")
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
