"""A real SMTP server on 127.0.0.1 that keeps what it receives: for `digest demo` and tests.

aiosmtpd runs in a background thread with its own event loop, on a free port.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from types import TracebackType

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class Received:
    """One message as the server got it."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    peer: str = ""  # the client's "host:port": one per connection
    mail_options: tuple[str, ...] = ()  # MAIL FROM's parameters, e.g. "BODY=8BITMIME"

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed


ACCEPT = "250 OK message accepted"
DROP = "DROP"  # a `respond` answer: close the connection instead of replying


@dataclass
class _Handler:
    respond: Callable[[Received], str]
    pipelining: bool = True
    recipient: Callable[[str], str] | None = None
    eight_bit: bool = True
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:  # aiosmtpd reads pipelined commands in turn, as RFC 2920 asks
            responses.insert(-1, "250-PIPELINING")
        if not self.eight_bit:
            responses = [r for r in responses if r[4:].upper() != "8BITMIME"]
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        reply = self.recipient(address) if self.recipient else "250 OK"
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        peer = ":".join(map(str, session.peer)) if isinstance(session.peer, tuple) else ""
        item = Received(str(envelope.mail_from), tuple(envelope.rcpt_tos), bytes(content),
                        peer, tuple(envelope.mail_options))
        reply = self.respond(item)
        if reply == DROP:  # hang up without a reply, as a crashing relay would
            if server.transport is not None:
                server.transport.close()
            return "421 4.4.2 connection dropped"
        if reply.startswith("2"):  # only what the server accepted counts as received
            with self.lock:
                self.received.append(item)
        return reply


class SmtpSink:
    """`with SmtpSink() as sink:` a server at sink.host:sink.port; `sink.received` lists mail."""

    def __init__(self, host: str = "127.0.0.1",
                 respond: Callable[[Received], str] = lambda _message: ACCEPT,
                 tls_context: ssl.SSLContext | None = None, pipelining: bool = True,
                 recipient: Callable[[str], str] | None = None,
                 implicit_tls: ssl.SSLContext | None = None, eight_bit: bool = True):
        """`respond` gives the reply to each message, e.g. "451 try later" to refuse it;
        `recipient` the reply to each RCPT TO address ("250 OK" if not given); with
        `tls_context` the server offers STARTTLS; with `implicit_tls` it speaks TLS from
        the first byte (port 465 style); `pipelining` offers PIPELINING, `eight_bit`
        8BITMIME."""
        self.host = host
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.port = 0
        self._handler = _Handler(respond, pipelining, recipient, eight_bit)
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def received(self) -> list[Received]:
        with self._handler.lock:
            return list(self._handler.received)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        def factory() -> SMTP:
            return SMTP(self._handler, hostname="digest-sink", loop=self._loop,
                        tls_context=self.tls_context)

        try:
            self._server = self._loop.run_until_complete(
                self._loop.create_server(factory, host=self.host, port=0,
                                         ssl=self.implicit_tls))
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        self._loop.run_until_complete(self._server.wait_closed())
        self._loop.close()

    def start(self) -> SmtpSink:
        self._thread = threading.Thread(target=self._run, name="smtp-sink", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SmtpSink({self.host}:{self.port}, received={len(self.received)})"
