"""Parse a reader's reference library as Zotero, Mendeley and other reference managers export
it (BibTeX, RIS, CSL-JSON) into `PaperEntry` records, for `digest profile import`.

The parsers are pure: text in, entries and problems (file and line) out, and they never
raise on any text. `read_library_file` is their bounded read from disk.
"""

from __future__ import annotations

import bisect
import codecs
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cache, lru_cache
from itertools import chain
from pathlib import Path
from typing import Any

import rispy  # type: ignore[import-untyped]  # ships no type information
from bibtexparser.entrypoint import parse_string as parse_bibtex_string
from bibtexparser.middlewares.names import split_multiple_persons_names
from bibtexparser.model import Entry, ParsingFailedBlock
from pylatexenc.latex2text import (  # type: ignore[import-untyped]
    LatexNodes2Text,
    MacroTextSpec,
    get_default_latex_context_db,
)

from digest.errors import InputError, first_line
from digest.identity import normalise_title, parse_arxiv_id, parse_doi
from digest.ingest.files import decode_text
from digest.models import PaperEntry, Problem
from digest.reading import read_regular_file

# What one library file may be (docs/limits.md). A Zotero export of 5,000 papers with their
# abstracts is about 10 MB; a profile lists at most 5,000 liked papers.
MAX_LIBRARY_BYTES = 50 * 1024 * 1024
MAX_LIBRARY_ENTRIES = 10_000
MAX_TITLE_CHARS = 1_000  # longer: a brace or quote left open swallowed the fields after it

BIBTEX, RIS, CSL_JSON = "BibTeX", "RIS", "CSL-JSON"
_SUFFIXES = {".bib": BIBTEX, ".bibtex": BIBTEX, ".ris": RIS, ".json": CSL_JSON,
             ".csljson": CSL_JSON}


@dataclass(frozen=True)
class LibraryParse:
    """What one library file held: its entries, and what was skipped or doubtful."""

    format: str | None
    entries: tuple[PaperEntry, ...] = ()
    problems: tuple[Problem, ...] = ()


def read_library_file(path: Path, *, max_entries: int = MAX_LIBRARY_ENTRIES) -> LibraryParse:
    """Read and parse one library file (its format by its extension, else its content).
    Raises InputError when the file cannot be used at all."""
    data = read_regular_file(path, MAX_LIBRARY_BYTES, kind="library file")
    if not data.removeprefix(codecs.BOM_UTF8).strip():
        raise InputError(path, "empty file, no entries in it")
    text, notes = decode_text(path, data)  # a Latin-1 file is read, and said so in one line
    parsed = parse_library_text(text, str(path), name=path.name, max_entries=max_entries)
    fatal = [p for p in parsed.problems if p.fatal]
    if fatal:
        raise InputError(path, fatal[0].reason)
    return LibraryParse(parsed.format, parsed.entries, (*notes, *parsed.problems))


def detect_format(text: str, name: str = "") -> str | None:
    """BibTeX, RIS or CSL-JSON: by the file name's extension, else by the text's shape."""
    suffix = Path(name).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    head = text.lstrip("\ufeff \t\r\n")
    if head.startswith(("[", "{")):
        return CSL_JSON
    if _RIS_START.search(text):
        return RIS
    if _BIB_ENTRY.search(text):
        return BIBTEX
    return None


def parse_library_text(text: str, source: str, *, name: str = "",
                       max_entries: int = MAX_LIBRARY_ENTRIES) -> LibraryParse:
    """Parse a library in whichever of the three formats it is; text in none of them, or
    without a single entry, is one fatal problem."""
    kind = detect_format(text, name or source)
    parsers: dict[str, Callable[[str, str, int], LibraryParse]] = {
        BIBTEX: parse_bibtex, RIS: parse_ris, CSL_JSON: parse_csl_json}
    if kind is None:
        return LibraryParse(None, (), (Problem(
            source, None, "not a BibTeX, RIS or CSL-JSON library (export it from your "
                          "reference manager in one of these)", fatal=True),))
    parsed = parsers[kind](text.replace("\r\n", "\n").replace("\r", "\n"), source, max_entries)
    if not parsed.entries and not any(p.fatal for p in parsed.problems):
        what = "no entry could be read" if parsed.problems else f"no {kind} entries in it"
        parsed = LibraryParse(kind, (), (*parsed.problems,
                                         Problem(source, None, what, fatal=True)))
    return parsed


# Identifiers ------------------------------------------------------------------------------

_ARXIV_DOI = re.compile(r"10\.48550/arxiv\.(.+)", re.IGNORECASE)
_DOI_LINK = re.compile(r"doi\.org/|/doi/(?:abs/|full/|pdf/)?10\.", re.IGNORECASE)


def _doi_in(field: str) -> str | None:
    return parse_doi(field, inside=True)


def _doi_of_link(url: str) -> str | None:
    """The DOI a link names (doi.org, a publisher's /doi/ page); not any 10.x/y in a path."""
    return parse_doi(url, inside=True) if _DOI_LINK.search(url) else None


def _first(values: Iterable[str | None], parse: Callable[[str], str | None]) -> str | None:
    for value in values:
        found = parse(value) if value else None
        if found:
            return found
    return None


def _arxiv_of_doi(doi: str | None) -> str | None:
    match = _ARXIV_DOI.fullmatch(doi) if doi else None
    return parse_arxiv_id(match.group(1)) if match else None


def _make_entry(source: str, line: int, *, title: str, abstract: str = "",
                authors: Sequence[str] = (), arxiv: Iterable[str | None] = (),
                dois: Iterable[str | None] = (), urls: Iterable[str | None] = (),
                published: date | None = None) -> PaperEntry | Problem:
    """One entry from its fields as text, or the reason it cannot be one."""
    title = " ".join(title.split())
    if not normalise_title(title):
        return Problem(source, line, "no title; entry skipped")
    if len(title) > MAX_TITLE_CHARS:
        return Problem(source, line, f"title longer than {MAX_TITLE_CHARS:,} characters (a "
                                     "brace or quote left open?); entry skipped")
    urls = [u.strip() for u in urls if u and u.strip().lower().startswith(("http://",
                                                                           "https://"))]
    doi = _first(dois, _doi_in) or _first(urls, _doi_of_link)
    arxiv_id = _first(chain(arxiv, urls), parse_arxiv_id) or _arxiv_of_doi(doi)
    url = urls[0] if urls else None
    if url is None and arxiv_id:
        url = f"https://arxiv.org/abs/{arxiv_id}"
    elif url is None and doi:
        url = f"https://doi.org/{doi}"
    return PaperEntry(title=title, abstract=" ".join(abstract.split()), source=source,
                      source_line=line, arxiv_id=arxiv_id,
                      authors=tuple(a for a in (" ".join(n.split()) for n in authors) if a),
                      url=url, published=published, doi=doi)


def _date(year: Any, month: Any = None, day: Any = None) -> date | None:
    """A day, when year, month and day are all known; a year alone dates nothing."""
    try:
        return date(int(str(year).strip()), int(str(month).strip()), int(str(day).strip()))
    except (TypeError, ValueError, OverflowError):
        return None


def _collect(made: Iterable[PaperEntry | Problem], problems: list[Problem], kind: str
             ) -> LibraryParse:
    """The entries made, and the problems met, in the order of their lines."""
    entries: list[PaperEntry] = []
    for item in made:
        if isinstance(item, PaperEntry):
            entries.append(item)
        else:
            problems.append(item)
    problems.sort(key=lambda p: p.line or 0)
    return LibraryParse(kind, tuple(entries), tuple(problems))


def _too_many(source: str, line: int, limit: int) -> Problem:
    return Problem(source, line, f"more than {limit:,} entries: the rest of the file is not "
                                 "read (see docs/limits.md)")


class _Lines:
    """Line numbers (1-based) of offsets into a text."""

    def __init__(self, text: str):
        self._starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def __call__(self, offset: int) -> int:
        return bisect.bisect_right(self._starts, offset)


# BibTeX -----------------------------------------------------------------------------------

_BIB_ENTRY = re.compile(r"^[ \t]*@[ \t]*(?!(?:comment|string|preamble)\b)[A-Za-z]+[ \t]*[{(]",
                        re.IGNORECASE | re.MULTILINE)
# A field that swallowed the next one: `title = {X}` then a newline and `author = {Y}` inside
# the value, as bibtexparser reads a missing comma.
_SWALLOWED = re.compile(r"\n\s*[A-Za-z][\w-]*\s*=\s*[{\"]")


def parse_bibtex(text: str, source: str, max_entries: int = MAX_LIBRARY_ENTRIES
                 ) -> LibraryParse:
    """Parse BibTeX (Zotero, Mendeley, JabRef, Google Scholar exports): LaTeX accents and
    escapes decoded, braces dropped; an entry bibtexparser cannot read is a problem at its
    line, and the entries after it are read."""
    problems: list[Problem] = []
    lines = _Lines(text)
    starts = [m.start() for m in _BIB_ENTRY.finditer(text)]
    if len(starts) > max_entries:  # cut before parsing: parse no more than the bound
        problems.append(_too_many(source, lines(starts[max_entries]), max_entries))
        text = text[:starts[max_entries]]
    try:
        library = parse_bibtex_string(text)
    except Exception as exc:  # bibtexparser's own failure on odd text: this file's problem
        return LibraryParse(BIBTEX, (), (Problem(
            source, None, f"cannot be read as BibTeX: {first_line(exc)}", fatal=True),))
    return _collect(_bibtex_entries(library.blocks, source), problems, BIBTEX)


def _bibtex_entries(blocks: Iterable[Any], source: str) -> Iterator[PaperEntry | Problem]:
    for block in blocks:
        line = (block.start_line or 0) + 1  # bibtexparser counts lines from 0
        if isinstance(block, ParsingFailedBlock):
            kept = block.ignore_error_block
            if isinstance(kept, Entry):  # a repeated citation key or field: still a paper
                yield _bibtex_entry(kept, source, line)
            else:
                reason = getattr(block.error, "abort_reason", None) or first_line(block.error)
                yield Problem(source, line, f"entry not read: {' '.join(str(reason).split())}")
        elif isinstance(block, Entry):
            yield _bibtex_entry(block, source, line)


def _bibtex_entry(entry: Entry, source: str, line: int) -> PaperEntry | Problem:
    raw = {key.lower(): value for key, value in _bib_fields(entry)}
    if _SWALLOWED.search(raw.get("title", "")):
        return Problem(source, line, "title runs into the next field (a comma missing after "
                                     "it?); entry skipped")
    prefix = (raw.get("archiveprefix") or raw.get("eprinttype") or "").strip().lower()
    eprint = raw.get("eprint", "").strip()
    arxiv = chain([f"arXiv:{eprint}" if prefix == "arxiv" else eprint if not prefix else None,
                   raw.get("arxivid"), raw.get("arxiv")],
                  (latex_to_text(raw[k]) for k in ("journal", "note", "howpublished",
                                                   "number", "publisher")
                   if k in raw))  # read only until an id is found
    authors = [latex_to_text(_last_first(name, _top_level_commas(name)))
               for name in split_multiple_persons_names(raw.get("author", ""))
               if name.strip().lower() != "others"]
    when = re.fullmatch(r"\s*(\d{4})-(\d{1,2})-(\d{1,2})\s*", raw.get("date", ""))
    return _make_entry(source, line, title=latex_to_text(raw.get("title", "")),
                       abstract=latex_to_text(raw.get("abstract", "")),
                       authors=authors, arxiv=arxiv, dois=[raw.get("doi")],
                       urls=[raw.get("url")],
                       published=_date(*when.groups()) if when else None)


def _bib_fields(entry: Entry) -> Iterator[tuple[str, str]]:
    for field in entry.fields:
        value = field.value if isinstance(field.value, str) else str(field.value)
        if len(value) >= 2 and value[0] == value[-1] == '"':  # a block kept as it was read
            value = value[1:-1]
        yield field.key, value


def _top_level_commas(name: str) -> list[str]:
    """A BibTeX name split at its commas outside braces (`{Barnes, Noble}` is one part)."""
    parts, depth, start = [], 0, 0
    for at, char in enumerate(name):
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            parts.append(name[start:at])
            start = at + 1
    return [*parts, name[start:]]


# LaTeX in BibTeX values: pylatexenc decodes it, but at about 10 ms for an abstract it would
# take 50 s for a library of 5,000; so only the pieces that are LaTeX (an accent, an escape,
# a command and its arguments) go to it, each distinct piece once, and braces are dropped.
_MATH = re.compile(r"(?<!\\)\$[^$]*(?<!\\)\$")
_LATEX = re.compile(
    r"\\(?:[`'^\"~=.]\s*(?:\{\\?[A-Za-z]\}|\\?[A-Za-z])"  # \"u \'{e} \^\i
    r"|[uvHckbdrt](?:\s*\{\\?[A-Za-z]\}|\s+[A-Za-z])"  # \c{c} \v s
    r"|[A-Za-z]+\*?(?:\s*\{[^{}]*\})*"  # \ss \o \emph{dense} \url{...}
    r"|[^A-Za-z])")  # \& \% \_ \$ \{ \\ and a control space
_DASHES = (("---", "\u2014"), ("--", "\u2013"), ("``", "\u201c"), ("''", "\u201d"), ("~", " "))


def latex_to_text(value: str) -> str:
    """A BibTeX value as plain text: accents and escapes decoded, braces dropped, math
    (`$...$`) kept as written, whitespace collapsed."""
    if not any(ch in value for ch in "\\{}~$-`'"):
        return " ".join(value.split())
    out: list[str] = []
    last = 0
    for math in _MATH.finditer(value):
        out.append(_plain(value[last:math.start()]))
        out.append(math.group(0))
        last = math.end()
    out.append(_plain(value[last:]))
    return " ".join("".join(out).split())


def _plain(text: str) -> str:
    text = _LATEX.sub(lambda m: _decode(m.group(0)), text)
    text = text.replace("{", "").replace("}", "")
    for latex, plain in _DASHES:
        text = text.replace(latex, plain)
    return text


@cache
def _decoder() -> Any:
    """pylatexenc as bibtexparser sets it up (a `\\url{...}` is its address, math as it is
    written), and the names of TeX in titles written out."""
    context = get_default_latex_context_db()
    context.add_context_category("digest", prepend=True, macros=[
        MacroTextSpec("url", simplify_repl="%s"), MacroTextSpec("LaTeX", simplify_repl="LaTeX"),
        MacroTextSpec("TeX", simplify_repl="TeX"), MacroTextSpec("BibTeX", simplify_repl="BibTeX")])
    return LatexNodes2Text(latex_context=context, math_mode="verbatim")


@lru_cache(maxsize=4096)
def _decode(piece: str) -> str:
    """One piece of LaTeX as text: the escapes of the ten special characters directly, the
    rest by pylatexenc (a piece it cannot read is kept without its backslash)."""
    if len(piece) == 2 and piece[1] in "&%$#_{}~^\\":
        return piece[1]
    try:
        return str(_decoder().latex_to_text(piece))
    except Exception:  # pylatexenc on malformed LaTeX
        return piece.lstrip("\\")


# RIS --------------------------------------------------------------------------------------

_RIS_TAG = re.compile(r"^\s*([A-Z][A-Z0-9])\s{1,3}-(?: (.*)|\s*)$")
_RIS_START = re.compile(r"^\s*TY\s{1,3}- ", re.MULTILINE)


def parse_ris(text: str, source: str, max_entries: int = MAX_LIBRARY_ENTRIES) -> LibraryParse:
    """Parse RIS (Mendeley, Zotero, EndNote, Web of Science exports): entries from `TY  -` to
    `ER  -`, each read by rispy; tags written with one space or three are accepted."""
    problems: list[Problem] = []
    records: list[tuple[int, list[str]]] = []
    current: list[str] | None = None
    for number, raw_line in enumerate(text.split("\n"), 1):
        tag = _RIS_TAG.match(raw_line)
        if tag and tag.group(1) == "TY":
            if current is not None:
                problems.append(Problem(source, records[-1][0], "no `ER  -` line ends this "
                                                                "entry; read up to the next"))
            if len(records) == max_entries:
                problems.append(_too_many(source, number, max_entries))
                current = None
                break
            current = []
            records.append((number, current))
        if current is None:
            continue  # text between entries
        if tag:
            current.append(f"{tag.group(1)}  - {tag.group(2) or ''}".rstrip() + " ")
            if tag.group(1) == "ER":
                current = None
        else:
            current.append(raw_line)
    if current is not None:
        problems.append(Problem(source, records[-1][0], "no `ER  -` line ends this entry; "
                                                        "read to the end of the file"))
    return _collect((_ris_entry(lines, source, line) for line, lines in records),
                    problems, RIS)


def _ris_entry(lines: list[str], source: str, line: int) -> PaperEntry | Problem:
    if not lines[-1].startswith("ER  -"):
        lines = [*lines, "ER  - "]
    try:
        [record] = rispy.RisParser(skip_unknown_tags=True).parse_lines(iter(lines))
    except Exception as exc:  # rispy on an odd record
        return Problem(source, line, f"entry not read: {first_line(exc)}")

    def text(*keys: str) -> str:
        for key in keys:
            value = record.get(key)
            if isinstance(value, list):
                value = " ".join(str(v) for v in value)
            if value and str(value).strip():
                return str(value)
        return ""

    def values(*keys: str) -> list[str]:
        found: list[str] = []
        for key in keys:
            value = record.get(key)
            found.extend(str(v) for v in (value if isinstance(value, list) else [value]) if v)
        return found

    day = re.match(r"\s*(\d{4})/(\d{1,2})/(\d{1,2})", text("date", "year", "publication_year"))
    return _make_entry(
        source, line, title=text("title", "primary_title"),
        abstract=text("abstract", "notes_abstract"),
        authors=[_last_first(a) for a in values("authors", "first_authors")],
        arxiv=values("notes", "note", "number", "accession_number", "journal_name",
                     "secondary_title", "alternate_title3"),
        dois=values("doi"), urls=values("urls"),
        published=_date(*day.groups()) if day else None)


def _last_first(name: str, parts: list[str] | None = None) -> str:
    """`Last, First` (or `Last, Jr, First`) as `First Last`; `parts`: the name split at its
    commas, when that takes more than `str.split`."""
    parts = [p.strip() for p in (name.split(",") if parts is None else parts)]
    if len(parts) == 2:
        return f"{parts[1]} {parts[0]}"
    if len(parts) == 3:
        return f"{parts[2]} {parts[0]} {parts[1]}"
    return name


# CSL-JSON ---------------------------------------------------------------------------------

_MARKUP = re.compile(r"</?(?:i|b|sup|sub|sc|span)(?:\s[^>]*)?>", re.IGNORECASE)


def parse_csl_json(text: str, source: str, max_entries: int = MAX_LIBRARY_ENTRIES
                   ) -> LibraryParse:
    """Parse CSL-JSON (Zotero's and Better BibTeX's export, pandoc's format): an array of
    items, each read on its own, so an item that is not one is a problem at its line; JSON
    that breaks off stops the reading there, the items before it kept."""
    problems: list[Problem] = []
    items: list[tuple[int, Any]] = []
    lines = _Lines(text)
    decoder = json.JSONDecoder()
    at = _skip_space(text, 0)
    try:
        if text.startswith("{", at):  # one item, or {"items": [...]}
            value, end = decoder.raw_decode(text, at)
            listed = value.get("items") if isinstance(value, dict) else None
            items = [(lines(at), v) for v in listed[:max_entries]] \
                if isinstance(listed, list) else [(lines(at), value)]
            if isinstance(listed, list) and len(listed) > max_entries:
                problems.append(_too_many(source, lines(at), max_entries))
        elif text.startswith("[", at):
            at = _skip_space(text, at + 1)
            while not text.startswith("]", at):
                if len(items) == max_entries:
                    problems.append(_too_many(source, lines(at), max_entries))
                    break
                start = at
                value, at = decoder.raw_decode(text, at)
                items.append((lines(start), value))
                at = _skip_space(text, at)
                if text.startswith(",", at):
                    at = _skip_space(text, at + 1)
                elif not text.startswith("]", at):
                    raise json.JSONDecodeError("expected , or ] after an item", text, at)
        else:
            raise json.JSONDecodeError("expected a list of items", text, at)
    except json.JSONDecodeError as exc:
        problems.append(Problem(source, exc.lineno, f"not valid JSON: {exc.msg} (column "
                                                    f"{exc.colno}); the rest is not read",
                                fatal=not items))
    except RecursionError:
        problems.append(Problem(source, lines(at), "JSON nested too deeply; the rest is "
                                                   "not read", fatal=not items))
    return _collect((_csl_entry(value, source, line) for line, value in items),
                    problems, CSL_JSON)


def _skip_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\n\r\ufeff":
        at += 1
    return at


def _csl_entry(item: Any, source: str, line: int) -> PaperEntry | Problem:
    if not isinstance(item, dict):
        return Problem(source, line, "not a CSL-JSON item (an object with a title); skipped")

    def text(key: str) -> str:
        value = item.get(key)
        return str(value) if isinstance(value, (str, int, float)) else ""

    authors = []
    for person in item.get("author") or ():
        if isinstance(person, dict):
            name = person.get("literal") or " ".join(
                str(person[k]) for k in ("given", "dropping-particle", "non-dropping-particle",
                                         "family", "suffix") if person.get(k))
            authors.append(str(name))
    parts = item.get("issued", {}).get("date-parts") if isinstance(item.get("issued"),
                                                                   dict) else None
    day = parts[0] if isinstance(parts, list) and parts and isinstance(parts[0], list) else []
    return _make_entry(
        source, line, title=_MARKUP.sub("", text("title")), abstract=text("abstract"),
        authors=authors,
        arxiv=[text(k) for k in ("number", "note", "container-title", "publisher", "source",
                                 "archive_location")],
        dois=[text("DOI")], urls=[text("URL")],
        published=_date(*day[:3]) if len(day) >= 3 else None)
