"""INT8 calibration data: real pairs through exactly the runtime's preprocessing; counts; videos; CLI.

These frames feed moefusion-export --int8 (ModelOpt's Q/DQ calibration, moefusion.export.quantize); the
Q/DQ ONNX and its engine build are tested in test_export_trt.py. The calibration package does not
import the export (one direction only).
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from moefusion.calibration import cli as calibrate_cli
from moefusion.calibration.int8 import CalibrationData, network_inputs
from moefusion.data.io import read_image
from moefusion.data.preprocess import prepare_pair
from moefusion.errors import UserError
from moefusion.runtime.capture import to_role_format
from moefusion.runtime.process import Preprocessor
from moefusion.runtime.uri import StreamOptions

SIZE = (64, 96)


def _runtime_inputs(ir_path, vis_path, size=SIZE):
    """What run_pipeline feeds the network for these files with --ir/--vis-width/height = size."""
    o = StreamOptions(width=size[1], height=size[0])
    ir = to_role_format(cv2.imread(str(ir_path), cv2.IMREAD_UNCHANGED), "ir", o)
    vis = to_role_format(cv2.imread(str(vis_path), cv2.IMREAD_UNCHANGED), "vis", o)
    prep = Preprocessor()(ir, vis)
    return prep.ir_unit, prep.vis_y, ir, vis


def test_batches_equal_the_runtime_preprocessing(shared_data):
    root = shared_data("roadscene")
    data = CalibrationData(str(root), frames=8, size=SIZE)
    assert len(data) == 8 and data.candidates == len(list((root / "ir").iterdir()))
    ids = [p.id for p in data.pairs]
    assert ids == sorted(ids) and len(set(ids)) == 8
    batches = list(data.batches(batch=2))
    assert len(batches) == 4
    for b in batches:
        assert set(b) == {"ir", "vis"} and b["ir"].shape == (2, 1, *SIZE) and b["ir"].dtype == np.float32
        assert b["ir"].flags.c_contiguous and b["vis"].flags.c_contiguous
    for k, pair in enumerate(data.pairs):
        ir_u, vis_y, ir, vis = _runtime_inputs(pair.ir, pair.vis)
        np.testing.assert_array_equal(batches[k // 2]["ir"][k % 2], ir_u[0])
        np.testing.assert_array_equal(batches[k // 2]["vis"][k % 2], vis_y[0])
        # and the runtime's Preprocessor is prepare_pair on 8-bit frames
        ref_ir, parts = prepare_pair(ir, vis)
        np.testing.assert_allclose(ir_u[0, 0], ref_ir, atol=1e-6)
        np.testing.assert_allclose(vis_y[0, 0], parts.y, atol=1e-6)


def test_pairs_are_spread_over_the_set(shared_data):
    data = CalibrationData(str(shared_data("tno_seq_nato_camp")), frames=8)
    ids = [int(p.id) for p in data.pairs]
    assert ids[0] == 1800 and ids[-1] == 1831 and len(ids) == 8  # first and last frame of the sequence
    assert data.size is None
    _, ir_u, vis_y = next(data.inputs())
    assert ir_u.shape == (1, 1, 270, 360)  # native size when no engine size is given


def test_too_few_pairs_is_an_error_naming_the_count(shared_data):
    root = shared_data("tno_seq_tree")
    with pytest.raises(UserError) as e:
        CalibrationData(str(root), frames=64, size=SIZE)
    msg = str(e.value)
    assert "\n" not in msg and str(root) in msg and "19 usable IR/VIS pairs" in msg and "--calib-frames" in msg
    with pytest.raises(UserError) as e:
        CalibrationData(str(root), frames=4)
    assert "at least 8" in str(e.value)


def test_unreadable_pairs_are_skipped_and_counted(shared_data, tmp_path):
    src = shared_data("tno_seq_duine")
    for sub in ("ir", "vis"):
        (tmp_path / sub).mkdir()
        for p in sorted((src / sub).iterdir())[:9]:
            shutil.copy(p, tmp_path / sub / p.name)
    (tmp_path / "ir" / "7400.bmp").write_bytes(b"BM broken")
    data = CalibrationData(str(tmp_path), frames=8, size=SIZE)
    assert len(data) == 8 and [i for i, _ in data.skipped] == ["7400"]
    assert "7400" not in [p.id for p in data.pairs]
    with pytest.raises(UserError) as e:
        CalibrationData(str(tmp_path), frames=9, size=SIZE)
    assert "8 usable IR/VIS pairs (1 unusable" in str(e.value) and "7400" in str(e.value)


def _write_video(path, frames):
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (w, h), True)
    assert vw.isOpened()
    for f in frames:
        vw.write(f if f.ndim == 3 else cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    vw.release()


def test_two_videos(shared_data, tmp_path):
    src = shared_data("tno_seq_tree")
    names = sorted(p.name for p in (src / "ir").iterdir())[:12]
    irs = [read_image(src / "ir" / n) for n in names]
    viss = [read_image(src / "vis" / n) for n in names]
    _write_video(tmp_path / "ir.avi", irs)
    _write_video(tmp_path / "vis.avi", viss)
    data = CalibrationData(f"{tmp_path / 'ir.avi'},{tmp_path / 'vis.avi'}", frames=8, size=SIZE)
    assert data.kind == "videos" and data.candidates == 12 and len(data) == 8
    got = list(data.inputs())
    picked = [int(pid[len("frame"):]) for pid, _, _ in got]
    assert picked == sorted(picked) and picked[0] == 0 and picked[-1] == 11
    for (pid, ir_u, vis_y), k in zip(got, picked):
        ir_ref, vis_ref = network_inputs(irs[k], viss[k], SIZE)  # FFV1 is lossless: the very same pixels
        np.testing.assert_array_equal(ir_u, ir_ref, err_msg=pid)
        np.testing.assert_array_equal(vis_y, vis_ref, err_msg=pid)
    with pytest.raises(UserError) as e:
        CalibrationData(f"{tmp_path / 'ir.avi'},{tmp_path / 'missing.avi'}", frames=8)
    assert "no such video file" in str(e.value) and "missing.avi" in str(e.value)


def test_bad_source(tmp_path):
    with pytest.raises(UserError) as e:
        CalibrationData(str(tmp_path / "nowhere"), frames=8)
    assert "not a folder and not IR_VIDEO,VIS_VIDEO" in str(e.value)
    (tmp_path / "photos").mkdir()
    with pytest.raises(UserError) as e:
        CalibrationData(str(tmp_path / "photos"), frames=8)
    assert "no IR/VIS folders" in str(e.value)


def test_cli_int8_check(shared_data, capsys):
    root = shared_data("msrs_det")
    rc = calibrate_cli.main(["int8", "--check", "--calib-data", str(root), "--calib-frames", "8", "--imgsz", "64", "96"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "calibration data OK: 8 pairs of 25" in out.out and "64x96" in out.out
    assert "moefusion-export --weights W.pt --format engine --int8 --calib-data" in out.out
    rc = calibrate_cli.main(["int8", "--calib-data", str(root), "--calib-frames", "100"])
    assert rc == 2 and "25 usable IR/VIS pairs" in capsys.readouterr().err


def test_calibration_does_not_import_the_export():
    """One direction only: export's quantization stage reads frames here; nothing here imports moefusion.export."""
    code = ("import sys, moefusion.calibration.int8, moefusion.calibration.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('moefusion.export')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"
