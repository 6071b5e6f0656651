"""The one recipe of the shipped weights (issue 23): ``moefusion-train --config
moefusion/configs/edge.yaml --data ../shared/data`` end to end at tiny scale: it trains, resumes when
run again, refuses another config's run, and records the command, the config and the data."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moefusion import load
from moefusion.data.datasets import PairedDataset
from moefusion.errors import UserError
from moefusion.model.checkpoint import read_checkpoint
from moefusion.train.cli import apply_data_argument, main
from moefusion.train.config import CONFIG_DIR, load_config
from moefusion.train.loop import unfinished_run
from moefusion.data.io import read_image

from conftest import SHARED_DATA, shared_set

EDGE = CONFIG_DIR / "edge.yaml"
TINY = ["--set", "data.crop=[96,96]", "--set", "data.val_images=1", "--set", "data.workers=0", "-q"]


def test_edge_recipe_end_to_end_at_tiny_scale(tmp_path):
    for name in ("roadscene", "msrs_det", "tno_seq_nato_camp", "tno_seq_duine", "tno_seq_tree"):
        shared_set(name)  # skip (fail under CI) without the data
    out = tmp_path / "run"
    first = ["--config", str(EDGE), "--data", str(SHARED_DATA), "--out", str(out), "--max-steps", "2", *TINY]
    assert main(first) == 0
    release = out / "moefusion_edge.pt"  # train.release: "{out}/moefusion_edge.pt"
    ckpt = read_checkpoint(release)
    recipe = ckpt["meta"]["recipe"]
    assert recipe["command"].startswith(f"moefusion-train --config {EDGE} --data {SHARED_DATA} ")
    assert recipe["config"] == load_config(str(EDGE), [])  # the config file as committed, parsed
    assert len(recipe["data_fingerprint"]) == 64
    cfg = ckpt["meta"]["train_config"]
    assert cfg["data"]["root"] == str(SHARED_DATA) and cfg["data"]["train"][0] == "roadscene"
    assert ckpt["meta"]["step"] == 2 and ckpt["config"]["network_stride"] == 2

    # the same command again, further: it resumes (step count goes on, the first command stays the recipe)
    again = [a if a != "2" else "4" for a in first]
    assert main(again) == 0
    ckpt = read_checkpoint(release)
    assert ckpt["meta"]["step"] == 4
    assert ckpt["meta"]["recipe"]["command"] == recipe["command"]
    assert ckpt["meta"]["recipe"]["resumed"] and "--max-steps 4" in ckpt["meta"]["recipe"]["resumed"][-1]
    assert ckpt["meta"]["recipe"]["data_fingerprint"] == recipe["data_fingerprint"]

    # the release checkpoint is a model: it fuses a real pair
    ir_path, vis_path = PairedDataset(str(SHARED_DATA / "tno_seq_duine")).paths(0)
    ir, vis = read_image(ir_path), read_image(vis_path)
    fused = load(str(release)).fuse(ir, vis)
    assert fused.shape == vis.shape and fused.dtype == vis.dtype and fused.std() > 1

    # another config in the same folder is refused, naming what differs
    assert main([*first, "--set", "optim.lr=0.5"]) == 2  # one-line error: "... differs in optim.lr ..."
    with pytest.raises(UserError, match="differs in .*optim.lr"):
        unfinished_run({**ckpt["meta"]["train_config"], "optim": {**cfg["optim"], "lr": 0.5}})


def test_data_argument_names_the_root_or_replaces_the_sets(tmp_path):
    holder = tmp_path / "data"
    (holder / "roadscene").mkdir(parents=True)
    cfg = load_config(str(EDGE), [])
    apply_data_argument(cfg, [str(holder)])
    assert cfg["data"]["root"] == str(holder) and cfg["data"]["train"][0] == "roadscene"
    assert cfg["data"]["val"] == ["tno_seq_tree"]
    # a folder that does not hold the config's sets is the training data itself
    cfg = load_config(str(EDGE), [])
    apply_data_argument(cfg, [str(tmp_path / "mine")])
    assert cfg["data"]["train"] == [str(tmp_path / "mine")] and cfg["data"]["root"] is None
    assert cfg["data"]["val"] == []  # the config's own held-out sets were named under its root


def test_edge_yaml_names_every_set_under_its_root():
    cfg = yaml.safe_load(EDGE.read_text())
    assert cfg["data"]["root"] == "../shared/data"
    for entry in cfg["data"]["train"] + cfg["data"]["val"]:
        name = entry["video"] if isinstance(entry, dict) else entry
        assert not Path(name).is_absolute() and "/" not in name, entry


RECIPE = "moefusion-train --config moefusion/configs/edge.yaml --data ../shared/data"


def test_the_model_card_gives_the_one_command():
    card = (CONFIG_DIR.parents[1] / "docs" / "model_card.md").read_text()
    assert f"`{RECIPE}`" in card


def test_the_shipped_weights_come_from_the_one_command():
    from moefusion.model.checkpoint import DEFAULT_WEIGHTS

    recipe = read_checkpoint(DEFAULT_WEIGHTS)["meta"].get("recipe") or {}
    assert recipe.get("command") == RECIPE
    assert recipe.get("config") == load_config(str(EDGE), [])
