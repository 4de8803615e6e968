"""`digest serve`: the pages behind the links in each email.

Every page acts for the subscriber named in its signed token (digest.tokens), never for
one named elsewhere in the request. A GET only shows what would happen and a button; only
a POST changes anything, so the link scanners of mail systems, which follow links, change
nothing. Unsubscribing is also one POST with no page at all (RFC 8058 one-click, from the
`List-Unsubscribe-Post` header). Each change is an edit of the subscriber's YAML profile
that keeps their comments and formatting (digest.profiles.edit_profile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digest.config import Settings
from digest.errors import ConfigError, ProfileError
from digest.profiles import load_profile, set_feedback, set_field, set_interests
from digest.render import make_environment
from digest.running.liveness import utc_now
from digest.store import Store
from digest.tokens import Action, LinkToken, Signer, TokenError

log = logging.getLogger(__name__)

MAX_INTERESTS = 50
MAX_INTEREST_CHARS = 200
MAX_BODY_BYTES = 64 * 1024  # the largest form here (interests) is under 16 KiB
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

    return Starlette(routes=[
        Route("/u/{token}", pages.unsubscribe, methods=["GET", "POST"]),
        Route("/f/{token}", pages.feedback, methods=["GET", "POST"]),
        Route("/p/{token}", pages.profile, methods=["GET", "POST"]),
        Route("/", pages.home, methods=["GET"]),
    ], lifespan=lifespan, middleware=[
        Middleware(BoundedBody, timeout_s=settings.web.body_timeout_s),
    ], exception_handlers={
        ClientDisconnect: pages.client_gone,
        BodyRefused: pages.body_refused,
    })


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
        html = self.templates.get_template(f"web/{template}.html.j2").render(
            list_id=self.settings.mail.list_id, **context)
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
        return self.page("message", title=self.settings.mail.list_id,
                         message="This server answers the links in the list's emails.")

    # Plain functions run in Starlette's thread pool: file locks and fsync do not stall
    # the event loop.
    def unsubscribe(self, request: Request) -> Response:
        opened = self._open(request, "unsubscribe")
        if isinstance(opened, Response):
            return opened
        token, path = opened
        if request.method != "POST":  # GET or HEAD: never act
            return self.page("confirm", title="Unsubscribe?",
                             message=f"Stop sending {self.settings.mail.list_id} emails to "
                                     "this subscription?", button="Unsubscribe")
        try:
            set_field(path, "active", False)
        except ProfileError as exc:
            return self._not_changed(exc)
        log.info("web.unsubscribed subscriber=%s", token.subscriber_id)
        return self.page("message", title="You are unsubscribed",
                         message="No more emails will be sent to you. To come back, ask the "
                                 "list's operator, or reply to one of the emails.")

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
        if request.method == "POST":
            form = await request.form()
            field = form.get("interests", "")
            if not isinstance(field, str):  # a file upload, not text
                return self.page("message", 400, title="Not text",
                                 message="Interests are sent as text.")
            lines = [" ".join(line.split()) for line in field.splitlines()]
            interests = [line for line in lines if line]
            if len(interests) > MAX_INTERESTS or any(len(i) > MAX_INTEREST_CHARS
                                                      for i in interests):
                return self.page("message", 400, title="Too long",
                                 message=f"At most {MAX_INTERESTS} interests of "
                                         f"{MAX_INTEREST_CHARS} characters each.")
            try:
                await run_in_threadpool(set_interests, path, interests)
            except ProfileError as exc:
                return self._not_changed(exc)
            log.info("web.interests subscriber=%s count=%d", token.subscriber_id,
                     len(interests))
        try:
            current = await run_in_threadpool(load_profile, path)
        except ProfileError as exc:
            return self._not_changed(exc)
        return self.page("profile", title="Your interests", name=current.name,
                         interests="\n".join(i.text for i in current.interests),
                         saved=request.method == "POST")


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"
