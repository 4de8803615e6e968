"""Bounded reads of the files people drop in the folders digest reads (profiles, digest
files): whatever is there under a good name, a read returns or raises at once."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from digest.errors import InputError


def open_regular_file(path: Path, *, kind: str,
                      error: type[InputError] = InputError) -> int:
    """A descriptor of `path` open for reading, a regular file; raises `error` saying why
    not. Never waits on a FIFO (opened non-blocking) nor opens a device."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError as exc:
        raise error(path, "no such file") from exc
    except IsADirectoryError as exc:
        raise error(path, f"is a directory, not a {kind}") from exc
    except PermissionError as exc:
        raise error(path, "permission denied") from exc
    except OSError as exc:
        raise error(path, f"cannot be read: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(path, f"is a directory, not a {kind}")
        if not stat.S_ISREG(mode):
            raise error(path, f"is not a regular file (a FIFO, socket or device); a {kind} "
                              "is read from a plain file only")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular_file(path: Path, max_bytes: int, *, kind: str,
                      error: type[InputError] = InputError) -> bytes:
    """The bytes of `path`, a regular file of at most `max_bytes`; raises `error` saying
    why not. Never waits on a FIFO nor reads a device (a symbolic link to /dev/zero), and
    reads no more than `max_bytes` + 1 bytes whatever the file claims its size is."""
    fd = open_regular_file(path, kind=kind, error=error)
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise error(path, f"cannot be read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if size > max_bytes:
        raise error(path, f"larger than {max_bytes // 1024:,} KiB, too large for a {kind}")
    return b"".join(chunks)
