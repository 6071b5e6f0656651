"""MoE-Fusion assembled from its parts: attention, dense encoders, MoLE (fg/bg), MoGE decoder."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.preprocess import DEFAULT_AGC_PERCENTILES, merge_visible, prepare_pair
from .attention import DetectionAttention
from .experts import DISPATCH_MODES
from .moe import GatedExperts
from .presets import ModelConfig

# Input sizes are padded up to a multiple of the deepest FPN level's stride and cropped back.
STRIDE = 32


class FusionOutput(NamedTuple):
    fused: torch.Tensor  # [B, 1, H, W] fused luminance (not clamped; clamp for display)
    attention: torch.Tensor  # [B, 1, H, W] max(att_vis, att_ir), detached
    aux_loss: torch.Tensor  # balancing losses of the three MoE layers, weighted
    det_losses: dict  # detection losses (training with boxes), else {}
    detections: dict | None  # {'vis': [...], 'ir': [...]} torchvision dicts, when asked for
    routes: dict  # layer name -> expert indices [B, k]


class DenseEncoder(nn.Module):
    """Stem conv then three densely connected 3x3 convs (DenseFuse-style), ReLU after each."""

    def __init__(self, stem: int, growth: int):
        super().__init__()
        self.stem = nn.Conv2d(1, stem, 3, padding=1)
        self.dense = nn.ModuleList(nn.Conv2d(stem + i * growth, growth, 3, padding=1) for i in range(3))

    def forward(self, x):
        x = F.relu(self.stem(x))
        for i, conv in enumerate(self.dense):
            y = F.relu(conv(x))
            if i < len(self.dense) - 1:
                x = torch.cat([x, y], dim=1)
        return torch.cat([x, y], dim=1), y  # all features, and the last block's (split by attention)


class MoEFusion(nn.Module):
    def __init__(self, cfg: ModelConfig, dispatch: str = "sparse", preset: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.preset = preset
        g = cfg.growth
        self.attention = DetectionAttention(cfg)
        self.enc_vis = DenseEncoder(cfg.stem, g)
        self.enc_ir = DenseEncoder(cfg.stem, g)

        def mole():
            return GatedExperts(
                cfg.mole_experts, cfg.k, [g, cfg.mole_hidden, g], 2 * g, cfg.mole_grid,
                cfg.mole_loss_coef, cfg.noisy_gating, dispatch,
            )

        self.mole_fg = mole()
        self.mole_bg = mole()
        self.moge = GatedExperts(
            cfg.moge_experts, cfg.k, [cfg.decoder_in, *cfg.moge_hidden, 1], cfg.decoder_in, cfg.moge_grid,
            cfg.moge_loss_coef, cfg.noisy_gating, dispatch,
        )

    # -- dispatch -------------------------------------------------------------------------
    @property
    def dispatch(self) -> str:
        return self.moge.dispatch

    def set_dispatch(self, mode: str) -> "MoEFusion":
        if mode not in DISPATCH_MODES:
            raise ValueError(f"unknown dispatch {mode!r}; choose from {', '.join(DISPATCH_MODES)}")
        for layer in (self.mole_fg, self.mole_bg, self.moge):
            layer.dispatch = mode
        return self

    # -- forward --------------------------------------------------------------------------
    def forward(self, ir, vis, targets_ir=None, targets_vis=None, detections: bool = False) -> FusionOutput:
        """ir, vis: [B, 1, H, W] in [0, 1] (IR and visible luminance), any H, W.

        targets_*: lists of {'boxes': [N, 4] xyxy px, 'labels': [N] in 1..num_classes} for the
        detection losses in training; detections=True also returns the detectors' boxes.
        """
        h, w = ir.shape[-2:]
        ph, pw = (-h) % STRIDE, (-w) % STRIDE
        if ph or pw:
            ir = F.pad(ir, (0, pw, 0, ph), mode="replicate")
            vis = F.pad(vis, (0, pw, 0, ph), mode="replicate")

        with_heads = detections or (self.training and targets_ir is not None)
        det_losses, dets = {}, None
        if with_heads:
            att0, dets, det_losses = self.attention(vis, ir, targets_vis, targets_ir)
        else:
            att0 = self.attention.level0(vis, ir)
        att = F.interpolate(att0, size=vis.shape[-2:], mode="bilinear", align_corners=True).detach()

        feat_vis, last_vis = self.enc_vis(vis)
        feat_ir, last_ir = self.enc_ir(ir)
        fg = (last_vis * att, last_ir * att)
        bg = (last_vis * (1 - att), last_ir * (1 - att))
        out_fg = self.mole_fg(torch.cat(fg, dim=1), fg)
        out_bg = self.mole_bg(torch.cat(bg, dim=1), bg)
        enc = torch.cat([feat_vis, feat_ir, out_fg.y, out_bg.y], dim=1)
        out_dec = self.moge(enc, enc)

        fused = out_dec.y[..., :h, :w]
        aux = out_fg.aux_loss + out_bg.aux_loss + out_dec.aux_loss
        routes = {"mole_fg": out_fg.gating.indices, "mole_bg": out_bg.gating.indices, "moge": out_dec.gating.indices}
        if dets is not None and not self.training:
            dets = {m: [{**d, "labels": d["labels"] - 1} for d in ds] for m, ds in dets.items()}  # back to 0-based
        return FusionOutput(fused, att[..., :h, :w], aux, det_losses, dets, routes)

    # -- inference helpers ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @torch.inference_mode()
    def forward_unit(self, ir_unit: torch.Tensor, vis_y: torch.Tensor):
        """Eval-mode inference on [B, 1, H, W] tensors in [0, 1] -> (fused in [0, 1], attention)."""
        out = self(ir_unit, vis_y)
        return out.fused.clamp(0, 1), out.attention

    @torch.inference_mode()
    def fuse(self, ir: np.ndarray, vis: np.ndarray, agc_percentiles=DEFAULT_AGC_PERCENTILES) -> np.ndarray:
        """Fuse one registered pair of numpy images; the result is shaped and typed like ``vis``.

        IR: uint8/uint16/float, 1 or 3 channels. VIS: gray or BGR, uint8/uint16/float. A colour VIS
        is fused in luminance and keeps its chroma. See moefusion.data.preprocess.
        """
        if self.training:
            self.eval()
        ir_u, parts = prepare_pair(ir, vis, agc_percentiles)
        t = lambda a: torch.from_numpy(a)[None, None].to(self.device, self.dtype)  # noqa: E731
        fused, _ = self.forward_unit(t(ir_u), t(parts.y))
        return merge_visible(fused[0, 0].float().cpu().numpy(), parts)
