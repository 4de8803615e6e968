"""How long `digest rank` takes for many profiles, against the send pipeline's rank stage.

Builds a scratch data dir with N papers (the real arXiv papers in benchmarks/data first,
then synthetic recombinations of their sentences if N is larger) and P generated profiles,
then times `digest --data-dir DIR rank PROFILES... --top 10 --json` as a subprocess, as a
user would run it: first parsing every profile, then (`--repeat` times, the best kept)
finding them in the parsed-profile cache (as `digest send` does from its second run on).

The baseline, in the same run and process tree: the send pipeline's rank stage for the same
profiles over the same papers (what `digest send -v` reports as rank_s: the profiles
prefetched and ranked BATCH at a time by `EditionRun.choose_picks_many`, the corpus built on
the first, memory frozen as `send_all` freezes it), in this process. `digest rank` is the
same ranking plus the command's start-up (imports, settings, the store), reading the
profiles and writing the picks as JSON; the ratio of the two is what survives a noisy
machine (the stage is timed `--repeat` times too, alternating with the command, and its
best kept). Ranking is lexical here (DIGEST_EMBEDDINGS=off); benchmarks/embed.py times
`digest rank` with the embeddings extra. The commands run with their bytecode cached, as
an installed digest's is.

Two sets of profiles are timed: plain ones (interests, 0-5 liked papers, some muted
keywords) and classifier ones (also 5-8 liked and 5-8 disliked papers, so each learns its
own linear classifier).

    python benchmarks/rank_speed.py [--papers 500] [--profiles 10000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from digest.config import load_settings
from digest.identity import normalise_title
from digest.models import PaperEntry
from digest.profiles import load_profiles
from digest.running.editions import BATCH, EditionRun
from digest.running.processes import run_in_frozen_memory
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


LEXICAL = {"DIGEST_EMBEDDINGS": "off"}


@dataclass
class Timed:
    """One `digest rank` run: profiles ranked, picks made, wall time, exit status."""

    profiles: int
    picks: int
    seconds: float
    returncode: int


def time_rank(data_dir: Path, profiles: list[Path], env: dict[str, str]) -> Timed:
    """`digest rank` over the profiles as a subprocess, as a user would run it."""
    command = [sys.executable, "-m", "digest", "--data-dir", str(data_dir), "rank",
               *map(str, profiles), "--top", "10", "--json"]
    # Bytecode cached, as it is for an installed digest (this machine's environment may
    # say not to write it: then every run would compile digest's modules again).
    settings = {key: value for key, value in os.environ.items()
                if key != "PYTHONDONTWRITEBYTECODE"}
    settings["PYTHONPYCACHEPREFIX"] = str(data_dir.parent / "pycache")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          cwd=data_dir, env={**settings, **env})
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    lines = done.stdout.splitlines()
    return Timed(len(lines), sum(len(json.loads(line)["picks"]) for line in lines), elapsed,
                 done.returncode)


@dataclass
class Stage:
    """The send pipeline's rank stage over some profiles: seconds and picks made."""

    seconds: float
    picks: int


def send_rank_stage(data_dir: Path, paths: list[Path], env: dict[str, str]) -> Stage:
    """The rank stage of `digest send` for these profiles, in this process: loaded as
    sending loads them (not timed: its own stage), then prefetched and ranked BATCH at a
    time, as `EditionRun` prepares a batch of editions; `timings["rank"]` is what
    `digest send -v` reports as rank_s. Nothing is recorded."""
    settings = load_settings(None, data_dir=data_dir, env=env)
    store = Store.open(settings.db_url)
    try:
        run = EditionRun(store, settings, preview=True)
        loaded = load_profiles(paths, default_max_papers=settings.default_max_papers,
                               cache=run.profile_cache())
        now = datetime.now(UTC)
        picks = 0
        with run_in_frozen_memory(run):  # as `send_all` runs a shard in its own process
            for start in range(0, len(loaded.profiles), BATCH):
                batch = loaded.profiles[start:start + BATCH]
                run.prefetch(batch)
                picks += sum(map(len, run.choose_picks_many(batch, now=now, top=10)))
        return Stage(run.timings["rank"], picks)
    finally:
        store.close()


def make_scratch(root: Path, n_papers: int, n_profiles: int, rng: random.Random
                 ) -> tuple[int, dict[str, list[Path]]]:
    """A data dir under `root` with the papers stored, and the two sets of profiles."""
    papers = corpus(n_papers, rng)
    store = Store.open(f"sqlite:///{root / 'data' / 'digest.sqlite3'}")
    store.add_entries([PaperEntry(title=p["title"], abstract=p["abstract"], source="bench")
                       for p in papers], datetime.now(UTC))
    stored = store.count_papers()
    store.close()
    return stored, {"plain": write_profiles(root / "profiles", n_profiles, papers, rng),
                    "classifier": write_profiles(root / "classifier", n_profiles, papers, rng,
                                                 classifier=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=500)
    parser.add_argument("--profiles", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2,
                        help="cached runs of digest rank and of the stage, alternated; the "
                             "best of each is compared")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    failed = 0
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        stored, sets = make_scratch(root, args.papers, args.profiles, rng)
        data_dir = root / "data"
        print(f"{stored} papers stored, {args.profiles:,} profiles a set; DIGEST_EMBEDDINGS=off")
        time_rank(data_dir, sets["plain"][:1], LEXICAL)  # compiles digest's bytecode
        start_up = time_rank(data_dir, sets["plain"][:1], LEXICAL)
        print(f"digest rank, one profile (start-up): {start_up.seconds:.2f} s")
        print(f"{'profiles':<11} {'send rank stage':>16} {'digest rank, parsing':>21} "
              f"{'ratio':>6} {'digest rank, cached':>20} {'ratio':>6}")
        for name, paths in sets.items():
            first = time_rank(data_dir, paths, LEXICAL)  # parses; fills the profile cache
            runs, stages = [], []
            for _ in range(max(args.repeat, 1)):
                runs.append(time_rank(data_dir, paths, LEXICAL))
                stages.append(send_rank_stage(data_dir, paths, LEXICAL))
            again = min(runs, key=lambda run: run.seconds)
            stage = min(stages, key=lambda stage: stage.seconds)
            failed = max(failed, start_up.returncode, first.returncode,
                         *(run.returncode for run in runs))
            if not first.picks == again.picks == stage.picks:
                print(f"  {name}: picks differ: rank {first.picks} and {again.picks}, "
                      f"send {stage.picks}")
                failed = 1
            print(f"{name:<11} {stage.seconds:>14.2f} s {first.seconds:>19.2f} s "
                  f"{first.seconds / stage.seconds:>5.2f}x {again.seconds:>18.2f} s "
                  f"{again.seconds / stage.seconds:>5.2f}x")
            print(f"{'':<11} {stage.seconds / len(paths) * 1000:>11.2f} ms/p "
                  f"{first.seconds / len(paths) * 1000:>16.2f} ms/p {'':>6} "
                  f"{again.seconds / len(paths) * 1000:>15.2f} ms/p  ({stage.picks:,} picks)")
    print("(ratio: digest rank's wall time, start-up included, over the send pipeline's rank "
          "stage; goal <= 1.5x)")
    sys.exit(failed)


if __name__ == "__main__":
    main()
