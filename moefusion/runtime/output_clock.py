"""The output thread's clock: presentation times, and the sample-and-hold slots of ``--output-rate``."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class HeldFrame:
    """Files with --output-rate: the latest output frame, held until the next one says how many
    output slots it fills (sample and hold)."""
    frame: np.ndarray
    media_ns: float  # its media time, from the first frame's
    capture_ns: int
    slots: int = 0  # output slots it has filled so far


class OutputClock:
    """The output thread's clock: presentation times, and the slots of ``--output-rate``.

    Without ``--output-rate`` (``convert`` False): frame n of files at n / fps, live frames at their
    capture time from the first one's. With it: slot k is at k / rate; files fill the slots from a
    ``HeldFrame``, live frames go to the next slot when due (within half a slot)."""

    EPS_NS = 1e6  # 1 ms: media timestamps are rounded to ns

    def __init__(self, fps: float, *, live: bool, convert: bool, max_frames: int = 0):
        self.fps, self.live, self.convert, self.max_frames = fps, live, convert, max_frames
        self.period = 1e9 / fps
        self.n = 0  # frames written
        self.next_slot = 0
        self.t_first = None  # media (files) or capture (live) time of the first frame
        self.first_ns = None  # live: capture time of the first frame written
        self.held: HeldFrame | None = None
        self.last_dt = 0  # files: media time between the last two frames (the last one's duration)

    def full(self) -> bool:
        """--max-frames reached."""
        return bool(self.max_frames) and self.n >= self.max_frames

    def media_ns(self, item) -> float:
        """--output-rate: the item's time from the first item's (capture time live, media time for files)."""
        t = item.capture_ns if self.live else item.ts_ns
        self.t_first = t if self.t_first is None else self.t_first
        return t - self.t_first

    def too_early(self, t: float) -> bool:
        """Live with --output-rate: before the next slot (by more than half a slot)."""
        return self.live and t < self.next_slot * self.period - self.period / 2

    def slot_due(self, until_ns: float) -> bool:
        """Files with --output-rate: the held frame goes into the next slot (it starts before ``until_ns``)."""
        return self.held is not None and self.next_slot * self.period + self.EPS_NS < until_ns and not self.full()

    def slot_pts(self) -> int:
        return int(round(self.next_slot * self.period))

    def slot_filled(self) -> None:
        self.held.slots += 1
        self.n += 1
        self.next_slot += 1

    def live_pts(self, item, t: float | None) -> int:
        """Live: the capture time from the first frame written's; ``t`` (--output-rate): its slot is taken."""
        self.first_ns = item.capture_ns if self.first_ns is None else self.first_ns
        if t is not None:
            self.next_slot = int(math.floor(t / self.period + 0.5)) + 1
        return item.capture_ns - self.first_ns

    def file_pts(self) -> int:
        """Files: frame n at n / fps."""
        return int(round(self.n * 1e9 / self.fps))
