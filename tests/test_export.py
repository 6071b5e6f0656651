"""moefusion-export: the formats table, ONNX export with live routing, parity, metadata, bad inputs.

The exports here use untrained models with random gates (tests/helpers.make_model; the bundled
default for 'edge' once it exists) so that different real pairs pick different experts. ONNX files
are exported once per session (helpers.exported). Engine builds: tests/test_export_trt.py.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from helpers import (  # noqa: E402
    exported,
    make_model,
    ort_session,
    pairs_with_different_routes,
    real_inputs,
    torch_outputs,
    work_dir,
)

from moefusion.errors import UserError  # noqa: E402
from moefusion.export import cli as export_cli  # noqa: E402
from moefusion.export.api import resolve_flavour, run_export  # noqa: E402
from moefusion.export.formats import FLAGS, FORMATS, validate  # noqa: E402
from moefusion.export.onnx_export import read_metadata, read_moefusion_onnx  # noqa: E402
from moefusion.model.checkpoint import save_checkpoint  # noqa: E402
from moefusion.model.gating import randomize_gates  # noqa: E402

LAYERS = ("mole_fg", "mole_bg", "moge")
TOL = 1e-4


def run_ort(path, ir, vis):
    sess = ort_session(path)
    return sess.run(None, {"ir": ir, "vis": vis})


def assert_matches_torch(path, model, ir, vis, tol=TOL, what=""):
    got = run_ort(path, ir, vis)
    fused, att, routes = torch_outputs(model, ir, vis)
    np.testing.assert_allclose(got[0], fused, rtol=0, atol=tol, err_msg=f"fused {what}")
    np.testing.assert_allclose(got[1], att, rtol=0, atol=tol, err_msg=f"attention {what}")
    if len(got) >= 5:
        for i, name in enumerate(LAYERS):
            np.testing.assert_array_equal(got[2 + i], routes[i], err_msg=f"route {name} {what}")
    return got


# ------------------------------------------------------------------------------------------------
# The formats table and argument validation (no export)
# ------------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ({"format": "onnx", "int8": True}, "--int8 not supported with --format onnx (only with --format engine/triton)"),
    ({"format": "onnx", "workspace": 2.0}, "--workspace not supported with --format onnx"),
    ({"format": "engine", "detections": True}, "--detections not supported with --format engine (only with --format onnx)"),
    ({"format": "onnx", "triton_name": "m"}, "--triton-name not supported with --format onnx (only with --format triton)"),
    ({"format": "engine", "calib_data": "d"}, "--calib-data only apply to --int8"),
    ({"format": "engine", "int8": True}, "--int8 needs calibration frames"),
    ({"format": "triton", "int8": True, "calib_data": "d"}, "need a TensorRT model: add --triton-platform tensorrt"),
    ({"format": "triton", "workspace": 1.0}, "--workspace need a TensorRT model"),
    ({"plugins": "on", "dispatch": "dense"}, "--plugins on with --dispatch dense"),
    ({"format": "triton", "plugins": "on"}, "ONNX Runtime cannot run the plugin nodes"),
    ({"plugins": "off", "plugin_libs": ["a.so"]}, "--plugin-lib with --plugins off"),
    ({"detections": True, "opset": 18}, "--detections with --opset 18"),
    ({"detections": True, "batch": 2}, "batch 1 only"),
    ({"imgsz": (480, 640), "dynamic": ((500, 64), (1000, 1000))}, "must contain --imgsz 480 640"),
    ({"opset": 12}, "--opset 12"),
    ({"batch": 0}, "--batch 0"),
    ({"format": "engine", "int8": True, "calib_data": "d", "calib_frames": 4}, "--calib-frames 4"),
    ({"format": "engine", "workspace": -1.0}, "--workspace -1.0"),
    ({"output": "model.engine"}, "name it model.onnx"),
    ({"format": "engine", "output": "model.onnx"}, "name it model.engine"),
    ({"format": "triton", "output": "repo/model.onnx"}, "give a folder name"),
    ({"format": "bogus"}, "--format bogus: unknown"),
    ({"format": "onnx", "half": True, "plugins": "on"}, "--half with --plugins on"),
]


@pytest.mark.parametrize("given, message", BAD_OPTIONS, ids=[m.split(":")[0][:40] for _, m in BAD_OPTIONS])
def test_validation_rejects_with_the_flags_named(given, message):
    with pytest.raises(UserError) as e:
        validate(given)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_formats_table_is_consistent():
    every = set().union(*(f.options for f in FORMATS.values()))
    assert every <= set(FLAGS), every - set(FLAGS)
    assert set(FLAGS) - every == set(), "a flag no format accepts"
    for f in FORMATS.values():
        assert f.suffixes and f.description and f.modules
    assert "int8" not in FORMATS["onnx"].options and "int8" in FORMATS["engine"].options


def test_validation_defaults_and_shapes():
    o = validate({})
    assert (o.format, o.opset, o.imgsz, o.batch, o.dispatch, o.precision) == ("onnx", 18, (480, 640), 1, "sparse", "fp32")
    assert o.shapes() == {k: (1, 1, 480, 640) for k in ("min", "opt", "max")}
    assert validate({"detections": True}).opset == 17  # the TorchScript exporter carries the detection heads
    d = validate({"dispatch": "dense", "batch": 8, "dynamic": ((64, 64), (1088, 1920))})
    assert d.batch_dynamic and d.shapes()["min"] == (1, 1, 64, 64) and d.shapes()["max"] == (8, 1, 1088, 1920)
    s = validate({"batch": 4, "dynamic": ((64, 64), (1088, 1920))})
    assert not s.batch_dynamic and s.shapes()["min"][0] == 4  # sparse: fixed batch
    assert validate({"format": "engine", "int8": True, "calib_data": "d", "half": True}).precision == "int8"


def test_cli_rejects_bad_flags_in_one_line(capsys, tmp_path):
    rc = export_cli.main(["--format", "onnx", "--int8", "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--int8" in err
    assert not any(tmp_path.iterdir())
    rc = export_cli.main(["--dynamic", "100x100", "-o", str(tmp_path / "m.onnx")])
    assert rc == 2 and "MINHxMINW:MAXHxMAXW" in capsys.readouterr().err


def test_onnx_runtime_always_gets_the_standard_flavour():
    assert resolve_flavour(validate({}))[0] == "standard"
    assert resolve_flavour(validate({"format": "triton"}))[0] == "standard"
    assert resolve_flavour(validate({"plugins": "on"}))[0] == "plugin"  # an explicit TensorRT-only ONNX


# ------------------------------------------------------------------------------------------------
# ONNX: structure, parity, sizes, metadata
# ------------------------------------------------------------------------------------------------

def test_export_combine_computes_the_models_function():
    """The wrapper's cheaper form of the combine at k = 2, and the general one at k = 3."""
    from moefusion.export.wrapper import stable_gated_logsumexp
    from moefusion.model.gating import gated_logsumexp

    torch.manual_seed(0)
    ys = torch.randn(3, 2, 4, 8, 8) * 30  # differences far beyond exp's range
    ys[0, 1] = ys[0, 0]  # equal experts
    w = torch.tensor([[0.5, 0.5], [0.9, 0.1], [1.0, 1e-30]])  # the last underflows in the gate's fp16
    for k in (2, 3):
        yk = torch.cat([ys, ys[:, :1] - 5], 1)[:, :k]
        wk = torch.softmax(torch.randn(3, k), 1) if k == 3 else w
        torch.testing.assert_close(stable_gated_logsumexp(yk, wk), gated_logsumexp(yk, wk), rtol=1e-6, atol=1e-5)
    # a weight of exactly 0 (log = -inf) leaves the other expert's output, no NaN
    torch.testing.assert_close(stable_gated_logsumexp(ys[1:2], torch.tensor([[1.0, 0.0]])), ys[1:2, 0])


def test_onnx_checker_io_and_live_routing():
    path, res, _ = exported("edge")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("TopK") == 3 and ops.count("Softmax") >= 3, "routing must be computed in the graph"
    assert "ReduceLogSumExp" not in ops, "TensorRT imports ReduceLogSumExp as exp-sum-log (overflows)"
    gates = [n for n in model.graph.node if n.op_type == "MatMul" and any(i.endswith("w_gate") for i in n.input)]
    assert len(gates) == 3
    ins = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert ins == {"ir": [1, 1, "H", "W"], "vis": [1, 1, "H", "W"]}
    outs = [o.name for o in model.graph.output]
    assert outs[:2] == ["fused", "attention"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in model.graph.input)


# The default exporter (dynamo, opset 18) for edge; the paper preset's dynamo export takes minutes on a
# 2-core CPU, so its default-path tests are marked slow and the TorchScript exporter (opset 17, the same
# wrapper) covers it in the quick run.
PRESETS = [("edge", 18), ("paper", 17), pytest.param("paper", 18, marks=pytest.mark.slow)]


@pytest.mark.parametrize("preset, opset", PRESETS)
def test_parity_on_real_pairs_with_different_experts(preset, opset, shared_data):
    """ONNX Runtime == PyTorch within 1e-4 on real pairs that pick different experts."""
    path, _, model = exported(preset, opset=opset)
    chosen = pairs_with_different_routes(model, real_inputs(shared_data))
    selections = [r for _, r in chosen]
    # the selections differ: at least one layer picks a different SET of experts between two pairs
    assert any(len({frozenset(r[i]) for r in selections}) > 1 for i in range(3)), selections
    for (name, ir, vis), _ in chosen:
        got = assert_matches_torch(path, model, ir, vis, what=f"{preset} {name}")
        assert 0.0 < float(got[0].mean()) < 1.0 and float(got[0].std()) > 1e-4, "the test output must not be flat"


@pytest.mark.parametrize("preset, opset", PRESETS)
def test_dynamic_size_parity(preset, opset, shared_data):
    """One ONNX, three sizes (one odd, one not a multiple of 32 in either direction)."""
    path, _, model = exported(preset, opset=opset)
    sizes = [(64, 96), (71, 101), (48, 130)]
    for size in sizes:
        (_, ir, vis), = real_inputs(shared_data, size, pairs=(("roadscene", "FLIR_00006"),))
        got = assert_matches_torch(path, model, ir, vis, what=f"{preset} {size}")
        assert got[0].shape == (1, 1, *size) and got[1].shape == (1, 1, *size)


def test_metadata_round_trip():
    path, res, model = exported("edge")
    meta = read_moefusion_onnx(path)
    assert meta == read_metadata(path)
    assert meta["format"] == "moefusion-onnx" and meta["version"]
    assert meta["preset"] == "edge" and meta["config"]["k"] == model.cfg.k
    assert meta["flavour"] == "standard" and meta["dispatch"] == "sparse" and meta["precision"] == "fp32"
    assert meta["inputs"] == ["ir", "vis"] and meta["outputs"][:2] == ["fused", "attention"]
    io = {d["name"]: d for d in meta["io"]}
    assert io["ir"]["range"] == [0.0, 1.0] and io["fused"]["range"] == [0.0, 1.0]
    assert io["ir"]["shape"] == [1, 1, "H", "W"]
    assert "prepare_pair" in meta["normalisation"] and "AGC" in meta["normalisation"]
    assert meta["dynamic"] == [[16, 16], [1088, 1920]] and meta["imgsz"] == [480, 640]
    assert meta["batch"] == "1" and meta["batch_dynamic"] is False and meta["opset"] == "18"
    assert len(meta["weights_sha256"]) == 64
    # what ONNX Runtime users see
    custom = ort_session(path).get_modelmeta().custom_metadata_map
    assert custom["moefusion.preset"] == "edge" and json.loads(custom["moefusion.inputs"]) == ["ir", "vis"]


def test_torchscript_exporter_opset17(shared_data):
    """--opset 17 (TensorRT 8.6 / JetPack 6.0) goes through the TorchScript exporter: same function."""
    path, _, model = exported("edge", opset=17)
    proto = onnx.load(str(path))
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [n.op_type for n in proto.graph.node].count("TopK") == 3
    for name, ir, vis in real_inputs(shared_data, (71, 101))[:3]:
        assert_matches_torch(path, model, ir, vis, what=name)


def test_dense_dispatch_dynamic_batch(shared_data):
    """--dispatch dense --dynamic: any batch; each sample routed on its own."""
    path, _, model = exported("edge", opset=17, dispatch="dense", batch=4)
    inputs = real_inputs(shared_data, (64, 96))[:3]
    ir = np.concatenate([i[1] for i in inputs])
    vis = np.concatenate([i[2] for i in inputs])
    got = assert_matches_torch(path, model, ir, vis, what="dense batch 3")
    assert got[0].shape[0] == 3
    assert len({tuple(r) for r in got[4].tolist()}) > 1 or len({tuple(r) for r in got[2].tolist()}) > 1


def test_fp16_onnx(shared_data):
    """--half ONNX: float32 I/O, float16 weights and image path, gates kept in float32."""
    from moefusion.export.fp16 import convert_to_fp16

    path, _, model = exported("edge", opset=17)
    proto = convert_to_fp16(onnx.load(str(path)))
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    inits = {i.name: i.data_type for i in proto.graph.initializer}
    types.update(inits)
    assert sum(t == onnx.TensorProto.FLOAT16 for t in inits.values()) > 20
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in proto.graph.input)
    assert all(o.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64) for o in proto.graph.output)
    for n in proto.graph.node:
        if n.op_type in ("TopK", "Softmax") or (n.op_type == "MatMul" and any(i.startswith("model.") and "w_gate" in i
                                                                              for i in n.input)):
            assert types.get(n.input[0]) == onnx.TensorProto.FLOAT, f"{n.op_type} {n.name} must stay float32"
    half = work_dir() / "edge-fp16-test.onnx"
    onnx.save(proto, str(half))
    # small frames, and real 640x480 frames: whole-frame reductions (the moments gates) must stay in
    # float16's range at a real frame size, which 64x96 does not exercise
    for size, count in (((64, 96), 3), ((480, 640), 2)):
        for name, ir, vis in real_inputs(shared_data, size)[:count]:
            got = run_ort(half, ir, vis)
            fused, att, _ = torch_outputs(model, ir, vis)
            np.testing.assert_allclose(got[0], fused, atol=2e-2, err_msg=f"{name} {size}")
            np.testing.assert_allclose(got[1], att, atol=2e-2, err_msg=f"{name} {size}")


def _grid_gate_model():
    """An untrained edge model with grid gates (what the MoEGate plugin implements), prepared as
    helpers.make_model prepares untrained models (random gates, decoder output inside (0, 1))."""
    import moefusion

    torch.manual_seed(0)
    model = randomize_gates(moefusion.build_model("edge", gate_pool="grid"), seed=0).eval()
    with torch.no_grad():
        model.moge.experts.weights[-1].mul_(8.0)
        model.moge.experts.biases[-1].add_(0.5)
    return model


def _plugin_nodes_match(proto, model):
    """3 MoECombine; a MoEGate for each grid gate, a TopK for each moments gate (the plugin has no moments)."""
    custom = [(n.domain, n.op_type) for n in proto.graph.node if n.domain]
    layers = (model.mole_fg, model.mole_bg, model.moge)
    grid = sum(layer.pool != "moments" for layer in layers)
    assert custom.count(("moefusion", "MoECombine")) == 3
    assert custom.count(("moefusion", "MoEGate")) == grid
    assert [n.op_type for n in proto.graph.node].count("TopK") == 3 - grid


@pytest.mark.parametrize("which", ["grid", "default"])
def test_plugin_flavour_nodes_and_reference_numerics(which, shared_data, tmp_path):
    """The plugin flavour: MoEGate/MoECombine nodes (kernels/README.md); numerically the same function
    (run with onnx.reference and the kernels' NumPy references: no TensorRT, no GPU). ``default``: the
    test edge model (the bundled weights: moments gates stay standard ops, combines are plugins)."""
    from onnx.reference import ReferenceEvaluator

    from moefusion.kernels.onnx import reference_ops

    if which == "grid":
        model = _grid_gate_model()
        path = run_export({"plugins": "on", "opset": 17, "dynamic": ((16, 16), (1088, 1920)),
                           "output": str(tmp_path / "grid.plugins.onnx")}, model=model, routes=True).outputs[0]
    else:
        path, _, model = exported("edge", flavour="plugin", opset=17)
    proto = onnx.load(str(path))
    _plugin_nodes_match(proto, model)
    if which == "grid":
        gate = next(n for n in proto.graph.node if n.op_type == "MoEGate")
        assert {a.name for a in gate.attribute} == {"grid_h", "grid_w", "k"}
    assert read_metadata(path)["flavour"] == "plugin"
    with pytest.raises(Exception):  # ONNX Runtime cannot run it: it always gets the standard flavour
        ort_session(path)
    ev = ReferenceEvaluator(proto, new_ops=reference_ops())
    (name, ir, vis), = real_inputs(shared_data, (40, 56), pairs=(("msrs_det", "00004N"),))
    got = ev.run(None, {"ir": ir, "vis": vis})
    fused, att, routes = torch_outputs(model, ir, vis)
    np.testing.assert_allclose(got[0], fused, atol=TOL)
    np.testing.assert_allclose(got[1], att, atol=TOL)
    for i in range(3):
        np.testing.assert_array_equal(got[2 + i], routes[i])


def test_plugin_onnx_of_the_default_model(tmp_path):
    """What docs/export.md and kernels/README.md say the default model's plugin ONNX holds: 3 MoECombine
    and no MoEGate (its moments gates are standard ops: the gate plugin implements the grid descriptor)."""
    model = make_model("edge")  # the bundled weights where they exist
    assert {layer.pool for layer in (model.mole_fg, model.mole_bg, model.moge)} == {"moments"}
    path = run_export({"plugins": "on", "opset": 17, "output": str(tmp_path / "edge.plugins.onnx")}, model=model).outputs[0]
    proto = onnx.load(str(path))
    _plugin_nodes_match(proto, model)
    assert not [n for n in proto.graph.node if n.op_type == "MoEGate"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32: no fp16 plugin path


def test_docs_trtexec_lines_match_the_plugins():
    """The plugin ONNX is fp32 (no fp16/INT8 conversion of the plugin nodes): every documented trtexec
    build that loads the plugin library is strongly typed, without --fp16/--int8/--best."""
    root = Path(__file__).resolve().parents[1]
    commands = []
    for doc in [*sorted((root / "docs").glob("*.md")), root / "kernels" / "README.md", root / "README.md"]:
        text = doc.read_text().replace("\\\n", " ")
        commands += [(doc.name, line) for line in text.splitlines() if line.lstrip().startswith("trtexec ")]
    plugin_builds = [(d, c) for d, c in commands if "--dynamicPlugins" in c and "--onnx" in c]
    assert plugin_builds, "the docs show how to build the plugin ONNX with trtexec"
    for doc, cmd in plugin_builds:
        assert "--stronglyTyped" in cmd and not {"--fp16", "--int8", "--best"} & set(cmd.split()), (doc, cmd)


@pytest.mark.slow
def test_plugin_flavour_dynamo_exporter(tmp_path):
    model = _grid_gate_model()
    path = run_export({"plugins": "on", "output": str(tmp_path / "grid18.plugins.onnx")}, model=model).outputs[0]
    _plugin_nodes_match(onnx.load(str(path)), model)  # both MoEGate and MoECombine through the dynamo mappings


@pytest.mark.slow
def test_detections_output(shared_data):
    """--detections: the detectors' boxes per modality, as MoEFusion(detections=True) returns them."""
    model = make_model("edge")
    out = work_dir() / "edge-detections.onnx"
    res = run_export({"detections": True, "output": str(out), "dynamic": ((32, 32), (720, 1280))}, model=model)
    assert res.onnx.metadata["moefusion.opset"] == "17"
    (_, ir, vis), = real_inputs(shared_data, (96, 128), pairs=(("msrs_det", "00004N"),))
    sess = ort_session(out)
    names = [o.name for o in sess.get_outputs()]
    assert names == ["fused", "attention", "vis_boxes", "vis_scores", "vis_labels", "ir_boxes", "ir_scores", "ir_labels"]
    got = dict(zip(names, sess.run(None, {"ir": ir, "vis": vis})))
    with torch.no_grad():
        ref = model(torch.from_numpy(ir), torch.from_numpy(vis), detections=True)
    np.testing.assert_allclose(got["fused"], ref.fused.clamp(0, 1).numpy(), atol=TOL)
    for m in ("vis", "ir"):
        d = ref.detections[m][0]
        assert got[f"{m}_boxes"].shape == tuple(d["boxes"].shape)
        # The best boxes agree; an untrained detector scores hundreds of proposals almost alike, so NMS and
        # the top-k of near-ties may pick a different tail (a trained one does not have that many ties).
        top = 10
        np.testing.assert_allclose(got[f"{m}_scores"][:top], d["scores"].numpy()[:top], atol=1e-4)
        np.testing.assert_allclose(got[f"{m}_boxes"][:top], d["boxes"].numpy()[:top], atol=1e-2)
        np.testing.assert_array_equal(got[f"{m}_labels"][:top], d["labels"].numpy()[:top])
        assert ((0 <= got[f"{m}_scores"]) & (got[f"{m}_scores"] <= 1)).all()
        assert ((0 <= got[f"{m}_labels"]) & (got[f"{m}_labels"] < model.cfg.num_classes)).all()


# ------------------------------------------------------------------------------------------------
# The command line, end to end (TorchScript exporter: fast)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "edge_test.pt"
    save_checkpoint(path, make_model("edge", prefer_default=False))
    return path


def test_cli_onnx_end_to_end(checkpoint, tmp_path, capsys, shared_data):
    out = tmp_path / "out" / "m.onnx"
    rc = export_cli.main(["--weights", str(checkpoint), "--opset", "17", "--dynamic", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "ONNX: " in capsys.readouterr().out
    meta = read_moefusion_onnx(out)
    assert meta["weights"] == checkpoint.name and meta["dynamic"] == [[64, 64], [1088, 1920]]
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["fused", "attention"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"], "no temp files left"
    # the runtime's ONNX Runtime backend loads it and fuses a real pair
    from moefusion.runtime.backends import OnnxRuntimeBackend

    (_, ir, vis), = real_inputs(shared_data, (64, 96), pairs=(("tno_seq_tree", "4900"),))
    fused, att = OnnxRuntimeBackend(str(out), device="cpu").infer(ir, vis)
    assert fused.shape == (1, 1, 64, 96) and att.shape == (1, 1, 64, 96)
    assert 0.0 <= fused.min() and fused.max() <= 1.0


def test_python_module_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "moefusion.export", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "moefusion-export" in r.stdout and all(f"  {name}" in r.stdout for name in FORMATS)
    r = subprocess.run([sys.executable, "-m", "moefusion.export", "--format", "onnx", "--workspace", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --workspace not supported")


# ------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the fix; nothing half-written
# ------------------------------------------------------------------------------------------------

def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_not_a_moefusion_checkpoint(tmp_path):
    foreign = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(UserError) as e:
        run_export({"weights": str(foreign), "output": str(tmp_path / "m.onnx")})
    msg = _one_line(e)
    assert str(foreign) in msg and "not a moefusion checkpoint" in msg and "moefusion-train" in msg
    garbage = tmp_path / "junk.pt"
    garbage.write_bytes(b"\x00not a zip")
    with pytest.raises(UserError) as e:
        run_export({"weights": str(garbage), "output": str(tmp_path / "m.onnx")})
    assert str(garbage) in _one_line(e)
    with pytest.raises(UserError) as e:
        run_export({"weights": str(tmp_path / "model.bin")})
    assert "unknown file type" in _one_line(e)
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_from_another_model(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["images"], ["output0"])], "yolo",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 640, 640])])
    other = tmp_path / "yolov8n.onnx"
    onnx.save(helper.make_model(g), str(other))
    for fmt in ("engine", "triton"):
        with pytest.raises(UserError) as e:
            run_export({"weights": str(other), "format": fmt, "output": str(tmp_path / ("x.engine" if fmt == "engine" else "repo"))})
        msg = _one_line(e)
        assert str(other) in msg and "another model" in msg and "moefusion-export" in msg
    notonnx = tmp_path / "broken.onnx"
    notonnx.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(UserError) as e:
        run_export({"weights": str(notonnx), "format": "engine"})
    assert "not a readable ONNX" in _one_line(e)


def test_output_path_that_cannot_be_written(tmp_path):
    """Checked before any export work; the message names the path and the fix (-o)."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    model = make_model("edge")
    with pytest.raises(UserError) as e:
        run_export({"output": str(blocker / "sub" / "m.onnx")}, model=model)
    msg = _one_line(e)
    assert str(blocker / "sub" / "m.onnx") in msg and "cannot write" in msg and "-o" in msg
    folder = tmp_path / "afolder.onnx"
    folder.mkdir()
    with pytest.raises(UserError) as e:
        run_export({"output": str(folder)}, model=model)
    assert "it is a folder" in _one_line(e)
    with pytest.raises(UserError) as e:
        run_export({"format": "triton", "output": str(blocker)}, model=model)
    assert "a file of that name exists" in _one_line(e)
    assert blocker.read_text() == "x"


def test_nothing_half_written_when_export_fails(tmp_path, monkeypatch):
    import moefusion.export.onnx_export as oe

    monkeypatch.setattr(oe._files, "atomic_write_bytes", _fail_midway)
    with pytest.raises(UserError) as e:
        run_export({"output": str(tmp_path / "m.onnx"), "opset": 17}, model=make_model("edge"))
    assert "No space left" in _one_line(e)
    assert list(tmp_path.iterdir()) == [], "neither the ONNX nor a temp file may remain"


def _fail_midway(path, data):
    """Write half the bytes through atomic_path, then fail like a full disk."""
    from moefusion.files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")


def test_atomic_files_keep_the_old_file_on_failure(tmp_path):
    from moefusion.files import atomic_path, atomic_write_bytes

    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(b"new, half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    m = os.umask(0o022)
    os.umask(m)
    return m
