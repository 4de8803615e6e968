"""Helpers for tests that run digest as a real process: its command line and ingest, a
`digest run` config and subprocess with its log, waiting for something to happen, many
generated readers' profiles, and the ledger's last edition of each afterwards."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from digest.models import Edition
from digest.store import Store

ROOT = Path(__file__).parents[1]
TOPICS = ["dense retrieval", "language models", "attention", "image classification",
          "reinforcement learning", "recommendation", "instruction tuning", "long context"]


def digest_cli(config: Path, **env: str) -> tuple[list[str], dict[str, str]]:
    """The command line that runs digest on `config` as a user would, and its environment:
    this checkout importable, plus `env`."""
    return ([sys.executable, "-m", "digest", "-c", str(config)],
            {**os.environ, "PYTHONPATH": str(ROOT), **env})


def cli_ingest(command: Sequence[str], env: dict[str, str], paths: Iterable[Path | str]
               ) -> None:
    subprocess.run([*command, "ingest", *map(str, paths)], env=env, check=True,
                   capture_output=True)


def write_daemon_config(folder: Path, smtp_port: int, *, top: str = "", daemon: str = ""
                        ) -> Path:
    """digest.toml for a `digest run` under test: folders in `folder`, the test SMTP
    server, quick polling; `top` adds top-level lines, `daemon` lines of [daemon]."""
    config = folder / "digest.toml"
    config.write_text(f"""data_dir = "data"
profiles_dir = "profiles"
inbox_dir = "inbox"
{top}
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
timeout_s = 5

[mail]
from_address = "digest@test.example"

[daemon]
inbox_poll_s = 0.3
inbox_settle_s = 0.2
profiles_poll_s = 0.5
catchup_grace_s = 86400
{daemon}""")
    return config


def last_editions(database_url: str, subscriber_ids: Iterable[str]) -> list[Edition | None]:
    store = Store.open(database_url)
    try:
        return [store.last_edition(i) for i in subscriber_ids]
    finally:
        store.close()


def wait_for(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class DaemonProcess:
    """`digest -c CONFIG run` in a subprocess, its stderr in `log`."""

    def __init__(self, config: Path, log: Path):
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("DIGEST_CONFIG", None)
        self.handle = subprocess.Popen(
            [sys.executable, "-m", "digest", "-c", str(config), "run"],
            stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env, cwd=config.parent)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        """SIGTERM, then its exit status (at once if it has exited already)."""
        if self.handle.poll() is None:
            self.handle.send_signal(signal.SIGTERM)
        return self.handle.wait(timeout=30)


def write_readers(folder: Path, count: int, rng: random.Random) -> None:
    """`count` profiles s00000.yaml... with two random TOPICS each, due daily at 07:00."""
    folder.mkdir()
    for i in range(count):
        (folder / f"s{i:05d}.yaml").write_text(
            f"name: Reader {i}\nemail: r{i}@example.org\nschedule: daily 07:00\n"
            f"interests: {json.dumps(rng.sample(TOPICS, 2))}\nmax_papers: 5\n")
