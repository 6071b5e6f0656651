"""IR-to-VIS registration: a homography from point pairs or from a pattern both cameras see.

The homography ``H`` maps infrared pixel coordinates to visible pixel coordinates
(``[u, v, 1]^T ~ H [x, y, 1]^T``). A homography is exact for a planar scene and a good
approximation for cameras mounted close together viewing a distant scene, which is the usual
IR + RGB rig. The file it is saved to, and the common field of view and the warp that use it, are
in ``moefusion.data.registration`` (shared with the runtime); this module estimates it.
"""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import yaml

from ..data.registration import Registration, warp_ir
from ..errors import UserError

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
