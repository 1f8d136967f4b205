"""Time and timer scheduling for the protocol state machines: the protocol and a fake clock.

The state machines never read the wall clock or sleep; they are given a ``Scheduler``.
An ``asyncio`` event loop satisfies the protocol (``loop.time()``, ``loop.call_later()``);
tests use ``FakeScheduler`` and move time by hand.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["FakeHandle", "FakeScheduler", "Handle", "Scheduler"]


class Handle(Protocol):
    """A scheduled callback that can be cancelled (``asyncio.TimerHandle`` fits)."""

    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Monotonic time in seconds and one-shot timers (an asyncio event loop fits)."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Handle: ...


class FakeHandle:
    """Handle of a ``FakeScheduler`` callback."""

    __slots__ = ("_when", "_callback", "_args", "_cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple) -> None:
        self._when = when
        self._callback = callback
        self._args = args
        self._cancelled = False

    def cancel(self) -> None:
        """Prevent the callback from running (idempotent)."""
        self._cancelled = True

    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called."""
        return self._cancelled

    def when(self) -> float:
        """Absolute time at which the callback is due."""
        return self._when


class FakeScheduler:
    """Manual clock: ``advance()`` runs due callbacks in time order, setting ``time()`` to each."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._queue: list[tuple[float, int, FakeHandle]] = []
        # Ties run in the order they were scheduled, as asyncio does.
        self._seq = itertools.count()

    def time(self) -> float:
        """Current fake time in seconds."""
        return self._now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        """Run ``callback(*args)`` ``delay`` seconds from now (negative delays mean now)."""
        handle = FakeHandle(self._now + max(delay, 0.0), callback, args)
        heapq.heappush(self._queue, (handle.when(), next(self._seq), handle))
        return handle

    def advance(self, seconds: float) -> None:
        """Move time forward, running every callback that falls due, including new ones."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        target = self._now + seconds
        while self._queue and self._queue[0][0] <= target:
            when, _, handle = heapq.heappop(self._queue)
            if handle.cancelled():
                continue
            self._now = when
            handle._callback(*handle._args)
        self._now = target

    def pending(self) -> int:
        """Number of callbacks still due to run (cancelled ones excluded)."""
        return sum(1 for _, _, h in self._queue if not h.cancelled())

    def next_due(self) -> float | None:
        """Time of the earliest pending callback, or None."""
        due = [h.when() for _, _, h in self._queue if not h.cancelled()]
        return min(due) if due else None
