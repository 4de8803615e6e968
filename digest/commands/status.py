"""What `digest status` shows: read from the ledger, the feed table and the profile files."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from digest.config import Settings
from digest.profiles import load_profiles, profile_paths
from digest.schedule import parse_schedule
from digest.store import Store


@dataclass(frozen=True)
class SubscriberStatus:
    subscriber_id: str
    name: str
    schedule: str
    active: bool
    next_slot: str | None  # local time of the subscriber
    last_slot: str | None
    last_state: str | None
    attempts: int
    detail: str | None  # the server's reply for the last edition


@dataclass(frozen=True)
class FeedStatus:
    url: str
    last_poll: str | None
    result: str
    failures: int
    new_papers: int
    next_poll: str | None


@dataclass(frozen=True)
class StatusReport:
    subscribers: tuple[SubscriberStatus, ...]
    feeds: tuple[FeedStatus, ...]
    editions: dict[str, int]
    papers: int
    problems: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _local(moment: datetime | None, zone: str = "UTC") -> str | None:
    if moment is None:
        return None
    return moment.astimezone(ZoneInfo(zone)).isoformat(timespec="minutes")


def collect_status(store: Store, settings: Settings, *, now: datetime) -> StatusReport:
    loaded = load_profiles(profile_paths(settings.profiles_dir),
                           default_max_papers=settings.default_max_papers)
    subscribers = []
    for profile in loaded.profiles:
        schedule = parse_schedule(profile.schedule, profile.timezone)
        last = store.last_edition(profile.subscriber_id)
        subscribers.append(SubscriberStatus(
            subscriber_id=profile.subscriber_id, name=profile.name, schedule=profile.schedule,
            active=profile.active,
            next_slot=_local(schedule.next_slot(now), profile.timezone) if profile.active
            else None,
            last_slot=_local(last.slot, profile.timezone) if last else None,
            last_state=last.state.value if last else None,
            attempts=last.attempts if last else 0,
            detail=last.smtp_reply if last else None,
        ))
    configured = {f.url for f in settings.feeds}
    states = {s.url: s for s in store.feed_states()}
    feeds = []
    for url in sorted(configured | set(states)):
        state = states.get(url)
        if state is None:
            feeds.append(FeedStatus(url, None, "not polled yet", 0, 0, None))
            continue
        result = state.last_status or "never"
        if state.last_error:
            result = f"{result}: {state.last_error} ({state.failures} failures in a row)"
        elif url not in configured:
            result += " (no longer configured)"
        feeds.append(FeedStatus(url, _local(state.last_poll_at), result, state.failures,
                                state.last_new_papers, _local(state.next_poll_at)))
    return StatusReport(tuple(subscribers), tuple(feeds), store.edition_counts(),
                        store.count_papers(), tuple(str(e) for e in loaded.errors))
