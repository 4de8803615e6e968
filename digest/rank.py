"""Rank: score candidate papers against a profile and explain each pick in words.

Pure computation over records. Evidence, each scored against the stored corpus:
- interests: the profile's phrases (with weights) as tf-idf queries;
- liked papers: a Rocchio query, their centroid minus the corpus's common direction, so
  what the liked papers share with everything else counts for little (words no other
  stored paper has are left out: they can match nothing); then pseudo-relevance feedback,
  the first pass's best few candidates join the liked papers at half weight;
- with the `embeddings` extra, the same two in sentence-embedding space (centred);
- with enough liked and disliked papers, a per-subscriber linear classifier;
- penalties for resemblance to disliked papers and avoided topics.
Each kind is put on one scale (standard deviations above a typical stored paper) and
averaged; muted and required keywords and followed authors are hard rules; the top is
chosen with maximal marginal relevance, so near-copies do not fill the email.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate
from typing import Any

import numpy as np
import sklearn
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
# Pseudo-relevance feedback: the first pass's best candidates join the liked papers, each
# weighing this much of a liked paper (top few at half weight: a common Rocchio setting).
FEEDBACK_PAPERS = 5
FEEDBACK_WEIGHT = 0.5
CLASSIFIER_MIN = 5  # liked and disliked papers needed before a classifier is learned
REFERENCE_ROWS = 2000
MIN_SPREAD = 0.01  # in cosine units: below this a query's spread says more about the query
REASON_TERMS = 3
# MMR compares each profile's shortlist of candidates. Up to SIMILARITY_MAX_PAPERS
# candidates (16 MB, about 0.4 s for 2,000), a table of every two is built once the profiles
# ranked on them have spent about as long on their own shortlists: comparing one shortlist
# costs about as long as SIMILARITY_PAIRS_PER_PROFILE entries of the table.
SIMILARITY_MAX_PAPERS = 2000
SIMILARITY_PAIRS_PER_PROFILE = 4000
MENTIONS_CACHE_BYTES = 8_000_000  # per Candidates: masks of the keywords met so far
# Per Candidates: the query rows and scores of candidates used as feedback so far (the same
# few candidates are the first pass's best for many profiles).
FEEDBACK_CACHE_BYTES = 16_000_000

EmbedText = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class SparseRows:
    """A few sparse rows (tf-idf vectors) as flat arrays: entry k is row `rows[k]`'s value
    `values[k]` for term `terms[k]`, row by row. Ranking one profile handles a few short rows,
    for which scipy's checks on every operation cost far more than the arithmetic."""

    count: int
    rows: np.ndarray
    terms: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, matrix: sparse.csr_matrix, positions: np.ndarray | None = None) -> SparseRows:
        """The matrix's rows, or those at `positions`, in that order."""
        if positions is None:
            positions = np.arange(matrix.shape[0])
        starts, ends = matrix.indptr[positions], matrix.indptr[positions + 1]
        entries = _spans(starts, ends)
        return cls(len(positions), np.repeat(np.arange(len(positions)), ends - starts),
                   matrix.indices[entries], matrix.data[entries])

    @classmethod
    def stack(cls, parts: Sequence[SparseRows]) -> SparseRows:
        """The rows of every part, one part after the other."""
        if len(parts) == 1:
            return parts[0]
        offsets = np.cumsum([0, *(p.count for p in parts)])
        return cls(int(offsets[-1]),
                   np.concatenate([p.rows + o for p, o in zip(parts, offsets[:-1], strict=True)]),
                   np.concatenate([p.terms for p in parts]),
                   np.concatenate([p.values for p in parts]))

    def to_csr(self, n_terms: int) -> sparse.csr_matrix:
        """The same rows as a scipy matrix (the same arrays a row selection would hold)."""
        indptr = np.r_[0, np.cumsum(np.bincount(self.rows, minlength=self.count))]
        return sparse.csr_matrix((self.values, self.terms, indptr), shape=(self.count, n_terms))


def _spans(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions start..end-1 of every span, one after the other."""
    lengths = ends - starts
    firsts = np.cumsum(lengths) - lengths  # where each span begins in the result
    return np.repeat(starts - firsts, lengths) + np.arange(int(lengths.sum()))


@dataclass
class Corpus:
    """The stored papers as tf-idf rows (L2-normalised) and, optionally, embeddings."""

    vectorizer: TfidfVectorizer
    matrix: sparse.csr_matrix
    papers: list[Paper]
    rows: dict[int, int] = field(default_factory=dict)  # paper row_id -> matrix row
    terms: np.ndarray = field(default_factory=lambda: np.array([]))
    common: np.ndarray = field(default_factory=lambda: np.array([]))  # unit mean tf-idf row
    # How many stored papers hold each term: a term only one paper has links it to no other.
    doc_freq: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    reference: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))
    embeddings: np.ndarray | None = None  # centred, unit rows aligned with `matrix`
    embedding_mean: np.ndarray | None = None
    embed_text: EmbedText | None = None  # for interest phrases and unknown liked titles
    _queries: dict[str, SparseRows] = field(default_factory=dict)

    def transform(self, texts: Sequence[str]) -> SparseRows:
        """Tf-idf rows of query texts; the same phrase in many profiles is done once."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._queries]
        if missing:
            rows = self.vectorizer.transform(missing)
            for i, text in enumerate(missing):
                self._queries[text] = SparseRows.of(rows, np.array([i]))
        return SparseRows.stack([self._queries[t] for t in texts])

    def vectors(self, papers: Sequence[Paper]) -> SparseRows:
        """Tf-idf vectors of papers: looked up when stored, else transformed."""
        known = [self.rows.get(p.row_id) for p in papers]
        if all(r is not None for r in known):
            return SparseRows.of(self.matrix, np.array(known, dtype=np.int64))
        return SparseRows.of(self.vectorizer.transform([p.text for p in papers]))

    def linking_vectors(self, papers: Sequence[Paper]) -> SparseRows:
        """Tf-idf vectors of papers for a query made of several: a stored paper's row loses
        the terms no other stored paper has and is put back at unit length.

        Such a term can match no candidate, yet it takes a share of its paper's unit
        length, so a paper with many of them would say less in the query than the others.
        When a paper is not stored, all are transformed whole (as `vectors` does): each of
        its terms is some stored paper's, so none is to be left out.
        """
        rows = self.vectors(papers)
        if len(self.doc_freq) == 0 or any(p.row_id not in self.rows for p in papers):
            return rows
        keep = self.doc_freq[rows.terms] > 1
        if keep.all():
            return rows
        kept_rows, terms, values = rows.rows[keep], rows.terms[keep], rows.values[keep]
        norms = np.sqrt(np.bincount(kept_rows, weights=values.astype(np.float64) ** 2,
                                    minlength=rows.count))
        scale = (1 / np.maximum(norms, 1e-9)).astype(values.dtype)
        return SparseRows(rows.count, kept_rows, terms, values * scale[kept_rows])

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
                    doc_freq=np.bincount(matrix.indices, minlength=matrix.shape[1]),
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


@dataclass(frozen=True)
class _TermQuery:
    """One sparse query vector: `values[k]` for term `terms[k]`, terms ascending."""

    terms: np.ndarray
    values: np.ndarray

    @classmethod
    def weighted_sum(cls, rows: SparseRows, weights: np.ndarray) -> _TermQuery:
        """The rows times their weights, summed in float32 row after row (as scipy would)."""
        terms, where = np.unique(rows.terms, return_inverse=True)
        values = np.zeros(len(terms), dtype=np.float32)
        np.add.at(values, where, rows.values * weights[rows.rows])
        present = values != 0
        return cls(terms[present], values[present])

    def at(self, terms: np.ndarray) -> np.ndarray:
        """The query's value for each of `terms`, 0 for those it does not hold."""
        if len(self.terms) == 0:
            return np.zeros(len(terms), dtype=self.values.dtype)
        found = np.minimum(np.searchsorted(self.terms, terms), len(self.terms) - 1)
        return np.where(self.terms[found] == terms, self.values[found],
                        np.zeros((), dtype=self.values.dtype))


def _matched_terms(corpus: Corpus, candidates: Candidates, chosen: Sequence[int],
                   query: _TermQuery, phrases: Sequence[str]) -> list[list[str]]:
    """For each chosen candidate, the terms of its row that contribute most to its match
    with the query (looked up for all the chosen at once).

    Two words that both match and form one of the query's phrases are named as that
    phrase ("dense retrieval", not "dense, retrieval").
    """
    matrix = candidates.matrix
    positions = np.asarray(chosen, dtype=np.int64)
    starts, ends = matrix.indptr[positions], matrix.indptr[positions + 1]
    entries = _spans(starts, ends)
    terms = matrix.indices[entries]
    contribution = matrix.data[entries] * query.at(terms)
    keep = contribution > 0
    owner = np.repeat(np.arange(len(positions)), ends - starts)[keep]
    kept = np.bincount(owner, minlength=len(positions)).tolist()  # matched terms per pick
    terms, contribution = terms[keep], contribution[keep]
    phrase_words = [(phrase, phrase.split()) for phrase in phrases]
    named: list[list[str]] = []
    for last, count in zip(accumulate(kept), kept, strict=True):
        row_terms = terms[last - count:last]
        if count > 1:
            row_terms = row_terms[np.argsort(-contribution[last - count:last])]
        matched = [str(corpus.terms[t]) for t in row_terms]
        named.append(_name_terms(matched, phrase_words))
    return named


def _name_terms(matched: list[str], phrases: Sequence[tuple[str, list[str]]]) -> list[str]:
    """The first few matched terms, a word named by the query phrase (with its words) that
    it forms with other matched words."""
    present = set(matched)
    chosen: list[str] = []
    for term in matched:
        if " " not in term:
            whole = next((p for p, words in phrases if term in words
                          and all(w in present for w in words)), None)
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
    """Papers that may be picked, prepared once and shared by every profile ranked on them.

    Everything here that does not depend on a profile is computed in `prepare_candidates`,
    so that ranking one profile does only that profile's arithmetic.
    """

    papers: list[Paper]
    matrix: sparse.csr_matrix
    lowered: LoweredTexts  # title and abstract in lower case, for keyword rules
    authors: list[frozenset[str]]  # normalised author names
    index: dict[int, int]  # paper row_id -> position
    # The candidates' rows followed by the corpus reference rows: one product scores both.
    scoring: sparse.csr_matrix
    # The same by term (column): a query with few terms reads few of them.
    scoring_by_term: sparse.csc_matrix
    # Scores of the corpus's common direction, part of every liked-papers query.
    common_scores: np.ndarray
    common_norm: float
    by_author: dict[str, np.ndarray]  # normalised author name -> positions
    similarity: _Similarity = field(repr=False, compare=False)
    embeddings: np.ndarray | None = None
    scoring_embeddings: np.ndarray | None = None
    # The candidates that mention each keyword met so far (see `_mentions`).
    mentions: dict[str, np.ndarray] = field(default_factory=dict, repr=False,
                                                        compare=False)
    # Candidates used as feedback so far: position -> (query row, its scores; see
    # `_feedback_rows`).
    feedback: dict[int, tuple[SparseRows, np.ndarray]] = field(default_factory=dict,
                                                               repr=False, compare=False)


class _Similarity:
    """Cosine similarity between candidates, for MMR: computed per shortlist at first, from
    a table of every two candidates once enough profiles have asked (see
    SIMILARITY_MAX_PAPERS)."""

    def __init__(self, matrix: sparse.csr_matrix):
        self.matrix = matrix
        self.asked = 0
        self.table: np.ndarray | None = None

    def among(self, shortlist: np.ndarray) -> np.ndarray:
        """The similarity of every two of the shortlisted candidates."""
        if self.table is None:
            self.asked += 1
            n = self.matrix.shape[0]
            if n > SIMILARITY_MAX_PAPERS or self.asked * SIMILARITY_PAIRS_PER_PROFILE < n * n:
                vectors = self.matrix[shortlist]
                return _dense(vectors @ vectors.T)
            self.table = _dense(self.matrix @ self.matrix.T)
        return self.table.take(shortlist, axis=0).take(shortlist, axis=1)


def prepare_candidates(corpus: Corpus, papers: Sequence[Paper]) -> Candidates:
    """Prepare the papers that may be picked, once for every profile ranked on them."""
    papers = list(papers)
    n_terms = corpus.matrix.shape[1]
    matrix = (corpus.vectors(papers).to_csr(n_terms) if papers
              else sparse.csr_matrix((0, n_terms), dtype=np.float32))
    embeddings = corpus.paper_embeddings(papers) if papers else None
    scoring = sparse.vstack([matrix, corpus.matrix[corpus.reference]]).tocsr()
    authors = [frozenset(normalise_title(a) for a in p.authors) for p in papers]
    by_author: dict[str, list[int]] = {}
    for position, names in enumerate(authors):
        for name in names:
            by_author.setdefault(name, []).append(position)
    return Candidates(
        papers=papers,
        matrix=matrix,
        lowered=LoweredTexts([p.text.lower() for p in papers]),
        authors=authors,
        index={p.row_id: i for i, p in enumerate(papers)},
        scoring=scoring,
        scoring_by_term=scoring.tocsc(),
        common_scores=scoring @ corpus.common.astype(np.float64),
        common_norm=float(np.linalg.norm(corpus.common.astype(np.float64))),
        by_author={name: np.array(positions) for name, positions in by_author.items()},
        similarity=_Similarity(matrix),
        embeddings=embeddings,
        scoring_embeddings=(np.vstack([embeddings, corpus.embeddings[corpus.reference]])
                            if embeddings is not None and corpus.embeddings is not None
                            else None),
    )


def _mentions(candidates: Candidates, phrases: Sequence[str]) -> np.ndarray:
    """A read-only mask of the candidates that mention any phrase as whole words. Each
    phrase's mask is kept: profiles share keywords far more often than whole lists."""
    masks = []
    for phrase in phrases:
        key = " ".join(phrase.split()).lower()
        if not key:
            continue
        hits = candidates.mentions.get(key)
        if hits is None:
            hits = _find_mentions(candidates.lowered, [key])
            hits.flags.writeable = False
            if (len(candidates.mentions) + 1) * hits.nbytes <= MENTIONS_CACHE_BYTES:
                candidates.mentions[key] = hits
        masks.append(hits)
    if len(masks) == 1:
        return masks[0]
    either = (np.logical_or.reduce(masks) if masks
              else np.zeros(len(candidates.lowered), dtype=bool))
    either.flags.writeable = False
    return either


class LoweredTexts:
    """Texts in lower case, also joined into one string: which of them hold a word is then
    found by one scan in C rather than a test of each text."""

    def __init__(self, texts: Sequence[str]):
        self.texts = list(texts)
        self._joined = "\x00".join(self.texts)
        self._starts = list(accumulate((len(t) + 1 for t in self.texts[:-1]), initial=0))

    def __len__(self) -> int:
        return len(self.texts)

    def holding(self, needle: str) -> list[int]:
        """The positions of the texts that contain `needle`, in order."""
        if not needle or "\x00" in needle:  # could match across two texts: test each
            return [i for i, text in enumerate(self.texts) if needle in text]
        found: list[int] = []
        joined, starts = self._joined, self._starts
        at = joined.find(needle)
        while at != -1:
            i = bisect_right(starts, at) - 1
            found.append(i)
            if i + 1 == len(starts):
                break
            at = joined.find(needle, starts[i + 1])  # on to the next text
        return found


def _find_mentions(texts: LoweredTexts, phrases: Sequence[str]) -> np.ndarray:
    """A mask of the (lower-case) texts that mention any phrase as whole words."""
    hits = np.zeros(len(texts), dtype=bool)
    needles = {w.lower() for phrase in phrases for w in phrase.split()[:1]}
    # Texts holding a phrase's first word; the regex (made only if there are any: most
    # keywords are in none of a day's papers) confirms whole words.
    holding = sorted({i for needle in needles for i in texts.holding(needle)})
    pattern = _phrase_pattern(phrases) if holding else None
    if pattern is not None:
        for i in holding:
            if pattern.search(texts.texts[i]):
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

    @cached_property
    def _spread(self) -> float:
        return float(self.reference.std())

    @property
    def informative(self) -> bool:
        """False when no paper matches at all (e.g. an interest made only of stop words)."""
        return bool(self.candidates.max(initial=0.0) > 0 or self._spread > 0)

    def standardised(self) -> np.ndarray:
        """Standard deviations above the typical stored paper. The spread has a floor, so
        that a query matching almost nothing does not make one faint match look huge."""
        spread = max(self._spread, MIN_SPREAD)
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

    def products(self, queries: SparseRows) -> np.ndarray:
        """`scoring @ queries.T` (float64), reading only the columns of the queries' terms."""
        columns = self.candidates.scoring_by_term
        starts, ends = columns.indptr[queries.terms], columns.indptr[queries.terms + 1]
        entries = _spans(starts, ends)
        lengths = ends - starts
        terms = columns.data[entries] * np.repeat(queries.values.astype(np.float64), lengths)
        cells = columns.indices[entries] * queries.count + np.repeat(queries.rows, lengths)
        rows = columns.shape[0]
        return np.bincount(cells, weights=terms, minlength=rows * queries.count
                           ).reshape(rows, queries.count)

    def lexical(self, name: str, queries: SparseRows, weights: np.ndarray | None = None
                ) -> _Evidence:
        """Best weighted cosine between each paper and any of the query rows."""
        return self._evidence(name, self.products(queries).astype(np.float32), weights)

    def rocchio(self, name: str, rows: SparseRows, products: np.ndarray, common: np.ndarray,
                weights: np.ndarray | None = None) -> _Evidence:
        """Cosine with `_rocchio(rows, common, weights)`, given the rows' `products`.

        The query is the rows' (weighted) unit centroid minus a share of the common
        direction, normalised: a linear mix, so its scores mix the rows' scores and the
        common direction's (prepared once), and the dense query is never built.
        """
        share = (np.full(rows.count, 1 / rows.count) if weights is None
                 else weights.astype(np.float64) / float(weights.sum()))
        terms, where = np.unique(rows.terms, return_inverse=True)
        centroid = np.bincount(where, weights=rows.values * share[rows.rows],
                               minlength=len(terms))
        length = float(np.linalg.norm(centroid))
        scale = max(length, 1e-9)
        along = float(centroid @ common[terms]) / scale  # unit centroid . common
        squared = ((length / scale) ** 2 - 2 * ROCCHIO_BETA * along
                   + (ROCCHIO_BETA * self.candidates.common_norm) ** 2)
        norm = max(float(np.sqrt(max(squared, 0.0))), 1e-9)
        scores = (products @ share / scale
                  - ROCCHIO_BETA * self.candidates.common_scores) / norm
        return self._evidence(name, scores[:, None].astype(np.float32), None)

    def semantic(self, name: str, queries: np.ndarray, weights: np.ndarray | None = None
                 ) -> _Evidence | None:
        if self.candidates.scoring_embeddings is None:
            return None
        return self._evidence(name, self.candidates.scoring_embeddings @ queries.T, weights)


def _rocchio(vectors: np.ndarray, common: np.ndarray | None,
             weights: np.ndarray | None = None) -> np.ndarray:
    """The rows' (weighted) unit centroid, less ROCCHIO_BETA times `common` if given, at unit
    length."""
    centroid = np.asarray(np.average(vectors, axis=0, weights=weights)).ravel()
    centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-9)
    if common is not None:
        centroid = centroid - ROCCHIO_BETA * common
    return (centroid / max(float(np.linalg.norm(centroid)), 1e-9)).astype(np.float32)


@dataclass
class _LikedQuery:
    """The liked papers (and titles) as the rows of a query, lexical and embedded, each with
    a weight: 1 for what the subscriber liked, FEEDBACK_WEIGHT for a candidate added by
    pseudo-relevance feedback."""

    vectors: SparseRows
    products: np.ndarray  # scoring @ vectors
    embedded: np.ndarray | None
    weights: np.ndarray | None = None  # of the vectors; None: each weighs 1
    embedded_weights: np.ndarray | None = None

    def family(self, scorer: _Scorer, common: np.ndarray) -> np.ndarray | None:
        """The liked family: the lexical Rocchio query and the embedding centroid."""
        semantic = None
        if self.embedded is not None:
            semantic = scorer.semantic(
                "liked~", _rocchio(self.embedded, None, self.embedded_weights)[None, :])
        return _family([scorer.rocchio("liked", self.vectors, self.products, common,
                                       self.weights), semantic])

    def with_feedback(self, corpus: Corpus, candidates: Candidates, scorer: _Scorer,
                      positions: np.ndarray) -> _LikedQuery:
        """The query with the candidates at `positions` added, each at FEEDBACK_WEIGHT."""
        added, added_products = _feedback_rows(corpus, candidates, scorer, positions)
        feedback = np.full(len(positions), FEEDBACK_WEIGHT)
        embedded, embedded_weights = self.embedded, self.embedded_weights
        if embedded is not None and candidates.embeddings is not None:
            embedded_weights = np.r_[_or_ones(embedded_weights, len(embedded)), feedback]
            embedded = np.vstack([embedded, candidates.embeddings[positions]])
        return _LikedQuery(
            SparseRows.stack([self.vectors, added]),
            np.hstack([self.products, added_products]), embedded,
            np.r_[_or_ones(self.weights, self.vectors.count), feedback], embedded_weights)


def _feedback_rows(corpus: Corpus, candidates: Candidates, scorer: _Scorer,
                   positions: np.ndarray) -> tuple[SparseRows, np.ndarray]:
    """The candidates at `positions` as rows of a liked-papers query, and the rows' scores
    (`scoring @ rows.T`); kept per candidate while they fit in FEEDBACK_CACHE_BYTES."""
    cache = candidates.feedback
    missing = list(dict.fromkeys(int(i) for i in positions if int(i) not in cache))
    if missing:
        rows = corpus.linking_vectors([candidates.papers[i] for i in missing])
        products = scorer.products(rows)
        if (len(cache) + len(missing)) * products[:, 0].nbytes > FEEDBACK_CACHE_BYTES:
            if len(missing) < len(positions):  # no room: all of them afresh, this once
                rows = corpus.linking_vectors([candidates.papers[i] for i in positions])
                products = scorer.products(rows)
            return rows, products
        for k, position in enumerate(missing):
            entries = rows.rows == k
            row = SparseRows(1, np.zeros(int(entries.sum()), dtype=rows.rows.dtype),
                             rows.terms[entries], rows.values[entries])
            cache[position] = (row, products[:, k].copy())
    kept = [cache[int(i)] for i in positions]
    return (SparseRows.stack([row for row, _ in kept]),
            np.stack([column for _, column in kept], axis=1))


def _or_ones(weights: np.ndarray | None, count: int) -> np.ndarray:
    return np.ones(count) if weights is None else weights


def _family(parts: Sequence[_Evidence | None]) -> np.ndarray | None:
    """The mean standardised score of the evidence that is there."""
    present = [p.standardised() for p in parts if p is not None and p.informative]
    return np.mean(present, axis=0) if present else None


def _classifier(candidates: Candidates, liked: SparseRows | None, disliked: SparseRows | None
                ) -> _Evidence | None:
    """A linear classifier of liked against disliked papers, once there are enough of both."""
    if (liked is None or disliked is None or liked.count < CLASSIFIER_MIN
            or disliked.count < CLASSIFIER_MIN):
        return None
    train = SparseRows.stack([liked, disliked]).to_csr(candidates.scoring.shape[1])
    labels = np.r_[np.ones(liked.count), np.zeros(disliked.count)]
    model = LinearSVC(C=1.0, class_weight="balanced", max_iter=5000,
                      random_state=0)  # the same picks every run
    # Tf-idf rows are finite and the parameters fixed: sklearn's checks would cost more
    # than learning from a dozen papers.
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        model.fit(train, labels)
    # What model.decision_function computes, without checking its input again.
    scores = (candidates.scoring @ model.coef_.ravel() + model.intercept_).astype(np.float32)
    n = len(candidates.papers)
    return _Evidence("classifier", scores[:n], scores[n:])


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
        interest_query = _TermQuery.weighted_sum(queries, weights)
        interest_phrases = [term for term in map(str, corpus.terms[interest_query.terms])
                            if " " in term]
        embedded = corpus.embed(texts)
        family = _family([scorer.lexical("interests", queries, weights),
                          scorer.semantic("interests~", embedded, weights)
                          if embedded is not None else None])
        if family is not None:
            families.append(("interests", family))

    liked = corpus.vectors(prefs.liked) if prefs.liked else None
    disliked = corpus.vectors(prefs.disliked) if prefs.disliked else None
    liked_names = [p.title for p in prefs.liked] + list(prefs.liked_titles)
    like_sims = None
    liked_query: _LikedQuery | None = None
    feedback = np.zeros(0, dtype=np.int64)  # candidates added to the liked papers' query
    feedback_sims = np.zeros((n, 0), dtype=np.float32)
    if liked_names:
        parts = [corpus.linking_vectors(prefs.liked)] if prefs.liked else []
        if prefs.liked_titles:
            parts.append(transform(list(prefs.liked_titles)))
        vectors = SparseRows.stack(parts)
        liked_query = _LikedQuery(vectors, scorer.products(vectors), corpus.paper_embeddings(
            prefs.liked, prefs.liked_titles))
        family = liked_query.family(scorer, corpus.common)
        if family is not None:
            families.append(("liked", family))
        like_sims = liked_query.products[:n].astype(np.float32)
        if liked_query.embedded is not None and candidates.embeddings is not None:
            like_sims = like_sims + candidates.embeddings @ liked_query.embedded.T

    classifier = _classifier(candidates, liked, disliked)
    if classifier is not None:
        families.append(("classifier", classifier.standardised()))

    penalty = np.zeros(n)
    if disliked is not None:
        penalty += PENALTY_WEIGHT * np.maximum(
            scorer.lexical("disliked", disliked).standardised(), 0)
    if profile.avoid:
        penalty += PENALTY_WEIGHT * np.maximum(scorer.lexical(
            "avoid", transform(list(profile.avoid))).standardised(), 0)
    score = (np.mean([f for _, f in families], axis=0) if families else np.zeros(n)) - penalty
    if liked_query is not None and FEEDBACK_PAPERS > 0 and "liked" in dict(families):
        # Pseudo-relevance feedback: the best candidates of this first pass join the liked
        # papers at a lower weight, and the liked papers' evidence is scored again.
        pool = np.flatnonzero(allowed)
        feedback = pool[np.argsort(-score[pool], kind="stable")[:FEEDBACK_PAPERS]]
        expanded = liked_query.with_feedback(corpus, candidates, scorer, feedback)
        family = expanded.family(scorer, corpus.common)
        feedback_sims = expanded.products[:n, liked_query.vectors.count:].astype(np.float32)
        if candidates.embeddings is not None:
            feedback_sims = feedback_sims + candidates.embeddings @ candidates.embeddings[
                feedback].T
        feedback_sims[feedback, np.arange(len(feedback))] = -np.inf  # not like itself
        if family is not None:
            families = [(name, family if name == "liked" else f) for name, f in families]
            score = np.mean([f for _, f in families], axis=0) - penalty
    followed = frozenset(normalise_title(a) for a in profile.authors)
    by_followed = np.zeros(n, dtype=bool)
    for name in followed:
        positions = candidates.by_author.get(name)
        if positions is not None:
            by_followed[positions] = True
    if not families:
        # Nothing scores the papers: only followed authors' papers can be picked.
        allowed &= by_followed
        if not allowed.any():
            return []
    floor = -np.inf if min_score is None else min_score
    eligible = allowed & ((score > floor) | by_followed)  # followed authors: a hard rule
    order_by = score + FOLLOWED_FIRST * by_followed
    chosen = _diverse_top(order_by, eligible, candidates, top)

    by_family = dict(families)
    author_display = {normalise_title(a): a for a in profile.authors}
    matched_terms = (_matched_terms(corpus, candidates, chosen, interest_query,
                                    interest_phrases)
                     if "interests" in by_family and interest_query is not None else None)
    picks: list[Pick] = []
    for k, i in enumerate(chosen):
        reasons: list[str] = []
        by = sorted(candidates.authors[i] & followed)
        if by:
            reasons.append("by " + ", ".join(author_display[a] for a in by))
        told: list[tuple[float, str]] = []
        if matched_terms is not None:
            terms = matched_terms[k]
            if terms:
                told.append((float(by_family["interests"][i]), "matches: " + ", ".join(terms)))
        if "liked" in by_family and like_sims is not None:
            closest = int(like_sims[i].argmax())
            nearest = liked_names[closest]
            if like_sims[i, closest] <= 0 < feedback_sims[i].max(initial=0.0):
                # Nothing in common with a liked paper: it came in through feedback, by
                # resembling a pick that is like them; name that pick.
                nearest = candidates.papers[int(feedback[feedback_sims[i].argmax()])].title
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


def _diverse_top(score: np.ndarray, eligible: np.ndarray, candidates: Candidates,
                 top: int) -> list[int]:
    """Maximal marginal relevance: each next pick trades score against resemblance to the
    picks already made, so near-copies of one paper do not fill the list."""
    order = np.flatnonzero(eligible)
    if len(order) == 0:
        return []
    shortlist = order[np.argsort(-score[order], kind="stable")[: max(top * 5, 50)]]
    similarity = candidates.similarity.among(shortlist)
    chosen: list[int] = []
    penalty = np.zeros(len(shortlist), dtype=np.float32)
    base = score[shortlist]  # a copy: a chosen paper's base becomes -inf
    for _ in range(min(top, len(shortlist))):
        best = int(np.argmax(base - DIVERSITY * penalty))
        chosen.append(int(shortlist[best]))
        base[best] = -np.inf
        penalty = np.maximum(penalty, similarity[best])
    return chosen
