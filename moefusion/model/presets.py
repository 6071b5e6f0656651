"""Named model presets (a registry, after timm / segment-anything).

``paper``: MoE-Fusion as published (ICCV 2023): 16-channel dense encoders, MoLE experts
16->8->16, MoGE experts 160->64->32->16->1, 4 experts with k=2, ResNet-50 FPN detectors, gate
grids 120x160 (MoLE) and 60x80 (MoGE), i.e. the paper's x0.25 / x0.125 descriptors at 640x480.

``edge``: the same structure budgeted for Jetson real time (<= 15 GFLOP per 640x480 frame for
the whole inference path including attention, <= 3 M parameters): narrower encoders, experts
and decoder, MobileNetV3-Small FPN detectors with 32 FPN channels, and gates that see per-channel
moments (mean, standard deviation) instead of a resized grid, so a gate learnt on training crops
routes whole frames of any size and aspect the same way (a grid descriptor is position-specific:
a 192x192 crop stretched to it looks nothing like a whole 640x480 frame).
Its decoder outputs the blend weights of the sources' Laplacian pyramids instead of the fused pixel
(``output_head: pyramid``, moefusion/model/pyramid.py) and runs at half resolution
(``decoder_stride: 2``: the blend weights vary slowly; its first conv was the largest layer).

Detector backbones: ``backbone_weights`` names a torchvision weight enum member (``"DEFAULT"``,
``"IMAGENET1K_V1"``...) that ``moefusion-train`` loads when it starts a run (torchvision downloads
it to its cache), or None to learn from scratch; ``detector_norm`` is ``"frozen"``
(FrozenBatchNorm, as upstream's mmdet config with pretrained weights), ``"batch"`` or ``"group"``
(GroupNorm: works at the small batches of CPU or Jetson training, for backbones learnt from scratch).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .pyramid import head_channels


@dataclass
class ModelConfig:
    # Encoders (one per modality): a stem conv to `stem` channels, then 3 dense convs of `growth`.
    stem: int = 16
    growth: int = 16
    encoder_relu: bool = False  # ReLU after every encoder conv (upstream: after the stem conv only)
    stem_relu: bool = False  # ReLU after the stem conv (upstream's; encoder_relu puts one there too)
    # The decoder sees all encoder features (upstream) or all but the last block's, which then reach
    # it only through MoLE (fg/bg): the local experts cannot be bypassed.
    decoder_skips_last_block: bool = True
    # False: the decoder sees no encoder features at all, only MoLE's outputs (and the attention), so
    # every feature reaches the blend maps through an expert the gates chose: the choice cannot be
    # routed around (the edge recipe's).
    decoder_sees_encoders: bool = True
    # The decoder also sees the attention map as one more input channel: where the targets are
    # decides what the fused pixel should be (the losses differ inside and outside them).
    decoder_attention: bool = False
    # MoLE: experts growth -> mole_hidden -> growth, half per modality.
    mole_experts: int = 4
    mole_hidden: int = 8
    mole_grid: tuple[int, int] = (120, 160)
    mole_loss_coef: float = 0.01
    # MoGE (decoder): experts decoder_in -> moge_hidden... -> 1.
    moge_experts: int = 4
    moge_hidden: tuple[int, ...] = (64, 32, 16)
    moge_grid: tuple[int, int] = (60, 80)
    moge_loss_coef: float = 0.02
    k: int = 2
    # MoGE runs on its inputs average-pooled by this (1 = full resolution, the paper's); its maps
    # are resized back (bilinear x decoder_stride) before the output head. Pyramid head only: the
    # head's per-pixel energy prior keeps the detail choice sharp, the decoder's offsets to it and
    # the base weight vary slowly, and the decoder's first conv is the largest layer of the model.
    decoder_stride: int = 1
    # The whole network (attention, encoders, MoLE, MoGE) runs on the sources average-pooled by this;
    # only the output head works at full resolution: the blend maps it gets are upsampled
    # (x network_stride x decoder_stride) and blend the full-resolution pyramids, so no source detail
    # is lost while the network costs 1/network_stride^2. Pyramid head only.
    network_stride: int = 1
    # Soft limit of the fused pixel to the sources' local range: outside [min, max] of both sources
    # over a 5x5 window it bends into that range +- this margin (tanh), so neither the detail gain nor
    # the base pushes a pixel beyond what the cameras saw. 0: off (the fused pixel is only clamped).
    range_margin: float = 0.0
    # What the decoder outputs: the fused pixel (``pixel``, the paper's) or the blend weights of the
    # sources' Laplacian pyramids (``pyramid``, see moefusion/model/pyramid.py).
    output_head: str = "pixel"
    pyramid_levels: int = 5  # detail levels of the pyramid head (<= 5: inputs are padded to 32)
    pyramid_sharpness: float = 30.0  # weight of the local-energy prior in each detail level's logit
    pyramid_detail_gain: float = 1.0  # the blended detail is multiplied by this
    pyramid_attention_gain: float = 0.0  # the attention times this is added to the base layer's IR logit
    # How many detail levels, the finest first, the decoder offsets besides the base (1 + this many
    # maps); coarser levels are chosen by the fixed local-energy prior alone. Measured on the v2
    # recipe's run 3 (docs/model.md): its offsets of the three coarsest levels lowered VIF on every
    # held-out set, below the Laplacian pyramid's on two. 5 (the most levels a head has): all of them.
    pyramid_learned_levels: int = 5
    noisy_gating: bool = True
    gate_pool: str = "grid"  # grid: features resized to *_grid (the paper's); moments: per-channel mean and std
    # Detection-driven attention.
    detector: str = "resnet50"  # resnet50 | mobilenet_v3_small
    backbone_weights: str | None = "DEFAULT"  # torchvision weight enum member loaded by moefusion-train, or None
    detector_norm: str = "frozen"  # frozen | batch | group
    # What the detectors' backbones see: ``mid_grey`` (x - 0.5) / 0.25, or ``imagenet``: ImageNet's mean
    # and standard deviation (upstream's, averaged over its three equal gray channels).
    detector_input_norm: str = "mid_grey"
    # Initialisation of the modality-fusion conv and the attention heads' convs: None, PyTorch's default;
    # a number, weights normal(0, std) and biases 0 (upstream: 0.01).
    attention_init_std: float | None = None
    fpn_channels: int = 256
    num_classes: int = 3  # object classes, background excluded (MSRS: person, bicycle, car)
    roi_representation: int = 1024
    class_names: tuple[str, ...] = ("person", "bicycle", "car")

    @property
    def encoder_out(self) -> int:
        return self.stem + 3 * self.growth

    @property
    def pad_stride(self) -> int:
        """Inputs are padded to a multiple of this: the deepest FPN level's stride (32) at network
        resolution."""
        return 32 * self.network_stride

    @property
    def map_stride(self) -> int:
        """The decoder's maps are at 1/map_stride of the (padded) frame."""
        return self.decoder_stride * self.network_stride

    @property
    def decoder_in(self) -> int:
        # both encoders' dense features (less the last block's, when MoLE alone carries them; none
        # without decoder_sees_encoders) + MoLE foreground and background outputs (+ the attention)
        skipped = self.encoder_out if self.decoder_skips_last_block else self.encoder_out - self.growth
        return 2 * skipped * int(self.decoder_sees_encoders) + 2 * self.growth + int(self.decoder_attention)

    @property
    def decoder_out(self) -> int:
        if self.output_head != "pyramid":
            return 1
        return head_channels(min(self.pyramid_learned_levels, self.pyramid_levels))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown model option(s): {', '.join(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)


PRESETS: dict[str, ModelConfig] = {
    # upstream: stem ReLU (MoE_fusion_head.py:53-54), ImageNet input normalisation (configs/MoE_Fusion.py:149-150),
    # attention/fusion convs normal(0, 0.01) (detectors/MoEFusion.py:108-112); docs/model.md, "paper preset fidelity"
    "paper": ModelConfig(stem_relu=True, detector_input_norm="imagenet", attention_init_std=0.01),
    "edge": ModelConfig(
        stem=8,
        growth=6,
        mole_hidden=3,
        mole_grid=(30, 40),
        moge_hidden=(8, 8, 4),
        moge_grid=(15, 20),
        moge_loss_coef=0.1,
        mole_loss_coef=0.1,
        encoder_relu=True,
        decoder_skips_last_block=False,
        decoder_attention=True,
        gate_pool="moments",
        detector="mobilenet_v3_small",
        output_head="pyramid",
        pyramid_detail_gain=1.2,
        decoder_stride=2,
        pyramid_attention_gain=4.0,
        fpn_channels=32,
        roi_representation=128,
    ),
}


GATE_POOLS = ("grid", "moments")
OUTPUT_HEADS = ("pixel", "pyramid")
MAX_PYRAMID_LEVELS = 5  # MoEFusion pads inputs to a multiple of 32
DETECTOR_NORMS = ("frozen", "batch", "group")
# (mean, std) of the detectors' one-channel input in [0, 1]. ``imagenet``: upstream normalises a gray
# visible image repeated in three channels (and the IR image) with ImageNet's per-channel values
# (configs/MoE_Fusion.py:149-150: mean 123.675, 116.28, 103.53; std 58.395, 57.12, 57.375 of 255);
# one channel takes their averages.
DETECTOR_INPUT_NORMS = {
    "mid_grey": (0.5, 0.25),
    "imagenet": ((123.675 + 116.28 + 103.53) / 3 / 255, (58.395 + 57.12 + 57.375) / 3 / 255),
}
DECODER_STRIDES = (1, 2, 4)  # divide the padding stride (32) down to the head's coarsest level
NETWORK_STRIDES = (1, 2)


def validate_config(cfg: ModelConfig) -> ModelConfig:
    """ValueError naming the field for a config no model can be built from."""
    if cfg.gate_pool not in GATE_POOLS:
        raise ValueError(f"gate_pool={cfg.gate_pool!r}; choose from {', '.join(GATE_POOLS)}")
    if cfg.output_head not in OUTPUT_HEADS:
        raise ValueError(f"output_head={cfg.output_head!r}; choose from {', '.join(OUTPUT_HEADS)}")
    if not 1 <= cfg.pyramid_levels <= MAX_PYRAMID_LEVELS:
        raise ValueError(f"pyramid_levels={cfg.pyramid_levels} must be between 1 and {MAX_PYRAMID_LEVELS}")
    if not 0 <= cfg.pyramid_learned_levels <= MAX_PYRAMID_LEVELS:
        raise ValueError(f"pyramid_learned_levels={cfg.pyramid_learned_levels} must be between 0 and "
                         f"{MAX_PYRAMID_LEVELS} (every level)")
    if cfg.pyramid_sharpness < 0:
        raise ValueError(f"pyramid_sharpness={cfg.pyramid_sharpness} must be >= 0")
    if not 0 < cfg.pyramid_detail_gain <= 4:
        raise ValueError(f"pyramid_detail_gain={cfg.pyramid_detail_gain} must be in (0, 4]")
    if not 0 <= cfg.pyramid_attention_gain <= 20:
        raise ValueError(f"pyramid_attention_gain={cfg.pyramid_attention_gain} must be in [0, 20]")
    if cfg.decoder_stride not in DECODER_STRIDES:
        raise ValueError(f"decoder_stride={cfg.decoder_stride}; choose from {', '.join(map(str, DECODER_STRIDES))}")
    if cfg.decoder_stride > 1 and cfg.output_head != "pyramid":
        raise ValueError(f"decoder_stride={cfg.decoder_stride} needs output_head='pyramid' "
                         "(a pixel head at reduced resolution would blur the fused image); set decoder_stride=1")
    if cfg.network_stride not in NETWORK_STRIDES:
        raise ValueError(f"network_stride={cfg.network_stride}; choose from {', '.join(map(str, NETWORK_STRIDES))}")
    if cfg.network_stride > 1 and cfg.output_head != "pyramid":
        raise ValueError(f"network_stride={cfg.network_stride} needs output_head='pyramid' "
                         "(a pixel head at reduced resolution would blur the fused image); set network_stride=1")
    if not 0 <= cfg.range_margin <= 0.25:
        raise ValueError(f"range_margin={cfg.range_margin} must be in [0, 0.25] (0 = off; 4/255 = 4 grey levels)")
    if cfg.detector_norm not in DETECTOR_NORMS:
        raise ValueError(f"detector_norm={cfg.detector_norm!r}; choose from {', '.join(DETECTOR_NORMS)}")
    if cfg.detector_input_norm not in DETECTOR_INPUT_NORMS:
        raise ValueError(f"detector_input_norm={cfg.detector_input_norm!r}; "
                         f"choose from {', '.join(DETECTOR_INPUT_NORMS)}")
    if cfg.attention_init_std is not None and not 0 < cfg.attention_init_std <= 1:
        raise ValueError(f"attention_init_std={cfg.attention_init_std} must be in (0, 1], or None (PyTorch's default)")
    for name in ("mole", "moge"):
        e = getattr(cfg, f"{name}_experts")
        if not 1 <= cfg.k <= e:
            raise ValueError(f"k={cfg.k} must be between 1 and {name}_experts={e}")
    return cfg


def preset_config(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
    cfg = dataclasses.replace(PRESETS[name])
    if overrides:
        cfg = ModelConfig.from_dict({**cfg.to_dict(), **overrides})
    return validate_config(cfg)


def list_presets() -> list[str]:
    return sorted(PRESETS)

