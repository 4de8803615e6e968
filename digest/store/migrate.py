"""Schema migrations: bring a database to the schema this digest expects (Alembic, run from
code, so no alembic.ini is needed). `Store.open` calls `ensure_current`; `digest db upgrade`
calls `upgrade`.

Any number of processes may open one database at once: an upgrade runs in one transaction
that holds a lock (PostgreSQL: an advisory lock; SQLite: the write lock, BEGIN IMMEDIATE),
so the first one migrates and the others wait, then find nothing to do.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

from digest.errors import StoreError

# The newest revision in migrations/versions. It is written here so that opening a current
# database reads one row instead of loading Alembic (about 60 ms); a test checks that it
# matches the scripts.
HEAD = "0004"
MIGRATIONS = Path(__file__).with_name("migrations")
# pg_advisory_xact_lock key held while migrating ("digest" in ASCII); the lock is released
# when the transaction ends, even if the process dies.
PG_LOCK_KEY = 0x646967657374
SQLITE_BUSY_TIMEOUT_MS = 60_000  # how long an opener waits for another's migration
# A column of each table the baseline (0001) adopts: a table of that name without it was
# made by another program, and digest refuses to use it.
_SIGNATURES = {"papers": "title_key", "paper_sources": "source_line", "subscribers":
               "profile_path", "editions": "message_id", "edition_papers": "edition_id",
               "feeds": "etag", "paper_embeddings": "vector"}


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at; None if it has none (empty, or made by a digest
    from before migrations)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return str(value) if value is not None else None


def ensure_current(engine: Engine) -> tuple[str | None, str | None]:
    """`upgrade` unless the database is at HEAD already, which takes one small query."""
    with engine.connect() as conn:
        try:
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except (OperationalError, ProgrammingError):  # no such table: not migrated yet
            found = None
    return (HEAD, HEAD) if found == HEAD else upgrade(engine)


def upgrade(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the database to the newest revision; returns (before, after). Raises
    StoreError for a database of a newer digest, or tables another program made."""
    from alembic import command

    with _locked(engine) as conn:
        before = current_revision(conn)
        if before != HEAD:
            if before is None:
                _check_adoptable(conn)
            else:
                _check_known(before)
            command.upgrade(alembic_config(conn), "head")
        return before, current_revision(conn)


def alembic_config(conn: Connection | None = None) -> Any:
    """An Alembic Config for the migrations shipped in this package; env.py runs them on
    `conn` (in its transaction) when given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = conn
    return config


def head_revision() -> str | None:
    """The newest revision among the scripts (slow: loads them all; HEAD is the fast one)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    return str(head) if head is not None else None


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other migrating process is in."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(select(func.pg_advisory_xact_lock(PG_LOCK_KEY)))
            yield conn
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        writer = _sqlite_writer(engine)
        try:
            with writer.begin() as conn:
                yield conn
        finally:
            writer.dispose()
    else:  # another engine, or SQLite in memory (one process): no lock needed or known
        with engine.begin() as conn:
            yield conn


def _sqlite_writer(engine: Engine) -> Engine:
    """An engine for the same SQLite file whose transactions start with BEGIN IMMEDIATE
    (the write lock, taken at once) and include DDL; Python's sqlite3 does neither alone.
    Foreign keys stay off while migrating: a batch migration copies a table, drops the
    old one and renames the copy, which must not cascade deletes."""
    writer = create_engine(engine.url, poolclass=NullPool)

    @event.listens_for(writer, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver begins nothing by itself
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=OFF")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(writer, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return writer


def _check_known(revision: str) -> None:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    except CommandError as exc:
        raise StoreError(f"the database is at schema revision {revision}, which this "
                         f"digest does not know (it knows up to {HEAD}): a newer digest "
                         "upgraded it; upgrade digest") from exc


def _check_adoptable(conn: Connection) -> None:
    inspector = inspect(conn)
    for name in sorted(set(inspector.get_table_names()) & set(_SIGNATURES)):
        if _SIGNATURES[name] not in {c["name"] for c in inspector.get_columns(name)}:
            raise StoreError(f"the database has a table {name!r} that digest did not make; "
                             "give digest a database (or PostgreSQL schema) of its own")
