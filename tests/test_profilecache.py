"""The parsed-profile cache: unchanged files are not parsed again; a changed, just-written,
broken or differently-read file always is; a cache that cannot be used changes nothing."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest

import digest.profilecache
import digest.profiles
from digest.profilecache import FILE_NAME, ProfileCache
from digest.profiles import load_profiles

from .conftest import ProfileWriter


def _settle(*paths: Path) -> None:
    """Date the files a minute back, as files not touched since an earlier run are."""
    past = time.time() - 60
    for path in paths:
        os.utime(path, (past, past))


@pytest.fixture(autouse=True)
def no_racy_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files here are written (and their change time set) just before they are read: wait
    for nothing, except in the test of that rule. On this machine's clocks a file's
    change time still comes before the read that follows it."""
    monkeypatch.setattr(digest.profilecache, "RACY_S", 0.0)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files actually parsed (rather than taken from the cache)."""
    seen: list[Path] = []
    real = digest.profiles.parse_profile

    def counting(text: str, path: Path, **kwargs: object):  # type: ignore[no-untyped-def]
        seen.append(path)
        return real(text, path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(digest.profiles, "parse_profile", counting)
    return seen


def test_unchanged_profiles_come_from_the_cache(tmp_path, write_profile: ProfileWriter,
                                                parses):
    paths = [write_profile("ana", interests=["dense retrieval", {"text": "rag", "weight": 2}],
                           liked=["2401.00001"], keywords={"mute": ["crypto"]}),
             write_profile("bo", timezone="Asia/Tokyo", max_papers=3, when_nothing="note")]
    _settle(*paths)
    first = load_profiles(paths, cache=ProfileCache(tmp_path))
    again = load_profiles(paths, cache=ProfileCache(tmp_path))
    assert again == first and len(first.profiles) == 2
    assert parses == paths  # the second load parsed nothing
    assert (tmp_path / FILE_NAME).exists()


def test_an_edited_profile_is_read_again(tmp_path, write_profile: ProfileWriter, parses):
    path = write_profile("ana", interests=["retrieval"])
    _settle(path)
    load_profiles([path], cache=ProfileCache(tmp_path))
    write_profile("ana", interests=["reasoning"])  # same size, a new modification time
    loaded = load_profiles([path], cache=ProfileCache(tmp_path))
    assert [i.text for i in loaded.profiles[0].interests] == ["reasoning"]
    assert parses == [path, path]


def test_a_file_written_moments_before_it_was_read_is_not_kept(tmp_path, monkeypatch,
                                                               write_profile: ProfileWriter,
                                                               parses):
    """Its modification time may not change with an edit in the same clock tick."""
    monkeypatch.setattr(digest.profilecache, "RACY_S", 2.0)
    path = write_profile("ana", interests=["retrieval"])
    load_profiles([path], cache=ProfileCache(tmp_path))
    load_profiles([path], cache=ProfileCache(tmp_path))
    assert parses == [path, path]


def test_a_broken_profile_is_reported_every_time(tmp_path, write_profile: ProfileWriter):
    broken = write_profile("bo", text="name: Bo\nemail: not-an-address\n")
    _settle(broken)
    for _ in range(2):
        loaded = load_profiles([broken], cache=ProfileCache(tmp_path))
        assert not loaded.profiles and [e.path for e in loaded.errors] == [broken]


def test_a_damaged_cache_is_started_afresh(tmp_path, write_profile: ProfileWriter, caplog,
                                           parses):
    path = write_profile("ana", interests=["retrieval"])
    _settle(path)
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING):
        loaded = load_profiles([path], cache=ProfileCache(tmp_path))
    assert [p.subscriber_id for p in loaded.profiles] == ["ana"] and not loaded.errors
    assert "profiles.cache_reset" in caplog.text
    assert load_profiles([path], cache=ProfileCache(tmp_path)) == loaded
    assert parses == [path]


def test_a_cache_that_cannot_be_made_changes_nothing(tmp_path, write_profile: ProfileWriter,
                                                     caplog):
    path = write_profile("ana", interests=["retrieval"])
    _settle(path)
    (tmp_path / "not-a-folder").write_text("")
    with caplog.at_level(logging.WARNING):
        loaded = load_profiles([path], cache=ProfileCache(tmp_path / "not-a-folder"))
    assert [p.subscriber_id for p in loaded.profiles] == ["ana"] and not loaded.errors
    assert "profiles.cache_unusable" in caplog.text


def test_a_damaged_row_is_read_from_the_file(tmp_path, write_profile: ProfileWriter, parses):
    path = write_profile("ana", interests=["retrieval"])
    _settle(path)
    first = load_profiles([path], cache=ProfileCache(tmp_path))
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute("UPDATE profiles SET profile = '{\"name\": 1'")
    assert load_profiles([path], cache=ProfileCache(tmp_path)) == first
    assert parses == [path, path]


def test_a_file_replaced_whole_is_read_again(tmp_path, write_profile: ProfileWriter, parses):
    """An editor that writes a new file and renames it over the old one, even at the same
    size and with the old modification time put back, makes a new inode and ctime."""
    path = write_profile("ana", interests=["retrieval"])
    _settle(path)
    load_profiles([path], cache=ProfileCache(tmp_path))
    before = path.stat()
    replacement = path.with_name("ana.yaml.new")
    replacement.write_text(path.read_text().replace("retrieval", "reasoning"))
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(replacement, path)
    loaded = load_profiles([path], cache=ProfileCache(tmp_path))
    assert [i.text for i in loaded.profiles[0].interests] == ["reasoning"]
    assert parses == [path, path]


def test_the_cache_of_other_settings_or_code_is_not_used(tmp_path, settings,
                                                         write_profile: ProfileWriter, parses):
    path = write_profile("ana", interests=["retrieval"])
    _settle(path)
    ten = settings.model_copy(update={"data_dir": tmp_path, "default_max_papers": 10})
    four = ten.model_copy(update={"default_max_papers": 4})
    load_profiles([path], default_max_papers=10, cache=ProfileCache.for_settings(ten))
    loaded = load_profiles([path], default_max_papers=4, cache=ProfileCache.for_settings(four))
    assert loaded.profiles[0].max_papers == 4
    newer = ProfileCache.for_settings(four)
    newer.variant = "0.0.0:another parser|" + newer.variant.split("|", 1)[1]
    load_profiles([path], default_max_papers=4, cache=newer)
    assert parses == [path, path, path]


def test_ranking_shares_it_but_keeps_only_what_sending_accepts(
        tmp_path, write_profile: ProfileWriter, parses):
    """`digest rank` reads and fills the cache `digest send` uses; sending checks more (the
    subscriber id), so a profile only ranking accepts is parsed every time, and sending
    still refuses it."""
    good = write_profile("ana", interests=["retrieval"])
    odd = write_profile("not a valid id", email="x@example.org", interests=["retrieval"])
    _settle(good, odd)
    first = load_profiles([good, odd], for_sending=False, cache=ProfileCache(tmp_path))
    again = load_profiles([good, odd], for_sending=False, cache=ProfileCache(tmp_path))
    strict = load_profiles([good, odd], cache=ProfileCache(tmp_path))
    assert first == again and len(first.profiles) == 2
    assert [p.path for p in strict.profiles] == [good]
    assert [e.path for e in strict.errors] == [odd]
    assert parses == [good, odd, odd, odd]  # ana once, then from the cache


def test_a_removed_profile_is_an_error_not_a_cached_ghost(tmp_path,
                                                         write_profile: ProfileWriter):
    path = write_profile("ana", interests=["retrieval"])
    _settle(path)
    load_profiles([path], cache=ProfileCache(tmp_path))
    path.unlink()
    loaded = load_profiles([path], cache=ProfileCache(tmp_path))
    assert not loaded.profiles and "no such file" in str(loaded.errors[0])


def test_a_full_send_forgets_profiles_no_longer_in_the_folder(run_cli, config_file, seeds,
                                                              write_profile: ProfileWriter,
                                                              tmp_path):
    ana = write_profile("ana", interests=["dense retrieval"])
    bo = write_profile("bo", interests=["vision transformer"])
    _settle(ana, bo)
    assert run_cli("-c", config_file, "ingest", *seeds).exit_code == 0
    assert run_cli("-c", config_file, "send").exit_code == 0
    bo.unlink()
    assert run_cli("-c", config_file, "send").exit_code == 0
    with sqlite3.connect(tmp_path / "data" / FILE_NAME) as db:
        kept = [Path(row[0]).name for row in db.execute("SELECT path FROM profiles")]
    assert kept == ["ana.yaml"]
