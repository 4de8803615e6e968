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

A fourth view (`evaluate_cold_start`) gives the names view's profile, below edition 1's
picks, papers to rate chosen to cover what the picks leave out (`RankRequest.ask`), and
measures edition 2 after the reader rates them, the picks, both or nothing. A fifth
(`evaluate_loop`) is the loop the daemon lives in: a simulated reader receives edition 1,
clicks "more like this" on the papers it wants and (one kind of reader) "less like this"
on the others, each click the edit its link makes to the profile file, and receives
editions 2-5 from the rest of the pool; digest against arxiv-sanity-lite's SVM and a
tf-idf centroid retrained on the same clicks each round, per topic and for the whole
reader.

    python benchmarks/quality.py [--splits 5] [--seed 0] [--no-embeddings]
                                 [--model NAME] [--view NAME ...] [--param NAME=VALUE ...]

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
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from digest.embed import DEFAULT_MODEL, MODELS, load_embedder, paper_vectors
from digest.identity import normalise_title
from digest.models import ASK_SECTION, Interest, Paper, Profile
from digest.profiles import load_profile, new_profile_text, set_feedback, set_fields
from digest.rank import (
    DEFAULT_PARAMS,
    Corpus,
    Preferences,
    RankParams,
    RankRequest,
    build_corpus,
    prepare_candidates,
    rank_many,
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
    embeddings: np.ndarray | None  # unit rows of the store, from the sentence model (--model)


def embed_all(texts: list[str], use: bool, model: str = DEFAULT_MODEL) -> np.ndarray | None:
    """The sentence model's vectors of every text, cached on disk by model and content
    (computing them is slow)."""
    if not use:
        return None
    embedder = load_embedder("auto", model)
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
               params: RankParams = DEFAULT_PARAMS, model: str = DEFAULT_MODEL) -> list[Day]:
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
    vectors = embed_all(texts, use_embeddings, model)  # the whole texts', for zotero
    embedder = load_embedder("auto", model) if vectors is not None else None
    corpus = build_corpus(papers, params=params)
    corpus_emb = None
    if vectors is not None and embedder is not None:  # digest's: as `digest rank` makes them
        corpus_emb = build_corpus(
            papers, embeddings=paper_vectors(lambda t: embed_all(list(t), True, model),
                                             papers),
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
    profile = Profile(subscriber_id="bench", path=Path("bench.yaml"), name="Bench",
                      email="bench@example.org", min_score=-1e9, interests=interests,
                      avoid=avoid)
    prefs = Preferences(profile=profile, liked=tuple(day.papers[i] for i in liked),
                        disliked=tuple(day.papers[i] for i in disliked))
    picks = _digest_top(day, use_embeddings, pool, prefs)
    scores = np.full(len(pool), -1e9)
    position = {int(row): i for i, row in enumerate(pool)}
    for rank, row in enumerate(picks):
        scores[position[row]] = len(picks) - rank
    return scores


def _digest_top(day: Day, use_embeddings: bool, pool: np.ndarray, prefs: Preferences,
                shown: Collection[int] = ()) -> list[int]:
    """digest's picks of the pool, best first, as rows of the store: `rank_papers` as
    `digest rank` runs it, none of the `shown` rows (the ledger's papers already sent)."""
    return _digest_edition(day, use_embeddings, pool, prefs, shown)[0]


def _digest_edition(day: Day, use_embeddings: bool, pool: np.ndarray, prefs: Preferences,
                    shown: Collection[int] = (), ask: int = 0) -> tuple[list[int], list[int]]:
    """`_digest_top`, and the `ask` papers the email asks the reader to rate (the picks
    in its ASK_SECTION)."""
    corpus = day.corpus_emb if use_embeddings else day.corpus
    assert corpus is not None
    candidates = prepare_candidates(corpus, [day.papers[i] for i in pool])
    request = RankRequest(prefs, K, frozenset(day.papers[i].row_id for i in shown), None, ask)
    picks = rank_many(corpus, candidates, [request])[0]
    return ([day.index[p.paper.key] for p in picks if p.section != ASK_SECTION],
            [day.index[p.paper.key] for p in picks if p.section == ASK_SECTION])


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
        methods["zotero-arxiv-daily (similarity)"] = zotero_similarity  # of --model
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


def _topic_trials(topics: dict[str, list[dict[str, str]]], days: list[Day], splits: int,
                  seed: int) -> Iterator[tuple[int, Day, np.ndarray, set[int], np.ndarray]]:
    """Each split of each topic's papers, on each day: the split's number, the day, the
    liked (seed) rows, the hidden rows and the pool (the day's papers but the topic's own,
    and the hidden ones) as rows of the store."""
    split_rng = random.Random(seed)
    for split in range(splits):
        for day in days:
            day_keys = set(day.keys)
            for papers in topics.values():
                keys = sorted({normalise_title(p["title"]) for p in papers})
                split_rng.shuffle(keys)
                n_seeds = max(3, len(keys) - len(keys) // 2)
                seeds, hidden = keys[:n_seeds], keys[n_seeds:]
                pool_keys = sorted((day_keys - set(keys)) | set(hidden))
                yield (split, day, np.array([day.index[k] for k in seeds]),
                       {day.index[k] for k in hidden},
                       np.array([day.index[k] for k in pool_keys]))


def _studied_topics(only_topics: int = 0) -> dict[str, list[dict[str, str]]]:
    """The topics a subscriber is made of (at least MIN_TOPIC filed papers)."""
    topics = {t: ps for t, ps in load_topics().items() if len(ps) >= MIN_TOPIC}
    return dict(list(topics.items())[:only_topics]) if only_topics else topics


def evaluate(splits: int = 5, seed: int = 0, use_embeddings: bool = True,
             only_topics: int = 0, days: list[Day] | None = None
             ) -> tuple[dict[str, Score], str]:
    """Run every method on the same splits; returns scores by method and a description."""
    topics = _studied_topics(only_topics)
    days = days or build_days(load_topics(), use_embeddings)
    have_embeddings = days[0].embeddings is not None
    methods = _methods(have_embeddings)
    # results[method][split] = (recall, ndcg) for every day x topic
    results: dict[str, dict[int, list[tuple[float, float]]]] = {m: {} for m in methods}
    timings = dict.fromkeys(methods, 0.0)
    none = np.array([], dtype=np.int64)
    for split, day, seed_rows, hidden_rows, pool_rows in _topic_trials(topics, days, splits,
                                                                       seed):
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


# The closed loop: editions, clicks, editions. A simulated reader receives edition 1 from
# its profile, clicks "more like this" on the shown papers it wants (its hidden papers) and,
# as one kind of reader does, "less like this" on the others; editions 2..EDITIONS come
# from the rest of the same pool (a paper once shown never returns, as the ledger sees to).
EDITIONS = 5
READERS = {"clicks more and less": True, "clicks more only": False}


class Learner(Protocol):
    """A method in the loop: the next edition's rows, and what the reader clicked."""

    def top(self, pool: np.ndarray, shown: set[int]) -> list[int]: ...

    def clicked(self, more: list[int], less: list[int]) -> None: ...


# A learner for a trial: the day, the liked rows, the disliked rows, a folder of its own.
LearnerFactory = Callable[[Day, np.ndarray, np.ndarray, Path], Learner]


class PeerLearner:
    """A peer's method, retrained each edition on the liked papers and the "more" clicks
    (the peers have no use for disliked papers, nor for "less")."""

    def __init__(self, method: Method, day: Day, liked: np.ndarray):
        self.method, self.day, self.liked = method, day, [int(r) for r in liked]

    def top(self, pool: np.ndarray, shown: set[int]) -> list[int]:
        rest = np.array([r for r in pool.tolist() if r not in shown])
        none = np.array([], dtype=np.int64)
        return _top(self.method, self.day, np.array(self.liked), none, rest, random.Random(0))

    def clicked(self, more: list[int], less: list[int]) -> None:
        self.liked += more


class DigestLearner:
    """digest as the daemon runs it: the profile is a YAML file; a click is the edit its
    signed link makes (`profiles.set_feedback`, with the paper's arXiv id or title, as
    `digest serve` does); each edition is ranked from the file as it then reads, the
    papers sent before excluded."""

    def __init__(self, day: Day, use_embeddings: bool, folder: Path, *,
                 liked: Sequence[int] = (), disliked: Sequence[int] = (),
                 interests: dict[str, float] | None = None, avoid: Sequence[str] = ()):
        self.day, self.use_embeddings = day, use_embeddings
        self.path = folder / "bench.yaml"
        self.path.write_text(new_profile_text("Bench", "bench@example.org", []),
                             encoding="utf-8")
        edit = set_fields(self.path, {
            "liked": [day.papers[r].title for r in liked],
            "disliked": [day.papers[r].title for r in disliked],
            "interests": [{"text": t, "weight": w} for t, w in (interests or {}).items()],
            "avoid": list(avoid)})
        assert not edit.problems, edit.problems

    def top(self, pool: np.ndarray, shown: set[int]) -> list[int]:
        return self.edition(pool, shown)[0]

    def edition(self, pool: np.ndarray, shown: set[int], ask: int = 0
                ) -> tuple[list[int], list[int]]:
        """The picks, and `ask` papers more for the reader to rate."""
        profile = load_profile(self.path)
        rows = self.day.index
        prefs = Preferences(
            profile=profile,
            liked=tuple(self.day.papers[rows[normalise_title(t)]] for t in profile.liked),
            disliked=tuple(self.day.papers[rows[normalise_title(t)]] for t in profile.disliked))
        return _digest_edition(self.day, self.use_embeddings, pool, prefs, shown, ask)

    def clicked(self, more: list[int], less: list[int]) -> None:
        for rows, liked in ((more, True), (less, False)):
            for row in rows:
                set_feedback(self.path, self.day.papers[row].title, liked=liked)


def _loop_learners(have_embeddings: bool) -> dict[str, LearnerFactory]:
    learners: dict[str, LearnerFactory] = {
        "tf-idf centroid": lambda day, liked, disliked, folder: PeerLearner(
            tfidf_centroid, day, liked),
        "arxiv-sanity-lite (SVM)": lambda day, liked, disliked, folder: PeerLearner(
            arxiv_sanity_svm, day, liked),
    }
    for name, embedded in (("digest (default)", False), ("digest (embeddings)", True)):
        if embedded and not have_embeddings:
            continue
        learners[name] = partial(_digest_learner, embedded)
    return learners


def _digest_learner(use_embeddings: bool, day: Day, liked: np.ndarray, disliked: np.ndarray,
                    folder: Path) -> Learner:
    return DigestLearner(day, use_embeddings, folder, liked=liked.tolist(),
                         disliked=disliked.tolist())


def run_loop(learner: Learner, pool: np.ndarray, wanted: set[int], click_less: bool
             ) -> list[tuple[int, int]]:
    """EDITIONS editions of K papers: for each, the wanted papers found in it and those
    still unfound before it. The reader clicks "more" on each wanted paper shown and, if
    `click_less`, "less" on each other one."""
    shown: set[int] = set()
    unfound = set(wanted)
    counts = []
    for _ in range(EDITIONS):
        top = learner.top(pool, shown)
        found = [r for r in top if r in unfound]
        counts.append((len(found), len(unfound)))
        unfound -= set(found)
        shown |= set(top)
        learner.clicked(found, [r for r in top if r not in wanted] if click_less else [])
    return counts


@dataclass(frozen=True)
class LoopScore:
    recall: list[float]  # per edition: recall@K over the wanted papers still unfound
    spread: list[float]
    share: float  # after the last edition: the share of the wanted papers found
    share_spread: float
    seconds: float


def _loop_view(trials: Iterable[tuple[int, Day, np.ndarray, np.ndarray, set[int],
                                      np.ndarray]],
               learners: dict[str, LearnerFactory]) -> dict[str, dict[str, LoopScore]]:
    """Every learner through the loop with each kind of reader (READERS) on the same
    trials (split, day, liked rows, disliked rows, wanted rows, pool); scores by reader,
    then by learner."""
    # counts[reader][learner][split]: per trial, per edition, (found, unfound before)
    counts: dict[str, dict[str, dict[int, list[list[tuple[int, int]]]]]] = {
        reader: {name: {} for name in learners} for reader in READERS}
    timings = {reader: dict.fromkeys(learners, 0.0) for reader in READERS}
    with tempfile.TemporaryDirectory(prefix="digest-loop-") as folder:
        for split, day, liked, disliked, wanted, pool in trials:
            for reader, click_less in READERS.items():
                for name, make in learners.items():
                    tick = time.perf_counter()
                    learner = make(day, liked, disliked, Path(folder))
                    found = run_loop(learner, pool, wanted, click_less)
                    timings[reader][name] += time.perf_counter() - tick
                    counts[reader][name].setdefault(split, []).append(found)
    scores: dict[str, dict[str, LoopScore]] = {}
    for reader, by_learner in counts.items():
        scores[reader] = {}
        for name, by_split in by_learner.items():
            # per split: the mean recall of each edition (over trials with papers still
            # unfound), and the mean share found after the last
            recall = np.array([[np.mean([f / u for f, u in (t[e] for t in trials) if u])
                                for e in range(EDITIONS)] for trials in by_split.values()])
            share = np.array([np.mean([sum(f for f, _ in t) / t[0][1] for t in trials])
                              for trials in by_split.values()])
            scores[reader][name] = LoopScore(
                recall.mean(axis=0).tolist(), recall.std(axis=0).tolist(),
                float(share.mean()), float(share.std()), timings[reader][name])
    return scores


def evaluate_loop(splits: int = 5, seed: int = 0, use_embeddings: bool = True,
                  only_topics: int = 0, days: list[Day] | None = None
                  ) -> list[tuple[str, dict[str, dict[str, LoopScore]]]]:
    """The closed loop, per topic (each topic a subscriber, as in `evaluate`, the same
    splits) and for the whole reader (its library, as in `evaluate_library`; "more" on the
    hidden wanted papers, "less" on every other one shown)."""
    days = days or build_days(load_topics(), use_embeddings)
    learners = _loop_learners(days[0].embeddings is not None)
    none = np.array([], dtype=np.int64)
    topics = _studied_topics(only_topics)
    per_topic = _loop_view(((split, day, liked, none, hidden, pool) for split, day, liked,
                            hidden, pool in _topic_trials(topics, days, splits, seed)),
                           learners)
    reader = load_reader(load_topics())
    whole = _loop_view((
        (split, day, np.array([day.index[k] for k in liked]),
         np.array([day.index[k] for k in disliked]), {day.index[k] for k in hidden}, pool)
        for split, day, liked, disliked, hidden, _, pool in _reader_trials(
            reader, days, splits, seed)), learners)
    return [(f"per topic: {len(topics)} topics x {len(days)} days x {splits} splits "
             f"(seed {seed})", per_topic),
            (f"the whole reader: its library liked and disliked, {len(days)} days x "
             f"{splits} splits (seed {seed})", whole)]


# Cold start: a profile of interest words alone (the names view) gets, below edition 1's
# picks, ASK papers to rate; edition 2 is measured after each way of rating.
ASK = 5
ARMS = {  # what the reader rates in edition 1: (the picks, the papers asked about)
    "no ratings": (False, False),
    "rates the picks": (True, False),
    "rates the papers asked about": (False, True),
    "rates both": (True, True),
}


def evaluate_cold_start(splits: int = 5, seed: int = 0, use_embeddings: bool = True,
                        days: list[Day] | None = None
                        ) -> tuple[dict[str, dict[str, LibraryScore]], str]:
    """The names view's profile (`evaluate_names`, the same pools): edition 1 is its picks
    and ASK papers asked about (`RankRequest.ask`); the reader clicks "more" on the wanted
    papers and "less" on the others of what it rates (ARMS); edition 2's picks are scored
    as in the names view. By digest method, then arm."""
    filed = load_topics()
    reader = load_reader(filed)
    days = days or build_days(filed, use_embeddings)
    wanted = {n: w for n, w in reader.weights.items() if w > 0}
    avoided = [n for n, w in reader.weights.items() if w <= 0]
    methods = {"digest (default)": False}
    if days[0].embeddings is not None:
        methods["digest (embeddings)"] = True
    results: dict[str, dict[str, dict[int, list[tuple[float, float, float]]]]] = {
        m: {arm: {} for arm in ARMS} for m in methods}
    timings = {m: dict.fromkeys(ARMS, 0.0) for m in methods}
    with tempfile.TemporaryDirectory(prefix="digest-cold-") as folder:
        for split, day, _, _, hidden, hidden_bad, pool in _reader_trials(reader, days, splits,
                                                                         seed):
            good = {day.index[k] for k in hidden}
            for name, embedded in methods.items():
                def learner() -> DigestLearner:
                    return DigestLearner(day, embedded, Path(folder),  # noqa: B023
                                         interests=wanted, avoid=avoided)

                picks, asked = learner().edition(pool, set(), ASK)
                for arm, (rate_picks, rate_asked) in ARMS.items():
                    tick = time.perf_counter()
                    profile = learner()
                    rated = picks * rate_picks + asked * rate_asked
                    profile.clicked([r for r in rated if r in good],
                                    [r for r in rated if r not in good])
                    shown = set(picks) | (set(asked) if rate_asked else set())
                    top = profile.edition(pool, shown)[0]
                    timings[name][arm] += time.perf_counter() - tick
                    results[name][arm].setdefault(split, []).append(
                        _reader_scores(reader, day, hidden, hidden_bad, top))
    scores: dict[str, dict[str, LibraryScore]] = {}
    for name, by_arm in results.items():
        scores[name] = {}
        for arm, by_split in by_arm.items():
            per_split = np.array([np.mean(v, axis=0) for v in by_split.values()])
            mean, spread = per_split.mean(axis=0), per_split.std(axis=0)
            scores[name][arm] = LibraryScore(float(mean[0]), float(spread[0]), float(mean[1]),
                                             float(mean[2]), float(spread[2]),
                                             timings[name][arm])
    described = (f"cold start: the names view's profile, edition 2 after edition 1's picks "
                 f"and {ASK} papers asked about ({len(days)} days x {splits} splits, "
                 f"seed {seed})")
    return scores, described


def _print_loop(described: str, scores: dict[str, dict[str, LoopScore]]) -> None:
    """A loop table per reader: recall@K of each edition over the papers still unfound,
    and the share found after the last; digest's ratio to the SVM's below each."""
    for reader, by_learner in scores.items():
        print(f"closed loop, {described}; the reader {reader}")
        editions = " ".join(f"{'edition ' + str(e + 1):>9s}" for e in range(EDITIONS))
        print(f"{'method':30s} {editions} {'found':>7s} {'time':>8s}")
        svm = by_learner["arxiv-sanity-lite (SVM)"]
        for name, t in by_learner.items():
            print(f"{name:30s} " + " ".join(f"{r:9.3f}" for r in t.recall)
                  + f" {t.share:7.3f} {t.seconds:7.1f}s")
            if name.startswith("digest"):
                print(f"{'  vs the SVM':30s} "
                      + " ".join(f"{r / b - 1 if b else 0:+9.0%}"
                                 for r, b in zip(t.recall, svm.recall, strict=True))
                      + f" {t.share / svm.share - 1:+7.0%}")
        print()


def _print_table(described: str, header: str, rows: dict[str, tuple[float, str]]) -> None:
    """A table: each method's cells (`rows`: name -> the figure compared, the cells), and
    for digest's, the lead over the best baseline (random aside)."""
    best = max(figure for name, (figure, _) in rows.items()
               if not name.startswith("digest") and name != "random")
    width = max(30, *map(len, rows))
    print(described)
    print(f"{'method':{width}s} {header}")
    for name, (figure, cells) in rows.items():
        lead = f"  {figure / best - 1:+.0%} vs best baseline" if name.startswith("digest") else ""
        print(f"{name:{width}s} {cells}{lead}")


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


VIEWS = ("topics", "library", "names", "cold", "loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-embeddings", action="store_true")
    parser.add_argument("--topics", type=int, default=0, help="only the first N topics")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="rank with this RankParams field changed (repeatable)")
    parser.add_argument("--model", choices=list(MODELS), default=DEFAULT_MODEL,
                        help="the sentence model of the embeddings rows")
    parser.add_argument("--view", action="append", choices=VIEWS, default=[],
                        help="only this view (repeatable; default: all)")
    args = parser.parse_args()
    started = time.perf_counter()
    params = _params(args.param)
    if args.param:
        print(f"digest ranks with: {', '.join(args.param)}")
    views = args.view or list(VIEWS)
    embeddings = not args.no_embeddings
    days = build_days(load_topics(), embeddings, params, args.model)
    if embeddings and days[0].embeddings is not None:
        print(f"embeddings: {args.model}")
    if "topics" in views:
        scores, described = evaluate(args.splits, args.seed, embeddings, args.topics,
                                     days=days)
        _print_table(described, f"{'recall@10':>16s} {'nDCG@10':>16s} {'time':>8s}", {
            name: (s.recall, f"{s.recall:8.3f} ± {s.recall_spread:.3f} {s.ndcg:8.3f} ± "
                             f"{s.ndcg_spread:.3f} {s.seconds:7.1f}s")
            for name, s in scores.items()})
        print()
    if "library" in views:
        library, described = evaluate_library(args.splits, args.seed, embeddings, days=days)
        _print_reader(described, library, "wanted")
        print()
    if "names" in views:
        named, described = evaluate_names(args.splits, args.seed, embeddings, days=days)
        _print_reader(described, named, "utility")
        print()
    if "cold" in views:
        cold, described = evaluate_cold_start(args.splits, args.seed, embeddings, days=days)
        print(described)
        print(f"{'edition 2, the reader':50s} {'wanted@10':>16s} {'unwanted@10':>12s} "
              f"{'utility@10':>16s} {'time':>8s}")
        for name, by_arm in cold.items():
            for arm, t in by_arm.items():
                print(f"{name + ', ' + arm:50s} {t.wanted:8.3f} ± {t.wanted_spread:.3f} "
                      f"{t.unwanted:12.3f} {t.utility:8.3f} ± {t.utility_spread:.3f} "
                      f"{t.seconds:7.1f}s")
        print()
    if "loop" in views:
        for described, looped in evaluate_loop(args.splits, args.seed, embeddings,
                                               args.topics, days=days):
            _print_loop(described, looped)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
