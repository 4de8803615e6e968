"""Rate limits: the limiter asks to wait exactly as long as the relay's limits require
(driven by a fake clock: no real waiting, no timing in the test)."""

from __future__ import annotations

import asyncio

from digest.config import SmtpSettings
from digest.deliver import SmtpMailer
from digest.ratelimit import RateLimiter, Window, smtp_limiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def _send_times(limiter: RateLimiter, fake: FakeTime, count: int) -> list[float]:
    times = []

    async def go() -> None:
        for _ in range(count):
            await limiter.acquire()
            times.append(round(fake.now, 6))

    asyncio.run(go())
    return times


def test_per_second_and_per_hour_windows():
    fake = FakeTime()
    limiter = RateLimiter([Window(2, 1.0), Window(5, 3600.0)], clock=fake.clock,
                          sleep=fake.sleep)
    times = _send_times(limiter, fake, 7)
    assert times[:5] == [0.0, 0.0, 1.0, 1.0, 2.0]  # two a second
    assert times[5:] == [3600.0, 3600.0]  # then the hour's five are used up


def test_fractional_rates_and_no_limit():
    fake = FakeTime()
    limiter = smtp_limiter(0.5, 0)
    assert limiter is not None
    limiter.clock, limiter.sleep = fake.clock, fake.sleep
    assert _send_times(limiter, fake, 3) == [0.0, 2.0, 4.0]
    assert smtp_limiter(0, 0) is None


def test_the_mailer_applies_the_configured_limits(smtp_sink):
    settings = SmtpSettings(host="127.0.0.1", port=smtp_sink.port, security="none",
                            max_per_second=3, max_per_hour=100)
    mailer = SmtpMailer(settings, sender="digest@test.example")
    assert mailer.limiter is not None
    assert [(w.limit, w.seconds) for w in mailer.limiter.windows] == [(3, 1.0), (100, 3600.0)]
