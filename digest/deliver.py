"""Deliver: hand rendered messages to the SMTP server (or, for a dry run, to an outbox).

This module owns SMTP. Server replies become `TransientDeliveryError` (retry later) or
`PermanentDeliveryError` (do not retry), carrying the reply code and text.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from pathlib import Path
from types import TracebackType
from typing import Protocol

import aiosmtplib

from digest.config import SmtpSettings
from digest.errors import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from digest.models import OutgoingEmail
from digest.ratelimit import smtp_limiter

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
    """Turn an aiosmtplib or socket error into a DeliveryError saying whether to retry."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        return _reply_error(first.code, f"recipient {first.recipient} refused: {first.message}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Retryable: the operator fixes the credentials, the edition then goes out.
        return TransientDeliveryError(f"{exc.code} authentication failed at {where}: "
                                      f"{exc.message}", smtp_code=exc.code)
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 400:
        return _reply_error(exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return TransientDeliveryError(f"timed out talking to {where}")
    if isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionError | OSError):
        reason = _CONNECT_PREFIX.sub("", str(exc)) or type(exc).__name__
        return TransientDeliveryError(f"cannot connect to {where}: {reason}")
    if isinstance(exc, aiosmtplib.SMTPException) and "STARTTLS" in str(exc):
        return TransientDeliveryError(f"{where} does not offer STARTTLS; digest will not send "
                                      "in clear text unless smtp.security is \"none\"")
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TransientDeliveryError(f"{where} closed the connection: {exc}")
    return TransientDeliveryError(f"{where}: {exc}")


class SmtpMailer:
    """Sends over a pool of up to `smtp.connections` reused SMTP connections, so that one
    message's round trips overlap another's; a connection that fails is dropped and a new
    one opened for the next message.

    Use as `async with SmtpMailer(settings, sender=...) as mailer: await mailer.send(email)`;
    `send` may be awaited by many tasks at once.
    """

    def __init__(self, settings: SmtpSettings, *, sender: str):
        self.settings = settings
        self.sender = sender
        self.where = f"{settings.host}:{settings.port}"
        self.limiter = smtp_limiter(settings.max_per_second, settings.max_per_hour)
        self._slots = asyncio.Semaphore(settings.connections)
        self._idle: list[aiosmtplib.SMTP] = []

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

    async def _connect(self) -> aiosmtplib.SMTP:
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
        await client.connect()
        if s.username:
            password = s.password.get_secret_value() if s.password else ""
            await client.login(s.username, password)
        log.debug("smtp.connected server=%s security=%s", self.where, s.security)
        return client

    async def send(self, email: OutgoingEmail) -> str:
        """Send one message; returns the server's reply. Raises DeliveryError."""
        if self.limiter is not None:
            await self.limiter.acquire()
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                _errors, reply = await client.sendmail(self.sender, list(email.recipients),
                                                       email.data)
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                if client is not None:
                    await _close(client)
                raise classify_smtp_error(exc, self.where) from exc
            self._idle.append(client)
        return f"250 {' '.join(reply.split())}"

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            await _close(client)

    async def __aenter__(self) -> SmtpMailer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()


async def _close(client: aiosmtplib.SMTP) -> None:
    """Say goodbye if the server still listens; otherwise just drop the connection."""
    if client.is_connected:
        try:
            await client.quit()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            client.close()


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
