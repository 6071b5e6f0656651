"""Outputs: display window, video file, RTSP/UDP stream, none.

Each sink opens on its first frame (it needs the frame size; the output rate is known by then),
takes BGR uint8 frames of any width (rows are padded to GStreamer's stride) with a presentation
timestamp, and is finalised by ``close()``. The first frame sets the output's size; a later frame
of another size (an image folder of many sizes) is scaled keeping its aspect ratio and padded with
black bars to that size, and that is said once (log and ``warnings``). A video file is written under a temporary name
(``NAME.partial.EXT``) and renamed only after EOS went through the muxer and the pipeline
stopped, so a file at the final name is always complete and playable; if finalising fails, the
partial file is left and reported. The containers are crash-safe (fragmented MP4/MOV, Matroska,
AVI): after a hard kill the ``.partial`` file plays up to its last fragment. ``--segment S``
writes a new file every S seconds. An existing recording is never overwritten (a numeric
suffix is added, see ``choose_output_path``) unless ``--overwrite`` is given.

Encoder: the first available of nvv4l2h264enc (Jetson), x264enc, openh264enc; without any (or
without GStreamer) files are written by OpenCV's mp4v writer, and that is logged once.
"""
from __future__ import annotations

import logging
import os
import re
import time

import cv2
import numpy as np

from ..errors import UserError
from . import gst as gstmod
from .fit import letterbox_into, letterbox_rect
from .yuv import I420Frame
from .uri import StreamURI

log = logging.getLogger("moefusion.runtime")

ENCODER_CHOICES = ("auto", "nvv4l2h264enc", "x264enc", "openh264enc", "opencv")


def display_available() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def partial_path(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.partial{ext}"


class Sink:
    kind = "none"

    def __init__(self):
        self.error = ""
        self.closed_by_user = False
        self.frames = 0
        self.size = None
        self.files: list[str] = []  # output files completed (renamed to their final names)
        self.warnings: list[str] = []  # said once each (also logged)
        self.boxed = 0  # frames letterboxed to the output's size
        self._box = None

    def describe(self) -> str:
        return self.kind

    def write(self, frame: np.ndarray, pts_ns: int) -> bool:
        """Returns False when the sink cannot take more (error, or the window was closed)."""
        self.frames += 1
        return True

    def close(self) -> str | None:
        return None

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        """Even width/height for 4:2:0 encoders; one size for the whole output, set by the first
        frame: a frame of another size is letterboxed into it (aspect kept, black bars), said once.
        The result may be a view with row padding (GStreamer sinks copy row by row)."""
        if self.size is None:
            h, w = frame.shape[:2]
            self.size = (w - w % 2, h - h % 2)
        w, h = self.size
        if frame.shape[1] != w or frame.shape[0] != h:
            if isinstance(frame, I420Frame):  # rare (a size change): through BGR
                return I420Frame.from_bgr(self._letterbox(frame.to_bgr()))
            if frame.shape[1] in (w, w + 1) and frame.shape[0] in (h, h + 1):
                frame = frame[:h, :w]
            else:
                frame = self._letterbox(frame)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        return frame

    def _letterbox(self, frame: np.ndarray) -> np.ndarray:
        w, h = self.size
        fh, fw = frame.shape[:2]
        shape = (h, w) + frame.shape[2:]
        if self._box is None or self._box.shape != shape or self._box.dtype != frame.dtype:
            self._box = np.empty(shape, frame.dtype)
        self.boxed += 1
        if not self.warnings:
            x, y, bw, bh = letterbox_rect((fw, fh), (w, h))
            bars = "no bars" if (bw, bh) == (w, h) else (
                f"black bars left/right ({x}+{w - bw - x} px)" if bw < w else f"black bars top/bottom ({y}+{h - bh - y} px)")
            text = (f"output: a frame of {fw}x{fh} does not match the output size {w}x{h} (set by the first frame): "
                    f"it is scaled keeping its aspect ratio to {bw}x{bh} with {bars}, and so is every later frame of "
                    "another size")
            self.warnings.append(text)
            log.warning("%s", text)
        return letterbox_into(frame, self._box, 0)


class NullSink(Sink):
    kind = "none"


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

    def describe(self) -> str:
        return self.launch or self.what

    def _open(self, w: int, h: int):
        Gst = gstmod.import_gst()
        from gi.repository import GLib, GstVideo

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
            err = self._poll_bus() or "cannot start"
            self._pipe.set_state(Gst.State.NULL)
            self._pipe = None
            raise UserError(f"{self.what}: {err}")

    def _buffer(self, frame):
        """A pooled Gst.Buffer holding the frame with GStreamer's strides (one copy)."""
        Gst = gstmod.import_gst()
        ret, buf = self._bufpool.acquire_buffer(None)
        if ret != Gst.FlowReturn.OK:
            raise RuntimeError(f"{self.what}: no buffer from the pool ({ret.value_nick})")
        planes, size = self._layout
        h, w = frame.shape[:2]
        ok, mi = buf.map(Gst.MapFlags.WRITE)
        if not ok:
            raise RuntimeError(f"{self.what}: cannot map an output buffer")
        try:
            if isinstance(frame, I420Frame):
                for (off, st), src in zip(planes, (frame.y, frame.u, frame.v)):
                    np.copyto(np.ndarray(src.shape, np.uint8, buffer=mi.data, offset=off, strides=(st, 1)), src)
            else:
                np.copyto(np.ndarray((h, w, 3), np.uint8, buffer=mi.data, strides=(planes[0][1], 3, 1)), frame)
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
        err, _debug = msg.parse_error()
        text = f"{err.message} ({msg.src.get_name() if msg.src else '?'})"
        if "window" in (err.message or "").lower() and "closed" in (err.message or "").lower():
            self.closed_by_user = True
        return text

    def _on_element(self, structure) -> None:
        pass

    def write(self, frame, pts_ns) -> bool:
        Gst = gstmod.import_gst()
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
        ret = self._src.emit("push-buffer", buf)
        err = self._poll_bus()
        if ret != Gst.FlowReturn.OK or err:
            self.error = err or f"{self.what}: the output refused a frame ({ret.value_nick})"
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
                    self.error = self.error or f"{self.what}: EOS did not get through in {timeout_s:g} s"
                    break
                if msg.type == Gst.MessageType.ELEMENT:
                    self._on_element(msg.get_structure())
                    continue
                if msg.type == Gst.MessageType.ERROR:
                    ok = False
                    self.error = self.error or f"{self.what}: {self._error_text(msg)}"
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


class GstFileSink(GstSink):
    """H.264 in a crash-safe container (fragmented MP4/MOV, Matroska, AVI; see gst.MUXER_PROPS).

    One file: written as NAME.partial.EXT and renamed at the end. ``segment_s > 0``: splitmuxsink
    starts a new file every ``segment_s`` seconds, NAME_00000.partial.EXT, ..., numbered from
    ``start_index``; each is renamed to NAME_00000.EXT as soon as it is complete. After a hard kill
    only the file being written keeps its ``.partial`` name, and it plays up to its last fragment."""

    kind = "file"

    def __init__(self, path: str, fps: float, encoder: str, *, segment_s: float = 0.0, start_index: int = 0):
        self.path = path
        self.segment_s = segment_s
        self.start_index = start_index
        self.tmp = gstmod.segment_pattern(path) if segment_s > 0 else partial_path(path)
        self.encoder = encoder
        super().__init__(f"--output {path}", fps,
                         lambda w, h, fps, fmt="BGR": gstmod.file_sink_launch(self.tmp, w, h, fps, self.encoder, fmt=fmt,
                                                                   segment_s=self.segment_s,
                                                                   start_index=self.start_index))

    def describe(self):
        if self.segment_s > 0:
            return (f"file segments of {self.segment_s:g} s {os.path.basename(self.tmp)} from index {self.start_index} "
                    f"({self.encoder}, renamed without .partial once complete)")
        return f"file {self.path} ({self.encoder}, written as {os.path.basename(self.tmp)} until finalised)"

    def _on_element(self, structure) -> None:
        if structure is None or structure.get_name() != "splitmuxsink-fragment-closed":
            return
        loc = structure.get_string("location")
        if not loc or ".partial" not in os.path.basename(loc) or not os.path.isfile(loc):
            return
        root, ext = os.path.splitext(loc)
        final = root[: -len(".partial")] + ext if root.endswith(".partial") else loc
        os.replace(loc, final)
        self.files.append(final)
        log.info("segment complete: %s", final)

    def close(self):
        if self._pipe is None and self.frames == 0:
            return None
        ok = self._finish(max(10.0, self.frames / 50))
        if self.segment_s > 0:
            if ok and self.files:
                return self.files[0]
            log.error("%s: not finalised (%s); the unfinished segment keeps its .partial name", self.what, self.error)
            return self.files[0] if self.files else None
        if ok and os.path.isfile(self.tmp):
            os.replace(self.tmp, self.path)
            self.files.append(self.path)
            return self.path
        log.error("%s: not finalised (%s); the partial file is %s", self.what, self.error, self.tmp)
        return None


class OpenCVFileSink(Sink):
    kind = "file"

    def __init__(self, path: str, fps: float):
        super().__init__()
        self.path, self.fps = path, fps
        self.tmp = partial_path(path)
        self._w = None
        self.fourcc = "MJPG" if path.lower().endswith(".avi") else "mp4v"

    def describe(self):
        return f"file {self.path} (OpenCV {self.fourcc} writer, written as {os.path.basename(self.tmp)} until finalised)"

    def write(self, frame, pts_ns) -> bool:
        frame = self._fit(frame)
        if isinstance(frame, I420Frame):
            frame = frame.to_bgr()
        if self._w is None:
            self._w = cv2.VideoWriter(self.tmp, cv2.VideoWriter_fourcc(*self.fourcc), float(self.fps or 30), self.size)
            if not self._w.isOpened():
                raise UserError(f"--output {self.path}: OpenCV cannot open a {self.fourcc} writer for it; "
                                "use a .mp4 or .avi name, or install GStreamer for H.264")
        self._w.write(np.ascontiguousarray(frame))
        self.frames += 1
        return True

    def close(self):
        if self._w is None:
            return None
        self._w.release()
        self._w = None
        if os.path.isfile(self.tmp) and os.path.getsize(self.tmp) > 0:
            os.replace(self.tmp, self.path)
            self.files.append(self.path)
            return self.path
        return None


def check_output_path(path: str) -> None:
    """Fail before capturing anything if the output file cannot be written."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise UserError(f"--output {path}: cannot create folder {d} ({e.strerror})")
    if not os.access(d, os.W_OK):
        raise UserError(f"--output {path}: folder {d} is not writable")
    if os.path.isdir(path):
        raise UserError(f"--output {path}: is a folder; give a file name such as {os.path.join(path, 'fused.mp4')}")


def _segment_re(path: str):
    root, ext = os.path.splitext(os.path.basename(path))
    return re.compile(re.escape(root) + r"_(\d{5,})(\.partial)?" + re.escape(ext) + "$")


def choose_output_path(path: str, *, segment_s: float = 0.0, overwrite: bool = False) -> tuple[str, int]:
    """Where a recording goes without overwriting an earlier one: ``(path, segment start index)``.

    One file: ``out.mp4`` if neither it nor ``out.partial.mp4`` (left by a killed run) exists,
    else the first free ``out.1.mp4``, ``out.2.mp4``, ... Segments: numbering continues after the
    highest ``out_NNNNN[.partial].mp4`` already there. ``overwrite``: the name as given, index 0."""
    if segment_s > 0:
        if overwrite:
            return path, 0
        d = os.path.dirname(os.path.abspath(path))
        pat = _segment_re(path)
        taken = [int(m.group(1)) for f in (os.listdir(d) if os.path.isdir(d) else []) if (m := pat.match(f))]
        return path, (max(taken) + 1 if taken else 0)
    if overwrite or not (os.path.exists(path) or os.path.exists(partial_path(path))):
        return path, 0
    root, ext = os.path.splitext(path)
    n = 1
    while os.path.exists(f"{root}.{n}{ext}") or os.path.exists(partial_path(f"{root}.{n}{ext}")):
        n += 1
    return f"{root}.{n}{ext}", 0


_SAID_OPENCV = False


def make_sink(uri: StreamURI, fps: float, encoder: str = "auto", *, segment_s: float = 0.0,
              overwrite: bool = False) -> Sink:
    """The sink for an output URI. Checks what can be checked before any frame exists.
    ``fps`` is provisional: the pipeline sets ``sink.fps`` to the real output rate before the
    first frame, and the GStreamer pipelines are built then."""
    global _SAID_OPENCV
    if encoder not in ENCODER_CHOICES:
        raise UserError(f"--encoder {encoder}: use one of {', '.join(ENCODER_CHOICES)}")
    if uri.kind == "none":
        return NullSink()
    gst_ok = gstmod.have_gst()
    if uri.kind == "file":
        check_output_path(uri.location)
        path, start = choose_output_path(uri.location, segment_s=segment_s, overwrite=overwrite)
        if segment_s > 0 and start:
            log.warning("--output %s: segments up to %05d exist; numbering continues at %05d",
                        uri.location, start - 1, start)
        elif path != uri.location:
            log.warning("--output %s: an earlier recording has that name; writing %s instead (--overwrite replaces it)",
                        uri.location, path)
        if segment_s > 0 and (encoder == "opencv" or not gst_ok):
            raise UserError(f"--segment needs GStreamer's splitmuxsink ({gstmod.gst_reason() or 'not with --encoder opencv'}); "
                            "drop --segment or use --encoder auto")
        if encoder == "opencv":
            return OpenCVFileSink(path, fps)
        enc = gstmod.pick_encoder(None if encoder == "auto" else encoder) if gst_ok else None
        if enc is None:
            if encoder not in ("auto", "opencv"):
                if not gst_ok:
                    raise UserError(f"--encoder {encoder} needs GStreamer ({gstmod.gst_reason()}); use --encoder auto")
                raise UserError(f"--encoder {encoder}: the GStreamer element is not installed "
                                f"({gstmod.ELEMENT_PACKAGES.get(encoder, 'its plugin package')}); use --encoder auto")
            if segment_s > 0:
                raise UserError("--segment needs an H.264 encoder element: install gstreamer1.0-plugins-ugly (x264enc) "
                                "or gstreamer1.0-plugins-bad (openh264enc)")
            if not _SAID_OPENCV:
                why = gstmod.gst_reason() if not gst_ok else "no H.264 encoder element (x264enc, openh264enc, nvv4l2h264enc)"
                log.warning("writing %s with OpenCV's mp4v writer: %s", path, why)
                _SAID_OPENCV = True
            return OpenCVFileSink(path, fps)
        sink = GstFileSink(path, fps, enc, segment_s=segment_s, start_index=start)
        gstmod.check_elements(gstmod.file_sink_launch(sink.tmp, 64, 64, fps, enc, segment_s=segment_s),
                              f"--output {uri.raw}")
        return sink
    if not gst_ok:
        raise UserError(f"--output {uri.raw} needs GStreamer ({gstmod.gst_reason()}); install python3-gst-1.0 and "
                        "PyGObject, or write a file (--output file://out.mp4)")
    if uri.kind == "display":
        if not display_available():
            raise UserError(f"--output {uri.raw}: no display (DISPLAY/WAYLAND_DISPLAY not set); use --output "
                            "file://out.mp4, udp://HOST:PORT or none")
        what = f"--output {uri.raw}"
        name = gstmod.choose_display_sink(what)  # brought to READY here: a failure is one line, before any start
        gstmod.check_elements(gstmod.display_sink_launch(64, 64, fps, name), what)
        sink = GstSink(what, fps, lambda w, h, fps, fmt="BGR": gstmod.display_sink_launch(w, h, fps, name, fmt))
        sink.kind = "display"
        return sink
    enc = gstmod.pick_encoder(None if encoder in ("auto", "opencv") else encoder)
    if enc is None:
        raise UserError(f"--output {uri.raw} needs an H.264 encoder: install gstreamer1.0-plugins-ugly (x264enc) "
                        "or gstreamer1.0-plugins-bad (openh264enc)")
    if uri.kind == "udp":
        build = lambda w, h, fps, fmt="BGR": gstmod.udp_sink_launch(uri.host, uri.port, w, h, fps, enc, fmt)  # noqa: E731
        gstmod.check_elements(build(64, 64, fps), f"--output {uri.raw}")
        log.info("streaming RTP/H.264 to %s:%d; receive with: %s", uri.host, uri.port, gstmod.udp_receiver_hint(uri.port))
        return GstSink(f"--output {uri.raw}", fps, build)
    if uri.kind == "rtsp":
        build = lambda w, h, fps, fmt="BGR": gstmod.rtsp_sink_launch(uri.location, w, h, fps, enc, fmt)  # noqa: E731
        gstmod.check_elements(build(64, 64, fps), f"--output {uri.raw}",
                              "rtsp:// output publishes to an RTSP server (e.g. mediamtx); or use udp://HOST:PORT")
        return GstSink(f"--output {uri.raw}", fps, build)
    raise UserError(f"--output {uri.raw}: unsupported output")


class MultiSink(Sink):
    """Several outputs at once (``--output`` given more than once; the demo's file + window)."""

    kind = "multi"

    def __init__(self, sinks: list[Sink]):
        super().__init__()
        self.sinks = sinks

    @property
    def fps(self):
        return self.sinks[0].fps if self.sinks and hasattr(self.sinks[0], "fps") else None

    @fps.setter
    def fps(self, value):
        for s in self.sinks:
            s.fps = value

    def describe(self):
        return " + ".join(s.describe() for s in self.sinks)

    def write(self, frame, pts_ns) -> bool:
        frame = self._fit(frame)  # one size for all outputs (a size change is said once, here)
        ok = True
        for s in self.sinks:
            if not s.write(frame, pts_ns):
                ok = False
                self.error = self.error or s.error
                self.closed_by_user = self.closed_by_user or s.closed_by_user
        self.frames += 1
        return ok

    def close(self):
        paths = [s.close() for s in self.sinks]
        for s in self.sinks:
            self.files.extend(s.files)
            if s.error and not self.error:
                self.error = s.error
        files = [p for p in paths if p]
        return files[0] if files else None
