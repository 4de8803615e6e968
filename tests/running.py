"""Helpers for tests that run digest as a real process: waiting for something to happen,
a `digest run` subprocess with its log, and many generated readers' profiles."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).parents[1]
TOPICS = ["dense retrieval", "language models", "attention", "image classification",
          "reinforcement learning", "recommendation", "instruction tuning", "long context"]


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
