"""Evidence: each profile's query scores turned into kinds of evidence (interests, liked
papers, a classifier, penalties), each in standard deviations above the typical stored
paper, averaged into one score; and the top chosen with maximal marginal relevance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse

from digest.rank.corpus import Candidates, Corpus, SparseRows
from digest.rank.plans import Plan, Preferences, RankRequest, learns_from_ratings
from digest.rank.queries import (
    Groups,
    Key,
    QueryScores,
    candidate_key,
    flattened,
    rocchio,
    rocchio_scores,
)


@dataclass(frozen=True)
class Scale:
    """Standard deviations above the typical stored paper, for rows of scores: each row a
    query's scores on the candidates (its first `n` columns), then on the reference papers.
    A spread below `min_spread` (cosine units) counts as `min_spread`."""

    n: int
    min_spread: float

    def typical(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's mean and standard deviation on the reference papers."""
        reference = scores[:, self.n:]
        return reference.mean(axis=1), reference.std(axis=1)

    def own(self, scores: np.ndarray) -> np.ndarray:
        """Each row of scores, the reference papers' too, on this scale, and 0 where below
        typical. Several phrases are compared on this scale before their weights apply: a
        cosine's size says as much about the phrase (one rare word or several common ones;
        in sentence-embedding space, how close short texts sit to everything) as about the
        paper. A phrase counts only where it matches better than typical, so one that
        matches nothing, or weighs little, changes nothing."""
        mean, spread = self.typical(scores)
        spread = np.maximum(spread, np.float32(self.min_spread))
        scaled: np.ndarray = np.maximum((scores - mean[:, None]) / spread[:, None], 0)
        return scaled

    def standardised(self, scores: np.ndarray, present: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Each row's scores of the candidates on this scale, and which rows are
        informative: present and not matching nothing at all (e.g. an interest made only
        of stop words). The spread's floor keeps a query matching almost nothing from
        making one faint match look huge."""
        ahead = scores[:, :self.n]
        mean, spread = self.typical(scores)
        informative = present & ((ahead.max(axis=1, initial=0.0) > 0) | (spread > 0))
        standard = ((ahead - mean[:, None])
                    / np.maximum(spread, np.float32(self.min_spread))[:, None])
        return standard, informative


def mean_of(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Row by row, the mean of the parts present there (each: values and a row mask), and
    which rows have any."""
    total = np.zeros_like(parts[0][0])
    count = np.zeros(len(total), dtype=total.dtype)
    for values, present in parts:
        total += np.where(present[:, None], values, np.zeros((), dtype=total.dtype))
        count += present
    return total / np.maximum(count, 1)[:, None], count > 0


def best_of(bank: QueryScores, groups: Groups, own_scale: Scale | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """For each group of queries (with weights, or None for 1 each), every scoring row's
    best weighted score among them (float32); and which groups have a query at all. With
    `own_scale`, each query's scores are first put on it (`Scale.own`)."""
    sizes, present, columns = flattened(bank, groups)
    best = np.zeros((len(groups), bank.scores.shape[1]), dtype=np.float32)
    if present.any():
        scores = bank.scores[columns].astype(np.float32)
        if own_scale is not None:
            scores = own_scale.own(scores)
        if any(w is not None for _, w in groups):
            scores *= np.concatenate([np.ones(len(keys), dtype=np.float32) if w is None else w
                                      for keys, w in groups])[:, None]
        starts = np.cumsum(sizes) - sizes
        best[present] = np.maximum.reduceat(scores, starts[present], axis=0)
    return best, present


def semantic(candidates: Candidates,
             queries: Sequence[tuple[np.ndarray, np.ndarray | None] | None],
             own_scale: Scale | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each profile's embedded queries (with weights), or None: every scoring row's
    best weighted cosine with them (with `own_scale`, each query's cosines on it first);
    and which profiles have any."""
    width = candidates.scoring.shape[0]
    scores = np.zeros((len(queries), width), dtype=np.float32)
    present = np.zeros(len(queries), dtype=bool)
    if candidates.scoring_embeddings is None:
        return scores, present
    for j, query in enumerate(queries):
        if query is not None:
            vectors, weights = query
            cosines = candidates.scoring_embeddings @ vectors.T
            if own_scale is not None:
                cosines = own_scale.own(cosines.T).T
            scores[j] = (cosines if weights is None else cosines * weights).max(axis=1)
            present[j] = True
    return scores, present


def liked_family(corpus: Corpus, candidates: Candidates, bank: QueryScores,
                 plans: Sequence[Plan], embedded: Sequence[np.ndarray | None], scale: Scale,
                 *, feedback: bool) -> tuple[np.ndarray, np.ndarray]:
    """The liked papers' evidence: the lexical Rocchio query and the embedding centroid,
    standardised and averaged; with `feedback`, each plan's feedback candidates join its
    liked papers at `params.feedback_weight`."""
    params = corpus.params
    groups: list[tuple[Sequence[Key], np.ndarray | None]] = []
    centroids: list[tuple[np.ndarray, None] | None] = []
    for plan, vectors in zip(plans, embedded, strict=True):
        if (not plan.liked and not feedback) or (feedback and not len(plan.feedback)):
            groups.append(([], None))
            centroids.append(None)
            continue
        keys, weights, vector_weights = list(plan.liked), None, None
        if feedback:
            added = np.full(len(plan.feedback), params.feedback_weight)
            keys += [candidate_key(corpus, candidates.papers[i])[0] for i in plan.feedback]
            weights = np.r_[np.ones(len(plan.liked)), added]
            if not plan.liked and candidates.embeddings is not None:
                vectors, vector_weights = candidates.embeddings[plan.feedback], added
            elif vectors is not None and candidates.embeddings is not None:
                vector_weights = np.r_[np.ones(len(vectors)), added]
                vectors = np.vstack([vectors, candidates.embeddings[plan.feedback]])
        groups.append((keys, weights))
        centroids.append(None if vectors is None else
                         (rocchio(vectors, None, vector_weights,
                                  beta=params.rocchio_beta)[None, :], None))
    lexical, present = rocchio_scores(corpus, candidates, bank, groups)
    return mean_of([scale.standardised(lexical, present),
                    scale.standardised(*semantic(candidates, centroids))])


def classifier_scores(corpus: Corpus, candidates: Candidates, prefs: Preferences
                      ) -> np.ndarray | None:
    """A linear classifier of liked against disliked papers, once there are
    `params.classifier_min_papers` of both: its scores on the scoring rows (float32)."""
    least = corpus.params.classifier_min_papers
    if len(prefs.liked) < least or len(prefs.disliked) < least:
        return None
    liked, disliked = corpus.vectors(prefs.liked), corpus.vectors(prefs.disliked)
    train = SparseRows.stack([liked, disliked]).to_csr(candidates.scoring.shape[1])
    labels = np.r_[np.ones(liked.count), np.zeros(disliked.count)]
    return _linear(train, labels, None, 1.0, candidates.scoring, class_weight="balanced")


def learned_scores(corpus: Corpus, candidates: Candidates, request: RankRequest
                   ) -> list[np.ndarray]:
    """The liked papers' evidence once the reader has rated papers digest sent them (a
    liked or disliked paper among `request.exclude`) and likes `classifier_min_papers`
    papers or more: a linear classifier of the liked
    papers against the disliked ones (each weighing `params.less_weight` of a liked one)
    and the stored reference papers (together weighing as much as the liked), as
    arxiv-sanity-lite learns against everything else. Its scores on the scoring rows
    (float32) from the tf-idf rows and, with the embeddings extra, from the papers'
    embeddings; none before any such rating.

    A rating of a paper digest chose says where the ranking erred, and "less like this"
    on a paper shown because it came close marks a boundary inside the topic rather than
    a region to avoid: a centroid can take neither into account, a classifier can."""
    if not learns_from_ratings(request, corpus.params.classifier_min_papers):
        return []
    prefs = request.prefs
    params = corpus.params
    stored, stored_rows = corpus.stored_sample()
    # A rated paper among the stored ones is not learned against: it weighs nothing there.
    rated = {corpus.rows.get(p.row_id) for p in (*prefs.liked, *prefs.disliked)}
    stored_weights = np.full(len(stored), len(prefs.liked) / max(len(stored), 1))
    stored_weights[np.isin(stored, np.array([r for r in rated if r is not None]))] = 0
    n_terms = candidates.scoring.shape[1]
    liked, disliked = corpus.vectors(prefs.liked), corpus.vectors(prefs.disliked)
    labels = np.r_[np.ones(liked.count), np.zeros(disliked.count + len(stored))]
    weights = np.r_[np.ones(liked.count), np.full(disliked.count, params.less_weight),
                    stored_weights]
    rated_rows = SparseRows.stack([liked, disliked]).to_csr(n_terms)
    rated_rows.sort_indices()
    train = sparse.vstack([rated_rows, stored_rows], format="csr")
    learned = [_linear(train, labels, weights, params.learned_c, candidates.scoring)]
    liked_vectors = corpus.paper_embeddings(prefs.liked)
    disliked_vectors = corpus.paper_embeddings(prefs.disliked) if prefs.disliked else None
    if (liked_vectors is not None and corpus.embeddings is not None
            and candidates.scoring_embeddings is not None):
        dense = np.vstack([liked_vectors,
                           *([disliked_vectors] if disliked_vectors is not None else []),
                           corpus.embeddings[stored]])
        if len(dense) == len(labels):
            learned.append(_linear(dense, labels, weights, params.learned_c,
                                   candidates.scoring_embeddings))
    return learned


def load_classifier_library() -> None:
    """Import what a profile's classifier needs now (scikit-learn: most of a second and
    70 MB): a process about to fork workers that may each learn one does it once, for all
    of them to share."""
    import sklearn.svm  # noqa: F401


def _linear(train: Any, labels: np.ndarray, weights: np.ndarray | None, c: float,
            scoring: Any, *, class_weight: str | None = None) -> np.ndarray:
    """A linear SVM's scores of `scoring`'s rows, learned from `train`'s (float32)."""
    # Imported here: only a profile that learns a classifier needs scikit-learn, whose
    # import takes most of a second (see digest.rank.tfidf).
    import sklearn
    from sklearn.svm import LinearSVC

    model = LinearSVC(C=c, class_weight=class_weight, max_iter=5000,
                      random_state=0)  # the same picks every run
    # The rows are finite and the parameters fixed: sklearn's checks would cost more than
    # they catch (learning from a dozen papers costs less than checking them).
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        model.fit(train, labels, sample_weight=weights)
    # What model.decision_function computes, without checking its input again.
    scores: np.ndarray = scoring @ model.coef_.ravel() + model.intercept_
    return scores.astype(np.float32)


class Similarity:
    """Cosine similarity between candidates (`matrix`: their rows), for MMR: computed per
    shortlist at first, from a table of every two candidates once enough profiles have
    asked (`RankParams.similarity_max_papers`, `similarity_pairs_per_profile`)."""

    def __init__(self, matrix: sparse.csr_matrix, *, max_papers: int,
                 pairs_per_profile: int):
        self.matrix = matrix
        self.asked = 0
        self.table: np.ndarray | None = None
        self._max_papers = max_papers
        self._pairs_per_profile = pairs_per_profile

    def among(self, shortlists: np.ndarray) -> np.ndarray:
        """For each shortlist (a row of candidate positions), the similarity of every two
        of its candidates."""
        if self.table is None:
            self.asked += len(shortlists)
            n = self.matrix.shape[0]
            if n > self._max_papers or self.asked * self._pairs_per_profile < n * n:
                vectors = [self.matrix[shortlist] for shortlist in shortlists]
                return np.stack([_dense(v @ v.T) for v in vectors])
            self.table = _dense(self.matrix @ self.matrix.T)
        pairs: np.ndarray = self.table[shortlists[:, :, None], shortlists[:, None, :]]
        return pairs


def _dense(values: Any) -> np.ndarray:
    array = values.toarray() if sparse.issparse(values) else np.asarray(values)
    return np.asarray(array, dtype=np.float32)


def diverse_top(score: np.ndarray, eligible: np.ndarray, similarity: Similarity,
                tops: Sequence[int], diversity_sd: float) -> list[list[int]]:
    """Maximal marginal relevance, for each row (a profile's scores and the candidates it
    may get): each next pick trades score against resemblance to the picks already made
    (`diversity_sd` standard deviations per unit of cosine similarity), so near-copies of
    one paper do not fill the list."""
    lengths = np.minimum([max(top * 5, 50) for top in tops], eligible.sum(axis=1))
    width = int(lengths.max(initial=0))
    if width == 0:
        return [[] for _ in tops]
    # Each row's shortlist: its best eligible candidates, best first (ties: first first).
    shortlists = np.argsort(np.where(eligible, -score, np.inf), axis=1, kind="stable"
                            )[:, :width]
    rows = np.arange(len(tops))
    listed = np.arange(width)[None, :] < lengths[:, None]
    base = np.where(listed, np.take_along_axis(score, shortlists, axis=1), -np.inf)
    pairs = similarity.among(shortlists)
    penalty = np.zeros(base.shape, dtype=np.float32)
    steps = np.minimum(tops, lengths)
    chosen = np.zeros((len(tops), int(steps.max())), dtype=np.int64)
    for step in range(chosen.shape[1]):
        best = np.argmax(base - diversity_sd * penalty, axis=1)
        chosen[:, step] = shortlists[rows, best]
        base[rows, best] = -np.inf
        penalty = np.maximum(penalty, pairs[rows, best])
    return [chosen[j, :steps[j]].tolist() for j in rows.tolist()]



def ask_samples(similarity: Similarity, picks: Sequence[Sequence[int]],
                nears: Sequence[Sequence[int]], counts: Sequence[int]) -> list[list[int]]:
    """For each asking profile, `counts[j]` candidates for the reader to rate, covering the
    themes near the profile that the picks leave out rather than the next of its list: of
    `nears[j]` (the best candidates after the picks, best first), each next one is the
    least like anything already in the email (the picks, the papers asked about before
    it), a farthest-first cover. Positions in the candidates; all profiles at once, from
    the similarity MMR uses."""
    asked: list[list[int]] = [[] for _ in nears]
    rows = [j for j, near in enumerate(nears) if counts[j] > 0 and near]
    if not rows:
        return asked
    n_near = max(len(nears[j]) for j in rows)
    width = n_near + max(len(picks[j]) for j in rows)
    shortlists = np.zeros((len(rows), width), dtype=np.int64)  # padding: never read
    is_near = np.zeros((len(rows), n_near), dtype=bool)
    is_pick = np.zeros((len(rows), width), dtype=bool)
    for r, j in enumerate(rows):
        shortlists[r, :len(nears[j])] = nears[j]
        shortlists[r, n_near:n_near + len(picks[j])] = picks[j]
        is_near[r, :len(nears[j])] = True
        is_pick[r, n_near:n_near + len(picks[j])] = True
    pairs = similarity.among(shortlists)[:, :n_near, :]  # each near candidate to all
    closest = np.where(is_pick[:, None, :], pairs, -np.inf).max(axis=2)
    closest[~is_near] = np.inf  # padding is never asked about
    at_row = np.arange(len(rows))
    steps = np.minimum([counts[j] for j in rows], is_near.sum(axis=1))
    for step in range(int(steps.max())):
        at = np.argmin(closest, axis=1)  # ties: the better first
        for r in np.flatnonzero(step < steps).tolist():
            asked[rows[r]].append(int(shortlists[r, at[r]]))
        closest = np.maximum(closest, pairs[at_row, :, at])
        closest[at_row, at] = np.inf
    return asked
