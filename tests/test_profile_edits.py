"""Profile edits from the CLI and the web app keep people's files: five different edits of
one commented file leave every line byte-identical but the edited ones."""

from __future__ import annotations

import difflib
import json

from digest.profiles import load_profile, set_feedback, set_field, set_interests

ORIGINAL = """\
# Ana's profile -- hand-written, please keep my notes!
name: Ana Lima          # as the email greets me
email: ana@example.org
timezone: Europe/Lisbon
schedule: weekdays 08:00

max_papers: 8   # a short list
interests:
  - dense retrieval     # main topic
  - text: long context  # second
    weight: 2
keywords:
  mute: [crypto]
liked:
  # papers I loved
  - "2209.11755"
disliked: []
"""


def _changed(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines())
            if line[:2] in ("- ", "+ ")]


def test_five_edits_change_only_the_edited_lines(write_profile):
    path = write_profile("ana", text=ORIGINAL)
    steps = [
        (lambda: set_feedback(path, "2401.00001", liked=True), ['+   - "2401.00001"']),
        (lambda: set_feedback(path, "Some Dull Paper", liked=False),
         ['- disliked: []', '+ disliked:', '+   - "Some Dull Paper"']),
        (lambda: set_field(path, "max_papers", 12),
         ["- max_papers: 8   # a short list", "+ max_papers: 12  # a short list"]),
        (lambda: set_field(path, "keywords.mute", ["crypto", "blockchain"]),
         ["-   mute: [crypto]", "+   mute: [crypto, blockchain]"]),
        (lambda: set_field(path, "active", False), ["+ active: false"]),
    ]
    for edit, expected in steps:
        before = path.read_text(encoding="utf-8")
        edit()
        assert _changed(before, path.read_text(encoding="utf-8")) == expected
    profile = load_profile(path)
    assert (profile.max_papers, profile.mute, profile.active) == (
        12, ("crypto", "blockchain"), False)
    assert profile.liked == ("2209.11755", "2401.00001")


def test_interests_edit_keeps_kept_entries_with_their_comments(write_profile):
    path = write_profile("ana", text=ORIGINAL)
    set_interests(path, ["long context", "sparse retrieval"])
    changed = _changed(ORIGINAL, path.read_text(encoding="utf-8"))
    assert changed == ["-   - dense retrieval     # main topic", "+   - sparse retrieval"]


def test_profile_set_new_and_schema_commands(run_cli, config_file, tmp_path):
    made = run_cli("-c", config_file, "profile", "new", "zoe@example.org", "--name", "Zoë",
                   "--interest", "graph neural networks", "--timezone", "Asia/Tokyo")
    assert made.exit_code == 0, made.output
    path = tmp_path / "profiles" / "zoe.yaml"
    assert load_profile(path).timezone == "Asia/Tokyo"
    again = run_cli("-c", config_file, "profile", "new", "zoe@example.org", "--name", "Z")
    assert again.exit_code == 1 and "exists already" in again.stderr
    before = path.read_text(encoding="utf-8")
    assert run_cli("-c", config_file, "profile", "set", path, "schedule",
                   "weekly fri 09:00").exit_code == 0
    assert load_profile(path).schedule == "weekly fri 09:00"
    for key, value in (("max_papers", "ten"), ("schedule", "sometimes"), ("colour", "red")):
        before = path.read_text(encoding="utf-8")
        refused = run_cli("-c", config_file, "profile", "set", path, key, value)
        assert refused.exit_code == 1 and key in refused.stderr
        assert path.read_text(encoding="utf-8") == before
    schema = run_cli("profile", "schema")
    document = json.loads(schema.stdout)
    assert {"name", "email", "interests", "liked"} <= set(document["properties"])
    assert document["required"] == ["name", "email"]
