"""Read a digest file from disk: refuse what is not text, decode what is, then parse it.

A digest file is read as it streams, never whole: once, to check and parse it (so that its
problems, its number of entries and whether it is a digest file at all are known before
anything is stored), its entries kept meanwhile in memory for a small file and in a
temporary file for a large one; then `DigestFile.entries` hands them out. A file of any size
takes the same memory.
"""

from __future__ import annotations

import codecs
import io
import marshal
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from digest.errors import InputError
from digest.ingest.digestfile import DigestParse, DigestParser
from digest.models import PaperEntry, Problem
from digest.reading import open_regular_file

# Read as it streams, a file's size costs time, not memory. A digest page is ~100 kB; a year
# of arXiv (250,000 papers) ~300 MB; anything bigger than this is not a digest file.
MAX_FILE_BYTES = 1024 * 1024 * 1024
_BLOCK = 1024 * 1024  # bytes read at a time
KEEP_ENTRIES = 2_000  # held in memory; a file with more keeps them in a temporary file
_FIRST_BYTES = 8192  # where a NUL byte says "binary", as in `decode_text`
# What `decode_text` counts as a sign of binary data in text read as Windows-1252: control
# characters other than tab and line ends, and bytes Windows-1252 leaves undefined.
_NOT_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")


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


class DigestFile:
    """A digest file read and parsed (`open_digest_file`): its problems, its day, how many
    entries it holds (`count`: none if it was rejected), and `entries()`, which hands them
    out. Close it, or use it in a `with` block, to remove the temporary file a large file's
    entries wait in."""

    def __init__(self, path: Path, *, count: int, problems: tuple[Problem, ...],
                 day: date | None, kept: list[PaperEntry], spill: IO[bytes] | None):
        self.path, self.count, self.problems, self.day = path, count, problems, day
        self._kept, self._spill = kept, spill
        self._closed = False

    def entries(self) -> Iterator[PaperEntry]:
        """The file's entries in its order, read as they are asked for."""
        if self._closed:
            raise ValueError(f"{self.path}: its entries were let go (the file is closed)")
        if self._spill is not None:
            source = str(self.path)
            days: dict[int, date] = {}  # one object a day, as the parser gave them
            self._spill.seek(0)
            while size := int.from_bytes(self._spill.read(8), "little"):
                for row in marshal.loads(self._spill.read(size)):
                    yield _entry(row, source, days)
        yield from self._kept

    def close(self) -> None:
        self._closed = True
        self._kept = []
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def __enter__(self) -> DigestFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def open_digest_file(path: Path, reference: date | None = None) -> DigestFile:
    """Read and parse one digest file, as it streams.

    `reference` is the day the file was written (default: its modification day), used to
    give the date line its year. Raises InputError when the file cannot be used at all.
    """
    if path.is_dir():
        raise InputError(path, "is a directory, not a digest file (pass the files in it)")
    with _open_regular(path) as stream:
        info = os.fstat(stream.fileno())
        if info.st_size > MAX_FILE_BYTES:
            raise _too_large(path)
        if reference is None:
            reference = datetime.fromtimestamp(info.st_mtime).date()
        if _blank(stream):
            raise InputError(path, "empty file, no papers in it")
        stream.seek(0)
        head = stream.read(_FIRST_BYTES)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            try:
                return _parse(path, stream, reference, "utf-16", [])
            except UnicodeDecodeError as exc:
                raise InputError(path, "not valid UTF-16 text") from exc
        if b"\x00" in head:
            raise InputError(path, "not a text file (binary data)")
        try:
            return _parse(path, stream, reference, "utf-8-sig", [])
        except UnicodeDecodeError as exc:
            # As `decode_text`: a legacy file, unless it is too far from text to be one.
            if _binary_as_cp1252(stream):
                raise InputError(path, "not a text file (binary data)") from exc
            line = _line_at(stream, _first_bad_utf8(stream))
            note = Problem(str(path), line, "not valid UTF-8; read as Windows-1252")
            return _parse(path, stream, reference, "cp1252", [note])


def read_digest_file(path: Path, reference: date | None = None) -> DigestParse:
    """Read and parse one digest file, its entries all in memory (`open_digest_file` hands
    them out as they are read).

    `reference` is the day the file was written (default: its modification day), used to
    give the date line its year. Raises InputError when the file cannot be used at all.
    """
    with open_digest_file(path, reference) as digest:
        return DigestParse(tuple(digest.entries()), digest.problems, digest.day)


def _parse(path: Path, stream: IO[bytes], reference: date, encoding: str,
           notes: list[Problem]) -> DigestFile:
    """Parse the file, its text decoded as `encoding` (Windows-1252: undecodable bytes
    replaced) with any line end; raises UnicodeDecodeError where it is not that."""
    stream.seek(0)
    text = io.TextIOWrapper(stream, encoding=encoding, newline=None,
                            errors="replace" if encoding == "cp1252" else "strict")
    parser = DigestParser(source=str(path), reference=reference)
    kept: list[PaperEntry] = []
    spill: IO[bytes] | None = None
    try:
        for entry in parser.parse(text):
            kept.append(entry)
            if len(kept) >= KEEP_ENTRIES:
                if spill is None:
                    spill = tempfile.TemporaryFile(prefix="digest-entries-")
                # Each batch as its size, then its marshalled rows: read back in one go.
                data = marshal.dumps([_row(e) for e in kept])
                spill.write(len(data).to_bytes(8, "little") + data)
                kept.clear()
        if stream.tell() > MAX_FILE_BYTES:  # it grew while being read
            raise _too_large(path)
    except BaseException:
        if spill is not None:
            spill.close()
        raise
    finally:
        text.detach()  # the stream is the caller's to close
    if parser.rejected:  # not a digest file: none of its entries is used
        if spill is not None:
            spill.close()
        return DigestFile(path, count=0, problems=tuple(notes) + parser.problems, day=None,
                          kept=[], spill=None)
    return DigestFile(path, count=parser.count, problems=tuple(notes) + parser.problems,
                      day=parser.day, kept=kept, spill=spill)


# An entry as it waits in the temporary file: what marshal stores, its source left out (the
# file's own) and its day as an ordinal.
_Row = tuple[str, str, int | None, str | None, tuple[str, ...], str | None, int | None,
             str | None]


def _row(entry: PaperEntry) -> _Row:
    return (entry.title, entry.abstract, entry.source_line, entry.arxiv_id, entry.authors,
            entry.url, entry.published.toordinal() if entry.published else None, entry.doi)


def _entry(row: Any, source: str, days: dict[int, date]) -> PaperEntry:
    title, abstract, line, arxiv_id, authors, url, day, doi = row
    published = None
    if day is not None:
        published = days.get(day) or days.setdefault(day, date.fromordinal(day))
    return PaperEntry(title=title, abstract=abstract, source=source, source_line=line,
                      arxiv_id=arxiv_id, authors=authors, url=url, published=published,
                      doi=doi)


def _open_regular(path: Path) -> IO[bytes]:
    """`path` opened for reading as `digest.reading` opens what people drop in a folder.
    Raises InputError."""
    return os.fdopen(open_regular_file(path, kind="digest file"), "rb", buffering=_BLOCK)


def _too_large(path: Path) -> InputError:
    return InputError(path, f"larger than {MAX_FILE_BYTES // 1024:,} KiB, too large for a "
                            "digest file")


def _blocks(stream: IO[bytes], limit: int = MAX_FILE_BYTES + 1) -> Iterable[bytes]:
    """The stream's bytes from its start, a block at a time, at most `limit` of them."""
    stream.seek(0)
    while limit > 0 and (block := stream.read(min(_BLOCK, limit))):
        limit -= len(block)
        yield block


def _blank(stream: IO[bytes]) -> bool:
    """Nothing but a UTF-8 BOM and ASCII white space."""
    first = True
    for block in _blocks(stream):
        if first:
            block, first = block.removeprefix(codecs.BOM_UTF8), False
        if block.strip():
            return False
    return True


def _binary_as_cp1252(stream: IO[bytes]) -> bool:
    """Whether the bytes, read as Windows-1252, hold too many control characters or
    undefined bytes for text (more than 8, and more than one in 50)."""
    bad = size = 0
    for block in _blocks(stream):
        size += len(block)  # one character a byte
        bad += len(_NOT_TEXT.findall(block.decode("cp1252", errors="replace")))
    return bad > max(8, size // 50)


def _first_bad_utf8(stream: IO[bytes]) -> int:
    """The offset of the first byte that is not UTF-8 (the length if none is)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    done = 0  # bytes given to the decoder
    for block in _blocks(stream):
        held = len(decoder.getstate()[0])  # the start of a character the last block cut
        try:
            decoder.decode(block)
        except UnicodeDecodeError as exc:
            return done - held + exc.start
        done += len(block)
    held = len(decoder.getstate()[0])
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        return done - held + exc.start
    return done


def _line_at(stream: IO[bytes], offset: int) -> int:
    """The line the byte at `offset` is on (any line end: CRLF, CR or LF)."""
    breaks = 0
    after_cr = False
    for block in _blocks(stream, offset):
        breaks += block.count(b"\n") + block.count(b"\r") - block.count(b"\r\n")
        if after_cr and block.startswith(b"\n"):
            breaks -= 1  # a CRLF the blocks cut in two is one line end
        after_cr = block.endswith(b"\r")
    return breaks + 1
