"""GStreamer capture: frames and their timestamps from appsink (cameras, files, RTSP, test patterns)."""
from __future__ import annotations

import logging
import os
import time

from .. import gst as gstmod
from ..rawframes import LIMITED_TO_FULL, YUV_FORMATS, Layout, read_frame
from .base import Capture, Frame, SourceError, Status, _flag

log = logging.getLogger("moefusion.runtime")


class GstCapture(Capture):
    kind = "gstreamer"

    def __init__(self, uri, opts, role, *, paced: bool = False, open_timeout: float | None = None, pool=None,
                 yuv: bool = False, media_clock: bool = False):
        super().__init__(uri, opts, role)
        self.pool = pool  # a process.BufferPool for the frames' arrays (None: fresh arrays)
        self.paced = paced  # a file played at its own rate (beside a live camera)
        self.live = uri.is_live or paced
        # paced files with no camera (--realtime): stamped with their media time, so that two files
        # pair frame by frame whatever the moments their pipelines started (see _to_frame)
        self.media_clock = media_clock and paced and not uri.is_live
        self._said_range = False  # the limited-range note: once per source, not once per loop
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

    @property
    def ends(self) -> bool:
        """A test pattern with ``num-buffers`` ends after that many frames: the end of the input."""
        return self.uri.is_finite or (self.uri.kind == "test" and any(k == "num-buffers" for k, _ in self.uri.params))

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
        from gi.repository import GLib  # optional (PyGObject); loaded by gstmod.import_gst above

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
        from gi.repository import GstVideo  # optional (PyGObject): only when GStreamer runs

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
        if not self._said_range:
            log.info("%s: limited-range %s in, its luma expanded to full range", self.what,
                     GstVideo.VideoFormat.to_string(info.finfo.format))
            self._said_range = True
        return LIMITED_TO_FULL

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
        self.loops += 1
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
        from gi.repository import GstVideo  # optional (PyGObject): only when GStreamer runs

        caps = sample.get_caps()
        key = caps.to_string()
        if self._fmt_cache[0] != key:
            info = GstVideo.VideoInfo.new_from_caps(caps)
            layout = Layout.from_info(info)
            fps = info.fps_n / info.fps_d if info.fps_d and info.fps_n else None
            self.fps = fps or self.fps
            self._frame_dur = int(1e9 / fps) if fps else 0
            if layout.format in YUV_FORMATS and (info.width % 2 or info.height % 2) and not self._said_odd:
                log.warning("%s: %dx%d frames are cropped to %dx%d (4:2:0 needs even sizes)", self.what,
                            info.width, info.height, info.width & ~1, info.height & ~1)
                self._said_odd = True
            self._fmt_cache = (key, layout)
        layout = self._fmt_cache[1]
        t0 = time.perf_counter()
        buf = sample.get_buffer()
        ok, mi = buf.map(Gst.MapFlags.READ)
        if not ok:
            raise SourceError(f"{self.what}: cannot map a buffer")
        try:  # one copy out of the buffer (the mapping ends below), into a pooled array
            img, own = read_frame(mi.data, layout, pool=self.pool, lut=self._expand)
        finally:
            buf.unmap(mi)
        copy_s = time.perf_counter() - t0
        now = time.monotonic_ns()
        pts = buf.pts
        if self.live and not self.media_clock:  # capture time on the monotonic clock: base time + PTS
            ts = now if pts == Gst.CLOCK_TIME_NONE else min(self._pipeline.get_base_time() + pts, now)
            cap = ts
        else:
            base = pts if pts != Gst.CLOCK_TIME_NONE else self.index * (self._frame_dur or 33_333_333)
            ts = self._loop_offset + base
            cap = now
        if self.live:  # frames dropped by the leaky appsink show as gaps in buffer offsets
            off = buf.offset
            if off != Gst.BUFFER_OFFSET_NONE and self._last_offset is not None and off > self._last_offset + 1:
                self.gaps += off - self._last_offset - 1
            self._last_offset = off if off != Gst.BUFFER_OFFSET_NONE else None
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
