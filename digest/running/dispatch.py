"""The daemon's editions: asked for by each subscriber's schedule job, the catch-up at
start and the retry job; one sender takes them off a queue in batches and hands them to
`EditionRun.run_editions`, the one way editions are run (or, with `send.workers =
"celery"`, to `digest worker`s in shards). The ledger, not the queue, says what was sent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from digest.config import Settings
from digest.deliver import SmtpMailer
from digest.embed import Embedder, embedder_for
from digest.errors import ConfigError, ConnectionFailure, StoreError
from digest.models import Profile
from digest.running.editions import EditionRun, Status
from digest.running.liveness import Sender, recover_abandoned
from digest.schedule import Schedule
from digest.store import Store
from digest.store.store import SILENT_AFTER_S

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedProfile:
    profile: Profile
    schedule: Schedule
    signature: tuple[int, int]  # (size, mtime_ns) of the file when it was read


def retry_delay_s(attempts: int, base_s: float, max_s: float) -> float:
    """How long after its last attempt a failed edition is tried again."""
    return float(min(base_s * 2 ** max(0, attempts - 1), max_s))


class EditionQueue:
    """The editions the daemon is asked for, and the one sender that runs them."""

    def __init__(self, settings: Settings, store: Store, profiles: Mapping[str, LoadedProfile],
                 *, clock: Callable[[], datetime], stopping: asyncio.Event, sender: Sender):
        self.settings = settings
        self.store = store
        self.profiles = profiles  # the daemon's, kept up to date as files change
        self.clock = clock
        self.stopping = stopping
        self.sender = sender  # every run's; its heartbeat lives with the store
        self.queue: asyncio.Queue[tuple[str, datetime | None] | None] = asyncio.Queue()
        self._queued: set[tuple[str, datetime | None]] = set()
        self._asked_again: dict[tuple[str, datetime], datetime] = {}
        self.sent = 0
        self.enqueued = 0  # handed to Celery workers (send.workers = "celery")
        self._embedder: Embedder | None | Literal["unloaded"] = "unloaded"
        self._celery_app: Celery | None = None  # send.workers = "celery", made on first use

    def reload(self, settings: Settings) -> None:
        """The configuration was read again: a changed ranking reloads the model, a
        changed broker is connected to afresh."""
        if settings.rank != self.settings.rank:
            self._embedder = "unloaded"
        if settings.celery != self.settings.celery:
            self.close()
        self.settings = settings

    def embedder(self) -> Embedder | None:
        """The embedder every run of this daemon shares (None: ranking is lexical)."""
        if self._embedder == "unloaded":
            self._embedder = embedder_for(self.settings)
        return self._embedder

    def close(self) -> None:
        if self._celery_app is not None:
            self._celery_app.close()  # the next hand-over connects as now configured
            self._celery_app = None

    def stop(self) -> None:
        """The sender finishes what it took and then returns."""
        self.queue.put_nowait(None)

    def enqueue(self, subscriber_id: str, slot: datetime | None = None) -> None:
        """Ask the sender for this subscriber's edition (the due one, or `slot`)."""
        key = (subscriber_id, slot)
        if key in self._queued or self.stopping.is_set():
            return
        self._queued.add(key)
        self.queue.put_nowait(key)

    def catch_up(self) -> None:
        """Queue every subscriber whose latest slot passed within the grace period; the
        ledger turns this into nothing for editions already sent."""
        now = self.clock()
        grace = timedelta(seconds=self.settings.daemon.catchup_grace_s)
        for subscriber_id, loaded in sorted(self.profiles.items()):
            slot = loaded.schedule.last_slot(now)
            if loaded.profile.active and slot is not None and now - slot <= grace:
                self.enqueue(subscriber_id)

    def retry_failed(self) -> None:
        """Queue failed editions whose back-off has passed and which are still timely, and
        editions nobody is sending: left `pending`, or taken back from a sender that died
        (on any host: `recover_abandoned`)."""
        now = self.clock()
        daemon = self.settings.daemon
        grace = timedelta(seconds=daemon.catchup_grace_s)
        idle = now - timedelta(seconds=2 * SILENT_AFTER_S)
        # Editions taken back now are marked as touched at `idle`, so this tick asks for
        # them at once rather than a tick later.
        recover_abandoned(self.store, now=now, touched_at=idle - timedelta(microseconds=1))
        self._asked_again = {k: t for k, t in self._asked_again.items() if now - k[1] <= grace}
        again = timedelta(seconds=daemon.retry_base_s)
        for key in self.store.unsettled_editions(untouched_since=idle, slots_since=now - grace):
            loaded = self.profiles.get(key[0])
            asked = self._asked_again.get(key)
            if (loaded is not None and loaded.profile.active
                    and (asked is None or now - asked >= again)):
                self._asked_again[key] = now  # once per retry_base_s: workers may be busy
                self.enqueue(*key)
        for edition in self.store.retryable_editions():
            if edition.subscriber_id not in self.profiles or now - edition.slot > grace:
                continue
            wait = retry_delay_s(edition.attempts, daemon.retry_base_s, daemon.retry_max_s)
            last = edition.updated_at or edition.slot
            if last + timedelta(seconds=wait) <= now:
                self.enqueue(edition.subscriber_id, edition.slot)

    async def send_editions(self) -> None:
        """The one sender: takes queued editions in batches, one SMTP connection a batch."""
        while True:
            item = await self.queue.get()
            if item is None:
                return
            batch = [item]
            while not self.queue.empty():
                more = self.queue.get_nowait()
                if more is None:
                    self.queue.put_nowait(None)  # keep the stop marker for the outer loop
                    break
                batch.append(more)
            if self.settings.send.workers == "celery":  # the workers rank and send
                await self._hand_to_workers(self._take_due(batch))
                continue
            # A corpus fitted on today's papers; the embedding model is loaded only once,
            # and one sender (one heartbeat) serves every run.
            try:
                run = EditionRun(self.store, self.settings, embedder=self.embedder(),
                                 stopping=self.stopping, sender=self.sender,
                                 clock=self.clock)
            except ConfigError as exc:  # checked at start and reload; the key file may go
                log.error("editions.not-sent count=%d reason=%r", len(batch), str(exc))
                self._queued.difference_update(batch)
                continue
            due = self._take_due(batch)
            if due:
                await self._send(run, due)

    def _take_due(self, batch: list[tuple[str, datetime | None]]
                  ) -> list[tuple[Profile, datetime]]:
        """The queued editions of `batch` that are still due, off the queue's books."""
        due = []
        for key in batch:
            self._queued.discard(key)
            ready = self._due(*key)
            if ready is not None:
                due.append(ready)
        return due

    async def _hand_to_workers(self, due: list[tuple[Profile, datetime]]) -> None:
        """`send.workers = "celery"`: the editions go to `digest worker`s in shards; the
        ledger, which they share, records what they send."""
        from digest.running.workers import enqueue, make_app

        if not due:
            return
        if self._celery_app is None:  # one client (and broker connection pool) for all
            self._celery_app = make_app(self.settings.celery)
        items = [(profile.path, slot) for profile, slot in due]
        try:
            await asyncio.to_thread(enqueue, self.settings, items, now=self.clock(),
                                    app=self._celery_app)
            self.enqueued += len(items)
        except Exception as exc:  # the broker is down: asked for again a little later
            wait = min(self.settings.daemon.retry_base_s, 60.0)
            log.error("editions.not-enqueued count=%d reason=%r (trying again in %.0f s)",
                      len(due), str(exc), wait)

            def again() -> None:
                for profile, slot in due:
                    self.enqueue(profile.subscriber_id, slot)

            asyncio.get_running_loop().call_later(wait, again)

    def _due(self, subscriber_id: str, slot: datetime | None
             ) -> tuple[Profile, datetime] | None:
        """The profile and slot to send for a queued edition; None if it is gone or late."""
        loaded = self.profiles.get(subscriber_id)
        if loaded is None:
            return None
        due = slot or loaded.schedule.last_slot(self.clock())
        grace = timedelta(seconds=self.settings.daemon.catchup_grace_s)
        if due is None or self.clock() - due > grace:
            log.info("edition.skipped subscriber=%s slot=%s reason=older-than-grace",
                     subscriber_id, due)
            return None
        return loaded.profile, due

    async def _send(self, run: EditionRun, due: list[tuple[Profile, datetime]]) -> None:
        """Run the due editions; an edition's own error is its outcome (the run keeps it
        there). What can still go wrong is the run's: the database away, a broken
        template, no connection to the SMTP server (refused, DNS, TLS, login). Its
        editions stay pending, uncharged, for the retry job, which asks for them again
        (once per `retry_base_s`) and also tries failed ones again (so none is retried
        within the run)."""
        smtp = self.settings.smtp
        try:
            async with SmtpMailer(smtp, sender=self.settings.mail.from_address) as mailer:
                outcomes = await run.run_editions(
                    [profile for profile, _ in due], mailer, now=self.clock(),
                    slots=[slot for _, slot in due], retry_in_run=False)
        except (StoreError, ConfigError, ConnectionFailure) as exc:
            log.error("editions.not-sent count=%d reason=%r (the retry job asks again)",
                      len(due), str(exc))
            return
        for outcome in outcomes:
            if outcome.status is Status.SENT:
                self.sent += 1
            elif outcome.status is Status.EMPTY:
                log.info("edition.empty subscriber=%s slot=%s", outcome.profile.subscriber_id,
                         outcome.slot.isoformat() if outcome.slot else "")
