"""How long `digest rank` takes for many profiles over a realistic corpus.

Builds a scratch data dir with N papers (the real arXiv papers in benchmarks/data first,
then synthetic recombinations of their sentences if N is larger) and P generated profiles,
then times `digest --data-dir DIR rank PROFILES... --top 10 --json` as a subprocess, as a
user would run it. The baseline, measured in the same run: one tf-idf fit over the same
corpus (the unavoidable floor of any tf-idf ranker), so the ratio survives noisy machines.

Two sets of profiles are timed: plain ones (interests, 0-5 liked papers, some muted
keywords) and classifier ones (also 5-8 liked and 5-8 disliked papers, so each learns its
own linear classifier). Each is reported per profile after the start-up (imports, the
tf-idf fit, preparing the candidates), which a run with one profile measures.

    python benchmarks/rank_speed.py [--papers 2000] [--profiles 300]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer

from digest.identity import normalise_title
from digest.models import PaperEntry
from digest.store import Store

DATA = Path(__file__).parent / "data" / "arxiv-frontpage"


def real_papers() -> list[dict[str, str]]:
    """The fixture's papers, each once (the same paper can be in a day and a topic)."""
    papers: dict[str, dict[str, str]] = {}
    for path in sorted(DATA.glob("downloads/*.jsonl")) + sorted(DATA.glob("train/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            papers.setdefault(normalise_title(record["title"]),
                              {"title": record["title"], "abstract": record["abstract"]})
    return list(papers.values())


def corpus(n: int, rng: random.Random) -> list[dict[str, str]]:
    papers = real_papers()[:n]
    sentences = [s for p in papers for s in p["abstract"].split(". ") if len(s) > 40]
    while len(papers) < n:
        words = rng.choice(papers)["title"].split()
        rng.shuffle(words)
        papers.append({"title": " ".join(words) + f" ({len(papers)})",
                       "abstract": ". ".join(rng.sample(sentences, 6)) + "."})
    return papers


def write_profiles(folder: Path, count: int, papers: list[dict[str, str]],
                   rng: random.Random, *, classifier: bool = False) -> list[Path]:
    """Profiles with 1-4 interests and 0-5 liked papers; with `classifier`, 5-8 liked and
    5-8 disliked papers instead, enough for a classifier of their own."""
    topics = list(json.loads((DATA / "tags.json").read_text()))
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        interests = rng.sample(topics, rng.randint(1, 4))
        n_liked = rng.randint(5, 8) if classifier else rng.randint(0, 5)
        n_disliked = rng.randint(5, 8) if classifier else 0
        rated = [p["title"] for p in rng.sample(papers, n_liked + n_disliked)]
        liked, disliked = rated[:n_liked], rated[n_liked:]
        lines = [f"name: Reader {i}", f"email: reader{i}@example.org",
                 f"interests: {json.dumps(interests)}", f"liked: {json.dumps(liked)}"]
        if disliked:
            lines.append(f"disliked: {json.dumps(disliked)}")
        if rng.random() < 0.3:
            lines.append(f"keywords: {{mute: {json.dumps(rng.sample(topics, 1))}}}")
        path = folder / f"reader{i:05d}.yaml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


@dataclass
class Timed:
    """One `digest rank` run: profiles ranked, picks made, wall time, exit status."""

    profiles: int
    picks: int
    seconds: float
    returncode: int


def time_rank(data_dir: Path, profiles: list[Path]) -> Timed:
    """`digest rank` over the profiles as a subprocess, as a user would run it."""
    command = [sys.executable, "-m", "digest", "--data-dir", str(data_dir), "rank",
               *map(str, profiles), "--top", "10", "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    lines = done.stdout.splitlines()
    return Timed(len(lines), sum(len(json.loads(line)["picks"]) for line in lines), elapsed,
                 done.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=2000)
    parser.add_argument("--profiles", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        papers = corpus(args.papers, rng)
        store = Store.open(f"sqlite:///{root / 'data' / 'digest.sqlite3'}")
        now = datetime.now(UTC)
        store.add_entries([PaperEntry(title=p["title"], abstract=p["abstract"], source="bench")
                           for p in papers], now)
        stored = store.count_papers()
        store.close()
        plain = write_profiles(root / "profiles", args.profiles, papers, rng)
        learning = write_profiles(root / "classifier", args.profiles, papers, rng,
                                  classifier=True)

        started = time.perf_counter()
        TfidfVectorizer(stop_words="english", ngram_range=(1, 2), sublinear_tf=True).fit_transform(
            [p["title"] + ". " + p["abstract"] for p in papers])
        baseline = time.perf_counter() - started

        start_up = time_rank(root / "data", plain[:1])
        runs = {"plain": time_rank(root / "data", plain),
                "classifier": time_rank(root / "data", learning)}
    print(f"papers stored              {stored}")
    print(f"start-up (one profile)     {start_up.seconds:.2f} s")
    for name, run in runs.items():
        per_profile = (run.seconds - start_up.seconds) / max(run.profiles - 1, 1)
        print(f"{name + ' profiles':27s}{run.profiles} ({run.picks} picks) in {run.seconds:.2f} s"
              f"  ({run.profiles / run.seconds:.0f} profiles/s); after start-up "
              f"{per_profile * 1000:.2f} ms/profile")
    print(f"baseline: one tf-idf fit   {baseline:.2f} s")
    print(f"ratio rank / baseline      {runs['plain'].seconds / baseline:.1f}x  (plain profiles)")
    sys.exit(max(run.returncode for run in (start_up, *runs.values())))


if __name__ == "__main__":
    main()
