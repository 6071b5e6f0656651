#!/usr/bin/env python3
"""Regenerate the synthetic demo clips in samples/demo/ (ir.mp4, vis.mp4, registration.yaml).

The clips are procedural (see moefusion/runtime/samplegen.py): a dusk street with a fog bank;
a person walking through the fog is hidden in the visible clip and warm in the thermal clip,
which comes from a separate, smaller camera related to the visible one by a known homography.
No real data is used. Usage: python samples/make_demo_clips.py [OUT_DIR]
"""
import sys
from pathlib import Path

from moefusion.runtime.samplegen import FRAMES, write_demo_clips

if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "demo"
    d = write_demo_clips(out, frames=FRAMES)
    for f in sorted(d.iterdir()):
        print(f"{f}  {f.stat().st_size / 1024:.0f} KiB")
