"""Digest files into the store, as `digest ingest` reads them: each file parsed, its papers
merged into the stored ones as they are read (a file of any size in little memory), what
was skipped reported with file and line.

Long work tells an optional `FileProgress` (see `inbox.py`) how far it is: the command
shows it, this module shows nothing itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from digest.errors import InputError
from digest.ingest.files import open_digest_file
from digest.ingest.inbox import FileProgress, InboxWatcher
from digest.models import IngestReport, Problem

if TYPE_CHECKING:
    from digest.store import Store

log = logging.getLogger(__name__)


def ingest_files(store: Store, paths: Iterable[Path], *, now: datetime,
                 reference: datetime | None = None, progress: FileProgress | None = None
                 ) -> IngestReport:
    """Parse digest files and merge their papers into the store; bad files are reported.
    `progress` is told of each file, and through what it returns, of each paper stored."""

    def file_progress(path: Path, entries: int
                      ) -> AbstractContextManager[Callable[[int], None] | None]:
        return progress(path, entries) if progress is not None else nullcontext()

    files = entries = new = 0
    problems: list[Problem] = []
    for path in paths:
        try:
            digest = open_digest_file(path, reference.date() if reference else None)
        except InputError as exc:
            problems.append(Problem(str(exc.path), exc.line, exc.reason, fatal=True))
            log.info("ingest.rejected path=%s reason=%s", exc.path, exc.reason)
            with file_progress(path, 0):
                pass
            continue
        with digest:
            problems.extend(digest.problems)
            with file_progress(path, digest.count) as advance:
                if not digest.count:
                    continue
                result = store.add_entries(digest.entries(), now, progress=advance)
        files += 1
        entries += result.entries
        new += result.new_papers
        log.info("ingest.file path=%s entries=%d new=%d skipped=%d", path, result.entries,
                 result.new_papers, len(digest.problems))
    return IngestReport(files=files, entries=entries, new_papers=new, problems=tuple(problems))


def ingest_inbox(store: Store, folder: Path, *, now: datetime,
                 progress: FileProgress | None = None) -> IngestReport:
    """Ingest every file in the inbox folder now, moving each out as the daemon does."""
    done = InboxWatcher(folder, settle_s=0).process(store, now, wait=False, progress=progress)
    problems: list[Problem] = []
    for item in done:
        if item.rejected:
            problems.append(Problem(str(item.path), None, item.rejected, fatal=True))
        problems.extend(item.problems)
    return IngestReport(files=sum(1 for d in done if not d.rejected),
                        entries=sum(d.entries for d in done),
                        new_papers=sum(d.new_papers for d in done), problems=tuple(problems))
