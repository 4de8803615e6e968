"""The edition ledger: one edition per (subscriber, slot), sent once, and nothing lost.

Real SQLite and PostgreSQL and a real SMTP server throughout; concurrency is real too (two
event-loop tasks with their own store and connection, or two `digest send` processes).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from digest.commands.smtpsink import ACCEPT, Received, SmtpSink
from digest.config import Settings
from digest.deliver import SmtpMailer
from digest.ingest.storing import ingest_files
from digest.models import Edition, EditionState, Profile
from digest.profiles import load_profile
from digest.running.editions import EditionOutcome, EditionRun, Status
from digest.running.liveness import FENCE_AFTER_S, Sender
from digest.store import Store

from .conftest import NOW

ROOT = Path(__file__).parents[1]


def _pointing_at(settings: Settings, sink: SmtpSink) -> Settings:
    return settings.model_copy(update={"smtp": settings.smtp.model_copy(
        update={"host": sink.host, "port": sink.port})})


def _held_sink(release: threading.Event, hold_s: float = 10) -> SmtpSink:
    """A server that keeps each message until `release` is set (or `hold_s` passes), so the
    first sender is still mid-delivery while the second one decides."""

    def respond(_message: Received) -> str:
        release.wait(hold_s)
        return ACCEPT

    return SmtpSink(respond=respond)


def _send_one(store: Store, settings: Settings, path: Path, now=NOW) -> EditionOutcome:
    profile = load_profile(path)

    async def go() -> EditionOutcome:
        async with SmtpMailer(settings.smtp, sender=settings.mail.from_address) as mailer:
            return await EditionRun(store, settings).run_edition(profile, mailer, now=now)

    return asyncio.run(go())


# (a) two senders, one edition -----------------------------------------------------------

def test_two_concurrent_senders_send_one_edition_once(store, settings, seeds, write_profile):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    profile = load_profile(write_profile("ana", interests=["dense retrieval"]))
    release = threading.Event()
    other_store = Store.open(settings.db_url)  # as a second process would have its own

    async def race(sending: Settings) -> list[EditionOutcome]:
        tasks = [asyncio.create_task(_run_and_close(EditionRun(each, sending), profile))
                 for each in (store, other_store)]
        try:
            # The loser finishes while the winner's message is still held by the server.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            release.set()
        return list(await asyncio.gather(*tasks))

    try:
        with _held_sink(release) as sink:
            outcomes = asyncio.run(race(_pointing_at(settings, sink)))
            received = sink.received
    finally:
        other_store.close()

    assert sorted(o.status for o in outcomes) == sorted([Status.SENT, Status.IN_FLIGHT])
    assert len(received) == 1
    edition = store.get_edition("ana", outcomes[0].slot)
    assert edition.state is EditionState.SENT and edition.attempts == 1
    assert received[0].message["Message-ID"] == edition.message_id


async def _run_and_close(run: EditionRun, profile: Profile) -> EditionOutcome:
    """One sender with its own SMTP connection."""
    settings = run.settings
    async with SmtpMailer(settings.smtp, sender=settings.mail.from_address) as mailer:
        return await run.run_edition(profile, mailer, now=NOW)


@pytest.mark.slow
def test_two_send_processes_send_one_edition_once(tmp_path, seeds, write_profile, database_url):
    """Two `digest send` processes at once: the database decides which one sends."""
    write_profile("ana", interests=["dense retrieval"])
    release = threading.Event()
    with _held_sink(release) as sink:
        config = tmp_path / "digest.toml"
        config.write_text(f'data_dir = "data"\nprofiles_dir = "profiles"\n'
                          f'outbox_dir = "outbox"\n[smtp]\nhost = "{sink.host}"\n'
                          f'port = {sink.port}\nsecurity = "none"\ntimeout_s = 20\n'
                          '[mail]\nfrom_address = "digest@test.example"\n', encoding="utf-8")
        # `digest send` reads the real clock, so the papers arrive at the real now: a
        # first edition looks back a week for them.
        now = datetime.now(UTC)
        store = Store.open(database_url)
        try:
            ingest_files(store, seeds, now=now, reference=now)
        finally:
            store.close()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200",
               "DIGEST_DATABASE_URL": database_url}
        command = [sys.executable, "-m", "digest", "-c", str(config), "send"]
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env, cwd=tmp_path) for _ in range(2)]
        one_exited = threading.Event()
        for proc in procs:
            threading.Thread(target=lambda p=proc: (p.wait(), one_exited.set()),
                             daemon=True).start()
        try:
            # One of them finds the edition taken and exits while the other's is held.
            one_exited.wait(60)
        finally:
            release.set()
        results = [(p.wait(60), *p.communicate()) for p in procs]
        received = sink.received

    assert [code for code, _out, _err in results] == [0, 0], results
    outputs = " ".join(out for _code, out, _err in results)
    # The other one found it being sent (or, had it started late, already sent).
    assert (outputs.count("│ being sent by another process")
            + outputs.count("│ already sent")) == 1, outputs
    assert len(received) == 1
    store = Store.open(database_url)
    try:
        edition = store.last_edition("ana")
    finally:
        store.close()
    assert edition.state is EditionState.SENT and edition.attempts == 1


# (b) begin_sending -----------------------------------------------------------------------

def _pending_edition(store: Store) -> Edition:
    draft = Edition(subscriber_id="ana", slot=NOW - timedelta(hours=5),
                    state=EditionState.PENDING, message_id="<e1@test.example>")
    created = store.create_edition(draft, candidates_until=NOW, now=NOW)
    assert created is not None
    return created


def test_a_sending_edition_is_taken_again_only_once_it_is_stale(store):
    edition = _pending_edition(store)
    stale = timedelta(minutes=10)

    assert store.begin_sending(edition, now=NOW, stale_before=NOW - stale)
    assert store.get_edition("ana", edition.slot).state is EditionState.SENDING

    later = NOW + timedelta(minutes=9)  # its sender may still be at it
    assert not store.begin_sending(edition, now=later, stale_before=later - stale)
    # A refused take changes nothing.
    assert store.get_edition("ana", edition.slot).updated_at == NOW
    # Exactly as old as the limit is not older than it.
    assert not store.begin_sending(edition, now=NOW + stale, stale_before=NOW)

    much_later = NOW + timedelta(minutes=11)  # its sender died
    assert store.begin_sending(edition, now=much_later, stale_before=much_later - stale)
    assert store.get_edition("ana", edition.slot).updated_at == much_later
    # Taken afresh: the new holder is now protected in turn.
    assert not store.begin_sending(edition, now=much_later + timedelta(minutes=1),
                                   stale_before=much_later - timedelta(minutes=9))


def test_begin_sending_by_state(store):
    edition = _pending_edition(store)
    far_future = NOW + timedelta(days=365)

    assert store.begin_sending(edition, now=NOW, stale_before=NOW - timedelta(minutes=10))
    store.record_attempt(edition, state=EditionState.FAILED, reply="451 later",
                         retryable=True, now=NOW)
    assert store.begin_sending(edition, now=NOW, stale_before=NOW - timedelta(minutes=10))
    store.record_attempt(edition, state=EditionState.FAILED, reply="550 no",
                         retryable=False, now=NOW)
    assert not store.begin_sending(edition, now=far_future, stale_before=far_future)
    # Only an edition being sent takes a result: a late reply cannot overwrite this one.
    store.record_attempt(edition, state=EditionState.SENT, reply="250 ok",
                         retryable=False, now=NOW)
    assert store.get_edition("ana", edition.slot).state is EditionState.FAILED


def test_a_sent_edition_is_never_taken_again(store):
    edition = _pending_edition(store)
    far_future = NOW + timedelta(days=365)
    assert store.begin_sending(edition, now=NOW, stale_before=NOW - timedelta(minutes=10))
    store.record_attempt(edition, state=EditionState.SENT, reply="250 ok",
                         retryable=False, now=NOW)
    assert not store.begin_sending(edition, now=far_future, stale_before=far_future)
    assert store.get_edition("ana", edition.slot).state is EditionState.SENT


# (c), (d) a failed edition's papers are not lost -----------------------------------------

def test_a_transient_failure_is_superseded_by_the_next_slot_with_its_papers(
        store, settings, smtp_sink, seeds, write_profile):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    path = write_profile("ana", interests=["dense retrieval", "reranking"])
    with SmtpSink(respond=lambda _m: "451 4.3.0 try later") as busy:
        day1 = _send_one(store, _pointing_at(settings, busy), path)
        assert busy.received == []
    assert day1.status is Status.FAILED and day1.retry and day1.picks

    day2 = _send_one(store, settings, path, now=NOW + timedelta(days=1))  # nothing new

    assert day2.status is Status.SENT
    assert day2.slot == day1.slot + timedelta(days=1)
    assert {p.paper.row_id for p in day1.picks} <= {p.paper.row_id for p in day2.picks}
    assert len(smtp_sink.received) == 1
    old = store.get_edition("ana", day1.slot)
    assert old.state is EditionState.FAILED and old.retryable is False
    assert "451" in old.smtp_reply and "superseded" in old.smtp_reply
    assert store.retryable_editions() == []  # the day-1 edition is not retried as well
    # A late retry of day 1 does not send those papers a second time.
    late = asyncio.run(_late_retry(store, settings, path, day1.slot))
    assert late.status is Status.FAILED and not late.retry
    assert len(smtp_sink.received) == 1


def test_an_edition_left_pending_by_an_unreachable_server_gives_its_papers_to_the_next(
        store, settings, smtp_sink, seeds, write_profile):
    """The server was unreachable on day 1 (the edition stays pending, no attempt spent)
    and the setting was fixed only after day 2's slot: day 2's edition carries day 1's
    papers, and day 1's is superseded, never sent as well."""
    import socket

    from digest.errors import ConnectionFailure

    ingest_files(store, seeds, now=NOW, reference=NOW)
    path = write_profile("ana", interests=["dense retrieval", "reranking"])
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = settings.model_copy(update={"smtp": settings.smtp.model_copy(
        update={"host": "127.0.0.1", "port": port})})
    with pytest.raises(ConnectionFailure):
        _send_one(store, nowhere, path)
    [day1] = store.unsettled_editions(untouched_since=NOW + timedelta(days=9),
                                      slots_since=NOW - timedelta(days=9))
    pending = store.get_edition(*day1)
    assert pending.state is EditionState.PENDING and pending.attempts == 0 and pending.picks

    day2 = _send_one(store, settings, path, now=NOW + timedelta(days=1))

    assert day2.status is Status.SENT and day2.slot > pending.slot
    assert {p.paper.row_id for p in pending.picks} <= {p.paper.row_id for p in day2.picks}
    old = store.get_edition(*day1)
    assert old.state is EditionState.FAILED and not old.retryable
    assert "superseded" in (old.smtp_reply or "")
    assert len(smtp_sink.received) == 1


async def _late_retry(store: Store, settings: Settings, path: Path, slot) -> EditionOutcome:
    async with SmtpMailer(settings.smtp, sender=settings.mail.from_address) as mailer:
        return await EditionRun(store, settings).run_edition(
            load_profile(path), mailer, now=NOW + timedelta(days=1, hours=1), slot=slot)


def test_a_permanent_failures_papers_are_offered_in_the_next_slot(store, settings, smtp_sink,
                                                                  seeds, write_profile):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    path = write_profile("ana", interests=["dense retrieval", "reranking"])
    with SmtpSink(respond=lambda _m: "550 5.2.2 mailbox full") as refusing:
        day1 = _send_one(store, _pointing_at(settings, refusing), path)
    assert day1.status is Status.FAILED and not day1.retry and day1.picks

    day2 = _send_one(store, settings, path, now=NOW + timedelta(days=1))

    assert day2.status is Status.SENT
    assert {p.paper.row_id for p in day1.picks} <= {p.paper.row_id for p in day2.picks}
    assert len(smtp_sink.received) == 1
    old = store.get_edition("ana", day1.slot)
    assert old.state is EditionState.FAILED and not old.retryable and "550" in old.smtp_reply


# (c) dead senders, on any host ----------------------------------------------------------

def test_editions_of_a_dead_sender_are_taken_back_by_pid_or_silence(store):
    """A claim is taken back when its sender's process is gone (same host) or its
    heartbeat stopped (any host, and a reused pid); a live sender's claim is left alone,
    and a claim with no heartbeat at all waits to go stale."""
    silent_since = NOW - timedelta(seconds=30)
    claims = {
        "other:11:aaaa": NOW - timedelta(seconds=90),  # another host, silent: dead
        "other:12:bbbb": NOW - timedelta(seconds=5),  # another host, beating: alive
        "here:1:cccc": NOW - timedelta(seconds=90),  # pid 1 is alive here, but it is a
                                                     # new process: this one went silent
        "here:13:dddd": NOW - timedelta(seconds=5),  # beating, but its process is gone
        "legacy:14": None,  # an older digest's claim, no heartbeat: left to go stale
    }
    editions = {}
    for i, (claimer, beat) in enumerate(claims.items()):
        edition = store.create_edition(
            Edition(subscriber_id=f"s{i}", slot=NOW, state=EditionState.PENDING,
                    message_id=f"<m{i}@x>"),
            candidates_until=NOW, now=NOW)
        assert store.begin_sending(edition, now=NOW, stale_before=NOW - timedelta(hours=1),
                                   claimer=claimer)
        if beat is not None:
            host, pid = claimer.split(":")[:2]
            store.heartbeat(claimer, host=host, pid=int(pid), started_at=beat - timedelta(
                hours=1), now=beat - timedelta(seconds=1))
            store.heartbeat(claimer, host=host, pid=int(pid), started_at=beat - timedelta(
                hours=1), now=beat)  # a second beat updates the first
        editions[claimer] = edition
    alive_here = {1}
    recovered = store.recover_abandoned("here", lambda pid: pid in alive_here, now=NOW,
                                        silent_since=silent_since)
    assert recovered == 3
    states = {claimer: store.get_edition(e.subscriber_id, NOW).state
              for claimer, e in editions.items()}
    assert states == {"other:11:aaaa": EditionState.PENDING,
                      "other:12:bbbb": EditionState.SENDING,
                      "here:1:cccc": EditionState.PENDING,
                      "here:13:dddd": EditionState.PENDING,
                      "legacy:14": EditionState.SENDING}
    # Taken back once: asking again finds nothing more.
    assert store.recover_abandoned("here", lambda pid: pid in alive_here, now=NOW,
                                   silent_since=silent_since) == 0


def test_a_sender_whose_heartbeat_fails_hands_over_no_more_email(store, settings, seeds,
                                                                   write_profile, smtp_sink):
    """Self-fencing: once its heartbeat has failed for a while, others may take its claims
    for a dead sender's, so it sends nothing more and puts its claims back."""
    ingest_files(store, seeds, now=NOW)
    path = write_profile("ana", interests=["retrieval"], schedule="daily 07:00")
    monotonic = [1000.0]
    sender = Sender(monotonic=lambda: monotonic[0])
    sender.keep_alive(store)  # beats once now; the next beat is HEARTBEAT_S away
    monotonic[0] += 2 * FENCE_AFTER_S  # and this long has passed without one
    outcome = _send_one_with(EditionRun(store, settings, sender=sender), load_profile(path))
    assert outcome.status is Status.STOPPED
    assert smtp_sink.received == []
    edition = store.last_edition("ana")
    assert edition is not None and edition.state is EditionState.PENDING


def _send_one_with(run: EditionRun, profile: Profile) -> EditionOutcome:
    async def go() -> EditionOutcome:
        async with SmtpMailer(run.settings.smtp, sender="digest@test.example") as mailer:
            return await run.run_edition(profile, mailer, now=NOW)

    return asyncio.run(go())
