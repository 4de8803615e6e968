"""Plans: what a profile asks of one ranking (`RankRequest`) turned into what it may be
picked (exclusions and keyword rules, the hard rules) and the keys of its queries, before
any evidence is scored."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from digest.models import Paper, Profile
from digest.rank.corpus import Candidates, Corpus
from digest.rank.queries import Key, paper_keys
from digest.rank.words import Mentions


@dataclass(frozen=True)
class Preferences:
    """A profile's wishes resolved against the store: which stored papers it names."""

    profile: Profile
    liked: tuple[Paper, ...] = ()
    disliked: tuple[Paper, ...] = ()
    # Liked titles not in the store: their text still says what the subscriber wants.
    liked_titles: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankRequest:
    """One profile to rank: up to `top` picks, none of `exclude` (row ids: papers already
    sent) nor below `min_score`; then `ask` papers for the reader to rate (picks in the
    ASK_SECTION, after the others: `evidence.ask_samples`)."""

    prefs: Preferences
    top: int
    exclude: frozenset[int] = frozenset()
    min_score: float | None = None
    ask: int = 0


def learns_from_ratings(request: RankRequest, least: int) -> bool:
    """Whether the liked papers' evidence is learned from the reader's ratings: once they
    have rated a paper digest sent them and have `least` liked papers (a classifier of
    fewer knows less than a query of them and of their best matches), unless the profile
    has interests: there the interests' best matches join the liked papers' query
    (pseudo-relevance feedback), which a classifier of a few ratings does worse than
    (docs/ranking.md, the cold start)."""
    prefs = request.prefs
    return (not prefs.profile.interests and len(prefs.liked) >= least
            and any(p.row_id in request.exclude for p in (*prefs.liked, *prefs.disliked)))


@dataclass
class Plan:
    """One profile's request, with what may be picked and its queries by key; `feedback` is
    filled in by the first pass (the candidates that join its liked papers)."""

    request: RankRequest
    allowed: np.ndarray
    interests: list[Key]
    interest_weights: np.ndarray | None
    liked: list[Key]  # the liked papers', then the liked titles'
    disliked: list[Key]
    avoid: list[Key]
    feedback: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def plan_request(corpus: Corpus, candidates: Candidates, mentions: Mentions,
                 request: RankRequest, wanted: dict[Key, Paper | None]) -> Plan | None:
    """The request's plan, its queries added to `wanted`; None if nothing may be picked.
    `mentions`: the keyword rules' matches on these candidates."""
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
        allowed &= ~mentions.of(profile.mute)
    if profile.require:
        allowed &= mentions.of(profile.require)
    if not allowed.any():
        return None
    interests: list[tuple[Key, Paper | None]] = [(("phrase", i.text), None)
                                                for i in profile.interests]
    weights = None
    if profile.interests:
        weights = np.array([i.weight for i in profile.interests], dtype=np.float32)
        weights = weights / max(float(weights.max()), 1e-9)
    liked = paper_keys(corpus, prefs.liked, "linking") + [
        (("text", t), None) for t in prefs.liked_titles]
    # Papers it sent that the reader rated "less like this" are learned from
    # (`evidence.learned_scores`) where ratings are, not regions to avoid.
    learns = learns_from_ratings(request, corpus.params.classifier_min_papers)
    disliked = paper_keys(corpus, [p for p in prefs.disliked
                                   if not learns or p.row_id not in request.exclude],
                          "vector")
    avoid: list[tuple[Key, Paper | None]] = [(("phrase", a), None) for a in profile.avoid]
    for key, source in (*interests, *liked, *disliked, *avoid):
        wanted.setdefault(key, source)
    return Plan(request, allowed, [k for k, _ in interests], weights, [k for k, _ in liked],
                [k for k, _ in disliked], [k for k, _ in avoid])
