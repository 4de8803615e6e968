"""Signed tokens for the links in an email that act for a subscriber.

A token binds one subscriber, one action, the paper it concerns (if any) and an expiry,
and carries an HMAC-SHA256 of those (truncated to 128 bits) under a key derived from the
secret in `DIGEST_SECRET`. Older secrets listed in `DIGEST_OLD_SECRETS` (comma-separated)
still verify, so the secret can be rotated without breaking the links in emails already
sent; new links are always signed with the current one. Nothing in a token is secret,
only unforgeable.

The format is plain text, `v1~subscriber~action~paper~expires~signature`: every part is
URL-safe (subscriber ids are letters, digits, ".", "_" and "-"). It is built with the
standard library's `hmac` rather than itsdangerous, which costs ~30x more per token, and
an email carries about twenty of them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, cast

from digest.errors import ConfigError, DigestError

if TYPE_CHECKING:
    from digest.config import WebSettings

# "resubscribe" is never in an email: `digest serve` signs it for the page shown after
# unsubscribing, so that it works for link_days from then.
Action = Literal["unsubscribe", "more", "less", "profile", "resubscribe"]
ACTIONS: tuple[Action, ...] = ("unsubscribe", "more", "less", "profile", "resubscribe")
MIN_SECRET_CHARS = 32
_VERSION = "v1"
_PURPOSE = b"digest.link.v1"  # keys for anything else made from the secret differ
_SIGNATURE_BYTES = 16


class TokenError(DigestError):
    """A link's token is forged, altered, expired or malformed; nothing may be done."""


@dataclass(frozen=True)
class LinkToken:
    """What one link may do: `action` for `subscriber_id` (about paper `paper_id`)."""

    subscriber_id: str
    action: Action
    expires: datetime
    paper_id: int | None = None


class Signer:
    """Signs tokens with the newest secret and verifies them with any of the secrets."""

    def __init__(self, secrets: Sequence[str]):
        """`secrets`: the current secret first, then older ones still accepted."""
        if not secrets:
            raise ConfigError("no secret for signing links: set DIGEST_SECRET")
        for secret in secrets:
            if len(secret) < MIN_SECRET_CHARS:
                raise ConfigError(
                    f"a link-signing secret must be at least {MIN_SECRET_CHARS} characters "
                    "(make one with: python -c 'import secrets; print(secrets.token_urlsafe"
                    "(32))')")
        # Keyed once: copying a keyed HMAC costs less than keying one per token.
        self._macs = [hmac.new(hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest(),
                               digestmod=hashlib.sha256) for secret in secrets]

    @classmethod
    def for_web(cls, web: WebSettings) -> Signer | None:
        """The signer for `web.secret` (DIGEST_SECRET) and `web.old_secrets`; None if no
        secret is set."""
        if web.secret is None:
            return None
        return cls([s.get_secret_value() for s in (web.secret, *web.old_secrets)])

    def sign(self, token: LinkToken) -> str:
        return self.sign_fields(token.subscriber_id, token.action, token.paper_id,
                                int(token.expires.timestamp()))

    def sign_fields(self, subscriber_id: str, action: Action, paper_id: int | None,
                    expires: int) -> str:
        """`sign` of the token with these fields (`expires` in Unix seconds)."""
        paper = "" if paper_id is None else paper_id
        payload = f"{_VERSION}~{subscriber_id}~{action}~{paper}~{expires}"
        return f"{payload}~{_signature(self._macs[0], payload)}"

    def verify(self, text: str, *, now: datetime) -> LinkToken:
        """The token's content if it is genuine and not expired; raises TokenError."""
        if not text.isascii():
            raise TokenError("this link is not one digest made (forged or altered)")
        payload, _, signature = text.rpartition("~")
        if not any(hmac.compare_digest(_signature(mac, payload), signature)
                   for mac in self._macs):
            raise TokenError("this link is not one digest made (forged or altered)")
        parts = payload.split("~")
        if (len(parts) != 5 or parts[0] != _VERSION or parts[2] not in ACTIONS
                or not parts[4].isdigit() or not (parts[3] == "" or parts[3].isdigit())):
            raise TokenError("this link's token is malformed")
        _version, subscriber, action, paper, expires = parts
        token = LinkToken(subscriber, cast(Action, action),
                          datetime.fromtimestamp(int(expires), UTC),
                          int(paper) if paper else None)
        if now >= token.expires:
            raise TokenError("this link has expired; use the links in a newer email")
        return token


def _signature(keyed: hmac.HMAC, payload: str) -> str:
    mac = keyed.copy()
    mac.update(payload.encode())
    return base64.urlsafe_b64encode(mac.digest()[:_SIGNATURE_BYTES]).rstrip(b"=").decode(
        "ascii")


PATHS: dict[Action, str] = {"unsubscribe": "u", "more": "f", "less": "f", "profile": "p",
                            "resubscribe": "r"}


@dataclass(frozen=True)
class Links:
    """Makes the signed URLs an email carries: `{base_url}/{u|f|p}/{token}` (and `r`, which
    only `digest serve`'s own page carries)."""

    base_url: str
    signer: Signer
    days: int

    def url(self, subscriber_id: str, action: Action, *, now: datetime,
            paper_id: int | None = None) -> str:
        return self.for_email(subscriber_id, now)(action, paper_id)

    def for_email(self, subscriber_id: str, now: datetime
                  ) -> Callable[[Action, int | None], str]:
        """`url` for one subscriber at `now`, as a function of the action and paper: the
        expiry is worked out once for the twenty-odd links of an email."""
        expires = int((now + timedelta(days=self.days)).timestamp())
        sign, base = self.signer.sign_fields, self.base_url

        def url(action: Action, paper_id: int | None) -> str:
            return f"{base}/{PATHS[action]}/{sign(subscriber_id, action, paper_id, expires)}"

        return url
