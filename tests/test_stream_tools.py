"""Stream mode in the offline tools (issue 22.3): moefusion-fuse --sequence fuses a folder of frames
as one stream; moefusion-eval --temporal measures the model in stream mode (method ``stream``)
beside the model per frame (``model``)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_runtime_stream import demo_frames

from moefusion.errors import UserError
from moefusion.eval.cli import main as eval_main
from moefusion.eval.runner import parse_methods
from moefusion.fuse import main as fuse_main


@pytest.fixture(scope="module")
def model():
    pytest.importorskip("torch")
    import moefusion

    return moefusion.load(device="cpu")


@pytest.mark.slow
def test_fuse_sequence_is_the_models_stream_frame_by_frame(tmp_path, model):
    from moefusion.data.io import read_image

    names = demo_frames(tmp_path, 3)
    ir, vis = tmp_path / "ir", tmp_path / "vis"
    assert fuse_main(["--ir", str(ir), "--vis", str(vis), "-o", str(tmp_path / "seq"), "--sequence", "--device", "cpu",
                      "-q"]) == 0
    assert fuse_main(["--ir", str(ir), "--vis", str(vis), "-o", str(tmp_path / "alone"), "--device", "cpu", "-q"]) == 0
    stream = model.stream()
    for k, name in enumerate(names):
        a, b = read_image(ir / name), read_image(vis / name)
        seq = cv2.imread(str(tmp_path / "seq" / name), cv2.IMREAD_UNCHANGED)
        alone = cv2.imread(str(tmp_path / "alone" / name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(seq, stream.fuse(a, b))
        np.testing.assert_array_equal(alone, model.fuse(a, b))
        assert np.array_equal(seq, alone) == (k == 0)  # the first frame of a stream is the per-frame fusion


def test_fuse_sequence_needs_folders(tmp_path, capsys):
    names = demo_frames(tmp_path, 1)
    assert fuse_main(["--ir", str(tmp_path / "ir" / names[0]), "--vis", str(tmp_path / "vis" / names[0]),
                      "-o", str(tmp_path / "o.png"), "--sequence"]) == 2
    assert capsys.readouterr().err.startswith("error: --sequence fuses a folder of frames as one video")


def test_the_stream_method_is_for_temporal_only(tmp_path, capsys):
    methods = parse_methods("model,stream,average", None)
    assert [m.stream for m in methods] == [False, True, False] and methods[1].is_model
    with pytest.raises(UserError, match="'stream:' needs a path"):
        parse_methods("stream:", None)
    demo_frames(tmp_path, 1)
    assert eval_main(["--data", str(tmp_path), "--methods", "stream,average"]) == 2
    assert "method 'stream' (the model in stream mode) needs a video: use it with --temporal" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_temporal_measures_the_stream_beside_the_model(shared_data, capsys):
    seq = shared_data("tno_seq_tree")
    assert eval_main(["--temporal", "--data", str(seq), "--max-frames", "3", "--methods", "model,stream,average"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {"model", "stream", "average"} and all(r[0] == "3" for r in rows.values())
    assert rows["model"] != rows["stream"]  # the same model, in stream mode: other frames after the first
