"""One scheduler per database: the `digest run` that holds the lock leads (its APScheduler
runs the jobs); any other waits as a standby and takes over when the leader is gone.

PostgreSQL: a session-level advisory lock, held by one connection kept open for as long as
the process leads. The server releases it the moment that session ends: the process
exits, is killed, or its host or network goes away (once the server notices the dead
connection: TCP keepalives, see docs/scaling.md). SQLite (one host by nature): an
exclusive `flock` on a file beside the database, released by the kernel when the process
dies.

Losing the lock while running (the connection broke) ends the leader's run with an error,
so its supervisor restarts it as a standby: two leaders never schedule at once for longer
than it takes to notice.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from digest.errors import first_line

log = logging.getLogger(__name__)


class Leadership(Protocol):
    def try_acquire(self) -> bool:
        """Take the lead if no one holds it; True if this process now leads."""

    def holding(self) -> bool:
        """Whether this process still leads."""

    def release(self) -> None: ...


def lock_key(scope: str) -> int:
    """A signed 64-bit advisory-lock key for this application and database scope."""
    digest = hashlib.sha256(f"digest.leader:{scope}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresLeadership:
    """`pg_try_advisory_lock` on a connection of its own, per database and schema."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._conn: Connection | None = None
        self._key = 0

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return self.holding()
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as exc:
            log.warning("leader.unavailable reason=%r", first_line(exc))
            return False
        try:
            # The server notices a vanished leader (host gone, cable cut) within about
            # 25 s and frees the lock, instead of after the system's 2-hour default.
            conn.execute(text("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5;"
                              " SET tcp_keepalives_count = 3"))
            # Keyed by database and schema: deployments sharing a server do not collide.
            scope = conn.execute(text("SELECT current_database() || '.' || current_schema()")
                                 ).scalar_one()
            self._key = lock_key(str(scope))
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                               {"key": self._key}).scalar_one()
        except SQLAlchemyError as exc:
            log.warning("leader.unavailable reason=%r", first_line(exc))
            _invalidate(conn)
            return False
        if got:
            self._conn = conn
            return True
        conn.close()
        return False

    def holding(self) -> bool:
        if self._conn is None:
            return False
        try:
            # This very session holds the lock: a connection that broke and came back is
            # a new session, which holds none.
            held = self._conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND objsubid = 1"
                " AND ((classid::bigint << 32) | objid::bigint) = :key)"),
                {"key": self._key}).scalar_one()
        except SQLAlchemyError as exc:
            log.error("leader.lost reason=%r", first_line(exc))
            self._drop()
            return False
        if not held:
            log.error("leader.lost reason='the database session no longer holds the lock'")
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _invalidate(conn)

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
        except SQLAlchemyError:
            pass
        self._drop()


def _invalidate(conn: Connection) -> None:
    """Close the connection for good: never back to the pool, its session held the lock."""
    try:
        conn.invalidate()
    except SQLAlchemyError:
        pass


class FileLeadership:
    """An exclusive, non-blocking `flock` on `path`, held by an open file."""

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        if self._file is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+b")  # noqa: SIM115 - held open while leading
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._file = handle
        return True

    def holding(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file drops the lock
            self._file = None


class SoleLeadership:
    """Engines with no lock we use: every process leads (one daemon is the operator's
    responsibility there)."""

    def try_acquire(self) -> bool:
        return True

    def holding(self) -> bool:
        return True

    def release(self) -> None:
        return None


def leadership_for(engine: Engine) -> Leadership:
    if engine.dialect.name == "postgresql":
        return PostgresLeadership(engine)
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        return FileLeadership(Path(f"{database}.leader"))
    log.warning("leader.none engine=%s (no standby support: run one `digest run`)",
                engine.dialect.name)
    return SoleLeadership()
