#!/usr/bin/env bash
# Build the TensorRT engine ON THE JETSON that will run it (engines are specific to the TensorRT
# version and the GPU). Usage: samples/jetson/build_engine.sh [WEIGHTS.pt] [HxW] [OUT.engine]
# The build runs in the module's fastest power mode (MAXN where it has one: its id differs between
# modules, so it is read from /etc/nvpmodel.conf) with jetson_clocks; the previous power mode and
# clocks are put back when the script exits, however it exits. KEEP_POWER_MODE=1 leaves them alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=samples/jetson/jetson_detect.sh
. samples/jetson/jetson_detect.sh
W=${1:-moefusion/weights/moefusion_edge.pt}
HW=${2:-480x640}
# fp16 needs a strongly typed network: TensorRT >= 10 (JetPack 6.1+). JetPack 6.0 ships TensorRT 8.6,
# which gets an fp32 engine, said here (moefusion-export --half would refuse it with the same reason).
TRT_MAJOR=$(.venv/bin/python -c "import tensorrt; print(tensorrt.__version__.split('.')[0])")
if [ "$TRT_MAJOR" -ge 10 ]; then PREC=fp16; HALF=(--half); else
  PREC=fp32; HALF=(); echo "TensorRT $TRT_MAJOR.x (JetPack 6.0): building fp32; fp16 needs JetPack 6.1+ (TensorRT 10)" >&2; fi
OUT=${3:-engines/moefusion_edge_${HW}_${PREC}.engine}
mkdir -p "$(dirname "$OUT")"

# Full clocks while building: faster, and TensorRT times its tactics at the clocks they will run at.
CLOCKS_SAVED=""
PREV_MODE=""
restore_power() {
    if [ -n "$PREV_MODE" ]; then
        echo "power mode: back to $PREV_MODE" >&2
        sudo nvpmodel -m "$PREV_MODE" </dev/null >/dev/null || echo "power mode: could not restore $PREV_MODE (sudo nvpmodel -m $PREV_MODE)" >&2
    fi
    if [ -n "$CLOCKS_SAVED" ]; then
        sudo jetson_clocks --restore "$CLOCKS_SAVED" || true
        rm -f "$CLOCKS_SAVED"
    fi
}
if [ "${KEEP_POWER_MODE:-0}" != 1 ] && command -v nvpmodel >/dev/null; then
    MAXN=$(maxn_mode_id || true)
    NOW=$(current_power_mode || true)
    if [ -n "$MAXN" ] && [ -n "$NOW" ]; then
        trap restore_power EXIT
        trap 'exit 130' INT TERM  # through the EXIT trap
        CLOCKS_SAVED=$(mktemp)  # the clocks of the mode we found, stored before anything changes
        sudo jetson_clocks --store "$CLOCKS_SAVED" >/dev/null || { rm -f "$CLOCKS_SAVED"; CLOCKS_SAVED=""; }
        if [ "$MAXN" != "$NOW" ]; then
            echo "power mode: $NOW -> $MAXN (the fastest in /etc/nvpmodel.conf) for the build" >&2
            # </dev/null: a mode that needs a reboot asks for one; the answer is no (the build runs as it is)
            if sudo nvpmodel -m "$MAXN" </dev/null >/dev/null; then PREV_MODE=$NOW; fi
        fi
        [ -z "$CLOCKS_SAVED" ] || sudo jetson_clocks || true
    else
        echo "power mode: left as it is (no MAXN id in /etc/nvpmodel.conf or nvpmodel -q failed)" >&2
    fi
fi

# shellcheck disable=SC2086  # HxW -> two arguments H W
.venv/bin/moefusion-export --weights "$W" --format engine "${HALF[@]}" --imgsz ${HW/x/ } -o "$OUT"
echo "engine: $OUT (sidecar $OUT.json records TensorRT, GPU, precision, plugins)"
echo "run:    .venv/bin/run_pipeline --model $OUT --ir /dev/video1 --vis csi://0 --output display://0"
