"""moefusion.eval.temporal and .flow: the video measures (motion-compensated and raw) and the frame
readers, on frames built to known values, one real TNO sequence and ``moefusion-eval --temporal``."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from moefusion.errors import UserError
from moefusion.eval.cli import main as eval_main
from moefusion.eval.flow import source_flow, warp
from moefusion.eval.runner import parse_methods
from moefusion.eval.temporal import (
    MEASURES,
    TemporalStats,
    clip_frames,
    measure_sequence,
    method_fuser,
    sequence_frames,
    temporal_measures,
    temporal_metrics,
    video_frames,
)

H, W = 24, 32
PH, PW, PAN, FRAMES = 96, 128, 2, 10  # the built pan: frame size, pixels per frame, frames


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


def _texture(seed: int) -> np.ndarray:
    """Smooth random texture (blurred noise, mean 128, SD 40), larger than a pan frame."""
    noise = np.random.default_rng(seed).uniform(0, 255, (PH + 40, PW + PAN * FRAMES + 40)).astype(np.float32)
    t = cv2.GaussianBlur(noise, (0, 0), 2.0)
    return np.clip((t - t.mean()) / t.std() * 40 + 128, 0, 255)


def _pan(seed: int) -> list[np.ndarray]:
    """8-bit frames of a camera panning over a texture: frame_t(x) = frame_{t-1}(x + PAN)."""
    tex = _texture(seed)
    return [np.rint(tex[20:20 + PH, PAN * t:PAN * t + PW]) for t in range(FRAMES)]


@pytest.fixture(scope="module")
def pan():
    ir, vis = _pan(1), _pan(2)  # two different textures that move together, as a registered rig sees
    return ir, vis, [np.rint(0.6 * a + 0.4 * b) for a, b in zip(ir, vis)]  # a steady fusion of them


def test_source_flow_recovers_a_pan_and_excludes_pixels_that_leave_the_frame(pan):
    ir, vis, _ = pan
    flow, valid = source_flow(ir[0], ir[1], vis[0], vis[1])
    assert flow.shape == (PH, PW, 2) and valid.shape == (PH, PW)
    inner = flow[8:-8, 8:-8]
    assert np.abs(inner[..., 0] - PAN).mean() < 0.05 and np.abs(inner[..., 1]).mean() < 0.05
    # frame 1 at x is frame 0 at x + PAN: the last PAN columns have no match in frame 0
    assert not valid[:, -PAN:].any() and valid[:, :-PAN - 2].mean() > 0.95
    np.testing.assert_allclose(warp(ir[0], flow)[8:-8, 8:-8], ir[1][8:-8, 8:-8], atol=2.0)


def test_a_steady_fusion_of_a_pan_has_no_flicker_excess_though_it_changes_every_frame(pan):
    ir, vis, fused = pan
    r = temporal_measures(fused, ir, vis)
    assert set(MEASURES) <= set(r) and r["frames"] == FRAMES
    assert r["flicker_excess"] < 0.1
    assert r["warping_error"] < 0.5  # motion explains the change ...
    assert r["change"] > 10  # ... which the raw frame-to-frame measure counts as change


def test_a_fusion_that_switches_source_every_other_frame_has_a_large_excess(pan):
    ir, vis, steady = pan
    switching = [a if t % 2 == 0 else b for t, (a, b) in enumerate(zip(ir, vis))]
    r = temporal_measures(switching, ir, vis)
    assert r["flicker_excess"] > 20  # the two textures differ by ~45 levels on average; no source changed
    assert r["flicker_excess"] > 100 * max(temporal_measures(steady, ir, vis)["flicker_excess"], 0.01)


def test_a_global_brightness_step_shows_in_pumping_and_in_excess_only_once(pan):
    """A step of s levels between two of n frames is one of the n - 1 frame-to-frame mean changes:
    pumping (their SD) becomes s * sqrt(n - 2) / (n - 1). Flicker excess counts it too, honestly (no
    camera saw it), but only at the one transition where it happens: it rises by s / (n - 1), its
    mean share; pumping rises sqrt(n - 2) times more. A brightness that keeps jumping every frame
    would raise excess every frame."""
    ir, vis, fused = pan
    step, n = 10.0, FRAMES
    before = temporal_measures(fused, ir, vis)
    stepped = [f + (step if t >= n // 2 else 0.0) for t, f in enumerate(fused)]
    after = temporal_measures(stepped, ir, vis)
    assert before["pumping"] < 0.3
    assert after["pumping"] == pytest.approx(step * np.sqrt(n - 2) / (n - 1), abs=0.3)
    assert after["flicker_excess"] - before["flicker_excess"] == pytest.approx(step / (n - 1), rel=0.05)
    assert after["pumping"] - before["pumping"] > 2 * (after["flicker_excess"] - before["flicker_excess"])


def test_measure_sequence_runs_any_fuser_including_a_stateful_stream_and_reports_a_failing_one(pan):
    ir, vis, _ = pan

    class Stream:  # a recursive filter on the fused output: state carried from frame to frame
        def __init__(self):
            self.state = None

        def __call__(self, ir_raw, vis_raw):
            y = 0.6 * ir_raw.astype(np.float32) + 0.4 * vis_raw.astype(np.float32)
            self.state = y if self.state is None else 0.5 * self.state + 0.5 * y
            return self.state

    def breaks_at_frame_3(ir_raw, vis_raw):
        breaks_at_frame_3.calls += 1
        if breaks_at_frame_3.calls > 3:
            raise RuntimeError("out of memory")
        return ir_raw.astype(np.float32)

    breaks_at_frame_3.calls = 0
    frames = [(a.astype(np.uint8), b.astype(np.uint8)) for a, b in zip(ir, vis)]
    methods = {m.label: method_fuser(m) for m in parse_methods("average", None)}
    r = measure_sequence(iter(frames), {**methods, "stream": Stream(), "broken": breaks_at_frame_3}, max_frames=6)
    assert r["average"]["frames"] == 6 and r["average"]["flicker_excess"] < 0.1
    assert r["stream"]["flicker_excess"] > 1  # lagging behind a moving scene is change no camera made
    assert r["broken"]["frames"] == 3 and r["broken"]["error"] == "frame 3: RuntimeError: out of memory"
    assert "error" not in r["average"]


def test_the_laplacian_pyramid_flickers_more_than_the_average_on_a_real_tno_sequence(shared_data):
    frames = list(sequence_frames(shared_data("tno_seq_tree"), 4))
    fusers = {m.label: method_fuser(m) for m in parse_methods("laplacian,average", None)}
    r = measure_sequence(frames, fusers)
    lap, avg = r["laplacian"], r["average"]
    assert lap["frames"] == avg["frames"] == 4
    assert all(np.isfinite(lap[k]) for k in MEASURES)
    assert avg["flicker_excess"] < 0.05  # a convex blend: 0 up to the 8-bit rounding of its output
    assert lap["flicker_excess"] > avg["flicker_excess"] + 0.3


def _write_sequence(root, n=4):
    for sub in ("ir", "vis"):
        (root / sub).mkdir(parents=True)
    ir, vis = _pan(3), _pan(4)
    for i in range(n):
        cv2.imwrite(str(root / "ir" / f"{i}.png"), ir[i].astype(np.uint8))
        cv2.imwrite(str(root / "vis" / f"{i}.png"), vis[i].astype(np.uint8))


def test_eval_cli_temporal_reports_every_measure_of_each_method(tmp_path, capsys):
    _write_sequence(tmp_path / "seq", 5)
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    assert eval_main(["--temporal", "--data", str(tmp_path / "seq"), "--methods", "average,laplacian",
                      "--max-frames", "4", "--json", str(out), "--markdown", str(md)]) == 0
    doc = json.loads(out.read_text())
    avg = doc["methods"]["average"]
    assert avg["frames"] == 4 and set(MEASURES) <= set(avg)
    assert avg["flicker_excess"] < 0.1 and doc["methods"]["laplacian"]["flicker_excess"] >= 0
    assert "| average | 4 |" in md.read_text()
    text = capsys.readouterr().out
    assert "flicker_excess" in text and "change_excess" in text and "laplacian" in text


def test_eval_cli_temporal_reads_two_video_files(tmp_path, capsys):
    ir, vis = tmp_path / "ir.avi", tmp_path / "vis.avi"
    _write_clip(ir, [20, 120, 220])
    _write_clip(vis, [60, 160, 250])
    assert eval_main(["--temporal", "--ir-video", str(ir), "--vis-video", str(vis), "--methods", "average"]) == 0
    assert "at most 60 frames" in capsys.readouterr().out
    assert len(list(video_frames(ir, vis, 60))) == 3  # at most: the clip's end ends the sequence


@pytest.mark.parametrize("argv, message", [
    (["--temporal"], "--temporal needs --data ROOT"),
    (["--temporal", "--ir-video", "nowhere.mp4", "--vis-video", "nowhere.mp4"], "--ir-video nowhere.mp4: no such file"),
    (["--temporal", "--data", "x", "--ir-video", "a.mp4"], "not both"),
    (["--temporal", "--data", "x", "--metrics", "SD"], "--metrics cannot be used with --temporal"),
])
def test_eval_cli_temporal_refuses_bad_input_with_one_line(argv, message, capsys):
    assert eval_main(argv) == 2
    assert message in capsys.readouterr().err


def test_video_frames_names_a_file_that_is_not_a_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(UserError, match="cannot read a frame"):
        video_frames(bad, bad)


def test_excluded_clips_lists_every_clip_a_video_entry_held_out():
    from moefusion.eval.heldout import excluded_clips

    cfg = {"data": {"train": ["../d/roadscene", {"video": "../d/m3svd_video", "exclude": ["a", "b"]},
                              {"video": "../d/other", "frame_step": 10}]}}
    assert excluded_clips(cfg) == [("../d/m3svd_video", "a"), ("../d/m3svd_video", "b")]
    assert excluded_clips({}) == []
