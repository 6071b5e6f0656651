"""The pipeline's queues: bounded everywhere; live sources drop the oldest item (counted), files block."""
from __future__ import annotations

import threading
from collections import deque

from .stats import Stats

_END = object()  # what ``BoundedQueue.get`` returns once the queue is closed and empty


class BoundedQueue:
    """Bounded FIFO. ``drop_oldest``: a put into a full queue evicts the oldest (counted);
    otherwise it blocks until there is room or the pipeline stops."""

    def __init__(self, maxsize: int, drop_oldest: bool, on_drop, stop_event: threading.Event):
        self.maxsize, self.drop_oldest, self.on_drop, self.stop = max(1, maxsize), drop_oldest, on_drop, stop_event
        self.q = deque()
        self.cond = threading.Condition()
        self.closed = False

    def put(self, item) -> bool:
        with self.cond:
            while len(self.q) >= self.maxsize:
                if self.drop_oldest:
                    self.q.popleft()
                    self.on_drop()
                    break
                if self.stop.is_set():
                    break  # stopping: what is already prepared still goes through
                self.cond.wait(0.05)
            self.q.append(item)
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
            self.cond.notify_all()
            return item


class Inbox:
    """Where capture threads leave frames for the sync thread."""

    def __init__(self, live: dict, cap: int, stats: Stats, stop_event: threading.Event):
        self.live, self.cap, self.stats, self.stop = live, cap, stats, stop_event
        self.q = {"ir": deque(), "vis": deque()}
        self.cond = threading.Condition()

    def put(self, role: str, frame) -> bool:
        if frame.copy_s:
            self.stats.stage_time("capture", frame.copy_s)
        with self.cond:
            q = self.q[role]
            if self.live[role]:
                if len(q) >= self.cap:
                    q.popleft()
                    self.stats.drop(f"queue_full_{role}")
            else:
                while len(q) >= self.cap:
                    if self.stop.is_set():
                        return False
                    self.cond.wait(0.05)
            q.append(frame)
            self.stats.count_in(role)
            self.cond.notify_all()
        return True

    def take(self, timeout: float) -> dict:
        with self.cond:
            if not self.q["ir"] and not self.q["vis"]:
                self.cond.wait(timeout)
            out = {r: list(q) for r, q in self.q.items()}
            for q in self.q.values():
                q.clear()
            self.cond.notify_all()
            return out
