"""DKIM signatures on outgoing email (the `dkim` extra, dkimpy), so that receivers can
check the email comes from the sender's domain; Gmail and Yahoo also want the
one-click unsubscribe headers covered by it."""

from __future__ import annotations

from typing import Any

from digest.config import MailSettings
from digest.errors import ConfigError
from digest.identity import ascii_domain

SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"reply-to",
                  b"list-id", b"list-unsubscribe", b"list-unsubscribe-post",
                  b"mime-version", b"content-type")


class DkimSigner:
    """Signs message bytes with the key and selector in `[mail]` for from_address's domain."""

    def __init__(self, mail: MailSettings):
        assert mail.dkim_selector is not None and mail.dkim_key_file is not None
        try:
            import dkim
        except ImportError as exc:
            raise ConfigError("mail.dkim_selector is set but the dkim extra is not installed "
                              "(pip install 'digest[dkim]')") from exc
        self._dkim: Any = dkim
        try:
            self._key = mail.dkim_key_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"mail.dkim_key_file {mail.dkim_key_file}: cannot be read "
                              f"({exc.strerror or exc})") from exc
        self.selector = mail.dkim_selector.encode("ascii")
        self.domain = ascii_domain(mail.from_address.rpartition("@")[2]).encode("ascii")
        try:  # a broken key is a configuration error now, not a failure per email later
            self.sign(b"From: x@example.org\r\nSubject: test\r\n\r\ntest\r\n")
        except Exception as exc:  # dkimpy raises several kinds for a bad key
            raise ConfigError(f"mail.dkim_key_file {mail.dkim_key_file}: not a usable "
                              f"private key ({exc})") from exc

    def sign(self, data: bytes) -> bytes:
        """The message with its DKIM-Signature header first."""
        header = self._dkim.sign(data, self.selector, self.domain, self._key,
                                 include_headers=list(SIGNED_HEADERS))
        return bytes(header) + data


def make_dkim(mail: MailSettings) -> DkimSigner | None:
    return DkimSigner(mail) if mail.dkim_selector else None
