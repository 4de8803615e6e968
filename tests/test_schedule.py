"""Schedules: slots in the subscriber's zone, right across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from digest.schedule import parse_schedule


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_daily_follows_local_time_across_the_spring_change():
    schedule = parse_schedule("daily 07:00", "Europe/Lisbon")
    # Lisbon moves from UTC+0 to UTC+1 on 2026-03-29.
    assert schedule.next_slot(utc(2026, 3, 28, 8)) == utc(2026, 3, 29, 6)
    assert schedule.last_slot(utc(2026, 3, 29, 6, 30)) == utc(2026, 3, 29, 6)
    assert schedule.last_slot(utc(2026, 3, 29, 5, 59)) == utc(2026, 3, 28, 7)


def test_weekly_and_weekdays():
    weekly = parse_schedule("weekly mon 07:00", "America/New_York")
    assert weekly.last_slot(utc(2026, 11, 25, 12)) == utc(2026, 11, 23, 12)
    weekdays = parse_schedule("weekdays 07:30", "UTC")
    assert weekdays.last_slot(utc(2026, 11, 29, 12)) == utc(2026, 11, 27, 7, 30)  # Sun -> Fri


@pytest.mark.parametrize(("expr", "expected"), [
    ("0 8 * * 0", utc(2026, 11, 22, 8)),  # cron's 0 is Sunday
    ("0 8 * * 7", utc(2026, 11, 22, 8)),
    ("0 9 * * 1-5", utc(2026, 11, 25, 9)),
    ("*/5 * * * *", utc(2026, 11, 25, 11, 55)),
    ("0 0 1 1 *", utc(2026, 1, 1)),
])
def test_cron_expressions_use_standard_day_numbers(expr, expected):
    assert parse_schedule(expr, "UTC").last_slot(utc(2026, 11, 25, 11, 58)) == expected


@pytest.mark.parametrize("text", ["daily 25:00", "sometimes", "0 9 * * 9", "weekly xyz 07:00",
                                  "* * *"])
def test_bad_schedules_say_why(text):
    with pytest.raises(ValueError, match="schedule|day of week"):
        parse_schedule(text)
