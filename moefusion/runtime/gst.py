"""GStreamer: lazy import, element checks, and the launch strings (pure functions).

Every pipeline the runtime runs is a ``gst-launch-1.0``-style string built here from a parsed
URI and its options, logged at start, and unit-tested. Frames leave source pipelines through an
``appsink`` named ``sink`` and enter sink pipelines through an ``appsrc`` named ``src``.
"""
from __future__ import annotations

import logging
import os
import re

from ..errors import UserError
from . import jetson as jetsonmod
from .uri import FLIPS, StreamOptions, StreamURI, rate_fraction
from .yuv import COLORIMETRY as YUV_COLORIMETRY

log = logging.getLogger("moefusion.runtime")

# Element -> the package that provides it (Debian/Ubuntu names; JetPack for NVIDIA elements).
ELEMENT_PACKAGES = {
    "videotestsrc": "gstreamer1.0-plugins-base", "videoconvert": "gstreamer1.0-plugins-base",
    "videoscale": "gstreamer1.0-plugins-base", "videorate": "gstreamer1.0-plugins-base",
    "appsink": "gstreamer1.0-plugins-base", "appsrc": "gstreamer1.0-plugins-base",
    "decodebin": "gstreamer1.0-plugins-base", "uridecodebin": "gstreamer1.0-plugins-base",
    "filesrc": "gstreamer1.0 (core)", "filesink": "gstreamer1.0 (core)", "queue": "gstreamer1.0 (core)",
    "udpsink": "gstreamer1.0-plugins-good", "v4l2src": "gstreamer1.0-plugins-good",
    "videoflip": "gstreamer1.0-plugins-good", "jpegdec": "gstreamer1.0-plugins-good",
    "rtspsrc": "gstreamer1.0-plugins-good", "rtph264pay": "gstreamer1.0-plugins-good",
    "mp4mux": "gstreamer1.0-plugins-good", "qtmux": "gstreamer1.0-plugins-good",
    "matroskamux": "gstreamer1.0-plugins-good", "avimux": "gstreamer1.0-plugins-good",
    "splitmuxsink": "gstreamer1.0-plugins-good",
    "autovideosink": "gstreamer1.0-plugins-good", "x264enc": "gstreamer1.0-plugins-ugly",
    "xvimagesink": "gstreamer1.0-x", "ximagesink": "gstreamer1.0-x", "glimagesink": "gstreamer1.0-gl",
    "waylandsink": "gstreamer1.0-plugins-bad",
    "openh264enc": "gstreamer1.0-plugins-bad", "h264parse": "gstreamer1.0-plugins-bad",
    "rtspclientsink": "gstreamer1.0-rtsp", "avdec_h264": "gstreamer1.0-libav",
    "avdec_mpeg4": "gstreamer1.0-libav",
    "nvarguscamerasrc": "NVIDIA JetPack (nvidia-l4t-gstreamer; Jetson only)",
    "nvvidconv": "NVIDIA JetPack (nvidia-l4t-gstreamer; Jetson only)",
    "nvv4l2h264enc": "NVIDIA JetPack (nvidia-l4t-gstreamer; Jetson only)",
    "nvv4l2decoder": "NVIDIA JetPack (nvidia-l4t-gstreamer; Jetson only)",
    "nvjpegdec": "NVIDIA JetPack (nvidia-l4t-gstreamer; Jetson only)",
    "nv3dsink": "NVIDIA JetPack (nvidia-l4t-gstreamer; Jetson only)",
}

_GST = None
_GST_REASON = ""


def gst_disabled_by_env() -> bool:
    return os.environ.get("MOEFUSION_NO_GST", "").strip() not in ("", "0")


def import_gst():
    """Import and initialise GStreamer; returns the ``Gst`` module or None (reason in ``gst_reason()``)."""
    global _GST, _GST_REASON
    if _GST is not None:
        return _GST
    if gst_disabled_by_env():
        _GST_REASON = "disabled by MOEFUSION_NO_GST"
        return None
    _preload_libgcc_s()
    try:
        import gi

        gi.require_version("Gst", "1.0")
        gi.require_version("GstApp", "1.0")
        gi.require_version("GstVideo", "1.0")
        from gi.repository import Gst, GstApp, GstVideo  # noqa: F401

        if not Gst.init_check(None):
            _GST_REASON = "Gst.init_check failed"
            return None
        _ = Gst.Fraction  # the Gst overrides (GstFraction) must be there to read caps
    except (ImportError, ValueError, AttributeError) as e:
        _GST_REASON = f"PyGObject/GStreamer not importable ({e}); install python3-gst-1.0 and PyGObject"
        return None
    _GST = Gst
    return Gst


def _preload_libgcc_s() -> None:
    """Put libgcc_s in the global symbol scope before GStreamer loads libunwind.

    libgstreamer links libunwind, which also exports ``_Unwind_Resume``; once gi has loaded it
    (RTLD_GLOBAL), C++ libraries loaded later (PyTorch) can bind their exception unwinding to
    libunwind's and abort on the first C++ exception (seen here: ``torch.jit.trace`` and
    ``torch.onnx.export`` crash after ``cv2`` + ``Gst.init``). With libgcc_s first in the global
    scope, those symbols resolve to it.
    """
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libgcc_s.so.1", mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass


def gst_reason() -> str:
    return _GST_REASON


def have_gst() -> bool:
    return import_gst() is not None


def element_exists(name: str) -> bool:
    Gst = import_gst()
    return Gst is not None and Gst.ElementFactory.find(name) is not None


def launch_elements(launch: str) -> list[str]:
    """Element factory names in a launch string (caps filters and bin references skipped)."""
    names = []
    for part in _split_links(launch):
        tok = part.strip().split(None, 1)
        if not tok:
            continue
        first = tok[0]
        if any(c in first for c in "/.=,("):
            continue  # caps (video/x-raw,...), a pad reference (sink.), or a property only
        names.append(first)
    return names


def _split_links(launch: str) -> list[str]:
    """Split on '!' outside double quotes."""
    parts, cur, quoted = [], [], False
    for ch in launch:
        if ch == '"':
            quoted = not quoted
        if ch == "!" and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def check_elements(launch: str, what: str, fix_hint: str = "") -> None:
    """Raise a one-line UserError naming the first missing element and the package providing it."""
    if import_gst() is None:
        raise UserError(f"{what} needs GStreamer, which is not available: {gst_reason()}")
    for name in launch_elements(launch):
        if not element_exists(name):
            pkg = ELEMENT_PACKAGES.get(name, "the GStreamer plugin package that provides it")
            hint = f"; {fix_hint}" if fix_hint else ""
            raise UserError(f"{what} needs the GStreamer element '{name}', which is not installed: install {pkg}{hint}")


def quote(value) -> str:
    """Quote a property value for a launch string when needed."""
    s = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./:+@%-]+", s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _props(params) -> str:
    return "".join(f" {k}={quote(v)}" for k, v in params)


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------

def appsink_format(role: str, opts: StreamOptions, yuv: bool = False) -> str:
    """What the capture hands to Python: IR is gray (16-bit kept for radiometric cameras); VIS is BGR
    unless the camera itself is gray, or with ``yuv`` I420 in BT.601 limited range (the pipeline's
    fast path, see yuv.py)."""
    fmt = opts.format
    if role == "ir":
        return "GRAY16_LE" if fmt == "GRAY16_LE" else "GRAY8"
    if fmt in ("GRAY8", "GRAY16_LE"):
        return fmt
    return "I420" if yuv else "BGR"


def format_caps(fmt: str) -> str:
    """``video/x-raw,format=FMT``, with the colorimetry the I420 fast path assumes."""
    return f"video/x-raw,format={fmt}" + (f",colorimetry={YUV_COLORIMETRY}" if fmt == "I420" else "")


def _raw_caps(fmt: str | None, opts: StreamOptions, media: str = "video/x-raw") -> str:
    fields = [media]
    if fmt:
        fields.append(f"format={fmt}")
    if opts.width:
        fields.append(f"width={opts.width}")
    if opts.height:
        fields.append(f"height={opts.height}")
    if opts.rate:
        fields.append(f"framerate={rate_fraction(opts.rate)}")
    return ",".join(fields)


def _tail(role: str, opts: StreamOptions, *, scale: bool, live: bool, sync: bool, yuv: bool = False) -> str:
    """videoconvert [! scale] [! flip] ! <appsink caps> ! appsink."""
    parts = ["videoconvert"]
    final = format_caps(appsink_format(role, opts, yuv))
    flip = opts.flip and opts.flip != "none"
    if scale and (opts.width or opts.height):
        dims = ",".join(f for f in (f"width={opts.width}" if opts.width else "",
                                    f"height={opts.height}" if opts.height else "") if f)
        parts.append("videoscale")
        if flip:
            parts.append(f"video/x-raw,{dims}")
        else:  # one caps filter: two in a row do not parse
            final += f",{dims}"
    if flip:
        parts.append(f"videoflip video-direction={FLIPS[opts.flip][0]}")
        parts.append("videoconvert")
    parts.append(final)
    parts.append(appsink_launch(live=live, sync=sync))
    return " ! ".join(parts)


def appsink_launch(*, live: bool, sync: bool = False) -> str:
    """Live sources: a short leaky appsink (drops are seen as gaps in buffer offsets and counted);
    files: back-pressure, nothing dropped."""
    if live:
        return f"appsink name=sink max-buffers=2 drop=true sync={str(sync).lower()} enable-last-sample=false"
    return f"appsink name=sink max-buffers=4 drop=false sync={str(sync).lower()} enable-last-sample=false"


# MJPEG decoders: a camera's image/jpeg to system-memory video/x-raw (videoconvert follows). On a
# Jetson the JPEG engine (NVJPG) through nvv4l2decoder, or nvjpegdec; elsewhere libjpeg on the CPU.
MJPEG_DECODERS = {
    "nvv4l2decoder": "nvv4l2decoder mjpeg=1 ! nvvidconv ! video/x-raw",
    "nvjpegdec": "nvjpegdec ! video/x-raw",
    "jpegdec": "jpegdec",
}


def pick_mjpeg_decoder(*, jetson: bool, has_element, forced: str | None = None) -> str:
    """The MJPEG decoder (a key of ``MJPEG_DECODERS``): ``forced`` (MOEFUSION_MJPEG_DECODER) as it
    is; on a Jetson ``nvv4l2decoder`` (with ``nvvidconv``) or else ``nvjpegdec`` where the element
    exists (``has_element(name) -> bool``); otherwise ``jpegdec``."""
    if forced:
        if forced not in MJPEG_DECODERS:
            raise UserError(f"MOEFUSION_MJPEG_DECODER={forced}: use one of {', '.join(MJPEG_DECODERS)}")
        return forced
    if jetson:
        if has_element("nvv4l2decoder") and has_element("nvvidconv"):
            return "nvv4l2decoder"
        if has_element("nvjpegdec"):
            return "nvjpegdec"
    return "jpegdec"


_SAID_MJPEG: set[str] = set()


def choose_mjpeg_decoder(facts: jetsonmod.JetsonFacts | None = None, has_element=None) -> str:
    """``pick_mjpeg_decoder`` with this machine's facts; the choice is logged (once per process)."""
    facts = jetsonmod.read_facts() if facts is None else facts
    forced = os.environ.get("MOEFUSION_MJPEG_DECODER", "").strip() or None
    name = pick_mjpeg_decoder(jetson=facts.is_jetson, has_element=has_element or element_exists, forced=forced)
    if forced:
        why = "forced by MOEFUSION_MJPEG_DECODER"
    elif name != "jpegdec":
        why = f"hardware JPEG decode on {facts.name}"
    elif facts.is_jetson:
        why = f"on the CPU: neither nvv4l2decoder (with nvvidconv) nor nvjpegdec is installed on {facts.name}"
    else:
        why = "on the CPU"
    msg = f"MJPG camera decoder: {name} ({why})"
    if msg not in _SAID_MJPEG:
        _SAID_MJPEG.add(msg)
        log.info("%s", msg)
    return name


def source_launch(uri: StreamURI, opts: StreamOptions, role: str, *, sync: bool = False, yuv: bool = False,
                  mjpeg_decoder: str | None = None) -> str:
    """The capture pipeline for a source URI (not for image sequences, which are read directly).

    ``sync=True`` paces a file at its own frame rate (used when a file is paired with a live camera).
    ``yuv=True``: a colour VIS stream is delivered as I420 (see ``appsink_format``).
    ``mjpeg_decoder``: a key of ``MJPEG_DECODERS`` for MJPG cameras; None: ``choose_mjpeg_decoder()``.
    """
    live = uri.is_live or sync
    if uri.kind == "v4l2":
        fmt = opts.format
        if fmt == "MJPG":
            dec = MJPEG_DECODERS[mjpeg_decoder or choose_mjpeg_decoder()]
            head = f"v4l2src device={quote(uri.location)}{_props(uri.params)} ! {_raw_caps(None, opts, 'image/jpeg')} ! {dec}"
        else:
            caps = _raw_caps(fmt, opts)
            head = f"v4l2src device={quote(uri.location)}{_props(uri.params)}"
            if caps != "video/x-raw":
                head += f" ! {caps}"
        return f"{head} ! {_tail(role, opts, scale=False, live=True, sync=False, yuv=yuv)}"
    if uri.kind == "csi":
        w, h, r = opts.width or 1280, opts.height or 720, opts.rate or 30
        flip = FLIPS[opts.flip or "none"][1]
        out = appsink_format(role, opts, yuv)
        conv = {"GRAY8": "video/x-raw,format=GRAY8",
                "I420": f"video/x-raw,format=I420 ! videoconvert ! {format_caps('I420')}"}.get(
            out, "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR")
        return (f"nvarguscamerasrc sensor-id={uri.location}{_props(uri.params)} ! "
                f"video/x-raw(memory:NVMM),width={w},height={h},framerate={rate_fraction(r)},format=NV12 ! "
                f"nvvidconv flip-method={flip} ! {conv} ! {appsink_launch(live=True)}")
    if uri.kind == "rtsp":
        params = dict(uri.params)
        params.setdefault("latency", "200")
        props = _props(params.items())
        return (f"rtspsrc location={quote(uri.location)}{props} ! decodebin ! "
                f"{_tail(role, opts, scale=True, live=True, sync=False, yuv=yuv)}")
    if uri.kind == "file":
        head = f"filesrc location={quote(uri.location)} ! decodebin"
        tail = _tail(role, opts, scale=True, live=live, sync=sync, yuv=yuv)
        if opts.rate:
            tail = tail.replace("videoconvert", f"videorate ! video/x-raw,framerate={rate_fraction(opts.rate)} ! videoconvert", 1)
        return f"{head} ! {tail}"
    if uri.kind == "test":
        params = dict(uri.params)
        params.setdefault("is-live", "true")
        is_live = str(params["is-live"]).lower() in ("true", "1", "yes")
        w, h, r = opts.width or 640, opts.height or 480, opts.rate or 30
        fmt = opts.format if opts.format not in (None, "MJPG") else None
        caps = f"video/x-raw,{'format=' + fmt + ',' if fmt else ''}width={w},height={h},framerate={rate_fraction(r)}"
        nocaps = StreamOptions(format=opts.format, flip=opts.flip)
        return (f"videotestsrc pattern={uri.location}{_props(params.items())} ! {caps} ! "
                f"{_tail(role, nocaps, scale=False, live=is_live, sync=False, yuv=yuv)}")
    raise ValueError(f"no GStreamer source for kind {uri.kind!r}")
