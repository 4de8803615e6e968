"""Ranking parameters: the tuning constants of every stage of ranking, in one frozen record.

Given to `build_corpus`, kept on the `Corpus`, and read from there by everything after it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankParams:
    """How digest ranks. The defaults are the measured ones (docs/ranking.md); tests and
    benchmarks pass other values instead of changing module constants."""

    # Evidence.
    # How much of the corpus's common direction a liked-papers query drops (a share).
    rocchio_beta: float = 0.5
    # Resemblance to a disliked paper or an avoided topic, in standard deviations above the
    # typical stored paper, is taken off the score times this.
    penalty_weight: float = 0.5
    # Pseudo-relevance feedback: the first pass's best candidates join the liked papers, each
    # weighing this much of a liked paper (top few at half weight: a common Rocchio setting).
    feedback_papers: int = 5
    feedback_weight: float = 0.5
    # A paper holding none of the word pairs of a phrase of several words (an interest, an
    # avoided topic) keeps this share of its score for that phrase: its words scattered.
    scattered_phrase: float = 0.5
    # Liked papers, and disliked papers, needed (each) before a classifier is learned.
    classifier_min_papers: int = 5
    # Once the reader has rated papers digest sent ("more / less like this") and likes
    # `classifier_min_papers` papers, the liked papers' evidence is learned: a linear
    # classifier of the liked papers against the disliked ones and the stored papers
    # (`learned_scores`). A disliked paper weighs this much of a liked one in it (Buckley
    # and Salton's Rocchio ratio, 16:4); the stored papers, together, as much as the liked.
    less_weight: float = 0.25
    learned_c: float = 1.0  # its regularisation (LinearSVC's C)
    learned_stored: int = 2000  # stored papers it learns against, at most
    # Stored papers sampled as the typical ones that scores are measured against.
    reference_papers: int = 2000
    # Below this spread a query's scores say more about the query than about the papers
    # (in cosine units).
    min_spread_cosine: float = 0.01

    # Choosing and explaining.
    # MMR: a pick loses this many standard deviations per unit of cosine similarity to a
    # paper already chosen.
    diversity_sd: float = 1.0
    # Papers asked about (`RankRequest.ask`) are chosen from this many candidates each,
    # the best after the picks.
    ask_shortlist: int = 3
    reason_terms: int = 3  # matched terms a reason names, at most

    # Keyword rules (`mute`, `require`).
    # Candidate sets up to this many texts get an index of their words; bigger ones
    # (`digest rank` over a whole store) are scanned instead.
    word_index_texts: int = 20_000
    max_phrase_forms: int = 64  # a keyword's spellings with its words in other forms, at most

    # Speed and memory: these change how fast ranking is, never what it picks.
    # MMR compares each profile's shortlist of candidates. Up to `similarity_max_papers`
    # candidates (16 MB, about 0.4 s for 2,000), a table of every two is built once the
    # profiles ranked on them have spent about as long on their own shortlists: comparing one
    # shortlist costs about as long as `similarity_pairs_per_profile` entries of the table.
    similarity_max_papers: int = 2000
    similarity_pairs_per_profile: int = 4000
    # Per set of candidates: masks of the keywords met so far.
    mentions_cache_bytes: int = 8_000_000
    # Per set of candidates: the scores of queries met so far (the same topics, the same few
    # candidates as feedback for many profiles).
    query_cache_bytes: int = 32_000_000
    # Per Corpus: embeddings of phrases kept (1.5 kB each with MiniLM).
    embedded_texts: int = 20_000
    # Profiles ranked together: up to `rank_batch_profiles`, fewer when the candidates are
    # many (each profile's queries are rows of scores on every candidate and reference paper;
    # a batch holds about `rank_batch_cells` such scores per query).
    rank_batch_profiles: int = 128
    rank_batch_cells: int = 200_000


DEFAULT_PARAMS = RankParams()  # frozen: one instance serves as every default
