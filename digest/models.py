"""Records passed between the stages: what ingest produces, what rank and render consume.

All are frozen; datetimes are timezone-aware UTC, dates are plain calendar days.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the email package is read where a message is (not by `digest status`)
    from email.message import EmailMessage

# Papers one edition holds at most: more would not fit in the 100 KB of HTML after which
# Gmail clips an email.
MAX_PAPERS = 30


@dataclass(frozen=True)
class Problem:
    """Something in an input that was skipped or doubtful, with where it is."""

    path: str
    line: int | None
    reason: str
    fatal: bool = False  # the whole input was rejected, not just this line

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class PaperEntry:
    """One paper as a source presented it, before it is merged into the store."""

    title: str
    abstract: str
    source: str
    source_line: int | None = None
    arxiv_id: str | None = None
    authors: tuple[str, ...] = ()
    url: str | None = None
    published: date | None = None
    doi: str | None = None  # lower case, without https://doi.org/


@dataclass(frozen=True)
class Paper:
    """One paper as stored: one record whatever the number of sources it came from."""

    key: str  # public id: the arXiv id when known, else the normalised title key
    title: str
    abstract: str
    first_seen: datetime
    arxiv_id: str | None = None
    authors: tuple[str, ...] = ()
    url: str | None = None
    published: date | None = None
    row_id: int = 0
    doi: str | None = None  # lower case, without https://doi.org/

    @property
    def text(self) -> str:
        """Title and abstract, the text the ranker reads."""
        return f"{self.title}. {self.abstract}"

    def __hash__(self) -> int:
        # By the key alone (equal papers have equal keys), which is cheap: the generated
        # hash would hash every field, the authors' tuple anew each time, and papers are
        # looked up by value in every email (their display strings are remembered).
        return hash(self.key)


@dataclass(frozen=True)
class Interest:
    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class Profile:
    """A subscriber's wishes, read from one YAML file; `subscriber_id` is the file's stem."""

    subscriber_id: str
    path: Path
    name: str
    email: str
    timezone: str = "UTC"
    schedule: str = "daily 07:00"
    max_papers: int = 10
    interests: tuple[Interest, ...] = ()
    require: tuple[str, ...] = ()  # a pick must mention at least one of these
    mute: tuple[str, ...] = ()  # a paper mentioning any of these is never picked
    avoid: tuple[str, ...] = ()  # topics pushed down, softer than mute
    authors: tuple[str, ...] = ()  # papers by these people rank first
    liked: tuple[str, ...] = ()  # titles or arXiv ids
    disliked: tuple[str, ...] = ()
    active: bool = True
    # Scores are standard deviations above a typical stored paper; nothing below is sent.
    min_score: float = 0.0
    when_nothing: str = "skip"  # no paper good enough: "skip" the edition, or send a "note"
    # Until the reader has rated enough papers, the email asks them to rate a few more.
    ask_ratings: bool = True


# The heading of the email's last section, when it has one: papers the reader is asked to
# rate ("more / less like this") so that digest learns what they like, chosen to cover what
# the picks leave out (digest.rank.evidence.ask_samples).
ASK_SECTION = "Help us learn what you like: more or less like these?"


@dataclass(frozen=True)
class Pick:
    """A paper chosen for a subscriber, with its score, the reason in words, and the
    heading of the email's section it is shown in: the interest (as the reader wrote it)
    or the liked paper it serves most ("" when it serves neither)."""

    paper: Paper
    score: float
    reason: str
    section: str = ""


def count_to_rate(picks: Iterable[Pick]) -> int:
    """How many of an edition's papers it asks the reader to rate (ASK_SECTION); the rest
    are its picks."""
    return sum(p.section == ASK_SECTION for p in picks)


class EditionState(enum.StrEnum):
    PENDING = "pending"
    SENDING = "sending"  # handed to the SMTP server; the outcome is not recorded yet
    SENT = "sent"
    FAILED = "failed"
    EMPTY = "empty"  # nothing to send for this slot; recorded so it is not retried


@dataclass(frozen=True)
class Edition:
    """One subscriber's email for one scheduled slot: the unit the ledger sends once."""

    subscriber_id: str
    slot: datetime
    state: EditionState
    message_id: str
    picks: tuple[Pick, ...] = ()
    attempts: int = 0
    smtp_reply: str | None = None
    retryable: bool = True
    row_id: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None  # the last change of state, e.g. the last attempt
    sent_at: datetime | None = None


@dataclass(frozen=True)
class FeedState:
    """What the store remembers of a feed between polls."""

    url: str
    etag: str | None = None
    last_modified: str | None = None
    last_poll_at: datetime | None = None
    last_status: str | None = None
    last_error: str | None = None
    last_new_papers: int = 0
    failures: int = 0
    next_poll_at: datetime | None = None


@dataclass(frozen=True)
class IngestReport:
    """What one ingest run did: counts and the problems met, file by file."""

    files: int = 0
    entries: int = 0
    new_papers: int = 0
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def rejected(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.fatal)


@dataclass(frozen=True)
class OutgoingEmail:
    """A rendered email as it goes over SMTP: its recipients and its bytes (CRLF lines)."""

    recipients: tuple[str, ...]
    data: bytes
    message_id: str
    label: str = "message"  # names the .eml file of a dry run
    # A part is 8bit (RFC 6152): sent with BODY=8BITMIME to a server that takes it, and
    # converted to quoted-printable (`render.seven_bit`) for one that does not.
    eight_bit: bool = False
    # Every line ends in CRLF and no CR or LF stands alone (as `render` writes messages):
    # the SMTP code need not check.
    crlf: bool = False

    @property
    def email(self) -> EmailMessage:
        """The message parsed back, for reading it (tests, previews); not for sending."""
        from email import message_from_bytes
        from email.message import EmailMessage
        from email.policy import default

        parsed = message_from_bytes(self.data, policy=default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @classmethod
    def from_message(cls, message: EmailMessage, label: str = "message") -> OutgoingEmail:
        """Wrap a message built with the email package (its To: addresses receive it)."""
        from email.policy import SMTP as SMTP_POLICY

        return cls(recipients=tuple(a.addr_spec for a in message["To"].addresses),
                   data=message.as_bytes(policy=SMTP_POLICY),
                   message_id=str(message.get("Message-ID", "")), label=label)
