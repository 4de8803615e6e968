"""A read-only look at the database for `digest status`: a few plain SQL reads over any
DB-API connection, so that a SQLite file is read with Python's own sqlite3 (SQLAlchemy
costs a fifth of a second to import) and without writing to it, or creating it.

Also the heartbeat timing every sender keeps (`Store.heartbeat`), and how a daemon's own
heartbeat row is named: `leader@<sender>` or `standby@<sender>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from digest.errors import StoreError

if TYPE_CHECKING:  # imported where used: `running.liveness` needs this module at start-up
    import sqlite3

    from digest.models import FeedState

HEARTBEAT_S = 10.0  # a sender says it is alive (`heartbeat`) this often
SILENT_AFTER_S = 3 * HEARTBEAT_S  # a sender silent this long is taken for dead

Role = Literal["leader", "standby"]
ROLES: tuple[Role, ...] = ("leader", "standby")


def daemon_row(role: Role, sender: str) -> str:
    """The id of a `digest run`'s heartbeat row in its `role` (`senders.id`). Never a
    claimer's: "@" is in no host name, so it cannot start a claimer's id."""
    return f"{role}@{sender}"


def daemon_role(row_id: str) -> tuple[Role, str] | None:
    """(role, sender) if `row_id` is a daemon's heartbeat row, else None."""
    role, at, sender = row_id.partition("@")
    if at and role == "leader":
        return "leader", sender
    if at and role == "standby":
        return "standby", sender
    return None


class Connection(Protocol):
    """What is needed of a DB-API connection (sqlite3's, or psycopg's under SQLAlchemy)."""

    def cursor(self) -> Any: ...


@dataclass(frozen=True)
class LastEdition:
    """A subscriber's most recent edition (the latest slot), whatever its state."""

    subscriber_id: str
    slot: datetime
    state: str
    attempts: int
    smtp_reply: str | None


@dataclass(frozen=True)
class Heartbeat:
    """A row of `senders`: a process that said it was alive, and when it last did."""

    row_id: str
    host: str  # "hostname/space" (see `running.liveness.pid_space`)
    pid: int
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True)
class Snapshot:
    """What `digest status` reads from the database, in one look."""

    papers: int
    editions: dict[str, int]  # by state
    last_editions: dict[str, LastEdition]  # by subscriber id
    feeds: tuple[FeedState, ...]
    heartbeats: tuple[Heartbeat, ...]


def _utc(value: Any) -> datetime:
    """A stored time as an aware UTC datetime (sqlite3 hands back the text SQLAlchemy
    wrote; PostgreSQL drivers a naive datetime)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC)


def _maybe_utc(value: Any) -> datetime | None:
    return None if value is None else _utc(value)


def _rows(conn: Connection, sql: str) -> list[Any]:
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def read_snapshot(conn: Connection) -> Snapshot:
    """Read what `digest status` shows: parameter-free SQL, the same on every engine, that
    any schema revision since 0002 answers. Raises the driver's errors."""
    from digest.models import FeedState

    [(papers,)] = _rows(conn, "SELECT count(*) FROM papers")
    editions = {str(state): int(count) for state, count in _rows(
        conn, "SELECT state, count(*) FROM editions GROUP BY state")}
    last = {}
    for subscriber_id, slot, state, attempts, reply in _rows(conn, """
            SELECT e.subscriber_id, e.slot, e.state, e.attempts, e.smtp_reply
            FROM editions e JOIN (SELECT subscriber_id, max(slot) AS slot FROM editions
                                  GROUP BY subscriber_id) latest
              ON latest.subscriber_id = e.subscriber_id AND latest.slot = e.slot"""):
        last[str(subscriber_id)] = LastEdition(str(subscriber_id), _utc(slot), str(state),
                                               int(attempts), reply)
    feeds = tuple(
        FeedState(url=url, etag=etag, last_modified=modified, last_poll_at=_maybe_utc(polled),
                  last_status=status, last_error=error, last_new_papers=int(new or 0),
                  failures=int(failures or 0), next_poll_at=_maybe_utc(next_poll))
        for url, etag, modified, polled, status, error, new, failures, next_poll in _rows(
            conn, "SELECT url, etag, last_modified, last_poll_at, last_status, last_error, "
                  "last_new_papers, failures, next_poll_at FROM feeds ORDER BY url"))
    heartbeats = tuple(
        Heartbeat(str(row_id), str(host), int(pid), _utc(started), _utc(beat))
        for row_id, host, pid, started, beat in _rows(
            conn, "SELECT id, host, pid, started_at, heartbeat_at FROM senders ORDER BY id"))
    return Snapshot(int(papers), editions, last, feeds, heartbeats)


def open_sqlite_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to the SQLite database at `path`, which must exist (nothing
    is created). Raises StoreError."""
    import sqlite3

    try:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the database {path}: {exc}") from exc
