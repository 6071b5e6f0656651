"""Capture: frames with timestamps from GStreamer appsink, OpenCV (fallback) or image sequences.

``Capture.read(timeout)`` returns ``(Status, Frame | None)``: OK with a frame, TIMEOUT, EOS or
ERROR (message in ``capture.error``). ``SourceThread`` runs one capture, reconnects a live source
that fails (error, end of stream, or silence) with exponential backoff, and hands frames on.

Timestamps. ``Frame.ts_ns`` is the pairing timestamp: for live sources the capture time on the
monotonic clock (GStreamer's system clock is CLOCK_MONOTONIC, so ``base_time + PTS`` of two
separate pipelines is comparable, and comparable with ``time.monotonic_ns()``); for files the
media timestamp (PTS, or ``index / rate`` for image sequences), plus the length of earlier loops.
``Frame.capture_ns`` is when the frame was captured (live) or read (files), on the monotonic
clock: end-to-end latency is measured from it.
"""
from __future__ import annotations

import enum
import logging
import os
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import UserError
from . import gst as gstmod
from .uri import ImagePairing, StreamOptions, StreamURI, expand_images
from .yuv import I420Frame

log = logging.getLogger("moefusion.runtime")

ROLE_NAMES = {"ir": "IR", "vis": "VIS"}


class Status(enum.Enum):
    OK = "ok"
    TIMEOUT = "timeout"
    EOS = "eos"
    ERROR = "error"


@dataclass
class Frame:
    image: np.ndarray
    ts_ns: int
    capture_ns: int
    index: int
    role: str
    arrival_ns: int = 0
    buffer: np.ndarray | None = None  # the pooled array behind ``image`` (given back after the output)
    copy_s: float = 0.0  # time taken to copy the frame out of GStreamer ("capture" stage)


class SourceError(Exception):
    """A source could not be opened or failed. At start-up it becomes a UserError (one line);
    for a live source mid-run it triggers a reconnect."""


def _flag(role: str) -> str:
    return f"--{role}"


# ----------------------------------------------------------------------------------------------
# Format helpers shared by the non-GStreamer captures
# ----------------------------------------------------------------------------------------------

def to_role_format(img: np.ndarray, role: str, opts: StreamOptions) -> np.ndarray:
    """IR: gray (uint8, or uint16 kept); VIS: BGR or gray as read. Then scale and flip."""
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if role == "ir" and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if role == "vis" and opts.format == "GRAY8" and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if opts.width or opts.height:
        h, w = img.shape[:2]
        nw, nh = opts.width or w, opts.height or h
        if (nw, nh) != (w, h):
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR)
    return apply_flip(img, opts.flip)


def apply_flip(img: np.ndarray, flip: str | None) -> np.ndarray:
    if not flip or flip == "none":
        return img
    if flip == "horizontal":
        return cv2.flip(img, 1)
    if flip == "vertical":
        return cv2.flip(img, 0)
    if flip == "rotate-180":
        return cv2.rotate(img, cv2.ROTATE_180)
    if flip == "rotate-90":
        return cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE)
    if flip == "rotate-270":
        return cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)
    raise ValueError(flip)


class Capture:
    """Base class. ``live``: frames keep coming whether or not we read them (cameras)."""

    live = False
    kind = ""
    launch: str | None = None

    def __init__(self, uri: StreamURI, opts: StreamOptions, role: str):
        self.uri, self.opts, self.role = uri, opts, role
        self.error = ""
        self.gaps = 0  # frames lost before they reached us (buffer-offset gaps of live sources)
        self.index = 0
        self.fps: float | None = None

    @property
    def what(self) -> str:
        return f"{ROLE_NAMES.get(self.role, self.role)} source {self.uri.raw} ({_flag(self.role)})"

    def describe(self) -> str:
        return self.launch or f"{type(self).__name__}({self.uri.raw})"

    def open(self) -> None:
        raise NotImplementedError

    def read(self, timeout: float = 1.0) -> tuple[Status, Frame | None]:
        """The next frame, or a status (TIMEOUT, EOS, ERROR with ``self.error``)."""
        peeked = getattr(self, "_peeked", None)
        if peeked is not None:
            self._peeked = None
            return peeked
        return self._read(timeout)

    def peek(self, timeout: float = 10.0) -> tuple[Status, Frame | None]:
        """Read one frame ahead (to learn the frame size); the next ``read`` returns it."""
        res = self._read(timeout)
        while res[0] is Status.TIMEOUT and timeout > 0:
            timeout -= 1.0
            res = self._read(1.0)
        self._peeked = res
        return res

    def discard_peeked(self) -> bool:
        had = getattr(self, "_peeked", None) is not None
        self._peeked = None
        return had

    def restart_counting(self) -> None:
        """Forget upstream gaps so far (frames a live source dropped while we were warming up)."""
        self.gaps = 0
        self._last_offset = None

    def _read(self, timeout: float) -> tuple[Status, Frame | None]:
        raise NotImplementedError

    def shortfall(self) -> str | None:
        """At the end of a file: a warning when it gave fewer frames than it announces."""
        return None

    def precheck(self) -> None:
        """Cheap checks before anything starts (path/device exists, GStreamer elements installed)."""

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------
# Image sequences (folder, glob, single image): read directly, timed at --*-rate
# ----------------------------------------------------------------------------------------------

class ImageSequenceCapture(Capture):
    """Frames of an image folder/glob, timed at ``--*-rate``: frame k at k / rate, or at its slot
    / rate when two folders are paired by file name (``slots``, see ``uri.pair_by_stem``).

    ``paced`` (beside a live camera, or ``--realtime``): each frame is handed out when it is due
    on the monotonic clock, like a camera, and stamped with that time; a reader that falls more
    than a frame behind skips the frames it missed (counted as source gaps)."""

    kind = "images"

    def __init__(self, uri, opts, role, *, paced: bool = False, files: list[str] | None = None,
                 slots: tuple | None = None, n_slots: int | None = None, rate: float | None = None):
        super().__init__(uri, opts, role)
        self.files: list[str] = list(files) if files else []
        self._given = files is not None
        self.slots = slots
        self.n_slots = n_slots
        self.rate = float(rate or opts.rate or 30.0)
        self.fps = self.rate
        self.paced = paced
        self.live = paced
        self._period = 1e9 / self.rate
        self._pos = 0
        self._loops_left = opts.loop
        self._loop_offset = 0
        self._t0 = None  # paced: monotonic time of media time 0
        self._state = None

    def precheck(self) -> None:
        if not self._given:
            expand_images(self.uri, _flag(self.role))

    def open(self) -> None:
        if not self._given:
            self.files = expand_images(self.uri, _flag(self.role))
        how = " (paired with VIS by file name)" if self.slots is not None and self.role == "ir" else \
              " (paired with IR by file name)" if self.slots is not None else ""
        self.launch = (f"image sequence: {len(self.files)} files from {self.uri.location} at {self.rate:g} Hz"
                       f"{', paced in real time' if self.paced else ''}{how}")
        self._pos = 0

    def _media_ns(self, pos: int) -> int:
        slot = self.slots[pos] if self.slots is not None else pos
        return self._loop_offset + int(round(slot * self._period))

    def peek(self, timeout: float = 10.0):
        self._state = (self._pos, self._loops_left, self._loop_offset, self.index)
        return super().peek(timeout)

    def discard_peeked(self) -> bool:
        """Paced sequences rewind instead: the first image is shown, on the clock started now."""
        had = super().discard_peeked()
        if had and self._state is not None:
            self._pos, self._loops_left, self._loop_offset, self.index = self._state
        return had

    def restart_counting(self) -> None:
        super().restart_counting()
        self._t0 = None

    def _read(self, timeout: float = 1.0):
        if self._pos >= len(self.files):
            if self._loops_left == 0:
                return Status.EOS, None
            if self._loops_left > 0:
                self._loops_left -= 1
            self._loop_offset += int(round((self.n_slots or len(self.files)) * self._period))
            self._pos = 0
        now = time.monotonic_ns()
        if self.paced:
            if self._t0 is None:
                self._t0 = now - self._media_ns(self._pos)
            due = self._t0 + self._media_ns(self._pos)
            if due > now:
                wait = (due - now) / 1e9
                if wait > timeout:
                    time.sleep(max(0.0, timeout))
                    return Status.TIMEOUT, None
                time.sleep(wait)
            else:
                while self._pos + 1 < len(self.files) and self._t0 + self._media_ns(self._pos + 1) <= now:
                    self._pos += 1  # more than a frame late: skip to the frame due now, like a camera
                    self.gaps += 1
                due = self._t0 + self._media_ns(self._pos)
        path = self.files[self._pos]
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            self.error = f"{self.what}: cannot read image {path}; remove or replace the file"
            return Status.ERROR, None
        img = to_role_format(img, self.role, self.opts)
        if self.paced:
            ts = cap = due
        else:
            ts, cap = self._media_ns(self._pos), time.monotonic_ns()
        self._pos += 1
        f = Frame(img, ts, cap, self.index, self.role)
        self.index += 1
        return Status.OK, f


# ----------------------------------------------------------------------------------------------
# GStreamer
# ----------------------------------------------------------------------------------------------

class GstCapture(Capture):
    kind = "gstreamer"

    def __init__(self, uri, opts, role, *, paced: bool = False, open_timeout: float | None = None, pool=None,
                 yuv: bool = False):
        super().__init__(uri, opts, role)
        self.pool = pool  # a process.BufferPool for the frames' arrays (None: fresh arrays)
        self.paced = paced  # a file played at its own rate (beside a live camera)
        self.live = uri.is_live or paced
        self.yuv = yuv  # colour VIS frames as yuv.I420Frame (the pipeline's fast path)
        self._said_odd = False
        self._expand = None  # see _limited_luma
        self.launch = gstmod.source_launch(uri, opts, role, sync=paced, yuv=yuv)
        self.open_timeout = open_timeout or (15.0 if uri.kind == "rtsp" else 8.0)
        self._pipeline = None
        self._sink = None
        self._pending = None
        self._last_offset = None
        self._loops_left = opts.loop
        self._loop_offset = 0
        self._last_ts = None
        self._frame_dur = 0
        self._fmt_cache = (None, None)
        self.warnings = 0  # bus warnings (decoders skipping corrupt data)
        self._first_warning = ""
        self._expected = None  # frames the file announces (files only)
        self._opened_at_index = 0

    def precheck(self):
        loc = os.path.expanduser(self.uri.location)
        if self.uri.kind == "v4l2" and not os.path.exists(loc):
            raise SourceError(f"{self.what}: no such device {loc}; check the camera is plugged in "
                              f"(ls /dev/video*) and pass its node with {_flag(self.role)}")
        if self.uri.kind == "file":
            if not os.path.isfile(loc):
                raise SourceError(f"{self.what}: no such file {loc}; check the path given to {_flag(self.role)}")
        fix = {"csi": "csi:// works on a Jetson with JetPack; elsewhere use /dev/videoN",
               "file": "or set MOEFUSION_NO_GST=1 to read files with OpenCV"}.get(self.uri.kind, "")
        gstmod.check_elements(self.launch, self.what, fix)

    def open(self) -> None:
        Gst = gstmod.import_gst()
        self.precheck()
        from gi.repository import GLib

        try:
            self._pipeline = Gst.parse_launch(self.launch)
        except GLib.Error as e:
            raise SourceError(f"{self.what}: cannot build pipeline: {e.message}")
        self._pipeline.use_clock(Gst.SystemClock.obtain())
        self._sink = self._pipeline.get_by_name("sink")
        self._last_offset = None
        ret = self._pipeline.set_state(Gst.State.PLAYING)
        if ret == Gst.StateChangeReturn.FAILURE:
            msg = self._bus_error() or "could not start"
            self.close()
            raise SourceError(msg)
        deadline = time.monotonic() + self.open_timeout
        while time.monotonic() < deadline:
            sample = self._sink.try_pull_sample(100 * Gst.MSECOND)
            if sample is not None:
                self._pending = sample
                self._expand = self._limited_luma()
                self._opened_at_index = self.index
                self._expected = self._announced_frames(sample) if self.uri.kind == "file" else None
                return
            err = self._bus_error()
            if err:
                self.close()
                raise SourceError(err)
            if self._sink.is_eos():
                self.close()
                raise SourceError(f"{self.what}: the stream ended before its first frame (empty or unreadable)")
        self.close()
        raise SourceError(f"{self.what}: no frame within {self.open_timeout:g} s; check the camera/URL, "
                          f"and its mode (--{self.role}-width/-height/-rate/-format)")

    def _limited_luma(self):
        """A uint8 table expanding 16..235 to 0..255 when a GRAY8 stream comes from limited-range YUV
        (a video file, a YUYV/NV12 camera): videoconvert copies the Y plane into GRAY8 without
        expanding it (a thermal picture would lose 14 % of its contrast and be lifted by 16). None
        when the stream is gray already (a GRAY8 camera) or full range."""
        from gi.repository import GstVideo

        if gstmod.appsink_format(self.role, self.opts, self.yuv) != "GRAY8":
            return None
        convs = [e for e in self._pipeline.iterate_sorted() if e.get_factory() is not None
                 and e.get_factory().get_name() == "videoconvert"]
        caps = convs[-1].get_static_pad("sink").get_current_caps() if convs else None  # the first one upstream
        if caps is None:
            return None
        info = GstVideo.VideoInfo.new_from_caps(caps)
        if info is None or not info.finfo.flags & GstVideo.VideoFormatFlags.YUV or \
                info.finfo.flags & GstVideo.VideoFormatFlags.GRAY or \
                info.colorimetry.range != getattr(GstVideo.VideoColorRange, "16_235"):
            return None
        log.info("%s: limited-range %s in, its luma expanded to full range", self.what,
                 GstVideo.VideoFormat.to_string(info.finfo.format))
        return np.clip(np.rint((np.arange(256) - 16) * 255.0 / 219.0), 0, 255).astype(np.uint8)

    def _announced_frames(self, sample) -> int | None:
        """Frames the file's header announces (duration x frame rate), to notice a file that ends
        early (truncated, or frames lost to corrupt data)."""
        Gst = gstmod.import_gst()
        ok, dur = self._pipeline.query_duration(Gst.Format.TIME)
        st = sample.get_caps().get_structure(0)
        ok_rate, num, den = st.get_fraction("framerate")
        if not ok or dur <= 0 or not ok_rate or not num or not den:
            return None
        return int(round(dur * num / den / 1e9))

    def shortfall(self) -> str | None:
        got = self.index - getattr(self, "_opened_at_index", 0)
        exp = getattr(self, "_expected", None)
        if not exp or exp - got <= max(1, exp // 100):
            return None
        warn = f"; {self.warnings} decoder warning(s), first: {self._first_warning}" if self.warnings else ""
        return (f"{self.what}: ended after {got} of the {exp} frames its header announces, {exp - got} missing "
                f"(truncated or corrupt file?){warn}")

    def _bus_error(self) -> str:
        Gst = gstmod.import_gst()
        if self._pipeline is None:
            return ""
        bus = self._pipeline.get_bus()
        while True:
            msg = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.WARNING)
            if msg is None:
                return ""
            if msg.type == Gst.MessageType.WARNING:  # e.g. a decoder skipping corrupt data
                w, _ = msg.parse_warning()
                self.warnings += 1
                self._first_warning = self._first_warning or f"{w.message} ({msg.src.get_name() if msg.src else '?'})"
                continue
            err, debug = msg.parse_error()
            return self._translate(err.message, debug or "", msg.src.get_name() if msg.src else "?")

    def _translate(self, message: str, debug: str, element: str) -> str:
        text = f"{message} {debug}"
        dev = self.uri.location
        mode = f"--{self.role}-format/-width/-height/-rate"
        if "not-negotiated" in text or "not negotiate" in text.lower():
            if self.uri.kind == "v4l2":
                return (f"{self.what}: {dev} does not support the requested mode ({self.launch.split(' ! ')[1]}); "
                        f"list its modes with `v4l2-ctl -d {dev} --list-formats-ext` and set {mode}")
            return f"{self.what}: caps negotiation failed in {element}; check {mode}"
        if self.uri.kind == "v4l2" and any(s in text for s in ("Cannot identify device", "No such device",
                                                               "not a capture device", "Could not open device")):
            return f"{self.what}: cannot open {dev} ({message}); check `v4l2-ctl --list-devices` and {_flag(self.role)}"
        if self.uri.kind == "v4l2" and "busy" in text.lower():
            return f"{self.what}: {dev} is busy (another program has it open); close that program"
        if self.uri.kind == "file" and ("decoder" in text.lower() or "codec" in text.lower() or "plugin" in text.lower()):
            return (f"{self.what}: cannot decode {dev} ({message}); install gstreamer1.0-libav "
                    f"(and -plugins-bad/-ugly), or set MOEFUSION_NO_GST=1 to use OpenCV")
        return f"{self.what}: {message} (GStreamer element {element})"

    def _read(self, timeout: float = 1.0):
        Gst = gstmod.import_gst()
        if self._pending is not None:
            sample, self._pending = self._pending, None
        else:
            sample = self._sink.try_pull_sample(int(timeout * Gst.SECOND))
        if sample is None:
            err = self._bus_error()
            if err:
                self.error = err
                return Status.ERROR, None
            if self._sink.is_eos():
                if self.uri.is_finite and self._loops_left != 0:
                    return self._loop()
                return Status.EOS, None
            return Status.TIMEOUT, None
        return Status.OK, self._to_frame(sample)

    def _loop(self):
        if self._loops_left > 0:
            self._loops_left -= 1
        self._loop_offset = (self._last_ts or 0) + self._frame_dur
        loops = self._loops_left
        self.close()
        try:
            self.open()
        except SourceError as e:
            self.error = str(e)
            return Status.ERROR, None
        self._loops_left = loops
        return self._read(1.0)

    def _to_frame(self, sample) -> Frame:
        Gst = gstmod.import_gst()
        from gi.repository import GstVideo

        caps = sample.get_caps()
        key = caps.to_string()
        if self._fmt_cache[0] != key:
            info = GstVideo.VideoInfo.new_from_caps(caps)
            fmt = GstVideo.VideoFormat.to_string(info.finfo.format)
            dtype, ch = {"GRAY8": (np.uint8, 1), "GRAY16_LE": (np.uint16, 1), "BGR": (np.uint8, 3),
                         "I420": (np.uint8, 0)}[fmt]
            fps = info.fps_n / info.fps_d if info.fps_d and info.fps_n else None
            self.fps = fps or self.fps
            self._frame_dur = int(1e9 / fps) if fps else 0
            planes = tuple((info.offset[p], info.stride[p]) for p in range(info.finfo.n_planes))
            if ch == 0 and (info.width % 2 or info.height % 2) and not self._said_odd:
                log.warning("%s: %dx%d frames are cropped to %dx%d (4:2:0 needs even sizes)", self.what,
                            info.width, info.height, info.width & ~1, info.height & ~1)
                self._said_odd = True
            self._fmt_cache = (key, (info.width, info.height, info.stride[0], dtype, ch, planes, info.size))
        w, h, stride, dtype, ch, planes, size = self._fmt_cache[1]
        t0 = time.perf_counter()
        buf = sample.get_buffer()
        ok, mi = buf.map(Gst.MapFlags.READ)
        if not ok:
            raise SourceError(f"{self.what}: cannot map a buffer")
        pool = self.pool
        try:
            if ch == 0:  # I420: the three planes into one (h * 3 / 2, w) array (yuv.I420Frame)
                we, he = w & ~1, h & ~1
                own = pool.get((he * 3 // 2, we), np.uint8) if pool is not None else np.empty((he * 3 // 2, we), np.uint8)
                img = I420Frame(own, we, he)
                for (off, st), dst, (pw, ph) in zip(planes, (img.y, img.u, img.v),
                                                    ((we, he), (we // 2, he // 2), (we // 2, he // 2))):
                    np.copyto(dst, np.ndarray((ph, pw), np.uint8, buffer=mi.data, offset=off, strides=(st, 1)))
            else:
                row = w * ch * np.dtype(dtype).itemsize
                raw = np.frombuffer(mi.data, np.uint8, count=stride * h).reshape(h, stride)
                # a copy (the mapping ends below), into a reused array when there is a pool
                own = pool.get((h, row), np.uint8) if pool is not None else np.empty((h, row), np.uint8)
                if self._expand is not None:  # limited-range luma to full range, in the same pass
                    cv2.LUT(raw[:, :row], self._expand, dst=own)
                else:
                    np.copyto(own, raw[:, :row])
                img = own.view(dtype)
                img = img.reshape(h, w, ch) if ch > 1 else img.reshape(h, w)
        finally:
            buf.unmap(mi)
        copy_s = time.perf_counter() - t0
        now = time.monotonic_ns()
        pts = buf.pts
        if self.live:  # capture time on the monotonic clock: base time + PTS (never in the future)
            ts = now if pts == Gst.CLOCK_TIME_NONE else min(self._pipeline.get_base_time() + pts, now)
            cap = ts
            off = buf.offset
            if off != Gst.BUFFER_OFFSET_NONE and self._last_offset is not None and off > self._last_offset + 1:
                self.gaps += off - self._last_offset - 1
            self._last_offset = off if off != Gst.BUFFER_OFFSET_NONE else None
        else:
            base = pts if pts != Gst.CLOCK_TIME_NONE else self.index * (self._frame_dur or 33_333_333)
            ts = self._loop_offset + base
            cap = now
        self._last_ts = ts
        f = Frame(img, int(ts), int(cap), self.index, self.role, buffer=own if self.pool is not None else None,
                  copy_s=copy_s)
        self.index += 1
        return f

    def close(self) -> None:
        if self._pipeline is not None:
            Gst = gstmod.import_gst()
            self._pipeline.set_state(Gst.State.NULL)
            self._pipeline = None
            self._sink = None
            self._pending = None


# ----------------------------------------------------------------------------------------------
# OpenCV fallback (devices, files, RTSP through FFmpeg) when GStreamer/PyGObject is missing
# ----------------------------------------------------------------------------------------------

class OpenCVCapture(Capture):
    kind = "opencv"

    def __init__(self, uri, opts, role):
        super().__init__(uri, opts, role)
        if uri.kind in ("test", "csi"):
            raise UserError(f"{self.what}: {uri.kind}:// needs GStreamer ({gstmod.gst_reason() or 'not available'}); "
                            f"install python3-gst-1.0 and PyGObject (pip install 'PyGObject<3.51')")
        self.live = uri.is_live
        self._cap = None
        self._loops_left = opts.loop
        self._loop_offset = 0
        self._last_ts = 0
        self._frame_dur = 33_333_333
        self.launch = f"OpenCV VideoCapture({uri.location})"

    def precheck(self) -> None:
        loc = os.path.expanduser(self.uri.location)
        if self.uri.kind == "v4l2" and not os.path.exists(loc):
            raise SourceError(f"{self.what}: no such device {loc}; check the camera is plugged in (ls /dev/video*)")
        if self.uri.kind == "file" and not os.path.isfile(loc):
            raise SourceError(f"{self.what}: no such file {loc}; check the path given to {_flag(self.role)}")

    def open(self) -> None:
        loc = os.path.expanduser(self.uri.location)
        if self.uri.kind == "v4l2":
            if not os.path.exists(loc):
                raise SourceError(f"{self.what}: no such device {loc}; check the camera is plugged in (ls /dev/video*)")
            cap = cv2.VideoCapture(loc, cv2.CAP_V4L2)
            if self.opts.format:
                fourcc = {"MJPG": "MJPG", "YUY2": "YUYV", "GRAY8": "GREY", "GRAY16_LE": "Y16 ", "UYVY": "UYVY",
                          "NV12": "NV12"}.get(self.opts.format)
                if fourcc:
                    cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc))
                if self.opts.format == "GRAY16_LE":
                    cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
            if self.opts.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.opts.width)
            if self.opts.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.opts.height)
            if self.opts.rate:
                cap.set(cv2.CAP_PROP_FPS, self.opts.rate)
        else:
            if self.uri.kind == "file" and not os.path.isfile(loc):
                raise SourceError(f"{self.what}: no such file {loc}; check the path given to {_flag(self.role)}")
            cap = cv2.VideoCapture(loc if self.uri.kind == "file" else self.uri.location, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            raise SourceError(f"{self.what}: OpenCV cannot open {self.uri.location}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        if fps and fps > 0:
            self.fps = fps
            self._frame_dur = int(1e9 / fps)
        self._cap = cap

    def _read(self, timeout: float = 1.0):
        ok, img = self._cap.read()
        now = time.monotonic_ns()
        if not ok or img is None:
            if self.uri.is_finite:
                if self._loops_left != 0:
                    if self._loops_left > 0:
                        self._loops_left -= 1
                    self._loop_offset = self._last_ts + self._frame_dur
                    self._cap.release()
                    self.open()
                    return self._read(timeout)
                return Status.EOS, None
            self.error = f"{self.what}: OpenCV read failed (device gone?)"
            return Status.ERROR, None
        if self.opts.width or self.opts.height or img.ndim == 3 or self.opts.flip != "none":
            img = to_role_format(img, self.role, self.opts)
        if self.live:
            ts = cap = now
        else:
            pos = self._cap.get(cv2.CAP_PROP_POS_MSEC)
            base = int(pos * 1e6) if pos and pos > 0 else self.index * self._frame_dur
            if self.index > 0 and pos == 0:
                base = self.index * self._frame_dur
            ts, cap = self._loop_offset + base, now
        self._last_ts = ts
        f = Frame(img, int(ts), int(cap), self.index, self.role)
        self.index += 1
        return Status.OK, f

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


_FALLBACK_SAID = False


def make_capture(uri: StreamURI, opts: StreamOptions, role: str, *, paced: bool = False,
                 pairing: ImagePairing | None = None, files: list[str] | None = None,
                 rate: float | None = None, pool=None, yuv: bool = False) -> Capture:
    """The capture for a URI: image sequences directly (``pairing``/``files``/``rate``: two
    folders paired by file name), everything else through GStreamer, or OpenCV when
    GStreamer/PyGObject is missing (said once). ``pool``: GStreamer frames are copied into arrays
    from it (``process.BufferPool``), given back by the pipeline once written. ``yuv``: a colour
    VIS stream through GStreamer comes as ``yuv.I420Frame`` (others ignore it)."""
    global _FALLBACK_SAID
    if uri.kind == "images":
        if pairing is not None:
            return ImageSequenceCapture(uri, opts, role, paced=paced, files=files, slots=pairing.slots(role),
                                        n_slots=pairing.n_slots, rate=rate)
        return ImageSequenceCapture(uri, opts, role, paced=paced)
    if gstmod.have_gst():
        return GstCapture(uri, opts, role, paced=paced, pool=pool, yuv=yuv)
    if not _FALLBACK_SAID:
        log.warning("GStreamer is not available (%s): using OpenCV capture for devices and files",
                    gstmod.gst_reason())
        _FALLBACK_SAID = True
    return OpenCVCapture(uri, opts, role)


# ----------------------------------------------------------------------------------------------
# The capture thread: read, hand on, reconnect live sources with backoff
# ----------------------------------------------------------------------------------------------

def backoff_delays(initial: float = 0.25, factor: float = 2.0, maximum: float = 5.0):
    """0.25, 0.5, 1, 2, 4, 5, 5, ... seconds."""
    d = initial
    while True:
        yield min(d, maximum)
        d *= factor


@dataclass
class SourceCounters:
    frames: int = 0
    reconnects: int = 0
    gaps: int = 0


class SourceThread(threading.Thread):
    """Reads one capture in its own thread and calls ``deliver(frame)`` for each frame.

    Live sources: a failure (bus error, end of stream, or no frame for ``stall_timeout``) closes
    the capture and reopens it with backoff until it works again or ``reconnect_timeout`` passes
    (negative: forever). Finite sources: EOS ends the thread; an error is fatal (``fatal``).
    """

    def __init__(self, capture: Capture, deliver, stop_event: threading.Event, *,
                 factory=None, stall_timeout: float = 3.0, reconnect_timeout: float = -1.0):
        super().__init__(name=f"capture-{capture.role}", daemon=True)
        self.capture = capture
        self.factory = factory  # () -> new opened Capture, for reconnects
        self.deliver = deliver
        self.stop_event = stop_event
        self.stall_timeout = stall_timeout
        self.reconnect_timeout = reconnect_timeout
        self.counters = SourceCounters()
        self.eos = threading.Event()
        self.fatal: str | None = None
        self.warning: str | None = None  # a file that ended early (``Capture.shortfall``)
        self.live = capture.live
        self.finite = capture.uri.is_finite  # EOS ends it; errors are fatal (no reconnect)
        self._gaps_before = 0

    def run(self):
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported to the main thread, never lost
            self.fatal = f"{self.capture.what}: {type(e).__name__}: {e}"
            log.exception("capture thread %s crashed", self.name)
        finally:
            try:
                self.capture.close()
            finally:
                self.eos.set()

    def _run(self):
        last_frame = time.monotonic()
        while not self.stop_event.is_set():
            status, frame = self.capture.read(0.1)
            if status is Status.OK:
                frame.arrival_ns = time.monotonic_ns()
                self.counters.frames += 1
                self.counters.gaps = self._gaps_before + self.capture.gaps
                last_frame = time.monotonic()
                if not self.deliver(frame):
                    return
                continue
            if status is Status.TIMEOUT:
                if not self.finite and time.monotonic() - last_frame > self.stall_timeout:
                    self._fail(f"{self.capture.what}: no frame for {self.stall_timeout:g} s")
                    if self.fatal:
                        return
                    last_frame = time.monotonic()
                continue
            if status is Status.EOS and self.finite:
                self.warning = self.capture.shortfall()
                if self.warning:
                    log.warning("%s", self.warning)
                return
            reason = self.capture.error if status is Status.ERROR else f"{self.capture.what}: end of stream"
            if self.finite:
                self.fatal = reason
                return
            self._fail(reason)
            if self.fatal:
                return
            last_frame = time.monotonic()

    def _fail(self, reason: str):
        """Close and reopen a live source with backoff; sets ``fatal`` when giving up."""
        c = self.counters
        log.warning("%s; reconnecting", reason)
        gaps_before = self._gaps_before + self.capture.gaps
        self.capture.close()
        if self.factory is None or self.reconnect_timeout == 0:
            self.fatal = f"{reason} (reconnecting is off)"
            return
        t0 = time.monotonic()
        for delay in backoff_delays():
            if self.stop_event.wait(delay):
                return
            try:
                cap = self.factory()
                cap.open()
            except (SourceError, UserError) as e:
                if 0 < self.reconnect_timeout < time.monotonic() - t0:
                    self.fatal = f"{reason}; not back after {self.reconnect_timeout:g} s ({e})"
                    return
                log.info("%s still unavailable (%s); next try in %.2g s", self.capture.what, e, min(delay * 2, 5.0))
                continue
            self.capture = cap
            self._gaps_before = gaps_before
            c.reconnects += 1
            log.warning("%s is back after %.1f s; resuming", cap.what, time.monotonic() - t0)
            return
