"""Ranker: one ranking from requests to picks. Plans each request (hard rules, queries),
scores the queries once for a batch of profiles, turns them into evidence and a score,
picks the top with MMR and explains each pick; `rank_many` is what the pipeline calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from digest.identity import normalise_title
from digest.models import ASK_SECTION, Paper, Pick
from digest.rank.cache import candidate_cache
from digest.rank.corpus import Candidates, Corpus
from digest.rank.evidence import (
    Scale,
    ask_samples,
    best_of,
    classifier_scores,
    diverse_top,
    learned_scores,
    liked_family,
    mean_of,
    semantic,
)
from digest.rank.plans import Preferences, RankRequest, plan_request
from digest.rank.queries import Key, candidate_key
from digest.rank.reasons import make_picks

# Ordering only, not a tuning constant: added to the score of a followed author's paper so
# that it comes before any other (scores are a few standard deviations).
FOLLOWED_FIRST = 1e6


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
    The corpus's `params` say how.
    """
    return rank_many(corpus, candidates, [RankRequest(prefs, top, exclude, min_score)])[0]


def rank_many(corpus: Corpus, candidates: Candidates, requests: Sequence[RankRequest]
              ) -> list[list[Pick]]:
    """`rank_papers` for many profiles: the picks of each request, in order. Profiles are
    scored together, a few dozen at a time, so that each step is a few array operations
    for all of them rather than many small ones for each; each profile's picks are those
    it gets ranked alone. What is worked out on `candidates` is kept in the corpus for the
    next calls (`digest.rank.cache`)."""
    if not candidates.papers:
        return [[] for _ in requests]
    params = corpus.params
    width = candidates.scoring.shape[0]
    # Each profile has a handful of queries, each a row of `width` scores.
    size = max(1, min(params.rank_batch_profiles, params.rank_batch_cells // max(width, 1)))
    picks: list[list[Pick]] = []
    for start in range(0, len(requests), size):
        picks.extend(_rank_batch(corpus, candidates, requests[start:start + size]))
    return picks


def _rank_batch(corpus: Corpus, candidates: Candidates, requests: Sequence[RankRequest]
                ) -> list[list[Pick]]:
    """The picks of a few dozen requests, each evidence scored for all of them at once: a
    row per profile, a column per candidate (and reference paper).

    The stored corpus is a tf-idf model of words and word pairs, each word as its Snowball
    stem. Evidence, each scored against it:
    - interests: the profile's phrases as tf-idf queries, each on its own scale, then
      weighted;
    - liked papers: a Rocchio query, their centroid minus the corpus's common direction, so
      what the liked papers share with everything else counts for little (words no other
      stored paper has are left out: they can match nothing); then pseudo-relevance
      feedback, the first pass's best few candidates join the liked papers at half weight
      (a profile with interests and no liked papers: they stand in for liked papers);
    - with the `embeddings` extra, the same two in sentence-embedding space (centred);
    - with enough liked and disliked papers, a per-subscriber linear classifier;
    - once the reader has rated papers digest sent (and writes no interests), the liked
      papers' evidence is instead a classifier of the ratings against the stored papers;
    - penalties for resemblance to disliked papers and avoided topics.
    Each kind is put on one scale (standard deviations above a typical stored paper) and
    averaged; muted and required keywords and followed authors are hard rules; the top is
    chosen with maximal marginal relevance, so near-copies do not fill the email.
    """
    params, cache = corpus.params, candidate_cache(corpus, candidates)
    n = len(candidates.papers)
    scale = Scale(n, params.min_spread_cosine)
    wanted: dict[Key, Paper | None] = {}
    planned = [plan_request(corpus, candidates, cache.mentions, r, wanted) for r in requests]
    plans = [p for p in planned if p is not None]
    if not plans:
        return [[] for _ in requests]
    bank = cache.queries.lookup(corpus, candidates, wanted)
    allowed = np.stack([p.allowed for p in plans])

    # Interests: each phrase's scores on its own scale, then weighted, then the best.
    lexical, present = best_of(bank, [(p.interests, p.interest_weights) for p in plans],
                               scale)
    # With the embeddings extra: the batch's phrases in one call to the model.
    corpus.embed([text for p in plans for text in
                  [i.text for i in p.request.prefs.profile.interests]
                  + list(p.request.prefs.liked_titles)])
    embedded = [corpus.embed([i.text for i in p.request.prefs.profile.interests])
                for p in plans]
    interests = mean_of([
        scale.standardised(lexical, present),
        scale.standardised(*semantic(candidates, [
            None if e is None else (e, p.interest_weights)
            for p, e in zip(plans, embedded, strict=True)], scale))])

    liked_embedded = [corpus.paper_embeddings(p.request.prefs.liked,
                                              p.request.prefs.liked_titles)
                      if p.liked else None for p in plans]
    liked = liked_family(corpus, candidates, bank, plans, liked_embedded, scale,
                         feedback=False)

    # Rated papers digest sent: the liked papers' evidence is learned from them instead.
    width = candidates.scoring.shape[0]
    lexical_learned = np.zeros((len(plans), width), dtype=np.float32)
    semantic_learned = np.zeros((len(plans), width), dtype=np.float32)
    learned = np.zeros(len(plans), dtype=bool)
    semantic_present = np.zeros(len(plans), dtype=bool)
    for j, plan in enumerate(plans):
        parts = learned_scores(corpus, candidates, plan.request)
        if parts:
            lexical_learned[j], learned[j] = parts[0], True
        if len(parts) > 1:
            semantic_learned[j], semantic_present[j] = parts[1], True
    if learned.any():
        by_ratings = mean_of([scale.standardised(lexical_learned, learned),
                              scale.standardised(semantic_learned, semantic_present)])
        liked = (np.where(learned[:, None], by_ratings[0], liked[0]), liked[1] | learned)
    classifier = np.zeros((len(plans), width), dtype=np.float32)
    classified_rows = np.zeros(len(plans), dtype=bool)
    for j, plan in enumerate(plans):
        scores = None if learned[j] else classifier_scores(corpus, candidates,
                                                           plan.request.prefs)
        if scores is not None:
            classifier[j], classified_rows[j] = scores, True
    classified = (scale.standardised(classifier, classified_rows)[0], classified_rows)

    penalty = np.zeros((len(plans), n))
    for keys in ([p.disliked for p in plans], [p.avoid for p in plans]):
        resembles, present = best_of(bank, [(k, None) for k in keys])
        if present.any():
            standard = scale.standardised(resembles, present)[0]
            penalty += np.where(present[:, None],
                                params.penalty_weight * np.maximum(standard, np.float32(0)),
                                0.0)

    family, any_family = mean_of([interests, liked, classified])
    score = family - penalty

    # Pseudo-relevance feedback: the best candidates of this first pass join the liked papers
    # at a lower weight, and the liked papers' evidence is scored again; a profile with
    # interests and no liked papers gets that evidence from the feedback papers alone.
    # Only candidates better than the typical stored paper and good enough to be sent count
    # as relevant: on a day with nothing good enough there is no feedback to lift anything
    # over `min_score`, and papers that match nothing (tied) never stand in for liked ones.
    floors = np.array([-np.inf if p.request.min_score is None else p.request.min_score
                       for p in plans])
    expand = (liked[1] | interests[1]) & ~learned  # a learned profile has no query
    if params.feedback_papers > 0 and expand.any():
        relevant = allowed & (score > np.maximum(floors, 0.0)[:, None])
        order = np.argsort(np.where(relevant, -score, np.inf), axis=1, kind="stable")
        for j in np.flatnonzero(expand).tolist():
            plans[j].feedback = order[j, :min(params.feedback_papers, int(relevant[j].sum()))]
        for plan in plans:
            for position in plan.feedback.tolist():
                key, source = candidate_key(corpus, candidates.papers[position])
                wanted.setdefault(key, source)
        bank = cache.queries.lookup(corpus, candidates, wanted)  # the first may be gone
        again = liked_family(corpus, candidates, bank, plans, liked_embedded, scale,
                             feedback=True)
        redone = again[1] & expand
        liked = (np.where(redone[:, None], again[0], liked[0]), liked[1] | redone)
        family, any_family = mean_of([interests, liked, classified])
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
    chosen = diverse_top(score + FOLLOWED_FIRST * by_followed, eligible, cache.similarity,
                         [p.request.top for p in plans], params.diversity_sd)
    # A profile asked to rate papers: the best candidates after its picks (better than a
    # typical paper) are the ones to ask about, a few chosen to cover what the picks leave
    # out.
    nears: list[list[int]] = [[] for _ in plans]
    for j, plan in enumerate(plans):
        if plan.request.ask > 0:
            rest = eligible[j] & (score[j] > 0)
            rest[chosen[j]] = False
            near = np.flatnonzero(rest)
            nears[j] = near[np.argsort(-score[j, near], kind="stable")
                            [:plan.request.ask * params.ask_shortlist]].tolist()
    asked = ask_samples(cache.similarity, chosen, nears, [p.request.ask for p in plans])
    chosen = [picked + extra for picked, extra in zip(chosen, asked, strict=True)]
    picks: list[list[Pick]] = []
    for j, plan in enumerate(plans):
        by_family = {name: values[j] for name, (values, present) in
                     (("interests", interests), ("liked", liked), ("classifier", classified))
                     if present[j]}
        if learned[j]:  # the liked papers' evidence is the classifier's: say so
            by_family["classifier"] = liked[0][j]
        explained = make_picks(corpus, candidates, bank, plan, chosen[j], score[j], by_family,
                               followed[j], scale, cache.phrases, liked_embedded[j])
        first = len(explained) - len(asked[j])
        picks.append(explained[:first]
                     + [replace(p, section=ASK_SECTION) for p in explained[first:]])
    made = iter(picks)
    return [[] if p is None else next(made) for p in planned]

