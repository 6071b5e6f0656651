"""IR-to-VIS registration: a homography from point pairs or from a pattern both cameras see.

The homography ``H`` maps infrared pixel coordinates to visible pixel coordinates
(``[u, v, 1]^T ~ H [x, y, 1]^T``). A homography is exact for a planar scene and a good
approximation for cameras mounted close together viewing a distant scene, which is the usual
IR + RGB rig. The saved file (YAML or JSON, by extension) holds::

    type: homography
    direction: ir_to_vis
    H: 3x3 list
    ir_size: [W, H]          # the image sizes the homography was estimated at
    vis_size: [W, H]
    crop: [x, y, w, h]       # common field of view, in VIS pixels (largest rectangle inside both)
    rms_px: reprojection RMS of the inliers, in VIS pixels
    points: N, inliers: M, method: points | chessboard | circles

``run_pipeline --registration FILE`` warps each IR frame into the VIS frame and crops both to
``crop``. If the cameras run at other sizes than at calibration, ``H`` is rescaled.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import UserError


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
        import yaml

        text = "# IR -> VIS registration (moefusion); H maps IR pixels to VIS pixels\n" + yaml.safe_dump(
            d, sort_keys=False, default_flow_style=None)
    elif ext == ".json":
        text = json.dumps(d, indent=2) + "\n"
    else:
        raise UserError(f"--output {path}: use a .yaml, .yml or .json file name")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def load_registration(path: str, flag: str = "--registration") -> Registration:
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path}: no such file; create one with moefusion-calibrate register")
    try:
        text = open(path).read()
        if path.lower().endswith(".json"):
            d = json.loads(text)
        else:
            import yaml

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
# Estimation
# ----------------------------------------------------------------------------------------------

def estimate_homography(ir_pts, vis_pts, *, ransac_px: float = 3.0) -> tuple[np.ndarray, np.ndarray, float]:
    """H (IR -> VIS) from >= 4 point pairs; RANSAC when there are more than 4.
    Returns (H, inlier mask, RMS reprojection error of the inliers in VIS pixels)."""
    src = np.asarray(ir_pts, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(vis_pts, dtype=np.float64).reshape(-1, 2)
    if len(src) != len(dst):
        raise UserError(f"point lists differ in length: {len(src)} IR points, {len(dst)} VIS points")
    if len(src) < 4:
        raise UserError(f"a homography needs at least 4 point pairs, got {len(src)}")
    if len(src) == 4:
        H, mask = cv2.findHomography(src, dst, 0)
    else:
        H, mask = cv2.findHomography(src, dst, cv2.RANSAC, ransac_px)
    if H is None:
        raise UserError("the points do not define a homography (collinear or repeated points?); give 4+ "
                        "well-spread pairs")
    mask = mask.ravel().astype(bool) if mask is not None else np.ones(len(src), bool)
    if mask.sum() >= 5 and len(src) > 4:  # refine on inliers with least squares
        H2, _ = cv2.findHomography(src[mask], dst[mask], 0)
        if H2 is not None:
            H = H2
    H = H / H[2, 2]
    proj = cv2.perspectiveTransform(src[mask].reshape(-1, 1, 2), H).reshape(-1, 2)
    rms = float(np.sqrt(np.mean(np.sum((proj - dst[mask]) ** 2, axis=1))))
    return H, mask, rms


def parse_point_pairs(items: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``"x,y:u,v"`` strings (IR x,y -> VIS u,v) -> arrays."""
    ir, vis = [], []
    for s in items:
        try:
            a, b = s.split(":")
            x, y = (float(v) for v in a.split(","))
            u, v = (float(t) for t in b.split(","))
        except ValueError:
            raise UserError(f"--points {s!r}: expected IRX,IRY:VISX,VISY, e.g. 10,20:31.5,44")
        ir.append((x, y))
        vis.append((u, v))
    return np.array(ir), np.array(vis)


def read_point_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Points from a file: JSON/YAML ``{ir: [[x,y],...], vis: [[u,v],...]}`` or text/CSV lines
    ``ir_x ir_y vis_x vis_y`` (commas or spaces; ``#`` comments; a header line is skipped)."""
    if not os.path.isfile(path):
        raise UserError(f"--points-file {path}: no such file")
    text = open(path).read()
    if path.lower().endswith((".json", ".yaml", ".yml")):
        try:
            if path.lower().endswith(".json"):
                d = json.loads(text)
            else:
                import yaml

                d = yaml.safe_load(text)
            return np.asarray(d["ir"], float).reshape(-1, 2), np.asarray(d["vis"], float).reshape(-1, 2)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"--points-file {path}: expected {{ir: [[x,y],...], vis: [[u,v],...]}} ({e})")
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        vals = line.replace(",", " ").split()
        try:
            rows.append([float(v) for v in vals])
        except ValueError:
            if not rows:
                continue  # header
            raise UserError(f"--points-file {path}:{n}: expected 4 numbers (ir_x ir_y vis_x vis_y)")
        if len(rows[-1]) != 4:
            raise UserError(f"--points-file {path}:{n}: expected 4 numbers (ir_x ir_y vis_x vis_y), got {len(vals)}")
    if not rows:
        raise UserError(f"--points-file {path}: no point pairs found")
    a = np.array(rows)
    return a[:, :2], a[:, 2:]


def parse_pattern(spec: str) -> tuple[str, tuple[int, int]]:
    """``chessboard:COLSxROWS`` (inner corners), ``circles:COLSxROWS`` or ``acircles:COLSxROWS``."""
    try:
        kind, dims = spec.split(":")
        cols, rows = (int(v) for v in dims.lower().split("x"))
    except ValueError:
        raise UserError(f"--pattern {spec!r}: expected chessboard:COLSxROWS (inner corners), circles:COLSxROWS "
                        "or acircles:COLSxROWS, e.g. chessboard:9x6")
    if kind not in ("chessboard", "circles", "acircles") or cols < 2 or rows < 2:
        raise UserError(f"--pattern {spec!r}: expected chessboard|circles|acircles:COLSxROWS")
    return kind, (cols, rows)


def _to_gray8(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3:
        img = cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2GRAY)
    if img.dtype != np.uint8:
        lo, hi = np.percentile(img, (1, 99))
        img = np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return img


def find_pattern(img: np.ndarray, kind: str, size: tuple[int, int]) -> np.ndarray | None:
    """Pattern points (N, 2) in a canonical order, or None. Tries both polarities: a heated or
    cooled target can appear inverted in the thermal image."""
    g = _to_gray8(img)
    for cand in (g, 255 - g):
        if kind == "chessboard":
            ok, corners = cv2.findChessboardCorners(cand, size, cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE)
            if ok:
                crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 40, 0.01)
                corners = cv2.cornerSubPix(cand, corners, (5, 5), (-1, -1), crit)
                return _canonical(corners.reshape(-1, 2), size)
        else:
            flags = cv2.CALIB_CB_SYMMETRIC_GRID if kind == "circles" else cv2.CALIB_CB_ASYMMETRIC_GRID
            ok, centers = cv2.findCirclesGrid(cand, size, flags=flags)
            if ok:
                return _canonical(centers.reshape(-1, 2), size) if kind == "circles" else centers.reshape(-1, 2)
    return None


def _canonical(pts: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Symmetric patterns are found with either of two orders (start corner top-left or bottom-
    right); reverse to the one whose first point is nearest the image's top-left."""
    if pts[0].sum() > pts[-1].sum():
        return pts[::-1].copy()
    return pts


def register_from_images(ir_imgs, vis_imgs, pattern: str, *, ransac_px: float = 3.0):
    """Detect the pattern in each (IR, VIS) image pair; pool the points; estimate H.
    Returns (Registration, number of pairs used)."""
    kind, size = parse_pattern(pattern)
    src, dst, used = [], [], 0
    ir_size = vis_size = None
    for i, (ir, vis) in enumerate(zip(ir_imgs, vis_imgs)):
        ir_size = (ir.shape[1], ir.shape[0])
        vis_size = (vis.shape[1], vis.shape[0])
        a, b = find_pattern(ir, kind, size), find_pattern(vis, kind, size)
        if a is None or b is None:
            continue
        src.append(a)
        dst.append(b)
        used += 1
    if not used:
        raise UserError(f"the {pattern} pattern was not found in both images of any pair; check the pattern size "
                        "(inner corners for a chessboard), that the target is heated/cooled so it shows in IR, "
                        "and that it is fully in view of both cameras")
    H, mask, rms = estimate_homography(np.concatenate(src), np.concatenate(dst), ransac_px=ransac_px)
    n = int(sum(len(s) for s in src))
    return Registration(H, ir_size, vis_size, None, rms, n, int(mask.sum()), kind), used


# ----------------------------------------------------------------------------------------------
# Common field of view
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


def overlay_preview(ir: np.ndarray, vis: np.ndarray, reg: Registration) -> np.ndarray:
    """A check image: VIS in gray with the warped IR's edges in red, and the crop in green."""
    v = _to_gray8(vis)
    w = warp_ir(_to_gray8(ir), reg)
    edges = cv2.Canny(w, 50, 150)
    out = cv2.cvtColor(v, cv2.COLOR_GRAY2BGR)
    out[edges > 0] = (0, 0, 255)
    x, y, cw, ch = reg.crop
    cv2.rectangle(out, (x, y), (x + cw - 1, y + ch - 1), (0, 255, 0), 1)
    return out
