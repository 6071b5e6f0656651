#!/usr/bin/env bash
# Build the TensorRT engine ON THE JETSON that will run it (engines are specific to the TensorRT
# version and the GPU). Usage: samples/jetson/build_engine.sh [WEIGHTS.pt] [HxW] [OUT.engine]
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-moefusion/weights/moefusion_edge.pt}
HW=${2:-480x640}
OUT=${3:-engines/moefusion_edge_${HW}_fp16.engine}
mkdir -p "$(dirname "$OUT")"
sudo nvpmodel -m 0 && sudo jetson_clocks || true   # build at full clocks: faster, and tactics timed as they will run
.venv/bin/moefusion-export --weights "$W" --format engine --half --imgsz ${HW/x/ } -o "$OUT"
echo "engine: $OUT (sidecar $OUT.json records TensorRT, GPU, precision, plugins)"
echo "run:    .venv/bin/run_pipeline --model $OUT --ir /dev/video1 --vis csi://0 --output display://0"
