#!/usr/bin/env bash
# One-time set-up of MoE-Fusion Edge on a Jetson Orin with JetPack 6.x (L4T r36, Ubuntu 22.04).
# Run from the repository root: samples/jetson/setup_jetpack6.sh
# Not run on hardware by the project's CI; see docs/jetson.md for what each step is for.
set -euo pipefail
cd "$(dirname "$0")/../.."

# GStreamer with NVIDIA's elements (nvarguscamerasrc, nvvidconv, nvv4l2h264enc, nv3dsink come with
# JetPack's nvidia-l4t-gstreamer), PyGObject from Ubuntu, V4L2 tools, TensorRT's Python bindings.
sudo apt-get update
sudo apt-get install -y --no-install-recommends \
    python3-venv python3-dev python3-gi python3-gst-1.0 gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 \
    gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
    gstreamer1.0-plugins-ugly gstreamer1.0-libav v4l-utils nvidia-l4t-gstreamer python3-libnvinfer cmake ninja-build

# A virtualenv that sees the system's PyGObject + Gst overrides and JetPack's TensorRT bindings.
python3 -m venv --system-site-packages .venv
.venv/bin/python -m pip install --upgrade pip
# PyTorch for JetPack 6 comes from NVIDIA's Jetson index (not PyPI's aarch64 CPU wheels); match it to
# your JetPack release: https://docs.nvidia.com/deeplearning/frameworks/install-pytorch-jetson-platform/
if ! .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "install the JetPack PyTorch wheel into .venv now (see the link above), then rerun this script"
    exit 1
fi
.venv/bin/python -m pip install -e . onnx onnxruntime cuda-python
# CUDA kernels and TensorRT plugins, built for this device (sm_87) with JetPack's nvcc.
.venv/bin/python -m moefusion.kernels.build || echo "kernels not built (see kernels/README.md); the standard ONNX flavour still works"
.venv/bin/python -c "from moefusion.runtime import gst; assert gst.have_gst(), gst.gst_reason(); print('GStreamer OK')"
gst-inspect-1.0 nvarguscamerasrc >/dev/null && echo "nvarguscamerasrc OK"
echo "done: try  .venv/bin/run_pipeline --demo"
