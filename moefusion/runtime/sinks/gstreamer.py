"""``GstSink``: frames pushed into an appsrc-fed GStreamer pipeline (a window, an RTP/UDP or RTSP
stream; the file sinks build on it)."""
from __future__ import annotations

import logging
import time

from ...errors import UserError
from .. import gst as gstmod
from ..rawframes import write_frame
from ..yuv import I420Frame
from .base import Sink

log = logging.getLogger("moefusion.runtime")


class GstSink(Sink):
    """appsrc-fed pipeline; ``build(w, h, fps[, fmt])`` returns the launch string. It is called when
    the first frame arrives, with the output rate known by then (``fps``, set by the pipeline), and
    the frames' format: BGR, or I420 (``yuv.I420Frame``, the fast path: the encoder takes it as it
    is; ``build`` is then called with ``fmt="I420"``).

    Buffers are laid out as GStreamer expects for the appsrc caps: each BGR row padded to the
    caps' stride (3 * width rounded up to 4 bytes). Tightly packed rows of a width that is not a
    multiple of 4 would be rejected by videoconvert (a uniform green picture). The buffers come
    from a GStreamer buffer pool: each frame is copied once, row by row, into a buffer that returns
    to the pool when the pipeline is done with it (no allocation per frame)."""

    kind = "gstreamer"

    def __init__(self, what: str, fps: float, build):
        super().__init__()
        self.what, self.fps, self.build = what, fps, build
        self.launch = None
        self._pipe = None
        self._src = None
        self._last_pts = -1
        self._bufpool = None
        self._layout = None  # ((offset, stride) per plane, size)
        self.fmt = "BGR"
        self._aborted = False

    def describe(self) -> str:
        return self.launch or self.what

    def _open(self, w: int, h: int):
        Gst = gstmod.import_gst()
        from gi.repository import GLib, GstVideo  # optional (PyGObject): loaded by gstmod.import_gst above

        self.launch = self.build(w, h, self.fps, self.fmt) if self.fmt != "BGR" else self.build(w, h, self.fps)
        log.info("output pipeline: %s", self.launch)
        gstmod.check_elements(self.launch, self.what)
        try:
            self._pipe = Gst.parse_launch(self.launch)
        except GLib.Error as e:
            raise UserError(f"{self.what}: cannot build the output pipeline: {e.message}")
        self._src = self._pipe.get_by_name("src")
        info = GstVideo.VideoInfo.new_from_caps(self._src.get_property("caps"))
        want = GstVideo.VideoFormat.I420 if self.fmt == "I420" else GstVideo.VideoFormat.BGR
        if info.finfo.format != want or info.stride[0] < (w if self.fmt == "I420" else w * 3):
            raise RuntimeError(f"{self.what}: unexpected appsrc layout {info.finfo.format} stride {info.stride[0]} "
                               f"size {info.size}")
        self._layout = (tuple((info.offset[p], info.stride[p]) for p in range(info.finfo.n_planes)), info.size)
        self._bufpool = Gst.BufferPool.new()
        conf = self._bufpool.get_config()
        Gst.BufferPool.config_set_params(conf, self._src.get_property("caps"), info.size, 2, 0)
        if not self._bufpool.set_config(conf) or not self._bufpool.set_active(True):
            raise RuntimeError(f"{self.what}: cannot set up a buffer pool of {info.size} bytes")
        if self._pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            err = self._poll_bus() or f"{self.what}: cannot start"
            self._pipe.set_state(Gst.State.NULL)
            self._pipe = None
            raise UserError(err)

    def _buffer(self, frame):
        """A pooled Gst.Buffer holding the frame with GStreamer's strides (one copy)."""
        Gst = gstmod.import_gst()
        ret, buf = self._bufpool.acquire_buffer(None)
        if ret != Gst.FlowReturn.OK:
            raise RuntimeError(f"{self.what}: no buffer from the pool ({ret.value_nick})")
        ok, mi = buf.map(Gst.MapFlags.WRITE)
        if not ok:
            raise RuntimeError(f"{self.what}: cannot map an output buffer")
        try:
            write_frame(frame, mi.data, self._layout[0])
        finally:
            buf.unmap(mi)
        return buf

    def _poll_bus(self) -> str:
        """Handle element messages (``_on_element``) and return the first error, if any."""
        Gst = gstmod.import_gst()
        if self._pipe is None:
            return ""
        bus = self._pipe.get_bus()
        while True:
            msg = bus.pop_filtered(Gst.MessageType.ERROR | Gst.MessageType.ELEMENT)
            if msg is None:
                return ""
            if msg.type == Gst.MessageType.ELEMENT:
                self._on_element(msg.get_structure())
                continue
            return self._error_text(msg)

    def _error_text(self, msg) -> str:
        """``--output X: <GStreamer's message>: <the system's cause> (element)``, e.g. ``--output rec.mp4:
        Could not write to resource: File too large (filesink0)``."""
        err, debug = msg.parse_error()
        message = (err.message or "error").rstrip(".")
        last = ((debug or "").strip().splitlines() or [""])[-1]  # "Error while writing to file ...: File too large"
        cause = last.rsplit(": ", 1)[-1].strip() if ": " in last else ""
        if cause.startswith("/Gst"):  # the element's path, not a cause
            cause = ""
        text = f"{self.what}: {message}{': ' + cause if cause else ''} ({msg.src.get_name() if msg.src else '?'})"
        if "window" in message.lower() and "closed" in message.lower():
            self.closed_by_user = True
        return text

    def _set_error(self, text: str) -> None:
        """The first error is the cause; what other elements report after it is logged at debug level."""
        if not self.error:
            self.error = text
        elif text != self.error:
            log.debug("%s (after: %s)", text, self.error)

    def _room(self) -> bool:
        """Wait until appsrc has room for one more frame, so that ``push-buffer`` never blocks: a
        pipeline stopped by an error (a full disk) never drains its queue, and a writer blocked in
        push-buffer would never see the error nor a stop. False on an error or ``abort``."""
        limit = self._src.get_property("max-bytes")
        while limit and self._src.get_property("current-level-bytes") >= limit:
            err = self._poll_bus()
            if err:
                self._set_error(err)
                return False
            if self._aborted:
                self._set_error(f"{self.what}: aborted while the output was full")
                return False
            time.sleep(0.002)
        return True

    def abort(self) -> None:
        """From another thread: make a writer waiting for room give up (the run is shutting down)."""
        self._aborted = True

    def _on_element(self, structure) -> None:
        pass

    def write(self, frame, pts_ns) -> bool:
        Gst = gstmod.import_gst()
        if self.error or self._aborted:
            return False  # the output failed: nothing more goes in (the first error is the cause)
        frame = self._fit(frame)
        if self._pipe is None:
            self.fmt = "I420" if isinstance(frame, I420Frame) else "BGR"
            self._open(*self.size)
        if self.fmt == "I420" and not isinstance(frame, I420Frame):
            frame = I420Frame.from_bgr(frame)
        elif self.fmt == "BGR" and isinstance(frame, I420Frame):
            frame = frame.to_bgr()
        pts = max(int(pts_ns), self._last_pts + 1)
        self._last_pts = pts
        buf = self._buffer(frame)
        buf.pts = pts
        buf.duration = int(1e9 / self.fps) if self.fps else Gst.CLOCK_TIME_NONE
        if not self._room():
            return False
        ret = self._src.emit("push-buffer", buf)
        err = self._poll_bus()
        if ret != Gst.FlowReturn.OK or err:
            self._set_error(err or f"{self.what}: the output refused a frame ({ret.value_nick})")
            return False
        self.frames += 1
        return True

    def _finish(self, timeout_s: float) -> bool:
        """Send EOS through the pipeline (the muxer writes its index) and stop it."""
        if self._pipe is None:
            return True
        Gst = gstmod.import_gst()
        ok = True
        if not self.error:
            self._src.emit("end-of-stream")
            bus = self._pipe.get_bus()
            deadline = time.monotonic() + timeout_s
            while True:
                left = deadline - time.monotonic()
                msg = bus.timed_pop_filtered(int(max(0.0, left) * Gst.SECOND),
                                             Gst.MessageType.EOS | Gst.MessageType.ERROR | Gst.MessageType.ELEMENT)
                if msg is None:
                    ok = False
                    self._set_error(f"{self.what}: EOS did not get through in {timeout_s:g} s")
                    break
                if msg.type == Gst.MessageType.ELEMENT:
                    self._on_element(msg.get_structure())
                    continue
                if msg.type == Gst.MessageType.ERROR:
                    ok = False
                    self._set_error(self._error_text(msg))
                break
        else:
            ok = False
        self._pipe.set_state(Gst.State.NULL)
        self._pipe = None
        if self._bufpool is not None:
            self._bufpool.set_active(False)
            self._bufpool = None
        return ok

    def close(self):
        self._finish(10.0)
        return None
