"""How fast `digest ingest` stores a large digest file, against the database driver alone.

Writes a digest file of N entries (default 100,000) in the format of the real ones
(tests/data/digests/seeds, ../shared/seeds): header lines, a date line per day, then per
paper an upvote count now and then, its title, an authors line and an arXiv or Hugging Face
link for most, a blank line and its abstract (the real arXiv papers in benchmarks/data,
recombined past the 1,504 there are). Planted in it, as real files carry them: papers of the
seed files under another form of their title (a third with an arXiv link the seeds lack),
papers repeated within the file (the same arXiv id or title, some a few entries apart, some
far; some with a longer abstract, some gaining their link), entries without an abstract,
and lines that must be reported (upvote counts, "Submitted by" lines, separators without
words, a second link under a title).

On each engine: the five seed files, then the big file, through `ingest_files` (the function
`digest ingest` runs), then the big file again (which must add and change nothing). The
baseline, in the same run: the same rows (the papers and sources that ingest stored) written
into an empty copy of the schema by the database driver alone, one `executemany` per table
in one transaction: the ceiling for this schema. Each is run `--repeat` times, alternated,
and the best of each compared. Then the peak memory of the ingest, in a child process, at
two file sizes: how far the ingest takes the RSS above what it was before (the peak reset
after the imports, on Linux).

The stored records are checked (one per paper, every planted line reported, nothing new on
the second ingest) and summed up in a fingerprint (every column but row ids), to compare the
records of two versions of the code.

    python benchmarks/ingest.py [--entries 100000] [--engine sqlite|postgresql|both]
        [--repeat 2] [--memory-entries 20000,100000 | --memory-entries 0]

PostgreSQL: DIGEST_TEST_POSTGRES (default postgresql+psycopg://postgres@127.0.0.1:5432/test),
each run in a schema of its own, dropped afterwards; skipped, saying why, without a server.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# Run as a script, the repository root is not on sys.path; the `benchmarks` package is.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.databases import postgres_schema  # noqa: E402
from digest.identity import normalise_title  # noqa: E402
from digest.ingest.digestfile import _DATE_LINE, is_noise, looks_like_abstract  # noqa: E402
from digest.ingest.files import read_digest_file  # noqa: E402
from digest.ingest.storing import ingest_files  # noqa: E402
from digest.models import IngestReport  # noqa: E402
from digest.store import Store  # noqa: E402

SEEDS = sorted((Path(__file__).resolve().parent.parent / "tests" / "data" / "digests"
                / "seeds").glob("*.txt"))
POSTGRES = os.environ.get("DIGEST_TEST_POSTGRES",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REFERENCE = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # the day the files were written
NOW = datetime(2026, 11, 25, 13, 0, tzinfo=UTC)  # when they are ingested
ENTRIES_PER_DAY = 600  # a busy day of a year's backfill
NAMES = ["Ana Lima", "Ben Okafor", "Chen Wei", "Danqi Chen", "Wen-tau Yih", "Jörg Müller",
         "Søren Østergaard", "Barlas Oğuz", "Zhuyun Dai", "Grace Hopper", "Ali Behrouz",
         "Peilin Zhong", "Vahab Mirrokni", "Akari Asai", "Omar Khattab", "Matei Zaharia"]


# --- the file ----------------------------------------------------------------------------

@dataclass
class Planted:
    """What the generated file holds, to check what ingest made of it."""

    entries: int = 0
    papers: int = 0  # distinct papers new to the store (the seeds' ones are not)
    repeats: int = 0  # entries of a paper already in the file
    from_seeds: int = 0  # entries of a paper of the seed files
    without_abstract: int = 0
    report_lines: set[int] = field(default_factory=set)  # lines that must be reported
    size: int = 0  # bytes


@dataclass
class _Paper:
    title: str
    abstract: str
    arxiv_id: str | None
    authors: list[str]


def _papers(n: int, rng: random.Random, taken: set[str]) -> list[_Paper]:
    """`n` papers with titles of their own (not a seed's), as the parser reads them."""
    from benchmarks.rank_speed import corpus  # brings the ranking modules: not into the children

    found: list[_Paper] = []
    for paper in corpus(n + n // 10 + 100, rng):
        title = " ".join(paper["title"].split())
        abstract = " ".join(paper["abstract"].split())
        key = normalise_title(title)
        if (key in taken or not key or title.endswith(".") or is_noise(title)
                or _DATE_LINE.match(title) or looks_like_abstract(title)
                or not looks_like_abstract(abstract)):
            continue
        taken.add(key)
        number = len(found)
        # A third without an arXiv id (a paper Hugging Face lists from elsewhere).
        arxiv_id = (None if rng.random() < 0.3
                    else f"{24 + number // 120_000}{number // 10_000 % 12 + 1:02d}."
                         f"{number % 10_000 + 10_000:05d}")
        found.append(_Paper(title, abstract, arxiv_id, rng.sample(NAMES, rng.randint(1, 5))))
        if len(found) == n:
            return found
    raise SystemExit(f"the corpus gave {len(found):,} usable papers of {n:,}")


def _seed_papers() -> list[_Paper]:
    papers: dict[str, _Paper] = {}
    for path in SEEDS:
        for entry in read_digest_file(path, REFERENCE.date()).entries:
            papers.setdefault(normalise_title(entry.title),
                              _Paper(entry.title, entry.abstract, None, []))
    return list(papers.values())


def _link(arxiv_id: str, rng: random.Random) -> str:
    return rng.choice([f"https://arxiv.org/abs/{arxiv_id}", f"https://hf.co/papers/{arxiv_id}",
                       f"https://huggingface.co/papers/{arxiv_id}", f"arXiv:{arxiv_id}"])


def write_digest(path: Path, entries: int, seed: int = 0) -> Planted:
    """Write a digest file of `entries` entries as described above; say what it holds."""
    rng = random.Random(seed)
    seeds = _seed_papers()
    rng.shuffle(seeds)
    taken = {normalise_title(p.title) for p in seeds}
    fresh = _papers(entries, rng, taken)
    fresh.reverse()  # popped from the end: in the corpus's order
    planted = Planted(entries=entries)
    lines = ["new", "", "Get trending papers in your email inbox!", "", "Subscribe", "",
             "byAK and the research community", ""]
    seen: list[_Paper] = []
    day = REFERENCE.date()
    cut = False
    for n in range(entries):
        if n % ENTRIES_PER_DAY == 0:
            lines += [f"{day:%b} {day.day}", ""]
            day -= timedelta(days=1)
        chance = rng.random()
        title_form = None
        if seeds and chance < 0.002:  # a seed file's paper, its title in capitals
            paper = seeds.pop()
            if rng.random() < 0.3:  # and the arXiv link the seed file lacked
                paper.arxiv_id = f"2301.{len(seeds):05d}"
            title_form = paper.title.upper()
            planted.from_seeds += 1
        elif seen and chance < 0.032:  # a paper met earlier in this file
            recent = rng.random() < 0.5  # a few entries back, or anywhere before
            paper = seen[-rng.randint(1, min(40, len(seen)))] if recent else rng.choice(seen)
            title_form = paper.title if rng.random() < 0.5 else paper.title.lower()
            planted.repeats += 1
        else:
            paper = fresh.pop()
            seen.append(paper)
            planted.papers += 1
        if rng.random() < 0.15:
            planted.report_lines.add(len(lines) + 1)
            lines += [rng.choice([f"▲ {rng.randint(1, 400)}", str(rng.randint(1, 400))]), ""]
        title_line = len(lines) + 1
        lines.append(title_form or paper.title)
        if paper.authors and rng.random() < 0.5:
            lines.append("Authors: " + ", ".join(paper.authors))
        if paper.arxiv_id and rng.random() < 0.7:
            lines.append(_link(paper.arxiv_id, rng))
            if rng.random() < 0.002:
                planted.report_lines.add(len(lines) + 1)
                lines.append(_link(paper.arxiv_id, rng))
        if rng.random() < 0.03:
            planted.report_lines.add(len(lines) + 1)
            lines.append(f"Submitted by {rng.choice(NAMES)}")
        if n and not cut and rng.random() < 0.003:  # an entry cut down to its title
            planted.report_lines.add(title_line)
            planted.without_abstract += 1
            lines.append("")
            cut = True  # never two in a row: the second title would read as an abstract
            continue
        cut = False
        abstract = paper.abstract
        if title_form is not None and rng.random() < 0.3:
            abstract += " Code and data are released with the paper."  # a fuller abstract
        lines += ["", abstract, ""]
        if rng.random() < 0.002:
            planted.report_lines.add(len(lines) + 1)
            lines += ["* * *", ""]
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    planted.size = path.stat().st_size
    return planted


# --- the databases -----------------------------------------------------------------------

def _postgres_problem() -> str | None:
    parts = urlsplit(POSTGRES.replace("+psycopg", ""))
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as exc:
        return f"PostgreSQL is not reachable at {host}:{port} ({exc.strerror or exc})"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'digest[postgres]')"
    return None


@contextmanager
def database(engine: str, folder: Path, name: str) -> Iterator[str]:
    """The URL of an empty database: a SQLite file, or a new PostgreSQL schema (dropped
    afterwards)."""
    if engine == "sqlite":
        yield f"sqlite:///{folder / (name + '.sqlite3')}"
        return
    with postgres_schema(POSTGRES, f"bench_{name}") as url:
        yield url


_PAPER_COLUMNS = ("id", "key", "arxiv_id", "title_key", "title", "abstract", "authors", "url",
                  "published", "first_seen", "reference", "doi")
_SOURCE_COLUMNS = ("id", "paper_id", "source", "source_line", "seen_at")


def _rows(store: Store, table: str, columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """The table's rows as its driver gives them (JSON as text), by id."""
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY id")
        rows = cursor.fetchall()
    finally:
        raw.close()
    if "authors" in columns:
        at = columns.index("authors")
        rows = [(*r[:at], r[at] if isinstance(r[at], str) else json.dumps(r[at]), *r[at + 1:])
                for r in rows]
    return [tuple(r) for r in rows]


def fingerprint(store: Store) -> str:
    """A digest of every stored paper and source, row ids left out, sources by file name
    (the scratch folder's differs from run to run)."""
    papers = _rows(store, "papers", _PAPER_COLUMNS)
    keys = {row[0]: row[1] for row in papers}
    digest = hashlib.sha256()
    for row in sorted(repr(_plain(r[1:])) for r in papers):
        digest.update(row.encode())
    sources = _rows(store, "paper_sources", _SOURCE_COLUMNS)
    for row in sorted(repr(_plain((keys[r[1]], Path(r[2]).name, *r[3:]))) for r in sources):
        digest.update(row.encode())
    return digest.hexdigest()[:16]


def _plain(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Values alike whatever the engine: dates and times as ISO text, flags as 0/1, JSON
    without its spaces."""
    out: list[Any] = []
    for value in row:
        if isinstance(value, datetime):
            value = value.replace(tzinfo=None).isoformat(" ", "microseconds")
        elif isinstance(value, date):
            value = value.isoformat()
        elif isinstance(value, bool):
            value = int(value)
        elif isinstance(value, str) and value.startswith("["):
            try:
                value = json.dumps(json.loads(value), separators=(",", ":"),
                                   ensure_ascii=False)
            except ValueError:
                pass
        out.append(value)
    return tuple(out)


def write_with_driver(url: str, seed_papers: int, papers: list[tuple[Any, ...]],
                      sources: list[tuple[Any, ...]], seed_sources: int) -> float:
    """Seconds the driver alone takes to write the file's rows (papers and sources, ids
    given) into an empty database holding the seeds' rows: one executemany a table, one
    transaction."""
    store = Store.open(url)  # the schema, its indexes, and the engine's own settings
    raw = store.engine.raw_connection()
    try:
        mark = "?" if store.engine.dialect.paramstyle == "qmark" else "%s"

        def insert(table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
            cursor = raw.cursor()
            cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                               f"({', '.join([mark] * len(columns))})", rows)
            cursor.close()

        insert("papers", _PAPER_COLUMNS, papers[:seed_papers])
        insert("paper_sources", _SOURCE_COLUMNS, sources[:seed_sources])
        raw.commit()
        started = time.perf_counter()
        insert("papers", _PAPER_COLUMNS, papers[seed_papers:])
        insert("paper_sources", _SOURCE_COLUMNS, sources[seed_sources:])
        raw.commit()
        took = time.perf_counter() - started
    finally:
        raw.close()
        store.close()
    return took


# --- the runs ----------------------------------------------------------------------------

def ingest(url: str, paths: list[Path], now: datetime) -> tuple[IngestReport, float]:
    store = Store.open(url)
    try:
        started = time.perf_counter()
        report = ingest_files(store, paths, now=now, reference=REFERENCE)
        return report, time.perf_counter() - started
    finally:
        store.close()


def check(ok: bool, what: str) -> str:
    if not ok:
        print(f"  WRONG: {what}")
    return what


def run_engine(engine: str, big: Path, planted: Planted, folder: Path, repeat: int) -> None:
    """The ingest and the ceiling, `repeat` times each, one after the other (a machine busy
    with other work slows both alike); the best of each, and their ratio."""
    print(f"\n{engine}")
    entries = planted.entries
    took: list[float] = []
    ceilings: list[float] = []
    for attempt in range(repeat):
        with database(engine, folder, f"ingest{attempt}") as url:
            seeded, _ = ingest(url, list(SEEDS), NOW - timedelta(days=1))
            store = Store.open(url)
            seed_papers = store.count_papers()
            seed_sources = len(_rows(store, "paper_sources", ("id",)))
            store.close()

            report, seconds = ingest(url, [big], NOW)
            took.append(seconds)
            if attempt == 0:  # what it stored, and what storing it again does
                store = Store.open(url)
                stored = store.count_papers()
                first = fingerprint(store)
                papers = _rows(store, "papers", _PAPER_COLUMNS)
                sources = _rows(store, "paper_sources", _SOURCE_COLUMNS)
                store.close()

                again, took_again = ingest(url, [big], NOW + timedelta(hours=1))
                store = Store.open(url)
                second = fingerprint(store)
                stored_again = store.count_papers()
                store.close()
        with database(engine, folder, f"ceiling{attempt}") as url:
            ceilings.append(write_with_driver(url, seed_papers, papers, sources, seed_sources))
    best, ceiling = min(took), min(ceilings)

    def seconds_list(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    print(f"  digest ingest (ingest_files)        {best:7.2f} s  {entries / best:9,.0f} papers/s"
          f"  (best of {seconds_list(took)} s)")
    print(f"  ceiling (driver executemany)        {ceiling:7.2f} s  "
          f"{entries / ceiling:9,.0f} papers/s  (best of {seconds_list(ceilings)} s; same rows)")
    print(f"  ratio to the ceiling                {ceiling / best:7.2f}x  (each run: "
          f"{', '.join(f'{c / t:.2f}' for t, c in zip(took, ceilings, strict=True))})")
    print(f"  ingest again (adds nothing)         {took_again:7.2f} s  "
          f"{entries / took_again:9,.0f} papers/s")
    reported = {p.line for p in report.problems if p.path == str(big)}
    print("  records: " + ", ".join([
        check(seeded.new_papers == seed_papers == 283, f"seeds {seed_papers:,} papers"),
        check(report.new_papers == planted.papers
              and stored == seed_papers + planted.papers,
              f"file {report.new_papers:,} new papers ({stored:,} stored)"),
        check(planted.report_lines <= reported,
              f"{len(report.problems):,} lines reported, the {len(planted.report_lines):,} "
              f"planted among them"),
        check(again.new_papers == 0 and stored_again == stored and first == second,
              f"again: {again.new_papers} new, nothing changed"),
        f"fingerprint {first}"]))
    missing = sorted(planted.report_lines - reported)[:5]
    if missing:
        print(f"  planted lines not reported, the first: {missing}")


def _status(field: str) -> int | None:
    """A field of /proc/self/status in bytes (VmRSS: now, VmHWM: the peak); None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child_memory(engine: str, path: Path, url: str) -> None:
    """In a child process: how far the ingest took the RSS above what it was before (its
    peak; Linux: the peak is reset first, so the imports' own peak hides nothing), as JSON."""
    store = Store.open(url)
    store.close()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        before = _status("VmRSS")
    except OSError:
        before = None
    if before is None:  # no /proc: the peak so far, which the imports may have set
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    store = Store.open(url)
    report = ingest_files(store, [path], now=NOW, reference=REFERENCE)
    store.close()
    peak = _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"engine": engine, "entries": report.entries,
                      "peak_growth": peak - before, "peak": peak}))


def measure_memory(engine: str, sizes: list[int], folder: Path) -> None:
    shown = []
    for size in sizes:
        path = folder / f"memory-{size}.txt"
        planted = write_digest(path, size, seed=1)
        with database(engine, folder, f"memory{size}") as url:
            done = subprocess.run([sys.executable, __file__, "--child-memory", str(path),
                                   "--engine", engine, "--url", url],
                                  capture_output=True, text=True, check=False)
        path.unlink()
        if done.returncode != 0:
            print(f"  memory at {size:,} entries: the child failed: {done.stderr[-1500:]}")
            return
        result = json.loads(done.stdout.splitlines()[-1])
        shown.append(f"{size:,} entries ({planted.size / 1e6:,.0f} MB): "
                     f"+{result['peak_growth'] / 1e6:,.0f} MB "
                     f"(peak RSS {result['peak'] / 1e6:,.0f} MB)")
    print("  peak memory of the ingest: " + "; ".join(shown))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--engine", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--memory-entries", default=None,
                        help="the two file sizes whose peak memory is measured, as "
                             "N,M (default: a fifth of --entries, and --entries); 0: none")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of the ingest and of the ceiling, alternated (best of each)")
    parser.add_argument("--child-memory", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory is not None:
        child_memory(args.engine, args.child_memory, args.url)
        return
    sizes = ([args.entries // 5, args.entries] if args.memory_entries is None
             else [int(n) for n in args.memory_entries.split(",") if int(n)])
    engines = ["sqlite", "postgresql"] if args.engine == "both" else [args.engine]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        big = folder / "backfill.txt"
        started = time.perf_counter()
        planted = write_digest(big, args.entries)
        print(f"file: {planted.entries:,} entries, {planted.size / 1e6:,.1f} MB (written in "
              f"{time.perf_counter() - started:.1f} s): {planted.papers:,} distinct papers, "
              f"{planted.repeats:,} repeats, {planted.from_seeds:,} papers of the seed files, "
              f"{planted.without_abstract:,} without an abstract, "
              f"{len(planted.report_lines):,} lines to report")
        for engine in engines:
            if engine == "postgresql":
                problem = _postgres_problem()
                if problem is not None:
                    print(f"\npostgresql: skipped: {problem}")
                    continue
            run_engine(engine, big, planted, folder, max(1, args.repeat))
            if sizes:
                measure_memory(engine, sizes, folder)


if __name__ == "__main__":
    main()
