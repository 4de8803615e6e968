"""Celery workers on real services: PostgreSQL for the ledger, a real broker (RabbitMQ, or
Redis), two `digest worker` subprocesses and an SMTP sink. One worker is killed with
SIGKILL mid-run: every edition still arrives, exactly once but for the ones whose server
reply was in flight at the kill (reported, and bounded as in the crash test)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from digest.config import CelerySettings, Settings, SmtpSettings, load_settings
from digest.models import Edition, EditionState
from digest.running.editions import RECORD_EVERY, Status
from digest.running.sending import SendReport
from digest.running.workers import ShardWorker, shard_message
from tests.running import ROOT, cli_ingest, digest_cli, last_editions, write_readers
from tests.services import AMQP, REDIS, need, postgres_schema

pytest.importorskip("celery", reason="Celery (the 'celery' extra) is needed")



@pytest.fixture
def pg_url() -> Iterator[str]:
    with postgres_schema() as url:
        yield url


@pytest.fixture
def in_worker(settings: Settings) -> Iterator[ShardWorker]:
    """The worker as `digest worker` sets it up, for calling its task directly;
    afterwards the store the task opened is closed (its heartbeat thread with it), before
    the test's database goes away."""
    worker = ShardWorker(settings)
    yield worker
    worker.close()


def write_setup(tmp_path: Path, sink_port: int, subscribers: int, *, database: str,
                queue: str) -> Path:
    """Profiles and a config; the broker's URL (with its password) comes from the
    environment, DIGEST_BROKER_URL, as in production."""
    write_readers(tmp_path / "profiles", subscribers, random.Random(11))
    config = tmp_path / "digest.toml"
    config.write_text(
        f'data_dir = "data"\nprofiles_dir = "profiles"\ndatabase_url = "{database}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {sink_port}\nsecurity = "none"\n'
        'timeout_s = 10\n[mail]\nfrom_address = "digest@test.example"\n'
        '[send]\nworkers = "celery"\nshard_size = 500\n'
        f'[celery]\nqueue = "{queue}"\nvisibility_timeout_s = 120\n'
        'shard_timeout_s = 300\n')
    return config


def mid_shard(log: Path, sent: int = 100) -> bool:
    """Whether the worker logging to `log` is sending a shard and has sent `sent` of it."""
    text = log.read_text(errors="replace") if log.exists() else ""
    start = text.rfind("send_shard[")  # "Task digest.send_shard[id] received"
    return start >= 0 and "shard.done" not in text[start:] and text.count(
        "edition.sent", start) >= sent


class Workers:
    """`digest worker` subprocesses, logging to files, stopped at the end."""

    def __init__(self, command: list[str], env: dict[str, str], logs: Path):
        self.command, self.env, self.logs = command, env, logs
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"worker{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen([*self.command, "worker"], env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.slow
def test_worker_killed_mid_run_loses_and_doubles_nothing(tmp_path, smtp_sink, seeds, pg_url,
                                                         capsys):
    """On RabbitMQ, which hands a dead worker's shard to another at once (Redis does only
    after its visibility timeout, minutes: see test_two_workers_through_redis)."""
    url, broker = AMQP, "rabbitmq"
    need(url)
    subscribers = 5000
    queue = f"digest-test-{uuid.uuid4().hex[:8]}"
    config = write_setup(tmp_path, smtp_sink.port, subscribers, database=pg_url, queue=queue)
    command, env = digest_cli(config, DIGEST_BROKER_URL=url)
    cli_ingest(command, env, seeds)
    workers = Workers(command, env, tmp_path)
    try:
        victim = workers.start()
        workers.start()
        send = subprocess.Popen([*command, "send"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        # Kill one worker mid-shard: once it has sent 100 editions of the shard in hand.
        deadline = time.monotonic() + 120
        while not mid_shard(tmp_path / "worker0.log") and time.monotonic() < deadline:
            time.sleep(0.02)
        received_at_kill = len(smtp_sink.received)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        out, err = send.communicate(timeout=600)
    finally:
        workers.stop()
    assert send.returncode == 0, (out[-2000:], err[-3000:])
    assert f"{subscribers} editions" in out

    editions = last_editions(pg_url, (f"s{i:05d}" for i in range(subscribers)))
    assert all(e is not None for e in editions)
    states = Counter(e.state for e in editions if e is not None)
    assert set(states) <= {EditionState.SENT, EditionState.EMPTY}, states
    sent = {e.message_id for e in editions if e is not None and e.state is EditionState.SENT}
    received = Counter(r.message["Message-ID"] for r in smtp_sink.received)
    lost = sent - set(received)
    duplicates = sorted(mid for mid, count in received.items() if count > 1)
    survivor = (tmp_path / "worker1.log").read_text(errors="replace")
    recovered = sum(int(line.split("count=")[1].split()[0]) for line in survivor.splitlines()
                    if "editions.recovered" in line)
    with capsys.disabled():
        print(f"\ncelery workers ({broker}): {len(sent)} editions sent by 2 workers, one "
              f"killed after {received_at_kill} messages; its shard was redelivered and "
              f"{recovered} editions it had claimed were taken over; lost {len(lost)}, "
              f"duplicates {len(duplicates)} (in flight or not yet recorded at the kill)")
    assert recovered > 0, "the kill did not land mid-shard: nothing was taken over"
    assert not lost
    assert set(received) <= sent
    assert len(duplicates) <= SmtpSettings().connections + RECORD_EVERY


def test_send_report_round_trips_as_json(tmp_path):
    from digest.models import Profile
    from digest.running.editions import EditionOutcome, Status

    profile = Profile(subscriber_id="ana", path=tmp_path / "ana.yaml", name="Ana",
                      email="ana@example.org")
    report = SendReport(errors=["x.yaml:3: bad"], subscribers={"ana": str(profile.path)},
                        picks=4)
    report.counts[Status.SENT] += 3
    report.counts[Status.FAILED] += 1
    report.shown.append(EditionOutcome(profile, Status.FAILED, detail="550 no such user",
                                       picked=4))
    report.timings["rank"] = 1.5
    again = SendReport.from_json(json.loads(json.dumps(report.to_json())))
    assert again.counts == report.counts
    assert again.errors == report.errors and again.subscribers == report.subscribers
    assert again.timings == report.timings and again.picks == 4
    [shown] = again.shown
    assert (shown.profile.subscriber_id, shown.status, shown.detail, shown.count) == (
        "ana", Status.FAILED, "550 no such user", 4)


def test_broker_password_only_from_the_environment(tmp_path):
    from digest.errors import ConfigError

    config = tmp_path / "digest.toml"
    config.write_text('[celery]\nbroker_url = "amqp://digest:hunter2@rabbit:5672//"\n')
    with pytest.raises(ConfigError, match="DIGEST_BROKER_URL") as caught:
        load_settings(config, env={})
    assert "hunter2" not in str(caught.value)
    config.write_text('[celery]\nbroker_url = "amqp://rabbit:5672//"\n')
    settings = load_settings(config, env={"DIGEST_BROKER_URL":
                                          "amqp://digest:hunter2@rabbit:5672//"})
    assert settings.celery.broker_url == "amqp://digest:hunter2@rabbit:5672//"
    from digest.config import redact_url
    assert "hunter2" not in redact_url(settings.celery.broker_url)
    assert CelerySettings(broker_url="amqp://rabbit//").backend == "rpc://"
    assert CelerySettings(broker_url="redis://r:6379/1").backend == "redis://r:6379/1"


@pytest.mark.slow
def test_daemon_hands_due_editions_to_a_worker(tmp_path, smtp_sink, seeds, pg_url):
    """`digest run` with workers = "celery" sends nothing itself: it enqueues the due
    editions, and a `digest worker` sends them."""
    need(AMQP)
    config = write_setup(tmp_path, smtp_sink.port, 3, database=pg_url,
                         queue=f"digest-test-{uuid.uuid4().hex[:8]}")
    with config.open("a") as handle:
        handle.write("[daemon]\ncatchup_grace_s = 86400\nprofiles_poll_s = 0.5\n")
    command, env = digest_cli(config, DIGEST_BROKER_URL=AMQP)
    cli_ingest(command, env, seeds)
    workers = Workers(command, env, tmp_path)
    daemon_log = tmp_path / "daemon.log"
    daemon = subprocess.Popen([*command, "run"], env=env, stdout=subprocess.DEVNULL,
                              stderr=daemon_log.open("wb"))
    try:
        workers.start()
        deadline = time.monotonic() + 60
        while len(smtp_sink.received) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        workers.stop()
    assert sorted(r.recipients[0] for r in smtp_sink.received) == [
        f"r{i}@example.org" for i in range(3)]
    log = daemon_log.read_text()
    assert "shards.enqueued editions=3 shards=1" in log
    assert "edition.sent" not in log  # the worker sent them
    assert "shard.done editions=3 sent=3" in (tmp_path / "worker0.log").read_text()


@pytest.mark.slow
def test_two_workers_through_redis(tmp_path, smtp_sink, seeds, pg_url):
    need(REDIS)
    config = write_setup(tmp_path, smtp_sink.port, 1200, database=pg_url,
                         queue=f"digest-test-{uuid.uuid4().hex[:8]}")
    command, env = digest_cli(config, DIGEST_BROKER_URL=REDIS)
    cli_ingest(command, env, seeds)
    workers = Workers(command, env, tmp_path)
    try:
        workers.start()
        workers.start()
        send = subprocess.run([*command, "send"], env=env, capture_output=True, text=True,
                              timeout=300)
    finally:
        workers.stop()
    assert send.returncode == 0, send.stderr[-3000:]
    assert "1200 editions" in send.stdout, send.stdout
    sent = int(re.search(r"(\d+) sent", send.stdout).group(1))
    ids = [r.message["Message-ID"] for r in smtp_sink.received]
    assert len(ids) == len(set(ids)) == sent > 1000
    both = [(tmp_path / f"worker{i}.log").read_text().count("shard.done") for i in (0, 1)]
    assert sum(both) == 3  # shards of 500, 500 and 200, taken by whichever was free


class _Retry(Exception):
    pass


class _Task:
    """What `_send_shard` uses of a bound Celery task: its retry count and `retry`."""

    def __init__(self, retries: int = 0):
        self.request = type("Request", (), {"retries": retries})()
        self.retried: dict[str, object] | None = None

    def retry(self, *, args: list[dict[str, object]], countdown: float) -> _Retry:
        self.retried = {"message": args[0], "countdown": countdown}
        return _Retry()


def test_a_shard_waits_for_a_live_sender_then_takes_over_when_it_falls_silent(
        store, seeds, write_profile, now, in_worker):
    """Editions another sender holds are not sent while it beats; the shard is tried
    again with only them (the rest of its report carried along), and once that sender's
    heartbeat stops they are taken back and sent: each edition once, one report."""
    from datetime import timedelta

    from digest.ingest.storing import ingest_files
    from digest.running.editions import _last_slot

    ingest_files(store, seeds, now=now)
    ana = write_profile("ana", interests=["language models"], schedule="daily 07:00")
    ben = write_profile("ben", interests=["retrieval"], schedule="daily 07:00")
    slot = _last_slot("daily 07:00", "UTC", now)
    assert slot is not None
    held = store.create_edition(Edition(subscriber_id="ben", slot=slot,
                                        state=EditionState.PENDING, message_id="<ben@x>"),
                                candidates_until=now, now=now)
    assert held is not None
    beat = datetime.now(UTC)
    assert store.begin_sending(held, now=beat, stale_before=beat - timedelta(hours=1),
                               claimer="elsewhere:7:abcd")
    store.heartbeat("elsewhere:7:abcd", host="elsewhere", pid=7, started_at=beat, now=beat)

    message = shard_message([(ana, None), (ben, None)], now=now, run_id="r1",
                                    show_all=True)
    first = _Task()
    with pytest.raises(_Retry):
        in_worker.send_shard(first, message)
    assert first.retried is not None
    again = first.retried["message"]
    assert isinstance(again, dict)
    assert [path for path, _ in again["items"]] == [str(ben)]
    carried = SendReport.from_json(again["carried"])
    assert dict(carried.counts) == {Status.SENT: 1} and set(carried.subscribers) == {"ana"}

    # The other sender dies: its heartbeat stops; a minute later the shard is tried again.
    store.heartbeat("elsewhere:7:abcd", host="elsewhere", pid=7, started_at=beat,
                    now=beat - timedelta(minutes=1))
    second = _Task(retries=1)
    done = SendReport.from_json(in_worker.send_shard(second, again))
    assert second.retried is None
    assert dict(done.counts) == {Status.SENT: 2}
    assert set(done.subscribers) == {"ana", "ben"} and not done.errors
    assert store.get_edition("ben", slot).state is EditionState.SENT


def test_an_unreachable_broker_is_one_line_not_a_traceback(tmp_path, write_profile):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write_profile("ana", interests=["retrieval"])
    config = tmp_path / "digest.toml"
    config.write_text('data_dir = "data"\nprofiles_dir = "profiles"\n[send]\n'
                      'workers = "celery"\n[celery]\n'
                      f'broker_url = "redis://127.0.0.1:{port}/0"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "digest", "-c", str(config), "send"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith(f"digest: error: cannot reach redis://127.0.0.1:{port}/0")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


def test_one_subscribers_failure_stays_with_that_subscriber(store, seeds, write_profile, now,
                                                           monkeypatch, smtp_sink, in_worker):
    """A bug while making one edition (here: rendering Ben's) is that edition's outcome;
    the shard's other editions go out, and the report says whose failed and why."""
    from digest.ingest.storing import ingest_files
    from digest.running.editions import EditionRun

    ingest_files(store, seeds, now=now)
    paths = [write_profile(name, interests=["language models", "retrieval"],
                           schedule="daily 07:00") for name in ("ana", "ben", "chen")]
    render = EditionRun.render

    def broken(self, profile, *args, **kwargs):  # type: ignore[no-untyped-def]
        if profile.subscriber_id == "ben":
            raise RuntimeError("template bug")
        return render(self, profile, *args, **kwargs)

    monkeypatch.setattr(EditionRun, "render", broken)
    message = shard_message([(p, None) for p in paths], now=now, run_id="r2",
                                    show_all=True)
    report = SendReport.from_json(in_worker.send_shard(_Task(), message))
    assert report.counts[Status.SENT] == 2 and report.counts[Status.ERROR] == 1
    [failed] = [o for o in report.shown if o.status is Status.ERROR]
    assert failed.profile.subscriber_id == "ben"
    assert failed.detail == "rendering failed: RuntimeError: template bug"
    assert sorted(r.recipients[0] for r in smtp_sink.received) == [
        "ana@example.org", "chen@example.org"]
