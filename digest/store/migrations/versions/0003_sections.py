"""Each pick's section (the interest or liked paper it serves, as the email heads it), so
an edition rendered again from the ledger is grouped as first made; papers known only as
references (imported from a reader's library), which are never offered as new; and each
paper's DOI, by which a library's entries are matched.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("edition_papers") as batch:
        batch.add_column(sa.Column("section", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("papers") as batch:
        batch.add_column(sa.Column("reference", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("doi", sa.String(255)))
        batch.create_index("ix_papers_doi", ["doi"])


def downgrade() -> None:
    with op.batch_alter_table("papers") as batch:
        batch.drop_index("ix_papers_doi")
        batch.drop_column("doi")
        batch.drop_column("reference")
    with op.batch_alter_table("edition_papers") as batch:
        batch.drop_column("section")
