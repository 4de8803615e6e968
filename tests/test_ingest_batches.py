"""Ingest in batches and as a stream, on each engine: the same records as merging entry by
entry, whatever the batch size; one paper twice in a batch, a stored paper met under another
identity in the batch, a paper on both sides of a batch boundary; and a digest file read as
it streams gives what reading it whole gave."""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from digest.errors import InputError
from digest.ingest.digestfile import DigestParse, parse_digest_text
from digest.ingest.files import (
    _BLOCK,
    KEEP_ENTRIES,
    decode_text,
    open_digest_file,
    read_digest_file,
)
from digest.ingest.storing import ingest_files
from digest.models import PaperEntry
from digest.store import Store
from digest.store.schema import paper_sources, papers

from .conftest import NOW
from .services import postgres_schema

REFERENCE = date(2026, 11, 25)
ABSTRACT = ("We study how large language models follow instructions. We find that they ignore "
            "most of them. We release the code and the data.")


def records(store: Store) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every paper in row order (all but its row id), and every source as (paper key, source,
    line), in row order."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(papers).order_by(papers.c.id)).all()
        keys = {row.id: row.key for row in rows}
        sources = conn.execute(select(paper_sources).order_by(paper_sources.c.id)).all()
    return ([tuple(v for k, v in row._mapping.items() if k != "id") for row in rows],
            [(keys[s.paper_id], s.source, s.source_line, s.seen_at) for s in sources])


@pytest.fixture
def empty_store(database_url: str, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens more empty stores on the engine of `store`; closes them afterwards."""
    with ExitStack() as stack:
        count = 0

        def make() -> Store:
            nonlocal count
            count += 1
            if database_url.startswith("postgresql"):
                url = stack.enter_context(postgres_schema())
            else:
                url = f"sqlite:///{tmp_path / f'other{count}.sqlite3'}"
            opened = Store.open(url)
            stack.callback(opened.close)
            return opened

        yield make


def _entry(title: str, **fields: Any) -> PaperEntry:
    return PaperEntry(title=title, abstract=fields.pop("abstract", "a"),
                      source=fields.pop("source", "f.txt"), **fields)


def mixed_entries(rng: random.Random, count: int) -> list[PaperEntry]:
    """Entries of a few papers under several identities: titles in other forms, arXiv ids
    given or not, another paper of the same title, DOIs (some shared by several papers),
    fuller abstracts later, the same paper twice in a source."""
    known = [(f"Paper {n}: on {rng.choice(['Retrieval', 'Attention', 'Graphs'])}",
              f"24{n % 12 + 1:02d}.{n:05d}", f"10.1000/p{n}") for n in range(count // 3 + 1)]
    entries = []
    for line in range(1, count + 1):
        title, arxiv_id, doi = rng.choice(known)
        entries.append(PaperEntry(
            title=rng.choice([title, title.upper(), title.lower() + "!"]),
            abstract="x" * rng.randint(0, 40),
            source=rng.choice(["a.txt", "b.txt", "https://example.org/feed"]),
            source_line=line,
            arxiv_id=rng.choice([arxiv_id, arxiv_id, None, f"2501.{line:05d}"]),
            authors=rng.choice([(), (), ("Ana Lima",), ("Ben Okafor", "Chen Wei")]),
            url=rng.choice([None, f"https://example.org/{line}"]),
            published=rng.choice([None, REFERENCE - timedelta(days=rng.randint(0, 3))]),
            doi=rng.choice([None, None, None, doi, doi.upper(), "10.1000/shared"])))
    return entries


@pytest.mark.parametrize("seed", range(4))
def test_batches_store_what_merging_entry_by_entry_stores(store, empty_store, seed):
    rng = random.Random(seed)
    stored_before = mixed_entries(rng, 30)  # some papers are stored already
    references = mixed_entries(rng, 10)  # and some known only as a reader's references
    entries = mixed_entries(rng, 90)
    results = []
    for batch in (1, 2, 7, 1000):
        target = store if batch == 1 else empty_store()
        target.add_entries(stored_before, NOW - timedelta(days=1), batch=batch)
        target.add_references(references, NOW - timedelta(hours=1))
        results.append((target.add_entries(entries, NOW, batch=batch), records(target)))
    one_by_one = results[0]
    for batch, result in zip((2, 7, 1000), results[1:], strict=True):
        assert result == one_by_one, f"batches of {batch}"


def test_a_paper_twice_in_one_batch_is_one_record(store):
    title = "Promptagator: Few-shot Dense Retrieval From 8 Examples"
    result = store.add_entries([
        _entry(title, abstract="short", source_line=3),
        _entry(title.upper(), abstract="a longer abstract", source_line=9,
               arxiv_id="2209.11755", authors=("Zhuyun Dai",)),
        _entry("Another Paper", source_line=12),
        _entry(title + "!", source_line=15, source="g.txt")], NOW)

    assert (result.entries, result.new_papers, result.new_sources) == (4, 2, 3)
    promptagator, _ = store.papers()
    assert (promptagator.key, promptagator.abstract, promptagator.authors) == (
        "2209.11755", "a longer abstract", ("Zhuyun Dai",))
    _, sources = records(store)
    assert [(key, source, line) for key, source, line, _ in sources] == [
        ("2209.11755", "f.txt", 3), ("another paper", "f.txt", 12),
        ("2209.11755", "g.txt", 15)]  # each (paper, source) once, where it came first


def test_a_stored_paper_is_found_by_an_identity_an_earlier_entry_of_the_batch_gave_it(store):
    store.add_entries([_entry("Titans: Learning to Memorize at Test Time"),
                       _entry("A Journal Paper", doi="10.1000/journal")], NOW)
    later = NOW + timedelta(hours=1)
    result = store.add_entries([
        # The stored paper gets its arXiv id from the first entry; the second, under another
        # title, is the same paper by that id.
        _entry("TITANS: learning to memorize at test time", arxiv_id="2501.00663"),
        _entry("Titans (the arXiv title)", arxiv_id="2501.00663", abstract="the fuller one"),
        # A new paper, then the same one by its DOI under another title, which gives it an
        # arXiv id.
        _entry("A Preprint", doi="10.1000/preprint"),
        _entry("The preprint's published title", doi="10.1000/PREPRINT", arxiv_id="2502.00001"),
        # The stored journal paper, by its DOI.
        _entry("The journal paper's other title", doi="10.1000/journal")], later)

    assert (result.new_papers, result.new_sources) == (1, 1)  # the preprint, from f.txt
    titans, journal, preprint = store.papers()
    assert (titans.key, titans.arxiv_id, titans.abstract) == ("2501.00663", "2501.00663",
                                                            "the fuller one")
    assert titans.first_seen == NOW and journal.doi == "10.1000/journal"
    assert (preprint.key, preprint.doi, preprint.title) == ("2502.00001", "10.1000/preprint",
                                                           "A Preprint")
    assert store.add_entries([_entry("Titans: Learning to Memorize at Test Time")],
                             later).new_papers == 0


def test_one_paper_on_both_sides_of_a_batch_boundary_is_one_record(store):
    entries = [_entry("Dense Retrieval at Scale", source_line=1),
               _entry("A Second Paper", source_line=2),
               # The next batch: the first paper again, now with its arXiv id and abstract.
               _entry("Dense retrieval at scale.", source_line=3, arxiv_id="2401.00001",
                      abstract="The whole abstract."),
               _entry("A Third Paper", source_line=4, arxiv_id="2401.00003"),
               # And again in the third, by its id alone.
               _entry("Dense Retrieval at Scale (v2)", source_line=5, arxiv_id="2401.00001")]
    told: list[int] = []

    result = store.add_entries(iter(entries), NOW, progress=told.append, batch=2)

    assert (result.entries, result.new_papers, result.new_sources) == (5, 3, 3)
    assert told == [1] * 5
    dense, second, third = store.papers()
    assert (dense.key, dense.abstract, dense.title) == ("2401.00001", "The whole abstract.",
                                                        "Dense Retrieval at Scale")
    _, sources = records(store)
    assert [line for _, _, line, _ in sources] == [1, 2, 4]
    again = store.add_entries(entries, NOW + timedelta(hours=1), batch=2)
    assert (again.new_papers, again.new_sources) == (0, 0)


def test_a_reference_met_twice_in_a_batch_is_new_once(store):
    [reference] = store.add_references([_entry("Known From A Library", doi="10.1000/lib")],
                                       NOW).papers
    later = NOW + timedelta(days=1)
    result = store.add_entries([_entry("Known from a library", arxiv_id="2412.00001"),
                                _entry("Known From A Library", source="g.txt")], later)
    assert result.new_papers == 1
    [paper] = store.candidate_papers(NOW)
    assert (paper.row_id, paper.arxiv_id, paper.first_seen) == (reference.row_id, "2412.00001",
                                                                later)


def test_two_ingests_of_the_same_papers_at_once_store_each_paper_once(store, database_url):
    """PostgreSQL, where writers run at once: each batch's insert of a paper the other
    ingest stored meanwhile waits for it, then merges into it."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite writes one transaction at a time")
    entries = [_entry(f"Paper {n} on Retrieval", arxiv_id=f"2401.{n:05d}" if n % 3 else None,
                      abstract="x" * (n % 5)) for n in range(1500)]
    results: list[Any] = []

    def ingest(source: str) -> None:
        other = Store.open(database_url)
        try:
            results.append(other.add_entries([replace(e, source=source) for e in entries],
                                             NOW, batch=400))
        finally:
            other.close()

    threads = [threading.Thread(target=ingest, args=(source,)) for source in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(r.new_papers for r in results) == [0, 1500]
    assert [r.new_sources for r in results] == [1500, 1500]
    assert store.count_papers() == 1500


def test_two_ingests_of_the_same_papers_in_opposite_orders_both_finish(store, database_url):
    """PostgreSQL: one file's papers are another's in reverse. Each ingest is one
    transaction; were they written at once, each would hold the papers the other needs
    next (a deadlock, one of them failed). Writers of papers take turns instead."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite writes one transaction at a time")
    entries = [_entry(f"Paper {n} on Graphs", arxiv_id=f"2402.{n:05d}") for n in range(1200)]
    results: list[Any] = []
    errors: list[BaseException] = []

    def ingest(source: str, ordered: list[PaperEntry]) -> None:
        other = Store.open(database_url)
        try:
            results.append(other.add_entries([replace(e, source=source) for e in ordered],
                                             NOW, batch=100))
        except BaseException as exc:  # noqa: BLE001  # reported by the assertion below
            errors.append(exc)
        finally:
            other.close()

    threads = [threading.Thread(target=ingest, args=("a", entries)),
               threading.Thread(target=ingest, args=("b", entries[::-1]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(r.new_papers for r in results) == [0, 1200]
    assert store.count_papers() == 1200


# --- a digest file, read as it streams ----------------------------------------------------

def write_digest(path: Path, entries: int, *, rng: random.Random) -> str:
    """A digest file of `entries` papers with what real ones carry (upvote counts, authors
    and links, repeated papers, entries without an abstract, lines without words); its
    text."""
    lines = ["new", "", "Get trending papers in your email inbox!", "", "Mar 11", ""]
    for n in range(entries):
        if rng.random() < 0.2:
            lines += [f"\u25b2 {rng.randint(1, 99)}", ""]
        number = rng.randint(0, n) if rng.random() < 0.05 else n  # now and then a repeat
        lines.append(f"Paper {number} on {['Attention', 'Retrieval', 'Graphs'][number % 3]}")
        if rng.random() < 0.5:
            lines.append(f"Authors: Ana Lima, Author {number}")
        if rng.random() < 0.5:
            lines.append(f"https://arxiv.org/abs/2401.{number:05d}")
        if rng.random() < 0.01:
            lines += ["", "* * *", ""]
            continue  # no abstract
        lines += ["", f"Paper {number} is about something. " + ABSTRACT, ""]
    text = "\r\n".join(lines) + "\r\n"
    path.write_text(text, encoding="utf-8", newline="")
    return text


def test_a_large_file_read_as_it_streams_gives_what_the_whole_text_gives(tmp_path):
    path = tmp_path / "backfill.txt"
    text = write_digest(path, KEEP_ENTRIES * 2 + 10, rng=random.Random(1))  # held on disk
    whole = parse_digest_text(text, source=str(path), reference=REFERENCE)

    with open_digest_file(path, REFERENCE) as digest:
        assert (digest.count, digest.problems, digest.day) == (len(whole.entries),
                                                               whole.problems, whole.day)
        assert tuple(digest.entries()) == whole.entries
        assert tuple(digest.entries()) == whole.entries  # as often as asked


def test_a_large_file_ingested_twice_adds_nothing_the_second_time(store, tmp_path):
    path = tmp_path / "backfill.txt"
    text = write_digest(path, KEEP_ENTRIES + 500, rng=random.Random(2))
    whole = parse_digest_text(text, source=str(path), reference=REFERENCE)
    papers_in_it = len({e.title for e in whole.entries})

    first = ingest_files(store, [path], now=NOW, reference=NOW)
    again = ingest_files(store, [path], now=NOW + timedelta(hours=1), reference=NOW)

    assert (first.entries, first.new_papers) == (len(whole.entries), papers_in_it)
    assert (again.entries, again.new_papers) == (len(whole.entries), 0)
    assert first.problems == again.problems == whole.problems  # each with file and line
    assert all(p.path == str(path) and p.line for p in first.problems)
    assert store.count_papers() == papers_in_it


def _read_whole(path: Path, data: bytes) -> DigestParse | str:
    """What reading a digest file all at once gave (as `digest` did before it streamed):
    the parse, or why the file was refused."""
    if not data.removeprefix(b"\xef\xbb\xbf").strip():
        return "empty file, no papers in it"
    try:
        text, notes = decode_text(path, data)
    except InputError as exc:
        return exc.reason
    parsed = parse_digest_text(text, source=str(path), reference=REFERENCE)
    return DigestParse(parsed.entries, tuple(notes) + parsed.problems, parsed.day)


def _read_streaming(path: Path) -> DigestParse | str:
    try:
        return read_digest_file(path, REFERENCE)
    except InputError as exc:
        return exc.reason


SEED_LINES = [line for path in sorted((Path(__file__).parent / "data" / "digests" / "seeds")
                                      .glob("*.txt"))
              for line in path.read_text(encoding="utf-8").split("\n")[:30]]
CHUNK = st.one_of(
    st.sampled_from(SEED_LINES).map(lambda line: line.encode()),
    st.sampled_from([b"", b"Mar 11", b"\xe2\x96\xb2 12", b"Authors: A, B", b"arXiv:2401.01234",
                     b"\xef\xbb\xbf", b"Caf\xe9 au lait: A Latin-1 Title", b"\x81\x8d",
                     b"\xc3", b"\x00", ABSTRACT.encode()]),
    st.binary(max_size=12),
)
FILE = st.builds(lambda start, chunks, end: start + end.join(chunks),
                 st.sampled_from([b"", b"\xef\xbb\xbf", b"\xff\xfe", b"new\n"]),
                 st.lists(CHUNK, max_size=40), st.sampled_from([b"\n", b"\r\n", b"\r"]))


@settings(deadline=None, max_examples=300)
@given(FILE)
def test_reading_a_file_as_it_streams_is_reading_it_whole(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("stream") / "digest.txt"
    path.write_bytes(data)
    whole = _read_whole(path, data)
    streamed = _read_streaming(path)
    if (isinstance(whole, DigestParse) and isinstance(streamed, DigestParse)
            and data.startswith(b"\xef\xbb\xbf")):
        # With a BOM, reading it whole put a bad byte's note up to three bytes early (on the
        # line before, for a line that starts with it); the stream says its own line.
        notes = [p for p in streamed.problems if p.reason.startswith("not valid UTF-8")]
        for note in notes:
            assert note.line == len(re.split(rb"\r\n|\r|\n", data[:_first_bad(data)]))
        whole = DigestParse(whole.entries, tuple(notes) + whole.problems[len(notes):],
                            whole.day)
    assert streamed == whole


def _first_bad(data: bytes) -> int:
    """Where the first byte that is not UTF-8 is."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return len(data)


def test_a_bad_byte_past_the_first_block_is_reported_on_its_line(tmp_path):
    """The line count goes across the blocks the file is read in, a CRLF cut in two by a
    block's end counting once."""
    filler = ("Mar 11\r\n\r\nA Title Before The Long Abstract\r\n\r\n" + ABSTRACT + " "
              ).encode()
    filler += b"x" * (_BLOCK - 1 - len(filler)) + b"\r\n"  # the CRLF spans two blocks
    data = filler + b"\r\n" * 3 + b"Caf\xe9: A Latin-1 Title\r\n\r\n" + ABSTRACT.encode()
    path = tmp_path / "digest.txt"
    path.write_bytes(data)

    [note] = [p for p in read_digest_file(path, REFERENCE).problems
              if p.reason.startswith("not valid UTF-8")]
    assert note.line == len(re.split(rb"\r\n|\r|\n", data[:data.index(b"\xe9")])) == 9
