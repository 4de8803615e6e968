"""Parse RSS and Atom feeds into `PaperEntry` records: arXiv API and listing feeds, the
Hugging Face daily-papers RSS (authors and abstract inside its HTML description), and any
other feed whose entries have a title and a summary.

Pure: bytes in, entries and problems out. Fetching lives in `digest.ingest.fetch`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from html.parser import HTMLParser
from typing import Any

import feedparser

from digest.identity import parse_arxiv_id, parse_doi
from digest.models import PaperEntry, Problem

_HF_FIELD = re.compile(r"^(Authors|Upvotes|Summary):\s*", re.IGNORECASE)
# arXiv listing RSS: "arXiv:2401.01234v1 Announce Type: new \nAbstract: The text..."
_LISTING_PREFIX = re.compile(r"^arXiv:\S+\s+Announce Type:\s*\S+\s*(?:Abstract:\s*)?", re.I)


class _TextExtractor(HTMLParser):
    """Collects the text of an HTML fragment, one string per block element."""

    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[list[str]] = [[]]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCKS:
            self.blocks.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BLOCKS:
            self.blocks.append([])

    def handle_data(self, data: str) -> None:
        self.blocks[-1].append(data)


def html_blocks(fragment: str) -> list[str]:
    """The text of an HTML fragment as a list of non-empty blocks (paragraphs)."""
    extractor = _TextExtractor()
    extractor.feed(fragment)
    extractor.close()
    blocks = (" ".join("".join(parts).split()) for parts in extractor.blocks)
    return [b for b in blocks if b]


@dataclass(frozen=True)
class FeedParse:
    """What one feed document held."""

    entries: tuple[PaperEntry, ...]
    problems: tuple[Problem, ...]
    title: str = ""


def _published(entry: Any) -> date | None:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    if not parsed:
        return None
    try:
        return date(parsed[0], parsed[1], parsed[2])  # feedparser gives UTC struct_time
    except (TypeError, ValueError):
        return None


def _authors(entry: Any) -> tuple[str, ...]:
    names = [a.get("name", "") for a in entry.get("authors", []) if a.get("name")]
    if len(names) == 1 and "," in names[0]:  # dc:creator "A, B and C" in listing feeds
        names = re.split(r"\s*,\s*|\s+and\s+", names[0])
    return tuple(" ".join(n.split()) for n in names if n.strip())


def _summary(entry: Any) -> tuple[str, tuple[str, ...]]:
    """The abstract, and authors if the description carries them (Hugging Face style)."""
    raw = entry.get("summary", "") or ""
    blocks = html_blocks(raw) if "<" in raw else [" ".join(raw.split())]
    fields: dict[str, str] = {}
    rest: list[str] = []
    for block in blocks:
        match = _HF_FIELD.match(block)
        if match:
            fields[match.group(1).lower()] = block[match.end():]
        else:
            rest.append(block)
    abstract = fields.get("summary") or " ".join(rest)
    abstract = _LISTING_PREFIX.sub("", abstract).strip()
    authors = tuple(a.strip() for a in fields.get("authors", "").split(",") if a.strip())
    return abstract, authors


def parse_feed(content: bytes, *, source: str) -> FeedParse:
    """Parse one RSS/Atom document. Never raises; a document that is no feed is a problem."""
    parsed = feedparser.parse(content)
    problems: list[Problem] = []
    if not parsed.entries:
        if not parsed.get("version"):
            exc = parsed.get("bozo_exception")
            sniff = content[:512].lstrip().lower()
            reason = ("got an HTML page, not a feed" if sniff.startswith((b"<!doctype html",
                                                                             b"<html"))
                      else f"not an RSS or Atom feed ({exc})" if exc else "not a feed")
            return FeedParse((), (Problem(source, None, reason, fatal=True),))
        if parsed.bozo:  # a feed, but broken before its first entry could be read
            reason = f"feed is not well-formed and no entry could be read: " \
                     f"{parsed.get('bozo_exception')}"
            return FeedParse((), (Problem(source, None, reason, fatal=True),))
        return FeedParse((), (), parsed.feed.get("title", ""))
    if parsed.bozo:
        problems.append(Problem(source, None, f"feed is not well-formed, read what could be "
                                              f"read: {parsed.get('bozo_exception')}"))
    entries: list[PaperEntry] = []
    for number, entry in enumerate(parsed.entries, 1):
        link = entry.get("link", "") or ""
        ident = entry.get("id", "") or ""
        if "arxiv.org/api/errors" in ident or "arxiv.org/api/errors" in link:
            problems.append(Problem(source, None, f"arXiv API error: {entry.get('summary', '')}"))
            continue
        title = " ".join((entry.get("title", "") or "").split())
        if not title:
            problems.append(Problem(source, None, f"entry {number} has no title; skipped"))
            continue
        abstract, described_authors = _summary(entry)
        arxiv_id = parse_arxiv_id(ident) or parse_arxiv_id(link)
        url = f"https://arxiv.org/abs/{arxiv_id}" if arxiv_id else (link or None)
        entries.append(PaperEntry(
            title=title,
            abstract=abstract,
            source=source,
            arxiv_id=arxiv_id,
            authors=_authors(entry) or described_authors,
            url=url,
            published=_published(entry),
            doi=parse_doi(entry.get("arxiv_doi"), inside=True),  # arXiv's <arxiv:doi>
        ))
    return FeedParse(tuple(entries), tuple(problems), parsed.feed.get("title", ""))
