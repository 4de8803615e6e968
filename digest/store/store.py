"""`Store`: papers (deduplicated by identity), subscribers and the edition ledger."""

from __future__ import annotations

import sqlite3
from bisect import insort
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import chain, islice
from operator import itemgetter
from pathlib import Path
from typing import Any, cast
from weakref import WeakKeyDictionary

import numpy as np
from sqlalchemy import (
    ClauseElement,
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect, Row, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.sql.compiler import SQLCompiler

from digest.errors import StoreError
from digest.identity import normalise_title, parse_arxiv_id, parse_doi
from digest.models import Edition, EditionState, FeedState, Paper, PaperEntry, Pick, Profile
from digest.store.migrate import HEAD, current_revision, ensure_current
from digest.store.migrate import upgrade as upgrade_schema
from digest.store.schema import (
    TITLE_KEY_LENGTH,
    edition_papers,
    editions,
    feeds,
    paper_embeddings,
    paper_sources,
    papers,
    senders,
    text_embeddings,
)
from digest.store.schema import subscribers as subscribers_table
from digest.store.snapshot import HEARTBEAT_S as HEARTBEAT_S  # the senders' timing lives
from digest.store.snapshot import SILENT_AFTER_S as SILENT_AFTER_S  # there, imported cheaply


@dataclass(frozen=True)
class Attempt:
    """The outcome of one try at delivering an edition, to be recorded."""

    edition: Edition
    state: EditionState
    reply: str | None
    retryable: bool


# Entries merged and stored together (`Store.add_entries`): a few queries and statements
# for each batch; a batch's entries and their papers' rows are all it holds in memory.
BATCH = 2_000


@dataclass(frozen=True)
class AddResult:
    entries: int
    new_papers: int
    new_sources: int


@dataclass(frozen=True)
class _StoredBatch:
    """What `_store_batch` did: each entry's paper row (in the entries' order), how many
    papers are new to the stream, and how many (paper, source) pairs are new."""

    rows: list[dict[str, Any]]
    new_papers: int
    new_sources: int


@dataclass(frozen=True)
class AddedReferences:
    """What `add_references` did: each entry's paper (in the entries' order), and how many
    of them it stored."""

    papers: tuple[Paper, ...]
    new_papers: int


# PostgreSQL, unless the URL says otherwise: give up connecting after 10 s, and notice a
# dead server or network within about 25 s (TCP keepalives) instead of hanging for the
# system's default of hours; the scheduler leader's lock session depends on it.
_PG_CONNECT = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10,
               "keepalives_interval": 5, "keepalives_count": 3}


def _connect_args(url: str) -> dict[str, Any]:
    if not url.startswith(("postgresql", "postgres")):
        return {}
    given = url.partition("?")[2]
    return {k: v for k, v in _PG_CONNECT.items() if f"{k}=" not in given}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")  # first: the next one may wait for a lock
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the sender
    # In WAL mode this syncs at checkpoints, not at every commit: a killed process loses
    # nothing committed; a power cut may lose the last commits (see docs/delivery.md).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _paper(row: Row[Any]) -> Paper:
    return _paper_of(row._mapping)


def _paper_of(m: Mapping[Any, Any]) -> Paper:
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
        doi=m["doi"],
    )


# A DOI as people write it: bare, `doi:10.…`, or a doi.org link. Stored bare, lower case (DOIs
# are case-insensitive), within the column's 255 characters.
class Store:
    """A connection pool to one database; cheap to keep, safe to share within a process."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.closed = False

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Store:
        """Open the database at `url`, creating it if needed and bringing its schema to the
        newest revision (unless `upgrade` is False). Raises StoreError."""
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            engine = create_engine(url, connect_args=_connect_args(url))
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot open the database {engine_name(url)}: "
                             f"{_describe(exc)}") from exc
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        if upgrade:
            try:
                store._migrate(ensure_current, doing="open")
            except BaseException:
                engine.dispose()
                raise
        return store

    @property
    def name(self) -> str:
        """The database URL without its password, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def upgrade(self) -> tuple[str | None, str | None]:
        """Bring the schema to the newest revision; returns the revisions (before, after).
        Safe to run from many processes at once. Raises StoreError."""
        return self._migrate(upgrade_schema, doing="upgrade")

    def _migrate(self, how: Callable[[Engine], tuple[str | None, str | None]], *,
                 doing: str) -> tuple[str | None, str | None]:
        try:
            return how(self.engine)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot {doing} the database {self.name}: {_describe(exc)}"
                             ) from exc

    def revision(self) -> tuple[str | None, str]:
        """(the revision the database is at, the newest this digest knows); None when the
        database has none yet. Raises StoreError."""
        with self._begin() as conn:
            return current_revision(conn), HEAD

    def close(self) -> None:
        self.closed = True  # a sender's heartbeat thread stops on seeing it
        self.engine.dispose()

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreError(f"database error on {self.name}: {_describe(exc)}") from exc

    # Papers ---------------------------------------------------------------------------

    def add_entries(self, entries: Iterable[PaperEntry], now: datetime, *,
                    progress: Callable[[int], None] | None = None,
                    batch: int = BATCH) -> AddResult:
        """Merge entries into the papers they are; idempotent for the same (paper, source),
        also when another process adds the same entries at the same time.

        `entries` is read as it comes, `batch` entries at a time, each batch looked up in a
        few queries and written in a few statements: a file of any size is stored in
        little memory. `progress` is told of each entry once its batch is merged (in one
        transaction: none is stored until all are)."""
        count = new_papers = new_sources = 0
        with self._begin() as conn:
            _take_turn_writing_papers(conn)
            for chunk in _batches(entries, batch):
                stored = self._store_batch(conn, chunk, now, reference=False)
                count += len(chunk)
                new_papers += stored.new_papers
                new_sources += stored.new_sources
                if progress is not None:
                    for _ in chunk:
                        progress(1)
        return AddResult(count, new_papers, new_sources)

    def _store_batch(self, conn: Connection, entries: Sequence[PaperEntry], now: datetime, *,
                     reference: bool) -> _StoredBatch:
        """Merge a batch of entries into the papers they are (`_PaperIndex.match`, over the
        stored papers they may be, read in a few queries), in the entries' order: an entry
        may be a paper stored by one before it. New papers are stored as references if
        `reference`; a reference an entry of `add_entries` is becomes an ordinary paper, new
        to the stream."""
        index = _PaperIndex.load(conn, entries)
        rows: list[dict[str, Any]] = []
        created = 0
        for entry in entries:
            row = index.match(entry)
            if row is None:
                row = index.add(_new_row(entry, index.title_key(entry.title), now,
                                         reference=reference))
            else:
                changes = _merged(row, entry)
                if row["reference"] and not reference:
                    # A paper known only as someone's reference has now arrived as a paper:
                    # it is offered from now on as if it had never been imported (whoever
                    # liked it is never offered it: it is among their liked papers).
                    changes.update(reference=False, first_seen=now)
                    created += 1
                index.change(row, changes)
            rows.append(row)
        # Changes first: a paper given its arXiv id frees its title key for a new one.
        _update_papers(conn, index.changes)
        inserted = {key: row_id for row_id, key in _INSERT_PAPERS.run(
            conn, list(map(_paper_values, index.new)))}
        created += len(inserted)
        for row in index.new:
            if row["key"] in inserted:
                row["id"] = inserted[row["key"]]
                continue
            # Another process stored this paper since the look-up (its transaction has now
            # committed: the insert waited for it): it is that one.
            stored, made = self._merge_stored(conn, _entry_of(row), now, reference=reference)
            created += made
            row.update(stored)
        sources: dict[tuple[int, str], int | None] = {}
        for row, entry in zip(rows, entries, strict=True):
            sources.setdefault((row["id"], entry.source), entry.source_line)
        added = _ADD_SOURCES.run(conn, [(paper_id, source, line, now)
                                        for (paper_id, source), line in sources.items()])
        return _StoredBatch(rows, created, added)

    @staticmethod
    def _merge_stored(conn: Connection, entry: PaperEntry, now: datetime, *,
                      reference: bool) -> tuple[dict[str, Any], bool]:
        """Merge `entry` into the paper another process stored after this batch looked for
        it (this batch's insert of it waited for theirs to commit, then did nothing): that
        paper's row, and whether it is new to the stream of papers (it was known until now
        only as a reference, see `add_references`)."""
        index = _PaperIndex.load(conn, [entry])
        row = index.match(entry)
        if row is None:
            raise StoreError(f"{entry.source}: the paper {entry.title!r} clashes with a "
                             "stored one that cannot be found")
        changes = _merged(row, entry)
        promoted = bool(row["reference"]) and not reference
        if promoted:
            changes.update(reference=False, first_seen=now)
        index.change(row, changes)
        _update_papers(conn, index.changes)
        return row, promoted

    def add_references(self, entries: Sequence[PaperEntry], now: datetime) -> AddedReferences:
        """Match each entry of a reader's library to a stored paper (by arXiv id, then DOI,
        then title, as `add_entries` does) and store the others as reference papers: used
        for ranking and found by liked and disliked references, never offered as new
        (`papers(references=False)`). A matched paper gets what it lacks (DOI, abstract,
        authors) and stays what it was. Idempotent; a few statements for thousands of
        entries, in batches as `add_entries` stores them."""
        found: list[Paper] = []
        created = 0
        with self._begin() as conn:
            _take_turn_writing_papers(conn)
            for chunk in _batches(entries, BATCH):
                stored = self._store_batch(conn, chunk, now, reference=True)
                found.extend(_paper_of(row) for row in stored.rows)
                created += stored.new_papers
        return AddedReferences(tuple(found), created)

    def count_papers(self) -> int:
        with self._begin() as conn:
            return int(conn.execute(select(func.count()).select_from(papers)).scalar_one())

    def papers(self, *, since: datetime | None = None, references: bool = True) -> list[Paper]:
        """All papers, or those first seen after `since`, oldest first; without
        `references`, not the papers known only as a reader's references (`add_references`):
        candidates for an edition are never those."""
        query = select(papers).order_by(papers.c.id)
        if since is not None:
            query = query.where(papers.c.first_seen > since)
        if not references:
            query = query.where(papers.c.reference == false())
        with self._begin() as conn:
            return [_paper(row) for row in conn.execute(query)]

    def candidate_papers(self, since: datetime | None) -> list[Paper]:
        """The papers an edition may offer: those first seen after `since` (all if None),
        oldest first, without the papers known only as a reader's references."""
        return self.papers(since=since, references=False)

    def paper(self, row_id: int) -> Paper | None:
        with self._begin() as conn:
            row = conn.execute(select(papers).where(papers.c.id == row_id)).first()
        return _paper(row) if row is not None else None

    def find_papers(self, refs: Iterable[str]) -> dict[str, Paper]:
        """Map each reference (an arXiv id, URL, DOI or a title) to the stored paper it
        names."""
        refs = [r for r in refs if r.strip()]
        by_arxiv = {ref: parse_arxiv_id(ref) for ref in refs}
        by_doi = {ref: parse_doi(ref) for ref in refs}
        by_title = {ref: _title_key(ref) for ref in refs}
        found: dict[str, Paper] = {}
        arxiv_rows: dict[str, Paper] = {}
        doi_rows: dict[str, Paper] = {}
        title_rows: dict[str, Paper] = {}
        ids = sorted({a for a in by_arxiv.values() if a})
        dois = sorted({d for d in by_doi.values() if d})
        keys = sorted(set(by_title.values()))
        with self._begin() as conn:
            for chunk in _chunks(ids):  # SQLite limits the parameters of one statement
                for r in conn.execute(select(papers).where(papers.c.arxiv_id.in_(chunk))):
                    arxiv_rows[r._mapping["arxiv_id"]] = _paper(r)
            for chunk in _chunks(dois):  # newest first: the oldest paper of a DOI wins
                for r in conn.execute(select(papers).where(papers.c.doi.in_(chunk))
                                      .order_by(papers.c.id.desc())):
                    doi_rows[r._mapping["doi"]] = _paper(r)
            for chunk in _chunks(keys):
                # Newest first, so that the oldest record of a repeated title wins.
                for r in conn.execute(select(papers).where(papers.c.title_key.in_(chunk))
                                      .order_by(papers.c.id.desc())):
                    title_rows[r._mapping["title_key"]] = _paper(r)
        for ref in refs:
            arxiv_id, doi = by_arxiv[ref], by_doi[ref]
            paper = arxiv_rows.get(arxiv_id) if arxiv_id else None
            paper = paper or (doi_rows.get(doi) if doi else None)
            paper = paper or title_rows.get(by_title[ref])
            if paper is not None:
                found[ref] = paper
        return found

    # Subscribers ----------------------------------------------------------------------

    def profile_path(self, subscriber_id: str) -> Path | None:
        """Where the subscriber's profile file was when an edition was last made for them."""
        with self._begin() as conn:
            value = conn.execute(select(subscribers_table.c.profile_path).where(
                subscribers_table.c.id == subscriber_id)).scalar()
        return Path(value) if value else None

    def save_subscriber(self, profile: Profile, now: datetime) -> None:
        self.save_subscribers([profile], now)

    def save_subscribers(self, profiles: Sequence[Profile], now: datetime) -> None:
        """`save_subscriber` for many profiles in one transaction per 500."""
        folders: dict[Path, Path] = {}
        for chunk in _chunks(profiles):
            with self._begin() as conn:
                _SAVE_SUBSCRIBERS.run(conn, [
                    (p.subscriber_id, p.email, p.name, str(_resolved(p.path, folders)),
                     p.active, now) for p in chunk])

    def _upsert(self, table: Any) -> Any:
        return _upsert_for(self.engine.dialect, table)

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
        return self.get_editions([(subscriber_id, slot)]).get((subscriber_id, slot))

    def create_edition(self, edition: Edition, *, candidates_until: datetime,
                       now: datetime) -> Edition | None:
        """Record a new edition with its picks; None if that (subscriber, slot) already exists."""
        created = self.create_editions([edition], candidates_until=candidates_until, now=now)
        return created[0] if created else None

    def _edition(self, conn: Connection, row: Row[Any]) -> Edition:
        return self._editions(conn, [row])[0]

    def get_editions(self, keys: Sequence[tuple[str, datetime]]
                     ) -> dict[tuple[str, datetime], Edition]:
        """The recorded editions among these (subscriber, slot) pairs, with their picks."""
        wanted = set(keys)
        found: dict[tuple[str, datetime], Edition] = {}
        with self._begin() as conn:
            for chunk in _chunks(sorted({s for s, _ in wanted})):
                rows = conn.execute(select(editions).where(
                    editions.c.subscriber_id.in_(chunk),
                    editions.c.slot.in_(sorted({slot for _, slot in wanted})))).all()
                rows = [r for r in rows
                        if (r._mapping["subscriber_id"], r._mapping["slot"]) in wanted]
                for edition in self._editions(conn, rows):
                    found[(edition.subscriber_id, edition.slot)] = edition
        return found

    def _editions(self, conn: Connection, rows: Sequence[Row[Any]]) -> list[Edition]:
        """Editions from their rows, their picks read in one query."""
        picks: dict[int, list[Pick]] = {}
        ids = [int(r._mapping["id"]) for r in rows]
        for chunk in _chunks(ids):
            pick_rows = conn.execute(
                select(papers, edition_papers.c.edition_id, edition_papers.c.score,
                       edition_papers.c.reason, edition_papers.c.section)
                .join(edition_papers, edition_papers.c.paper_id == papers.c.id)
                .where(edition_papers.c.edition_id.in_(chunk))
                .order_by(edition_papers.c.edition_id, edition_papers.c.position))
            for r in pick_rows:
                m = r._mapping
                picks.setdefault(int(m["edition_id"]), []).append(
                    Pick(_paper(r), m["score"], m["reason"], m["section"]))
        return [_edition_from(r, tuple(picks.get(int(r._mapping["id"]), ()))) for r in rows]

    def create_editions(self, drafts: Sequence[Edition], *, candidates_until: datetime,
                        now: datetime) -> list[Edition]:
        """Record new editions with their picks in one transaction; a (subscriber, slot)
        that exists already (another sender created it meanwhile) is left out of the
        returned list, which holds the editions this call created, with their row ids."""
        created: list[Edition] = []
        # The Message-ID is unique and made from (subscriber, slot): it finds the draft.
        by_id = {d.message_id: d for d in {(d.subscriber_id, d.slot): d for d in drafts}.values()}
        with self._begin() as conn:
            for chunk in _chunks(list(by_id.values())):
                rows = _INSERT_EDITIONS.run(conn, [
                    (d.subscriber_id, d.slot, d.state.value, d.message_id, 0, True,
                     candidates_until, now, now) for d in chunk])
                made = [replace(by_id[message_id], row_id=int(row_id), attempts=0,
                                retryable=True, created_at=now, updated_at=now)
                        for row_id, message_id in rows]
                _INSERT_PICKS.run(conn, ((e.row_id, pick.paper.row_id, position, pick.score,
                                          pick.reason, pick.section)
                                         for e in made for position, pick in enumerate(e.picks)))
                created.extend(made)
        return created

    def candidates_since_many(self, subscriber_ids: Sequence[str]
                              ) -> dict[str, datetime | None]:
        """`candidates_since` for many subscribers in a few queries."""
        since: dict[str, datetime | None] = {s: None for s in subscriber_ids}
        with self._begin() as conn:
            for chunk in _chunks(sorted(since)):
                rows = conn.execute(
                    select(editions.c.subscriber_id, func.max(editions.c.candidates_until))
                    .where(editions.c.subscriber_id.in_(chunk),
                           editions.c.state != EditionState.FAILED.value)
                    .group_by(editions.c.subscriber_id))
                for subscriber_id, value in rows:
                    since[subscriber_id] = value if isinstance(value, datetime) else None
        return since

    def begin_sending_many(self, editions_: Sequence[Edition], *, now: datetime,
                           stale_before: datetime, claimer: str) -> set[int]:
        """`begin_sending` for many editions in one statement; returns the row ids taken."""
        taken: set[int] = set()
        with self._begin() as conn:
            for chunk in _chunks([e.row_id for e in editions_ if e.row_id is not None]):
                rows = conn.execute(
                    update(editions)
                    .where(editions.c.id.in_(chunk),
                           _sendable(stale_before, now - timedelta(seconds=SILENT_AFTER_S)))
                    .values(state=EditionState.SENDING.value, updated_at=now,
                            claimed_by=claimer or None)
                    .returning(editions.c.id))
                taken.update(int(row_id) for (row_id,) in rows)
        return taken

    def record_attempts(self, attempts: Sequence[Attempt], *, now: datetime,
                        claimer: str | None = None) -> None:
        """Record the outcomes of several delivery attempts in one transaction. Only an
        edition still `sending` (under `claimer`, if given) is changed: a sender whose claim
        was taken over never overwrites the new sender's result."""
        if not attempts:
            return
        rows = [(a.edition.row_id, a.state.value, a.reply, a.retryable,
                 now if a.state is EditionState.SENT else a.edition.sent_at, now)
                for a in sorted(attempts, key=lambda a: a.edition.row_id or 0)]
        with self._begin() as conn:  # by id: one lock order for every writer
            if claimer:
                _RECORD_CLAIMED.run(conn, [(*row, claimer) for row in rows])
            else:
                _RECORD.run(conn, rows)

    def candidates_since(self, subscriber_id: str) -> datetime | None:
        """Where the subscriber's next edition starts: the cut-off of their last edition that
        was not lost. Papers of failed editions are offered again (already-sent ones are
        excluded separately)."""
        return self.candidates_since_many([subscriber_id])[subscriber_id]

    def begin_sending(self, edition: Edition, *, now: datetime, stale_before: datetime,
                      claimer: str = "") -> bool:
        """Take the edition for sending; False if another sender has it or it is done.

        Atomic, so two `digest send` runs never both send one edition. An edition left in
        `sending` since before `stale_before` (its sender died) may be taken again.
        `claimer` ("host:pid") is recorded for `recover_abandoned`.
        """
        return edition.row_id in self.begin_sending_many([edition], now=now,
                                                        stale_before=stale_before,
                                                        claimer=claimer)

    def recover_abandoned(self, host: str, alive: Callable[[int], bool], *,
                          now: datetime, silent_since: datetime | None = None) -> int:
        """Put back to `pending` the editions that a dead sender left in `sending`: one on
        `host` whose process is gone (`alive(pid)` is False), or one on any host whose
        heartbeat (`heartbeat`) stopped before `silent_since`.

        Their server acknowledgement was never recorded, so they are sent again: the one
        window where a message can arrive twice (with the same Message-ID).
        """
        with self._begin() as conn:
            claimers = conn.execute(select(editions.c.claimed_by).distinct().where(
                editions.c.state == EditionState.SENDING.value,
                editions.c.claimed_by.is_not(None))).scalars().all()
            if not claimers:
                return 0
            silent: set[str] = set()
            if silent_since is not None:
                silent = set(conn.execute(select(senders.c.id).where(
                    senders.c.id.in_(claimers), senders.c.heartbeat_at < silent_since)
                ).scalars())
            dead = []
            for claimer in claimers:
                claimed_on, _, rest = claimer.partition(":")
                pid = rest.split(":")[0]
                if claimer in silent or (claimed_on == host and pid.isdigit()
                                         and not alive(int(pid))):
                    dead.append(claimer)
            recovered = 0
            for chunk in _chunks(dead):
                recovered += conn.execute(
                    update(editions).where(editions.c.state == EditionState.SENDING.value,
                                           editions.c.claimed_by.in_(chunk))
                    .values(state=EditionState.PENDING.value, claimed_by=None,
                            updated_at=now)).rowcount
            if dead:
                conn.execute(delete(senders).where(senders.c.id.in_(dead)))
        return recovered

    def heartbeat(self, claimer: str, *, host: str, pid: int, started_at: datetime,
                  now: datetime) -> None:
        """Say that the sender `claimer` is alive (see `recover_abandoned`)."""
        statement = self._upsert(senders).values(id=claimer, host=host, pid=pid,
                                                 started_at=started_at, heartbeat_at=now)
        with self._begin() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=[senders.c.id],
                                                         set_={"heartbeat_at": now}))

    def forget_sender(self, row_id: str) -> None:
        """Remove one heartbeat row (a daemon's own, when it stops)."""
        with self._begin() as conn:
            conn.execute(delete(senders).where(senders.c.id == row_id))

    def forget_senders(self, *, silent_since: datetime) -> None:
        """Remove the heartbeats of senders silent since `silent_since` (long gone)."""
        with self._begin() as conn:
            conn.execute(delete(senders).where(senders.c.heartbeat_at < silent_since))

    def supersede_failed_many(self, editions_: Sequence[tuple[str, datetime]], *,
                              now: datetime) -> int:
        """`supersede_failed` for many (subscriber, new slot) pairs; returns how many. An
        older edition still pending (never handed to a server: its SMTP server was
        unreachable until after the next slot) is superseded too, so that its papers come
        in the new edition rather than in neither."""
        by_slot = _by_slot(editions_)
        done = 0
        with self._begin() as conn:
            for slot, subscriber_ids in by_slot.items():
                for chunk in _chunks(subscriber_ids):
                    done += int(conn.execute(
                        update(editions)
                        .where(editions.c.subscriber_id.in_(chunk), editions.c.slot < slot,
                               or_(and_(editions.c.state == EditionState.FAILED.value,
                                        editions.c.retryable),
                                   editions.c.state == EditionState.PENDING.value))
                        .values(state=EditionState.FAILED.value)
                        .values(retryable=False, updated_at=now,
                                smtp_reply=func.coalesce(editions.c.smtp_reply, "")
                                + f" (superseded by the edition of {slot.isoformat()})"))
                        .rowcount)
        return done

    def release_claims(self, row_ids: Sequence[int], *, claimer: str, now: datetime) -> None:
        """Put editions this sender took but never handed to the server back to pending."""
        if not row_ids:
            return
        with self._begin() as conn:
            for chunk in _chunks(row_ids):
                conn.execute(update(editions).where(
                    editions.c.id.in_(chunk), editions.c.claimed_by == claimer,
                    editions.c.state == EditionState.SENDING.value)
                    .values(state=EditionState.PENDING.value, claimed_by=None, updated_at=now))

    def record_attempt(self, edition: Edition, *, state: EditionState, reply: str | None,
                       retryable: bool, now: datetime) -> None:
        """Record the outcome of one delivery attempt."""
        self.record_attempts([Attempt(edition, state, reply, retryable)], now=now)

    def retryable_editions(self) -> list[Edition]:
        """Failed editions that may still be sent (their failure was transient)."""
        with self._begin() as conn:
            rows = conn.execute(select(editions).where(
                editions.c.state == EditionState.FAILED.value, editions.c.retryable)
                .order_by(editions.c.updated_at, editions.c.id)).all()
            return [self._edition(conn, row) for row in rows]

    def unsettled_editions(self, *, untouched_since: datetime, slots_since: datetime
                           ) -> list[tuple[str, datetime]]:
        """(subscriber, slot) of editions left `pending` (recorded, never taken, or taken
        back from a dead sender), not touched since `untouched_since`, for slots since
        `slots_since`: nobody is about to send them."""
        with self._begin() as conn:
            rows = conn.execute(select(editions.c.subscriber_id, editions.c.slot).where(
                editions.c.state == EditionState.PENDING.value,
                editions.c.updated_at < untouched_since, editions.c.slot >= slots_since)
                .order_by(editions.c.updated_at, editions.c.id)).all()
        return [(str(subscriber_id), slot) for subscriber_id, slot in rows]

    def requeue_failed(self, editions_: Sequence[tuple[str, datetime]], *,
                       now: datetime) -> int:
        """Put these (subscriber, slot) editions back to `pending` if they `failed` (for
        good, or retryable), with their attempts reset, so the next run sends them as if
        they were new (their picks and Message-ID kept); returns how many. What the
        operator asks for once the cause is fixed (`digest send --retry-failed`). The last
        reply is kept until the next attempt replaces it."""
        by_slot = _by_slot(editions_)
        done = 0
        with self._begin() as conn:
            for slot, subscriber_ids in by_slot.items():
                for chunk in _chunks(sorted(set(subscriber_ids))):
                    done += int(conn.execute(
                        update(editions)
                        .where(editions.c.subscriber_id.in_(chunk), editions.c.slot == slot,
                               editions.c.state == EditionState.FAILED.value)
                        .values(state=EditionState.PENDING.value, attempts=0,
                                retryable=True, claimed_by=None, updated_at=now))
                        .rowcount)
        return done

    def release_own_claims(self, claimer: str, *, now: datetime) -> int:
        """Put back to `pending` every edition `claimer` holds: for a sender that knows it
        has nothing in flight (a worker between two shards)."""
        with self._begin() as conn:
            return int(conn.execute(update(editions).where(
                editions.c.state == EditionState.SENDING.value,
                editions.c.claimed_by == claimer)
                .values(state=EditionState.PENDING.value, claimed_by=None, updated_at=now)
            ).rowcount)

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

    def save_embeddings(self, model: str, vectors: Mapping[int, np.ndarray]) -> None:
        """Keep these papers' vectors for `model`, replacing any stored (of an older
        model of the same name)."""
        self._save_vectors(paper_embeddings, "paper_id", model, vectors)

    def papers_without_embedding(self, model: str, *, after: int = 0, limit: int = 256
                                 ) -> list[Paper]:
        """Up to `limit` papers with no vector for `model`, in row order from row id
        `after` on (the last one a caller got: pages of a store of any size)."""
        query = (select(papers).where(papers.c.id > after, ~_has_vector(model))
                 .order_by(papers.c.id).limit(limit))
        with self._begin() as conn:
            return [_paper(row) for row in conn.execute(query)]

    def count_papers_without_embedding(self, model: str) -> int:
        with self._begin() as conn:
            return int(conn.execute(select(func.count()).select_from(papers)
                                    .where(~_has_vector(model))).scalar_one())

    def text_embeddings(self, model: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of texts (by `text_key`) for `model`; missing ones are absent."""
        found: dict[str, np.ndarray] = {}
        with self._begin() as conn:
            for start in range(0, len(keys), 500):
                rows = conn.execute(select(text_embeddings.c.text_key, text_embeddings.c.vector)
                                    .where(text_embeddings.c.model == model,
                                           text_embeddings.c.text_key.in_(
                                               keys[start:start + 500])))
                for key, blob in rows:
                    found[str(key)] = np.frombuffer(blob, dtype="<f4")
        return found

    def save_text_embeddings(self, model: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Keep these texts' vectors (by `text_key`) for `model`, replacing any stored."""
        self._save_vectors(text_embeddings, "text_key", model, vectors)

    def _save_vectors(self, table: Any, key: str, model: str,
                      vectors: Mapping[Any, np.ndarray]) -> None:
        """Upsert vectors, in the order of their keys: processes saving the same keys at
        once (a send's workers, the daemon's embedding job) then lock rows in one order,
        not each in its own, which on PostgreSQL deadlocked."""
        if not vectors:
            return
        statement = self._upsert(table)
        statement = statement.on_conflict_do_update(
            index_elements=[key, "model"], set_={"vector": statement.excluded.vector})
        with self._begin() as conn:
            conn.execute(statement, [
                {"model": model, key: k, "vector": np.asarray(vectors[k], dtype="<f4").tobytes()}
                for k in sorted(vectors)])

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
        statement = self._upsert(feeds).values(url=state.url, **values)
        with self._begin() as conn:
            conn.execute(statement.on_conflict_do_update(index_elements=["url"], set_=values))


# Papers ---------------------------------------------------------------------------------

def _merged(m: Mapping[Any, Any], entry: PaperEntry) -> dict[str, Any]:
    """What `entry` adds to the stored paper `m`: what it lacks, and a fuller abstract."""
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
    doi = parse_doi(entry.doi)
    if doi and not m["doi"]:
        changes["doi"] = doi
    return changes


_PAPER_COLUMNS = ("key", "arxiv_id", "title_key", "title", "abstract", "authors", "url",
                  "published", "first_seen", "reference", "doi")
_paper_values = itemgetter(*_PAPER_COLUMNS)  # a row's values, in that order


def _new_row(entry: PaperEntry, title_key: str, now: datetime, *, reference: bool
             ) -> dict[str, Any]:
    """A new paper's row, not yet stored (no id)."""
    return dict(id=None, key=entry.arxiv_id or title_key, arxiv_id=entry.arxiv_id,
                title_key=title_key, title=entry.title, abstract=entry.abstract,
                authors=list(entry.authors), url=entry.url, published=entry.published,
                first_seen=now, reference=reference, doi=parse_doi(entry.doi))


@contextmanager
def _by_index(conn: Connection) -> Iterator[None]:
    """PostgreSQL: look papers up by their indexes in the block, never by reading the whole
    table. A table filled since its statistics were last gathered (a new database, or an
    ingest's own transaction) has none to say that a look-up of 500 values finds a few
    rows: each would read all of it, each batch longer (100,000 papers into a new database
    spent 90% of their time there)."""
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
    try:
        yield
    finally:
        conn.exec_driver_sql("SET LOCAL enable_seqscan TO DEFAULT")


def _update_papers(conn: Connection, changes: Mapping[int, Mapping[str, Any]]) -> None:
    """Write what merging changed: one executemany per set of columns changed, by row id
    (one lock order for every writer)."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row_id in sorted(changes):
        values = changes[row_id]
        if values:
            by_columns.setdefault(tuple(sorted(values)), []).append(
                {"row_id": row_id, **{f"new_{name}": value for name, value in values.items()}})
    for columns, rows in by_columns.items():
        conn.execute(update(papers).where(papers.c.id == bindparam("row_id")).values(
            {name: bindparam(f"new_{name}", type_=papers.c[name].type) for name in columns}),
            rows)


def _entry_of(row: Mapping[str, Any]) -> PaperEntry:
    return PaperEntry(title=row["title"], abstract=row["abstract"], source="",
                      arxiv_id=row["arxiv_id"], authors=tuple(row["authors"]), url=row["url"],
                      published=row["published"], doi=row["doi"])


# The papers whose column holds one of the values given (an expanding parameter: the
# statement is built once, not once per value).
_PAPERS_BY = {name: select(papers).where(papers.c[name].in_(bindparam("values", expanding=True)))
              for name in ("arxiv_id", "doi", "title_key", "key")}


class _PaperIndex:
    """The stored papers that a batch of entries may be, read in a few queries and matched
    in memory (`match`: the rule of what paper an entry is); papers made for the batch join
    it, so that its entries match each other too. Rows are dicts of the papers table's
    columns."""

    def __init__(self) -> None:
        self.by_arxiv: dict[str, dict[str, Any]] = {}
        self.by_doi: dict[str, list[dict[str, Any]]] = {}
        self.by_title: dict[str, list[dict[str, Any]]] = {}
        self.by_key: dict[str, dict[str, Any]] = {}
        self.new: list[dict[str, Any]] = []  # to insert
        self.changes: dict[int, dict[str, Any]] = {}  # by row id: to update
        self._made: dict[int, int] = {}  # a new row's place in `new`, by the row's id()
        self._title_keys: dict[str, str] = {}  # by title, for the batch's entries

    @classmethod
    def load(cls, conn: Connection, entries: Sequence[PaperEntry]) -> _PaperIndex:
        """The stored papers `match` may find for these entries: by their arXiv ids; for
        the entries whose arXiv id no stored paper has (or that have none), by their DOIs
        and titles too, and by key for the title of one with a DOI and no arXiv id."""
        index = cls()
        rows: dict[int, dict[str, Any]] = {}

        def read(column: str, values: Iterable[Any]) -> None:
            for chunk in _shaped_chunks(sorted(set(values)), 512):
                for r in conn.execute(_PAPERS_BY[column], {"values": chunk}):
                    if r.id not in rows:
                        rows[r.id] = dict(r._mapping)

        with _by_index(conn):
            read("arxiv_id", (e.arxiv_id for e in entries if e.arxiv_id))
            found = {row["arxiv_id"] for row in rows.values()}
            rest = [e for e in entries if e.arxiv_id not in found]  # `match` reads on
            read("doi", (d for e in rest if (d := parse_doi(e.doi))))
            read("title_key", (index.title_key(e.title) for e in rest))
            read("key", (index.title_key(e.title) for e in rest if e.doi and not e.arxiv_id))
        for row_id in sorted(rows):  # oldest first, as the look-ups in SQL order them
            index._index(rows[row_id])
        return index

    def _index(self, row: dict[str, Any]) -> None:
        if row["arxiv_id"]:
            self.by_arxiv.setdefault(row["arxiv_id"], row)
        if row["doi"]:
            self.by_doi.setdefault(row["doi"], []).append(row)
        self.by_title.setdefault(row["title_key"], []).append(row)
        self.by_key.setdefault(row["key"], row)

    def match(self, entry: PaperEntry) -> dict[str, Any] | None:
        """The paper `entry` is: the one of its arXiv id; else the oldest of its DOI (without
        another arXiv id); else the oldest of its title (without another arXiv id or DOI);
        else, for an entry with a DOI and no arXiv id, the one that holds its title as key."""
        if entry.arxiv_id and entry.arxiv_id in self.by_arxiv:
            return self.by_arxiv[entry.arxiv_id]
        doi = parse_doi(entry.doi)
        for row in self.by_doi.get(doi, ()) if doi else ():
            if not entry.arxiv_id or row["arxiv_id"] is None:
                return row
        title_key = self.title_key(entry.title)
        for row in self.by_title.get(title_key, ()):
            if ((not entry.arxiv_id or row["arxiv_id"] is None)
                    and (not doi or row["doi"] in (None, doi))):
                return row
        return self.by_key.get(title_key) if doi and not entry.arxiv_id else None

    def title_key(self, title: str) -> str:
        key = self._title_keys.get(title)
        if key is None:
            key = self._title_keys[title] = _stored_title_key(title)
        return key

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        self._made[id(row)] = len(self.new)
        self.new.append(row)
        self._index(row)
        return row

    def _age(self, row: dict[str, Any]) -> tuple[int, int]:
        """Oldest first: stored papers by row id, then the batch's new ones as made."""
        return (0, row["id"]) if row["id"] is not None else (1, self._made[id(row)])

    def change(self, row: dict[str, Any], changes: dict[str, Any]) -> None:
        if not changes:
            return
        if "key" in changes and self.by_key.get(row["key"]) is row:
            del self.by_key[row["key"]]  # the title key it held is free
        row.update(changes)
        if row["id"] is not None:
            self.changes.setdefault(row["id"], {}).update(changes)
        if "arxiv_id" in changes:
            self.by_arxiv.setdefault(row["arxiv_id"], row)
            self.by_key.setdefault(row["key"], row)
        if "doi" in changes:  # among the papers of its DOI in their age order, as in SQL
            insort(self.by_doi.setdefault(row["doi"], []), row, key=self._age)


def _sendable(stale_before: datetime, live_since: datetime) -> ColumnElement[bool]:
    """Editions a sender may take: pending, failed for a reason worth retrying, or left in
    `sending` since before `stale_before` by a sender whose heartbeat is not recent
    (since `live_since`): a sender that is still beating keeps its claims."""
    beating = (select(senders.c.id).where(senders.c.id == editions.c.claimed_by,
                                          senders.c.heartbeat_at >= live_since).exists())
    return ((editions.c.state == EditionState.PENDING.value)
            | ((editions.c.state == EditionState.FAILED.value) & editions.c.retryable)
            | ((editions.c.state == EditionState.SENDING.value)
               & (editions.c.updated_at < stale_before) & ~beating))


def _edition_from(row: Row[Any], picks: tuple[Pick, ...]) -> Edition:
    m = row._mapping
    return Edition(
        subscriber_id=m["subscriber_id"], slot=m["slot"], state=EditionState(m["state"]),
        message_id=m["message_id"], picks=picks, attempts=m["attempts"],
        smtp_reply=m["smtp_reply"], retryable=m["retryable"], row_id=m["id"],
        created_at=m["created_at"], updated_at=m["updated_at"], sent_at=m["sent_at"])


def _describe(exc: BaseException) -> str:
    """One line saying what went wrong: the driver's words, without SQLAlchemy's
    statement and link, or what to install for a missing driver."""
    if isinstance(exc, ImportError):
        missing = exc.name or str(exc)
        extra = " (pip install 'digest[postgres]')" if "psycopg" in missing else ""
        return f"its driver {missing} is not installed{extra}"
    cause = getattr(exc, "orig", None) or exc
    return " ".join(str(cause).split()) or type(cause).__name__


def _stored_title_key(title: str) -> str:
    """The normalised title as stored: at most 512 characters (the column's size, which
    PostgreSQL enforces), so a title key is found however long the title."""
    return normalise_title(title)[:TITLE_KEY_LENGTH].rstrip()


# Many profiles like the same few papers. (A batch of entries keeps its own title keys: an
# ingest of any size leaves this cache as it was.)
_title_key = lru_cache(maxsize=65536)(_stored_title_key)


def _resolved(path: Path, folders: dict[Path, Path]) -> Path:
    """`path.resolve()`, with each folder resolved once (kept in `folders`), not once per
    profile in it."""
    if path.is_symlink():
        return path.resolve()
    folder = folders.get(path.parent)
    if folder is None:
        folder = folders[path.parent] = path.parent.resolve()
    return folder / path.name


class _DriverStatement:
    """A statement the ledger runs for many rows at a time, compiled once for the
    database's dialect and handed to the driver's `executemany` with each row's values
    as the driver takes them (each through its column type's conversion, as SQLAlchemy
    would). SQLAlchemy's own per-row parameter handling costs several times what the
    database spends on these rows (ten picks for every email, a reply per email).

    `build` gives the statement for a dialect, its values as `bindparam`s named as in
    `names` (and any constants it holds); rows are tuples in the order of `names`.
    """

    def __init__(self, build: Callable[[Dialect], ClauseElement], names: tuple[str, ...]):
        self._build, self._names = build, names
        self._compiled: WeakKeyDictionary[Dialect, tuple[str, list[tuple[int, Any]],
                                                         list[str] | None]] = WeakKeyDictionary()

    def _for(self, dialect: Dialect) -> tuple[str, list[tuple[int, Any]], list[str] | None]:
        """The SQL, what each of its parameters is (a row's value by index and its
        conversion, or a constant: index -1), and their names if they go by name."""
        found = self._compiled.get(dialect)
        if found is None:
            compiled = cast(SQLCompiler, self._build(dialect).compile(dialect=dialect))
            positional = bool(compiled.positional) and compiled.positiontup is not None
            by_name = {name: bind for bind, name in compiled.bind_names.items()}
            order = list(compiled.positiontup or ()) if positional else list(by_name)
            if not set(self._names) <= set(order):
                raise ValueError(f"{sorted(set(self._names) - set(order))} not in the statement")
            plan: list[tuple[int, Any]] = []
            for name in order:
                bind = by_name[name]
                convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
                if name in self._names:
                    plan.append((self._names.index(name), convert))
                else:  # a constant of the statement's own
                    value = bind.effective_value
                    plan.append((-1, value if convert is None else convert(value)))
            found = (str(compiled), plan, None if positional else order)
            self._compiled[dialect] = found
        return found

    def run(self, conn: Connection, rows: Iterable[tuple[Any, ...]]) -> int:
        """Run the statement for each row; returns how many rows it changed in all."""
        sql, plan, names = self._for(conn.dialect)
        rows = list(rows)
        if not rows:
            return 0
        values = _driver_values(rows, plan)
        if names is None:
            result = conn.exec_driver_sql(sql, values)
        else:
            result = conn.exec_driver_sql(sql, [dict(zip(names, v, strict=True))
                                                for v in values])
        return int(result.rowcount)


class _DriverInsert:
    """`INSERT ... VALUES (...), (...) ON CONFLICT DO NOTHING RETURNING ...` of many rows
    in one statement, handed to the driver directly as `_DriverStatement` does (SQLite's
    `executemany` cannot return rows). Rows are tuples of the values of `columns`; the
    result, the `returning` columns of the rows inserted, as the driver gives them.

    With `ids_first` (`returning` must then be the table's serial `id` and some of
    `columns`), PostgreSQL takes the row ids from the table's sequence first and inserts
    the rows with them in one `executemany`, which psycopg pipelines: twice as quick as
    statements of many rows. The rows inserted are those whose id is then in the table."""

    ROWS = 500  # per statement at most, and within the parameters the database allows

    def __init__(self, table: Any, columns: tuple[str, ...], returning: tuple[str, ...], *,
                 ids_first: bool = False):
        self._table, self._columns, self._returning = table, columns, returning
        self._converts: WeakKeyDictionary[Dialect, list[Any]] = WeakKeyDictionary()
        self._ids_first = ids_first
        if ids_first and (returning[0] != "id" or not set(returning[1:]) <= set(columns)):
            raise ValueError(f"{returning}: not the id, then some of {columns}")

    def run(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        dialect = conn.dialect
        if dialect not in self._converts:
            self._converts[dialect] = [
                self._table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                for name in self._columns]
        converts = self._converts[dialect]
        if self._ids_first and dialect.name == "postgresql" and rows:
            return self._run_with_ids(conn, rows, converts)
        quote = dialect.identifier_preparer.quote
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        row_marks = f"({', '.join([mark] * len(self._columns))})"
        head = (f"INSERT INTO {quote(self._table.name)} "
                f"({', '.join(map(quote, self._columns))}) VALUES ")
        tail = f" ON CONFLICT DO NOTHING RETURNING {', '.join(map(quote, self._returning))}"
        found: list[tuple[Any, ...]] = []
        plan = list(enumerate(converts))
        size = max(1, min(self.ROWS, _max_parameters(conn) // len(self._columns)))
        for chunk in _shaped_chunks(rows, size):
            values = tuple(chain.from_iterable(_driver_values(chunk, plan)))
            sql = head + ", ".join([row_marks] * len(chunk)) + tail
            found.extend(tuple(row) for row in conn.exec_driver_sql(sql, values))
        return found


    def _run_with_ids(self, conn: Connection, rows: Sequence[tuple[Any, ...]],
                      converts: list[Any]) -> list[tuple[Any, ...]]:
        quote = conn.dialect.identifier_preparer.quote
        table = quote(self._table.name)
        ids = [row_id for (row_id,) in conn.exec_driver_sql(
            "SELECT nextval(pg_get_serial_sequence(%(table)s, 'id')) "
            "FROM generate_series(1, %(count)s)", {"table": table, "count": len(rows)})]
        names = ", ".join(map(quote, ("id", *self._columns)))
        marks = ", ".join(["%s"] * (len(self._columns) + 1))
        values = _driver_values(rows, list(enumerate(converts)))
        conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({marks}) "
                             "ON CONFLICT DO NOTHING",
                             [(row_id, *row) for row_id, row in zip(ids, values, strict=True)])
        stored = {row_id for (row_id,) in conn.exec_driver_sql(
            f"SELECT id FROM {table} WHERE id = ANY(%(ids)s)", {"ids": ids})}
        taken = [self._columns.index(name) for name in self._returning[1:]]
        return [(row_id, *(row[i] for i in taken))
                for row_id, row in zip(ids, rows, strict=True) if row_id in stored]


def _max_parameters(conn: Connection) -> int:
    """How many parameters one statement may have: SQLite's limit as built (999 before
    3.32, 32,766 since; more in some builds), PostgreSQL's 65,535."""
    if conn.dialect.name == "sqlite":
        driver = conn.connection.dbapi_connection
        getlimit = getattr(driver, "getlimit", None)  # Python 3.11's sqlite3 has it
        if getlimit is None:
            return 999
        return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return 65_535


def _driver_values(rows: Sequence[tuple[Any, ...]], plan: Sequence[tuple[int, Any]]
                   ) -> list[tuple[Any, ...]]:
    """Each row's parameters as the driver takes them: per (index, conversion) of `plan`,
    the row's value converted (None: as it is), or a constant where the index is -1. Done
    column by column: far fewer steps per value than row by row."""
    columns = [[convert] * len(rows) if i < 0 else [row[i] for row in rows]
               if convert is None else _converted([row[i] for row in rows], convert)
               for i, convert in plan]
    return list(zip(*columns, strict=True))


def _converted(values: list[Any], convert: Callable[[Any], Any]) -> list[Any]:
    """`convert` of each value; once for a run of one value where the column has runs (a
    batch's `now`, the papers of one day), whose conversion (a date's, a time's) costs more
    than telling so."""
    if len(values) < 2 or values[0] is not values[1]:
        return [convert(value) for value in values]
    out = []
    previous: Any = _converted  # no value is this function
    result = None
    for value in values:
        if value is not previous:
            previous, result = value, convert(value)
        out.append(result)
    return out


def _by_slot(pairs: Sequence[tuple[str, datetime]]) -> dict[datetime, list[str]]:
    """(subscriber, slot) pairs as the subscribers of each slot: one statement a slot."""
    by_slot: dict[datetime, list[str]] = {}
    for subscriber_id, slot in pairs:
        by_slot.setdefault(slot, []).append(subscriber_id)
    return by_slot


def _param(name: str, column: ColumnElement[Any]) -> Any:
    return bindparam(name, type_=column.type)


_INSERT_PICKS = _DriverStatement(
    lambda _: insert(edition_papers).values(
        {c: _param(c.name, c) for c in (edition_papers.c.edition_id, edition_papers.c.paper_id,
                                        edition_papers.c.position, edition_papers.c.score,
                                        edition_papers.c.reason, edition_papers.c.section)}),
    ("edition_id", "paper_id", "position", "score", "reason", "section"))


def _record_statement(claimed: bool) -> ClauseElement:
    """An attempt's outcome, written only while its edition is `sending` (and, if
    `claimed`, under the claimer given)."""
    statement = (update(editions)
                 .where(editions.c.id == _param("edition_row", editions.c.id),
                        editions.c.state == EditionState.SENDING.value)
                 .values(state=_param("new_state", editions.c.state),
                         smtp_reply=_param("reply", editions.c.smtp_reply),
                         retryable=_param("may_retry", editions.c.retryable),
                         attempts=editions.c.attempts + 1,
                         updated_at=_param("now", editions.c.updated_at),
                         sent_at=_param("sent", editions.c.sent_at)))
    if claimed:
        statement = statement.where(editions.c.claimed_by == _param("claimer",
                                                                     editions.c.claimed_by))
    return statement


_INSERT_EDITIONS = _DriverInsert(
    editions, ("subscriber_id", "slot", "state", "message_id", "attempts", "retryable",
               "candidates_until", "created_at", "updated_at"), ("id", "message_id"))

_INSERT_PAPERS = _DriverInsert(papers, _PAPER_COLUMNS, ("id", "key"), ids_first=True)
_SOURCE_NAMES = ("paper_id", "source", "source_line", "seen_at")
_ADD_SOURCES = _DriverStatement(  # each (paper, source) once: the first line it was seen on
    lambda dialect: _upsert_for(dialect, paper_sources).values(
        {paper_sources.c[name]: _param(name, paper_sources.c[name]) for name in _SOURCE_NAMES})
    .on_conflict_do_nothing(), _SOURCE_NAMES)

_RECORD_NAMES = ("edition_row", "new_state", "reply", "may_retry", "sent", "now", "claimer")
_RECORD_CLAIMED = _DriverStatement(lambda _: _record_statement(True), _RECORD_NAMES)
_RECORD = _DriverStatement(lambda _: _record_statement(False), _RECORD_NAMES[:-1])


# The transaction-level advisory lock of writers of papers, keyed by database and schema
# (deployments sharing a server do not wait for each other).
_PAPERS_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended('digest.papers:' "
                    "|| current_database() || '.' || coalesce(current_schema(), ''), 0))")


def _take_turn_writing_papers(conn: Connection) -> None:
    """PostgreSQL: this transaction writes papers once no other does (it waits; the lock
    goes with the transaction). A file's papers are stored in one transaction; two written
    at once, with papers in common in different orders, would each hold a paper the other
    needs next: a deadlock that fails one of them. SQLite has one writer anyway."""
    if conn.dialect.name == "postgresql":
        conn.execute(_PAPERS_LOCK)


def _has_vector(model: str) -> ColumnElement[bool]:
    """A paper (of the outer query) has a stored vector for `model`."""
    return (select(paper_embeddings.c.paper_id)
            .where(paper_embeddings.c.paper_id == papers.c.id,
                   paper_embeddings.c.model == model).exists())


def _upsert_for(dialect: Dialect, table: Any) -> Any:
    """An INSERT that can say ON CONFLICT (SQLite and PostgreSQL)."""
    if dialect.name == "postgresql":
        # Imported here: a store on SQLite never loads PostgreSQL's dialect.
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert(table)
    return sqlite_insert(table)


def _save_subscribers_statement(dialect: Dialect) -> ClauseElement:
    columns = [subscribers_table.c[name] for name in _SUBSCRIBER_NAMES]
    statement = _upsert_for(dialect, subscribers_table).values(
        {c: _param(c.name, c) for c in columns})
    # A row is written only when the profile says something new (most runs, nothing):
    # `updated_at` is when it last changed.
    upsert: ClauseElement = statement.on_conflict_do_update(
        index_elements=["id"], set_={c.name: statement.excluded[c.name] for c in columns[1:]},
        where=or_(*(c.is_distinct_from(statement.excluded[c.name]) for c in columns[1:-1])))
    return upsert


_SUBSCRIBER_NAMES = ("id", "email", "name", "profile_path", "active", "updated_at")
_SAVE_SUBSCRIBERS = _DriverStatement(_save_subscribers_statement, _SUBSCRIBER_NAMES)


def _chunks(values: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _shaped_chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """`values` in chunks of `size`, the rest in chunks of decreasing powers of two: a
    statement made for each chunk has one of a few shapes (SQLite keeps each prepared, a few
    hundred kB for an insert of hundreds of rows; one for every size would grow its cache to
    tens of MB)."""
    whole = len(values) - len(values) % size
    yield from _chunks(values[:whole], size)
    start = whole
    while start < len(values):
        step = 1 << ((len(values) - start).bit_length() - 1)
        yield values[start:start + step]
        start += step


def _batches(values: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """`values` as lists of `size` (the last one shorter), read as they come."""
    if size < 1:
        raise ValueError(f"a batch holds at least one entry, not {size}")
    values = iter(values)
    while batch := list(islice(values, size)):
        yield batch


def engine_name(url: str) -> str:
    """The URL without its password (shown as ***), for messages and logs."""
    try:
        parsed = make_url(url)
        secret = {key: "***" for key in parsed.query if key.lower().endswith("password")}
        if secret:  # password=, sslpassword=
            parsed = parsed.update_query_dict(secret)
        return parsed.render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # not a URL SQLAlchemy reads: hide all credentials
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        return url
