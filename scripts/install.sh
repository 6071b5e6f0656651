#!/usr/bin/env bash
# One-time set-up on Debian 12 / Ubuntu 22.04+: system packages (GStreamer, PyGObject build deps),
# a virtualenv in .venv and the project with its test and export extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}

# gstreamer1.0-x / -gl: the window sinks (xvimagesink, ximagesink, glimagesink) that run_pipeline
# chooses explicitly for display://; xvfb: an X server for the tests of the window output; the linter
# ShellCheck, for the tests of the shell scripts (samples/jetson); gstreamer1.0-python3-plugin-loader:
# gst-python's loader, which runs the moefusion GStreamer element (docs/runtime.md).
APT_PKGS="gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
 gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-x gstreamer1.0-gl gir1.2-gstreamer-1.0
 gir1.2-gst-plugins-base-1.0 libgirepository1.0-dev libcairo2-dev pkg-config python3-gst-1.0 python3-venv xvfb
 gstreamer1.0-python3-plugin-loader
 shellcheck"
missing=""
for p in $APT_PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "${missing// /}" ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing system packages: $missing"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

[ -x "$VENV/bin/python" ] || $PY -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null
# torch and torchvision must match; on x86_64 this pair is the one that imports together on CPU and GPU.
if ! "$VENV/bin/python" -c "import torch, torchvision" >/dev/null 2>&1; then
    if [ "$(uname -m)" = "x86_64" ]; then
        $PIP install -q torch==2.14.1 torchvision==0.29.1
    else
        $PIP install -q torch==2.9.1 torchvision==0.24.1
    fi
fi
$PIP install -q -e ".[dev,gstreamer,trt-rtx]"

# PyGObject from pip lacks GStreamer's Python overrides (GstFraction, Gst.Caps helpers):
# copy them from Debian's python3-gst-1.0.
SITE=$("$VENV/bin/python" -c "import gi, os; print(os.path.dirname(gi.__file__))")
for f in /usr/lib/python3/dist-packages/gi/overrides/Gst*.py /usr/lib/python3/dist-packages/gi/overrides/_gi_gst*.so; do
    [ -e "$f" ] && cp -f "$f" "$SITE/overrides/"
done

# The moefusion GStreamer element: linked where gst-python's loader (GStreamer 1.22) looks, so that
# gst-inspect-1.0 moefusion works in any shell (MOEFUSION_GST_LINK=0: no link; then set
# GST_PLUGIN_PATH=$PWD/moefusion/runtime/gstplugin). The loader runs the system's Python, which imports
# this virtualenv's packages: their Python versions must match.
if [ "${MOEFUSION_GST_LINK:-1}" != "0" ]; then
    GST_PY_DIR="$HOME/.gstreamer-1.0/plugins/python"
    mkdir -p "$GST_PY_DIR"
    ln -sfn "$PWD/moefusion/runtime/gstplugin/python/gstmoefusion.py" "$GST_PY_DIR/gstmoefusion.py"
    echo "moefusion GStreamer element linked into $GST_PY_DIR (gst-inspect-1.0 moefusion)"
fi
SYS_VER=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)
VENV_VER=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -n "$SYS_VER" ] && [ "$SYS_VER" != "$VENV_VER" ]; then
    echo "warning: $VENV has Python $VENV_VER but GStreamer's plugin loader runs the system's $SYS_VER: the moefusion" \
         "element will not import its packages; make the virtualenv with PYTHON=/usr/bin/python3" >&2
fi
touch "$VENV/.installed"
echo "set-up done: $VENV"
