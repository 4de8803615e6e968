"""Big lists on every core: the profiles are split into shards of file paths, and worker
processes run each shard's editions (load, rank, render, send, record) against the shared
ledger.

Only paths go to a worker and only a small summary comes back, so memory stays flat as the
list grows. The ledger is what makes this safe: editions are claimed atomically, so two
processes never send one edition, and a worker killed mid-shard leaves its claimed editions
for `recover_abandoned` (docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from digest.config import Settings
from digest.deliver import SmtpMailer
from digest.models import Profile
from digest.pipeline import EditionOutcome, EditionRun, Status, check_sending
from digest.profiles import load_profiles
from digest.store import Store

log = logging.getLogger(__name__)

SHARD = 1000  # profiles per shard: big enough to batch, small enough to spread evenly
SHOW_ALL = 100  # up to this many subscribers, every outcome is kept for the report
WORTH_SHOWING = frozenset({Status.FAILED, Status.IN_FLIGHT})
# While a send runs: the young generation is collected after this many allocations (not
# Python's 700). A send's objects mostly live for a batch; at 700 the collector walked
# them again and again: a one-process 10,000-edition send spent 0.52 s of 10.6 in 994
# young, 89 middle and 7 full passes; at 20,000, 0.08 s in 18 young passes, at no cost in
# peak memory.
YOUNG_GENERATION = 20_000


@dataclass
class SendReport:
    """What a run of many editions did, summed over its shards."""

    counts: Counter[Status] = field(default_factory=Counter)
    # Outcomes worth a line each (failures, editions another sender holds), or all of them
    # when the run is small; without their picks and emails.
    shown: list[EditionOutcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # profiles that could not be loaded
    subscribers: dict[str, str] = field(default_factory=dict)  # id -> profile path
    timings: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    picks: int = 0

    def add(self, other: SendReport) -> None:
        self.counts.update(other.counts)
        self.shown += other.shown
        self.errors += other.errors
        for subscriber_id, path in other.subscribers.items():
            if subscriber_id in self.subscribers:
                # Each shard checks its own profiles; this catches an id used in two shards.
                self.errors.append(f"{path}: same subscriber id {subscriber_id!r} as "
                                   f"{self.subscribers[subscriber_id]} (one edition was sent "
                                   "for both)")
            else:
                self.subscribers[subscriber_id] = path
        for stage, seconds in other.timings.items():
            self.timings[stage] += seconds
        self.picks += other.picks

    @property
    def editions(self) -> int:
        return sum(self.counts.values())


    def to_json(self) -> dict[str, Any]:
        """This report as JSON-ready data (a Celery task's result)."""
        return {
            "counts": {str(status): n for status, n in self.counts.items() if n},
            "shown": [_outcome_json(o) for o in self.shown],
            "errors": self.errors,
            "subscribers": self.subscribers,
            "timings": dict(self.timings),
            "picks": self.picks,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SendReport:
        report = cls(errors=list(data["errors"]), subscribers=dict(data["subscribers"]),
                     picks=int(data["picks"]))
        report.counts.update({Status(k): int(n) for k, n in data["counts"].items()})
        report.shown = [_outcome_from_json(o) for o in data["shown"]]
        report.timings.update(data["timings"])
        return report


def _outcome_json(outcome: EditionOutcome) -> dict[str, Any]:
    p = outcome.profile
    return {"subscriber_id": p.subscriber_id, "path": str(p.path), "name": p.name,
            "email": p.email, "status": str(outcome.status),
            "slot": outcome.slot.isoformat() if outcome.slot else None,
            "detail": outcome.detail, "retry": outcome.retry, "picked": outcome.count}


def _outcome_from_json(data: dict[str, Any]) -> EditionOutcome:
    """An outcome as a report shows it: its profile holds who it was for, nothing more."""
    profile = Profile(subscriber_id=data["subscriber_id"], path=Path(data["path"]),
                      name=data["name"], email=data["email"])
    slot = datetime.fromisoformat(data["slot"]) if data["slot"] else None
    return EditionOutcome(profile, Status(data["status"]), slot, detail=data["detail"],
                          retry=bool(data["retry"]), picked=int(data["picked"]))


def run_shard(run: EditionRun, paths: Sequence[Path], *, now: datetime,
              show_all: bool = False, slots: Sequence[datetime | None] | None = None
              ) -> SendReport:
    """Load, rank, render and send the editions of these profiles, in this process: each
    profile's latest due edition, or the one of `slots[i]` for `paths[i]`. A path may come
    more than once (two slots of one subscriber); it is read once."""
    report = SendReport()
    started = time.perf_counter()
    unique = list(dict.fromkeys(paths))
    loaded = load_profiles(unique, default_max_papers=run.settings.default_max_papers,
                           cache=run.profile_cache())
    report.timings["load"] += time.perf_counter() - started
    report.errors = [str(e) for e in loaded.errors]
    report.subscribers = {p.subscriber_id: str(p.path) for p in loaded.profiles}
    before = dict(run.timings)
    by_path = {p.path: p for p in loaded.profiles}
    wanted = list(slots) if slots is not None else [None] * len(paths)
    items = [(by_path[path], slot) for path, slot in zip(paths, wanted, strict=True)
             if path in by_path]
    profiles = [profile for profile, _ in items]

    async def go() -> list[EditionOutcome]:
        settings = run.settings
        async with SmtpMailer(settings.smtp, sender=settings.mail.from_address) as mailer:
            return await run.run_editions(profiles, mailer, now=now,
                                          slots=[slot for _, slot in items])

    for outcome in asyncio.run(go()):
        report.counts[outcome.status] += 1
        report.picks += outcome.count if outcome.status is Status.SENT else 0
        if show_all or outcome.status in WORTH_SHOWING:
            report.shown.append(outcome.lite())
    for stage, seconds in run.timings.items():
        report.timings[stage] += seconds - before.get(stage, 0.0)
    return report


def send_all(settings: Settings, paths: Sequence[Path], *, now: datetime,
             processes: int = 0) -> SendReport:
    """Every profile's due edition, over `processes` worker processes (0: one per core;
    a run of one shard stays in this process)."""
    show_all = len(paths) <= SHOW_ALL
    if settings.send.workers == "celery":
        from digest.workers import send_through_celery

        return send_through_celery(settings, [(path, None) for path in paths], now=now,
                                   show_all=show_all)
    workers = min(processes or available_cores(), -(-len(paths) // SHARD))
    if workers <= 1:
        store = Store.open(settings.db_url)
        try:
            run = EditionRun(store, settings)
            with _frozen() as frozen:
                if frozen:  # the corpus lives as long as the run too
                    run.on_corpus = gc.freeze
                return run_shard(run, paths, now=now, show_all=show_all)
        finally:
            store.close()
    check_sending(settings)  # a configuration error is said here, not in every worker
    shards = [list(paths[i:i + SHARD]) for i in range(0, len(paths), SHARD)]
    # fork shares the loaded modules; a parent that loaded PyTorch must not fork (its
    # thread pools do not survive it), so its workers start afresh.
    method = "spawn" if "torch" in sys.modules else "fork"
    report = SendReport()
    log.info("send.workers processes=%d shards=%d start=%s", workers, len(shards), method)
    # Frozen before the fork, what is loaded here is the workers' too and stays shared: no
    # collection in a worker writes to (and so copies) those pages.
    with _frozen(), ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(method),
            initializer=_start_worker, initargs=(settings,)) as pool:
        for done in pool.map(_worker_shard, shards, [now] * len(shards),
                             [show_all] * len(shards)):
            report.add(done)
    return report


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_worker_run: EditionRun | None = None


def _start_worker(settings: Settings) -> None:
    """In each worker: die with the parent (so `kill -9` of `digest send` stops everything,
    as a crash would) and open the store and templates once."""
    global _worker_run
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        parent = os.getppid()
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means
    _worker_run = EditionRun(Store.open(settings.db_url), settings)
    # For the worker's life (it ends with the run): the memory inherited from the parent
    # stays frozen, and the corpus joins it once built.
    _worker_run.on_corpus = gc.freeze
    # The parent's setting while it sends (a forked worker has it already; one started
    # afresh, with PyTorch loaded, does not).
    _fewer_young_passes()


def _fewer_young_passes() -> tuple[int, ...]:
    """The young generation collected every `YOUNG_GENERATION` allocations at least, unless
    automatic collection is off (0), which stays so; returns the thresholds before."""
    thresholds = gc.get_threshold()
    if thresholds[0]:
        gc.set_threshold(max(thresholds[0], YOUNG_GENERATION), *thresholds[1:])
    return thresholds


@contextmanager
def _frozen() -> Iterator[bool]:
    """While a run sends: all that is in memory (the modules; then what the run freezes,
    its corpus) taken out of the garbage collector's full passes (`gc.freeze`). It lives as
    long as the run, and each full pass would walk all of it again: six such passes were a
    tenth of a 4,000-edition run's time. The young generation collected less often
    (`YOUNG_GENERATION`); workers forked meanwhile inherit both. Given back to the
    collector afterwards. Yields whether it froze: not if something else froze memory
    already, which is left alone."""
    if gc.get_freeze_count():
        yield False
        return
    gc.freeze()
    thresholds = _fewer_young_passes()
    try:
        yield True
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _worker_shard(paths: list[Path], now: datetime, show_all: bool) -> SendReport:
    """One shard in a worker; an error comes back as a line of the report (the other
    shards' reports still count), with its traceback in this worker's log."""
    assert _worker_run is not None
    try:
        return run_shard(_worker_run, paths, now=now, show_all=show_all)
    except Exception as exc:
        log.exception("shard.failed first=%s profiles=%d", paths[0], len(paths))
        return SendReport(errors=[f"{paths[0]} and the next {len(paths) - 1} profiles: "
                                  f"not all sent: {exc}"])
