"""The README against the code, in the manner of sqlite-utils' tests/test_docs.py.

- Every command and every option of the CLI (collected from `digest.commands.cli.cli`) is
  documented in README.md or a page it links to, and every `digest ...` the docs show
  names a command and options that exist.
- Every setting of `digest.toml` (collected from `digest.config.Settings`) is documented.
- The README's console examples still run: its ```console lines are run in order, as a
  reader would, in a temporary home folder (CliRunner, in-process), and must exit 0; the
  few that need the network, an SMTP password or a long-running server are not run, each
  for the reason given in `NOT_RUN`.

A failure here names the command, option or setting the docs are missing (or the example
that no longer works): document it, or change the code.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from digest.commands.cli import cli
from digest.commands.demo import bundled_seeds
from digest.config import FeedSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
HELP = {"-h", "--help"}


# --- reading the docs ------------------------------------------------------------------


@dataclass(frozen=True)
class Passage:
    """A unit of the docs: a paragraph of prose, a list item, a table row, or one line of a
    code block (a ```toml line carries its [table], so `[celery] broker_url = ...`)."""

    where: str  # "README.md:159"
    text: str
    fence: str | None = None  # the code block's language, if in one


def linked_pages() -> list[Path]:
    """README.md and the pages it links to (docs/*.md, deploy/README.md)."""
    text = README.read_text(encoding="utf-8")
    linked = sorted(set(re.findall(r"(?<![\w/])((?:docs|deploy)/[\w.-]+\.md)", text)))
    return [README, *(ROOT / name for name in linked)]


def read_passages(path: Path) -> Iterator[Passage]:
    name = path.relative_to(ROOT).as_posix()
    fence: str | None = None
    table = ""  # the [table] a ```toml line is in
    paragraph: list[str] = []
    start = 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        item = fence is None and re.match(r"([-*]|\d+\.) ", stripped)  # a list item: its own
        if stripped.startswith("```") or not stripped or stripped.startswith("|") or item:
            if paragraph:
                yield Passage(f"{name}:{start}", " ".join(paragraph))
                paragraph = []
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:].strip() or "text")
            table = ""
        elif fence == "toml":
            header = re.match(r"\[([\w.]+)\]", stripped)
            table = header.group(1) if header else table
            yield Passage(f"{name}:{number}", f"[{table}] {stripped}" if table else stripped,
                          fence)
        elif fence is not None or stripped.startswith("|"):
            yield Passage(f"{name}:{number}", stripped, fence)
        elif stripped:
            start = start if paragraph else number
            paragraph.append(stripped)
    if paragraph:
        yield Passage(f"{name}:{start}", " ".join(paragraph))


PASSAGES = [p for page in linked_pages() for p in read_passages(page)]


def shell_words(text: str) -> list[str] | None:
    """`text` split as a POSIX shell would (comments dropped, `&&` a word of its own);
    None if it is not shell (unbalanced quotes)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:
        return None


def commands_in(words: list[str]) -> Iterator[list[str]]:
    """The simple commands of a command line: split at && ; || |, each with its leading
    NAME=value assignments."""
    command: list[str] = []
    for word in words:
        if word in ("&&", ";", "||", "|"):
            if command:
                yield command
            command = []
        else:
            command.append(word)
    if command:
        yield command


def split_assignments(command: list[str]) -> tuple[dict[str, str], list[str]]:
    env: dict[str, str] = {}
    while command and re.fullmatch(r"[A-Za-z_]\w*=.*", command[0]):
        name, _, value = command[0].partition("=")
        env[name] = value
        command = command[1:]
    return env, command


def digest_args(command: list[str]) -> list[str] | None:
    """The arguments of a `digest` command (also `.venv/bin/digest`); None for another."""
    _env, words = split_assignments(command)
    if words and (words[0] == "digest" or words[0].endswith("/digest")):
        return words[1:]
    return None


@dataclass(frozen=True)
class Invocation:
    """A `digest ...` command the docs show: in a console block or an inline `code` span."""

    where: str
    args: tuple[str, ...]
    passage: Passage

    def __str__(self) -> str:
        return f"{self.where}: digest {shlex.join(self.args)}"


def invocations() -> Iterator[Invocation]:
    for passage in PASSAGES:
        if passage.fence == "console":
            snippets = [passage.text.removeprefix("$ ")] if passage.text.startswith("$ ") else []
        elif passage.fence is None:
            snippets = re.findall(r"`([^`]+)`", passage.text)
        else:
            snippets = []
        for snippet in snippets:
            words = shell_words(snippet)
            for command in commands_in(words or []):
                args = digest_args(command)
                if args:  # not a bare `digest`, the program's name
                    yield Invocation(passage.where, tuple(args), passage)


INVOCATIONS = list(invocations())


# --- the CLI as click sees it ----------------------------------------------------------


def walk_commands(command: click.Command = cli, path: tuple[str, ...] = ()
                  ) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command with its path (the group itself is ())."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            if not sub.hidden:
                yield from walk_commands(sub, (*path, name))


def option_names(command: click.Command) -> dict[str, click.Option]:
    return {name: param for param in command.params if isinstance(param, click.Option)
            for name in (*param.opts, *param.secondary_opts)}


def find_option(command: click.Command, word: str) -> click.Option | None:
    """The option `word` (`--top`, `--top=5`) names, if `command` has it."""
    return option_names(command).get(word.partition("=")[0])


@dataclass
class Resolved:
    """What an invocation names: the command's path, the options given to each level."""

    path: tuple[str, ...] = ()
    options: list[tuple[tuple[str, ...], str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def resolve(args: tuple[str, ...] | list[str]) -> Resolved:
    found = Resolved()
    command: click.Command = cli
    rest = list(args)
    while rest:
        word = rest.pop(0)
        here = "digest" + "".join(f" {p}" for p in found.path)
        if word.startswith("-") and word != "-":
            if word in HELP:
                continue
            names = [word]
            if re.fullmatch(r"-[A-Za-z]{2,}", word):  # -vv: short flags run together
                names = [f"-{letter}" for letter in word[1:]]
            for name in names:
                option = find_option(command, name)
                if option is None:
                    found.problems.append(f"`{here}` has no option {name}")
                    continue
                found.options.append((found.path, option.opts[0]))
                takes_value = not (option.is_flag or option.count)
                if takes_value and "=" not in name and rest:
                    rest.pop(0)
            continue
        if isinstance(command, click.Group):
            sub = command.commands.get(word)
            if sub is None:
                found.problems.append(f"`{here}` has no command {word!r}")
                break
            found.path += (word,)
            command = sub
        # else: an argument of the command
    return found


COMMANDS = dict(walk_commands())
OPTIONS = [(path, option) for path, command in COMMANDS.items()
           for option in command.params
           if isinstance(option, click.Option) and not option.hidden
           and not set(option.opts) <= HELP]


def _word(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")


# --- (a) every command and option is documented; all that is documented exists ----------


def passages_about(path: tuple[str, ...]) -> list[Passage]:
    """The passages that show `digest <path>` (or one of its subcommands) being run."""
    found = {}
    for invocation in INVOCATIONS:
        if resolve(invocation.args).path[:len(path)] == path:
            found[invocation.passage.where] = invocation.passage
    return list(found.values())


@pytest.mark.parametrize("path", [p for p in COMMANDS if p],
                         ids=[" ".join(p) for p in COMMANDS if p])
def test_every_command_is_documented(path: tuple[str, ...]) -> None:
    assert passages_about(path), (
        f"`digest {' '.join(path)}` appears nowhere in README.md or the pages it links to")


@pytest.mark.parametrize(("path", "option"), OPTIONS,
                         ids=[" ".join([*p, o.opts[-1]]) for p, o in OPTIONS])
def test_every_option_is_documented(path: tuple[str, ...], option: click.Option) -> None:
    """A command's option is documented beside the command (in an example, or in prose
    that shows the command); an option of `digest` itself anywhere."""
    where = passages_about(path) if path else PASSAGES
    names = [*option.opts, *option.secondary_opts]
    assert any(_word(name).search(p.text) for p in where for name in names), (
        f"`digest {' '.join([*path, names[-1]])}`: the option is documented nowhere "
        f"{'beside the command ' if path else ''}in README.md or the pages it links to "
        f"(looked in {len(where)} passages{': ' if where else ''}"
        f"{', '.join(p.where for p in where[:6])})")


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=str)
def test_documented_commands_and_options_exist(invocation: Invocation) -> None:
    assert resolve(invocation.args).problems == [], str(invocation)


# --- every setting is documented ------------------------------------------------------


def setting_names(model: type[BaseModel] = Settings, table: str = ""
                  ) -> Iterator[tuple[str, str]]:
    """(table, key) of every key `digest.toml` may hold; secrets (only from the environment)
    and what is not read from the file are left out."""
    for key, info in model.model_fields.items():
        if info.exclude or key == "config_path":
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from setting_names(annotation, key)
        else:
            yield table, key
    if model is Settings:
        yield from (("feeds", key) for key in FeedSettings.model_fields)


SETTINGS = list(setting_names())


@pytest.mark.parametrize(("table", "key"), SETTINGS,
                         ids=[f"{t}.{k}" if t else k for t, k in SETTINGS])
def test_every_setting_is_documented(table: str, key: str) -> None:
    """In the README's Configure table (`[daemon] inbox_poll_s, ...`), or a linked page:
    `[table] key`, `table.key` or a ```toml line under [table]; a top-level key as `key`."""
    if table:
        named = "`feeds`" if table == "feeds" else rf"\[{table}\]"  # feeds: a list of tables
        in_table = re.compile(rf"{named}.*(?<![\w.]){key}(?!\w)|{table}\.{key}(?!\w)")
    else:
        in_table = re.compile(rf"`{key}`|^{key}\s*=")
    found = [p.where for p in PASSAGES if in_table.search(p.text)]
    assert found, (f"setting {f'[{table}] ' if table else ''}{key} is documented nowhere in "
                   "README.md's Configure table or the pages it links to")


# --- (b) the README's console examples run ----------------------------------------------

INSTALLING = "installs packages: the tests use the environment they run in"
# What the examples do that this test does not do, and why; by the command's first words.
NOT_RUN: dict[tuple[str, ...], str] = {
    ("python3", "-m", "venv"): INSTALLING,
    ("pip", "install"): INSTALLING,
    (".venv/bin/pip", "install"): INSTALLING,
    (".venv/bin/python", "-m", "pytest"): "runs this test suite itself",
    ("$EDITOR",): "an edit by hand: the file stays as written",
    ("digest", "run"): "a long-running daemon that needs the SMTP password "
                       "(tests/test_daemon.py runs it for real)",
    ("digest", "serve"): "a long-running web server (tests/test_web.py tests its pages)",
    ("digest", "worker"): "a long-running Celery worker that needs a broker "
                          "(tests/test_workers.py runs real ones)",
    ("digest", "send"): "a real send needs an SMTP server and its password "
                        "(`digest send --dry-run` is run)",
}


def not_run_reason(command: list[str]) -> str | None:
    _env, words = split_assignments(command)
    args = digest_args(command)
    if args is not None:
        path = resolve(args).path
        if path == ("send",) and "--dry-run" in args:
            return None
        words = ["digest", *path]
    for start, reason in NOT_RUN.items():
        if tuple(words[:len(start)]) == start:
            return reason
    return None


@dataclass(frozen=True)
class ConsoleLine:
    where: str
    text: str  # without the "$ " prompt

    def __str__(self) -> str:
        return f"{self.where}: $ {self.text}"


CONSOLE_LINES = [ConsoleLine(p.where, p.text.removeprefix("$ ")) for p in PASSAGES
                 if p.where.startswith("README.md:") and p.fence == "console"
                 and p.text.startswith("$ ")]


@dataclass
class Outcome:
    """What running one console line did: a line per command run, and what was not run."""

    failures: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)


class Reader:
    """Follows the README from the top in a temporary home folder, one line at a time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.monkeypatch = monkeypatch
        self.runner = CliRunner()

    def expand(self, word: str) -> list[str]:
        word = os.path.expanduser(word)
        # No match: the word as it is, as the shell does.
        return sorted(glob.glob(word)) or [word] if glob.has_magic(word) else [word]

    def run(self, line: str) -> Outcome:
        outcome = Outcome()
        secret = re.fullmatch(r"export (\w+)=\$\((.*)\)", line)
        if secret:  # export NAME=$(python -c '...'): run that Python, keep what it prints
            name, inner = secret.groups()
            words = shlex.split(inner)
            if words[0] not in ("python", "python3"):
                outcome.failures.append(f"cannot run `{inner}`: teach tests/test_docs.py")
                return outcome
            done = subprocess.run([sys.executable, *words[1:]], capture_output=True,
                                  text=True, timeout=60, check=False)
            if done.returncode != 0 or not done.stdout.strip():
                outcome.failures.append(f"`{inner}` exited {done.returncode}: {done.stderr}")
            self.monkeypatch.setenv(name, done.stdout.strip())
            outcome.ran.append(inner)
            return outcome
        words = shell_words(line)
        if words is None:
            outcome.failures.append("not a shell command line (unbalanced quotes?)")
            return outcome
        for command in commands_in(words):
            reason = not_run_reason(command)
            if reason is not None:
                outcome.not_run.append(f"`{' '.join(command)}`: {reason}")
                continue
            failure = self.run_command(command)
            outcome.ran.append(shlex.join(command))
            if failure:
                outcome.failures.append(failure)
                break  # `&&`: what follows a failure does not run
        return outcome

    def run_command(self, command: list[str]) -> str | None:
        """Run one command; what went wrong, or None."""
        env, words = split_assignments(command)
        expanded = [w for word in words[1:] for w in self.expand(word)]
        args = digest_args(command)
        if args is not None:
            result = self.runner.invoke(cli, expanded, env=env, catch_exceptions=True,
                                        prog_name="digest")
            if result.exit_code == 0:
                return None
            crash = ("".join(traceback.format_exception(*result.exc_info))
                     if result.exc_info and not isinstance(result.exception, SystemExit)
                     else "")
            return (f"`{shlex.join(command)}` exited {result.exit_code} in {Path.cwd()}:\n"
                    f"{result.output}{crash}")
        if words[0] == "cd" and len(expanded) == 1:
            self.monkeypatch.chdir(expanded[0])
            return None
        if words[0] == "cp" and len(expanded) == 2:
            shutil.copyfile(*expanded)
            return None
        return (f"the test does not know how to run `{shlex.join(command)}`: teach "
                "tests/test_docs.py, or give a reason in NOT_RUN")


@pytest.fixture(scope="module")
def readme_session(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every README console line run in order, by where it is. The reader starts in their
    clone of the repository (quick start), with a home folder of their own and some digest
    files already in ~/papers/inbox (`digest ingest inbox/*.txt` reads them)."""
    base = tmp_path_factory.mktemp("readme")
    home, clone = base / "home", base / "clone"
    (home / "papers" / "inbox").mkdir(parents=True)
    clone.mkdir()
    for seed in bundled_seeds():
        shutil.copy(seed, home / "papers" / "inbox" / seed.name)
    outcomes: dict[str, Outcome] = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in list(os.environ):
            if name.startswith("DIGEST_") or name in ("XDG_DATA_HOME", "EDITOR"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("DIGEST_EMBEDDINGS", "off")  # as every test ranks (conftest)
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.chdir(clone)
        reader = Reader(monkeypatch)
        for line in CONSOLE_LINES:
            outcomes[line.where] = reader.run(line.text)
    return outcomes


@pytest.mark.parametrize("line", CONSOLE_LINES, ids=str)
def test_readme_console_example_runs(line: ConsoleLine,
                                     readme_session: dict[str, Outcome]) -> None:
    outcome = readme_session[line.where]
    assert outcome.failures == [], f"{line}\n" + "\n".join(outcome.failures)
    if not outcome.ran:
        pytest.skip(f"{line.where}: not run: " + "; ".join(outcome.not_run))


def test_the_readme_has_console_examples_to_run() -> None:
    """The parser still finds them (a changed fence would silently test nothing)."""
    assert len(CONSOLE_LINES) >= 15
    assert any(line.text.startswith("digest ingest") for line in CONSOLE_LINES)
