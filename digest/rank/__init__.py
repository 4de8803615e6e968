"""Rank: score candidate papers against each profile and explain each pick in words.

Pure computation over records, between ingest (the store's papers) and render (the picks);
`digest.running.editions` calls `build_corpus`, `prepare_candidates` and `rank_many`.
"""

# The modules, in data-flow order:
#   params    RankParams: every tuning constant, given to build_corpus, kept on the Corpus
#   words     the tokenizer and stems; keyword rules (mute, require) on the candidates
#   corpus    the tf-idf model of the store (Corpus) and the candidates prepared in it
#   queries   phrases and papers as query rows, scored on the candidates, kept by key
#   plans     each request's hard rules and query keys (Preferences, RankRequest)
#   evidence  query scores -> evidence in standard deviations -> one score; MMR
#   reasons   the chosen candidates as picks, with their reasons in words
#   cache     what ranking on one Candidates keeps for the next profiles (internal)
#   ranker    rank_many / rank_papers: all of the above for a batch of profiles

from digest.rank.corpus import (
    Candidates,
    Corpus,
    EmbedText,
    SparseRows,
    build_corpus,
    prepare_candidates,
)
from digest.rank.params import DEFAULT_PARAMS, RankParams
from digest.rank.plans import Preferences, RankRequest
from digest.rank.ranker import rank_many, rank_papers
from digest.rank.words import LoweredTexts, Words

__all__ = [
    "DEFAULT_PARAMS",
    "Candidates",
    "Corpus",
    "EmbedText",
    "LoweredTexts",
    "Preferences",
    "RankParams",
    "RankRequest",
    "SparseRows",
    "Words",
    "build_corpus",
    "prepare_candidates",
    "rank_many",
    "rank_papers",
]
