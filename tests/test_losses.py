"""Losses against small hand-computed cases."""
from __future__ import annotations

import torch

from moefusion.model.losses import (
    box_mask,
    fusion_losses,
    gradient_loss,
    pixel_loss,
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
