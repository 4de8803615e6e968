"""Progress of long work, for the commands: a rich bar on a terminal, plain log lines
otherwise (a file, a pipe, a service's journal).

    with progress("Storing big.txt", total=30_000, unit="paper") as advance:
        store.add_entries(entries, now, progress=advance)   # the stage calls advance(n)

Stages never import this: they take an optional `progress` callable (`Advance`) and call
it with how many more items are done; the command chooses how that is shown.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import IO, TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress

log = logging.getLogger(__name__)

Advance = Callable[[int], None]  # told how many more items are done


class ShowProgress(Protocol):
    """What a long stage is given to show its progress: called with a label, the total and
    the unit once the work's size is known, it returns the context in which to call
    `Advance`. `progress` below is one; a stage given None shows nothing."""

    def __call__(self, label: str, total: int | None = None, *,
                 unit: str = "") -> AbstractContextManager[Advance]: ...


# Not a terminal: nothing for the first QUIET_S (short work says nothing), then a line at
# each tenth of the work, at most one every QUIET_S, and a last line when it is done. Work
# of unknown size: a line every EVERY_S.
QUIET_S = 1.0
EVERY_S = 5.0
# The rich display of the bars now showing, so that a bar opened inside another one (a
# file's papers inside the files) is drawn below it, in the same display.
_showing: ContextVar[Progress | None] = ContextVar("digest_progress", default=None)


def counted(count: int, unit: str, plural: str | None = None) -> str:
    """`count` with its unit, in the right number: "1 paper", "30,000 papers", "0 files";
    `plural` where it is not the unit and an "s" ("entries")."""
    if not unit:
        return f"{count:,}"
    return f"{count:,} {unit if count == 1 else plural or unit + 's'}"


@contextmanager
def progress(label: str, total: int | None = None, *, unit: str = "",
             plural: str | None = None, quiet: bool = False, stream: IO[str] | None = None,
             clock: Callable[[], float] = time.monotonic) -> Iterator[Advance]:
    """Show the progress of `total` items of work (None: unknown) while the block runs;
    yields the callable to tell it of each `n` more items done. `unit` is singular
    ("paper"), `plural` where it is not the unit and an "s" ("entries").

    On a terminal (`stream`, default stderr, is a TTY): a rich bar, removed when the block
    ends. Otherwise: INFO lines from the `digest.progress` logger, as QUIET_S and EVERY_S
    say. `quiet`: nothing at all. `clock` is injectable for tests."""
    stream = sys.stderr if stream is None else stream
    if quiet:
        yield _ignore
    elif _is_terminal(stream):
        with _bar(label, total, plural or (f"{unit}s" if unit else ""), stream) as advance:
            yield advance
    else:
        lines = _Lines(label, total, unit, plural, clock)
        try:
            yield lines.advance
        finally:
            lines.finish()


def _ignore(_n: int) -> None:
    return None


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real stream
        return False


@contextmanager
def _bar(label: str, total: int | None, units: str, stream: IO[str]) -> Iterator[Advance]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    shown = _showing.get()
    outer = shown is None
    if shown is None:
        shown = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[units]}"), TimeElapsedColumn(),
                         TimeRemainingColumn(),
                         console=Console(file=stream), transient=True)
        shown.start()
    token = _showing.set(shown)
    task = shown.add_task(label, total=total, units=units)
    try:
        yield lambda n: shown.advance(task, n)
    finally:
        shown.remove_task(task)
        _showing.reset(token)
        if outer:
            shown.stop()


class _Lines:
    """Plain progress lines for one piece of work."""

    def __init__(self, label: str, total: int | None, unit: str, plural: str | None,
                 clock: Callable[[], float]):
        self.label, self.total, self.clock = label, total, clock
        self.unit, self.plural = unit, plural
        self.done = 0
        self.started = clock()
        self.last_line: float | None = None  # when the last line was written
        self.tenths = 0  # of the total, said so far

    def advance(self, n: int) -> None:
        self.done += n
        now = self.clock()
        since = now - (self.started if self.last_line is None else self.last_line)
        if since < QUIET_S:
            return
        if self.total:
            tenths = min(10, self.done * 10 // self.total)
            if self.tenths < tenths < 10:  # the last one is `finish`'s
                self.tenths = tenths
                self._line(now)
        elif self.last_line is None or now - self.last_line >= EVERY_S:
            self._line(now)

    def finish(self) -> None:
        if self.last_line is not None:  # work that said nothing on its way ends silently too
            self._line(self.clock(), done=True)

    def _line(self, now: float, *, done: bool = False) -> None:
        self.last_line = now
        elapsed = now - self.started
        if self.total:
            left = ""
            remaining = elapsed * (self.total - self.done) / self.done if self.done else 0
            if not done and remaining >= 1:
                left = f", about {remaining:.0f} s left"
            log.info("%s: %s of %s (%d%%) in %.0f s%s", self.label, f"{self.done:,}",
                     counted(self.total, self.unit, self.plural),
                     self.done * 100 // self.total, elapsed, left)
        else:
            log.info("%s: %s in %.0f s%s", self.label,
                     counted(self.done, self.unit, self.plural), elapsed, ", done" if done else "")
