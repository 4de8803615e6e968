"""Rank: score candidate papers against a profile and explain each pick in words.

Pure computation over records. The stored corpus is a tf-idf model of words and word
pairs, each word as its Snowball stem. Evidence, each scored against it:
- interests: the profile's phrases as tf-idf queries, each on its own scale, then weighted;
- liked papers: a Rocchio query, their centroid minus the corpus's common direction, so
  what the liked papers share with everything else counts for little (words no other
  stored paper has are left out: they can match nothing); then pseudo-relevance feedback,
  the first pass's best few candidates join the liked papers at half weight (a profile
  with interests and no liked papers: they stand in for liked papers);
- with the `embeddings` extra, the same two in sentence-embedding space (centred);
- with enough liked and disliked papers, a per-subscriber linear classifier;
- penalties for resemblance to disliked papers and avoided topics.
Each kind is put on one scale (standard deviations above a typical stored paper) and
averaged; muted and required keywords and followed authors are hard rules; the top is
chosen with maximal marginal relevance, so near-copies do not fill the email.

Many profiles are ranked together (`rank_many`): each evidence is scored for a batch of
profiles in a few array operations, and the queries profiles share (topics, liked papers,
feedback candidates) are scored once per set of candidates.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np
import sklearn
import Stemmer
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
from sklearn.svm import LinearSVC

from digest.embed import paper_vectors
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
EMBEDDED_TEXTS = 20_000  # per Corpus: embeddings of phrases kept (1.5 kB each with MiniLM)
MIN_SPREAD = 0.01  # in cosine units: below this a query's spread says more about the query
REASON_TERMS = 3
# MMR compares each profile's shortlist of candidates. Up to SIMILARITY_MAX_PAPERS
# candidates (16 MB, about 0.4 s for 2,000), a table of every two is built once the profiles
# ranked on them have spent about as long on their own shortlists: comparing one shortlist
# costs about as long as SIMILARITY_PAIRS_PER_PROFILE entries of the table.
SIMILARITY_MAX_PAPERS = 2000
SIMILARITY_PAIRS_PER_PROFILE = 4000
MENTIONS_CACHE_BYTES = 8_000_000  # per Candidates: masks of the keywords met so far
# Per Candidates: the scores of queries met so far (the same topics, the same few candidates
# as feedback for many profiles).
QUERY_CACHE_BYTES = 32_000_000
# Profiles ranked together: up to RANK_BATCH, fewer when the candidates are many (each
# profile's queries are rows of scores on every candidate and reference row).
RANK_BATCH = 128
RANK_BATCH_CELLS = 200_000

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
    words: Words | None = None  # the tokenizer (None when no stored paper has a word)
    _queries: dict[str, SparseRows] = field(default_factory=dict)
    _embedded: dict[str, np.ndarray] = field(default_factory=dict)  # text -> `embed` row

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
        text (a phrase many profiles share) is embedded once, up to EMBEDDED_TEXTS kept."""
        if self.embed_text is None or self.embedding_mean is None or not texts:
            return None
        missing = [t for t in dict.fromkeys(texts) if t not in self._embedded]
        if missing:
            if len(self._embedded) + len(missing) > EMBEDDED_TEXTS:
                self._embedded.clear()
                missing = list(dict.fromkeys(texts))
            vectors = _unit(self.embed_text(missing) - self.embedding_mean)
            self._embedded.update(zip(missing, vectors, strict=True))
        return np.stack([self._embedded[t] for t in texts])


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-9), dtype=np.float32)


# Words of two or more letters or digits that hold a letter, in any script: "3D", "6G" and
# "Ragnarök" count, "2024" does not; hyphenated words are their parts ("retrieval-augmented"
# matches "retrieval augmented").
_TOKEN = re.compile(r"\b(?=\w*[^\W\d_])\w\w+\b")


def _words(text: str) -> list[str]:
    """The words of a lowercased text, English stop words left out."""
    return [w for w in _TOKEN.findall(text) if w not in ENGLISH_STOP_WORDS]


class Words:
    """The tf-idf model's tokenizer: the words of a lowercased text, English stop words left
    out, each as its Snowball stem, so that "robots", "robotic" and "robot" are one term and
    an interest in "graph neural networks" matches a paper on a "graph neural network".

    Stems are looked up once per distinct word (kept as long as the corpus). `surfaces`
    goes back from stems to a text's own words, for the reasons a pick gives.
    """

    def __init__(self) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        self._stems: dict[str, str] = {}

    def __call__(self, text: str) -> list[str]:
        return self.stems(_words(text))

    def stems(self, words: list[str]) -> list[str]:
        """Each word's Snowball stem (each distinct word stemmed once, then kept)."""
        stems = self._stems
        try:
            return [stems[w] for w in words]
        except KeyError:
            new = [w for w in dict.fromkeys(words) if w not in stems]
            stems.update(zip(new, self._stemmer.stemWords(new), strict=True))
            return [stems[w] for w in words]

    def surfaces(self, text: str) -> dict[str, str]:
        """Each stem of `text` -> the first of its words with that stem."""
        return self.surfaces_of(_words(text.lower()))

    def surfaces_of(self, words: list[str]) -> dict[str, str]:
        """`surfaces` of a text's words (`_words` of it, lowercased)."""
        return dict(zip(reversed(self.stems(words)), reversed(words), strict=True))


def build_corpus(papers: Sequence[Paper], *, embeddings: np.ndarray | None = None,
                 embed_text: EmbedText | None = None) -> Corpus:
    """Fit the tf-idf model on `papers` (the whole store, so idf reflects the field).

    `embeddings` (one unit row per paper) and `embed_text` come with the extra.
    """
    words: Words | None = Words()
    vectorizer = TfidfVectorizer(
        tokenizer=words,
        token_pattern=None,
        ngram_range=(1, 2),
        sublinear_tf=True,
        dtype=np.float32,
    )
    texts = [p.text for p in papers] or [""]
    try:
        matrix = vectorizer.fit_transform(texts).tocsr()
    except ValueError:  # an empty vocabulary: no paper has a usable word
        words = None
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
                    reference=reference, words=words)
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


def _matched_terms(corpus: Corpus, candidates: Candidates,
                   asks: Sequence[tuple[Sequence[str], np.ndarray, Sequence[int]]]
                   ) -> list[list[list[str]]]:
    """For each ask (interest phrases, their weights, chosen candidates), for each chosen
    candidate: the terms of its row that contribute most to its match with the phrases'
    weighted query (looked up for every ask's picks at once).

    Two words that both match and form one of the query's phrases are named as that
    phrase ("dense retrieval", not "dense, retrieval").
    """
    if not asks:
        return []
    n_terms = len(corpus.terms)
    # Each ask's query: its phrases' rows times their weights, summed in float32 row after
    # row; a cell is (ask, term).
    queries = corpus.transform([text for texts, _, _ in asks for text in texts])
    asking = np.repeat(np.arange(len(asks)), [len(texts) for texts, _, _ in asks])  # by row
    cells, where = np.unique(asking[queries.rows] * n_terms + queries.terms,
                             return_inverse=True)
    summed = np.zeros(len(cells), dtype=np.float32)
    row_weights = np.concatenate([weights for _, weights, _ in asks])
    np.add.at(summed, where, queries.values * row_weights[queries.rows])
    cells, summed = cells[summed != 0], summed[summed != 0]

    matrix = candidates.matrix
    positions = np.fromiter((i for _, _, chosen in asks for i in chosen), dtype=np.int64)
    asker = np.repeat(np.arange(len(asks)), [len(chosen) for _, _, chosen in asks])
    starts, ends = matrix.indptr[positions], matrix.indptr[positions + 1]
    entries = _spans(starts, ends)
    terms = matrix.indices[entries]
    owner = np.repeat(np.arange(len(positions)), ends - starts)
    # Only the entries of terms some query has can match: the rest (most) go first.
    queried = np.zeros(n_terms, dtype=bool)
    queried[cells % n_terms] = True
    useful = queried[terms]
    entries, terms, owner = entries[useful], terms[useful], owner[useful]
    wanted = asker[owner] * n_terms + terms
    found = np.minimum(np.searchsorted(cells, wanted), max(len(cells) - 1, 0))
    value = (np.where(cells[found] == wanted, summed[found], np.float32(0)) if len(cells)
             else np.zeros(len(wanted), dtype=np.float32))
    contribution = matrix.data[entries] * value
    keep = contribution > 0
    terms, contribution, owner = terms[keep], contribution[keep], owner[keep]
    order = np.lexsort((-contribution, owner))  # by pick, then best first
    terms, owner = terms[order], owner[order]
    bounds = np.searchsorted(owner, np.arange(len(positions) + 1)).tolist()
    names = corpus.terms[terms].tolist()
    phrase_terms = [str(t) for t in corpus.terms[cells % n_terms]]
    phrase_bounds = np.searchsorted(cells // n_terms, np.arange(len(asks) + 1)).tolist()
    named: list[list[list[str]]] = []
    pick = 0
    for j, (texts, _, chosen) in enumerate(asks):
        phrases: dict[str, list[tuple[str, list[str]]]] = {}  # word -> the phrases with it
        for t in phrase_terms[phrase_bounds[j]:phrase_bounds[j + 1]]:
            if " " in t:
                words = t.split()
                for word in dict.fromkeys(words):
                    phrases.setdefault(word, []).append((t, words))
        said = [_name_terms(names[bounds[k]:bounds[k + 1]], phrases)
                for k in range(pick, pick + len(chosen))]
        named.append(_in_their_words(corpus, candidates, texts, chosen, said))
        pick += len(chosen)
    return named


def _in_their_words(corpus: Corpus, candidates: Candidates, phrases: Sequence[str],
                    chosen: Sequence[int], said: list[list[str]]) -> list[list[str]]:
    """Each pick's matched terms (stems) in words: the phrase's word where the pick has that
    very word, else the pick's own ("robot" where the profile asked for "robots", "contrast"
    and not "contrastive" when a paper says "in contrast"). Every word of a matched term is
    in the pick and in some phrase."""
    if corpus.words is None or not any(said):
        return said
    asked: dict[str, str] = {}
    for phrase in reversed(phrases):  # the first phrase with a stem names it
        asked.update(corpus.words.surfaces(phrase))
    shown: list[list[str]] = []
    for position, terms in zip(chosen, said, strict=True):
        if not terms:
            shown.append(terms)
            continue
        own = candidates.surfaces.get(position)
        if own is None:
            words = _words(candidates.papers[position].text.lower())
            own = candidates.surfaces[position] = (corpus.words.surfaces_of(words),
                                                   frozenset(words))
        shown.append([_word(t, asked, *own) if " " not in t else
                      " ".join([_word(w, asked, *own) for w in t.split()]) for t in terms])
    return shown


def _word(stem: str, asked: Mapping[str, str], surface: Mapping[str, str],
          words: frozenset[str]) -> str:
    """A stem in the phrases' word for it (`asked`) if the pick has that very word, else in
    the pick's own (`surface`; `words`: every word of the pick)."""
    wanted = asked.get(stem)
    return wanted if wanted in words else surface.get(stem, stem)


def _name_terms(matched: list[str], phrases: Mapping[str, Sequence[tuple[str, list[str]]]]
                ) -> list[str]:
    """The first few matched terms, a word named by the query phrase (with its words) that
    it forms with other matched words: the first of the phrases with it (`phrases[word]`,
    each with its words) whose words all matched."""
    present = set(matched)
    chosen: list[str] = []
    said: set[str] = set()  # the chosen terms, and the words of each
    for term in matched:
        if " " not in term and phrases:
            whole = next((p for p, words in phrases.get(term, ())
                          if all(w in present for w in words)), None)
            term = whole or term
        if term in said:
            continue  # already said, alone or inside a phrase
        chosen.append(term)
        if len(chosen) == REASON_TERMS:
            break
        said.add(term)
        said.update(term.split())
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
    # The same transposed, a row per term (float64): a query's product reads only the rows
    # of its terms.
    by_term: sparse.csr_matrix
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
    # Queries scored on these candidates so far (see `_QueryBank`).
    queries: _QueryBank = field(default_factory=lambda: _QueryBank(), repr=False,
                                compare=False)
    # Position -> the paper's own word for each stem it holds, and its words, for the
    # picks' reasons.
    surfaces: dict[int, tuple[dict[str, str], frozenset[str]]] = field(
        default_factory=dict, repr=False, compare=False)


class _Similarity:
    """Cosine similarity between candidates, for MMR: computed per shortlist at first, from
    a table of every two candidates once enough profiles have asked (see
    SIMILARITY_MAX_PAPERS)."""

    def __init__(self, matrix: sparse.csr_matrix):
        self.matrix = matrix
        self.asked = 0
        self.table: np.ndarray | None = None

    def among(self, shortlists: np.ndarray) -> np.ndarray:
        """For each shortlist (a row of candidate positions), the similarity of every two
        of its candidates."""
        if self.table is None:
            self.asked += len(shortlists)
            n = self.matrix.shape[0]
            if n > SIMILARITY_MAX_PAPERS or self.asked * SIMILARITY_PAIRS_PER_PROFILE < n * n:
                vectors = [self.matrix[shortlist] for shortlist in shortlists]
                return np.stack([_dense(v @ v.T) for v in vectors])
            self.table = _dense(self.matrix @ self.matrix.T)
        pairs: np.ndarray = self.table[shortlists[:, :, None], shortlists[:, None, :]]
        return pairs


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
        lowered=LoweredTexts([p.text.lower() for p in papers], corpus.words),
        authors=authors,
        index={p.row_id: i for i, p in enumerate(papers)},
        scoring=scoring,
        by_term=scoring.T.tocsr().astype(np.float64),
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
    """A read-only mask of the candidates that mention any phrase as whole words, each word
    in any of its forms (`LoweredTexts.forms`). Each phrase's mask is kept: profiles share
    keywords far more often than whole lists."""
    masks = []
    for phrase in phrases:
        key = " ".join(phrase.split()).lower()
        if not key:
            continue
        hits = candidates.mentions.get(key)
        if hits is None:
            hits = _find_mentions(candidates.lowered, _phrase_forms(candidates.lowered, key))
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


def _case_twins() -> frozenset[str] | None:
    """Lower-case letters that a case-insensitive regex takes for another lower-case
    letter (the long s for "s", the Greek final sigma for the medial one, ...): where a
    text holds one, its words cannot be looked up as they are written. None if this
    Python does not say (its `re` module's private table): then no text beyond ASCII is."""
    try:
        from re._casefix import _EXTRA_CASES  # type: ignore[import-not-found]
    except ImportError:
        return None
    return frozenset(chr(c) for pair in _EXTRA_CASES.items()
                     for c in (pair[0], *pair[1]) if c > 127)


_CASE_TWINS = _case_twins()
_WORD = re.compile(r"\w+")
# Candidate sets up to this many texts get an index of their words for keyword rules;
# bigger ones (`digest rank` over a whole store) are scanned instead.
WORD_INDEX_TEXTS = 20_000
MAX_PHRASE_FORMS = 64  # a keyword's spellings with its words in other forms, at most


def _twinned(text: str) -> bool:
    """Whether `text` holds a letter of `_CASE_TWINS`."""
    return not text.isascii() and (_CASE_TWINS is None or not _CASE_TWINS.isdisjoint(text))


class LoweredTexts:
    """Texts in lower case, also joined into one string: which of them hold a word is then
    found by one scan in C rather than a test of each text; and, made when first asked
    for, which texts hold each whole word."""

    def __init__(self, texts: Sequence[str], words: Words | None = None):
        self.texts = list(texts)
        self._joined = "\x00".join(self.texts)
        self._starts = list(accumulate((len(t) + 1 for t in self.texts[:-1]), initial=0))
        self._words: dict[str, list[int]] | None = None
        self._twinned: list[int] | None = None
        self._forms: dict[str, list[str]] | None = None  # Snowball stem -> words
        # The corpus's tokenizer: its stems, and those it has already worked out.
        self._words_of_model = words or Words()

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

    @property
    def twinned(self) -> list[int]:
        """The positions of the texts holding a letter of `_CASE_TWINS`: whether such a
        text mentions a word is for a case-insensitive match to say."""
        if self._twinned is None:
            self._twinned = [i for i, text in enumerate(self.texts) if _twinned(text)]
        return self._twinned

    def forms(self, word: str) -> list[str]:
        """`word` (lower case), then the other words of these texts with its Snowball
        stem ("models", "modelling" for "model"), as the tf-idf model reads them: a keyword
        rule means the word in any form. Made when first asked for: each distinct word of
        the texts stemmed once."""
        stems = self._words_of_model.stems
        if self._forms is None:
            seen: set[str] = set()
            for text in self.texts:
                seen.update(_WORD.findall(text))
            words = sorted(seen)
            self._forms = {}
            for found, stem in zip(words, stems(words), strict=True):
                self._forms.setdefault(stem, []).append(found)
        others = self._forms.get(stems([word])[0], [])
        return [word, *(w for w in others if w != word)]

    def with_word(self, word: str) -> list[int]:
        """The positions of the texts, `twinned` ones aside, that hold `word` (a run of
        word characters in lower case) as a whole word, as it is written."""
        if self._words is None:
            self._words = {}
            twinned = set(self.twinned)
            for i, text in enumerate(self.texts):
                if i not in twinned:
                    for found in set(_WORD.findall(text)):
                        self._words.setdefault(found, []).append(i)
        return self._words.get(word, [])


def _phrase_forms(texts: LoweredTexts, phrase: str) -> list[str]:
    """The phrase (spaced, lower case) with each of its words in every form the texts hold
    (`LoweredTexts.forms`): "language model" is also "language models" and "languages
    modelling" where the texts say so. Words with signs in them ("gpt-4", "c++") stay as
    written; the written phrase comes first, and there are at most MAX_PHRASE_FORMS."""
    variants = [""]
    for token in phrase.split(" "):
        forms = texts.forms(token) if _WORD.fullmatch(token) else [token]
        grown = [f"{v} {f}" if v else f for v in variants for f in forms]
        variants = grown[:MAX_PHRASE_FORMS]
    return variants


def _find_mentions(texts: LoweredTexts, phrases: Sequence[str]) -> np.ndarray:
    """A mask of the (lower-case) texts that mention any phrase as whole words."""
    hits = np.zeros(len(texts), dtype=bool)
    pattern = _phrase_pattern(phrases)
    if pattern is None:
        return hits
    for phrase in phrases:
        spaced = " ".join(phrase.split())
        key = spaced.lower()
        if not key:
            continue
        first = _WORD.match(key)
        search: Sequence[int]
        if _twinned(key) or len(key) != len(spaced):
            search = range(len(texts))  # a case-insensitive match may differ in any text
        elif first is None or len(texts) > WORD_INDEX_TEXTS:
            # A phrase beginning with a sign, or too many texts to index: the texts
            # holding its first word (and those a case-insensitive match may differ in).
            search = [*texts.holding(key.split()[0]), *texts.twinned]
        else:
            # The texts holding the phrase's first word as a whole word: a phrase of one
            # word is then found; other phrases, and texts where a case-insensitive match
            # may differ from the word as written, are confirmed by the regex.
            holding = texts.with_word(first.group())
            if first.end() == len(key):
                hits[holding] = True
                search = texts.twinned
            else:
                search = [*holding, *texts.twinned]
        for i in search:
            if not hits[i] and pattern.search(texts.texts[i]):
                hits[i] = True
    return hits


def _dense(values: Any) -> np.ndarray:
    array = values.toarray() if sparse.issparse(values) else np.asarray(values)
    return np.asarray(array, dtype=np.float32)


_Key = tuple[str, Any]  # ("text", phrase), ("whole", paper text), ("linking" or "vector", row_id)


@dataclass(frozen=True)
class _QueryScores:
    """Query rows and their scores on `Candidates.scoring` (one row of `scores` each), found
    by key."""

    index: dict[_Key, int]
    rows: list[SparseRows]
    scores: np.ndarray  # float64, (queries, scoring rows)

    def columns(self, keys: Sequence[_Key]) -> np.ndarray:
        return np.fromiter((self.index[k] for k in keys), dtype=np.int64, count=len(keys))


class _QueryBank:
    """Query rows scored on the candidates, kept by key for the profiles ranked after: a
    phrase (an interest, an avoided topic, a liked title), a stored paper as a liked or
    feedback paper (its linking vector) or as a disliked one (its whole vector), a paper
    not stored (its whole text). Profiles share most of them: the same topics, the same
    few candidates as feedback. Up to QUERY_CACHE_BYTES of scores are kept; when a batch's
    new queries do not fit, the bank starts afresh."""

    def __init__(self) -> None:
        self.index: dict[_Key, int] = {}
        self.rows: list[SparseRows] = []
        self.scores = np.zeros((0, 0))  # rows for the first `len(index)` queries

    def lookup(self, corpus: Corpus, candidates: Candidates,
               wanted: Mapping[_Key, Paper | None]) -> _QueryScores:
        """The scores of every wanted query (a stored paper's key maps to the paper). Valid
        until the next lookup."""
        width = candidates.scoring.shape[0]
        capacity = QUERY_CACHE_BYTES // (8 * max(width, 1))
        if self.scores.shape[1] != width:  # the first lookup: rows as wide as the candidates'
            self.scores = np.zeros((0, width))
        if len(wanted) > capacity:  # more than the bank holds: these, this once
            keys = list(wanted)
            rows, scores = _score_queries(corpus, candidates, keys, wanted)
            return _QueryScores({k: i for i, k in enumerate(keys)}, rows, scores)
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
        return _QueryScores(self.index, self.rows, self.scores)


def _score_queries(corpus: Corpus, candidates: Candidates, keys: Sequence[_Key],
                   sources: Mapping[_Key, Paper | None]) -> tuple[list[SparseRows], np.ndarray]:
    """The query row of each key, and its scores (`scoring @ row`, float64) as a row."""
    found: dict[_Key, SparseRows] = {}
    for kind in ("text", "whole", "linking", "vector"):
        of_kind = [k for k in keys if k[0] == kind]
        if not of_kind:
            continue
        if kind == "text":
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
    return ordered, _products(candidates, SparseRows.stack(ordered))


def _products(candidates: Candidates, queries: SparseRows) -> np.ndarray:
    """`queries @ scoring.T` (float64, a row per query), in scipy's sparse product: it
    reads only the rows of the queries' terms, and accumulates in C (a liked paper's query
    has a hundred terms or more, many of them in most papers)."""
    rows = queries.to_csr(candidates.by_term.shape[0]).astype(np.float64)
    return np.asarray((rows @ candidates.by_term).toarray())


_Groups = Sequence[tuple[Sequence[_Key], np.ndarray | None]]  # queries and their weights


def _flattened(bank: _QueryScores, groups: _Groups) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
    """Each group's number of queries, which groups have any, and every group's queries'
    rows in the bank, one group after the other."""
    sizes = np.array([len(keys) for keys, _ in groups], dtype=np.int64)
    return sizes, sizes > 0, bank.columns([k for keys, _ in groups for k in keys])


def _best_of(bank: _QueryScores, groups: _Groups, own_scale: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """For each group of queries (with weights, or None for 1 each), every scoring row's
    best weighted score among them (float32); and which groups have a query at all. With
    `own_scale` (the number of candidates), each query's scores are first put on its own
    scale (`_on_own_scale`)."""
    sizes, present, columns = _flattened(bank, groups)
    best = np.zeros((len(groups), bank.scores.shape[1]), dtype=np.float32)
    if present.any():
        scores = bank.scores[columns].astype(np.float32)
        if own_scale is not None:
            scores = _on_own_scale(scores, own_scale)
        if any(w is not None for _, w in groups):
            scores *= np.concatenate([np.ones(len(keys), dtype=np.float32) if w is None else w
                                      for keys, w in groups])[:, None]
        starts = np.cumsum(sizes) - sizes
        best[present] = np.maximum.reduceat(scores, starts[present], axis=0)
    return best, present


def _rocchio_scores(corpus: Corpus, candidates: Candidates, bank: _QueryScores,
                    groups: _Groups) -> tuple[np.ndarray, np.ndarray]:
    """For each group of query rows (with weights, or None for 1 each), every scoring row's
    cosine with `_rocchio(rows, corpus.common, weights)` (float32); and which groups have a
    row at all.

    The query is the rows' weighted unit centroid minus a share of the common direction,
    normalised: a linear mix, so its scores mix the rows' scores and the common
    direction's (prepared once), and the dense query is never built.
    """
    sizes, present, columns = _flattened(bank, groups)
    result = np.zeros((len(groups), bank.scores.shape[1]), dtype=np.float32)
    if not present.any():
        return result, present
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
    squared = ((length / scale) ** 2 - 2 * ROCCHIO_BETA * along
               + (ROCCHIO_BETA * candidates.common_norm) ** 2)
    norm = np.maximum(np.sqrt(np.maximum(squared, 0.0)), 1e-9)
    # Each group's rows' scores mixed by their shares: a sparse (groups x queries) matrix
    # times the bank's scores, adding the rows in order as a sum of products would.
    mixing = sparse.csr_matrix((shares, columns, bounds), shape=(count, len(bank.scores)))
    mixed = mixing @ bank.scores
    result[present] = ((mixed / scale[:, None] - ROCCHIO_BETA * candidates.common_scores)
                       / norm[:, None])
    return result, present


def _typical(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mean and standard deviation on the reference rows (its columns after the
    first n, the candidates')."""
    reference = scores[:, n:]
    return reference.mean(axis=1), reference.std(axis=1)


def _on_own_scale(scores: np.ndarray, n: int) -> np.ndarray:
    """Each row of scores (a query's on the candidates, its first n, then on the reference
    rows) in standard deviations above the typical stored paper, and 0 where below it.
    Several phrases are compared on this scale before their weights apply: a cosine's size
    says as much about the phrase (one rare word or several common ones; in
    sentence-embedding space, how close short texts sit to everything) as about the
    paper. A phrase counts only where it matches better than typical, so one that matches
    nothing, or weighs little, changes nothing."""
    mean, spread = _typical(scores, n)
    spread = np.maximum(spread, np.float32(MIN_SPREAD))
    scaled: np.ndarray = np.maximum((scores - mean[:, None]) / spread[:, None], 0)
    return scaled


def _standardised(scores: np.ndarray, present: np.ndarray, n: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's scores of the candidates (its first n) in standard deviations above the
    typical stored paper (the rest: the reference rows), and which rows are informative:
    present and not matching nothing at all (e.g. an interest made only of stop words).
    The spread has a floor, so that a query matching almost nothing does not make one faint
    match look huge."""
    ahead = scores[:, :n]
    mean, spread = _typical(scores, n)
    informative = present & ((ahead.max(axis=1, initial=0.0) > 0) | (spread > 0))
    standard = (ahead - mean[:, None]) / np.maximum(spread, np.float32(MIN_SPREAD))[:, None]
    return standard, informative


def _mean_of(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Row by row, the mean of the parts present there (each: values and a row mask), and
    which rows have any."""
    total = np.zeros_like(parts[0][0])
    count = np.zeros(len(total), dtype=total.dtype)
    for values, present in parts:
        total += np.where(present[:, None], values, np.zeros((), dtype=total.dtype))
        count += present
    return total / np.maximum(count, 1)[:, None], count > 0


@dataclass(frozen=True)
class RankRequest:
    """One profile to rank: up to `top` picks, none of `exclude` (row ids: papers already
    sent) nor below `min_score`."""

    prefs: Preferences
    top: int
    exclude: frozenset[int] = frozenset()
    min_score: float | None = None


@dataclass
class _Plan:
    """One profile's request, with what may be picked and its queries by key."""

    request: RankRequest
    allowed: np.ndarray
    interests: list[_Key]
    interest_weights: np.ndarray | None
    liked: list[_Key]  # the liked papers', then the liked titles'
    disliked: list[_Key]
    avoid: list[_Key]
    feedback: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _paper_keys(corpus: Corpus, papers: Sequence[Paper], kind: str
                ) -> list[tuple[_Key, Paper | None]]:
    """Stored papers by row id (`kind`: "linking" or "vector"); when any is not stored,
    every one by its whole text (as `Corpus.vectors` does)."""
    if all(p.row_id in corpus.rows for p in papers):
        return [((kind, p.row_id), p) for p in papers]
    return [(("whole", p.text), None) for p in papers]


def _plan(corpus: Corpus, candidates: Candidates, request: RankRequest,
          wanted: dict[_Key, Paper | None]) -> _Plan | None:
    """The request's plan, its queries added to `wanted`; None if nothing may be picked."""
    prefs, profile = request.prefs, request.prefs.profile
    n = len(candidates.papers)
    if request.top <= 0:
        return None
    allowed = np.ones(n, dtype=bool)
    for row_id in (*request.exclude, *(p.row_id for p in prefs.liked),
                   *(p.row_id for p in prefs.disliked)):
        position = candidates.index.get(row_id)
        if position is not None:
            allowed[position] = False
    if profile.mute:
        allowed &= ~_mentions(candidates, profile.mute)
    if profile.require:
        allowed &= _mentions(candidates, profile.require)
    if not allowed.any():
        return None
    interests: list[tuple[_Key, Paper | None]] = [(("text", i.text), None)
                                                 for i in profile.interests]
    weights = None
    if profile.interests:
        weights = np.array([i.weight for i in profile.interests], dtype=np.float32)
        weights = weights / max(float(weights.max()), 1e-9)
    liked = _paper_keys(corpus, prefs.liked, "linking") + [
        (("text", t), None) for t in prefs.liked_titles]
    disliked = _paper_keys(corpus, prefs.disliked, "vector")
    avoid: list[tuple[_Key, Paper | None]] = [(("text", a), None) for a in profile.avoid]
    for key, source in (*interests, *liked, *disliked, *avoid):
        wanted.setdefault(key, source)
    return _Plan(request, allowed, [k for k, _ in interests], weights, [k for k, _ in liked],
                 [k for k, _ in disliked], [k for k, _ in avoid])


def _candidate_key(corpus: Corpus, paper: Paper) -> tuple[_Key, Paper | None]:
    if paper.row_id in corpus.rows:
        return ("linking", paper.row_id), paper
    return ("whole", paper.text), None


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
    return rank_many(corpus, candidates, [RankRequest(prefs, top, exclude, min_score)])[0]


def rank_many(corpus: Corpus, candidates: Candidates, requests: Sequence[RankRequest]
              ) -> list[list[Pick]]:
    """`rank_papers` for many profiles: the picks of each request, in order. Profiles are
    scored together, a few dozen at a time, so that each step is a few array operations
    for all of them rather than many small ones for each; each profile's picks are those
    it gets ranked alone."""
    if not candidates.papers:
        return [[] for _ in requests]
    width = candidates.scoring.shape[0]
    # Each profile has a handful of queries, each a row of `width` scores.
    size = max(1, min(RANK_BATCH, RANK_BATCH_CELLS // max(width, 1)))
    picks: list[list[Pick]] = []
    for start in range(0, len(requests), size):
        picks.extend(_rank_batch(corpus, candidates, requests[start:start + size]))
    return picks


def _rank_batch(corpus: Corpus, candidates: Candidates, requests: Sequence[RankRequest]
                ) -> list[list[Pick]]:
    """The picks of a few dozen requests, each evidence scored for all of them at once: a
    row per profile, a column per candidate (and reference row)."""
    n = len(candidates.papers)
    wanted: dict[_Key, Paper | None] = {}
    planned = [_plan(corpus, candidates, r, wanted) for r in requests]
    plans = [p for p in planned if p is not None]
    if not plans:
        return [[] for _ in requests]
    bank = candidates.queries.lookup(corpus, candidates, wanted)
    allowed = np.stack([p.allowed for p in plans])

    # Interests: each phrase's scores on its own scale, then weighted, then the best.
    lexical, present = _best_of(bank, [(p.interests, p.interest_weights) for p in plans], n)
    # With the embeddings extra: the batch's phrases in one call to the model.
    corpus.embed([text for p in plans for text in
                  [i.text for i in p.request.prefs.profile.interests]
                  + list(p.request.prefs.liked_titles)])
    embedded = [corpus.embed([i.text for i in p.request.prefs.profile.interests])
                for p in plans]
    interests = _mean_of([
        _standardised(lexical, present, n),
        _standardised(*_semantic(candidates, [
            None if e is None else (e, p.interest_weights)
            for p, e in zip(plans, embedded, strict=True)], n), n)])

    liked_embedded = [corpus.paper_embeddings(p.request.prefs.liked,
                                              p.request.prefs.liked_titles)
                      if p.liked else None for p in plans]
    liked = _liked_family(corpus, candidates, bank, plans, liked_embedded, feedback=False)

    classifier = np.zeros((len(plans), candidates.scoring.shape[0]), dtype=np.float32)
    learned = np.zeros(len(plans), dtype=bool)
    for j, plan in enumerate(plans):
        scores = _classifier(corpus, candidates, plan.request.prefs)
        if scores is not None:
            classifier[j], learned[j] = scores, True
    classified = (_standardised(classifier, learned, n)[0], learned)

    penalty = np.zeros((len(plans), n))
    for keys in ([p.disliked for p in plans], [p.avoid for p in plans]):
        resembles, present = _best_of(bank, [(k, None) for k in keys])
        if present.any():
            standard = _standardised(resembles, present, n)[0]
            penalty += np.where(present[:, None],
                                PENALTY_WEIGHT * np.maximum(standard, np.float32(0)), 0.0)

    family, any_family = _mean_of([interests, liked, classified])
    score = family - penalty

    # Pseudo-relevance feedback: the best candidates of this first pass join the liked papers
    # at a lower weight, and the liked papers' evidence is scored again; a profile with
    # interests and no liked papers gets that evidence from the feedback papers alone.
    # Only candidates better than the typical stored paper and good enough to be sent count
    # as relevant: on a day with nothing good enough there is no feedback to lift anything
    # over `min_score`, and papers that match nothing (tied) never stand in for liked ones.
    floors = np.array([-np.inf if p.request.min_score is None else p.request.min_score
                       for p in plans])
    expand = liked[1] | interests[1]
    if FEEDBACK_PAPERS > 0 and expand.any():
        relevant = allowed & (score > np.maximum(floors, 0.0)[:, None])
        order = np.argsort(np.where(relevant, -score, np.inf), axis=1, kind="stable")
        for j in np.flatnonzero(expand).tolist():
            plans[j].feedback = order[j, :min(FEEDBACK_PAPERS, int(relevant[j].sum()))]
        for plan in plans:
            for position in plan.feedback.tolist():
                key, source = _candidate_key(corpus, candidates.papers[position])
                wanted.setdefault(key, source)
        bank = candidates.queries.lookup(corpus, candidates, wanted)  # the first may be gone
        again = _liked_family(corpus, candidates, bank, plans, liked_embedded, feedback=True)
        redone = again[1] & expand
        liked = (np.where(redone[:, None], again[0], liked[0]), liked[1] | redone)
        family, any_family = _mean_of([interests, liked, classified])
        score = np.where(redone[:, None], family - penalty, score)

    followed = [frozenset(normalise_title(a) for a in p.request.prefs.profile.authors)
                for p in plans]
    by_followed = np.zeros(allowed.shape, dtype=bool)
    for j, names in enumerate(followed):
        for name in names:
            positions = candidates.by_author.get(name)
            if positions is not None:
                by_followed[j, positions] = True
    # Nothing scores a profile's papers: only followed authors' papers can be picked.
    allowed &= any_family[:, None] | by_followed
    eligible = allowed & ((score > floors[:, None]) | by_followed)  # followed: a hard rule
    chosen = _diverse_top(score + FOLLOWED_FIRST * by_followed, eligible, candidates,
                          [p.request.top for p in plans])
    asks: dict[int, tuple[list[str], np.ndarray, list[int]]] = {}
    for j, plan in enumerate(plans):
        if interests[1][j] and plan.interest_weights is not None and chosen[j]:
            asks[j] = ([i.text for i in plan.request.prefs.profile.interests],
                       plan.interest_weights, chosen[j])
    matched = dict(zip(asks, _matched_terms(corpus, candidates, list(asks.values())),
                       strict=True))

    picks: list[list[Pick]] = []
    for j, plan in enumerate(plans):
        by_family = {name: values[j] for name, (values, present) in
                     (("interests", interests), ("liked", liked), ("classifier", classified))
                     if present[j]}
        picks.append(_picks(corpus, candidates, bank, plan, chosen[j], score[j], by_family,
                            followed[j], matched.get(j), liked_embedded[j]))
    made = iter(picks)
    return [[] if p is None else next(made) for p in planned]


def _semantic(candidates: Candidates,
              queries: Sequence[tuple[np.ndarray, np.ndarray | None] | None],
              own_scale: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For each profile's embedded queries (with weights), or None: every scoring row's
    best weighted cosine with them (with `own_scale`, the number of candidates: each
    query's cosines on its own scale first); and which profiles have any."""
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
                cosines = _on_own_scale(cosines.T, own_scale).T
            scores[j] = (cosines if weights is None else cosines * weights).max(axis=1)
            present[j] = True
    return scores, present


def _rocchio(vectors: np.ndarray, common: np.ndarray | None,
             weights: np.ndarray | None = None) -> np.ndarray:
    """The rows' (weighted) unit centroid, less ROCCHIO_BETA times `common` if given, at unit
    length."""
    centroid = np.asarray(np.average(vectors, axis=0, weights=weights)).ravel()
    centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-9)
    if common is not None:
        centroid = centroid - ROCCHIO_BETA * common
    return (centroid / max(float(np.linalg.norm(centroid)), 1e-9)).astype(np.float32)


def _liked_family(corpus: Corpus, candidates: Candidates, bank: _QueryScores,
                  plans: Sequence[_Plan], embedded: Sequence[np.ndarray | None], *,
                  feedback: bool) -> tuple[np.ndarray, np.ndarray]:
    """The liked papers' evidence: the lexical Rocchio query and the embedding centroid,
    standardised and averaged; with `feedback`, each plan's feedback candidates join its
    liked papers at FEEDBACK_WEIGHT."""
    n = len(candidates.papers)
    groups: list[tuple[Sequence[_Key], np.ndarray | None]] = []
    centroids: list[tuple[np.ndarray, None] | None] = []
    for plan, vectors in zip(plans, embedded, strict=True):
        if (not plan.liked and not feedback) or (feedback and not len(plan.feedback)):
            groups.append(([], None))
            centroids.append(None)
            continue
        keys, weights, vector_weights = list(plan.liked), None, None
        if feedback:
            added = np.full(len(plan.feedback), FEEDBACK_WEIGHT)
            keys += [_candidate_key(corpus, candidates.papers[i])[0] for i in plan.feedback]
            weights = np.r_[np.ones(len(plan.liked)), added]
            if not plan.liked and candidates.embeddings is not None:
                vectors, vector_weights = candidates.embeddings[plan.feedback], added
            elif vectors is not None and candidates.embeddings is not None:
                vector_weights = np.r_[np.ones(len(vectors)), added]
                vectors = np.vstack([vectors, candidates.embeddings[plan.feedback]])
        groups.append((keys, weights))
        centroids.append(None if vectors is None else
                         (_rocchio(vectors, None, vector_weights)[None, :], None))
    lexical, present = _rocchio_scores(corpus, candidates, bank, groups)
    return _mean_of([_standardised(lexical, present, n),
                     _standardised(*_semantic(candidates, centroids), n)])


def _classifier(corpus: Corpus, candidates: Candidates, prefs: Preferences
                ) -> np.ndarray | None:
    """A linear classifier of liked against disliked papers, once there are enough of
    both: its scores on the scoring rows (float32)."""
    if len(prefs.liked) < CLASSIFIER_MIN or len(prefs.disliked) < CLASSIFIER_MIN:
        return None
    liked, disliked = corpus.vectors(prefs.liked), corpus.vectors(prefs.disliked)
    train = SparseRows.stack([liked, disliked]).to_csr(candidates.scoring.shape[1])
    labels = np.r_[np.ones(liked.count), np.zeros(disliked.count)]
    model = LinearSVC(C=1.0, class_weight="balanced", max_iter=5000,
                      random_state=0)  # the same picks every run
    # Tf-idf rows are finite and the parameters fixed: sklearn's checks would cost more
    # than learning from a dozen papers.
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        model.fit(train, labels)
    # What model.decision_function computes, without checking its input again.
    scores: np.ndarray = candidates.scoring @ model.coef_.ravel() + model.intercept_
    return scores.astype(np.float32)


def _picks(corpus: Corpus, candidates: Candidates, bank: _QueryScores, plan: _Plan,
           chosen: Sequence[int], score: np.ndarray, by_family: dict[str, np.ndarray],
           followed: frozenset[str], matched_terms: list[list[str]] | None,
           liked_embedded: np.ndarray | None) -> list[Pick]:
    """One profile's chosen candidates as picks, each with its score and reasons."""
    prefs = plan.request.prefs
    at = np.asarray(chosen, dtype=np.int64)
    liked_names = [p.title for p in prefs.liked] + list(prefs.liked_titles)
    like_sims = feedback_sims = None
    if "liked" in by_family and len(at):
        # How much each pick resembles each liked paper, and each feedback candidate.
        like_sims = bank.scores[bank.columns(plan.liked)][:, at].T.astype(np.float32)
        feedback_keys = [_candidate_key(corpus, candidates.papers[i])[0]
                         for i in plan.feedback.tolist()]
        feedback_sims = bank.scores[bank.columns(feedback_keys)][:, at].T.astype(np.float32)
        if liked_embedded is not None and candidates.embeddings is not None:
            like_sims = like_sims + candidates.embeddings[at] @ liked_embedded.T
        if candidates.embeddings is not None and len(plan.feedback):
            feedback_sims = feedback_sims + (candidates.embeddings[at]
                                             @ candidates.embeddings[plan.feedback].T)
        feedback_sims[at[:, None] == plan.feedback[None, :]] = -np.inf  # not like itself

    # Each pick's figures, taken out of the arrays at once.
    family = {name: values[at].tolist() for name, values in by_family.items()}
    nearest: list[str | None] = []  # each pick's reason for resembling a paper
    if like_sims is not None and feedback_sims is not None and len(at):
        closest = (like_sims.argmax(axis=1) if like_sims.shape[1]
                   else np.zeros(len(at), dtype=np.int64)).tolist()
        alike = like_sims.max(axis=1, initial=0.0).tolist()
        via = feedback_sims.max(axis=1, initial=0.0).tolist()
        through = (plan.feedback[feedback_sims.argmax(axis=1)].tolist()
                   if feedback_sims.shape[1] else [])
        for k in range(len(at)):
            # Nothing in common with a liked paper (or none liked): it came in through
            # feedback, by resembling a pick that is like them; name that pick.
            if alike[k] <= 0 < via[k]:
                nearest.append(f"similar to: {_short(candidates.papers[through[k]].title)}")
            else:
                nearest.append(f"like: {_short(liked_names[closest[k]])}" if liked_names
                               else None)
    classifier_reason = (f"learned from your {len(prefs.liked)} liked and "
                         f"{len(prefs.disliked)} disliked papers")
    author_display = {normalise_title(a): a for a in prefs.profile.authors}
    picks: list[Pick] = []
    for k, (i, value) in enumerate(zip(chosen, score[at].tolist(), strict=True)):
        reasons: list[str] = []
        by = sorted(candidates.authors[i] & followed) if followed else ()
        if by:
            reasons.append("by " + ", ".join(author_display[a] for a in by))
        told: list[tuple[float, str]] = []
        terms = matched_terms[k] if matched_terms is not None else []
        if terms:
            told.append((family["interests"][k], "matches: " + ", ".join(terms)))
        # With no liked papers, feedback widens the interests: a pick that matches them
        # says so; one that matches none names the pick it resembles.
        resembles = nearest[k] if nearest else None
        if resembles is not None and (liked_names or not terms):
            told.append((family["liked"][k], resembles))
        if "classifier" in family:
            told.append((family["classifier"][k], classifier_reason))
        if len(told) > 1:
            told.sort(key=lambda r: -r[0])
        reasons += [text for weight, text in told if weight > 0]
        picks.append(Pick(candidates.papers[i], round(value, 4),
                          "; ".join(reasons) or "related to your profile"))
    return picks


def _diverse_top(score: np.ndarray, eligible: np.ndarray, candidates: Candidates,
                 tops: Sequence[int]) -> list[list[int]]:
    """Maximal marginal relevance, for each row (a profile's scores and the candidates it
    may get): each next pick trades score against resemblance to the picks already made,
    so near-copies of one paper do not fill the list."""
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
    similarity = candidates.similarity.among(shortlists)
    penalty = np.zeros(base.shape, dtype=np.float32)
    steps = np.minimum(tops, lengths)
    chosen = np.zeros((len(tops), int(steps.max())), dtype=np.int64)
    for step in range(chosen.shape[1]):
        best = np.argmax(base - DIVERSITY * penalty, axis=1)
        chosen[:, step] = shortlists[rows, best]
        base[rows, best] = -np.inf
        penalty = np.maximum(penalty, similarity[rows, best])
    return [chosen[j, :steps[j]].tolist() for j in rows.tolist()]
