"""Synthetic IR + VIS demo clips (procedural, deterministic; no real data involved).

The scene: a street at dusk. The visible camera sees texture (brick walls, windows, paving,
trees) but a bank of fog hides the middle of the scene, and a person walks through it. The
thermal camera sees little texture but the person (and a car engine, and lit windows) is warm.
The thermal camera is a separate, lower-resolution camera with a slightly different field of
view: its frames relate to the visible frames by a known homography, saved as the demo's
registration file. So ``run_pipeline --demo`` exercises capture, pairing, registration,
inference and the sinks, and the fused video shows what each camera alone misses.

``python samples/make_demo_clips.py`` writes them into samples/demo/; ``ensure_demo_clips()``
returns that folder, or generates the clips into a cache folder when it is absent (installed
package without the repository).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from ..data.registration import Registration, save_registration

log = logging.getLogger("moefusion.runtime")

VIS_SIZE = (320, 240)
IR_SIZE = (256, 192)
FPS = 15.0
FRAMES = 60
# The thermal camera's view: IR pixel -> VIS pixel. A narrower field of view (the IR frame covers
# the VIS frame's central ~80%), shifted and rotated by about a degree, as on a real two-camera rig.
_A = np.deg2rad(1.2)
H_IR_TO_VIS = (np.array([[1.0, 0.0, 160.0], [0.0, 1.0, 118.0], [0, 0, 1.0]])
               @ np.array([[np.cos(_A), -np.sin(_A), 0], [np.sin(_A), np.cos(_A), 0], [0, 0, 1.0]])
               @ np.array([[1.0, 0.004, 0], [0.0, 1.0, 0], [0.0, 0.00006, 1.0]])
               @ np.diag([1.02, 1.02, 1.0])
               @ np.array([[1.0, 0.0, -128.0], [0.0, 1.0, -96.0], [0, 0, 1.0]]))


def _person_mask(w: int, h: int, cx: float, cy: float, scale: float, phase: float) -> np.ndarray:
    """A walking figure (head, torso, swinging legs and arms) as a float mask."""
    m = np.zeros((h, w), np.uint8)
    s = scale
    head = (int(cx), int(cy - 30 * s))
    cv2.circle(m, head, max(2, int(5 * s)), 255, -1, cv2.LINE_AA)
    cv2.ellipse(m, (int(cx), int(cy - 12 * s)), (max(2, int(6 * s)), max(3, int(13 * s))), 0, 0, 360, 255, -1,
                cv2.LINE_AA)
    swing = np.sin(phase) * 7 * s
    for sgn in (-1, 1):
        cv2.line(m, (int(cx), int(cy)), (int(cx + sgn * swing), int(cy + 22 * s)), 255, max(2, int(4 * s)), cv2.LINE_AA)
        cv2.line(m, (int(cx), int(cy - 20 * s)), (int(cx - sgn * swing * 0.8), int(cy - 5 * s)), 255,
                 max(1, int(3 * s)), cv2.LINE_AA)
    return m.astype(np.float32) / 255.0


def _static_scene(rng: np.random.Generator):
    """Visible background (BGR float 0..1), thermal background (float 0..1), fog map, masks."""
    w, h = VIS_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vis = np.zeros((h, w, 3), np.float32)
    horizon = int(h * 0.45)
    sky = np.clip(0.55 - (horizon - yy) / h * 0.5, 0.15, 0.6)
    vis[:] = np.stack([sky * 1.1, sky * 0.8, sky * 0.6], -1)  # dusk sky, BGR
    ir = np.full((h, w), 0.12, np.float32)  # cold sky
    # ground: paving texture
    tex = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.2)
    ground = yy >= horizon
    paving = 0.25 + 0.12 * tex + 0.05 * (((xx // 16 + yy // 8) % 2) == 0)
    for c, k in enumerate((0.9, 1.0, 1.05)):
        vis[..., c] = np.where(ground, paving * k, vis[..., c])
    ir = np.where(ground, 0.35 + 0.05 * (yy - horizon) / h, ir)
    # buildings with windows
    win_masks = np.zeros((h, w), np.float32)
    for x0, x1, top, col in ((0, 70, 40, (0.20, 0.25, 0.45)), (75, 130, 60, (0.35, 0.35, 0.38)),
                             (205, 260, 30, (0.22, 0.30, 0.50)), (265, 320, 55, (0.30, 0.28, 0.26))):
        bt = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 0.8)
        region = (xx >= x0) & (xx < x1) & (yy >= top) & (yy < horizon + 5)
        for c in range(3):
            vis[..., c] = np.where(region, col[c] * (0.8 + 0.4 * bt) * (1 - 0.15 * ((yy.astype(int) % 6) == 0)), vis[..., c])
        ir = np.where(region, 0.28 + 0.03 * bt, ir)
        for wy in range(top + 8, horizon - 10, 18):
            for wx in range(x0 + 6, x1 - 10, 14):
                lit = rng.random() < 0.4
                cv2.rectangle(vis, (wx, wy), (wx + 7, wy + 9), (0.35, 0.75, 0.95) if lit else (0.12, 0.12, 0.14), -1)
                if lit:
                    cv2.rectangle(win_masks, (wx, wy), (wx + 7, wy + 9), 1.0, -1)
    ir = np.maximum(ir, cv2.GaussianBlur(win_masks, (0, 0), 1.5) * 0.55)
    # trees
    for tx in (150, 185):
        cv2.line(vis, (tx, horizon + 10), (tx, horizon - 25), (0.10, 0.15, 0.20), 3)
        for _ in range(60):
            px, py = int(tx + rng.normal(0, 9)), int(horizon - 35 + rng.normal(0, 10))
            cv2.circle(vis, (px, py), 3, (0.1, 0.35 + 0.2 * rng.random(), 0.15), -1)
        cv2.circle(ir, (tx, horizon - 35), 14, 0.22, -1)
    # a parked car: its engine is warm
    cv2.rectangle(vis, (20, horizon + 40), (80, horizon + 62), (0.55, 0.15, 0.12), -1)
    cv2.rectangle(vis, (30, horizon + 30), (65, horizon + 42), (0.40, 0.35, 0.30), -1)
    for wx in (30, 70):
        cv2.circle(vis, (wx, horizon + 63), 6, (0.05, 0.05, 0.05), -1)
        cv2.circle(ir, (wx, horizon + 63), 6, 0.45, -1)
    cv2.rectangle(ir, (20, horizon + 40), (80, horizon + 62), 0.42, -1)
    cv2.rectangle(ir, (20, horizon + 42), (38, horizon + 58), 0.8, -1)  # hot bonnet
    # fog bank over the middle
    fog = np.exp(-((xx - w * 0.55) / (w * 0.22)) ** 2) * np.clip(1.2 - np.abs(yy - h * 0.55) / (h * 0.5), 0, 1)
    fog = cv2.GaussianBlur(fog.astype(np.float32), (0, 0), 5) * 0.85
    ir = cv2.GaussianBlur(ir.astype(np.float32), (0, 0), 1.0)
    return vis, ir, fog, horizon


def render_frames(frames: int = FRAMES, seed: int = 0):
    """Yields (ir_u8 at IR_SIZE, vis_bgr_u8 at VIS_SIZE) for each frame."""
    rng = np.random.default_rng(seed)
    vis_bg, ir_bg, fog, horizon = _static_scene(rng)
    w, h = VIS_SIZE
    fixed_pattern = (np.random.default_rng(seed + 1).random(IR_SIZE[::-1]).astype(np.float32) - 0.5) * 0.04
    H_vis_to_ir = np.linalg.inv(H_IR_TO_VIS)
    for i in range(frames):
        t = i / max(1, frames - 1)
        cx, cy = 60 + t * 200, horizon + 52 - 10 * np.sin(t * np.pi)
        m = _person_mask(w, h, cx, cy, 1.15, i * 0.7)
        vis = vis_bg.copy()
        person_col = np.array([0.18, 0.20, 0.24], np.float32)  # dark clothes at dusk
        vis = vis * (1 - m[..., None]) + person_col * m[..., None]
        vis = vis * (1 - fog[..., None]) + 0.62 * fog[..., None]  # fog: flat and bright
        ir = ir_bg * (1 - m) + 0.92 * m  # a warm body
        ir = cv2.GaussianBlur(ir, (0, 0), 0.7)
        ir_cam = cv2.warpPerspective(ir, H_vis_to_ir, IR_SIZE, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        ir_cam = np.clip(ir_cam + fixed_pattern, 0, 1)
        yield (np.rint(ir_cam * 255).astype(np.uint8), np.rint(np.clip(vis, 0, 1) * 255).astype(np.uint8))


def write_demo_clips(folder: str | os.PathLike, frames: int = FRAMES, seed: int = 0) -> Path:
    """Write ir.mp4, vis.mp4 (MPEG-4 Part 2, readable by GStreamer's avdec_mpeg4 and by OpenCV)
    and registration.yaml into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    tmp_ir, tmp_vis = folder / "ir.partial.mp4", folder / "vis.partial.mp4"
    wi = cv2.VideoWriter(str(tmp_ir), fourcc, FPS, IR_SIZE, isColor=False)
    wv = cv2.VideoWriter(str(tmp_vis), fourcc, FPS, VIS_SIZE, isColor=True)
    if not (wi.isOpened() and wv.isOpened()):
        raise RuntimeError("OpenCV cannot write mp4v files here")
    for ir, vis in render_frames(frames, seed):
        wi.write(ir)
        wv.write(vis)
    wi.release()
    wv.release()
    os.replace(tmp_ir, folder / "ir.mp4")
    os.replace(tmp_vis, folder / "vis.mp4")
    save_registration(Registration(H_IR_TO_VIS, IR_SIZE, VIS_SIZE, method="synthetic (known)"),
                      str(folder / "registration.yaml"))
    return folder


def repo_demo_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "samples" / "demo"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moefusion" / "demo"


REAL_DEMO = ("m3svd_0117_1620_ir.mp4", "m3svd_0117_1620_vis.mp4")  # real footage (samples/demo/README.md)


def real_demo_clips() -> tuple[Path, Path] | None:
    """The real-footage demo pair in samples/demo/ (IR, VIS), or None where it is not shipped
    (an installed wheel): then the demo plays the synthetic clips."""
    d = repo_demo_dir()
    ir, vis = (d / f for f in REAL_DEMO)
    return (ir, vis) if ir.is_file() and vis.is_file() else None


def ensure_demo_clips() -> Path:
    """samples/demo/ of the repository, else a generated copy in the user's cache."""
    for d in (repo_demo_dir(), cache_dir()):
        if all((d / f).is_file() for f in ("ir.mp4", "vis.mp4", "registration.yaml")):
            return d
    d = cache_dir()
    log.info("generating the demo clips into %s", d)
    return write_demo_clips(d)
