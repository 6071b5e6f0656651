"""Do warm targets stay bright? Mean luminance inside target boxes minus a ring around them.

Fusion metrics such as SF, AG and Qabf measure edge strength only and cannot tell a bright
pedestrian from a dark silhouette; this can. Boxes are rasterised as the training losses do
(:func:`moefusion.model.losses.box_mask`); the ring is RING_PX pixels wide around their union.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from ..model.losses import box_mask

RING_PX = 15


def box_union_mask(boxes_xyxy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    boxes = torch.from_numpy(np.asarray(boxes_xyxy, np.float32).reshape(-1, 4))
    return box_mask([boxes], (1, 1, *shape))[0, 0].numpy().astype(bool)


def ring_mask(mask: np.ndarray, width: int = RING_PX) -> np.ndarray:
    size = 2 * width + 1
    return cv2.dilate(mask.astype(np.uint8), np.ones((size, size), np.uint8)).astype(bool) & ~mask


def target_contrast(img: np.ndarray, boxes_xyxy: np.ndarray) -> float | None:
    """Mean of ``img`` inside the boxes minus the mean of the ring around them (None: no box pixels)."""
    mask = box_union_mask(boxes_xyxy, img.shape[:2])
    if not mask.any():
        return None
    ring = ring_mask(mask)
    return float(img[mask].mean() - img[ring].mean())
