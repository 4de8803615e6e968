"""Digest file ingest: seed files, hostile variants, bad files, year inference, robustness,
and the progress a long ingest shows."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.errors import InputError
from digest.identity import normalise_title
from digest.ingest.digestfile import DigestParse, infer_date, parse_digest_text
from digest.ingest.files import read_digest_file
from digest.ingest.storing import ingest_files
from digest.progress import progress

from .running import digest_cli

DIGESTS = Path(__file__).parent / "data" / "digests"
REFERENCE = date(2026, 11, 25)
SEED_DAYS = {
    "000": date(2026, 3, 11),
    "001": date(2026, 3, 11),
    "002": date(2026, 3, 11),
    "003": date(2026, 8, 11),
    "004": date(2026, 4, 24),
}
# An abstract-shaped paragraph (long enough, several sentences) for small hand-made texts.
ABSTRACT = (
    "We study how large language models follow instructions. We find that they ignore most "
    "of them. We release the code and the data."
)


# --- hostile variants: tests/data/digests/<case>.txt against <case>.expected.json ---------


def _cases() -> Iterator[Any]:
    for path in sorted(DIGESTS.glob("*.txt")):
        expected = json.loads(path.with_suffix(".expected.json").read_text(encoding="utf-8"))
        marks = []
        if "xfail" in expected:
            marks.append(pytest.mark.xfail(strict=True, reason=expected["xfail"]))
        yield pytest.param(path, expected, id=path.stem, marks=marks)


def _line_order(line: int | None) -> int:
    return -1 if line is None else line


@pytest.mark.parametrize(("path", "expected"), list(_cases()))
def test_digest_case(path: Path, expected: dict[str, Any]) -> None:
    parsed = read_digest_file(path, date.fromisoformat(expected["reference"]))

    day = date.fromisoformat(expected["day"])
    assert parsed.day == day
    assert [e.title for e in parsed.entries] == expected["titles"]
    assert [e.abstract[:30] for e in parsed.entries] == expected["abstract_prefixes"]
    assert sorted((p.line for p in parsed.problems), key=_line_order) == sorted(
        expected["problem_lines"], key=_line_order
    )
    assert not any(p.fatal for p in parsed.problems)
    authors = expected.get("authors", {})
    arxiv_ids = expected.get("arxiv_ids", {})
    contains = expected.get("abstract_contains", {})
    for entry in parsed.entries:
        assert entry.published == day
        assert list(entry.authors) == authors.get(entry.title, [])
        assert entry.arxiv_id == arxiv_ids.get(entry.title)
        assert contains.get(entry.title, "") in entry.abstract


def test_every_case_has_its_expectation() -> None:
    texts = {p.stem for p in DIGESTS.glob("*.txt")}
    expectations = {p.name.removesuffix(".expected.json") for p in DIGESTS.glob("*.json")}
    assert texts == expectations
    assert {"crlf", "bom", "truncated", "truncated_abstract", "noise", "no_abstract", "no_date",
            "feb29", "latin1"} <= texts


# --- the five real seed files -------------------------------------------------------------


def test_seeds_give_all_their_papers(seeds: list[Path]) -> None:
    parses = [read_digest_file(path, REFERENCE) for path in seeds]
    entries = [entry for parsed in parses for entry in parsed.entries]
    assert len(entries) == 314
    assert len({normalise_title(entry.title) for entry in entries}) == 283
    assert all(entry.title and entry.abstract for entry in entries)


@pytest.mark.parametrize("prefix", sorted(SEED_DAYS))
def test_seed_day_and_no_problems(seeds: list[Path], prefix: str) -> None:
    (path,) = [p for p in seeds if p.name.startswith(prefix)]
    parsed = read_digest_file(path, REFERENCE)
    assert parsed.day == SEED_DAYS[prefix]
    assert parsed.problems == ()
    assert {entry.published for entry in parsed.entries} == {SEED_DAYS[prefix]}


# --- year inference -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("month", "day", "expected"),
    [
        (12, 30, date(2025, 12, 30)),  # later in the year than the reference: last year
        (2, 29, date(2024, 2, 29)),  # only leap years have it
        (11, 25, date(2026, 11, 25)),  # the reference day itself
        (11, 26, date(2025, 11, 26)),  # the day after the reference
        (3, 11, date(2026, 3, 11)),
    ],
)
def test_infer_date(month: int, day: int, expected: date) -> None:
    assert infer_date(month, day, REFERENCE) == expected


@pytest.mark.parametrize(("month", "day"), [(4, 31), (2, 30), (13, 1), (1, 0)])
def test_infer_date_of_no_real_day(month: int, day: int) -> None:
    assert infer_date(month, day, REFERENCE) is None


def test_impossible_date_line_is_a_problem_not_a_crash() -> None:
    text = "Apr 31\n\nA Title\n\n" + ABSTRACT + "\n"
    parsed = parse_digest_text(text, source="s", reference=REFERENCE)
    assert [p.line for p in parsed.problems if p.line is not None] == [1]
    assert [e.title for e in parsed.entries] == ["A Title"]


# --- files that are not digests at all ----------------------------------------------------


def _junk_with_nul() -> bytes:
    return random.Random(1).randbytes(4096) + b"\x00"


def _junk_without_nul() -> bytes:
    return random.Random(2).randbytes(4096).replace(b"\x00", b"\x01")


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(PNG, "binary", id="png"),
        pytest.param(_junk_with_nul(), "binary", id="random-bytes-with-nul"),
        pytest.param(_junk_without_nul(), "binary", id="random-bytes-without-nul"),
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b" \n\n\t \r\n  \n", "empty", id="whitespace-only"),
    ],
)
def test_unusable_file_raises_input_error(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "digest.txt"
    path.write_bytes(data)
    with pytest.raises(InputError, match=reason) as caught:
        read_digest_file(path, REFERENCE)
    assert caught.value.path == path
    assert str(path) in str(caught.value)


def test_directory_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="directory") as caught:
        read_digest_file(tmp_path, REFERENCE)
    assert caught.value.path == tmp_path


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_fifo_or_device_raises_input_error_without_reading(tmp_path: Path, kind: str) -> None:
    """A FIFO would block the read until a writer came; /dev/zero would never end."""
    path = tmp_path / "digest.txt"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(InputError, match="is not a regular file"):
        read_digest_file(path, REFERENCE)


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "digest.txt"
    with pytest.raises(InputError, match="no such file") as caught:
        read_digest_file(path, REFERENCE)
    assert caught.value.path == path


def test_bom_only_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "digest.txt"
    path.write_bytes(b"\xef\xbb\xbf\n")
    with pytest.raises(InputError, match="empty"):
        read_digest_file(path, REFERENCE)


def test_latin1_note_line_with_cr_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "digest.txt"
    text = "new\r\rMar 11\r\rRagnar\u00f6k: A Reusable RAG Framework\r\r" + ABSTRACT + "\r"
    path.write_bytes(text.encode("cp1252"))
    parsed = read_digest_file(path, REFERENCE)
    assert [e.title for e in parsed.entries] == ["Ragnar\u00f6k: A Reusable RAG Framework"]
    assert [p.line for p in parsed.problems] == [5]


# --- lines the parser must not misread ----------------------------------------------------


def test_long_s_month_does_not_crash() -> None:
    """The long s of "ſep 1" casefolds to "s", yet the line is no date line: it is kept as
    text (a title without an abstract, reported as such), and the day stays March 11."""
    parsed = parse_digest_text("Mar 11\n\n\u017fep 1\n", source="s", reference=REFERENCE)
    assert parsed.day == date(2026, 3, 11)
    assert [(e.title, e.source_line, e.published) for e in parsed.entries] == [
        ("\u017fep 1", 3, date(2026, 3, 11))]
    assert [str(p) for p in parsed.problems] == [
        "s:3: entry has no abstract; kept with its title only"]


def test_title_starting_with_month_letters_is_a_title() -> None:
    text = "Mar 11\n\nMarathon 2\n\n" + ABSTRACT + "\n"
    parsed = parse_digest_text(text, source="s", reference=REFERENCE)
    assert [e.title for e in parsed.entries] == ["Marathon 2"]
    assert parsed.problems == ()


# --- robustness: never raise, problems point at real lines --------------------------------


def _seed_lines() -> list[str]:
    lines: list[str] = []
    for path in sorted((DIGESTS / "seeds").glob("*.txt")):
        lines.extend(path.read_text(encoding="utf-8").split("\n")[:40])
    return lines


SEED_LINES = _seed_lines()
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Sept.", "October",
          "Dec", "mar", "NOV"]
LINE = st.one_of(
    st.sampled_from(SEED_LINES),
    st.just(""),
    st.text(max_size=40),
    st.builds(lambda m, d: f"{m} {d}", st.sampled_from(MONTHS), st.integers(0, 99)),
    st.builds(lambda m, d, y: f"{m} {d}, {y}", st.sampled_from(MONTHS), st.integers(0, 40),
              st.integers(0, 9999)),
    st.sampled_from(["42", "\u25b2 17", "Submitted by someone", "Authors: A, B", "Authors:",
                     "arXiv:2401.01234", "https://arxiv.org/abs/2401.01234v2", "\ufeff",
                     "\u00b7 5 authors", "by - x", "   ", "\t"]),
)
NEWLINE = st.sampled_from(["\n", "\r\n", "\r"])
MIXED_TEXT = st.builds(lambda lines, nl: nl.join(lines), st.lists(LINE, max_size=60), NEWLINE)


def _lines(text: str) -> list[str]:
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _check(text: str, parsed: DigestParse) -> None:
    lines = _lines(text.removeprefix("\ufeff"))
    for problem in parsed.problems:
        if problem.line is not None:
            assert 1 <= problem.line <= len(lines)
            assert lines[problem.line - 1].replace("\ufeff", "").strip()
    for entry in parsed.entries:
        assert entry.source_line is not None and 1 <= entry.source_line <= len(lines)
        assert entry.title.strip()
    if not parsed.entries:
        assert any(p.fatal for p in parsed.problems)


@settings(deadline=None)
@given(st.text())
def test_parser_never_raises_on_any_text(text: str) -> None:
    _check(text, parse_digest_text(text, source="s", reference=REFERENCE))


@settings(deadline=None, max_examples=300)
@given(MIXED_TEXT)
def test_parser_never_raises_on_mixed_lines(text: str) -> None:
    _check(text, parse_digest_text(text, source="s", reference=REFERENCE))


def test_links_under_a_title_give_its_arxiv_id_and_page():
    """A digest file that carries links keeps them: an arXiv id from a Hugging Face link
    (hf.co or huggingface.co), an arXiv link or an `arXiv:` line, with the page linked;
    another page is kept as the paper's link; a second link is reported, not taken."""
    text = "\n".join([
        "Mar 11", "",
        "Titans: Learning to Memorize at Test Time", "https://hf.co/papers/2501.00663", "",
        "We present a neural long-term memory module that learns to memorize.", "",
        "FollowIR: Evaluating and Teaching Retrieval Models to Follow Instructions", "",
        "We introduce a dataset for following instructions in retrieval.",
        "arXiv:2403.15246", "https://arxiv.org/abs/2403.15246", "",
        "A Paper Without an arXiv Id", "<https://example.org/papers/42>", "",
        "An abstract of a paper published elsewhere, with its own page.", ""])
    parsed = parse_digest_text(text, source="links.txt", reference=REFERENCE)
    titans, follow, other = parsed.entries
    assert (titans.arxiv_id, titans.url) == ("2501.00663", "https://hf.co/papers/2501.00663")
    assert (follow.arxiv_id, follow.url) == ("2403.15246", "https://arxiv.org/abs/2403.15246")
    assert (other.arxiv_id, other.url) == (None, "https://example.org/papers/42")
    assert [(p.line, p.reason) for p in parsed.problems] == [
        (12, "link line (the entry has one already)")]


# --- progress: long ingests say how far they are ------------------------------------------


def write_big_digest(path: Path, entries: int) -> Path:
    """A generated digest file of `entries` distinct papers."""
    rng = random.Random(0)
    words = ("attention retrieval dense sparse model language vision graph agent policy "
             "token kernel reward transformer").split()
    lines = ["new", "", "Get trending papers in your email inbox!", "", "Mar 11", ""]
    for n in range(entries):
        title = " ".join(rng.choice(words).title() for _ in range(7)) + f" {n}"
        lines += [title, "", " ".join(rng.choice(words) for _ in range(60)) + ". " + ABSTRACT,
                  ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


class Ticks:
    """A clock that moves `step_s` every time it is read."""

    def __init__(self, step_s: float):
        self.now, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        self.now += self.step_s
        return self.now


def progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "digest.progress"]


def test_progress_off_a_terminal_is_a_line_per_tenth_and_silent_for_short_work(caplog):
    caplog.set_level(logging.INFO, logger="digest.progress")
    with progress("Storing big.txt", 1000, unit="paper", stream=io.StringIO(),
                  clock=Ticks(0.3)) as advance:
        for _ in range(100):
            advance(10)
    lines = progress_lines(caplog)
    assert lines[0] == "Storing big.txt: 100 of 1,000 papers (10%) in 3 s, about 27 s left"
    assert lines[-1] == "Storing big.txt: 1,000 of 1,000 papers (100%) in 30 s"
    assert [int(re.search(r"\((\d+)%\)", line).group(1)) for line in lines] == [
        10, 20, 30, 40, 50, 60, 70, 80, 90, 100]  # a line per tenth

    caplog.clear()
    with progress("Quick", 5, unit="file", stream=io.StringIO(), clock=Ticks(0.1)) as advance:
        for _ in range(5):
            advance(1)
    assert progress_lines(caplog) == []  # under a second: nothing to say

    with progress("Unknown", None, unit="file", stream=io.StringIO(),
                  clock=Ticks(1.0)) as advance:
        for _ in range(12):
            advance(1)
    assert progress_lines(caplog) == ["Unknown: 1 file in 1 s", "Unknown: 6 files in 6 s",
                                      "Unknown: 11 files in 11 s",
                                      "Unknown: 12 files in 13 s, done"]

    caplog.clear()
    with progress("Hushed", 10, quiet=True, clock=Ticks(9)) as advance:
        advance(10)
    assert progress_lines(caplog) == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_rich_bar_and_a_nested_one_shares_it(caplog):
    caplog.set_level(logging.INFO, logger="digest.progress")
    screen = Terminal()
    with progress("Reading digest files", 2, unit="file", stream=screen) as files:
        with progress("Storing big.txt", 4, unit="paper", stream=screen) as papers:
            papers(4)
        files(2)
    assert "Reading digest files" in screen.getvalue() and "papers" in screen.getvalue()
    assert progress_lines(caplog) == []  # a bar, not log lines


def test_ingest_tells_its_progress_of_each_file_and_each_paper(store, seeds, tmp_path):
    told: list[tuple[str, int]] = []

    @contextmanager
    def shown(path: Path, entries: int) -> Iterator[Callable[[int], None]]:
        told.append((path.name, entries))
        yield lambda n: told.append(("stored", n))

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    report = ingest_files(store, [seeds[0], empty], now=datetime.now(UTC), progress=shown)

    assert told[0] == (seeds[0].name, report.entries) and told[-1] == ("empty.txt", 0)
    assert told[1:-1] == [("stored", 1)] * report.entries
    assert len(report.rejected) == 1


@pytest.mark.slow
def test_a_large_file_gives_progress_lines_when_not_on_a_terminal(tmp_path):
    """`digest ingest` of a 60,000-paper file, its stderr a pipe (a real process): log lines
    on the way (after its first quiet second) and one when done. (The file is large enough
    for its papers to take more than that second to store: 5,000 once did, no longer.)"""
    big = write_big_digest(tmp_path / "big.txt", 60_000)
    command, env = digest_cli(tmp_path / "digest.toml")
    env.pop("DIGEST_CONFIG", None)
    (tmp_path / "digest.toml").write_text('data_dir = "data"\n')

    done = subprocess.run([*command, "ingest", str(big), "--date", "2026-03-11"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)

    assert done.returncode == 0, done.stderr
    assert done.stdout == ("1 file, 60,000 entries, 60,000 new papers (60,000 stored), "
                           "0 files rejected.\n")
    lines = [line.partition(" digest.progress ")[2] for line in done.stderr.splitlines()
             if " INFO digest.progress Storing big.txt: " in line]
    assert len(lines) >= 2, done.stderr
    assert re.fullmatch(r"Storing big\.txt: [\d,]+ of 60,000 papers \(\d+%\) in \d+ s.*",
                        lines[0]) and "(100%)" not in lines[0]
    assert re.fullmatch(r"Storing big\.txt: 60,000 of 60,000 papers \(100%\) in \d+ s",
                        lines[-1])
