"""The one place the stages are joined: store -> rank -> render -> deliver, per edition.

The CLI (and later the scheduler and the workers) call `run_editions`; none of them wires
stages together itself. `now` is always a parameter so that tests can fix it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Literal

import numpy as np
from jinja2 import Environment, TemplateError, TemplateSyntaxError

from digest.config import Settings
from digest.deliver import Mailer
from digest.embed import Embedder, load_embedder
from digest.errors import (
    ConfigError,
    InputError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from digest.identity import parse_arxiv_id
from digest.ingest import read_digest_file
from digest.ingest.inbox import InboxWatcher
from digest.models import Edition, EditionState, IngestReport, Paper, Pick, Problem, Profile
from digest.rank import (
    Candidates,
    Corpus,
    Preferences,
    build_corpus,
    prepare_candidates,
    rank_papers,
)
from digest.render import mail_domain, make_environment, message_id, render_edition
from digest.schedule import parse_schedule
from digest.store import Store

log = logging.getLogger(__name__)


def ingest_files(store: Store, paths: Iterable[Path], *, now: datetime,
                 reference: datetime | None = None) -> IngestReport:
    """Parse digest files and merge their papers into the store; bad files are reported."""
    files = entries = new = 0
    problems: list[Problem] = []
    for path in paths:
        try:
            parsed = read_digest_file(path, reference.date() if reference else None)
        except InputError as exc:
            problems.append(Problem(str(exc.path), exc.line, exc.reason, fatal=True))
            log.info("ingest.rejected path=%s reason=%s", exc.path, exc.reason)
            continue
        problems.extend(parsed.problems)
        if not parsed.entries:
            continue
        result = store.add_entries(parsed.entries, now)
        files += 1
        entries += result.entries
        new += result.new_papers
        log.info("ingest.file path=%s entries=%d new=%d skipped=%d", path, result.entries,
                 result.new_papers, len(parsed.problems))
    return IngestReport(files=files, entries=entries, new_papers=new, problems=tuple(problems))


def ingest_inbox(store: Store, folder: Path, *, now: datetime) -> IngestReport:
    """Ingest every file in the inbox folder now, moving each out as the daemon does."""
    done = InboxWatcher(folder, settle_s=0).process(store, now, wait=False)
    problems: list[Problem] = []
    for item in done:
        if item.rejected:
            problems.append(Problem(str(item.path), None, item.rejected, fatal=True))
        problems.extend(item.problems)
    return IngestReport(files=sum(1 for d in done if not d.rejected),
                        entries=sum(d.entries for d in done),
                        new_papers=sum(d.new_papers for d in done), problems=tuple(problems))


def embed_papers(store: Store, embedder: Embedder, papers: Sequence[Paper]) -> np.ndarray:
    """One embedding per paper, computed once and kept in the store (unit rows)."""
    known = store.embeddings([p.row_id for p in papers], embedder.name)
    sizes = {len(v) for v in known.values()}
    if len(sizes) > 1:  # vectors of another shape (an older model of the same name)
        common = max(sizes, key=lambda size: sum(len(v) == size for v in known.values()))
        known = {k: v for k, v in known.items() if len(v) == common}
    missing = [p for p in papers if p.row_id not in known]
    if len(missing) > 100:
        log.info("embeddings.computing papers=%d model=%s (once; kept in the store)",
                 len(missing), embedder.name)
    for start in range(0, len(missing), 256):  # saved as it goes: an interrupted run keeps
        batch = missing[start:start + 256]  # what it computed
        vectors = embedder.encode([p.text for p in batch])
        fresh = {p.row_id: v for p, v in zip(batch, vectors, strict=True)}
        store.save_embeddings(embedder.name, fresh)
        known.update(fresh)
    if missing:
        log.info("embeddings.computed papers=%d model=%s", len(missing), embedder.name)
    return np.vstack([known[p.row_id] for p in papers]) if papers else np.zeros((0, 1))


def resolve_preferences(store: Store, profile: Profile, found: Mapping[str, Paper] | None = None
                        ) -> tuple[Preferences, list[str]]:
    """Find the profile's liked and disliked papers in the store (or in `found`, looked up
    beforehand for many profiles at once).

    Liked titles that are not stored still count, through their words; liked arXiv ids
    that are not stored cannot, and are returned as unresolved.
    """
    if found is None:
        found = store.find_papers([*profile.liked, *profile.disliked])
    unresolved: list[str] = []
    liked_titles: list[str] = []
    for ref in profile.liked:
        if ref not in found:
            if parse_arxiv_id(ref):
                unresolved.append(ref)
            else:
                liked_titles.append(ref)
    unresolved += [ref for ref in profile.disliked if ref not in found]
    prefs = Preferences(
        profile=profile,
        liked=tuple(found[r] for r in profile.liked if r in found),
        disliked=tuple(found[r] for r in profile.disliked if r in found),
        liked_titles=tuple(liked_titles),
    )
    return prefs, unresolved


def sender_identity() -> str:
    """"host:pid" of this process, recorded on the editions it is sending."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def recover_abandoned(store: Store, *, now: datetime) -> int:
    """Editions that a sender on this host left half-sent when it died go back to pending,
    so that this run sends them (rather than after `sending_stale_s`)."""
    recovered = store.recover_abandoned(socket.gethostname(), _process_alive, now=now)
    if recovered:
        log.warning("editions.recovered count=%d (their sender died before the server's "
                    "reply was recorded; they are sent again)", recovered)
    return recovered


class Status(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"  # this attempt failed; `retry` says whether a later run tries again
    ALREADY_SENT = "already sent"
    EMPTY = "nothing relevant"
    NOT_DUE = "not due"
    DRY_RUN = "dry run"
    IN_FLIGHT = "being sent by another process"
    INACTIVE = "inactive"


@dataclass(frozen=True)
class EditionOutcome:
    """What happened to one subscriber's edition in this run."""

    profile: Profile
    status: Status
    slot: datetime | None = None
    picks: tuple[Pick, ...] = ()
    detail: str = ""
    retry: bool = False
    message: EmailMessage | None = field(default=None, repr=False)


@dataclass
class EditionRun:
    """What one run of editions shares: the store, settings, templates and fitted corpus."""

    store: Store
    settings: Settings
    env: Environment | None = None
    # The embedder when the extra is installed; loaded on first use unless given (the
    # daemon passes the one it keeps, so the model is loaded once).
    embedder: Embedder | None | Literal["unloaded"] = "unloaded"
    _corpus: Corpus | None = None
    _candidates: dict[datetime | None, Candidates] = field(default_factory=dict)
    claimer: str = field(default_factory=sender_identity)
    _found: dict[str, Paper] | None = None
    _sent: dict[str, set[int]] = field(default_factory=dict)

    def prefetch(self, profiles: Sequence[Profile]) -> None:
        """Look up every profile's liked and disliked papers and sent papers at once, so
        that ranking thousands of profiles does not query the store for each."""
        refs = [r for p in profiles for r in (*p.liked, *p.disliked)]
        self._found = self.store.find_papers(refs)
        self._sent = self.store.sent_paper_ids_many([p.subscriber_id for p in profiles])

    def __post_init__(self) -> None:
        if self.env is None:
            self.env = make_environment(self.settings.templates_dir)

    def get_embedder(self) -> Embedder | None:
        if self.embedder == "unloaded":
            self.embedder = load_embedder(self.settings.rank.embeddings)
        return self.embedder

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            papers = self.store.papers()
            embedder = self.get_embedder()
            if embedder is None:
                self._corpus = build_corpus(papers)
            else:
                vectors = embed_papers(self.store, embedder, papers)
                self._corpus = build_corpus(papers, embeddings=vectors,
                                            embed_text=embedder.encode)
        return self._corpus

    def candidates(self, since: datetime | None) -> Candidates:
        """The papers first seen after `since` (all if None), prepared once per run."""
        if since not in self._candidates:
            self._candidates[since] = prepare_candidates(self.corpus,
                                                         self.store.papers(since=since))
        return self._candidates[since]

    def choose_picks(self, profile: Profile, *, now: datetime, everything: bool = False,
                     top: int | None = None) -> list[Pick]:
        """Rank the papers that arrived since the subscriber's last edition (or all stored
        papers, with `everything`), leaving out what was already sent to them."""
        since = None
        if not everything:
            since = self.store.candidates_since(profile.subscriber_id)
            if since is None:
                since = now - timedelta(days=self.settings.first_edition_lookback_days)
        candidates = self.candidates(since)
        prefs, unresolved = resolve_preferences(self.store, profile, self._found)
        for ref in unresolved:
            log.info("rank.unresolved subscriber=%s ref=%r", profile.subscriber_id, ref)
        sent = self._sent.get(profile.subscriber_id)
        if sent is None:
            sent = self.store.sent_paper_ids(profile.subscriber_id)
        exclude = frozenset(sent)
        return rank_papers(self.corpus, prefs, candidates, top=top or profile.max_papers,
                           exclude=exclude, min_score=profile.min_score)

    def render(self, profile: Profile, picks: Sequence[Pick], *, slot: datetime,
               now: datetime) -> EmailMessage:
        """The email for these picks. Raises ConfigError if an operator's template is broken."""
        assert self.env is not None
        try:
            return render_edition(self.env, profile, picks, slot=slot,
                                  mail=self.settings.mail, now=now)
        except TemplateError as exc:
            where = f"{exc.name}:{exc.lineno}: " if isinstance(exc, TemplateSyntaxError) else ""
            raise ConfigError(f"template error: {where}{exc}") from exc

    def _draft(self, profile: Profile, slot: datetime, now: datetime) -> Edition:
        """A new edition for (subscriber, slot) with its picks, not yet recorded."""
        picks = self.choose_picks(profile, now=now)
        # Nothing good enough: the profile says whether to skip or to send a short note.
        worth_sending = bool(picks) or profile.when_nothing == "note"
        return Edition(
            subscriber_id=profile.subscriber_id, slot=slot,
            state=EditionState.PENDING if worth_sending else EditionState.EMPTY,
            message_id=message_id(profile.subscriber_id, slot, mail_domain(self.settings.mail)),
            picks=tuple(picks))

    def _claim(self, profile: Profile, slot: datetime, now: datetime) -> Edition:
        """The edition for (subscriber, slot): the recorded one, or a new one with its picks.

        A new edition supersedes the subscriber's older failed ones: their papers are
        candidates again, so nothing is lost and nothing comes twice.
        """
        existing = self.store.get_edition(profile.subscriber_id, slot)
        if existing is not None:
            return existing
        self.store.supersede_failed(profile.subscriber_id, before=slot, by=slot, now=now)
        created = self.store.create_edition(self._draft(profile, slot, now),
                                            candidates_until=now, now=now)
        if created is None:  # created meanwhile by another sender
            created = self.store.get_edition(profile.subscriber_id, slot)
            assert created is not None
        return created

    async def run_edition(self, profile: Profile, mailer: Mailer, *, now: datetime,
                          dry_run: bool = False, slot: datetime | None = None
                          ) -> EditionOutcome:
        """Send the subscriber's edition for `slot` (default: the latest slot at or before
        `now`), once.

        Idempotent: a sent edition is never sent again, and two senders never both send
        one; a failed edition is retried while its failure was transient and attempts
        remain. A dry run records nothing. Raises ConfigError for a broken template.
        """
        if not profile.active:
            return EditionOutcome(profile, Status.INACTIVE)
        if slot is None:
            slot = parse_schedule(profile.schedule, profile.timezone).last_slot(now)
        if slot is None:
            return EditionOutcome(profile, Status.NOT_DUE)
        if dry_run:
            edition = (self.store.get_edition(profile.subscriber_id, slot)
                       or self._draft(profile, slot, now))
        else:
            self.store.save_subscriber(profile, now)
            edition = self._claim(profile, slot, now)
        if edition.state is EditionState.SENT:
            return EditionOutcome(profile, Status.ALREADY_SENT, slot, edition.picks)
        if edition.state is EditionState.EMPTY:
            return EditionOutcome(profile, Status.EMPTY, slot)
        if edition.state is EditionState.FAILED and not edition.retryable:
            return EditionOutcome(profile, Status.FAILED, slot, edition.picks,
                                  edition.smtp_reply or "", retry=False)

        message = self.render(profile, edition.picks, slot=slot, now=now)
        if dry_run:
            detail = await mailer.send(message)
            return EditionOutcome(profile, Status.DRY_RUN, slot, edition.picks, detail,
                                  message=message)
        stale_before = now - timedelta(seconds=self.settings.mail.sending_stale_s)
        if not self.store.begin_sending(edition, now=now, stale_before=stale_before,
                                        claimer=self.claimer):
            return EditionOutcome(profile, Status.IN_FLIGHT, slot, edition.picks)
        max_attempts = self.settings.mail.max_attempts
        try:
            reply = await mailer.send(message)
        except (TransientDeliveryError, PermanentDeliveryError) as exc:
            retry = isinstance(exc, TransientDeliveryError) and edition.attempts + 1 < max_attempts
            self.store.record_attempt(edition, state=EditionState.FAILED, reply=str(exc),
                                      retryable=retry, now=now)
            log.warning("edition.failed subscriber=%s slot=%s attempt=%d retry=%s reply=%r",
                        profile.subscriber_id, slot.isoformat(), edition.attempts + 1, retry,
                        str(exc))
            return EditionOutcome(profile, Status.FAILED, slot, edition.picks, str(exc),
                                  retry=retry, message=message)
        self.store.record_attempt(edition, state=EditionState.SENT, reply=reply,
                                  retryable=False, now=now)
        log.info("edition.sent subscriber=%s slot=%s picks=%d reply=%r",
                 profile.subscriber_id, slot.isoformat(), len(edition.picks), reply)
        return EditionOutcome(profile, Status.SENT, slot, edition.picks, reply, message=message)

    async def run_editions(self, profiles: Iterable[Profile], mailer: Mailer, *,
                           now: datetime, dry_run: bool = False,
                           rng: random.Random | None = None) -> list[EditionOutcome]:
        """Run every profile's edition in turn; one subscriber's failure never stops the rest.

        Editions that failed transiently (4xx, dropped, timed out) are tried again at the
        end of the run, after an exponential back-off with jitter, until they are sent or
        `mail.max_attempts` is used up.
        """
        profiles = list(profiles)
        outcomes = [await self.run_edition(p, mailer, now=now, dry_run=dry_run)
                    for p in profiles]
        rng = rng or random.Random()
        mail = self.settings.mail
        for attempt in range(1, mail.max_attempts):
            again = [i for i, o in enumerate(outcomes) if o.status is Status.FAILED and o.retry]
            if not again:
                break
            delay = min(mail.retry_delay_s * 2 ** (attempt - 1), mail.retry_delay_max_s)
            await asyncio.sleep(delay * rng.uniform(0.75, 1.25))
            log.info("editions.retrying count=%d attempt=%d", len(again), attempt + 1)
            for i in again:
                outcomes[i] = await self.run_edition(profiles[i], mailer, now=now,
                                                     slot=outcomes[i].slot)
        return outcomes
