"""moefusion.eval.temporal: the video metrics and the frame readers, on frames built to known values."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from moefusion.eval.cli import main as eval_main
from moefusion.eval.temporal import TemporalStats, clip_frames, sequence_frames, temporal_metrics

H, W = 24, 32


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (H, W))


def test_a_static_sequence_has_no_change_and_no_pumping():
    f = _noise(0)
    r = temporal_metrics([f, f.copy(), f.copy()])
    assert r["change"] == 0.0 and r["brightness_sd"] == 0.0


def test_change_and_brightness_spread_are_measured_in_grey_levels():
    base = np.full((H, W), 100.0)
    frames = [base, base + 4, base]  # the whole frame steps up 4 levels and back
    r = temporal_metrics(frames)
    assert r["change"] == pytest.approx(4.0)
    assert r["brightness_sd"] == pytest.approx(np.std([100, 104, 100]))
    # a flicker in half of the frame: half the pixels change by 10, the mean by 5
    half = base.copy()
    half[:, : W // 2] += 10
    r = temporal_metrics([base, half])
    assert r["change"] == pytest.approx(5.0)
    assert r["brightness_sd"] == pytest.approx(2.5)


def test_change_excess_counts_only_what_neither_source_did():
    ir = [_noise(1), _noise(2)]
    vis = [_noise(3), _noise(3)]  # VIS static
    following_ir = temporal_metrics(ir, ir, vis)  # a fusion that is the IR: changes exactly as IR does
    assert following_ir["change"] > 50 and following_ir["change_excess"] == 0.0
    jump = [vis[0], vis[0] + 20]  # the fused image brightens where both sources did not move
    static_ir = [ir[0], ir[0]]
    r = temporal_metrics(jump, static_ir, vis)
    assert r["change_excess"] == pytest.approx(20.0)


def test_stats_accumulate_frame_by_frame_like_the_whole_sequence():
    frames = [_noise(s) for s in range(5)]
    stats = TemporalStats()
    for f in frames:
        stats.add(f)
    assert stats.frames == 5
    assert stats.result()["change"] == pytest.approx(temporal_metrics(frames)["change"])
    assert np.isnan(TemporalStats().result()["change"])


def test_sequence_frames_come_in_natural_id_order(tmp_path):
    for sub in ("ir", "vis"):
        (tmp_path / sub).mkdir()
    for i in (10, 2, 1):  # natural order 1, 2, 10 (not 1, 10, 2)
        cv2.imwrite(str(tmp_path / "ir" / f"{i}.png"), np.full((H, W), i, np.uint8))
        cv2.imwrite(str(tmp_path / "vis" / f"{i}.png"), np.full((H, W, 3), 100 + i, np.uint8))
    frames = list(sequence_frames(tmp_path))
    assert [int(ir[0, 0]) for ir, _ in frames] == [1, 2, 10]
    assert [int(vis[0, 0, 0]) for _, vis in frames] == [101, 102, 110]


def _write_clip(path, values):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    assert writer.isOpened()
    for v in values:
        writer.write(np.full((H, W, 3), v, np.uint8))
    writer.release()


def test_clip_frames_reads_both_videos_in_step_and_names_a_short_one(tmp_path):
    ir, vis = tmp_path / "ir.avi", tmp_path / "vis.avi"
    _write_clip(ir, [20, 120, 220])
    _write_clip(vis, [60, 160, 250])
    frames = list(clip_frames(ir, vis, 3))
    assert [ir_f.ndim for ir_f, _ in frames] == [2, 2, 2]  # IR comes back gray, VIS BGR
    assert [round(float(i.mean()), -1) for i, _ in frames] == [20, 120, 220]  # MJPG is lossy
    assert [round(float(v.mean()), -1) for _, v in frames] == [60, 160, 250]
    with pytest.raises(ValueError, match="ir.avi: no frame 3"):
        list(clip_frames(ir, vis, 4))


def test_eval_cli_reports_the_temporal_metrics_of_each_method(tmp_path, capsys):
    for sub in ("ir", "vis"):
        (tmp_path / sub).mkdir()
    rng = np.random.default_rng(4)
    scene = rng.uniform(40, 200, (H, W))
    for i in range(3):  # the IR frame brightens by 6 levels a frame, VIS is static
        cv2.imwrite(str(tmp_path / "ir" / f"{i}.png"), np.rint(scene + 6 * i).astype(np.uint8))
        cv2.imwrite(str(tmp_path / "vis" / f"{i}.png"), np.rint(scene).astype(np.uint8))
    out = tmp_path / "r.json"
    assert eval_main(["--data", str(tmp_path), "--methods", "average", "--metrics", "SD",
                      "--temporal", "--json", str(out)]) == 0
    t = json.loads(out.read_text())["temporal"]["average"]
    assert t["change"] == pytest.approx(3.0, abs=0.5)  # the average follows IR's 6 levels by half
    assert t["brightness_sd"] == pytest.approx(np.std([0, 3, 6]), abs=0.3)
    assert t["change_excess"] == pytest.approx(0.0, abs=0.01)
    assert "temporal, 3 frames" in capsys.readouterr().out


def test_excluded_clips_lists_every_clip_a_video_entry_held_out():
    from moefusion.eval.heldout import excluded_clips

    cfg = {"data": {"train": ["../d/roadscene", {"video": "../d/m3svd_video", "exclude": ["a", "b"]},
                              {"video": "../d/other", "frame_step": 10}]}}
    assert excluded_clips(cfg) == [("../d/m3svd_video", "a"), ("../d/m3svd_video", "b")]
    assert excluded_clips({}) == []
