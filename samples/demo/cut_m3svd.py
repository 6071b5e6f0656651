#!/usr/bin/env python3
"""Make the real-footage demo clips from the M3SVD test pair 0117_1620 (see README.md here).

    python samples/demo/cut_m3svd.py [M3SVD_VIDEO_DIR] [--start 180] [--frames 180]

M3SVD_VIDEO_DIR holds ir/0117_1620.mp4 and vis/0117_1620.mp4 (default: ../shared/data/m3svd_video
beside the repository). Frames [start, start + frames) of both are decoded and re-encoded as H.264
(x264, constant quantizer 24, a key frame a second) at 30 Hz into this folder.
"""
import argparse
from pathlib import Path

import cv2
import numpy as np

from moefusion.runtime import gst as gstmod

HERE = Path(__file__).resolve().parent


def cut(src: Path, dst: Path, start: int, frames: int, quantizer: int = 24) -> None:
    Gst = gstmod.import_gst()
    cap = cv2.VideoCapture(str(src))
    for _ in range(start):
        if not cap.read()[0]:
            raise SystemExit(f"{src}: fewer than {start} frames")
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    pipe = Gst.parse_launch(
        f"appsrc name=src format=time caps=video/x-raw,format=BGR,width={w},height={h},framerate=30/1 ! videoconvert ! "
        f"video/x-raw,format=I420 ! x264enc pass=quant quantizer={quantizer} speed-preset=slow key-int-max=30 ! "
        f"video/x-h264,profile=high ! mp4mux faststart=true ! filesink location={dst}")
    src_el = pipe.get_by_name("src")
    pipe.set_state(Gst.State.PLAYING)
    for k in range(frames):
        ok, f = cap.read()
        if not ok:
            raise SystemExit(f"{src}: fewer than {start + frames} frames")
        buf = Gst.Buffer.new_wrapped(np.ascontiguousarray(f).tobytes())  # w * 3 is a multiple of 4 at 640
        buf.pts, buf.duration = k * Gst.SECOND // 30, Gst.SECOND // 30
        src_el.emit("push-buffer", buf)
    src_el.emit("end-of-stream")
    msg = pipe.get_bus().timed_pop_filtered(600 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipe.set_state(Gst.State.NULL)
    if msg is None or msg.type != Gst.MessageType.EOS:
        raise SystemExit(f"{dst}: encoding failed")
    print(f"{dst}  {dst.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", nargs="?", default=str(HERE.parents[2] / "shared" / "data" / "m3svd_video"))
    ap.add_argument("--start", type=int, default=180)
    ap.add_argument("--frames", type=int, default=180)
    a = ap.parse_args()
    for role in ("ir", "vis"):
        cut(Path(a.src) / role / "0117_1620.mp4", HERE / f"m3svd_0117_1620_{role}.mp4", a.start, a.frames)
