"""Stream URIs and per-stream options, after jetson-utils' videoSource/videoOutput.

Inputs (``--ir`` / ``--vis``):

=============================  ==========  ===================================================
URI                            kind        notes
=============================  ==========  ===================================================
``/dev/video0``                ``v4l2``    V4L2 camera (USB/UVC, thermal cores)
``v4l2:///dev/video0``         ``v4l2``    same; ``v4l2://0`` is short for ``/dev/video0``
``csi://0``                    ``csi``     MIPI CSI camera through nvarguscamerasrc (Jetson)
``rtsp://host:554/path``       ``rtsp``    network camera (``rtsps://`` too)
``file:///abs/clip.mp4``       ``file``    video file through decodebin; a plain path works too
``file://frames/`` or a glob   ``images``  image folder / glob / single image, read at ``--*-rate``
``test://ball``                ``test``    videotestsrc pattern (live, like a camera)
=============================  ==========  ===================================================

A query string sets properties of the source element, e.g. ``test://ball?num-buffers=90`` or
``/dev/video0?io-mode=2``; for an image sequence, nothing.

Outputs (``--output``): ``display://0``, ``file://out.mp4`` or a plain path (``.mp4 .mkv .mov .avi``),
``rtsp://server:8554/path`` (pushed to an RTSP server), ``udp://host:port`` (RTP/H.264), ``none``.

Everything here is pure: no GStreamer, no file access beyond ``os.path`` checks that decide
between a video file and an image sequence.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from urllib.parse import parse_qsl, urlsplit

from ..errors import UserError
from ..files import IMAGE_EXTS
from . import argtypes

VIDEO_EXTS = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mpg", ".mpeg", ".h264", ".h265",
              ".264", ".265", ".ogv", ".flv", ".y4m")
OUTPUT_EXTS = (".mp4", ".mkv", ".mov", ".avi")

INPUT_KINDS = ("v4l2", "csi", "rtsp", "file", "images", "test")
LIVE_KINDS = ("v4l2", "csi", "rtsp", "test")
OUTPUT_KINDS = ("display", "file", "rtsp", "udp", "none")

INPUT_HELP = "/dev/videoN, v4l2:///dev/videoN, csi://N, rtsp://..., file://PATH or a path (video, image folder or glob), test://PATTERN"
OUTPUT_HELP = "display://0, file://out.mp4 (or a path ending .mp4/.mkv/.mov/.avi), rtsp://server:port/path, udp://host:port, none"

# videotestsrc patterns (GStreamer 1.22); numbers are accepted too.
TEST_PATTERNS = ("smpte", "snow", "black", "white", "red", "green", "blue", "checkers-1", "checkers-2",
                 "checkers-4", "checkers-8", "circular", "blink", "smpte75", "zone-plate", "gamut",
                 "chroma-zone-plate", "solid-color", "ball", "smpte100", "bar", "pinwheel", "spokes",
                 "gradient", "colors", "smpte-rp-219")

# Pixel formats a source may be asked for (GStreamer names); aliases users type map onto them.
FORMAT_ALIASES = {
    "GRAY8": "GRAY8", "GREY": "GRAY8", "GRAY": "GRAY8", "Y8": "GRAY8", "Y800": "GRAY8",
    "GRAY16_LE": "GRAY16_LE", "GRAY16": "GRAY16_LE", "Y16": "GRAY16_LE", "Y16_LE": "GRAY16_LE",
    "YUY2": "YUY2", "YUYV": "YUY2", "UYVY": "UYVY", "NV12": "NV12", "I420": "I420",
    "BGR": "BGR", "RGB": "RGB", "BGRX": "BGRx", "RGBX": "RGBx",
    "MJPG": "MJPG", "MJPEG": "MJPG", "JPEG": "MJPG",
}
FORMATS = tuple(sorted(set(FORMAT_ALIASES.values())))

# --*-flip values -> videoflip's video-direction (its older "method" property is ignored by
# GStreamer 1.22 when set from a launch string) and nvvidconv's flip-method numbers.
FLIPS = {
    "none": ("identity", 0),
    "horizontal": ("horiz", 4),
    "vertical": ("vert", 6),
    "rotate-180": ("180", 2),
    "rotate-90": ("90r", 3),
    "rotate-270": ("90l", 1),
}


@dataclass(frozen=True)
class StreamURI:
    """A parsed stream URI. ``location`` is a device path, file path, glob, URL, pattern or sensor id."""

    kind: str
    location: str
    raw: str
    params: tuple = ()  # ((key, value), ...) from the query string, in order
    host: str = ""
    port: int = 0

    @property
    def is_live(self) -> bool:
        """Frames keep coming at their own pace (cameras, streams, live test patterns)."""
        return self.kind in LIVE_KINDS and not self._test_not_live

    @property
    def is_finite(self) -> bool:
        """Read as fast as consumed, completely, ending at EOS (files; test://...?is-live=false)."""
        return self.kind in ("file", "images") or self._test_not_live

    @property
    def _test_not_live(self) -> bool:
        return self.kind == "test" and dict(self.params).get("is-live", "true").lower() in ("false", "0", "no")

    def describe(self) -> str:
        return f"{self.kind}:{self.location}"


@dataclass
class StreamOptions:
    """Per-stream options; the CLI spells them ``--ir-width`` ... and ``--vis-width`` ...."""

    width: int | None = None
    height: int | None = None
    rate: float | None = None
    format: str | None = None
    flip: str = "none"
    loop: int = 0  # 0: play once; N > 0: N extra times; -1: forever

    FIELDS = ("width", "height", "rate", "format", "flip", "loop")

    def validate(self, flag_prefix: str) -> "StreamOptions":
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise UserError(f"--{flag_prefix}-{name} must be a positive number of pixels, got {v}")
        if self.rate is not None and not self.rate > 0:
            raise UserError(f"--{flag_prefix}-rate must be a positive frame rate in Hz, got {self.rate}")
        if self.format is not None:
            self.format = normalize_format(self.format, f"--{flag_prefix}-format")
        if self.flip not in FLIPS:
            raise UserError(f"--{flag_prefix}-flip {self.flip!r} is not one of: {', '.join(FLIPS)}")
        if self.loop < -1:
            raise UserError(f"--{flag_prefix}-loop must be -1 (forever), 0 or a positive count, got {self.loop}")
        return self

    @classmethod
    def from_args(cls, args: argparse.Namespace, prefix: str) -> "StreamOptions":
        kw = {f: getattr(args, f"{prefix}_{f}") for f in cls.FIELDS}
        kw["flip"] = kw["flip"] or "none"
        kw["loop"] = kw["loop"] or 0
        return cls(**kw).validate(prefix)


def add_stream_args(parser: argparse.ArgumentParser, prefix: str, what: str) -> None:
    """Add ``--PREFIX`` (the URI) and ``--PREFIX-width/-height/-rate/-format/-flip/-loop``."""
    g = parser.add_argument_group(f"{what} stream (--{prefix}-*)")
    g.add_argument(f"--{prefix}", metavar="URI", help=f"{what} source: {INPUT_HELP}")
    g.add_argument(f"--{prefix}-width", type=argtypes.pixels, metavar="PX",
                   help=f"capture width (cameras) / scale to (files); 1-{argtypes.MAX_PIXELS}")
    g.add_argument(f"--{prefix}-height", type=argtypes.pixels, metavar="PX",
                   help=f"capture height (cameras) / scale to (files); 1-{argtypes.MAX_PIXELS}")
    g.add_argument(f"--{prefix}-rate", type=argtypes.rate_hz, metavar="HZ",
                   help=f"frame rate: camera mode; image sequences are timed at this rate (default 30; "
                        f"0 < HZ <= {argtypes.MAX_RATE_HZ:g})")
    g.add_argument(f"--{prefix}-format", metavar="FMT",
                   help="camera pixel format: GRAY8, GRAY16_LE (Y16, radiometric thermal), YUY2, MJPG, NV12, ...")
    g.add_argument(f"--{prefix}-flip", choices=list(FLIPS), help="flip/rotate the stream (camera mounting)")
    g.add_argument(f"--{prefix}-loop", type=argtypes.loop_count, nargs="?", const=-1, default=0, metavar="N",
                   help="file sources: play N (>= 0) more times (no N: forever)")


def normalize_format(fmt: str, flag: str = "--format") -> str:
    key = fmt.strip().upper().replace("-", "_")
    if key not in FORMAT_ALIASES:
        raise UserError(f"{flag} {fmt!r} is not a known pixel format; use one of: {', '.join(FORMATS)}")
    return FORMAT_ALIASES[key]


def rate_fraction(rate: float) -> str:
    """A frame rate as a GStreamer fraction string: 30 -> '30/1', 7.5 -> '15/2', 29.97 -> '30000/1001'."""
    if abs(rate * 1001 / 1000 - round(rate * 1001 / 1000)) < 1e-3 and abs(rate - round(rate)) > 1e-3:
        return f"{round(rate * 1001 / 1000) * 1000}/1001"
    f = Fraction(rate).limit_denominator(1000)
    return f"{f.numerator}/{f.denominator}"


_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$")
_GLOB_CHARS = set("*?[")


def _split_query(rest: str) -> tuple[str, tuple]:
    if "?" not in rest:
        return rest, ()
    loc, q = rest.split("?", 1)
    params = tuple(parse_qsl(q, keep_blank_values=True))
    for k, _ in params:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", k):
            raise UserError(f"bad property name {k!r} in URI query ?{q}; use ?property=value&...")
    return loc, params


def _path_kind(path: str, flag: str, raw: str) -> str:
    """Video file or image sequence, from the path (existence is checked when the stream opens)."""
    if any(c in path for c in _GLOB_CHARS):
        return "images"
    if os.path.isdir(path) or path.endswith("/"):
        return "images"
    if path.lower().endswith(IMAGE_EXTS):
        return "images"
    return "file"


def parse_input_uri(uri: str | None, flag: str = "--input") -> StreamURI:
    """Parse a source URI (see the module docstring). Raises UserError naming ``flag``."""
    if uri is None or not str(uri).strip():
        raise UserError(f"{flag} is missing; give a source URI: {INPUT_HELP}")
    raw = str(uri).strip()
    m = _SCHEME_RE.match(raw)
    if not m:  # a plain path: /dev/videoN, a video file, a folder or a glob
        loc, params = _split_query(raw) if raw.startswith("/dev/video") else (raw, ())
        if re.fullmatch(r"/dev/video\d+", loc):
            return StreamURI("v4l2", loc, raw, params)
        if loc.startswith("/dev/"):
            return StreamURI("v4l2", loc, raw, params)
        return StreamURI(_path_kind(loc, flag, raw), loc, raw)
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "v4l2":
        loc, params = _split_query(rest)
        if re.fullmatch(r"\d+", loc):
            loc = f"/dev/video{loc}"
        if not loc.startswith("/"):  # /dev/videoN, or a udev link such as /dev/v4l/by-id/...
            raise UserError(f"{flag} {raw}: expected v4l2:///dev/videoN (or v4l2://N)")
        return StreamURI("v4l2", loc, raw, params)
    if scheme == "csi":
        loc, params = _split_query(rest)
        if not re.fullmatch(r"\d+", loc):
            raise UserError(f"{flag} {raw}: expected csi://N with N the sensor id (csi://0)")
        return StreamURI("csi", loc, raw, params)
    if scheme in ("rtsp", "rtsps", "rtspt"):
        if not urlsplit(raw).hostname:
            raise UserError(f"{flag} {raw}: an RTSP URI needs a host, e.g. rtsp://192.168.1.10:554/stream")
        return StreamURI("rtsp", raw, raw)
    if scheme == "file":
        loc = rest
        if not loc:
            raise UserError(f"{flag} {raw}: file:// needs a path, e.g. file://clip.mp4 or file:///data/frames/")
        return StreamURI(_path_kind(loc, flag, raw), loc, raw)
    if scheme == "test":
        loc, params = _split_query(rest)
        loc = loc.strip("/") or "smpte"
        if loc not in TEST_PATTERNS and not loc.isdigit():
            raise UserError(f"{flag} {raw}: unknown test pattern {loc!r}; use one of: {', '.join(TEST_PATTERNS)}")
        return StreamURI("test", loc, raw, params)
    raise UserError(f"{flag} {raw}: unknown URI scheme '{scheme}://'; use {INPUT_HELP}")


def parse_output_uri(uri: str | None, flag: str = "--output") -> StreamURI:
    """Parse a sink URI: display://N, file://out.mp4 or a path, rtsp://..., udp://host:port, none."""
    raw = (uri or "none").strip()
    if raw.lower() in ("none", "null", "null://", "none://"):
        return StreamURI("none", "", raw)
    m = _SCHEME_RE.match(raw)
    if m:
        scheme, rest = m.group(1).lower(), m.group(2)
    elif raw.lower() == "display":
        scheme, rest = "display", "0"
    else:
        scheme, rest = "file", raw
    if scheme == "display":
        loc = rest.strip("/") or "0"
        if not loc.isdigit():
            raise UserError(f"{flag} {raw}: expected display://N (display://0)")
        return StreamURI("display", loc, raw)
    if scheme == "file":
        if not rest:
            raise UserError(f"{flag} {raw}: file:// needs a path, e.g. file://out.mp4")
        ext = os.path.splitext(rest)[1].lower()
        if ext not in OUTPUT_EXTS:
            raise UserError(f"{flag} {raw}: output file must end in one of {', '.join(OUTPUT_EXTS)}")
        return StreamURI("file", rest, raw)
    if scheme in ("rtsp", "udp", "rtp"):
        parts = urlsplit(raw)
        try:
            port = parts.port
        except ValueError:
            port = None
        host = parts.hostname or ""
        if scheme == "rtsp":
            if not host:
                raise UserError(f"{flag} {raw}: expected rtsp://server:port/path (an RTSP server such as mediamtx)")
            return StreamURI("rtsp", raw, raw, host=host, port=port or 8554)
        if not host or not port:
            raise UserError(f"{flag} {raw}: expected udp://HOST:PORT, e.g. udp://192.168.1.20:5000")
        return StreamURI("udp", f"{host}:{port}", raw, host=host, port=port)
    raise UserError(f"{flag} {raw}: unknown output scheme '{scheme}://'; use {OUTPUT_HELP}")


def expand_images(uri: StreamURI, flag: str) -> list[str]:
    """The sorted file list of an image-sequence URI (folder, glob or one image)."""
    loc = os.path.expanduser(uri.location)
    if os.path.isdir(loc):
        files = [os.path.join(loc, f) for f in os.listdir(loc) if f.lower().endswith(IMAGE_EXTS)]
        if not files:
            raise UserError(f"{flag} {uri.raw}: folder has no images ({', '.join(IMAGE_EXTS)})")
    elif any(c in loc for c in _GLOB_CHARS):
        files = [f for f in glob.glob(loc) if f.lower().endswith(IMAGE_EXTS)]
        if not files:
            raise UserError(f"{flag} {uri.raw}: the pattern matches no image files")
    elif os.path.isfile(loc):
        files = [loc]
    else:
        raise UserError(f"{flag} {uri.raw}: no such file or folder")
    return sorted(files, key=natural_key)


@dataclass(frozen=True)
class ImagePairing:
    """Two image sequences paired by file stem (as ``moefusion-fuse`` pairs folders): every stem
    of either sequence gets a slot, in natural order; a frame is timed at its slot, so a file
    missing on one side leaves only its partner unpaired and never shifts the later pairs."""

    ir_slots: tuple  # slot of each IR file, in the sequence's order
    vis_slots: tuple
    n_slots: int
    only_ir: tuple  # stems without a partner
    only_vis: tuple

    def slots(self, role: str) -> tuple:
        return self.ir_slots if role == "ir" else self.vis_slots


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def pair_by_stem(ir_files: list[str], vis_files: list[str], ir_what: str = "--ir", vis_what: str = "--vis") -> ImagePairing:
    """Slots for two image sequences paired by file stem (see ``ImagePairing``). Two single
    images pair whatever their names. Raises UserError for a stem twice in one sequence, or
    for two sequences with no stem in common."""
    if len(ir_files) == 1 and len(vis_files) == 1:
        return ImagePairing((0,), (0,), 1, (), ())
    for files, what in ((ir_files, ir_what), (vis_files, vis_what)):
        seen: dict[str, str] = {}
        for f in files:
            if _stem(f) in seen:
                raise UserError(f"{what}: {seen[_stem(f)]} and {f} have the same name {_stem(f)!r}; image folders pair "
                                "IR and VIS by file name, keep one of them")
            seen[_stem(f)] = f
    ir_stems, vis_stems = [_stem(f) for f in ir_files], [_stem(f) for f in vis_files]
    common = set(ir_stems) & set(vis_stems)
    if not common:
        raise UserError(f"{ir_what} and {vis_what}: no file name in common (e.g. {ir_stems[0]!r} and {vis_stems[0]!r}); "
                        "two image folders pair IR and VIS by file name, as moefusion-fuse does: name each pair alike")
    order = {s: i for i, s in enumerate(sorted(set(ir_stems) | set(vis_stems), key=natural_key))}
    return ImagePairing(tuple(order[s] for s in ir_stems), tuple(order[s] for s in vis_stems), len(order),
                        tuple(sorted(set(ir_stems) - common, key=natural_key)),
                        tuple(sorted(set(vis_stems) - common, key=natural_key)))


def natural_key(s: str):
    """Sort key that orders frame_2 before frame_10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]
