"""Apply a saved IR-to-VIS registration to frames: warp IR into the VIS frame, crop both to the
common field of view. The warp is a precomputed fixed-point remap (faster than
``warpPerspective`` per frame), rebuilt when a camera's frame size changes. VIS frames in I420
(``yuv.I420Frame``) are cropped on even pixels (4:2:0 chroma covers 2x2 pixels): the crop may
lose a row or column at its edges."""
from __future__ import annotations

import logging

import cv2
import numpy as np

from ..data.registration import Registration, load_registration
from .yuv import I420Frame, even_rect

log = logging.getLogger("moefusion.runtime")


class Registrar:
    def __init__(self, reg: Registration, source: str = ""):
        self.base = reg
        self.source = source
        self._key = None
        self._maps = None
        self.crop = None

    @classmethod
    def from_file(cls, path: str) -> "Registrar":
        return cls(load_registration(path), path)

    def _prepare(self, ir_shape, vis_shape, even: bool = False):
        ir_size = (ir_shape[1], ir_shape[0])
        vis_size = (vis_shape[1], vis_shape[0])
        reg = self.base.scaled(ir_size, vis_size)
        x, y, w, h = even_rect(*reg.crop) if even else reg.crop
        # For every VIS pixel in the crop: where it comes from in the IR image.
        Hinv = np.linalg.inv(reg.H)
        xs, ys = np.meshgrid(np.arange(x, x + w, dtype=np.float64), np.arange(y, y + h, dtype=np.float64))
        pts = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ Hinv.T
        mx = (pts[..., 0] / pts[..., 2]).astype(np.float32)
        my = (pts[..., 1] / pts[..., 2]).astype(np.float32)
        self._maps = cv2.convertMaps(mx, my, cv2.CV_16SC2)
        self.crop = (x, y, w, h)
        self._key = (ir_shape[:2], vis_shape[:2], even)
        if ir_size != self.base.ir_size or vis_size != self.base.vis_size:
            log.info("registration %s: rescaled from IR %s / VIS %s (calibration) to IR %s / VIS %s", self.source,
                     self.base.ir_size, self.base.vis_size, ir_size, vis_size)
        log.info("registration: IR warped into VIS, common field of view %dx%d at (%d, %d)", w, h, x, y)

    def apply(self, ir: np.ndarray, vis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(IR, VIS) -> (IR warped and cropped, VIS cropped), both the crop's size."""
        yuv = isinstance(vis, I420Frame)
        key = (ir.shape[:2], vis.shape[:2], yuv)
        if key != self._key:
            self._prepare(ir.shape, vis.shape, even=yuv)
        x, y, w, h = self.crop
        ir_w = cv2.remap(ir, self._maps[0], self._maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return ir_w, (vis.crop(x, y, w, h) if yuv else vis[y:y + h, x:x + w])
