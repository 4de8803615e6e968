"""Senders' heartbeats, so that editions a dead sender on any host left in `sending` are
taken back within seconds rather than once they are `mail.sending_stale_s` old.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "senders",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_senders_heartbeat_at", "senders", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index("ix_senders_heartbeat_at", table_name="senders")
    op.drop_table("senders")
