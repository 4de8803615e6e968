"""The one place the stages are joined: store -> rank -> render -> deliver, per edition.

The CLI (and later the scheduler and the workers) call `run_editions`; none of them wires
stages together itself. `now` is always a parameter so that tests can fix it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import re
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import make_msgid
from functools import lru_cache
from typing import Literal

from jinja2 import Environment, TemplateError, TemplateSyntaxError

from digest.config import Settings
from digest.deliver import Mailer, wait_timed
from digest.embed import Embedder, StoredTexts, embed_papers, embedder_for
from digest.errors import (
    ConfigError,
    ConnectionFailure,
    PermanentDeliveryError,
    StoreError,
    TransientDeliveryError,
    first_line,
)
from digest.identity import ascii_address, check_email, parse_arxiv_id
from digest.models import (
    Edition,
    EditionState,
    OutgoingEmail,
    Paper,
    Pick,
    Profile,
)
from digest.profilecache import ProfileCache
from digest.progress import Advance, ShowProgress
from digest.rank import (
    Candidates,
    Corpus,
    Preferences,
    RankRequest,
    build_corpus,
    prepare_candidates,
    rank_many,
)
from digest.render import (
    mail_domain,
    make_environment,
    message_id,
    render_edition,
    seven_bit,
)
from digest.running.liveness import Sender, utc_now
from digest.schedule import parse_schedule
from digest.signing import DkimSigner, make_dkim
from digest.store import Attempt, Store
from digest.tokens import Links, Signer

log = logging.getLogger(__name__)


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


# Signs the links of what is never sent (previews, dry runs, `digest rank`) when no secret
# is set: public, so the links it makes act on nothing `digest serve` accepts.
PREVIEW_KEY = "digest-preview-links-do-not-work-no-DIGEST_SECRET-set"


def make_links(settings: Settings, *, preview: bool = False) -> Links | None:
    """The signed links for emails, if `web.base_url` is set; it needs DIGEST_SECRET,
    unless `preview` (nothing is sent): then links are signed with the public
    PREVIEW_KEY (`preview_only` says so)."""
    if settings.web.base_url is None:
        return None
    signer = Signer.for_web(settings.web)
    if signer is None:
        if not preview:
            raise ConfigError("web.base_url is set, so emails carry signed links, but "
                              "DIGEST_SECRET is not set in the environment")
        signer = Signer([PREVIEW_KEY])
    return Links(settings.web.base_url, signer, settings.web.link_days)


def check_sending(settings: Settings) -> None:
    """Raise ConfigError now if emails could not be made as configured (links without
    their secret, an unusable DKIM key)."""
    make_links(settings)
    make_dkim(settings.mail)



class Status(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"  # this attempt failed; `retry` says whether a later run tries again
    ALREADY_SENT = "already sent"
    EMPTY = "nothing relevant"
    NOT_DUE = "not due"
    DRY_RUN = "dry run"
    IN_FLIGHT = "being sent by another process"
    INACTIVE = "inactive"
    STOPPED = "left for later: stopping"
    ERROR = "not sent: an error"  # a bug met while ranking, rendering or sending it


@dataclass(frozen=True)
class EditionOutcome:
    """What happened to one subscriber's edition in this run."""

    profile: Profile
    status: Status
    slot: datetime | None = None
    picks: tuple[Pick, ...] = ()
    detail: str = ""
    retry: bool = False
    email: OutgoingEmail | None = field(default=None, repr=False)
    picked: int | None = None  # len(picks), kept when the picks are dropped (`lite`)

    @property
    def count(self) -> int:
        return len(self.picks) if self.picked is None else self.picked

    def lite(self) -> EditionOutcome:
        """This outcome without its picks and email: small, to pass between processes."""
        return replace(self, picks=(), email=None, picked=self.count)


BATCH = 500  # subscribers whose editions are prepared, claimed and recorded together
# Server replies are recorded at least this often (how many, or how long since the oldest
# unrecorded one came): the window in which a crash makes an email go out twice.
RECORD_EVERY = 64
RECORD_WITHIN_S = 0.02
CANDIDATE_SETS = 8  # prepared candidate sets kept per run (one per distinct cut-off)
# Papers an email asks a reader to rate while their profile has few ratings (a handful:
# the picks come first). Measured in benchmarks/quality.py's cold-start view.
ASK_RATINGS = 5


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
    _candidates: OrderedDict[datetime | None, Candidates] = field(default_factory=OrderedDict)
    # Who claims and sends this run's editions; the daemon and the workers pass the one they
    # keep, so a single heartbeat serves all their runs.
    sender: Sender = field(default_factory=Sender)
    # The wall clock: claims carry it (a long run's claims must not look stale because the
    # run's `now` is long past).
    clock: Callable[[], datetime] = utc_now
    _found: dict[str, Paper] | None = None
    # The stored paper each liked or disliked reference named when first looked up in
    # this run (profiles share many): papers stored later do not change what it names
    # (an arXiv id is unique; of papers with one title, the oldest is taken). One that
    # named none is looked up again each time, as its paper may be stored meanwhile.
    _named: dict[str, Paper] = field(default_factory=dict)
    _sent: dict[str, set[int]] = field(default_factory=dict)
    _since: dict[str, datetime | None] = field(default_factory=dict)
    links: Links | None = field(init=False, default=None)  # from [web] and DIGEST_SECRET
    dkim: DkimSigner | None = field(init=False, default=None)  # from [mail] dkim_*
    # Once set (the daemon is stopping), no new email is handed to the server; the ones in
    # flight finish and are recorded.
    stopping: asyncio.Event | None = None
    # Seconds spent in each stage (rank, render, smtp, ledger), for `digest send -v`.
    timings: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    _profile_cache: ProfileCache | None = field(init=False, default=None)
    # Nothing of this run is sent (previews, dry runs, `digest rank`): without a secret,
    # links are signed with the public preview key rather than refused.
    preview: bool = False
    preview_only: bool = field(init=False, default=False)
    # Shows the progress of long work (embedding the store's papers); None: nothing shown.
    show_progress: ShowProgress | None = None
    # Called once the corpus is built (`digest send` takes memory that lives as long as the
    # run out of the garbage collector's full passes then: digest/running/processes.py).
    on_corpus: Callable[[], None] | None = None

    @property
    def claimer(self) -> str:
        return self.sender.identity

    def profile_cache(self) -> ProfileCache:
        """The parsed profiles kept in the data folder (digest/profilecache.py)."""
        if self._profile_cache is None:
            self._profile_cache = ProfileCache.for_settings(self.settings)
        return self._profile_cache

    def prefetch(self, profiles: Sequence[Profile]) -> None:
        """Look up every profile's liked and disliked papers, sent papers and last cut-off
        at once, so that ranking thousands of profiles does not query the store for each."""
        refs = list(dict.fromkeys(r for p in profiles for r in (*p.liked, *p.disliked)))
        ids = [p.subscriber_id for p in profiles]
        unknown = [r for r in refs if r not in self._named]
        if unknown:
            self._named.update(self.store.find_papers(unknown))
        self._found = {r: self._named[r] for r in refs if r in self._named}
        self._sent = self.store.sent_paper_ids_many(ids)
        self._since = self.store.candidates_since_many(ids)

    def __post_init__(self) -> None:
        if self.env is None:
            self.env = make_environment(self.settings.templates_dir)
        self.links = make_links(self.settings, preview=self.preview)
        # Links made with the preview key: the command says they will not work.
        self.preview_only = (self.links is not None
                             and Signer.for_web(self.settings.web) is None)
        self.dkim = make_dkim(self.settings.mail)

    def get_embedder(self) -> Embedder | None:
        """The settings' embedder (None: lexical); its model is loaded when first needed."""
        if self.embedder == "unloaded":
            self.embedder = embedder_for(self.settings)
        return self.embedder

    @property
    def corpus(self) -> Corpus:
        if self._corpus is None:
            papers = self.store.papers()
            embedder = self.get_embedder()
            if embedder is None:
                self._corpus = build_corpus(papers)
            else:
                vectors = embed_papers(self.store, embedder, papers,
                                       show_progress=self.show_progress)
                self._corpus = build_corpus(papers, embeddings=vectors,
                                            embed_text=StoredTexts(self.store, embedder).encode)
            if self.on_corpus is not None:
                self.on_corpus()
        return self._corpus

    def candidates(self, since: datetime | None) -> Candidates:
        """The papers first seen after `since` (all if None), prepared once per run."""
        if since in self._candidates:
            self._candidates.move_to_end(since)
        else:
            self._candidates[since] = prepare_candidates(self.corpus,
                                                         self.store.candidate_papers(since))
            if len(self._candidates) > CANDIDATE_SETS:
                self._candidates.popitem(last=False)
        return self._candidates[since]

    def choose_picks(self, profile: Profile, *, now: datetime, everything: bool = False,
                     top: int | None = None) -> list[Pick]:
        """Rank the papers that arrived since the subscriber's last edition (or all stored
        papers, with `everything`), leaving out what was already sent to them."""
        return self.choose_picks_many([profile], now=now, everything=everything, top=top)[0]

    def choose_picks_many(self, profiles: Sequence[Profile], *, now: datetime,
                          everything: bool = False, top: int | None = None
                          ) -> list[list[Pick]]:
        """`choose_picks` for each profile, ranked together (those with the same
        candidates in one `rank_many`)."""
        started = time.perf_counter()
        groups: dict[datetime | None, list[int]] = {}
        requests: list[RankRequest] = []
        for i, profile in enumerate(profiles):
            since = None
            if not everything:
                if profile.subscriber_id in self._since:
                    since = self._since[profile.subscriber_id]
                else:
                    since = self.store.candidates_since(profile.subscriber_id)
                if since is None:
                    since = now - timedelta(days=self.settings.first_edition_lookback_days)
            groups.setdefault(since, []).append(i)
            prefs, unresolved = resolve_preferences(self.store, profile, self._found)
            for ref in unresolved:
                log.info("rank.unresolved subscriber=%s ref=%r", profile.subscriber_id, ref)
            sent = self._sent.get(profile.subscriber_id)
            if sent is None:
                sent = self.store.sent_paper_ids(profile.subscriber_id)
            requests.append(RankRequest(prefs, top=top or profile.max_papers,
                                        exclude=frozenset(sent), min_score=profile.min_score,
                                        ask=self.asks(prefs)))
        picks: list[list[Pick]] = [[] for _ in profiles]
        for since, members in groups.items():
            ranked = rank_many(self.corpus, self.candidates(since),
                               [requests[i] for i in members])
            for i, chosen in zip(members, ranked, strict=True):
                picks[i] = chosen
        self.timings["rank"] += time.perf_counter() - started
        return picks

    def asks(self, prefs: Preferences) -> int:
        """How many papers the email asks the reader to rate: ASK_RATINGS while the profile
        asks for them and has fewer than `classifier_min_papers` liked or disliked
        papers, when emails carry the links to rate with (`web.base_url`); else none."""
        least = self.corpus.params.classifier_min_papers
        if (not prefs.profile.ask_ratings or self.settings.web.base_url is None
                or (len(prefs.liked) >= least and len(prefs.disliked) >= least)):
            return 0
        return ASK_RATINGS

    def render(self, profile: Profile, picks: Sequence[Pick], *, slot: datetime,
               now: datetime, sign: bool = True) -> OutgoingEmail:
        """The email for these picks (DKIM-signed if configured, unless not `sign`).
        Raises ConfigError if an operator's template is broken."""
        assert self.env is not None
        started = time.perf_counter()
        try:
            return render_edition(self.env, profile, picks, slot=slot,
                                  mail=self.settings.mail, now=now, links=self.links,
                                  dkim=self.dkim if sign else None)
        except TemplateError as exc:
            where = f"{exc.name}:{exc.lineno}: " if isinstance(exc, TemplateSyntaxError) else ""
            raise ConfigError(f"template error: {where}{exc}") from exc
        finally:
            self.timings["render"] += time.perf_counter() - started

    def render_test(self, profile: Profile, picks: Sequence[Pick], *, slot: datetime,
                    now: datetime, to: str) -> OutgoingEmail:
        """The email of this edition as a test for `to` alone (`digest send --to`): its
        subject begins "[test] ", its To: is `to`, and its Message-ID is its own (the real
        edition goes out later with the edition's: a mail system that drops a Message-ID
        it has seen must not drop that one). Its links are the subscriber's, signed as
        usual; with DKIM it is signed after these changes. Raises ValueError for an
        address digest cannot send to (identity.check_email)."""
        recipient = ascii_address(check_email(to))
        email = self.render(profile, picks, slot=slot, now=now, sign=False)
        test_id = make_msgid("test", domain=mail_domain(self.settings.mail))
        data = _as_test(email.data, recipient, test_id)
        if self.dkim is not None:  # signed, so in 7-bit forms (see render_edition)
            data = self.dkim.sign(seven_bit(data) if email.eight_bit else data)
        return replace(email, recipients=(recipient,), data=data, message_id=test_id,
                       eight_bit=email.eight_bit and self.dkim is None,
                       crlf=self.dkim is None, label=f"{profile.subscriber_id}-test")

    def _rank_each(self, profiles: Sequence[Profile], now: datetime
                   ) -> list[list[Pick] | Exception]:
        """`choose_picks_many`, with one profile's error kept to that profile: the profiles
        are ranked together and, only if that raises, each alone. Database and
        configuration errors are the whole run's."""
        try:
            return list(self.choose_picks_many(profiles, now=now))
        except (StoreError, ConfigError):
            raise
        except Exception as exc:
            if len(profiles) == 1:
                return [exc]
        ranked: list[list[Pick] | Exception] = []
        for profile in profiles:
            try:
                ranked.append(self.choose_picks_many([profile], now=now)[0])
            except (StoreError, ConfigError):
                raise
            except Exception as exc:
                ranked.append(exc)
        return ranked

    def _drafts(self, due: Sequence[tuple[Profile, datetime]], now: datetime
                ) -> list[Edition | Exception]:
        """A new edition for each (profile, slot) with its picks, not yet recorded; the
        error instead where ranking it raised."""
        ranked = self._rank_each([p for p, _ in due], now)
        domain = mail_domain(self.settings.mail)
        # Nothing good enough: the profile says whether to skip or to send a short note.
        return [picks if isinstance(picks, Exception) else
                Edition(subscriber_id=profile.subscriber_id, slot=slot,
                        state=(EditionState.PENDING if picks or profile.when_nothing == "note"
                               else EditionState.EMPTY),
                        message_id=message_id(profile.subscriber_id, slot, domain),
                        picks=tuple(picks))
                for (profile, slot), picks in zip(due, ranked, strict=True)]

    def _claim_editions(self, due: Sequence[tuple[Profile, datetime]], now: datetime
                        ) -> list[Edition | Exception]:
        """The edition of each (profile, slot): the recorded one, or a new one with its picks
        (or the error ranking it raised: nothing is recorded for it).

        A new edition supersedes the subscriber's older failed ones: their papers are
        candidates again, so nothing is lost and nothing comes twice.
        """
        keys = [(p.subscriber_id, slot) for p, slot in due]
        with self._ledger():
            self.store.save_subscribers([p for p, _ in due], now)
            found = self.store.get_editions(keys)
            new = [(p, slot) for p, slot in due if (p.subscriber_id, slot) not in found]
            self.store.supersede_failed_many([(p.subscriber_id, slot) for p, slot in new],
                                             now=now)
            self.prefetch([p for p, _ in new])  # after superseding: their papers are free
        drafts = self._drafts(new, now)
        errors = {(p.subscriber_id, slot): draft for (p, slot), draft in zip(new, drafts,
                                                                            strict=True)
                  if isinstance(draft, Exception)}
        with self._ledger():
            for edition in self.store.create_editions(
                    [d for d in drafts if isinstance(d, Edition)], candidates_until=now,
                    now=now):
                found[(edition.subscriber_id, edition.slot)] = edition
            raced = [key for key in keys if key not in found and key not in errors]
            if raced:  # created meanwhile by another sender
                found.update(self.store.get_editions(raced))
        return [found.get(key) or errors[key] for key in keys]

    @contextmanager
    def _ledger(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings["ledger"] += time.perf_counter() - started

    async def run_edition(self, profile: Profile, mailer: Mailer, *, now: datetime,
                          dry_run: bool = False, slot: datetime | None = None
                          ) -> EditionOutcome:
        """Send the subscriber's edition for `slot` (default: the latest slot at or before
        `now`), once.

        Idempotent: a sent edition is never sent again, and two senders never both send
        one; a failed edition is retried while its failure was transient and attempts
        remain. A dry run records nothing. Raises ConfigError for a broken template.
        """
        [outcome] = await self.run_batch([(profile, slot)], mailer, now=now, dry_run=dry_run)
        return outcome

    async def run_editions(self, profiles: Iterable[Profile], mailer: Mailer, *,
                           now: datetime, dry_run: bool = False,
                           rng: random.Random | None = None,
                           slots: Sequence[datetime | None] | None = None,
                           retry_in_run: bool = True, progress: Advance | None = None
                           ) -> list[EditionOutcome]:
        """Run every profile's edition (its latest due one, or the one of `slots[i]`); one
        subscriber's failure never stops the rest. The one way editions are run: every
        caller (the CLI, local worker processes, Celery workers, the daemon) hands its
        editions here and reads the outcomes.

        Profiles go in batches: each batch's editions are looked up, ranked and recorded
        together, then sent over the mailer's pool of connections, each server reply
        recorded as soon as it comes (see docs/delivery.md). Editions that failed
        transiently (4xx, dropped, timed out) are tried again at the end of the run, after
        an exponential back-off with jitter, until they are sent or `mail.max_attempts` is
        used up; unless not `retry_in_run` (the daemon, whose retry job tries them again
        later). Once `stopping` is set, the editions not yet begun are left for later.

        What escapes is the run's, not an edition's: the database away (StoreError), a
        broken template (ConfigError), or no connection to the SMTP server
        (ConnectionFailure: refused, DNS, TLS, login, no answer; the messages in flight
        finish first). What this run claimed and did not send is given back to pending,
        with no attempt recorded: the next run sends it.
        """
        profiles = list(profiles)
        wanted = list(slots) if slots is not None else [None] * len(profiles)
        if len(wanted) != len(profiles):
            raise ValueError("one slot per profile")
        outcomes: list[EditionOutcome] = []
        for start in range(0, len(profiles), BATCH):
            batch = list(zip(profiles[start:start + BATCH], wanted[start:start + BATCH],
                             strict=True))
            if self.stopping is not None and self.stopping.is_set():
                outcomes += [EditionOutcome(p, Status.STOPPED, slot) for p, slot in batch]
                continue
            outcomes += await self.run_batch(batch, mailer, now=now, dry_run=dry_run)
            if progress is not None:
                progress(len(batch))
        rng = rng or random.Random()
        mail = self.settings.mail
        for attempt in range(1, mail.max_attempts if retry_in_run else 1):
            again = [i for i, o in enumerate(outcomes) if o.status is Status.FAILED and o.retry]
            if not again:
                break
            delay = min(mail.retry_delay_s * 2 ** (attempt - 1), mail.retry_delay_max_s)
            await asyncio.sleep(delay * rng.uniform(0.75, 1.25))
            log.info("editions.retrying count=%d attempt=%d", len(again), attempt + 1)
            for start in range(0, len(again), BATCH):
                chosen = again[start:start + BATCH]
                redone = await self.run_batch(
                    [(profiles[i], outcomes[i].slot) for i in chosen], mailer, now=now)
                for i, outcome in zip(chosen, redone, strict=True):
                    outcomes[i] = outcome
        return outcomes

    async def run_batch(self, items: Sequence[tuple[Profile, datetime | None]],
                        mailer: Mailer, *, now: datetime, dry_run: bool = False
                        ) -> list[EditionOutcome]:
        """A batch of editions (up to `BATCH`), each for its slot (None: the latest due),
        looked up, ranked, claimed and recorded together; no retries within the run."""
        outcomes: list[EditionOutcome | None] = [None] * len(items)
        due: list[tuple[int, Profile, datetime]] = []
        first: dict[tuple[str, datetime], int] = {}  # one edition, asked for twice: once
        repeats: list[tuple[int, int]] = []
        for i, (profile, slot) in enumerate(items):
            if not profile.active:
                outcomes[i] = EditionOutcome(profile, Status.INACTIVE)
                continue
            slot = slot or _last_slot(profile.schedule, profile.timezone, now)
            if slot is None:
                outcomes[i] = EditionOutcome(profile, Status.NOT_DUE)
            elif (profile.subscriber_id, slot) in first:
                repeats.append((i, first[(profile.subscriber_id, slot)]))
            else:
                first[(profile.subscriber_id, slot)] = i
                due.append((i, profile, slot))
        if due:
            editions: list[Edition | Exception]
            if dry_run:
                keys = [(p.subscriber_id, slot) for _, p, slot in due]
                recorded = self.store.get_editions(keys)
                unrecorded = [(p, slot) for key, (_, p, slot) in zip(keys, due, strict=True)
                              if key not in recorded]
                self.prefetch([p for p, _ in unrecorded])
                drafted = iter(self._drafts(unrecorded, now))
                editions = [recorded[key] if key in recorded else next(drafted)
                            for key in keys]
            else:
                self.sender.give_back(self.store, now=self.clock())
                editions = self._claim_editions([(p, slot) for _, p, slot in due], now)
            sendable = []
            for (i, profile, slot), edition in zip(due, editions, strict=True):
                if isinstance(edition, Exception):
                    outcomes[i] = _error(profile, slot, "ranking", edition)
                    continue
                outcome = _settled(profile, slot, edition)
                if outcome is None:
                    sendable.append((i, profile, slot, edition))
                else:
                    outcomes[i] = outcome
            if dry_run:
                for i, profile, slot, edition in sendable:
                    try:
                        email = self.render(profile, edition.picks, slot=slot, now=now)
                    except Exception as exc:
                        outcomes[i] = _error(profile, slot, "rendering", exc)
                        continue
                    # The outbox's file: ana-2026-12-07-0700.eml (the slot in UTC).
                    email = replace(email, label=f"{profile.subscriber_id}-"
                                                 f"{slot.astimezone(UTC):%Y-%m-%d-%H%M}")
                    outcomes[i] = EditionOutcome(profile, Status.DRY_RUN, slot, edition.picks,
                                                 await mailer.send(email), email=email)
            elif sendable:
                for i, outcome in (await self._send(sendable, mailer, now)).items():
                    outcomes[i] = outcome
        for i, original in repeats:
            outcomes[i] = outcomes[original]
        self._found, self._sent, self._since = None, {}, {}
        assert all(o is not None for o in outcomes)
        return [o for o in outcomes if o is not None]

    async def _send(self, sendable: Sequence[tuple[int, Profile, datetime, Edition]],
                    mailer: Mailer, now: datetime) -> dict[int, EditionOutcome]:
        """Claim the editions, then send them over up to `smtp.connections` connections at
        once, recording each server reply as it arrives (those that arrive together in one
        transaction). An edition that another sender holds is left alone. Raises
        ConnectionFailure once the messages in flight are done if a connection could not
        be made; the editions it held back are given back to pending, uncharged."""
        # Claims carry the wall clock, not the run's `now`: a long run's claims must not look
        # stale (and be taken by another sender) because the run began long ago.
        claimed_at = max(now, self.clock())
        stale_before = claimed_at - timedelta(seconds=self.settings.mail.sending_stale_s)
        with self._ledger():
            self.sender.keep_alive(self.store)
            taken = self.store.begin_sending_many([e for *_, e in sendable], now=claimed_at,
                                                  stale_before=stale_before,
                                                  claimer=self.claimer)
        outcomes: dict[int, EditionOutcome] = {}
        work = []
        for i, profile, slot, edition in sendable:
            if edition.row_id in taken:
                work.append((i, profile, slot, edition))
            else:
                outcomes[i] = EditionOutcome(profile, Status.IN_FLIGHT, slot, edition.picks)
        started = time.perf_counter()
        spent = self.timings["render"] + self.timings["ledger"]
        running: dict[asyncio.Task[str], tuple[int, Profile, datetime, Edition,
                                               OutgoingEmail]] = {}
        replies: list[Attempt] = []  # server replies not yet recorded
        oldest = 0.0  # when the oldest of them came

        def record() -> None:
            with self._ledger():
                self.store.record_attempts(replies, now=now, claimer=self.claimer)
            replies.clear()

        queue = iter(work)
        finished = _Finished()
        # No connection to the server could be made: nothing more is handed over, the
        # messages in flight finish and are recorded, then this is raised (the run's).
        unreachable: ConnectionFailure | None = None
        try:
            while True:
                for i, profile, slot, edition in (queue if unreachable is None else ()):
                    if ((self.stopping is not None and self.stopping.is_set())
                            or not self.sender.fresh(self.store)):
                        outcomes[i] = EditionOutcome(profile, Status.STOPPED, slot,
                                                     edition.picks)
                        continue
                    try:
                        email = self.render(profile, edition.picks, slot=slot, now=now)
                    except Exception as exc:  # given back to pending, below
                        outcomes[i] = _error(profile, slot, "rendering", exc)
                        continue
                    task = asyncio.create_task(mailer.send(email))
                    finished.watch(task)
                    running[task] = (i, profile, slot, edition, email)
                    if len(running) >= self.settings.smtp.connections:
                        break
                if not running:
                    break
                # Replies are recorded together, a few milliseconds' worth at a time: one
                # transaction each would cost more than the rest of sending. The wait ends
                # in time to record the oldest waiting reply within RECORD_WITHIN_S.
                wait = (max(RECORD_WITHIN_S - (time.monotonic() - oldest), 0.0)
                        if replies else None)
                done = await finished.wait(wait)
                if done and not replies:
                    oldest = time.monotonic()
                for task in done:
                    i, profile, slot, edition, email = running.pop(task)
                    error = task.exception()
                    if isinstance(error, ConnectionFailure):  # not this edition's: no
                        unreachable = unreachable or error  # attempt; given back below
                        continue
                    if error is not None and not isinstance(
                            error, TransientDeliveryError | PermanentDeliveryError):
                        if not isinstance(error, Exception):
                            raise error
                        # Not an SMTP reply but a bug: given back to pending, below.
                        outcomes[i] = _error(profile, slot, "sending", error)
                        continue
                    outcomes[i], attempt = self._outcome(task, profile, slot, edition, email)
                    replies.append(attempt)
                if (not running or len(replies) >= RECORD_EVERY
                        or time.monotonic() - oldest >= RECORD_WITHIN_S):
                    record()
        except BaseException:
            for task in running:
                task.cancel()
            if replies:  # what the server accepted is recorded before anything else
                record()
            self.sender.holding = True  # should the release below fail too
            raise
        finally:
            spent = self.timings["render"] + self.timings["ledger"] - spent
            self.timings["smtp"] += time.perf_counter() - started - spent
            # What was claimed but never handed to the server goes back to pending; what
            # was in flight stays `sending` and is recovered (docs/delivery.md).
            in_flight = {item[0] for item in running.values()}
            self.store.release_claims(
                [e.row_id for i, *_, e in work if e.row_id is not None and i not in in_flight
                 and (i not in outcomes or outcomes[i].status in _GIVEN_BACK)],
                claimer=self.claimer, now=now)
        if unreachable is not None:
            log.info("editions.unreachable given_back=%d reason=%r",
                     sum(1 for i, *_ in work if i not in outcomes), str(unreachable))
            raise unreachable
        return outcomes

    def _outcome(self, task: asyncio.Task[str], profile: Profile, slot: datetime,
                 edition: Edition, email: OutgoingEmail) -> tuple[EditionOutcome, Attempt]:
        """The outcome of one finished send, and the attempt to record for it."""
        exc = task.exception()
        if exc is None:
            reply = task.result()
            log.info("edition.sent subscriber=%s slot=%s picks=%d reply=%r",
                     profile.subscriber_id, slot.isoformat(), len(edition.picks), reply)
            return (EditionOutcome(profile, Status.SENT, slot, edition.picks, reply,
                                   email=email),
                    Attempt(edition, EditionState.SENT, reply, retryable=False))
        assert isinstance(exc, TransientDeliveryError | PermanentDeliveryError)
        retry = (isinstance(exc, TransientDeliveryError)
                 and edition.attempts + 1 < self.settings.mail.max_attempts)
        log.warning("edition.failed subscriber=%s slot=%s attempt=%d retry=%s reply=%r",
                    profile.subscriber_id, slot.isoformat(), edition.attempts + 1, retry,
                    str(exc))
        return (EditionOutcome(profile, Status.FAILED, slot, edition.picks, str(exc),
                               retry=retry, email=email),
                Attempt(edition, EditionState.FAILED, str(exc), retryable=retry))


class _Finished:
    """Tasks as they finish: what `asyncio.wait(tasks, return_when=FIRST_COMPLETED)` tells,
    without adding a callback to every running task and taking it off again at each wait
    (there is a wait for about every message sent)."""

    def __init__(self) -> None:
        self._done: list[asyncio.Task[str]] = []
        self._waiter: asyncio.Future[None] | None = None

    def watch(self, task: asyncio.Task[str]) -> None:
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[str]) -> None:
        self._done.append(task)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, within: float | None) -> list[asyncio.Task[str]]:
        """The watched tasks that finished since the last call, in the order they did;
        if none has, waits for one up to `within` seconds (None: without limit)."""
        if not self._done:
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await wait_timed(waiter, within, _release)
            finally:
                self._waiter = None
        done, self._done = self._done, []
        return done


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# Outcomes whose claimed edition goes back to pending at the end of a batch.
_GIVEN_BACK = frozenset({Status.STOPPED, Status.ERROR})


def _error(profile: Profile, slot: datetime, stage: str, exc: Exception) -> EditionOutcome:
    """An edition that met an unexpected error (a bug): its own outcome, never the run's.
    Logged in one line; the traceback at debug level (-vv). A ConfigError (a broken
    template) is every edition's, so it is the run's: raised, not kept here."""
    if isinstance(exc, ConfigError | StoreError):
        raise exc
    log.error("edition.error subscriber=%s slot=%s stage=%s error=%r",
              profile.subscriber_id, slot.isoformat(), stage, first_line(exc))
    log.debug("edition.error subscriber=%s traceback", profile.subscriber_id, exc_info=exc)
    return EditionOutcome(profile, Status.ERROR, slot,
                          detail=f"{stage} failed: {type(exc).__name__}: {first_line(exc)}")


_HEADER_FIELD_END = re.compile(rb"\r\n(?![ \t])")  # a CRLF not followed by a folded line


def _as_test(data: bytes, recipient: str, test_id: str) -> bytes:
    """A rendered message's header changed for a test: "[test] " before the subject (which
    may be RFC 2047 words: plain text may precede them), `recipient` as To:, `test_id` as
    Message-ID. The body is left as it is."""
    head, _, body = data.partition(b"\r\n\r\n")
    fields = []
    for line in _HEADER_FIELD_END.split(head):
        name, _, value = line.partition(b":")
        match name.lower():
            case b"subject":
                line = b"Subject: [test] " + value.lstrip(b" ")
            case b"to":
                line = b"To: " + recipient.encode("ascii")
            case b"message-id":
                line = b"Message-ID: " + test_id.encode("ascii")
        fields.append(line)
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


def _settled(profile: Profile, slot: datetime, edition: Edition) -> EditionOutcome | None:
    """The outcome of an edition that is not to be sent now; None if it is to be sent."""
    if edition.state is EditionState.SENT:
        return EditionOutcome(profile, Status.ALREADY_SENT, slot, edition.picks)
    if edition.state is EditionState.EMPTY:
        return EditionOutcome(profile, Status.EMPTY, slot)
    if edition.state is EditionState.FAILED and not edition.retryable:
        return EditionOutcome(profile, Status.FAILED, slot, edition.picks,
                              edition.smtp_reply or "", retry=False)
    return None


@lru_cache(maxsize=1024)
def _last_slot(schedule: str, timezone: str, now: datetime) -> datetime | None:
    """The latest slot of a schedule at or before `now`; remembered, since most
    subscribers of a list share one of a few schedules."""
    return parse_schedule(schedule, timezone).last_slot(now)
