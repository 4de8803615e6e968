"""One scheduler leader per database: a second `digest run` waits as a standby and takes
over when the leader dies, sending the next edition; the locks themselves on PostgreSQL
(advisory lock) and SQLite (flock)."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine

from digest.running.leader import FileLeadership, PostgresLeadership, leadership_for
from digest.store import Store
from tests.running import DaemonProcess, cli_ingest, digest_cli, wait_for, write_daemon_config
from tests.services import postgres_schema


@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.mark.slow
def test_standby_takes_over_when_the_leader_dies(tmp_path, smtp_sink, seeds, pg_url):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "ana.yaml").write_text(
        "name: Ana\nemail: ana@example.org\nschedule: every 3s\n"
        "interests: [language models, retrieval, attention, reinforcement learning]\n")
    config = write_daemon_config(tmp_path, smtp_sink.port, top=f'database_url = "{pg_url}"\n',
                                 daemon="standby_poll_s = 0.5\n")
    command, env = digest_cli(config)
    cli_ingest(command, env, seeds[:3])
    first = DaemonProcess(config, tmp_path / "first.log")
    second = None
    try:
        wait_for(lambda: "daemon.leader" in first.text(), 20, "the first daemon to lead")
        second = DaemonProcess(config, tmp_path / "second.log")
        wait_for(lambda: "daemon.standby" in second.text(), 20, "the second to stand by")
        wait_for(lambda: len(smtp_sink.received) == 1, 20, "the leader's first edition")
        time.sleep(1.0)  # a few slots pass: nothing new, so nothing more is sent
        assert len(smtp_sink.received) == 1
        assert "edition.sent" not in second.text() and "daemon.started" not in second.text()

        first.handle.send_signal(signal.SIGKILL)
        first.handle.wait()
        wait_for(lambda: "took over" in second.text(), 20, "the standby to take over")
        # New papers arrive; the next slot's edition carries them, sent by the new leader.
        shutil.copy(seeds[3], tmp_path / "inbox" / "new.txt")
        wait_for(lambda: len(smtp_sink.received) >= 2, 30, "the next edition")
        time.sleep(1.0)
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert second is not None
    log = second.text()
    assert "edition.sent" in log and "Traceback" not in log
    ids = [r.message["Message-ID"] for r in smtp_sink.received]
    assert len(ids) == 2 == len(set(ids)), "one edition before the kill, one after"
    store = Store.open(pg_url)
    try:
        edition = store.last_edition("ana")
    finally:
        store.close()
    assert edition is not None and edition.message_id == ids[-1]


def test_postgres_advisory_lock_has_one_holder_and_frees_on_disconnect(pg_url):
    one, two = create_engine(pg_url), create_engine(pg_url)
    try:
        first, second = PostgresLeadership(one), PostgresLeadership(two)
        assert first.try_acquire()
        assert not second.try_acquire()
        assert first.holding() and not second.holding()
        # The leader's session ends (its connection breaks): the server frees the lock,
        # and the old leader notices it no longer leads.
        assert first._conn is not None  # noqa: SLF001
        first._conn.invalidate()  # noqa: SLF001
        assert not first.holding()
        # The server ends the session (and frees the lock) a moment after the close.
        wait_for(second.try_acquire, 10, "the lock to be freed")
        second.release()
        assert first.try_acquire()
        first.release()
    finally:
        one.dispose()
        two.dispose()


def test_postgres_leadership_is_per_schema(pg_url):
    with postgres_schema() as other:
        here, there = create_engine(pg_url), create_engine(other)
        try:
            a, b = PostgresLeadership(here), PostgresLeadership(there)
            assert a.try_acquire() and b.try_acquire()  # two deployments, one server
            a.release()
            b.release()
        finally:
            here.dispose()
            there.dispose()


def test_file_lock_leads_once_per_sqlite_database(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'digest.sqlite3'}")
    first, second = leadership_for(engine), leadership_for(engine)
    assert isinstance(first, FileLeadership)
    assert first.try_acquire() and first.holding()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()
    engine.dispose()
