"""The SMTP transaction layer (`digest.deliver._Wire`): pipelined where the server offers it,
one command at a time where not; refusals, hang-ups, garbage and silence become the right
delivery errors; the bytes on the wire are what RFC 5321 asks. Real servers on 127.0.0.1:
aiosmtpd (`SmtpSink`), and a scripted one for what aiosmtpd never does."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from digest.commands.smtpsink import SmtpSink
from digest.config import SmtpSettings
from digest.deliver import SmtpMailer, wire_data
from digest.errors import PermanentDeliveryError, TransientDeliveryError
from digest.models import OutgoingEmail


def _email(i: int, to: str | None = None) -> OutgoingEmail:
    to = to or f"r{i}@example.org"
    data = (f"From: digest@test.example\r\nTo: {to}\r\nSubject: {i}\r\n"
            f"Message-ID: <{i}@test.example>\r\n\r\n.dot first\r\nbody {i}\r\n")
    return OutgoingEmail(recipients=(to,), data=data.encode(), message_id=f"<{i}@test.example>")


def _settings(port: int, connections: int = 1, timeout_s: float = 5) -> SmtpSettings:
    return SmtpSettings(host="127.0.0.1", port=port, security="none", timeout_s=timeout_s,
                        connections=connections)


async def _send_each(settings: SmtpSettings, emails: list[OutgoingEmail]
                     ) -> list[str | BaseException]:
    """One after another, over the pool, each outcome kept."""
    outcomes: list[str | BaseException] = []
    async with SmtpMailer(settings, sender="digest@test.example") as mailer:
        for email in emails:
            try:
                outcomes.append(await mailer.send(email))
            except BaseException as exc:  # noqa: BLE001 - the outcome under test
                outcomes.append(exc)
    return outcomes


@given(st.binary().map(lambda b: bytes(b"a.\r\n"[x % 4] for x in b)))
def test_wire_data_is_what_aiosmtplib_would_send(data: bytes):
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data)) + b".\r\n"
    assert wire_data(data) == expected
    lines = normalize_message_line_endings(data)  # as a rendered email's: told, not checked
    assert wire_data(lines, crlf=True) == wire_data(lines) == expected


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_recipient_fails_its_message_only(pipelining: bool):
    def recipient(address: str) -> str:
        return "550 5.1.1 no such mailbox" if address.startswith("gone") else "250 OK"

    with SmtpSink(pipelining=pipelining, recipient=recipient) as sink:
        emails = [_email(0), _email(1, "gone@example.org"), _email(2)]
        outcomes = asyncio.run(_send_each(_settings(sink.port), emails))
        received = sink.received
    assert isinstance(outcomes[0], str) and outcomes[0].startswith("250")
    assert isinstance(outcomes[1], PermanentDeliveryError)
    assert str(outcomes[1]).startswith("550 recipient gone@example.org refused")
    assert isinstance(outcomes[2], str) and outcomes[2].startswith("250")
    assert [r.recipients for r in received] == [("r0@example.org",), ("r2@example.org",)]
    assert all(r.data.split(b"\r\n\r\n", 1)[1].startswith(b".dot first") for r in received)


def test_a_greylisting_recipient_is_transient():
    with SmtpSink(recipient=lambda _address: "450 4.2.0 greylisted, try again") as sink:
        outcomes = asyncio.run(_send_each(_settings(sink.port), [_email(0)]))
    assert isinstance(outcomes[0], TransientDeliveryError)
    assert str(outcomes[0]).startswith("450 recipient r0@example.org refused")


def test_a_rejected_message_is_permanent_and_the_next_goes_out():
    replies = iter(["554 5.7.1 message refused", "250 OK"])
    with SmtpSink(respond=lambda _message: next(replies)) as sink:
        outcomes = asyncio.run(_send_each(_settings(sink.port), [_email(0), _email(1)]))
    assert isinstance(outcomes[0], PermanentDeliveryError)
    assert str(outcomes[0]) == "554 5.7.1 message refused"
    assert isinstance(outcomes[1], str)


def test_an_address_that_would_change_the_command_is_never_sent():
    with SmtpSink() as sink:
        outcomes = asyncio.run(_send_each(_settings(sink.port),
                                          [_email(0, "a@example.org> NOTIFY=NEVER")]))
        assert sink.received == []
    assert isinstance(outcomes[0], PermanentDeliveryError)


HANG_UP = b"<hang up>"  # end an answer with this to close the connection after writing it


@contextmanager
def scripted_server(answer: Callable[[bytes, int], bytes | None]) -> Iterator[int]:
    """A bare SMTP server: it greets, then answers each line with `answer(line, connection
    number)`: bytes to write (a reply, garbage, anything; ending in HANG_UP to close the
    connection), or None to stay silent. Lines of message data are answered like
    commands, so scripts say what a message's last line (b".") gets. Yields its port."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, object] = {}
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        number = connections
        writer.write(b"220 scripted ESMTP\r\n")
        try:
            while line := await reader.readline():
                reply = answer(line.rstrip(b"\r\n"), number)
                if reply:
                    writer.write(reply.removesuffix(HANG_UP))
                    await writer.drain()
                    if reply.endswith(HANG_UP):
                        break
        except ConnectionError:
            pass
        writer.close()

    def run() -> None:
        server = loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        state["port"] = server.sockets[0].getsockname()[1]
        ready.set()
        loop.run_forever()
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    try:
        yield int(state["port"])  # type: ignore[call-overload]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _polite(line: bytes) -> bytes | None:
    """Replies of a server that accepts everything; None for message lines."""
    verb = line[:4].upper()
    if verb == b"EHLO":
        return b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    if verb in (b"MAIL", b"RCPT", b"RSET"):
        return b"250 OK\r\n"
    if verb == b"DATA":
        return b"354 go ahead\r\n"
    if verb == b"QUIT":
        return b"221 bye\r\n"
    if line == b".":
        return b"250 2.0.0 queued as 1\r\n"
    return None


def test_garbage_for_a_reply_is_a_transient_error():
    def answer(line: bytes, _connection: int) -> bytes | None:
        return b"hello there\r\n" if line.startswith(b"MAIL") else _polite(line)

    with scripted_server(answer) as port:
        outcomes = asyncio.run(_send_each(_settings(port), [_email(0)]))
    assert isinstance(outcomes[0], TransientDeliveryError)
    assert "malformed reply: hello there" in str(outcomes[0])


def test_a_server_that_goes_silent_times_out():
    def answer(line: bytes, _connection: int) -> bytes | None:
        return None if line == b"." else _polite(line)

    with scripted_server(answer) as port:
        outcomes = asyncio.run(_send_each(_settings(port, timeout_s=0.5), [_email(0)]))
    assert isinstance(outcomes[0], TransientDeliveryError)
    assert str(outcomes[0]).startswith("timed out")


def test_multi_line_replies_are_read_whole():
    def answer(line: bytes, _connection: int) -> bytes | None:
        if line == b".":
            return b"250-2.0.0 queued\r\n250 as 42\r\n"
        return _polite(line)

    with scripted_server(answer) as port:
        outcomes = asyncio.run(_send_each(_settings(port), [_email(0), _email(1)]))
    assert outcomes == ["250 2.0.0 queued as 42"] * 2


def test_a_connection_the_server_closed_while_idle_is_replaced_unnoticed():
    """A server that times out an idle connection says 421 and hangs up; the next message
    goes out on a new connection instead of failing."""
    seen: list[int] = []

    def answer(line: bytes, connection: int) -> bytes | None:
        if line[:4] == b"MAIL":
            seen.append(connection)
        if line == b"." and connection == 1:  # accepted, then the idle timeout
            return b"250 OK\r\n421 4.4.2 idle too long, closing\r\n" + HANG_UP
        return _polite(line)

    async def go(port: int) -> list[str]:
        async with SmtpMailer(_settings(port), sender="digest@test.example") as mailer:
            first = await mailer.send(_email(0))
            await asyncio.sleep(0.1)
            return [first, await mailer.send(_email(1))]

    with scripted_server(answer) as port:
        outcomes = asyncio.run(go(port))
    assert all(o.startswith("250") for o in outcomes)
    assert seen == [1, 2]


@pytest.mark.parametrize("pipelining", [True, False])
def test_after_a_refusal_the_connection_is_reset_and_kept(pipelining: bool):
    def recipient(address: str) -> str:
        return "550 5.1.1 no such mailbox" if address.startswith("gone") else "250 OK"

    with SmtpSink(pipelining=pipelining, recipient=recipient) as sink:
        outcomes = asyncio.run(_send_each(_settings(sink.port), [
            _email(0), _email(1, "gone@example.org"), _email(2)]))
        received = sink.received
    assert isinstance(outcomes[1], PermanentDeliveryError)
    assert len(received) == 2 and received[0].peer == received[1].peer  # one connection


def test_the_envelope_says_the_size_and_an_ascii_sender():
    """SIZE= where the server takes it (an oversized message is refused before it is
    sent); an internationalised sender domain goes out in its ASCII (IDNA) form."""
    lines: list[bytes] = []

    def answer(line: bytes, _connection: int) -> bytes | None:
        lines.append(line)
        if line[:4] == b"EHLO":
            return b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n"
        return _polite(line)

    async def go(port: int) -> str:
        async with SmtpMailer(_settings(port), sender="digest@bücher.example") as mailer:
            return await mailer.send(_email(0))

    with scripted_server(answer) as port:
        assert asyncio.run(go(port)).startswith("250")
    size = len(wire_data(_email(0).data))
    assert f"MAIL FROM:<digest@xn--bcher-kva.example> SIZE={size}".encode() in lines


def test_a_send_cancelled_mid_message_closes_its_connection():
    """A stopping run cancels what is in flight; that connection's state is unknown, so
    it is closed, never pooled, and the next message goes out on a new one."""
    seen: list[int] = []

    def answer(line: bytes, connection: int) -> bytes | None:
        if line[:4] == b"MAIL":
            seen.append(connection)
        if line == b"." and connection == 1:
            return None  # never answers the first message
        return _polite(line)

    async def go(port: int) -> str:
        async with SmtpMailer(_settings(port, timeout_s=30), sender="d@test.example") as mailer:
            stuck = asyncio.create_task(mailer.send(_email(0)))
            await asyncio.sleep(0.3)
            stuck.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stuck
            assert mailer._idle == []
            return await mailer.send(_email(1))

    with scripted_server(answer) as port:
        assert asyncio.run(go(port)).startswith("250")
    assert seen == [1, 2]


def test_commands_are_pipelined_when_offered():
    """MAIL, RCPT and DATA reach the server in one packet when it offers PIPELINING."""
    batches: list[bytes] = []
    lock = threading.Lock()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 x\r\n")
        in_data = False
        while chunk := await reader.read(65536):
            with lock:
                batches.append(chunk)
            if in_data:
                if chunk.endswith(b"\r\n.\r\n"):
                    writer.write(b"250 OK\r\n")
                    in_data = False
                continue
            lines = [x for x in chunk.split(b"\r\n") if x]
            for line in lines:
                writer.write(_polite(line) or b"")
                in_data = line == b"DATA"
            if lines and lines[-1] == b"QUIT":
                break
        writer.close()

    async def go() -> list[str | BaseException]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with SmtpMailer(_settings(port), sender="digest@test.example") as mailer:
            result: list[str | BaseException] = [await mailer.send(_email(0))]
        server.close()
        return result

    outcomes = asyncio.run(go())
    assert outcomes == ["250 OK"]
    assert any(re.fullmatch(rb"MAIL FROM:<digest@test\.example>\r\nRCPT TO:<r0@example\.org>"
                            rb"\r\nDATA\r\n", b) for b in batches)


@pytest.mark.parametrize("offered", [True, False])
def test_8bit_parts_go_as_8bitmime_where_offered_and_quoted_printable_where_not(offered):
    """A rendered edition with a non-ASCII paper: to a server offering 8BITMIME it goes as
    it is, with BODY=8BITMIME; to one that does not, its 8bit parts are converted to
    quoted-printable and the message is all ASCII. Either way the parts read the same."""
    from pathlib import Path

    from digest.config import MailSettings
    from digest.models import Paper, Pick, Profile
    from digest.render import make_environment, render_edition

    from .conftest import NOW

    paper = Paper(key="1", title="Ragnarök: über alles", abstract="Naïve café — façade.",
                  first_seen=NOW, authors=("Zoë Müller",), row_id=1)
    email = render_edition(make_environment(),
                           Profile(subscriber_id="ana", path=Path("ana.yaml"), name="Ana",
                                   email="ana@example.org"),
                           [Pick(paper, 1.0, "matches: café")], slot=NOW,
                           mail=MailSettings(from_address="digest@test.example"), now=NOW)
    assert email.eight_bit
    with SmtpSink(eight_bit=offered) as sink:
        outcomes = asyncio.run(_send_each(_settings(sink.port), [email]))
        (received,) = sink.received
    assert isinstance(outcomes[0], str) and outcomes[0].startswith("250")
    assert ("BODY=8BITMIME" in received.mail_options) == offered
    assert (received.data == email.data) == offered
    assert received.data.isascii() == (not offered)
    for kind in ("plain", "html"):
        sent = received.message.get_body((kind,)).get_content()
        assert sent == email.email.get_body((kind,)).get_content()
    plain = received.message.get_body(("plain",)).get_content()
    assert "Ragnarök: über alles" in plain and "Zoë Müller" in plain
