"""Reasons in plain words: every word a pick's reason or section heading quotes is in the
profile or in the pick's own text as written (no stems, no pairs of words the paper does
not write together), on the demo's editions and on the quality benchmark's picks."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from benchmarks.quality import K, build_days, load_reader, load_topics
from digest.commands.demo import run_demo
from digest.identity import normalise_title
from digest.models import ASK_SECTION, Interest, Paper, Pick, Profile
from digest.rank import Preferences, prepare_candidates, rank_papers

from .conftest import NOW

# The words reasons and headings are made of, around what they quote.
FRAME = frozenset("""matches mentions and like by learned from your liked disliked papers
close to other on this topic the paper you because related profile""".split())
_WORD = re.compile(r"[^\W_]+")


def unexplained(pick: Pick, profile: Profile) -> set[str]:
    """The words of the pick's reason and section found neither in the profile nor in the
    pick's title, abstract and authors (case aside)."""
    own = " ".join([pick.paper.title, pick.paper.abstract, *pick.paper.authors]).lower()
    asked = " ".join([*(i.text for i in profile.interests), *profile.liked,
                      *profile.authors, *profile.avoid]).lower()
    known = set(_WORD.findall(own)) | set(_WORD.findall(asked))
    # The section of papers asked about has a fixed heading, the same for everyone.
    section = "" if pick.section == ASK_SECTION else pick.section
    said = set(_WORD.findall(f"{pick.reason} {section}".lower()))
    return {w for w in said - known - FRAME if not w.isdigit()}


def _check(picks: Iterable[Pick], profile: Profile) -> int:
    seen = 0
    for pick in picks:
        assert not unexplained(pick, profile), (pick.paper.title, pick.reason, pick.section)
        assert "  " not in pick.reason and ": " not in pick.reason.split("\u201c")[0]
        seen += 1
    return seen


def test_the_demo_explains_its_picks_in_the_words_of_the_profile_and_the_paper(tmp_path):
    result = asyncio.run(run_demo(tmp_path, now=NOW, embeddings="off"))
    checked = sum(_check(o.picks, o.profile) for o in result.outcomes)
    assert checked >= 15  # three subscribers, several picks each
    sections = {p.section for o in result.outcomes for p in o.picks}
    assert "passage reranking" in sections or "dense retrieval" in sections
    assert any(s.startswith("Because you liked \u201c") for s in sections)


def test_the_quality_benchmarks_picks_are_explained_in_plain_words():
    """Per topic (liked papers) and the whole reader by its topics' names (interests and
    avoided topics): every pick of one split on each day."""
    days = build_days(load_topics(), use_embeddings=False)
    topics = load_topics()
    reader = load_reader(topics)
    rng = random.Random(0)
    checked = 0
    for day in days:
        pool = np.array([day.index[k] for k in day.keys])
        candidates = prepare_candidates(day.corpus, [day.papers[i] for i in pool])
        for _topic, papers in sorted(topics.items())[:8]:
            keys = [k for k in (normalise_title(p["title"]) for p in papers)
                    if k in day.index]
            liked = tuple(day.papers[day.index[k]] for k in rng.sample(keys, len(keys) // 2))
            profile = Profile(subscriber_id="t", path=Path("quality.yaml"), name="T",
                              email="t@example.org", liked=tuple(p.title for p in liked))
            picks = rank_papers(day.corpus, Preferences(profile, liked=liked), candidates,
                                top=K)
            checked += _check(picks, profile)
        wanted = [Interest(n, w) for n, w in reader.weights.items() if w > 0]
        avoided = tuple(n for n, w in reader.weights.items() if w <= 0)
        profile = Profile(subscriber_id="r", path=Path("quality.yaml"), name="R",
                          email="r@example.org", interests=tuple(wanted), avoid=avoided)
        checked += _check(rank_papers(day.corpus, Preferences(profile), candidates, top=K),
                          profile)
    assert checked >= 150


@pytest.mark.parametrize(("reason", "words"), [
    ("matches \u201cspace models\u201d", {"space", "models"}),
    ("mentions augmenting and generated", set()),
])
def test_the_check_catches_words_from_elsewhere(reason, words):
    """The check itself: words the paper and profile hold pass; others are caught."""
    paper = Paper(key="k", title="Augmenting generated text", abstract="", first_seen=NOW)
    profile = Profile(subscriber_id="a", path=Path("a.yaml"), name="A", email="a@x.org")
    assert unexplained(Pick(paper, 1.0, reason), profile) == words
