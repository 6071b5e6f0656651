"""GStreamer launch strings of the outputs (pure functions, unit-tested and logged): encoders,
crash-safe file muxing and segments, RTP/UDP and RTSP streams, window sinks and their choice."""
from __future__ import annotations

import logging
import os
import platform

from ...errors import UserError
from .. import jetson as jetsonmod
from ..gst import ELEMENT_PACKAGES, element_exists, format_caps, gst_reason, import_gst, launch_elements, quote
from ..uri import rate_fraction

log = logging.getLogger("moefusion.runtime")

MUXERS = {".mp4": "mp4mux", ".mov": "qtmux", ".mkv": "matroskamux", ".avi": "avimux"}

# Crash safety (kill -9, a power cut): MP4/MOV are fragmented (a moof every FRAGMENT_MS, readable
# without the index written at EOS); Matroska and AVI are readable up to the last complete frame
# as they are. filesink writes every buffer through at once (no 64 KiB stdio buffer lost on a kill).
FRAGMENT_MS = 1000
MUXER_PROPS = {"mp4mux": f"fragment-duration={FRAGMENT_MS}", "qtmux": f"fragment-duration={FRAGMENT_MS}"}
FILESINK_PROPS = "buffer-mode=unbuffered"
# the same inside splitmuxsink's sink-properties structure, where an enum must be given as its number
SPLITMUX_SINK_PROPS = "properties,buffer-mode=2"

# H.264 encoder chains, best first. Each is (name, elements after the BGR appsrc, for file / stream).
ENCODERS = {
    "nvv4l2h264enc": ("videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! "
                      "nvv4l2h264enc bitrate={bitrate} iframeinterval={gop} idrinterval={gop} insert-sps-pps=true "
                      "! h264parse"),
    "x264enc": ("videoconvert ! video/x-raw,format=I420 ! x264enc speed-preset=ultrafast tune=zerolatency "
                "bitrate={kbitrate} key-int-max={gop} ! h264parse"),
    "openh264enc": ("videoconvert ! video/x-raw,format=I420 ! openh264enc bitrate={bitrate} gop-size={gop} "
                    "complexity=low ! h264parse"),
}


def appsrc_caps(width: int, height: int, fps: float, fmt: str = "BGR") -> str:
    """The caps of the frames pushed into a sink pipeline (BGR, or I420 from the fast path). Rows in
    the buffers must have GStreamer's strides for them (BGR: 3 * width rounded up to 4 bytes), see
    ``GstSink``."""
    return f"{format_caps(fmt)},width={width},height={height},framerate={rate_fraction(fps)}"


def appsrc_launch(width: int, height: int, fps: float, fmt: str = "BGR") -> str:
    """Frames in: timestamps set by the writer; blocking with a small queue so a slow sink
    back-pressures the loop (where drops are counted) rather than dropping silently here."""
    return (f"appsrc name=src is-live=false format=time block=true max-bytes={width * height * 3 * 3} "
            f"caps={appsrc_caps(width, height, fps, fmt)}")


HARDWARE_ENCODERS = ("nvv4l2h264enc",)  # need NVENC, not only the element (an Orin Nano has the element, no NVENC)


def pick_encoder(preferred: str | None = None, *, has_element=None, facts: jetsonmod.JetsonFacts | None = None) -> str | None:
    """The H.264 encoder chain to use (None if none can be): ``preferred`` if its elements exist;
    else (auto) the first of ``ENCODERS`` whose elements all exist, nvv4l2h264enc only where the
    module has NVENC (``facts.has_nvenc``, see jetson.py; the same rule as samples/jetson/
    jetson_detect.sh). ``has_element(name) -> bool`` and ``facts`` default to this machine's; the
    choice is logged."""
    has_element = has_element or element_exists

    def available(name: str) -> bool:
        chain = ENCODERS.get(name)
        return bool(chain) and all(has_element(e) for e in launch_elements(chain.format(bitrate=1, kbitrate=1, gop=1)))

    if preferred:
        if not available(preferred):
            return None
        if preferred in HARDWARE_ENCODERS:
            facts = jetsonmod.read_facts() if facts is None else facts
            if not facts.has_nvenc:
                log.warning("--encoder %s: %s has no NVENC (hardware H.264 encoder) that this can find; "
                            "if encoding fails, use --encoder auto (x264enc)", preferred, facts.name)
        return preferred
    skipped = ""
    for name in ENCODERS:
        if not available(name):
            continue
        if name in HARDWARE_ENCODERS:
            facts = jetsonmod.read_facts() if facts is None else facts
            if not facts.has_nvenc:
                skipped = f"; {name} is installed but {facts.name} has no NVENC (hardware H.264 encoder)"
                continue
        log.info("H.264 encoder: %s (--encoder auto%s)", name, skipped)
        return name
    if skipped:
        log.warning("no software H.264 encoder%s: install gstreamer1.0-plugins-ugly (x264enc)", skipped)
    return None


def keyframe_interval(fps: float) -> int:
    """Frames between key frames: about one second at the real output rate (a receiver joining a
    stream, or a player seeking in a recording, waits at most that long)."""
    return max(1, int(round(fps)))


def encoder_chain(name: str, *, width: int, height: int, fps: float) -> str:
    bitrate = int(min(20e6, max(2e6, width * height * fps * 0.15)))  # ~0.15 bit/pixel, 2 Mbit/s at least
    return ENCODERS[name].format(bitrate=bitrate, kbitrate=bitrate // 1000, gop=keyframe_interval(fps))


def segment_pattern(path: str) -> str:
    """splitmuxsink's printf location for ``--segment``: out.mp4 -> out_%05d.partial.mp4 (each
    segment is renamed to out_00000.mp4 ... once it is complete)."""
    root, ext = os.path.splitext(path)
    return f"{root.replace('%', '%%')}_%05d.partial{ext}"


def file_sink_launch(path: str, width: int, height: int, fps: float, encoder: str, *,
                     segment_s: float = 0.0, start_index: int = 0, fmt: str = "BGR") -> str:
    """Encode to a crash-safe file (see MUXER_PROPS); ``segment_s > 0``: a new file every
    ``segment_s`` seconds (splitmuxsink, split at a key frame it requests), ``path`` then being
    ``segment_pattern(...)``-style and numbered from ``start_index``."""
    ext = os.path.splitext(path)[1].lower()
    mux = MUXERS.get(ext, "mp4mux")
    head = f"{appsrc_launch(width, height, fps, fmt)} ! {encoder_chain(encoder, width=width, height=height, fps=fps)}"
    if segment_s > 0:
        mprops = MUXER_PROPS.get(mux)
        mp = f" muxer-properties={quote('properties,' + mprops.replace(' ', ','))}" if mprops else ""
        return (f"{head} ! splitmuxsink name=mux location={quote(path)} max-size-time={int(segment_s * 1e9)} "
                f"send-keyframe-requests=true start-index={start_index} async-finalize=true "
                f"muxer-factory={mux}{mp} sink-factory=filesink "
                f"sink-properties={quote(SPLITMUX_SINK_PROPS)}")
    mprops = f" {MUXER_PROPS[mux]}" if mux in MUXER_PROPS else ""
    return f"{head} ! {mux}{mprops} ! filesink location={quote(path)} {FILESINK_PROPS}"


def udp_sink_launch(host: str, port: int, width: int, height: int, fps: float, encoder: str, fmt: str = "BGR") -> str:
    return (f"{appsrc_launch(width, height, fps, fmt)} ! {encoder_chain(encoder, width=width, height=height, fps=fps)} ! "
            f"rtph264pay config-interval=1 pt=96 ! udpsink host={quote(host)} port={port} sync=false async=false")


def rtsp_sink_launch(location: str, width: int, height: int, fps: float, encoder: str, fmt: str = "BGR") -> str:
    return (f"{appsrc_launch(width, height, fps, fmt)} ! {encoder_chain(encoder, width=width, height=height, fps=fps)} ! "
            f"rtspclientsink location={quote(location)}")


# Window sinks, chosen explicitly (autovideosink can fall through to kmssink/fbdevsink when no X
# video sink is installed, and those crash or grab the console). Best first for each environment.
DISPLAY_SINKS_JETSON = ("nv3dsink",)
DISPLAY_SINKS_WAYLAND = ("waylandsink", "glimagesink")
DISPLAY_SINKS_X11 = ("xvimagesink", "glimagesink", "ximagesink")


def display_sink_candidates(*, x11: bool, wayland: bool, jetson: bool, forced: str | None = None) -> list[str]:
    """The window sinks to try, best first: ``forced`` (MOEFUSION_DISPLAY_SINK) alone; else nv3dsink
    on a Jetson, waylandsink under Wayland, xvimagesink (XVideo), glimagesink, ximagesink under X."""
    if forced:
        return [forced]
    out = list(DISPLAY_SINKS_JETSON) if jetson else []
    if wayland:
        out += DISPLAY_SINKS_WAYLAND
    if x11:
        out += DISPLAY_SINKS_X11
    return list(dict.fromkeys(out))


def display_sink_launch(width: int, height: int, fps: float, sink: str = "xvimagesink", fmt: str = "BGR") -> str:
    return f"{appsrc_launch(width, height, fps, fmt)} ! videoconvert ! {sink} sync=false"


def probe_sink(name: str) -> str | None:
    """Bring a sink element to READY (where X/Wayland sinks open the display) in a pipeline of its
    own and back to NULL: None when it works, else why not (one short phrase)."""
    Gst = import_gst()
    if Gst is None:
        return gst_reason()
    if not element_exists(name):
        return f"not installed ({ELEMENT_PACKAGES.get(name, 'its plugin package')})"
    pipe = Gst.Pipeline.new(f"probe-{name}")
    el = Gst.ElementFactory.make(name, None)
    pipe.add(el)
    try:
        ret = pipe.set_state(Gst.State.READY)
        msg = pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
        if ret == Gst.StateChangeReturn.FAILURE or msg is not None:
            if msg is not None:
                err, _ = msg.parse_error()
                return err.message.rstrip(".")
            return "cannot start"
        return None
    finally:
        pipe.set_state(Gst.State.NULL)


def choose_display_sink(what: str) -> str:
    """The first window sink that reaches READY here (see ``display_sink_candidates``); a one-line
    UserError naming what was tried and why each failed, and the fix, when none does."""
    env = os.environ
    if env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env.setdefault("GST_GL_WINDOW", "x11")  # glimagesink: X only (no EGL/Wayland probing and its noise)
    cands = display_sink_candidates(x11=bool(env.get("DISPLAY")), wayland=bool(env.get("WAYLAND_DISPLAY")),
                                    jetson=platform.machine() == "aarch64" and element_exists("nv3dsink"),
                                    forced=env.get("MOEFUSION_DISPLAY_SINK") or None)
    tried = []
    for name in cands:
        why = probe_sink(name)
        if why is None:
            log.info("%s: window sink %s", what, name)
            return name
        tried.append(f"{name}: {why}")
    where = ", ".join(f"{k}={env[k]}" for k in ("DISPLAY", "WAYLAND_DISPLAY") if env.get(k)) or "no DISPLAY"
    raise UserError(f"{what}: no window can be opened ({where}; tried {'; '.join(tried) or 'nothing'}); install "
                    "gstreamer1.0-x and gstreamer1.0-gl, check the display (xdpyinfo), or use --output "
                    "file://out.mp4, udp://HOST:PORT or none")


def udp_receiver_hint(port: int) -> str:
    return (f"gst-launch-1.0 udpsrc port={port} caps=\"application/x-rtp,media=video,encoding-name=H264,payload=96\" "
            f"! rtph264depay ! avdec_h264 ! videoconvert ! autovideosink sync=false")

