#!/usr/bin/env bash
# Build the TensorRT engine ON THE JETSON that will run it (engines are specific to the TensorRT
# version and the GPU). Usage: samples/jetson/build_engine.sh [WEIGHTS.pt] [HxW] [OUT.engine]
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${1:-moefusion/weights/moefusion_edge.pt}
HW=${2:-480x640}
# fp16 needs a strongly typed network: TensorRT >= 10 (JetPack 6.1+). JetPack 6.0 ships TensorRT 8.6,
# which gets an fp32 engine, said here (moefusion-export --half would refuse it with the same reason).
TRT_MAJOR=$(.venv/bin/python -c "import tensorrt; print(tensorrt.__version__.split('.')[0])")
if [ "$TRT_MAJOR" -ge 10 ]; then PREC=fp16; HALF=--half; else
  PREC=fp32; HALF=; echo "TensorRT $TRT_MAJOR.x (JetPack 6.0): building fp32; fp16 needs JetPack 6.1+ (TensorRT 10)" >&2; fi
OUT=${3:-engines/moefusion_edge_${HW}_${PREC}.engine}
mkdir -p "$(dirname "$OUT")"
sudo nvpmodel -m 0 && sudo jetson_clocks || true   # build at full clocks: faster, and tactics timed as they will run
.venv/bin/moefusion-export --weights "$W" --format engine $HALF --imgsz ${HW/x/ } -o "$OUT"
echo "engine: $OUT (sidecar $OUT.json records TensorRT, GPU, precision, plugins)"
echo "run:    .venv/bin/run_pipeline --model $OUT --ir /dev/video1 --vis csi://0 --output display://0"
