"""Render: picks in, one multipart/alternative `EmailMessage` (plain text + HTML) out.

Templates come from the operator's folder first, then the defaults shipped with digest.
HTML is autoescaped and its CSS inlined; every header value is checked for line breaks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import css_inline
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    select_autoescape,
)

from digest.config import MailSettings
from digest.models import Pick, Profile

ABSTRACT_WORDS = 70
SUBJECT_TITLE_CHARS = 90
_BREAKS = re.compile(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+")


def default_templates_dir() -> Path:
    """The shipped templates: inside the installed package, or beside it in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "templates"
    return installed if installed.is_dir() else package.parent / "templates"


def make_environment(override_dir: Path | None = None) -> Environment:
    """A Jinja environment that looks in `override_dir` before the default templates."""
    loaders = [FileSystemLoader(str(override_dir))] if override_dir else []
    loaders.append(FileSystemLoader(str(default_templates_dir())))
    return Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"),
                                     default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def one_line(value: str) -> str:
    """The value with every line break folded into a space, for use in a header."""
    return " ".join(_BREAKS.sub(" ", value).split())


def safe_url(url: str | None) -> str | None:
    """The URL if it is http(s) with a host; anything else (javascript:, data:) is dropped."""
    if not url:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.geturl()


def shorten(text: str, words: int = ABSTRACT_WORDS) -> str:
    """The first `words` words, ending at a sentence if one ends near the cut."""
    split = text.split()
    if len(split) <= words:
        return " ".join(split)
    cut = " ".join(split[:words])
    stop = cut.rfind(". ")
    if stop > len(cut) * 0.6:
        return cut[: stop + 1]
    return cut.rstrip(",;:") + " …"


def format_authors(authors: Sequence[str], limit: int = 6) -> str:
    if len(authors) <= limit:
        return ", ".join(authors)
    return ", ".join(authors[:limit]) + f" and {len(authors) - limit} more"


def message_id(subscriber_id: str, slot: datetime, domain: str) -> str:
    """A Message-ID derived from the edition, so every resend of it carries the same one."""
    digest = hashlib.sha256(f"{subscriber_id}\0{slot.isoformat()}".encode()).hexdigest()[:32]
    return f"<edition.{digest}@{domain}>"


def mail_domain(mail: MailSettings) -> str:
    return mail.from_address.rpartition("@")[2] or "localhost"


@dataclass(frozen=True)
class PickView:
    """One pick as the templates see it: display strings only, all computed here."""

    title: str
    url: str | None
    authors: str
    abstract: str
    reason: str
    score: float


def edition_subject(profile: Profile, picks: Sequence[Pick], day: datetime) -> str:
    top = one_line(picks[0].paper.title) if picks else "nothing new today"
    if len(top) > SUBJECT_TITLE_CHARS:
        top = top[: SUBJECT_TITLE_CHARS - 1].rstrip() + "…"
    return f"Papers for {day:%a %d %b}: {top}"


def render_edition(
    env: Environment,
    profile: Profile,
    picks: Sequence[Pick],
    *,
    slot: datetime,
    mail: MailSettings,
    now: datetime,
) -> EmailMessage:
    """Build the email for one edition. `slot` and `now` are UTC; the day shown is local."""
    local_day = slot.astimezone(ZoneInfo(profile.timezone))
    subject = edition_subject(profile, picks, local_day)
    views = [
        PickView(
            title=one_line(p.paper.title),
            url=safe_url(p.paper.url),
            authors=format_authors(p.paper.authors),
            abstract=shorten(p.paper.abstract),
            reason=one_line(p.reason),
            score=p.score,
        )
        for p in picks
    ]
    count = len(views)
    context = {
        "subject": subject,
        "heading": f"Papers for {local_day:%A %d %B %Y}",
        "lede": (f"{profile.name}, here {'is' if count == 1 else 'are'} {count} new "
                 f"paper{'' if count == 1 else 's'} picked for your interests." if count else
                 f"{profile.name}, nothing that arrived since your last email matched your "
                 "interests closely enough. Your profile asks for this note on such days."),
        "preheader": f"Top pick: {views[0].title}" if views else "Nothing new today",
        "picks": views,
        "profile": profile,
        "footer": (f"You receive this because {profile.email} is subscribed to {mail.list_id}. "
                   "To change what you get, edit your profile or reply to this email."),
    }
    text = env.get_template("email.txt.j2").render(context)
    html = env.get_template("email.html.j2").render(context)
    inliner = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
    html = inliner.inline(html)

    message = EmailMessage()
    message["Subject"] = one_line(subject)
    message["From"] = Address(one_line(mail.from_name), addr_spec=mail.from_address)
    message["To"] = Address(one_line(profile.name), addr_spec=profile.email)
    if mail.reply_to:
        message["Reply-To"] = mail.reply_to
    message["Date"] = format_datetime(now)
    message["Message-ID"] = message_id(profile.subscriber_id, slot, mail_domain(mail))
    message["List-Id"] = f"<{one_line(mail.list_id)}>"
    message["Auto-Submitted"] = "auto-generated"
    message["X-Digest-Edition"] = f"{profile.subscriber_id} {slot.isoformat()}"
    message.set_content(text, subtype="plain", charset="utf-8")
    message.add_alternative(html, subtype="html", charset="utf-8")
    return message
