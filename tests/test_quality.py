"""Quality must not regress silently: a small, fast run of benchmarks/quality.py with
floors a little under today's figures (lexical ranking, 2 splits, seed 0: per topic
0.573 recall@10 and 0.577 nDCG@10; the whole reader 0.80 wanted@10, 0.0 unwanted@10; the
whole reader by its topics' names 0.455 utility@10, 0.05 unwanted@10)."""

from __future__ import annotations

import pytest

from benchmarks.quality import (
    build_days,
    evaluate,
    evaluate_library,
    evaluate_names,
    load_topics,
)


@pytest.fixture(scope="module")
def days():
    return build_days(load_topics(), use_embeddings=False)


def test_ranking_quality_stays_above_its_floor(days):
    scores, described = evaluate(splits=2, seed=0, use_embeddings=False, days=days)
    ours = scores["digest (default)"]
    assert "21 topics x 2 days x 2 splits" in described
    assert ours.recall >= 0.55, f"recall@10 fell to {ours.recall:.3f}"
    assert ours.ndcg >= 0.55, f"nDCG@10 fell to {ours.ndcg:.3f}"
    assert ours.recall > 20 * scores["random"].recall


def test_a_whole_library_keeps_finding_the_wanted_papers_and_not_the_unwanted(days):
    scores, described = evaluate_library(splits=2, seed=0, use_embeddings=False, days=days)
    ours = scores["digest (default)"]
    assert "63 liked and 106 disliked" in described
    assert ours.wanted >= 0.65, f"wanted@10 fell to {ours.wanted:.3f}"
    assert ours.unwanted <= 0.05, f"unwanted@10 rose to {ours.unwanted:.3f}"
    assert ours.unwanted < scores["random"].unwanted


def test_a_profile_of_topic_names_finds_what_its_weights_ask_for(days):
    scores, described = evaluate_names(splits=2, seed=0, use_embeddings=False, days=days)
    ours = scores["digest (default)"]
    assert "17 wanted (weights 0.1 to 10), 18 avoided" in described
    assert ours.utility >= 0.42, f"utility@10 fell to {ours.utility:.3f}"
    assert ours.utility > scores["keyword alert"].utility
    assert ours.unwanted <= 0.10, f"unwanted@10 rose to {ours.unwanted:.3f}"


def test_the_closed_loop_records_each_click_in_the_profile_and_never_repeats_a_paper(
        days, tmp_path):
    """A simulated reader's clicks go into its profile file as the email's links put them
    there, and each edition is ranked from the file: the liked and disliked lists grow by
    the clicks, no paper is shown twice, and the found papers are the clicked ones."""
    from benchmarks.quality import (
        EDITIONS,
        DigestLearner,
        K,
        _studied_topics,
        _topic_trials,
        run_loop,
    )
    from digest.profiles import load_profile

    trials = _topic_trials(_studied_topics(2), days, splits=1, seed=0)
    _, day, liked, wanted, pool = next(trials)
    shown: list[int] = []

    class Watching(DigestLearner):
        def top(self, pool, already):
            picks = super().top(pool, already)
            assert not set(picks) & already
            shown.extend(picks)
            return picks

    learner = Watching(day, False, tmp_path, liked=liked.tolist())
    counts = run_loop(learner, pool, wanted, click_less=True)
    assert len(counts) == EDITIONS and len(shown) == EDITIONS * K == len(set(shown))
    found = sum(f for f, _ in counts)
    assert counts[0][1] == len(wanted) and found >= 1
    profile = load_profile(learner.path)
    assert len(profile.liked) == len(liked) + found
    assert len(profile.disliked) == EDITIONS * K - found
