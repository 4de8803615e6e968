"""The command line as a user meets it: output, exit status, one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest

from digest.commands.cli import cli
from digest.models import EditionState
from digest.store import Store, migrate

from .hostile import HOSTILE_PROFILES, write_hostile_profiles
from .services import postgres_schema


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found += _commands(command, prefix + name + " ")
    return found


@pytest.mark.parametrize(("name", "command"), _commands(cli))
def test_every_command_has_help_ending_in_an_example(name, command):
    assert command.help and "Example:" in command.help, name
    assert command.help.strip().splitlines()[-1].strip().startswith("digest"), name


def test_ingest_seeds_then_again_adds_nothing(run_cli, seeds, tmp_path):
    first = run_cli("--data-dir", tmp_path / "d", "ingest", *seeds, "--json")
    again = run_cli("--data-dir", tmp_path / "d", "ingest", *seeds, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout) == {"files": 5, "entries": 314, "new_papers": 283,
                                        "papers_stored": 283, "papers_embedded": 0,
                                        "rejected": []}
    assert json.loads(again.stdout)["new_papers"] == 0
    assert first.stderr == ""


def test_bad_inputs_get_one_line_each_and_the_good_file_is_kept(run_cli, seeds, tmp_path):
    junk = tmp_path / "junk.txt"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    folder = tmp_path / "folder"
    folder.mkdir()
    result = run_cli("--data-dir", tmp_path / "d", "ingest", junk, empty, folder,
                     tmp_path / "missing.txt", seeds[0])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"{junk}: not a text file (binary data)",
                     f"{empty}: empty file, no papers in it",
                     f"{folder}: is a directory, not a digest file (pass the files in it)",
                     f"{tmp_path / 'missing.txt'}: no such file"]
    assert "1 file, 46 entries, 46 new papers (46 stored), 4 files rejected." in result.stdout


def test_rank_json_has_one_line_per_profile(run_cli, seeds, tmp_path, write_profile):
    run_cli("--data-dir", tmp_path / "d", "ingest", *seeds)
    ana = write_profile("ana", interests=["dense retrieval"])
    bo = write_profile("bo", liked=["Titans: Learning to Memorize at Test Time"])
    broken = write_profile("cy", text="name: Cy\nemail: nope\n")
    result = run_cli("--data-dir", tmp_path / "d", "rank", ana, bo, broken, "--top", "3",
                     "--json")
    assert result.exit_code == 1  # one profile was rejected
    assert f"{broken}:2: email:" in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["profile"] for r in rows] == [str(ana), str(bo), str(broken)]
    assert [r["subscriber"] for r in rows] == ["Ana", "Bo", None]
    for row in rows[:2]:
        assert len(row["picks"]) == 3
        for pick in row["picks"]:
            assert set(pick) == {"id", "title", "score", "reason", "section"}
            assert isinstance(pick["score"], float) and pick["reason"]
    assert rows[1]["picks"][0]["section"].startswith("Because you liked \u201cTitans")
    assert "error" in rows[2] and rows[2]["picks"] == []


def test_send_twice_delivers_once(run_cli, config_file, seeds, smtp_sink, write_profile):
    write_profile("ana", interests=["dense retrieval"])
    write_profile("bo", interests=["vision transformer"])
    assert run_cli("-c", config_file, "ingest", *seeds).exit_code == 0
    first = run_cli("-c", config_file, "send")
    second = run_cli("-c", config_file, "send")
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "sent" in first.stdout and "already sent" in second.stdout
    assert re.search(r"^2 editions in [\d.]+ s: 2 already sent\.$", second.stdout, re.M)
    assert sorted(r.recipients[0] for r in smtp_sink.received) == [
        "ana@example.org", "bo@example.org"]


def test_send_dry_run_writes_eml_files(run_cli, config_file, seeds, smtp_sink, write_profile,
                                       tmp_path):
    write_profile("ana", interests=["dense retrieval"])
    run_cli("-c", config_file, "ingest", *seeds)
    result = run_cli("-c", config_file, "send", "--dry-run")
    assert result.exit_code == 0, result.output
    [written] = (tmp_path / "outbox").iterdir()
    assert re.fullmatch(r"ana-\d{4}-\d\d-\d\d-0700\.eml", written.name)  # the slot, UTC
    assert re.search(r"^1 edition in [\d.]+ s: 1 dry run\.$", result.stdout, re.M)
    assert b"Subject: Papers for" in written.read_bytes()
    assert smtp_sink.received == []


def test_send_with_a_broken_profile_serves_the_rest(run_cli, config_file, seeds, smtp_sink,
                                                    write_profile):
    write_profile("ana", interests=["dense retrieval"])
    bad = write_profile("bo", text="name: Bo\nemail: bo@example.org\nschedule: [\n")
    run_cli("-c", config_file, "ingest", *seeds)
    result = run_cli("-c", config_file, "send")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{bad}:4: not valid YAML")
    assert [r.recipients[0] for r in smtp_sink.received] == ["ana@example.org"]


def test_hostile_profiles_are_one_line_each_in_every_command(run_cli, config_file, seeds,
                                                            smtp_sink, write_profile, tmp_path):
    """An alias bomb, a huge file, a FIFO, a device, a folder, Latin-1, deep nesting, a
    self-referring alias and a list past its limit, beside a good profile: each command
    names each bad file once, and Ana is served as if they were not there."""
    write_profile("ana", interests=["dense retrieval"])
    write_hostile_profiles(tmp_path / "profiles")
    run_cli("-c", config_file, "ingest", *seeds)

    def named_once(stderr: str) -> None:
        for name in HOSTILE_PROFILES:
            lines = [line for line in stderr.splitlines() if f"{name}.yaml" in line]
            assert len(lines) == 1, (name, stderr)

    validate = run_cli("-c", config_file, "profile", "validate")
    assert validate.exit_code == 1 and "ana.yaml: ok" in validate.stdout
    named_once(validate.stderr)

    dry = run_cli("-c", config_file, "send", "--dry-run")
    named_once(dry.stderr)
    assert [p.name[:4] for p in (tmp_path / "outbox").iterdir()] == ["ana-"]

    sent = run_cli("-c", config_file, "send")
    named_once(sent.stderr)
    assert [r.recipients for r in smtp_sink.received] == [("ana@example.org",)]

    status = run_cli("-c", config_file, "status", "--json")
    report = json.loads(status.stdout)
    assert [s["subscriber_id"] for s in report["subscribers"]] == ["ana"]
    assert len(report["problems"]) == len(HOSTILE_PROFILES)


def test_unreachable_smtp_server_is_one_clear_line(run_cli, tmp_path, seeds, write_profile):
    """Refused at once: one line saying what to check, no in-run retries, no table."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "digest.toml"
    config.write_text(f'data_dir = "d"\n[smtp]\nhost = "127.0.0.1"\nport = {port}\n'
                      'security = "none"\ntimeout_s = 2\n')
    write_profile("ana", interests=["retrieval"])
    run_cli("-c", config, "ingest", *seeds)
    result = run_cli("-c", config, "send")
    assert result.exit_code == 1
    assert result.stderr == (f"digest: error: cannot connect to the SMTP server 127.0.0.1:"
                             f"{port}: Connection refused (check [smtp] host and port)\n")
    assert result.stdout == ""


def test_preview_writes_html_and_sends_nothing(run_cli, seeds, tmp_path, write_profile,
                                               smtp_sink):
    path = write_profile("ana", interests=["dense retrieval"])
    run_cli("--data-dir", tmp_path / "d", "ingest", *seeds)
    result = run_cli("--data-dir", tmp_path / "d", "preview", path, "--out", tmp_path / "p.html")
    assert result.exit_code == 0, result.output
    html = (tmp_path / "p.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "Dense" in html
    assert smtp_sink.received == []


def test_init_writes_a_working_setup(run_cli, tmp_path):
    result = run_cli("init", tmp_path / "site")
    assert result.exit_code == 0
    site = tmp_path / "site"
    assert (site / "digest.toml").is_file() and (site / "profiles" / "example.yaml").is_file()
    assert all((site / d).is_dir() for d in ("data", "inbox", "outbox"))
    validate = run_cli("-c", site / "digest.toml", "profile", "validate")
    assert validate.exit_code == 0, validate.output
    assert "example.yaml: ok" in validate.stdout
    again = run_cli("init", site)
    assert "exists, left as it is" in again.stdout


def test_demo_sends_three_editions_and_saves_them(run_cli, tmp_path):
    result = run_cli("demo", "--out", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert "Ingested 314 entries from 5 digest files: 283 distinct papers." in result.stdout
    assert result.stdout.count("│ sent ") == 3
    saved = sorted(p.name for p in (tmp_path / "demo").iterdir() if p.is_file())
    assert saved == ["ana.eml", "ana.html", "ben.eml", "ben.html", "chen.eml", "chen.html"]
    assert "Open this one in a browser:" in result.stdout


def test_a_config_error_is_one_line_and_a_traceback_needs_vv(tmp_path):
    config = tmp_path / "digest.toml"
    config.write_text("[smtp]\nport = 'x'\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "digest", "-c", str(config), "send"]
    plain = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert plain.returncode == 1
    assert plain.stderr == (f"digest: error: {config}: smtp.port: Input should be a valid "
                            "integer, unable to parse string as an integer\n")
    loud = subprocess.run([*command[:3], "-vv", *command[3:]], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert "Traceback" in loud.stderr and loud.returncode == 1


def test_usage_errors_exit_2(run_cli):
    assert run_cli("rank").exit_code == 2
    assert run_cli("no-such-command").exit_code == 2


def _digest(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m digest ARGS` in a fresh process: stderr then holds log lines as well."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "COLUMNS": "200"}
    for var in ("DIGEST_CONFIG", "DIGEST_DATA_DIR", "DIGEST_DATABASE_URL"):
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "digest", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd)


def test_rank_takes_profiles_whatever_their_file_names(run_cli, seeds, tmp_path):
    run_cli("--data-dir", tmp_path / "d", "ingest", *seeds)
    spaced = tmp_path / "Ana Smith.yaml"
    spaced.write_text("name: Ana Smith\nemail: ana@example.org\n"
                      "interests: [dense retrieval]\n")
    same = []
    for folder, interest in (("a", "vision transformer"), ("b", "reinforcement learning")):
        (tmp_path / folder).mkdir()
        same.append(tmp_path / folder / "profile.yaml")
        same[-1].write_text(f"name: {folder.upper()}\nemail: {folder}@example.org\n"
                            f"interests: [{interest}]\n")
    result = run_cli("--data-dir", tmp_path / "d", "rank", spaced, *same, "--top", "3",
                     "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["profile"] for r in rows] == [str(spaced), *map(str, same)]
    assert [r["subscriber"] for r in rows] == ["Ana Smith", "A", "B"]
    assert all(len(r["picks"]) == 3 and "error" not in r for r in rows)
    assert rows[1]["picks"] != rows[2]["picks"]


def test_a_broken_operator_template_fails_the_send_and_keeps_the_edition(
        run_cli, config_file, seeds, smtp_sink, write_profile, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "email.txt.j2").write_text("{{ heading }}\n{{ nosuchvar }}\n")
    config_file.write_text(config_file.read_text().replace(
        '\n[smtp]', 'templates_dir = "templates"\n\n[smtp]', 1))
    write_profile("ana", interests=["dense retrieval"])
    assert run_cli("-c", config_file, "ingest", *seeds).exit_code == 0

    broken = _digest("-c", config_file, "send", cwd=tmp_path)

    assert broken.returncode == 1
    [line] = broken.stderr.splitlines()
    assert line.startswith("digest: error: ") and "template error" in line
    assert "nosuchvar" in line and "Traceback" not in broken.stderr + broken.stdout
    assert smtp_sink.received == []
    store = Store.open(f"sqlite:///{tmp_path / 'data' / 'digest.sqlite3'}")
    try:
        kept = store.last_edition("ana")
        assert kept is not None and kept.picks
        assert kept.state is EditionState.PENDING and kept.retryable and kept.attempts == 0

        (templates / "email.txt.j2").write_text("Fixed: {{ heading }}\n")
        fixed = _digest("-c", config_file, "send", cwd=tmp_path)

        assert fixed.returncode == 0, fixed.stderr
        [received] = smtp_sink.received
        assert received.message.get_body(("plain",)).get_content().startswith("Fixed: ")
        sent = store.get_edition("ana", kept.slot)
    finally:
        store.close()
    assert sent.state is EditionState.SENT and sent.attempts == 1
    assert received.message["Message-ID"] == kept.message_id


def test_preview_to_a_missing_folder_is_one_line(run_cli, seeds, tmp_path, write_profile):
    path = write_profile("ana", interests=["dense retrieval"])
    run_cli("--data-dir", tmp_path / "d", "ingest", *seeds)
    out = tmp_path / "nonexistent-dir" / "x.html"
    result = run_cli("--data-dir", tmp_path / "d", "preview", path, "--out", out)
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"digest: error: {out}: cannot be written: ")
    assert not out.parent.exists()


def test_ingest_without_paths_empties_the_inbox(run_cli, config_file, seeds, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for seed in seeds:
        shutil.copy(seed, inbox / seed.name)
    (inbox / "scan.pdf").write_bytes(b"%PDF-1.7\n\x00\x01\x02\xff" * 64)

    result = run_cli("-c", config_file, "ingest", "--json")

    assert result.exit_code == 1  # one file was rejected
    counts = json.loads(result.stdout)
    assert (counts["files"], counts["entries"], counts["new_papers"]) == (5, 314, 283)
    assert counts["rejected"] == [f"{inbox / 'rejected' / 'scan.pdf'}: not a text file "
                                  "(binary data)"]
    assert sorted(p.name for p in inbox.iterdir()) == ["processed", "rejected"]
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == [s.name for s in seeds]
    assert sorted(p.name for p in (inbox / "rejected").iterdir()) == ["scan.pdf",
                                                                      "scan.pdf.reason"]
    reason = (inbox / "rejected" / "scan.pdf.reason").read_text()
    assert reason == "not a text file (binary data)\n"
    again = run_cli("-c", config_file, "ingest", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["files"] == 0


def test_demo_leaves_a_real_database_in_the_folder_alone(run_cli, seeds, tmp_path):
    out = tmp_path / "site"
    assert run_cli("--data-dir", out / "data", "ingest", seeds[0]).exit_code == 0
    real = out / "data" / "digest.sqlite3"
    before = real.read_bytes()

    result = run_cli("demo", "--out", out)

    assert result.exit_code == 0, result.output
    assert real.read_bytes() == before
    assert (out / "demo-data" / "digest.sqlite3").is_file()
    counts = run_cli("--data-dir", out / "data", "ingest", "--json", seeds[0])
    assert json.loads(counts.stdout)["papers_stored"] == 46  # only what was ingested there


def test_a_garbage_file_is_one_line_on_stderr(tmp_path):
    junk = tmp_path / "junk.txt"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    result = _digest("--data-dir", tmp_path / "d", "ingest", junk, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{junk}: not a text file (binary data)"]


def test_a_garbage_file_in_the_inbox_is_one_line_on_stderr(config_file, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "junk.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00" + bytes(range(256)))
    result = _digest("-c", config_file, "ingest", cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.endswith("junk.txt: not a text file (binary data)")


def test_db_upgrade_then_current(run_cli, tmp_path):
    first = run_cli("--data-dir", tmp_path / "d", "db", "upgrade")
    again = run_cli("--data-dir", tmp_path / "d", "db", "upgrade")
    current = run_cli("--data-dir", tmp_path / "d", "db", "current", "--json")
    url = f"sqlite:///{tmp_path / 'd' / 'digest.sqlite3'}"
    assert first.exit_code == 0 and again.exit_code == 0, first.output + again.output
    assert first.stdout == f"{url}: upgraded from revision none to {migrate.HEAD}.\n"
    assert again.stdout == f"{url}: already at revision {migrate.HEAD}, the newest.\n"
    assert json.loads(current.stdout) == {"database": url, "engine": "sqlite",
                                          "revision": migrate.HEAD, "newest": migrate.HEAD}


def test_db_current_on_postgresql_hides_the_password(run_cli, monkeypatch):
    with postgres_schema() as url:
        monkeypatch.setenv("DIGEST_DATABASE_URL", url.replace("postgres@", "postgres:pw@"))
        before = run_cli("db", "current")
        upgraded = run_cli("db", "upgrade")
        after = run_cli("db", "current")
    assert before.exit_code == 0, before.output
    assert "pw" not in before.stdout + upgraded.stdout + after.stdout
    assert before.stdout.splitlines() == [
        f"database  {url.replace('postgres@', 'postgres:***@')}",
        f"revision  none (the newest is {migrate.HEAD}: run `digest db upgrade`)"]
    assert upgraded.stdout.endswith(f"upgraded from revision none to {migrate.HEAD}.\n")
    assert after.stdout.splitlines()[1] == f"revision  {migrate.HEAD} (the newest)"


def test_an_unreachable_database_is_one_line_without_the_password(run_cli, monkeypatch):
    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DIGEST_DATABASE_URL", f"postgresql+psycopg://u:hunter2@127.0.0.1:{port}/d")
    result = run_cli("db", "upgrade")
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("digest: error: cannot upgrade the database "
                           f"postgresql+psycopg://u:***@127.0.0.1:{port}/d: connection failed")
    assert "hunter2" not in result.output
