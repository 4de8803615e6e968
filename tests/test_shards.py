"""Sending over worker processes: shards of profile files, one summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from digest.models import Profile
from digest.running.editions import EditionOutcome, Status
from digest.running.processes import send_all
from digest.running.sending import SendReport

from .conftest import NOW


def test_a_subscriber_id_used_in_two_shards_is_reported():
    first = SendReport(subscribers={"ana": "a/ana.yaml"})
    second = SendReport(subscribers={"ana": "b/ana.yaml", "ben": "b/ben.yaml"})
    total = SendReport()
    total.add(first)
    total.add(second)
    assert total.errors == ["b/ana.yaml: same subscriber id 'ana' as a/ana.yaml (one edition "
                            "was sent for both)"]


def test_reports_add_up():
    profile = Profile(subscriber_id="ana", path=Path("ana.yaml"), name="Ana",
                      email="ana@example.org")
    one = SendReport(picks=3)
    one.counts[Status.SENT] += 2
    one.timings["rank"] = 0.5
    two = SendReport(picks=4, shown=[EditionOutcome(profile, Status.FAILED, detail="550")])
    two.counts[Status.FAILED] += 1
    two.timings["rank"] = 0.25
    total = SendReport()
    for report in (one, two):
        total.add(report)
    assert total.editions == 3 and total.picks == 7 and total.timings["rank"] == 0.75
    assert [o.detail for o in total.shown] == ["550"]


def test_send_all_over_two_processes(tmp_path, settings, seeds, smtp_sink, write_profile):
    from digest.ingest.storing import ingest_files
    from digest.store import Store

    store = Store.open(settings.db_url)
    ingest_files(store, seeds, now=NOW, reference=NOW)
    store.close()
    paths = [write_profile(f"r{i:03d}", interests=["dense retrieval"]) for i in range(25)]
    report = send_all(settings, paths, now=NOW, processes=2, shard=10)  # 3 shards
    assert report.counts[Status.SENT] == 25 and not report.errors
    assert sorted(r.recipients[0] for r in smtp_sink.received) == sorted(
        f"r{i:03d}@example.org" for i in range(25))
    assert len(report.shown) == 25  # a small run shows every outcome
    again = send_all(settings, paths, now=NOW, processes=2, shard=10)
    assert again.counts[Status.ALREADY_SENT] == 25 and len(smtp_sink.received) == 25


@pytest.mark.parametrize("processes", [1, 2])
def test_a_send_leaves_the_garbage_collector_as_it_found_it(settings, seeds, smtp_sink,
                                                           write_profile, monkeypatch,
                                                           processes, tmp_path):
    """`send_all` takes what lives as long as the run out of the collector's full passes
    (gc.freeze), in its workers and while it runs, and collects young objects less often;
    its caller gets the collector back as it was."""
    import gc
    import os
    import sys

    from digest.ingest.storing import ingest_files
    from digest.running import processes as shards
    from digest.store import Store

    store = Store.open(settings.db_url)
    ingest_files(store, seeds, now=NOW, reference=NOW)
    store.close()
    paths = [write_profile(f"g{i}", interests=["dense retrieval"]) for i in range(3)]
    seen = tmp_path / "collector"
    seen.mkdir()
    run_shard = shards.run_shard

    def noting(*args, **kwargs):  # in whichever process runs a shard
        (seen / str(os.getpid())).write_text(
            f"{gc.get_threshold()[0]} {gc.get_freeze_count() > 0}")
        return run_shard(*args, **kwargs)

    monkeypatch.setattr(shards, "run_shard", noting)
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    # with processes=2: two shards, two workers
    report = send_all(settings, paths, now=NOW, processes=processes, shard=2)
    assert report.counts[Status.SENT] == 3 and not report.errors
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds
    # While it ran, every process running shards collected its young objects less often
    # (workers started afresh, as with PyTorch loaded, do not run the patched function).
    forked = processes == 1 or "torch" not in sys.modules
    assert {f.read_text() for f in seen.iterdir()} == (
        {f"{shards.YOUNG_GENERATION} True"} if forked else set())


@pytest.mark.parametrize("processes", [1, 2])
def test_send_all_shows_its_progress(settings, seeds, smtp_sink, write_profile, processes):
    """`send_all` tells what shows progress its total once and every edition done, in this
    process or as the worker processes' shards come back."""
    from contextlib import contextmanager

    from digest.ingest.storing import ingest_files
    from digest.store import Store

    store = Store.open(settings.db_url)
    ingest_files(store, seeds, now=NOW, reference=NOW)
    store.close()
    paths = [write_profile(f"p{i:02d}", interests=["dense retrieval"]) for i in range(12)]
    shown: list[tuple[str, int | None, str]] = []
    done: list[int] = []

    @contextmanager
    def recorded(label: str, total: int | None = None, *, unit: str = ""):
        shown.append((label, total, unit))
        yield done.append

    report = send_all(settings, paths, now=NOW, processes=processes, shard=5,
                      show_progress=recorded)
    assert report.counts[Status.SENT] == 12
    assert ("Sending editions", 12, "edition") in shown
    assert sum(done) == 12 and all(n > 0 for n in done)
