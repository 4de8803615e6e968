"""`digest run`: catch-up after downtime, hot profile reloads, and the real process end to
end against a real SMTP server and a real HTTP server serving the feed fixtures."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from digest.config import DaemonSettings, Settings
from digest.ingest import read_digest_file
from digest.ingest.storing import ingest_files
from digest.models import EditionState
from digest.running.daemon import Daemon
from digest.running.dispatch import retry_delay_s

from .conftest import NOW
from .feedserver import FEEDS, Behaviour, FeedServer
from .hostile import HOSTILE_PROFILES, UNCLOSED_ITEM, deflate, gzip_bomb, write_hostile_profiles
from .running import ROOT, DaemonProcess, cli_ingest, digest_cli, wait_for, write_daemon_config


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _restart_and_catch_up(settings: Settings, clock: Clock) -> Daemon:
    """What `digest run` does when it starts: load profiles, queue missed editions, send."""
    daemon = Daemon(lambda: settings, clock=clock)

    async def cycle() -> None:
        daemon.reload_profiles()
        daemon.editions.catch_up()
        daemon.editions.queue.put_nowait(None)
        await daemon.editions.send_editions()

    asyncio.run(cycle())
    daemon.store.close()
    return daemon


async def _retry_tick(daemon: Daemon) -> int:
    """The retry job once, then the sender until the queue is empty; how many it queued."""
    daemon.reload_profiles()
    daemon.editions.retry_failed()
    queued = daemon.editions.queue.qsize()
    daemon.editions.queue.put_nowait(None)
    await daemon.editions.send_editions()
    return queued


@pytest.fixture
def daemon_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"daemon": DaemonSettings(catchup_grace_s=12 * 3600)})


def test_a_missed_edition_is_sent_once_after_downtime(daemon_settings, store, seeds,
                                                      write_profile, smtp_sink):
    write_profile("ana", interests=["retrieval", "language models"], schedule="daily 07:00")
    ingest_files(store, seeds[:2], now=NOW - timedelta(hours=8), reference=NOW)
    clock = Clock(NOW)  # 12:00 UTC: today's 07:00 edition was missed

    first = _restart_and_catch_up(daemon_settings, clock)
    again = _restart_and_catch_up(daemon_settings, clock)
    clock.now = NOW + timedelta(minutes=30)
    third = _restart_and_catch_up(daemon_settings, clock)
    assert (first.editions.sent, again.editions.sent, third.editions.sent) == (1, 0, 0)
    assert len(smtp_sink.received) == 1

    # Down for two days: only the latest missed edition goes out, with what arrived since.
    ingest_files(store, seeds[2:], now=NOW + timedelta(days=2), reference=NOW)
    clock.now = NOW + timedelta(days=2, hours=1)
    assert _restart_and_catch_up(daemon_settings, clock).editions.sent == 1
    slots = sorted(e.slot for e in [store.last_edition("ana")] if e)
    assert slots == [NOW.replace(hour=7) + timedelta(days=2)]
    assert store.get_edition("ana", NOW.replace(hour=7) + timedelta(days=1)) is None

    # Back after more than the grace period: that edition is skipped, not sent late.
    clock.now = NOW + timedelta(days=3, hours=8)  # 20:00, 13 h after the 07:00 slot
    assert _restart_and_catch_up(daemon_settings, clock).editions.sent == 0
    assert len(smtp_sink.received) == 2


def test_failed_edition_is_retried_after_its_back_off(daemon_settings, store, seeds,
                                                     write_profile, smtp_sink):
    from digest.commands.smtpsink import SmtpSink

    write_profile("ana", interests=["retrieval"], schedule="daily 07:00")
    ingest_files(store, seeds, now=NOW - timedelta(hours=8), reference=NOW)
    clock = Clock(NOW)
    with SmtpSink(respond=lambda _m: "421 4.7.0 too busy") as busy:
        failing = daemon_settings.model_copy(update={"smtp": daemon_settings.smtp.model_copy(
            update={"port": busy.port})})
        _restart_and_catch_up(failing, clock)
    edition = store.last_edition("ana")
    assert edition.state is EditionState.FAILED and edition.retryable

    daemon = Daemon(lambda: daemon_settings, clock=clock)

    async def retry_at(moment: datetime) -> int:
        clock.now = moment
        return await _retry_tick(daemon)

    wait = retry_delay_s(1, daemon_settings.daemon.retry_base_s, daemon_settings.daemon.retry_max_s)

    async def both() -> tuple[int, int]:
        early = await retry_at(NOW + timedelta(seconds=wait - 1))
        late = await retry_at(NOW + timedelta(seconds=wait + 1))
        return early, late

    try:
        assert asyncio.run(both()) == (0, 1)
    finally:
        daemon.store.close()  # and with it the heartbeat its sending started
    assert store.last_edition("ana").state is EditionState.SENT
    assert len(smtp_sink.received) == 1


def test_editions_nobody_is_sending_are_asked_for_again(daemon_settings, store, seeds,
                                                       write_profile, smtp_sink):
    """An edition recorded but never taken, and one whose sender (on another host) went
    silent mid-send: the leader's retry tick sends both, once."""
    from digest.models import Edition

    write_profile("ana", interests=["retrieval"], schedule="daily 07:00")
    write_profile("ben", interests=["language models"], schedule="daily 07:00")
    ingest_files(store, seeds, now=NOW - timedelta(hours=8), reference=NOW)
    slot = NOW.replace(hour=7)
    long_ago = NOW - timedelta(minutes=5)  # by the daemon's clock (NOW)
    for name in ("ana", "ben"):
        created = store.create_edition(
            Edition(subscriber_id=name, slot=slot, state=EditionState.PENDING,
                    message_id=f"<{name}@test.example>"),
            candidates_until=NOW - timedelta(hours=1), now=long_ago)
        assert created is not None
        if name == "ben":
            assert store.begin_sending(created, now=long_ago, stale_before=long_ago
                                       - timedelta(hours=1), claimer="gone:3:ffff")
            store.heartbeat("gone:3:ffff", host="gone", pid=3, started_at=long_ago,
                            now=long_ago)
    daemon = Daemon(lambda: daemon_settings, clock=Clock(NOW))

    assert asyncio.run(_retry_tick(daemon)) == 2
    assert asyncio.run(_retry_tick(daemon)) == 0  # settled: nothing asked for again
    daemon.store.close()
    assert {e.subscriber_id: e.state for e in map(store.last_edition, ("ana", "ben"))
            if e is not None} == {"ana": EditionState.SENT, "ben": EditionState.SENT}
    assert sorted(r.recipients[0] for r in smtp_sink.received) == [
        "ana@example.org", "ben@example.org"]


def test_profiles_reload_without_restart_and_a_broken_edit_keeps_the_last_good_one(
        daemon_settings, write_profile, caplog):
    caplog.set_level(logging.INFO, logger="digest")
    clock = Clock(NOW)
    daemon = Daemon(lambda: daemon_settings, clock=clock)
    path = write_profile("ana", interests=["retrieval"], schedule="daily 07:00")
    daemon.reload_profiles()
    assert daemon.profiles["ana"].profile.schedule == "daily 07:00"
    assert daemon.scheduler.get_job("edition:ana") is not None

    path.write_text("name: Ana\nemail: ana@example.org\nschedule: [broken\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    daemon.reload_profiles()
    assert daemon.profiles["ana"].profile.schedule == "daily 07:00"
    assert "keeping the last good version" in caplog.text
    assert "ana.yaml:4: not valid YAML" in caplog.text and "line 3" in caplog.text

    write_profile("ana", interests=["retrieval"], schedule="weekly mon 08:00")
    os.utime(path, (time.time() + 10, time.time() + 10))
    write_profile("bob", timezone="Mars/Olympus")
    daemon.reload_profiles()
    assert daemon.profiles["ana"].profile.schedule == "weekly mon 08:00"
    assert "bob" not in daemon.profiles and "unknown time zone" in caplog.text

    path.unlink()
    daemon.reload_profiles()
    assert "ana" not in daemon.profiles and daemon.scheduler.get_job("edition:ana") is None
    daemon.store.close()


# The real process ---------------------------------------------------------------------

@pytest.mark.slow
def test_digest_run_end_to_end(tmp_path, smtp_sink, seeds):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    # Every 2 s: editions follow what arrives. Once a day: only the catch-up sends it.
    (profiles / "fast.yaml").write_text(
        "name: Fast\nemail: fast@example.org\nschedule: every 2s\n"
        "interests: [retrieval, language models, attention]\n")
    (profiles / "daily.yaml").write_text(
        "name: Daily\nemail: daily@example.org\nschedule: every 24h\n"
        "interests: [retrieval, language models]\n")
    feed = "hf-daily-papers/feed_daily_2026-06-22.xml"
    with FeedServer() as server:
        config = write_daemon_config(
            tmp_path, smtp_sink.port,
            top=f'feeds = [{{ url = "{server.url(feed)}", poll_s = 1 }}]\n')
        command, env = digest_cli(config)
        cli_ingest(command, env, seeds[:1])
        first = DaemonProcess(config, tmp_path / "run1.log")
        wait_for(lambda: any(r.recipients == ("daily@example.org",)
                              for r in smtp_sink.received), 20, "the catch-up edition")
        wait_for(lambda: 200 in server.statuses(feed), 10, "the first feed poll")
        inbox = tmp_path / "inbox"
        shutil.copy(seeds[3], inbox / "seed.txt")
        already = {e.title for e in read_digest_file(seeds[0]).entries}
        dropped = {e.title for e in read_digest_file(seeds[3]).entries} - already

        def fast_got_the_seed() -> bool:
            return any(r.recipients == ("fast@example.org",)
                       and any(t in " ".join(r.message.get_body(("plain",)).get_content()
                                                     .split()) for t in dropped)
                       for r in smtp_sink.received)

        wait_for(fast_got_the_seed, 20, "an edition with the dropped file's papers")
        wait_for(lambda: 304 in server.statuses(feed), 10, "a 304 on the second poll")
        assert (inbox / "processed" / "seed.txt").is_file()
        assert first.stop() == 0
        log = first.text()
        assert "daemon.stopped" in log and "Traceback" not in log

        received = len(smtp_sink.received)
        second = DaemonProcess(config, tmp_path / "run2.log")
        wait_for(lambda: "daemon.started" in second.text(), 20, "the restart")
        wait_for(lambda: second.text().count("edition.empty subscriber=fast") >= 2, 20,
                  "two scheduled editions with nothing new after the restart")
        assert second.stop() == 0
    message_ids = [r.message["Message-ID"] for r in smtp_sink.received]
    assert len(smtp_sink.received) == received, "the restart sent something again"
    assert len(message_ids) == len(set(message_ids))
    assert "feed.polled" in second.text() and "status=304" in second.text()

    status = subprocess.run([sys.executable, "-m", "digest", "-c", str(config), "status",
                             "--json"], capture_output=True, text=True, env=env, check=True)
    report = json.loads(status.stdout)
    by_id = {s["subscriber_id"]: s for s in report["subscribers"]}
    assert by_id["daily"]["last_state"] == "sent" and by_id["daily"]["next_slot"]
    assert by_id["fast"]["last_state"] in ("sent", "empty")
    [feed_status] = report["feeds"]
    assert feed_status["result"] == "304" and feed_status["failures"] == 0
    assert report["editions"]["sent"] == len(smtp_sink.received)


def _peak_memory_bytes(pid: int) -> int:
    """The process's peak resident memory (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
def test_hostile_profiles_and_feeds_at_once_stall_nobody(tmp_path, smtp_sink, seeds):
    """Every hostile profile and feed at once, beside a subscriber due every 2 s and a good
    feed polled every second: each bad one is logged (a profile once), the subscriber's
    editions keep coming, the good feed keeps being polled while another trickles a byte a
    second, memory stays under 1 GB, and one SIGTERM ends it with that fetch still stuck."""
    profiles = tmp_path / "profiles"
    write_hostile_profiles(profiles)
    (profiles / "fast.yaml").write_text(
        "name: Fast\nemail: fast@example.org\nschedule: every 2s\n"
        "interests: [retrieval, language models, attention]\n")
    good = "hf-daily-papers/feed_daily_2026-06-22.xml"
    hf = (FEEDS / good).read_bytes()
    with FeedServer() as server:
        server.behaviours.update({
            "bomb.xml": Behaviour(body=gzip_bomb(), headers={"Content-Encoding": "gzip"}),
            "slow.xml": Behaviour(body=hf, drip_s=1),
            "raw.xml": Behaviour(body=deflate(hf, raw=True),
                                 headers={"Content-Encoding": "deflate"}),
            "broken.xml": Behaviour(body=UNCLOSED_ITEM),
        })
        feeds = ", ".join(f'{{ url = "{server.url(path)}", poll_s = 1 }}'
                          for path in (good, "bomb.xml", "slow.xml", "raw.xml", "broken.xml"))
        config = write_daemon_config(
            tmp_path, smtp_sink.port, top=f"feeds = [{feeds}]\n",
            daemon="feed_timeout_s = 60\nfeed_deadline_s = 600\nshutdown_timeout_s = 10\n")
        command, env = digest_cli(config)
        cli_ingest(command, env, seeds[:1])
        process = DaemonProcess(config, tmp_path / "run.log")

        def editions() -> int:  # sent, or found nothing new: on time either way
            return len(re.findall(r"edition\.(sent|empty) subscriber=fast", process.text()))

        try:
            wait_for(lambda: 304 in server.statuses(good), 60, "the good feed's second poll")
            wait_for(lambda: "once decompressed" in process.text()
                     and "no entry could be read" in process.text()
                     and "raw.xml status=200" in process.text(), 60, "every other feed's poll")
            seen = editions()
            wait_for(lambda: editions() >= seen + 2, 30, "two more editions after all that")
            assert server.statuses("slow.xml") == [200]  # still trickling, never asked again
            peak = _peak_memory_bytes(process.handle.pid)
            process.handle.send_signal(signal.SIGTERM)
            assert process.handle.wait(timeout=30) == 0
        finally:
            if process.handle.poll() is None:  # a failed check must not leave it running
                process.handle.kill()
    log = process.text()
    assert peak < 1024 ** 3, f"peak memory {peak / 1024 ** 2:.0f} MiB"
    for name in HOSTILE_PROFILES:
        assert log.count(f"{name}.yaml") == 1, (name, log)
    assert "daemon.stopped" in log and "Traceback" not in log
    assert "maximum number of running instances" not in log  # the slow feed's polls wait


def _slow_daemon(tmp_path: Path, seeds: list[Path], port: int) -> Path:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "ana.yaml").write_text(
        "name: Ana\nemail: ana@example.org\nschedule: every 24h\ninterests: [retrieval]\n")
    config = tmp_path / "digest.toml"
    config.write_text(f'data_dir = "data"\nprofiles_dir = "profiles"\n[smtp]\n'
                      f'host = "127.0.0.1"\nport = {port}\nsecurity = "none"\ntimeout_s = 10\n'
                      '[daemon]\ncatchup_grace_s = 86400\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "digest", "-c", str(config), "ingest", seeds[0]],
                   check=True, capture_output=True, env=env)
    return config


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_lets_the_email_in_flight_finish_and_a_second_exits_at_once(
        tmp_path, seeds, signals):
    import threading

    from digest.commands.smtpsink import SmtpSink

    arrived, release = threading.Event(), threading.Event()

    def slow(_message):
        arrived.set()
        release.wait(5)
        return "250 OK"

    with SmtpSink(respond=slow) as sink:
        config = _slow_daemon(tmp_path, seeds, sink.port)
        process = DaemonProcess(config, tmp_path / "run.log")
        assert arrived.wait(20), "the edition never reached the server"
        for _ in range(signals):
            process.handle.send_signal(signal.SIGTERM)
            time.sleep(0.3)
        if signals == 1:
            assert process.handle.poll() is None, "it must wait for the server's reply"
            release.set()
            assert process.handle.wait(timeout=20) == 0
            assert len(sink.received) == 1
            assert "edition.sent subscriber=ana" in process.text()
        else:
            assert process.handle.wait(timeout=5) == 128 + signal.SIGTERM
            release.set()


def test_a_job_cut_short_by_a_stop_logs_no_traceback(daemon_settings, caplog):
    """The scheduler cancels the jobs still running when the daemon stops; APScheduler
    would log each as an error with its traceback, which a stop is not."""
    daemon = Daemon(lambda: daemon_settings, clock=Clock(NOW))
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    async def stop_while_it_runs() -> None:
        daemon.scheduler.add_job(slow, id="slow", next_run_time=datetime.now(UTC))
        daemon.scheduler.start()
        await asyncio.wait_for(started.wait(), 10)
        daemon.scheduler.shutdown(wait=False)
        await asyncio.sleep(0.1)  # the cancelled job's callback runs

    with caplog.at_level(logging.DEBUG):
        asyncio.run(stop_while_it_runs())
    daemon.store.close()
    assert started.is_set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_blocking_call_given_up_on_ends_its_thread_quietly(monkeypatch):
    """The daemon stops waiting for a stuck fetch (its task cancelled at shutdown); when the
    call returns after all, its thread ends without an error on the terminal."""
    import threading

    from digest.background import off_loop

    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def stuck() -> str:
        started.set()
        release.wait(30)
        finished.set()
        return "late"

    async def give_up() -> None:
        waiting = asyncio.create_task(off_loop(stuck, 60, name="stuck-fetch"))
        assert await asyncio.to_thread(started.wait, 30)  # the call is under way
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(give_up())
    release.set()
    assert finished.wait(30)
    for thread in threading.enumerate():
        if thread.name == "stuck-fetch":
            thread.join(30)
    assert errors == []


def test_papers_arriving_are_embedded_in_the_background(settings, seeds, monkeypatch):
    """With the embeddings extra, the daemon embeds the papers an inbox file brought as soon
    as they are stored, then its profiles' interests, not when an edition is due; asked
    again while it runs (more papers, another model), it stops after the papers it is on
    and looks again."""
    import threading

    import digest.running.daemon
    from digest.embed import PROGRESS_BATCH, stored_name, text_key

    from .test_embed_models import Fake

    passes: list[int] = []
    real = digest.running.daemon.embed_new_papers

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        passes.append(real(*args, **kwargs))
        return passes[-1]

    class Held(Fake):
        """Its first encode waits until the test has asked again."""

        def __init__(self) -> None:
            super().__init__("m", 8)
            self.entered, self.go_on = threading.Event(), threading.Event()

        def encode(self, texts):  # type: ignore[no-untyped-def]
            self.entered.set()
            self.go_on.wait(30)
            return super().encode(texts)

    monkeypatch.setattr(digest.running.daemon, "embed_new_papers", counted)
    settings.profiles_dir.mkdir()
    (settings.profiles_dir / "ana.yaml").write_text(
        "name: Ana\nemail: ana@example.org\ninterests: [dense retrieval, rerankers]\n")
    daemon = Daemon(lambda: settings, clock=Clock(NOW))
    daemon.reload_profiles()
    held = Held()
    daemon.editions._embedder = held  # as if the extra were installed: no model to load
    settings.inbox_dir.mkdir()
    for seed in seeds[3:5]:
        arrived = settings.inbox_dir / seed.name
        shutil.copy(seed, arrived)
        settled = NOW.timestamp() - 60  # the daemon's clock says when
        os.utime(arrived, (settled, settled))

    async def arrive() -> None:
        await daemon.poll_inbox()  # seen once
        await daemon.poll_inbox()  # unchanged since: ingested, and embedding begun
        embedding = daemon._embedding
        assert embedding is not None
        assert await asyncio.to_thread(held.entered.wait, 30)  # on its first papers
        daemon.embed_new_papers()  # asked again while it runs
        assert daemon._embedding is embedding
        held.go_on.set()
        await embedding

    asyncio.run(arrive())
    stored = daemon.store.count_papers()
    # Each paper's text and title once, and the profile's two interests once.
    assert stored > PROGRESS_BATCH and held.encoded == 2 * stored + 2
    assert daemon.store.count_papers_without_embedding(stored_name(held)) == 0
    assert passes == [PROGRESS_BATCH, stored - PROGRESS_BATCH]  # paused, then the rest
    phrases = [text_key("dense retrieval"), text_key("rerankers")]
    assert len(daemon.store.text_embeddings(held.name, phrases)) == 2
    daemon.store.close()
