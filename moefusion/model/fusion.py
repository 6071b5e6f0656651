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
from .gating import unchosen
from . import stream as streaming
from .moe import GatedExperts
from .presets import ModelConfig
from .pyramid import pyramid_fuse, pyramid_parts, soft_range_limit
from .stream import StreamState

# Input sizes are padded up to a multiple of the deepest FPN level's stride and cropped back
# (times the config's network_stride: ModelConfig.pad_stride).
STRIDE = 32


def scale_boxes(targets, factor: float):
    """Detection targets with their boxes scaled (None stays None)."""
    if targets is None:
        return None
    return [{**t, "boxes": t["boxes"] * factor} for t in targets]


class FusionOutput(NamedTuple):
    fused: torch.Tensor  # [B, 1, H, W] fused luminance (not clamped; clamp for display)
    attention: torch.Tensor  # [B, 1, H, W] max(att_vis, att_ir), detached
    aux_loss: torch.Tensor  # balancing losses of the three MoE layers, weighted
    det_losses: dict  # detection losses (training with boxes), else {}
    detections: dict | None  # {'vis': [...], 'ir': [...]} torchvision dicts, when asked for
    routes: dict  # layer name -> expert indices [B, k]
    gatings: dict  # layer name -> Gating (indices, weights, gates, load) of the MoE layers
    attention_maps: tuple | None  # training: level-0 (a_vis, a_ir) at stride 4, not detached
    state: StreamState | None = None  # stream mode: the state for the next frame
    forced: dict | None = None  # forced=True: layer name -> fused image with its unchosen experts


class DenseEncoder(nn.Module):
    """Stem conv then three densely connected 3x3 convs (DenseFuse-style); a ReLU after each when
    ``relu``, after the stem only when ``stem_relu`` (upstream's: its dense convs are linear)."""

    def __init__(self, stem: int, growth: int, relu: bool = True, stem_relu: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(1, stem, 3, padding=1)
        self.dense = nn.ModuleList(nn.Conv2d(stem + i * growth, growth, 3, padding=1) for i in range(3))
        self.act = nn.ReLU() if relu else nn.Identity()
        self.stem_act = nn.ReLU() if relu or stem_relu else nn.Identity()

    def forward(self, x):
        """-> (the features before the last block, the last block's output); the encoder's whole
        output is their concatenation. Kept apart so that a decoder that takes the last block only
        through MoLE (``edge``) never concatenates and slices it off again (a full-resolution copy)."""
        x = self.stem_act(self.stem(x))
        for i, conv in enumerate(self.dense):
            y = self.act(conv(x))
            if i < len(self.dense) - 1:
                x = torch.cat([x, y], dim=1)
        return x, y


class MoEFusion(nn.Module):
    def __init__(self, cfg: ModelConfig, dispatch: str = "sparse", preset: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.preset = preset
        g = cfg.growth
        self.attention = DetectionAttention(cfg)
        self.enc_vis = DenseEncoder(cfg.stem, g, cfg.encoder_relu, cfg.stem_relu)
        self.enc_ir = DenseEncoder(cfg.stem, g, cfg.encoder_relu, cfg.stem_relu)

        def mole():
            return GatedExperts(
                cfg.mole_experts, cfg.k, [g, cfg.mole_hidden, g], 2 * g, cfg.mole_grid,
                cfg.mole_loss_coef, cfg.noisy_gating, dispatch, cfg.gate_pool,
            )

        self.mole_fg = mole()
        self.mole_bg = mole()
        self.moge = GatedExperts(
            cfg.moge_experts, cfg.k, [cfg.decoder_in, *cfg.moge_hidden, cfg.decoder_out], cfg.decoder_in, cfg.moge_grid,
            cfg.moge_loss_coef, cfg.noisy_gating, dispatch, cfg.gate_pool,
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

    # -- video ----------------------------------------------------------------------------
    def stream(self) -> "FusionStream":
        """A video stream: ``stream.fuse(ir, vis)`` per frame, in order, with temporal state carried
        from frame to frame (model/stream.py); ``stream.reset()`` at a new stream."""
        return FusionStream(self)

    def initial_state(self, batch: int, h: int, w: int) -> StreamState:
        return streaming.initial_state(self.cfg, batch, h, w, device=self.device)

    # -- forward --------------------------------------------------------------------------
    def forward(self, ir, vis, targets_ir=None, targets_vis=None, detections: bool = False,
                attention_override: torch.Tensor | None = None, state: StreamState | None = None,
                forced: bool = False) -> FusionOutput:
        """ir, vis: [B, 1, H, W] in [0, 1] (IR and visible luminance), any H, W.

        targets_*: lists of {'boxes': [N, 4] xyxy px, 'labels': [N] in 1..num_classes} for the
        detection losses in training, per modality (a detector trains on its own modality's boxes;
        either may be None); detections=True also returns both detectors' boxes.
        attention_override: a [B, 1, H, W] map used instead of the attention (ablations: how much
        does the attention steer the fusion?).
        state: stream mode (eval): the previous frame's state (``initial_state`` for the first);
        the output's ``state`` is the next frame's.
        forced: also return, per MoE layer, the fused image made with the experts its gate did not
        choose (``unchosen_fusions``; training's expert-choice loss).
        """
        h, w = ir.shape[-2:]
        c = self.cfg
        ph, pw = (-h) % c.pad_stride, (-w) % c.pad_stride
        if ph or pw:
            ir = F.pad(ir, (0, pw, 0, ph), mode="replicate")
            vis = F.pad(vis, (0, pw, 0, ph), mode="replicate")
        stream = None
        if state is not None:
            sources = streaming.half_res(ir, vis)
            beta, keep = streaming.follow_factor(sources, state.sources, state.scalars)
            stream = (state, sources, beta, keep)
        ns = c.network_stride
        ir_n, vis_n = self.network_inputs(ir, vis)
        if ns > 1:  # the detectors see the network's frames: boxes in their pixels
            targets_vis, targets_ir = scale_boxes(targets_vis, 1 / ns), scale_boxes(targets_ir, 1 / ns)

        if detections:
            detect = ("vis", "ir")
        elif self.training:
            detect = tuple(m for m, t in (("vis", targets_vis), ("ir", targets_ir)) if t is not None)
        else:
            detect = ()
        det_losses, dets, maps = {}, None, None
        if detect:
            att0, dets, det_losses, maps = self.attention(vis_n, ir_n, targets_vis, targets_ir, detect=detect)
        else:
            maps = self.attention.level0_maps(vis_n, ir_n)
            att0 = torch.maximum(*maps)
        if attention_override is not None:
            att_full = F.pad(attention_override.to(att0.dtype), (0, pw, 0, ph), mode="replicate")
            att = F.avg_pool2d(att_full, ns) if ns > 1 else att_full
        else:
            att = F.interpolate(att0, size=vis_n.shape[-2:], mode="bilinear", align_corners=True).detach()
            att_full = att if ns == 1 else F.interpolate(att0, size=vis.shape[-2:], mode="bilinear",
                                                         align_corners=True).detach()

        early_vis, last_vis = self.enc_vis(vis_n)
        early_ir, last_ir = self.enc_ir(ir_n)
        fg = (last_vis * att, last_ir * att)
        bg = (last_vis * (1 - att), last_ir * (1 - att))
        route = (lambda name: None) if stream is None else (lambda name: (getattr(state, f"route_{name}"), stream[3]))
        out_fg = self.mole_fg(torch.cat(fg, dim=1), fg, route("mole_fg"))
        out_bg = self.mole_bg(torch.cat(bg, dim=1), bg, route("mole_bg"))
        enc = self.decoder_input((early_vis, last_vis), (early_ir, last_ir), out_fg.y, out_bg.y, att)
        out_dec = self.moge(enc, enc, route("moge"))
        att_net, att = att, att_full

        new_state, others = None, None
        if stream is None:
            fused = self.head(ir, vis, out_dec.y, att)[..., :h, :w]
            if forced:
                others = self.unchosen_fusions(ir, vis, (att_net, att), (early_vis, last_vis),
                                               (early_ir, last_ir), (fg, bg, enc), (out_fg, out_bg, out_dec), h, w)
        else:
            fused, new_state = self.stream_head(ir, vis, att, (out_fg, out_bg, out_dec), stream, h, w)
        aux = out_fg.aux_loss + out_bg.aux_loss + out_dec.aux_loss
        gatings = {"mole_fg": out_fg.gating, "mole_bg": out_bg.gating, "moge": out_dec.gating}
        routes = {name: g.indices for name, g in gatings.items()}
        if dets is not None and not self.training:  # back to 0-based labels and the frame's pixels
            dets = {m: [{**d, "labels": d["labels"] - 1, "boxes": d["boxes"] * ns} for d in ds] for m, ds in dets.items()}
        if not detections:
            dets = None
        return FusionOutput(fused, att[..., :h, :w], aux, det_losses, dets, routes, gatings,
                            maps if self.training else None, new_state, others)

    def unchosen_fusions(self, ir, vis, att, enc_vis, enc_ir, inputs, outs, h: int, w: int) -> dict:
        """Per MoE layer, the fused image when that layer runs the experts its gate did not choose,
        with the gate's weights (as eval.ablation.forced_experts does); the other layers keep their
        outputs, or MoGE its choice of experts (the ablation lets it route again). ``att``: (the
        network's, the frame's) attention; ``inputs``: (MoLE fg's, MoLE bg's, MoGE's) inputs."""
        fg, bg, enc = inputs
        out_fg, out_bg, out_dec = outs
        att_n, att = att

        def other(layer, x, out):
            return layer.run(x, unchosen(out.gating.indices, layer.num_experts), out.gating.weights)

        def decode(y_fg, y_bg):
            e = self.decoder_input(enc_vis, enc_ir, y_fg, y_bg, att_n)
            return self.moge.run(e, out_dec.gating.indices, out_dec.gating.weights)

        maps = {"mole_fg": decode(other(self.mole_fg, fg, out_fg), out_bg.y),
                "mole_bg": decode(out_fg.y, other(self.mole_bg, bg, out_bg)),
                "moge": other(self.moge, enc, out_dec)}
        return {name: self.head(ir, vis, y, att)[..., :h, :w] for name, y in maps.items()}

    def stream_head(self, ir, vis, att, outs, stream, h: int, w: int):
        """Stream mode's head: blend maps and lifted detail smoothed where nothing moved, brightness
        steadied (model/stream.py). -> (fused [B, 1, h, w], next frame's state)."""
        state, sources, beta, keep = stream
        c = self.cfg
        y = streaming.smooth(outs[2].y, state.maps, beta)
        lifted = state.detail
        if c.output_head == "pyramid":
            maps = y
            if c.map_stride > 1:
                maps = F.interpolate(y, scale_factor=float(c.map_stride), mode="bilinear", align_corners=False)
            base, detail = pyramid_parts(ir, vis, maps, c.pyramid_levels, c.pyramid_sharpness, att,
                                         c.pyramid_attention_gain)
            lifted = streaming.smooth(detail, state.detail, beta)
            fused = soft_range_limit(base + detail + (c.pyramid_detail_gain - 1.0) * lifted, ir, vis, c.range_margin)
        else:
            fused = y
        fused = fused[..., :h, :w]
        offset, scalars = streaming.brightness(fused, ir[..., :h, :w], vis[..., :h, :w], state.scalars, keep)
        new = StreamState(scalars, sources, y, lifted.to(state.detail.dtype), *(o.route_state for o in outs))
        return fused + offset.to(fused.dtype), new

    def head(self, ir, vis, y, att) -> torch.Tensor:
        """The fused image from the (padded) sources, the decoder's output and the attention."""
        c = self.cfg
        if c.output_head != "pyramid":
            return y
        if c.map_stride > 1:
            y = F.interpolate(y, scale_factor=float(c.map_stride), mode="bilinear", align_corners=False)
        fused = pyramid_fuse(ir, vis, y, c.pyramid_levels, c.pyramid_sharpness, c.pyramid_detail_gain,
                             att, c.pyramid_attention_gain)
        return soft_range_limit(fused, ir, vis, c.range_margin)

    def network_inputs(self, ir, vis):
        """The (padded) sources as the network sees them: average-pooled by ``network_stride``."""
        s = self.cfg.network_stride
        return (ir, vis) if s == 1 else (F.avg_pool2d(ir, s), F.avg_pool2d(vis, s))

    def decoder_input(self, enc_vis, enc_ir, y_fg, y_bg, att) -> torch.Tensor:
        """What MoGE sees: the encoders' features (all, all but the last block's, or none without
        ``decoder_sees_encoders``: ``enc_*`` are the encoders' (early, last) outputs), MoLE's outputs
        and, with ``decoder_attention``, the attention map. One concatenation, after average pooling
        by ``decoder_stride``."""
        keep = slice(None) if self.cfg.decoder_skips_last_block else slice(0, 1)
        parts = [*enc_vis[keep], *enc_ir[keep]] if self.cfg.decoder_sees_encoders else []
        parts += [y_fg, y_bg]
        parts += [att.to(y_fg.dtype)] if self.cfg.decoder_attention else []
        s = self.cfg.decoder_stride
        if s > 1:  # pooled part by part: the full-resolution concatenation is never made
            parts = [F.avg_pool2d(x, s) for x in parts]
        return torch.cat(parts, dim=1)

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
    def forward_stream_unit(self, ir_unit: torch.Tensor, vis_y: torch.Tensor, state: StreamState | None):
        """forward_unit in stream mode: -> (fused in [0, 1], attention, next state). A state of another
        batch or frame size (or None) starts a new stream."""
        b, _, h, w = ir_unit.shape
        if state is None or not streaming.state_matches(state, self.cfg, b, h, w):
            state = self.initial_state(b, h, w)
        out = self(ir_unit, vis_y, state=state)
        return out.fused.clamp(0, 1), out.attention, out.state

    @torch.inference_mode()
    def fuse(self, ir: np.ndarray, vis: np.ndarray, agc_percentiles=DEFAULT_AGC_PERCENTILES) -> np.ndarray:
        """Fuse one registered pair of numpy images; the result is shaped and typed like ``vis``.

        IR: uint8/uint16/float, 1 or 3 channels. VIS: gray or BGR, uint8/uint16/float. A colour VIS
        is fused in luminance and keeps its chroma. See moefusion.data.preprocess.
        """
        return self.fuse_images(ir, vis, agc_percentiles, lambda i, v: self.forward_unit(i, v)[0])

    @torch.inference_mode()
    def fuse_images(self, ir: np.ndarray, vis: np.ndarray, agc_percentiles, run) -> np.ndarray:
        """The numpy side of ``fuse``: prepare the pair, ``run(ir [1,1,H,W], vis_y)`` -> fused tensor on
        this model's device and dtype, and merge the result back into VIS's colour and type."""
        if self.training:
            self.eval()
        ir_u, parts = prepare_pair(ir, vis, agc_percentiles)
        t = lambda a: torch.from_numpy(a)[None, None].to(self.device, self.dtype)  # noqa: E731
        fused = run(t(ir_u), t(parts.y))
        return merge_visible(fused[0, 0].float().cpu().numpy(), parts)


class FusionStream:
    """``model.stream()``: ``fuse(ir, vis)`` per frame of one video, in order, with the same
    arguments and output as ``MoEFusion.fuse``; the temporal state (model/stream.py) is carried from
    frame to frame and starts afresh on ``reset()`` or when the frame size changes."""

    def __init__(self, model: MoEFusion):
        self.model = model
        self.state: StreamState | None = None
        self.frames = 0

    def reset(self) -> None:
        self.state, self.frames = None, 0

    @torch.inference_mode()
    def fuse(self, ir: np.ndarray, vis: np.ndarray, agc_percentiles=DEFAULT_AGC_PERCENTILES) -> np.ndarray:
        def step(ir_t, vis_t):
            fused, _, self.state = self.model.forward_stream_unit(ir_t, vis_t, self.state)
            return fused

        out = self.model.fuse_images(ir, vis, agc_percentiles, step)
        self.frames += 1
        return out
