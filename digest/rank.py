"""Rank: score candidate papers against a profile and explain each pick in words.

Pure computation over records. Evidence, each scored against the stored corpus:
- interests: the profile's phrases (with weights) as tf-idf queries;
- liked papers: a Rocchio query, their centroid minus the corpus's common direction, so
  what the liked papers share with everything else counts for little;
- with the `embeddings` extra, the same two in sentence-embedding space (centred);
- with enough liked and disliked papers, a per-subscriber linear classifier;
- penalties for resemblance to disliked papers and avoided topics.
Each kind is put on one scale (standard deviations above a typical stored paper) and
averaged; muted and required keywords and followed authors are hard rules; the top is
chosen with maximal marginal relevance, so near-copies do not fill the email.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from digest.identity import normalise_title
from digest.models import Paper, Pick, Profile

ROCCHIO_BETA = 0.5  # how much of the corpus's common direction a liked-papers query drops
FOLLOWED_FIRST = 1e6  # ordering only: a followed author's paper comes before any other
PENALTY_WEIGHT = 0.5
DIVERSITY = 1.0  # MMR: a pick loses this many standard deviations per unit of cosine
# similarity to a paper already chosen
CLASSIFIER_MIN = 5  # liked and disliked papers needed before a classifier is learned
REFERENCE_ROWS = 2000
MIN_SPREAD = 0.01  # in cosine units: below this a query's spread says more about the query
REASON_TERMS = 3

EmbedText = Callable[[Sequence[str]], np.ndarray]


@dataclass
class Corpus:
    """The stored papers as tf-idf rows (L2-normalised) and, optionally, embeddings."""

    vectorizer: TfidfVectorizer
    matrix: sparse.csr_matrix
    papers: list[Paper]
    rows: dict[int, int] = field(default_factory=dict)  # paper row_id -> matrix row
    terms: np.ndarray = field(default_factory=lambda: np.array([]))
    common: np.ndarray = field(default_factory=lambda: np.array([]))  # unit mean tf-idf row
    reference: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))
    embeddings: np.ndarray | None = None  # centred, unit rows aligned with `matrix`
    embedding_mean: np.ndarray | None = None
    embed_text: EmbedText | None = None  # for interest phrases and unknown liked titles
    _queries: dict[str, sparse.csr_matrix] = field(default_factory=dict)

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Tf-idf rows of query texts; the same phrase in many profiles is done once."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._queries]
        if missing:
            for text, row in zip(missing, self.vectorizer.transform(missing), strict=True):
                self._queries[text] = row
        return sparse.vstack([self._queries[t] for t in texts]).tocsr()

    def vectors(self, papers: Sequence[Paper]) -> sparse.csr_matrix:
        """Tf-idf vectors of papers: looked up when stored, else transformed."""
        known = [self.rows.get(p.row_id) for p in papers]
        if all(r is not None for r in known):
            return self.matrix[known]
        return self.vectorizer.transform([p.text for p in papers])

    def paper_embeddings(self, papers: Sequence[Paper], extra_texts: Sequence[str] = ()
                         ) -> np.ndarray | None:
        """Centred unit embeddings of papers (stored ones looked up) and of more texts."""
        if self.embeddings is None:
            return None
        rows = [self.rows.get(p.row_id) for p in papers]
        known = [r for r in rows if r is not None]
        parts = [self.embeddings[known]] if len(known) == len(rows) else [
            e for e in [self.embed([p.text for p in papers])] if e is not None]
        if extra_texts:
            extra = self.embed(extra_texts)
            if extra is not None:
                parts.append(extra)
        return np.vstack(parts) if parts else None

    def embed(self, texts: Sequence[str]) -> np.ndarray | None:
        """Centred unit embeddings of new texts, or None without the embeddings extra."""
        if self.embed_text is None or self.embedding_mean is None or not texts:
            return None
        return _unit(self.embed_text(texts) - self.embedding_mean)


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-9), dtype=np.float32)


def build_corpus(papers: Sequence[Paper], *, embeddings: np.ndarray | None = None,
                 embed_text: EmbedText | None = None) -> Corpus:
    """Fit the tf-idf model on `papers` (the whole store, so idf reflects the field).

    `embeddings` (one unit row per paper) and `embed_text` come with the extra.
    """
    vectorizer = TfidfVectorizer(
        stop_words="english",
        ngram_range=(1, 2),
        sublinear_tf=True,
        # Words of two or more characters that hold a letter: "3D" and "6G" count, "2024"
        # does not.
        token_pattern=r"(?u)\b(?:[a-zA-Z][a-zA-Z0-9\-]+|\d+[a-zA-Z][a-zA-Z0-9\-]*)\b",
        dtype=np.float32,
    )
    texts = [p.text for p in papers] or [""]
    try:
        matrix = vectorizer.fit_transform(texts).tocsr()
    except ValueError:  # an empty vocabulary: no paper has a usable word
        vectorizer = TfidfVectorizer(analyzer=lambda _text: ["\0"], dtype=np.float32)
        matrix = vectorizer.fit_transform(texts).tocsr()
    common = np.asarray(matrix.mean(axis=0)).ravel()
    common = common / max(float(np.linalg.norm(common)), 1e-9)
    rng = np.random.default_rng(0)  # a fixed sample: scores do not wobble between runs
    reference = np.arange(matrix.shape[0])
    if len(reference) > REFERENCE_ROWS:
        reference = np.sort(rng.choice(reference, REFERENCE_ROWS, replace=False))
    corpus = Corpus(vectorizer=vectorizer, matrix=matrix, papers=list(papers),
                    rows={p.row_id: i for i, p in enumerate(papers)},
                    terms=vectorizer.get_feature_names_out(), common=common.astype(np.float32),
                    reference=reference)
    if embeddings is not None and len(papers) == len(embeddings) and len(papers) > 1:
        mean = embeddings.mean(axis=0)
        corpus.embedding_mean = mean.astype(np.float32)
        corpus.embeddings = _unit(embeddings - mean)
        corpus.embed_text = embed_text
    return corpus


def _phrase_pattern(phrases: Sequence[str]) -> re.Pattern[str] | None:
    """A case-insensitive whole-word pattern matching any of the phrases."""
    cleaned = [re.escape(" ".join(p.split())) for p in phrases if p.strip()]
    if not cleaned:
        return None
    words = "|".join(c.replace(r"\ ", r"[\s\-]+") for c in cleaned)
    return re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE)


def _matched_terms(corpus: Corpus, candidate: sparse.csr_matrix, query: np.ndarray,
                   phrases: Sequence[str]) -> list[str]:
    """The terms that contribute most to the candidate's match with the (dense) query.

    Two words that both match and form one of the query's phrases are named as that
    phrase ("dense retrieval", not "dense, retrieval").
    """
    contribution = candidate.data * query[candidate.indices]
    keep = contribution > 0
    if not keep.any():
        return []
    order = np.argsort(-contribution[keep])
    matched = [str(corpus.terms[i]) for i in candidate.indices[keep][order]]
    present = set(matched)
    chosen: list[str] = []
    for term in matched:
        if " " not in term:
            whole = next((p for p in phrases if term in p.split()
                          and all(w in present for w in p.split())), None)
            term = whole or term
        if any(term == c or (term in c.split()) for c in chosen):
            continue  # already said, alone or inside a phrase
        chosen.append(term)
        if len(chosen) == REASON_TERMS:
            break
    return chosen


def _short(title: str, limit: int = 80) -> str:
    return title if len(title) <= limit else title[: limit - 1].rstrip() + "…"


@dataclass(frozen=True)
class Preferences:
    """A profile's wishes resolved against the store: which stored papers it names."""

    profile: Profile
    liked: tuple[Paper, ...] = ()
    disliked: tuple[Paper, ...] = ()
    # Liked titles not in the store: their text still says what the subscriber wants.
    liked_titles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Candidates:
    """Papers that may be picked, prepared once and shared by every profile ranked on them."""

    papers: list[Paper]
    matrix: sparse.csr_matrix
    lowered: list[str]  # title and abstract in lower case, for keyword rules
    authors: list[frozenset[str]]  # normalised author names
    index: dict[int, int]  # paper row_id -> position
    embeddings: np.ndarray | None = None
    # The candidates' rows followed by the corpus reference rows: one product scores both.
    scoring: sparse.csr_matrix | None = None
    scoring_embeddings: np.ndarray | None = None


def prepare_candidates(corpus: Corpus, papers: Sequence[Paper]) -> Candidates:
    papers = list(papers)
    matrix = corpus.vectors(papers) if papers else sparse.csr_matrix((0, len(corpus.terms)))
    embeddings = corpus.paper_embeddings(papers) if papers else None
    return Candidates(
        papers=papers,
        matrix=matrix,
        lowered=[p.text.lower() for p in papers],
        authors=[frozenset(normalise_title(a) for a in p.authors) for p in papers],
        index={p.row_id: i for i, p in enumerate(papers)},
        embeddings=embeddings,
        scoring=sparse.vstack([matrix, corpus.matrix[corpus.reference]]).tocsr(),
        scoring_embeddings=(np.vstack([embeddings, corpus.embeddings[corpus.reference]])
                            if embeddings is not None and corpus.embeddings is not None
                            else None),
    )


def _mentions(candidates: Candidates, phrases: Sequence[str]) -> np.ndarray:
    """A mask of the candidates that mention any phrase as whole words."""
    hits = np.zeros(len(candidates.papers), dtype=bool)
    pattern = _phrase_pattern(phrases)
    if pattern is None:
        return hits
    needles = [w.lower() for phrase in phrases for w in phrase.split()[:1]]
    for i, text in enumerate(candidates.lowered):
        # A cheap substring test first; the regex only confirms word boundaries.
        if any(n in text for n in needles) and pattern.search(text):
            hits[i] = True
    return hits


def _dense(values: Any) -> np.ndarray:
    array = values.toarray() if sparse.issparse(values) else np.asarray(values)
    return np.asarray(array, dtype=np.float32)


@dataclass
class _Evidence:
    """One kind of evidence, scored on the candidates and on the corpus reference rows."""

    name: str
    candidates: np.ndarray
    reference: np.ndarray

    @property
    def informative(self) -> bool:
        """False when no paper matches at all (e.g. an interest made only of stop words)."""
        return bool(self.candidates.max(initial=0.0) > 0 or self.reference.std() > 0)

    def standardised(self) -> np.ndarray:
        """Standard deviations above the typical stored paper. The spread has a floor, so
        that a query matching almost nothing does not make one faint match look huge."""
        spread = max(float(self.reference.std()), MIN_SPREAD)
        return (self.candidates - float(self.reference.mean())) / spread


class _Scorer:
    """Scores one profile's evidence on the candidates and on the corpus reference rows
    (prepared together in `Candidates.scoring`)."""

    def __init__(self, candidates: Candidates):
        self.candidates = candidates
        self.n = len(candidates.papers)

    def _evidence(self, name: str, scores: np.ndarray, weights: np.ndarray | None
                  ) -> _Evidence:
        if weights is not None:
            scores = scores * weights
        best = scores.max(axis=1)
        return _Evidence(name, best[: self.n], best[self.n:])

    def lexical(self, name: str, queries: sparse.csr_matrix | np.ndarray,
                weights: np.ndarray | None = None) -> _Evidence:
        """Best weighted cosine between each paper and any of the query rows."""
        assert self.candidates.scoring is not None
        dense = _dense(queries)  # sparse x dense is much cheaper than sparse x sparse
        return self._evidence(name, _dense(self.candidates.scoring @ dense.T), weights)

    def semantic(self, name: str, queries: np.ndarray, weights: np.ndarray | None = None
                 ) -> _Evidence | None:
        if self.candidates.scoring_embeddings is None:
            return None
        return self._evidence(name, self.candidates.scoring_embeddings @ queries.T, weights)


def _rocchio(vectors: sparse.csr_matrix | np.ndarray, common: np.ndarray | None) -> np.ndarray:
    centroid = np.asarray(vectors.mean(axis=0)).ravel()
    centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-9)
    if common is not None:
        centroid = centroid - ROCCHIO_BETA * common
    return (centroid / max(float(np.linalg.norm(centroid)), 1e-9)).astype(np.float32)


def _family(parts: Sequence[_Evidence | None]) -> np.ndarray | None:
    """The mean standardised score of the evidence that is there."""
    present = [p.standardised() for p in parts if p is not None and p.informative]
    return np.mean(present, axis=0) if present else None


def _classifier(corpus: Corpus, candidates: Candidates, prefs: Preferences) -> _Evidence | None:
    """A linear classifier of liked against disliked papers, once there are enough of both."""
    if len(prefs.liked) < CLASSIFIER_MIN or len(prefs.disliked) < CLASSIFIER_MIN:
        return None
    train = sparse.vstack([corpus.vectors(prefs.liked), corpus.vectors(prefs.disliked)]).tocsr()
    labels = np.r_[np.ones(len(prefs.liked)), np.zeros(len(prefs.disliked))]
    model = LinearSVC(C=1.0, class_weight="balanced", max_iter=5000)
    model.fit(train, labels)
    return _Evidence("classifier", model.decision_function(candidates.matrix).astype(np.float32),
                     model.decision_function(corpus.matrix[corpus.reference]).astype(np.float32))


def rank_papers(
    corpus: Corpus,
    prefs: Preferences,
    candidates: Candidates,
    *,
    top: int,
    exclude: frozenset[int] = frozenset(),
    min_score: float | None = None,
) -> list[Pick]:
    """Return up to `top` picks from `candidates`, best first, each with score and reason.

    Scores are standard deviations above a typical stored paper; none below `min_score`
    is picked. Papers liked or disliked, muted, or in `exclude` (already sent) never are.
    """
    profile = prefs.profile
    n = len(candidates.papers)
    if n == 0 or top <= 0:
        return []
    allowed = np.ones(n, dtype=bool)
    for row_id in (*exclude, *(p.row_id for p in prefs.liked),
                   *(p.row_id for p in prefs.disliked)):
        position = candidates.index.get(row_id)
        if position is not None:
            allowed[position] = False
    if profile.mute:
        allowed &= ~_mentions(candidates, profile.mute)
    if profile.require:
        allowed &= _mentions(candidates, profile.require)
    if not allowed.any():
        return []
    scorer = _Scorer(candidates)
    transform = corpus.transform

    families: list[tuple[str, np.ndarray]] = []
    interest_query = None
    interest_phrases: list[str] = []
    if profile.interests:
        texts = [i.text for i in profile.interests]
        weights = np.array([i.weight for i in profile.interests], dtype=np.float32)
        weights = weights / max(float(weights.max()), 1e-9)
        queries = transform(texts)
        interest_query = np.asarray(queries.multiply(weights[:, None]).sum(axis=0)).ravel()
        interest_phrases = [str(corpus.terms[i]) for i in np.flatnonzero(interest_query)
                            if " " in str(corpus.terms[i])]
        embedded = corpus.embed(texts)
        family = _family([scorer.lexical("interests", queries, weights),
                          scorer.semantic("interests~", embedded, weights)
                          if embedded is not None else None])
        if family is not None:
            families.append(("interests", family))

    liked_names = [p.title for p in prefs.liked] + list(prefs.liked_titles)
    like_sims = None
    if liked_names:
        parts = []
        if prefs.liked:
            parts.append(corpus.vectors(prefs.liked))
        if prefs.liked_titles:
            parts.append(transform(list(prefs.liked_titles)))
        liked_vectors = sparse.vstack(parts).tocsr()
        query = _rocchio(liked_vectors, corpus.common)[None, :]
        semantic = None
        liked_embedded = corpus.paper_embeddings(prefs.liked, prefs.liked_titles)
        if liked_embedded is not None:
            semantic = scorer.semantic("liked~", _rocchio(liked_embedded, None)[None, :])
        family = _family([scorer.lexical("liked", query), semantic])
        if family is not None:
            families.append(("liked", family))
        like_sims = _dense(candidates.matrix @ liked_vectors.T)
        if liked_embedded is not None and candidates.embeddings is not None:
            like_sims = like_sims + candidates.embeddings @ liked_embedded.T

    classifier = _classifier(corpus, candidates, prefs)
    if classifier is not None:
        families.append(("classifier", classifier.standardised()))

    score = np.mean([f for _, f in families], axis=0) if families else np.zeros(n)
    if prefs.disliked:
        score -= PENALTY_WEIGHT * np.maximum(scorer.lexical(
            "disliked", corpus.vectors(prefs.disliked)).standardised(), 0)
    if profile.avoid:
        score -= PENALTY_WEIGHT * np.maximum(scorer.lexical(
            "avoid", transform(list(profile.avoid))).standardised(), 0)
    followed = frozenset(normalise_title(a) for a in profile.authors)
    by_followed = np.zeros(n, dtype=bool)
    if followed:
        by_followed = np.array([bool(names & followed) for names in candidates.authors])
    if not families:
        # Nothing scores the papers: only followed authors' papers can be picked.
        allowed &= by_followed
        if not allowed.any():
            return []
    floor = -np.inf if min_score is None else min_score
    eligible = allowed & ((score > floor) | by_followed)  # followed authors: a hard rule
    order_by = score + FOLLOWED_FIRST * by_followed
    chosen = _diverse_top(order_by, eligible, candidates.matrix, top)

    by_family = dict(families)
    author_display = {normalise_title(a): a for a in profile.authors}
    picks: list[Pick] = []
    for i in chosen:
        reasons: list[str] = []
        by = sorted(candidates.authors[i] & followed)
        if by:
            reasons.append("by " + ", ".join(author_display[a] for a in by))
        told: list[tuple[float, str]] = []
        if "interests" in by_family and interest_query is not None:
            terms = _matched_terms(corpus, candidates.matrix[i], interest_query,
                                   interest_phrases)
            if terms:
                told.append((float(by_family["interests"][i]), "matches: " + ", ".join(terms)))
        if "liked" in by_family and like_sims is not None:
            nearest = liked_names[int(like_sims[i].argmax())]
            told.append((float(by_family["liked"][i]), f"like: {_short(nearest)}"))
        if "classifier" in by_family:
            told.append((float(by_family["classifier"][i]),
                         f"learned from your {len(prefs.liked)} liked and "
                         f"{len(prefs.disliked)} disliked papers"))
        reasons.extend(text for weight, text in sorted(told, key=lambda r: -r[0])
                       if weight > 0)
        picks.append(Pick(candidates.papers[i], round(float(score[i]), 4),
                          "; ".join(reasons) or "related to your profile"))
    return picks


def _diverse_top(score: np.ndarray, eligible: np.ndarray, matrix: sparse.csr_matrix,
                 top: int) -> list[int]:
    """Maximal marginal relevance: each next pick trades score against resemblance to the
    picks already made, so near-copies of one paper do not fill the list."""
    order = np.flatnonzero(eligible)
    if len(order) == 0:
        return []
    shortlist = order[np.argsort(-score[order], kind="stable")[: max(top * 5, 50)]]
    vectors = matrix[shortlist]
    similarity = _dense(vectors @ vectors.T)
    chosen: list[int] = []
    penalty = np.zeros(len(shortlist), dtype=np.float32)
    available = np.ones(len(shortlist), dtype=bool)
    base = score[shortlist]
    for _ in range(min(top, len(shortlist))):
        adjusted = np.where(available, base - DIVERSITY * penalty, -np.inf)
        best = int(np.argmax(adjusted))
        chosen.append(int(shortlist[best]))
        available[best] = False
        penalty = np.maximum(penalty, similarity[best])
    return chosen
