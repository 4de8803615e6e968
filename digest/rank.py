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
        max_df=0.5 if len(papers) >= 50 else 1.0,  # too common to tell papers apart
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


def _author_names(paper: Paper) -> set[str]:
    return {normalise_title(a) for a in paper.authors}


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


def rank_papers(
    corpus: Corpus,
    prefs: Preferences,
    candidates: Sequence[Paper],
    *,
    top: int,
    exclude: frozenset[int] = frozenset(),
) -> list[Pick]:
    """Return up to `top` picks from `candidates`, best first, each with score and reason.

    Papers liked or disliked, muted, or in `exclude` (already sent) are never picked.
    """
    profile = prefs.profile
    skip = set(exclude) | {p.row_id for p in prefs.liked} | {p.row_id for p in prefs.disliked}
    mute = _phrase_pattern(profile.mute)
    require = _phrase_pattern(profile.require)
    pool = [
        p for p in candidates
        if p.row_id not in skip
        and not (mute and mute.search(p.text))
        and not (require and not require.search(p.text))
    ]
    if not pool or top <= 0:
        return []
    matrix = corpus.vectors(pool)
    n = len(pool)
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
    nearest_like: list[str] = []
    like_sources: list[tuple[str, sparse.csr_matrix]] = []
    if prefs.liked:
        like_sources.append(("", corpus.vectors(prefs.liked)))
    if prefs.liked_titles:
        like_sources.append(("", transform(list(prefs.liked_titles))))
    if like_sources:
        liked_vectors = sparse.vstack([v for _, v in like_sources]).tocsr()
        liked_names = [p.title for p in prefs.liked] + list(prefs.liked_titles)
        sims = (matrix @ liked_vectors.T).toarray()
        centroid = np.asarray(liked_vectors.mean(axis=0)).ravel()
        norm = float(np.linalg.norm(centroid)) or 1.0
        centroid_sim = (matrix @ (centroid / norm)).ravel()
        like_score = 0.5 * sims.max(axis=1) + 0.5 * centroid_sim
        nearest_like = [liked_names[j] for j in sims.argmax(axis=1)]

    penalty = np.zeros(n, dtype=np.float32)
    if prefs.disliked:
        sims = (matrix @ corpus.vectors(prefs.disliked).T).toarray()
        penalty += DISLIKE_PENALTY * sims.max(axis=1)
    if profile.avoid:
        sims = (matrix @ transform(list(profile.avoid)).T).toarray()
        penalty += AVOID_PENALTY * sims.max(axis=1)

    followed = {normalise_title(a) for a in profile.authors}
    by_followed = [sorted(_author_names(p) & followed) for p in pool]
    author_score = np.array([AUTHOR_BONUS if hit else 0.0 for hit in by_followed],
                            dtype=np.float32)

    if profile.interests and like_sources:
        text_score = 0.5 * interest_score + 0.5 * like_score
    else:
        text_score = interest_score + like_score
    score = text_score - penalty + author_score

    order = np.argsort(-score, kind="stable")
    picks: list[Pick] = []
    author_display = {normalise_title(a): a for a in profile.authors}
    for i in order[:top]:
        if score[i] <= 0:
            break  # nothing in this paper speaks to the profile
        reasons: list[str] = []
        if by_followed[i]:
            reasons.append("by " + ", ".join(author_display[a] for a in by_followed[i]))
        interest_part = interest_score[i] * (0.5 if like_sources else 1.0)
        like_part = like_score[i] * (0.5 if profile.interests else 1.0)
        text_reasons = []
        if interest_query is not None and interest_part > 0:
            terms = _matched_terms(corpus, matrix[i], interest_query)
            if terms:
                text_reasons.append((interest_part, "matches: " + ", ".join(terms)))
        if nearest_like and like_part > 0:
            text_reasons.append((like_part, f"like: {_short(nearest_like[i])}"))
        reasons.extend(text for _, text in sorted(text_reasons, key=lambda r: -r[0]))
        picks.append(Pick(pool[i], round(float(score[i]), 4), "; ".join(reasons) or "related"))
    return picks
