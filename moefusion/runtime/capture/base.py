"""What every capture shares: ``Frame``, ``Status``, ``SourceError``, the ``Capture`` interface, and
the format/size/flip step of the captures that do not go through GStreamer (``to_role_format``)."""
from __future__ import annotations

import enum
from dataclasses import dataclass

import cv2
import numpy as np

from ..uri import StreamOptions, StreamURI

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
    loop: int = 0  # how many times a looping file (--ir-loop/--vis-loop) had started again before this frame


class SourceError(Exception):
    """A source could not be opened or failed. At start-up it becomes a UserError (one line);
    for a live source mid-run it triggers a reconnect."""


def _flag(role: str) -> str:
    return f"--{role}"


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
        self.loops = 0  # times a file or image folder started again from its beginning (--*-loop)

    @property
    def what(self) -> str:
        return f"{ROLE_NAMES.get(self.role, self.role)} source {self.uri.raw} ({_flag(self.role)})"

    @property
    def ends(self) -> bool:
        """Its end of stream is the end of the input (files, image folders, finite test streams),
        not a failure to reconnect from."""
        return self.uri.is_finite

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
