"""The inbox folder: complete files are ingested and moved; half-written ones wait."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta

from digest.ingest.inbox import InboxWatcher

from .conftest import NOW


def _age(path, seconds_before_now):
    stamp = (NOW - timedelta(seconds=seconds_before_now)).timestamp()
    os.utime(path, (stamp, stamp))


def test_a_file_is_read_once_it_stops_changing(tmp_path, store, seeds):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watcher = InboxWatcher(inbox, settle_s=2)
    dropped = inbox / "today.txt"
    shutil.copy(seeds[0], dropped)
    _age(dropped, 10)

    assert watcher.process(store, NOW) == []  # first look: not yet known to be complete
    with dropped.open("a") as handle:  # still being written
        handle.write("\n\nAnother Title\n")
    _age(dropped, 1)
    assert watcher.process(store, NOW) == []  # changed since the last look
    assert watcher.process(store, NOW) == []  # unchanged, but touched a second ago
    [done] = watcher.process(store, NOW + timedelta(seconds=5))

    assert done.path == inbox / "processed" / "today.txt" and done.path.is_file()
    assert not dropped.exists() and done.new_papers == 47 and done.rejected is None


def test_a_bad_file_goes_to_rejected_with_its_reason(tmp_path, store):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "junk.txt").write_bytes(b"\x00\x01\x02junk")
    (inbox / "empty.txt").write_text("")
    (inbox / "note.txt").write_text("hello this is not a digest\n\nsee you tomorrow\n")
    (inbox / ".hidden.txt").write_text("ignored")
    (inbox / "partial.txt.part").write_text("ignored")
    watcher = InboxWatcher(inbox, settle_s=0)
    done = watcher.process(store, NOW, wait=False)

    not_a_digest = ("not a digest file: no date line (like 'Mar 11') and no title followed by "
                    "its abstract")
    assert sorted(d.rejected for d in done) == ["empty file, no papers in it", not_a_digest,
                                                "not a text file (binary data)"]
    rejected = inbox / "rejected"
    assert (rejected / "junk.txt.reason").read_text() == "not a text file (binary data)\n"
    assert (rejected / "note.txt.reason").read_text() == not_a_digest + "\n"
    assert (rejected / "empty.txt").exists()
    assert store.papers() == []  # the note's lines are not stored as titles
    assert (inbox / ".hidden.txt").exists() and (inbox / "partial.txt.part").exists()


def test_the_same_name_twice_is_kept_twice(tmp_path, store, seeds):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    watcher = InboxWatcher(inbox, settle_s=0)
    for _ in range(2):
        shutil.copy(seeds[1], inbox / "daily.txt")
        watcher.process(store, NOW, wait=False)
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["daily.1.txt",
                                                                      "daily.txt"]
