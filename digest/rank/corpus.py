"""Corpus: the stored papers as a tf-idf model of stemmed words and word pairs (with
sentence embeddings when the extra is installed), and the candidates prepared against it.
Built once per run from the store; every query and score of a ranking is made in it."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from digest.embed import paper_vectors
from digest.identity import normalise_title
from digest.models import Paper
from digest.rank.params import DEFAULT_PARAMS, RankParams
from digest.rank.tfidf import TfIdf, words_and_pairs
from digest.rank.words import Words

if TYPE_CHECKING:
    from digest.rank.cache import CandidateCache

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
        entries = spans(starts, ends)
        return cls(len(positions), np.repeat(np.arange(len(positions)), ends - starts),
                   matrix.indices[entries], matrix.data[entries])

    @classmethod
    def stack(cls, parts: Sequence[SparseRows]) -> SparseRows:
        """The rows of every part, one part after the other."""
        if len(parts) == 1:
            return parts[0]
        offsets = np.cumsum([0, *(p.count for p in parts)])
        rows = np.concatenate([p.rows for p in parts]).astype(np.int64, copy=False)
        rows += np.repeat(offsets[:-1], [len(p.rows) for p in parts])
        return cls(int(offsets[-1]), rows, np.concatenate([p.terms for p in parts]),
                   np.concatenate([p.values for p in parts]))

    def split(self) -> list[SparseRows]:
        """Each row on its own."""
        bounds = np.searchsorted(self.rows, np.arange(self.count + 1))
        zeros = np.zeros(int(np.diff(bounds).max(initial=0)), dtype=self.rows.dtype)
        return [SparseRows(1, zeros[:end - start], self.terms[start:end],
                           self.values[start:end])
                for start, end in zip(bounds[:-1], bounds[1:], strict=True)]

    def to_csr(self, n_terms: int) -> sparse.csr_matrix:
        """The same rows as a scipy matrix (the same arrays a row selection would hold)."""
        indptr = np.r_[0, np.cumsum(np.bincount(self.rows, minlength=self.count))]
        return sparse.csr_matrix((self.values, self.terms, indptr), shape=(self.count, n_terms))


def spans(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions start..end-1 of every span, one after the other."""
    lengths = ends - starts
    firsts = np.cumsum(lengths) - lengths  # where each span begins in the result
    return np.repeat(starts - firsts, lengths) + np.arange(int(lengths.sum()))


@dataclass
class Corpus:
    """The stored papers as tf-idf rows (L2-normalised) and, optionally, embeddings; the
    parameters every ranking in it follows, and what rankings keep for the next ones."""

    vectorizer: TfIdf
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
    words: Words | None = None  # the tokenizer (None when no stored paper has a word)
    params: RankParams = field(default_factory=RankParams)
    # What ranking on each set of candidates keeps for the next profiles ranked on it (see
    # `digest.rank.cache`), for as long as the candidates live.
    candidate_caches: weakref.WeakKeyDictionary[Candidates, CandidateCache] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False, compare=False)
    _queries: dict[str, SparseRows] = field(default_factory=dict)
    _embedded: dict[str, np.ndarray] = field(default_factory=dict)  # text -> `embed` row
    _stored_sample: tuple[np.ndarray, sparse.csr_matrix] | None = None

    def stored_sample(self) -> tuple[np.ndarray, sparse.csr_matrix]:
        """Up to `params.learned_stored` of the reference papers, evenly through them: their
        rows in `matrix`, and those rows (what a classifier learns against; made once)."""
        if self._stored_sample is None:
            rows = self.reference
            if len(rows) > self.params.learned_stored:
                rows = rows[np.linspace(0, len(rows) - 1, self.params.learned_stored,
                                        dtype=np.int64)]
            block = self.matrix[rows].tocsr()
            block.sort_indices()
            self._stored_sample = (rows, block)
        return self._stored_sample

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
            e for e in [self._embed_papers(papers)] if e is not None]
        if extra_texts:
            extra = self.embed(extra_texts)
            if extra is not None:
                parts.append(extra)
        found = np.vstack(parts) if parts else None
        return found if found is not None and len(found) else None

    def _embed_papers(self, papers: Sequence[Paper]) -> np.ndarray | None:
        """Centred unit embeddings of papers, made as stored papers' are."""
        if self.embed_text is None or self.embedding_mean is None or not papers:
            return None
        return _unit(paper_vectors(self.embed_text, papers) - self.embedding_mean)

    def embed(self, texts: Sequence[str]) -> np.ndarray | None:
        """Centred unit embeddings of new texts, or None without the embeddings extra. A
        text (a phrase many profiles share) is embedded once, up to
        `params.embedded_texts` kept."""
        if self.embed_text is None or self.embedding_mean is None or not texts:
            return None
        missing = [t for t in dict.fromkeys(texts) if t not in self._embedded]
        if missing:
            if len(self._embedded) + len(missing) > self.params.embedded_texts:
                self._embedded.clear()
                missing = list(dict.fromkeys(texts))
            vectors = _unit(self.embed_text(missing) - self.embedding_mean)
            self._embedded.update(zip(missing, vectors, strict=True))
        return np.stack([self._embedded[t] for t in texts])


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-9), dtype=np.float32)


def build_corpus(papers: Sequence[Paper], *, embeddings: np.ndarray | None = None,
                 embed_text: EmbedText | None = None, params: RankParams = DEFAULT_PARAMS
                 ) -> Corpus:
    """Fit the tf-idf model on `papers` (the whole store, so idf reflects the field).

    `embeddings` (one unit row per paper) and `embed_text` come with the extra; `params`
    are kept on the corpus for every ranking in it.
    """
    tokenizer = Words()
    words: Words | None = tokenizer
    texts = [p.text for p in papers] or [""]
    try:
        vectorizer, matrix = TfIdf.fit_transform(words_and_pairs(tokenizer), texts)
    except ValueError:  # an empty vocabulary: no paper has a usable word
        words = None
        vectorizer, matrix = TfIdf.fit_transform(lambda _text: ["\0"], texts)
    common = np.asarray(matrix.mean(axis=0)).ravel()
    common = common / max(float(np.linalg.norm(common)), 1e-9)
    rng = np.random.default_rng(0)  # a fixed sample: scores do not wobble between runs
    reference = np.arange(matrix.shape[0])
    if len(reference) > params.reference_papers:
        reference = np.sort(rng.choice(reference, params.reference_papers, replace=False))
    corpus = Corpus(vectorizer=vectorizer, matrix=matrix, papers=list(papers),
                    rows={p.row_id: i for i, p in enumerate(papers)},
                    terms=vectorizer.terms, common=common.astype(np.float32),
                    doc_freq=np.bincount(matrix.indices, minlength=matrix.shape[1]),
                    reference=reference, words=words, params=params)
    if embeddings is not None and len(papers) == len(embeddings) and len(papers) > 1:
        mean = embeddings.mean(axis=0)
        corpus.embedding_mean = mean.astype(np.float32)
        corpus.embeddings = _unit(embeddings - mean)
        corpus.embed_text = embed_text
    return corpus


@dataclass(frozen=True, eq=False)
class Candidates:
    """Papers that may be picked, prepared once and shared by every profile ranked on them.

    Everything here that does not depend on a profile is computed in `prepare_candidates`,
    so that ranking one profile does only that profile's arithmetic. Nothing here changes
    afterwards: what rankings work out and keep is in a `CandidateCache` the corpus holds.
    Compared by identity (a cache is found by it), as arrays have no one equality.
    """

    papers: list[Paper]
    matrix: sparse.csr_matrix
    authors: list[frozenset[str]]  # normalised author names
    index: dict[int, int]  # paper row_id -> position
    # The candidates' rows followed by the corpus reference rows: one product scores both.
    scoring: sparse.csr_matrix
    # The same transposed, a row per term (float64): a query's product reads only the rows
    # of its terms.
    by_term: sparse.csr_matrix
    # Scores of the corpus's common direction, part of every liked-papers query.
    common_scores: np.ndarray
    common_norm: float
    by_author: dict[str, np.ndarray]  # normalised author name -> positions
    embeddings: np.ndarray | None = None
    scoring_embeddings: np.ndarray | None = None


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
        authors=authors,
        index={p.row_id: i for i, p in enumerate(papers)},
        scoring=scoring,
        by_term=scoring.T.tocsr().astype(np.float64),
        common_scores=scoring @ corpus.common.astype(np.float64),
        common_norm=float(np.linalg.norm(corpus.common.astype(np.float64))),
        by_author={name: np.array(positions) for name, positions in by_author.items()},
        embeddings=embeddings,
        scoring_embeddings=(np.vstack([embeddings, corpus.embeddings[corpus.reference]])
                            if embeddings is not None and corpus.embeddings is not None
                            else None),
    )
