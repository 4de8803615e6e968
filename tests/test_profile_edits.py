"""Profile edits from the CLI and the web app keep people's files: five different edits of
one commented file leave every line byte-identical but the edited ones."""

from __future__ import annotations

import difflib
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.errors import ProfileError
from digest.profiles import (
    FieldsEdit,
    load_profile,
    read_value,
    remove_feedback,
    set_feedback,
    set_field,
    set_fields,
    set_interests,
)

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


# Many fields at once (the interests page), undo of feedback, lists that keep comments -----

def test_set_fields_is_one_edit_of_only_the_changed_lines(write_profile):
    path = write_profile("ana", text=ORIGINAL)
    edit = set_fields(path, {
        "interests": ["dense retrieval", {"text": "long context", "weight": 3},
                      {"text": "sparse retrieval", "weight": 1}],
        "keywords.mute": ["crypto", "blockchain"],
        "keywords.require": [],  # absent and empty: nothing to write
        "avoid": ["robotics"],
        "authors": [],
        "schedule": "weekdays 08:00",  # as it was
        "timezone": "Europe/Lisbon",
        "max_papers": 12,
    })
    assert edit == FieldsEdit(changed=("interests", "keywords.mute", "avoid", "max_papers"))
    assert _changed(ORIGINAL, path.read_text(encoding="utf-8")) == [
        "- max_papers: 8   # a short list", "+ max_papers: 12  # a short list",
        "-     weight: 2", "+     weight: 3", "+   - sparse retrieval",
        "-   mute: [crypto]", "+   mute: [crypto, blockchain]",
        "+ avoid:", "+   - robotics"]
    profile = load_profile(path)
    assert [(i.text, i.weight) for i in profile.interests] == [
        ("dense retrieval", 1.0), ("long context", 3.0), ("sparse retrieval", 1.0)]


def test_set_fields_with_nothing_new_does_not_rewrite_the_file(write_profile):
    path = write_profile("ana", text=ORIGINAL)
    inode = path.stat().st_ino
    edit = set_fields(path, {"interests": ["dense retrieval",
                                           {"text": "long context", "weight": 2.0}],
                             "max_papers": 8, "schedule": "weekdays 08:00", "avoid": [],
                             "keywords.mute": ["crypto"], "authors": []})
    assert edit == FieldsEdit()
    assert path.read_text(encoding="utf-8") == ORIGINAL and path.stat().st_ino == inode


def test_none_removes_a_field_and_keeps_the_comment_lines_after_it(write_profile):
    path = write_profile("ana", text=ORIGINAL.replace("max_papers: 8   # a short list\n",
                                                      "max_papers: 8   # a short list\n"
                                                      "# what I read\n"))
    before = path.read_text(encoding="utf-8")
    assert set_fields(path, {"max_papers": None}).changed == ("max_papers",)
    assert _changed(before, path.read_text(encoding="utf-8")) == [
        "- max_papers: 8   # a short list"]
    assert load_profile(path, default_max_papers=10).max_papers == 10


def test_set_fields_refuses_invalid_values_naming_each_field_as_the_cli_does(
        write_profile, run_cli, config_file):
    path = write_profile("ana", text=ORIGINAL)
    edit = set_fields(path, {
        "interests": ["dense retrieval", {"text": "long context", "weight": 200},
                      {"text": "x", "weight": "heavy"}, "y" * 501],
        "authors": ["Ada", ""],
        "schedule": "sometimes",
        "timezone": "Mars/Olympus",
        "max_papers": 31,
    })
    assert edit.changed == ()
    problems = {p.field: p.message for p in edit.problems}
    assert set(problems) == {"interests[1].weight", "interests[2].weight", "interests[3]",
                             "authors[1]", "schedule", "timezone", "max_papers"}
    assert path.read_text(encoding="utf-8") == ORIGINAL
    # The same value through `digest profile set` is refused with the same words.
    for key, value, field in (("schedule", "sometimes", "schedule"),
                              ("timezone", "Mars/Olympus", "timezone"),
                              ("max_papers", "31", "max_papers"),
                              ("authors", '[Ada, ""]', "authors[1]"),
                              ("interests", "[{text: a, weight: 200}]", "interests[1].weight")):
        refused = run_cli("-c", config_file, "profile", "set", path, key, value)
        assert refused.exit_code == 1
        assert f"{field.split('[')[0]}" in refused.stderr
        assert problems[field] in refused.stderr, (field, refused.stderr)


def test_set_fields_unknown_key_is_an_error(write_profile):
    path = write_profile("ana", text=ORIGINAL)
    with pytest.raises(ProfileError, match="colour: unknown field"):
        set_fields(path, {"colour": "red"})


def test_read_value_reads_text_as_profile_set_does():
    assert [read_value(t) for t in ("15", "2.5", "false", "[a, b]", "", "ten", "[oops")] == [
        15, 2.5, False, ["a", "b"], "", "ten", "[oops"]


COMMENTED_LIST = """\
name: Ana
email: ana@example.org
liked:   # my list
  # papers I loved
  - "x"   # first
  - "y"

  # from March
  - "z"
  # kept after the list
disliked: []
"""


@pytest.mark.parametrize("entries, expected", [
    (["x"], ['-   - "x"   # first']),
    (["y"], ['-   - "y"']),
    (["z"], ['-   - "z"']),
    (["x", "y", "z"], ['- liked:   # my list', '+ liked: [] # my list', '-   - "x"   # first',
                       '-   - "y"', '-   - "z"']),
])
def test_undo_of_feedback_keeps_every_comment(write_profile, entries, expected):
    path = write_profile("ana", text=COMMENTED_LIST)
    for entry in entries:
        assert remove_feedback(path, entry, liked=True)
    text = path.read_text(encoding="utf-8")
    assert _changed(COMMENTED_LIST, text) == expected
    assert load_profile(path).liked == tuple(e for e in "xyz" if e not in entries)
    assert not remove_feedback(path, entries[0], liked=True)  # not there any more
    assert path.read_text(encoding="utf-8") == text


def test_moving_the_only_entry_of_a_commented_list_keeps_the_file_valid(write_profile):
    """Emptied, a block list with a comment above its item used to be written as invalid
    YAML (`[]` after the comment), and the edit refused."""
    path = write_profile("ana", text="name: Ana\nemail: ana@example.org\ndisliked:\n"
                                     "  # not for me\n  - \"2401.00001\"\nliked: []\n")
    assert set_feedback(path, "2401.00001", liked=True) == (
        "added to liked, removed from disliked")
    profile = load_profile(path)
    assert (profile.liked, profile.disliked) == (("2401.00001",), ())
    assert "# not for me" in path.read_text(encoding="utf-8")


def test_interests_edit_keeps_the_comments_of_plain_entries_that_stay(write_profile):
    text = ("name: Ana\nemail: ana@example.org\ninterests:\n  - a  # first\n  - b  # second\n"
            "# papers\nliked: []\n")
    path = write_profile("ana", text=text)
    set_interests(path, ["a", "b", "c"])
    assert _changed(text, path.read_text(encoding="utf-8")) == ["+   - c"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.booleans(), min_size=1, max_size=6), st.data())
def test_removing_any_entries_keeps_every_comment_and_the_rest(write_profile, keep, data):
    """Any entries of a list with comments on, between and after its items taken out: the
    file still loads, the other entries stay in order, and the only comments gone are those
    on the removed entries' own lines."""
    lines = ["name: Ana", "email: ana@example.org", "liked:   # the list", "  # heading"]
    gone = []
    for index, kept in enumerate(keep):
        note = data.draw(st.sampled_from(["", "   # on it", "\n  # between", "\n\n  # gap"]),
                         label=f"comment {index}")
        lines.append(f'  - "p{index}"{note}')
        if not kept and note.startswith(" "):
            gone.append("# on it")
    lines += ["  # after the list", "disliked: []", "# the end", ""]
    original = "\n".join(lines)
    path = write_profile("ana", text=original)
    for index, kept in enumerate(keep):
        if not kept:
            assert remove_feedback(path, f"p{index}", liked=True)
    text = path.read_text(encoding="utf-8")
    assert load_profile(path).liked == tuple(f"p{i}" for i, k in enumerate(keep) if k)
    comments = sorted(c.strip() for c in re.findall(r"#[^\n]*", original))
    for comment in gone:
        comments.remove(comment)
    assert sorted(c.strip() for c in re.findall(r"#[^\n]*", text)) == comments
