"""Video files: GStreamer (H.264, crash-safe containers, segments) or OpenCV's mp4v writer, written
under ``NAME.partial.EXT`` and renamed once complete; where a recording goes without overwriting
an earlier one."""
from __future__ import annotations

import logging
import os
import re
import struct

import cv2
import numpy as np

from ...errors import UserError
from ...files import check_writable
from ..yuv import I420Frame
from . import launch
from .base import Sink
from .gstreamer import GstSink

log = logging.getLogger("moefusion.runtime")


def partial_path(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.partial{ext}"

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
        self.tmp = launch.segment_pattern(path) if segment_s > 0 else partial_path(path)
        self.encoder = encoder
        super().__init__(f"--output {path}", fps,
                         lambda w, h, fps, fmt="BGR": launch.file_sink_launch(self.tmp, w, h, fps, self.encoder, fmt=fmt,
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
        if os.path.isfile(self.tmp):
            trim_incomplete(self.tmp)  # a write error (full disk) cut the last fragment short
        if os.path.isfile(self.tmp) and not has_frames(self.tmp):
            os.remove(self.tmp)  # a header without a single frame: no file rather than an empty one
            log.warning("%s: not finalised and no frame was written; %s removed", self.what, self.tmp)
        else:
            log.warning("%s: not finalised; the frames written so far are kept in %s", self.what, self.tmp)
        return None


def trim_incomplete(path: str) -> int:
    """A fragmented MP4/MOV cut short (a write error, a full disk) ends inside a fragment, and
    players then refuse the whole file: cut it after its last complete fragment (``moof`` +
    ``mdat``) so that every frame before it plays. Returns the bytes removed (0: other containers,
    or nothing to cut)."""
    if not path.lower().endswith((".mp4", ".mov")):
        return 0
    try:
        size = os.path.getsize(path)
        keep, pos = 0, 0
        with open(path, "rb") as fh:
            while pos + 8 <= size:
                fh.seek(pos)
                head = fh.read(16)
                n, kind = struct.unpack(">I4s", head[:8])
                if n == 1 and len(head) == 16:
                    n = struct.unpack(">Q", head[8:16])[0]
                elif n == 0:
                    n = size - pos
                if n < 8 or pos + n > size:
                    break
                pos += n
                if kind != b"moof":  # a fragment is complete with its mdat
                    keep = pos
        if keep < size:
            os.truncate(path, keep)
            log.info("%s: cut after its last complete fragment (%d bytes of an unfinished one removed)", path,
                     size - keep)
        return size - keep
    except OSError as e:
        log.warning("%s: cannot trim its unfinished last fragment: %s", path, e)
        return 0


def has_frames(path: str) -> bool:
    """Whether a recording that was not finalised holds a frame: a fragmented MP4/MOV needs one
    complete fragment (``moof``; the header alone is written at the start); other containers are
    readable up to their last frame, so any data after a small header counts."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(4 << 20)
    except OSError:
        return False
    if path.lower().endswith((".mp4", ".mov")):
        return b"moof" in data
    return len(data) > 4096


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
    """Fail before capturing anything if the output file cannot be written (its folder is created)."""
    if os.path.isdir(path):
        raise UserError(f"--output {path}: is a folder; give a file name such as {os.path.join(path, 'fused.mp4')}")
    try:
        check_writable(path)
    except UserError as e:
        raise UserError(f"--output {path}: {e}") from None


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
