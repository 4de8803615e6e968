"""How long `digest profile import` takes for a reader's whole library.

Writes a Zotero-style BibTeX export of N entries (default 5,000: what a profile's `liked`
list holds) from the real arXiv papers in benchmarks/data (their titles and abstracts,
recombined past the 1,504 there are), with what real exports carry: braces around
capitalised words, LaTeX accents in author names, `\\%` and `$...$` in abstracts, arXiv
eprints, DOIs or neither. A third of the entries are papers the store already holds (some
under another title's form, found by arXiv id or DOI); the others become references. Then
times, as a user runs it, `digest profile import PROFILE library.bib` as a subprocess
(start-up included), then the same import again (which adds nothing), and each stage
in-process: reading and parsing the file, storing, the profile edit.

The baseline, in the same run: bibtexparser's bare parse of the same file (no LaTeX
decoding, no matching, nothing stored), the floor any BibTeX import pays.

    python benchmarks/library_import.py [--entries 5000]
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bibtexparser.entrypoint import parse_string

from digest.ingest.library import read_library_file
from digest.library import import_library
from digest.models import PaperEntry
from digest.store import Store

# Run as a script, the repository root is not on sys.path; the `benchmarks` package is.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.rank_speed import corpus  # noqa: E402

NAMES = [r"M{\"u}ller, J{\"o}rg", r"Fran{\c{c}}ois, Lef{\`e}vre", "Smith, Anna",
         r"O{\u{g}}uz, Barlas", r"{\O}stergaard, S{\o}ren", "Chen, Danqi", "Yih, Wen-tau"]
PROFILE = """\
# A reader's profile; the import adds to `liked` and keeps these comments.
name: Ana Lima
email: ana@example.org
interests:
  - dense retrieval   # the main thing
liked: []
# Papers I did not enjoy:
disliked: []
"""


def escaped(text: str) -> str:
    """As Zotero writes text: BibTeX's special characters escaped."""
    return re.sub(r"[\\{}%&$#_]", lambda m: r"\textbackslash{}" if m.group() == "\\"
                  else "\\" + m.group(), text)


def braced(title: str) -> str:
    """As Zotero writes titles: capitalised words in braces, so BibTeX keeps their case."""
    return " ".join(f"{{{w}}}" if w[:1].isupper() and i else w
                    for i, w in enumerate(escaped(title).split()))


def write_library(path: Path, papers: list[dict[str, str]], rng: random.Random) -> None:
    entries = []
    for i, paper in enumerate(papers):
        abstract = (escaped(paper["abstract"])
                    + r" We reach 95\% recall at $O(n \log n)$ cost.")
        ids = []
        if i % 3 == 0:
            ids.append(f"\teprint = {{24{i % 12 + 1:02d}.{i:05d}}},\n\tarchivePrefix = {{arXiv}},")
        if i % 3 == 1:
            ids.append(f"\tdoi = {{10.1145/{3_000_000 + i}.{i}}},")
        authors = " and ".join(rng.sample(NAMES, 3))
        entries.append(f"@article{{paper_{i},\n\ttitle = {{{braced(paper['title'])}}},\n"
                       f"\tauthor = {{{authors}}},\n\tabstract = {{{abstract}}},\n"
                       + "\n".join(ids) + "\n\tyear = {2024},\n\tmonth = mar,\n}\n")
    path.write_text("\n".join(entries), encoding="utf-8")


def stored_entries(papers: list[dict[str, str]]) -> list[PaperEntry]:
    """Every third paper is stored already, as a feed would have stored it: the same arXiv id
    or DOI under its own form of the title, or the same title."""
    entries = []
    for i, paper in enumerate(papers):
        if i % 3:
            continue
        arxiv_id = f"24{i % 12 + 1:02d}.{i:05d}" if i % 9 == 0 else None
        title = paper["title"].upper() if arxiv_id else paper["title"]
        entries.append(PaperEntry(title=title, abstract=paper["abstract"],
                                  source="https://export.arxiv.org/rss/cs", arxiv_id=arxiv_id))
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=5000)
    args = parser.parse_args()
    logging.getLogger("bibtexparser").setLevel(logging.ERROR)  # as the CLI does
    rng = random.Random(0)
    papers = corpus(args.entries, rng)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        library = root / "library.bib"
        write_library(library, papers, rng)
        url = f"sqlite:///{root / 'data' / 'digest.sqlite3'}"
        store = Store.open(url)
        now = datetime.now(UTC)
        store.add_entries(stored_entries(papers), now)
        stored = store.count_papers()
        store.close()
        profile = root / "profiles" / "ana.yaml"
        profile.parent.mkdir()
        profile.write_text(PROFILE, encoding="utf-8")
        size = library.stat().st_size
        print(f"library: {args.entries:,} entries, {size / 1e6:.1f} MB; store: {stored:,} "
              "papers")

        text = library.read_text(encoding="utf-8")
        started = time.perf_counter()
        parse_string(text)
        floor = time.perf_counter() - started
        print(f"baseline: bibtexparser's bare parse  {floor:6.2f} s")

        command = [sys.executable, "-m", "digest", "--data-dir", str(root / "data"),
                   "profile", "import", str(profile), str(library)]
        for run in ("first import", "import again"):
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            took = time.perf_counter() - started
            if done.returncode != 0:
                sys.exit(f"digest profile import failed: {done.stderr}")
            print(f"{run}: `digest profile import`  {took:6.2f} s  "
                  f"({args.entries / took:,.0f} entries/s)  {done.stdout.strip()}")

        # The stages, in-process, on a fresh copy of the store and profile.
        profile.write_text(PROFILE, encoding="utf-8")
        fresh = f"sqlite:///{root / 'fresh.sqlite3'}"
        store = Store.open(fresh)
        store.add_entries(stored_entries(papers), now)
        started = time.perf_counter()
        parsed = read_library_file(library)
        parse = time.perf_counter() - started
        started = time.perf_counter()
        store.add_references(parsed.entries, now)
        store_s = time.perf_counter() - started
        started = time.perf_counter()
        report = import_library(store, profile, [library], now=now)  # stores nothing new
        whole = time.perf_counter() - started
        store.close()
        print(f"stages: read and parse {parse:.2f} s ({parse / floor:.1f}x the bare parse), "
              f"store {store_s:.2f} s; a whole import into a stored library {whole:.2f} s "
              f"({report.added:,} added to liked)")


if __name__ == "__main__":
    main()
