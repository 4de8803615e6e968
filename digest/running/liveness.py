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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from digest.store.snapshot import (
    HEARTBEAT_S,
    SILENT_AFTER_S,
    Heartbeat,
    Role,
    daemon_role,
    daemon_row,
)

if TYPE_CHECKING:  # the store is handed in; importing it costs SQLAlchemy (`digest status`)
    from digest.store import Store

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


class DaemonPresence:
    """A `digest run`'s own heartbeat row, `leader@<sender>` or `standby@<sender>`, so that
    `digest status` can tell which daemons are alive and which of them leads. A thread
    writes it at once whenever the role changes, then every HEARTBEAT_S, and removes it
    when the daemon stops; a daemon killed leaves it to fall silent. Every database call
    is on that thread, never on the daemon's event loop."""

    def __init__(self, store: Store, sender: str, *,
                 clock: Callable[[], datetime] = utc_now):
        self._store = store
        self._sender = sender
        self._clock = clock
        self._role: Role | None = None
        self._stopping = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, role: Role) -> None:
        """From now on, say this daemon runs in `role` (at once, then every HEARTBEAT_S)."""
        self._role = role
        self._wake.set()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="digest-presence",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Remove the row (waiting at most `timeout_s` for the database) and stop."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        host, pid = pid_space(), os.getpid()
        written: str | None = None  # the row this daemon has in the table now
        started = self._clock()
        while True:
            self._wake.wait(HEARTBEAT_S)
            self._wake.clear()
            stopping, role = self._stopping, self._role
            row = daemon_row(role, self._sender) if role is not None and not stopping else None
            try:
                if written is not None and written != row:
                    self._store.forget_sender(written)
                    written = None
                if row is not None:
                    if written is None:
                        started = self._clock()  # in this role since
                    self._store.heartbeat(row, host=host, pid=pid, started_at=started,
                                          now=self._clock())
                    written = row
            except Exception as exc:  # the database is away: say so, keep trying
                log.warning("daemon.heartbeat-failed error=%r", str(exc))
            if stopping or self._store.closed:
                return


@dataclass(frozen=True)
class DaemonState:
    """A `digest run` as its heartbeat row tells it (`DaemonPresence`)."""

    role: Role
    host: str  # its host name
    pid: int
    since: datetime  # in this role
    heard_at: datetime  # its last heartbeat
    alive: bool  # heard within SILENT_AFTER_S, and, on this host, its process is there


def daemon_states(heartbeats: Iterable[Heartbeat], *, now: datetime) -> list[DaemonState]:
    """The daemons among the senders' heartbeats: the living (leaders first), then the
    others; in each, the most recently heard first."""
    found = []
    here = pid_space()
    for beat in heartbeats:
        named = daemon_role(beat.row_id)
        if named is None:
            continue
        heard = now - beat.heartbeat_at < timedelta(seconds=SILENT_AFTER_S)
        local_and_gone = beat.host == here and not process_alive(beat.pid)
        found.append(DaemonState(named[0], beat.host.split("/")[0], beat.pid, beat.started_at,
                                 beat.heartbeat_at, heard and not local_and_gone))
    return sorted(found, key=lambda d: (not d.alive, d.alive and d.role != "leader",
                                        -d.heard_at.timestamp()))


def process_alive(pid: int) -> bool:
    """Whether a process of this pid runs (in this pid space)."""
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
        pid_space(), process_alive, now=touched_at or now,
        silent_since=now - timedelta(seconds=SILENT_AFTER_S))
    store.forget_senders(silent_since=now - timedelta(days=1))
    if recovered:
        log.warning("editions.recovered count=%d (their sender died before the server's "
                    "reply was recorded; they are sent again)", recovered)
    return recovered
