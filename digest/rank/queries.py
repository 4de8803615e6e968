"""Queries: each profile's phrases and papers as tf-idf query rows, scored on every
candidate and reference paper in a few sparse products, kept by key for the profiles
ranked after (they share most of them), and mixed into liked-papers (Rocchio) queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from digest.models import Paper
from digest.rank.corpus import Candidates, Corpus, SparseRows

# ("phrase", interest or avoided topic), ("text", liked title), ("whole", paper text),
# ("linking" or "vector", row_id)
Key = tuple[str, Any]


def paper_keys(corpus: Corpus, papers: Sequence[Paper], kind: str
               ) -> list[tuple[Key, Paper | None]]:
    """Stored papers by row id (`kind`: "linking" or "vector"); when any is not stored,
    every one by its whole text (as `Corpus.vectors` does)."""
    if all(p.row_id in corpus.rows for p in papers):
        return [((kind, p.row_id), p) for p in papers]
    return [(("whole", p.text), None) for p in papers]


def candidate_key(corpus: Corpus, paper: Paper) -> tuple[Key, Paper | None]:
    """A candidate's key as a liked-papers query (a feedback paper), and the paper if it is
    stored."""
    if paper.row_id in corpus.rows:
        return ("linking", paper.row_id), paper
    return ("whole", paper.text), None


@dataclass(frozen=True)
class QueryScores:
    """Query rows and their scores on `Candidates.scoring` (one row of `scores` each), found
    by key."""

    index: dict[Key, int]
    rows: list[SparseRows]
    scores: np.ndarray  # float64, (queries, scoring rows)

    def columns(self, keys: Sequence[Key]) -> np.ndarray:
        return np.fromiter((self.index[k] for k in keys), dtype=np.int64, count=len(keys))


class QueryBank:
    """Query rows scored on the candidates, kept by key for the profiles ranked after: a
    phrase (an interest, an avoided topic, a liked title), a stored paper as a liked or
    feedback paper (its linking vector) or as a disliked one (its whole vector), a paper
    not stored (its whole text). Profiles share most of them: the same topics, the same
    few candidates as feedback. Up to the corpus's `params.query_cache_bytes` of scores are
    kept; when a batch's new queries do not fit, the bank starts afresh."""

    def __init__(self) -> None:
        self.index: dict[Key, int] = {}
        self.rows: list[SparseRows] = []
        self.scores = np.zeros((0, 0))  # rows for the first `len(index)` queries

    def lookup(self, corpus: Corpus, candidates: Candidates,
               wanted: Mapping[Key, Paper | None]) -> QueryScores:
        """The scores of every wanted query (a stored paper's key maps to the paper). Valid
        until the next lookup."""
        width = candidates.scoring.shape[0]
        capacity = corpus.params.query_cache_bytes // (8 * max(width, 1))
        if self.scores.shape[1] != width:  # the first lookup: rows as wide as the candidates'
            self.scores = np.zeros((0, width))
        if len(wanted) > capacity:  # more than the bank holds: these, this once
            keys = list(wanted)
            rows, scores = _score_queries(corpus, candidates, keys, wanted)
            return QueryScores({k: i for i, k in enumerate(keys)}, rows, scores)
        missing = [k for k in wanted if k not in self.index]
        if len(self.index) + len(missing) > capacity:
            self.index, self.rows = {}, []
            missing = list(wanted)
        if missing:
            rows, scores = _score_queries(corpus, candidates, missing, wanted)
            used = len(self.index)
            if len(self.scores) < used + len(missing):
                grown = np.empty((min(capacity, max(2 * len(self.scores), used + len(missing),
                                                    64)), width))
                grown[:used] = self.scores[:used]
                self.scores = grown
            self.scores[used:used + len(missing)] = scores
            self.index.update((k, used + i) for i, k in enumerate(missing))
            self.rows.extend(rows)
        return QueryScores(self.index, self.rows, self.scores)


def _score_queries(corpus: Corpus, candidates: Candidates, keys: Sequence[Key],
                   sources: Mapping[Key, Paper | None]) -> tuple[list[SparseRows], np.ndarray]:
    """The query row of each key, and its scores (`scoring @ row`, float64) as a row."""
    found: dict[Key, SparseRows] = {}
    for kind in ("phrase", "text", "whole", "linking", "vector"):
        of_kind = [k for k in keys if k[0] == kind]
        if not of_kind:
            continue
        if kind in ("phrase", "text"):
            rows = corpus.transform([k[1] for k in of_kind])
        elif kind == "whole":
            rows = SparseRows.of(corpus.vectorizer.transform([k[1] for k in of_kind]))
        else:
            papers = [sources[k] for k in of_kind]
            assert all(p is not None for p in papers)
            rows = (corpus.linking_vectors if kind == "linking" else corpus.vectors)(
                [p for p in papers if p is not None])
        found.update(zip(of_kind, rows.split(), strict=True))
    ordered = [found[k] for k in keys]
    scores = products(candidates, SparseRows.stack(ordered))
    for i, key in enumerate(keys):
        if key[0] == "phrase":
            _prefer_the_phrase(corpus, candidates, ordered[i], scores[i])
    return ordered, scores


def _prefer_the_phrase(corpus: Corpus, candidates: Candidates, row: SparseRows,
                       scores: np.ndarray) -> None:
    """A phrase of several words (an interest, an avoided topic) is about papers holding
    the phrase, or a close variant (its words in other forms: "state-space model"), not
    its words scattered ("the state of the art" ... "latent space" ... "models"). The
    phrase's word pairs are terms of the model: a paper holding none of them keeps only
    `params.scattered_phrase` of its score. Candidates and reference papers alike, so
    what is typical is measured the same way."""
    pairs = [t for t in row.terms.tolist() if " " in str(corpus.terms[t])]
    if not pairs:
        return
    by_term = candidates.by_term
    holders = np.zeros(len(scores), dtype=bool)
    for term in pairs:
        holders[by_term.indices[by_term.indptr[term]:by_term.indptr[term + 1]]] = True
    scores[~holders] *= corpus.params.scattered_phrase


def products(candidates: Candidates, queries: SparseRows) -> np.ndarray:
    """`queries @ scoring.T` (float64, a row per query), in scipy's sparse product: it
    reads only the rows of the queries' terms, and accumulates in C (a liked paper's query
    has a hundred terms or more, many of them in most papers)."""
    rows = queries.to_csr(candidates.by_term.shape[0]).astype(np.float64)
    return np.asarray((rows @ candidates.by_term).toarray())


Groups = Sequence[tuple[Sequence[Key], np.ndarray | None]]  # queries and their weights


def flattened(bank: QueryScores, groups: Groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each group's number of queries, which groups have any, and every group's queries'
    rows in the bank, one group after the other."""
    sizes = np.array([len(keys) for keys, _ in groups], dtype=np.int64)
    return sizes, sizes > 0, bank.columns([k for keys, _ in groups for k in keys])


def rocchio(vectors: np.ndarray, common: np.ndarray | None,
            weights: np.ndarray | None = None, *, beta: float) -> np.ndarray:
    """The rows' (weighted) unit centroid, less `beta` times `common` if given, at unit
    length (`RankParams.rocchio_beta`)."""
    centroid = np.asarray(np.average(vectors, axis=0, weights=weights)).ravel()
    centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-9)
    if common is not None:
        centroid = centroid - beta * common
    return (centroid / max(float(np.linalg.norm(centroid)), 1e-9)).astype(np.float32)


def rocchio_scores(corpus: Corpus, candidates: Candidates, bank: QueryScores,
                   groups: Groups) -> tuple[np.ndarray, np.ndarray]:
    """For each group of query rows (with weights, or None for 1 each), every scoring row's
    cosine with `rocchio(rows, corpus.common, weights, beta=corpus.params.rocchio_beta)`
    (float32); and which groups have a row at all.

    The query is the rows' weighted unit centroid minus a share of the common direction,
    normalised: a linear mix, so its scores mix the rows' scores and the common
    direction's (prepared once), and the dense query is never built.
    """
    sizes, present, columns = flattened(bank, groups)
    result = np.zeros((len(groups), bank.scores.shape[1]), dtype=np.float32)
    if not present.any():
        return result, present
    beta = corpus.params.rocchio_beta
    shares = np.concatenate([
        np.full(len(keys), 1 / len(keys)) if w is None else w.astype(np.float64) / float(w.sum())
        for keys, w in groups if keys])
    count = int(present.sum())
    rows = SparseRows.stack([bank.rows[c] for c in columns]).to_csr(len(corpus.terms))
    bounds = np.r_[0, np.cumsum(sizes[present])]  # each group's queries among `columns`
    # Each group's weighted centroid (a sparse row), summed by scipy's product.
    weighing = sparse.csr_matrix((shares, np.arange(len(shares)), bounds),
                                 shape=(count, len(shares)))
    centroids = weighing @ rows.astype(np.float64)
    length = np.sqrt(np.asarray(centroids.multiply(centroids).sum(axis=1)).ravel())
    scale = np.maximum(length, 1e-9)
    along = (centroids @ corpus.common.astype(np.float64)) / scale
    squared = ((length / scale) ** 2 - 2 * beta * along
               + (beta * candidates.common_norm) ** 2)
    norm = np.maximum(np.sqrt(np.maximum(squared, 0.0)), 1e-9)
    # Each group's rows' scores mixed by their shares: a sparse (groups x queries) matrix
    # times the bank's scores, adding the rows in order as a sum of products would.
    mixing = sparse.csr_matrix((shares, columns, bounds), shape=(count, len(bank.scores)))
    mixed = mixing @ bank.scores
    result[present] = ((mixed / scale[:, None] - beta * candidates.common_scores)
                       / norm[:, None])
    return result, present
