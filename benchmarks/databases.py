"""Scratch databases for the benchmarks: a fresh PostgreSQL schema, dropped afterwards."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def postgres_schema(url: str, prefix: str = "bench") -> Iterator[str]:
    """`url` (a SQLAlchemy URL of a PostgreSQL database) with its tables in a new, empty
    schema named after `prefix`, dropped afterwards."""
    import psycopg

    name = f"{prefix}_{secrets.token_hex(6)}"
    plain = url.replace("+psycopg", "")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")
