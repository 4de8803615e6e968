"""The corpus's tf-idf model against scikit-learn's `TfidfVectorizer` with the same tokenizer,
on the real seed papers: the same terms, idf and rows (digest.rank.tfidf says why it is
not scikit-learn's own)."""

from __future__ import annotations

import importlib.util
from datetime import date

import numpy as np
import pytest
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

from digest.ingest.digestfile import parse_digest_text
from digest.rank import tfidf, words
from digest.rank.tfidf import TfIdf, words_and_pairs
from digest.rank.words import STOP_WORDS, Words


@pytest.fixture
def texts(seeds) -> list[str]:
    found = [e.title + "\n" + e.abstract for path in seeds
             for e in parse_digest_text(path.read_text(encoding="utf-8"), source=path.name,
                                        reference=date(2026, 1, 1)).entries]
    assert len(found) > 200
    return found


def scikit_learns() -> TfidfVectorizer:
    return TfidfVectorizer(tokenizer=Words(), token_pattern=None, ngram_range=(1, 2),
                           sublinear_tf=True, dtype=np.float32)


def same_rows(ours, theirs) -> None:
    """The same rows: the same terms in each, the same weights to float32's precision (equal
    bit for bit with scikit-learn 1.9; its older releases ordered a row's entries and
    rounded idf differently, which changes nothing that ranking reads)."""
    ours, theirs = ours.tocsr(copy=True), theirs.tocsr(copy=True)
    ours.sort_indices()
    theirs.sort_indices()
    assert ours.shape == theirs.shape
    assert ours.dtype == theirs.dtype == np.float32
    np.testing.assert_array_equal(ours.indptr, theirs.indptr)
    np.testing.assert_array_equal(ours.indices, theirs.indices)
    np.testing.assert_allclose(ours.data, theirs.data, rtol=1e-6)


def test_fitted_on_papers_it_is_scikit_learns_model(texts):
    reference = scikit_learns()
    expected = reference.fit_transform(texts)
    model, rows = TfIdf.fit_transform(words_and_pairs(Words()), texts)
    assert list(model.terms) == list(reference.get_feature_names_out())
    assert model.vocabulary == reference.vocabulary_
    np.testing.assert_allclose(model.idf, reference.idf_, rtol=1e-6)
    same_rows(rows, expected)


def test_new_texts_get_scikit_learns_rows(texts):
    reference = scikit_learns()
    reference.fit(texts[:150])
    model, _ = TfIdf.fit_transform(words_and_pairs(Words()), texts[:150])
    queries = ["Graph neural networks", "retrieval-augmented generation for code",
               "a phrase of words no paper uses: zyzzyva quokka", "", "the of and", *texts[150:]]
    same_rows(model.transform(queries), reference.transform(queries))
    assert model.transform(["zyzzyva quokka"]).nnz == 0


def test_texts_counted_in_many_chunks_make_the_same_model(texts, monkeypatch):
    model, rows = TfIdf.fit_transform(words_and_pairs(Words()), texts)
    monkeypatch.setattr(tfidf, "CHUNK", 7)  # the vocabulary grows from chunk to chunk
    chunked, chunked_rows = TfIdf.fit_transform(words_and_pairs(Words()), texts)
    assert chunked.vocabulary == model.vocabulary
    same_rows(chunked_rows, rows)
    same_rows(chunked.transform(texts[:40]), model.transform(texts[:40]))


def test_texts_without_a_term_are_an_error_the_corpus_can_catch():
    with pytest.raises(ValueError, match="no text has a term"):
        TfIdf.fit_transform(words_and_pairs(Words()), ["", "the and of", "2024 42"])


def test_stop_words_are_scikit_learns_read_from_its_module_file_or_else_imported(
        monkeypatch):
    assert frozenset(ENGLISH_STOP_WORDS) == STOP_WORDS  # tests/test_startup.py: not imported
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # a package not found
    assert words._english_stop_words() == STOP_WORDS
