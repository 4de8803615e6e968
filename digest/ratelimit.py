"""Sending rate limits, as real relays impose them: at most N messages per window.

A sliding window over the send times; `clock` and `sleep` are parameters so tests can
drive it without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Window:
    """At most `limit` events in any `seconds`-long window."""

    limit: int
    seconds: float
    times: deque[float] = field(default_factory=deque)

    def wait_s(self, now: float) -> float:
        """How long to wait before one more event is allowed."""
        while self.times and self.times[0] <= now - self.seconds:
            self.times.popleft()
        if len(self.times) < self.limit:
            return 0.0
        return self.times[0] + self.seconds - now


class RateLimiter:
    """Waits as long as any of its windows requires before each send."""

    def __init__(self, windows: Sequence[Window], *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.windows = [w for w in windows if w.limit > 0]
        self.clock = clock
        self.sleep = sleep

    async def acquire(self) -> None:
        """Return when one more message may be sent, and count it."""
        while True:
            now = self.clock()
            wait = max((w.wait_s(now) for w in self.windows), default=0.0)
            if wait <= 0:
                for window in self.windows:
                    window.times.append(now)
                return
            await self.sleep(wait)


def smtp_limiter(per_second: float, per_hour: int) -> RateLimiter | None:
    """The limiter for `[smtp] max_per_second` and `max_per_hour` (0 means no limit)."""
    windows = []
    if per_second > 0:
        # A fractional rate (0.5/s) is one message per 2 s.
        windows.append(Window(max(1, int(per_second)), max(1.0, 1.0 / per_second)
                              if per_second < 1 else 1.0))
    if per_hour > 0:
        windows.append(Window(per_hour, 3600.0))
    return RateLimiter(windows) if windows else None
