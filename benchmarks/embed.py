"""How fast digest embeds papers, against sentence-transformers' own `encode`, and what the
embeddings extra costs `digest rank` on a store already embedded.

Needs the embeddings extra (`pip install 'digest[embeddings]'`); without it, says so and
exits 0.

1. Papers: the real arXiv papers of benchmarks/data/arxiv-frontpage/downloads (a day is
   ~700), in chunks. For each chunk, in turn: the baseline, `SentenceTransformer.encode`
   of exactly the texts digest embeds (each paper's whole text and its title) in one call,
   with the same model object; then digest's path as `digest ingest` runs it: the chunk's
   papers stored into a scratch SQLite store, then `embed_new_papers` (find the papers
   without a vector, encode, combine, save). Alternating chunk by chunk, a machine busy
   with other work slows both alike; the ratio is what to read (goal >= 0.9x).
2. `digest rank --json` over P generated profiles on that embedded store, as a subprocess,
   with DIGEST_EMBEDDINGS=off and =on, the profiles already in the parsed-profile cache.
   The first run with the extra embeds the profiles' phrases (and loads the model); later
   runs find them stored and load no model. Goal: with the extra within 2x of without.
   (Bytecode is cached, as for an installed digest: one untimed run of each first.)

    python benchmarks/embed.py [--papers 700] [--chunk 100] [--profiles 300]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# Run as a script, the repository root is not on sys.path; the `benchmarks` package is.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.embed_models import real_papers  # noqa: E402
from benchmarks.rank_speed import LEXICAL, Timed, time_rank, write_profiles  # noqa: E402
from digest.embed import (  # noqa: E402
    DEFAULT_MODEL,
    embed_new_papers,
    install_command,
    load_embedder,
    missing_packages,
    paper_vectors,
    stored_name,
)
from digest.identity import normalise_title  # noqa: E402
from digest.models import Paper, PaperEntry  # noqa: E402
from digest.store import Store  # noqa: E402

WITH_EXTRA = {"DIGEST_EMBEDDINGS": "on"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=700)
    parser.add_argument("--chunk", type=int, default=100,
                        help="papers per turn; the baseline and digest take turns")
    parser.add_argument("--profiles", type=int, default=300)
    args = parser.parse_args()
    missing = missing_packages(DEFAULT_MODEL)
    if missing or importlib.util.find_spec("torch") is None:
        print(f"skipped: the embeddings extra is not installed ({', '.join(missing)}): "
              f"{install_command(DEFAULT_MODEL)}")
        return
    import torch

    papers = list({normalise_title(p.title): p for p in real_papers(args.papers)}.values())
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        data_dir = root / "data"
        store = Store.open(f"sqlite:///{data_dir / 'digest.sqlite3'}")
        try:
            embedding = measure_embedding(store, papers, args.chunk)
        finally:
            store.close()
        print(f"\n{len(papers)} papers (title + abstract), {DEFAULT_MODEL}, "
              f"{torch.get_num_threads()} PyTorch threads, chunks of {args.chunk}:")
        base, ours = embedding
        print(f"  SentenceTransformer.encode  {len(papers) / base:7.1f} papers/s ({base:.1f} s)")
        print(f"  digest (store, embed, save) {len(papers) / ours:7.1f} papers/s ({ours:.1f} s)"
              f"  {base / ours:.2f}x of encode (goal >= 0.9x)")

        profiles = write_profiles(root / "profiles", args.profiles,
                                  [{"title": p.title, "abstract": p.abstract} for p in papers],
                                  random.Random(1))
        for env in (LEXICAL, WITH_EXTRA):  # bytecode compiled once, as installed (not timed)
            time_rank(data_dir, profiles[:1], env)
        runs: list[tuple[str, Timed]] = []
        for label, env in (("without the extra (fills the profile cache)", LEXICAL),
                           ("with the extra, first run (embeds the phrases)", WITH_EXTRA),
                           ("without the extra", LEXICAL),
                           ("with the extra", WITH_EXTRA),
                           ("without the extra", LEXICAL),
                           ("with the extra", WITH_EXTRA)):
            runs.append((label, time_rank(data_dir, profiles, env)))
    print(f"\ndigest rank --json, {args.profiles} profiles x {len(papers)} embedded papers:")
    for label, run in runs:
        print(f"  {label:<48} {run.seconds:6.2f} s  ({run.picks:,} picks)")
    without = min(run.seconds for label, run in runs[2:] if "without" in label)
    with_extra = min(run.seconds for label, run in runs[2:] if "with the" in label)
    print(f"  with / without (best of two each)               {with_extra / without:6.2f}x "
          "(goal <= 2x)")
    sys.exit(max(run.returncode for _, run in runs))


def measure_embedding(store: Store, papers: list[Paper], chunk: int) -> tuple[float, float]:
    """Seconds for the baseline and for digest's path over all papers, in alternate chunks;
    checks that both give the same vectors."""
    embedder = load_embedder("on", DEFAULT_MODEL)
    assert embedder is not None
    model = embedder._model  # type: ignore[attr-defined]  # the SentenceTransformer itself
    name = stored_name(embedder)
    paper_vectors(embedder.encode, papers[:2])  # first call's one-time costs out of both
    base = ours = 0.0
    for start in range(0, len(papers), chunk):
        part = papers[start:start + chunk]
        began = time.perf_counter()
        encoded = model.encode([p.text for p in part] + [p.title for p in part],
                               batch_size=32, normalize_embeddings=True,
                               show_progress_bar=False, convert_to_numpy=True)
        base += time.perf_counter() - began
        began = time.perf_counter()
        store.add_entries([PaperEntry(title=p.title, abstract=p.abstract, source="bench")
                           for p in part], datetime.now(UTC))
        done = embed_new_papers(store, embedder)
        ours += time.perf_counter() - began
        assert done == len(part), (done, len(part))
        both = encoded[:len(part)] + encoded[len(part):]
        expected = both / (both ** 2).sum(axis=1, keepdims=True) ** 0.5
        row_ids = {p.title: p.row_id for p in store.papers()}
        ids = [row_ids[p.title] for p in part]
        stored = store.embeddings(ids, name)
        worst = max(float(abs(stored[i] - e).max()) for i, e in zip(ids, expected, strict=True))
        assert worst < 1e-4, f"digest's vectors differ from encode's by {worst}"
        print(f"  {start + len(part)}/{len(papers)} papers: encode {base:.1f} s, "
              f"digest {ours:.1f} s", flush=True)
    return base, ours


if __name__ == "__main__":
    main()
