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
        self._backend: object = None  # the server process of the session holding the lock

    def try_acquire(self) -> bool:
        if self._conn is not None:
            return self.holding()
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            # Keyed by database and schema: deployments sharing a server do not collide.
            scope = conn.execute(text("SELECT current_database() || '.' || current_schema()")
                                 ).scalar_one()
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                               {"key": lock_key(str(scope))}).scalar_one()
        except SQLAlchemyError:
            conn.close()
            raise
        if got:
            self._conn = conn
            self._backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            return True
        conn.close()
        return False

    def holding(self) -> bool:
        if self._conn is None:
            return False
        try:
            # The same server session as when the lock was taken: a connection that broke
            # and came back is a new session, which holds no lock.
            backend = self._conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        except SQLAlchemyError as exc:
            log.error("leader.lost reason=%r", str(exc).splitlines()[0])
            self._drop()
            return False
        if backend != self._backend:
            log.error("leader.lost reason='the database session was replaced'")
            self._drop()
            return False
        return True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never back to the pool: its session held the lock
            except SQLAlchemyError:
                pass

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
        except SQLAlchemyError:
            pass
        self._drop()


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
