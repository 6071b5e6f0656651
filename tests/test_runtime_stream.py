"""Stream mode in the runtime (issue 22.3): the torch backend carries the model's temporal state,
run_pipeline turns it on by default (--no-stream-mode off), records it in --stats-json and resets
the state on a loop restart, a reconnect and a frame size change; a backend without state runs per
frame and says why."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from moefusion.runtime import gst as gstmod
from moefusion.runtime.backends import AverageBackend
from moefusion.runtime.cli import build_parser, config_from_args, main
from moefusion.runtime.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
DEMO_IR = ROOT / "samples" / "demo" / "m3svd_0117_1620_ir.mp4"
DEMO_VIS = ROOT / "samples" / "demo" / "m3svd_0117_1620_vis.mp4"
needs_gst = pytest.mark.skipif(not gstmod.have_gst(), reason=f"GStreamer/PyGObject not available: {gstmod.gst_reason()}")


class StreamSpy(AverageBackend):
    """The average, claiming a stream: records when reset_stream is called (frames inferred so far)."""

    name = "spy"
    stream_capable = True

    def __init__(self):
        self.n, self.resets = 0, []

    def reset_stream(self):
        self.resets.append(self.n)

    def infer(self, ir_unit, vis_y):
        self.n += 1
        return super().infer(ir_unit, vis_y)


def demo_frames(folder: Path, n: int, size=(64, 48), start: int = 0) -> list[str]:
    """The first n frames of the real demo clip (M3SVD, registered) as IR/VIS image folders."""
    for role, clip in (("ir", DEMO_IR), ("vis", DEMO_VIS)):
        (folder / role).mkdir(parents=True, exist_ok=True)
        cap = cv2.VideoCapture(str(clip))
        for i in range(start + n):
            ok, img = cap.read()
            assert ok, f"{clip}: no frame {i}"
            if i < start:
                continue
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            if role == "ir":
                img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            cv2.imwrite(str(folder / role / f"f{i:03d}.png"), img)
        cap.release()
    return sorted(p.name for p in (folder / "ir").iterdir())


def run(argv, tmp_path, name="stats.json"):
    sj = tmp_path / name
    rc = main(list(argv) + ["--stats-json", str(sj), "--stats-interval", "0", "--log-level", "warning"])
    return rc, (json.loads(sj.read_text()) if sj.exists() else None)


@pytest.fixture
def written(monkeypatch):
    """Every frame run_pipeline writes (copies), in order."""
    from moefusion.runtime.stages import Stages

    frames = []
    original = Stages._write

    def record(self, frame, pts):
        frames.append(np.array(getattr(frame, "data", frame), copy=True))  # I420Frame: its planes
        return original(self, frame, pts)

    monkeypatch.setattr(Stages, "_write", record)
    return frames


@pytest.fixture(scope="module")
def edge_model():
    """The bundled weights (the edge preset) on the CPU."""
    pytest.importorskip("torch")
    import moefusion

    return moefusion.load(device="cpu")


# -- the torch backend -----------------------------------------------------------------------
@pytest.mark.slow
def test_torch_backend_stream_is_the_models_stream_and_resets(edge_model):
    import torch

    from moefusion.model.stream import state_shapes
    from moefusion.runtime.backends import TorchBackend

    rng = np.random.default_rng(0)
    frames = [rng.random((2, 1, 1, 32, 48), dtype=np.float32) for _ in range(3)]
    b = TorchBackend(model=edge_model, device="cpu")
    assert b.stream_capable and b.set_stream_mode(True) and b.stream_mode
    state = None
    for ir, vis in frames:
        got, _ = b.infer(ir, vis)
        want, _, state = edge_model.forward_stream_unit(torch.from_numpy(ir), torch.from_numpy(vis), state)
        np.testing.assert_array_equal(got, want.numpy())
    first, _ = b.infer(*frames[0])
    b.reset_stream()
    assert b._state is None
    again, _ = b.infer(*frames[0])  # a new stream: the first frame is fused as the first again
    per_frame, _ = edge_model.forward_unit(torch.from_numpy(frames[0][0]), torch.from_numpy(frames[0][1]))
    np.testing.assert_allclose(again, per_frame.numpy(), atol=1e-5)
    assert not np.array_equal(first, again)
    other, _ = b.infer(rng.random((1, 1, 32, 112), dtype=np.float32), rng.random((1, 1, 32, 112), dtype=np.float32))
    padded = state_shapes(edge_model.cfg, 1, 32, 112)["detail"][-2:]  # padded to the network's multiple (32 or 64)
    assert padded != state_shapes(edge_model.cfg, 1, 32, 48)["detail"][-2:]
    assert other.shape == (1, 1, 32, 112) and tuple(b._state.detail.shape[-2:]) == padded  # a new size starts afresh
    assert not b.set_stream_mode(False) and b._state is None


@pytest.mark.slow
def test_the_cuda_graph_body_keeps_the_state_in_its_buffers(edge_model):
    """What the stream-mode CUDA graph captures (``_static_step``: the state read from and written
    back into static buffers), run eagerly on the CPU: the same frames as the model's stream."""
    import torch

    from moefusion.runtime.backends import TorchBackend

    b = TorchBackend(model=edge_model, device="cpu")
    b.load()
    rng = np.random.default_rng(1)
    entry = {"dev": {"ir": torch.zeros(1, 1, 32, 32), "vis": torch.zeros(1, 1, 32, 32)},
             "state": edge_model.initial_state(1, 32, 32)}
    state = None
    for _ in range(3):
        ir, vis = rng.random((1, 1, 32, 32), dtype=np.float32), rng.random((1, 1, 32, 32), dtype=np.float32)
        entry["dev"]["ir"].copy_(torch.from_numpy(ir))
        entry["dev"]["vis"].copy_(torch.from_numpy(vis))
        got, _ = b._static_step(entry)
        want, _, state = edge_model.forward_stream_unit(torch.from_numpy(ir), torch.from_numpy(vis), state)
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        for buf, s in zip(entry["state"], state):
            np.testing.assert_array_equal(buf.numpy(), s.float().numpy())


def test_average_backend_has_no_stream():
    b = AverageBackend()
    assert not b.stream_capable and not b.set_stream_mode(True)
    assert b.stream_unavailable == "the average fusion has no temporal state"


# -- run_pipeline ------------------------------------------------------------------------------
@needs_gst
@pytest.mark.slow
def test_run_pipeline_stream_mode_on_by_default_and_off_with_the_flag(tmp_path, written):
    """The real demo clip (M3SVD), 6 frames scaled to 64x48, the default weights on the CPU."""
    args = ["--ir", str(DEMO_IR), "--vis", str(DEMO_VIS), "--backend", "torch", "--device", "cpu",
            "--ir-width", "64", "--ir-height", "48", "--vis-width", "64", "--vis-height", "48",
            "--max-frames", "6", "--output", "none"]
    rc, on = run(args, tmp_path, "on.json")
    stream = list(written)
    written.clear()
    rc_off, off = run(args + ["--no-stream-mode"], tmp_path, "off.json")
    alone = list(written)
    assert rc == rc_off == 0 and on["frames_out"] == off["frames_out"] == 6
    assert on["stream_mode"] is True and on["stream_resets"] == 0 and "stream mode" in on["backend_detail"]
    assert off["stream_mode"] is False and off["stream_mode_off"] == "--no-stream-mode"
    np.testing.assert_array_equal(stream[0], alone[0])  # the first frame of a stream is the per-frame fusion
    assert all(not np.array_equal(s, a) for s, a in zip(stream[1:], alone[1:]))


@pytest.mark.slow
def test_a_loop_restart_starts_the_stream_afresh(tmp_path, written, edge_model):
    """Three real frames played twice (--ir-loop 1 --vis-loop 1): the state is reset when the files
    start again, so the fourth output is the first one again (without the reset it would not be)."""
    from moefusion.runtime.backends import TorchBackend

    demo_frames(tmp_path, 3)
    calls = []

    class Spy(TorchBackend):
        def reset_stream(self):
            calls.append(self._state)
            super().reset_stream()

    backend = Spy(model=edge_model, device="cpu")
    args = build_parser().parse_args(["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vis"), "--ir-loop", "1",
                                      "--vis-loop", "1", "--output", "none", "--stats-interval", "0"])
    st = Pipeline(config_from_args(args), backend, backend_reason="test").run()
    assert st["ok"] and st["frames_out"] == 6 and st["stream_mode"] is True
    assert st["stream_resets"] == 1 and len(calls) == 3 and calls[-1] is not None  # at the loop, a state to forget
    assert backend._state is not None
    for k in range(3):  # the second pass is the first again, frame by frame
        np.testing.assert_array_equal(written[3 + k], written[k])
    assert not np.array_equal(written[1], written[0])


def test_backend_without_state_records_stream_mode_false_and_why(tmp_path, capsys):
    demo_frames(tmp_path, 3)
    rc, st = run(["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vis"), "--backend", "average",
                  "--output", "none"], tmp_path)
    out = capsys.readouterr().out
    assert rc == 0 and st["stream_mode"] is False
    assert st["stream_mode_off"] == "average backend: the average fusion has no temporal state"
    assert "stream mode: off (average backend: the average fusion has no temporal state)" in out


def test_a_frame_size_change_resets_the_stream(tmp_path):
    demo_frames(tmp_path, 2, size=(64, 48))
    names = demo_frames(tmp_path / "big", 2, size=(96, 72), start=2)
    for role in ("ir", "vis"):
        for n in names:
            (tmp_path / "big" / role / n).rename(tmp_path / role / n)
    spy = StreamSpy()
    args = build_parser().parse_args(["--ir", str(tmp_path / "ir"), "--vis", str(tmp_path / "vis"),
                                      "--output", "none", "--stats-interval", "0"])
    st = Pipeline(config_from_args(args), spy, backend_reason="test").run()
    assert st["ok"] and st["frames_out"] == 4 and st["stream_mode"] is True
    # set_stream_mode, after the warm-up (2 calls), and before the first 96x72 frame (2 more)
    assert spy.resets == [0, 2, 4] and st["stream_resets"] == 1


@needs_gst
def test_a_reconnect_resets_the_stream(tmp_path, monkeypatch):
    from moefusion.runtime.capture import GstCapture

    monkeypatch.setattr(GstCapture, "ends", property(lambda self: self.uri.is_finite))  # num-buffers: a camera dying
    spy = StreamSpy()
    args = build_parser().parse_args(["--ir", "test://ball?num-buffers=15", "--ir-width", "48", "--ir-height", "32",
                                      "--vis", "test://smpte", "--vis-width", "48", "--vis-height", "32",
                                      "--output", "none", "--max-frames", "30", "--stats-interval", "0"])
    st = Pipeline(config_from_args(args), spy, backend_reason="test").run()
    assert st["ok"] and st["reconnects"]["ir"] >= 1 and st["stream_mode"] is True
    assert st["stream_resets"] >= 1 and len(spy.resets) == 2 + st["stream_resets"]
