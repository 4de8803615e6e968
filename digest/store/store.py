"""`Store`: papers (deduplicated by identity), subscribers and the edition ledger."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from digest.errors import StoreError
from digest.identity import normalise_title, paper_key, parse_arxiv_id
from digest.models import Edition, EditionState, FeedState, Paper, PaperEntry, Pick, Profile
from digest.store.schema import (
    edition_papers,
    editions,
    feeds,
    metadata,
    paper_embeddings,
    paper_sources,
    papers,
)
from digest.store.schema import subscribers as subscribers_table


@dataclass(frozen=True)
class AddResult:
    entries: int
    new_papers: int
    new_sources: int


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the sender
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _paper(row: Row[Any]) -> Paper:
    m = row._mapping
    return Paper(
        key=m["key"],
        title=m["title"],
        abstract=m["abstract"],
        first_seen=m["first_seen"],
        arxiv_id=m["arxiv_id"],
        authors=tuple(m["authors"] or ()),
        url=m["url"],
        published=m["published"],
        row_id=m["id"],
    )


class Store:
    """A connection pool to one database; cheap to keep, safe to share within a process."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        """Open (creating if needed) the database at `url`. Raises StoreError."""
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            engine = create_engine(url)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            metadata.create_all(engine)
            _add_missing_columns(engine)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot open the database {engine_name(url)}: {exc}") from exc
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreError(f"database error: {exc.orig}") from exc

    # Papers ---------------------------------------------------------------------------

    def add_entries(self, entries: Sequence[PaperEntry], now: datetime) -> AddResult:
        """Merge entries into the papers they are; idempotent for the same (paper, source)."""
        new_papers = new_sources = 0
        with self._begin() as conn:
            for entry in entries:
                paper_id, created = self._merge_entry(conn, entry, now)
                new_papers += created
                found = conn.execute(
                    select(paper_sources.c.id).where(
                        paper_sources.c.paper_id == paper_id,
                        paper_sources.c.source == entry.source,
                    )
                ).first()
                if found is None:
                    conn.execute(insert(paper_sources).values(
                        paper_id=paper_id, source=entry.source,
                        source_line=entry.source_line, seen_at=now))
                    new_sources += 1
        return AddResult(len(entries), new_papers, new_sources)

    def _merge_entry(self, conn: Connection, entry: PaperEntry, now: datetime) -> tuple[int, bool]:
        title_key = normalise_title(entry.title)
        row = None
        if entry.arxiv_id:
            row = conn.execute(select(papers).where(papers.c.arxiv_id == entry.arxiv_id)).first()
        if row is None:
            query = select(papers).where(papers.c.title_key == title_key)
            if entry.arxiv_id:  # a paper with another arXiv id and the same title is another
                query = query.where(papers.c.arxiv_id.is_(None))
            row = conn.execute(query.order_by(papers.c.id)).first()
        if row is None:
            result = conn.execute(insert(papers).values(
                key=paper_key(entry.arxiv_id, entry.title), arxiv_id=entry.arxiv_id,
                title_key=title_key, title=entry.title, abstract=entry.abstract,
                authors=list(entry.authors), url=entry.url, published=entry.published,
                first_seen=now))
            assert result.inserted_primary_key is not None
            return int(result.inserted_primary_key[0]), True
        m = row._mapping
        changes: dict[str, Any] = {}
        if entry.arxiv_id and not m["arxiv_id"]:
            changes.update(arxiv_id=entry.arxiv_id, key=entry.arxiv_id)
        if len(entry.abstract) > len(m["abstract"]):
            changes["abstract"] = entry.abstract
        if entry.authors and not m["authors"]:
            changes["authors"] = list(entry.authors)
        if entry.url and not m["url"]:
            changes["url"] = entry.url
        if entry.published and not m["published"]:
            changes["published"] = entry.published
        if changes:
            conn.execute(update(papers).where(papers.c.id == m["id"]).values(**changes))
        return int(m["id"]), False

    def count_papers(self) -> int:
        with self._begin() as conn:
            return int(conn.execute(select(func.count()).select_from(papers)).scalar_one())

    def papers(self, *, since: datetime | None = None) -> list[Paper]:
        """All papers, or those first seen after `since`, oldest first."""
        query = select(papers).order_by(papers.c.id)
        if since is not None:
            query = query.where(papers.c.first_seen > since)
        with self._begin() as conn:
            return [_paper(row) for row in conn.execute(query)]

    def find_papers(self, refs: Iterable[str]) -> dict[str, Paper]:
        """Map each reference (an arXiv id, URL or a title) to the stored paper it names."""
        refs = [r for r in refs if r.strip()]
        by_arxiv = {ref: parse_arxiv_id(ref) for ref in refs}
        by_title = {ref: normalise_title(ref) for ref in refs}
        found: dict[str, Paper] = {}
        arxiv_rows: dict[str, Paper] = {}
        title_rows: dict[str, Paper] = {}
        ids = sorted({a for a in by_arxiv.values() if a})
        keys = sorted(set(by_title.values()))
        with self._begin() as conn:
            for chunk in _chunks(ids):  # SQLite limits the parameters of one statement
                for r in conn.execute(select(papers).where(papers.c.arxiv_id.in_(chunk))):
                    arxiv_rows[r._mapping["arxiv_id"]] = _paper(r)
            for chunk in _chunks(keys):
                # Newest first, so that the oldest record of a repeated title wins.
                for r in conn.execute(select(papers).where(papers.c.title_key.in_(chunk))
                                      .order_by(papers.c.id.desc())):
                    title_rows[r._mapping["title_key"]] = _paper(r)
        for ref in refs:
            arxiv_id = by_arxiv[ref]
            paper = arxiv_rows.get(arxiv_id) if arxiv_id else None
            paper = paper or title_rows.get(by_title[ref])
            if paper is not None:
                found[ref] = paper
        return found

    # Subscribers ----------------------------------------------------------------------

    def save_subscriber(self, profile: Profile, now: datetime) -> None:
        values = dict(email=profile.email, name=profile.name, profile_path=str(profile.path),
                      active=profile.active, updated_at=now)
        with self._begin() as conn:
            done = conn.execute(update(subscribers_table).where(
                subscribers_table.c.id == profile.subscriber_id).values(**values)).rowcount
            if not done:
                conn.execute(insert(subscribers_table).values(id=profile.subscriber_id, **values))

    # Editions -------------------------------------------------------------------------

    def sent_paper_ids(self, subscriber_id: str) -> set[int]:
        """Papers in this subscriber's editions that went out or may still go out."""
        return self.sent_paper_ids_many([subscriber_id])[subscriber_id]

    def sent_paper_ids_many(self, subscriber_ids: Sequence[str]) -> dict[str, set[int]]:
        """`sent_paper_ids` for many subscribers in a few queries."""
        sent: dict[str, set[int]] = {s: set() for s in subscriber_ids}
        with self._begin() as conn:
            for chunk in _chunks(sorted(sent)):
                query = (
                    select(editions.c.subscriber_id, edition_papers.c.paper_id)
                    .join(editions, editions.c.id == edition_papers.c.edition_id)
                    .where(editions.c.subscriber_id.in_(chunk))
                    .where((editions.c.state != EditionState.FAILED) | editions.c.retryable)
                )
                for subscriber_id, paper_id in conn.execute(query):
                    sent[subscriber_id].add(int(paper_id))
        return sent

    def last_edition(self, subscriber_id: str) -> Edition | None:
        """The subscriber's most recent edition, whatever its state."""
        with self._begin() as conn:
            row = conn.execute(
                select(editions).where(editions.c.subscriber_id == subscriber_id)
                .order_by(editions.c.slot.desc()).limit(1)).first()
            return self._edition(conn, row) if row is not None else None

    def get_edition(self, subscriber_id: str, slot: datetime) -> Edition | None:
        with self._begin() as conn:
            row = conn.execute(select(editions).where(
                editions.c.subscriber_id == subscriber_id, editions.c.slot == slot)).first()
            return self._edition(conn, row) if row is not None else None

    def _edition(self, conn: Connection, row: Row[Any]) -> Edition:
        m = row._mapping
        pick_rows = conn.execute(
            select(papers, edition_papers.c.score, edition_papers.c.reason)
            .join(edition_papers, edition_papers.c.paper_id == papers.c.id)
            .where(edition_papers.c.edition_id == m["id"])
            .order_by(edition_papers.c.position))
        picks = tuple(Pick(_paper(r), r._mapping["score"], r._mapping["reason"])
                      for r in pick_rows)
        return Edition(
            subscriber_id=m["subscriber_id"], slot=m["slot"], state=EditionState(m["state"]),
            message_id=m["message_id"], picks=picks, attempts=m["attempts"],
            smtp_reply=m["smtp_reply"], retryable=m["retryable"], row_id=m["id"],
            created_at=m["created_at"], updated_at=m["updated_at"], sent_at=m["sent_at"])

    def create_edition(self, edition: Edition, *, candidates_until: datetime,
                       now: datetime) -> Edition | None:
        """Record a new edition with its picks; None if that (subscriber, slot) already exists."""
        try:
            with self._begin() as conn:
                result = conn.execute(insert(editions).values(
                    subscriber_id=edition.subscriber_id, slot=edition.slot,
                    state=edition.state.value, message_id=edition.message_id, attempts=0,
                    retryable=True, candidates_until=candidates_until,
                    created_at=now, updated_at=now))
                assert result.inserted_primary_key is not None
                row_id = int(result.inserted_primary_key[0])
                if edition.picks:
                    conn.execute(insert(edition_papers), [
                        dict(edition_id=row_id, paper_id=pick.paper.row_id, position=position,
                             score=pick.score, reason=pick.reason)
                        for position, pick in enumerate(edition.picks)])
                row = conn.execute(select(editions).where(editions.c.id == row_id)).one()
                return self._edition(conn, row)
        except IntegrityError:
            return None  # another sender created it first: theirs is the edition

    def candidates_since(self, subscriber_id: str) -> datetime | None:
        """Where the subscriber's next edition starts: the cut-off of their last edition that
        was not lost. Papers of failed editions are offered again (already-sent ones are
        excluded separately)."""
        with self._begin() as conn:
            value = conn.execute(
                select(func.max(editions.c.candidates_until))
                .where(editions.c.subscriber_id == subscriber_id,
                       editions.c.state != EditionState.FAILED.value)).scalar()
        return value if isinstance(value, datetime) else None

    def begin_sending(self, edition: Edition, *, now: datetime, stale_before: datetime,
                      claimer: str = "") -> bool:
        """Take the edition for sending; False if another sender has it or it is done.

        Atomic, so two `digest send` runs never both send one edition. An edition left in
        `sending` since before `stale_before` (its sender died) may be taken again.
        `claimer` ("host:pid") is recorded for `recover_abandoned`.
        """
        with self._begin() as conn:
            taken = conn.execute(
                update(editions)
                .where(editions.c.id == edition.row_id)
                .where((editions.c.state == EditionState.PENDING.value)
                       | ((editions.c.state == EditionState.FAILED.value) & editions.c.retryable)
                       | ((editions.c.state == EditionState.SENDING.value)
                          & (editions.c.updated_at < stale_before)))
                .values(state=EditionState.SENDING.value, updated_at=now,
                        claimed_by=claimer or None)).rowcount
        return bool(taken)

    def recover_abandoned(self, host: str, alive: Callable[[int], bool], *,
                          now: datetime) -> int:
        """Put back to `pending` the editions that a dead sender on `host` left in `sending`.

        Their server acknowledgement was never recorded, so they are sent again: the one
        window where a message can arrive twice (with the same Message-ID).
        """
        recovered = 0
        with self._begin() as conn:
            rows = conn.execute(select(editions.c.id, editions.c.claimed_by).where(
                editions.c.state == EditionState.SENDING.value,
                editions.c.claimed_by.like(f"{host}:%"))).all()
            for row_id, claimed_by in rows:
                pid = claimed_by.rpartition(":")[2]
                if pid.isdigit() and not alive(int(pid)):
                    recovered += conn.execute(
                        update(editions).where(editions.c.id == row_id,
                                               editions.c.claimed_by == claimed_by,
                                               editions.c.state == EditionState.SENDING.value)
                        .values(state=EditionState.PENDING.value, claimed_by=None,
                                updated_at=now)).rowcount
        return recovered

    def supersede_failed(self, subscriber_id: str, *, before: datetime, by: datetime,
                         now: datetime) -> int:
        """Stop retrying the subscriber's failed editions older than `before`: a newer edition
        takes their papers instead. Returns how many there were."""
        with self._begin() as conn:
            return int(conn.execute(
                update(editions)
                .where(editions.c.subscriber_id == subscriber_id,
                       editions.c.state == EditionState.FAILED.value, editions.c.retryable,
                       editions.c.slot < before)
                .values(retryable=False, updated_at=now,
                        smtp_reply=func.coalesce(editions.c.smtp_reply, "")
                        + f" (superseded by the edition of {by.isoformat()})")).rowcount)

    def record_attempt(self, edition: Edition, *, state: EditionState, reply: str | None,
                       retryable: bool, now: datetime) -> None:
        """Record the outcome of one delivery attempt."""
        values: dict[str, Any] = dict(state=state.value, smtp_reply=reply, retryable=retryable,
                                      attempts=editions.c.attempts + 1, updated_at=now)
        if state is EditionState.SENT:
            values["sent_at"] = now
        with self._begin() as conn:
            conn.execute(update(editions).where(editions.c.id == edition.row_id).values(**values))

    def retryable_editions(self) -> list[Edition]:
        """Failed editions that may still be sent (their failure was transient)."""
        with self._begin() as conn:
            rows = conn.execute(select(editions).where(
                editions.c.state == EditionState.FAILED.value, editions.c.retryable)
                .order_by(editions.c.updated_at)).all()
            return [self._edition(conn, row) for row in rows]

    def edition_counts(self) -> dict[str, int]:
        with self._begin() as conn:
            rows = conn.execute(select(editions.c.state, func.count()).group_by(editions.c.state))
            return {str(state): int(count) for state, count in rows}

    # Embeddings ------------------------------------------------------------------------

    def embeddings(self, paper_ids: Sequence[int], model: str) -> dict[int, np.ndarray]:
        """Stored vectors of these papers for `model`; missing ones are simply absent."""
        found: dict[int, np.ndarray] = {}
        with self._begin() as conn:
            for start in range(0, len(paper_ids), 500):
                chunk = list(paper_ids[start:start + 500])
                rows = conn.execute(select(paper_embeddings.c.paper_id, paper_embeddings.c.vector)
                                    .where(paper_embeddings.c.model == model,
                                           paper_embeddings.c.paper_id.in_(chunk)))
                for paper_id, blob in rows:
                    found[int(paper_id)] = np.frombuffer(blob, dtype="<f4")
        return found

    def save_embeddings(self, model: str, vectors: dict[int, np.ndarray]) -> None:
        if not vectors:
            return
        dialect = self.engine.dialect.name
        statement = (sqlite_insert(paper_embeddings).on_conflict_do_nothing()
                     if dialect == "sqlite" else
                     postgresql_insert(paper_embeddings).on_conflict_do_nothing()
                     if dialect == "postgresql" else insert(paper_embeddings))
        with self._begin() as conn:  # another process may have stored some meanwhile
            conn.execute(statement, [
                dict(paper_id=paper_id, model=model,
                     vector=np.asarray(vector, dtype="<f4").tobytes())
                for paper_id, vector in vectors.items()])

    # Feeds -----------------------------------------------------------------------------

    def feed_state(self, url: str) -> FeedState:
        with self._begin() as conn:
            row = conn.execute(select(feeds).where(feeds.c.url == url)).first()
        return FeedState(**row._mapping) if row is not None else FeedState(url=url)

    def feed_states(self) -> list[FeedState]:
        with self._begin() as conn:
            return [FeedState(**row._mapping)
                    for row in conn.execute(select(feeds).order_by(feeds.c.url))]

    def save_feed_state(self, state: FeedState) -> None:
        values = {k: v for k, v in state.__dict__.items() if k != "url"}
        with self._begin() as conn:
            done = conn.execute(update(feeds).where(feeds.c.url == state.url)
                                .values(**values)).rowcount
            if not done:
                conn.execute(insert(feeds).values(url=state.url, **values))


def _add_missing_columns(engine: Engine) -> None:
    """Columns added since a database was created (until migrations arrive with Alembic)."""
    present = {c["name"] for c in inspect(engine).get_columns("editions")}
    if "claimed_by" not in present:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE editions ADD COLUMN claimed_by VARCHAR(200)"))


def _chunks(values: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def engine_name(url: str) -> str:
    """The URL without any password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
