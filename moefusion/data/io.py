"""Reading image files with errors a user can act on.

``cv2.imread`` returns ``None`` for a missing, unreadable or corrupt file and prints, at most, a
warning; a training run would then fail far away with an unrelated error. Here every such case
is a :class:`~moefusion.errors.UserError` that names the file.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from ..files import (
    IMAGE_EXTS,  # file name suffixes (lower case) treated as images when a folder is scanned
)

_JPEG_EXTS = (".jpg", ".jpeg")


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a file whose suffix is one of IMAGE_EXTS and that is not hidden.

    Hidden files are left out because macOS writes ``._name.jpg`` resource forks next to real
    images on foreign file systems; they are not images.
    """
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def _jpeg_is_truncated(data: np.ndarray) -> bool:
    """A JPEG cut short still decodes (grey-filled) in OpenCV; detect it by its missing end marker.

    Entropy-coded data never contains the bytes FF D9 (0xFF is stuffed as FF 00), so a complete
    file has an end-of-image marker after its last start-of-scan marker. Trailing bytes after
    the marker (some cameras append data) are fine.
    """
    raw = data.tobytes()
    last_scan = raw.rfind(b"\xff\xda")
    return last_scan < 0 or raw.find(b"\xff\xd9", last_scan + 2) < 0


def read_image(path: str | os.PathLike, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Read an image file as OpenCV does (BGR or gray; 8-bit stays 8-bit, 16-bit stays 16-bit).

    With the default ``IMREAD_UNCHANGED``: palette BMP/PNG files come back as gray (H, W) when
    the palette is gray and as BGR (H, W, 3) otherwise, with the palette applied; 16-bit PNG and
    TIFF stay uint16; a 3-channel JPEG of an infrared camera (R=G=B) stays 3-channel, which
    ``preprocess.ir_to_unit`` accepts. EXIF orientation is ignored, so IR and VIS files read
    the same way stay aligned.

    Raises UserError naming the file when it is missing, not a file, empty, unreadable, not a
    decodable image or (JPEG) truncated.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"image file not found: {p}")
    if not p.is_file():
        raise UserError(f"not an image file (a folder or device?): {p}")
    try:
        # np.fromfile + imdecode instead of imread: works for non-ASCII paths on every OS and
        # gives us the bytes for the truncation check.
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as e:
        raise UserError(f"cannot read image file {p}: {e.strerror or e}; check its permissions") from e
    if data.size == 0:
        raise UserError(f"image file is empty: {p}; replace or remove it")
    img = cv2.imdecode(data, flags)
    if img is None:
        raise UserError(f"cannot decode image file {p} (corrupt or not a supported image); replace or remove it")
    if p.suffix.lower() in _JPEG_EXTS and _jpeg_is_truncated(data):
        raise UserError(f"JPEG file is truncated (no end marker): {p}; replace or remove it")
    return img


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, from its header where possible (no full decode).

    Uses Pillow's lazy open (Pillow comes with torchvision); falls back to a full decode with
    OpenCV when Pillow is missing or cannot parse the header. A file that passes this check
    can still be truncated further on: ``read_image`` catches that when the file is loaded.
    Raises UserError naming the file when it is missing or not an image.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"image file not found: {p}")
    if p.stat().st_size == 0:
        raise UserError(f"image file is empty: {p}; replace or remove it")
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a torchvision dependency
        Image = None
    if Image is not None:
        try:
            with Image.open(p) as im:
                w, h = im.size
            if w > 0 and h > 0:
                return int(w), int(h)
        except Exception:  # noqa: BLE001 - any Pillow failure: let OpenCV have the final word
            pass
    img = read_image(p)
    return int(img.shape[1]), int(img.shape[0])
