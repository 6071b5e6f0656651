#!/usr/bin/env bash
# A CSI RGB camera (e.g. IMX219/IMX477 on an Orin Nano/NX devkit) + a USB thermal camera
# (FLIR Boson 640 in its 8-bit AGC mode) -> a window with the overlay, also recorded.
# The recording's H.264 encoder: NVENC (nvv4l2h264enc) where the module has one and it encodes,
# x264enc in software on an Orin Nano (no NVENC); ENCODER=x264enc (or any --encoder value) forces one.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=samples/jetson/jetson_detect.sh
. samples/jetson/jetson_detect.sh
MODEL=${MODEL:-engines/moefusion_edge_480x640_fp16.engine}
ENCODER=${ENCODER:-$(pick_h264_encoder)}
echo "H.264 encoder: $ENCODER" >&2
exec .venv/bin/run_pipeline \
    --vis csi://0 --vis-width 1280 --vis-height 720 --vis-rate 30 \
    --ir /dev/video1 --ir-format GRAY8 --ir-width 640 --ir-height 512 --ir-rate 30 \
    --registration samples/jetson/rig.yaml \
    --model "$MODEL" --output display://0 --output "file://recordings/fused_$(date +%Y%m%d_%H%M%S).mp4" \
    --encoder "$ENCODER" --view fused --overlay --stats-json recordings/last_stats.json "$@"
