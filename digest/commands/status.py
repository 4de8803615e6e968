"""What `digest status` shows: read from the ledger, the feed table, the daemons'
heartbeats and the profile files, without writing anything.

A SQLite database is read with Python's own sqlite3, read-only (`store.snapshot`), so that
status starts fast and never creates a database that is not there; PostgreSQL, and a
SQLite file too old to answer, go through `Store`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from digest.config import Settings
from digest.errors import StoreError
from digest.profiles import load_profiles, profile_paths
from digest.progress import counted
from digest.running.liveness import DaemonState, daemon_states
from digest.schedule import parse_schedule
from digest.store.snapshot import Snapshot, open_sqlite_readonly, read_snapshot

if TYPE_CHECKING:
    from rich.console import Console

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
class DaemonProcess:
    """A `digest run` that wrote a heartbeat: the leader, or a standby."""

    role: str  # "leader" or "standby"
    host: str
    pid: int
    since: str  # in this role (UTC)
    heard: str  # its last heartbeat (UTC)
    alive: bool  # heard lately (and, on this host, its process is there)


@dataclass(frozen=True)
class DaemonStatus:
    running: bool  # a leader is alive
    processes: tuple[DaemonProcess, ...]  # the living first, leaders first


@dataclass(frozen=True)
class StatusReport:
    subscribers: tuple[SubscriberStatus, ...]
    feeds: tuple[FeedStatus, ...]
    editions: dict[str, int]
    papers: int
    problems: tuple[str, ...]
    daemon: DaemonStatus

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _local(moment: datetime | None, zone: str = "UTC") -> str | None:
    if moment is None:
        return None
    return moment.astimezone(ZoneInfo(zone)).isoformat(timespec="minutes")


# Reading -------------------------------------------------------------------------------


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL (as `Store.open` reads it); None for another."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


def read_status_snapshot(url: str) -> Snapshot | None:
    """What the database at `url` holds for status; None if it is a SQLite file that does
    not exist (nothing is created). Raises StoreError."""
    path = sqlite_file(url)
    if path is not None:
        if not path.is_file():
            return None
        conn = open_sqlite_readonly(path)
        try:
            return read_snapshot(conn)
        except sqlite3.OperationalError:  # a schema too old (or none): through the Store,
            pass  # which brings it up to date as every command does
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the database {path}: {exc}") from exc
        finally:
            conn.close()
    from digest.store import Store

    store = Store.open(url)
    try:
        return snapshot_of(store)
    finally:
        store.close()


def snapshot_of(store: Store) -> Snapshot:
    """`read_snapshot` over a connection of `store`. Raises StoreError."""
    conn = store.engine.raw_connection()
    dbapi = store.engine.dialect.dbapi
    failure: type[Exception] = getattr(dbapi, "Error", Exception)
    try:
        return read_snapshot(conn)
    except failure as exc:
        raise StoreError(f"cannot read the database {store.name}: {exc}") from exc
    finally:
        conn.close()


def collect_status(snapshot: Snapshot | None, settings: Settings, *, now: datetime
                   ) -> StatusReport:
    """The report from what the database holds (None: there is no database yet)."""
    snapshot = snapshot or Snapshot(0, {}, {}, (), ())
    loaded = load_profiles(profile_paths(settings.profiles_dir),
                           default_max_papers=settings.default_max_papers)
    subscribers = []
    for profile in loaded.profiles:
        schedule = parse_schedule(profile.schedule, profile.timezone)
        last = snapshot.last_editions.get(profile.subscriber_id)
        subscribers.append(SubscriberStatus(
            subscriber_id=profile.subscriber_id, name=profile.name, schedule=profile.schedule,
            active=profile.active,
            next_slot=_local(schedule.next_slot(now), profile.timezone) if profile.active
            else None,
            last_slot=_local(last.slot, profile.timezone) if last else None,
            last_state=last.state if last else None,
            attempts=last.attempts if last else 0,
            detail=last.smtp_reply if last else None,
        ))
    configured = {f.url for f in settings.feeds}
    states = {s.url: s for s in snapshot.feeds}
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
    return StatusReport(tuple(subscribers), tuple(feeds), dict(snapshot.editions),
                        snapshot.papers, tuple(str(e) for e in loaded.errors),
                        _daemon(daemon_states(snapshot.heartbeats, now=now)))


def _daemon(states: Iterable[DaemonState]) -> DaemonStatus:
    processes = tuple(DaemonProcess(d.role, d.host, d.pid, _local(d.since) or "",
                                    _local(d.heard_at) or "", d.alive) for d in states)
    return DaemonStatus(any(p.alive and p.role == "leader" for p in processes), processes)


# Showing -------------------------------------------------------------------------------


def ago(moment: datetime, now: datetime) -> str:
    """How far `moment` is from `now`, roughly: "in 3 h", "2 days ago", "now"."""
    seconds = (moment - now).total_seconds()
    size = abs(seconds)
    if size < 60:
        return "now"
    unit, span = "year", 365.25 * 86400
    for limit, name, length in ((3600, "min", 60), (48 * 3600, "h", 3600),
                                (14 * 86400, "day", 86400), (61 * 86400, "week", 7 * 86400),
                                (730 * 86400, "month", 30.44 * 86400)):
        if size < limit:
            unit, span = name, length
            break
    count = int(size // span)
    amount = f"{count} {unit}" if unit in ("min", "h") else counted(count, unit)
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def when(moment: datetime, now: datetime) -> str:
    """`moment` (in its own zone) as two short lines, never wider than 12 characters: the
    day and time ("Thu 07:00", "26 Nov 07:00", "2025-11-24"), then `ago`."""
    local_now = now.astimezone(moment.tzinfo)
    if abs(moment - now) < timedelta(days=6):
        day = "today" if moment.date() == local_now.date() else f"{moment:%a}"
        shown = f"{day} {moment:%H:%M}"
    elif moment.year == local_now.year:
        shown = f"{moment.day} {moment:%b %H:%M}"
    else:
        shown = f"{moment:%Y-%m-%d}"
    return f"{shown}\n{ago(moment, now)}"


def _when(text: str | None, now: datetime, *, here: bool = False, empty: str = "") -> str:
    if text is None:
        return empty
    moment = datetime.fromisoformat(text)
    return when(moment.astimezone() if here else moment, now)


def daemon_lines(daemon: DaemonStatus, now: datetime) -> list[str]:
    """"Daemon: ..." lines (in this machine's time), each short of 80 characters."""

    def at(text: str) -> str:
        return when(datetime.fromisoformat(text).astimezone(), now).replace("\n", ", ")

    alive = [f"{p.role} pid {p.pid} on {p.host}, since {at(p.since)}"
             for p in daemon.processes if p.alive]
    if daemon.running:
        lines = alive
    elif alive:  # standbys only: the leader is gone and one of them is taking over
        lines = ["no leader at this moment: a standby takes over within seconds", *alive]
    else:
        lines = ["not running: start it with `digest run`"]
        lines += [f"last heard: {p.role} pid {p.pid} on {p.host}, {at(p.heard)}"
                  for p in daemon.processes[:1]]
    return [("Daemon: " if i == 0 else "        ") + line for i, line in enumerate(lines)]


def print_status(report: StatusReport, console: Console, *, now: datetime) -> None:
    """The report as tables that fit 80 columns: a time is two lines, never cut."""
    from rich.table import Table

    for line in daemon_lines(report.daemon, now):
        console.print(line, highlight=False, soft_wrap=True)
    table = Table(title="Subscribers", caption="Edition times are the subscriber's own.")
    table.add_column("subscriber", overflow="fold")
    table.add_column("schedule", overflow="fold")
    table.add_column("next edition", no_wrap=True)
    table.add_column("last edition", no_wrap=True)
    table.add_column("state", overflow="fold")
    for s in report.subscribers:
        state = s.last_state or ""
        if s.attempts > 1:
            state += f" ({s.attempts} tries)"
        if s.detail:
            state += f"\n{s.detail}"
        table.add_row(s.subscriber_id, s.schedule,
                      _when(s.next_slot, now, empty="inactive" if not s.active else ""),
                      _when(s.last_slot, now, empty="none yet"), state)
    console.print(table)
    if report.feeds:
        feeds = Table(title="Feeds")
        feeds.add_column("feed", overflow="fold")
        feeds.add_column("last poll", no_wrap=True)
        feeds.add_column("result", overflow="fold")
        feeds.add_column("new papers", justify="right")
        feeds.add_column("next poll", no_wrap=True)
        for f in report.feeds:
            feeds.add_row(f.url, _when(f.last_poll, now, here=True, empty="never"), f.result,
                          f"{f.new_papers:,}", _when(f.next_poll, now, here=True, empty="now"))
        console.print(feeds)
    counts = ", ".join(f"{n:,} {state}" for state, n in sorted(report.editions.items()))
    console.print(f"{counted(report.papers, 'paper')} stored; editions: "
                  f"{counts or 'none yet'}.", highlight=False, soft_wrap=True)
