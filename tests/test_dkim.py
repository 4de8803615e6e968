"""DKIM: with a key configured, every email is signed, and the signature verifies against
the public key (dkimpy's own verifier, its DNS lookup answered from the test)."""

from __future__ import annotations

import base64
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from digest.config import MailSettings
from digest.errors import ConfigError
from digest.models import Paper, Pick, Profile
from digest.render import make_environment, render_edition
from digest.signing import DkimSigner

from .conftest import NOW


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _dns_record(key: rsa.RSAPrivateKey) -> bytes:
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def _mail(tmp_path: Path, key: rsa.RSAPrivateKey) -> MailSettings:
    pem = tmp_path / "dkim.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return MailSettings(from_address="digest@lab.example", dkim_selector="mail2026",
                        dkim_key_file=pem)


def test_emails_are_signed_and_verify(tmp_path, key):
    mail = _mail(tmp_path, key)
    paper = Paper(key="1", title="Ragnarök: über retrieval", abstract="Text.", first_seen=NOW,
                  row_id=1)
    profile = Profile(subscriber_id="ana", path=Path("ana.yaml"), name="Ana",
                      email="ana@example.org")
    email = render_edition(make_environment(), profile, [Pick(paper, 1.0, "why")], slot=NOW,
                           mail=mail, now=NOW, dkim=DkimSigner(mail))
    # Signed, it travels in 7-bit forms only (quoted-printable), which no relay converts.
    assert not email.eight_bit and email.data.isascii()
    assert email.data.startswith(b"DKIM-Signature: ")
    assert b"d=lab.example" in email.data and b"s=mail2026" in email.data
    looked_up = []

    def dns(name: bytes, timeout: int = 5) -> bytes:
        looked_up.append(name)
        return _dns_record(key)

    assert dkim.verify(email.data, dnsfunc=dns)
    assert looked_up == [b"mail2026._domainkey.lab.example."]
    tampered = email.data.replace(b"Ragnar", b"Ragnor", 1)
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_a_bad_key_is_a_configuration_error(tmp_path, key):
    mail = _mail(tmp_path, key)
    assert mail.dkim_key_file is not None
    mail.dkim_key_file.write_text("not a key")
    with pytest.raises(ConfigError, match="not a usable private key"):
        DkimSigner(mail)
    with pytest.raises(ValueError, match="set both or none"):
        MailSettings(dkim_selector="x")
