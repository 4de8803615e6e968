"""Schedules: slots in the subscriber's zone, right across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

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


@pytest.mark.parametrize("text", ["0 7 31 2 *", "0 7 30 2 *"])
def test_a_cron_day_that_never_comes_is_refused(text):
    with pytest.raises(ValueError, match="never"):
        parse_schedule(text)


@pytest.mark.parametrize(("text", "interval"), [
    ("every 6h", timedelta(hours=6)),
    ("every 30 minutes", timedelta(minutes=30)),
    ("every 90s", timedelta(seconds=90)),
])
def test_interval_slots_do_not_depend_on_when_they_are_asked(text, interval):
    now = utc(2026, 11, 25, 11, 58, 7)
    slot = parse_schedule(text, "UTC").last_slot(now)
    assert slot is not None and slot <= now < slot + interval
    # Another process, or the same one after a restart, asking later in that interval.
    again = parse_schedule(text, "Europe/Lisbon")
    assert again.last_slot(slot + interval - timedelta(seconds=1)) == slot
    assert again.last_slot(slot) == slot
    assert again.next_slot(now) - again.last_slot(now) == interval
    assert again.next_slot(slot) == slot + interval
    assert again.last_slot(slot + interval) == slot + interval


def test_interval_slots_fall_on_round_times():
    assert parse_schedule("every 6h").last_slot(utc(2026, 11, 25, 11, 58)) == utc(2026, 11, 25, 6)
    assert parse_schedule("every 30 minutes").next_slot(utc(2026, 11, 25, 11, 58)) == utc(
        2026, 11, 25, 12)


@pytest.mark.parametrize("text", ["every 0s", "every 0 minutes", "every 9000h"])
def test_an_interval_out_of_range_is_refused(text):
    with pytest.raises(ValueError, match="between 1 second and a year"):
        parse_schedule(text)
