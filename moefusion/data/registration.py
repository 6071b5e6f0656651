"""The IR-to-VIS registration file: a homography, the common field of view, the IR warp.

The homography ``H`` maps infrared pixel coordinates to visible pixel coordinates
(``[u, v, 1]^T ~ H [x, y, 1]^T``). The file (YAML or JSON, by extension) holds::

    type: homography
    direction: ir_to_vis
    H: 3x3 list
    ir_size: [W, H]          # the image sizes the homography was estimated at
    vis_size: [W, H]
    crop: [x, y, w, h]       # common field of view, in VIS pixels (largest rectangle inside both)
    rms_px: reprojection RMS of the inliers, in VIS pixels
    points: N, inliers: M, method: points | chessboard | circles

``moefusion-calibrate register`` estimates and writes it (``moefusion.calibration.register``);
``run_pipeline --registration FILE`` reads it (``moefusion.runtime.registration``), warps each IR
frame into the VIS frame and crops both to ``crop``. If the cameras run at other sizes than at
calibration, ``H`` is rescaled (``Registration.scaled``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import cv2
import numpy as np
import yaml

from ..errors import UserError
from ..files import atomic_write_text


@dataclass
class Registration:
    H: np.ndarray  # 3x3 float64, IR -> VIS
    ir_size: tuple[int, int]
    vis_size: tuple[int, int]
    crop: tuple[int, int, int, int] | None = None
    rms_px: float | None = None
    points: int = 0
    inliers: int = 0
    method: str = "points"

    def __post_init__(self):
        self.H = np.asarray(self.H, dtype=np.float64).reshape(3, 3)
        if abs(self.H[2, 2]) > 1e-12:
            self.H = self.H / self.H[2, 2]
        self.ir_size = tuple(int(v) for v in self.ir_size)
        self.vis_size = tuple(int(v) for v in self.vis_size)
        if self.crop is None:
            self.crop = common_fov(self.H, self.ir_size, self.vis_size)
        self.crop = tuple(int(v) for v in self.crop)

    def scaled(self, ir_size, vis_size) -> "Registration":
        """The same registration for cameras running at other sizes (same field of view)."""
        ir_size, vis_size = tuple(ir_size), tuple(vis_size)
        if ir_size == self.ir_size and vis_size == self.vis_size:
            return self
        s_ir = np.diag([ir_size[0] / self.ir_size[0], ir_size[1] / self.ir_size[1], 1.0])
        s_vis = np.diag([vis_size[0] / self.vis_size[0], vis_size[1] / self.vis_size[1], 1.0])
        H = s_vis @ self.H @ np.linalg.inv(s_ir)
        return Registration(H / H[2, 2], ir_size, vis_size, None, self.rms_px, self.points, self.inliers, self.method)

    def to_dict(self) -> dict:
        return {
            "type": "homography", "direction": "ir_to_vis",
            "H": [[float(v) for v in row] for row in self.H],
            "ir_size": list(self.ir_size), "vis_size": list(self.vis_size), "crop": list(self.crop),
            "rms_px": None if self.rms_px is None else round(float(self.rms_px), 4),
            "points": int(self.points), "inliers": int(self.inliers), "method": self.method,
        }


def save_registration(reg: Registration, path: str) -> None:
    """Write YAML (.yaml/.yml) or JSON (.json), atomically (temp file + rename)."""
    ext = os.path.splitext(path)[1].lower()
    d = reg.to_dict()
    if ext in (".yaml", ".yml"):
        text = "# IR -> VIS registration (moefusion); H maps IR pixels to VIS pixels\n" + yaml.safe_dump(
            d, sort_keys=False, default_flow_style=None)
    elif ext == ".json":
        text = json.dumps(d, indent=2) + "\n"
    else:
        raise UserError(f"--output {path}: use a .yaml, .yml or .json file name")
    atomic_write_text(path, text)


def load_registration(path: str, flag: str = "--registration") -> Registration:
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such file; create one with moefusion-calibrate register")
    try:
        text = open(path).read()
        if path.lower().endswith(".json"):
            d = json.loads(text)
        else:
            d = yaml.safe_load(text)
    except (OSError, ValueError) as e:
        raise UserError(f"{flag} {path}: cannot parse it ({str(e).splitlines()[0]})")
    except Exception as e:  # yaml.YAMLError
        raise UserError(f"{flag} {path}: cannot parse it ({str(e).splitlines()[0]})")
    if not isinstance(d, dict) or "H" not in d or "ir_size" not in d or "vis_size" not in d:
        raise UserError(f"{flag} {path}: not a registration file (needs H, ir_size, vis_size); "
                        "create one with moefusion-calibrate register")
    if d.get("direction", "ir_to_vis") != "ir_to_vis":
        raise UserError(f"{flag} {path}: direction {d.get('direction')!r} is not supported (ir_to_vis)")
    try:
        H = np.asarray(d["H"], dtype=np.float64).reshape(3, 3)
        if not np.isfinite(H).all() or abs(np.linalg.det(H)) < 1e-12:
            raise ValueError("H is singular or not finite")
        return Registration(H, d["ir_size"], d["vis_size"], d.get("crop"), d.get("rms_px"),
                            d.get("points", 0), d.get("inliers", 0), d.get("method", "points"))
    except (ValueError, TypeError) as e:
        raise UserError(f"{flag} {path}: bad registration ({e})")



# ----------------------------------------------------------------------------------------------

def common_fov(H: np.ndarray, ir_size, vis_size) -> tuple[int, int, int, int]:
    """Largest axis-aligned rectangle (x, y, w, h) in VIS pixels covered by both the VIS frame and
    the warped IR frame (even width/height, for video encoders). Greedy: shrink the side whose
    border row/column has the most uncovered pixels until everything inside is covered."""
    W, Hh = int(vis_size[0]), int(vis_size[1])
    mask = cv2.warpPerspective(np.full((int(ir_size[1]), int(ir_size[0])), 255, np.uint8), H, (W, Hh),
                               flags=cv2.INTER_NEAREST, borderValue=0)
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8))  # keep off the interpolated border
    valid = mask > 0
    if not valid.any():
        raise UserError("the homography maps the IR image entirely outside the VIS image; the point pairs "
                        "are wrong or swapped (IR points come first: IRX,IRY:VISX,VISY)")
    ys, xs = np.nonzero(valid)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    while x1 - x0 > 2 and y1 - y0 > 2:
        sub = valid[y0:y1, x0:x1]
        if sub.all():
            break
        bad = {"top": (~sub[0]).sum() / sub.shape[1], "bottom": (~sub[-1]).sum() / sub.shape[1],
               "left": (~sub[:, 0]).sum() / sub.shape[0], "right": (~sub[:, -1]).sum() / sub.shape[0]}
        side = max(bad, key=bad.get)
        if side == "top":
            y0 += 1
        elif side == "bottom":
            y1 -= 1
        elif side == "left":
            x0 += 1
        else:
            x1 -= 1
    w, h = (x1 - x0) // 2 * 2, (y1 - y0) // 2 * 2
    if w < 16 or h < 16:
        raise UserError(f"the common field of view of the two cameras is only {w}x{h} pixels; check the points")
    return int(x0), int(y0), int(w), int(h)


def warp_ir(ir: np.ndarray, reg: Registration) -> np.ndarray:
    """Warp an IR image into the VIS frame (full VIS size, not cropped)."""
    return cv2.warpPerspective(ir, reg.H, tuple(reg.vis_size), flags=cv2.INTER_LINEAR, borderValue=0)
