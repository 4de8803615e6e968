"""Shared fixtures: a fixed clock, a real store (SQLite and PostgreSQL), a real SMTP server,
profile files.

For a quick run while developing, leave out the tests marked slow: `.venv/bin/python -m
pytest -m "not slow"`; plain `python -m pytest` (as CI runs it) runs them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import settings

from digest.commands.cli import cli
from digest.commands.smtpsink import SmtpSink
from digest.config import MailSettings, RankSettings, Settings, SmtpSettings
from digest.store import Store

from .services import postgres_schema

# No test is timed: hypothesis's per-example deadline failed tests on a loaded machine.
settings.register_profile("untimed", deadline=None)
settings.load_profile("untimed")

DATA = Path(__file__).parent / "data"
SEEDS = sorted((DATA / "digests" / "seeds").glob("*.txt"))
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true",
                     help="rewrite the golden files in tests/data/golden/ from what the code "
                          "renders now, to review as a diff (see tests/test_golden.py)")


@pytest.fixture(autouse=True)
def lexical_ranking_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests rank without sentence embeddings (slow to compute) unless they ask for them;
    subprocesses inherit this too."""
    monkeypatch.setenv("DIGEST_EMBEDDINGS", "off")


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def seeds() -> list[Path]:
    assert len(SEEDS) == 5, "the five seed digest files must be in tests/data/digests/seeds"
    return list(SEEDS)


ENGINES = ["sqlite", "postgresql"]
# Modules whose tests use the store only to hold papers, the same on every engine: SQLite
# alone (ranking would take 18 s more on PostgreSQL and learn nothing about the store).
SQLITE_ONLY = {"tests.test_rank"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses the store once per engine: SQLite, and PostgreSQL (skipped,
    saying why, where no server is reachable; see tests/services.py)."""
    if ("database_url" in metafunc.fixturenames
            and metafunc.module.__name__ not in SQLITE_ONLY):
        metafunc.parametrize("database_url", ENGINES, indirect=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh schema on the test PostgreSQL server."""
    if getattr(request, "param", "sqlite") == "postgresql":
        with postgres_schema() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'digest.sqlite3'}"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store.open(database_url)
    yield opened
    opened.close()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def settings(request: pytest.FixtureRequest, tmp_path: Path, smtp_sink: SmtpSink) -> Settings:
    """Settings for tmp_path and the test SMTP server; with the `store` fixture, its
    database (so a second process or store opens the same one)."""
    database_url = (request.getfixturevalue("database_url")
                    if "database_url" in request.fixturenames else None)
    return Settings(
        data_dir=tmp_path,
        database_url=database_url,
        profiles_dir=tmp_path / "profiles",
        inbox_dir=tmp_path / "inbox",
        outbox_dir=tmp_path / "outbox",
        smtp=SmtpSettings(host=smtp_sink.host, port=smtp_sink.port, security="none",
                          timeout_s=5),
        mail=MailSettings(from_address="digest@test.example", list_id="test.digest.example",
                          retry_delay_s=0.01),
        rank=RankSettings(embeddings="off"),
    )


ProfileWriter = Callable[..., Path]


@pytest.fixture
def write_profile(tmp_path: Path) -> ProfileWriter:
    """Write a profile file into tmp_path/profiles; keyword fields become YAML lines."""
    folder = tmp_path / "profiles"
    folder.mkdir(exist_ok=True)

    def write(name: str = "ana", text: str | None = None, **fields: object) -> Path:
        path = folder / f"{name}.yaml"
        if text is None:
            import json

            body = {"name": name.title(), "email": f"{name}@example.org", **fields}
            # JSON is YAML: the simplest correct way to write nested values.
            text = "\n".join(f"{k}: {json.dumps(v)}" for k, v in body.items()) + "\n"
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def config_file(tmp_path: Path, smtp_sink: SmtpSink) -> Path:
    """A digest.toml pointing at tmp_path folders and the test SMTP server."""
    path = tmp_path / "digest.toml"
    path.write_text(
        f"""data_dir = "data"
profiles_dir = "profiles"
inbox_dir = "inbox"
outbox_dir = "outbox"

[smtp]
host = "{smtp_sink.host}"
port = {smtp_sink.port}
security = "none"
timeout_s = 5

[mail]
from_address = "digest@test.example"
list_id = "test.digest.example"
retry_delay_s = 0.01
""",
        encoding="utf-8",
    )
    (tmp_path / "profiles").mkdir(exist_ok=True)
    return path


@pytest.fixture
def run_cli(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
            tmp_path: Path) -> Callable[..., Result]:
    """Invoke the CLI in-process from tmp_path, with stderr kept apart from stdout; with the
    `store` fixture, on its database."""
    monkeypatch.chdir(tmp_path)
    for var in ("DIGEST_CONFIG", "DIGEST_DATA_DIR", "DIGEST_DATABASE_URL",
                "DIGEST_DATABASE_PASSWORD", "DIGEST_SMTP_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    if "database_url" in request.fixturenames:
        monkeypatch.setenv("DIGEST_DATABASE_URL", request.getfixturevalue("database_url"))
    runner = CliRunner()

    def invoke(*args: str | Path) -> Result:
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    return invoke
