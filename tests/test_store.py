"""Paper identity in the store: one record per paper, whatever the sources."""

from __future__ import annotations

from datetime import timedelta

from digest.models import PaperEntry

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
