"""Deliver: hand rendered messages to the SMTP server (or, for a dry run, to an outbox).

This module owns SMTP. Server replies become `TransientDeliveryError` (retry later) or
`PermanentDeliveryError` (do not retry), carrying the reply code and text; a connection
that cannot be made fit to send (refused, DNS, TLS, login, no answer) is a
`ConnectionFailure`, the run's and no message's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import ssl
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol, cast

import aiosmtplib

from digest.config import SmtpSettings
from digest.errors import (
    ConfigError,
    ConnectionFailure,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from digest.identity import ascii_address
from digest.models import OutgoingEmail
from digest.ratelimit import smtp_limiter
from digest.render import seven_bit

log = logging.getLogger(__name__)
_CONNECT_PREFIX = re.compile(r"^Error connecting to \S+ on port \d+: ")


class Mailer(Protocol):
    """Anything that can take a message and say what the receiving side replied."""

    async def send(self, email: OutgoingEmail) -> str: ...


def _reply_error(code: int, text: str) -> DeliveryError:
    reply = f"{code} {' '.join(text.split())}"
    if 400 <= code < 500:
        return TransientDeliveryError(reply, smtp_code=code)
    return PermanentDeliveryError(reply, smtp_code=code)


def classify_smtp_error(exc: Exception, where: str) -> DeliveryError:
    """Turn an aiosmtplib or socket error met while sending a message, on a connection that
    was open, into a DeliveryError saying whether to retry."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        return _reply_error(first.code, f"recipient {first.recipient} refused: {first.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 400:
        return _reply_error(exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return TransientDeliveryError(f"timed out talking to {where}")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):  # also a ConnectionError
        return TransientDeliveryError(f"{where} closed the connection: {exc}")
    if isinstance(exc, OSError):
        reason = _CONNECT_PREFIX.sub("", str(exc)) or type(exc).__name__
        return TransientDeliveryError(f"the connection to {where} failed: {reason}")
    return TransientDeliveryError(f"{where}: {exc}")


_SECURITY_HINT = '[smtp] security: "tls" is for port 465, "starttls" for 587'


def connection_failure(exc: BaseException, settings: SmtpSettings) -> DeliveryError:
    """What went wrong opening a connection (reaching the server, TLS, its greeting, EHLO,
    login), in one line that says what to check. A `ConnectionFailure`: no message was
    handed over, and none can be until the settings are fixed or the server is back;
    unless the server replied 4xx (busy, too many connections from this host): it is there
    and says "later", a `TransientDeliveryError` as any 4xx is."""
    where = f"{settings.host}:{settings.port}"
    server = f"the SMTP server {where}"

    def failure(message: str, code: int | None = None) -> ConnectionFailure:
        return ConnectionFailure(message, where=where, smtp_code=code)

    if isinstance(exc, aiosmtplib.SMTPResponseException) and 400 <= exc.code < 500:
        return _reply_error(exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return failure(f"cannot log in to {server} as {settings.username!r}: {exc.code} "
                       f"{' '.join(exc.message.split())} (check [smtp] username and "
                       "DIGEST_SMTP_PASSWORD)", exc.code)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 500:
        return failure(f"{server} refused the session: {exc.code} "
                       f"{' '.join(exc.message.split())} (check [smtp] host and port)",
                       exc.code)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return failure(f"cannot connect to {server}: no answer within "
                       f"{settings.timeout_s:g} s (check [smtp] host and port, and "
                       f"{_SECURITY_HINT})")
    cause = exc.__cause__ if isinstance(exc, aiosmtplib.SMTPConnectError) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return failure(f"cannot connect to {server}: its certificate is not trusted: "
                       f"{cause.verify_message or cause.reason} (check [smtp] host; "
                       "ca_file for a private CA; validate_certs = false only for a local "
                       "relay)")
    if isinstance(cause, ssl.SSLError):
        reason = re.sub(r"^\[SSL: \w+\] | \(_ssl\.c:\d+\)$", "", str(cause))
        return failure(f"cannot connect to {server}: the TLS handshake failed: {reason} "
                       f"(check {_SECURITY_HINT})")
    if isinstance(cause, socket.gaierror):
        return failure(f"cannot connect to {server}: {cause.strerror or cause} "
                       "(check [smtp] host)")
    if isinstance(cause, OSError) and cause.errno:
        return failure(f"cannot connect to {server}: {os.strerror(cause.errno)} "
                       "(check [smtp] host and port)")
    message = str(exc)
    if isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in message:
        return failure(f"{server} does not offer STARTTLS; digest will not send in clear "
                       'text unless [smtp] security is "none" (check [smtp] port and '
                       "security)")
    if isinstance(exc, aiosmtplib.SMTPException) and "AUTH" in message:
        return failure(f"{server} does not offer AUTH, so [smtp] username cannot log in "
                       f"(check {_SECURITY_HINT}; most servers offer AUTH only over TLS)")
    reason = _CONNECT_PREFIX.sub("", message) or type(exc).__name__
    return failure(f"cannot connect to {server}: {reason}")


class SmtpMailer:
    """Sends over a pool of up to `smtp.connections` reused SMTP connections, so that one
    message's round trips overlap another's; a connection that fails is dropped and a new
    one opened for the next message.

    aiosmtplib opens each connection (greeting, EHLO, STARTTLS or TLS with the certificate
    checked, AUTH); the mail transactions then go through `_Wire`, which pipelines them
    where the server offers it (RFC 2920).

    A connection that cannot be opened raises `ConnectionFailure` at the first try, with
    no retry: what makes one fail (a wrong host or port, an untrusted certificate, a
    refused login, the server down) does not change within seconds, and retrying a
    refused login can lock the account. Nothing is lost by stopping: the run's editions
    stay pending, no attempt charged, and are sent by the next run (the daemon's retry
    job asks again). So a refused connection is known in milliseconds; only a server that
    never answers costs `timeout_s`.

    Use as `async with SmtpMailer(settings, sender=...) as mailer: await mailer.send(email)`;
    `send` may be awaited by many tasks at once.
    """

    def __init__(self, settings: SmtpSettings, *, sender: str):
        self.settings = settings
        self.sender = sender
        self.where = f"{settings.host}:{settings.port}"
        self.limiter = smtp_limiter(settings.max_per_second, settings.max_per_hour)
        self._slots = asyncio.Semaphore(settings.connections)
        self._idle: list[_Wire] = []

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.settings.security == "none":
            return None
        context = ssl.create_default_context()
        if self.settings.ca_file is not None:
            try:
                context.load_verify_locations(cafile=str(self.settings.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"smtp.ca_file {self.settings.ca_file}: cannot be loaded "
                                  f"({exc})") from exc
        if not self.settings.validate_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _connect(self) -> _Wire:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout_s,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            validate_certs=s.validate_certs,
            tls_context=self._tls_context(),
        )
        try:
            await client.connect()
            if client.last_ehlo_response is None and client.last_helo_response is None:
                try:  # connect() greets only when it needs to, for STARTTLS
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
            if s.username:
                password = s.password.get_secret_value() if s.password else ""
                await client.login(s.username, password)
            if client.transport is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost after login")
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            raise connection_failure(exc, s) from exc
        except BaseException:
            client.close()
            raise
        pipelining = client.supports_extension("pipelining")
        log.debug("smtp.connected server=%s security=%s pipelining=%s", self.where,
                  s.security, pipelining)
        return _Wire(client.transport, pipelining=pipelining,
                     sizes=client.supports_extension("size"),
                     eight_bit=client.supports_extension("8bitmime"), timeout=s.timeout_s)

    async def send(self, email: OutgoingEmail) -> str:
        """Send one message; returns the server's reply. Raises DeliveryError."""
        try:
            sender = _envelope_address(ascii_address(self.sender))
            recipients = [_envelope_address(r) for r in email.recipients]
        except ValueError as exc:
            raise PermanentDeliveryError(f"cannot send: {exc}") from exc
        if not recipients:
            raise PermanentDeliveryError("cannot send: the message has no recipient")
        if self.limiter is not None:
            await self.limiter.acquire()
        async with self._slots:
            wire = self._idle.pop() if self._idle else None
            if wire is None or not wire.usable:
                if wire is not None:
                    wire.abort()
                wire = await self._connect()  # ConnectionFailure, or a 4xx: transient
            try:
                reply = await wire.transaction(sender, recipients, email.data,
                                               eight_bit=email.eight_bit, crlf=email.crlf)
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                if await wire.reset():  # a refusal: the connection serves the next one
                    self._idle.append(wire)
                else:
                    await wire.close()
                raise classify_smtp_error(exc, self.where) from exc
            except BaseException:  # cancelled mid-transaction: its state is unknown
                wire.abort()
                raise
            self._idle.append(wire)
        return f"250 {' '.join(reply.message.split())}"

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(wire.close() for wire in idle))

    async def __aenter__(self) -> SmtpMailer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


_UNSAFE_IN_ADDRESS = re.compile(rb"[\x00-\x20<>\x7f]")
_LINE_ENDING = re.compile(rb"\r\n|\r|\n")
_DOT_LINE = re.compile(rb"\n\.")  # in CRLF lines, a line that begins with "."
MAX_REPLY_BYTES = 64 * 1024  # a reply longer than this is not an SMTP server talking


def _envelope_address(address: str) -> bytes:
    """An address for MAIL FROM / RCPT TO. Profiles are checked when loaded; this refuses
    anything that would change the command (a line break, a space, angle brackets)."""
    raw = address.encode("ascii")  # UnicodeEncodeError is a ValueError
    if not raw or _UNSAFE_IN_ADDRESS.search(raw):
        raise ValueError(f"address {address!r} cannot go in an SMTP command")
    return raw


def wire_data(data: bytes, *, crlf: bool = False) -> bytes:
    """A message as DATA carries it: CRLF lines, each leading "." doubled (RFC 5321 4.5.2),
    ending in CRLF "." CRLF. `crlf`: its lines are known to be CRLF lines (rendered
    messages); otherwise three byte counts tell, and only where they do not agree does a
    regular expression go over the whole message."""
    if not crlf:
        ends = data.count(b"\r\n")
        if data.count(b"\n") != ends or data.count(b"\r") != ends:
            data = _LINE_ENDING.sub(b"\r\n", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    if _DOT_LINE.search(data) is not None:  # a regex finds it in half replace's time
        data = data.replace(b"\r\n.", b"\r\n..")
    return data + b".\r\n"


async def wait_timed(waiter: asyncio.Future[None], within: float | None,
                     expire: Callable[[asyncio.Future[None]], None]) -> None:
    """Await `waiter`; if it is not done within `within` seconds (None: no limit),
    `expire(waiter)` is called, which should end it. A timer rather than asyncio.wait_for,
    which costs a second future and its callbacks, on waits made for every message."""
    timer = (asyncio.get_running_loop().call_later(within, expire, waiter)
             if within is not None else None)
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()


class _Wire(asyncio.Protocol):
    """One open SMTP connection, past its greeting, EHLO, TLS and login, sending mail.

    With PIPELINING, MAIL, RCPT and DATA go out in one write and their replies come back
    together, so a message costs two round trips instead of four; without it, each
    command waits for its reply. After a refusal the connection is reset (RSET) and
    serves the next message; after anything else (a hang-up, a timeout, a reply that is
    not SMTP, replies still owed) it is closed and the pool opens a new one.
    """

    def __init__(self, transport: asyncio.BaseTransport, *, pipelining: bool, sizes: bool,
                 eight_bit: bool = False, timeout: float | None):
        self.pipelining = pipelining
        self.sizes = sizes  # the server takes SIZE= on MAIL FROM (RFC 1870)
        self.eight_bit = eight_bit  # the server takes BODY=8BITMIME (RFC 6152)
        self.timeout = timeout
        self._transport = cast(asyncio.WriteTransport, transport)
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the reply being read, line after line
        self._replies: deque[aiosmtplib.SMTPResponse] = deque()
        self._owed = 0  # replies to commands sent that were not read
        self._waiter: asyncio.Future[None] | None = None
        self._lost: Exception | None = None
        transport.set_protocol(self)

    @property
    def usable(self) -> bool:
        """Open, and in step: every reply read, none that nobody asked for (a server that
        times out an idle connection says 421 first)."""
        return (self._lost is None and not self._replies and not self._owed
                and not self._transport.is_closing())

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                self._fail(aiosmtplib.SMTPResponseException(
                    -1, f"malformed reply: {line[:80].decode('ascii', 'replace')}"))
                return
            self._lines.append(line)
            if line[3:4] != b"-":
                text = b"\n".join(part[4:].strip() for part in self._lines)
                self._replies.append(aiosmtplib.SMTPResponse(
                    int(line[:3]), text.decode("utf-8", "surrogateescape")))
                self._lines = []
        if len(self._buffer) + sum(map(len, self._lines)) > MAX_REPLY_BYTES:
            self._fail(aiosmtplib.SMTPResponseException(-1, "reply too long"))
            return
        self._wake()

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected(
            f"connection lost: {exc}" if exc else "the server closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if self._lost is None:
            self._lost = exc
        self._transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # talking

    def _send(self, data: bytes, replies: int = 1) -> None:
        if self._lost is not None:
            raise self._lost
        self._transport.write(data)
        self._owed += replies

    async def _reply(self) -> aiosmtplib.SMTPResponse:
        while not self._replies:
            if self._lost is not None:
                raise self._lost
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await wait_timed(waiter, self.timeout, self._time_out)
            finally:
                self._waiter = None
        self._owed -= 1
        return self._replies.popleft()

    def _time_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._fail(aiosmtplib.SMTPReadTimeoutError("timed out waiting for a reply"))

    async def _replies_to(self, commands: list[bytes]) -> list[aiosmtplib.SMTPResponse]:
        """The replies to MAIL, RCPT..., DATA, up to the first that leaves no point in
        waiting for the rest: MAIL refused, a server closing (421) or hanging up. Without
        pipelining, DATA is not sent when no recipient was accepted."""
        replies: list[aiosmtplib.SMTPResponse] = []
        if self.pipelining:
            self._send(b"".join(commands), len(commands))
        for command in commands:
            if not self.pipelining:
                if command is commands[-1] and all(r.code >= 400 for r in replies[1:]):
                    break
                self._send(command)
            try:
                reply = await self._reply()
            except aiosmtplib.SMTPException:
                if any(r.code >= 400 for r in replies):
                    break  # the refusal explains it better than the hang-up after it
                raise
            replies.append(reply)
            if reply.code == 421 or replies[0].code >= 400:
                break
        return replies

    async def transaction(self, sender: bytes, recipients: list[bytes], data: bytes, *,
                          eight_bit: bool = False, crlf: bool = False
                          ) -> aiosmtplib.SMTPResponse:
        """Send one message (`eight_bit`: with 8bit parts; `crlf`: known to be in CRLF
        lines); the server's final reply. Raises aiosmtplib's exceptions."""
        if eight_bit and not self.eight_bit:
            data = seven_bit(data)  # the server takes 7-bit messages only
        message = wire_data(data, crlf=crlf)
        params = b" SIZE=%d" % len(message) if self.sizes else b""
        if eight_bit and self.eight_bit:
            params += b" BODY=8BITMIME"
        commands = [b"MAIL FROM:<" + sender + b">" + params + b"\r\n",
                    *(b"RCPT TO:<" + r + b">\r\n" for r in recipients), b"DATA\r\n"]
        replies = await self._replies_to(commands)
        closing = next((r for r in replies if r.code == 421), None)
        if closing is not None:  # the server is going away, whatever else it said
            raise aiosmtplib.SMTPResponseException(closing.code, closing.message)
        mail, rcpts = replies[0], replies[1: 1 + len(recipients)]
        if mail.code >= 400:
            raise aiosmtplib.SMTPSenderRefused(mail.code, mail.message,
                                               sender.decode("ascii"))
        refused = [aiosmtplib.SMTPRecipientRefused(r.code, r.message, to.decode("ascii"))
                   for r, to in zip(rcpts, recipients, strict=False) if r.code >= 400]
        accepted = len(rcpts) - len(refused)
        go_ahead = replies[-1] if len(replies) == len(commands) else None
        if go_ahead is not None and go_ahead.code == 354 and not accepted:
            # The server said go ahead though no recipient is left: end it empty.
            self._send(b".\r\n")
            await self._reply()
        if not accepted:
            raise aiosmtplib.SMTPRecipientsRefused(refused)
        if go_ahead is None or go_ahead.code != 354:
            code, text = (go_ahead.code, go_ahead.message) if go_ahead else (-1, "no reply")
            raise aiosmtplib.SMTPDataError(code, text)
        self._send(message)
        final = await self._reply()
        if final.code != 250:
            raise aiosmtplib.SMTPDataError(final.code, final.message)
        return final

    async def reset(self) -> bool:
        """After a refusal: RSET, so the connection can serve the next message. False if
        it cannot (not in step, or the server did not take the RSET)."""
        if not self.usable:
            return False
        try:
            self._send(b"RSET\r\n")
            return (await self._reply()).code == 250
        except aiosmtplib.SMTPException:
            return False

    async def close(self) -> None:
        """Say goodbye if the connection is in a state to; then close it."""
        if self.usable:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                self._send(b"QUIT\r\n")
                await self._reply()
        self.abort()

    def abort(self) -> None:
        self._transport.close()


class OutboxMailer:
    """A dry-run mailer: writes each message as an .eml file instead of sending it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.written: list[Path] = []

    async def send(self, email: OutgoingEmail) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", email.label).strip("_") or "message"
        path = self.folder / f"{name}.eml"
        temporary = path.with_suffix(".eml.tmp")
        temporary.write_bytes(email.data)
        temporary.replace(path)
        self.written.append(path)
        return f"written to {path}"
