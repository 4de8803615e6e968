"""Tf-idf: the corpus's model of terms, fitted on the stored papers and applied to queries.

The arithmetic is scikit-learn's `TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
dtype=np.float32)` given our tokenizer: each term's count `c` weighs `1 + ln c`, times the
smoothed idf `1 + ln((n + 1) / (df + 1))`, and each row is put at unit length. It is
written here because ranking would otherwise import scikit-learn for it, and with it
scipy.stats: 0.9 s of every `digest send`, `digest rank` and `digest preview` on a 2-core
machine, where ranking 10,000 profiles takes 4 s. scikit-learn is imported only for a
profile that learns a classifier (`digest.rank.evidence`). tests/test_tfidf.py holds this
model to scikit-learn's on real papers: the same terms, and the same rows to float32's
precision.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from itertools import islice, repeat

import numpy as np
from scipy import sparse

Analyze = Callable[[str], list[str]]

CHUNK = 4_096  # texts counted together: the Python lists of their terms stay this short


def words_and_pairs(tokenize: Callable[[str], list[str]]) -> Analyze:
    """The terms of a text: its tokens (of the lowercased text), then each two adjacent."""

    def analyze(text: str) -> list[str]:
        tokens = tokenize(text.lower())
        pairs = [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]
        return tokens + pairs

    return analyze


class TfIdf:
    """A fitted model: `terms` (a column each, in sorted order), `vocabulary` (term ->
    column) and `idf` (float32). Made by `fit_transform`."""

    def __init__(self, analyze: Analyze, terms: list[str], idf: np.ndarray):
        self.analyze = analyze
        self.terms = np.array(terms, dtype=object)
        self.vocabulary = {term: column for column, term in enumerate(terms)}
        self.idf = idf

    @classmethod
    def fit_transform(cls, analyze: Analyze, texts: Sequence[str]
                      ) -> tuple[TfIdf, sparse.csr_matrix]:
        """The model of these texts and their rows. Raises ValueError if no text has a
        term."""
        _texts_not_text(texts)
        seen: defaultdict[str, int] = defaultdict()
        seen.default_factory = seen.__len__  # a new term's column: in order of first use
        counts = _count(texts, analyze, lambda terms: list(map(seen.__getitem__, terms)),
                        seen)
        if not seen:
            raise ValueError("no text has a term")
        # Columns in the terms' sorted order; within a row, entries stay in the order in
        # which their terms first appeared in all the texts (as scikit-learn leaves them).
        order = sorted(seen)
        column_of = np.empty(len(order), dtype=counts.indices.dtype)
        column_of[[seen[term] for term in order]] = np.arange(len(order))
        counts.indices = column_of[counts.indices]
        counts.has_sorted_indices = False
        n_texts = counts.shape[0]
        df = np.bincount(counts.indices, minlength=len(order)).astype(np.float32)
        df += 1.0
        idf = np.full(len(order), n_texts + 1, dtype=np.float32)
        idf /= df
        np.log(idf, out=idf)
        idf += 1.0
        model = cls(analyze, order, idf)
        return model, model._weigh(counts)

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Rows of new texts (terms the model lacks are left out)."""
        _texts_not_text(texts)
        get = self.vocabulary.get

        def columns(terms: list[str]) -> list[int]:
            return list(map(get, terms, repeat(-1, len(terms))))

        return self._weigh(_count(texts, self.analyze, columns, self.vocabulary))

    def _weigh(self, counts: sparse.csr_matrix) -> sparse.csr_matrix:
        """Counts to unit rows of weights, in place."""
        data = counts.data
        np.log(data, out=data)
        data += 1.0
        data *= self.idf[counts.indices]
        rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
        # Each row's squared length summed in float64, entry by entry.
        lengths = np.sqrt(np.bincount(rows, weights=(data * data).astype(np.float64),
                                      minlength=counts.shape[0]))
        lengths[lengths == 0] = 1.0
        counts.data = (data / lengths[rows]).astype(np.float32)
        return counts


def _texts_not_text(texts: Sequence[str]) -> None:
    if isinstance(texts, str):  # a sequence of str too, one text per character
        raise TypeError("a sequence of texts is expected, not one text")


def _count(texts: Iterable[str], analyze: Analyze, columns: Callable[[list[str]], list[int]],
           vocabulary: dict[str, int]) -> sparse.csr_matrix:
    """Each text's term counts (float32), a row each, its entries ordered by column.
    `columns` gives the columns of a text's terms (-1 for a term left out); `vocabulary`,
    read after each chunk of texts, says how many columns there are by then."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # columns, lengths, counts
    n_texts = 0
    pending = iter(texts)
    while chunk := list(islice(pending, CHUNK)):
        flat: list[int] = []
        lengths = np.empty(len(chunk), dtype=np.int64)
        for i, text in enumerate(chunk):
            before = len(flat)
            flat.extend(columns(analyze(text)))
            lengths[i] = len(flat) - before
        ids = np.asarray(flat, dtype=np.int64)
        row = np.repeat(np.arange(len(chunk), dtype=np.int64), lengths)
        keep = ids >= 0
        width = max(len(vocabulary), 1)
        keys, counted = np.unique(row[keep] * width + ids[keep], return_counts=True)
        parts.append((keys % width, np.bincount(keys // width, minlength=len(chunk)),
                      counted.astype(np.float32)))
        n_texts += len(chunk)
    entries = sum(len(part[0]) for part in parts)
    index = np.int32 if max(entries, len(vocabulary)) < np.iinfo(np.int32).max else np.int64
    indptr = np.zeros(n_texts + 1, dtype=index)
    if parts:
        np.cumsum(np.concatenate([part[1] for part in parts]), out=indptr[1:])
    indices = np.concatenate([part[0] for part in parts] or [np.zeros(0)]).astype(index)
    data = np.concatenate([part[2] for part in parts] or [np.zeros(0, np.float32)])
    return sparse.csr_matrix((data, indices, indptr), shape=(n_texts, len(vocabulary)))
