"""Ranking: order, reasons and hard rules on the real seed papers (no float values)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.ingest.storing import ingest_files
from digest.models import Interest, Profile
from digest.rank import (
    DEFAULT_PARAMS,
    RankParams,
    build_corpus,
    prepare_candidates,
    rank_papers,
)
from digest.rank.cache import candidate_cache
from digest.rank.reasons import liked_section
from digest.running.editions import resolve_preferences

from .conftest import NOW


@pytest.fixture
def papers(store, seeds):
    ingest_files(store, seeds, now=NOW, reference=NOW)
    return store.papers()


def _profile(**fields) -> Profile:
    base = Profile(subscriber_id="t", path=Path("t.yaml"), name="T", email="t@example.org")
    return replace(base, **fields)


def _rank(store, papers, profile, top=10, params=DEFAULT_PARAMS):
    prefs, _ = resolve_preferences(store, profile)
    corpus = build_corpus(papers, params=params)
    return rank_papers(corpus, prefs, prepare_candidates(corpus, papers), top=top)


def test_interests_pick_matching_papers_and_say_which_terms(store, papers):
    picks = _rank(store, papers, _profile(interests=(Interest("dense retrieval"),)), top=5)
    assert len(picks) == 5
    assert all("retriev" in p.paper.text.lower() for p in picks)
    assert picks[0].reason.startswith("matches \u201c")
    assert "dense retriev" in picks[0].reason
    assert all(p.section == "dense retrieval" for p in picks)
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
    # profile's ("robots"): the reason quotes the phrase as the paper writes it.
    assert picks[0].reason == "matches \u201clegged robot\u201d"
    assert picks[0].section == "legged robots"  # the section: the interest as written


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
    # One section for the liked paper, which heads it; no pick repeats its title.
    assert all(p.section == liked_section(liked) for p in picks)
    assert not any("Promptagator" in p.reason for p in picks)


def test_liked_title_not_in_the_store_still_steers(store, papers):
    picks = _rank(store, papers, _profile(liked=("Sparse autoencoders for vision transformers",)))
    assert picks and picks[0].section == liked_section(
        "Sparse autoencoders for vision transformers")


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
    synthetic = _synthetic(["Large Language Models are few-shot learners",
                            "Language modelling at scale", "Modal logic of models",
                            "GPT-4 and GPT-4o compared", "GPT-5 is not GPT-4o"])
    corpus = build_corpus(synthetic)
    mentions = candidate_cache(corpus, prepare_candidates(corpus, synthetic)).mentions
    assert mentions.of(["Language Model"]).tolist() == [True, True, False, False, False]
    assert mentions.of(["gpt-4"]).tolist() == [False, False, False, True, False]
    # On the real papers: Chen's profile (the demo) mutes "language model".
    chen = _profile(interests=(Interest("image classification"),), mute=("language model",))
    picks = _rank(store, papers, chen, top=50)
    assert picks and not any(re.search(r"language model", p.paper.text, re.IGNORECASE)
                             for p in picks)


def test_disliked_paper_pushes_its_neighbours_down(store, papers):
    """Against the same profile with the paper only left out (as if already sent), disliking
    it moves each of the five papers most like it (of the first 20) down the ranking, with
    a lower score, and those five fall further than the five least like it."""
    import numpy as np

    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers)
    profile = _profile(interests=(Interest("retrieval"),))

    def ranked(profile: Profile, exclude: frozenset[int] = frozenset()) -> list:
        prefs, _ = resolve_preferences(store, profile)
        return rank_papers(corpus, prefs, candidates, top=len(papers), exclude=exclude)

    disliked = ranked(profile)[0].paper
    plain = ranked(profile, exclude=frozenset([disliked.row_id]))
    after = ranked(replace(profile, disliked=(disliked.title,)))
    assert disliked not in [p.paper for p in after]  # the hard rule
    assert len(after) == len(plain)  # every other paper, in both

    first = [p.paper for p in plain[:20]]
    vectors = corpus.vectors(first).to_csr(len(corpus.terms))
    likeness = (vectors @ corpus.vectors([disliked]).to_csr(len(corpus.terms)).T).toarray()
    by_likeness = [first[i] for i in np.argsort(-likeness.ravel(), kind="stable")]
    nearest, farthest = by_likeness[:5], by_likeness[-5:]
    rank_before = {p.paper.row_id: i for i, p in enumerate(plain)}
    rank_after = {p.paper.row_id: i for i, p in enumerate(after)}
    score_before = {p.paper.row_id: p.score for p in plain}
    score_after = {p.paper.row_id: p.score for p in after}
    for paper in nearest:
        assert rank_after[paper.row_id] > rank_before[paper.row_id], paper.title
        assert score_after[paper.row_id] < score_before[paper.row_id], paper.title

    def fall(group: list) -> int:
        return sum(rank_after[p.row_id] - rank_before[p.row_id] for p in group)

    assert fall(nearest) > fall(farthest)


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
    assert vision_first[0].section == "vision transformer"
    assert retrieval_first[0].section == "dense retrieval"


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
    """With every stored paper a candidate (each is also a reference paper: the store is
    small), the stored papers' scores average 0, and with one kind of evidence (interests,
    no feedback) they spread by 1: a score is standard deviations above a typical paper."""
    import numpy as np

    profile = _profile(interests=(Interest("dense retrieval"),))
    picks = _rank(store, papers, profile, top=3)
    assert len(picks) == 3
    assert all(p.score > 1.0 for p in picks)  # far above the typical stored paper
    for params in [RankParams(feedback_papers=0), DEFAULT_PARAMS]:
        scores = np.array([p.score for p in _rank(store, papers, profile, top=len(papers),
                                                  params=params)])
        assert len(scores) == len(papers)
        assert abs(scores.mean()) < 0.001, params
        if params.feedback_papers == 0:  # one kind of evidence: its own spread
            assert abs(scores.std() - 1) < 0.001
        else:  # the mean of two kinds (interests, feedback): no wider than each
            assert scores.std() <= 1.001


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
    """Liked-paper groups (papers, weights) as `rocchio_scores` scores them, through the
    query bank, and the plain candidates-and-reference matrix."""
    import numpy as np

    from digest.rank.queries import candidate_key, rocchio_scores

    wanted = {}
    keyed = []
    for group, weights in groups:
        keys = []
        for paper in group:
            key, source = candidate_key(corpus, paper)
            wanted[key] = source
            keys.append(key)
        keyed.append((keys, weights))
    bank = candidate_cache(corpus, candidates).queries.lookup(corpus, candidates, wanted)
    scores, present = rocchio_scores(corpus, candidates, bank, keyed)
    return bank, scores, present, candidates.scoring.toarray().astype(np.float64)


def test_fast_scores_equal_the_plain_matrix_products(store, papers):
    """Scores read from the columns of the queries' terms, and liked-papers queries scored
    without building them (several profiles at once, with and without weights), are the
    products their definitions say."""
    import numpy as np

    from digest.rank import SparseRows
    from digest.rank.queries import products, rocchio

    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers[:40])
    liked = corpus.vectors(papers[40:45])
    queries = SparseRows.stack([liked, corpus.transform(["dense retrieval", "vision"])])
    dense = queries.to_csr(len(corpus.terms)).toarray()
    scoring = candidates.scoring.toarray().astype(np.float64)
    np.testing.assert_allclose(products(candidates, queries), dense @ scoring.T, atol=1e-6)

    weights = np.array([1, 1, 1, 0.5, 0.5, 0.5])
    groups = [(papers[40:45], None), ([], None), (papers[45:51], weights),
              (papers[41:42], None)]
    bank, scores, present, scoring = _scored(corpus, candidates, groups)
    assert present.tolist() == [True, False, True, True]
    assert not scores[1].any()
    for row, (group, weights) in zip(scores, groups, strict=True):
        if group:
            rows = corpus.linking_vectors(group).to_csr(len(corpus.terms)).toarray()
            query = rocchio(rows, corpus.common, weights, beta=corpus.params.rocchio_beta)
            np.testing.assert_allclose(row, scoring @ query, atol=1e-5)


def test_picks_are_the_same_from_the_similarity_table(store, papers):
    """MMR compares each profile's shortlist until enough profiles make a table of every two
    candidates worth building; both give the same picks."""
    profiles = [_profile(interests=(Interest("retrieval"),), liked=(papers[3].title,)),
                _profile(interests=(Interest("language models"), Interest("vision"))),
                _profile(liked=(papers[0].title, papers[1].title), disliked=(papers[-1].title,))]

    def titles(params: RankParams) -> list[list[str]]:
        return [[p.paper.title for p in _rank(store, papers, profile, top=20, params=params)]
                for profile in profiles]

    per_shortlist = titles(RankParams(similarity_pairs_per_profile=0))  # never a table
    assert titles(RankParams(similarity_pairs_per_profile=10**9)) == per_shortlist  # at once
    assert titles(DEFAULT_PARAMS) == per_shortlist
    assert all(per_shortlist)


def test_keyword_rules_are_worked_out_once_per_candidates(store, papers):
    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers)
    profile = _profile(interests=(Interest("language models"),), mute=("retrieval",))
    prefs, _ = resolve_preferences(store, profile)
    first = rank_papers(corpus, prefs, candidates, top=10)
    assert list(candidate_cache(corpus, candidates).mentions.masks) == ["retrieval"]
    assert rank_papers(corpus, prefs, candidates, top=10) == first
    assert not any("retrieval" in p.paper.text.lower() for p in first)


def test_what_ranking_keeps_lives_beside_the_candidates_and_goes_with_them(store, papers):
    """The frozen candidates hold no cache: the corpus keeps one per set of candidates,
    reused by every ranking on them, and drops it when the candidates are dropped (the
    pipeline keeps only a few sets)."""
    import gc

    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers)
    prefs, _ = resolve_preferences(store, _profile(interests=(Interest("retrieval"),),
                                                   mute=("vision",)))
    rank_papers(corpus, prefs, candidates, top=10)
    cache = candidate_cache(corpus, candidates)
    assert cache.mentions.masks and cache.queries.index  # something was kept
    rank_papers(corpus, prefs, candidates, top=10)
    assert list(corpus.candidate_caches.values()) == [cache]
    del candidates, cache
    gc.collect()
    assert len(corpus.candidate_caches) == 0


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
    from digest.rank import LoweredTexts
    from digest.rank.words import CASE_TWINS, find_mentions, phrase_pattern

    lowered = [t.lower() for t in texts]
    pattern = phrase_pattern([phrase])
    assert pattern is not None
    expected = [bool(pattern.search(t)) for t in lowered]
    prepared = LoweredTexts(lowered, word_index=indexed,
                            case_twins=CASE_TWINS if twins_known else None)
    assert find_mentions(prepared, [phrase]).tolist() == expected


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


def test_feedback_brings_in_what_the_best_candidates_share():
    """Pseudo-relevance feedback: a paper sharing no word with the liked one, but much with
    the candidates that match it best, comes before unrelated papers."""
    from digest.rank import Preferences

    liked = "graph neural networks for molecule property prediction"
    close = [f"graph neural networks for molecule docking with binding affinity, part {w}"
             for w in ["one", "two", "three", "four", "five"]]
    related = "binding affinity docking benchmark"
    unrelated = _UNRELATED
    papers = _synthetic([liked, *close, related, *unrelated])
    prefs = Preferences(profile=_profile(), liked=(papers[0],))

    def ranked(params: RankParams) -> list:
        corpus = build_corpus(papers, params=params)
        return rank_papers(corpus, prefs, prepare_candidates(corpus, papers[1:]),
                           top=len(papers))

    def position_of_related(params: RankParams) -> int:
        return [p.paper.title for p in ranked(params)].index(related)

    with_feedback = position_of_related(DEFAULT_PARAMS)
    assert with_feedback == len(close)  # right after the papers like the liked one
    assert position_of_related(RankParams(feedback_papers=0)) > with_feedback
    # It shares nothing with the liked paper, so its reason names none: it came in by
    # resembling the papers like it, and joins their section.
    pick = next(p for p in ranked(DEFAULT_PARAMS) if p.paper.title == related)
    assert pick.reason == "close to other papers on this topic"
    assert pick.section == liked_section(liked)


def test_feedback_widens_interests_when_nothing_is_liked():
    """A profile with interests and no liked papers: the candidates that match them best
    stand in for liked papers, so a paper sharing no word with the interests but much with
    those candidates comes before unrelated papers; its reason names the pick it resembles,
    the others' reasons the words they match."""
    from digest.rank import Preferences

    close = [f"molecule docking with graph networks and binding affinity, part {w}"
             for w in ["one", "two", "three", "four", "five"]]
    related = "binding affinity graph networks benchmark"
    unrelated = _UNRELATED
    papers = _synthetic([*close, related, *unrelated])
    prefs = Preferences(profile=_profile(interests=(Interest("molecule docking"),)))

    def ranked(params: RankParams = DEFAULT_PARAMS) -> list:
        corpus = build_corpus(papers, params=params)
        return rank_papers(corpus, prefs, prepare_candidates(corpus, papers), top=len(papers))

    picks = ranked()
    titles = [p.paper.title for p in picks]
    assert titles.index(related) == len(close)  # right after the papers that match
    assert all(p.reason == "matches \u201cmolecule docking\u201d" for p in picks[:len(close)])
    assert picks[len(close)].reason == "close to other papers on this topic"
    assert {p.section for p in picks[:len(close) + 1]} == {"molecule docking"}
    without = ranked(RankParams(feedback_papers=0))
    assert related not in [p.paper.title for p in without][:len(close) + 1]


def test_feedback_comes_only_from_papers_good_enough_to_send(store, papers):
    """Feedback can lift the papers it comes from; on a day when no paper clears
    `min_score` on the first pass, there is none, and nothing is sent."""
    lifted = 0
    for interest in ["long context", "in-context learning", "reasoning", "tabular data"]:
        profile = _profile(interests=(Interest(interest),))
        first_pass = _rank(store, papers, profile, params=RankParams(feedback_papers=0))
        best_first_pass = first_pass[0].score
        lifted += _rank(store, papers, profile)[0].score > best_first_pass
        strict = replace(profile, min_score=best_first_pass + 0.01)
        assert _rank_with(store, papers, strict) == [], interest
    assert lifted  # else this would show nothing


def test_papers_that_match_nothing_never_stand_in_for_liked_ones():
    """Fewer than five candidates match the interest and min_score lets everything through:
    feedback comes from the matching ones only, never from the tied rest, which stay
    below the matches and are not said to resemble anything."""
    from digest.rank import Preferences

    close = [f"molecule docking with binding affinity, part {w}" for w in ["one", "two"]]
    unrelated = _UNRELATED
    papers = _synthetic([*unrelated, *close])  # the tied ones come first
    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers)
    prefs = Preferences(profile=_profile(interests=(Interest("molecule docking"),)))
    picks = rank_papers(corpus, prefs, candidates, top=len(papers), min_score=-5.0)
    assert {p.paper.title for p in picks[:2]} == set(close)
    rest = picks[2:]
    assert rest and all(p.score < picks[1].score for p in rest)
    assert not any("close to" in p.reason for p in rest)


def test_picks_are_the_same_with_queries_kept_or_not(store, papers):
    """Queries (phrases, liked papers, candidates used as feedback) are kept for the next
    profiles while there is room; kept or worked out afresh, the picks are the same."""
    profiles = [_profile(liked=(papers[i].title, papers[i + 1].title)) for i in range(0, 12, 2)]
    profiles.insert(1, _profile(liked=(papers[0].title,)))  # much the same feedback as the 1st
    profiles.append(_profile(interests=(Interest("retrieval"),), liked=(papers[3].title,)))

    def titles(params: RankParams) -> list[list[str]]:
        corpus = build_corpus(papers, params=params)
        candidates = prepare_candidates(corpus, papers)
        ranked = []
        for profile in [*profiles, *profiles]:  # the second time from what was kept
            prefs, _ = resolve_preferences(store, profile)
            ranked.append([p.paper.title for p in rank_papers(corpus, prefs, candidates,
                                                               top=10)])
        assert ranked[:len(profiles)] == ranked[len(profiles):]
        return ranked

    kept = titles(DEFAULT_PARAMS)
    row = 8 * 2 * len(papers)  # a query's scores: on every candidate and reference row
    for room in [0, 6 * row, 40 * row]:  # none kept; fewer than a profile has; a few
        assert titles(RankParams(query_cache_bytes=room)) == kept
    assert all(kept)


def test_profiles_ranked_together_get_what_each_gets_alone(store, papers):
    """`rank_many` scores a batch of profiles with one set of array operations; every
    profile's picks, scores and reasons are the ones it gets ranked alone, whatever the
    batch's size and whoever else is in it."""
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
    for batch in [DEFAULT_PARAMS.rank_batch_profiles, 4, 1]:
        batched = build_corpus(papers, params=RankParams(rank_batch_profiles=batch))
        assert rank_many(batched, prepare_candidates(batched, papers), requests) == alone


def test_a_phrase_of_several_words_prefers_papers_holding_it():
    """The interest "state space models": a paper holding the phrase (here as "state-space
    model") comes before one that has its words scattered ("the state of these models in
    a latent space"), and the reasons say which is which, in the papers' own
    words. Without the preference (`scattered_phrase=1`), the scattered one came first,
    explained as "matches: space, state, models"."""
    from digest.rank import Preferences

    holder = ("a selective state-space model for long sequences of audio, genomes and "
              "language tokens")
    scattered = "the state of these models in a latent space"
    papers = _synthetic([holder, scattered, *_UNRELATED])
    prefs = Preferences(profile=_profile(interests=(Interest("state space models"),)))

    def ranked(params: RankParams) -> list:
        corpus = build_corpus(papers, params=params)
        return rank_papers(corpus, prefs, prepare_candidates(corpus, papers), top=2)

    first, second = ranked(DEFAULT_PARAMS)
    assert first.paper.title == holder
    assert first.reason == "matches \u201cstate-space model\u201d"
    assert second.reason == "mentions state, space and models"
    assert {first.section, second.section} == {"state space models"}
    assert ranked(RankParams(scattered_phrase=1.0))[0].paper.title == scattered


def test_rating_papers_it_sent_teaches_a_classifier_of_the_ratings(store, papers):
    """Once the reader has rated a paper digest sent them ("more / less like this"), the
    liked papers' evidence is learned from the ratings against the stored papers (from 5
    liked papers on); before, the same liked papers make a query, and no classifier is
    learned; nor for a profile with interests, whose query does better."""
    retrieval = [p for p in papers if "retriev" in p.title.lower()][:5]
    vision = [p for p in papers if "image" in p.title.lower()][:1]
    assert len(retrieval) == 5 and len(vision) == 1
    profile = _profile(liked=tuple(p.title for p in retrieval),
                       disliked=tuple(p.title for p in vision))
    prefs, _ = resolve_preferences(store, profile)
    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers)
    before = rank_papers(corpus, prefs, candidates, top=5)
    assert not any("learned from" in p.reason for p in before)
    # The last liked paper and the disliked one came in earlier editions.
    sent = frozenset({retrieval[-1].row_id, vision[0].row_id})
    after = rank_papers(corpus, prefs, candidates, top=5, exclude=sent)
    assert all("learned from your 5 liked and 1 disliked papers" in p.reason for p in after)
    with_interests = replace(prefs, profile=replace(profile, interests=(Interest("retrieval"),)))
    assert not any("learned from" in p.reason for p in rank_papers(
        corpus, with_interests, candidates, top=5, exclude=sent))
    assert sum("retriev" in p.paper.text.lower() for p in after) >= 3
    rated = {p.row_id for p in (*retrieval, *vision)}
    assert not any(p.paper.row_id in rated for p in after)
    # Papers sent and not rated teach nothing: they are only not sent again.
    unrated = frozenset(p.paper.row_id for p in before[:2])
    again = rank_papers(corpus, prefs, candidates, top=3, exclude=unrated)
    assert len(again) == 3 and not any("learned from" in p.reason for p in again)
    assert not unrated & {p.paper.row_id for p in again}


def test_a_profile_asked_to_rate_gets_papers_after_its_picks_that_the_picks_leave_out(
        store, papers):
    """`ask` papers come after the picks, in the ASK_SECTION: near the profile (better
    than a typical paper, from the candidates just after the picks), none of the picks,
    each the least like what the email already holds. The picks are those it gets
    without asking."""
    from digest.models import ASK_SECTION
    from digest.rank import RankRequest, rank_many

    profile = _profile(interests=(Interest("dense retrieval"), Interest("reranking")))
    prefs, _ = resolve_preferences(store, profile)
    corpus = build_corpus(papers)
    candidates = prepare_candidates(corpus, papers)
    plain = rank_many(corpus, candidates, [RankRequest(prefs, 5)])[0]
    [asking] = rank_many(corpus, candidates, [RankRequest(prefs, 5, ask=3)])
    picks = [p for p in asking if p.section != ASK_SECTION]
    asked = [p for p in asking if p.section == ASK_SECTION]
    assert asking[:5] == picks and [p.paper for p in picks] == [p.paper for p in plain]
    assert len(asked) == 3 and all(p.score > 0 and p.reason for p in asked)
    shown = [p.paper.row_id for p in asking]
    assert len(set(shown)) == len(shown)
    # From the candidates right after the picks, not the next three in order.
    after = [p.paper.row_id for p in rank_papers(corpus, prefs, candidates, top=14)][5:]
    assert {p.paper.row_id for p in asked} <= set(after)
    assert [p.paper.row_id for p in asked] != after[:3]


@pytest.mark.parametrize("max_papers", [0, 1000], ids=["per-shortlist", "whole-table"])
def test_the_papers_to_rate_cover_what_the_picks_leave_out(max_papers):
    """Of the near candidates, best first, each next one asked about is the least like the
    picks and those asked before it; profiles asked for together get what each gets
    alone, whether the similarity comes per shortlist or from the whole table."""
    import numpy as np
    from scipy import sparse

    from digest.rank.evidence import Similarity, ask_samples

    # Six candidates on three axes: 0-1 on the first (the pick's), 2-3 on the second,
    # 4 on the third, 5 between the first and the second.
    rows = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0.7, 0.7, 0]],
                    dtype=np.float32)
    matrix = sparse.csr_matrix(rows / np.linalg.norm(rows, axis=1, keepdims=True))

    def similarity() -> Similarity:
        return Similarity(matrix, max_papers=max_papers, pairs_per_profile=10**6)

    picks, nears, counts = [[0], [], [0, 2]], [[1, 5, 2, 3, 4], [1, 2], [1, 5, 3, 4]], [3, 5, 2]
    together = ask_samples(similarity(), picks, nears, counts)
    # Unlike the pick: the second axis (2: as unlike it as 4, and listed before), then the
    # third (4; 3 is 2's copy), then 5, half like both; 1, the pick's copy, never. No
    # picks: the best first, then the farthest. Two axes picked: the third.
    assert together == [[2, 4, 5], [1, 2], [4, 5]]
    assert together == [ask_samples(similarity(), [p], [n], [c])[0]
                        for p, n, c in zip(picks, nears, counts, strict=True)]
    assert ask_samples(similarity(), [[0]], [[1, 2]], [0]) == [[]]
