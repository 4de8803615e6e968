"""Big lists on every core: the profiles are split into shards of file paths, and worker
processes run each shard's editions (load, rank, render, send, record) against the shared
ledger.

Only paths go to a worker and only a small summary comes back, so memory stays flat as the
list grows. The ledger is what makes this safe: editions are claimed atomically, so two
processes never send one edition, and a worker killed mid-shard leaves its claimed editions
for `recover_abandoned` (docs/delivery.md).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path

from digest.config import Settings
from digest.errors import ConnectionFailure
from digest.progress import ShowProgress
from digest.rank.evidence import load_classifier_library
from digest.running.editions import EditionRun, check_sending
from digest.running.sending import SHOW_ALL, SendReport, run_shard
from digest.store import Store

log = logging.getLogger(__name__)

SHARD = 1000  # profiles per shard: big enough to batch, small enough to spread evenly
# While a send runs: the young generation is collected after this many allocations (not
# Python's 700). A send's objects mostly live for a batch; at 700 the collector walked
# them again and again: a one-process 10,000-edition send spent 0.52 s of 10.6 in 994
# young, 89 middle and 7 full passes; at 20,000, 0.08 s in 18 young passes, at no cost in
# peak memory.
YOUNG_GENERATION = 20_000


def send_all(settings: Settings, paths: Sequence[Path], *, now: datetime,
             processes: int = 0, shard: int = SHARD,
             show_progress: ShowProgress | None = None) -> SendReport:
    """Every profile's due edition, over `processes` worker processes on this machine (0:
    one per core), `shard` profiles at a time; a run of one shard stays in this process.

    Raises ConnectionFailure if no connection to the SMTP server could be made: the shards
    not yet begun are not begun, and every edition not sent stays pending."""
    show_all = len(paths) <= SHOW_ALL
    workers = min(processes or available_cores(), -(-len(paths) // shard))
    shown = (show_progress("Sending editions", len(paths), unit="edition")
             if show_progress is not None else nullcontext(None))
    if workers <= 1:
        store = Store.open(settings.db_url)
        try:
            run = EditionRun(store, settings, show_progress=show_progress)
            with run_in_frozen_memory(run), shown as advance:
                return run_shard(run, paths, now=now, show_all=show_all, progress=advance)
        finally:
            store.close()
    check_sending(settings)  # a configuration error is said here, not in every worker
    shards = [list(paths[i:i + shard]) for i in range(0, len(paths), shard)]
    # fork shares the loaded modules; a parent that loaded PyTorch must not fork (its
    # thread pools do not survive it), so its workers start afresh.
    method = "spawn" if "torch" in sys.modules else "fork"
    if method == "fork":
        load_classifier_library()  # once here rather than in each worker that meets one
    report = SendReport()
    log.info("send.workers processes=%d shards=%d start=%s", workers, len(shards), method)
    # Frozen before the fork, what is loaded here is the workers' too and stays shared: no
    # collection in a worker writes to (and so copies) those pages.
    with _frozen(), shown as advance, ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(method),
            initializer=_start_worker, initargs=(settings,)) as pool:
        for done, sent in zip(pool.map(_worker_shard, shards, [now] * len(shards),
                                       [show_all] * len(shards)), shards, strict=True):
            report.add(done)
            if advance is not None:
                advance(len(sent))
            if report.unreachable:  # the other shards would meet it too
                pool.shutdown(wait=True, cancel_futures=True)
                raise ConnectionFailure(report.unreachable)
    return report


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# In a worker process only: the EditionRun its initializer opened, which each shard it is
# given uses. A process pool hands its tasks nothing but their arguments, so this one slot
# is how a worker keeps its store, templates and fitted corpus from shard to shard; it is
# never set in the process that runs `send_all`.
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


@contextmanager
def run_in_frozen_memory(run: EditionRun) -> Iterator[None]:
    """A run of many editions (or `digest rank` of many profiles) in this process, with
    what is loaded and, once built, its corpus kept out of the collector's full passes
    (`_frozen`)."""
    with _frozen() as frozen:
        if frozen:  # the corpus lives as long as the run too
            run.on_corpus = gc.freeze
        yield


def _worker_shard(paths: list[Path], now: datetime, show_all: bool) -> SendReport:
    """One shard in a worker; an error comes back as a line of the report (the other
    shards' reports still count), with its traceback in this worker's log. No connection
    to the SMTP server is the run's: it comes back as the report's `unreachable`."""
    assert _worker_run is not None
    try:
        return run_shard(_worker_run, paths, now=now, show_all=show_all)
    except ConnectionFailure as exc:
        log.info("shard.unreachable first=%s profiles=%d reason=%r", paths[0], len(paths),
                 str(exc))
        return SendReport(unreachable=str(exc))
    except Exception as exc:
        log.exception("shard.failed first=%s profiles=%d", paths[0], len(paths))
        return SendReport(errors=[f"{paths[0]} and the next {len(paths) - 1} profiles: "
                                  f"not all sent: {exc}"])
