"""moefusion.eval.ablation and moefusion-eval --routing-report: forced experts, zeroed layers, the
attention, the routing statistics of every MoE layer (a small untrained 'edge' model, gates drawn
at random so that routing depends on the input)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import moefusion
from moefusion.data.datasets import PairedDataset
from moefusion.eval import ablation, cli
from moefusion.eval.heldout import HeldOutSet
from moefusion.model.checkpoint import save_checkpoint
from moefusion.model.gating import randomize_gates


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_gates(moefusion.build_model("edge"), seed=0, scale=None).float().eval()


def _pair(seed: int, h: int = 64, w: int = 96):
    rng = np.random.default_rng(seed)
    ir = cv2.GaussianBlur((rng.random((h, w)) * 255).astype(np.uint8), (5, 5), 0)
    vis = cv2.GaussianBlur((rng.random((h, w)) * 255).astype(np.uint8), (3, 3), 0)
    return ablation.to_tensors(ir, vis)


def _folder(root, n: int = 3):
    for i in range(n):
        ir, vis = (((t[0, 0].numpy()) * 255).astype(np.uint8) for t in _pair(i))
        for sub, img in (("ir", ir), ("vis", vis)):
            (root / sub).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / sub / f"{i:03d}.png"), img)
    return root


def test_forcing_experts_the_gate_did_not_choose_changes_the_image(model):
    ir, vis = _pair(0)
    layers = ablation.moe_layers(model)
    assert list(layers) == ["mole_fg", "mole_bg", "moge"]
    base = ablation.fused_grey(model, ir, vis)
    for name, layer in layers.items():
        chosen = model(ir, vis).gatings[name].indices
        with ablation.forced_experts(layer) as forced:
            assert set(model(ir, vis).gatings[name].indices[0].tolist()).isdisjoint(chosen[0].tolist())
            assert forced is layer
        assert ablation.forced_expert_change(model, ir, vis, name) > 0.05, name
        # forcing the experts it chose anyway changes nothing, and the patch is gone afterwards
        with ablation.forced_experts(layer, choose=lambda idx, e: idx):
            assert torch.equal(ablation.fused_grey(model, ir, vis), base)
        assert "route" not in vars(layer)
        assert torch.equal(ablation.fused_grey(model, ir, vis), base)


def test_model_returns_the_unchosen_experts_images_the_ablation_measures(model):
    """forced=True (training's expert-choice loss) gives, per layer, the image that layer's unchosen
    experts make: the ablation's, with MoGE's routing held where a MoLE layer is forced."""
    ir, vis = _pair(1)
    out = model(ir, vis, forced=True)
    assert model(ir, vis).forced is None
    assert list(out.forced) == ["mole_fg", "mole_bg", "moge"]
    base = out.fused.clamp(0, 1) * 255
    held = out.gatings["moge"]
    for name, layer in ablation.moe_layers(model).items():
        with ablation.forced_experts(layer):
            if name != "moge":
                model.moge.route = lambda *args, **kwargs: (held, None)
            try:
                expected = ablation.fused_grey(model, ir, vis)
            finally:
                if name != "moge":
                    del model.moge.route
        image = out.forced[name].clamp(0, 1) * 255
        assert image.shape == base.shape
        assert torch.allclose(image, expected, atol=1e-3), name
        assert not torch.equal(image, base), name
    assert (out.forced["moge"].clamp(0, 1) * 255 - base).abs().mean() > 0.05


def test_unchosen_experts():
    idx = torch.tensor([[0, 3], [2, 1]])
    assert ablation.unchosen(idx, 4).tolist() == [[1, 2], [0, 3]]
    assert ablation.unchosen(idx, 3).tolist() == [[1, 2], [0, 2]]  # too few left: chosen ones fill up


def test_zeroing_a_layer_and_a_uniform_attention_move_the_image(model):
    ir, vis = _pair(1)
    assert ablation.zeroed_layer_change(model, ir, vis, "mole_bg") > 0.05
    inside = np.zeros(ir.shape[-2:], bool)
    inside[16:48, 24:72] = True
    assert ablation.attention_change(model, ir, vis, inside) > 0.0
    # the attention itself as the override changes nothing
    att = model(ir, vis).attention
    same = ablation.fused_grey(model, ir, vis, attention_override=att)
    assert torch.allclose(same, ablation.fused_grey(model, ir, vis), atol=1e-3)


def test_routing_report_names_every_moe_layer(model, tmp_path):
    sets = [HeldOutSet("tiny (whole sequence)", PairedDataset(str(_folder(tmp_path / "tiny"))))]
    rep = ablation.routing_report(model, sets, limit=2)
    assert rep.pairs == 2
    assert set(rep.forced) == {"mole_fg", "mole_bg", "moge"} and set(rep.zeroed) == {"mole_fg", "mole_bg"}
    assert all(len(v) == 2 and min(v) > 0 for v in rep.forced.values())
    text = ablation.format_report(rep, "title")
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| mole") or
            line.startswith("| moge")}
    assert set(rows) == {"mole_fg", "mole_bg", "moge"}
    for name, line in rows.items():
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert sum(int(c) for c in cells[1].split("/")) == 2 * model.cfg.k  # k choices per pair
        assert float(cells[4]) == pytest.approx(np.mean(rep.forced[name]), abs=0.006)
    assert "No labelled pair" in text
    # where each expert is chosen: one row per set, the same counts as the whole report's (one set here)
    per_set = [line for line in text.splitlines() if line.startswith("| tiny (whole sequence) |")]
    assert len(per_set) == 1
    cells = [c.strip() for c in per_set[0].strip("|").split("|")]
    assert cells[1] == "2" and cells[2:] == [rows[n].strip("|").split("|")[1].strip()
                                             for n in ("mole_fg", "mole_bg", "moge")]


def test_routing_pictures_show_each_sets_first_pair_and_its_experts(model, tmp_path):
    sets = [HeldOutSet(f"set{i}", PairedDataset(str(_folder(tmp_path / f"s{i}", 2)))) for i in range(2)]
    rep = ablation.routing_report(model, sets, limit=2, maps=8)
    assert len(rep.maps) == 2  # the first pair of each set, labelled or not
    ir, vis = _pair(0)  # the first pair of each folder
    out = model(ir, vis)
    row = rep.maps[0]
    assert row.shape == (240, 4 * 320, 3)
    # the VIS tile is the pair's VIS frame (away from the captions)
    tile = cv2.resize((vis[0, 0].numpy() * 255).astype(np.uint8), (320, 240))
    assert np.abs(row[40:200, 320:640, 0].astype(int) - tile[40:200]).mean() < 1
    # the chosen experts are written on the row: drawing them again over it changes nothing there
    caption = ablation.chosen_experts(out.gatings)
    assert caption.startswith("mole_fg ") and "moge " in caption
    redrawn = row.copy()
    ablation._caption(redrawn, caption, 240 - 8)
    assert np.array_equal(redrawn, row)
    other = row.copy()
    ablation._caption(other, caption.replace("moge", "mogX"), 240 - 8)
    assert not np.array_equal(other, row)


def test_routing_report_command(model, tmp_path, capsys):
    _folder(tmp_path / "val")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  train: []\n  val: [{tmp_path / 'val'}]\n  val_fraction: 0\n")
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model)
    md = tmp_path / "report.md"
    code = cli.main(["--routing-report", "--model", str(ckpt), "--config", str(cfg), "--limit", "1",
                     "--markdown", str(md)])
    out = capsys.readouterr()
    assert code == 0, out.err
    text = md.read_text()
    assert text.strip() in out.out and "1 pairs." in text
    for name in ("mole_fg", "mole_bg", "moge"):
        assert f"| {name} |" in text
    code = cli.main(["--routing-report", "--model", str(tmp_path / "m.onnx")])
    assert code == 2 and "needs a checkpoint" in capsys.readouterr().err
