"""Failures a fix can undo. No connection to the SMTP server (refused, TLS, login) stops the
run in one line and leaves its editions pending, uncharged, for the run after the fix;
`digest send --retry-failed` queues failed editions again; `digest send --to` sends a test
and records nothing. Real SMTP servers (aiosmtpd) and real stores throughout."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sqlalchemy import select

from digest.commands.smtpsink import SmtpSink
from digest.config import DaemonSettings, SmtpSettings
from digest.deliver import SmtpMailer
from digest.errors import ConnectionFailure, TransientDeliveryError
from digest.ingest.storing import ingest_files
from digest.models import Edition, EditionState, OutgoingEmail
from digest.running.daemon import Daemon
from digest.running.editions import EditionRun, Status
from digest.running.processes import send_all
from digest.running.sending import SendReport
from digest.running.workers import ShardWorker, shard_message
from digest.store import Store
from digest.store.schema import edition_papers, editions
from digest.tokens import Signer

from .conftest import NOW

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    """A port nothing listens on: bound, then let go."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(tmp_path: Path, port: int, *, smtp: str = 'security = "none"\n',
            more: str = "") -> Path:
    """digest.toml for tmp_path's folders and the SMTP server at 127.0.0.1:`port`; written
    again, it is the operator fixing the settings."""
    config = tmp_path / "digest.toml"
    config.write_text(
        f'data_dir = "data"\nprofiles_dir = "profiles"\noutbox_dir = "outbox"\n{more}'
        f'[smtp]\nhost = "127.0.0.1"\nport = {port}\ntimeout_s = 5\n{smtp}'
        '[mail]\nfrom_address = "digest@test.example"\nretry_delay_s = 0.01\n',
        encoding="utf-8")
    return config


def _ledger(store: Store) -> list[tuple[object, ...]]:
    """Every edition row and pick row, as stored."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(editions).order_by(editions.c.id)).all()
        picks = conn.execute(select(edition_papers).order_by(
            edition_papers.c.edition_id, edition_papers.c.position)).all()
    return [tuple(r) for r in rows] + [tuple(p) for p in picks]


def _claimed_by(store: Store) -> list[str | None]:
    with store.engine.connect() as conn:
        return list(conn.execute(select(editions.c.claimed_by)).scalars())


# --- no connection: one line, the editions pending and uncharged -----------------------


def test_a_refused_send_leaves_the_edition_pending_and_the_fixed_config_sends_it_once(
        run_cli, store, tmp_path, seeds, write_profile, smtp_sink):
    port = _closed_port()
    config = _config(tmp_path, port)
    write_profile("ana", interests=["retrieval"])
    assert run_cli("-c", config, "ingest", *seeds).exit_code == 0

    refused = run_cli("-c", config, "send")

    assert refused.exit_code == 1
    assert refused.stderr == ("digest: error: cannot connect to the SMTP server 127.0.0.1:"
                              f"{port}: Connection refused (check [smtp] host and port)\n")
    kept = store.last_edition("ana")
    assert kept is not None and kept.picks
    assert (kept.state, kept.attempts, kept.retryable, kept.smtp_reply) == (
        EditionState.PENDING, 0, True, None)
    assert _claimed_by(store) == [None]

    _config(tmp_path, smtp_sink.port)  # the operator fixes [smtp] port
    sent = run_cli("-c", config, "send")
    again = run_cli("-c", config, "send")

    assert sent.exit_code == 0, sent.output
    assert re.search(r"^1 edition in [\d.]+ s: 1 sent\.$", sent.stdout, re.M)
    assert re.search(r"^1 edition in [\d.]+ s: 1 already sent\.$", again.stdout, re.M)
    [received] = smtp_sink.received
    assert received.message["Message-ID"] == kept.message_id
    done = store.get_edition("ana", kept.slot)
    assert done is not None and (done.state, done.attempts) == (EditionState.SENT, 1)


def test_a_refused_send_is_one_line_from_a_real_process_without_retries(
        tmp_path, seeds, write_profile):
    """The process as an operator runs it: with -v its log shows no attempt and no retry
    within the run, and without -v stderr is the one line."""
    port = _closed_port()
    config = _config(tmp_path, port)
    write_profile("ana", interests=["retrieval"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("DIGEST_CONFIG", "DIGEST_DATA_DIR", "DIGEST_DATABASE_URL"):
        env.pop(var, None)

    def digest(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "digest", "-c", str(config),
                               *map(str, args)], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)

    assert digest("ingest", *seeds).returncode == 0
    plain = digest("send")
    verbose = digest("-v", "send")
    assert plain.returncode == verbose.returncode == 1
    assert plain.stderr == ("digest: error: cannot connect to the SMTP server 127.0.0.1:"
                            f"{port}: Connection refused (check [smtp] host and port)\n")
    assert plain.stdout == ""
    assert "editions.unreachable given_back=1" in verbose.stderr
    assert "edition.failed" not in verbose.stderr and "editions.retrying" not in verbose.stderr
    assert "Traceback" not in verbose.stderr


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_sink(ca: trustme.CA) -> Iterator[SmtpSink]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with SmtpSink(tls_context=context) as sink:
        yield sink


@pytest.mark.parametrize("case", ["untrusted certificate", "TLS to a plain server"])
def test_a_failing_tls_handshake_is_one_line_and_charges_nothing(
        case, run_cli, store, tmp_path, seeds, write_profile, smtp_sink, tls_sink):
    if case == "untrusted certificate":  # STARTTLS offered, its certificate not trusted
        port, smtp = tls_sink.port, 'security = "starttls"\n'
        why = ("its certificate is not trusted: unable to get local issuer certificate "
               "(check [smtp] host; ca_file for a private CA; validate_certs = false only "
               "for a local relay)")
    else:  # port-465 security against a server that speaks plain SMTP
        port, smtp = smtp_sink.port, 'security = "tls"\n'
        why = ('the TLS handshake failed: wrong version number (check [smtp] security: '
               '"tls" is for port 465, "starttls" for 587)')
    config = _config(tmp_path, port, smtp=smtp)
    write_profile("ana", interests=["retrieval"])
    run_cli("-c", config, "ingest", *seeds)

    result = run_cli("-c", config, "send")

    assert result.exit_code == 1
    assert result.stderr == (f"digest: error: cannot connect to the SMTP server 127.0.0.1:"
                             f"{port}: {why}\n")
    kept = store.last_edition("ana")
    assert kept is not None and (kept.state, kept.attempts) == (EditionState.PENDING, 0)
    assert tls_sink.received == [] and smtp_sink.received == []


class _Recorder:
    """An aiosmtpd handler keeping what it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.received.append(bytes(getattr(envelope, "original_content", b"") or b""))
        return "250 OK"


def _deny(server: object, session: object, envelope: object, mechanism: str,
          auth_data: object) -> AuthResult:
    return AuthResult(success=False, handled=False)


def test_a_refused_login_is_one_line_without_the_password(
        run_cli, store, tmp_path, seeds, write_profile, monkeypatch):
    port = _closed_port()
    handler = _Recorder()
    server = Controller(handler, hostname="127.0.0.1", port=port, authenticator=_deny,
                        auth_require_tls=False)
    server.start()
    try:
        config = _config(tmp_path, port, smtp='security = "none"\nusername = "digest"\n')
        write_profile("ana", interests=["retrieval"])
        run_cli("-c", config, "ingest", *seeds)
        monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "hunter2-not-it")

        result = run_cli("-c", config, "send")
    finally:
        server.stop()

    assert result.exit_code == 1
    assert result.stderr == (
        f"digest: error: cannot log in to the SMTP server 127.0.0.1:{port} as 'digest': "
        "535 5.7.8 Authentication credentials invalid (check [smtp] username and "
        "DIGEST_SMTP_PASSWORD)\n")
    assert "hunter2" not in result.output
    kept = store.last_edition("ana")
    assert kept is not None and (kept.state, kept.attempts) == (EditionState.PENDING, 0)
    assert handler.received == []


@contextmanager
def _greeting_server(greeting: bytes) -> Iterator[int]:
    """A server that greets every connection with `greeting`, then hangs up."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(greeting)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join(5)
        listener.close()


def test_a_busy_greeting_is_the_servers_4xx_and_a_refusing_one_the_connections():
    """421 at the greeting (too busy, too many connections from this host) is a reply that
    says "later": transient, retried as any 4xx. 554 (no service for this client) is no
    message's fault: a ConnectionFailure."""
    email = OutgoingEmail(recipients=("ana@example.org",), message_id="<1@test.example>",
                          data=b"Subject: x\r\n\r\nbody\r\n")

    async def send(port: int) -> str:
        settings = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout_s=5)
        async with SmtpMailer(settings, sender="digest@test.example") as mailer:
            return await mailer.send(email)

    with _greeting_server(b"421 4.7.0 too busy\r\n") as port, pytest.raises(
            TransientDeliveryError, match="^421 4.7.0 too busy$") as busy:
        asyncio.run(send(port))
    assert not isinstance(busy.value, ConnectionFailure)
    with _greeting_server(b"554 5.7.1 no service for you\r\n") as port, pytest.raises(
            ConnectionFailure) as refused:
        asyncio.run(send(port))
    assert str(refused.value) == (f"the SMTP server 127.0.0.1:{port} refused the session: "
                                  "554 5.7.1 no service for you (check [smtp] host and port)")


def test_worker_processes_stop_at_the_first_shard_that_cannot_connect(
        settings, seeds, write_profile, smtp_sink):
    """Over two processes, the refused shards come back as one ConnectionFailure; every
    edition made meanwhile is pending and uncharged, and the next run sends each once."""
    store = Store.open(settings.db_url)
    ingest_files(store, seeds, now=NOW, reference=NOW)
    paths = [write_profile(f"r{i}", interests=["dense retrieval"]) for i in range(4)]
    port = _closed_port()
    dead = settings.model_copy(update={"smtp": settings.smtp.model_copy(
        update={"port": port})})
    try:
        with pytest.raises(ConnectionFailure, match=f"127.0.0.1:{port}: Connection refused"):
            send_all(dead, paths, now=NOW, processes=2, shard=2)
        made = [store.last_edition(f"r{i}") for i in range(4)]
        assert [(e.state, e.attempts) for e in made if e is not None] == [
            (EditionState.PENDING, 0)] * sum(e is not None for e in made)
        assert set(_claimed_by(store)) <= {None}

        report = send_all(settings, paths, now=NOW, processes=2, shard=2)
    finally:
        store.close()
    assert report.counts[Status.SENT] == 4 and not report.errors and not report.unreachable
    assert sorted(r.recipients[0] for r in smtp_sink.received) == [
        f"r{i}@example.org" for i in range(4)]


class _Retry(Exception):
    pass


class _Task:
    """What `ShardWorker.send_shard` uses of a bound Celery task: `retry`."""

    def __init__(self) -> None:
        self.request = type("Request", (), {"retries": 0})()
        self.retried: dict[str, object] | None = None

    def retry(self, *, args: list[dict[str, object]], countdown: float) -> _Retry:
        self.retried = {"message": args[0], "countdown": countdown}
        return _Retry()


def test_a_celery_shard_that_cannot_connect_waits_or_reports_at_once(
        settings, seeds, write_profile):
    """A shard the daemon handed over is tried again later, as after a database outage; one
    `digest send` waits for reports at once, so that shard says why, in its report. Its
    editions stay pending, uncharged, either way."""
    store = Store.open(settings.db_url)
    ingest_files(store, seeds, now=NOW, reference=NOW)
    path = write_profile("ana", interests=["retrieval"])
    port = _closed_port()
    dead = settings.model_copy(update={"smtp": settings.smtp.model_copy(
        update={"port": port})})
    worker = ShardWorker(dead)
    try:
        later = _Task()
        with pytest.raises(_Retry):
            worker.send_shard(later, shard_message([(path, None)], now=NOW, run_id="r1",
                                                   show_all=True))
        assert later.retried is not None and later.retried["countdown"] == 5.0
        waited = worker.send_shard(_Task(), shard_message([(path, None)], now=NOW,
                                                          run_id="r1", show_all=True,
                                                          awaited=True))
        kept = store.last_edition("ana")
    finally:
        worker.close()
        store.close()
    report = SendReport.from_json(waited)
    assert report.unreachable == (f"cannot connect to the SMTP server 127.0.0.1:{port}: "
                                  "Connection refused (check [smtp] host and port)")
    assert kept is not None and (kept.state, kept.attempts) == (EditionState.PENDING, 0)


class _Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_the_daemon_sends_a_pending_edition_once_the_server_is_back(
        settings, store, seeds, write_profile, caplog):
    """The server is down when the edition is due: the daemon logs it once and the edition
    waits, pending, uncharged. The server comes back on its port; the daemon's retry job,
    with no restart and no signal, sends it, once."""
    caplog.set_level(logging.INFO, logger="digest")
    write_profile("ana", interests=["retrieval"], schedule="daily 07:00")
    ingest_files(store, seeds, now=NOW - timedelta(hours=8), reference=NOW)
    port = _closed_port()
    daemon_settings = settings.model_copy(update={
        "daemon": DaemonSettings(catchup_grace_s=12 * 3600),
        "smtp": SmtpSettings(host="127.0.0.1", port=port, security="none", timeout_s=5)})
    clock = _Clock(NOW)  # 12:00: the 07:00 edition is due
    daemon = Daemon(lambda: daemon_settings, clock=clock)

    async def catch_up() -> None:
        daemon.reload_profiles()
        daemon.editions.catch_up()
        daemon.editions.queue.put_nowait(None)
        await daemon.editions.send_editions()

    async def retry_tick() -> int:
        daemon.editions.retry_failed()
        queued = daemon.editions.queue.qsize()
        daemon.editions.queue.put_nowait(None)
        await daemon.editions.send_editions()
        return queued

    recorder = _Recorder()
    server = Controller(recorder, hostname="127.0.0.1", port=port)
    try:
        asyncio.run(catch_up())
        kept = store.last_edition("ana")
        assert kept is not None and (kept.state, kept.attempts) == (EditionState.PENDING, 0)
        [logged] = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert logged.getMessage() == (
            "editions.not-sent count=1 reason='cannot connect to the SMTP server 127.0.0.1:"
            f"{port}: Connection refused (check [smtp] host and port)' (the retry job asks "
            "again)")

        server.start()  # the relay is back
        clock.now = NOW + timedelta(minutes=2)  # the retry job's next ticks
        sent = asyncio.run(retry_tick())
        clock.now = NOW + timedelta(minutes=10)
        after = asyncio.run(retry_tick())
    finally:
        server.stop()
        daemon.store.close()
    assert (sent, after) == (1, 0)
    [data] = recorder.received
    assert message_from_bytes(data)["Message-ID"] == kept.message_id
    done = store.get_edition("ana", kept.slot)
    assert done is not None and (done.state, done.attempts) == (EditionState.SENT, 1)


# --- failed for good: --retry-failed ----------------------------------------------------


def test_retry_failed_queues_a_refused_edition_again_and_sends_it_once(
        run_cli, store, tmp_path, seeds, write_profile, smtp_sink):
    path = write_profile("ana", interests=["retrieval"])
    with SmtpSink(respond=lambda _m: "550 5.1.1 mailbox unavailable") as refusing:
        config = _config(tmp_path, refusing.port)
        run_cli("-c", config, "ingest", *seeds)
        failed = run_cli("-c", config, "send")
    assert failed.exit_code == 1
    assert failed.stderr.splitlines()[-1] == (
        f"{path}: edition not delivered: 550 5.1.1 mailbox unavailable (once fixed: "
        "digest send --retry-failed)")
    kept = store.last_edition("ana")
    assert kept is not None
    assert (kept.state, kept.retryable, kept.attempts) == (EditionState.FAILED, False, 1)

    _config(tmp_path, smtp_sink.port)  # the mailbox exists now
    plain = run_cli("-c", config, "send")
    assert plain.exit_code == 1 and smtp_sink.received == []  # failed for good: left so

    retried = run_cli("-c", config, "send", "--retry-failed")
    again = run_cli("-c", config, "send", "--retry-failed")

    assert retried.exit_code == 0, retried.output
    assert retried.stdout.startswith("Re-queued 1 failed edition.\n")
    assert re.search(r"^1 edition in [\d.]+ s: 1 sent\.$", retried.stdout, re.M)
    assert again.stdout.startswith("Re-queued 0 failed editions.\n")
    assert re.search(r"^1 edition in [\d.]+ s: 1 already sent\.$", again.stdout, re.M)
    [received] = smtp_sink.received
    assert received.message["Message-ID"] == kept.message_id
    done = store.get_edition("ana", kept.slot)
    assert done is not None and (done.state, done.attempts) == (EditionState.SENT, 1)
    assert done.picks == kept.picks


def _failed(store: Store, subscriber_id: str, slot: datetime, *, attempts: int,
            final: bool) -> Edition:
    """An edition that failed `attempts` times, for good at the last if `final`."""
    edition = store.create_edition(
        Edition(subscriber_id=subscriber_id, slot=slot, state=EditionState.PENDING,
                message_id=f"<{subscriber_id}.{slot:%d}@test.example>"),
        candidates_until=slot, now=slot)
    assert edition is not None
    for n in range(attempts):
        assert store.begin_sending(edition, now=slot, stale_before=slot)
        last = n == attempts - 1
        store.record_attempt(edition, state=EditionState.FAILED,
                             reply="550 no" if final and last else "451 later",
                             retryable=not (final and last), now=slot)
    return edition


def test_requeue_failed_puts_the_failed_editions_of_those_slots_back(store):
    slot, yesterday, later = NOW, NOW - timedelta(days=1), NOW + timedelta(minutes=5)
    _failed(store, "ana", slot, attempts=1, final=True)  # a 5xx
    _failed(store, "ben", slot, attempts=5, final=True)  # out of attempts
    _failed(store, "cy", slot, attempts=1, final=False)  # a 4xx, attempts left
    _failed(store, "ana", yesterday, attempts=1, final=True)  # not this slot
    sent = store.create_edition(Edition(subscriber_id="dee", slot=slot,
                                        state=EditionState.PENDING,
                                        message_id="<dee@test.example>"),
                                candidates_until=slot, now=slot)
    assert sent is not None and store.begin_sending(sent, now=slot, stale_before=slot)
    store.record_attempt(sent, state=EditionState.SENT, reply="250 ok", retryable=False,
                         now=slot)
    store.create_edition(Edition(subscriber_id="eve", slot=slot, state=EditionState.PENDING,
                                 message_id="<eve@test.example>"),
                         candidates_until=slot, now=slot)

    asked = [(name, slot) for name in ("ana", "ben", "cy", "dee", "eve", "nobody")]
    assert store.requeue_failed(asked, now=later) == 3

    def state(name: str, when: datetime = slot) -> tuple[object, ...]:
        e = store.get_edition(name, when)
        assert e is not None
        return e.state, e.attempts, e.retryable, e.updated_at

    again = (EditionState.PENDING, 0, True, later)
    assert [state(name) for name in ("ana", "ben", "cy")] == [again] * 3
    assert state("ana", yesterday) == (EditionState.FAILED, 1, False, yesterday)
    assert state("dee") == (EditionState.SENT, 1, False, slot)
    assert state("eve") == (EditionState.PENDING, 0, True, slot)
    assert store.get_edition("ana", slot).smtp_reply == "550 no"  # until the next attempt
    assert store.requeue_failed(asked, now=later) == 0
    requeued = store.get_edition("ben", slot)
    assert requeued is not None and store.begin_sending(requeued, now=later,
                                                        stale_before=later)


# --- a test email: --to ----------------------------------------------------------------

SECRET = "a-link-secret-for-the-tests-of-send-to-0123456789"


def test_to_sends_the_next_edition_as_a_test_and_leaves_the_ledger_alone(
        run_cli, store, tmp_path, seeds, write_profile, smtp_sink, monkeypatch):
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    base = "https://papers.example.org"
    config = _config(tmp_path, smtp_sink.port, more=f'[web]\nbase_url = "{base}"\n')
    path = write_profile("ana", interests=["retrieval"])
    run_cli("-c", config, "ingest", *seeds)

    test = run_cli("-c", config, "send", "--to", "me@example.net", path)

    assert test.exit_code == 0, test.output
    assert re.fullmatch(r"Sent a test of Ana's edition of \S+ \(10 papers and 5 to rate\) to "
                        r"me@example.net: 250 OK message accepted\n", test.stdout)
    assert _ledger(store) == []  # nothing recorded: no edition, no picks
    [received] = smtp_sink.received
    message = received.message
    assert received.recipients == ("me@example.net",)
    assert message["To"] == "me@example.net"
    assert message["Subject"].startswith("[test] Papers for ")
    unsubscribe = message["List-Unsubscribe"].strip("<>")
    assert unsubscribe.startswith(f"{base}/")  # the subscriber's links, signed as usual
    token = Signer([SECRET]).verify(unsubscribe.rsplit("/", 1)[1], now=datetime.now(UTC))
    assert (token.subscriber_id, token.action) == ("ana", "unsubscribe")

    real = run_cli("-c", config, "send")  # the real edition still goes out, as it would
    assert real.exit_code == 0, real.output
    edition = store.last_edition("ana")
    assert edition is not None and edition.state is EditionState.SENT
    sent = smtp_sink.received[1].message
    assert smtp_sink.received[1].recipients == ("ana@example.org",)
    assert sent["Message-ID"] == edition.message_id != message["Message-ID"]
    assert not sent["Subject"].startswith("[test]")
    # ranked as it would be now: the same top pick heads both subjects
    assert sent["Subject"].split(": ", 1)[1] == message["Subject"].split(": ", 1)[1]

    before = _ledger(store)
    again = run_cli("-c", config, "send", "--to", "me@example.net", path)
    assert again.exit_code == 0, again.output
    assert _ledger(store) == before  # nothing changed either
    assert len(smtp_sink.received) == 3


@pytest.mark.parametrize("address", ["me@example.net\r\nBcc: all@example.org",
                                     "me@example.net\nBcc: all@example.org",
                                     "not-an-address", "me@", "<me@example.net>"])
def test_to_refuses_an_address_with_a_line_break_or_not_an_address(
        address, run_cli, config_file, write_profile, smtp_sink, tmp_path):
    path = write_profile("ana", interests=["retrieval"])
    result = run_cli("-c", config_file, "send", "--to", address, path)
    assert result.exit_code == 2
    assert "Invalid value for '--to'" in result.stderr
    assert smtp_sink.received == [] and not (tmp_path / "data").exists()


@pytest.mark.parametrize(("extra", "profiles"), [([], 0), ([], 2), (["--dry-run"], 1),
                                               (["--retry-failed"], 1)])
def test_to_takes_one_profile_and_no_other_way_of_sending(
        extra, profiles, run_cli, config_file, write_profile, smtp_sink):
    paths = [write_profile(name) for name in ("ana", "ben")[:profiles]]
    result = run_cli("-c", config_file, "send", "--to", "me@example.net", *extra, *paths)
    assert result.exit_code == 2
    assert "--to sends one PROFILE's edition as a test" in result.stderr
    assert smtp_sink.received == []


def test_a_test_email_with_dkim_verifies_after_its_changes(settings, tmp_path):
    """The test's Subject, To and Message-ID are changed before it is signed: the signature
    verifies, the non-ASCII subject (RFC 2047 words) reads back with "[test] " before it."""
    dkim = pytest.importorskip("dkim")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from digest.config import MailSettings
    from digest.models import Paper, Pick, Profile

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "dkim.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    signed = settings.model_copy(update={"mail": MailSettings(
        from_address="digest@lab.example", dkim_selector="mail2026", dkim_key_file=pem)})
    paper = Paper(key="1", title="Ragnarök: über retrieval", abstract="Text.",
                  first_seen=NOW, row_id=1)
    profile = Profile(subscriber_id="ana", path=Path("ana.yaml"), name="Ana",
                      email="ana@example.org")
    store = Store.open(f"sqlite:///{tmp_path / 'dkim.sqlite3'}")
    try:
        email = EditionRun(store, signed).render_test(profile, [Pick(paper, 1.0, "why")],
                                                      slot=NOW, now=NOW,
                                                      to="me@example.net")
    finally:
        store.close()
    assert email.recipients == ("me@example.net",)
    assert email.data.startswith(b"DKIM-Signature: ") and email.data.isascii()
    assert dkim.verify(email.data, dnsfunc=lambda _name, timeout=5: record)
    message = message_from_bytes(email.data, policy=default_policy)
    assert message["Subject"] == "[test] Papers for Wed 25 Nov: Ragnarök: über retrieval"
    assert message["To"] == "me@example.net"
    assert message["Message-ID"] == email.message_id
    assert "ana" not in email.message_id and email.message_id.endswith("@lab.example>")



def test_commands_that_send_nothing_need_no_secret(tmp_path, config_file, seeds, run_cli,
                                                   smtp_sink, monkeypatch):
    """With `[web] base_url` set and no DIGEST_SECRET: `rank`, `preview` and `send
    --dry-run` work, their links signed with the public preview key and a warning saying
    so; a real `digest send` refuses in one line and sends nothing."""
    monkeypatch.delenv("DIGEST_SECRET", raising=False)
    with config_file.open("a", encoding="utf-8") as handle:
        handle.write('\n[web]\nbase_url = "https://digest.example"\n')
    profile = tmp_path / "profiles" / "ana.yaml"
    profile.parent.mkdir(exist_ok=True)
    profile.write_text("name: Ana\nemail: ana@example.org\ninterests: [dense retrieval]\n",
                       encoding="utf-8")
    assert run_cli("-c", config_file, "ingest", *seeds).exit_code == 0
    ranked = run_cli("-c", config_file, "rank", profile)
    assert ranked.exit_code == 0, ranked.output
    preview = run_cli("-c", config_file, "preview", profile, "--out", tmp_path / "p.html")
    assert preview.exit_code == 0, preview.output
    assert "preview key" in preview.stderr and "will not work" in preview.stderr
    html = (tmp_path / "p.html").read_text(encoding="utf-8")
    assert "https://digest.example/f/v1~ana~more~" in html
    dry = run_cli("-c", config_file, "send", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert list((tmp_path / "outbox").glob("*.eml"))
    real = run_cli("-c", config_file, "send")
    assert real.exit_code == 1 and "DIGEST_SECRET" in real.stderr
    assert len(real.stderr.strip().splitlines()) == 1
    assert smtp_sink.received == []
