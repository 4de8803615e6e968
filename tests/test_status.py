"""`digest status`: whether a daemon runs (the leader, its standbys), each subscriber's next
and last edition, each feed's last result, and the edition counts, from the ledger, the feed
table, the heartbeats and the profile files (real store, real `digest run` processes); it
reads only, and fits 80 columns."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from rich.console import Console

from digest.commands.status import (
    DaemonStatus,
    FeedStatus,
    ago,
    collect_status,
    daemon_lines,
    print_status,
    snapshot_of,
    when,
)
from digest.config import FeedSettings, Settings
from digest.models import Edition, EditionState, FeedState, PaperEntry
from digest.running.liveness import DaemonPresence, pid_space
from digest.store import Store
from digest.store.snapshot import Snapshot, daemon_role, daemon_row

from .conftest import NOW
from .running import ROOT, DaemonProcess, wait_for, write_daemon_config

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

    [ana] = collect_status(snapshot_of(store), settings, now=NOW).subscribers

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

    [ana] = collect_status(snapshot_of(store), settings, now=NOW).subscribers

    assert (ana.last_state, ana.attempts, ana.detail) == (
        "failed", 1, "451 4.3.0 try again later")


def test_a_new_subscriber_has_a_next_edition_and_no_last_one(store, settings, write_profile):
    write_profile("ana", timezone="Asia/Tokyo", schedule="weekly mon 07:00")

    [ana] = collect_status(snapshot_of(store), settings, now=NOW).subscribers

    assert ana.next_slot == "2026-11-30T07:00+09:00"  # NOW is a Wednesday
    assert (ana.last_slot, ana.last_state, ana.attempts, ana.detail) == (None, None, 0, None)


def test_an_inactive_subscriber_is_listed_with_no_next_slot(store, settings, write_profile):
    write_profile("ana")
    write_profile("ben", active=False)
    record_edition(store, "ben", NOW - timedelta(days=3), EditionState.SENT, REPLY)

    report = collect_status(snapshot_of(store), settings, now=NOW)

    assert [s.subscriber_id for s in report.subscribers] == ["ana", "ben"]
    ana, ben = report.subscribers
    assert ana.active and ana.next_slot is not None
    assert not ben.active and ben.next_slot is None
    assert (ben.last_state, ben.detail) == ("sent", REPLY)  # its past stays visible


def test_a_broken_profile_is_a_problem_and_the_others_are_shown(store, settings,
                                                               write_profile):
    write_profile("ana")
    bad = write_profile("bad", text="name: Bad\nemail: bad@example.org\nmax_papers: many\n")

    report = collect_status(snapshot_of(store), settings, now=NOW)

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

    feeds = collect_status(snapshot_of(store), with_feeds(settings, ok, failing, unpolled),
                           now=NOW).feeds

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

    report = collect_status(snapshot_of(store), settings, now=NOW)

    assert report.editions == {"sent": 2, "failed": 1, "empty": 1}
    assert report.papers == 3


def test_an_empty_store_has_no_counts(store, settings):
    report = collect_status(snapshot_of(store), settings, now=NOW)
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
    assert set(report) == {"subscribers", "feeds", "editions", "papers", "problems", "daemon"}
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
    assert report["daemon"] == {"running": False, "processes": []}


def test_status_table_lists_subscribers_feeds_counts_and_problems(run_cli, config_file, store,
                                                                  write_profile, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich: wide enough that no cell is folded
    write_profile("ana")
    bad = write_profile("bad", text="name: [unclosed\n")
    record_edition(store, "ana", NOW - timedelta(hours=5), EditionState.SENT, "250 ok")
    store.save_feed_state(FeedState(url="https://f.example/a", last_status="200"))

    result = run_cli("-c", config_file, "status")

    assert "Subscribers" in result.stdout and "Feeds" in result.stdout
    lines = result.stdout.splitlines()
    [at] = [i for i, line in enumerate(lines) if "│ ana " in line]
    ana_rows = "\n".join(lines[at:at + 2])  # a time takes two lines: when, then how long ago
    assert "daily 07:00" in ana_rows and "sent" in ana_rows and "250 ok" in ana_rows
    assert "ago" in ana_rows and "https://f.example/a" in result.stdout
    assert result.stdout.startswith("Daemon: not running: start it with `digest run`\n")
    assert result.stdout.rstrip().endswith("0 papers stored; editions: 1 sent.")
    assert str(bad) in result.stderr and "ana" not in result.stderr


def test_status_before_anything_happened(run_cli, config_file, store):
    result = run_cli("-c", config_file, "status")
    assert result.exit_code == 0, result.output
    assert "Feeds" not in result.stdout  # no table for no feeds
    assert "0 papers stored; editions: none yet." in result.stdout


# --- daemons: the leader and its standbys, from their heartbeats ---------------------------


def _snapshot_until(store: Store, ready: Callable[[Snapshot], bool]) -> Snapshot:
    """The store's snapshot once `ready` (a heartbeat thread writes in its own time)."""
    found: list[Snapshot] = []
    wait_for(lambda: found.append(snapshot_of(store)) or ready(found[-1]), 10,
             "the heartbeat in the store")
    return found[-1]


def test_a_daemons_heartbeat_says_who_leads_and_who_stands_by(store, settings):
    """Written through the store as `digest run` writes it (DaemonPresence); gone from the
    report as soon as each stops."""
    leader = DaemonPresence(store, "host-a:1:aaaa", clock=lambda: NOW)
    standby = DaemonPresence(store, "host-b:2:bbbb", clock=lambda: NOW)
    leader.beat("leader")
    standby.beat("standby")
    try:
        snapshot = _snapshot_until(store, lambda s: len(s.heartbeats) == 2)
        daemon = collect_status(snapshot, settings, now=NOW + timedelta(seconds=5)).daemon
        assert daemon.running
        assert [(p.role, p.pid, p.alive) for p in daemon.processes] == [
            ("leader", os.getpid(), True), ("standby", os.getpid(), True)]
        assert daemon.processes[0].since == "2026-11-25T12:00+00:00"

        standby.beat("leader")  # the leader died and the standby took over
        leader.stop(10)
        snapshot = _snapshot_until(store, lambda s: [daemon_role(h.row_id) for h in
                                                     s.heartbeats] == [("leader", "host-b:2:bbbb")])
        daemon = collect_status(snapshot, settings, now=NOW).daemon
        assert daemon.running and [p.role for p in daemon.processes] == ["leader"]
    finally:
        leader.stop(10)
        standby.stop(10)
    daemon = collect_status(snapshot_of(store), settings, now=NOW).daemon
    assert daemon == DaemonStatus(running=False, processes=())
    assert daemon_lines(daemon, NOW) == ["Daemon: not running: start it with `digest run`"]


def test_a_daemon_that_fell_silent_or_whose_process_is_gone_is_not_running(store, settings):
    elsewhere = daemon_row("leader", "elsewhere/ffff:77:abcd")
    store.heartbeat(elsewhere, host="elsewhere/ffff", pid=77,
                    started_at=NOW - timedelta(hours=3), now=NOW - timedelta(minutes=2))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    here = daemon_row("standby", f"{pid_space()}:{gone.stdout.strip()}:cdef")
    store.heartbeat(here, host=pid_space(), pid=int(gone.stdout), started_at=NOW, now=NOW)

    daemon = collect_status(snapshot_of(store), settings, now=NOW).daemon

    assert not daemon.running
    assert [(p.role, p.host, p.alive) for p in daemon.processes] == [
        ("standby", pid_space().split("/")[0], False),  # heard now, but its pid is no more
        ("leader", "elsewhere", False)]
    first, last = daemon_lines(daemon, NOW)
    assert first == "Daemon: not running: start it with `digest run`"
    assert last.startswith("        last heard: standby pid ") and last.endswith(", now")


def test_status_shows_a_real_daemon_and_its_standby_then_none(tmp_path, smtp_sink, run_cli):
    config = write_daemon_config(tmp_path, smtp_sink.port)
    (tmp_path / "profiles").mkdir()

    def processes() -> list[tuple[str, bool]]:
        result = run_cli("-c", config, "status", "--json")
        assert result.exit_code == 0, result.output
        return [(p["role"], p["alive"]) for p in json.loads(result.stdout)["daemon"]["processes"]
                if p["alive"]]

    leader = DaemonProcess(config, tmp_path / "leader.log")
    standby = None
    try:
        wait_for(lambda: processes() == [("leader", True)], 60, "the leader in status")
        standby = DaemonProcess(config, tmp_path / "standby.log")
        wait_for(lambda: processes() == [("leader", True), ("standby", True)], 60,
                 "the standby in status")
        text = run_cli("-c", config, "status").stdout
        assert f"Daemon: leader pid {leader.handle.pid} on " in text
        assert f"        standby pid {standby.handle.pid} on " in text
    finally:
        assert leader.stop() == 0, leader.text()
        if standby is not None:
            assert standby.stop() == 0, standby.text()

    assert processes() == []
    result = run_cli("-c", config, "status")
    assert result.stdout.startswith("Daemon: not running: start it with `digest run`\n")


# --- reading only: nothing is created -----------------------------------------------------


def test_status_outside_a_project_says_so_in_one_line_and_creates_nothing(tmp_path):
    """No digest.toml here and no database in the per-user data folder: one line, exit 1,
    and no file or folder made (a real process, its per-user folders in tmp_path)."""
    home, xdg, here = (tmp_path / name for name in ("home", "xdg", "here"))
    for folder in (home, xdg, here):
        folder.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DIGEST_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(xdg), PYTHONPATH=str(ROOT))

    done = subprocess.run([sys.executable, "-m", "digest", "status"], cwd=here, env=env,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 1 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("digest: error: no digest.toml here and no database at "
                           f"{xdg / 'digest' / 'digest.sqlite3'}: nothing to show"), line
    assert sorted(tmp_path.rglob("*")) == sorted([home, here, xdg])


def test_status_with_a_config_and_no_database_yet_shows_the_profiles_and_creates_nothing(
        run_cli, config_file, write_profile, tmp_path):
    write_profile("ana")
    before = sorted(tmp_path.rglob("*"))

    result = run_cli("-c", config_file, "status")

    assert result.exit_code == 0, result.output
    assert "│ ana " in result.stdout and "none yet" in result.stdout
    assert result.stderr.startswith(f"No database yet at {tmp_path / 'data' / 'digest.sqlite3'}")
    assert sorted(tmp_path.rglob("*")) == before


# --- how it reads: 80 columns, local times, plurals -------------------------------------


def test_the_table_fits_80_columns_and_never_cuts_a_time(settings, write_profile, store):
    write_profile("a-subscriber-with-a-rather-long-identifier", schedule="30 6 * * 1-5",
                  timezone="America/Los_Angeles")
    write_profile("ben", schedule="weekly mon 07:00", timezone="Asia/Tokyo")
    record_edition(store, "ben", NOW - timedelta(days=40), EditionState.FAILED,
                   "550 5.1.1 <ben@example.org>: Recipient address rejected: User unknown in "
                   "virtual mailbox table")
    store.save_feed_state(FeedState(
        url="https://export.arxiv.org/api/query?search_query=cat:cs.IR&sortBy=submittedDate",
        last_poll_at=NOW - timedelta(minutes=3), last_status="200", last_new_papers=1234,
        next_poll_at=NOW + timedelta(minutes=27)))
    report = collect_status(snapshot_of(store), settings, now=NOW)
    out = io.StringIO()

    print_status(report, Console(file=out, width=80), now=NOW)

    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80, text
    times = [when(datetime.fromisoformat(s), NOW) for s in
             (report.subscribers[0].next_slot, report.subscribers[1].next_slot,
              report.subscribers[1].last_slot)]
    for shown in times:
        for part in shown.split("\n"):  # each half whole on a line of the table
            assert any(part in line for line in text.splitlines()), (part, text)
    assert times[2] == "16 Oct 21:00\n5 weeks ago"  # in Tokyo; the table shows it whole
    assert "1 paper stored" not in text and "0 papers stored" in text


def test_times_read_as_a_person_says_them():
    tokyo = NOW.astimezone(ZoneInfo("Asia/Tokyo"))  # Wednesday 21:00 there
    assert when(tokyo + timedelta(hours=3), NOW) == "Thu 00:00\nin 3 h"
    assert when(tokyo - timedelta(minutes=25), NOW) == "today 20:35\n25 min ago"
    assert when(tokyo - timedelta(days=2), NOW) == "Mon 21:00\n2 days ago"
    assert when(tokyo + timedelta(days=30), NOW) == "25 Dec 21:00\nin 4 weeks"
    assert when(tokyo - timedelta(days=400), NOW) == "2025-10-21\n13 months ago"
    assert when(tokyo - timedelta(days=800), NOW) == "2024-09-16\n2 years ago"
    assert ago(NOW + timedelta(seconds=20), NOW) == "now"
    assert ago(NOW - timedelta(days=1), NOW) == "24 h ago"
    assert ago(NOW + timedelta(days=90), NOW) == "in 2 months"


def test_counts_are_said_in_the_right_number(run_cli, config_file, store):
    store.add_entries([PaperEntry(title="One paper", abstract="a", source="f")], NOW)
    result = run_cli("-c", config_file, "status")
    assert "1 paper stored; editions: none yet." in result.stdout
