"""OpenCV capture: the fallback for devices, files and RTSP (through FFmpeg) when GStreamer/PyGObject
is missing."""
from __future__ import annotations

import os
import time

import cv2

from ...errors import UserError
from .. import gst as gstmod
from .base import Capture, Frame, SourceError, Status, _flag, to_role_format


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
                    self.loops += 1
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
