#!/usr/bin/env bash
# What moefusion-pipeline.service runs: run_pipeline with the settings of /etc/default/moefusion-pipeline
# (IR, VIS, STREAM_FLAGS, MODEL, REGISTRATION, OUTPUT, and ENCODER: empty = detected, see jetson_detect.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=samples/jetson/jetson_detect.sh
. samples/jetson/jetson_detect.sh
for v in IR VIS MODEL REGISTRATION OUTPUT; do
    [ -n "${!v:-}" ] || { echo "$v is not set: see /etc/default/moefusion-pipeline (samples/jetson/moefusion-pipeline.env)" >&2; exit 2; }
done
ENCODER=${ENCODER:-$(pick_h264_encoder)}
echo "H.264 encoder: $ENCODER" >&2
# shellcheck disable=SC2086  # STREAM_FLAGS is a list of flags, split on purpose
exec .venv/bin/run_pipeline --ir "$IR" --vis "$VIS" $STREAM_FLAGS \
    --model "$MODEL" --registration "$REGISTRATION" --output "$OUTPUT" --encoder "$ENCODER" \
    --stats-interval 30 --stats-json /var/lib/moefusion/stats.json --reconnect-timeout -1 "$@"
