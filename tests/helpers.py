"""Shared test helpers: test models, real pairs at small sizes, exported ONNX files cached per session.

Not a conftest: import what you need (``from helpers import make_model``). The exported ONNX cache
lives in one temporary folder per pytest process, so the slow exports happen once even when
several test modules use them.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import moefusion
from moefusion.model.checkpoint import DEFAULT_WEIGHTS
from moefusion.model.gating import randomize_gates
from moefusion.runtime import gst as gstmod

# Real pairs chosen for variety (day/night, road/surveillance/TNO): (set, id).
REAL_PAIRS = (
    ("roadscene", "FLIR_00006"), ("msrs_det", "00004N"), ("llvip_samples", "010001"),
    ("tno_seq_nato_camp", "1800"), ("msrs_det", "00537D"), ("roadscene", None), ("tno_seq_tree", "4900"),
    ("llvip_samples", "190001"), ("tno_seq_duine", "7400"),
)


def make_model(preset: str, seed: int = 0, prefer_default: bool = True):
    """The bundled default weights for 'edge' when they exist; otherwise an untrained model with random
    gates whose decoder output is moved into (0, 1) (an untrained decoder gives values < 0, which the
    clamp turns into a constant 0 and parity tests on it would prove nothing)."""
    if preset == "edge" and prefer_default and DEFAULT_WEIGHTS.is_file():
        return moefusion.load(DEFAULT_WEIGHTS, device="cpu").eval()
    torch.manual_seed(seed)
    model = randomize_gates(moefusion.build_model(preset), seed=seed).eval()
    with torch.no_grad():
        model.moge.experts.weights[-1].mul_(8.0)
        model.moge.experts.biases[-1].add_(0.5)
    return model


def grid_gate_edge(seed: int = 0):
    """An untrained edge model with grid gates (the plugin flavour's MoEGate), outputs in (0, 1)."""
    torch.manual_seed(seed)
    model = randomize_gates(moefusion.build_model("edge", gate_pool="grid"), seed=seed).eval()
    with torch.no_grad():
        model.moge.experts.weights[-1].mul_(8.0)
        model.moge.experts.biases[-1].add_(0.5)
    return model


def read_pair(root: Path, pair_id: str | None):
    """Raw (ir, vis) frames of one pair of a shared data set (first pair when pair_id is None)."""
    from moefusion.data.io import read_image

    ir_dir, vis_dir = root / "ir", root / "vis"
    if pair_id is None:
        pair_id = max(p.stem for p in ir_dir.iterdir())
    ir = next(p for p in ir_dir.iterdir() if p.stem == pair_id)
    vis = next(p for p in vis_dir.iterdir() if p.stem == pair_id)
    return read_image(ir), read_image(vis)


def real_inputs(shared_set, size=(64, 96), pairs=REAL_PAIRS):
    """[(name, ir_unit, vis_y)] network inputs [1, 1, H, W] of real pairs at ``size``, made as the
    runtime makes them (moefusion.calibration.int8.network_inputs)."""
    from moefusion.calibration.int8 import network_inputs

    out = []
    for set_name, pair_id in pairs:
        ir, vis = read_pair(shared_set(set_name), pair_id)
        ir_u, vis_y = network_inputs(ir, vis, size)
        out.append((f"{set_name}/{pair_id}", ir_u, vis_y))
    return out


def routes_of(model, ir_u: np.ndarray, vis_y: np.ndarray) -> tuple:
    with torch.no_grad():
        out = model(torch.from_numpy(ir_u), torch.from_numpy(vis_y))
    return tuple(tuple(out.routes[n][0].tolist()) for n in ("mole_fg", "mole_bg", "moge"))


def pairs_with_different_routes(model, inputs, want: int = 4):
    """Up to ``want`` inputs with pairwise different expert selections (first the most varied)."""
    chosen, seen = [], set()
    for item in inputs:
        r = routes_of(model, item[1], item[2])
        if r not in seen:
            seen.add(r)
            chosen.append((item, r))
        if len(chosen) == want:
            break
    return chosen


def torch_outputs(model, ir_u, vis_y):
    """What the ONNX must reproduce: fused clamped to [0, 1] (the runtime clamps), attention, routes."""
    with torch.no_grad():
        out = model(torch.from_numpy(ir_u), torch.from_numpy(vis_y))
    return (out.fused.clamp(0, 1).numpy(), out.attention.numpy(),
            [out.routes[n].numpy() for n in ("mole_fg", "mole_bg", "moge")])


# ------------------------------------------------------------------------------------------------
# Exported files, once per session
# ------------------------------------------------------------------------------------------------

_WORK: list[Path] = []


def work_dir() -> Path:
    if not _WORK:
        d = Path(tempfile.mkdtemp(prefix="moefusion-export-tests-"))
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        _WORK.append(d)
    return _WORK[0]


def exported(preset: str, flavour: str = "standard", opset: int = 18, dynamic: bool = True, routes: bool = True,
             dispatch: str = "sparse", batch: int = 1, half: bool = False):
    """(path, OnnxExport, model) of a test model exported (through run_export, as the CLI does) with these
    options; cached for the session. ``routes`` adds the chosen experts as outputs (route_*)."""
    return _exported(preset, flavour, opset, dynamic, routes, dispatch, batch, half)


@functools.cache
def _exported(preset, flavour, opset, dynamic, routes, dispatch, batch, half):
    from moefusion.export.api import run_export

    if flavour == "plugin" and preset == "edge":
        # the MoEGate plugin implements the grid descriptor; the bundled edge weights gate on moments
        model = grid_gate_edge()
    else:
        model = make_model(preset)
    name = f"{preset}-{flavour}-{opset}-{'dyn' if dynamic else 'static'}-{dispatch}-b{batch}{'-fp16' if half else ''}"
    given = {"opset": opset, "dispatch": dispatch, "batch": batch, "half": half or None,
             "plugins": "on" if flavour == "plugin" else None, "output": str(work_dir() / f"{name}.onnx")}
    if dynamic:
        given["dynamic"] = ((16, 16), (1088, 1920))
    res = run_export(given, model=model, routes=routes)
    return res.onnx.path, res.onnx, model


def ort_session(path):
    """An ONNX Runtime CPU session, cached per file version (sessions of the paper model take seconds)."""
    st = Path(path).stat()
    return _ort_session(str(path), st.st_mtime_ns, st.st_size)


@functools.cache
def _ort_session(path, mtime_ns, size):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def gst_test(fn):
    """Mark a test that needs GStreamer and PyGObject: marker ``gstreamer``, skipped with the reason
    when they are missing."""
    fn = pytest.mark.skipif(not gstmod.have_gst(), reason=f"GStreamer/PyGObject not available: {gstmod.gst_reason()}")(fn)
    return pytest.mark.gstreamer(fn)
