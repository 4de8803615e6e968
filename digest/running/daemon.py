"""`digest run`: the long-running process. APScheduler 3 wakes it up; the ledger decides.

Jobs: watch the inbox, poll feeds, reload profiles, retry failed editions, and one job
per subscriber (`edition:<subscriber>`) on that subscriber's schedule and time zone.
Editions go through one queue to one sender (digest/running/dispatch.py), which hands
them to `EditionRun.run_editions`, so the ledger, not the job store, says what was sent:
after downtime a missed edition is sent once (within `catchup_grace_s`), and restarts
send nothing twice.

One `digest run` per database leads; another started against the same database waits as
a standby and takes over when the leader stops or dies (digest/running/leader.py). With
`send.workers = "celery"`, due editions go to `digest worker`s in shards instead of
being sent here.

Signals: the first SIGTERM or SIGINT lets the edition in flight finish and starts no
new one; a second exits at once. SIGHUP reloads the configuration and the profiles.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from digest.background import off_loop
from digest.config import FeedSettings, Settings
from digest.embed import PROGRESS_BATCH, StoredTexts, embed_new_papers
from digest.errors import ConfigError, ProfileError
from digest.ingest.inbox import InboxWatcher
from digest.ingest.poll import poll_feed
from digest.profiles import load_profile, profile_paths
from digest.running.dispatch import EditionQueue, LoadedProfile
from digest.running.editions import check_sending
from digest.running.leader import leadership_for
from digest.running.liveness import DaemonPresence, Sender, recover_abandoned, utc_now
from digest.schedule import parse_schedule
from digest.store import Store
from digest.store.store import engine_name

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

EMBED_DEADLINE_S = 7 * 86_400.0  # a job embedding a store: no deadline worth the name


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns)


class Daemon:
    """Everything `digest run` keeps between jobs. `clock` is injectable for tests."""

    def __init__(self, load_settings: Callable[[], Settings], *,
                 clock: Callable[[], datetime] = utc_now, rng: random.Random | None = None):
        self._load_settings = load_settings
        self.settings = load_settings()
        check_sending(self.settings)  # links and DKIM: fail now, not at the first edition
        self.clock = clock
        self.rng = rng or random.Random()
        self.store = Store.open(self.settings.db_url)
        self.profiles: dict[str, LoadedProfile] = {}
        self._broken: dict[Path, tuple[int, int] | None] = {}  # logged once per version
        self.inbox = InboxWatcher(self.settings.inbox_dir, self.settings.daemon.inbox_settle_s)
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        _quiet_cancelled_jobs()
        self.stopping = asyncio.Event()
        self.leadership = leadership_for(self.store.engine)
        self.exit_status = 0
        self._feed_polls: dict[str, asyncio.Task[None]] = {}  # by feed URL
        self._embedding: asyncio.Task[None] | None = None  # embed_new_papers, while it runs
        self._embed_again = False
        sender = Sender(clock=clock)
        self.editions = EditionQueue(self.settings, self.store, self.profiles, clock=clock,
                                     stopping=self.stopping, sender=sender)
        # Leader or standby, for `digest status`: a heartbeat row of its own.
        self.presence = DaemonPresence(self.store, sender.identity, clock=clock)

    # Profiles --------------------------------------------------------------------------

    def reload_profiles(self, *, force: bool = False) -> bool:
        """Pick up added, edited and removed profile files; a broken edit keeps the last
        good version of that profile. Returns whether any profile was (re)loaded."""
        settings = self.settings
        paths = profile_paths(settings.profiles_dir)
        seen: set[str] = set()
        changed = False
        for path in paths:
            signature = _signature(path)
            current = self.profiles.get(path.stem)
            seen.add(path.stem)
            if not force and current is not None and current.signature == signature:
                continue
            if not force and path in self._broken and self._broken[path] == signature:
                continue
            try:
                profile = load_profile(path, default_max_papers=settings.default_max_papers)
                schedule = parse_schedule(profile.schedule, profile.timezone)
            except (ProfileError, ValueError) as exc:
                self._broken[path] = signature
                kept = "keeping the last good version" if current else "not served"
                log.warning("profile.invalid %s (%s)", exc, kept)
                continue
            self._broken.pop(path, None)
            loaded = LoadedProfile(profile, schedule, signature or (0, 0))
            self.profiles[profile.subscriber_id] = loaded
            changed = True
            self.store.save_subscriber(profile, self.clock())
            self._schedule_editions(loaded)
            log.info("profile.loaded subscriber=%s schedule=%r timezone=%s active=%s",
                     profile.subscriber_id, profile.schedule, profile.timezone, profile.active)
        for gone in set(self.profiles) - seen:
            del self.profiles[gone]
            if self.scheduler.get_job(f"edition:{gone}"):
                self.scheduler.remove_job(f"edition:{gone}")
            log.info("profile.removed subscriber=%s", gone)
        return changed

    def _schedule_editions(self, loaded: LoadedProfile) -> None:
        job_id = f"edition:{loaded.profile.subscriber_id}"
        if self.scheduler.get_job(job_id):
            # Removed first: before the scheduler starts, replace_existing would keep both.
            self.scheduler.remove_job(job_id)
        if not loaded.profile.active:
            return
        self.scheduler.add_job(
            self._enqueue_job, trigger=loaded.schedule.trigger, id=job_id,
            args=[loaded.profile.subscriber_id], replace_existing=True, coalesce=True,
            misfire_grace_time=max(1, int(self.settings.daemon.catchup_grace_s)))

    # Editions --------------------------------------------------------------------------

    async def _enqueue_job(self, subscriber_id: str) -> None:
        # A coroutine, so APScheduler runs it in the event loop, not in a worker thread.
        self.editions.enqueue(subscriber_id)

    # Inbox and feeds -------------------------------------------------------------------

    async def poll_inbox(self) -> None:
        try:
            done = await asyncio.to_thread(self.inbox.process, self.store, self.clock())
        except OSError as exc:
            log.error("inbox.error folder=%s error=%r", self.inbox.folder, str(exc))
            return
        for item in done:
            if item.rejected:
                log.warning("inbox.rejected file=%s reason=%r", item.path, item.rejected)
            for problem in item.problems:
                log.warning("inbox.skipped %s", problem)
        if any(item.new_papers for item in done):
            self.embed_new_papers()

    async def poll_feed(self, feed: FeedSettings) -> None:
        """One feed's job: start polling it, unless its last poll is still going (a fetch
        ends by its own deadline). Each feed has its own job and task, so a slow or failing
        feed never delays another's polls, nor its own job's next look."""
        running = self._feed_polls.get(feed.url)
        if running is None or running.done():
            self._feed_polls[feed.url] = asyncio.create_task(self._poll_feed(feed))

    async def _poll_feed(self, feed: FeedSettings) -> None:
        try:
            outcome = await poll_feed(self.store, feed, self.settings.daemon,
                                      now=self.clock(), rng=self.rng)
        except Exception as exc:  # as a job's error would be: logged, and the next poll
            log.error("feed.error url=%s error=%r", feed.url, str(exc))
            log.debug("feed.error url=%s traceback", feed.url, exc_info=exc)
            return
        if outcome is not None and outcome.new_papers:
            self.embed_new_papers()

    def embed_new_papers(self) -> None:
        """With the embeddings extra: embed the papers just stored, then the profiles'
        interests not embedded yet, in a thread, so that an edition's ranking finds them
        embedded (and need not even load the model). One such task at a time; asked again
        while it runs, it runs once more after (with the model configured then)."""
        if self._embedding is not None and not self._embedding.done():
            self._embed_again = True
            return
        self._embedding = asyncio.create_task(self._embed_new_papers())

    async def _embed_new_papers(self) -> None:
        again = True
        while again:
            self._embed_again = False
            try:
                embedder = self.editions.embedder()
                if embedder is not None:
                    # In a daemon thread (the exit never waits for it), a few papers at a
                    # time: it stops soon when the daemon stops, and when asked again (new
                    # papers, another model) it looks again.
                    await off_loop(partial(embed_new_papers, self.store, embedder,
                                           until=self._embedding_should_pause,
                                           batch=PROGRESS_BATCH),
                                   EMBED_DEADLINE_S, name="digest-embed")
                    phrases = sorted({i.text for loaded in self.profiles.values()
                                      for i in loaded.profile.interests})
                    if phrases and not self._embedding_should_pause():
                        await off_loop(partial(StoredTexts(self.store, embedder).encode,
                                               phrases),
                                       EMBED_DEADLINE_S, name="digest-embed")
            except Exception as exc:  # the next send embeds what is missing, or says why
                log.error("embeddings.error error=%r", str(exc))
                log.debug("embeddings.error traceback", exc_info=exc)
                return
            again = self._embed_again and not self.stopping.is_set()

    def _embedding_should_pause(self) -> bool:
        return self.stopping.is_set() or self._embed_again

    # Lifecycle -------------------------------------------------------------------------

    def _add_periodic_jobs(self) -> None:
        d = self.settings.daemon

        async def reload_profiles() -> None:
            if self.reload_profiles():
                self.embed_new_papers()  # their interests, before their first edition

        async def retry_failed() -> None:
            self.editions.retry_failed()

        # Every job is a coroutine so that it runs in the event loop, never in a thread.
        jobs: list[tuple[str, Callable[[], Awaitable[None]], float]] = [
            ("inbox", self.poll_inbox, d.inbox_poll_s),
            ("profiles", reload_profiles, d.profiles_poll_s),
            ("retry", retry_failed, min(d.retry_base_s, 60.0)),
        ]
        # One job per feed (`feed:<url>`), looking every minute (or its own interval, if
        # shorter) whether the feed is due; the store keeps when, back-off included.
        jobs += [(f"feed:{feed.url}", partial(self.poll_feed, feed),
                  min(feed.poll_s or d.feed_poll_s, 60.0)) for feed in self.settings.feeds]
        wanted = {job_id for job_id, _, _ in jobs}
        for job in self.scheduler.get_jobs():
            if job.id.startswith("feed:") and job.id not in wanted:  # no longer configured
                self.scheduler.remove_job(job.id)
        for job_id, func, every_s in jobs:
            self.scheduler.add_job(func, IntervalTrigger(seconds=every_s), id=job_id,
                                   replace_existing=True, coalesce=True, max_instances=1,
                                   next_run_time=datetime.now(UTC))

    def reload(self) -> None:
        """SIGHUP: read the configuration and every profile again."""
        try:
            settings = self._load_settings()
        except ConfigError as exc:
            log.error("config.invalid %s (keeping the running configuration)", exc)
            return
        try:
            check_sending(settings)
        except ConfigError as exc:
            log.error("config.invalid %s (keeping the running configuration)", exc)
            return
        if settings.db_url != self.settings.db_url:
            log.warning("config.reload database_url changed; restart to use the new database")
            settings = settings.model_copy(update={"database_url": self.settings.database_url,
                                                   "data_dir": self.settings.data_dir})
        self.editions.reload(settings)
        self.settings = settings
        self.inbox = InboxWatcher(settings.inbox_dir, settings.daemon.inbox_settle_s)
        self._add_periodic_jobs()
        self.reload_profiles(force=True)
        self.embed_new_papers()  # under the model now configured
        log.info("config.reloaded path=%s profiles=%d feeds=%d", settings.config_path,
                 len(self.profiles), len(settings.feeds))

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        log.info("daemon.stopping signal=%s (finishing what is in flight; send it again to "
                 "exit at once)", name)
        self.stopping.set()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, _exit_at_once)

    async def _lead(self) -> bool:
        """Wait until this process leads (no other `digest run` on this database does);
        False if told to stop first."""
        if await self._ask_leadership(self.leadership.try_acquire):
            self.presence.beat("leader")
            log.info("daemon.leader pid=%d", os.getpid())
            return True
        self.presence.beat("standby")
        poll = self.settings.daemon.standby_poll_s
        log.info("daemon.standby pid=%d (another `digest run` leads on this database; "
                 "checking every %.0f s, taking over when it stops)", os.getpid(), poll)
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), poll)
            except TimeoutError:
                pass
            if not self.stopping.is_set() and await self._ask_leadership(
                    self.leadership.try_acquire):
                self.presence.beat("leader")
                log.info("daemon.leader pid=%d (took over)", os.getpid())
                return True
        return False

    async def _ask_leadership(self, question: Callable[[], bool]) -> bool:
        """Ask the lock (a database round trip) off the event loop, within a time limit:
        a database that does not answer means no lead."""
        try:
            return await off_loop(question, max(10.0, 2 * self.settings.daemon.standby_poll_s),
                                  name="digest-leader")
        except TimeoutError:
            log.error("leader.unavailable reason='the database did not answer in time'")
            return False

    async def _check_leadership(self) -> None:
        if not await self._ask_leadership(self.leadership.holding):
            log.error("daemon.leader-lost (the database session holding the leader lock "
                      "ended); stopping so that this process restarts as a standby")
            self.exit_status = 1
            self.stopping.set()

    async def run(self) -> int:
        """Run until a stop signal; returns the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        if hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        if not await self._lead():
            await asyncio.to_thread(self.presence.stop, 10)
            self.store.close()
            log.info("daemon.stopped (was a standby)")
            return 0
        self.scheduler.add_job(self._check_leadership,
                               IntervalTrigger(seconds=self.settings.daemon.standby_poll_s),
                               id="leader", coalesce=True, max_instances=1)
        self.settings.inbox_dir.mkdir(parents=True, exist_ok=True)
        recover_abandoned(self.store, now=self.clock())
        self.reload_profiles()
        self._add_periodic_jobs()
        self.scheduler.start()
        log.info("daemon.started pid=%d profiles=%d feeds=%d inbox=%s database=%s",
                 os.getpid(), len(self.profiles), len(self.settings.feeds),
                 self.settings.inbox_dir, engine_name(self.settings.db_url))
        self.editions.catch_up()
        sender = asyncio.create_task(self.editions.send_editions())
        self.embed_new_papers()  # stored while it was down, or under another model
        await self.stopping.wait()
        self.scheduler.shutdown(wait=False)
        for poll in self._feed_polls.values():
            poll.cancel()  # a fetch still going runs on in a daemon thread, not waited for
        self.editions.stop()
        if self._embedding is not None:  # stops after the papers it is on; not waited past
            await asyncio.wait([self._embedding],  # the shutdown timeout
                               timeout=self.settings.daemon.shutdown_timeout_s)
        try:
            await asyncio.wait_for(sender, self.settings.daemon.shutdown_timeout_s)
        except TimeoutError:
            log.error("daemon.stop sending did not finish within %ss",
                      self.settings.daemon.shutdown_timeout_s)
        self.editions.close()
        # Out of `digest status` first, so that it never shows this leader and the next.
        await asyncio.to_thread(self.presence.stop, 10)
        try:  # a database that stopped answering must not hold up the exit
            await off_loop(self.leadership.release, 10, name="digest-leader")
        except TimeoutError:
            log.warning("leader.release timed out (the server frees the lock when the "
                        "session ends)")
        self.store.close()
        log.info("daemon.stopped editions_sent=%d editions_to_workers=%d", self.editions.sent,
                 self.editions.enqueued)
        return self.exit_status


class _CancelledJob(logging.Filter):
    """Drops APScheduler's error for a job it cancelled: its executor cancels the jobs
    still running when the scheduler shuts down (the daemon is stopping), then logs each
    as "Error running job" with a traceback. A job cut short by a stop is not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info is not None
                    and isinstance(record.exc_info[1], asyncio.CancelledError))


def _quiet_cancelled_jobs() -> None:
    """`_CancelledJob` on the logger of the scheduler's executor, once per process."""
    executor_log = logging.getLogger("apscheduler.executors.default")
    if not any(isinstance(f, _CancelledJob) for f in executor_log.filters):
        executor_log.addFilter(_CancelledJob())


def _exit_at_once(signum: int, _frame: FrameType | None) -> None:
    log.warning("daemon.killed signal=%s (second signal)", signal.Signals(signum).name)
    os._exit(128 + signum)
