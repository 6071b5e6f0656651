"""The capture thread: read one capture, hand frames on, reconnect a live source with backoff."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from ...errors import UserError
from .base import Capture, SourceError, Status

log = logging.getLogger("moefusion.runtime")


def backoff_delays(initial: float = 0.25, factor: float = 2.0, maximum: float = 5.0):
    """0.25, 0.5, 1, 2, 4, 5, 5, ... seconds."""
    d = initial
    while True:
        yield min(d, maximum)
        d *= factor


@dataclass
class SourceCounters:
    frames: int = 0
    reconnects: int = 0
    gaps: int = 0


class SourceThread(threading.Thread):
    """Reads one capture in its own thread and calls ``deliver(frame)`` for each frame.

    Live sources: a failure (bus error, end of stream, or no frame for ``stall_timeout``) closes
    the capture and reopens it with backoff until it works again or ``reconnect_timeout`` passes
    (negative: forever). Finite sources: EOS ends the thread; an error is fatal (``fatal``).
    """

    def __init__(self, capture: Capture, deliver, stop_event: threading.Event, *,
                 factory=None, stall_timeout: float = 3.0, reconnect_timeout: float = -1.0):
        super().__init__(name=f"capture-{capture.role}", daemon=True)
        self.capture = capture
        self.factory = factory  # () -> new opened Capture, for reconnects
        self.deliver = deliver
        self.stop_event = stop_event
        self.stall_timeout = stall_timeout
        self.reconnect_timeout = reconnect_timeout
        self.counters = SourceCounters()
        self.eos = threading.Event()
        self.fatal: str | None = None
        self.warning: str | None = None  # a file that ended early (``Capture.shortfall``)
        self.live = capture.live
        self.finite = capture.ends  # EOS ends it; errors are fatal (no reconnect)
        self._gaps_before = 0

    def run(self):
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported to the main thread, never lost
            self.fatal = f"{self.capture.what}: {type(e).__name__}: {e}"
            log.exception("capture thread %s crashed", self.name)
        finally:
            try:
                self.capture.close()
            finally:
                self.eos.set()

    def _run(self):
        last_frame = time.monotonic()
        while not self.stop_event.is_set():
            status, frame = self.capture.read(0.1)
            if status is Status.OK:
                frame.arrival_ns = time.monotonic_ns()
                frame.loop = self.capture.loops
                self.counters.frames += 1
                self.counters.gaps = self._gaps_before + self.capture.gaps
                last_frame = time.monotonic()
                if not self.deliver(frame):
                    return
                continue
            if status is Status.TIMEOUT:
                if not self.finite and time.monotonic() - last_frame > self.stall_timeout:
                    self._fail(f"{self.capture.what}: no frame for {self.stall_timeout:g} s")
                    if self.fatal:
                        return
                    last_frame = time.monotonic()
                continue
            if status is Status.EOS and self.finite:
                self.warning = self.capture.shortfall()
                if self.warning:
                    log.warning("%s", self.warning)
                return
            reason = self.capture.error if status is Status.ERROR else f"{self.capture.what}: end of stream"
            if self.finite:
                self.fatal = reason
                return
            self._fail(reason)
            if self.fatal:
                return
            last_frame = time.monotonic()

    def _fail(self, reason: str):
        """Close and reopen a live source with backoff; sets ``fatal`` when giving up."""
        c = self.counters
        log.warning("%s; reconnecting", reason)
        gaps_before = self._gaps_before + self.capture.gaps
        self.capture.close()
        if self.factory is None or self.reconnect_timeout == 0:
            self.fatal = f"{reason} (reconnecting is off)"
            return
        t0 = time.monotonic()
        for delay in backoff_delays():
            if self.stop_event.wait(delay):
                return
            try:
                cap = self.factory()
                cap.open()
            except (SourceError, UserError) as e:
                if 0 < self.reconnect_timeout < time.monotonic() - t0:
                    self.fatal = f"{reason}; not back after {self.reconnect_timeout:g} s ({e})"
                    return
                log.info("%s still unavailable (%s); next try in %.2g s", self.capture.what, e, min(delay * 2, 5.0))
                continue
            self.capture = cap
            self._gaps_before = gaps_before
            c.reconnects += 1
            log.warning("%s is back after %.1f s; resuming", cap.what, time.monotonic() - t0)
            return
