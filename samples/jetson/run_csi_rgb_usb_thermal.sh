#!/usr/bin/env bash
# A CSI RGB camera (e.g. IMX219/IMX477 on an Orin Nano/NX devkit) + a USB thermal camera
# (FLIR Boson 640 in its 8-bit AGC mode) -> a window with the overlay, also recorded.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-engines/moefusion_edge_480x640_fp16.engine}
exec .venv/bin/run_pipeline \
    --vis csi://0 --vis-width 1280 --vis-height 720 --vis-rate 30 \
    --ir /dev/video1 --ir-format GRAY8 --ir-width 640 --ir-height 512 --ir-rate 30 \
    --registration samples/jetson/rig.yaml \
    --model "$MODEL" --output display://0 --output file://recordings/fused_$(date +%Y%m%d_%H%M%S).mp4 \
    --view fused --overlay --stats-json recordings/last_stats.json "$@"
