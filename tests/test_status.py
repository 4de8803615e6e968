"""`digest status`: each subscriber's next and last edition, each feed's last result, and the
edition counts, from the ledger, the feed table and the profile files (real store)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from digest.commands.status import FeedStatus, collect_status
from digest.config import FeedSettings, Settings
from digest.models import Edition, EditionState, FeedState, PaperEntry
from digest.store import Store

from .conftest import NOW

REPLY = "250 2.0.0 Ok: queued as 4XyZ"


def record_edition(store: Store, subscriber_id: str, slot: datetime, state: EditionState,
                   reply: str | None = None) -> None:
    """An edition as a sender leaves it: created, taken, and its one attempt recorded (or,
    for `empty` and `pending`, only created)."""
    draft_state = EditionState.EMPTY if state is EditionState.EMPTY else EditionState.PENDING
    created = store.create_edition(
        Edition(subscriber_id=subscriber_id, slot=slot, state=draft_state,
                message_id=f"<{subscriber_id}.{slot:%Y%m%d%H%M}@test.example>"),
        candidates_until=slot, now=slot)
    assert created is not None
    if state in (EditionState.EMPTY, EditionState.PENDING):
        return
    assert store.begin_sending(created, now=slot, stale_before=slot - timedelta(minutes=10))
    store.record_attempt(created, state=state, reply=reply,
                         retryable=state is EditionState.FAILED, now=slot)


def with_feeds(settings: Settings, *urls: str) -> Settings:
    return settings.model_copy(update={"feeds": tuple(FeedSettings(url=u) for u in urls)})


# --- subscribers ------------------------------------------------------------------------


def test_a_subscriber_shows_its_next_and_last_edition_in_its_own_time(store, settings,
                                                                       write_profile):
    write_profile("ana", timezone="America/New_York", schedule="daily 08:00")
    yesterday = datetime.fromisoformat("2026-11-24T13:00+00:00")  # 08:00 in New York
    record_edition(store, "ana", yesterday - timedelta(days=1), EditionState.SENT, "250 old")
    record_edition(store, "ana", yesterday, EditionState.SENT, REPLY)

    [ana] = collect_status(store, settings, now=NOW).subscribers

    assert (ana.subscriber_id, ana.name, ana.schedule, ana.active) == (
        "ana", "Ana", "daily 08:00", True)
    # NOW is 07:00 in New York: today's 08:00 is next; the last is yesterday's, not older.
    assert ana.next_slot == "2026-11-25T08:00-05:00"
    assert ana.last_slot == "2026-11-24T08:00-05:00"
    assert (ana.last_state, ana.attempts, ana.detail) == ("sent", 1, REPLY)


def test_a_failed_edition_shows_its_state_and_the_servers_reply(store, settings,
                                                                write_profile):
    write_profile("ana")
    record_edition(store, "ana", NOW - timedelta(hours=5), EditionState.FAILED,
                   "451 4.3.0 try again later")

    [ana] = collect_status(store, settings, now=NOW).subscribers

    assert (ana.last_state, ana.attempts, ana.detail) == (
        "failed", 1, "451 4.3.0 try again later")


def test_a_new_subscriber_has_a_next_edition_and_no_last_one(store, settings, write_profile):
    write_profile("ana", timezone="Asia/Tokyo", schedule="weekly mon 07:00")

    [ana] = collect_status(store, settings, now=NOW).subscribers

    assert ana.next_slot == "2026-11-30T07:00+09:00"  # NOW is a Wednesday
    assert (ana.last_slot, ana.last_state, ana.attempts, ana.detail) == (None, None, 0, None)


def test_an_inactive_subscriber_is_listed_with_no_next_slot(store, settings, write_profile):
    write_profile("ana")
    write_profile("ben", active=False)
    record_edition(store, "ben", NOW - timedelta(days=3), EditionState.SENT, REPLY)

    report = collect_status(store, settings, now=NOW)

    assert [s.subscriber_id for s in report.subscribers] == ["ana", "ben"]
    ana, ben = report.subscribers
    assert ana.active and ana.next_slot is not None
    assert not ben.active and ben.next_slot is None
    assert (ben.last_state, ben.detail) == ("sent", REPLY)  # its past stays visible


def test_a_broken_profile_is_a_problem_and_the_others_are_shown(store, settings,
                                                               write_profile):
    write_profile("ana")
    bad = write_profile("bad", text="name: Bad\nemail: bad@example.org\nmax_papers: many\n")

    report = collect_status(store, settings, now=NOW)

    assert [s.subscriber_id for s in report.subscribers] == ["ana"]
    [problem] = report.problems
    assert problem.startswith(f"{bad}:3: max_papers"), problem


# --- feeds --------------------------------------------------------------------------------


def test_each_feed_shows_its_last_poll_and_result(store, settings):
    ok, failing, unpolled, dropped = (f"https://feeds.example/{name}.xml"
                                      for name in ("a-ok", "b-failing", "c-new", "d-dropped"))
    store.save_feed_state(FeedState(url=ok, etag='"v7"', last_poll_at=NOW - timedelta(hours=1),
                                    last_status="200", last_new_papers=12,
                                    next_poll_at=NOW + timedelta(minutes=30)))
    store.save_feed_state(FeedState(url=failing, last_poll_at=NOW - timedelta(minutes=10),
                                    last_status="503", last_error="server busy", failures=3,
                                    next_poll_at=NOW + timedelta(hours=2)))
    store.save_feed_state(FeedState(url=dropped, last_poll_at=NOW - timedelta(days=2),
                                    last_status="304"))

    feeds = collect_status(store, with_feeds(settings, ok, failing, unpolled), now=NOW).feeds

    assert feeds == (
        FeedStatus(ok, "2026-11-25T11:00+00:00", "200", 0, 12, "2026-11-25T12:30+00:00"),
        FeedStatus(failing, "2026-11-25T11:50+00:00",
                   "503: server busy (3 failures in a row)", 3, 0, "2026-11-25T14:00+00:00"),
        FeedStatus(unpolled, None, "not polled yet", 0, 0, None),
        FeedStatus(dropped, "2026-11-23T12:00+00:00", "304 (no longer configured)", 0, 0,
                   None),
    )


# --- counts -------------------------------------------------------------------------------


def test_editions_are_counted_by_state_and_papers_are_counted(store, settings, write_profile):
    write_profile("ana")
    write_profile("ben")
    store.add_entries([PaperEntry(title=f"Paper {n}", abstract="a", source="f")
                       for n in range(3)], NOW)
    for day in (1, 2):
        record_edition(store, "ana", NOW - timedelta(days=day), EditionState.SENT, REPLY)
    record_edition(store, "ben", NOW - timedelta(days=2), EditionState.FAILED, "550 no")
    record_edition(store, "ben", NOW - timedelta(days=1), EditionState.EMPTY)

    report = collect_status(store, settings, now=NOW)

    assert report.editions == {"sent": 2, "failed": 1, "empty": 1}
    assert report.papers == 3


def test_an_empty_store_has_no_counts(store, settings):
    report = collect_status(store, settings, now=NOW)
    assert (report.subscribers, report.feeds, report.editions, report.papers,
            report.problems) == ((), (), {}, 0, ())


# --- the command --------------------------------------------------------------------------


def test_status_json_is_the_whole_report(run_cli, config_file, store, write_profile):
    write_profile("ana")
    write_profile("ben", active=False)
    record_edition(store, "ana", NOW - timedelta(hours=5), EditionState.SENT, REPLY)
    store.save_feed_state(FeedState(url="https://feeds.example/a.xml", last_status="200",
                                    last_poll_at=NOW, last_new_papers=4))

    result = run_cli("-c", config_file, "status", "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"subscribers", "feeds", "editions", "papers", "problems"}
    ana, ben = report["subscribers"]
    assert ana["subscriber_id"] == "ana" and ana["next_slot"] is not None  # the real clock
    assert (ana["last_slot"], ana["last_state"], ana["attempts"], ana["detail"]) == (
        "2026-11-25T07:00+00:00", "sent", 1, REPLY)
    assert (ben["subscriber_id"], ben["active"], ben["next_slot"]) == ("ben", False, None)
    assert report["feeds"] == [{
        "url": "https://feeds.example/a.xml", "last_poll": "2026-11-25T12:00+00:00",
        "result": "200 (no longer configured)", "failures": 0, "new_papers": 4,
        "next_poll": None}]
    assert (report["editions"], report["papers"], report["problems"]) == ({"sent": 1}, 0, [])


def test_status_table_lists_subscribers_feeds_counts_and_problems(run_cli, config_file, store,
                                                                  write_profile, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich: wide enough that no cell is folded
    write_profile("ana")
    bad = write_profile("bad", text="name: [unclosed\n")
    record_edition(store, "ana", NOW - timedelta(hours=5), EditionState.SENT, "250 ok")
    store.save_feed_state(FeedState(url="https://f.example/a", last_status="200"))

    result = run_cli("-c", config_file, "status")

    assert "Subscribers" in result.stdout and "Feeds" in result.stdout
    [ana_row] = [line for line in result.stdout.splitlines() if "│ ana " in line]
    assert "daily 07:00" in ana_row and "sent" in ana_row and "250 ok" in ana_row
    assert "https://f.example/a" in result.stdout
    assert result.stdout.rstrip().endswith("0 papers stored; editions: 1 sent.")
    assert str(bad) in result.stderr and "ana" not in result.stderr


def test_status_before_anything_happened(run_cli, config_file, store):
    result = run_cli("-c", config_file, "status")
    assert result.exit_code == 0, result.output
    assert "Feeds" not in result.stdout  # no table for no feeds
    assert "0 papers stored; editions: none yet." in result.stdout
