"""Delivery throughput: how fast `digest send` gets a whole edition out, and at what cost.

Builds a scratch folder with N generated subscribers (1-4 interests, liked papers, muted
keywords, max_papers 5-15, several time zones, all on `daily 07:00` so every edition is
due) and 300 papers, then runs `digest -v -c DIR/digest.toml send` as a user would,
against an SMTP sink on 127.0.0.1 that counts every message and its Message-ID. Prints:

- emails/s for each stage, from the `send.stages` line `digest send -v` logs (stage
  seconds are summed over worker processes, so these are rates per core), and end to
  end: messages the sink received / wall time of the `digest send` command;
- peak RSS of the `digest send` process tree (VmRSS of it and all its descendants, from
  /proc every 0.2 s): the whole tree and its largest process; also at N/10, to see how
  memory grows with the number of subscribers;
- lost editions (the ledger says sent, the sink never saw the Message-ID) and duplicates
  (extra copies of a Message-ID the sink received); both must be 0;
- a baseline measured in the same run on the same sink: Postfix's `smtp-source` sending
  messages of the mean size digest sent, over reused connections (-d), best of a few
  session counts; without Postfix, aiosmtplib sending pre-built messages of that size.
  With the N/10 run it is measured twice, just before the main run and after it, and
  the ratio is taken against the better of the two (the machine's speed drifts, and a
  slow spell during one measurement must not flatter digest). The ratio end to end /
  baseline is what to compare across machines.

Goals: end to end >= 0.3x the baseline; peak RSS < 2 GB at 100,000 subscribers.

The sink is Postfix's `smtp-sink`, which dumps every message into a FIFO this script
reads; without it, an aiosmtpd server in a separate process (slower: it may be the
bottleneck). On Debian or Ubuntu `sudo apt-get install postfix` provides smtp-sink and
smtp-source in /usr/sbin (choose "No configuration" if asked; the mail server itself
is not needed).

    python benchmarks/delivery.py --subscribers 2000     # a quick run
    nice -n 10 python benchmarks/delivery.py             # 100,000 subscribers

Setting up (writing the profiles, ingesting the papers) is not timed. `--processes` and
`--connections` set digest's `[send] processes` and `[smtp] connections`. Every email
carries its signed links (`[web] base_url`, DIGEST_SECRET), as a real list's do. Exit
status 1 if an edition was lost or duplicated or `digest send` failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import json
import multiprocessing
import os
import pwd
import random
import re
import secrets
import select
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib
from sqlalchemy import create_engine
from sqlalchemy import select as sql_select

# Run as a script, the repository root is not on sys.path; the `benchmarks` package is.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.databases import postgres_schema  # noqa: E402
from benchmarks.rank_speed import DATA, corpus  # noqa: E402
from digest.config import load_settings  # noqa: E402
from digest.models import PaperEntry  # noqa: E402
from digest.profilecache import RACY_S, ProfileCache  # noqa: E402
from digest.profiles import load_profiles, profile_paths  # noqa: E402
from digest.store import Store  # noqa: E402
from digest.store.schema import editions  # noqa: E402

GOAL_RATIO = 0.3
GOAL_RSS_BYTES = 2 * 10**9
GOAL_SUBSCRIBERS = 100_000
SINK_MARK = b"=#=digest-bench=#= "  # smtp-sink writes it (-S) before every dumped message
MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\n[ \t].*)*)$", re.IGNORECASE | re.MULTILINE)
ZONES = ("UTC", "Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles",
         "Asia/Tokyo", "Australia/Sydney")


# The sink ------------------------------------------------------------------------------

@dataclass
class Tally:
    """What a sink received: messages, their size on the wire and their Message-IDs."""

    messages: int = 0
    size: int = 0
    ids: Counter[str] = field(default_factory=Counter)
    without_id: int = 0

    def add(self, content: bytes) -> None:
        """Count one message, given with LF line ends (as on the wire, less the CRs)."""
        self.messages += 1
        self.size += len(content) + content.count(b"\n")
        end = content.find(b"\n\n")
        found = MESSAGE_ID.search(content, 0, end if end >= 0 else len(content))
        if found is None:
            self.without_id += 1
        else:
            self.ids[b" ".join(found.group(1).split()).decode("ascii", "replace")] += 1

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.ids.values() if n > 1)

    @property
    def mean_size(self) -> float:
        return self.size / self.messages if self.messages else 0.0


class Sink(Protocol):
    name: str
    port: int

    def take(self) -> Tally:
        """Everything received since the last take (all of it: call when senders are done)."""
        ...

    def close(self) -> None: ...


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_listening(port: int, alive: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("the sink exited at start")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"the sink is not listening on 127.0.0.1:{port}")


class PostfixSink:
    """Postfix's smtp-sink, appending every message to a FIFO that a thread here parses.

    smtp-sink writes a message to the dump in one go, before it answers the final dot,
    so whatever a sender was told is delivered is in the FIFO. This process holds the FIFO
    open for writing too: the reader never sees EOF, smtp-sink never blocks opening it,
    and `take` writes a marker behind the last message to know it has read everything.
    """

    def __init__(self, binary: str, folder: Path, user: str | None):
        self.name = f"Postfix smtp-sink ({binary}" + (f", -u {user})" if user else ")")
        self.binary, self.user = binary, user
        folder.mkdir(mode=0o755)
        self.fifo = folder / "dump.fifo"
        os.mkfifo(self.fifo)
        os.chmod(self.fifo, 0o666)
        if user is not None and os.geteuid() == 0 and user != "root":
            account = pwd.getpwnam(user)  # smtp-sink keeps a temporary file per message here
            os.chown(folder, account.pw_uid, account.pw_gid)
        self._fd = os.open(self.fifo, os.O_RDWR)
        with contextlib.suppress(OSError):  # fewer stalls of smtp-sink on a full pipe
            fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        self._tally = Tally()
        self._lock = threading.Condition()
        self._drains_sent = self._drains_seen = 0
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="sink-reader", daemon=True)
        self._reader.start()
        self.port = free_port()
        self.log = (folder / "smtp-sink.log").open("wb")
        command = [binary, *(["-u", user] if user else []),
                   "-S", SINK_MARK.decode() + "message\\n", "-D", str(self.fifo),
                   f"127.0.0.1:{self.port}", "1000"]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        try:
            wait_listening(self.port, lambda: self.process.poll() is None)
        except RuntimeError:
            self.close()
            raise

    def _read(self) -> None:
        pending = b"\n"
        while True:
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            if not ready:
                if self._stop.is_set():
                    return
                continue
            pending = self._parse(pending + os.read(self._fd, 1 << 20))

    def _parse(self, data: bytes) -> bytes:
        """Count the complete records in `data`; return the incomplete rest."""
        token = b"\n" + SINK_MARK
        pos = 0
        while True:
            if not data.startswith(token, pos):
                if token.startswith(data[pos:]):
                    break  # the start of a record, cut by the read
                nxt = data.find(token, pos + 1)  # not expected: resynchronise
                if nxt < 0:
                    return data[-len(token):]
                pos = nxt
            start = pos + len(token)
            if data.startswith(b"drain ", start):
                end = data.find(b"\n", start)
                if end < 0:
                    break
                with self._lock:
                    self._drains_seen = int(data[start + 6:end])
                    self._lock.notify_all()
                pos = end
                continue
            nxt = data.find(token, start)
            if nxt < 0:
                break
            self._message(data[start:nxt])
            pos = nxt
        return data[pos:]

    def _message(self, record: bytes) -> None:
        # smtp-sink's own header lines come first and end with its Received: header,
        # "Received: from ...\n\tby HOST (smtp-sink) with ESMTP id ...;\n\tDATE\n".
        at = record.find(b" (smtp-sink) with ")
        if at >= 0:
            at = record.find(b"\n", record.find(b"\n", at) + 1) + 1
        else:
            at = record.find(b"\n") + 1
        with self._lock:
            self._tally.add(record[at:])

    def take(self) -> Tally:
        with self._lock:
            self._drains_sent += 1
            wanted = self._drains_sent
        os.write(self._fd, SINK_MARK + b"drain %d\n" % wanted)
        with self._lock:
            if not self._lock.wait_for(lambda: self._drains_seen >= wanted, timeout=300):
                raise RuntimeError("the sink's dump stopped flowing")
            tally, self._tally = self._tally, Tally()
        return tally

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stop.set()
        self._reader.join(5)
        os.close(self._fd)
        self.log.close()


def _aiosmtpd_main(conn: Connection, port: int) -> None:
    """The fallback sink's process: aiosmtpd on `port`, tallies handed over on request."""
    from aiosmtpd.controller import Controller

    tally = Tally()
    lock = threading.Lock()

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            content = bytes(envelope.original_content or b"").replace(b"\r\n", b"\n")
            with lock:
                tally.add(content)
            return "250 2.0.0 Ok"

    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    conn.send("ready")
    while conn.recv() == "take":
        with lock:
            conn.send(tally)
            tally = Tally()
    controller.stop()


class AiosmtpdSink:
    """An aiosmtpd server in a process of its own, for machines without Postfix."""

    name = "aiosmtpd in a separate process (no Postfix smtp-sink found)"

    def __init__(self) -> None:
        self.port = free_port()
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=_aiosmtpd_main, args=(child, self.port),
                                       daemon=True)
        self.process.start()
        if not self._conn.poll(30) or self._conn.recv() != "ready":
            raise RuntimeError("the aiosmtpd sink did not start")
        wait_listening(self.port, self.process.is_alive)

    def take(self) -> Tally:
        self._conn.send("take")
        tally: Tally = self._conn.recv()
        return tally

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()


def find_tool(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    return shutil.which(name, path=path)


def probe(sink: Sink) -> bool:
    """Does a message sent to the sink come out of it, counted with its Message-ID?"""
    message = (b"From: probe@bench.example\r\nTo: sink@bench.example\r\n"
               b"Message-ID: <probe@bench.example>\r\nSubject: probe\r\n\r\nprobe\r\n")
    try:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=10) as client:
            client.sendmail("probe@bench.example", ["sink@bench.example"], message)
    except (OSError, smtplib.SMTPException):
        return False
    tally = sink.take()
    return tally.messages == 1 and tally.ids["<probe@bench.example>"] == 1


def start_sink(choice: str, scratch: Path) -> Sink:
    binary = find_tool("smtp-sink") if choice != "aiosmtpd" else None
    if binary is None:
        if choice == "smtp-sink":
            sys.exit("smtp-sink not found: `sudo apt-get install postfix` (Debian, Ubuntu)")
        sink: Sink = AiosmtpdSink()
        if not probe(sink):
            sink.close()
            sys.exit("the aiosmtpd sink does not work")
        return sink
    users: list[str | None] = [None]
    if os.geteuid() == 0:  # smtp-sink refuses to run as root without -u
        users = ["root"]
        with contextlib.suppress(KeyError):
            pwd.getpwnam("nobody")
            users.insert(0, "nobody")
            os.chmod(scratch, 0o711)  # let nobody reach the FIFO's folder, not list ours
    for attempt, user in enumerate(users):
        sink = PostfixSink(binary, scratch / f"sink{attempt}", user)
        if probe(sink):
            return sink
        sink.close()
    sys.exit(f"smtp-sink does not work; see {scratch}/sink*/smtp-sink.log (use --keep)")


# The scratch data dir ------------------------------------------------------------------

def ingest(root: Path, papers: Sequence[dict[str, str]], rng: random.Random,
           database: str | None = None) -> int:
    """Store the papers, with authors, links and dates so the emails have real weight."""
    surnames = ["Chen", "Garcia", "Okafor", "Novak", "Tanaka", "Silva", "Müller", "Haddad",
                "Kowalski", "Nguyen", "Rossi", "Andersen", "Dubois", "Ivanova", "Kim", "Singh"]
    today = datetime.now(UTC).date()
    entries = [PaperEntry(title=p["title"], abstract=p["abstract"], source="bench",
                          authors=tuple(f"{rng.choice('ABCDEFGHJKLMNPRSTVW')}. "
                                        f"{rng.choice(surnames)}"
                                        for _ in range(rng.randint(1, 8))),
                          url=f"https://papers.bench.example/{i}",
                          published=today - timedelta(days=rng.randint(0, 3)))
               for i, p in enumerate(papers)]
    store = Store.open(database or f"sqlite:///{root / 'data' / 'digest.sqlite3'}")
    try:
        store.add_entries(entries, datetime.now(UTC))
        return store.count_papers()
    finally:
        store.close()


def write_profiles(folder: Path, count: int, papers: Sequence[dict[str, str]],
                   rng: random.Random) -> None:
    """`count` profiles, each with its own email and an edition due now."""
    topics = list(json.loads((DATA / "tags.json").read_text(encoding="utf-8")))
    words = sorted({w for p in papers for w in re.findall(r"[a-z]{7,}", p["title"].lower())})
    folder.mkdir(parents=True)
    for i in range(count):
        interests: list[object] = [t if rng.random() < 0.75 else {"text": t, "weight": 2}
                                   for t in rng.sample(topics, rng.randint(1, 4))]
        liked = [p["title"] for p in rng.sample(papers, rng.choice((0, 0, 1, 2, 3, 5)))]
        lines = [f"name: Reader {i}", f"email: reader{i}@example.org",
                 f"timezone: {rng.choice(ZONES)}", "schedule: daily 07:00",
                 f"max_papers: {rng.randint(5, 15)}", f"interests: {json.dumps(interests)}",
                 f"liked: {json.dumps(liked)}"]
        if rng.random() < 0.3:
            mute = rng.sample(words, rng.randint(1, 2)) + rng.sample(topics, rng.randint(0, 1))
            lines.append(f"keywords: {{mute: {json.dumps(mute)}}}")
        if rng.random() < 0.15:
            lines.append(f"avoid: {json.dumps(rng.sample(topics, 1))}")
        if rng.random() < 0.1:
            lines.append("when_nothing: note")
        (folder / f"reader{i:06d}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def warm_profile_cache(config: Path, env: Mapping[str, str]) -> None:
    """As after an earlier day's run: the profiles' parsed form in digest's profile cache
    (digest/profilecache.py), which keeps no file changed moments before it was read.
    `--cold-profiles` skips this."""
    settings = load_settings(config, env=env)
    paths = profile_paths(settings.profiles_dir)
    time.sleep(RACY_S + 0.1)
    cache = ProfileCache.for_settings(settings)
    load_profiles(paths, default_max_papers=settings.default_max_papers, cache=cache)
    cache.close()


def write_config(root: Path, port: int, processes: int, connections: int,
                 more: Mapping[str, dict[str, object]] | None = None,
                 database: str | None = None) -> Path:
    """digest.toml for the run: the sink, the pool and processes, and signed links in every
    email (as a real list has them; DIGEST_SECRET is set in the run's environment)."""
    path = root / "digest.toml"
    tables: dict[str, dict[str, object]] = {
        "smtp": {"host": "127.0.0.1", "port": port, "security": "none",
                 "connections": connections},
        "mail": {"from_address": "digest@bench.example"},
        "send": {"processes": processes},
        "web": {"base_url": "https://digest.bench.example"},
        # The default install ranks lexically; the embeddings extra, where installed, is
        # measured by benchmarks/rank_speed.py.
        "rank": {"embeddings": "off"}}
    for table, values in (more or {}).items():
        tables[table] = {**tables.get(table, {}), **values}
    text = 'data_dir = "data"\nprofiles_dir = "profiles"\n'
    if database:
        text += f"database_url = {json.dumps(database)}\n"
    for table, values in tables.items():
        text += f"\n[{table}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    path.write_text(text, encoding="utf-8")
    return path


# One `digest send` ---------------------------------------------------------------------

def _kb(path: str, key: bytes) -> int:
    try:
        with open(path, "rb") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreeSampler(threading.Thread):
    """Peak memory of a process and its descendants, sampled from /proc."""

    def __init__(self, pid: int, every_s: float = 0.2):
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.every_s = every_s
        self.peak_total_kb = self.peak_single_kb = self.peak_pss_kb = self.peak_processes = 0
        self._stop_event = threading.Event()

    def tree(self) -> list[int]:
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(OSError):
                for task in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError, ValueError), \
                            open(f"/proc/{pid}/task/{task}/children") as handle:
                        todo.extend(int(child) for child in handle.read().split())
        return found

    def sample(self) -> None:
        pids = self.tree()
        rss = [_kb(f"/proc/{pid}/status", b"VmRSS:") for pid in pids]
        pss = sum(_kb(f"/proc/{pid}/smaps_rollup", b"Pss:") for pid in pids)
        self.peak_total_kb = max(self.peak_total_kb, sum(rss))
        self.peak_single_kb = max(self.peak_single_kb, max(rss, default=0))
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        self.peak_processes = max(self.peak_processes, sum(1 for r in rss if r))

    def run(self) -> None:
        self.sample()
        while not self._stop_event.wait(self.every_s):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class SendRun:
    subscribers: int
    setup_s: float
    returncode: int
    wall_s: float
    stages: dict[str, float]
    peak_total_kb: int
    peak_single_kb: int
    peak_pss_kb: int
    peak_processes: int
    received: Tally
    ledger: Counter[str]
    lost: int
    unexpected: int  # received, but the ledger does not say sent
    stdout_tail: str
    stderr_tail: str

    @property
    def rate(self) -> float:
        return self.received.messages / self.wall_s if self.wall_s else 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.lost == 0 and self.received.duplicates == 0


def tail(path: Path, size: int = 3000) -> str:
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - size))
        return handle.read().decode("utf-8", "replace")


def read_stages(path: Path) -> dict[str, float]:
    """The key=value figures of the last `send.stages` line digest logged, if any."""
    stages: dict[str, float] = {}
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if "send.stages" in line:
                figures = line.split("send.stages", 1)[1]
                stages = {k: float(v) for k, v in
                          re.findall(r"\b(\w+)=([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\b", figures)}
    return stages


def read_ledger(config: Path, env: Mapping[str, str]) -> list[tuple[str, str]]:
    engine = create_engine(load_settings(config, env=env).db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sql_select(editions.c.state, editions.c.message_id)).all()
    finally:
        engine.dispose()
    return [(str(state), str(mid)) for state, mid in rows]


def run_send(root: Path, subscribers: int, papers: Sequence[dict[str, str]], sink: Sink,
             args: argparse.Namespace, env: dict[str, str], rng: random.Random) -> SendRun:
    started = time.perf_counter()
    root.mkdir()
    ingest(root, papers, rng)
    write_profiles(root / "profiles", subscribers, papers, rng)
    config = write_config(root, sink.port, args.processes, args.connections)
    if not args.cold_profiles:
        warm_profile_cache(config, env)
    setup_s = time.perf_counter() - started
    print(f"[{subscribers} subscribers: set up in {setup_s:.1f} s; running digest send]",
          file=sys.stderr, flush=True)

    quiet_heap()
    command = [sys.executable, "-m", "digest", "-v", "-c", str(config), "send"]
    out, err = root / "send.stdout", root / "send.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout,
                                   stderr=stderr, env=env, cwd=root)
        sampler = TreeSampler(process.pid)
        sampler.start()
        try:
            returncode = process.wait()
        finally:
            wall_s = time.perf_counter() - started
            sampler.stop()
            if process.poll() is None:
                process.terminate()
                process.wait()
    received = sink.take()
    rows = read_ledger(config, env)
    sent = {mid.strip() for state, mid in rows if state == "sent"}
    return SendRun(
        subscribers=subscribers, setup_s=setup_s,
        returncode=returncode, wall_s=wall_s, stages=read_stages(err),
        peak_total_kb=sampler.peak_total_kb, peak_single_kb=sampler.peak_single_kb,
        peak_pss_kb=sampler.peak_pss_kb, peak_processes=sampler.peak_processes,
        received=received, ledger=Counter(state for state, _ in rows),
        lost=sum(1 for mid in sent if mid not in received.ids),
        unexpected=sum(1 for mid in received.ids if mid not in sent),
        stdout_tail=tail(out), stderr_tail=tail(err))


# The baseline --------------------------------------------------------------------------

@dataclass
class Baseline:
    tool: str
    count: int
    size: float  # mean bytes per message, as the sink measured
    rates: dict[int, float]  # sessions -> messages/s
    received: dict[int, int]
    problems: list[str]
    uncaptured: float = 0.0  # messages/s into a sink that keeps nothing (for information)

    @property
    def best(self) -> float:
        return max(self.rates.values(), default=0.0)


def smtp_source_baseline(binary: str, sink: Sink, sessions: Sequence[int], count: int,
                         size: int) -> Baseline:
    # -l is the body; smtp-source adds From, To, Date and Message-Id (about 150 bytes).
    result = Baseline(f"smtp-source -d (reused connections), {count} messages", count, 0,
                      {}, {}, [])
    for n in sessions:
        command = [binary, "-d", "-s", str(n), "-m", str(count), "-l", str(max(size - 150, 1)),
                   "-M", "bench.example", "-f", "bench@bench.example",
                   "-t", "sink@bench.example", f"127.0.0.1:{sink.port}"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - started
        tally = sink.take()
        if done.returncode != 0:
            result.problems.append(f"smtp-source -s {n} exited {done.returncode}: "
                                   f"{done.stderr.strip()[-500:]}")
        result.rates[n] = tally.messages / elapsed
        result.received[n] = tally.messages
        result.size = tally.mean_size
    return result


def quiet_heap() -> None:
    """Before a measurement: what this process holds so far (the generated profiles, the
    Message-IDs a run's sink counted) out of the garbage collector's full passes, which
    would otherwise walk it again and again while the sink's reader thread, in this
    process, parses the messages being measured."""
    gc.collect()
    gc.freeze()


def measure_baseline(sink: Sink, source: str | None, sessions: Sequence[int], count: int,
                     size: int) -> Baseline:
    """smtp-source into the sink if Postfix is installed, else aiosmtplib."""
    quiet_heap()
    print(f"[baseline: {count} messages of {size} bytes]", file=sys.stderr, flush=True)
    if source is not None:
        return smtp_source_baseline(source, sink, sessions, count, size)
    return aiosmtplib_baseline(sink, sessions, count, size)


def uncaptured_rate(sink: PostfixSink, source: str, sessions: int, count: int,
                    size: int) -> float:
    """smtp-source into an smtp-sink that keeps nothing: what capturing costs the sink."""
    port = free_port()
    command = [sink.binary, *(["-u", sink.user] if sink.user else []), f"127.0.0.1:{port}",
               "1000"]
    plain = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, lambda: plain.poll() is None)
        started = time.perf_counter()
        done = subprocess.run([source, "-d", "-s", str(sessions), "-m", str(count), "-l",
                               str(max(size - 150, 1)), "-M", "bench.example",
                               f"127.0.0.1:{port}"], capture_output=True, check=False)
        elapsed = time.perf_counter() - started
    finally:
        plain.terminate()
        plain.wait()
    return count / elapsed if done.returncode == 0 else 0.0


async def _blast(port: int, sessions: int, count: int, size: int) -> None:
    header = (b"From: bench@bench.example\r\nTo: sink@bench.example\r\n"
              b"Subject: baseline\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n")
    line = b"X" * 78 + b"\r\n"
    body = b"\r\n" + line * max(1, (size - len(header) - 50) // len(line))
    numbers = iter(range(count))

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for i in numbers:
            message = header + b"Message-ID: <baseline.%d@bench.example>\r\n" % i + body
            await client.sendmail("bench@bench.example", ["sink@bench.example"], message)
        await client.quit()

    await asyncio.gather(*(worker() for _ in range(sessions)))


def aiosmtplib_baseline(sink: Sink, sessions: Sequence[int], count: int, size: int) -> Baseline:
    result = Baseline(f"aiosmtplib, pre-built messages, {count} messages", count, 0, {}, {},
                      [])
    for n in sessions:
        started = time.perf_counter()
        try:
            asyncio.run(_blast(sink.port, n, count, size))
        except (OSError, aiosmtplib.SMTPException) as exc:
            result.problems.append(f"aiosmtplib with {n} connections: {exc}")
        elapsed = time.perf_counter() - started
        tally = sink.take()
        result.rates[n] = tally.messages / elapsed
        result.received[n] = tally.messages
        result.size = tally.mean_size
    return result


# Celery workers ------------------------------------------------------------------------

@dataclass
class WorkersRun:
    workers: int
    run: SendRun
    cpu_s: dict[str, float]  # CPU seconds used, by process kind


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_pids(name: str) -> list[int]:
    """Processes whose command line holds `name` (the database and broker servers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if name.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def run_workers(root: Path, subscribers: int, papers: Sequence[dict[str, str]], sink: Sink,
                args: argparse.Namespace, env: dict[str, str], rng: random.Random,
                workers: int) -> WorkersRun:
    """`digest send` with `workers` Celery workers (`digest worker` processes) on a fresh
    PostgreSQL schema and queue; timed from the send command's start to its end."""
    with postgres_schema(args.database) as database:
        root.mkdir()
        started = time.perf_counter()
        ingest(root, papers, rng, database)
        write_profiles(root / "profiles", subscribers, papers, rng)
        queue = f"bench-{secrets.token_hex(4)}"
        config = write_config(root, sink.port, 1, args.connections, database=database, more={
            "send": {"workers": "celery", "shard_size": args.shard_size},
            "celery": {"queue": queue, "shard_timeout_s": 7200}})
        if not args.cold_profiles:
            warm_profile_cache(config, env)
        setup_s = time.perf_counter() - started
        run_env = {**env, "DIGEST_BROKER_URL": args.broker}
        base = [sys.executable, "-m", "digest", "-c", str(config)]
        procs = []
        for i in range(workers):
            log = (root / f"worker{i}.log").open("wb")
            procs.append(subprocess.Popen([*base, "worker"], stdin=subprocess.DEVNULL,
                                          stdout=log, stderr=subprocess.STDOUT, env=run_env,
                                          cwd=root))
        services = {"postgres": ["postgres"], "broker": ["redis-server", "beam.smp"],
                    "smtp-sink": ["smtp-sink"]}

        def service_cpu() -> dict[str, dict[int, float]]:
            # By process: PostgreSQL starts a server process per connection.
            return {kind: {pid: cpu_seconds(pid) for name in names
                           for pid in service_pids(name)}
                    for kind, names in services.items()}

        before = service_cpu()
        counting = time.process_time()  # this process reads and counts what the sink got
        time.sleep(3)  # the workers connect to the broker
        print(f"[{subscribers} subscribers, {workers} Celery worker(s): set up in "
              f"{setup_s:.1f} s; running digest send]", file=sys.stderr, flush=True)
        out, err = root / "send.stdout", root / "send.stderr"
        idle = [cpu_seconds(p.pid) for p in procs]  # starting up is not the edition's
        worker_cpu = list(idle)
        with out.open("wb") as stdout, err.open("wb") as stderr:
            started = time.perf_counter()
            process = subprocess.Popen([*base, "-v", "send"], stdin=subprocess.DEVNULL,
                                       stdout=stdout, stderr=stderr, env=run_env, cwd=root)
            sampler = TreeSampler(process.pid)
            sampler.start()
            send_cpu = 0.0
            try:
                while process.poll() is None:
                    worker_cpu = [max(c, cpu_seconds(p.pid))
                                  for c, p in zip(worker_cpu, procs, strict=True)]
                    send_cpu = max(send_cpu, cpu_seconds(process.pid))
                    time.sleep(0.2)
                returncode = process.returncode
            finally:
                wall_s = time.perf_counter() - started
                sampler.stop()
        after = service_cpu()  # before the workers stop and their connections close
        counting = time.process_time() - counting
        for p in procs:
            p.send_signal(15)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        received = sink.take()
        rows = read_ledger(config, run_env)
    sent = {mid.strip() for state, mid in rows if state == "sent"}
    run = SendRun(
        subscribers=subscribers, setup_s=setup_s, returncode=returncode, wall_s=wall_s,
        stages=read_stages(err), peak_total_kb=sampler.peak_total_kb,
        peak_single_kb=sampler.peak_single_kb, peak_pss_kb=sampler.peak_pss_kb,
        peak_processes=sampler.peak_processes, received=received,
        ledger=Counter(state for state, _ in rows),
        lost=sum(1 for mid in sent if mid not in received.ids),
        unexpected=sum(1 for mid in received.ids if mid not in sent),
        stdout_tail=tail(out), stderr_tail=tail(err))
    cpu = {"workers": sum(worker_cpu) - sum(idle), "send (enqueue, wait)": send_cpu,
           **{kind: sum(seconds - before[kind].get(pid, 0.0)
                        for pid, seconds in after[kind].items()) for kind in services},
           "counting messages": counting}
    return WorkersRun(workers, run, cpu)


def report_workers(results: Sequence[WorkersRun], sink_rate: float, args: argparse.Namespace
                   ) -> None:
    print(f"Celery workers: digest send through {args.broker.split('://')[0]} to "
          f"`digest worker` processes, PostgreSQL ledger, shards of {args.shard_size}")
    for result in results:
        run = result.run
        row(f"{result.workers} worker(s), {run.subscribers} subscribers",
            f"{run.wall_s:8.1f} s {run.rate:10.0f} emails/s ({run.received.messages} "
            f"received; lost {run.lost}, duplicates {run.received.duplicates})")
        busy = ", ".join(f"{kind} {seconds:.0f} s" for kind, seconds in result.cpu_s.items())
        row("  CPU used", f"{busy} (of {run.wall_s * (os.cpu_count() or 1):.0f} core-s)")
        if run.returncode != 0:
            row("  digest send exit status", f"{run.returncode}   FAILED")
    if len(results) >= 2 and results[0].run.rate:
        one, more = results[0], results[-1]
        speedup = more.run.rate / one.run.rate
        print()
        row(f"{more.workers} workers / {one.workers}", f"{speedup:.2f}x; goal >= 1.8x for 2: "
            + ("met" if speedup >= 1.8 else "MISSED"))
        # However well the workers overlapped, the run could not take less than the CPU
        # everything used (workers, database, broker, sink) spread over every core.
        floor_s = sum(more.cpu_s.values()) / (os.cpu_count() or 1)
        row("ceiling on this machine", f"{one.run.wall_s / floor_s:.2f}x (all the CPU the "
            f"{more.workers}-worker run used, {sum(more.cpu_s.values()):.0f} s, over "
            f"{os.cpu_count()} cores: at least {floor_s:.1f} s)")
    if sink_rate:
        top = max(r.run.rate for r in results)
        if top >= 0.8 * sink_rate:
            limit = "the sink"
        else:
            last = results[-1]
            used = sum(last.cpu_s.values())
            others = used - last.cpu_s["workers"]
            cores = last.run.wall_s * (os.cpu_count() or 1)
            limit = (f"the cores, not the sink (which took {sink_rate:.0f} emails/s from "
                     f"smtp-source in this run): with {last.workers} workers, {used:.0f} of "
                     f"{cores:.0f} core-s were busy, {others:.0f} of them outside the "
                     "workers (database, broker, sink, counting) on the same machine")
        row("what limited", limit)


# Report --------------------------------------------------------------------------------

def mem(kb: float) -> str:
    size = kb * 1024
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def row(label: str, value: str) -> None:
    print(f"  {label:<36}{value}")


def report_run(run: SendRun, args: argparse.Namespace) -> None:
    settings = (f"processes={args.processes}, connections={args.connections}, "
                "signed links on, profile cache "
                + ("empty: a first run" if args.cold_profiles else "warm: a later day"))
    print(f"digest send, {run.subscribers} subscribers ({settings})")
    row("setup (not timed)", f"{run.setup_s:.1f} s")
    editions = run.stages.get("editions", run.stages.get("sent", 0.0))
    if run.stages:
        row("editions / sent (send.stages)",
            f"{editions:.0f} / {run.stages.get('sent', float('nan')):.0f}")
        for key, seconds in run.stages.items():
            if key.endswith("_s") and key != "wall_s":
                rate = f"{editions / seconds:10.0f} emails/s per core" if seconds > 0 else ""
                row(f"stage {key[:-2]}", f"{seconds:8.1f} s {rate}")
        if "wall_s" in run.stages:
            row("digest's own wall_s", f"{run.stages['wall_s']:8.1f} s")
    else:
        row("stages", "no send.stages line in the log: end to end only")
    row("end to end (sink / command wall)",
        f"{run.wall_s:8.1f} s {run.rate:10.0f} emails/s ({run.received.messages} received)")
    processes = f"{run.peak_processes} process" + ("es" if run.peak_processes != 1 else "")
    row("peak RSS, process tree", f"{mem(run.peak_total_kb)} ({processes})")
    row("peak RSS, largest process", mem(run.peak_single_kb))
    if run.peak_pss_kb:
        row("peak PSS, process tree", f"{mem(run.peak_pss_kb)} (shared pages split)")
    row("mean message size", f"{run.received.mean_size / 1000:.1f} kB")
    row("ledger", ", ".join(f"{n} {state}" for state, n in sorted(run.ledger.items()))
        or "no editions")
    row("lost / duplicates", f"{run.lost} / {run.received.duplicates}"
        + ("" if run.lost == run.received.duplicates == 0 else "   MUST BE 0 / 0"))
    if run.unexpected:
        row("received, not recorded as sent", str(run.unexpected))
    if run.received.without_id:
        row("received without a Message-ID", str(run.received.without_id))
    if run.returncode != 0:
        row("digest send exit status", f"{run.returncode}   FAILED")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=GOAL_SUBSCRIBERS,
                        help="profiles to serve (default: %(default)s)")
    parser.add_argument("--papers", type=int, default=300,
                        help="papers stored (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=0,
                        help="digest's [send] processes (0: one per CPU core)")
    parser.add_argument("--connections", type=int, default=8,
                        help="digest's [smtp] connections (the SMTP connection pool)")
    parser.add_argument("--growth", action=argparse.BooleanOptionalAction, default=True,
                        help="also run N/10 subscribers first (if N >= 1000), to see how memory "
                        "grows")
    parser.add_argument("--sink", choices=("auto", "smtp-sink", "aiosmtpd"), default="auto",
                        help="auto: Postfix smtp-sink if installed, else aiosmtpd")
    parser.add_argument("--workers", type=int, nargs="+", metavar="N",
                        help="instead: digest send through Celery to N `digest worker` "
                        "processes, for each N given (e.g. --workers 1 2), on PostgreSQL")
    parser.add_argument("--database", default="postgresql+psycopg://postgres@127.0.0.1/test",
                        help="--workers: the PostgreSQL database (a scratch schema is used)")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0",
                        help="--workers: the Celery broker")
    parser.add_argument("--shard-size", type=int, default=500,
                        help="--workers: profiles per Celery task")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--cold-profiles", action="store_true",
                        help="a first run: no profile parsed before (by default the profile "
                             "cache holds them, as on every later day)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    load_before = os.getloadavg()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DIGEST_") or k == "DIGEST_EMBEDDINGS"}
    env["DIGEST_SECRET"] = secrets.token_urlsafe(32)  # for the links in the emails
    scratch = Path(tempfile.mkdtemp(prefix="digest-delivery-"))
    sink: Sink | None = None
    runs: list[SendRun] = []
    earlier: Baseline | None = None  # measured before the main run (after the N/10 one)
    try:
        sink = start_sink(args.sink, scratch)
        papers = corpus(args.papers, rng)
        if args.workers:
            main_workers(args, scratch, sink, papers, env, rng)
            return
        sizes = [args.subscribers]
        if args.growth and args.subscribers >= 1000:
            sizes.insert(0, args.subscribers // 10)
        count = min(max(args.subscribers, 5000), 20_000)
        sessions = sorted({8, 20, args.connections})
        source = find_tool("smtp-source")
        for n in sizes:
            if runs:  # the baseline just before the main run too: the machine drifts
                earlier = measure_baseline(sink, source, sessions, count,
                                          round(runs[-1].received.mean_size) or 12_000)
            runs.append(run_send(scratch / f"n{n}", n, papers, sink, args, env, rng))
        main_run = runs[-1]
        baseline = measure_baseline(sink, source, sessions, count,
                                    round(main_run.received.mean_size) or 12_000)
        if source is not None and isinstance(sink, PostfixSink):
            best = max(baseline.rates, key=lambda n: baseline.rates[n])
            baseline.uncaptured = uncaptured_rate(sink, source, best, count,
                                                  round(baseline.size))
    finally:
        if sink is not None:
            sink.close()
        if args.keep:
            print(f"[scratch folder kept: {scratch}]", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    load = ", ".join(f"{x:.1f}" for x in load_before)
    print(f"machine: {os.cpu_count()} cores, load average {load} at the start")
    print(f"sink: {sink.name}")
    print()
    for run in runs:
        report_run(run, args)
        print()
    if len(runs) == 2:
        small, big = runs
        print(f"memory growth, {small.subscribers:,} -> {big.subscribers:,} subscribers")
        grow_n = big.subscribers / small.subscribers
        for label, before, after in (
                ("peak RSS, process tree", small.peak_total_kb, big.peak_total_kb),
                ("peak RSS, largest process", small.peak_single_kb, big.peak_single_kb)):
            grow = after / before if before else 0.0
            kind = "sub-linear" if grow < 0.8 * grow_n else "about linear or worse"
            row(label, f"x{grow:.2f} for x{grow_n:.0f} subscribers ({kind})")
        if big.peak_processes != small.peak_processes:
            row("note", f"{small.peak_processes} vs {big.peak_processes} processes: the "
                "totals are not like for like; compare the largest process")
        elif big.subscribers < GOAL_SUBSCRIBERS:
            slope = ((big.peak_total_kb - small.peak_total_kb)
                     / (big.subscribers - small.subscribers))
            guess = big.peak_total_kb + slope * (GOAL_SUBSCRIBERS - big.subscribers)
            row(f"straight line to {GOAL_SUBSCRIBERS:,}", f"{mem(guess)} (a guess from two points)")
        print()
    print(f"baseline: {baseline.tool} of {baseline.size / 1000:.1f} kB, same sink"
          + (", before and after the main run" if earlier else ""))
    for n, rate in baseline.rates.items():
        first = (f"before {earlier.rates[n]:6.0f}, after "
                 if earlier and n in earlier.rates else "")
        row(f"{n} sessions", f"{first}{rate:6.0f} emails/s ({baseline.received[n]} "
            "received)")
    if baseline.uncaptured:
        row("(sink keeping nothing, for scale)", f"{baseline.uncaptured:10.0f} emails/s")
    for problem in [*(earlier.problems if earlier else []), *baseline.problems]:
        row("problem", problem)
    print()
    # Against the best rate seen, before or after: a slow spell of the machine during one
    # measurement must not flatter digest.
    best_rate = max(baseline.best, earlier.best if earlier else 0.0)
    ratio = main_run.rate / best_rate if best_rate else 0.0
    print("goals")
    row("end to end / baseline", f"{ratio:.2f}x ({main_run.rate:.0f} / {best_rate:.0f}"
        f" emails/s); goal >= {GOAL_RATIO}x: " + ("met" if ratio >= GOAL_RATIO else "MISSED"))
    rss_ok = main_run.peak_total_kb * 1024 < GOAL_RSS_BYTES
    at = ("" if main_run.subscribers == GOAL_SUBSCRIBERS
          else f"; the goal is for {GOAL_SUBSCRIBERS:,} subscribers, this run had "
               f"{main_run.subscribers:,}")
    row("peak RSS, process tree", f"{mem(main_run.peak_total_kb)}; goal < "
        f"{GOAL_RSS_BYTES / 1e9:.0f} GB: {'met' if rss_ok else 'MISSED'}{at}")
    failed = [run for run in runs if not run.ok]
    for run in failed:
        print(f"\n{run.subscribers} subscribers: digest send exit status {run.returncode}; "
              f"end of its stderr:\n{run.stderr_tail}\nend of its stdout:\n{run.stdout_tail}",
              file=sys.stderr)
    sys.exit(1 if failed else 0)


def main_workers(args: argparse.Namespace, scratch: Path, sink: Sink,
                 papers: Sequence[dict[str, str]], env: dict[str, str],
                 rng: random.Random) -> None:
    """--workers: the same edition through Celery with each number of workers, then the
    sink's own capacity (smtp-source), to say what the limit was."""
    results = [run_workers(scratch / f"w{n}", args.subscribers, papers, sink, args, env,
                           random.Random(args.seed), n) for n in args.workers]
    size = round(results[-1].run.received.mean_size) or 12_000
    source = find_tool("smtp-source")
    sink_rate = 0.0
    if source is not None:
        count = min(max(args.subscribers, 5000), 20_000)
        sink_rate = smtp_source_baseline(source, sink, [8, 20], count, size).best
    print(f"machine: {os.cpu_count()} cores; sink: {sink.name}")
    report_workers(results, sink_rate, args)
    if any(not r.run.ok for r in results):
        for r in results:
            if not r.run.ok:
                print(f"\n{r.workers} workers: end of digest send's stderr:\n"
                      f"{r.run.stderr_tail}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
