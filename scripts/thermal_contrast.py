#!/usr/bin/env python
"""Do warm targets stay bright? Person-minus-surround contrast of IR, VIS, averaging and the model.

    python scripts/thermal_contrast.py --weights moefusion/weights/moefusion_edge.pt --data ../shared/data/msrs_det

For each pair, the mean luminance inside the IR-labelled person boxes (YOLO labels in
DATA/labels/infrared/, class 0) minus the mean of a 15-pixel ring around them. A model that
keeps thermal polarity has a positive contrast like IR's; fusion metrics such as SF, AG and Qabf
measure edge strength only and cannot tell a bright pedestrian from a dark silhouette. The
default ids are the MSRS pairs that edge.yaml holds out from training.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import moefusion
from moefusion.data.boxes import read_yolo
from moefusion.data.io import read_image
from moefusion.eval.baselines import laplacian_pyramid
from moefusion.eval.contrast import target_contrast


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="checkpoint, .onnx or .engine (default: the bundled weights)")
    p.add_argument("--data", default="../shared/data/msrs_det")
    p.add_argument("--ids", nargs="+", default=["00020N", "00047N", "00051N", "00107D"])
    args = p.parse_args()
    model = moefusion.load(args.weights, device="cpu")
    root = Path(args.data)
    print(f"{'id':8} {'IR':>7} {'VIS':>7} {'average':>8} {'laplacian':>9} {'model':>7}   (person minus surround, grey levels)")
    for i in args.ids:
        ir8 = read_image(next((root / "ir").glob(f"{i}.*")), cv2.IMREAD_GRAYSCALE)
        vis = read_image(next((root / "vis").glob(f"{i}.*")), cv2.IMREAD_COLOR)
        fused = cv2.cvtColor(model.fuse(ir8, vis), cv2.COLOR_BGR2GRAY).astype(np.float64)
        ir = ir8.astype(np.float64)
        vis_y = cv2.cvtColor(vis, cv2.COLOR_BGR2GRAY).astype(np.float64)
        boxes = read_yolo(root / "labels" / "infrared" / f"{i}.txt", ir.shape[1], ir.shape[0])
        persons = boxes.xyxy[boxes.labels == 0]
        lap = np.rint(np.clip(laplacian_pyramid(ir / 255, vis_y / 255), 0, 1) * 255)
        row = [target_contrast(x, persons) for x in (ir, vis_y, (ir + vis_y) / 2, lap, fused)]
        if row[0] is None:
            print(f"{i:8} no person boxes")
            continue
        print(f"{i:8} " + " ".join(f"{v:7.1f}" for v in row[:2]) + f" {row[2]:8.1f} {row[3]:9.1f} {row[4]:7.1f}")


if __name__ == "__main__":
    main()
