"""Parse "Daily Papers" digest files: header lines, a date line, then title/abstract pairs.

A pure parser: text in, entries and problems out. It never raises on any text; what it
cannot place it reports as a `Problem` with the line number, and it keeps going. It reads
lines as they come (`DigestParser`), so that a file of any size is parsed in little memory.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date

from digest.identity import parse_arxiv_id
from digest.models import PaperEntry, Problem

# Lines the Daily Papers page prints around its list; recognised, not reported.
BOILERPLATE = frozenset(
    {
        "new",
        "get trending papers in your email inbox!",
        "subscribe",
        "daily papers",
        "byak and the research community",
        "trending papers",
    }
)

_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}
_DATE_LINE = re.compile(
    r"^(?P<month>jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?"
    r"|sept?(?:ember)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?\s+"
    r"(?P<day>\d{1,2})(?:st|nd|rd|th)?(?:,?\s+(?P<year>\d{4}))?$",
    re.IGNORECASE | re.ASCII,  # ASCII: no "ſep" (long s) taken for "sep"
)
_UPVOTES = re.compile(r"^[▲△⬆↑^]?\s*\d[\d,.]*\s*[kK]?\s*(?:upvotes?|votes?|▲)?$", re.IGNORECASE)
_SUBMITTED = re.compile(r"^(?:submitted|published|posted)\s+(?:by|on)\b", re.IGNORECASE)
_AUTHORS = re.compile(r"^(?:authors?|by)\s*[:\-–]\s*(?P<names>.+)$", re.IGNORECASE)
_AUTHOR_COUNT = re.compile(r"^[·•]?\s*\d+\s+authors?$", re.IGNORECASE)
_URL_ONLY = re.compile(r"^<?https?://\S+>?$", re.IGNORECASE)
_ARXIV_LINE = re.compile(r"^(?:arxiv\s*:\s*|arxiv\s+id\s*:?\s*)\S+$", re.IGNORECASE)
# How every line the six patterns above match begins (with the same flags): a line that
# begins otherwise, most of a file, is none of them, which one test says.
_NOISE_START = re.compile(r"[\s▲△⬆↑^·•<\d]|submitted|published|posted|authors?|by|https?:"
                          r"|arxiv", re.IGNORECASE)
_LONGEST_BOILERPLATE = max(map(len, BOILERPLATE))  # casefolding never shortens a text
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s+[A-Z(\"]|\s*$)")
_LETTER = re.compile(r"[^\W\d_]")
_FINAL = (".", "!", "?", ")", '"', "'", "”", "’", "]")


def _clean(raw: str) -> str:
    """The line's text: its spaces (of any kind) single, none at its ends, no BOM."""
    if raw.endswith("\n"):
        raw = raw[:-1]
    return raw.strip(" ") if _clean_already(raw) else " ".join(raw.replace("\ufeff", "").split())


def _clean_already(text: str) -> bool:
    """Whether `text` is clean already (no white space but single spaces, no BOM), as most
    lines are: far quicker to tell than to clean it. An ASCII text (which Python knows at
    once) is searched for each ASCII space character in turn: quicker than all at once."""
    if "  " in text:
        return False
    if text.isascii():
        return not ("\t" in text or "\r" in text or "\x0b" in text or "\x0c" in text
                    or "\x1c" in text or "\x1d" in text or "\x1e" in text or "\x1f" in text)
    return text.isprintable()  # so no white space but " ", and no BOM


def _boilerplate(text: str) -> bool:
    return len(text) <= _LONGEST_BOILERPLATE and text.casefold() in BOILERPLATE


def is_noise(text: str) -> bool:
    """True for a line that is neither a title nor an abstract (counts, links, bylines)."""
    return (
        _boilerplate(text)
        or not _LETTER.search(text)
        or (_NOISE_START.match(text) is not None
            and any(p.match(text) for p in (_UPVOTES, _SUBMITTED, _AUTHOR_COUNT, _AUTHORS,
                                            _URL_ONLY, _ARXIV_LINE)))
    )


@dataclass(frozen=True)
class DigestParse:
    """What one digest file held: its entries, its day, and what was skipped or doubtful."""

    entries: tuple[PaperEntry, ...]
    problems: tuple[Problem, ...]
    day: date | None


def infer_date(month: int, day: int, reference: date) -> date | None:
    """Return the latest (month, day) not after `reference`; None if no year has that day."""
    for year in range(reference.year, reference.year - 9, -1):
        try:
            candidate = date(year, month, day)
        except ValueError:
            continue  # Feb 29 outside a leap year, or Apr 31: look at earlier years
        if candidate <= reference:
            return candidate
    return None


def _title_cased(text: str) -> bool:
    """Most longer words capitalised, as in "Dense Retrieval for Long Documents"."""
    words = [w for w in text.split() if len(w) > 3 and w[:1].isalpha()]
    return bool(words) and sum(w[:1].isupper() for w in words) >= 0.6 * len(words)


def looks_like_abstract(text: str) -> bool:
    """Tell an abstract (prose, several sentences) from a title (one short line)."""
    if len(text) >= 400:
        return True
    return len(text) >= 80 and len(_SENTENCE_END.findall(text)) >= 2


@dataclass
class _Entry:
    title: str
    line: int
    abstract: list[str] = field(default_factory=list)
    abstract_line: int = 0  # where the abstract's last line is
    authors: tuple[str, ...] = ()
    arxiv_id: str | None = None
    url: str | None = None
    day: date | None = None


class _Lines:
    """A file's cleaned lines, read as the parser asks for them: those it looked ahead at are
    kept until it gets to them, and no others."""

    def __init__(self, raw: Iterable[str]):
        self._raw = iter(raw)
        self._ahead: deque[str] = deque()

    def __iter__(self) -> Iterator[str]:
        """The lines from the next one on (a generator: quicker than a call a line)."""
        ahead, raw = self._ahead, self._raw
        while True:
            if ahead:
                yield ahead.popleft()
                continue
            line = next(raw, None)
            if line is None:
                return
            if line == "\n" or not line:  # a blank line: every other line of a file
                yield ""
                continue
            if line.endswith("\n"):
                line = line[:-1]
            # `_clean`, whose work most lines do not need (see there).
            yield line.strip(" ") if _clean_already(line) else _clean(line)

    def ahead(self) -> Iterator[str]:
        """The lines after the last one handed out, as far as the caller reads."""
        index = 0
        while True:
            if index < len(self._ahead):
                yield self._ahead[index]
            else:
                raw = next(self._raw, None)
                if raw is None:
                    return
                line = _clean(raw)
                self._ahead.append(line)
                yield line
            index += 1


@dataclass
class _Parser:
    source: str
    reference: date
    lines: _Lines
    ready: list[PaperEntry] = field(default_factory=list)  # emitted, not yet handed out
    problems: list[Problem] = field(default_factory=list)
    count: int = 0  # entries emitted
    with_abstract: int = 0  # of which with an abstract
    day: date | None = None
    first_day: date | None = None
    pending: _Entry | None = None
    # The kind of the previous content line, and whether a blank line came after it.
    previous: str = ""
    blank_since_previous: bool = True

    def skip(self, line: int, reason: str) -> None:
        self.problems.append(Problem(self.source, line, reason))

    def emit(self) -> None:
        entry, self.pending = self.pending, None
        if entry is None:
            return
        if not entry.abstract:
            self.skip(entry.line, "entry has no abstract; kept with its title only")
        else:
            self.with_abstract += 1
        self.count += 1
        self.ready.append(
            PaperEntry(
                title=entry.title,
                abstract=" ".join(entry.abstract),
                source=self.source,
                source_line=entry.line,
                arxiv_id=entry.arxiv_id,
                authors=entry.authors,
                url=entry.url,
                published=entry.day,
            )
        )

    def date_line(self, number: int, match: re.Match[str]) -> None:
        month = _MONTHS[match["month"].lower()[:3]]
        day = int(match["day"])
        if match["year"]:
            try:
                found: date | None = date(int(match["year"]), month, day)
            except ValueError:
                found = None
        else:
            found = infer_date(month, day, self.reference)
        if found is None:
            self.skip(number, f"date line {match.group(0)!r} names no real day")
            return
        self.emit()
        self.day = found
        self.first_day = self.first_day or found
        self.previous, self.blank_since_previous = "date", False

    def noise(self, number: int, text: str) -> bool:
        """Handle a line that is not a title or abstract; True if it was one."""
        if _boilerplate(text):
            return True
        if not _LETTER.search(text) and not _UPVOTES.match(text):
            self.skip(number, "line has no words")
            return True
        if not _NOISE_START.match(text):
            return False  # none of the kinds below
        if _UPVOTES.match(text):
            self.skip(number, "upvote count")
            return True
        if _SUBMITTED.match(text):
            self.skip(number, "submitter or publication line")
            return True
        if _AUTHOR_COUNT.match(text):
            self.skip(number, "author count")
            return True
        authors = _AUTHORS.match(text)
        if authors:
            if self.pending is None:
                self.skip(number, "author line before any title")
            else:
                names = re.split(r"\s*(?:,|;|·|•|\band\b)\s*", authors["names"])
                self.pending.authors = tuple(n.strip() for n in names if n.strip())
            return True
        if _URL_ONLY.match(text) or _ARXIV_LINE.match(text):
            # A link under a title is that paper's: an arXiv id (from an arXiv or Hugging
            # Face link, or an `arXiv:` line) is kept, and the page it links to.
            arxiv_id = parse_arxiv_id(text)
            page = text.strip("<>") if _URL_ONLY.match(text) else None
            if self.pending is None:
                self.skip(number, "link line before any title")
            elif arxiv_id and self.pending.arxiv_id is None:
                self.pending.arxiv_id = arxiv_id
                self.pending.url = page or f"https://arxiv.org/abs/{arxiv_id}"
            elif page and self.pending.url is None and not arxiv_id:
                self.pending.url = page
            else:
                self.skip(number, "link line (the entry has one already)")
            return True
        return False

    def next_content(self) -> str | None:
        """The next line after the current one that could be a title or an abstract."""
        for text in self.lines.ahead():
            if text and not _DATE_LINE.match(text) and not is_noise(text):
                return text
            if _DATE_LINE.match(text):
                return None
        return None

    def short_abstract(self, number: int, text: str) -> bool:
        """Whether a short line after a title is its abstract (cut short, or just brief)."""
        if text.endswith(".") and len(text.split(None, 5)) >= 6:  # six words or more
            return True  # titles do not end in a full stop; brief abstracts do
        following = self.next_content()
        if following is None:  # the file's last line: an abstract cut off, or a bare title
            return len(text) >= 100 or (len(text.split()) >= 4 and not _title_cased(text))
        return len(text) >= 100 and not looks_like_abstract(following)

    def content(self, number: int, text: str) -> None:
        same_paragraph = not self.blank_since_previous
        pending = self.pending
        if (pending is not None and not pending.abstract and not same_paragraph
                and self.previous == "title" and self.short_abstract(number, text)):
            pending.abstract.append(text)
            pending.abstract_line = number
            self.previous = "abstract"
            return
        if looks_like_abstract(text):
            if pending is None:
                self.skip(number, "abstract without a title before it")
                return
            if pending.abstract and not same_paragraph:
                self.skip(number, "second abstract paragraph joined to the entry above")
            pending.abstract.append(text)
            pending.abstract_line = number
            self.previous = "abstract"
            return
        # A short line: a title, the rest of a wrapped title, or a wrapped abstract's tail.
        if pending is not None and same_paragraph:
            if self.previous == "title" and not pending.abstract:
                pending.title = f"{pending.title} {text}"
                return
            if self.previous == "abstract" and (text.endswith(".") or text[:1].islower()):
                pending.abstract.append(text)
                pending.abstract_line = number
                return
        self.emit()
        self.pending = _Entry(title=text, line=number, day=self.day)
        self.previous = "title"

    def feed(self, number: int, text: str) -> None:
        if not text:
            self.blank_since_previous = True
            return
        match = _DATE_LINE.match(text)
        if match:
            self.date_line(number, match)
            return
        if not self.noise(number, text):
            self.content(number, text)
            self.blank_since_previous = False


def _header_end(lines: Iterable[str]) -> int:
    """Index of the first date line among the opening lines, or -1 if there is none."""
    seen = 0
    for index, text in enumerate(lines):
        if not text:
            continue
        if _DATE_LINE.match(text):
            return index
        seen += 1
        if seen > 40 or looks_like_abstract(text):
            break
    return -1


class DigestParser:
    """Parses one digest file's lines as they are read, handing out each entry once it is
    complete: the lines it holds are the ones it looks ahead at, a few. `reference` is the
    day the file was written: dates without a year take the latest year that puts them on
    or before it.

    Once `parse` has given its last entry: `problems`, `count` (the entries given), `day`,
    and `rejected`: True when the text is no digest file at all (its entries are not to be
    used; `problems` then holds only why).
    """

    def __init__(self, *, source: str, reference: date):
        self.source, self.reference = source, reference
        self.problems: tuple[Problem, ...] = ()
        self.count = 0
        self.day: date | None = None
        self.rejected = False

    def parse(self, lines: Iterable[str]) -> Iterator[PaperEntry]:
        """The entries of `lines` (each without its line break, or ending in "\\n"). Never
        raises on any text."""
        source = self.source
        parser = _Parser(source=source, reference=self.reference, lines=_Lines(lines))
        header_end = _header_end(parser.lines.ahead())
        if header_end < 0:
            parser.problems.append(Problem(
                source, None, f"no date line found; entries dated {self.reference.isoformat()}"))
            parser.day = self.reference
        texts = iter(parser.lines)
        start = 1
        if header_end >= 0:
            for number, text in zip(range(1, header_end + 1), texts, strict=False):
                if text and text.casefold() not in BOILERPLATE:
                    parser.skip(number, "unrecognised header line")
            start = header_end + 1
        ready, feed = parser.ready, parser.feed
        for number, text in enumerate(texts, start):
            feed(number, text)
            if ready:
                yield from ready
                ready.clear()
        last = parser.pending
        if last is not None and last.abstract and not last.abstract[-1].endswith(_FINAL):
            parser.skip(last.abstract_line, "last abstract ends mid-sentence (file cut short?); "
                        "kept as it is")
        parser.emit()
        yield from ready
        ready.clear()
        self.count = parser.count
        if not parser.count:
            parser.problems.append(Problem(source, None, "no papers found", fatal=True))
        elif header_end < 0 and not parser.with_abstract:
            # Neither a date line nor one title with its abstract: some other text file, whose
            # lines would otherwise be stored as papers with titles only.
            reason = ("not a digest file: no date line (like 'Mar 11') and no title followed "
                      "by its abstract")
            self.problems = (Problem(source, None, reason, fatal=True),)
            self.rejected = True
            return
        self.problems = tuple(parser.problems)
        self.day = parser.first_day or parser.day


def parse_digest_text(text: str, *, source: str, reference: date) -> DigestParse:
    """Parse the text of one digest file; `reference` is the day the file was written.

    Dates without a year take the latest year that puts them on or before `reference`.
    """
    parser = DigestParser(source=source, reference=reference)
    entries = tuple(parser.parse(re.split(r"\r\n|\r|\n", text.removeprefix("\ufeff"))))
    if parser.rejected:
        return DigestParse((), parser.problems, None)
    return DigestParse(entries, parser.problems, parser.day)
