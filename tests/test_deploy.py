"""Deployment files in deploy/: the systemd unit, its config, the Dockerfile, compose.yaml.

(a) Static checks, always run: the files parse and say what deploy/README.md promises.
(b) `systemd-analyze verify` of the unit: only where systemd-analyze is installed.
(c) `docker build` of the image: only where a Docker engine answers `docker info`.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from digest.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "digest.service"
UNIT_CONFIG = DEPLOY / "systemd" / "digest.toml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "docker" / "compose.yaml"
STATE_DIR = Path("/var/lib/digest")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]}, repeated keys kept in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = (pending + raw.strip()) if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{UNIT}:{number}: not `key=value` in a section"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert found, f"{key}= missing"
    return found[-1]  # systemd: the last assignment wins (for single-valued keys)


def seconds(span: str) -> float:
    """A systemd or compose time span (`90`, `90s`, `1min 30s`, `1m30s`) in seconds."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    if re.fullmatch(r"\d+(\.\d+)?", span.strip()):
        return float(span)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", span)
    assert parts, f"not a time span: {span!r}"
    return sum(float(n) * units[u] for n, u in parts)


def shutdown_timeout() -> float:
    """How long digest waits on SIGTERM for sending in flight, per the sample config."""
    with UNIT_CONFIG.open("rb") as handle:
        return float(tomllib.load(handle)["daemon"]["shutdown_timeout_s"])


@pytest.fixture(scope="module")
def service() -> list[tuple[str, str]]:
    sections = parse_unit(UNIT.read_text(encoding="utf-8"))
    assert {"Unit", "Service", "Install"} <= set(sections)
    return sections["Service"]


# (a) static checks -----------------------------------------------------------------------

def test_unit_runs_the_daemon_as_its_own_user(service):
    argv = shlex.split(one(service, "ExecStart"))
    assert Path(argv[0]).name == "digest" and Path(argv[0]).is_absolute()
    assert argv[-1] == "run"
    assert argv[argv.index("-c") + 1] == "/etc/digest/digest.toml"
    assert one(service, "User") == "digest" and "DynamicUser" not in dict(service)
    assert one(service, "StateDirectory") == "digest"
    assert one(service, "Restart") == "on-failure"


def test_unit_reloads_with_hup_and_stops_with_term_and_enough_time(service):
    reload_argv = shlex.split(one(service, "ExecReload"))
    assert Path(reload_argv[0]).name == "kill"
    assert reload_argv[1:] == ["-HUP", "$MAINPID"]
    assert one(service, "KillSignal") == "SIGTERM"
    assert seconds(one(service, "TimeoutStopSec")) >= shutdown_timeout() + 15


def test_unit_sandbox(service):
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallArchitectures": "native",
    }
    assert {key: one(service, key) for key in expected} == expected
    assert set(one(service, "RestrictAddressFamilies").split()) == {
        "AF_INET", "AF_INET6", "AF_UNIX"}
    assert "@system-service" in values(service, "SystemCallFilter")
    writable = [Path(p.lstrip("-")) for v in values(service, "ReadWritePaths") for p in v.split()]
    assert writable and all(p.is_relative_to(STATE_DIR) for p in writable), writable


def test_unit_takes_the_password_from_a_root_only_environment_file(service):
    assert one(service, "EnvironmentFile") == "-/etc/digest/env"
    for assignment in values(service, "Environment"):
        assert "PASSWORD" not in assignment.upper()


def test_unit_config_keeps_everything_it_writes_under_the_state_directory():
    assert "password" not in tomllib.loads(UNIT_CONFIG.read_text(encoding="utf-8"))["smtp"]
    settings = load_settings(UNIT_CONFIG, env={})
    for folder in (settings.data_dir, settings.profiles_dir, settings.inbox_dir,
                   settings.outbox_dir):
        assert folder.is_absolute() and folder.is_relative_to(STATE_DIR), folder
    assert settings.database_url is None and settings.smtp.password is None


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_dockerfile_runs_digest_as_non_root_with_a_data_volume():
    instructions = dockerfile_instructions()
    last_stage = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    final = instructions[last_stage:]
    assert re.fullmatch(r"python:3\.1[1-9]-slim", final[0][1].split()[0])
    users = [arg for word, arg in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert any("/data" in arg for word, arg in final if word == "VOLUME")
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert ("ENTRYPOINT", '["digest"]') in final
    assert ("CMD", '["run"]') in final
    env = " ".join(arg for word, arg in final if word == "ENV")
    assert "DIGEST_CONFIG=/data/digest.toml" in env


def test_dockerfile_bakes_in_no_secret():
    for word, arg in dockerfile_instructions():
        if word in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"PASSWORD|SECRET|TOKEN", arg, re.IGNORECASE), (word, arg)


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_context():
    patterns = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "digest-demo", "tests/data", "benchmarks/data",
            "**/*.env"} <= patterns


def test_compose_builds_the_dockerfile_and_keeps_data_in_a_named_volume():
    compose = YAML(typ="safe").load(COMPOSE.read_text(encoding="utf-8"))
    digest = compose["services"]["digest"]
    context = (COMPOSE.parent / digest["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / digest["build"]["dockerfile"]).resolve() == DOCKERFILE
    volume, _, target = digest["volumes"][0].partition(":")
    assert target == "/data" and volume in compose["volumes"]
    assert digest["restart"] == "unless-stopped"
    assert digest["env_file"]
    assert seconds(digest["stop_grace_period"]) >= shutdown_timeout() + 15
    assert "environment" not in digest  # the password only through env_file
    assert (DEPLOY / "docker" / "digest.env.example").is_file()


def test_compose_scale_has_database_broker_leader_standby_and_workers():
    scale = YAML(typ="safe").load((DEPLOY / "docker" / "compose.scale.yaml")
                                  .read_text(encoding="utf-8"))
    services = scale["services"]
    assert {"db", "redis", "scheduler", "worker", "web"} <= set(services)
    assert services["db"]["image"].startswith("postgres:") and services["db"]["healthcheck"]
    assert services["db"]["env_file"] == "db.env"  # the database never sees digest's secrets
    assert (DEPLOY / "docker" / "db.env.example").is_file()
    ignored = (DEPLOY / "docker" / ".gitignore").read_text().split()
    assert {"digest.env", "db.env"} <= set(ignored)
    assert services["redis"]["image"].startswith("redis:") and services["redis"]["healthcheck"]
    assert services["scheduler"]["command"] == ["run"]
    assert services["scheduler"]["deploy"]["replicas"] >= 2  # a leader and a standby
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["deploy"]["replicas"] >= 2
    for name in ("scheduler", "worker", "web"):
        service = services[name]
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
        assert service["env_file"] and service["volumes"][0].endswith(":/data")
        assert set(service["depends_on"]) == {"db", "redis"}
        environment = service["environment"]
        assert environment["DIGEST_WORKERS"] == "celery"
        for key, value in environment.items():  # passwords only through env_file
            assert not re.search(r"PASSWORD|SECRET", key), key
            assert not re.search(r"://[^/@]*:[^/@]*@", str(value)), (key, value)
        settings = load_settings(None, env={**environment, "DIGEST_DATA_DIR": "/data"})
        assert settings.db_url.startswith("postgresql+psycopg://")
        assert settings.send.workers == "celery"
        assert settings.celery.broker_url.startswith("redis://redis:")
    grace = seconds(services["scheduler"]["stop_grace_period"])
    assert grace >= shutdown_timeout() + 15


# (b) systemd-analyze verify ---------------------------------------------------------------

def test_systemd_analyze_verify(tmp_path):
    """The unit verifies cleanly; the only complaint allowed about the file as shipped is
    that /opt/digest/venv/bin/digest does not exist on this machine."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed: cannot verify deploy/systemd/digest.service")

    def verify(unit: Path) -> tuple[int, list[str]]:
        done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                              timeout=60)
        lines = (done.stdout + done.stderr).splitlines()
        # Only what concerns our unit: other units on the host are not ours to judge.
        return done.returncode, [line for line in lines
                                 if "digest.service" in line or str(unit.parent) in line]

    text = UNIT.read_text(encoding="utf-8")
    shipped = shlex.split(re.search(r"^ExecStart=(.*)$", text, re.MULTILINE)[1])[0]
    local_digest = Path(sys.executable).with_name("digest")
    stand_in = str(local_digest) if local_digest.is_file() else shutil.which("true")
    assert stand_in, "neither a digest script beside sys.executable nor `true` found"
    (tmp_path / "digest.service").write_text(text.replace(f"ExecStart={shipped}",
                                                          f"ExecStart={stand_in}"))
    code, complaints = verify(tmp_path / "digest.service")
    assert code == 0 and not complaints, complaints

    if not Path(shipped).exists():
        code, complaints = verify(UNIT)
        assert all(shipped in line for line in complaints), complaints


# (c) docker build -------------------------------------------------------------------------

def docker_engine() -> str:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no Docker engine: docker is not installed")
    try:
        subprocess.run([docker, "info"], capture_output=True, timeout=30, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        pytest.skip("no Docker engine: docker info failed")
    return docker


def test_docker_build_and_run_as_non_root():
    docker = docker_engine()
    tag = "digest-test-deploy:latest"
    # BuildKit reads deploy/docker/Dockerfile.dockerignore; the legacy builder would not.
    subprocess.run([docker, "build", "-f", str(DOCKERFILE), "-t", tag, str(ROOT)],
                   check=True, timeout=1800, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    try:
        uid = subprocess.run([docker, "run", "--rm", "--entrypoint", "id", tag, "-u"],
                             capture_output=True, text=True, check=True, timeout=120)
        assert uid.stdout.strip() not in {"", "0"}
        version = subprocess.run([docker, "run", "--rm", tag, "--version"],
                                 capture_output=True, text=True, check=True, timeout=120)
        assert "digest" in version.stdout
    finally:
        subprocess.run([docker, "image", "rm", "-f", tag], capture_output=True, timeout=120)
