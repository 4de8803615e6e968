"""Render: picks in, one multipart/alternative email (plain text + HTML) out, as bytes.

Templates come from the operator's folder first, then the defaults shipped with digest.
HTML is autoescaped and its CSS inlined; every header value is checked for line breaks.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from email.header import Header
from email.utils import format_datetime, formataddr
from functools import lru_cache, partial
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlsplit
from weakref import WeakKeyDictionary
from zoneinfo import ZoneInfo

import css_inline
from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    pass_environment,
    select_autoescape,
)
from jinja2.filters import do_wordwrap
from markupsafe import Markup

from digest.config import MailSettings
from digest.identity import ascii_address, ascii_domain
from digest.models import (
    ASK_SECTION,
    MAX_PAPERS,
    OutgoingEmail,
    Paper,
    Pick,
    Profile,
    count_to_rate,
)
from digest.schedule import cadence
from digest.signing import DkimSigner
from digest.tokens import Action, Links

ABSTRACT_WORDS = 70
SUBJECT_TITLE_CHARS = 90
# One inliner for every message: the stylesheet is in the template, never fetched.
_INLINER = css_inline.CSSInliner(keep_at_rules=True, load_remote_stylesheets=False)
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
    env = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"),
                                     default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # each run makes its own environment, so edits are seen
    )
    env.filters["wordwrap"] = _cached_wordwrap
    return env


@pass_environment
def _cached_wordwrap(env: Environment, s: str, width: int = 79, break_long_words: bool = True,
                     wrapstring: str | None = None, break_on_hyphens: bool = True) -> str:
    """Jinja's `wordwrap`, faster: textwrap is slow. Each result is remembered (a paper's
    title and abstract are the same in every subscriber's email), and text of words and
    single spaces only (no hyphen, no word over `width`) is wrapped here, as textwrap
    would. While a stencil is made, a placeholder comes back saying how it was wrapped."""
    params = (width, break_long_words, wrapstring or env.newline_sequence, break_on_hyphens)
    if isinstance(s, _Hole):  # a stencil is being made: the hole says how to wrap it
        return s.wrapped(params)
    return _wrap(str(s), *params)


@lru_cache(maxsize=65536)
def _wrap(s: str, width: int, break_long_words: bool, wrapstring: str,
          break_on_hyphens: bool) -> str:
    if not s or " ".join(s.split()) != s:
        return _textwrap(s, width, break_long_words, wrapstring, break_on_hyphens)
    # What textwrap does with words and single spaces: each line as many words as fit,
    # so it ends at the last space within `width` + 1 characters.
    lines = []
    rest = s
    while len(rest) > width:
        cut = rest.rfind(" ", 0, width + 1)
        if cut < 0:  # a word longer than a line, which textwrap breaks
            return _textwrap(s, width, break_long_words, wrapstring, break_on_hyphens)
        lines.append(rest[:cut])
        rest = rest[cut + 1:]
        if break_on_hyphens and "-" in rest.partition(" ")[0]:
            # textwrap may break the word beginning a line after a hyphen, leaving a
            # part on the line before. A hyphenated word within a line is kept whole.
            return _textwrap(s, width, break_long_words, wrapstring, break_on_hyphens)
    lines.append(rest)
    return wrapstring.join(lines)


def _textwrap(s: str, width: int, break_long_words: bool, wrapstring: str,
              break_on_hyphens: bool) -> str:
    return str(do_wordwrap(_WRAP_ENV, s, width, break_long_words, wrapstring,
                           break_on_hyphens))


_WRAP_ENV = Environment()


def one_line(value: str) -> str:
    """The value with every line break folded into a space, for use in a header."""
    if value.isprintable() and "  " not in value and value[:1] != " " and value[-1:] != " ":
        return value  # no break, no other white space than single spaces: as it is
    return " ".join(_BREAKS.sub(" ", value).split())


def safe_url(url: str | None) -> str | None:
    """The URL if it is http(s) with a host; anything else (javascript:, data:) is dropped."""
    if not url:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.geturl()


def shorten(text: str, words: int = ABSTRACT_WORDS) -> tuple[str, bool]:
    """The first `words` words, ending at a sentence if one ends near the cut, and whether
    it was cut (a cut text ends with an ellipsis, even at a sentence's end)."""
    split = text.split()
    if len(split) <= words:
        return " ".join(split), False
    cut = " ".join(split[:words])
    stop = cut.rfind(". ")
    if stop > len(cut) * 0.6:
        return cut[: stop + 1] + " …", True
    return cut.rstrip(",;:") + " …", True


def format_authors(authors: Sequence[str], limit: int = 6) -> str:
    if len(authors) <= limit:
        return ", ".join(authors)
    return ", ".join(authors[:limit]) + f" and {len(authors) - limit} more"


def message_id(subscriber_id: str, slot: datetime, domain: str) -> str:
    """A Message-ID derived from the edition, so every resend of it carries the same one."""
    digest = hashlib.sha256(f"{subscriber_id}\0{slot.isoformat()}".encode()).hexdigest()[:32]
    return f"<edition.{digest}@{domain}>"


def mail_domain(mail: MailSettings) -> str:
    """The sender's domain in ASCII: what Message-IDs end with."""
    return ascii_domain(mail.from_address.rpartition("@")[2] or "localhost")


@dataclass(frozen=True)
class PickView:
    """One pick as the templates see it: display strings only, all computed here."""

    title: str
    url: str  # every paper has a link: its arXiv page, its source's page, or a search
    link_label: str  # what that link is ("arXiv", "Hugging Face", "Source", "Search arXiv")
    authors: str
    abstract: str
    cut: bool  # the abstract was shortened: "Read more" follows it
    reason: str
    score: float
    pdf_url: str | None = None  # when its arXiv id is known
    more_url: str | None = None  # "more like this" / "less like this", when links are on
    less_url: str | None = None
    # The heading of the section this pick opens ("" for the picks after the first of a
    # section, and in an email of one section).
    section: str = ""


ARXIV_ABS = "https://arxiv.org/abs/"
ARXIV_PDF = "https://arxiv.org/pdf/"
ARXIV_TITLE_SEARCH = "https://arxiv.org/search/?searchtype=title&query="


def paper_links(paper: Paper) -> tuple[str, str, str | None]:
    """Where a paper's title links, what that page is, and its PDF: the arXiv abstract
    page (and PDF) when its arXiv id is known; else the page its source gave (a feed
    entry's link, a Hugging Face paper page); else a title search on arXiv."""
    if paper.arxiv_id:
        return ARXIV_ABS + paper.arxiv_id, "arXiv", ARXIV_PDF + paper.arxiv_id
    page = safe_url(paper.url)
    if page is not None:
        host = (urlsplit(page).hostname or "").removeprefix("www.")
        return page, "Hugging Face" if host in ("huggingface.co", "hf.co") else "Source", None
    query = quote_plus(" ".join(paper.title.split()))
    return ARXIV_TITLE_SEARCH + query, "Search arXiv", None


@lru_cache(maxsize=8192)
def _paper_view(paper: Paper) -> tuple[str, str, str, str, str, bool, str | None]:
    """A paper's title, link (and what it is), authors, abstract (and whether it was cut)
    and PDF as shown: the same in every email."""
    url, label, pdf = paper_links(paper)
    abstract, cut = shorten(paper.abstract)
    return (one_line(paper.title), url, label, format_authors(paper.authors), abstract, cut,
            pdf)


OTHER_SECTION = "More for you"


def grouped(picks: Sequence[Pick]) -> list[tuple[str, list[Pick]]]:
    """The picks by section, each shown once: the section of the best pick first, the
    best pick first within each (picks come best first). Picks of no section go after
    them, under OTHER_SECTION; an email of one section has no heading (""). The papers
    the reader is asked to rate (ASK_SECTION) come last, under their heading."""
    sections: dict[str, list[Pick]] = {}
    for pick in picks:
        sections.setdefault(pick.section, []).append(pick)
    asked = sections.pop(ASK_SECTION, [])
    if len(sections) <= 1:
        ordered = [("", [p for p in picks if p.section != ASK_SECTION])] if sections else []
    else:
        rest = sections.pop("", [])
        ordered = list(sections.items())
        if rest:
            ordered.append((OTHER_SECTION, rest))
    if asked:
        ordered.append((ASK_SECTION, asked))
    return ordered


def edition_subject(profile: Profile, picks: Sequence[Pick], day: datetime) -> str:
    """The subject: which edition it is, plainly, and the top pick. A weekly edition is
    "Weekly papers" whatever day it arrives; others name their day."""
    weekly = cadence(profile.schedule) == "weekly"
    top = (one_line(picks[0].paper.title) if picks
           else f"nothing new {'this week' if weekly else 'today'}")
    if len(top) > SUBJECT_TITLE_CHARS:
        top = top[: SUBJECT_TITLE_CHARS - 1].rstrip() + "…"
    if weekly:
        return f"Weekly papers: {top}"
    return f"Papers for {_day_names(day.date())[0]}: {top}"


def edition_heading(profile: Profile, day: datetime) -> str:
    if cadence(profile.schedule) == "weekly":
        return f"Weekly papers, {_day_names(day.date())[1]}"
    return f"Papers for {_day_names(day.date())[1]}"


@lru_cache(maxsize=64)
def _day_names(day: date) -> tuple[str, str]:
    """The day as the subject ("Wed 25 Nov") and the heading ("Wednesday 25 November
    2026") name it; a run's emails share a few days."""
    return f"{day:%a} {day.day} {day:%b}", f"{day:%A} {day.day} {day:%B %Y}"


@lru_cache(maxsize=16)
def _date_header(now: datetime) -> str:
    return format_datetime(now)  # the same for every email of a run


@lru_cache(maxsize=16)
def _from_header(name: str, address: str) -> str:
    return formataddr((one_line(name), ascii_address(address)), charset="utf-8")


def render_edition(
    env: Environment,
    profile: Profile,
    picks: Sequence[Pick],
    *,
    slot: datetime,
    mail: MailSettings,
    now: datetime,
    links: Links | None = None,
    dkim: DkimSigner | None = None,
    prepared: bool = True,
) -> OutgoingEmail:
    """Build the email for one edition. `slot` and `now` are UTC; the day shown is local.

    With `links`, each paper gets signed "more / less like this" links, and the email an
    unsubscribe link (also as RFC 8058 one-click headers) and a link to edit the profile.
    With `dkim`, the message is signed. `prepared=False` renders both parts through
    Jinja (and the CSS inliner) even where a stencil could be used (see `html_part`).
    """
    local_day = slot.astimezone(ZoneInfo(profile.timezone))
    subject = edition_subject(profile, picks, local_day)
    sid = profile.subscriber_id

    url = links.for_email(sid, now) if links is not None else None

    def feedback(pick: Pick, action: Action) -> str | None:
        if url is None or pick.paper.row_id is None:
            return None
        return url(action, pick.paper.row_id)

    views = []
    for section, members in grouped(picks):
        for position, p in enumerate(members):
            title, link, label, authors, abstract, cut, pdf = _paper_view(p.paper)
            views.append(PickView(title, link, label, authors, abstract, cut,
                                  reason=one_line(p.reason), score=p.score, pdf_url=pdf,
                                  more_url=feedback(p, "more"), less_url=feedback(p, "less"),
                                  section=one_line(section) if position == 0 else ""))
    unsubscribe = url("unsubscribe", None) if url else None
    asked = count_to_rate(picks)
    count = len(views) - asked
    to_rate = (f" At the end, {asked} more to rate: your \u201cmore\u201d and \u201cless\u201d "
               "teach digest what you like." if asked else "")
    context = {
        "subject": subject,
        "heading": edition_heading(profile, local_day),
        "lede": (f"{profile.name}, here {'is' if count == 1 else 'are'} {count} new "
                 f"paper{'' if count == 1 else 's'} picked for your interests.{to_rate}"
                 if count else
                 f"{profile.name}, nothing that arrived since your last email matched your "
                 "interests closely enough. Your profile asks for this note on such days."),
        "preheader": f"Top pick: {views[0].title}" if views else "Nothing new today",
        "picks": views,
        "profile": profile,
        "footer": (f"You receive this because {profile.email} is subscribed to {mail.list_id}. "
                   "To change what you get, edit your profile or reply to this email."),
        "unsubscribe_url": unsubscribe,
        "profile_url": url("profile", None) if url else None,
    }
    text = text_part(env, context, prepared=prepared)
    html = html_part(env, context, prepared=prepared)
    sender = _from_header(mail.from_name, mail.from_address)
    recipient = ascii_address(profile.email)
    edition_id = message_id(profile.subscriber_id, slot, mail_domain(mail))
    headers = [
        ("Subject", one_line(subject)),
        ("From", sender),
        ("To", formataddr((one_line(profile.name), recipient), charset="utf-8")),
        *([("Reply-To", mail.reply_to)] if mail.reply_to else []),
        ("Date", _date_header(now)),
        ("Message-ID", edition_id),
        ("List-Id", f"<{one_line(mail.list_id)}>"),
        ("Auto-Submitted", "auto-generated"),
        *([("List-Unsubscribe", f"<{unsubscribe}>"),
           ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")] if unsubscribe else []),
        ("X-Digest-Edition", f"{profile.subscriber_id} {slot.isoformat()}"),
    ]
    # A signed message goes in 7-bit forms only: a relay that converted an 8bit part for a
    # server that does not take 8BITMIME would break the signature (RFC 6376, 5.3).
    data, eight_bit = _serialised(headers, text, html, dkim is None)
    return OutgoingEmail(recipients=(recipient,), data=dkim.sign(data) if dkim else data,
                         message_id=edition_id, eight_bit=eight_bit, crlf=dkim is None,
                         label=f"{profile.subscriber_id} {slot.isoformat()}")


def html_part(env: Environment, context: Mapping[str, Any], *, prepared: bool = True) -> str:
    """The HTML part for `context`: `email.html.j2` rendered, its CSS inlined, every
    character beyond ASCII written as a reference (&#233;), so that the part travels as it
    is, readable, with no quoted-printable to encode or decode.

    With the shipped HTML templates (and `prepared`), the email is assembled from a
    stencil instead: the templates rendered and inlined once per run with a placeholder in
    every value, the values then written in with the escaping the inliner's own output
    would have. The result is the same text (tests/test_render.py compares the two on
    arbitrary input) at about a seventh of the cost: Jinja and the CSS inliner were half
    of the cost of an email. An operator's own templates are always rendered in full.
    """
    stencil = (_stencil(env, _HTML, bool(context["unsubscribe_url"])) if prepared
               else None)
    html = stencil.assemble(context) if stencil is not None else None
    if html is None:
        html = _INLINER.inline(env.get_template(_HTML.template).render(context))
    return _ascii_html(html)


def text_part(env: Environment, context: Mapping[str, Any], *, prepared: bool = True) -> str:
    """The plain-text part for `context`: `email.txt.j2` rendered. With the shipped template
    (and `prepared`), assembled from a stencil made once per run and day heading, as
    `html_part` does; a value the template wraps is wrapped as its `wordwrap` would."""
    stencil = (_stencil(env, _TEXT, bool(context["unsubscribe_url"]), context["heading"])
               if prepared else None)
    text = stencil.assemble(context) if stencil is not None else None
    return text if text is not None else env.get_template(_TEXT.template).render(context)


# Fields of the context that a stencil leaves as holes (and each pick's PickView fields).
_EMAIL_FIELDS = ("subject", "heading", "lede", "preheader", "footer", "unsubscribe_url",
                 "profile_url")
# As the inliner writes text and attribute values (html5ever's serialiser's rules).
_TEXT_ESCAPES = (("&", "&amp;"), ("\xa0", "&nbsp;"), ("<", "&lt;"), (">", "&gt;"))
_ATTRIBUTE_ESCAPES = (("&", "&amp;"), ("\xa0", "&nbsp;"), ('"', "&quot;"))
_Write = Callable[[str], "str | None"]  # a value as it goes into its hole; None: cannot


def _escape(value: str, attribute: bool) -> str | None:
    """`value` as the inliner would write it in text or an attribute, in ASCII (as
    `html_part` writes the whole part); None where parsing would change it (NUL is dropped,
    CR becomes LF): such an email is rendered in full."""
    if "\x00" in value or "\r" in value:
        return None
    for char, reference in _ATTRIBUTE_ESCAPES if attribute else _TEXT_ESCAPES:
        if char in value:
            value = value.replace(char, reference)
    return _ascii_html(value)


def _ascii_html(text: str) -> str:
    """HTML with every character beyond ASCII written as a reference (&#233;)."""
    return text if text.isascii() else text.encode("ascii", "xmlcharrefreplace").decode("ascii")


def _html_text(value: str) -> str | None:
    return _escape(value, attribute=False)


def _html_attribute(value: str) -> str | None:
    return _escape(value, attribute=True)


class _Hole(str):
    """A placeholder value while a stencil is made: its text names the field, and the
    `wordwrap` filter, given one, says in the text how it would have wrapped it."""

    holes: _Holes
    number: int

    def wrapped(self, params: tuple[int, bool, str, bool]) -> str:
        kinds = self.holes.wraps
        if params not in kinds:
            kinds.append(params)
        return f"{self.holes.prefix}{self.number}w{kinds.index(params)}e"


class _Holes:
    """The placeholders of one stencil: the fields they stand for, and the ways the
    template wrapped them."""

    def __init__(self) -> None:
        self.prefix = f"digest{secrets.token_hex(8)}h"  # no template or value holds it
        self.names: list[str] = []
        self.wraps: list[tuple[int, bool, str, bool]] = []
        self.pattern = re.compile(f"{self.prefix}([0-9]+)(?:w([0-9]+))?e")

    def __call__(self, name: str) -> _Hole:
        hole = _Hole(f"{self.prefix}{len(self.names)}e")
        hole.holes, hole.number = self, len(self.names)
        self.names.append(name)
        return hole


@dataclass(frozen=True)
class _Pieces:
    """Part of a stencil: literal text with holes between, each a field and how its value
    is written there."""

    first: str  # the literal before the first hole
    # Per hole: its field, how its value is written (None: as it is), the literal after it.
    steps: tuple[tuple[str, _Write | None, str], ...]

    @classmethod
    def parse(cls, text: str, holes: _Holes, html: bool) -> _Pieces:
        split = holes.pattern.split(text)
        steps, before = [], split[0]
        for index, wrap, literal in zip(split[1::3], split[2::3], split[3::3], strict=True):
            write: _Write | None = None
            if html:
                if wrap is not None:
                    raise ValueError("the HTML templates wrap a value")
                # Inside a tag (an attribute value) when its last "<" is after its last
                # ">": the inliner writes text's "<" and ">" as references.
                inside = before.rfind("<") > before.rfind(">")
                write = _html_attribute if inside else _html_text
            elif wrap is not None:
                write = partial(_wrap_value, holes.wraps[int(wrap)])
            # HTML in ASCII, as `html_part` gives it (each value is, by its write).
            steps.append((holes.names[int(index)], write,
                          _ascii_html(literal) if html else literal))
            before += literal
        return cls(_ascii_html(split[0]) if html else split[0], tuple(steps))

    def fill(self, out: list[str], values: Mapping[str, Any]) -> bool:
        """Append the text with `values` in its holes; False if a value cannot be."""
        append = out.append
        append(self.first)
        for name, write, literal in self.steps:
            text = str(values[name])
            if write is not None:
                written = write(text)
                if written is None:
                    return False
                text = written
            append(text)
            append(literal)
        return True


def _wrap_value(params: tuple[int, bool, str, bool], value: str) -> str:
    return _wrap(value, *params)


Shape = tuple[bool, bool, bool, bool, bool, bool]


@dataclass(frozen=True)
class _Stencil:
    """A template rendered once with a hole in every value: the email before its rows,
    a row for each position and shape of pick, and the rest."""

    head: _Pieces
    rows: tuple[Mapping[Shape, _Pieces], ...]  # by position, up to MAX_PAPERS
    tail: _Pieces

    def assemble(self, context: Mapping[str, Any]) -> str | None:
        """The email's part; None if a value cannot go into its hole."""
        picks: Sequence[PickView] = context["picks"]
        if len(picks) > len(self.rows):
            return None
        out: list[str] = []
        if not self.head.fill(out, context):
            return None
        for rows, view in zip(self.rows, picks, strict=False):  # fewer picks than rows
            if not rows[_shape(view)].fill(out, view.__dict__):
                return None
        if not self.tail.fill(out, context):
            return None
        return "".join(out)


def _shape(view: PickView) -> Shape:
    """What a row's template branches on: which of its parts are there."""
    return (bool(view.authors), bool(view.abstract), view.cut, view.pdf_url is not None,
            view.more_url is not None, bool(view.section))


_SHAPES: list[Shape] = [(authors, abstract, cut, pdf, links, section)
                        for authors, abstract, cut, pdf, links, section
                        in itertools.product((True, False), repeat=6)
                        if abstract or not cut]  # only an abstract is cut


@dataclass(frozen=True)
class _Part:
    template: str
    shipped: tuple[str, ...]  # the templates it is made of, which must be digest's own
    html: bool


_HTML = _Part("email.html.j2", ("email.html.j2", "_base.html.j2", "_paper.html.j2"),
              html=True)
_TEXT = _Part("email.txt.j2", ("email.txt.j2",), html=False)
_MAX_ROWS = MAX_PAPERS  # rows a stencil holds (the text numbers them); more: in full
# Per environment (one per run): each part's stencils, or None where its templates are an
# operator's. Keyed by part, "has an unsubscribe link" and, for the text, the heading.
_STENCILS: WeakKeyDictionary[Environment, dict[tuple[_Part, bool, str | None],
                                               _Stencil | None]] = WeakKeyDictionary()


def _stencil(env: Environment, part: _Part, with_links: bool, heading: str | None = None
             ) -> _Stencil | None:
    made = _STENCILS.setdefault(env, {})
    key = (part, with_links, heading)
    if key not in made:
        shipped = default_templates_dir().resolve()
        made[key] = (_make_stencil(env, part, with_links, heading) if all(
            Path(env.get_template(name).filename or "").resolve().parent == shipped
            for name in part.shipped) else None)
    return made[key]


def _make_stencil(env: Environment, part: _Part, with_links: bool, heading: str | None
                  ) -> _Stencil:
    """Render `part` with holes: for the HTML once, a row of each shape, its CSS inlined
    (its rows are the same at any position); for the text once per shape, with as many
    rows as an email may have (they are numbered)."""
    holes = _Holes()
    context: dict[str, Any] = {name: holes(name) for name in _EMAIL_FIELDS}
    if heading is not None:  # the text underlines it: as it is, not a hole
        context["heading"] = heading
    if not with_links:
        context["unsubscribe_url"] = context["profile_url"] = None
    mark = Markup("<!--digest-row-->") if part.html else f"{holes.prefix}row"

    def pick(authors: bool, abstract: bool, cut: bool, pdf: bool, links: bool,
             section: bool) -> PickView:
        return PickView(title=holes("title"), url=holes("url"), link_label=holes("link_label"),
                        authors=holes("authors") if authors else "",
                        abstract=holes("abstract") if abstract else "", cut=cut,
                        reason=holes("reason"), score=0.0,
                        pdf_url=holes("pdf_url") if pdf else None,
                        more_url=holes("more_url") if links else None,
                        less_url=holes("less_url") if links else None,
                        section=holes("section") if section else "")

    def render(picks: list[PickView]) -> list[str]:
        out = env.get_template(part.template).render(
            {**context, "picks": picks, "row_mark": mark})
        parts = (_INLINER.inline(out) if part.html else out).split(mark)
        if len(parts) != len(picks) + 2:
            raise ValueError(f"the shipped {part.template} holds {len(parts) - 1} row "
                             f"marks, not {len(picks) + 1}")
        return parts

    if part.html:
        head, *rows, tail = render([pick(*shape) for shape in _SHAPES])
        by_position = [dict(zip(_SHAPES, rows, strict=True))] * _MAX_ROWS  # the same
    else:
        rendered = [render([pick(*shape)] * _MAX_ROWS) for shape in _SHAPES]
        head, tail = rendered[0][0], rendered[0][-1]
        if any(r[0] != head or r[-1] != tail for r in rendered):
            raise ValueError(f"the shipped {part.template}'s rows change the rest")
        by_position = [{shape: r[1 + position] for shape, r in zip(_SHAPES, rendered,
                                                                   strict=True)}
                       for position in range(_MAX_ROWS)]
    parsed: dict[str, _Pieces] = {}  # the HTML's rows: parsed once for every position

    def parse(text: str) -> _Pieces:
        if text not in parsed:
            parsed[text] = _Pieces.parse(text, holes, part.html)
        return parsed[text]

    return _Stencil(parse(head), tuple({shape: parse(row) for shape, row in rows.items()}
                                       for rows in by_position), parse(tail))


def _header(name: str, value: str) -> bytes:
    """One header line: RFC 2047-encoded (and folded) where it is not ASCII.

    Values are one line already (`one_line`); a line break here would be a bug. ASCII
    values are left unfolded up to the 998 characters RFC 5322 allows (ours stay far
    below), which is cheaper than folding them at 78.
    """
    if "\r" in value or "\n" in value:
        raise ValueError(f"line break in the {name} header")
    if not value.isascii():
        return f"{name}: {_encoded_words(name, value)}\r\n".encode("ascii")
    if len(name) + len(value) < 990:
        return f"{name}: {value}\r\n".encode("ascii")
    folded = Header(value, "us-ascii", header_name=name).encode(linesep="\r\n")
    return f"{name}: {folded}\r\n".encode("ascii")


def _encoded_words(name: str, value: str) -> str:
    """`value` as RFC 2047 encoded words (UTF-8, base64), one per line of at most 76
    characters, each ending on a whole character. What `email.header.Header` writes, at a
    fraction of its cost."""
    data = value.encode("utf-8")
    words = []
    start = 0
    room = 62 - len(name)  # base64 characters: "Name: =?utf-8?b?" ... "?=" in 76
    while start < len(data):
        end = min(start + max(room // 4, 1) * 3, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # not inside a character
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(data[start:end]).decode('ascii')}?=")
        start, room = end, 63  # " =?utf-8?b?" ... "?=" in 76
    return "\r\n ".join(words)


def _body(text: str, eight_bit: bool = False) -> tuple[str, bytes]:
    """A part's transfer encoding and its bytes with CRLF lines: as it is ("7bit") when it
    is ASCII with no line over 998 characters; with `eight_bit`, in UTF-8 as it is ("8bit",
    RFC 6152) when no line is over 998 bytes; otherwise quoted-printable. NUL goes in none
    but quoted-printable."""
    data = text.encode("utf-8")
    if b"\r" in data:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        data = text.encode("utf-8")
    if b"\0" not in data:
        ascii = data.isascii()
        if ascii or eight_bit:
            data = data.replace(b"\n", b"\r\n")
            if _lines_fit(data):
                return "7bit" if ascii else "8bit", data
    # Line by line, each line remembered: quoted-printable encodes every line on its own,
    # and most lines (a paper's title, authors, abstract) are in many emails of a run.
    return "quoted-printable", b"\r\n".join(map(_quoted_printable_line, text.split("\n")))


def _lines_fit(data: bytes, limit: int = 998) -> bool:
    """Whether no line of `data` (CRLF lines) is over `limit` bytes, its CRLF aside: each
    `limit` + 2 bytes from a line's start hold a line feed, found from the end of the span
    (so that a line-by-line walk is not needed)."""
    start = 0
    while len(data) - start > limit:
        end = data.rfind(b"\n", start, start + limit + 2)
        if end < 0:
            return False
        start = end + 1
    return True


def _quoted_printable_line(line: str) -> bytes:
    """A line in quoted-printable: as it is where that is what encoding would give (the
    links and other ASCII lines of each email), else encoded and remembered."""
    if (len(line) <= 76 and line.isascii() and line.isprintable() and "=" not in line
            and not line.endswith(" ") and not line.startswith(".")):
        return line.encode("ascii")
    return _quoted_printable(line)


@lru_cache(maxsize=65536)
def _quoted_printable(line: str) -> bytes:
    """One line (no line break) in quoted-printable, its soft line breaks CRLF."""
    return binascii.b2a_qp(line.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


def serialise(headers: Sequence[tuple[str, str]], text: str, html: str, *,
              eight_bit: bool = False) -> bytes:
    """A multipart/alternative message (plain text, then HTML), both parts UTF-8, as bytes
    with CRLF lines; with `eight_bit`, parts that are not ASCII go as 8bit where they can
    (see `_body`), for a server that takes 8BITMIME.

    Built directly rather than through `email.message.EmailMessage`, which re-parses and
    re-folds every header and costs more than the rest of rendering put together. The
    boundary is 96 random bits (no text can hold it by chance) after "=_", which
    quoted-printable text can never contain (it writes "=" as "=3D").
    """
    return _serialised(headers, text, html, eight_bit)[0]


def _serialised(headers: Sequence[tuple[str, str]], text: str, html: str, eight_bit: bool
                ) -> tuple[bytes, bool]:
    """`serialise`, and whether a part went as 8bit."""
    boundary = f"=_digest_{secrets.token_hex(12)}"
    parts = []
    used = False
    for kind, content in (("plain", text), ("html", html)):
        encoding, body = _body(content, eight_bit)
        used |= encoding == "8bit"
        parts += [f'--{boundary}\r\nContent-Type: text/{kind}; charset="utf-8"\r\n'
                  f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode(), body, b"\r\n"]
    return b"".join([
        *(_header(name, value) for name, value in headers),
        b"MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode(),
        *parts,
        f"--{boundary}--\r\n".encode(),
    ]), used


_EIGHT_BIT_PART = b"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"


def seven_bit(data: bytes) -> bytes:
    """A message `serialise` wrote with 8bit parts, those parts in quoted-printable
    instead: what goes to a server that does not take 8BITMIME."""
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb'boundary="([^"]+)"', head)
    if found is None:
        raise ValueError("not a message serialise wrote")
    delimiter = b"--" + found.group(1)
    pieces = body.split(delimiter)
    for i, piece in enumerate(pieces):
        part_head, marker, content = piece.partition(_EIGHT_BIT_PART)
        if marker:  # content: the part's lines, then the CRLF before the next delimiter
            lines = content[:-2].decode("utf-8").split("\r\n")
            pieces[i] = b"".join([
                part_head, b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
                b"\r\n".join(map(_quoted_printable_line, lines)), b"\r\n"])
    return head + b"\r\n\r\n" + delimiter.join(pieces)
