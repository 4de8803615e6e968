"""Schema migrations: a new database gets exactly the schema in `schema.py`, an old one is
adopted with its data, and many processes may open a fresh database at once.

Real SQLite files and a real PostgreSQL server (a fresh schema per test).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from digest.errors import StoreError
from digest.models import Edition, EditionState
from digest.store import Store, migrate
from digest.store.schema import metadata

from .conftest import NOW
from .services import postgres_schema

ROOT = Path(__file__).parents[1]
BEFORE_MIGRATIONS = Path(__file__).parent / "data" / "store" / "before-migrations.sql"


def _schema_diffs(url: str) -> list[object]:
    """What `alembic revision --autogenerate` would write for this database: nothing, when
    it matches schema.py."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_head_is_the_newest_script():
    assert migrate.head_revision() == migrate.HEAD


def test_a_new_database_gets_exactly_the_schema(database_url):
    store = Store.open(database_url)
    try:
        assert store.revision() == (migrate.HEAD, migrate.HEAD)
    finally:
        store.close()
    assert _schema_diffs(database_url) == []


def test_opening_a_current_database_does_not_load_alembic(database_url):
    Store.open(database_url).close()
    check = ("import sys; from digest.store import Store; Store.open(sys.argv[1]).close(); "
             "print(sorted(m for m in sys.modules if m.startswith('alembic')))")
    done = subprocess.run([sys.executable, "-c", check, database_url], capture_output=True,
                          text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


# Adopting a database made before migrations ----------------------------------------------

def _old_sqlite_database(path: Path, *, tables: set[str] | None = None) -> None:
    """A database as a digest from before migrations left it, with a paper, a subscriber and
    a sent edition; `tables` keeps only those (an even older digest had fewer)."""
    ddl = "\n".join(line for line in BEFORE_MIGRATIONS.read_text(encoding="utf-8").splitlines()
                    if not line.startswith("--"))
    with sqlite3.connect(path) as db:
        for statement in filter(str.strip, ddl.split(";")):
            words = statement.split()  # CREATE TABLE name / CREATE INDEX name ON name
            table = words[2] if words[1] == "TABLE" else words[4]
            if tables is None or table in tables:
                db.execute(statement)
        db.execute("INSERT INTO papers VALUES (1, '2209.11755', '2209.11755', "
                   "'promptagator', 'Promptagator', 'Few-shot retrieval.', '[\"Zhuyun Dai\"]', "
                   "NULL, NULL, '2026-11-25 12:00:00.000000')")
        db.execute("INSERT INTO paper_sources VALUES (1, 1, 'a.txt', 9, "
                   "'2026-11-25 12:00:00.000000')")
        db.execute("INSERT INTO subscribers VALUES ('ana', 'ana@example.org', 'Ana', "
                   "'/p/ana.yaml', 1, '2026-11-25 12:00:00.000000')")
        db.execute("INSERT INTO editions VALUES (1, 'ana', '2026-11-25 07:00:00.000000', "
                   "'sent', '<e1@test.example>', 1, '250 ok', 0, "
                   "'2026-11-25 07:00:00.000000', '2026-11-25 07:00:00.000000', "
                   "'2026-11-25 07:00:01.000000', '2026-11-25 07:00:01.000000')")
        db.execute("INSERT INTO edition_papers VALUES (1, 1, 0, 1.5, 'matches: retrieval')")


@pytest.mark.parametrize("tables", [None, {"papers", "paper_sources", "subscribers",
                                           "editions", "edition_papers"}],
                         ids=["without-claimed_by", "without-feeds-and-embeddings"])
def test_a_database_from_before_migrations_is_adopted_with_its_data(tmp_path, tables):
    path = tmp_path / "digest.sqlite3"
    _old_sqlite_database(path, tables=tables)
    url = f"sqlite:///{path}"

    store = Store.open(url)
    try:
        assert store.revision() == (migrate.HEAD, migrate.HEAD)
        [paper] = store.papers()
        assert (paper.key, paper.authors, paper.first_seen) == ("2209.11755", ("Zhuyun Dai",),
                                                                NOW)
        edition = store.last_edition("ana")
        assert edition is not None and edition.state is EditionState.SENT
        assert [(p.paper.key, p.score, p.reason) for p in edition.picks] == [
            ("2209.11755", 1.5, "matches: retrieval")]
        # The adopted ledger works in full, claimed_by included.
        draft = Edition(subscriber_id="ana", slot=NOW + timedelta(days=1),
                        state=EditionState.PENDING, message_id="<e2@test.example>")
        created = store.create_edition(draft, candidates_until=NOW, now=NOW)
        assert created is not None
        assert store.begin_sending(created, now=NOW, stale_before=NOW, claimer="h:1")
        assert store.recover_abandoned("h", lambda _pid: False, now=NOW) == 1
    finally:
        store.close()
    assert _schema_diffs(url) == []


def test_a_postgresql_database_from_before_migrations_is_adopted():
    with postgres_schema() as database_url:
        _adopt_postgresql(database_url)


def _adopt_postgresql(database_url: str) -> None:
    engine = create_engine(database_url)
    # What digest did before migrations (the tables of then, since then without the
    # columns later revisions added): the tables added by later revisions were not there.
    before = [t for t in metadata.sorted_tables if t.name not in ("senders", "text_embeddings")]
    metadata.create_all(engine, tables=before)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE editions DROP COLUMN claimed_by"))
        conn.execute(text("ALTER TABLE edition_papers DROP COLUMN section"))  # 0003
        conn.execute(text("ALTER TABLE papers DROP COLUMN reference"))  # 0003
        conn.execute(text("ALTER TABLE papers DROP COLUMN doi"))  # 0003 (and its index)
        # A paper, as digest then wrote it (today's code would read columns not yet there).
        conn.execute(text("INSERT INTO papers (key, title_key, title, abstract, authors, "
                          "first_seen) VALUES ('t', 't', 'T', 'A', '[]', :now)"),
                     {"now": NOW.replace(tzinfo=None)})
    engine.dispose()

    store = Store.open(database_url)
    try:
        assert [p.title for p in store.papers()] == ["T"]
        assert store.revision() == (migrate.HEAD, migrate.HEAD)
    finally:
        store.close()
    assert _schema_diffs(database_url) == []


def test_tables_another_program_made_are_refused(tmp_path):
    path = tmp_path / "shared.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE papers (id INTEGER PRIMARY KEY, doi TEXT)")
    with pytest.raises(StoreError, match="'papers' that digest did not make"):
        Store.open(f"sqlite:///{path}")


def test_a_database_a_newer_digest_upgraded_is_refused(database_url):
    Store.open(database_url).close()
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match="revision 9999, which this digest does not know"):
        Store.open(database_url)


# Many processes at once ------------------------------------------------------------------

OPEN = """
import sys
from digest.store import Store
print("opening", flush=True)
store = Store.open(sys.argv[1])
print(store.revision()[0], flush=True)
store.close()
"""


def test_processes_opening_a_fresh_database_at_once_all_succeed(database_url, tmp_path):
    """The test holds the migration lock while the processes start, so they all meet it;
    once it lets go, one migrates and the others find the schema done."""
    postgresql = database_url.startswith("postgresql")
    name = f"digest-test-{tmp_path.name}"[:63]  # tells these processes' sessions apart
    url = f"{database_url}&application_name={name}" if postgresql else database_url
    holder = _hold_migration_lock(database_url)
    try:
        procs = [subprocess.Popen([sys.executable, "-c", OPEN, url], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(3)]
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "opening\n"
        if postgresql:
            _wait_for_lock_waiters(database_url, name, len(procs))
    finally:
        holder.rollback()
        holder.close()
    results = [(proc.wait(120), *proc.communicate()) for proc in procs]
    assert results == [(0, f"{migrate.HEAD}\n", "")] * len(procs)
    assert _schema_diffs(database_url) == []


def _hold_migration_lock(url: str):  # -> a DBAPI connection in a transaction
    if url.startswith("postgresql"):
        import psycopg

        conn = psycopg.connect(url.replace("+psycopg", ""))
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (migrate.PG_LOCK_KEY,))
        return conn
    conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN IMMEDIATE")
    return conn


def _wait_for_lock_waiters(url: str, name: str, count: int) -> None:
    """Until `count` sessions called `name` wait for an advisory lock; a minute is ample
    for processes that are only starting Python."""
    import psycopg

    deadline = time.monotonic() + 60
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) "
                "WHERE locktype = 'advisory' AND NOT granted AND application_name = %s",
                (name,)).fetchone()
            if waiting is not None and waiting[0] >= count:
                return
            time.sleep(0.05)
    raise AssertionError("the processes never waited for the migration lock")
