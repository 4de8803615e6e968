"""Start-up: the commands people run often import only what they use, so that they start in
a fraction of a second (benchmarks/startup.py measures it; no test here times anything).
Each check runs the command in a real process and looks at what it imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from digest.commands import cli
from digest.config import CONFIG_NAME

from .running import ROOT

# What `digest --help` must not import: the heavy libraries of the commands that need them.
HEAVY = ("sklearn", "numpy", "scipy", "sqlalchemy", "alembic", "pydantic", "jinja2",
         "css_inline", "aiosmtplib", "aiosmtpd", "starlette", "uvicorn", "rich", "ruamel",
         "apscheduler", "feedparser", "asyncio")
# Run the CLI as `digest` does, then print the top-level packages it imported.
PROBE = """
import json, sys
from digest.commands.cli import main
sys.argv = ["digest", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("IMPORTED " + json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def probe(args: list[str], cwd: Path, **env: str) -> tuple[set[str], str]:
    """What the command imported (top-level packages), and what else it printed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**clean, "PYTHONPATH": str(ROOT), **env})
    lines = done.stdout.splitlines()
    [line] = [line for line in lines if line.startswith("IMPORTED ")]
    printed = "\n".join(line for line in lines if not line.startswith("IMPORTED "))
    return set(json.loads(line.removeprefix("IMPORTED "))), printed


def imported_by(args: list[str], cwd: Path, **env: str) -> set[str]:
    return probe(args, cwd, **env)[0]


@pytest.fixture
def project(tmp_path: Path, seeds: list[Path]) -> Path:
    """A folder `digest init` made, with the seed papers ingested."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env["PYTHONPATH"] = str(ROOT)
    digest = [sys.executable, "-m", "digest"]
    subprocess.run([*digest, "init", str(tmp_path)], env=env, check=True, capture_output=True)
    subprocess.run([*digest, "ingest", *map(str, seeds)], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    return tmp_path


def test_help_imports_none_of_the_heavy_libraries(tmp_path):
    found = imported_by(["--help"], tmp_path)
    assert "click" in found  # the probe works
    assert found.isdisjoint(HEAVY), sorted(found & set(HEAVY))


def test_status_reads_sqlite_without_sqlalchemy_or_the_ranking_libraries(project):
    found = imported_by(["status"], project)
    assert "rich" in found and "pydantic" in found  # it did run: a table, the settings
    assert found.isdisjoint({"sqlalchemy", "alembic", "sklearn", "numpy", "scipy", "jinja2",
                             "aiosmtplib", "starlette"}), found


def test_profile_validate_imports_no_database_or_ranking_library(project):
    found = imported_by(["profile", "validate"], project)
    assert "ruamel" in found  # it did read the profiles
    assert found.isdisjoint({"sqlalchemy", "sklearn", "numpy", "scipy", "jinja2",
                             "aiosmtplib", "starlette"}), found


def test_rank_imports_scikit_learn_only_for_a_profile_that_learns_a_classifier(project):
    """The tf-idf model is digest's own (digest.rank.tfidf): ranking by interests and liked
    papers needs none of scikit-learn, whose import takes most of a second."""
    profile = project / "profiles" / "example.yaml"
    found, printed = probe(["rank", str(profile), "--json"], project, DIGEST_EMBEDDINGS="off")
    [ranked] = [json.loads(line) for line in printed.splitlines()]
    assert ranked["picks"] and not ranked.get("error")  # it did rank
    assert "sklearn" not in found, "ranking without a classifier imported scikit-learn"


def test_the_cli_names_the_config_file_as_the_settings_do():
    assert cli.CONFIG_NAME == CONFIG_NAME  # written in cli.py so that --help needs no pydantic
