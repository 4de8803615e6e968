"""Ranking: order, reasons and hard rules on the real seed papers (no float values)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.models import Interest, Profile
from digest.pipeline import ingest_files, resolve_preferences
from digest.rank import build_corpus, prepare_candidates, rank_papers

from .conftest import NOW


@pytest.fixture
def papers(store, seeds):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    return store.papers()


def _profile(**fields) -> Profile:
    base = Profile(subscriber_id="t", path=Path("t.yaml"), name="T", email="t@example.org")
    return replace(base, **fields)


def _rank(store, papers, profile, top=10):
    prefs, _ = resolve_preferences(store, profile)
    corpus = build_corpus(papers)
    return rank_papers(corpus, prefs, prepare_candidates(corpus, papers), top=top)


def test_interests_pick_matching_papers_and_say_which_terms(store, papers):
    picks = _rank(store, papers, _profile(interests=(Interest("dense retrieval"),)), top=5)
    assert len(picks) == 5
    assert all("retriev" in p.paper.text.lower() for p in picks)
    assert picks[0].reason.startswith("matches: ")
    assert "dense retrieval" in picks[0].reason
    assert [p.score for p in picks] == sorted((p.score for p in picks), reverse=True)


def test_an_interest_matches_other_forms_of_its_words_and_the_reason_uses_the_papers(
        store, papers):
    from digest.models import PaperEntry

    store.add_entries([
        PaperEntry(title="Teaching a legged robot to climb stairs",
                   abstract="A robotic controller for stair climbing.", source="feed"),
        PaperEntry(title="Stairs in old houses", abstract="Survey of staircases.",
                   source="feed"),
    ], NOW)
    all_papers = store.papers()
    picks = _rank(store, all_papers, _profile(interests=(Interest("legged robots"),)), top=3)
    assert picks[0].paper.title == "Teaching a legged robot to climb stairs"
    # The paper's own words, not the stems the model matched ("leg robot") nor the
    # profile's ("robots"): the reason says what is in the paper.
    assert picks[0].reason == "matches: legged robot"


def test_words_are_stems_of_any_script_and_hyphenated_words_their_parts():
    from digest.rank import Words

    words = Words()
    assert words("retrieval-augmented generation in 2024") == ["retriev", "augment", "generat"]
    assert words("the 3d robots of ragnarök") == ["3d", "robot", "ragnarök"]
    assert words.surfaces("Robotic arms, robots") == {"robot": "robotic", "arm": "arms"}


def test_liked_paper_is_never_picked_and_explains_its_neighbours(store, papers):
    liked = "Promptagator: Few-shot Dense Retrieval From 8 Examples"
    picks = _rank(store, papers, _profile(liked=(liked,)), top=5)
    assert liked not in [p.paper.title for p in picks]
    assert all(p.reason == f"like: {liked}" for p in picks)


def test_liked_title_not_in_the_store_still_steers(store, papers):
    picks = _rank(store, papers, _profile(liked=("Sparse autoencoders for vision transformers",)))
    assert picks and "like: Sparse autoencoders" in picks[0].reason


def test_muted_keyword_removes_papers_and_required_keyword_restricts(store, papers):
    interests = (Interest("language models"),)
    muted = _rank(store, papers, _profile(interests=interests, mute=("retrieval",)), top=50)
    assert muted and not any("retrieval" in p.paper.text.lower() for p in muted)
    required = _rank(store, papers, _profile(interests=interests, require=("tabular",)), top=50)
    assert required and all("tabular" in p.paper.text.lower() for p in required)


def test_a_keyword_rule_means_its_words_in_any_form(store, papers):
    """Muting "language model" mutes papers on "large language models" and "language
    modelling" (the words' Snowball stems, as the tf-idf model reads them), not one on
    "modal logic" that only says "models"; a word with a sign in it stays as written."""
    from digest.rank import _mentions

    synthetic = _synthetic(["Large Language Models are few-shot learners",
                            "Language modelling at scale", "Modal logic of models",
                            "GPT-4 and GPT-4o compared", "GPT-5 is not GPT-4o"])
    candidates = prepare_candidates(build_corpus(synthetic), synthetic)
    assert _mentions(candidates, ["Language Model"]).tolist() == [True, True, False, False,
                                                                  False]
    assert _mentions(candidates, ["gpt-4"]).tolist() == [False, False, False, True, False]
    # On the real papers: Chen's profile (the demo) mutes "language model".
    chen = _profile(interests=(Interest("image classification"),), mute=("language model",))
    picks = _rank(store, papers, chen, top=50)
    assert picks and not any(re.search(r"language model", p.paper.text, re.IGNORECASE)
                             for p in picks)


def test_disliked_paper_pushes_its_neighbours_down(store, papers):
    interests = (Interest("retrieval"),)
    plain = _rank(store, papers, _profile(interests=interests), top=20)
    disliked = plain[0].paper.title
    after = _rank(store, papers, _profile(interests=interests, disliked=(disliked,)), top=20)
    assert disliked not in [p.paper.title for p in after]


def test_followed_author_comes_first(store, papers):
    from digest.models import PaperEntry

    store.add_entries([PaperEntry(title="A quiet paper on soil chemistry", abstract="Soil.",
                                  source="feed", authors=("Grace Hopper",))], NOW)
    all_papers = store.papers()
    picks = _rank(store, all_papers, _profile(interests=(Interest("dense retrieval"),),
                                              authors=("grace hopper",)), top=3)
    assert picks[0].paper.title == "A quiet paper on soil chemistry"
    assert picks[0].reason.startswith("by grace hopper")


def test_weights_change_the_order(store, papers):
    a, b = Interest("vision transformer"), Interest("dense retrieval")
    vision_first = _rank(store, papers, _profile(interests=(replace(a, weight=5), b)), top=3)
    retrieval_first = _rank(store, papers, _profile(interests=(a, replace(b, weight=5))), top=3)
    assert "vision" in vision_first[0].reason
    assert "retrieval" in retrieval_first[0].reason


def test_profile_with_nothing_to_go_on_gets_nothing(store, papers):
    assert _rank(store, papers, _profile()) == []


def test_min_score_leaves_out_weak_matches(store, papers):
    interests = (Interest("tabular data"),)
    loose = _rank(store, papers, _profile(interests=interests), top=50)
    strict = _rank_with(store, papers, _profile(interests=interests, min_score=3.0), top=50)
    assert len(strict) < len(loose)
    assert strict and all(p.score >= 3.0 for p in strict)
    assert _rank_with(store, papers, _profile(interests=interests, min_score=49.0)) == []


def _rank_with(store, papers, profile, top=10):
    prefs, _ = resolve_preferences(store, profile)
    corpus = build_corpus(papers)
    return rank_papers(corpus, prefs, prepare_candidates(corpus, papers), top=top,
                       min_score=profile.min_score)


def test_near_copies_do_not_fill_the_top(store, papers):
    from digest.models import PaperEntry

    original = next(p for p in papers if p.title.startswith("Promptagator"))
    store.add_entries([PaperEntry(title=original.title + " (extended version)",
                                  abstract=original.abstract, source="feed")], NOW)
    everything = store.papers()
    picks = _rank(store, everything, _profile(interests=(Interest("few-shot dense retrieval"),),
                                              liked=(original.title,)), top=5)
    # The liked paper's copy may be picked, but the picks are not all alike.
    titles = [p.paper.title for p in picks]
    assert sum("Promptagator" in t for t in titles) <= 1
    assert len(picks) == 5


def test_a_classifier_is_learned_from_enough_likes_and_dislikes(store, papers):
    retrieval = [p.title for p in papers if "retriev" in p.title.lower()][:6]
    vision = [p.title for p in papers if "image" in p.title.lower() or "vision" in
              p.title.lower()][:6]
    assert len(retrieval) == 6 and len(vision) == 6
    picks = _rank(store, papers, _profile(liked=tuple(retrieval), disliked=tuple(vision)))
    assert any("learned from your 6 liked and 6 disliked papers" in p.reason for p in picks)
    assert not any(p.paper.title in vision for p in picks)


def test_scores_are_standard_deviations_above_a_typical_paper(store, papers):
    picks = _rank(store, papers, _profile(interests=(Interest("dense retrieval"),)), top=3)
    assert all(p.score > 1.0 for p in picks)  # far above the typical stored paper


def test_nothing_to_score_with_picks_nothing_arbitrary(store, papers):
    assert _rank(store, papers, _profile(authors=("Nobody Real",))) == []
    assert _rank(store, papers, _profile(interests=(Interest("the and of"),))) == []


def test_interests_starting_with_a_digit_are_words(store, papers):
    picks = _rank(store, papers, _profile(interests=(Interest("3D"),)), top=3)
    assert picks and all("3d" in p.paper.text.lower() for p in picks)


def test_storing_an_embedding_twice_is_harmless(store, papers):
    import numpy as np

    vector = np.ones(4, dtype=np.float32)
    store.save_embeddings("m", {papers[0].row_id: vector})
    store.save_embeddings("m", {papers[0].row_id: vector})  # another process got there first
    assert list(store.embeddings([papers[0].row_id], "m")) == [papers[0].row_id]


def _scored(corpus, candidates, groups):
    """Liked-paper groups (papers, weights) as `_rocchio_scores` scores them, through the
    query bank, and the plain candidates-and-reference matrix."""
    import numpy as np

    from digest.rank import _candidate_key, _rocchio_scores

    wanted = {}
    keyed = []
    for group, weights in groups:
        keys = []
        for paper in group:
            key, source = _candidate_key(corpus, paper)
            wanted[key] = source
            keys.append(key)
        keyed.append((keys, weights))
    bank = candidates.queries.lookup(corpus, candidates, wanted)
    scores, present = _rocchio_scores(corpus, candidates, bank, keyed)
    return bank, scores, present, candidates.scoring.toarray().astype(np.float64)


def test_fast_scores_equal_the_plain_matrix_products(store, papers):
    """Scores read from the columns of the queries' terms, and liked-papers queries scored
    without building them (several profiles at once, with and without weights), are the
    products their definitions say."""
    import numpy as np

    from digest.rank import SparseRows, _products, _rocchio

    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers[:40])
    liked = corpus.vectors(papers[40:45])
    queries = SparseRows.stack([liked, corpus.transform(["dense retrieval", "vision"])])
    dense = queries.to_csr(len(corpus.terms)).toarray()
    scoring = candidates.scoring.toarray().astype(np.float64)
    np.testing.assert_allclose(_products(candidates, queries), dense @ scoring.T, atol=1e-6)

    weights = np.array([1, 1, 1, 0.5, 0.5, 0.5])
    groups = [(papers[40:45], None), ([], None), (papers[45:51], weights),
              (papers[41:42], None)]
    bank, scores, present, scoring = _scored(corpus, candidates, groups)
    assert present.tolist() == [True, False, True, True]
    assert not scores[1].any()
    for row, (group, weights) in zip(scores, groups, strict=True):
        if group:
            rows = corpus.linking_vectors(group).to_csr(len(corpus.terms)).toarray()
            query = _rocchio(rows, corpus.common, weights)
            np.testing.assert_allclose(row, scoring @ query, atol=1e-5)


def test_picks_are_the_same_from_the_similarity_table(store, papers, monkeypatch):
    """MMR compares each profile's shortlist until enough profiles make a table of every two
    candidates worth building; both give the same picks."""
    import digest.rank

    profiles = [_profile(interests=(Interest("retrieval"),), liked=(papers[3].title,)),
                _profile(interests=(Interest("language models"), Interest("vision"))),
                _profile(liked=(papers[0].title, papers[1].title), disliked=(papers[-1].title,))]

    def titles() -> list[list[str]]:
        return [[p.paper.title for p in _rank(store, papers, profile, top=20)]
                for profile in profiles]

    per_shortlist = titles()
    monkeypatch.setattr(digest.rank, "SIMILARITY_PAIRS_PER_PROFILE", 10**9)  # table at once
    assert titles() == per_shortlist
    assert all(per_shortlist)


def test_keyword_rules_are_worked_out_once_per_candidates(store, papers):
    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers)
    profile = _profile(interests=(Interest("language models"),), mute=("retrieval",))
    prefs, _ = resolve_preferences(store, profile)
    first = rank_papers(corpus, prefs, candidates, top=10)
    assert list(candidates.mentions) == ["retrieval"]
    assert rank_papers(corpus, prefs, candidates, top=10) == first
    assert not any("retrieval" in p.paper.text.lower() for p in first)


_MENTION_TEXT = st.text(alphabet=st.sampled_from(
    list("abs ik-") + ["\u017f", "\u0131", "\u03c3", "\u03c2", "\u00e9", "\u0130", "_", "2"]),
    max_size=30)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_MENTION_TEXT, min_size=1, max_size=6),
       phrase=_MENTION_TEXT.filter(lambda t: t.strip()), indexed=st.booleans(),
       twins_known=st.booleans())
def test_a_keyword_is_found_where_its_whole_word_regex_matches(texts, phrase, indexed,
                                                               twins_known):
    """Keyword rules find exactly the texts the case-insensitive whole-word pattern
    matches, letters a regex takes for others ("s" and the long s, the two Greek sigmas,
    dotless i) included: through the word index, by scanning (too many texts to index),
    and where Python's table of such letters is not there."""
    import digest.rank
    from digest.rank import LoweredTexts, _find_mentions, _phrase_pattern

    lowered = [t.lower() for t in texts]
    pattern = _phrase_pattern([phrase])
    assert pattern is not None
    expected = [bool(pattern.search(t)) for t in lowered]
    limit, twins = digest.rank.WORD_INDEX_TEXTS, digest.rank._CASE_TWINS
    try:
        digest.rank.WORD_INDEX_TEXTS = limit if indexed else 0
        digest.rank._CASE_TWINS = twins if twins_known else None
        assert _find_mentions(LoweredTexts(lowered), [phrase]).tolist() == expected
    finally:
        digest.rank.WORD_INDEX_TEXTS, digest.rank._CASE_TWINS = limit, twins


def test_terms_no_other_paper_has_leave_the_liked_papers_query(store, papers):
    import numpy as np

    corpus = build_corpus(papers)
    liked = papers[:4]
    plain = corpus.vectors(liked).to_csr(len(corpus.terms)).toarray()
    linking = corpus.linking_vectors(liked).to_csr(len(corpus.terms)).toarray()
    own = corpus.doc_freq == 1
    assert (plain[:, own] > 0).any()  # the seed papers have words of their own
    assert not (linking[:, own] > 0).any()
    np.testing.assert_allclose(np.linalg.norm(linking, axis=1), 1, rtol=1e-5)
    shared = plain[:, ~own] > 0
    assert ((linking[:, ~own] > 0) == shared).all()  # every other term stays, rescaled

    unstored = replace(papers[0], row_id=10**9)  # not in the corpus: nothing is its own
    assert (corpus.linking_vectors([unstored]).values == corpus.vectors([unstored]).values
            ).all()


# Titles that share no word with the synthetic tests' topics, nor much with each other.
_UNRELATED = [f"{a} {b} study" for a in ["solar panel", "wind turbine", "sea ice",
                                         "river delta", "forest fire", "glacier melt"]
              for b in ["efficiency", "monitoring", "forecasting"]]


def _synthetic(titles: list[str]) -> list:
    from digest.models import Paper

    return [Paper(key=f"p{i}", title=t, abstract=t, first_seen=NOW, row_id=i + 1)
            for i, t in enumerate(titles)]


def test_feedback_brings_in_what_the_best_candidates_share(monkeypatch):
    """Pseudo-relevance feedback: a paper sharing no word with the liked one, but much with
    the candidates that match it best, comes before unrelated papers."""
    import digest.rank

    liked = "graph neural networks for molecule property prediction"
    close = [f"graph neural networks for molecule docking with binding affinity, part {w}"
             for w in ["one", "two", "three", "four", "five"]]
    related = "binding affinity docking benchmark"
    unrelated = _UNRELATED
    papers = _synthetic([liked, *close, related, *unrelated])
    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers[1:])
    prefs = digest.rank.Preferences(profile=_profile(), liked=(papers[0],))

    def position_of_related() -> int:
        picks = rank_papers(corpus, prefs, candidates, top=len(papers))
        return [p.paper.title for p in picks].index(related)

    with_feedback = position_of_related()
    monkeypatch.setattr(digest.rank, "FEEDBACK_PAPERS", 0)
    assert with_feedback == len(close)  # right after the papers like the liked one
    assert position_of_related() > with_feedback
    # Its reason names no liked paper it shares nothing with, but the pick it resembles.
    monkeypatch.undo()
    picks = rank_papers(corpus, prefs, candidates, top=len(papers))
    reason = next(p.reason for p in picks if p.paper.title == related)
    assert reason.startswith("similar to: graph neural networks for molecule docking")


def test_feedback_widens_interests_when_nothing_is_liked(monkeypatch):
    """A profile with interests and no liked papers: the candidates that match them best
    stand in for liked papers, so a paper sharing no word with the interests but much with
    those candidates comes before unrelated papers; its reason names the pick it resembles,
    the others' reasons the words they match."""
    import digest.rank

    close = [f"molecule docking with graph networks and binding affinity, part {w}"
             for w in ["one", "two", "three", "four", "five"]]
    related = "binding affinity graph networks benchmark"
    unrelated = _UNRELATED
    papers = _synthetic([*close, related, *unrelated])
    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers)
    prefs = digest.rank.Preferences(profile=_profile(interests=(Interest("molecule docking"),)))

    def ranked() -> list:
        return rank_papers(corpus, prefs, candidates, top=len(papers))

    picks = ranked()
    titles = [p.paper.title for p in picks]
    assert titles.index(related) == len(close)  # right after the papers that match
    assert all(p.reason.startswith("matches: molecule docking") for p in picks[:len(close)])
    assert picks[len(close)].reason.startswith("similar to: molecule docking with graph")
    monkeypatch.setattr(digest.rank, "FEEDBACK_PAPERS", 0)
    assert related not in [p.paper.title for p in ranked()][:len(close) + 1]


def test_feedback_comes_only_from_papers_good_enough_to_send(store, papers, monkeypatch):
    """Feedback can lift the papers it comes from; on a day when no paper clears
    `min_score` on the first pass, there is none, and nothing is sent."""
    import digest.rank

    lifted = 0
    for interest in ["long context", "in-context learning", "reasoning", "tabular data"]:
        profile = _profile(interests=(Interest(interest),))
        monkeypatch.setattr(digest.rank, "FEEDBACK_PAPERS", 0)
        best_first_pass = _rank(store, papers, profile)[0].score
        monkeypatch.undo()
        lifted += _rank(store, papers, profile)[0].score > best_first_pass
        strict = replace(profile, min_score=best_first_pass + 0.01)
        assert _rank_with(store, papers, strict) == [], interest
    assert lifted  # else this would show nothing


def test_papers_that_match_nothing_never_stand_in_for_liked_ones():
    """Fewer than five candidates match the interest and min_score lets everything through:
    feedback comes from the matching ones only, never from the tied rest, which stay
    below the matches and are not said to resemble anything."""
    import digest.rank

    close = [f"molecule docking with binding affinity, part {w}" for w in ["one", "two"]]
    unrelated = _UNRELATED
    papers = _synthetic([*unrelated, *close])  # the tied ones come first
    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers)
    prefs = digest.rank.Preferences(profile=_profile(interests=(Interest("molecule docking"),)))
    picks = rank_papers(corpus, prefs, candidates, top=len(papers), min_score=-5.0)
    assert {p.paper.title for p in picks[:2]} == set(close)
    rest = picks[2:]
    assert rest and all(p.score < picks[1].score for p in rest)
    assert not any("similar to" in p.reason for p in rest)


def test_picks_are_the_same_with_queries_kept_or_not(store, papers, monkeypatch):
    """Queries (phrases, liked papers, candidates used as feedback) are kept for the next
    profiles while there is room; kept or worked out afresh, the picks are the same."""
    import digest.rank

    profiles = [_profile(liked=(papers[i].title, papers[i + 1].title)) for i in range(0, 12, 2)]
    profiles.insert(1, _profile(liked=(papers[0].title,)))  # much the same feedback as the 1st
    profiles.append(_profile(interests=(Interest("retrieval"),), liked=(papers[3].title,)))

    def titles() -> list[list[str]]:
        corpus = build_corpus(papers)
        candidates = prepare_candidates(corpus, papers)
        ranked = []
        for profile in [*profiles, *profiles]:  # the second time from what was kept
            prefs, _ = resolve_preferences(store, profile)
            ranked.append([p.paper.title for p in rank_papers(corpus, prefs, candidates,
                                                               top=10)])
        assert ranked[:len(profiles)] == ranked[len(profiles):]
        return ranked

    kept = titles()
    row = 8 * 2 * len(papers)  # a query's scores: on every candidate and reference row
    for room in [0, 6 * row, 40 * row]:  # none kept; fewer than a profile has; a few
        monkeypatch.setattr(digest.rank, "QUERY_CACHE_BYTES", room)
        assert titles() == kept
    assert all(kept)


def test_profiles_ranked_together_get_what_each_gets_alone(store, papers, monkeypatch):
    """`rank_many` scores a batch of profiles with one set of array operations; every
    profile's picks, scores and reasons are the ones it gets ranked alone, whatever the
    batch's size and whoever else is in it."""
    import digest.rank
    from digest.rank import RankRequest, rank_many

    titles = [p.title for p in papers]
    profiles = [
        _profile(interests=(Interest("dense retrieval"), Interest("vision", weight=3))),
        _profile(),  # nothing to go on
        _profile(liked=(titles[3], titles[8], "Sparse autoencoders for vision transformers")),
        _profile(interests=(Interest("language models"),), mute=("retrieval",),
                 avoid=("reinforcement learning",), min_score=1.0),
        _profile(liked=tuple(titles[:6]), disliked=tuple(titles[-6:])),  # a classifier
        _profile(interests=(Interest("tabular data"),), require=("tabular",)),
        _profile(liked=(titles[2],), disliked=(titles[5],), authors=("nobody at all",)),
        _profile(interests=(Interest("the of and"),)),  # stop words only
        _profile(require=("no paper says this",), interests=(Interest("retrieval"),)),
    ]
    corpus = build_corpus(papers)
    requests = []
    for i, profile in enumerate(profiles * 2):
        prefs, _ = resolve_preferences(store, profile)
        exclude = frozenset(p.row_id for p in papers[i:i + 3]) if i % 3 == 0 else frozenset()
        requests.append(RankRequest(prefs, top=[10, 3, 0, 25][i % 4], exclude=exclude,
                                    min_score=profile.min_score))
    alone = [rank_papers(corpus, r.prefs, prepare_candidates(corpus, papers), top=r.top,
                         exclude=r.exclude, min_score=r.min_score) for r in requests]
    assert sum(map(bool, alone)) >= 8
    assert any("learned from your 6 liked and 6 disliked" in p.reason for p in alone[4])
    for batch in [digest.rank.RANK_BATCH, 4, 1]:
        monkeypatch.setattr(digest.rank, "RANK_BATCH", batch)
        assert rank_many(corpus, prepare_candidates(corpus, papers), requests) == alone
