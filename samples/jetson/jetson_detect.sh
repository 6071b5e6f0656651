# What this Jetson has, for the scripts beside this file (sourced, not run):
#   pick_h264_encoder   the H.264 encoder for run_pipeline --encoder: nvv4l2h264enc only where the module
#                       has NVENC and a test encode works (the Orin Nano has no hardware encoder, although
#                       JetPack installs the element), else software: x264enc, then openh264enc
#   maxn_mode_id        the id of the module's fastest power mode in /etc/nvpmodel.conf (MAXN's id differs
#                       between modules; Orin Nano before the Super firmware has no MAXN)
#   current_power_mode  the id nvpmodel -q reports
# Overrides (tests, unusual images): MOEFUSION_DT_MODEL (the model
# file, default /proc/device-tree/model), MOEFUSION_DEV (the device folder, default /dev),
# MOEFUSION_NVPMODEL_CONF (default /etc/nvpmodel.conf). Messages go to stderr, answers to stdout.
# shellcheck shell=bash

jetson_model() {
    local f=${MOEFUSION_DT_MODEL:-/proc/device-tree/model}
    [ -r "$f" ] && tr -d '\0' <"$f"
}

have_gst_element() {
    gst-inspect-1.0 "$1" >/dev/null 2>&1
}

# NVENC: AGX Orin and Orin NX have it (its device nodes exist); the Orin Nano has none.
has_nvenc() {
    local module dev=${MOEFUSION_DEV:-/dev}
    module=$(jetson_model)
    case "$module" in
        *"Orin Nano"*) return 1 ;;
    esac
    [ -e "$dev/nvhost-msenc" ] || [ -e "$dev/v4l2-nvenc" ] || [ -e "$dev/nvhost-nvenc" ]
}

# A few frames through the encoder: the element existing is not enough.
test_encode() {
    local enc=$1 chain
    case "$enc" in
        nvv4l2h264enc) chain="nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc" ;;
        *) chain="videoconvert ! video/x-raw,format=I420 ! $enc" ;;
    esac
    # shellcheck disable=SC2086  # the chain is gst-launch arguments, split on purpose
    timeout 20 gst-launch-1.0 -q videotestsrc num-buffers=5 ! video/x-raw,width=320,height=240 ! \
        $chain ! fakesink >/dev/null 2>&1
}

pick_h264_encoder() {
    local module enc
    module=$(jetson_model)
    if have_gst_element nvv4l2h264enc; then
        if ! has_nvenc; then
            echo "encoder: ${module:-this machine} has no NVENC (hardware H.264 encoder); encoding in software" >&2
        elif test_encode nvv4l2h264enc; then
            echo nvv4l2h264enc
            return 0
        else
            echo "encoder: nvv4l2h264enc is installed but a test encode failed; encoding in software" >&2
        fi
    fi
    for enc in x264enc openh264enc; do
        if have_gst_element "$enc" && test_encode "$enc"; then
            echo "$enc"
            return 0
        fi
    done
    echo "encoder: no working H.264 encoder; install gstreamer1.0-plugins-ugly (x264enc)" >&2
    return 1
}

# /etc/nvpmodel.conf lists the modes as "< POWER_MODEL ID=0 NAME=MAXN >". The fastest: a MAXN mode
# (MAXN_SUPER before MAXN), else the highest wattage in the name (Orin Nano: 15W over 7W).
maxn_mode_id() {
    local conf=${MOEFUSION_NVPMODEL_CONF:-/etc/nvpmodel.conf}
    [ -r "$conf" ] || return 1
    awk '
        /<[ \t]*POWER_MODEL/ {
            id = ""; name = ""
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^ID=/) id = substr($i, 4)
                if ($i ~ /^NAME=/) name = substr($i, 6)
            }
            if (id == "") next
            score = 0
            if (toupper(name) ~ /MAXN_SUPER/) score = 100000
            else if (toupper(name) ~ /MAXN/) score = 90000
            else if (match(name, /[0-9]+W/)) score = substr(name, RSTART, RLENGTH - 1) + 0
            if (best == "" || score > best_score) { best = id; best_score = score }
        }
        END { if (best == "") exit 1; print best }
    ' "$conf"
}

current_power_mode() {
    nvpmodel -q 2>/dev/null | awk '/^[0-9]+$/ { id = $1 } END { if (id == "") exit 1; print id }'
}
