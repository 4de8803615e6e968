"""The whole edition path against a real SQLite store and a real SMTP server."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta
from pathlib import Path

import pytest

from digest.commands.smtpsink import DROP, SmtpSink
from digest.config import Settings, SmtpSettings
from digest.deliver import OutboxMailer, SmtpMailer
from digest.errors import ConnectionFailure
from digest.ingest.storing import ingest_files
from digest.models import EditionState
from digest.profiles import load_profile
from digest.running.editions import EditionRun, Status
from digest.store import Store

from .conftest import NOW


def _send(store: Store, settings: Settings, profile_paths: list[Path], now=NOW):
    profiles = [load_profile(p) for p in profile_paths]

    async def go():
        run = EditionRun(store, settings)
        async with SmtpMailer(settings.smtp, sender=settings.mail.from_address) as mailer:
            return await run.run_editions(profiles, mailer, now=now)

    return asyncio.run(go())


def test_an_edition_goes_out_once(store, settings, smtp_sink, seeds, write_profile):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    path = write_profile("ana", interests=["dense retrieval", "reranking"])

    first = _send(store, settings, [path])
    second = _send(store, settings, [path])
    later_same_slot = _send(store, settings, [path], now=NOW + timedelta(hours=5))

    assert [o.status for o in first] == [Status.SENT]
    assert [o.status for o in second] == [Status.ALREADY_SENT]
    assert [o.status for o in later_same_slot] == [Status.ALREADY_SENT]
    assert len(smtp_sink.received) == 1
    received = smtp_sink.received[0]
    assert received.recipients == ("ana@example.org",)
    edition = store.get_edition("ana", first[0].slot)
    assert edition is not None and edition.state is EditionState.SENT
    assert edition.attempts == 1 and edition.smtp_reply.startswith("250")
    assert received.message["Message-ID"] == edition.message_id


def test_next_slot_sends_only_papers_that_arrived_since(store, settings, smtp_sink, seeds,
                                                        write_profile):
    ingest_files(store, seeds[:2], now=NOW, reference=NOW)
    path = write_profile("ana", interests=["retrieval", "language models"], max_papers=30)
    first = _send(store, settings, [path])
    tomorrow = NOW + timedelta(days=1)
    nothing_new = _send(store, settings, [path], now=tomorrow)
    ingest_files(store, seeds[2:], now=tomorrow + timedelta(hours=1), reference=NOW)
    day_after = _send(store, settings, [path], now=tomorrow + timedelta(days=1))

    assert first[0].status is Status.SENT
    assert nothing_new[0].status is Status.EMPTY
    assert day_after[0].status is Status.SENT
    first_ids = {p.paper.row_id for p in first[0].picks}
    later_ids = {p.paper.row_id for p in day_after[0].picks}
    assert first_ids and later_ids and not first_ids & later_ids
    old = {p.row_id for p in store.papers() if p.first_seen <= NOW}
    assert not later_ids & old, "the later edition must hold only papers that arrived since"
    assert len(smtp_sink.received) == 2


def test_refused_message_is_recorded_with_the_server_reply(store, tmp_path, seeds,
                                                          write_profile, settings):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    path = write_profile("ana", interests=["retrieval"])
    with SmtpSink(respond=lambda _m: "550 5.1.1 mailbox unavailable") as refusing:
        bad = settings.model_copy(update={"smtp": settings.smtp.model_copy(
            update={"port": refusing.port})})
        outcome = _send(store, bad, [path])[0]
        again = _send(store, bad, [path])[0]
        assert refusing.received == []

    assert outcome.status is Status.FAILED and not outcome.retry
    assert "550 5.1.1 mailbox unavailable" in outcome.detail
    edition = store.get_edition("ana", outcome.slot)
    assert edition.state is EditionState.FAILED and not edition.retryable
    assert "550" in edition.smtp_reply
    assert again.status is Status.FAILED and edition.attempts == 1  # not retried


def test_transient_failures_are_retried_with_back_off_in_the_run(store, seeds,
                                                                 write_profile, settings):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    path = write_profile("ana", interests=["retrieval"])
    replies = iter(["451 4.3.0 try again later", DROP])

    def flaky(_message):
        return next(replies, "250 OK")

    with SmtpSink(respond=flaky) as server:
        flaky_settings = settings.model_copy(update={"smtp": settings.smtp.model_copy(
            update={"port": server.port})})
        [outcome] = _send(store, flaky_settings, [path])
        assert len(server.received) == 1
    assert outcome.status is Status.SENT
    assert store.get_edition("ana", outcome.slot).attempts == 3


def test_a_server_that_keeps_refusing_leaves_the_edition_failed_with_its_reply(
        store, seeds, write_profile, settings):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    path = write_profile("ana", interests=["retrieval"])
    with SmtpSink(respond=lambda _m: "451 4.3.0 try again later") as busy:
        busy_settings = settings.model_copy(update={"smtp": settings.smtp.model_copy(
            update={"port": busy.port})})
        [outcome] = _send(store, busy_settings, [path])
    edition = store.get_edition("ana", outcome.slot)
    assert outcome.status is Status.FAILED and not outcome.retry
    assert edition.attempts == settings.mail.max_attempts
    assert edition.smtp_reply.startswith("451 4.3.0")


def test_an_unreachable_server_stops_the_run_and_keeps_the_editions_pending(
        store, seeds, write_profile, settings, smtp_sink):
    """No connection is no edition's failure: the run raises it, every edition it claimed
    goes back to pending with no attempt charged, and the next run sends each once."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    ingest_files(store, seeds, now=NOW, reference=NOW)
    paths = [write_profile(name, interests=["retrieval"]) for name in ("ana", "ben", "cy")]
    dead = settings.model_copy(update={"smtp": SmtpSettings(
        host="127.0.0.1", port=closed_port, security="none", timeout_s=2, connections=2)})

    with pytest.raises(ConnectionFailure) as caught:
        _send(store, dead, paths)

    assert str(caught.value) == (f"cannot connect to the SMTP server 127.0.0.1:{closed_port}: "
                                 "Connection refused (check [smtp] host and port)")
    slot = NOW.replace(hour=7)
    kept = [store.get_edition(name, slot) for name in ("ana", "ben", "cy")]
    assert [(e.state, e.attempts, e.retryable) for e in kept] == [
        (EditionState.PENDING, 0, True)] * 3
    assert all(e.picks for e in kept)
    again = _send(store, settings, paths)
    assert [o.status for o in again] == [Status.SENT] * 3
    assert sorted(r.message["Message-ID"] for r in smtp_sink.received) == sorted(
        e.message_id for e in kept)


def test_one_broken_subscriber_does_not_stop_the_others(store, seeds, write_profile, settings,
                                                       smtp_sink, tmp_path, caplog):
    """An operator's template that raises for one subscriber's edition only (not a template
    error, which would be everyone's): that edition's outcome is the error, it stays
    pending for a later run, and the others go out."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "email.txt.j2").write_text(
        "{{ heading }}\n{{ lede }}\n"
        "{{ (lede | length) // 0 if lede.startswith('Bob') else '' }}\n")
    settings = settings.model_copy(update={"templates_dir": templates})
    ingest_files(store, seeds, now=NOW, reference=NOW)
    paths = [write_profile("ana", interests=["retrieval"]),
             write_profile("bob", interests=["vision transformer"]),
             write_profile("cy", interests=["attention heads"], active=False),
             write_profile("dee", interests=["language models"])]
    outcomes = _send(store, settings, paths)
    assert [o.status for o in outcomes] == [Status.SENT, Status.ERROR, Status.INACTIVE,
                                            Status.SENT]
    assert "rendering failed: ZeroDivisionError" in outcomes[1].detail
    assert sorted(r.recipients[0] for r in smtp_sink.received) == [
        "ana@example.org", "dee@example.org"]
    assert "edition.error subscriber=bob" in caplog.text
    kept = store.last_edition("bob")
    assert kept is not None and kept.state is EditionState.PENDING and kept.picks

    (templates / "email.txt.j2").write_text("{{ heading }}\n{{ lede }}\n")
    again = _send(store, settings, paths)
    assert [o.status for o in again] == [Status.ALREADY_SENT, Status.SENT, Status.INACTIVE,
                                         Status.ALREADY_SENT]
    assert store.last_edition("bob").message_id == kept.message_id


def test_dry_run_writes_eml_and_records_nothing(store, seeds, write_profile, settings,
                                               tmp_path):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    profile = load_profile(write_profile("ana", interests=["retrieval"]))
    outbox = OutboxMailer(tmp_path / "outbox")

    outcome = asyncio.run(EditionRun(store, settings).run_edition(
        profile, outbox, now=NOW, dry_run=True))

    assert outcome.status is Status.DRY_RUN
    assert [p.name for p in outbox.written] == ["ana-2026-11-25-0700.eml"]
    assert outbox.written[0].read_bytes().startswith(b"Subject:")
    assert store.get_edition("ana", outcome.slot) is None


def test_ingesting_again_adds_nothing(store, seeds):
    first = ingest_files(store, seeds, now=NOW, reference=NOW)
    second = ingest_files(store, seeds, now=NOW + timedelta(hours=1), reference=NOW)
    assert (first.entries, first.new_papers) == (314, 283)
    assert (second.entries, second.new_papers) == (314, 0)
    assert store.count_papers() == 283


def test_nothing_relevant_skips_or_sends_a_note_as_the_profile_says(store, settings, seeds,
                                                                   write_profile, smtp_sink):
    ingest_files(store, seeds[:1], now=NOW, reference=NOW)
    impossible = {"interests": ["retrieval"], "min_score": 49}
    skip = write_profile("ana", **impossible)
    note = write_profile("bob", when_nothing="note", **impossible)
    outcomes = _send(store, settings, [skip, note])
    assert [o.status for o in outcomes] == [Status.EMPTY, Status.SENT]
    [received] = smtp_sink.received
    assert received.recipients == ("bob@example.org",)
    assert received.message["Subject"] == "Papers for Wed 25 Nov: nothing new today"
    text = received.message.get_body(("plain",)).get_content()
    assert "matched your" in text and "interests closely enough" in " ".join(text.split())


def test_one_edition_asked_for_twice_in_a_batch_is_sent_once(store, settings, smtp_sink,
                                                              seeds, write_profile):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    profile = load_profile(write_profile("ana", interests=["retrieval"]))
    slot = NOW.replace(hour=7, minute=0)

    async def go():
        async with SmtpMailer(settings.smtp, sender=settings.mail.from_address) as mailer:
            return await EditionRun(store, settings).run_batch(
                [(profile, None), (profile, slot)], mailer, now=NOW)

    outcomes = asyncio.run(go())
    assert [o.status for o in outcomes] == [Status.SENT, Status.SENT]
    assert len(smtp_sink.received) == 1


def test_a_new_subscriber_is_asked_to_rate_a_few_papers_until_there_are_enough_ratings(
        store, seeds, settings):
    """With links in the emails, a profile with fewer than 5 liked or 5 disliked papers
    gets ASK_RATINGS papers to rate after its picks if it asks (`ask_ratings: true`); not
    once it has enough ratings, and not without links (nothing to rate them with)."""
    from dataclasses import replace

    from pydantic import SecretStr

    from digest.config import WebSettings
    from digest.models import ASK_SECTION, Interest, Profile
    from digest.running.editions import ASK_RATINGS

    ingest_files(store, seeds, now=NOW, reference=NOW)
    titles = [p.title for p in store.papers()]
    profile = Profile(subscriber_id="new", path=Path("new.yaml"), name="New",
                      email="new@example.org", interests=(Interest("dense retrieval"),),
                      max_papers=5, ask_ratings=True)
    linked = EditionRun(store, settings.model_copy(update={
        "web": WebSettings(base_url="https://digest.example/links",
                           secret=SecretStr("a test secret, long enough to sign with"))}))

    def asked(run: EditionRun, who: Profile) -> int:
        picks = run.choose_picks(who, now=NOW, everything=True)
        assert sum(p.section != ASK_SECTION for p in picks) == 5
        return sum(p.section == ASK_SECTION for p in picks)

    assert asked(linked, profile) == ASK_RATINGS
    assert asked(linked, replace(profile, liked=tuple(titles[:5]))) == ASK_RATINGS
    assert asked(linked, replace(profile, ask_ratings=False)) == 0
    assert asked(linked, replace(profile, liked=tuple(titles[:5]),
                                 disliked=tuple(titles[-5:]))) == 0
    assert asked(EditionRun(store, settings), profile) == 0  # no links
