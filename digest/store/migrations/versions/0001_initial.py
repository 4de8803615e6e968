"""The schema digest had when migrations began: papers and their sources, subscribers,
the edition ledger, feeds and paper embeddings.

Revision ID: 0001
Create Date: 2026-11-25

A database that digest made before migrations (its tables there, no alembic_version) is
adopted rather than created: the tables it has keep their rows, those it lacks are
created, and editions gains claimed_by if it is missing (older digests added that column
on opening). `digest.store.migrate` refuses tables of the same names that another program
made.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _existing_tables() -> dict[str, set[str]]:
    """The tables already there, with their columns; none when only printing SQL."""
    if context.is_offline_mode():
        return {}
    inspector = sa.inspect(op.get_bind())
    return {name: {c["name"] for c in inspector.get_columns(name)}
            for name in inspector.get_table_names()}


def upgrade() -> None:
    existing = _existing_tables()
    if "papers" not in existing:
        op.create_table(
            "papers",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("key", sa.String(length=512), nullable=False),
            sa.Column("arxiv_id", sa.String(length=64), nullable=True),
            sa.Column("title_key", sa.String(length=512), nullable=False),
            sa.Column("title", sa.Text(), nullable=False),
            sa.Column("abstract", sa.Text(), nullable=False),
            sa.Column("authors", sa.JSON(), nullable=False),
            sa.Column("url", sa.Text(), nullable=True),
            sa.Column("published", sa.Date(), nullable=True),
            sa.Column("first_seen", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("key"),
            sa.UniqueConstraint("arxiv_id"),
        )
        op.create_index("ix_papers_title_key", "papers", ["title_key"])
        op.create_index("ix_papers_first_seen", "papers", ["first_seen"])
    if "paper_sources" not in existing:
        op.create_table(
            "paper_sources",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("paper_id", sa.Integer(), nullable=False),
            sa.Column("source", sa.Text(), nullable=False),
            sa.Column("source_line", sa.Integer(), nullable=True),
            sa.Column("seen_at", sa.DateTime(), nullable=False),
            sa.ForeignKeyConstraint(["paper_id"], ["papers.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("paper_id", "source", name="uq_paper_source"),
        )
    if "subscribers" not in existing:
        op.create_table(
            "subscribers",
            sa.Column("id", sa.String(length=200), nullable=False),
            sa.Column("email", sa.String(length=320), nullable=False),
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("profile_path", sa.Text(), nullable=False),
            sa.Column("active", sa.Boolean(), nullable=False),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
    if "editions" not in existing:
        op.create_table(
            "editions",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("subscriber_id", sa.String(length=200), nullable=False),
            sa.Column("slot", sa.DateTime(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("message_id", sa.String(length=255), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("smtp_reply", sa.Text(), nullable=True),
            sa.Column("retryable", sa.Boolean(), nullable=False),
            sa.Column("candidates_until", sa.DateTime(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
            sa.Column("sent_at", sa.DateTime(), nullable=True),
            sa.Column("claimed_by", sa.String(length=200), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("message_id"),
            sa.UniqueConstraint("subscriber_id", "slot", name="uq_edition_slot"),
        )
        op.create_index("ix_editions_state", "editions", ["state"])
    elif "claimed_by" not in existing["editions"]:
        op.add_column("editions", sa.Column("claimed_by", sa.String(length=200), nullable=True))
    if "edition_papers" not in existing:
        op.create_table(
            "edition_papers",
            sa.Column("edition_id", sa.Integer(), nullable=False),
            sa.Column("paper_id", sa.Integer(), nullable=False),
            sa.Column("position", sa.Integer(), nullable=False),
            sa.Column("score", sa.Float(), nullable=False),
            sa.Column("reason", sa.Text(), nullable=False),
            sa.ForeignKeyConstraint(["edition_id"], ["editions.id"], ondelete="CASCADE"),
            sa.ForeignKeyConstraint(["paper_id"], ["papers.id"]),
            sa.PrimaryKeyConstraint("edition_id", "paper_id"),
        )
    if "feeds" not in existing:
        op.create_table(
            "feeds",
            sa.Column("url", sa.String(length=2048), nullable=False),
            sa.Column("etag", sa.Text(), nullable=True),
            sa.Column("last_modified", sa.Text(), nullable=True),
            sa.Column("last_poll_at", sa.DateTime(), nullable=True),
            sa.Column("last_status", sa.String(length=64), nullable=True),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("last_new_papers", sa.Integer(), nullable=False),
            sa.Column("failures", sa.Integer(), nullable=False),
            sa.Column("next_poll_at", sa.DateTime(), nullable=True),
            sa.PrimaryKeyConstraint("url"),
        )
    if "paper_embeddings" not in existing:
        op.create_table(
            "paper_embeddings",
            sa.Column("paper_id", sa.Integer(), nullable=False),
            sa.Column("model", sa.String(length=100), nullable=False),
            sa.Column("vector", sa.LargeBinary(), nullable=False),
            sa.ForeignKeyConstraint(["paper_id"], ["papers.id"], ondelete="CASCADE"),
            sa.PrimaryKeyConstraint("paper_id", "model"),
        )


def downgrade() -> None:
    for table in ("paper_embeddings", "feeds", "edition_papers", "editions", "subscribers",
                  "paper_sources", "papers"):
        op.drop_table(table)
