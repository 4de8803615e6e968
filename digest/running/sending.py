"""A run of editions for a list of profile files, in this process, summed up in a
`SendReport`: what every executor (this process, local worker processes, Celery workers)
runs for its share and sends back. The editions themselves run in `EditionRun`."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from digest.config import Settings
from digest.deliver import SmtpMailer
from digest.models import Profile, count_to_rate
from digest.profilecache import ProfileCache
from digest.profiles import load_profile, load_profiles
from digest.progress import Advance
from digest.running.editions import EditionOutcome, EditionRun, Status
from digest.schedule import parse_schedule
from digest.store import Store

SHOW_ALL = 100  # up to this many subscribers, every outcome is kept for the report
WORTH_SHOWING = frozenset({Status.FAILED, Status.ERROR, Status.IN_FLIGHT})


@dataclass
class SendReport:
    """What a run of many editions did, summed over its shards."""

    counts: Counter[Status] = field(default_factory=Counter)
    # Outcomes worth a line each (failures, editions another sender holds), or all of them
    # when the run is small; without their picks and emails.
    shown: list[EditionOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # profiles that could not be loaded
    subscribers: dict[str, str] = field(default_factory=dict)  # id -> profile path
    timings: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    picks: int = 0
    # A shard that could not connect to the SMTP server (a ConnectionFailure, which is the
    # run's): why, in one line. Its editions stay pending; the executor raises it.
    unreachable: str = ""

    def add(self, other: SendReport) -> None:
        self.counts.update(other.counts)
        self.unreachable = self.unreachable or other.unreachable
        self.shown += other.shown
        self.errors += other.errors
        for subscriber_id, path in other.subscribers.items():
            if subscriber_id in self.subscribers:
                # Each shard checks its own profiles; this catches an id used in two shards.
                self.errors.append(f"{path}: same subscriber id {subscriber_id!r} as "
                                   f"{self.subscribers[subscriber_id]} (one edition was sent "
                                   "for both)")
            else:
                self.subscribers[subscriber_id] = path
        for stage, seconds in other.timings.items():
            self.timings[stage] += seconds
        self.picks += other.picks

    @property
    def editions(self) -> int:
        return sum(self.counts.values())


    def to_json(self) -> dict[str, Any]:
        """This report as JSON-ready data (a Celery task's result)."""
        return {
            "counts": {str(status): n for status, n in self.counts.items() if n},
            "shown": [_outcome_json(o) for o in self.shown],
            "errors": self.errors,
            "subscribers": self.subscribers,
            "timings": dict(self.timings),
            "picks": self.picks,
            "unreachable": self.unreachable,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SendReport:
        report = cls(errors=list(data["errors"]), subscribers=dict(data["subscribers"]),
                     picks=int(data["picks"]), unreachable=str(data.get("unreachable", "")))
        report.counts.update({Status(k): int(n) for k, n in data["counts"].items()})
        report.shown = [_outcome_from_json(o) for o in data["shown"]]
        report.timings.update(data["timings"])
        return report


def _outcome_json(outcome: EditionOutcome) -> dict[str, Any]:
    p = outcome.profile
    return {"subscriber_id": p.subscriber_id, "path": str(p.path), "name": p.name,
            "email": p.email, "status": str(outcome.status),
            "slot": outcome.slot.isoformat() if outcome.slot else None,
            "detail": outcome.detail, "retry": outcome.retry, "picked": outcome.count}


def _outcome_from_json(data: dict[str, Any]) -> EditionOutcome:
    """An outcome as a report shows it: its profile holds who it was for, nothing more."""
    profile = Profile(subscriber_id=data["subscriber_id"], path=Path(data["path"]),
                      name=data["name"], email=data["email"])
    slot = datetime.fromisoformat(data["slot"]) if data["slot"] else None
    return EditionOutcome(profile, Status(data["status"]), slot, detail=data["detail"],
                          retry=bool(data["retry"]), picked=int(data["picked"]))


def run_shard(run: EditionRun, paths: Sequence[Path], *, now: datetime,
              show_all: bool = False, slots: Sequence[datetime | None] | None = None,
              progress: Advance | None = None) -> SendReport:
    """Load, rank, render and send the editions of these profiles, in this process: each
    profile's latest due edition, or the one of `slots[i]` for `paths[i]`. A path may come
    more than once (two slots of one subscriber); it is read once."""
    report = SendReport()
    started = time.perf_counter()
    unique = list(dict.fromkeys(paths))
    loaded = load_profiles(unique, default_max_papers=run.settings.default_max_papers,
                           cache=run.profile_cache())
    report.timings["load"] += time.perf_counter() - started
    report.errors = [str(e) for e in loaded.errors]
    report.subscribers = {p.subscriber_id: str(p.path) for p in loaded.profiles}
    before = dict(run.timings)
    by_path = {p.path: p for p in loaded.profiles}
    wanted = list(slots) if slots is not None else [None] * len(paths)
    items = [(by_path[path], slot) for path, slot in zip(paths, wanted, strict=True)
             if path in by_path]
    profiles = [profile for profile, _ in items]

    async def go() -> list[EditionOutcome]:
        settings = run.settings
        async with SmtpMailer(settings.smtp, sender=settings.mail.from_address) as mailer:
            return await run.run_editions(profiles, mailer, now=now,
                                          slots=[slot for _, slot in items],
                                          progress=progress)

    for outcome in asyncio.run(go()):
        report.counts[outcome.status] += 1
        report.picks += outcome.count if outcome.status is Status.SENT else 0
        if show_all or outcome.status in WORTH_SHOWING:
            report.shown.append(outcome.lite())
    for stage, seconds in run.timings.items():
        report.timings[stage] += seconds - before.get(stage, 0.0)
    return report


def requeue_failed(store: Store, settings: Settings, paths: Sequence[Path], *,
                   now: datetime) -> int:
    """`digest send --retry-failed`: the edition of each profile's current slot (its latest
    due one), if it failed (for good, or with attempts left), back to pending with its
    attempts reset; returns how many. Profiles that cannot be loaded are left to the send
    that follows, which reports them."""
    cache = ProfileCache.for_settings(settings)
    try:
        loaded = load_profiles(paths, default_max_papers=settings.default_max_papers,
                               cache=cache)
    finally:
        cache.close()
    current = []
    for profile in loaded.profiles:
        slot = parse_schedule(profile.schedule, profile.timezone).last_slot(now)
        if profile.active and slot is not None:
            current.append((profile.subscriber_id, slot))
    return store.requeue_failed(current, now=now)


@dataclass(frozen=True)
class SentTest:
    """What `send_test` sent: whose edition, for which slot, with how many papers (picks,
    and papers the reader is asked to rate)."""

    profile: Profile
    slot: datetime
    picks: int
    reply: str
    asked: int = 0


def send_test(settings: Settings, path: Path, address: str, *, now: datetime) -> SentTest:
    """`digest send --to ADDRESS PROFILE`: the profile's next edition, ranked as it would be
    now, sent to `address` alone as a test (EditionRun.render_test). The ledger is only
    read: no edition is created or changed, and the real one goes out in its time. Raises
    ProfileError, ValueError for an address digest cannot send to, DeliveryError
    (ConnectionFailure included) if the server does not take it."""
    profile = load_profile(path, default_max_papers=settings.default_max_papers)
    slot = parse_schedule(profile.schedule, profile.timezone).next_slot(now)
    store = Store.open(settings.db_url)
    try:
        run = EditionRun(store, settings)
        picks = run.choose_picks(profile, now=now)
        email = run.render_test(profile, picks, slot=slot, now=now, to=address)
    finally:
        store.close()

    async def go() -> str:
        async with SmtpMailer(settings.smtp, sender=settings.mail.from_address) as mailer:
            return await mailer.send(email)

    asked = count_to_rate(picks)
    return SentTest(profile, slot, len(picks) - asked, asyncio.run(go()), asked)
