"""`digest profile import`: a reader's library (BibTeX, RIS, CSL-JSON) becomes their liked
papers. Parsers from the data files in tests/data/library/ (each beside its
`<file>.expected.json`), then the store, then the real command on a real store."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, insert

from digest.errors import InputError
from digest.identity import parse_doi
from digest.ingest.feeds import parse_feed
from digest.ingest.library import (
    BIBTEX,
    CSL_JSON,
    RIS,
    latex_to_text,
    parse_bibtex,
    parse_csl_json,
    parse_library_text,
    parse_ris,
    read_library_file,
)
from digest.library import add_liked, import_library
from digest.models import PaperEntry
from digest.profiles import load_profile
from digest.running.editions import EditionRun
from digest.store import Store
from digest.store.schema import papers

from .conftest import DATA, NOW

LIBRARY = DATA / "library"
ARXIV_FEED = DATA / "feeds" / "arxiv-api" / "q_testing_s0_m10_bc5a6c384fe9.atom.xml"

# --- the parsers, from data files ---------------------------------------------------------


def _cases() -> list[Any]:
    return [pytest.param(path, id=path.name) for path in sorted(LIBRARY.iterdir())
            if not path.name.endswith(".expected.json")]


@pytest.mark.parametrize("path", _cases())
def test_library_file(path: Path) -> None:
    expected = json.loads((LIBRARY / f"{path.name}.expected.json").read_text(encoding="utf-8"))
    if "rejected" in expected:
        with pytest.raises(InputError) as caught:
            read_library_file(path)
        assert caught.value.reason == expected["rejected"]
        return
    parsed = read_library_file(path)
    assert parsed.format == expected["format"]
    assert [{"line": e.source_line, "title": e.title, "arxiv_id": e.arxiv_id, "doi": e.doi,
             "authors": list(e.authors), "url": e.url,
             "published": e.published.isoformat() if e.published else None,
             "abstract_start": e.abstract[:60]} for e in parsed.entries] == expected["entries"]
    assert [f"{p.line}: {p.reason}" if p.line else p.reason
            for p in parsed.problems] == expected["problems"]
    assert all(e.source == str(path) for e in parsed.entries)
    assert all(p.path == str(path) for p in parsed.problems)


def test_every_library_file_has_its_expectation() -> None:
    cases = {p.name for p in LIBRARY.iterdir() if not p.name.endswith(".expected.json")}
    expected = {p.name.removesuffix(".expected.json") for p in LIBRARY.glob("*.expected.json")}
    assert cases == expected


@pytest.mark.parametrize(("latex", "text"), [
    (r"M{\"u}ller and Fran{\c{c}}ois", "Müller and François"),
    (r"{\O}stergaard, S{\o}ren", "Østergaard, Søren"),
    (r"O{\u{g}}uz", "Oğuz"),
    (r"R\'{e}sum\'e of \emph{dense} retrieval", "Résumé of dense retrieval"),
    (r"95\% of {BERT} \& {GPT}: 9\%--19\%", "95% of BERT & GPT: 9%–19%"),
    (r"cost $O(n \log n)$ and {\'e}", r"cost $O(n \log n)$ and é"),
    (r"``quoted''~text  with   spaces", "“quoted” text with spaces"),
    (r"a \unknownmacro{x} and a stray \ backslash", "a x and a stray backslash"),
    (r"A \LaTeX{} package, see \url{https://ctan.org/pkg/a_b}",
     "A LaTeX package, see https://ctan.org/pkg/a_b"),
    ("Plain text: no LaTeX at all.", "Plain text: no LaTeX at all."),
])
def test_latex_to_text(latex: str, text: str) -> None:
    assert latex_to_text(latex) == text


@pytest.mark.parametrize(("text", "doi"), [
    ("10.1145/3397271.3401075", "10.1145/3397271.3401075"),
    ("https://doi.org/10.18653/V1/2020.EMNLP-MAIN.550", "10.18653/v1/2020.emnlp-main.550"),
    ("doi:10.1038/s41579-021-00611-w.", "10.1038/s41579-021-00611-w"),
    ("http://dx.doi.org/10.48550/arXiv.1706.03762", "10.48550/arxiv.1706.03762"),
    ("no DOI here", None),
    ("10.12/too-short-a-prefix", None),
])
def test_parse_doi(text: str, doi: str | None) -> None:
    assert parse_doi(text, inside=True) == doi


def test_format_is_told_by_extension_else_by_content() -> None:
    ris = (LIBRARY / "mendeley.ris").read_text(encoding="utf-8")
    bib = (LIBRARY / "zotero.bib").read_text(encoding="utf-8")
    csl = (LIBRARY / "zotero.json").read_text(encoding="utf-8")
    assert parse_library_text(ris, "export.txt").format == RIS
    assert parse_library_text(bib, "export.txt").format == BIBTEX
    assert parse_library_text(csl, "export").format == CSL_JSON
    assert len(parse_library_text(csl, "export").entries) == 4


def _bibtex_library(count: int, *, first: int = 0) -> str:
    return "\n".join(
        f"@article{{paper{i},\n  title = {{A generated study, number {i}, of dense "
        f"retrieval}},\n  author = {{Doe, Jane and M{{\\\"u}}ller, J{{\\\"o}}rg}},\n"
        f"  eprint = {{2401.{i:05d}}},\n  archivePrefix = {{arXiv}},\n"
        f"  abstract = {{We study dense retrieval at 95\\% recall with $O(n)$ cost, "
        f"case {i}.}},\n}}\n" for i in range(first, first + count))


def test_the_number_of_entries_read_is_bounded() -> None:
    bib = parse_bibtex(_bibtex_library(12), "big.bib", 10)
    assert len(bib.entries) == 10
    assert [str(p) for p in bib.problems] == [
        "big.bib:81: more than 10 entries: the rest of the file is not read "
        "(see docs/limits.md)"]
    ris = parse_ris("".join(f"TY  - JOUR\nTI  - Paper {i}\nER  - \n" for i in range(5)),
                    "big.ris", 3)
    assert [e.title for e in ris.entries] == ["Paper 0", "Paper 1", "Paper 2"]
    assert [p.line for p in ris.problems] == [10]
    csl = parse_csl_json(json.dumps([{"title": f"Paper {i}"} for i in range(5)], indent=1),
                         "big.json", 3)
    assert len(csl.entries) == 3 and "more than 3 entries" in csl.problems[0].reason


def test_unusable_files_are_one_line_each(tmp_path: Path) -> None:
    binary = tmp_path / "library.bib"
    binary.write_bytes(bytes(range(256)) * 40)
    empty = tmp_path / "empty.ris"
    empty.write_text("\n\n")
    fifo = tmp_path / "fifo.bib"
    os.mkfifo(fifo)
    reasons = {}
    for path in (binary, empty, fifo, tmp_path / "missing.json", tmp_path):
        with pytest.raises(InputError) as caught:
            read_library_file(path)
        reasons[path.name] = caught.value.reason
    assert reasons == {
        "library.bib": "not a text file (binary data)",
        "empty.ris": "empty file, no entries in it",
        "fifo.bib": "is not a regular file (a FIFO, socket or device); a library file is "
                    "read from a plain file only",
        "missing.json": "no such file",
        tmp_path.name: "is a directory, not a library file",
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("@{}\\\"'=,$%~-[]:\n TY-ERtitle0123456789éa")),
               max_size=300))
def test_the_parsers_never_raise(text: str) -> None:
    for parse in (parse_bibtex, parse_ris, parse_csl_json):
        parsed = parse(text, "fuzz", 100)
        assert all(isinstance(e, PaperEntry) and e.title for e in parsed.entries)
    parse_library_text(text, "fuzz")


# --- the store ----------------------------------------------------------------------------

def _entry(title: str, **fields: Any) -> PaperEntry:
    return PaperEntry(title=title, abstract=fields.pop("abstract", ""), source="lib.bib",
                      **fields)


def test_references_are_stored_once_and_never_candidates(store):
    store.add_entries([_entry("A Paper From A Feed", arxiv_id="2401.00001")], NOW)
    entries = [_entry("A paper from a feed", doi="10.1000/feed", abstract="Its abstract."),
               _entry("Only In My Library", doi="10.1000/mine", abstract="Mine."),
               _entry("Only in my library!")]  # the same paper twice in one library
    added = store.add_references(entries, NOW)
    assert added.new_papers == 1
    feed, mine, again = added.papers
    assert (feed.arxiv_id, feed.doi, feed.abstract) == ("2401.00001", "10.1000/feed",
                                                        "Its abstract.")
    assert mine.row_id == again.row_id and mine.doi == "10.1000/mine"
    assert store.add_references(entries, NOW + timedelta(hours=1)).new_papers == 0
    assert len(store.papers()) == 2  # the corpus has both
    assert [p.title for p in store.papers(references=False)] == ["A Paper From A Feed"]
    assert store.candidate_papers(None) == store.papers(references=False)


def test_entries_match_by_arxiv_id_then_doi_then_title(store):
    store.add_entries([_entry("Arrived From A Feed", arxiv_id="2401.00001"),
                       _entry("Arrived From A Digest File")], NOW)
    first = store.add_references([_entry("The arXiv version's other title",
                                         arxiv_id="2401.00001", doi="10.1000/journal"),
                                  _entry("ARRIVED from a digest file.")], NOW)
    assert first.new_papers == 0
    by_doi = store.add_references([_entry("The journal's own title", doi="10.1000/JOURNAL")],
                                  NOW)
    assert by_doi.new_papers == 0 and by_doi.papers[0].arxiv_id == "2401.00001"
    # Same title, another DOI: another paper (an "Introduction" is not every introduction).
    other = store.add_references([_entry("Arrived from a feed", doi="10.1000/other")], NOW)
    assert other.new_papers == 1
    found = store.find_papers(["10.1000/Journal", "doi:10.1000/other",
                               "https://doi.org/10.1000/journal", "arrived from a digest file"])
    assert found["10.1000/Journal"].arxiv_id == "2401.00001"
    assert found["https://doi.org/10.1000/journal"].arxiv_id == "2401.00001"
    assert found["doi:10.1000/other"].row_id == other.papers[0].row_id
    assert found["arrived from a digest file"].title == "Arrived From A Digest File"


def test_a_reference_that_arrives_in_a_feed_becomes_a_new_paper(store):
    [reference] = store.add_references([_entry("Known Only From A Library",
                                               doi="10.1000/lib")], NOW).papers
    later = NOW + timedelta(days=3)
    feed = PaperEntry(title="Known only from a library", abstract="The feed's abstract.",
                      source="https://export.arxiv.org/rss/cs", arxiv_id="2412.00001",
                      doi="10.1000/lib")
    assert store.add_entries([feed], later).new_papers == 1  # new to the subscribers
    [paper] = store.candidate_papers(NOW)
    assert paper.row_id == reference.row_id
    assert (paper.arxiv_id, paper.doi, paper.first_seen) == ("2412.00001", "10.1000/lib", later)
    assert store.add_entries([feed], later).new_papers == 0


def test_a_paper_another_process_stores_meanwhile_is_that_paper(store, database_url):
    """Their insert commits between this import's look-up and its insert."""
    other = Store.open(database_url)
    try:
        with other.engine.connect() as theirs:
            theirs.execute(insert(papers).values(
                key="2209.11755", arxiv_id="2209.11755", title_key="promptagator",
                title="Promptagator", abstract="short", authors=[], first_seen=NOW))

            def commit_theirs_first(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
                if statement.startswith("INSERT INTO papers") and theirs.in_transaction():
                    theirs.commit()

            event.listen(store.engine, "before_cursor_execute", commit_theirs_first)
            try:
                added = store.add_references([_entry("Promptagator", arxiv_id="2209.11755",
                                                     abstract="the longer abstract")], NOW)
            finally:
                event.remove(store.engine, "before_cursor_execute", commit_theirs_first)
    finally:
        other.close()
    assert added.new_papers == 0
    [paper] = store.papers(references=False)  # theirs, an ordinary paper
    assert (paper.row_id, paper.abstract) == (added.papers[0].row_id, "the longer abstract")


# --- the command --------------------------------------------------------------------------

PROFILE = """\
# Ana's profile: edited by hand, and by digest.
name: Ana Lima
email: ana@example.org
interests:
  - dense retrieval   # the main thing
liked:
  - "Titans: Learning to Memorize at Test Time"   # read it twice
# Papers I did not enjoy:
disliked: []
"""


@pytest.fixture
def stored(store, run_cli, seeds):
    """The five seed digest files and an arXiv API feed, stored."""
    assert run_cli("ingest", *seeds).exit_code == 0
    feed = parse_feed(ARXIV_FEED.read_bytes(), source="https://export.arxiv.org/api/query")
    store.add_entries(feed.entries, NOW)
    return store


def _liked(path: Path) -> list[str]:
    return list(load_profile(path).liked)


def test_import_matches_stores_and_likes_each_paper_once(stored, run_cli, write_profile):
    store = stored
    path = write_profile("ana", text=PROFILE)
    before = store.count_papers()
    files = [LIBRARY / "zotero.bib", LIBRARY / "mendeley.ris", LIBRARY / "zotero.json"]
    result = run_cli("profile", "import", path, *files)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    # 6 + 3 + 4 entries; the DPR paper (bib and RIS, by DOI), ColBERT (RIS and JSON, by DOI)
    # and BERT (bib and JSON, by arXiv id) are one paper each.
    assert result.stdout == (f"{path}: 3 files, 13 entries, 10 papers (4 already stored, 6 "
                             "stored as references); 9 added to liked, 1 already there.\n")
    assert store.count_papers() == before + 6
    liked = _liked(path)
    assert liked == [
        "Titans: Learning to Memorize at Test Time",
        "FollowIR: Evaluating and Teaching Information Retrieval Models to Follow Instructions",
        # by arXiv id: the feed's paper, under the feed's title
        "Testing Deep Learning Models: A First Comparative Study of Multiple Testing Techniques",
        "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
        "Dense Passage Retrieval for Open-Domain Question Answering",
        "Réseaux de neurones profonds pour la recherche d'information : à quoi servent les "
        "résumés ?",
        "Attention is all you need",
        "ColBERT: Efficient and Effective Passage Search via Contextualized Late Interaction "
        "over BERT",
        "KeNet:Knowledge-enhanced Doc-Label Attention Network for Multi-label text "
        "classification",
        "Genome-scale models of Escherichia coli metabolism",
    ]
    found = store.find_papers(liked)
    assert len({p.row_id for p in found.values()}) == len(liked)  # each names its own paper
    titans = found[liked[0]]
    assert (titans.arxiv_id, titans.doi) == ("2501.00663", "10.48550/arxiv.2501.00663")
    bert = found[liked[3]]
    assert bert.abstract.startswith("We introduce a new language representation model")
    assert bert.authors[0] == "Jacob Devlin"
    assert found[liked[4]].doi == "10.18653/v1/2020.emnlp-main.550"

    text = path.read_text(encoding="utf-8")
    assert text.startswith("# Ana's profile: edited by hand, and by digest.\n")
    assert '  - dense retrieval   # the main thing\n' in text
    assert '  - "Titans: Learning to Memorize at Test Time"   # read it twice\n' in text
    # The comment before `disliked:` stays before it, after the last liked paper.
    assert text.endswith('  - "Genome-scale models of Escherichia coli metabolism"\n'
                         "# Papers I did not enjoy:\ndisliked: []\n")

    again = run_cli("profile", "import", path, *files)
    assert again.exit_code == 0, again.output
    assert again.stdout.endswith("10 papers (10 already stored, 0 stored as references); 0 "
                                 "added to liked, 10 already there.\n")
    assert path.read_text(encoding="utf-8") == text
    assert store.count_papers() == before + 6


def test_imported_references_are_never_offered(stored, run_cli, write_profile, config_file,
                                               settings, tmp_path):
    store = stored
    ana = write_profile("ana", text=PROFILE)
    assert run_cli("profile", "import", ana, LIBRARY / "zotero.bib",
                   LIBRARY / "mendeley.ris").exit_code == 0
    references = {p.key for p in store.papers()} - {p.key for p in store.candidate_papers(None)}
    assert len(references) == 5
    # Bo wants exactly what the references are about; they are not among his candidates.
    bo = write_profile("bo", interests=["dense passage retrieval", "BERT pre-training",
                                        "attention transformer", "recherche d'information"])
    ranked = run_cli("rank", bo, "--top", "30", "--json")
    assert ranked.exit_code == 0, ranked.output
    picks = json.loads(ranked.stdout)["picks"]
    assert picks and not {p["id"] for p in picks} & references

    run = EditionRun(store, settings)
    assert not {p.key for p in run.candidates(NOW - timedelta(days=7)).papers} & references
    dry = run_cli("-c", config_file, "send", "--dry-run")
    assert dry.exit_code == 0, dry.output
    [email] = [p for p in (tmp_path / "outbox").iterdir() if p.name.startswith("bo-")]
    sent = email.read_bytes()
    assert b"Dense Passage Retrieval" not in sent and b"Attention is all" not in sent


def test_bad_entries_are_reported_by_line_and_the_rest_imported(stored, run_cli,
                                                                write_profile):
    path = write_profile("ana", text=PROFILE)
    broken = LIBRARY / "broken.bib"
    latin1 = LIBRARY / "latin1.bib"
    result = run_cli("profile", "import", path, broken, latin1, LIBRARY / "broken.json")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"{broken}:11: no title; entry skipped",
        f"{broken}:16: title runs into the next field (a comma missing after it?); entry "
        "skipped",
        f"{broken}:22: entry not read: Expected comma after entry key, but found =",
        f"{broken}:26: entry not read: Unexpected block start: `@article`. Was still looking "
        "for field-value closing `,` or `}`",
        f"{latin1}:2: not valid UTF-8; read as Windows-1252",
        f"{LIBRARY / 'broken.json'}:4: not a CSL-JSON item (an object with a title); skipped",
        f"{LIBRARY / 'broken.json'}:5: no title; entry skipped",
        f"{LIBRARY / 'broken.json'}:8: not valid JSON: Unterminated string starting at "
        "(column 43); the rest is not read",
    ]
    assert "Traceback" not in result.output
    assert _liked(path)[1:] == [
        "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks",
        "Language Models are Few-Shot Learners",
        "Über die Dichte von Retrieval-Modellen für deutsche Texte",
    ]


def test_exit_status_is_1_only_when_a_file_or_everything_is_unreadable(stored, run_cli,
                                                                       write_profile,
                                                                       tmp_path):
    path = write_profile("ana", text=PROFILE)
    missing = tmp_path / "missing.bib"
    partly = run_cli("profile", "import", path, LIBRARY / "not-a-library.txt", missing,
                     LIBRARY / "mendeley.ris")
    assert partly.exit_code == 1
    assert partly.stderr.splitlines() == [
        f"{LIBRARY / 'not-a-library.txt'}: not a BibTeX, RIS or CSL-JSON library (export it "
        "from your reference manager in one of these)",
        f"{missing}: no such file"]
    assert "3 added to liked" in partly.stdout  # the readable file was imported

    nothing = run_cli("profile", "import", path, missing)
    assert nothing.exit_code == 1 and "0 entries" in nothing.stdout

    broken_profile = write_profile("bo", text="name: Bo\nemail: [\n")
    refused = run_cli("profile", "import", broken_profile, LIBRARY / "zotero.bib")
    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"digest: error: {broken_profile}:")
    assert len(refused.stderr.splitlines()) == 1


def test_an_empty_flow_list_becomes_a_block_list_with_its_comments(write_profile):
    path = write_profile("ana", text="name: Ana\nemail: ana@example.org\n"
                                     "liked: []   # none yet\n# what I disliked:\n"
                                     "disliked: []\n")
    assert add_liked(path, ["2401.00001", "A Title", "a title!", "arXiv:2401.00001v2"]) == 2
    assert path.read_text(encoding="utf-8") == (
        'name: Ana\nemail: ana@example.org\nliked:      # none yet\n  - "2401.00001"\n'
        '  - "A Title"\n# what I disliked:\ndisliked: []\n')
    assert add_liked(path, ["a title", "2401.00001"]) == 0


@pytest.mark.slow
def test_a_generated_library_of_5000_entries_imports(store, run_cli, write_profile,
                                                     tmp_path):
    """The speed is measured by benchmarks/library_import.py; this checks the result."""
    library = tmp_path / "library.bib"
    library.write_text(_bibtex_library(5000), encoding="utf-8")
    path = write_profile("ana", text=PROFILE.replace(
        '  - "Titans: Learning to Memorize at Test Time"   # read it twice\n', ""
    ).replace("liked:\n", "liked: []\n"))
    result = run_cli("profile", "import", path, library)
    assert result.exit_code == 0, result.output
    assert "5,000 entries, 5,000 papers (0 already stored, 5,000 stored as references); " \
           "5,000 added to liked" in result.stdout
    liked = _liked(path)
    assert len(liked) == 5000 and liked[4999] == "A generated study, number 4999, of dense " \
                                                 "retrieval"
    assert len(store.find_papers(liked)) == 5000
    # The profile is full: what is imported next is stored, and said not to fit.
    more = tmp_path / "more.bib"
    more.write_text(_bibtex_library(3, first=5000), encoding="utf-8")
    full = run_cli("profile", "import", path, library, more)
    assert full.exit_code == 0, full.output
    assert full.stderr == (f"{path}: liked holds at most 5,000 papers: 3 imported papers were "
                           "stored but not added to liked (see docs/limits.md)\n")
    assert len(_liked(path)) == 5000 and store.count_papers() == 5003


def test_a_disliked_paper_stays_disliked(stored, run_cli, write_profile):
    path = write_profile("ana", text=PROFILE.replace(
        "disliked: []", 'disliked: ["FollowIR: Evaluating and Teaching Information Retrieval '
                        'Models to Follow Instructions"]'))
    result = run_cli("profile", "import", path, LIBRARY / "zotero.bib")
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"{path}: 1 imported papers are in disliked and were left there "
                             "(`digest profile like` moves one)\n")
    assert "4 added to liked, 1 already there" in result.stdout
    assert len(load_profile(path).disliked) == 1
    assert not any(title.startswith("FollowIR") for title in _liked(path))


def test_import_library_reports_what_it_did(stored, write_profile):
    path = write_profile("ana", text=PROFILE)
    report = import_library(stored, path, [LIBRARY / "zotero.json"], now=NOW)
    assert (report.files, report.entries, report.papers, report.new_papers, report.added,
            report.already_liked, report.problems) == (1, 4, 4, 3, 4, 0, ())


def test_an_import_shows_its_progress_file_by_file(stored, write_profile):
    """What shows progress is told the files to read, and each one read (a file that
    cannot be read counts too)."""
    from contextlib import contextmanager

    path = write_profile("ana", interests=["retrieval"])
    shown: list[tuple[str, int | None, str]] = []
    done: list[int] = []

    @contextmanager
    def recorded(label: str, total: int | None = None, *, unit: str = ""):
        shown.append((label, total, unit))
        yield done.append

    files = [LIBRARY / "zotero.json", LIBRARY / "mendeley.ris", LIBRARY / "not-a-library.txt"]
    import_library(stored, path, files, now=NOW, show_progress=recorded)
    assert shown == [("Reading libraries", 3, "file")] and done == [1, 1, 1]
