#!/usr/bin/env python3
"""Fuse a thermal + visible frame pair on a Triton server: the ensemble ``<name>_frames`` that
``moefusion-export --format triton`` writes takes the two uint8 frames and returns the fused frame,
so this client needs numpy and tritonclient only (``pip install numpy tritonclient[http]``): no
torch, no moefusion. Image files are read and written with OpenCV when it is installed
(``opencv-python-headless``); ``.npy`` frames need nothing more.

    tritonserver --model-repository=model_repository          # moefusion-export --format triton -o model_repository
    python samples/triton/client.py --ir ir.png --vis vis.png -o fused.png
    python samples/triton/client.py --check                   # a synthetic pair: is the ensemble up?

Frames: IR uint8 (H, W) or (H, W, 1|3); VIS uint8 (H, W, 3) BGR or (H, W) gray. The output is shaped
like VIS: BGR for a colour camera, gray for a gray one. A stream graph (``--stream`` export) is a
Triton sequence: give each camera a ``--sequence-id`` and send its frames in order (``fuse_video``).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np


def as_frame(a: np.ndarray, what: str) -> np.ndarray:
    """uint8 (H, W, C): what the ensemble's ir_frame / vis_frame take."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise ValueError(f"{what}: uint8 frames only, got {a.dtype} (scale 16-bit thermal to 8 bits first)")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"{what}: expected (H, W), (H, W, 1) or (H, W, 3), got {a.shape}")
    return np.ascontiguousarray(a)


def fuse(client, ir: np.ndarray, vis: np.ndarray, model: str = "moefusion_edge_frames", *, sequence_id: int = 0,
         sequence_start: bool = False, sequence_end: bool = False) -> np.ndarray:
    """One pair through the ensemble: the fused frame, uint8 (H, W, 3) BGR or (H, W) gray."""
    import tritonclient.http as httpclient

    inputs = []
    for name, frame in (("ir_frame", as_frame(ir, "IR")), ("vis_frame", as_frame(vis, "VIS"))):
        t = httpclient.InferInput(name, list(frame.shape), "UINT8")
        t.set_data_from_numpy(frame)
        inputs.append(t)
    kw = {}
    if sequence_id:
        kw = {"sequence_id": sequence_id, "sequence_start": sequence_start, "sequence_end": sequence_end}
    result = client.infer(model, inputs, outputs=[httpclient.InferRequestedOutput("fused_frame")], **kw)
    out = result.as_numpy("fused_frame")
    return out[:, :, 0] if out.shape[2] == 1 else out


def fuse_video(client, pairs, model: str = "moefusion_edge_frames", sequence_id: int = 1):
    """Frames of one camera pair in order, as one Triton sequence (a stream graph's state is carried)."""
    pairs = iter(pairs)
    prev = next(pairs, None)
    first = True
    while prev is not None:
        nxt = next(pairs, None)
        yield fuse(client, *prev, model, sequence_id=sequence_id, sequence_start=first, sequence_end=nxt is None)
        prev, first = nxt, False


def synthetic_pair(h: int = 240, w: int = 320):
    """A warm disc on a cool background (IR) and a gradient scene (VIS): enough to see the fusion work."""
    y, x = np.mgrid[0:h, 0:w]
    ir = np.where((y - h / 2) ** 2 + (x - w / 3) ** 2 < (h / 5) ** 2, 220, 40).astype(np.uint8)
    vis = np.stack([(x * 255 // w), (y * 255 // h), np.full((h, w), 128)], axis=2).astype(np.uint8)
    return ir, vis


def read_frame(path: str) -> np.ndarray:
    if path.endswith(".npy"):
        return np.load(path)
    try:
        import cv2
    except ImportError:
        sys.exit(f"{path}: reading images needs OpenCV (pip install opencv-python-headless), or give .npy frames")
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        sys.exit(f"{path}: not an image OpenCV can read")
    return img


def write_frame(path: str, img: np.ndarray) -> None:
    if path.endswith(".npy"):
        np.save(path, img)
        return
    try:
        import cv2
    except ImportError:
        sys.exit(f"{path}: writing images needs OpenCV (pip install opencv-python-headless), or write .npy")
    if not cv2.imwrite(path, img):
        sys.exit(f"{path}: could not write")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="localhost:8000", help="Triton's HTTP endpoint (default localhost:8000)")
    p.add_argument("--model", default="moefusion_edge_frames", help="the ensemble (default moefusion_edge_frames)")
    p.add_argument("--ir", help="thermal frame: an 8-bit image or .npy")
    p.add_argument("--vis", help="visible frame: an 8-bit image (BGR or gray) or .npy")
    p.add_argument("-o", "--output", default="fused.png", help="fused frame (image or .npy; default fused.png)")
    p.add_argument("--sequence-id", type=int, default=0, help="a stream graph's sequence (one per camera pair)")
    p.add_argument("--check", action="store_true", help="send a synthetic pair and report the result")
    args = p.parse_args(argv)
    if not args.check and not (args.ir and args.vis):
        p.error("give --ir and --vis (or --check)")

    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=args.url)
    if not client.is_model_ready(args.model):
        print(f"{args.model} is not ready on {args.url}: start tritonserver on the repository written by "
              "moefusion-export --format triton", file=sys.stderr)
        return 1
    ir, vis = synthetic_pair() if args.check else (read_frame(args.ir), read_frame(args.vis))
    seq = {"sequence_id": args.sequence_id, "sequence_start": True, "sequence_end": True} if args.sequence_id else {}
    fused = fuse(client, ir, vis, args.model, **seq)
    if args.check:
        print(f"{args.model}: {vis.shape[1]}x{vis.shape[0]} pair -> fused {fused.shape} {fused.dtype}, "
              f"mean {fused.mean():.1f}")
        return 0
    write_frame(args.output, fused)
    print(f"fused: {args.output} ({fused.shape[1]}x{fused.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
