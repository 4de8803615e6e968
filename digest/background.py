"""Blocking calls awaited from the event loop without holding it, or the exit, up."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def off_loop(func: Callable[[], T], timeout_s: float, *, name: str) -> T:
    """`func()` in a daemon thread of its own, awaited for at most `timeout_s`
    (TimeoutError). A call stuck on a dead connection neither blocks the event loop nor
    holds up the exit, as a thread of asyncio's own pool would: the process does not wait
    for it."""
    done: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        # Running from here on, so a caller that stops waiting (the daemon stopping) cannot
        # cancel it: its outcome is set without an InvalidStateError ending the thread.
        if not done.set_running_or_notify_cancel():
            return  # given up on before it started
        try:
            done.set_result(func())
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await asyncio.wait_for(asyncio.wrap_future(done), timeout_s)
