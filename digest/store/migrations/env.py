"""Alembic's entry point for digest's migrations.

`digest.store.migrate` runs it with a connection already in a locked transaction (see
there); the `alembic` command (alembic.ini at the repository root) runs it for developers.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from digest.store.schema import CleanText, UTCDateTime, metadata

config = context.config
target_metadata = metadata


def _render_item(kind: str, obj: Any, _context: Any) -> str | Literal[False]:
    """Autogenerate writes digest's column types as the plain types they store, so a
    migration does not depend on digest's code staying the same."""
    if kind == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime()"
    if kind == "type" and isinstance(obj, CleanText):
        return "sa.Text()"
    return False


def _options() -> dict[str, Any]:
    # SQLite alters most things by copying the table: "batch" operations do that.
    return {"target_metadata": target_metadata, "render_as_batch": True,
            "compare_type": True, "render_item": _render_item}


def _url() -> str:
    url = os.environ.get("DIGEST_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set DIGEST_DATABASE_URL or sqlalchemy.url in alembic.ini")
    return url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **_options())
    # In the transaction `migrate` began, this starts none: it commits all at once.
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():  # `alembic upgrade --sql`: print the SQL, run nothing
    context.configure(url=_url(), literal_binds=True, **_options())
    with context.begin_transaction():
        context.run_migrations()
elif isinstance(given := config.attributes.get("connection"), Connection):
    _run(given)
else:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()
