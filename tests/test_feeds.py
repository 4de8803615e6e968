"""Feeds: the real fixture feeds parsed, and polled over real HTTP with ETag and back-off."""

from __future__ import annotations

import asyncio
import random
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest

from digest.config import DaemonSettings, FeedSettings
from digest.ingest.feeds import parse_feed
from digest.ingest.fetch import fetch_feed, parse_retry_after
from digest.ingest.poll import backoff_s, poll_feed
from digest.models import PaperEntry

from .conftest import NOW
from .feedserver import FEEDS, Behaviour, FeedServer
from .hostile import UNCLOSED_ITEM, deflate, gzip_bomb

HF = "hf-daily-papers/feed_daily_2026-06-22.xml"


def _parse(name: str):
    return parse_feed((FEEDS / name).read_bytes(), source=name)


def test_hugging_face_rss_gives_authors_and_abstract_from_its_html():
    result = _parse(HF)
    assert len(result.entries) == 34 and result.problems == ()
    first = result.entries[0]
    assert first.arxiv_id == "2603.11273"
    assert first.url == "https://arxiv.org/abs/2603.11273"
    assert first.authors[:2] == ("Darshan Makwana", "Yash Jogi")
    assert first.abstract.startswith("Scheduling policies in large-scale Automatic Speech")
    assert "Upvotes" not in first.abstract and "<p>" not in first.abstract
    assert all("  " not in e.title for e in result.entries)


def test_arxiv_api_atom_collapses_versions_and_reads_old_ids():
    ids = {e.arxiv_id for e in _parse("arxiv-api/q_testing_s0_m10_bc5a6c384fe9.atom.xml").entries}
    assert len(ids) == 10 and all("v" not in i for i in ids)
    [old] = _parse("arxiv-api/id_astro-ph_0601001_s0_m100_3150dca9dc76.atom.xml").entries
    assert old.arxiv_id == "astro-ph/0601001" and old.authors[0] == "Andrew Gould"
    [legacy] = _parse("arxiv-api/id_list=1111.2011v2.xml").entries
    assert legacy.arxiv_id == "1111.2011"
    assert legacy.doi == "10.1103/physrevb.85.115117"  # <arxiv:doi>, as the store keeps it


def test_arxiv_api_error_and_empty_results_are_not_papers():
    error = _parse("arxiv-api/id_abc_s0_m100_b79c8dcf6bc3.atom.xml")
    assert error.entries == () and "arXiv API error: incorrect id format" in str(
        error.problems[0])
    empty = _parse("arxiv-api/id_0000.0000_s0_m100_8b51d9633a68.atom.xml")
    assert empty.entries == () and empty.problems == ()


@pytest.mark.parametrize(("content", "reason"), [
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "got an HTML page, not a feed"),
    (b"\x00\x01\x02 binary", "not an RSS or Atom feed"),
    (b"", "not a feed"),
])
def test_what_is_not_a_feed_is_one_fatal_problem(content, reason):
    result = parse_feed(content, source="u")
    assert result.entries == ()
    [problem] = result.problems
    assert problem.fatal and reason in problem.reason


def test_one_paper_from_a_feed_and_a_digest_file_is_one_record(store):
    [entry] = _parse("arxiv-api/id_quant-ph_0201082v1_s0_m100_86989fe779ef.atom.xml").entries
    store.add_entries([PaperEntry(title=entry.title.upper(), abstract="", source="digest.txt")],
                      NOW)
    assert store.add_entries([entry], NOW).new_papers == 0
    [paper] = store.papers()
    assert paper.key == "quant-ph/0201082" and paper.authors == ("Stephen Blaha",)


def _poll(store, server, path, *, now=NOW, settings=None, force=False):
    feed = FeedSettings(url=server.url(path), poll_s=60)
    return asyncio.run(poll_feed(store, feed, settings or DaemonSettings(feed_timeout_s=2),
                                 now=now, rng=random.Random(1), force=force))


def test_second_poll_sends_the_etag_and_gets_304(store):
    with FeedServer() as server:
        first = _poll(store, server, HF)
        not_due = _poll(store, server, HF, now=NOW + timedelta(seconds=30))
        second = _poll(store, server, HF, now=NOW + timedelta(seconds=61))
        statuses = server.statuses(HF)
        sent_etag = server.log[-1][2].get("If-None-Match")
    assert (first.status, first.new_papers) == ("200", 34)
    assert not_due is None
    assert (second.status, second.new_papers) == ("304", 0)
    assert statuses == [200, 304] and sent_etag
    state = store.feed_state(server.url(HF))
    assert state.last_status == "304" and state.failures == 0
    assert state.next_poll_at == NOW + timedelta(seconds=61 + 60)


@pytest.mark.parametrize(("behaviour", "error"), [
    (Behaviour(status=500), "HTTP 500"),
    (Behaviour(body=b"<!DOCTYPE html><html>login</html>"), "HTML page"),
    (Behaviour(body=b"<rss><channel><item><title>A paper</title><description>Cut"),
     None),  # ill-formed but readable
    (Behaviour(delay_s=1.5), "timed out"),
])
def test_bad_feeds_are_logged_and_backed_off(store, behaviour, error):
    settings = DaemonSettings(feed_timeout_s=0.5, feed_max_backoff_s=3600)
    with FeedServer() as server:
        server.behaviours["bad.xml"] = behaviour
        outcome = _poll(store, server, "bad.xml", settings=settings)
    state = store.feed_state(server.url("bad.xml"))
    if error is None:
        assert outcome.status == "200" and outcome.new_papers == 1
        assert "not well-formed" in str(outcome.problems[0])
        return
    assert outcome.status == "error" and error in str(outcome.problems[0])
    assert state.failures == 1 and error in state.last_error
    assert state.next_poll_at > NOW + timedelta(seconds=50)


def test_failures_back_off_exponentially_and_retry_after_is_honoured(store):
    rng = random.Random(0)
    delays = [backoff_s(n, 60, 3600, rng) for n in range(1, 9)]
    assert delays[0] < 70 and delays[1] > 100 and delays[-1] <= 3600 * 1.1
    assert backoff_s(1, 60, 3600, rng, retry_after_s=900) == 900
    with FeedServer() as server:
        server.behaviours["busy.xml"] = Behaviour(status=503, headers={"Retry-After": "1200"})
        _poll(store, server, "busy.xml")
    state = store.feed_state(server.url("busy.xml"))
    assert state.next_poll_at == NOW + timedelta(seconds=1200)


def test_retry_after_as_an_http_date():
    assert parse_retry_after("Wed, 25 Nov 2026 12:10:00 GMT", NOW) == 600
    assert parse_retry_after("soon", NOW) is None


def test_unreachable_feed_is_an_error_not_a_crash(store, tmp_path: Path):
    feed = FeedSettings(url="http://127.0.0.1:9/feed.xml")
    outcome = asyncio.run(poll_feed(store, feed, DaemonSettings(feed_timeout_s=1), now=NOW,
                                    rng=random.Random(1)))
    assert outcome.status == "error" and "cannot connect" in str(outcome.problems[0])


# Hostile servers: every fetch bounded in bytes and in time --------------------------------

@pytest.mark.parametrize("raw", [False, True], ids=["zlib-wrapped", "raw"])
def test_deflate_is_read_with_or_without_its_zlib_header(store, raw):
    body = deflate((FEEDS / HF).read_bytes(), raw=raw)
    with FeedServer() as server:
        server.behaviours["deflated.xml"] = Behaviour(
            body=body, headers={"Content-Encoding": "deflate"})
        outcome = _poll(store, server, "deflated.xml")
    assert (outcome.status, outcome.new_papers) == ("200", 34)


def test_a_gzip_bomb_is_cut_at_the_cap_once_decompressed():
    """64 KiB on the wire that would inflate to 64 MiB; the cap (1 MiB) counts what it
    inflates to, and no more than the cap is ever held."""
    bomb = gzip_bomb(64 * 1024 * 1024)
    cap = 1024 * 1024
    assert len(bomb) < cap  # as sent, it is well under the cap
    with FeedServer() as server:
        server.behaviours["bomb.xml"] = Behaviour(body=bomb,
                                                  headers={"Content-Encoding": "gzip"})
        tracemalloc.start()
        try:
            result = fetch_feed(server.url("bomb.xml"), etag=None, last_modified=None,
                                timeout_s=5, deadline_s=60, max_bytes=cap, now=NOW)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert result.content is None and "once decompressed" in result.error
    assert peak < 4 * cap


def test_a_feed_that_trickles_is_cut_at_its_deadline(store):
    """A byte every 0.1 s: no read ever times out (30 s each), so only the deadline for
    the whole fetch ends it; the feed backs off like any failing feed."""
    settings = DaemonSettings(feed_timeout_s=30, feed_deadline_s=1)
    with FeedServer() as server:
        server.behaviours["slow.xml"] = Behaviour(body=(FEEDS / HF).read_bytes(), drip_s=0.1)
        outcome = _poll(store, server, "slow.xml", settings=settings)
    assert outcome.status == "error"
    assert "no complete answer within 1 s" in str(outcome.problems[0])
    assert store.feed_state(server.url("slow.xml")).failures == 1


def test_a_feed_broken_before_its_first_entry_is_a_failure_with_the_reason(store):
    with FeedServer() as server:
        server.behaviours["broken.xml"] = Behaviour(body=UNCLOSED_ITEM)
        outcome = _poll(store, server, "broken.xml")
    assert outcome.status == "error"
    assert "not well-formed and no entry could be read: " in str(outcome.problems[0])
    assert "unclosed token" in str(outcome.problems[0])  # feedparser's own reason
    assert store.feed_state(server.url("broken.xml")).failures == 1


def test_a_feed_sourced_edition_links_every_pick(store, settings, write_profile, tmp_path):
    """Papers from the Hugging Face and arXiv fixture feeds, ranked and rendered as a real
    run does: every pick's title links to its arXiv page, in the HTML and the text."""
    import re

    from digest.deliver import OutboxMailer
    from digest.profiles import load_profile
    from digest.running.editions import EditionRun

    for name in (HF, "arxiv-api/q_testing_s0_m10_bc5a6c384fe9.atom.xml"):
        store.add_entries(list(_parse(name).entries), NOW)
    path = write_profile("ana", interests=["speech recognition", "language models",
                                           "software testing"])
    run = EditionRun(store, settings)
    [outcome] = asyncio.run(run.run_editions([load_profile(path)],
                                             OutboxMailer(tmp_path / "out"), now=NOW))
    assert outcome.picks and outcome.email is not None
    html = outcome.email.email.get_body(("html",)).get_content()
    text = outcome.email.email.get_body(("plain",)).get_content()
    titles = re.findall(r'<p class="title"[^>]*><a href="([^"]+)"', html)
    assert len(titles) == len(outcome.picks)
    for pick in outcome.picks:
        url = f"https://arxiv.org/abs/{pick.paper.arxiv_id}"
        assert pick.paper.arxiv_id and url in titles
        assert f"arXiv: {url}" in text
