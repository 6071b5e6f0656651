"""moefusion-train on real pairs: the loss goes down, checkpoints resume, bad configs are one-line errors."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from moefusion.data.combine import collate_pairs
from moefusion.data.datasets import PairedDataset
from moefusion.data.augment import val_transform
from moefusion.errors import UserError
from moefusion import load
from moefusion.model.checkpoint import read_checkpoint
from moefusion.model.losses import fusion_losses
from moefusion.train import load_config, main, train
from moefusion.train.data import GroupedBatchSampler


def fixed_batch(root, n=4, size=(96, 96)):
    ds = PairedDataset(root, transform=val_transform(size))
    return collate_pairs([ds[i] for i in range(n)])


def eval_loss(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(batch["ir"], batch["vis"])
        return float(fusion_losses(out.fused, batch["vis"], batch["ir"], batch["boxes"])["total"])


def small_config(tmp_path, roots, steps, seed=0, **model):
    cfg = load_config("edge.yaml", [])
    cfg["model"].update(model)
    cfg["data"].update(train=[str(r) for r in roots], val=[], val_fraction=0.0, crop=[96, 96], batch_size=4,
                       workers=0, val_images=2)
    cfg["optim"].update(lr=2e-3, warmup_iters=0)
    cfg["train"].update(out=str(tmp_path / "run"), max_steps=steps, seed=seed, device="cpu")
    return cfg


@pytest.mark.slow
# A pixel head learns the image from scratch: 40 steps cut the loss by a fifth. The pyramid head
# starts as a blend of the sources (its loss starts near a good fusion's): the loss must still fall.
@pytest.mark.parametrize("head,factor", [("pixel", 0.8), ("pyramid", 1.0)])
def test_short_training_on_real_pairs_lowers_the_loss(tmp_path, shared_data, head, factor):
    msrs = shared_data("msrs_det")
    torch.manual_seed(0)
    # a pixel head runs at full resolution
    stride = {"decoder_stride": 1, "network_stride": 1} if head == "pixel" else {}
    cfg = small_config(tmp_path, [msrs], steps=1, output_head=head, **stride)
    cfg["train"]["classical_start"] = head == "pyramid"  # a pixel head has no classical blend to start from
    first = train(cfg)
    batch = fixed_batch(msrs)
    before = eval_loss(load(first, device="cpu"), batch)
    cfg = small_config(tmp_path, [msrs], steps=40, output_head=head, **stride)
    cfg["train"]["classical_start"] = head == "pyramid"
    last = train(cfg, resume=str(first))
    ckpt = read_checkpoint(last)
    assert ckpt["meta"]["step"] == 40 and ckpt["preset"] == "edge"
    assert ckpt["meta"]["history"][-1]["loss_det"] > 0, "boxes of msrs_det must train the detectors"
    after = eval_loss(load(last, device="cpu"), batch)
    assert after < factor * before, (before, after)


@pytest.mark.slow
def test_non_finite_gradients_skip_the_step_then_stop_the_run(tmp_path, shared_data, monkeypatch):
    import moefusion.train.loop as train_module

    real = train_module.fusion_losses

    def nan_after_first_step(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls.append(1)
        if len(calls) > 1:  # the first step is real, then every loss is NaN
            terms["total"] = terms["total"] * float("nan")
        return terms

    calls = []
    monkeypatch.setattr(train_module, "fusion_losses", nan_after_first_step)
    cfg = small_config(tmp_path, [shared_data("tno_seq_duine")], steps=50)
    with pytest.raises(UserError, match="diverged: 21 steps with non-finite gradients"):
        train(cfg)
    assert len(calls) == 22
    # the weights saved at the ends of the epochs before are finite: skipped steps never reached them
    state = read_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_checkpoint_alone_rebuilds_and_resumes(tmp_path, shared_data):
    tno = shared_data("tno_seq_duine")
    cfg = small_config(tmp_path, [tno], steps=2)
    path = train(cfg)
    ckpt = read_checkpoint(path)
    assert ckpt["config"]["stem"] == 8 and ckpt["meta"]["train_config"]["train"]["max_steps"] == 2
    assert "optimizer" in ckpt
    # routing statistics of every MoE layer are in the training log: k=2 choices per sample, 2 steps
    # of at most 4 samples (a root's last batch may be smaller)
    record = ckpt["meta"]["history"][-1]
    for layer in ("mole_fg", "mole_bg", "moge"):
        chosen = sum(int(c) for c in record[f"{layer}_experts"].split("/"))
        assert chosen % 2 == 0 and 4 <= chosen <= 16
        assert 0 < record[f"{layer}_minw"] <= 0.5 and record[f"{layer}_sets"] >= 1
    # resuming from the checkpoint alone (its embedded config) continues the step count
    code = main(["--resume", str(path), "--max-steps", "3", "--out", str(tmp_path / "again"), "-q"])
    assert code == 0
    meta = read_checkpoint(tmp_path / "again" / "last.pt")["meta"]
    assert meta["step"] == 3
    # stopped mid-epoch both times: the checkpoint says where in the epoch, so a resume goes on inside it
    assert ckpt["meta"]["epoch"] == 0 and ckpt["meta"]["epoch_batches"] == 2
    assert meta["epoch"] == 0 and meta["epoch_batches"] == 3


def test_a_resumed_epoch_draws_the_batches_it_had_not_drawn():
    whole = GroupedBatchSampler([10, 7], 3, seed=5)
    whole.epoch = 4
    batches = list(whole)
    resumed = GroupedBatchSampler([10, 7], 3, seed=5)
    resumed.epoch, resumed.skip = 4, 2
    assert list(resumed) == batches[2:] and len(resumed) == len(batches) - 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "nope.yaml"], "config file not found"),
        (["--config", "edge.yaml", "--set", "optim.lrr=1"], "unknown config entry optim.lrr"),
        (["--config", "edge.yaml", "--set", "novalue"], "--set expects key=value"),
        (["--config", "edge.yaml", "--data", "/nonexistent/folder"], "dataset folder not found"),
        (["--config", "edge.yaml", "--set", "data.crop=[64,64]"], "too small"),
    ],
)
def test_user_errors_are_one_line(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_user_error_exit_from_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "moefusion.train", "--config", "nope.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "config file not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_torchrun_ddp_two_processes(tmp_path, shared_data):
    """The same script under torchrun: DistributedDataParallel (gloo on the CPU), rank 0 saves."""
    msrs, duine = shared_data("msrs_det"), shared_data("tno_seq_duine")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd = torchrun + ["-m", "moefusion.train", "--config", "edge.yaml", "--data", str(msrs), str(duine),
                      "--val-data", str(duine), "--max-steps", "3", "--out", str(tmp_path / "ddp"),
                      "--set", "data.crop=[128,128]", "--set", "data.val_images=1", "--set", "data.workers=0",
                      "--device", "cpu", "-q"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_checkpoint(tmp_path / "ddp" / "last.pt")["meta"]["step"] == 3


def test_held_out_pairs_never_reach_training(shared_data):
    roots = [shared_data("msrs_det"), shared_data("tno_seq_duine")]
    cfg = load_config("edge.yaml", [])
    cfg["data"].update(train=[str(r) for r in roots], val=[str(shared_data("tno_seq_tree"))], val_fraction=0.2)
    from moefusion.train import build_datasets

    train_set, val_set = build_datasets(cfg)
    train_ids = {(d.name, i) for d in train_set.datasets for i in d.ids}
    val_ids = {(d.name, i) for d in val_set.datasets for i in d.ids}
    assert train_ids and not train_ids & val_ids
    # every training root gives up its fraction, and the explicit validation root is whole
    assert {d.name for d in val_set.datasets} == {"msrs_det", "tno_seq_duine", "tno_seq_tree"}
    assert len(train_ids) + len(val_ids) == 25 + 23 + 19


def _gating(indices, weights, num_experts=4):
    from moefusion.model.gating import Gating

    idx, w = torch.tensor(indices), torch.tensor(weights)
    gates = torch.zeros(len(indices), num_experts).scatter(1, idx, w)
    return Gating(idx, w, gates, (gates > 0).sum(0).float())


def test_routing_statistics_and_collapse_warnings():
    from moefusion.eval.routing import RoutingStats

    stats = RoutingStats()
    stats.add({"alive": _gating([[0, 1], [2, 3], [1, 2]], [[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]]),
               "dead": _gating([[0, 3], [0, 3], [0, 3]], [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3]]),
               "confident": _gating([[0, 1], [2, 3], [3, 1]], [[1.0, 1e-8], [0.999, 1e-3], [0.99, 0.01]])})
    s = stats.summary()
    assert s["alive_experts"] == "1/2/2/1" and s["alive_sets"] == 3 and s["alive_minw"] == 0.4
    assert s["dead_experts"] == "3/0/0/3" and s["dead_sets"] == 1
    problems = stats.collapsed()
    assert problems == ["dead: expert(s) 1, 2 never chosen",
                        "confident: median smallest selected weight 0.001 < 0.01"]


def test_video_entries_in_the_data_config(tmp_path, shared_data):
    from moefusion.data.video import dataset_root
    from moefusion.train import build_datasets

    video = str(shared_data("m3svd_video"))
    cfg = load_config("edge.yaml", [])
    entry = {"video": video, "frame_step": 100, "exclude": ["0113_1714", "0117_1605", "0117_1620", "0111_1716"]}
    cfg["data"].update(train=[entry], val=[], val_fraction=0.0)
    import moefusion.data.video as video_module

    video_module.DEFAULT_CACHE = tmp_path  # keep the test's cache out of the user's
    train_set, _ = build_datasets(cfg)
    assert [i for d in train_set.datasets for i in d.ids] == ["1230_1202_00000", "1230_1202_00100", "1230_1202_00200"]
    with pytest.raises(UserError, match="quote the clip names"):
        dataset_root({"video": video, "exclude": [1171620]})
    with pytest.raises(UserError, match="expected"):
        dataset_root({"videos": video})


def test_init_fine_tunes_from_weights_with_a_fresh_schedule(tmp_path, shared_data):
    tno = shared_data("tno_seq_duine")
    first = train(small_config(tmp_path / "a", [tno], steps=2))
    cfg = small_config(tmp_path / "b", [tno], steps=1)
    cfg["train"]["init"] = str(first)
    second = read_checkpoint(train(cfg))
    assert second["meta"]["step"] == 1  # a new run, not a resume
    before = read_checkpoint(first)["state_dict"]
    moved = [k for k, v in second["state_dict"].items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert moved and len(moved) < len(before)  # started from the weights and trained one step


def test_numbers_written_without_a_dot_are_numbers(tmp_path):
    """PyYAML reads 5e-4 as a string; the documented --set optim.lr=2e-4 must give a float lr, and
    a config file's lr: 3e-4 too; a word where a number belongs is a one-line error naming the key."""
    cfg = load_config("edge.yaml", ["optim.lr=2e-4", "loss.grad=2e1", "data.batch_size=8"])
    assert cfg["optim"]["lr"] == pytest.approx(2e-4) and isinstance(cfg["optim"]["lr"], float)
    assert cfg["loss"]["grad"] == 20.0 and cfg["data"]["batch_size"] == 8
    f = tmp_path / "c.yaml"
    f.write_text("preset: edge\noptim:\n  lr: 3e-4\n")
    assert load_config(str(f), [])["optim"]["lr"] == pytest.approx(3e-4)
    with pytest.raises(UserError, match=r"config optim\.lr: 'fast' is not a number"):
        load_config("edge.yaml", ["optim.lr=fast"])


def test_validation_compares_with_the_pyramid_on_every_held_out_set(shared_data):
    """validate() takes its images evenly from each held-out set and measures the model and the
    Laplacian pyramid on the same frames; the count of sets where the model wins is recomputed here."""
    import numpy as np

    from moefusion.data.combine import ConcatPairs
    from moefusion.data.datasets import PairedDataset
    from moefusion.eval.baselines import laplacian_pyramid_fusion
    from moefusion.eval.metrics import compute
    from moefusion.model.checkpoint import DEFAULT_WEIGHTS
    from moefusion.train import validate

    parts = []
    for name in ("tno_seq_tree", "msrs_det"):
        ds = PairedDataset(shared_data(name))
        parts.append(ds.subset(ds.ids[:3], transform=None))
    model = load(DEFAULT_WEIGHTS, device="cpu").float()
    got = validate(model, ConcatPairs(parts), torch.device("cpu"), max_images=2)
    want_model, want_pyr, above = [], [], 0
    for part in parts:  # one image per set: the first (linspace over one point)
        item = part[0]
        ir, vis = item["ir"][0].numpy(), item["vis"][0].numpy()
        with torch.no_grad():
            fused = model(item["ir"][None], item["vis"][None]).fused.clamp(0, 1)[0, 0].numpy()
        q_model = compute(["Qabf"], fused * 255, ir * 255, vis * 255)["Qabf"]
        q_pyr = compute(["Qabf"], laplacian_pyramid_fusion(ir, vis) * 255, ir * 255, vis * 255)["Qabf"]
        want_model.append(q_model)
        want_pyr.append(q_pyr)
        above += q_model > q_pyr
    assert got["Qabf"] == pytest.approx(np.mean(want_model), abs=1e-6)
    assert got["laplacian_Qabf"] == pytest.approx(np.mean(want_pyr), abs=1e-6)
    assert got["Qabf_sets_above_laplacian"] == f"{above}/2"
    assert {"SD", "SF", "laplacian_SF", "val_moge_sets"} <= set(got)


def test_paper_config_trains_as_upstream_and_edge_as_before():
    """paper.yaml: no flips (upstream flip_ratio=0), no jitter, no warm-up, fp32, upstream's int() box mask;
    a config that names none of these (edge.yaml) keeps flips at 0.5, jitter 0.2 and the same loaded
    config as before they existed (the configs recorded in its checkpoints still equal it)."""
    import numpy as np

    from moefusion.train.config import OPTIONAL, option
    from moefusion.train.data import training_transform
    from moefusion.train.loop import _lr_factor

    paper, edge = load_config("paper.yaml", []), load_config("edge.yaml", [])
    assert option(paper, "data", "flip") == 0 and option(paper, "data", "jitter") is None
    assert option(paper, "loss", "box_rounding") == "int" and paper["optim"]["warmup_iters"] == 0
    assert paper["train"]["amp"] is False  # upstream trains in fp32
    assert _lr_factor(0, 0, paper["optim"]) == 1.0  # full learning rate from the first step
    assert not any(k in edge[s] for s, keys in OPTIONAL.items() for k in keys)
    assert option(edge, "data", "flip") == 0.5 and option(edge, "loss", "box_rounding") == "outward"

    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (24, 1))  # flipping reverses it
    def draws(cfg, n=64):
        t = training_transform({**cfg, "data": {**cfg["data"], "crop": [24, 32], "scale_range": None}})
        g = torch.Generator().manual_seed(0)
        return [t({"ir": ramp.copy(), "vis": ramp.copy()}, g) for _ in range(n)]

    out = draws(paper)
    assert all(np.array_equal(s["ir"], ramp) and np.array_equal(s["vis"], ramp) for s in out)  # never flipped or jittered
    out = draws(edge)
    flipped = sum(bool(np.array_equal(s["ir"], ramp[:, ::-1])) for s in out)
    assert 16 <= flipped <= 48 and not all(np.array_equal(s["vis"], s["ir"]) for s in out)  # p = 0.5; VIS jittered
    with pytest.raises(UserError, match="data.flip"):
        training_transform(load_config("edge.yaml", ["data.flip=2"]))
    with pytest.raises(UserError, match="unknown config entry data.flipp"):
        load_config("edge.yaml", ["data.flipp=0"])


def test_an_expert_margin_outside_the_grey_range_is_refused(tmp_path, shared_data):
    cfg = small_config(tmp_path, [shared_data("tno_seq_duine")], steps=1)
    cfg["loss"]["expert_margin"] = 300
    with pytest.raises(UserError, match=r"loss\.expert_margin=300 .* 0\.\.255 grey levels"):
        train(cfg)
    assert not (tmp_path / "run" / "last.pt").exists()
