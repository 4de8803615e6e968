"""The parsed-profile cache: unchanged files are not parsed again; a changed, just-written,
broken or differently-read file always is; a cache that cannot be used changes nothing."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

import digest.profiles
from digest.profilecache import FILE_NAME, ProfileCache
from digest.profiles import load_profiles

from .conftest import ProfileWriter


def _settle(*paths: Path) -> None:
    """Date the files a minute back, as files not touched since an earlier run are."""
    past = time.time() - 60
    for path in paths:
        os.utime(path, (past, past))


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


def test_a_file_written_moments_before_it_was_read_is_not_kept(tmp_path,
                                                               write_profile: ProfileWriter,
                                                               parses):
    """Its modification time may not change with an edit in the same clock tick."""
    path = write_profile("ana", interests=["retrieval"])
    load_profiles([path], cache=ProfileCache(tmp_path))
    load_profiles([path], cache=ProfileCache(tmp_path))
    assert parses == [path, path]


def test_other_settings_or_a_broken_profile_are_never_taken_from_it(
        tmp_path, write_profile: ProfileWriter, parses):
    good = write_profile("ana", interests=["retrieval"])
    broken = write_profile("bo", text="name: Bo\nemail: not-an-address\n")
    _settle(good, broken)
    load_profiles([good, broken], cache=ProfileCache(tmp_path, variant="max_papers=10"))
    other = load_profiles([good, broken], default_max_papers=4,
                          cache=ProfileCache(tmp_path, variant="max_papers=4"))
    assert other.profiles[0].max_papers == 4
    assert [e.path for e in other.errors] == [broken]
    assert parses == [good, broken, good, broken]


def test_an_unusable_cache_changes_nothing(tmp_path, write_profile: ProfileWriter, caplog):
    path = write_profile("ana", interests=["retrieval"])
    _settle(path)
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database" * 100)
    with caplog.at_level(logging.WARNING):
        loaded = load_profiles([path], cache=ProfileCache(tmp_path))
    assert [p.subscriber_id for p in loaded.profiles] == ["ana"] and not loaded.errors
    assert "profiles.cache_unusable" in caplog.text


def test_a_removed_profile_is_an_error_not_a_cached_ghost(tmp_path,
                                                         write_profile: ProfileWriter):
    path = write_profile("ana", interests=["retrieval"])
    _settle(path)
    load_profiles([path], cache=ProfileCache(tmp_path))
    path.unlink()
    loaded = load_profiles([path], cache=ProfileCache(tmp_path))
    assert not loaded.profiles and "no such file" in str(loaded.errors[0])
