"""Parsed profiles kept between runs, so that a big list is not re-parsed every edition.

Reading a profile (YAML, then validating every field) costs about 0.25 ms; for 100,000
subscribers that is 25 core-seconds a run, for files that rarely change. The cache is a
SQLite file in the data folder holding each profile as parsed, keyed by its path, and
trusted only while the file's stat (size, modification and change time, inode) is the
one it had when parsed and the code that parses is the same.

A file changed within the same clock tick as its parse could keep its stat; as git does
with its index, a file modified less than `RACY_S` before it was parsed is not cached.
Only good profiles are kept: a broken one is read (and its error reported) every run. The
cache is an optimisation: if it cannot be read or written, profiles are parsed as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

from digest import __version__
from digest.config import Settings
from digest.models import Interest, Profile

log = logging.getLogger(__name__)

FILE_NAME = "profile-cache.sqlite3"
RACY_S = 2.0
_TUPLES = ("require", "mute", "avoid", "authors", "liked", "disliked")


@cache
def _code_version() -> str:
    """What parsing depends on: a new release or an edited parser empties the cache."""
    here = Path(__file__).resolve().parent
    sources = b"".join((here / name).read_bytes() for name in ("profiles.py", "models.py"))
    return f"{__version__}:{hashlib.sha256(sources).hexdigest()[:16]}"


def _stamp(stat: os.stat_result) -> str:
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_ino}"


def _to_json(profile: Profile) -> str:
    fields = asdict(profile)
    del fields["path"]
    return json.dumps(fields, separators=(",", ":"))


def _from_json(text: str, path: Path) -> Profile:
    fields: dict[str, Any] = json.loads(text)
    fields["interests"] = tuple(Interest(i["text"], i["weight"]) for i in fields["interests"])
    for name in _TUPLES:
        fields[name] = tuple(fields[name])
    return Profile(path=path, **fields)


class ProfileCache:
    """`get` what is still valid, parse the rest, `put` what was parsed."""

    def __init__(self, folder: Path, *, variant: str = ""):
        """`variant`: what else the parse depended on (e.g. the default max_papers)."""
        self.file = folder / FILE_NAME
        self.variant = f"{_code_version()}|{variant}"
        self._db: sqlite3.Connection | None = None
        self._broken = False

    @classmethod
    def for_settings(cls, settings: Settings) -> ProfileCache:
        """The cache `digest send` uses: in the data folder, for this default max_papers."""
        return cls(settings.data_dir, variant=f"max_papers={settings.default_max_papers}")

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and not self._broken:
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.file, timeout=30, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute("CREATE TABLE IF NOT EXISTS profiles (path TEXT PRIMARY KEY, "
                           "variant TEXT NOT NULL, stamp TEXT NOT NULL, profile TEXT NOT NULL)")
                self._db = db
            except (OSError, sqlite3.Error) as exc:
                self._give_up(exc)
        return self._db

    def _give_up(self, exc: Exception) -> None:
        log.warning("profiles.cache_unusable file=%s error=%s (profiles are parsed instead)",
                    self.file, exc)
        self._broken = True
        if self._db is not None:
            self._db.close()
            self._db = None

    def get(self, paths: Sequence[Path]) -> dict[Path, Profile]:
        """The cached profiles of these files that have not changed since they were parsed."""
        db = self._connect()
        if db is None or not paths:
            return {}
        found: dict[Path, Profile] = {}
        try:
            rows: dict[str, tuple[str, str, str]] = {}
            keys = [str(p) for p in paths]
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for path, variant, stamp, profile in db.execute(
                        f"SELECT path, variant, stamp, profile FROM profiles "  # noqa: S608
                        f"WHERE path IN ({marks})", chunk):
                    rows[path] = (variant, stamp, profile)
            for path in paths:
                row = rows.get(str(path))
                if row is None or row[0] != self.variant:
                    continue
                try:
                    stamp = _stamp(path.stat())
                except OSError:
                    continue
                if stamp == row[1]:
                    found[path] = _from_json(row[2], path)
        except (sqlite3.Error, ValueError, KeyError, TypeError) as exc:
            self._give_up(exc)
            return {}
        return found

    def put(self, parsed: Iterable[tuple[Profile, os.stat_result]]) -> None:
        """Keep these just-parsed profiles, with the stat their files had before reading."""
        db = self._connect()
        if db is None:
            return
        settled = time.time_ns() - int(RACY_S * 1e9)
        rows = [(str(p.path), self.variant, _stamp(stat), _to_json(p))
                for p, stat in parsed if stat.st_mtime_ns < settled]
        if not rows:
            return
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            self._give_up(exc)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
