"""`digest serve`: the pages behind the links in each email.

Every page acts for the subscriber named in its signed token (digest.tokens), never for
one named elsewhere in the request. A GET only shows what would happen and a button; only
a POST changes anything, so the link scanners of mail systems, which follow links, change
nothing. Unsubscribing is also one POST with no page at all (RFC 8058 one-click, from the
`List-Unsubscribe-Post` header). Each change is an edit of the subscriber's YAML profile
that keeps their comments and formatting (digest.profiles.edit_profile).

No page sets a cookie or keeps a session: the token in the URL is the only authority, so a
form posted from another site can do nothing its author could not do with the token
alone (no CSRF), and no page redirects anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digest.config import Settings
from digest.errors import ConfigError, ProfileError
from digest.profiles import (
    FieldProblem,
    ProfileFile,
    load_profile,
    load_profile_file,
    read_value,
    remove_feedback,
    set_feedback,
    set_field,
    set_fields,
)
from digest.render import make_environment
from digest.running.liveness import utc_now
from digest.store import Store
from digest.tokens import Action, LinkToken, Signer, TokenError

log = logging.getLogger(__name__)

# The largest form here, the interests page, is a few KiB for a profile people write; what
# its values may hold is the profile's rules alone (digest.profiles), not the web's.
MAX_BODY_BYTES = 64 * 1024
RECENT_FEEDBACK = 10  # of each of liked and disliked, listed with an Undo button
BLANK_INTEREST_ROWS = 3  # empty rows under the interests, to add new ones
SECURITY_HEADERS = {
    # Pages of our own markup and inline CSS only: no script runs, no form posts elsewhere.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token is in the URL: never pass it on
    "Cache-Control": "no-store",
}


def make_app(settings: Settings, *, clock: Callable[[], datetime] = utc_now) -> Starlette:
    """The web app. Raises ConfigError if DIGEST_SECRET is not set."""
    signer = Signer.for_web(settings.web)
    if signer is None:
        raise ConfigError("`digest serve` needs DIGEST_SECRET (the secret the links in "
                          "emails were signed with) in the environment")
    pages = Pages(settings, signer, clock)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        pages.close()

    app = Starlette(routes=[
        Route("/u/{token}", pages.unsubscribe, methods=["GET", "POST"]),
        Route("/r/{token}", pages.resubscribe, methods=["GET", "POST"]),
        Route("/f/{token}", pages.feedback, methods=["GET", "POST"]),
        Route("/p/{token}", pages.profile, methods=["GET", "POST"]),
        Route("/", pages.home, methods=["GET"]),
    ], lifespan=lifespan, middleware=[
        Middleware(BoundedBody, timeout_s=settings.web.body_timeout_s),
    ], exception_handlers={
        ClientDisconnect: pages.client_gone,
        BodyRefused: pages.body_refused,
    })
    # Starlette would answer `/u/<token>/` with a redirect built from the Host header; no
    # page here redirects anywhere.
    app.router.redirect_slashes = False
    return app


class BodyRefused(Exception):
    """A request body that took too long to arrive, or is too large for any page here."""

    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason
        super().__init__(reason)


class BoundedBody:
    """ASGI middleware: a request's body must arrive whole within `timeout_s` and hold at
    most MAX_BODY_BYTES (the pages take a short form), so a client that sends slowly, or
    sends too much, cannot hold a connection or memory (BodyRefused: 408 or 413)."""

    def __init__(self, app: ASGIApp, *, timeout_s: float):
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        received = 0
        whole = False

        async def bounded() -> Message:
            nonlocal received, whole
            if whole:  # after the body, the app only listens for the client leaving
                return await receive()
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0))
            except TimeoutError:
                raise BodyRefused(408, f"no whole request within {self.timeout_s:g} s") \
                    from None
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise BodyRefused(413, f"request body over {MAX_BODY_BYTES} bytes")
            whole = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, bounded, send)


class Pages:
    """The handlers, sharing the store, the signer and the page templates."""

    def __init__(self, settings: Settings, signer: Signer, clock: Callable[[], datetime]):
        self.settings = settings
        self.signer = signer
        self.clock = clock
        self.store = Store.open(settings.db_url)
        self.templates = make_environment(settings.templates_dir)

    def close(self) -> None:
        self.store.close()

    def page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        """A page headed by `title`; its <title> adds the list's name (`mail.from_name`),
        and starts "Error:" when the page shows `errors` (the first words a screen reader
        says)."""
        head = ("Error: " if context.get("errors") else "") + context["title"]
        html = self.templates.get_template(f"web/{template}.html.j2").render(
            list_name=self.settings.mail.from_name, list_id=self.settings.mail.list_id,
            head_title=head, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def _token(self, request: Request, *actions: Action) -> LinkToken:
        token = self.signer.verify(request.path_params["token"], now=self.clock())
        if token.action not in actions:
            raise TokenError("this link is not for this page")
        return token

    def _refused(self, request: Request, exc: TokenError) -> Response:
        log.warning("web.refused path=/%s client=%s reason=%r",
                    request.url.path.split("/")[1], _client(request), str(exc))
        return self.page("message", 403, title="This link does not work",
                         message=str(exc))

    def _open(self, request: Request, *actions: Action) -> tuple[LinkToken, Path] | Response:
        """The link's token and its subscriber's profile file, or the page saying why not."""
        try:
            token = self._token(request, *actions)
        except TokenError as exc:
            return self._refused(request, exc)
        path = self.store.profile_path(token.subscriber_id)
        if path is None or not path.is_file():
            return self._gone()
        try:  # the file may since have been given to someone else (another `id:`)
            owner = load_profile(path, strict_id=False).subscriber_id
        except ProfileError as exc:
            return self._not_changed(exc)
        if owner != token.subscriber_id:
            return self._gone()
        return token, path

    def _gone(self) -> Response:
        return self.page("message", 410, title="No such subscription",
                         message="There is no profile for this link any more.")

    def _not_changed(self, exc: ProfileError) -> Response:
        # The person's file is broken (perhaps mid-edit): say so, never overwrite it.
        log.warning("web.profile-invalid %s", exc)
        where = f" (line {exc.line})" if exc.line else ""
        return self.page("message", 409, title="Your profile was not changed",
                         message=f"Your profile file has a problem{where}: {exc.reason}. "
                                 "Nothing was changed; fix the file or ask the list's "
                                 "operator.")

    async def client_gone(self, request: Request, _exc: Exception) -> Response:
        """A client that left before sending its whole request: one line, no traceback."""
        log.info("web.client-gone method=%s path=/%s client=%s", request.method,
                 request.url.path.split("/")[1], _client(request))
        return Response(status_code=400)  # nobody is there to read it

    async def body_refused(self, request: Request, exc: Exception) -> Response:
        if not isinstance(exc, BodyRefused):  # the only kind it is registered for
            raise exc
        log.warning("web.request-refused method=%s path=/%s client=%s reason=%r",
                    request.method, request.url.path.split("/")[1], _client(request),
                    exc.reason)
        return self.page("message", exc.status, title="Request not read",
                         message=f"The request was not read: {exc.reason}.")

    async def home(self, request: Request) -> Response:
        return self.page("message", title=self.settings.mail.from_name,
                         message="This server answers the links in the list's emails.")

    # Plain functions run in Starlette's thread pool: file locks and fsync do not stall
    # the event loop.
    def _set_active(self, request: Request, action: Action, active: bool, *, question: str,
                    button: str) -> tuple[LinkToken, str] | Response:
        """Unsubscribe or resubscribe: a confirm page for GET and HEAD (never act); on
        POST, `active` set in the profile and logged. The token and what the edit did, or
        the page to answer with."""
        opened = self._open(request, action)
        if isinstance(opened, Response):
            return opened
        token, path = opened
        if request.method != "POST":  # GET or HEAD: never act
            return self.page("confirm", title=f"{button}?", message=question, button=button)
        try:
            done = set_field(path, "active", active)
        except ProfileError as exc:
            return self._not_changed(exc)
        log.info("web.%s subscriber=%s", "resubscribed" if active else "unsubscribed",
                 token.subscriber_id)
        return token, done

    def unsubscribe(self, request: Request) -> Response:
        name = self.settings.mail.from_name
        changed = self._set_active(request, "unsubscribe", False, button="Unsubscribe",
                                   question=f"Stop sending {name} emails to this "
                                            "subscription?")
        if isinstance(changed, Response):
            return changed
        token, _done = changed
        # A new token, not the unsubscribe link's: it works for link_days from now, however
        # old the email was, and no link in an email (nor a List-Unsubscribe POST) can
        # ever resubscribe anyone.
        expires = self.clock() + timedelta(days=self.settings.web.link_days)
        again = self.signer.sign(LinkToken(token.subscriber_id, "resubscribe", expires))
        return self.page("unsubscribed", title="You are unsubscribed",
                         message="No more emails will be sent to you.",
                         resubscribe_url=f"../r/{again}",  # beside /u/, under any prefix
                         until=f"{expires.day} {expires:%B %Y}")

    def resubscribe(self, request: Request) -> Response:
        name = self.settings.mail.from_name
        changed = self._set_active(request, "resubscribe", True, button="Resubscribe",
                                   question=f"Send {name} emails to this subscription again?")
        if isinstance(changed, Response):
            return changed
        _token, done = changed
        return self.page("message", title="You are subscribed again",
                         message="Your emails start again with the next one your schedule "
                                 "brings." if done != "unchanged" else
                                 "You were subscribed already; nothing was changed.")

    def feedback(self, request: Request) -> Response:
        opened = self._open(request, "more", "less")
        if isinstance(opened, Response):
            return opened
        token, path = opened
        paper = self.store.paper(token.paper_id) if token.paper_id is not None else None
        if paper is None:
            return self._gone()
        more = token.action == "more"
        if request.method != "POST":  # GET or HEAD: never act
            return self.page("confirm", title="More like this?" if more else "Less like this?",
                             message=f"{'More' if more else 'Fewer'} papers like "
                                     f"“{paper.title}” in your next emails?",
                             button="Yes, more like this" if more else "Yes, fewer like this")
        reference = paper.arxiv_id or paper.title
        try:
            done = set_feedback(path, reference, liked=more)
        except ProfileError as exc:
            return self._not_changed(exc)
        log.info("web.feedback subscriber=%s action=%s paper=%s", token.subscriber_id,
                 token.action, token.paper_id)
        return self.page("message", title="Thank you",
                         message=f"“{paper.title}” was {done}. Your next email takes it "
                                 "into account.")

    async def profile(self, request: Request) -> Response:
        opened = await run_in_threadpool(self._open, request, "profile")
        if isinstance(opened, Response):
            return opened
        token, path = opened
        if request.method != "POST":  # GET or HEAD: never act
            return await run_in_threadpool(self._profile_page, path)
        form = await request.form()
        if form.get("do") == "undo":
            return await run_in_threadpool(self._undo, token, path, form)
        return await run_in_threadpool(self._save, token, path, form)

    def _save(self, token: LinkToken, path: Path, form: FormData) -> Response:
        try:
            current = load_profile_file(path)
        except ProfileError as exc:
            return self._not_changed(exc)
        sent = ProfileForm.read(form, ProfileForm.of(current))
        if sent is None:
            return self.page("message", 400, title="Not text",
                             message="The form's fields are sent as text.")
        values, positions = sent.values()
        try:
            edit = set_fields(path, values)
        except ProfileError as exc:
            return self._not_changed(exc)
        if edit.problems:  # the reader's input is shown again, each problem beside its box
            return self._profile_page(path, sent, _form_errors(edit.problems, positions),
                                      status=422)
        log.info("web.profile-saved subscriber=%s fields=%s", token.subscriber_id,
                 ",".join(edit.changed) or "-")
        return self._profile_page(path, notice="Saved. Your next email follows these "
                                               "settings.", saved=True)

    def _undo(self, token: LinkToken, path: Path, form: FormData) -> Response:
        which, entry = form.get("list"), form.get("entry")
        if which not in ("liked", "disliked") or not isinstance(entry, str):
            return self.page("message", 400, title="Nothing to undo",
                             message="This request does not name a paper of your feedback.")
        try:
            removed = remove_feedback(path, entry, liked=which == "liked")
        except ProfileError as exc:
            return self._not_changed(exc)
        paper = self.store.find_papers([entry]).get(entry)
        title = paper.title if paper is not None else entry
        if not removed:
            return self._profile_page(path, notice=f"“{title}” was not in your feedback any "
                                                   "more; nothing was changed.")
        log.info("web.feedback-undone subscriber=%s list=%s paper=%s", token.subscriber_id,
                 which, paper.row_id if paper is not None else "-")
        return self._profile_page(path, notice=f"Undone: “{title}” no longer asks for "
                                               f"{'more' if which == 'liked' else 'fewer'} "
                                               "papers like it.")

    def _profile_page(self, path: Path, form: ProfileForm | None = None,
                      errors: dict[str, list[str]] | None = None, *, status: int = 200,
                      notice: str | None = None, saved: bool = False) -> Response:
        try:
            current = load_profile_file(path)
        except ProfileError as exc:
            return self._not_changed(exc)
        errors = errors or {}
        shown = form or ProfileForm.of(current)
        # Sent back, the rows are as sent (with the empty ones the page had); else a few
        # empty rows to add interests in.
        blank = [] if form is not None else [("", "")] * BLANK_INTEREST_ROWS
        return self.page(
            "profile", status, title="Your interests", name=current.name, form=shown,
            rows=[*shown.interests, *blank], errors=errors,
            summary=[(anchor, _label(anchor), message)
                     for anchor, messages in errors.items() for message in messages],
            feedback=self._recent_feedback(current), notice=notice, saved=saved,
            default_max_papers=self.settings.default_max_papers)

    def _recent_feedback(self, current: ProfileFile) -> list[FeedbackEntry]:
        """The newest entries of liked and disliked (each list is in the order they were
        added: newest last), with the titles of the papers the store knows."""
        entries: list[tuple[str, str]] = []
        for which, listed in (("liked", current.liked), ("disliked", current.disliked)):
            newest = list(dict.fromkeys(reversed(listed)))[:RECENT_FEEDBACK]
            entries += [(which, entry) for entry in newest]
        papers = self.store.find_papers([entry for _, entry in entries])
        return [FeedbackEntry(which, entry, papers[entry].title if entry in papers else entry)
                for which, entry in entries]


@dataclass(frozen=True)
class FeedbackEntry:
    """One paper of liked or disliked, as the interests page lists it."""

    which: str  # "liked" or "disliked"
    entry: str  # as the profile holds it: what Undo takes out
    title: str


# The interests page's boxes: the profile field each list box edits, by form name.
_TERM_FIELDS = {"mute": "keywords.mute", "avoid": "avoid", "require": "keywords.require",
                "authors": "authors"}
_LABELS = {"interests": "Interests", "mute": "Never show papers that mention",
           "avoid": "Fewer papers about", "require": "Only papers that mention",
           "authors": "Authors you follow", "schedule": "When", "timezone": "Time zone",
           "max_papers": "Papers per email", "form": "Your profile"}
_PROBLEM_FIELD = re.compile(r"(?P<field>[a-z_]+(?:\.[a-z_]+)?)(?:\[(?P<index>\d+)\])?"
                            r"(?:\.(?P<part>[a-z_]+))?")


def _label(anchor: str) -> str:
    """What the error summary calls a box."""
    kind, _, row = anchor.partition("-")
    if row.isdigit():
        return f"Interest {int(row) + 1}" if kind == "interest" else \
            f"Weight of interest {int(row) + 1}"
    return _LABELS.get(anchor, anchor)


def _weight_text(weight: float) -> str:
    """A weight as its box shows it: `2`, not `2.0`; read back, it is the same number."""
    return str(int(weight)) if weight.is_integer() else repr(weight)


@dataclass
class ProfileForm:
    """The interests page's form as text: what the profile holds, or what the reader sent
    (shown again as sent when it is refused)."""

    interests: list[tuple[str, str]]  # text and weight, a row each
    terms: dict[str, str] = field(default_factory=dict)  # form name: one entry per line
    schedule: str = ""
    timezone: str = ""
    max_papers: str = ""

    @classmethod
    def of(cls, current: ProfileFile) -> ProfileForm:
        rows = [(i, "1") if isinstance(i, str) else (i.text, _weight_text(i.weight))
                for i in current.interests]
        lists = {"mute": current.keywords.mute, "avoid": current.avoid,
                 "require": current.keywords.require, "authors": current.authors}
        return cls(rows, {name: "\n".join(listed) for name, listed in lists.items()},
                   current.schedule, current.timezone,
                   "" if current.max_papers is None else str(current.max_papers))

    @classmethod
    def read(cls, form: FormData, current: ProfileForm) -> ProfileForm | None:
        """The form as sent; a box it lacks keeps its `current` value (so a form from an
        older page never empties what it does not show). None if a field is not text (a
        file upload)."""
        sent = [value for name in ("interest", "weight", *_TERM_FIELDS, "schedule",
                                   "timezone", "max_papers") for value in form.getlist(name)]
        if not all(isinstance(value, str) for value in sent):
            return None

        def text(name: str, default: str) -> str:
            return str(form[name]) if name in form else default

        texts = [str(t) for t in form.getlist("interest")]
        weights = [str(w) for w in form.getlist("weight")]
        rows = current.interests
        if texts or weights:
            pad = max(len(texts), len(weights))
            rows = list(zip([*texts, *[""] * (pad - len(texts))],
                            [*weights, *[""] * (pad - len(weights))], strict=True))
        return cls(rows, {name: text(name, current.terms.get(name, ""))
                          for name in _TERM_FIELDS},
                   text("schedule", current.schedule), text("timezone", current.timezone),
                   text("max_papers", current.max_papers))

    def values(self) -> tuple[dict[str, Any], dict[str, list[int]]]:
        """The profile's new values (what `set_fields` takes), and for each list the form
        position of every entry (interests: its row; the others: their line, from 1)."""
        interests: list[Any] = []
        positions: dict[str, list[int]] = {"interests": []}
        for row, (text, weight) in enumerate(self.interests):
            text = " ".join(text.split())
            if not text:  # an emptied row: the interest is removed
                continue
            weight = weight.strip()
            interests.append({"text": text, "weight": read_value(weight)} if weight else text)
            positions["interests"].append(row)
        values: dict[str, Any] = {"interests": interests}
        for name, key in _TERM_FIELDS.items():
            lines = [(number, " ".join(line.split())) for number, line
                     in enumerate(self.terms.get(name, "").splitlines(), start=1)]
            values[key] = [line for _, line in lines if line]
            positions[key] = [number for number, line in lines if line]
        values["schedule"] = self.schedule.strip()
        values["timezone"] = self.timezone.strip()
        number = self.max_papers.strip()
        values["max_papers"] = read_value(number) if number else None  # empty: the default
        return values, positions


def _form_errors(problems: Sequence[FieldProblem], positions: dict[str, list[int]]
                 ) -> dict[str, list[str]]:
    """Each problem under the id of the box it concerns (`weight-3`, `authors`), in the
    order of the page."""
    found: dict[str, list[str]] = {}
    for problem in problems:
        match = _PROBLEM_FIELD.fullmatch(problem.field)
        name, index, part = (match["field"], match["index"], match["part"]) if match else (
            "", None, None)
        message = problem.message
        at = positions.get(name, [])
        if name == "interests" and index is not None and int(index) < len(at):
            anchor = f"{'weight' if part == 'weight' else 'interest'}-{at[int(index)]}"
        elif name == "interests":
            anchor = "interests"
        elif name in _TERM_FIELDS.values():
            anchor = next(form for form, key in _TERM_FIELDS.items() if key == name)
            if index is not None and int(index) < len(at):
                message = f"line {at[int(index)]}: {message}"
        elif name in ("schedule", "timezone", "max_papers"):
            anchor = name
        else:  # a field the page does not show: cannot come from its form, but say it
            anchor, message = "form", f"{problem.field}: {message}"
        found.setdefault(anchor, []).append(message)
    rows = sorted((a for a in found if a.startswith(("interest-", "weight-"))),
                  key=lambda a: (int(a.split("-")[1]), a))
    order = ["form", "interests", *rows, *_TERM_FIELDS, "schedule", "timezone", "max_papers"]
    return {anchor: found[anchor] for anchor in order if anchor in found}


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"
