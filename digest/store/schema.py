"""The tables: papers and where each came from, subscribers, and the edition ledger.

SQLAlchemy Core, so the same schema runs on SQLite (default) and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC without a zone (SQLite has none) and hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)  # the column type guarantees it
        return value.replace(tzinfo=UTC)


class CleanText(TypeDecorator[str]):
    """Text without NUL characters, which PostgreSQL cannot store (SQLite can): they are
    dropped on the way in, so both engines hold the same text."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        # Looking for a NUL is far quicker than replacing none (an abstract is 1 kB).
        return value.replace("\x00", "") if value is not None and "\x00" in value else value


TITLE_KEY_LENGTH = 512  # papers.key and title_key; the store cuts longer title keys

metadata = MetaData()

papers = Table(
    "papers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(TITLE_KEY_LENGTH), nullable=False, unique=True),
    Column("arxiv_id", String(64), unique=True),
    Column("title_key", String(TITLE_KEY_LENGTH), nullable=False, index=True),
    Column("title", CleanText, nullable=False),
    Column("abstract", CleanText, nullable=False, default=""),
    Column("authors", JSON, nullable=False, default=list),
    Column("url", CleanText),
    Column("published", Date),
    Column("first_seen", UTCDateTime, nullable=False, index=True),
    # Known only as a reference (a liked paper imported from a reader's library): matched
    # by liked and disliked references and used for ranking, never offered as new.
    Column("reference", Boolean, nullable=False, default=False, server_default=false()),
    Column("doi", String(255), index=True),  # lower case, without https://doi.org/
)

paper_sources = Table(
    "paper_sources",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("paper_id", Integer, ForeignKey("papers.id", ondelete="CASCADE"), nullable=False),
    Column("source", CleanText, nullable=False),
    Column("source_line", Integer),
    Column("seen_at", UTCDateTime, nullable=False),
    UniqueConstraint("paper_id", "source", name="uq_paper_source"),
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("email", String(320), nullable=False),
    Column("name", CleanText, nullable=False),
    Column("profile_path", CleanText, nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

editions = Table(
    "editions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subscriber_id", String(200), nullable=False),
    Column("slot", UTCDateTime, nullable=False),
    Column("state", String(16), nullable=False),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("smtp_reply", CleanText),
    Column("retryable", Boolean, nullable=False, default=True),
    # Papers first seen up to this instant were candidates; the next edition starts here.
    Column("candidates_until", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    # Who is sending it ("host:pid"), so a restart on that host can take back the editions
    # of a sender that died mid-way at once, instead of waiting for them to go stale.
    Column("claimed_by", String(200)),
    UniqueConstraint("subscriber_id", "slot", name="uq_edition_slot"),
    Index("ix_editions_state", "state"),
)

edition_papers = Table(
    "edition_papers",
    metadata,
    Column("edition_id", Integer, ForeignKey("editions.id", ondelete="CASCADE"),
           primary_key=True),
    Column("paper_id", Integer, ForeignKey("papers.id"), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("score", Float, nullable=False),
    Column("reason", CleanText, nullable=False),
    # The heading of the email's section the pick is shown in (the interest or liked
    # paper it serves most); "" for picks made before sections.
    Column("section", CleanText, nullable=False, default="", server_default=""),
)

feeds = Table(
    "feeds",
    metadata,
    Column("url", String(2048), primary_key=True),
    Column("etag", CleanText),
    Column("last_modified", CleanText),
    Column("last_poll_at", UTCDateTime),
    Column("last_status", String(64)),  # "200", "304", "error", "timeout", ...
    Column("last_error", CleanText),
    Column("last_new_papers", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),  # in a row, for back-off
    Column("next_poll_at", UTCDateTime),
)

paper_embeddings = Table(
    "paper_embeddings",
    metadata,
    Column("paper_id", Integer, ForeignKey("papers.id", ondelete="CASCADE"), primary_key=True),
    Column("model", String(100), primary_key=True),
    Column("vector", LargeBinary, nullable=False),  # float32, little-endian
)

# The model's vector of each text ranking embeds besides papers (profiles' interest phrases,
# liked titles not stored), keyed by the text's SHA-256: the same phrases come back every
# run, and a run with nothing new to embed need not load the model at all.
text_embeddings = Table(
    "text_embeddings",
    metadata,
    Column("model", String(100), primary_key=True),
    Column("text_key", String(64), primary_key=True),  # hex SHA-256 of the UTF-8 text
    Column("vector", LargeBinary, nullable=False),  # float32, little-endian
)

# Every process that sends (`digest send` and its workers, `digest run`, `digest worker`)
# writes a heartbeat here while it lives. An edition left in `sending` by a sender whose
# heartbeat stopped is taken back by whoever looks next, on any host (`recover_abandoned`).
senders = Table(
    "senders",
    metadata,
    Column("id", String(200), primary_key=True),  # the claimer: "host:pid:nonce"
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False, index=True),
)
