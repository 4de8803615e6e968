"""Delivery over real TLS: certificates are checked unless the operator says otherwise; a
connection that cannot be made safe is a ConnectionFailure (the run's), not an edition's."""

from __future__ import annotations

import asyncio
import ssl
from email.message import EmailMessage

import pytest
import trustme

from digest.commands.smtpsink import SmtpSink
from digest.config import SmtpSettings
from digest.deliver import SmtpMailer
from digest.errors import ConnectionFailure
from digest.models import OutgoingEmail


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_sink(ca: trustme.CA):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with SmtpSink(tls_context=context) as sink:
        yield sink


def _message() -> EmailMessage:
    message = EmailMessage()
    message["From"] = "digest@test.example"
    message["To"] = "ana@example.org"
    message["Subject"] = "tls"
    message.set_content("hello")
    return message


def _send(settings: SmtpSettings) -> str:
    async def go() -> str:
        async with SmtpMailer(settings, sender="digest@test.example") as mailer:
            return await mailer.send(OutgoingEmail.from_message(_message()))

    return asyncio.run(go())


def test_starttls_with_a_trusted_ca_delivers(tls_sink, ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    settings = SmtpSettings(host="127.0.0.1", port=tls_sink.port, security="starttls",
                            ca_file=ca_file, timeout_s=5)
    assert _send(settings).startswith("250")
    assert len(tls_sink.received) == 1


def test_implicit_tls_sends_over_one_verified_connection(ca, tmp_path):
    """Port-465 style: TLS from the first byte, the certificate checked, then the mail
    transactions (pipelined) on that same encrypted connection."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with SmtpSink(implicit_tls=context) as sink:
        trusted = SmtpSettings(host="127.0.0.1", port=sink.port, security="tls",
                               ca_file=ca_file, timeout_s=5, connections=1)

        async def go() -> list[str]:
            async with SmtpMailer(trusted, sender="digest@test.example") as mailer:
                return [await mailer.send(OutgoingEmail.from_message(_message()))
                        for _ in range(3)]

        assert all(reply.startswith("250") for reply in asyncio.run(go()))
        received = sink.received
        with pytest.raises(ConnectionFailure, match="certificate is not trusted"):
            _send(trusted.model_copy(update={"ca_file": None}))
    assert len(received) == 3 and len({r.peer for r in received}) == 1
    assert len(sink.received) == 3


def test_an_untrusted_certificate_is_refused_by_default(tls_sink):
    settings = SmtpSettings(host="127.0.0.1", port=tls_sink.port, security="starttls",
                            timeout_s=5)
    with pytest.raises(ConnectionFailure, match="certificate is not trusted: unable to get "
                                                "local issuer certificate"):
        _send(settings)
    assert tls_sink.received == []


def test_verification_can_be_turned_off_for_a_local_relay(tls_sink):
    settings = SmtpSettings(host="127.0.0.1", port=tls_sink.port, security="starttls",
                            validate_certs=False, timeout_s=5)
    assert _send(settings).startswith("250")


def test_starttls_required_but_not_offered_is_an_error(smtp_sink):
    settings = SmtpSettings(host="127.0.0.1", port=smtp_sink.port, security="starttls",
                            timeout_s=5)
    with pytest.raises(ConnectionFailure, match="does not offer STARTTLS; digest will not "
                                                "send in clear text"):
        _send(settings)
    assert smtp_sink.received == []
