#!/usr/bin/env bash
# Register the thermal camera to the RGB camera once per rig (and after any knock):
# hold a heated (or cooled) 10x7-square chessboard (9x6 inner corners) in view of both cameras,
# far enough that it fills about a third of each image, and run this. Check the preview image.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/moefusion-calibrate register --ir "${IR:-/dev/video1}" --vis "${VIS:-csi://0}" \
    --pattern chessboard:9x6 -o samples/jetson/rig.yaml --preview samples/jetson/rig_check.png
