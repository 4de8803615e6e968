"""The inbox folder: digest files dropped there are ingested once they are complete, then
moved to `processed/`, or to `rejected/` with a `.reason` file beside them.

Problems are returned, not logged: the caller (the daemon, or `digest ingest`) reports
them once.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from digest.errors import InputError
from digest.ingest.files import open_digest_file
from digest.models import Problem

if TYPE_CHECKING:
    from digest.store import Store

log = logging.getLogger(__name__)

# Told of a file about to be stored and its number of entries (0: rejected), it gives the
# context in which they are, and the callable told of each one stored (`digest ingest`).
FileProgress = Callable[[Path, int], AbstractContextManager[Callable[[int], None] | None]]

PROCESSED = "processed"
REJECTED = "rejected"
_PARTIAL_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".swp", "~")


@dataclass(frozen=True)
class InboxFile:
    path: Path
    new_papers: int = 0
    entries: int = 0
    problems: tuple[Problem, ...] = ()
    rejected: str | None = None  # the reason, if the file was moved to rejected/


def _unique(target: Path) -> Path:
    """`target`, or the same name with a counter if a file of that name is already there."""
    if not target.exists():
        return target
    for n in range(1, 10_000):
        candidate = target.with_name(f"{target.stem}.{n}{target.suffix}")
        if not candidate.exists():
            return candidate
    raise InputError(target, "too many files of the same name")


@dataclass
class InboxWatcher:
    """Remembers what it saw last time, so that a file is read only once it stops changing."""

    folder: Path
    settle_s: float = 2.0
    _seen: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def ready(self, now: datetime, *, wait: bool = True) -> list[Path]:
        """Files that look complete: unchanged since the last look and not touched lately
        (every file, without `wait`)."""
        if not self.folder.is_dir():
            return []
        current: dict[Path, tuple[int, int]] = {}
        ready = []
        for path in sorted(self.folder.iterdir()):
            name = path.name
            if name.startswith(".") or name.endswith(_PARTIAL_SUFFIXES) or not path.is_file():
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # moved away meanwhile
            signature = (stat.st_size, stat.st_mtime_ns)
            current[path] = signature
            quiet = now.timestamp() - stat.st_mtime >= self.settle_s
            if not wait or (self._seen.get(path) == signature and quiet):
                ready.append(path)
        self._seen = current
        return ready

    def process(self, store: Store, now: datetime, *, wait: bool = True,
                progress: FileProgress | None = None) -> list[InboxFile]:
        """Ingest every ready file and move it out of the inbox."""
        done = []
        for path in self.ready(now, wait=wait):
            done.append(self._ingest(store, path, now, progress))
            self._seen.pop(path, None)
        return done

    def _ingest(self, store: Store, path: Path, now: datetime,
                progress: FileProgress | None = None) -> InboxFile:
        def storing(entries: int) -> AbstractContextManager[Callable[[int], None] | None]:
            return progress(path, entries) if progress is not None else nullcontext()

        try:
            digest = open_digest_file(path)
        except InputError as exc:
            with storing(0):
                return self._reject(path, exc.reason)
        with digest:
            fatal = [p for p in digest.problems if p.fatal]
            if fatal or not digest.count:
                with storing(0):
                    return self._reject(path, fatal[0].reason if fatal else "no papers found")
            with storing(digest.count) as advance:
                added = store.add_entries(digest.entries(), now, progress=advance)
        target = _unique(self.folder / PROCESSED / path.name)
        target.parent.mkdir(exist_ok=True)
        shutil.move(path, target)
        log.info("inbox.ingested file=%s entries=%d new=%d skipped_lines=%d moved_to=%s",
                 path.name, added.entries, added.new_papers, len(digest.problems), target)
        return InboxFile(target, added.new_papers, added.entries, digest.problems)

    def _reject(self, path: Path, reason: str) -> InboxFile:
        target = _unique(self.folder / REJECTED / path.name)
        target.parent.mkdir(exist_ok=True)
        shutil.move(path, target)
        target.with_name(target.name + ".reason").write_text(reason + "\n", encoding="utf-8")
        log.debug("inbox.rejected file=%s reason=%r moved_to=%s", path.name, reason, target)
        return InboxFile(target, rejected=reason)
