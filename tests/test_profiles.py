"""Profiles: what loads, and errors that name file, line and field."""

from __future__ import annotations

import re

import pytest

from digest.errors import ProfileError
from digest.identity import check_email
from digest.models import Interest, Paper
from digest.profiles import (
    MAX_AUTHORS,
    MAX_INTERESTS,
    MAX_PAPER_REFERENCES,
    MAX_PROFILE_BYTES,
    MAX_ROSTER_ROWS,
    MAX_TERMS,
    check_profile_text,
    load_profile,
    load_profiles,
    nearest_papers,
    parse_roster_text,
    set_fields,
)

from .hostile import HOSTILE_PROFILES, write_hostile_profiles

FULL = """\
# a comment
name: Ana Lima
email: ana@example.org
timezone: Europe/Lisbon
schedule: weekly mon 07:00
max_papers: 8
interests:
  - dense retrieval
  - text: reranking
    weight: 2
keywords:
  require: [retrieval]
  mute: [blockchain]
avoid: [robotics]
authors: [Zhuyun Dai]
liked: ["2209.11755", "Some Title"]
disliked: [Another Title]
active: false
"""


def test_every_field_is_read(write_profile):
    profile = load_profile(write_profile("ana", text=FULL))
    assert profile.subscriber_id == "ana"
    assert (profile.name, profile.email, profile.timezone) == ("Ana Lima", "ana@example.org",
                                                               "Europe/Lisbon")
    assert profile.schedule == "weekly mon 07:00" and profile.max_papers == 8
    assert profile.interests == (Interest("dense retrieval"), Interest("reranking", 2.0))
    assert (profile.require, profile.mute, profile.avoid) == (("retrieval",), ("blockchain",),
                                                              ("robotics",))
    assert profile.authors == ("Zhuyun Dai",)
    assert profile.liked == ("2209.11755", "Some Title") and profile.disliked == ("Another Title",)
    assert profile.active is False


def test_minimal_profile_gets_defaults(write_profile):
    profile = load_profile(write_profile("bo", text="name: Bo\nemail: bo@example.org\n"))
    assert (profile.timezone, profile.schedule, profile.max_papers, profile.active) == (
        "UTC", "daily 07:00", 10, True)


@pytest.mark.parametrize(("text", "expected"), [
    ("name: Bo\nemail: bo@example.org\nmax_papers: ten\n",
     ":3: max_papers: Input should be a valid integer"),
    ("name: Bo\nemail: bo@example.org\ninterests:\n  - a\n  - text: b\n    weight: high\n",
     ":6: interests[1].weight: Input should be a valid number"),
    ("name: Bo\nemail: bo@example.org\nintrests: [a]\n",
     ":3: intrests: unknown field; did you mean `interests`?"),
    ("name: [Bo\nemail: bo@example.org\n", ":2: not valid YAML"),
    ("email: bo@example.org\n", ":1: name: required field is missing"),
    ("name: Bo\nemail: bo.example.org\n", ":2: email: 'bo.example.org' is not an email"),
    ("name: Bo\nemail: bo@example.org\ntimezone: Mars/Base\n", ":3: timezone: unknown time zone"),
    ("name: Bo\nemail: bo@example.org\nschedule: sometimes\n", ":3: schedule: bad schedule"),
    ("name: Bo\nemail: bo@example.org\nactive: maybe\n", ":3: active: Input should be a valid"),
    ("- just\n- a list\n", ":1: a profile is a mapping"),
    ("", "empty profile"),
])
def test_errors_name_file_line_and_field(write_profile, text, expected):
    path = write_profile("bo", text=text)
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert str(caught.value).startswith(str(path))
    assert expected in str(caught.value)


def test_a_broken_profile_is_reported_and_the_others_load(write_profile, tmp_path):
    good = write_profile("ana")
    bad = write_profile("bo", text="name: Bo\nemail: [\n")
    missing = tmp_path / "nobody.yaml"
    result = load_profiles([good, bad, missing, tmp_path])
    assert [p.subscriber_id for p in result.profiles] == ["ana"]
    assert [e.path for e in result.errors] == [bad, missing, tmp_path]


@pytest.mark.parametrize("address", [
    "no-at-sign", "two\r\n@example.org", "a b@example.org", "x" * 65 + "@example.org",
    "a@" + "b" * 250 + ".org", "jöhn@example.org", "@example.org", "a@", "a@exa mple.org",
    "a..b@example.org", "<a>@example.org",
])
def test_addresses_digest_cannot_send_to_are_refused(address):
    with pytest.raises(ValueError):
        check_email(address)


@pytest.mark.parametrize("address", ["a@example.org", "first.last+tag@sub.example.co.uk",
                                     "a@bücher.example", "root@localhost"])
def test_ordinary_addresses_are_accepted(address):
    assert check_email(address) == address


def test_an_id_field_overrides_the_file_name(write_profile):
    profile = load_profile(write_profile("ana-lima-2026", id="ana"))
    assert profile.subscriber_id == "ana"
    assert profile.path.name == "ana-lima-2026.yaml"


def test_an_invalid_id_field_is_refused(write_profile):
    path = write_profile("ana", id="ana lima")
    with pytest.raises(ProfileError, match=r":\d+: id: String should match pattern"):
        load_profile(path)


def _awkward_names(tmp_path):
    body = "name: {0}\nemail: {1}@example.org\n"
    spaced = tmp_path / "Ana Smith.yaml"
    spaced.write_text(body.format("Ana Smith", "ana"), encoding="utf-8")
    same = []
    for folder, who in (("team-a", "bo"), ("team-b", "cy")):
        (tmp_path / folder).mkdir()
        same.append(tmp_path / folder / "profile.yaml")
        same[-1].write_text(body.format(who.title(), who), encoding="utf-8")
    return spaced, same


def test_any_file_names_will_do_for_ranking(tmp_path):
    spaced, same = _awkward_names(tmp_path)
    loaded = load_profiles([spaced, *same], for_sending=False)
    assert loaded.errors == ()
    assert [p.name for p in loaded.profiles] == ["Ana Smith", "Bo", "Cy"]
    assert [p.path for p in loaded.profiles] == [spaced, *same]


def test_for_sending_file_names_must_be_valid_and_distinct_ids(tmp_path):
    spaced, same = _awkward_names(tmp_path)
    loaded = load_profiles([spaced, *same])
    assert [p.path for p in loaded.profiles] == [same[0]]
    assert [e.path for e in loaded.errors] == [spaced, same[1]]
    spaced_error, same_error = (str(e) for e in loaded.errors)
    assert spaced_error.startswith(f"{spaced}: the file name is the subscriber id")
    assert "(or set `id:` in the file)" in spaced_error
    assert same_error == f"{same[1]}: same subscriber id 'profile' as {same[0]}"


def test_an_id_field_lets_same_named_files_be_sent(tmp_path):
    _spaced, same = _awkward_names(tmp_path)
    for path, new_id in zip(same, ("bo", "cy"), strict=True):
        path.write_text(path.read_text(encoding="utf-8") + f"id: {new_id}\n", encoding="utf-8")
    loaded = load_profiles(same)
    assert loaded.errors == ()
    assert [p.subscriber_id for p in loaded.profiles] == ["bo", "cy"]


def test_empty_lists_written_as_nothing_are_empty(write_profile):
    path = write_profile("ana", text="name: Ana\nemail: ana@example.org\nliked:\ndisliked:\n"
                                     "keywords:\n  mute:\n")
    profile = load_profile(path)
    assert profile.liked == () and profile.disliked == () and profile.mute == ()


def test_hostile_files_are_refused_and_the_others_load(tmp_path, write_profile):
    """Each costs a bounded read and parse: no alias expansion, no reading a device or
    waiting on a FIFO, no recursion into deep nesting (which crashed the C loader)."""
    good = write_profile("ana", interests=["dense retrieval"])
    hostile = write_hostile_profiles(tmp_path / "profiles")
    loaded = load_profiles([good, *hostile])
    assert [p.subscriber_id for p in loaded.profiles] == ["ana"]
    errors = {error.path.stem: str(error) for error in loaded.errors}
    assert set(errors) == set(HOSTILE_PROFILES)
    for name, pattern in HOSTILE_PROFILES.items():
        assert re.fullmatch(re.escape(str(tmp_path / "profiles" / f"{name}.yaml")) + pattern + ".*",
                            errors[name]), errors[name]


def test_aliases_within_the_bound_are_fine(write_profile):
    path = write_profile("ana", text="name: Ana\nemail: ana@example.org\n"
                                     "avoid: &shared [robotics, blockchain]\n"
                                     "keywords:\n  mute: *shared\n")
    assert load_profile(path).mute == ("robotics", "blockchain")


def test_a_profile_at_every_limit_loads(write_profile):
    """The documented limits are allowed, not just the common case."""
    lines = ["name: Full", "email: full@example.org", "interests:"]
    lines += [f"  - {{text: topic {i}, weight: 2}}" for i in range(MAX_INTERESTS)]
    lines += ["avoid:"] + [f"  - avoided {i}" for i in range(MAX_TERMS)]
    lines += ["authors:"] + [f"  - Author Number {i}" for i in range(MAX_AUTHORS)]
    for field in ("liked", "disliked"):
        lines += [f"{field}:"] + [f'  - "A {field} paper title number {i}"'
                                  for i in range(MAX_PAPER_REFERENCES)]
    path = write_profile("full", text="\n".join(lines) + "\n")
    assert path.stat().st_size < MAX_PROFILE_BYTES
    profile = load_profile(path)
    assert len(profile.interests) == MAX_INTERESTS and len(profile.liked) == MAX_PAPER_REFERENCES


# --- every problem, and the nearest right word ------------------------------------------


@pytest.mark.parametrize(("line", "expected"), [
    ("intrests: [a]", "intrests: unknown field; did you mean `interests`?"),
    ("Email2: x", "Email2: unknown field; did you mean `email`?"),
    ("colour: red", "colour: unknown field (the fields here: id, name, email, timezone, "
                    "schedule, max_papers, interests, keywords, avoid, authors, liked, "
                    "disliked, active, min_score, when_nothing, ask_ratings)"),
    ("require: [a]", "require: unknown field; did you mean `keywords.require`?"),
    ("keywords: {mutte: [a]}", "keywords.mutte: unknown field; did you mean `mute`?"),
    ("interests: [{text: a, wieght: 2}]", "interests[0].wieght: unknown field; did you mean "
                                          "`weight`?"),
    ("when_nothing: notes", "when_nothing: Input should be 'skip' or 'note'; did you mean "
                            "`note`?"),
    ("when_nothing: always", "when_nothing: Input should be 'skip' or 'note'"),
    ("active: yes", "active: Input should be a valid boolean (true or false)"),
    ("schedule: daly 07:00", "schedule: bad schedule 'daly 07:00'; did you mean `daily 07:00`?"),
    ("schedule: weekdays at 7.30 pm", "did you mean `weekdays 19:30`?"),
    ("schedule: weekly thrusday 08:00", "did you mean `weekly thursday 08:00`?"),
    ("schedule: daily", "did you mean `daily 07:00`?"),
    ("schedule: weekends 07:00", "schedule: bad schedule 'weekends 07:00': expected"),
    ("schedule: 0 7 * * 8", "schedule: bad schedule '0 7 * * 8': day of week"),
    ("timezone: europe/lisbn", "timezone: unknown time zone 'europe/lisbn'; did you mean "
                               "`Europe/Lisbon`?"),
    ("timezone: New York", "did you mean `America/New_York`?"),
    ("timezone: Sao Paolo", "did you mean `America/Sao_Paulo`?"),
    ("timezone: UTC+2", "timezone: unknown time zone 'UTC+2': an offset is not a zone; use the "
                        "zone of a city (Europe/Berlin), which follows its summer time"),
    ("timezone: CEST", "timezone: unknown time zone 'CEST' (use an IANA name like "
                       "Europe/Lisbon)"),
    ("timezone: Mars/Olympus", "timezone: unknown time zone 'Mars/Olympus' (use an IANA name"),
])
def test_each_problem_says_the_nearest_right_word(tmp_path, line, expected):
    path = tmp_path / "bo.yaml"
    check = check_profile_text(f"name: Bo\nemail: bo@example.org\n{line}\n", path)
    assert check.profile is None and len(check.problems) == 1
    problem = str(check.problems[0])
    assert problem.startswith(f"{path}:3: ") and expected in problem, problem


def test_every_problem_comes_back_in_line_order(tmp_path):
    path = tmp_path / "bo.yaml"
    text = ("email: bo@example\nmax_papers: 0\ninterests:\n  - ok\n  - {weight: high, x: 1}\n"
            "  - ''\nwhen_nothing: skp\nnamee: Bo\n")
    check = check_profile_text(text, path)
    assert [(p.line, p.field) for p in check.problems] == [
        (1, "name"), (2, "max_papers"), (5, "interests[1].text"), (5, "interests[1].weight"),
        (5, "interests[1].x"), (6, "interests[2]"), (7, "when_nothing"), (8, "namee")]
    # Loading (for a send, the daemon, status) keeps one line: the first, and a count.
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ProfileError) as caught:
        load_profile(path)
    assert str(caught.value) == (f"{path}:1: name: required field is missing (and 7 more "
                                 "problems: `digest profile validate` lists them)")
    assert caught.value.field == "name" and caught.value.line == 1
    path.write_text("name: Bo\nemail: bo@example.org\nmax_papers: 0\navoid: 3\n",
                    encoding="utf-8")
    with pytest.raises(ProfileError, match=r"\(and 1 more problem: "):
        load_profile(path)


def test_a_good_profile_has_no_problems(tmp_path):
    check = check_profile_text(FULL, tmp_path / "ana.yaml")
    assert check.problems == () and check.profile is not None
    assert check.profile == load_profile(_written(tmp_path / "ana.yaml", FULL))


def _written(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_the_web_pages_get_the_same_words(write_profile):
    """`set_fields` (the interests page) says what `digest profile validate` says."""
    path = write_profile("ana", text=FULL)
    edit = set_fields(path, {"timezone": "Europe/Lisbn", "schedule": "daly 07:00"})
    assert {p.field: p.message for p in edit.problems} == {
        "timezone": "unknown time zone 'Europe/Lisbn'; did you mean `Europe/Lisbon`?",
        "schedule": "bad schedule 'daly 07:00'; did you mean `daily 07:00`?"}
    with pytest.raises(ProfileError, match="max_paper: unknown field; did you mean "
                                           "`max_papers`"):
        set_fields(path, {"max_paper": 5})


def _paper(title, arxiv_id=None):
    from datetime import UTC, datetime

    return Paper(key=arxiv_id or title.lower(), title=title, abstract="",
                 first_seen=datetime(2026, 1, 1, tzinfo=UTC), arxiv_id=arxiv_id)


PAPERS = [_paper("Promptagator: Few-shot Dense Retrieval From 8 Examples", "2209.11755"),
          _paper("Dense Passage Retrieval for Open-Domain Question Answering"),
          _paper("Dense X Retrieval: What Retrieval Granularity Should We Use?"),
          _paper("Attention Is All You Need", "1706.03762")]


@pytest.mark.parametrize(("reference", "titles"), [
    ("promptagator few shot dense retreival", [PAPERS[0].title]),
    ("Promptagator", [PAPERS[0].title]),  # a title cut short
    ("Dense Passage Retrieval for Open Domain QA", [PAPERS[1].title]),
    ("2209.11775", [PAPERS[0].title]),  # two digits swapped
    ("1706.03762v9", []),  # an id that is right is found, not suggested; this one is stored
    ("2401.00001", []),
    ("Quantum gravity of cats", []),
    ("", []),
])
def test_nearest_papers(reference, titles):
    found = [p.title for p in nearest_papers(reference, PAPERS)]
    if reference.startswith("1706"):
        assert found == [PAPERS[3].title]
    else:
        assert found == titles


def test_nearest_papers_gives_at_most_three():
    papers = [_paper(f"Dense Retrieval Study {n}") for n in range(10)]
    assert len(nearest_papers("dense retrieval study", papers)) == 3


def test_a_roster_parses_with_the_line_of_each_row():
    text = ('name,email,interests\n\nAna,ana@x.org,"a;\nb"\nBo,bo@x.org,c; d ;\n'
            "Cy,cy@x.org,e\nDee,dee@x.org,f\n")
    parsed = parse_roster_text(text, "lab.csv", max_rows=3)
    assert [(r.line, r.name, r.interests) for r in parsed.rows] == [
        (3, "Ana", ("a", "b")), (5, "Bo", ("c", "d")), (6, "Cy", ("e",))]
    assert [str(p) for p in parsed.problems] == [
        "lab.csv:7: more than 3 rows: this one and those after it are not read (see "
        "docs/limits.md)"]
    assert MAX_ROSTER_ROWS == 10_000


@pytest.mark.parametrize("text", ["", "\x00\x01", "a,b\n\"unclosed", "name,email,interests\n"
                                  + "x," * 5000, "\ufeffname,email,interests\n\r\n\r"])
def test_a_roster_parse_never_raises(text):
    parse_roster_text(text, "lab.csv")
