#!/usr/bin/env bash
# Two USB cameras: a radiometric thermal core streaming Y16 (FLIR Lepton 3.5 on a PureThermal board:
# 160x120 at 9 Hz; Boson 320/640 in Y16 mode: up to 60 Hz) and a UVC RGB webcam in MJPG.
# 16-bit frames go through the robust percentile AGC; pairing is by timestamp (9 Hz vs 30 Hz:
# 9 fused frames/s, 2 RGB frames in 3 counted as unpaired). Find your nodes with v4l2-ctl --list-devices
# and the modes with v4l2-ctl -d /dev/videoN --list-formats-ext.
# The stream's H.264 encoder: NVENC where the module has one, x264enc on an Orin Nano (ENCODER= forces one).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=samples/jetson/jetson_detect.sh
. samples/jetson/jetson_detect.sh
ENCODER=${ENCODER:-$(pick_h264_encoder)}
echo "H.264 encoder: $ENCODER" >&2
exec .venv/bin/run_pipeline \
    --ir /dev/video2 --ir-format GRAY16_LE --ir-width 160 --ir-height 120 --ir-rate 9 \
    --vis /dev/video0 --vis-format MJPG --vis-width 640 --vis-height 480 --vis-rate 30 \
    --sync-tolerance 20 --registration samples/jetson/rig.yaml \
    --output udp://192.168.1.20:5000 --encoder "$ENCODER" --view side-by-side "$@"
