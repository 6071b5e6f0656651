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
# Install torch AND torchvision from there: a torchvision from PyPI pins a PyPI torch.
TORCH_HINT="install NVIDIA's JetPack PyTorch (and torchvision) wheels into .venv (see the link above), then rerun this script"
if ! .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "$TORCH_HINT"
    exit 1
fi
# The project's own install must keep that torch: pin torch/torchvision to the installed versions, so that
# pip either keeps them or stops with a conflict, never swaps in PyPI's CPU wheels. cuda-python: the CUDA 12
# line of JetPack 6 (CUDA 12.2/12.6); cuda-python 13 needs a CUDA 13 driver.
PINS=$(mktemp)
trap 'rm -f "$PINS"' EXIT
.venv/bin/python - >"$PINS" <<'PY'
from importlib import metadata
for name in ("torch", "torchvision"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
PY
.venv/bin/python -m pip install -c "$PINS" -e . onnx onnxruntime 'cuda-python>=12.2,<13'
# ... and check again after it: the CUDA torch must still be the one installed.
if ! .venv/bin/python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"; then
    echo "the install replaced or broke the CUDA PyTorch; $TORCH_HINT"
    exit 1
fi
# CUDA kernels and TensorRT plugins, built for this device (sm_87) with JetPack's nvcc.
.venv/bin/python -m moefusion.kernels.build || echo "kernels not built (see kernels/README.md); the standard ONNX flavour still works"
.venv/bin/python -c "from moefusion.runtime import gst; assert gst.have_gst(), gst.gst_reason(); print('GStreamer OK')"
gst-inspect-1.0 nvarguscamerasrc >/dev/null && echo "nvarguscamerasrc OK"
# shellcheck source=samples/jetson/jetson_detect.sh
. samples/jetson/jetson_detect.sh
echo "H.264 encoder for recordings and streams: $(pick_h264_encoder || echo none)"
echo "fastest power mode (/etc/nvpmodel.conf): $(maxn_mode_id || echo unknown); now: $(current_power_mode || echo unknown)"
echo "done: try  .venv/bin/run_pipeline --demo"
