"""The pipeline's queues: bounded everywhere, in frames and in bytes; live sources drop the oldest
item (counted), files block (one item always fits, whatever its size)."""
from __future__ import annotations

import threading
from collections import deque

from .stats import Stats

_END = object()  # what ``BoundedQueue.get`` returns once the queue is closed and empty
DEFAULT_MAX_BYTES = 256 << 20  # per queue (per stream for the inbox)


def nbytes(obj) -> int:
    """The bytes a queued frame or pipeline item holds (its arrays)."""
    frames = getattr(obj, "frames", None)
    if frames is not None:  # a pipeline item: its source frames (the prepared planes are of the same order)
        return 2 * sum(nbytes(f) for f in frames)
    arr = getattr(obj, "buffer", None)
    if arr is None:
        arr = getattr(obj, "image", obj)
    if not hasattr(arr, "nbytes"):  # a yuv.I420Frame: its one array
        arr = getattr(arr, "data", None)
    return int(getattr(arr, "nbytes", 0) or 0)


class BoundedQueue:
    """Bounded FIFO. ``drop_oldest``: a put into a full queue evicts the oldest (counted);
    otherwise it blocks until there is room or the pipeline stops."""

    def __init__(self, maxsize: int, drop_oldest: bool, on_drop, stop_event: threading.Event,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.maxsize, self.drop_oldest, self.on_drop, self.stop = max(1, maxsize), drop_oldest, on_drop, stop_event
        self.max_bytes = max_bytes
        self.q = deque()
        self._sizes = deque()
        self.bytes = 0
        self.cond = threading.Condition()
        self.closed = False

    def _full(self) -> bool:
        return bool(self.q) and (len(self.q) >= self.maxsize or self.bytes >= self.max_bytes)

    def put(self, item) -> bool:
        size = nbytes(item)
        with self.cond:
            while self._full():
                if self.drop_oldest:
                    self.bytes -= self._sizes.popleft()
                    self.q.popleft()
                    self.on_drop()
                    continue
                if self.stop.is_set():
                    break  # stopping: what is already prepared still goes through
                self.cond.wait(0.05)
            self.q.append(item)
            self._sizes.append(size)
            self.bytes += size
            self.cond.notify_all()
            return True

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def get(self):
        """Next item, or _END once closed and empty."""
        with self.cond:
            while not self.q:
                if self.closed:
                    return _END
                self.cond.wait(0.1)
            item = self.q.popleft()
            self.bytes -= self._sizes.popleft()
            self.cond.notify_all()
            return item


class Inbox:
    """Where capture threads leave frames for the sync thread."""

    def __init__(self, live: dict, cap: int, stats: Stats, stop_event: threading.Event,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        self.live, self.cap, self.stats, self.stop = live, cap, stats, stop_event
        self.max_bytes = max_bytes
        self.q = {"ir": deque(), "vis": deque()}
        self.bytes = {"ir": 0, "vis": 0}
        self.cond = threading.Condition()

    def _full(self, role: str) -> bool:
        q = self.q[role]
        return bool(q) and (len(q) >= self.cap or self.bytes[role] >= self.max_bytes)

    def put(self, role: str, frame) -> bool:
        if frame.copy_s:
            self.stats.stage_time("capture", frame.copy_s)
        with self.cond:
            q = self.q[role]
            if self.live[role]:
                while self._full(role):
                    self.bytes[role] -= nbytes(q.popleft())
                    self.stats.drop(f"queue_full_{role}")
            else:
                while self._full(role):
                    if self.stop.is_set():
                        return False
                    self.cond.wait(0.05)
            q.append(frame)
            self.bytes[role] += nbytes(frame)
            self.stats.count_in(role)
            self.cond.notify_all()
        return True

    def pending(self, role: str) -> int:
        with self.cond:
            return len(self.q[role])

    def take(self, timeout: float, limit: dict | None = None) -> dict:
        """Everything queued, or at most ``limit[role]`` frames of a stream (the sync thread takes
        from a file only what its pairer has room for: the read-ahead stays bounded)."""
        with self.cond:
            if not self.q["ir"] and not self.q["vis"]:
                self.cond.wait(timeout)
            out = {}
            for r, q in self.q.items():
                n = len(q) if limit is None or limit.get(r) is None else min(len(q), max(0, limit[r]))
                out[r] = [q.popleft() for _ in range(n)]
                self.bytes[r] -= sum(nbytes(f) for f in out[r])
            self.cond.notify_all()
            return out
