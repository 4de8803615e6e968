"""Rank: score candidate papers against a profile and explain each pick in words.

Pure computation over records: a tf-idf model fitted on the stored corpus, the profile's
interests and liked papers as queries, disliked papers and avoided topics as penalties,
muted and required keywords and followed authors as hard rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

from digest.identity import normalise_title
from digest.models import Paper, Pick, Profile

# How much each kind of evidence counts; a followed author outranks any text match.
AUTHOR_BONUS = 1.0
DISLIKE_PENALTY = 0.5
AVOID_PENALTY = 0.5
REASON_TERMS = 3


@dataclass
class Corpus:
    """A tf-idf model fitted on the stored papers; rows are L2-normalised."""

    vectorizer: TfidfVectorizer
    matrix: sparse.csr_matrix
    papers: list[Paper]
    rows: dict[int, int] = field(default_factory=dict)  # paper row_id -> matrix row
    terms: np.ndarray = field(default_factory=lambda: np.array([]))

    def vectors(self, papers: Sequence[Paper]) -> sparse.csr_matrix:
        """Vectors of stored papers, looked up; others are transformed."""
        known = [self.rows.get(p.row_id) for p in papers]
        if all(r is not None for r in known):
            return self.matrix[known]
        return self.vectorizer.transform([p.text for p in papers])


def build_corpus(papers: Sequence[Paper]) -> Corpus:
    """Fit the tf-idf model on `papers` (the whole store, so idf reflects the field)."""
    vectorizer = TfidfVectorizer(
        stop_words="english",
        ngram_range=(1, 2),
        sublinear_tf=True,
        min_df=1,
        token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9\-]+\b",
        dtype=np.float32,
    )
    texts = [p.text for p in papers] or [""]
    try:
        matrix = vectorizer.fit_transform(texts).tocsr()
    except ValueError:  # an empty vocabulary: no paper has a usable word
        vectorizer = TfidfVectorizer(analyzer=lambda _text: ["\0"], dtype=np.float32)
        matrix = vectorizer.fit_transform(texts).tocsr()
    return Corpus(
        vectorizer=vectorizer,
        matrix=matrix,
        papers=list(papers),
        rows={p.row_id: i for i, p in enumerate(papers)},
        terms=vectorizer.get_feature_names_out(),
    )


def _phrase_pattern(phrases: Sequence[str]) -> re.Pattern[str] | None:
    """A case-insensitive whole-word pattern matching any of the phrases."""
    cleaned = [re.escape(" ".join(p.split())) for p in phrases if p.strip()]
    if not cleaned:
        return None
    words = "|".join(c.replace(r"\ ", r"[\s\-]+") for c in cleaned)
    return re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE)


def _matched_terms(
    corpus: Corpus, candidate: sparse.csr_matrix, query: sparse.csr_matrix
) -> list[str]:
    """The terms that contribute most to the candidate's match with the query.

    Two words that both match and form one of the query's phrases are named as that
    phrase ("dense retrieval", not "dense, retrieval").
    """
    contribution = candidate.multiply(query).tocsr()
    if contribution.nnz == 0:
        return []
    order = np.argsort(-contribution.data)
    matched = [str(corpus.terms[i]) for i in contribution.indices[order]]
    present = set(matched)
    phrases = [str(corpus.terms[i]) for i in query.indices if " " in str(corpus.terms[i])]
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


def prepare_candidates(corpus: Corpus, papers: Sequence[Paper]) -> Candidates:
    papers = list(papers)
    return Candidates(
        papers=papers,
        matrix=corpus.vectors(papers) if papers else sparse.csr_matrix((0, len(corpus.terms))),
        lowered=[p.text.lower() for p in papers],
        authors=[frozenset(normalise_title(a) for a in p.authors) for p in papers],
        index={p.row_id: i for i, p in enumerate(papers)},
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


def rank_papers(
    corpus: Corpus,
    prefs: Preferences,
    candidates: Candidates,
    *,
    top: int,
    exclude: frozenset[int] = frozenset(),
) -> list[Pick]:
    """Return up to `top` picks from `candidates`, best first, each with score and reason.

    Papers liked or disliked, muted, or in `exclude` (already sent) are never picked.
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
    matrix = candidates.matrix
    transform = corpus.vectorizer.transform

    interest_score = np.zeros(n, dtype=np.float32)
    interest_query = None
    if profile.interests:
        weights = np.array([i.weight for i in profile.interests], dtype=np.float32)
        weights = weights / max(float(weights.max()), 1e-9)
        queries = transform([i.text for i in profile.interests])
        sims = (matrix @ queries.T).toarray() * weights  # n x interests
        interest_score = sims.max(axis=1)
        interest_query = sparse.csr_matrix(queries.multiply(weights[:, None]).sum(axis=0))

    like_score = np.zeros(n, dtype=np.float32)
    like_sims = None
    liked_names = [p.title for p in prefs.liked] + list(prefs.liked_titles)
    if liked_names:
        parts = []
        if prefs.liked:
            parts.append(corpus.vectors(prefs.liked))
        if prefs.liked_titles:
            parts.append(transform(list(prefs.liked_titles)))
        liked_vectors = sparse.vstack(parts).tocsr()
        like_sims = (matrix @ liked_vectors.T).toarray()
        centroid = np.asarray(liked_vectors.mean(axis=0)).ravel()
        norm = float(np.linalg.norm(centroid)) or 1.0
        centroid_sim = (matrix @ (centroid / norm)).ravel()
        like_score = 0.5 * like_sims.max(axis=1) + 0.5 * centroid_sim

    penalty = np.zeros(n, dtype=np.float32)
    if prefs.disliked:
        sims = (matrix @ corpus.vectors(prefs.disliked).T).toarray()
        penalty += DISLIKE_PENALTY * sims.max(axis=1)
    if profile.avoid:
        sims = (matrix @ transform(list(profile.avoid)).T).toarray()
        penalty += AVOID_PENALTY * sims.max(axis=1)

    followed = frozenset(normalise_title(a) for a in profile.authors)
    author_score = np.zeros(n, dtype=np.float32)
    if followed:
        author_score[[i for i, names in enumerate(candidates.authors) if names & followed]] = (
            AUTHOR_BONUS)

    if profile.interests and liked_names:
        text_score = 0.5 * interest_score + 0.5 * like_score
    else:
        text_score = interest_score + like_score
    score = np.where(allowed, text_score - penalty + author_score, -np.inf)

    order = np.argsort(-score, kind="stable")
    picks: list[Pick] = []
    author_display = {normalise_title(a): a for a in profile.authors}
    for i in order[:top]:
        if not score[i] > 0:
            break  # nothing in this paper speaks to the profile
        paper = candidates.papers[i]
        reasons: list[str] = []
        by = sorted(candidates.authors[i] & followed)
        if by:
            reasons.append("by " + ", ".join(author_display[a] for a in by))
        interest_part = interest_score[i] * (0.5 if liked_names else 1.0)
        like_part = like_score[i] * (0.5 if profile.interests else 1.0)
        text_reasons = []
        if interest_query is not None and interest_part > 0:
            terms = _matched_terms(corpus, matrix[i], interest_query)
            if terms:
                text_reasons.append((interest_part, "matches: " + ", ".join(terms)))
        if like_sims is not None and like_part > 0:
            nearest = liked_names[int(like_sims[i].argmax())]
            text_reasons.append((like_part, f"like: {_short(nearest)}"))
        reasons.extend(text for _, text in sorted(text_reasons, key=lambda r: -r[0]))
        picks.append(Pick(paper, round(float(score[i]), 4), "; ".join(reasons) or "related"))
    return picks
