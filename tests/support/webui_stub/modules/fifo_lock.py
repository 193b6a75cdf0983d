"""modules/fifo_lock.py: a lock that wakes waiters in arrival order (same interface as FIFOLock)."""

import collections
import threading


class FIFOLock:
    def __init__(self):
        self._cond = threading.Condition()
        self._queue = collections.deque()
        self._held = False

    def acquire(self, blocking=True):
        with self._cond:
            if not self._held and not self._queue:
                self._held = True
                return True
            if not blocking:
                return False
            ticket = object()
            self._queue.append(ticket)
            while self._held or self._queue[0] is not ticket:
                self._cond.wait()
            self._queue.popleft()
            self._held = True
            return True

    def release(self):
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def locked(self):
        return self._held

    __enter__ = acquire

    def __exit__(self, t, v, tb):
        self.release()
