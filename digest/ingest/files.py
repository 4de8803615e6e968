"""Read a digest file from disk: refuse what is not text, decode what is, then parse it."""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

from digest.errors import InputError
from digest.ingest.digestfile import DigestParse, parse_digest_text
from digest.models import Problem
from digest.reading import read_regular_file

MAX_FILE_BYTES = 50 * 1024 * 1024  # a digest page is ~100 kB; anything this big is not one


def decode_text(path: Path, data: bytes) -> tuple[str, list[Problem]]:
    """Decode bytes as UTF-8 (with or without BOM), falling back to cp1252 for legacy files.

    Raises InputError for binary data.
    """
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), []
        except UnicodeDecodeError as exc:
            raise InputError(path, "not valid UTF-16 text") from exc
    if b"\x00" in data[:8192]:
        raise InputError(path, "not a text file (binary data)")
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        text = data.decode("cp1252", errors="replace")
        bad = sum(1 for ch in text if ch == "\ufffd" or unicodedata.category(ch) == "Cc"
                  and ch not in "\r\n\t")
        if bad > max(8, len(text) // 50):
            raise InputError(path, "not a text file (binary data)") from exc
        line = len(re.split(rb"\r\n|\r|\n", data[: exc.start]))
        note = Problem(str(path), line, "not valid UTF-8; read as Windows-1252")
        return text, [note]


def read_digest_file(path: Path, reference: date | None = None) -> DigestParse:
    """Read and parse one digest file.

    `reference` is the day the file was written (default: its modification day), used to
    give the date line its year. Raises InputError when the file cannot be used at all.
    """
    if path.is_dir():
        raise InputError(path, "is a directory, not a digest file (pass the files in it)")
    data = read_regular_file(path, MAX_FILE_BYTES, kind="digest file")
    if reference is None:
        try:
            reference = datetime.fromtimestamp(path.stat().st_mtime).date()
        except OSError as exc:
            raise InputError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if not data.removeprefix(codecs.BOM_UTF8).strip():
        raise InputError(path, "empty file, no papers in it")
    text, notes = decode_text(path, data)
    parsed = parse_digest_text(text, source=str(path), reference=reference)
    return replace(parsed, problems=tuple(notes) + parsed.problems)
