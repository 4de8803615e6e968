"""Sender liveness: who is sending (an identity recorded on the editions it claims), its
heartbeat in the store, and the recovery of editions whose sender died.

A run of editions owns a `Sender`; the daemon and the workers keep one for their whole
life, so one heartbeat thread serves all their runs. See docs/delivery.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from digest.store import Store
from digest.store.store import HEARTBEAT_S, SILENT_AFTER_S

log = logging.getLogger(__name__)

FENCE_AFTER_S = SILENT_AFTER_S / 2  # a sender whose last beat is older stops handing over


def utc_now() -> datetime:
    return datetime.now(UTC)


@lru_cache(maxsize=1)
def pid_space() -> str:
    """"hostname/space": where a pid means one process. Containers can share a hostname
    (host networking) but not their pids; the space (boot and pid namespace) tells them
    apart, so a sender only judges the pids of its own space alive or dead."""
    parts = [socket.gethostname()]
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        parts.append(hashlib.sha256(f"{boot}:{namespace}".encode()).hexdigest()[:8])
    except OSError:  # not Linux: the hostname alone
        pass
    return "/".join(parts)


class Sender:
    """One sender of editions: its identity ("hostname/space:pid:nonce"; the nonce tells
    apart two processes with one pid, such as a restarted container's pid 1), and its
    heartbeat, written every HEARTBEAT_S from a thread while its store is open.

    `clock` gives the heartbeat's wall-clock time; `monotonic` measures its age (both
    injectable for tests)."""

    def __init__(self, *, clock: Callable[[], datetime] = utc_now,
                 monotonic: Callable[[], float] = time.monotonic):
        self.identity = f"{pid_space()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._beating: dict[int, threading.Thread] = {}  # by id(store)
        self._last_beat: dict[int, float] = {}  # monotonic time of the last good one
        # Set when a run ended without giving back what it claimed (the database went
        # away mid-batch): the next run gives it back first.
        self.holding = False

    def keep_alive(self, store: Store) -> None:
        """Write the heartbeat now, then every HEARTBEAT_S for as long as `store` is open;
        once per store. Called before editions are claimed, so a claimer always has a
        heartbeat."""
        key = id(store)
        with self._lock:
            if key in self._beating and self._beating[key].is_alive():
                return
            host, pid = pid_space(), os.getpid()
            started = self._clock()
            before = self._monotonic()  # a slow write must not make the beat look newer
            store.heartbeat(self.identity, host=host, pid=pid, started_at=started,
                            now=started)
            self._last_beat[key] = before

            def beat() -> None:
                while True:
                    time.sleep(HEARTBEAT_S)
                    if store.closed:
                        break
                    try:
                        before = self._monotonic()
                        store.heartbeat(self.identity, host=host, pid=pid,
                                        started_at=started, now=self._clock())
                        self._last_beat[key] = before
                    except Exception as exc:  # the database is away: say so, keep trying
                        log.warning("sender.heartbeat-failed error=%r", str(exc))

            thread = threading.Thread(target=beat, name="digest-heartbeat", daemon=True)
            thread.start()
            self._beating[key] = thread

    def fresh(self, store: Store) -> bool:
        """False once the heartbeat in `store` has failed for FENCE_AFTER_S (the database
        is away, or the process was paused): others may soon take this sender's claims for
        a dead sender's, so it must hand no more email to the server (self-fencing)."""
        last = self._last_beat.get(id(store))
        return last is None or self._monotonic() - last < FENCE_AFTER_S

    def give_back(self, store: Store, *, now: datetime) -> None:
        """What an earlier run of this sender claimed and did not send goes back to
        pending (only after a run that ended abnormally: `holding`)."""
        if self.holding:
            released = store.release_own_claims(self.identity, now=now)
            self.holding = False
            if released:
                log.info("editions.released count=%d (left claimed by a run that failed)",
                         released)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def recover_abandoned(store: Store, *, now: datetime, touched_at: datetime | None = None
                      ) -> int:
    """Editions that a dead sender left half-sent go back to pending, so that this run
    sends them (rather than after `sending_stale_s`): a sender on this host whose process
    is gone, or one on any host whose heartbeat stopped SILENT_AFTER_S before `now`. They
    are marked as touched at `touched_at` (default: `now`)."""
    recovered = store.recover_abandoned(
        pid_space(), _process_alive, now=touched_at or now,
        silent_since=now - timedelta(seconds=SILENT_AFTER_S))
    store.forget_senders(silent_since=now - timedelta(days=1))
    if recovered:
        log.warning("editions.recovered count=%d (their sender died before the server's "
                    "reply was recorded; they are sent again)", recovered)
    return recovered
