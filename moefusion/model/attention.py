"""Detection-driven attention: two Faster R-CNN detectors (one per modality) from torchvision parts.

Per FPN level, a 1x1 conv fuses the two modalities' features (concat -> conv -> ReLU, added back
to each), and a per-modality head (conv1x1-BN-ReLU-conv1x1-BN-sigmoid) gives an attention map
``a``; the detector heads see ``f * (1 + a)``, so the detection losses teach the attention where
objects are. The fusion network takes ``max(a_vis, a_ir)`` of level 0 (stride 4), upsampled to
full resolution and detached.

At inference only what level-0 attention needs runs (backbones, the FPN top-down path and level
0's output conv, one fusion conv, two attention heads) unless detections are asked for. The
detectors see single-channel images (IR, and the visible luminance), so gray cameras work too.
"""
from __future__ import annotations

import functools
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import MobileNet_V3_Small_Weights, ResNet50_Weights, mobilenet_v3_small, resnet50
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from .presets import DETECTOR_INPUT_NORMS, ModelConfig

# Objects in 640x480 thermal frames are small: anchors from 16 px at stride 4 up to 256 px.
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)
NUM_LEVELS = len(ANCHOR_SIZES)  # FPN levels 0-3 and the max-pooled one
# The detectors' input normalisation of ``detector_input_norm: mid_grey`` (``edge``); a model's own is
# ``DetectionAttention.input_mean`` / ``input_std``.
INPUT_MEAN, INPUT_STD = DETECTOR_INPUT_NORMS["mid_grey"]


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (a divisor of ``channels``): independent of the batch size."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


NORM_LAYERS = {"frozen": FrozenBatchNorm2d, "batch": nn.BatchNorm2d, "group": group_norm}


def _resnet50_fpn(fpn_channels: int, norm: str) -> BackboneWithFPN:
    body = resnet50(weights=None, norm_layer=NORM_LAYERS[norm])
    body.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[256, 512, 1024, 2048],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _mobilenet_v3_small_fpn(fpn_channels: int, norm: str) -> BackboneWithFPN:
    norm_layer = NORM_LAYERS[norm]
    if norm == "batch":  # torchvision's own setting for MobileNetV3
        norm_layer = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    features = mobilenet_v3_small(weights=None, norm_layer=norm_layer).features[:12]  # to stride 32, no 576-ch head
    first = features[0][0]
    features[0][0] = nn.Conv2d(1, first.out_channels, 3, stride=2, padding=1, bias=False)
    # strides 4, 8, 16, 32 end after blocks 1, 3, 8, 11 (16, 24, 48, 96 channels)
    return BackboneWithFPN(
        features,
        return_layers={"1": "0", "3": "1", "8": "2", "11": "3"},
        in_channels_list=[16, 24, 48, 96],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


BACKBONES = {"resnet50": _resnet50_fpn, "mobilenet_v3_small": _mobilenet_v3_small_fpn}
# torchvision weight enums of the classification networks the backbones are cut from, the first
# conv of each (RGB in torchvision, one channel here), and what stays frozen when they are loaded
# (upstream's mmdet config: frozen_stages=1, i.e. the ResNet stem and layer1).
BACKBONE_WEIGHTS = {"resnet50": ResNet50_Weights, "mobilenet_v3_small": MobileNet_V3_Small_Weights}
FIRST_CONV = {"resnet50": ("conv1.weight", "conv1.weight"), "mobilenet_v3_small": ("features.0.0.weight", "0.0.weight")}
FROZEN_PREFIXES = {"resnet50": ("conv1.", "bn1.", "layer1."), "mobilenet_v3_small": ("0.",)}


def backbone_weights_enum(detector: str, name: str):
    """The torchvision weight enum member ``name`` ("DEFAULT", "IMAGENET1K_V1", ...) of a detector."""
    enum = BACKBONE_WEIGHTS[detector]
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise ValueError(f"backbone_weights={name!r} is not a {enum.__name__} member; choose from {choices}") from None


def pretrained_body_state(detector: str, name: str) -> dict:
    """A backbone body's state dict from torchvision's ImageNet classifier weights (downloaded to
    torchvision's cache on first use), the first conv summed over RGB for one-channel input."""
    weights = backbone_weights_enum(detector, name)
    state = weights.get_state_dict(progress=False)
    src, dst = FIRST_CONV[detector]
    out = {}
    prefix = "features." if detector == "mobilenet_v3_small" else ""
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        out[key[len(prefix):]] = value
    out[dst] = state[src].sum(dim=1, keepdim=True)
    return out


class AttentionHead(nn.Module):
    """conv1x1-norm-ReLU-conv1x1-norm-sigmoid, convs shared by all FPN levels, norms per level.

    One BatchNorm shared across levels would keep running statistics that are a blend of all
    levels, so level 0's attention at inference would differ from what the fusion network saw in
    training (where each level is normalised by its own batch statistics). With ``norm="group"``
    the first norm is a GroupNorm (batch-size independent) and the last conv has a bias instead of
    a norm: normalising a one-channel map per sample would force half of every frame above 0.5.
    """

    def __init__(self, channels: int, levels: int = NUM_LEVELS, norm: str = "batch"):
        super().__init__()
        mid = max(channels // 2, 1)
        group = norm == "group"
        self.conv1 = nn.Conv2d(channels, mid, 1, bias=False)
        self.conv2 = nn.Conv2d(mid, 1, 1, bias=group)
        self.bn1 = nn.ModuleList((group_norm(mid) if group else nn.BatchNorm2d(mid)) for _ in range(levels))
        self.bn2 = nn.ModuleList((nn.Identity() if group else nn.BatchNorm2d(1)) for _ in range(levels))

    def forward(self, x, level: int = 0):
        x = F.relu(self.bn1[level](self.conv1(x)))
        return torch.sigmoid(self.bn2[level](self.conv2(x)))


class Detector(nn.Module):
    """RPN + RoI heads on attention-enhanced FPN features (torchvision parts)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c = cfg.fpn_channels
        anchors = AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS)
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(c, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=256,
            positive_fraction=0.5,
            pre_nms_top_n=dict(training=2000, testing=1000),
            post_nms_top_n=dict(training=2000, testing=1000),
            nms_thresh=0.7,
        )
        pool = MultiScaleRoIAlign(featmap_names=["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
        self.roi_heads = RoIHeads(
            pool,
            TwoMLPHead(c * 7 * 7, cfg.roi_representation),
            FastRCNNPredictor(cfg.roi_representation, cfg.num_classes + 1),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=512,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=0.05,
            nms_thresh=0.5,
            detections_per_img=100,
        )

    def forward(self, features: OrderedDict, image_size: tuple[int, int], targets=None):
        """Returns (detections, losses). targets: list of {'boxes': [N,4] xyxy, 'labels': [N] >= 1}."""
        b = next(iter(features.values())).shape[0]
        images = ImageList(torch.empty(b, 1, *image_size, device=next(iter(features.values())).device), [image_size] * b)
        proposals, rpn_losses = self.rpn(images, features, targets)
        detections, roi_losses = self.roi_heads(features, proposals, [image_size] * b, targets)
        return detections, {**rpn_losses, **roi_losses}


def _fpn_level0(fpn, feats: list[torch.Tensor]) -> torch.Tensor:
    """FPN output of the finest level only: the top-down path plus level 0's output conv."""
    last = fpn.get_result_from_inner_blocks(feats[-1], -1)
    for idx in range(len(feats) - 2, -1, -1):
        lateral = fpn.get_result_from_inner_blocks(feats[idx], idx)
        last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
    return fpn.get_result_from_layer_blocks(last, 0)


class DetectionAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.detector not in BACKBONES:
            raise ValueError(f"unknown detector {cfg.detector!r}; choose from {', '.join(BACKBONES)}")
        c = cfg.fpn_channels
        self.detector = cfg.detector
        self.backbone_vis = BACKBONES[cfg.detector](c, cfg.detector_norm)
        self.backbone_ir = BACKBONES[cfg.detector](c, cfg.detector_norm)
        self.input_mean, self.input_std = DETECTOR_INPUT_NORMS[cfg.detector_input_norm]
        self.fusion_conv = nn.Conv2d(2 * c, c, 1)
        head_norm = "group" if cfg.detector_norm == "group" else "batch"
        self.att_vis = AttentionHead(c, norm=head_norm)
        self.att_ir = AttentionHead(c, norm=head_norm)
        self.det_vis = Detector(cfg)
        self.det_ir = Detector(cfg)
        if cfg.attention_init_std is not None:
            self._init_attention(cfg.attention_init_std)

    def _init_attention(self, std: float) -> None:
        """Upstream's initialisation (mmcv normal_init: weights normal(0, std), biases 0) of the
        modality-fusion conv and the attention heads' convs (detectors/MoEFusion.py:108-112)."""
        for conv in (self.fusion_conv, self.att_vis.conv1, self.att_vis.conv2, self.att_ir.conv1, self.att_ir.conv2):
            nn.init.normal_(conv.weight, 0.0, std)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """A one-channel image in [0, 1] as the backbones see it (``detector_input_norm``)."""
        return (x - self.input_mean) / self.input_std

    def _attend(self, f_vis, f_ir, level: int = 0):
        shared = F.relu(self.fusion_conv(torch.cat([f_vis, f_ir], dim=1)))
        f_vis, f_ir = f_vis + shared, f_ir + shared
        a_vis, a_ir = self.att_vis(f_vis, level), self.att_ir(f_ir, level)
        return f_vis * (1 + a_vis), f_ir * (1 + a_ir), a_vis, a_ir

    def load_pretrained(self, name: str) -> list[str]:
        """Both backbones from torchvision's ImageNet weights ``name``; freezes the stem as upstream
        does. Returns the names of the frozen parameters."""
        state = pretrained_body_state(self.detector, name)
        frozen = []
        for tag, backbone in (("backbone_vis", self.backbone_vis), ("backbone_ir", self.backbone_ir)):
            own = backbone.body.state_dict()
            missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
            if missing:
                raise ValueError(f"{name} weights lack {len(missing)} backbone entries, e.g. {missing[:2]}")
            backbone.body.load_state_dict({k: state.get(k, own[k]) for k in own})
            for pname, p in backbone.body.named_parameters():
                if pname.startswith(FROZEN_PREFIXES[self.detector]):
                    p.requires_grad_(False)
                    frozen.append(f"attention.{tag}.body.{pname}")
        return frozen

    def level0_maps(self, vis: torch.Tensor, ir: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_vis, a_ir) at stride 4 from the finest FPN level only (inference path)."""
        feats = []
        for backbone, x in ((self.backbone_vis, vis), (self.backbone_ir, ir)):
            body = backbone.body(self.normalise(x))
            feats.append(_fpn_level0(backbone.fpn, list(body.values())))
        _, _, a_vis, a_ir = self._attend(*feats)
        return a_vis, a_ir

    def level0(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """max(a_vis, a_ir) at stride 4 (inference path)."""
        return torch.maximum(*self.level0_maps(vis, ir))

    def forward(self, vis, ir, targets_vis=None, targets_ir=None, detect=("vis", "ir")):
        """All levels and the detectors named in ``detect``: (level-0 attention, detections, losses,
        level-0 (a_vis, a_ir)). A detector trains only on its own modality's targets."""
        size = tuple(vis.shape[-2:])
        fv = self.backbone_vis(self.normalise(vis))
        fi = self.backbone_ir(self.normalise(ir))
        ev, ei = OrderedDict(), OrderedDict()
        maps0 = None
        for level, name in enumerate(fv):
            ev[name], ei[name], a_vis, a_ir = self._attend(fv[name], fi[name], level)
            if maps0 is None:
                maps0 = (a_vis, a_ir)
        dets, losses = {}, {}
        for modality, det, feats, targets in (("vis", self.det_vis, ev, targets_vis), ("ir", self.det_ir, ei, targets_ir)):
            if modality not in detect:
                continue
            dets[modality], loss = det(feats, size, targets)
            losses.update({f"{modality}_{k}": v for k, v in loss.items()})
        return torch.maximum(*maps0), dets, losses, maps0
