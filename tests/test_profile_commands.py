"""The `digest profile ...` commands and `digest init` as a newcomer meets them: every
problem of every file at once, the nearest right word, no silent edits, a roster in one go."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from digest.models import PaperEntry
from digest.profiles import (
    MAX_ROSTER_BYTES,
    PROFILE_TEMPLATE,
    load_profile,
)

from .conftest import NOW

TYPOS = """\
name: Bo
email: bo@example.org
interets: [dense retrieval]
timezone: Europe/Lisbn
schedule: daily 7:00am
when_nothing: skp
"""


def _comments(text: str) -> list[str]:
    """A YAML file's comments, in order, as written."""
    return [line[line.index("#"):] for line in text.splitlines() if "#" in line]


# --- validate -------------------------------------------------------------------------


def test_validate_lists_every_problem_of_every_file(run_cli, config_file, write_profile):
    ok = write_profile("ana", interests=["dense retrieval"])
    bo = write_profile("bo", text=TYPOS)
    cy = write_profile("cy", text="name: Cy\nemail: cy@example.org\nkeywords:\n  mutee: [x]\n"
                                  "mute: [y]\nactive: yes\n")
    result = run_cli("-c", config_file, "profile", "validate")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{bo}:3: interets: unknown field; did you mean `interests`?",
        f"{bo}:4: timezone: unknown time zone 'Europe/Lisbn'; did you mean `Europe/Lisbon`?",
        f"{bo}:5: schedule: bad schedule 'daily 7:00am'; did you mean `daily 07:00`?",
        f"{bo}:6: when_nothing: Input should be 'skip' or 'note'; did you mean `skip`?",
        f"{cy}:4: keywords.mutee: unknown field; did you mean `mute`?",
        f"{cy}:5: mute: unknown field; did you mean `keywords.mute`? (require and mute go "
        "under `keywords:`)",
        f"{cy}:6: active: Input should be a valid boolean (true or false)",
    ]
    assert result.stdout.splitlines() == [
        f"{ok}: ok (Ana <ana@example.org>, daily 07:00 UTC)",
        "3 files, 7 problems (in 2 files; 1 ok).",
    ]


@pytest.mark.parametrize(("texts", "summary", "status"), [
    ({"ana": None}, "1 file, no problems.", 0),
    ({"ana": None, "bo": None}, "2 files, no problems.", 0),
    ({"bo": "name: Bo\nemail: bo@example.org\nmax_papers: 31\n"}, "1 file, 1 problem.", 1),
    ({"ana": None, "bo": "name: Bo\nemail: nope\n"}, "2 files, 1 problem (in 1 file; 1 ok).", 1),
])
def test_validate_counts_files_and_problems_in_words(run_cli, write_profile, texts, summary,
                                                     status):
    paths = [write_profile(name, text=text) for name, text in texts.items()]
    result = run_cli("profile", "validate", *paths)
    assert result.exit_code == status, result.output
    assert result.stdout.splitlines()[-1] == summary


def test_validate_reports_file_names_and_shared_ids_too(run_cli, write_profile, tmp_path):
    write_profile("ana")
    twin = write_profile("ana-copy", text="id: ana\nname: Ana\nemail: ana@example.org\n")
    spaced = tmp_path / "profiles" / "Ana Smith.yaml"
    spaced.write_text("name: Ana\nemail: a@example.org\ntimezone: Lisbon\n", encoding="utf-8")
    result = run_cli("profile", "validate", tmp_path / "profiles" / "ana.yaml", twin, spaced)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{twin}: same subscriber id 'ana' as {tmp_path / 'profiles' / 'ana.yaml'}",
        f"{spaced}: the file name is the subscriber id, so it must be letters, digits, '.', "
        "'_' or '-' (or set `id:` in the file)",
        f"{spaced}:3: timezone: unknown time zone 'Lisbon'; did you mean `Europe/Lisbon`?",
    ]


def test_validate_an_empty_folder_says_how_to_make_a_profile(run_cli, config_file):
    result = run_cli("-c", config_file, "profile", "validate")
    assert result.exit_code == 0
    assert "`digest profile new ADDRESS --name NAME` writes one" in result.stdout


def test_sending_keeps_one_line_per_broken_profile(run_cli, config_file, write_profile, seeds):
    bo = write_profile("bo", text=TYPOS)
    run_cli("-c", config_file, "ingest", *seeds)
    result = run_cli("-c", config_file, "send", "--dry-run")
    assert [line for line in result.stderr.splitlines() if "bo.yaml" in line] == [
        f"{bo}:3: interets: unknown field; did you mean `interests`? (and 3 more problems: "
        "`digest profile validate` lists them)"]


# --- like and dislike -----------------------------------------------------------------

PROMPTAGATOR = "Promptagator: Few-shot Dense Retrieval From 8 Examples"


@pytest.fixture
def stored(run_cli, store, seeds, tmp_path):
    """The seed papers in the test store, through `digest ingest`; the CLI options that
    reach it."""
    options = ["--data-dir", tmp_path / "d"]
    assert run_cli(*options, "ingest", *seeds).exit_code == 0
    return options


def test_like_a_misspelled_title_suggests_and_changes_nothing(run_cli, stored, write_profile):
    path = write_profile("ana", interests=["dense retrieval"])
    before = path.read_bytes()
    result = run_cli(*stored, "profile", "like", path, "Promptagator: few shot dense retreival",
                     "Promptagator")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "'Promptagator: few shot dense retreival' matches no stored paper; the nearest:",
        f'  "{PROMPTAGATOR}"',
        "'Promptagator' matches no stored paper; the nearest:",
        f'  "{PROMPTAGATOR}"',
        f"digest: error: {path} is unchanged: give each paper as stored (its title, arXiv id "
        "or DOI), or add --as-given to record it as written",
    ]
    assert path.read_bytes() == before
    # What it suggests works.
    result = run_cli(*stored, "profile", "like", path, PROMPTAGATOR)
    assert result.exit_code == 0, result.output
    assert load_profile(path).liked == (PROMPTAGATOR,)


def test_one_unknown_paper_stops_the_whole_edit(run_cli, stored, write_profile):
    path = write_profile("ana", liked=[PROMPTAGATOR])
    before = path.read_bytes()
    result = run_cli(*stored, "profile", "dislike", path, PROMPTAGATOR,
                     "Quantum Gravity of Cats")
    assert result.exit_code == 1
    assert "'Quantum Gravity of Cats' matches no stored paper, nor nearly (283 papers stored)." \
        in result.stderr
    assert path.read_bytes() == before


def test_as_given_records_an_unknown_paper_and_says_so(run_cli, stored, write_profile):
    path = write_profile("ana")
    result = run_cli(*stored, "profile", "dislike", "--as-given", path, "Quantum Gravity of Cats")
    assert result.exit_code == 0, result.output
    assert "'Quantum Gravity of Cats' matches no stored paper; recorded as given" in \
        result.stderr
    assert load_profile(path).disliked == ("Quantum Gravity of Cats",)


def test_a_near_arxiv_id_is_suggested(run_cli, store, tmp_path, write_profile):
    store.add_entries([PaperEntry(title="Graph Neural Networks for Molecules", abstract="x",
                                  source="feed", arxiv_id="2401.01234")], NOW)
    path = write_profile("ana")
    result = run_cli("--data-dir", tmp_path, "profile", "like", path, "2401.01243")
    assert result.exit_code == 1
    assert '  "Graph Neural Networks for Molecules"  (arXiv 2401.01234)' in result.stderr


def test_liking_with_nothing_stored_says_to_ingest(run_cli, store, tmp_path, write_profile):
    path = write_profile("ana")
    result = run_cli("--data-dir", tmp_path, "profile", "like", path, PROMPTAGATOR)
    assert result.exit_code == 1
    assert "no papers are stored yet" in result.stderr and "--as-given" in result.stderr
    assert load_profile(path).liked == ()


# --- list -----------------------------------------------------------------------------

LONG_EMAIL = "ana.lima-fernandes@computer-science.university-of-somewhere.example.org"


def _roster_folder(write_profile) -> dict[str, Path]:
    return {
        "ana": write_profile("ana", text=f"name: Ana Lima\nemail: {LONG_EMAIL}\n"
                                         "timezone: Europe/Lisbon\nschedule: daily 07:00\n"),
        "ben": write_profile("ben", text="name: Ben Okafor\nemail: ben@example.org\n"
                                         "timezone: Africa/Lagos\n"
                                         "schedule: weekly mon 09:00\n"),
        "cy": write_profile("cy", text="name: Cy\nemail: cy@example.org\nactive: false\n"),
        "dee": write_profile("dee", text="name: Dee\nemail: dee@example.org\n"
                                         "interets: [a]\ntimezone: Mars/Base\n"),
    }


def test_list_is_a_table_of_80_columns(run_cli, config_file, write_profile):
    paths = _roster_folder(write_profile)
    result = run_cli("-c", config_file, "profile", "list")
    assert result.exit_code == 1  # a profile is broken
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines[:-1]) <= 80  # the last: the count, and the folder
    assert "…" not in result.stdout  # folded, never cut
    header = lines[0].split()
    assert header == ["id", "name", "email", "schedule", "next", "edition", "active"]
    assert re.search(r"^ana +Ana Lima +ana\.lima-", lines[2])
    assert "Europe/Lisbon" in result.stdout and "weekly mon" in result.stdout
    assert re.search(r"^cy +Cy +cy@example\.org +daily 07:00 +paused +no", result.stdout, re.M)
    assert result.stderr.splitlines() == [
        f"broken: {paths['dee']}:3: interets: unknown field; did you mean `interests`? (and 1 "
        "more problem: `digest profile validate` lists them)"]
    assert lines[-1] == (f"4 profiles in {paths['ana'].parent}: 2 active, 1 paused, "
                         "1 broken.")


def test_list_json_gives_each_next_edition_in_local_time(run_cli, config_file, write_profile):
    paths = _roster_folder(write_profile)
    before = datetime.now(UTC)
    result = run_cli("-c", config_file, "profile", "list", "--json")
    after = datetime.now(UTC)
    assert result.exit_code == 1
    rows = {row["file"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert list(rows) == [str(p) for p in paths.values()]
    ana, ben, cy, dee = (rows[str(p)] for p in paths.values())
    assert {k: ana[k] for k in ("id", "name", "email", "schedule", "timezone", "active",
                                "error")} == {
        "id": "ana", "name": "Ana Lima", "email": LONG_EMAIL, "schedule": "daily 07:00",
        "timezone": "Europe/Lisbon", "active": True, "error": None}
    for row, zone, weekday, clock in ((ana, "Europe/Lisbon", None, (7, 0)),
                                      (ben, "Africa/Lagos", 0, (9, 0))):
        local = datetime.fromisoformat(row["next_edition"])
        assert (local.hour, local.minute) == clock
        assert local.utcoffset() == local.replace(tzinfo=ZoneInfo(zone)).utcoffset()
        assert before < local <= after + timedelta(days=1 if weekday is None else 7)
        assert weekday is None or local.weekday() == weekday
    assert cy["active"] is False and cy["next_edition"] is None and cy["error"] is None
    assert dee["id"] is None and dee["error"].startswith(f"{paths['dee']}:3: interets: ")


def test_list_of_an_empty_folder(run_cli, config_file):
    result = run_cli("-c", config_file, "profile", "list")
    assert result.exit_code == 0
    assert "No profiles in" in result.stdout


# --- import-csv -----------------------------------------------------------------------

ROSTER = """\
name,email,interests,schedule,timezone,id
Ana Lima,ana@lab.example,dense retrieval; passage reranking,weekdays 07:30,Europe/Lisbon,
"Okafor, Ben",ben@lab.example,mechanistic interpretability,,,benny
Chen Wei,chen@lab.example,,,,
"""


def test_import_csv_writes_a_commented_profile_per_row_once(run_cli, config_file, tmp_path):
    roster = tmp_path / "lab.csv"
    roster.write_text(ROSTER, encoding="utf-8")
    result = run_cli("-c", config_file, "profile", "import-csv", roster)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "profiles"
    assert result.stdout.splitlines() == [
        f"{folder / 'ana.yaml'}: written", f"{folder / 'benny.yaml'}: written",
        f"{folder / 'chen.yaml'}: written",
        f"{roster}: 3 profiles written, 0 left as they were (a profile exists), 0 rows refused."]
    ana, ben, chen = (load_profile(folder / f"{n}.yaml") for n in ("ana", "benny", "chen"))
    assert (ana.name, ana.email, ana.schedule, ana.timezone) == (
        "Ana Lima", "ana@lab.example", "weekdays 07:30", "Europe/Lisbon")
    assert [i.text for i in ana.interests] == ["dense retrieval", "passage reranking"]
    assert (ben.subscriber_id, ben.name, ben.schedule, ben.timezone) == (
        "benny", "Okafor, Ben", "daily 07:00", "UTC")
    assert chen.interests == () and chen.liked == () and chen.disliked == ()
    template = PROFILE_TEMPLATE.read_text(encoding="utf-8")
    written = {p: p.read_bytes() for p in folder.iterdir()}
    assert _comments((folder / "ana.yaml").read_text(encoding="utf-8")) == _comments(template)

    again = run_cli("-c", config_file, "profile", "import-csv", roster)
    assert again.exit_code == 0, again.output
    assert again.stdout.splitlines() == [
        f"{roster}:2: ana@lab.example: {folder / 'ana.yaml'} has this address already; left "
        "as it is",
        f"{roster}:3: ben@lab.example: {folder / 'benny.yaml'} has this address already; left "
        "as it is",
        f"{roster}:4: chen@lab.example: {folder / 'chen.yaml'} has this address already; left "
        "as it is",
        f"{roster}: 0 profiles written, 3 left as they were (a profile exists), 0 rows refused."]
    assert {p: p.read_bytes() for p in folder.iterdir()} == written


def test_import_csv_reports_bad_rows_by_line_and_writes_the_rest(run_cli, config_file,
                                                                 tmp_path, write_profile):
    existing = write_profile("ada", text="name: Ada\nemail: Ada@Lab.example\n")
    other = write_profile("bo", text="name: Bo\nemail: bo@elsewhere.example\n")
    before = {p: p.read_bytes() for p in (existing, other)}
    roster = tmp_path / "lab.csv"
    roster.write_text(
        "Name, Email ,interests,timezone\n"
        'Fay,fay@lab.example,"graphs;\nmolecules",Europe/Lisbn\n'  # the row spans 2 lines
        "Ada Lovelace,ada@lab.example,engines,\n"
        "Bo Other,bo@lab.example,x,\n"
        "Gil,gil.example,x,\n"
        "Hal,hal@lab.example,too,many,values\n"
        "\n"
        "Ivy,ivy@lab.example,vision,Asia/Tokyo\n"
        "Ivy Again,IVY@lab.example,vision,\n"
        ",jo@lab.example,x,\n", encoding="utf-8")
    result = run_cli("-c", config_file, "profile", "import-csv", roster)
    assert result.exit_code == 1
    folder = tmp_path / "profiles"
    assert result.stdout.splitlines() == [
        f"{folder / 'ivy.yaml'}: written",
        f"{roster}:4: ada@lab.example: {existing} has this address already; left as it is",
        f"{roster}: 1 profile written, 1 left as they were (a profile exists), 6 rows refused."]
    assert result.stderr.splitlines() == [
        f"{roster}:2: timezone: unknown time zone 'Europe/Lisbn'; did you mean "
        "`Europe/Lisbon`?",
        f"{roster}:5: id: 'bo' is {other}'s, a profile for bo@elsewhere.example: give this row "
        "an id",
        f"{roster}:6: email: 'gil.example' is not an email address (expected name@domain)",
        f"{roster}:7: 5 values where the header has 4 (a value that holds a comma needs "
        "double quotes)",
        f"{roster}:10: email: IVY@lab.example is line 9's too; one row per person",
        f"{roster}:11: name: empty",
    ]
    assert {p: p.read_bytes() for p in (existing, other)} == before
    assert sorted(p.name for p in folder.glob("*.yaml")) == ["ada.yaml", "bo.yaml", "ivy.yaml"]


@pytest.mark.parametrize(("text", "reason"), [
    ("name;email;interests\nAna;ana@lab.example;x\n",
     ":1: the header is separated by semicolons; digest reads values separated by commas"),
    ("name,email,interests,timzone\n", ":1: unknown column 'timzone'; did you mean `timezone`?"),
    ("name,email,topics\n", ":1: unknown column 'topics' (the columns: name, email, interests, "
                            "schedule, timezone, id)"),
    ("name,email\n", ":1: no interests column: the header names at least name,email,interests"),
    ("\n\n", ": no header: the first line names the columns"),
])
def test_import_csv_refuses_a_header_it_cannot_use(run_cli, config_file, tmp_path, text,
                                                   reason):
    roster = tmp_path / "lab.csv"
    roster.write_text(text, encoding="utf-8")
    result = run_cli("-c", config_file, "profile", "import-csv", roster)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"digest: error: {roster}{reason}")
    assert not list((tmp_path / "profiles").iterdir())


def test_import_csv_is_bounded(run_cli, config_file, tmp_path):
    big = tmp_path / "big.csv"
    with big.open("w", encoding="utf-8") as handle:
        handle.write("name,email,interests\n")
        handle.write("x" * (MAX_ROSTER_BYTES + 1))
    result = run_cli("-c", config_file, "profile", "import-csv", big)
    assert result.exit_code == 1
    assert f"{big}: larger than 5,120 KiB, too large for a roster" in result.stderr
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    result = run_cli("-c", config_file, "profile", "import-csv", fifo)
    assert result.exit_code == 1 and "is not a regular file" in result.stderr


def test_import_csv_reads_a_windows_export_and_says_so(run_cli, config_file, tmp_path):
    roster = tmp_path / "lab.csv"
    roster.write_bytes("name,email,interests\r\nJosé Saramago,jose@lab.example,novels\r\n"
                       .encode("cp1252"))
    result = run_cli("-c", config_file, "profile", "import-csv", roster)
    assert result.exit_code == 0, result.output
    assert f"{roster}:2: not valid UTF-8; read as Windows-1252" in result.stderr
    assert load_profile(tmp_path / "profiles" / "jose.yaml").name == "José Saramago"


# --- init and new: one template -------------------------------------------------------


def test_init_and_new_write_one_commented_template_with_nothing_liked(run_cli, tmp_path):
    site = tmp_path / "site"
    assert run_cli("init", site).exit_code == 0
    template = PROFILE_TEMPLATE.read_text(encoding="utf-8")
    example = site / "profiles" / "example.yaml"
    assert example.read_text(encoding="utf-8") == template
    assert load_profile(example).liked == () and load_profile(example).disliked == ()
    assert "digest profile like" in template and "More like this" in template

    config = site / "digest.toml"
    result = run_cli("-c", config, "profile", "new", "ana@example.org", "--name", "Ana Lima",
                     "--interest", "dense retrieval", "--interest", "rag: a survey",
                     "--timezone", "Europe/Lisbon", "--schedule", "weekdays 07:30")
    assert result.exit_code == 0, result.output
    text = (site / "profiles" / "ana.yaml").read_text(encoding="utf-8")
    assert _comments(text) == _comments(template)
    ana = load_profile(site / "profiles" / "ana.yaml")
    assert (ana.name, ana.email, ana.timezone, ana.schedule) == (
        "Ana Lima", "ana@example.org", "Europe/Lisbon", "weekdays 07:30")
    assert [i.text for i in ana.interests] == ["dense retrieval", "rag: a survey"]
    assert ana.liked == () and ana.disliked == () and ana.mute == ()
    validate = run_cli("-c", config, "profile", "validate")
    assert validate.exit_code == 0, validate.output
    assert validate.stdout.splitlines()[-1] == "2 files, no problems."


def test_new_names_the_option_at_fault(run_cli, config_file, tmp_path):
    result = run_cli("-c", config_file, "profile", "new", "ana@example.org", "--name", "Ana",
                     "--timezone", "europe/lisbn", "--schedule", "weekly mnday 7am")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "digest: error: --timezone: unknown time zone 'europe/lisbn'; did you mean "
        "`Europe/Lisbon`?",
        "digest: error: --schedule: bad schedule 'weekly mnday 7am'; did you mean "
        "`weekly monday 07:00`?",
    ]
    bad_id = run_cli("-c", config_file, "profile", "new", "ana@example.org", "--name", "Ana",
                     "--id", "ana lima")
    assert bad_id.exit_code == 1
    assert bad_id.stderr.startswith("digest: error: --id: 'ana lima' cannot be a subscriber id")
    assert not list((tmp_path / "profiles").iterdir())
