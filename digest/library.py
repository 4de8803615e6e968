"""`digest profile import`: a reader's reference library becomes their liked papers.

Each entry is matched to a stored paper (by arXiv id, then DOI, then title) or stored as a
reference paper (used for ranking, never offered as new), and the profile's `liked:` list
gains the papers it lacks, in one round-trip edit that keeps the file's comments and layout.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

from digest.errors import InputError
from digest.identity import normalise_title, parse_arxiv_id, parse_doi
from digest.ingest.library import read_library_file
from digest.models import Paper, PaperEntry, Problem
from digest.profiles import MAX_PAPER_REFERENCES, MAX_PROFILE_BYTES, edit_profile, load_profile
from digest.progress import ShowProgress
from digest.store import Store

MAX_REFERENCE_CHARS = 500  # a profile's texts (liked titles) are at most this long


@dataclass(frozen=True)
class ImportReport:
    """What one import did, and the problems met (file:line: reason)."""

    files: int = 0  # library files read
    entries: int = 0  # entries read from them
    papers: int = 0  # distinct papers among them
    new_papers: int = 0  # of which stored now, as references (the others were stored)
    added: int = 0  # papers added to liked
    already_liked: int = 0
    problems: tuple[Problem, ...] = ()

    @property
    def rejected(self) -> tuple[Problem, ...]:
        """Files that could not be read at all."""
        return tuple(p for p in self.problems if p.fatal)


def import_library(store: Store, profile_path: Path, paths: Sequence[Path], *,
                   now: datetime, show_progress: ShowProgress | None = None) -> ImportReport:
    """Read library files, store their papers and add them to the profile's liked list.

    Idempotent: importing the same files again stores and adds nothing. Raises
    ProfileError (before anything is stored) if the profile cannot be read or edited;
    a file that cannot be read is a fatal problem of the report, and the others are read.
    """
    profile = load_profile(profile_path)
    entries: list[PaperEntry] = []
    problems: list[Problem] = []
    files = 0
    with (show_progress("Reading libraries", len(paths), unit="file")
          if show_progress is not None else nullcontext(None)) as advance:
        for path in paths:
            try:
                parsed = read_library_file(path)
            except InputError as exc:
                problems.append(Problem(str(path), exc.line, exc.reason, fatal=True))
                continue
            finally:
                if advance is not None:
                    advance(1)
            files += 1
            entries.extend(parsed.entries)
            problems.extend(parsed.problems)
    if not entries:
        return ImportReport(files=files, problems=tuple(problems))
    stored = store.add_references(entries, now)
    origin: dict[int, PaperEntry] = {}  # each paper's first entry
    for entry, paper in zip(entries, stored.papers, strict=True):
        origin.setdefault(paper.row_id, entry)
    papers = list({p.row_id: p for p in stored.papers}.values())  # once each, in file order
    liked = {p.row_id for p in store.find_papers(profile.liked).values()}
    disliked = {p.row_id for p in store.find_papers(profile.disliked).values()} - liked
    wanted = [p for p in papers if p.row_id not in liked and p.row_id not in disliked]
    kept_disliked = sum(p.row_id in disliked for p in papers)
    if kept_disliked:  # the reader said so of these papers themselves: that stands
        problems.append(Problem(str(profile_path), None, f"{kept_disliked:,} imported papers "
                                "are in disliked and were left there (`digest profile like` "
                                "moves one)"))
    references = []
    for paper, reference in zip(wanted, _references(store, wanted), strict=True):
        if reference is None:
            entry = origin[paper.row_id]
            problems.append(Problem(entry.source, entry.source_line, "a title longer than "
                                    f"{MAX_REFERENCE_CHARS} characters and no arXiv id or "
                                    "DOI to name it by: stored, not added to liked"))
        else:
            references.append(reference)
    references = _fit(references, MAX_PAPER_REFERENCES - len(profile.liked), profile_path,
                      problems)
    added = add_liked(profile_path, references) if references else 0
    return ImportReport(files=files, entries=len(entries), papers=len(papers),
                        new_papers=stored.new_papers, added=added,
                        already_liked=sum(p.row_id in liked for p in papers),
                        problems=tuple(problems))


def _references(store: Store, papers: Sequence[Paper]) -> list[str | None]:
    """How each paper is written in `liked:`: its title, as `digest profile like` writes
    it, where the title names it (another stored paper may have the same title); else its
    arXiv id or DOI; None for a paper that none of these can name."""
    by_title = store.find_papers([p.title for p in papers
                                  if len(p.title) <= MAX_REFERENCE_CHARS])
    references: list[str | None] = []
    for paper in papers:
        named = by_title.get(paper.title)
        if named is not None and named.row_id == paper.row_id:
            references.append(paper.title)
        elif paper.arxiv_id or paper.doi:
            references.append(paper.arxiv_id or f"doi:{paper.doi}")
        else:  # its title is all there is to name it by
            references.append(paper.title if len(paper.title) <= MAX_REFERENCE_CHARS
                              else None)
    return references


def _fit(references: list[str], room: int, profile_path: Path,
         problems: list[Problem]) -> list[str]:
    """As many references as the profile can hold, within its bounds (docs/limits.md): the
    liked list's length, and the file's size (each reference costs at most its JSON form
    and an indented `- `)."""
    try:
        size = profile_path.stat().st_size
    except OSError:
        size = 0
    kept: list[str] = []
    for reference in references[:max(room, 0)]:
        size += len(json.dumps(reference, ensure_ascii=False).encode("utf-8")) + 8
        if size > MAX_PROFILE_BYTES:
            break
        kept.append(reference)
    if len(kept) < len(references):
        why = (f"liked holds at most {MAX_PAPER_REFERENCES:,} papers" if len(kept) == room
               else f"a profile is at most {MAX_PROFILE_BYTES // 1024:,} KiB")
        left = len(references) - len(kept)
        problems.append(Problem(str(profile_path), None, f"{why}: {left:,} imported papers "
                                "were stored but not added to liked (see docs/limits.md)"))
    return kept


def _same(reference: str) -> str:
    """What a liked entry names, to compare entries: its arXiv id, DOI or title key."""
    arxiv_id = parse_arxiv_id(reference)
    if arxiv_id:
        return f"arxiv:{arxiv_id}"
    text = reference.strip().lower()
    doi = parse_doi(text) if text.startswith(("10.", "doi:", "https://doi.org/",
                                              "http://doi.org/", "https://dx.doi.org/")) else None
    return f"doi:{doi}" if doi else normalise_title(reference)


def add_liked(path: Path, references: Sequence[str]) -> int:
    """Append references (titles, arXiv ids, DOIs) to the profile's liked list in one
    edit, leaving out those it holds already; returns how many were added. The file's
    comments and layout are kept (an empty `liked: []` becomes a block list); raises
    ProfileError as `edit_profile` does, leaving the file as it was."""

    def change(root: CommentedMap) -> str:
        target = root.get("liked")
        if not isinstance(target, CommentedSeq):
            target = CommentedSeq()
            root["liked"] = target
        held = {_same(str(item)) for item in target}
        new = []
        for reference in references:
            key = _same(reference)
            if key not in held:
                held.add(key)
                new.append(reference)
        new = new[:max(MAX_PAPER_REFERENCES - len(target), 0)]
        if not new:
            return "0"
        # Comment lines that followed the list's end must still follow it: ruamel keeps them
        # with the end-of-line comment of its last item (of the key, for a flow list).
        lines = ""
        if target.fa.flow_style() or not target:  # `[]` or `[a, b]`: as a block list,
            # which reads better with thousands of items
            target.fa.set_block_style()
            if target.ca.comment:
                end_of_line, lines = _split_comment(target.ca.comment[0])
                target.ca.comment[0] = end_of_line
                if root.ca.items.get("liked"):
                    root.ca.items["liked"][2] = end_of_line
        elif target and target.ca.items.get(len(target) - 1):
            entry = target.ca.items[len(target) - 1]
            entry[0], lines = _split_comment(entry[0])
        target.extend(DoubleQuotedScalarString(r) for r in new)  # "2401.01234" stays a string
        if lines:
            target.ca.items[len(target) - 1] = [CommentToken("\n" + lines, CommentMark(0), None),
                                                None, None, None]
        return str(len(new))

    return int(edit_profile(path, change))


def _split_comment(token: CommentToken | None) -> tuple[CommentToken | None, str]:
    """An end-of-line comment token as ruamel keeps it: (the comment on the line itself,
    the comment lines after it)."""
    if token is None:
        return None, ""
    end_of_line, _, lines = token.value.partition("\n")
    if not lines:
        return token, ""
    kept = CommentToken(end_of_line + "\n", CommentMark(token.column), None) if end_of_line \
        else None
    return kept, lines
