"""Recommendation quality on a real reader's labelled papers, against the peers' methods.

Data: benchmarks/data/arxiv-frontpage (one reader's topics, the papers filed under each,
and every new arXiv cs paper of two days). Per-topic protocol: each topic with at least 8
papers is a subscriber; in each random split a random half (at least 3) are the liked
seeds and the other half are hidden in one day's papers, which form the candidate pool
(the seeds themselves are not in it: a recommender never offers a paper you have). The
store every method sees holds both days and all filed papers. Reported: recall@10 and
nDCG@10 of the hidden papers, averaged over topics and both days; mean and spread
(standard deviation) over the splits, every method on the same splits in the same run.

Methods: random; tf-idf centroid of the liked papers (words and word pairs, no
stemming); arxiv-sanity-lite (its tf-idf settings, a LinearSVC per user, C=0.01, balanced
classes, liked papers as positives and every other stored paper as negative);
zotero-arxiv-daily (sentence embeddings of the liked papers, candidates scored by
time-decay-weighted similarity); and digest's own ranker (`digest.rank.rank_papers`, the
code `digest rank` runs), lexical and with embeddings. Methods that need the `embeddings`
extra are skipped without it.

A second table takes the whole reader as one subscriber with a library (see
`evaluate_library`): liked papers from every wanted topic, disliked ones from every
unwanted topic, the rest hidden in the day; it reports how many of the ten picks are
hidden wanted papers, how many hidden unwanted ones, and their utility (the summed
tags.json weights of the topics each pick is filed under, as a share of the best
possible ten). A third (`evaluate_names`) is the whole-reader view of the fixture's
README: a profile of the topics' names alone (wanted ones as interests with their
weights, unwanted ones avoided), no library, on the same pools, against a keyword alert
and a tf-idf query of the names.

    python benchmarks/quality.py [--splits 5] [--seed 0] [--no-embeddings]
                                 [--param NAME=VALUE ...]

`--param` ranks with a `digest.rank.RankParams` field changed (e.g. `--param
scattered_phrase=1` for the behaviour before phrases were preferred): run it beside a run
without, to measure a change of one constant.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from digest.embed import load_embedder, paper_vectors
from digest.identity import normalise_title
from digest.models import Interest, Paper, Profile
from digest.rank import (
    DEFAULT_PARAMS,
    Corpus,
    Preferences,
    RankParams,
    build_corpus,
    prepare_candidates,
    rank_papers,
)

DATA = Path(__file__).parent / "data" / "arxiv-frontpage"
CACHE = Path(__file__).parent / ".cache"
MIN_TOPIC = 8
K = 10
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def load_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@dataclass
class Day:
    name: str
    keys: list[str]  # the day's papers, by title key
    papers: list[Paper]  # the store: the day's papers and every filed paper
    index: dict[str, int]
    corpus: Corpus  # digest's model, lexical
    corpus_emb: Corpus | None  # digest's model, with embeddings
    plain: TfidfVectorizer  # a textbook tf-idf, fitted on the store, for the baselines
    tfidf: sparse.csr_matrix  # the store in it
    asl: sparse.csr_matrix  # arxiv-sanity-lite's tf-idf of the store
    embeddings: np.ndarray | None  # unit MiniLM rows of the store


def embed_all(texts: list[str], use: bool) -> np.ndarray | None:
    """MiniLM vectors of every text, cached on disk by content (computing them is slow)."""
    if not use:
        return None
    embedder = load_embedder("auto")
    if embedder is None:
        return None
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"embeddings-{embedder.name}-{digest}.npy"
    if path.exists():
        return np.load(path)
    vectors = embedder.encode(texts)
    CACHE.mkdir(exist_ok=True)
    np.save(path, vectors)
    return vectors


def plain_tfidf() -> TfidfVectorizer:
    """Words and word pairs, English stop words out, sublinear tf, unit rows: what digest's
    own model was before it stemmed words, kept here so the baselines do not move with it."""
    return TfidfVectorizer(
        stop_words="english", ngram_range=(1, 2), sublinear_tf=True,
        token_pattern=r"(?u)\b(?:[a-zA-Z][a-zA-Z0-9\-]+|\d+[a-zA-Z][a-zA-Z0-9\-]*)\b")


def asl_tfidf(texts: list[str]) -> sparse.csr_matrix:
    """arxiv-sanity-lite's compute.py settings."""
    vectorizer = TfidfVectorizer(
        input="content", encoding="utf-8", decode_error="replace", strip_accents="unicode",
        lowercase=True, analyzer="word", stop_words="english",
        token_pattern=r"(?u)\b[a-zA-Z_][a-zA-Z0-9_]+\b", ngram_range=(1, 2),
        max_features=20000, norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=True,
        max_df=0.1, min_df=5)
    return vectorizer.fit_transform(texts).tocsr()


def load_topics() -> dict[str, list[dict[str, str]]]:
    """Every topic's filed papers, by topic."""
    return {p.stem: load_jsonl(p) for p in sorted(DATA.glob("train/*.jsonl"))}


def build_days(topics: dict[str, list[dict[str, str]]], use_embeddings: bool,
               params: RankParams = DEFAULT_PARAMS) -> list[Day]:
    filed = {normalise_title(p["title"]): p for papers in topics.values() for p in papers}
    downloads = {path.stem: {normalise_title(p["title"]): p for p in load_jsonl(path)}
                 for path in sorted(DATA.glob("downloads/*.jsonl"))}
    # The store: every day's papers and every filed paper, as a store holds more than the
    # day it ranks (the same for each day, so it is fitted once).
    everything = {k: p for day_papers in downloads.values() for k, p in day_papers.items()}
    everything.update(filed)
    keys = sorted(everything)
    papers = [Paper(key=k, title=everything[k]["title"], abstract=everything[k]["abstract"],
                    first_seen=NOW, row_id=i + 1) for i, k in enumerate(keys)]
    texts = [p.text for p in papers]
    vectors = embed_all(texts, use_embeddings)  # the whole texts', for zotero-arxiv-daily
    embedder = load_embedder("auto") if vectors is not None else None
    corpus = build_corpus(papers, params=params)
    corpus_emb = None
    if vectors is not None and embedder is not None:  # digest's: as `digest rank` makes them
        corpus_emb = build_corpus(
            papers, embeddings=paper_vectors(lambda t: embed_all(list(t), True), papers),
            embed_text=embedder.encode, params=params)
    plain = plain_tfidf()
    tfidf, asl = plain.fit_transform(texts).tocsr(), asl_tfidf(texts)
    index = {k: i for i, k in enumerate(keys)}
    return [Day(name=name, keys=sorted(day_papers), papers=papers, index=index, corpus=corpus,
                corpus_emb=corpus_emb, plain=plain, tfidf=tfidf, asl=asl, embeddings=vectors)
            for name, day_papers in downloads.items()]


# A method scores the pool (rows of the store) for a subscriber's liked (seed) and disliked
# papers; the peers' methods have no use for disliked papers.
Method = Callable[[Day, np.ndarray, np.ndarray, np.ndarray, random.Random], np.ndarray]


def random_scores(day: Day, seeds: np.ndarray, disliked: np.ndarray, pool: np.ndarray,
                  rng: random.Random) -> np.ndarray:
    return np.array([rng.random() for _ in pool])


def tfidf_centroid(day: Day, seeds: np.ndarray, disliked: np.ndarray, pool: np.ndarray,
                   rng: random.Random) -> np.ndarray:
    matrix = day.tfidf
    centroid = np.asarray(matrix[seeds].mean(axis=0)).ravel()
    return np.asarray(matrix[pool] @ centroid).ravel()


def arxiv_sanity_svm(day: Day, seeds: np.ndarray, disliked: np.ndarray, pool: np.ndarray,
                     rng: random.Random) -> np.ndarray:
    labels = np.zeros(day.asl.shape[0])
    labels[seeds] = 1
    model = LinearSVC(class_weight="balanced", max_iter=10000, tol=1e-6, C=0.01)
    model.fit(day.asl, labels)
    return model.decision_function(day.asl[pool])


def zotero_similarity(day: Day, seeds: np.ndarray, disliked: np.ndarray, pool: np.ndarray,
                      rng: random.Random) -> np.ndarray:
    assert day.embeddings is not None
    # zotero-arxiv-daily weighs the library by recency: 1 / (1 + log10(rank + 1)).
    decay = 1 / (1 + np.log10(np.arange(len(seeds)) + 1))
    decay = decay / decay.sum()
    similarity = day.embeddings[pool] @ day.embeddings[seeds].T
    return np.asarray((similarity * decay).sum(axis=1) * 10)


def digest_ranker(use_embeddings: bool) -> Method:
    def run(day: Day, seeds: np.ndarray, disliked: np.ndarray, pool: np.ndarray,
            rng: random.Random) -> np.ndarray:
        return _digest_scores(day, use_embeddings, pool, liked=seeds, disliked=disliked)

    return run


def _digest_scores(day: Day, use_embeddings: bool, pool: np.ndarray, *,
                   liked: Sequence[int] = (), disliked: Sequence[int] = (),
                   interests: tuple[Interest, ...] = (), avoid: tuple[str, ...] = ()
                   ) -> np.ndarray:
    """digest's picks of the pool (`rank_papers`, as `digest rank` runs it) for a profile of
    these liked and disliked rows, interests and avoided topics, as scores of the pool that
    put the picks first, in their order."""
    corpus = day.corpus_emb if use_embeddings else day.corpus
    assert corpus is not None
    profile = Profile(subscriber_id="bench", path=Path("bench.yaml"), name="Bench",
                      email="bench@example.org", min_score=-1e9, interests=interests,
                      avoid=avoid)
    prefs = Preferences(profile=profile, liked=tuple(day.papers[i] for i in liked),
                        disliked=tuple(day.papers[i] for i in disliked))
    candidates = prepare_candidates(corpus, [day.papers[i] for i in pool])
    picks = rank_papers(corpus, prefs, candidates, top=K, min_score=None)
    scores = np.full(len(pool), -1e9)
    position = {p.row_id: i for i, p in enumerate(candidates.papers)}
    for rank, pick in enumerate(picks):
        scores[position[pick.paper.row_id]] = len(picks) - rank
    return scores


def ndcg(top: list[int], hidden: set[int]) -> float:
    gain = sum(1 / np.log2(i + 2) for i, paper in enumerate(top) if paper in hidden)
    ideal = sum(1 / np.log2(i + 2) for i in range(min(K, len(hidden))))
    return gain / ideal


@dataclass(frozen=True)
class Score:
    recall: float
    ndcg: float
    recall_spread: float
    ndcg_spread: float
    seconds: float


def _methods(have_embeddings: bool) -> dict[str, Method]:
    methods: dict[str, Method] = {
        "random": random_scores,
        "tf-idf centroid": tfidf_centroid,
        "arxiv-sanity-lite (SVM)": arxiv_sanity_svm,
    }
    if have_embeddings:
        methods["zotero-arxiv-daily (MiniLM)"] = zotero_similarity
    methods["digest (default)"] = digest_ranker(False)
    if have_embeddings:
        methods["digest (embeddings)"] = digest_ranker(True)
    return methods


def _top(method: Method, day: Day, seeds: np.ndarray, disliked: np.ndarray,
         pool: np.ndarray, rng: random.Random) -> list[int]:
    return _best_k(method(day, seeds, disliked, pool, rng), pool)


def _best_k(scores: np.ndarray, pool: np.ndarray) -> list[int]:
    """The pool's K best rows by `scores`, ties in pool order."""
    return [int(r) for r in pool[np.argsort(-scores, kind="stable")[:K]]]


def evaluate(splits: int = 5, seed: int = 0, use_embeddings: bool = True,
             only_topics: int = 0, days: list[Day] | None = None
             ) -> tuple[dict[str, Score], str]:
    """Run every method on the same splits; returns scores by method and a description."""
    filed = load_topics()
    topics = {t: ps for t, ps in filed.items() if len(ps) >= MIN_TOPIC}
    if only_topics:
        topics = dict(list(topics.items())[:only_topics])
    days = days or build_days(filed, use_embeddings)
    have_embeddings = days[0].embeddings is not None
    methods = _methods(have_embeddings)
    # results[method][split] = (recall, ndcg) for every day x topic
    results: dict[str, dict[int, list[tuple[float, float]]]] = {m: {} for m in methods}
    timings = dict.fromkeys(methods, 0.0)
    split_rng = random.Random(seed)
    none = np.array([], dtype=np.int64)
    for split in range(splits):
        for day in days:
            day_keys = set(day.keys)
            for papers in topics.values():
                keys = sorted({normalise_title(p["title"]) for p in papers})
                split_rng.shuffle(keys)
                n_seeds = max(3, len(keys) - len(keys) // 2)
                seeds, hidden = keys[:n_seeds], keys[n_seeds:]
                pool_keys = sorted((day_keys - set(keys)) | set(hidden))
                seed_rows = np.array([day.index[k] for k in seeds])
                pool_rows = np.array([day.index[k] for k in pool_keys])
                hidden_rows = {day.index[k] for k in hidden}
                for name, method in methods.items():
                    tick = time.perf_counter()
                    top = _top(method, day, seed_rows, none, pool_rows, random.Random(split))
                    timings[name] += time.perf_counter() - tick
                    found = len(set(top) & hidden_rows) / len(hidden_rows)
                    results[name].setdefault(split, []).append((found, ndcg(top, hidden_rows)))
    scores = {}
    for name in methods:
        per_split = np.array([np.mean(v, axis=0) for v in results[name].values()])
        mean, spread = per_split.mean(axis=0), per_split.std(axis=0)
        scores[name] = Score(float(mean[0]), float(mean[1]), float(spread[0]),
                             float(spread[1]), timings[name])
    pool = np.mean([len(d.keys) for d in days])
    described = (f"{len(topics)} topics x {len(days)} days x {splits} splits (seed {seed}); "
                 f"pool ~{pool:.0f} papers/day")
    if not have_embeddings:
        described += "; MiniLM methods skipped (--no-embeddings, or the extra is not installed)"
    return scores, described


@dataclass(frozen=True)
class LibraryScore:
    wanted: float  # of the top K, the share that are hidden wanted papers (precision@K)
    wanted_spread: float
    unwanted: float  # of the top K, the share that are hidden unwanted papers
    utility: float  # the top K's summed topic weights, as a share of the best possible
    utility_spread: float
    seconds: float


@dataclass(frozen=True)
class Reader:
    """The whole reader: each filed paper's worth (the summed tags.json weights of the
    topics it is filed under), the wanted papers (filed under a topic of weight > 0) and
    the unwanted ones (every other filed paper), and the topic names by weight."""

    worth: dict[str, float]
    wanted: list[str]
    unwanted: list[str]
    weights: dict[str, float]


def load_reader(filed: dict[str, list[dict[str, str]]]) -> Reader:
    weights = json.loads((DATA / "tags.json").read_text(encoding="utf-8"))
    worth: dict[str, float] = {}
    for topic, papers in filed.items():
        for key in {normalise_title(p["title"]) for p in papers}:
            worth[key] = worth.get(key, 0.0) + weights.get(topic, 0.0)
    wanted = sorted({normalise_title(p["title"]) for t, ps in filed.items()
                     if weights.get(t, 0) > 0 for p in ps})
    unwanted = sorted(set(worth) - set(wanted))
    return Reader(worth, wanted, unwanted, weights)


def _reader_trials(reader: Reader, days: list[Day], splits: int, seed: int
                   ) -> Iterator[tuple[int, Day, list[str], list[str], set[str], set[str],
                                       np.ndarray]]:
    """Each split of the reader's filed papers (half the wanted ones liked, half the
    unwanted ones disliked, the other halves hidden), on each day: the split's number,
    the day, liked, disliked, hidden wanted, hidden unwanted, and the pool (the day's
    papers but the filed ones, and the hidden ones) as rows of the store."""
    split_rng = random.Random(seed)
    filed = set(reader.wanted) | set(reader.unwanted)
    for split in range(splits):
        wanted, unwanted = list(reader.wanted), list(reader.unwanted)
        split_rng.shuffle(wanted)
        split_rng.shuffle(unwanted)
        liked, hidden = wanted[:len(wanted) // 2], set(wanted[len(wanted) // 2:])
        disliked, hidden_bad = unwanted[:len(unwanted) // 2], set(unwanted[len(unwanted) // 2:])
        for day in days:
            pool_keys = sorted((set(day.keys) - filed) | hidden | hidden_bad)
            pool = np.array([day.index[k] for k in pool_keys])
            yield split, day, liked, disliked, hidden, hidden_bad, pool


def _reader_scores(reader: Reader, day: Day, hidden: set[str], hidden_bad: set[str],
                   top: list[int]) -> tuple[float, float, float]:
    """wanted@K, unwanted@K and utility@K of one top K."""
    good, bad = {day.index[k] for k in hidden}, {day.index[k] for k in hidden_bad}
    worth = {day.index[k]: reader.worth[k] for k in hidden | hidden_bad}
    best = sum(sorted((w for w in worth.values() if w > 0), reverse=True)[:K])
    picked = set(top)
    return (len(picked & good) / K, len(picked & bad) / K,
            sum(worth.get(r, 0.0) for r in picked) / best if best > 0 else 0.0)


# A whole-reader view's method: the top K of the pool for the liked and disliked rows.
ReaderTop = Callable[[Day, np.ndarray, np.ndarray, np.ndarray, random.Random], list[int]]


def _reader_view(reader: Reader, days: list[Day], splits: int, seed: int,
                 methods: dict[str, ReaderTop]) -> dict[str, LibraryScore]:
    """Every method on the same trials (`_reader_trials`), timed, and scored."""
    results: dict[str, dict[int, list[tuple[float, float, float]]]] = {m: {} for m in methods}
    timings = dict.fromkeys(methods, 0.0)
    for split, day, liked, disliked, hidden, hidden_bad, pool in _reader_trials(
            reader, days, splits, seed):
        liked_rows = np.array([day.index[k] for k in liked])
        disliked_rows = np.array([day.index[k] for k in disliked])
        for name, top_of in methods.items():
            tick = time.perf_counter()
            top = top_of(day, liked_rows, disliked_rows, pool, random.Random(split))
            timings[name] += time.perf_counter() - tick
            results[name].setdefault(split, []).append(
                _reader_scores(reader, day, hidden, hidden_bad, top))
    scores = {}
    for name, by_split in results.items():
        per_split = np.array([np.mean(v, axis=0) for v in by_split.values()])
        mean, spread = per_split.mean(axis=0), per_split.std(axis=0)
        scores[name] = LibraryScore(float(mean[0]), float(spread[0]), float(mean[1]),
                                    float(mean[2]), float(spread[2]), timings[name])
    return scores


def evaluate_library(splits: int = 5, seed: int = 0, use_embeddings: bool = True,
                     days: list[Day] | None = None) -> tuple[dict[str, LibraryScore], str]:
    """The whole reader as one subscriber with a library: the papers filed under the topics
    tags.json wants (weight > 0) are split in halves, one liked, one hidden in the day's
    papers; so are the papers of the unwanted topics (weight <= 0; a paper under both kinds
    counts as wanted), one half disliked, one hidden. A library spans many topics, as a
    real user's does."""
    filed = load_topics()
    reader = load_reader(filed)
    days = days or build_days(filed, use_embeddings)
    methods = _methods(days[0].embeddings is not None)
    scores = _reader_view(reader, days, splits, seed,
                          {name: partial(_top, method) for name, method in methods.items()})
    described = (f"the whole reader: {len(reader.wanted) // 2} liked and "
                 f"{len(reader.unwanted) // 2} disliked papers; hidden in each day's papers, "
                 f"{len(reader.wanted) - len(reader.wanted) // 2} wanted and "
                 f"{len(reader.unwanted) - len(reader.unwanted) // 2} unwanted "
                 f"({len(days)} days x {splits} splits, seed {seed})")
    return scores, described


# A method that scores the pool for a profile of topic names: wanted names with their
# weights, and names to avoid.
NamesMethod = Callable[[Day, dict[str, float], list[str], np.ndarray, random.Random],
                       np.ndarray]


def keyword_alert(day: Day, wanted: dict[str, float], avoided: list[str], pool: np.ndarray,
                  rng: random.Random) -> np.ndarray:
    """A keyword alert: the papers that name a wanted topic (as a phrase, in any case),
    by the summed weights of the topics they name; the rest in random order."""
    patterns = [(re.compile(rf"\b{re.escape(name)}\b", re.IGNORECASE), weight)
                for name, weight in wanted.items()]
    return np.array([sum(w for pattern, w in patterns if pattern.search(day.papers[i].text))
                     + rng.random() * 1e-6 for i in pool])


def names_tfidf(day: Day, wanted: dict[str, float], avoided: list[str], pool: np.ndarray,
                rng: random.Random) -> np.ndarray:
    """The wanted names as one tf-idf query: each name's row times its weight, summed."""
    query = day.plain.transform(list(wanted)).T @ np.array(list(wanted.values()))
    return np.asarray(day.tfidf[pool] @ query).ravel()


def digest_names(use_embeddings: bool) -> NamesMethod:
    def run(day: Day, wanted: dict[str, float], avoided: list[str], pool: np.ndarray,
            rng: random.Random) -> np.ndarray:
        return _digest_scores(day, use_embeddings, pool, avoid=tuple(avoided),
                              interests=tuple(Interest(n, w) for n, w in wanted.items()))

    return run


def evaluate_names(splits: int = 5, seed: int = 0, use_embeddings: bool = True,
                   days: list[Day] | None = None) -> tuple[dict[str, LibraryScore], str]:
    """The whole reader as the fixture's README has it: a profile of topic names, the
    wanted ones as interests with their tags.json weights, the unwanted ones as topics to
    avoid; no library. The same pools as `evaluate_library`'s (the liked and disliked
    halves are not used)."""
    filed = load_topics()
    reader = load_reader(filed)
    days = days or build_days(filed, use_embeddings)
    methods: dict[str, NamesMethod] = {"random": lambda d, w, a, pool, rng: random_scores(
        d, pool[:0], pool[:0], pool, rng), "keyword alert": keyword_alert,
        "tf-idf of the names": names_tfidf, "digest (default)": digest_names(False)}
    if days[0].embeddings is not None:
        methods["digest (embeddings)"] = digest_names(True)
    wanted = {n: w for n, w in reader.weights.items() if w > 0}
    avoided = [n for n, w in reader.weights.items() if w <= 0]
    scores = _reader_view(reader, days, splits, seed,
                          {name: _by_names(method, wanted, avoided)
                           for name, method in methods.items()})
    described = (f"the whole reader by its topics' names: {len(wanted)} wanted (weights "
                 f"{min(wanted.values()):g} to {max(wanted.values()):g}), {len(avoided)} "
                 f"avoided; no library; the same pools ({len(days)} days x {splits} splits, "
                 f"seed {seed})")
    return scores, described


def _by_names(method: NamesMethod, wanted: dict[str, float], avoided: list[str]) -> ReaderTop:
    def top(day: Day, liked: np.ndarray, disliked: np.ndarray, pool: np.ndarray,
            rng: random.Random) -> list[int]:
        return _best_k(method(day, wanted, avoided, pool, rng), pool)

    return top


def _print_table(described: str, header: str, rows: dict[str, tuple[float, str]]) -> None:
    """A table: each method's cells (`rows`: name -> the figure compared, the cells), and
    for digest's, the lead over the best baseline (random aside)."""
    best = max(figure for name, (figure, _) in rows.items()
               if not name.startswith("digest") and name != "random")
    print(described)
    print(f"{'method':30s} {header}")
    for name, (figure, cells) in rows.items():
        lead = f"  {figure / best - 1:+.0%} vs best baseline" if name.startswith("digest") else ""
        print(f"{name:30s} {cells}{lead}")


def _print_reader(described: str, scores: dict[str, LibraryScore], compared: str) -> None:
    """A whole-reader table; digest's lead is on `compared` ("wanted" or "utility")."""
    _print_table(described, f"{'wanted@10':>16s} {'unwanted@10':>12s} {'utility@10':>16s} "
                            f"{'time':>8s}", {
        name: (getattr(t, compared), f"{t.wanted:8.3f} ± {t.wanted_spread:.3f} "
                                     f"{t.unwanted:12.3f} {t.utility:8.3f} ± "
                                     f"{t.utility_spread:.3f} {t.seconds:7.1f}s")
        for name, t in scores.items()})


def _params(changes: Sequence[str]) -> RankParams:
    """RankParams with `NAME=VALUE` changes, each value of its field's type."""
    values: dict[str, object] = {}
    for change in changes:
        name, _, text = change.partition("=")
        if name not in RankParams.__dataclass_fields__:
            raise SystemExit(f"--param {change}: RankParams has no field {name!r}")
        kind = type(getattr(DEFAULT_PARAMS, name))
        values[name] = kind(text)
    return replace(DEFAULT_PARAMS, **values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-embeddings", action="store_true")
    parser.add_argument("--topics", type=int, default=0, help="only the first N topics")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="rank with this RankParams field changed (repeatable)")
    args = parser.parse_args()
    started = time.perf_counter()
    params = _params(args.param)
    if args.param:
        print(f"digest ranks with: {', '.join(args.param)}")
    days = build_days(load_topics(), not args.no_embeddings, params)
    scores, described = evaluate(args.splits, args.seed, not args.no_embeddings, args.topics,
                                 days=days)
    _print_table(described, f"{'recall@10':>16s} {'nDCG@10':>16s} {'time':>8s}", {
        name: (s.recall, f"{s.recall:8.3f} ± {s.recall_spread:.3f} {s.ndcg:8.3f} ± "
                         f"{s.ndcg_spread:.3f} {s.seconds:7.1f}s")
        for name, s in scores.items()})
    library, described = evaluate_library(args.splits, args.seed, not args.no_embeddings,
                                          days=days)
    print()
    _print_reader(described, library, "wanted")
    named, described = evaluate_names(args.splits, args.seed, not args.no_embeddings, days=days)
    print()
    _print_reader(described, named, "utility")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
