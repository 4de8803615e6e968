"""The store on each engine (SQLite, PostgreSQL): one record per paper whatever the sources,
and the same results from both."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from sqlalchemy import event, insert

from digest.identity import normalise_title
from digest.models import Edition, EditionState, PaperEntry
from digest.store import Store
from digest.store.schema import papers

from .conftest import NOW

TITLE = "Promptagator: Few-shot Dense Retrieval From 8 Examples"


def test_same_title_from_two_files_is_one_paper_with_two_sources(store):
    a = PaperEntry(title=TITLE, abstract="short", source="a.txt", source_line=9)
    b = PaperEntry(title=TITLE.upper() + "!", abstract="a longer abstract", source="b.txt")
    assert store.add_entries([a], NOW).new_papers == 1
    result = store.add_entries([b, b], NOW)
    assert (result.new_papers, result.new_sources) == (0, 1)
    [paper] = store.papers()
    assert paper.abstract == "a longer abstract"  # the fuller text is kept
    assert paper.key == "promptagator few shot dense retrieval from 8 examples"


def test_arxiv_id_joins_the_title_record_and_becomes_its_id(store):
    store.add_entries([PaperEntry(title=TITLE, abstract="x", source="digest.txt")], NOW)
    feed = PaperEntry(title=TITLE, abstract="x", source="feed", arxiv_id="2209.11755",
                      authors=("Zhuyun Dai",), url="https://arxiv.org/abs/2209.11755")
    assert store.add_entries([feed], NOW + timedelta(hours=1)).new_papers == 0
    [paper] = store.papers()
    assert (paper.key, paper.arxiv_id, paper.authors) == ("2209.11755", "2209.11755",
                                                          ("Zhuyun Dai",))
    assert paper.first_seen == NOW  # arrival is the first sighting, not the last


def test_papers_with_different_arxiv_ids_and_one_title_stay_apart(store):
    entries = [PaperEntry(title="Introduction", abstract="a", source="f", arxiv_id="2401.00001"),
               PaperEntry(title="Introduction", abstract="b", source="f", arxiv_id="2401.00002")]
    assert store.add_entries(entries, NOW).new_papers == 2


def test_find_papers_by_title_or_arxiv_reference(store):
    store.add_entries([
        PaperEntry(title=TITLE, abstract="x", source="f", arxiv_id="2209.11755"),
        PaperEntry(title="Titans: Learning to Memorize at Test Time", abstract="y", source="f"),
    ], NOW)
    found = store.find_papers(["arXiv:2209.11755v2", "titans learning to memorize at test time",
                               "https://arxiv.org/abs/2209.11755", "Not stored at all"])
    assert found["arXiv:2209.11755v2"].title == TITLE
    assert found["https://arxiv.org/abs/2209.11755"].title == TITLE
    assert found["titans learning to memorize at test time"].title.startswith("Titans")
    assert "Not stored at all" not in found


def test_datetimes_come_back_aware_utc(store):
    store.add_entries([PaperEntry(title="T", abstract="", source="f")], NOW)
    assert store.papers()[0].first_seen.utcoffset() == timedelta(0)
    assert store.papers(since=NOW) == []
    assert len(store.papers(since=NOW - timedelta(seconds=1))) == 1


def test_a_title_longer_than_the_key_column_is_stored_whole_and_found(store):
    title = "Attention Is All You Need, Again " * 25  # 825 characters; the key holds 512
    store.add_entries([PaperEntry(title=title, abstract="a", source="f")], NOW)
    [paper] = store.papers()
    assert paper.title == title and len(paper.key) <= 512
    assert store.find_papers([title])[title].row_id == paper.row_id
    assert store.add_entries([PaperEntry(title=title, abstract="a", source="g")],
                             NOW).new_papers == 0


def test_nul_characters_are_dropped_on_every_engine(store):
    """PostgreSQL cannot store NUL in text, SQLite can: both store the text without it."""
    store.add_entries([PaperEntry(title="Nul\x00 Title", abstract="a\x00b",
                                  source="f\x00.txt", authors=("A\x00B",))], NOW)
    [paper] = store.papers()
    assert (paper.title, paper.abstract) == ("Nul Title", "ab")


def test_a_paper_another_process_adds_meanwhile_is_stored_once(store, database_url):
    """The other process's insert commits between this one's look-up and its insert."""
    entry = PaperEntry(title=TITLE, abstract="the longer abstract", source="a.txt",
                       arxiv_id="2209.11755")
    other = Store.open(database_url)
    try:
        with other.engine.connect() as theirs:
            theirs.execute(insert(papers).values(
                key="2209.11755", arxiv_id="2209.11755", title_key=normalise_title(TITLE),
                title=TITLE, abstract="short", authors=[], first_seen=NOW))

            def commit_theirs_first(_conn, _cursor, statement, *_args) -> None:
                if statement.startswith("INSERT INTO papers") and theirs.in_transaction():
                    theirs.commit()

            event.listen(store.engine, "before_cursor_execute", commit_theirs_first)
            try:
                result = store.add_entries([entry], NOW)
            finally:
                event.remove(store.engine, "before_cursor_execute", commit_theirs_first)
    finally:
        other.close()
    assert (result.new_papers, result.new_sources) == (0, 1)
    [paper] = store.papers()
    assert paper.abstract == "the longer abstract"  # merged into theirs


def test_retryable_editions_come_oldest_first_whatever_the_engine(store):
    for n in (3, 1, 2):
        draft = Edition(subscriber_id=f"s{n}", slot=NOW, state=EditionState.PENDING,
                        message_id=f"<e{n}@test.example>")
        edition = store.create_edition(draft, candidates_until=NOW, now=NOW)
        assert edition is not None and store.begin_sending(edition, now=NOW, stale_before=NOW)
        store.record_attempt(edition, state=EditionState.FAILED, reply="451 later",
                             retryable=True, now=NOW + timedelta(minutes=n))
    assert [e.subscriber_id for e in store.retryable_editions()] == ["s1", "s2", "s3"]


def test_a_subscriber_row_is_written_only_when_the_profile_changes(store):
    """Every run saves each subscriber; a row is rewritten (and `updated_at` moved) only
    when its email, name, path or active flag differ."""
    from pathlib import Path

    from sqlalchemy import select

    from digest.models import Profile
    from digest.store.schema import subscribers

    def row() -> tuple:
        with store.engine.connect() as conn:
            return tuple(conn.execute(select(subscribers.c.email, subscribers.c.name,
                                             subscribers.c.active,
                                             subscribers.c.updated_at)).one())

    ana = Profile(subscriber_id="ana", path=Path("/p/ana.yaml"), name="Ana",
                  email="ana@example.org")
    store.save_subscribers([ana], NOW)
    store.save_subscribers([ana], NOW + timedelta(days=1))
    assert row() == ("ana@example.org", "Ana", True, NOW)
    store.save_subscribers([replace(ana, email="ana@example.net", active=False)],
                           NOW + timedelta(days=2))
    assert row() == ("ana@example.net", "Ana", False, NOW + timedelta(days=2))
