"""Poll feeds: decide when each is due, fetch it conditionally, store its papers.

A failing feed backs off exponentially (with jitter, honouring Retry-After) and never
stops the others. The decisions are pure functions; `poll_feed` does the I/O.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial

from digest.background import off_loop
from digest.config import DaemonSettings, FeedSettings
from digest.ingest.feeds import parse_feed
from digest.ingest.fetch import FetchResult, fetch_feed
from digest.models import FeedState, Problem
from digest.store import Store

log = logging.getLogger(__name__)


def is_due(state: FeedState, now: datetime) -> bool:
    return state.next_poll_at is None or state.next_poll_at <= now


def backoff_s(failures: int, interval_s: float, max_s: float, rng: random.Random,
              retry_after_s: float | None = None) -> float:
    """Seconds until the next try after `failures` failures in a row (at least 1)."""
    delay = min(interval_s * 2 ** max(0, failures - 1), max_s)
    delay *= rng.uniform(0.9, 1.1)  # so many feeds failing together do not retry together
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_s))
    return float(max(1.0, delay))


@dataclass(frozen=True)
class FeedOutcome:
    url: str
    status: str  # "200", "304", or the error kind
    new_papers: int = 0
    entries: int = 0
    problems: tuple[Problem, ...] = ()


def _next_state(state: FeedState, result: FetchResult, *, now: datetime, interval_s: float,
                settings: DaemonSettings, rng: random.Random, failed: str | None) -> FeedState:
    if failed is None:
        return replace(state, etag=result.etag or state.etag,
                       last_modified=result.last_modified or state.last_modified,
                       last_poll_at=now, last_status=str(result.status), last_error=None,
                       failures=0, next_poll_at=now + timedelta(seconds=interval_s))
    failures = state.failures + 1
    delay = backoff_s(failures, interval_s, settings.feed_max_backoff_s, rng,
                      result.retry_after_s)
    return replace(state, last_poll_at=now, last_error=failed, failures=failures,
                   last_status=str(result.status) if result.status else "error",
                   next_poll_at=now + timedelta(seconds=delay))


async def poll_feed(store: Store, feed: FeedSettings, settings: DaemonSettings, *,
                    now: datetime, rng: random.Random, force: bool = False) -> FeedOutcome | None:
    """Poll one feed if it is due (or `force`); None if it was not due."""
    state = store.feed_state(feed.url)
    if not force and not is_due(state, now):
        return None
    interval = feed.poll_s or settings.feed_poll_s
    fetch = partial(fetch_feed, feed.url, etag=state.etag, last_modified=state.last_modified,
                    timeout_s=settings.feed_timeout_s, deadline_s=settings.feed_deadline_s,
                    max_bytes=settings.feed_max_bytes, now=now)
    try:
        # The fetch keeps its own deadline; this one also bounds a name lookup that hangs.
        result = await off_loop(fetch, settings.feed_deadline_s + settings.feed_timeout_s,
                                name="digest-feed")
    except TimeoutError:
        result = FetchResult(None, error=f"no complete answer within "
                                         f"{settings.feed_deadline_s:g} s")
    failed = result.error
    outcome = FeedOutcome(feed.url, str(result.status or "error"))
    if failed is None and not result.not_modified:
        # Off the event loop: a big feed takes seconds to parse.
        parsed = await asyncio.to_thread(parse_feed, result.content or b"", source=feed.url)
        fatal = [p for p in parsed.problems if p.fatal]
        if fatal:
            failed = fatal[0].reason
        else:
            added = await asyncio.to_thread(store.add_entries, parsed.entries, now)
            outcome = FeedOutcome(feed.url, str(result.status), added.new_papers,
                                  len(parsed.entries), parsed.problems)
    new_state = _next_state(state, result, now=now, interval_s=interval, settings=settings,
                            rng=rng, failed=failed)
    if failed is None:
        new_state = replace(new_state, last_new_papers=outcome.new_papers)
    store.save_feed_state(new_state)
    if failed is not None:
        log.warning("feed.failed url=%s error=%r failures=%d next_poll=%s", feed.url, failed,
                    new_state.failures, new_state.next_poll_at)
        return FeedOutcome(feed.url, "error", problems=(Problem(feed.url, None, failed),))
    log.info("feed.polled url=%s status=%s entries=%d new=%d", feed.url, outcome.status,
             outcome.entries, outcome.new_papers)
    for problem in outcome.problems:
        log.warning("feed.problem %s", problem)
    return outcome
