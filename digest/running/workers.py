"""Celery workers (`[send] workers = "celery"`): a run of editions split into shards of
profiles, carried by a broker (Redis or RabbitMQ) to `digest worker` processes on any
number of hosts, each ranking, rendering and sending its shard against the shared ledger.

A task is acknowledged only when its shard is done (late acks), so a worker that dies
mid-shard has the shard given to another worker. That redelivery is harmless because the
ledger, not the task, says what was sent: editions already sent are skipped, the ones the
dead worker had claimed are taken back (at once when it ran on this host; otherwise once
its claim is `mail.sending_stale_s` old, the task waiting for that), and only those whose
server reply was in flight when it died can arrive twice, as with `digest send`
(docs/delivery.md).

Workers need the same configuration, database and profiles folder (same path) as the
process that enqueues; their tasks carry profile paths and slots, never secrets.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digest.config import CelerySettings, Settings, redact_url
from digest.errors import BrokerError, ConfigError, ConnectionFailure, StoreError, first_line
from digest.running.editions import EditionRun, Status, check_sending
from digest.running.liveness import Sender, recover_abandoned, utc_now
from digest.running.sending import SendReport, run_shard
from digest.store import Store

if TYPE_CHECKING:
    from celery import Celery, Task

log = logging.getLogger(__name__)

TASK = "digest.send_shard"
# A shard whose editions another live sender holds is tried again this often, until the
# holder finishes or its claim goes stale (mail.sending_stale_s).
IN_FLIGHT_RETRY_S = 30.0
STORE_RETRIES = 64  # a shard that meets database errors is tried this often (~1 h)


def _celery() -> Any:
    try:
        import celery
    except ImportError as exc:
        raise ConfigError("send.workers is \"celery\" but Celery is not installed: "
                          "pip install 'digest[celery]'") from exc
    return celery


def make_app(settings: CelerySettings, worker: ShardWorker | None = None) -> Celery:
    """The Celery application both sides use: the enqueuing process (which sends tasks
    by name) and, given the `worker` that runs them, `digest worker`."""
    app = _celery().Celery("digest", broker=settings.broker_url, backend=settings.backend,
                           set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue,
        task_serializer="json", result_serializer="json", accept_content=["json"],
        # Acknowledge a shard when it is done: a worker killed mid-shard loses nothing,
        # its shard goes to another worker (the ledger makes that safe).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a worker holds one shard at a time
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        result_expires=24 * 3600,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        redis_socket_connect_timeout=10,  # a result store that does not answer: say so
        task_track_started=False,
    )
    if worker is not None:
        def send_shard(task: Task, message: dict[str, Any]) -> dict[str, Any]:
            return worker.send_shard(task, message)

        app.task(name=TASK, bind=True, max_retries=None)(send_shard)
    return app


def shard_message(items: Sequence[tuple[Path, datetime | None]], *, now: datetime,
                  run_id: str, show_all: bool, awaited: bool = False) -> dict[str, Any]:
    """A shard's task message. `awaited`: someone waits for its report (`digest send`), so
    a shard that cannot reach the SMTP server reports it at once rather than waiting to
    be tried again (the daemon's shards are)."""
    return {"run": run_id, "now": now.isoformat(), "show_all": show_all,
            "items": [[str(path), slot.isoformat() if slot else None] for path, slot in items],
            "carried": None, "awaited": awaited}


def enqueue(settings: Settings, items: Sequence[tuple[Path, datetime | None]], *,
            now: datetime, show_all: bool = False, want_results: bool = False,
            app: Celery | None = None) -> list[Any]:
    """Split the editions into shards of `send.shard_size` and hand them to the broker;
    returns the tasks' results (AsyncResult) if `want_results`."""
    app = app or make_app(settings.celery)
    run_id = uuid.uuid4().hex
    size = settings.send.shard_size
    results = []
    for start in range(0, len(items), size):
        message = shard_message(items[start:start + size], now=now, run_id=run_id,
                                show_all=show_all, awaited=want_results)
        results.append(app.send_task(TASK, args=[message], queue=settings.celery.queue,
                                     ignore_result=not want_results))
    log.info("shards.enqueued editions=%d shards=%d broker=%s", len(items), len(results),
             redact_url(settings.celery.broker_url))
    return results


def send_through_celery(settings: Settings, items: Sequence[tuple[Path, datetime | None]], *,
                        now: datetime, show_all: bool = False) -> SendReport:
    """`digest send` with Celery workers: enqueue every shard, wait for their reports.
    Raises ConnectionFailure, once, if a worker could not connect to the SMTP server."""
    check_sending(settings)  # a configuration error is said here, not in every worker
    app = make_app(settings.celery)
    report = SendReport()
    try:
        check_broker(app, settings.celery)
        try:
            results = enqueue(settings, items, now=now, show_all=show_all, want_results=True,
                              app=app)
        except Exception as exc:  # kombu's and Celery's many connection errors
            raise BrokerError(f"cannot hand the shards to the broker "
                              f"{redact_url(settings.celery.broker_url)}: {first_line(exc)}"
                              ) from exc
        deadline = time.monotonic() + settings.celery.shard_timeout_s
        for result in results:
            try:
                data = result.get(timeout=max(1.0, deadline - time.monotonic()),
                                  propagate=True, disable_sync_subtasks=False)
                report.add(SendReport.from_json(data))
            except Exception as exc:  # a shard's failure is one line; the others count
                report.errors.append(f"shard {result.id}: not all sent: {_why(exc)}")
            if report.unreachable:  # the other shards meet it too: one line says it
                raise ConnectionFailure(report.unreachable)
    finally:
        app.close()
    return report


def check_broker(app: Celery, settings: CelerySettings) -> None:
    """Raise BrokerError, at once and in one line, if the broker (or a Redis result store)
    does not answer: rather than Celery's retries and tracebacks."""
    where = redact_url(settings.broker_url)
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                         timeout=10)
        if settings.backend.startswith("redis"):
            where = redact_url(settings.backend)
            app.backend.client.ping()
    except Exception as exc:
        raise BrokerError(f"cannot reach {where}: {first_line(exc)}") from exc


def _why(exc: BaseException) -> str:
    if type(exc).__name__ == "TimeoutError":
        return "no report from a worker in time (is `digest worker` running?)"
    return f"{type(exc).__name__}: {exc}"


# The worker side -----------------------------------------------------------------------

class ShardWorker:
    """What one `digest worker` process keeps between tasks: its settings, and the
    EditionRun of the run of editions its last shard belonged to (its corpus fitted on
    that run's papers), so the shards of one run share it; a new run starts afresh,
    keeping the store, the model and the sender (one heartbeat for the worker's life)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], datetime] = utc_now):
        self.settings = settings
        self.clock = clock  # the task is an entry point: it reads the clock for recovery
        self.run: EditionRun | None = None
        self._run_id: str | None = None

    def edition_run(self, run_id: str) -> EditionRun:
        if self.run is None or self._run_id != run_id:
            run = self.run
            store = run.store if run is not None else Store.open(self.settings.db_url)
            embedder = run.embedder if run is not None else "unloaded"
            sender = run.sender if run is not None else Sender(clock=self.clock)
            self.run = EditionRun(store, self.settings, embedder=embedder, sender=sender,
                                  clock=self.clock)
            self._run_id = run_id
        return self.run

    def close(self) -> None:
        if self.run is not None:
            self.run.store.close()
            self.run = None

    def send_shard(self, task: Task, message: dict[str, Any]) -> dict[str, Any]:
        """The task: send one shard's editions, return its report (JSON)."""
        try:
            run = self.edition_run(message["run"])
            # Editions a dead sender left half-sent are sent now, not when stale: this is
            # how a shard redelivered after its worker was killed goes on at once.
            recover_abandoned(run.store, now=self.clock())
        except StoreError as exc:  # the database is away (restarting?): the shard waits
            return _again_later(task, message, exc)
        items = [(Path(path), datetime.fromisoformat(slot) if slot else None)
                 for path, slot in message["items"]]
        now = datetime.fromisoformat(message["now"])
        try:
            # One subscriber's error is that edition's outcome (the run keeps it there);
            # what escapes is the shard's: the database away, or no connection to the
            # SMTP server (tried again later; its editions stay pending, uncharged).
            report = run_shard(run, [path for path, _ in items], now=now,
                               show_all=message["show_all"],
                               slots=[slot for _, slot in items])
        except StoreError as exc:
            return _again_later(task, message, exc)
        except ConnectionFailure as exc:
            if not message.get("awaited"):
                return _again_later(task, message, exc)
            log.warning("shard.unreachable editions=%d reason=%r", len(items), str(exc))
            report = SendReport(unreachable=str(exc))
            if message.get("carried"):  # what earlier tries of this shard did
                report.add(SendReport.from_json(message["carried"]))
            return report.to_json()
        for error in report.errors:  # profiles that would not load, editions that failed
            log.warning("shard.problem %s", error)
        held = [o for o in report.shown if o.status is Status.IN_FLIGHT]
        if message.get("carried"):
            earlier = SendReport.from_json(message["carried"])
            earlier.add(report)
            report = earlier
        waited = int(message.get("held_tries") or 0)
        if held and waited * IN_FLIGHT_RETRY_S <= 2 * self.settings.mail.sending_stale_s:
            # Another sender holds these: once it is done they are settled, and if it died
            # (its heartbeat falls silent) they are taken back and sent then. Only they are
            # tried again; the rest of the report travels with them.
            report.counts[Status.IN_FLIGHT] -= len(held)
            report.shown = [o for o in report.shown if o.status is not Status.IN_FLIGHT]
            for o in held:  # counted when they are tried again
                report.subscribers.pop(o.profile.subscriber_id, None)
            # Exactly those editions: by profile and the slot each was for.
            retry = dict(message, carried=report.to_json(), held_tries=waited + 1,
                         items=[[str(o.profile.path), o.slot.isoformat() if o.slot else None]
                                for o in held])
            log.info("shard.waiting editions=%d (held by another sender; again in %.0f s)",
                     len(held), IN_FLIGHT_RETRY_S)
            raise task.retry(args=[retry], countdown=IN_FLIGHT_RETRY_S)
        log.info("shard.done editions=%d sent=%d failed=%d", report.editions,
                 report.counts[Status.SENT], report.counts[Status.FAILED])
        return report.to_json()


def _again_later(task: Task, message: dict[str, Any],
                 exc: StoreError | ConnectionFailure) -> dict[str, Any]:
    """A shard that met a database error, or could not connect to the SMTP server, is
    tried again (the ledger makes that safe), after 5, 10, 20, 40 s, then every minute,
    for about an hour."""
    tries = int(message.get("store_tries") or 0)
    if tries >= STORE_RETRIES:
        raise exc
    delay = min(5.0 * 2 ** tries, 60.0)  # below [celery] visibility_timeout_s (>= 120)
    log.warning("shard.retrying reason=%r (again in %.0f s)", str(exc), delay)
    raise task.retry(args=[dict(message, store_tries=tries + 1)], countdown=delay)


def run_worker(settings: Settings, *, loglevel: str = "INFO") -> int:
    """`digest worker`: one process taking one shard at a time; run one per core."""
    check_sending(settings)
    shard_worker = ShardWorker(settings)
    app = make_app(settings.celery, shard_worker)
    worker = app.Worker(
        pool="solo", concurrency=1, loglevel=loglevel,
        hostname=f"digest-{os.getpid()}@{socket.gethostname()}",
        queues=[settings.celery.queue], without_mingle=True, without_gossip=True,
        quiet=True)
    # Celery logs every task's whole result at INFO; ours says what matters (shard.done).
    logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
    log.info("worker.started pid=%d broker=%s queue=%s", os.getpid(),
             redact_url(settings.celery.broker_url), settings.celery.queue)
    try:
        worker.start()
    finally:
        shard_worker.close()
    return int(worker.exitcode or 0)
