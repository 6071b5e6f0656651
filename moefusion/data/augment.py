"""Training augmentations applied identically to the IR image, the VIS image and the boxes.

A transform takes and returns a *sample*: a dict with
  ``ir``, ``vis``: float32 numpy (H, W) in [0, 1] (IR after ``ir_to_unit``, VIS luminance),
  ``boxes_ir``/``labels_ir``, ``boxes_vis``/``labels_vis``: float32 [N, 4] xyxy pixels / int64 [N]
  (any other ``boxes<suffix>``/``labels<suffix>`` pair is moved the same way),
plus anything else (``id``...), passed through. ``PairedDataset`` builds the sample, applies the
transform, then makes tensors.

Geometry (scale, crop, flip) draws one set of random numbers per sample and applies it to both
images and every box set, so the pair stays registered and the boxes stay on their objects.
Photometric jitter touches the visible luminance only: infrared values are (after AGC) a
temperature scale, and a "brighter" thermal image would teach the network that a cold object
is warm; visible brightness and contrast do vary with light and exposure, which is exactly what
the network must be robust to.

Randomness: each random transform draws from the ``torch.Generator`` passed to it, else from
torch's global generator (which DataLoader seeds per worker, so workers differ and a run is
reproducible after ``torch.manual_seed``). ``Compose(seed=...)`` owns a generator; inside a
DataLoader worker it is re-derived from the seed and the worker's seed, so workers do not
repeat each other's augmentations (a generator copied into every worker would).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from ..errors import UserError

IMAGE_KEYS = ("ir", "vis")


# ----------------------------------------------------------------------------- helpers


def _size_hw(size) -> tuple[int, int]:
    """``size`` as (h, w): an int (square) or a (h, w) pair of positive ints."""
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UserError(f"crop size must be an int or (height, width), got {size!r}") from None
    if h < 2 or w < 2:
        raise UserError(f"crop size must be at least 2x2, got {h}x{w}")
    return h, w


def _uniform(lo: float, hi: float, generator) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=generator).item())


def _randint(lo: int, hi: int, generator) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=generator).item())


def box_pairs(sample: dict):
    """(boxes_key, labels_key) of every box set in the sample (``boxes_ir`` -> ``labels_ir``)."""
    for key in list(sample):
        if key.startswith("boxes") and ("labels" + key[len("boxes"):]) in sample:
            yield key, "labels" + key[len("boxes"):]


def _check_images(sample: dict) -> tuple[int, int]:
    h, w = sample["ir"].shape[:2]
    if sample["vis"].shape[:2] != (h, w):
        # A bug, not a user mistake: the dataset only builds same-size pairs.
        raise ValueError(f"IR {sample['ir'].shape} and VIS {sample['vis'].shape} differ in size")
    return h, w


def filter_boxes(boxes, labels, area_before, min_side: float, min_area_fraction: float):
    """Keep boxes with both sides >= min_side px and >= min_area_fraction of their area before."""
    bw = boxes[:, 2] - boxes[:, 0]
    bh = boxes[:, 3] - boxes[:, 1]
    keep = (bw >= min_side) & (bh >= min_side) & (bw * bh >= min_area_fraction * area_before)
    return boxes[keep], labels[keep]


# ----------------------------------------------------------------------------- transforms


class Transform:
    """Base class: ``transform(sample, generator=None) -> sample``."""

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Compose(Transform):
    """Apply transforms in order with one random source (see the module docstring)."""

    def __init__(self, transforms, seed: int | None = None):
        self.transforms = list(transforms)
        self.seed = seed
        self._gen = None
        self._gen_key = None

    def _generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        key = None if info is None else (info.id, info.seed)
        if self._gen is None or key != self._gen_key:
            seed = self.seed if info is None else (self.seed * 1_000_003 + info.seed) % (2**63)
            self._gen = torch.Generator().manual_seed(int(seed))
            self._gen_key = key
        return self._gen

    def __call__(self, sample, generator=None):
        g = generator if generator is not None else self._generator()
        for t in self.transforms:
            sample = t(sample, g)
        return sample

    def __getstate__(self):  # generators are re-made after pickling (DataLoader workers)
        state = dict(self.__dict__)
        state["_gen"] = None
        state["_gen_key"] = None
        return state


class RandomScale(Transform):
    """Resize both images by one random factor in ``scale_range``; boxes scale with them."""

    def __init__(self, scale_range=(0.75, 1.25)):
        lo, hi = (float(v) for v in scale_range)
        if not 0 < lo <= hi:
            raise UserError(f"scale range must be 0 < low <= high, got {scale_range!r}")
        self.scale_range = (lo, hi)

    def __call__(self, sample, generator=None):
        h, w = _check_images(sample)
        s = _uniform(*self.scale_range, generator)
        nh, nw = max(2, round(h * s)), max(2, round(w * s))
        if (nh, nw) == (h, w):
            return sample
        out = dict(sample)
        # Area averaging when shrinking (no aliasing), bilinear when enlarging; the same call for
        # both modalities, so they stay aligned.
        interp = cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
        for key in IMAGE_KEYS:
            out[key] = cv2.resize(sample[key], (nw, nh), interpolation=interp)
        factors = np.asarray([nw / w, nh / h, nw / w, nh / h], np.float32)
        for bk, _ in box_pairs(sample):
            out[bk] = (sample[bk] * factors).astype(np.float32)
        return out


class _CropBase(Transform):
    def __init__(self, size, pad_mode="constant", min_box_side=2.0, min_box_area_fraction=0.25):
        self.size = _size_hw(size)
        if pad_mode not in ("constant", "reflect"):
            raise UserError(f"pad_mode must be 'constant' (zeros) or 'reflect', got {pad_mode!r}")
        self.pad_mode = pad_mode
        self.min_box_side = float(min_box_side)
        self.min_box_area_fraction = float(min_box_area_fraction)

    def _offsets(self, ph: int, pw: int, generator) -> tuple[int, int]:
        raise NotImplementedError

    def __call__(self, sample, generator=None):
        h, w = _check_images(sample)
        ch, cw = self.size
        # Pad at the bottom/right when the image is smaller than the crop: boxes keep their
        # coordinates. (Reflected content has no boxes; zeros, the default, has no objects.)
        pad_h, pad_w = max(0, ch - h), max(0, cw - w)
        y0, x0 = self._offsets(h + pad_h, w + pad_w, generator)
        out = dict(sample)
        for key in IMAGE_KEYS:
            img = sample[key]
            if pad_h or pad_w:
                img = np.pad(img, ((0, pad_h), (0, pad_w)), mode=self.pad_mode)
            out[key] = np.ascontiguousarray(img[y0 : y0 + ch, x0 : x0 + cw])
        shift = np.asarray([x0, y0, x0, y0], np.float32)
        limit = np.asarray([cw, ch, cw, ch], np.float32)
        for bk, lk in box_pairs(sample):
            boxes = sample[bk]
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            moved = np.clip(boxes - shift, 0, limit).astype(np.float32)
            out[bk], out[lk] = filter_boxes(moved, sample[lk], area, self.min_box_side, self.min_box_area_fraction)
        return out


class RandomCrop(_CropBase):
    """Crop both images to a fixed (h, w) at one random position, padding when smaller.

    Boxes are shifted and clipped; a box left with a side under ``min_box_side`` px or under
    ``min_box_area_fraction`` of its area is removed (a sliver of a person is not a person).
    """

    def _offsets(self, ph, pw, generator):
        ch, cw = self.size
        return _randint(0, ph - ch, generator), _randint(0, pw - cw, generator)


class CenterCrop(_CropBase):
    """Deterministic version of RandomCrop: the centre (h, w), padding when smaller."""

    def _offsets(self, ph, pw, generator):
        ch, cw = self.size
        return (ph - ch) // 2, (pw - cw) // 2


class RandomHorizontalFlip(Transform):
    """Mirror both images and all boxes left-right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if not 0.0 <= float(p) <= 1.0:
            raise UserError(f"flip probability must be in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, sample, generator=None):
        if _uniform(0.0, 1.0, generator) >= self.p:
            return sample
        _, w = _check_images(sample)
        out = dict(sample)
        for key in IMAGE_KEYS:
            out[key] = np.ascontiguousarray(sample[key][:, ::-1])
        for bk, _ in box_pairs(sample):
            b = sample[bk]
            out[bk] = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1).astype(np.float32)
        return out


class VisibleJitter(Transform):
    """Random brightness (additive) and contrast (about the mean) of the VIS luminance only.

    ``y' = clip((y - mean) * c + mean + b, 0, 1)`` with c in [1 - contrast, 1 + contrast] and
    b in [-brightness, brightness]. The IR image is never touched (see the module docstring).
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2):
        if brightness < 0 or not 0 <= contrast < 1:
            raise UserError(f"jitter needs brightness >= 0 and 0 <= contrast < 1, got {brightness}, {contrast}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)

    def __call__(self, sample, generator=None):
        b = _uniform(-self.brightness, self.brightness, generator)
        c = _uniform(1.0 - self.contrast, 1.0 + self.contrast, generator)
        y = sample["vis"]
        mean = float(y.mean())
        out = dict(sample)
        out["vis"] = np.clip((y - mean) * c + mean + b, 0.0, 1.0).astype(np.float32)
        return out


# ----------------------------------------------------------------------------- factories


def train_transform(
    size,
    scale_range=(0.75, 1.25),
    flip_p: float = 0.5,
    jitter: tuple[float, float] | None = (0.2, 0.2),
    pad_mode: str = "constant",
    min_box_side: float = 2.0,
    min_box_area_fraction: float = 0.25,
    seed: int | None = None,
) -> Compose:
    """Random scale -> random crop to ``size`` (h, w) -> random flip -> VIS jitter.

    ``scale_range=None`` or ``(1, 1)`` skips scaling; ``jitter=None`` skips the photometric
    step, else (brightness, contrast). Every output has the same size, so batches stack.
    """
    steps: list[Transform] = []
    if scale_range is not None and tuple(scale_range) != (1, 1):
        steps.append(RandomScale(scale_range))
    steps.append(RandomCrop(size, pad_mode, min_box_side, min_box_area_fraction))
    if flip_p > 0:
        steps.append(RandomHorizontalFlip(flip_p))
    if jitter is not None:
        steps.append(VisibleJitter(*jitter))
    return Compose(steps, seed=seed)


def val_transform(size=None, pad_mode: str = "constant") -> Compose:
    """No randomness. ``size=None``: images as they are (batch them with batch_size=1 when sizes
    vary; the model pads to its stride itself); a size: the centre crop (zero padded) of that size,
    so a validation set of mixed sizes can be batched."""
    return Compose([] if size is None else [CenterCrop(size, pad_mode)])
