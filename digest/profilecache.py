"""Parsed profiles kept between runs, so that a big list is not re-parsed every edition.

Reading a profile (YAML, then validating every field) costs about 0.25 ms; for 100,000
subscribers that is 25 core-seconds a run, for files that rarely change. The cache is a
SQLite file in the data folder holding each profile as parsed, keyed by its path, and
trusted only while the file's stat (size, modification and change time, inode) is the
one it had when parsed and the code that parses is the same.

A file changed within the same clock tick as its parse could keep its stat; as git does
with its index, a file modified (or its status changed) less than `RACY_S` before it was
read is not cached.
Only good profiles are kept: a broken one is read (and its error reported) every run. The
cache is an optimisation: if it cannot be read or written, profiles are parsed as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import sqlite3
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import pydantic

from digest import __version__
from digest.config import Settings
from digest.models import Interest, Profile

log = logging.getLogger(__name__)

FILE_NAME = "profile-cache.sqlite3"
RACY_S = 2.0
_TUPLES = ("require", "mute", "avoid", "authors", "liked", "disliked")
_PARSER_SOURCES = ("profiles.py", "models.py", "schedule.py", "identity.py", "config.py")


@cache
def _code_version() -> str:
    """What parsing depends on: a new release, an edited parser or validator, another
    pydantic or tzdata package: each makes the cached profiles count for nothing."""
    here = Path(__file__).resolve().parent
    found = hashlib.sha256(f"{pydantic.VERSION}|{zoneinfo.TZPATH}".encode())
    for name in _PARSER_SOURCES:
        try:
            found.update((here / name).read_bytes())
        except OSError:  # installed without sources: the release alone tells
            found.update(name.encode())
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        found.update(importlib.metadata.version("tzdata").encode())
    return f"{__version__}:{found.hexdigest()[:16]}"


def _key(path: Path) -> str:
    return os.path.abspath(path)  # a relative path means another file in another folder


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
                self._db = self._open()
            except sqlite3.DatabaseError as exc:
                # Not a database (damaged): it only ever held copies, so start afresh.
                log.warning("profiles.cache_reset file=%s error=%s", self.file, exc)
                try:
                    self.file.unlink(missing_ok=True)
                    self._db = self._open()
                except (OSError, sqlite3.Error) as again:
                    self._give_up(again)
            except (OSError, sqlite3.Error) as exc:
                self._give_up(exc)
        return self._db

    def _open(self) -> sqlite3.Connection:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.file, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS profiles (path TEXT PRIMARY KEY, "
                       "variant TEXT NOT NULL, stamp TEXT NOT NULL, profile TEXT NOT NULL)")
        except BaseException:
            db.close()
            raise
        return db

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
            keys = [_key(p) for p in paths]
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for path, variant, stamp, profile in db.execute(
                        f"SELECT path, variant, stamp, profile FROM profiles "  # noqa: S608
                        f"WHERE path IN ({marks})", chunk):
                    rows[path] = (variant, stamp, profile)
            for path, key in zip(paths, keys, strict=True):
                row = rows.get(key)
                if row is None or row[0] != self.variant:
                    continue
                try:
                    stamp = _stamp(path.stat())
                except OSError:
                    continue
                if stamp == row[1]:
                    try:
                        found[path] = _from_json(row[2], path)
                    except (ValueError, KeyError, TypeError):
                        continue  # a damaged row: the file is read instead
        except sqlite3.Error as exc:
            self._give_up(exc)
            return {}
        return found

    def put(self, parsed: Iterable[tuple[Profile, os.stat_result, int]]) -> None:
        """Keep these just-parsed profiles, each with the stat its file had before it was
        read and the time (time.time_ns()) just before that stat."""
        db = self._connect()
        if db is None:
            return
        racy = int(RACY_S * 1e9)
        rows = [(_key(p.path), self.variant, _stamp(stat), _to_json(p))
                for p, stat, seen_ns in parsed
                if max(stat.st_mtime_ns, stat.st_ctime_ns) < seen_ns - racy]
        if not rows:
            return
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            self._give_up(exc)

    def keep_only(self, paths: Sequence[Path]) -> int:
        """Forget the profiles of every file but these (the whole profiles folder, after a
        run that served it): removed and renamed files' rows go. Returns how many went."""
        db = self._connect()
        if db is None:
            return 0
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("CREATE TEMP TABLE IF NOT EXISTS keep (path TEXT PRIMARY KEY)")
                db.execute("DELETE FROM keep")
                db.executemany("INSERT OR IGNORE INTO keep VALUES (?)",
                               [(_key(p),) for p in paths])
                gone = db.execute("DELETE FROM profiles WHERE path NOT IN "
                                  "(SELECT path FROM keep)").rowcount
                db.execute("DELETE FROM keep")
        except sqlite3.Error as exc:
            self._give_up(exc)
            return 0
        return max(gone, 0)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
