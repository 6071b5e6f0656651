"""Capture: frames with timestamps from GStreamer appsink, OpenCV (fallback) or image sequences.

Modules: ``base`` (Frame, Status, the Capture interface, format helpers), ``images``,
``gstreamer``, ``opencv`` (one per source kind), ``thread`` (SourceThread: reading, reconnecting);
``make_capture`` here picks the kind for a URI.

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

import logging

from .. import gst as gstmod
from ..uri import ImagePairing, StreamOptions, StreamURI
from .base import ROLE_NAMES, Capture, Frame, SourceError, Status, apply_flip, to_role_format
from .gstreamer import GstCapture
from .images import ImageSequenceCapture
from .opencv import OpenCVCapture
from .thread import SourceCounters, SourceThread, backoff_delays

log = logging.getLogger("moefusion.runtime")

__all__ = ["ROLE_NAMES", "Capture", "Frame", "GstCapture", "ImageSequenceCapture", "OpenCVCapture", "SourceCounters",
           "SourceError", "SourceThread", "Status", "apply_flip", "backoff_delays", "make_capture", "to_role_format"]

_FALLBACK_SAID = False


def make_capture(uri: StreamURI, opts: StreamOptions, role: str, *, paced: bool = False,
                 pairing: ImagePairing | None = None, files: list[str] | None = None,
                 rate: float | None = None, pool=None, yuv: bool = False, media_clock: bool = False) -> Capture:
    """The capture for a URI: image sequences directly (``pairing``/``files``/``rate``: two
    folders paired by file name), everything else through GStreamer, or OpenCV when
    GStreamer/PyGObject is missing (said once). ``pool``: GStreamer frames are copied into arrays
    from it (``process.BufferPool``), given back by the pipeline once written. ``yuv``: a colour
    VIS stream through GStreamer comes as ``yuv.I420Frame`` (others ignore it). ``media_clock``: a
    paced file or folder with no live source beside it (``--realtime``) is stamped with its media
    time, not the moment it was due, so that two of them pair by their own timestamps."""
    global _FALLBACK_SAID
    if uri.kind == "images":
        if pairing is not None:
            return ImageSequenceCapture(uri, opts, role, paced=paced, files=files, slots=pairing.slots(role),
                                        n_slots=pairing.n_slots, rate=rate, media_clock=media_clock)
        return ImageSequenceCapture(uri, opts, role, paced=paced, media_clock=media_clock)
    if gstmod.have_gst():
        return GstCapture(uri, opts, role, paced=paced, pool=pool, yuv=yuv, media_clock=media_clock)
    if not _FALLBACK_SAID:
        log.warning("GStreamer is not available (%s): using OpenCV capture for devices and files",
                    gstmod.gst_reason())
        _FALLBACK_SAID = True
    return OpenCVCapture(uri, opts, role)
