"""Losses against small hand-computed cases."""
from __future__ import annotations

import torch

from moefusion.model.losses import (
    attention_loss,
    box_mask,
    expert_choice_loss,
    fusion_losses,
    ssim,
    target_mask,
    thermal_saliency,
    gradient_loss,
    pixel_loss,
    pyramid_detail_loss,
    signed_gradient_loss,
    sobel_magnitude,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def test_sobel_of_a_step():
    # vertical step 0 -> 1 between columns 1 and 2 of a 3x4 image (zero padding at the borders)
    x = t([[0, 0, 1, 1]] * 3)
    s = sobel_magnitude(x)[0, 0]
    # centre row, column 1: Gx = (1*1 + 2*1 + 1*1) - 0 = 4, Gy = 0
    assert s[1, 1].item() == 4.0 and s[1, 2].item() == 4.0
    # column 0 (interior of the zero region, next to zero padding): nothing changes -> 0
    assert s[1, 0].item() == 0.0


def test_gradient_loss_hand_case():
    vis = t([[0, 0, 1, 1]] * 3)
    ir = torch.zeros_like(vis)
    assert gradient_loss(vis, vis, ir).item() == 0.0  # F with the strongest gradients: no loss
    expect = sobel_magnitude(vis).mean().item()  # F = 0 misses all of vis's gradients
    assert abs(gradient_loss(torch.zeros_like(vis), vis, ir).item() - expect) < 1e-6


def test_signed_gradient_loss_keeps_polarity():
    vis = t([[0, 0, 1, 1]] * 3)
    ir = torch.zeros_like(vis)
    inverted = -vis  # the same edges with the opposite sign (Sobel is linear)
    assert gradient_loss(inverted, vis, ir).item() == 0.0  # the published loss cannot tell
    assert signed_gradient_loss(vis, vis, ir).item() == 0.0
    # inverted: |Gx(F) - Gx(vis)| + |Gy(F) - Gy(vis)| = 2 (|Gx(vis)| + |Gy(vis)|) at every pixel
    expect = 2 * sobel_magnitude(vis).mean().item()
    assert abs(signed_gradient_loss(inverted, vis, ir).item() - expect) < 1e-6
    # per pixel, the source of larger magnitude is the target: here IR's stronger, opposite edge
    ir_strong = -2 * vis
    assert signed_gradient_loss(ir_strong, vis, ir_strong).item() == 0.0
    assert signed_gradient_loss(vis, vis, ir_strong).item() > 0


def test_pixel_loss_hand_case():
    vis = t([[0.2, 0.2], [0.2, 0.2]])
    ir = t([[1.0, 0.0], [0.0, 0.0]])
    fused = t([[0.5, 0.5], [0.5, 0.5]])
    mask = t([[1, 0], [0, 0]])
    # inside (0,0): |0.5 - max(0.2, 1.0)| = 0.5; outside: |0.5 - 0.1| = 0.4 three times
    assert abs(pixel_loss(fused, vis, ir, mask).item() - (0.5 + 3 * 0.4) / 4) < 1e-6
    # without boxes everything is background: |0.5-0.6| + 3 * 0.4
    assert abs(pixel_loss(fused, vis, ir).item() - (0.1 + 3 * 0.4) / 4) < 1e-6


def test_box_mask_rasterisation():
    m = box_mask([torch.tensor([[0.5, 1.0, 2.0, 2.2]]), torch.zeros(0, 4)], (2, 1, 4, 4))
    # rows floor(1.0)..ceil(2.2)-1 = 1..2, columns floor(0.5)..ceil(2.0)-1 = 0..1
    expect = torch.zeros(4, 4)
    expect[1:3, 0:2] = 1
    assert torch.equal(m[0, 0], expect) and m[1].sum() == 0
    clipped = box_mask([torch.tensor([[-5.0, -5.0, 10.0, 1.0]])], (1, 1, 3, 3))
    assert clipped[0, 0, 0].sum() == 3 and clipped[0, 0, 1:].sum() == 0


def test_fusion_losses_weights_and_total():
    vis = torch.rand(2, 1, 8, 8)
    ir = torch.rand(2, 1, 8, 8)
    fused = torch.rand(2, 1, 8, 8, requires_grad=True)
    aux = torch.tensor(0.3)
    terms = fusion_losses(fused, vis, ir, [torch.tensor([[1.0, 1.0, 4.0, 4.0]]), None], aux, {"a": torch.tensor(0.5)})
    assert abs(terms["grad"].item() - 10 * gradient_loss(fused, vis, ir).item()) < 1e-5
    signed = fusion_losses(fused, vis, ir, signed_grad=True)["grad"]
    assert abs(signed.item() - 10 * signed_gradient_loss(fused, vis, ir).item()) < 1e-5
    expected_total = terms["grad"] + terms["pixel"] + 0.3 + 0.5
    assert abs(terms["total"].item() - expected_total.item()) < 1e-5
    terms["total"].backward()
    assert fused.grad.abs().sum() > 0


def test_pixel_loss_background_max_moves_the_target_from_mean_to_max():
    vis, ir = t([[0.2, 0.8]]), t([[0.6, 0.0]])  # mean 0.4, 0.4; max 0.6, 0.8
    fused = t([[0.5, 0.6]])
    assert abs(pixel_loss(fused, vis, ir, background_max=0.0).item() - (0.1 + 0.2) / 2) < 1e-6
    assert abs(pixel_loss(fused, vis, ir, background_max=1.0).item() - (0.1 + 0.2) / 2) < 1e-6
    # halfway: targets 0.5 and 0.6 -> zero loss
    assert pixel_loss(fused, vis, ir, background_max=0.5).item() < 1e-7
    # inside the mask the target stays the max whatever background_max is
    mask = t([[1.0, 1.0]])
    assert abs(pixel_loss(fused, vis, ir, mask, background_max=0.5).item() - (0.1 + 0.2) / 2) < 1e-6


def test_thermal_saliency_marks_warm_objects_not_warm_backgrounds():
    ir = torch.full((1, 1, 120, 160), 0.35)
    ir[..., :, 80:] = 0.7  # a warm half-frame (sky, road in the sun): not an object
    ir[..., 40:70, 20:32] = 0.8  # a warm person on the cool side
    ir[..., 50:60, 130:136] = 0.95  # a hot engine on the warm side
    m = thermal_saliency(ir)[0, 0]
    assert m[45:65, 22:30].min() == 1 and m[52:58, 131:135].min() == 1
    assert m[5:30, 5:70].max() == 0 and m[5:30, 95:155].max() == 0
    assert m[100:, 5:70].max() == 0 and m[100:, 95:155].max() == 0
    # known limit: the warm side of a warm/cool boundary is marked within half a window of it
    assert m[100:, 80:95].max() == 1
    cold = torch.full((1, 1, 64, 64), 0.1)
    cold[..., 20:30, 20:30] = 0.25  # above its surround but not warm in absolute terms
    assert thermal_saliency(cold).max() == 0


def test_target_mask_is_the_union_of_boxes_and_saliency():
    ir = torch.zeros(1, 1, 64, 64)
    ir[..., 40:50, 40:50] = 0.9
    boxes = [torch.tensor([[2.0, 2.0, 10.0, 12.0]])]
    m = target_mask(ir.shape, "cpu", boxes, ir)[0, 0]
    assert m[2:12, 2:10].min() == 1 and m[42:48, 42:48].min() == 1 and m[20:30, 20:30].max() == 0
    assert torch.equal(target_mask(ir.shape, "cpu", boxes, None), box_mask(boxes, ir.shape))
    assert target_mask(ir.shape, "cpu", None, None) is None


def test_attention_loss_prefers_the_target():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:32, 16:32] = 1
    good = torch.full((1, 1, 16, 16), 0.02)
    good[..., 4:8, 4:8] = 0.98
    uniform = torch.full((1, 1, 16, 16), 0.5)
    inverted = 1 - good
    losses = [attention_loss((a, a * 0.5), mask).item() for a in (good, uniform, inverted)]
    assert losses[0] < losses[1] < losses[2]
    # the max of the two maps is what is judged: the other map being low changes nothing
    assert abs(attention_loss((good, torch.zeros_like(good)), mask).item() - losses[0]) < 1e-6


def test_ssim_of_identical_and_unrelated_images():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 48, 48, generator=g)
    assert abs(ssim(x, x).item() - 1) < 1e-5
    assert ssim(x, torch.rand(1, 1, 48, 48, generator=g)).item() < 0.1


def test_fusion_losses_optional_terms():
    g = torch.Generator().manual_seed(0)
    vis, ir, fused = (torch.rand(2, 1, 32, 32, generator=g) for _ in range(3))
    maps = (torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g))
    mask = (torch.rand(2, 1, 32, 32, generator=g) > 0.8).float()
    terms = fusion_losses(fused, vis, ir, mask=mask, ssim_weight=2.0, attention_maps=maps, attention_weight=0.5,
                          background_max=0.5)
    assert abs(terms["ssim"].item() - 2.0 * (1 - (ssim(fused, vis) + ssim(fused, ir)).item() / 2)) < 1e-5
    assert abs(terms["attention"].item() - 0.5 * attention_loss(maps, mask).item()) < 1e-6
    assert abs(terms["pixel"].item() - pixel_loss(fused, vis, ir, mask, 0.5).item()) < 1e-6
    assert abs(terms["total"].item() - sum(v.item() for k, v in terms.items() if k != "total")) < 1e-5
    assert "ssim" not in fusion_losses(fused, vis, ir) and "attention" not in fusion_losses(fused, vis, ir)


def test_pyramid_detail_loss_asks_for_the_stronger_sources_detail():
    """Zero for the source itself when the other is flat; a blurred copy loses detail and pays; where
    each source has the stronger texture in one half, the half-and-half image beats the average and
    either source alone; a level is skipped below 8 px."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    tex = rng.random((64, 64)).astype(np.float32)
    vis = torch.from_numpy(tex)[None, None]
    flat = torch.full_like(vis, 0.5)
    assert pyramid_detail_loss(vis, vis, flat).item() < 1e-6
    blurred = torch.from_numpy(cv2.GaussianBlur(tex, (5, 5), 1.5))[None, None]
    assert pyramid_detail_loss(blurred, vis, flat).item() > 0.05
    ir_tex = torch.from_numpy(rng.random((64, 64)).astype(np.float32))[None, None]
    left = torch.zeros_like(vis)
    left[..., :32] = 1
    vis2 = vis * left + 0.5 * (1 - left)  # VIS texture on the left, IR texture on the right
    ir2 = ir_tex * (1 - left) + 0.5 * left
    halves = vis2 * left + ir2 * (1 - left)
    loss = {name: pyramid_detail_loss(f, vis2, ir2).item()
            for name, f in (("halves", halves), ("average", (vis2 + ir2) / 2), ("vis", vis2), ("ir", ir2))}
    assert loss["halves"] < 0.5 * min(loss["average"], loss["vis"], loss["ir"]), loss
    tiny = torch.rand(1, 1, 6, 6)
    assert pyramid_detail_loss(tiny, tiny, tiny).item() == 0.0
    terms = fusion_losses(blurred, vis, flat, detail_weight=3.0)
    assert abs(terms["detail"].item() - 3.0 * pyramid_detail_loss(blurred, vis, flat).item()) < 1e-6


def test_pixel_loss_on_the_base_layer_ignores_detail_but_not_brightness():
    """levels=3: fine texture on top of the target costs (almost) nothing, a brightness offset costs
    its size, as at full resolution."""
    import numpy as np

    rng = np.random.default_rng(1)
    vis = torch.full((1, 1, 64, 64), 0.4)
    ir = torch.full((1, 1, 64, 64), 0.6)
    stripes = torch.zeros(1, 1, 64, 64)
    stripes[..., ::2] = 0.1  # 2-px period: gone after one pyramid reduction
    stripes -= 0.05
    target = (vis + ir) / 2
    assert pixel_loss(target + stripes, vis, ir).item() > 0.045
    assert pixel_loss(target + stripes, vis, ir, levels=3).item() < 0.005
    assert abs(pixel_loss(target + 0.1, vis, ir, levels=3).item() - 0.1) < 1e-5
    mask = torch.from_numpy(rng.random((1, 1, 64, 64)) > 0.5).float()
    assert abs(pixel_loss(torch.maximum(vis, ir) * mask + target * (1 - mask), vis, ir, mask, levels=3).item()) < 1e-6


def test_box_mask_int_rounding_is_upstreams():
    """``int`` rasterises as upstream's DetcropPixelLoss (rows int(y1)..int(y2)-1): a fractional far
    edge loses the pixel it only partly covers; ``outward`` (the default, edge's) keeps it."""
    boxes = [torch.tensor([[0.5, 1.0, 2.7, 2.2]])]
    outward = box_mask(boxes, (1, 1, 4, 4))
    upstream = box_mask(boxes, (1, 1, 4, 4), rounding="int")
    expect = torch.zeros(4, 4)
    expect[1:2, 0:2] = 1  # rows int(1.0)..int(2.2)-1 = 1, columns int(0.5)..int(2.7)-1 = 0..1
    assert torch.equal(upstream[0, 0], expect)
    assert outward[0, 0, 1:3, 0:3].all() and outward.sum() == 6  # rows 1..2, columns 0..2
    # negative coordinates and coordinates past the image are clipped as upstream clips them
    clipped = box_mask([torch.tensor([[-3.7, -0.5, 9.9, 1.5]])], (1, 1, 3, 3), rounding="int")
    assert clipped[0, 0, 0].sum() == 3 and clipped[0, 0, 1:].sum() == 0
    # the rounding reaches the loss and the training target
    vis, ir, fused = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    pix = {r: float(fusion_losses(fused, vis, ir, boxes, box_rounding=r)["pixel"]) for r in ("outward", "int")}
    assert pix["outward"] > pix["int"]  # inside, the target is max = 1: more inside pixels, more loss
    assert torch.equal(target_mask((1, 1, 4, 4), "cpu", boxes, rounding="int"), upstream)
    try:
        box_mask(boxes, (1, 1, 4, 4), rounding="round")
    except ValueError as e:
        assert "outward, int" in str(e)
    else:
        raise AssertionError("an unknown rounding must be refused")


def test_expert_choice_loss_is_the_margin_the_unchosen_experts_image_falls_short_of():
    fused = torch.full((2, 1, 8, 8), 0.5, requires_grad=True)
    same = fused.detach().clone().requires_grad_(True)
    far = torch.full((2, 1, 8, 8), 0.5 + 10 / 255)
    near = fused.detach() + torch.tensor([2.0, -8.0]).reshape(2, 1, 1, 1) / 255  # one sample short, one past
    margin = 6 / 255
    assert abs(expert_choice_loss(fused, {"a": same}, margin).item() - margin) < 1e-7
    assert expert_choice_loss(fused, {"a": far}, margin).item() == 0.0
    # per sample and per layer: (4/255 short + 0) / 2 samples, then the mean with a layer at the full margin
    both = expert_choice_loss(fused, {"a": near, "b": same}, margin).item()
    assert abs(both - (2 / 255 + margin) / 2) < 1e-6
    # only the unchosen experts' image is pushed: the chosen one is the reference
    close = (fused.detach() + 1 / 255).requires_grad_(True)
    expert_choice_loss(fused, {"a": close}, margin).backward()
    assert fused.grad is None and close.grad is not None and bool((close.grad < 0).all())  # pushed further up
    terms = fusion_losses(fused.detach(), far, far, forced={"a": same.detach()}, expert_weight=3.0,
                          expert_margin=margin)
    assert abs(terms["experts"].item() - 3.0 * margin) < 1e-6
    assert "experts" not in fusion_losses(fused.detach(), far, far, forced={"a": same.detach()})
