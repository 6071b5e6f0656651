"""Image sequences (folder, glob, single image): read directly, timed at ``--*-rate``."""
from __future__ import annotations

import time

import cv2

from ..uri import expand_images
from .base import Capture, Frame, Status, _flag, to_role_format


class ImageSequenceCapture(Capture):
    """Frames of an image folder/glob, timed at ``--*-rate``: frame k at k / rate, or at its slot
    / rate when two folders are paired by file name (``slots``, see ``uri.pair_by_stem``).

    ``paced`` (beside a live camera, or ``--realtime``): each frame is handed out when it is due
    on the monotonic clock, like a camera, and stamped with that time; a reader that falls more
    than a frame behind skips the frames it missed (counted as source gaps)."""

    kind = "images"

    def __init__(self, uri, opts, role, *, paced: bool = False, files: list[str] | None = None,
                 slots: tuple | None = None, n_slots: int | None = None, rate: float | None = None,
                 media_clock: bool = False):
        super().__init__(uri, opts, role)
        self.files: list[str] = list(files) if files else []
        self._given = files is not None
        self.slots = slots
        self.n_slots = n_slots
        self.rate = float(rate or opts.rate or 30.0)
        self.fps = self.rate
        self.paced = paced
        self.live = paced
        self.media_clock = media_clock  # paced without a camera (--realtime): stamped with media time
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
        self._state = (self._pos, self._loops_left, self._loop_offset, self.index, self.loops)
        return super().peek(timeout)

    def discard_peeked(self) -> bool:
        """Paced sequences rewind instead: the first image is shown, on the clock started now."""
        had = super().discard_peeked()
        if had and self._state is not None:
            self._pos, self._loops_left, self._loop_offset, self.index, self.loops = self._state
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
            self.loops += 1
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
            elif not self.media_clock:
                # beside a live camera: more than a frame late, skip to the frame due now, like a camera
                while self._pos + 1 < len(self.files) and self._t0 + self._media_ns(self._pos + 1) <= now:
                    self._pos += 1
                    self.gaps += 1
                due = self._t0 + self._media_ns(self._pos)
            # --realtime without a camera (media clock): a late frame is handed out late, not skipped;
            # its stamp is its media time, so the two files still pair frame for frame
        path = self.files[self._pos]
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            self.error = f"{self.what}: cannot read image {path}; remove or replace the file"
            return Status.ERROR, None
        img = to_role_format(img, self.role, self.opts)
        if self.paced:
            ts = cap = due
            if self.media_clock:
                ts = self._media_ns(self._pos)
        else:
            ts, cap = self._media_ns(self._pos), time.monotonic_ns()
        self._pos += 1
        f = Frame(img, ts, cap, self.index, self.role)
        self.index += 1
        return Status.OK, f
