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

Encoder (``--encoder auto``): the first available of nvv4l2h264enc (only on a Jetson with NVENC:
not on an Orin Nano, which has the element but no hardware encoder; see ``launch.pick_encoder``),
x264enc, openh264enc; without any (or without GStreamer) files are written by OpenCV's mp4v writer,
and that is logged once.

Modules: ``base`` (Sink, NullSink, MultiSink), ``gstreamer`` (GstSink: window and network streams),
``files`` (video files and their names), ``launch`` (the GStreamer launch strings of the outputs);
``make_sink`` here picks the sink for an output URI.
"""
from __future__ import annotations

import logging

from ...errors import UserError
from .. import gst as gstmod
from ..uri import StreamURI
from . import launch
from .base import MultiSink, NullSink, Sink, display_available
from .files import GstFileSink, OpenCVFileSink, check_output_path, choose_output_path, partial_path
from .gstreamer import GstSink

log = logging.getLogger("moefusion.runtime")

__all__ = ["ENCODER_CHOICES", "GstFileSink", "GstSink", "MultiSink", "NullSink", "OpenCVFileSink", "Sink",
           "check_output_path", "choose_output_path", "display_available", "make_sink", "partial_path"]

ENCODER_CHOICES = ("auto", "nvv4l2h264enc", "x264enc", "openh264enc", "opencv")


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
        enc = launch.pick_encoder(None if encoder == "auto" else encoder) if gst_ok else None
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
                why = gstmod.gst_reason() if not gst_ok else \
                    "no usable H.264 encoder element (x264enc, openh264enc; nvv4l2h264enc only with NVENC)"
                log.warning("writing %s with OpenCV's mp4v writer: %s", path, why)
                _SAID_OPENCV = True
            return OpenCVFileSink(path, fps)
        sink = GstFileSink(path, fps, enc, segment_s=segment_s, start_index=start)
        gstmod.check_elements(launch.file_sink_launch(sink.tmp, 64, 64, fps, enc, segment_s=segment_s),
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
        name = launch.choose_display_sink(what)  # brought to READY here: a failure is one line, before any start
        gstmod.check_elements(launch.display_sink_launch(64, 64, fps, name), what)
        sink = GstSink(what, fps, lambda w, h, fps, fmt="BGR": launch.display_sink_launch(w, h, fps, name, fmt))
        sink.kind = "display"
        return sink
    enc = launch.pick_encoder(None if encoder in ("auto", "opencv") else encoder)
    if enc is None:
        raise UserError(f"--output {uri.raw} needs an H.264 encoder: install gstreamer1.0-plugins-ugly (x264enc) "
                        "or gstreamer1.0-plugins-bad (openh264enc)")
    if uri.kind == "udp":
        build = lambda w, h, fps, fmt="BGR": launch.udp_sink_launch(uri.host, uri.port, w, h, fps, enc, fmt)  # noqa: E731
        gstmod.check_elements(build(64, 64, fps), f"--output {uri.raw}")
        log.info("streaming RTP/H.264 to %s:%d; receive with: %s", uri.host, uri.port, launch.udp_receiver_hint(uri.port))
        return GstSink(f"--output {uri.raw}", fps, build)
    if uri.kind == "rtsp":
        build = lambda w, h, fps, fmt="BGR": launch.rtsp_sink_launch(uri.location, w, h, fps, enc, fmt)  # noqa: E731
        gstmod.check_elements(build(64, 64, fps), f"--output {uri.raw}",
                              "rtsp:// output publishes to an RTSP server (e.g. mediamtx); or use udp://HOST:PORT")
        return GstSink(f"--output {uri.raw}", fps, build)
    raise UserError(f"--output {uri.raw}: unsupported output")
