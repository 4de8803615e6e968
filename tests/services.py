"""The real services some tests need (PostgreSQL, Redis, RabbitMQ): where to find them, a
fresh PostgreSQL schema per test, and a clear skip where a service is absent.

DIGEST_TEST_POSTGRES, DIGEST_TEST_REDIS and DIGEST_TEST_AMQP override the addresses.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import pytest

POSTGRES = os.environ.get("DIGEST_TEST_POSTGRES",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("DIGEST_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP = os.environ.get("DIGEST_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


def reachable(url: str) -> str | None:
    """None if something listens at the URL's host and port, else why not."""
    parts = urlsplit(url.replace("+psycopg", ""))
    default = {"postgresql": 5432, "redis": 6379, "amqp": 5672}[parts.scheme]
    host, port = parts.hostname or "127.0.0.1", parts.port or default
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"{parts.scheme} is not reachable at {host}:{port} ({exc.strerror or exc})"


def need(url: str) -> None:
    """Skip the test, saying why, where the service is absent."""
    problem = reachable(url)
    if problem:
        pytest.skip(problem)


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A database URL whose tables live in a new, empty schema, dropped afterwards."""
    need(POSTGRES)
    psycopg = pytest.importorskip("psycopg", reason="psycopg (the 'postgres' extra) is needed")
    name = f"t_{uuid.uuid4().hex[:12]}"
    plain = POSTGRES.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    separator = "&" if "?" in POSTGRES else "?"
    try:
        yield f"{POSTGRES}{separator}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")
