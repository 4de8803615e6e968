"""The SMTP connection pool: connections are reused, used at once, and replaced when one
fails; real aiosmtpd server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading

import pytest

from digest.commands.smtpsink import ACCEPT, DROP, SmtpSink
from digest.config import SmtpSettings
from digest.deliver import SmtpMailer
from digest.errors import TransientDeliveryError
from digest.models import OutgoingEmail


def _email(i: int) -> OutgoingEmail:
    data = (f"From: digest@test.example\r\nTo: r{i}@example.org\r\nSubject: {i}\r\n"
            f"Message-ID: <{i}@test.example>\r\n\r\n.line starting with a dot\r\nbody {i}\r\n")
    return OutgoingEmail(recipients=(f"r{i}@example.org",), data=data.encode(),
                         message_id=f"<{i}@test.example>")


async def _send_all(settings: SmtpSettings, count: int) -> list[str | BaseException]:
    async with SmtpMailer(settings, sender="digest@test.example") as mailer:
        return await asyncio.gather(*(mailer.send(_email(i)) for i in range(count)),
                                    return_exceptions=True)


def _settings(port: int, connections: int) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=port, security="none", timeout_s=5,
                        connections=connections)


def test_messages_share_a_few_reused_connections():
    with SmtpSink() as sink:
        replies = asyncio.run(_send_all(_settings(sink.port, 3), 40))
        received = sink.received
    assert all(isinstance(r, str) and r.startswith("250") for r in replies)
    assert len(received) == 40
    assert len({r.peer for r in received}) == 3  # all three used, none opened twice
    assert received[0].data.split(b"\r\n\r\n", 1)[1].startswith(b".line starting")


def test_a_dropped_connection_fails_one_message_and_is_replaced():
    calls = 0
    lock = threading.Lock()

    def respond(_message) -> str:
        nonlocal calls
        with lock:
            calls += 1
            return DROP if calls == 5 else ACCEPT

    with SmtpSink(respond=respond) as sink:
        replies = asyncio.run(_send_all(_settings(sink.port, 2), 20))
        received = sink.received
    failures = [r for r in replies if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], TransientDeliveryError)
    assert len(received) == 19
    assert len({r.peer for r in received}) == 3  # two, and one opened after the drop


def test_connections_must_be_at_least_one():
    with pytest.raises(ValueError):
        SmtpSettings(connections=0)
