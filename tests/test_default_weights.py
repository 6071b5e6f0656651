"""The bundled default weights beat averaging fusion on the pairs held out from their training."""
from __future__ import annotations

from pathlib import Path

import pytest

from moefusion.model.checkpoint import DEFAULT_WEIGHTS, model_from_checkpoint, read_checkpoint
from moefusion.train import build_datasets, validate

pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason=f"no default weights at {DEFAULT_WEIGHTS}")


@pytest.mark.slow
def test_default_weights_beat_averaging_on_their_held_out_pairs(shared_data):
    state = read_checkpoint(DEFAULT_WEIGHTS)
    cfg = state["meta"]["train_config"]  # the config they were trained with: the same seeded split
    data = cfg["data"]
    data["train"] = [str(shared_data(Path(r).name)) for r in data["train"]]
    data["val"] = [str(shared_data(Path(r).name)) for r in data["val"]]
    _, val_set = build_datasets(cfg)
    assert len(val_set) >= 40  # tno_seq_tree whole + 15 % of each training root
    model = model_from_checkpoint(state).float().eval()
    scores = validate(model, val_set, "cpu", max_images=len(val_set))
    for name in ("SD", "SF", "AG", "Qabf"):
        assert scores[name] > scores[f"average_{name}"], (name, scores)
