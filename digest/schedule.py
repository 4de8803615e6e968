"""Schedules: when each subscriber's editions fall, in the subscriber's own time zone.

`daily 07:00`, `weekdays 07:00`, `weekly mon 07:00`, `every 6h` (also `30m`, `90s`), or
a five-field cron expression (standard cron: day-of-week 0 and 7 are Sunday). Slots are
returned in UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_TIME = r"(?P<hour>[01]?\d|2[0-3]):(?P<minute>[0-5]\d)"
_DAILY = re.compile(rf"^daily\s+{_TIME}$", re.IGNORECASE)
_WEEKDAYS = re.compile(rf"^weekdays\s+{_TIME}$", re.IGNORECASE)
_EVERY = re.compile(r"^every\s+(?P<count>\d+)\s*(?P<unit>s|sec|m|min|h|hr|hours?|minutes?|"
                    r"seconds?)$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600}
# Interval slots are counted from this instant, so they do not move when the daemon restarts.
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_WEEKLY = re.compile(
    rf"^weekly\s+(?P<day>mon|tue|wed|thu|fri|sat|sun)[a-z]*\s+{_TIME}$", re.IGNORECASE)
# Look-back windows for the latest slot: short first, so frequent schedules iterate little.
_WINDOWS = tuple(timedelta(days=d) for d in (1 / 24, 1, 8, 32, 367, 5 * 366))


@lru_cache(maxsize=256)
def cadence(spec: str) -> str:
    """How often a schedule comes round, as an email names its edition: "weekly" for
    `weekly DAY HH:MM` or a cron that fires at one time on one weekday, "daily" for
    `daily`, `weekdays` or a cron that fires at one time on any or several days, ""
    for any other (`every 6h`, a cron of several times a day)."""
    spec = " ".join(spec.split())
    if _WEEKLY.match(spec):
        return "weekly"
    if _DAILY.match(spec) or _WEEKDAYS.match(spec):
        return "daily"
    fields = spec.split(" ")
    if len(fields) != 5 or fields[2:4] != ["*", "*"] or not fields[1].isdigit():
        return ""
    one_day = fields[4] != "*" and not any(sign in fields[4] for sign in ",-/*")
    return "weekly" if one_day else "daily"


def load_timezone(name: str) -> ZoneInfo:
    """Return the IANA zone; raises ValueError naming it if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r} (use an IANA name like Europe/Lisbon)") \
            from exc


def _cron_day_of_week(field: str) -> str:
    """Translate standard cron day numbers (0 or 7 = Sunday) into names APScheduler reads."""
    parts = []
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        if not re.fullmatch(r"\*|\d(-\d)?", base) or (step_text and not step_text.isdigit()):
            parts.append(part)  # names such as mon-fri pass through unchanged
            continue
        step = int(step_text or 1)
        if base == "*":
            if not step_text:
                return "*"
            low, high = 0, 6
        elif "-" in base:
            low, high = (int(x) for x in base.split("-"))
        else:
            low = int(base)
            high = 6 if step_text else low
        if not 0 <= low <= 7 or not 0 <= high <= 7 or low > high or step < 1:
            raise ValueError(f"day of week {part!r} is out of range 0-7")
        parts.extend(_DAYS[day % 7] for day in range(low, high + 1, step))
    return ",".join(dict.fromkeys(parts))


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule bound to a time zone."""

    text: str
    timezone: str
    trigger: CronTrigger | IntervalTrigger
    interval: timedelta | None = None  # for `every ...` schedules

    def next_slot(self, after: datetime) -> datetime:
        """The first slot strictly after `after` (UTC)."""
        if self.interval is not None:
            steps = (after - _EPOCH) // self.interval + 1
            return _EPOCH + steps * self.interval
        fire = self.trigger.get_next_fire_time(None, after + timedelta(microseconds=1))
        if fire is None:  # cron expressions always recur, so this is a bug if reached
            raise RuntimeError(f"schedule {self.text!r} has no next slot")
        return fire.astimezone(UTC)  # type: ignore[no-any-return]

    def last_slot(self, now: datetime) -> datetime | None:
        """The latest slot at or before `now` (UTC), or None if there is none in 5 years."""
        if self.interval is not None:
            return _EPOCH + ((now - _EPOCH) // self.interval) * self.interval
        for window in _WINDOWS:
            fire = self.trigger.get_next_fire_time(None, now - window)
            if fire is None or fire > now:
                continue
            while True:
                following = self.trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
                if following is None or following > now:
                    return fire.astimezone(UTC)  # type: ignore[no-any-return]
                fire = following
        return None


def parse_schedule(text: str, timezone: str = "UTC") -> Schedule:
    """Parse a schedule; raises ValueError with the reason if it is not one."""
    zone = load_timezone(timezone)
    spec = " ".join(text.split())
    try:
        if match := _DAILY.match(spec):
            trigger = CronTrigger(hour=int(match["hour"]), minute=int(match["minute"]),
                                  timezone=zone)
        elif match := _WEEKDAYS.match(spec):
            trigger = CronTrigger(day_of_week="mon-fri", hour=int(match["hour"]),
                                  minute=int(match["minute"]), timezone=zone)
        elif match := _EVERY.match(spec):
            seconds = int(match["count"]) * _UNIT_S[match["unit"][0].lower()]
            if not 1 <= seconds <= 366 * 86400:
                raise ValueError("the interval must be between 1 second and a year")
            interval = timedelta(seconds=seconds)
            return Schedule(text=spec, timezone=timezone, interval=interval,
                            trigger=IntervalTrigger(seconds=seconds, start_date=_EPOCH,
                                                    timezone=zone))
        elif match := _WEEKLY.match(spec):
            trigger = CronTrigger(day_of_week=match["day"].lower(), hour=int(match["hour"]),
                                  minute=int(match["minute"]), timezone=zone)
        else:
            fields = spec.split(" ")
            if len(fields) != 5:
                raise ValueError("expected `daily HH:MM`, `weekdays HH:MM`, `weekly DAY HH:MM`, "
                                 "`every 6h` or a five-field cron expression")
            minute, hour, day, month, day_of_week = fields
            trigger = CronTrigger(minute=minute, hour=hour, day=day, month=month,
                                  day_of_week=_cron_day_of_week(day_of_week), timezone=zone)
    except ValueError as exc:
        raise ValueError(f"bad schedule {text!r}: {exc}") from exc
    schedule = Schedule(text=spec, timezone=timezone, trigger=trigger)
    # From a fixed instant: whether a cron schedule ever fires does not depend on the date.
    if trigger.get_next_fire_time(None, _EPOCH) is None:
        raise ValueError(f"bad schedule {text!r}: it never comes round (no such day)")
    return schedule
