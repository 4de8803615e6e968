"""Cache: what ranking on one set of candidates works out and keeps for the profiles ranked
on it after, held by the corpus beside (not inside) the frozen `Candidates`."""

from __future__ import annotations

from digest.rank.corpus import Candidates, Corpus
from digest.rank.evidence import Similarity
from digest.rank.queries import QueryBank
from digest.rank.reasons import Phrases
from digest.rank.words import LoweredTexts, Mentions


class CandidateCache:
    """Kept per set of candidates: none of it changes a pick, all of it saves work for the
    next profiles. Keyword rules' matches (`mentions`), query scores (`queries`), the
    similarity of candidates for MMR (`similarity`), and where each pick holds each
    interest, for its reasons (`phrases`)."""

    def __init__(self, corpus: Corpus, candidates: Candidates):
        params = corpus.params
        texts = [p.text.lower() for p in candidates.papers]  # title and abstract
        self.mentions = Mentions(
            LoweredTexts(texts, corpus.words, word_index=len(texts) <= params.word_index_texts),
            cache_bytes=params.mentions_cache_bytes, max_forms=params.max_phrase_forms)
        self.queries = QueryBank()
        self.similarity = Similarity(candidates.matrix, max_papers=params.similarity_max_papers,
                                     pairs_per_profile=params.similarity_pairs_per_profile)
        self.phrases = Phrases()


def candidate_cache(corpus: Corpus, candidates: Candidates) -> CandidateCache:
    """The cache of `candidates` in `corpus`, made on first use; it goes when the candidates
    do (the corpus holds it by a weak reference to them)."""
    cache = corpus.candidate_caches.get(candidates)
    if cache is None:
        cache = corpus.candidate_caches[candidates] = CandidateCache(corpus, candidates)
    return cache
