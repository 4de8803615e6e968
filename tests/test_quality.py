"""Quality must not regress silently: a small, fast run of benchmarks/quality.py with a
floor a little under today's figure (lexical ranking, 2 splits: 0.561 recall@10,
0.567 nDCG@10)."""

from __future__ import annotations

from benchmarks.quality import evaluate


def test_ranking_quality_stays_above_its_floor():
    scores, described = evaluate(splits=2, seed=0, use_embeddings=False)
    ours = scores["digest (default)"]
    assert "21 topics x 2 days x 2 splits" in described
    assert ours.recall >= 0.53, f"recall@10 fell to {ours.recall:.3f}"
    assert ours.ndcg >= 0.53, f"nDCG@10 fell to {ours.ndcg:.3f}"
    assert ours.recall > 20 * scores["random"].recall
