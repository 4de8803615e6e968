"""Signed link tokens: bound to subscriber, action, paper and expiry; rotation of secrets."""

from __future__ import annotations

from datetime import timedelta

import pytest

from digest.config import load_settings
from digest.errors import ConfigError
from digest.tokens import LinkToken, Signer, TokenError

from .conftest import NOW

SECRET = "s" * 40
OLD = "o" * 40


def _token(**fields: object) -> LinkToken:
    values: dict[str, object] = dict(subscriber_id="ana", action="more",
                                     expires=NOW + timedelta(days=30), paper_id=7)
    values.update(fields)
    return LinkToken(**values)  # type: ignore[arg-type]


def test_a_signed_token_verifies_to_what_was_signed():
    signer = Signer([SECRET])
    token = _token()
    assert signer.verify(signer.sign(token), now=NOW) == token
    assert signer.verify(signer.sign(_token(paper_id=None, action="unsubscribe")),
                         now=NOW).paper_id is None


def test_tampering_with_any_part_is_detected():
    signer = Signer([SECRET])
    text = signer.sign(_token())
    payload, _, signature = text.rpartition("~")
    other = Signer([SECRET]).sign(_token(subscriber_id="ben"))
    forged = [
        other.rpartition("~")[0] + "~" + signature,  # ben's payload with ana's signature
        payload.replace("~more~", "~less~") + "~" + signature,  # another action
        payload.replace("~7~", "~8~") + "~" + signature,  # another paper
        payload[:-1] + "9" + "~" + signature,  # another expiry
        payload + "~" + signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB"),
        payload,
        "",
        "not~a~token",
    ]
    for text in forged:
        with pytest.raises(TokenError, match="forged or altered|malformed"):
            signer.verify(text, now=NOW)


def test_a_token_signed_with_another_secret_is_refused():
    with pytest.raises(TokenError):
        Signer([SECRET]).verify(Signer(["x" * 40]).sign(_token()), now=NOW)


def test_expired_tokens_are_refused():
    signer = Signer([SECRET])
    text = signer.sign(_token(expires=NOW + timedelta(minutes=1)))
    assert signer.verify(text, now=NOW).subscriber_id == "ana"
    with pytest.raises(TokenError, match="expired"):
        signer.verify(text, now=NOW + timedelta(minutes=1))


def test_rotation_old_links_keep_working_new_ones_use_the_new_secret():
    old_link = Signer([OLD]).sign(_token())
    rotated = Signer([SECRET, OLD])
    assert rotated.verify(old_link, now=NOW).action == "more"
    new_link = rotated.sign(_token())
    assert Signer([SECRET]).verify(new_link, now=NOW).action == "more"
    with pytest.raises(TokenError):
        Signer([OLD]).verify(new_link, now=NOW)


def test_secrets_come_from_the_environment_and_must_be_long(tmp_path):
    assert Signer.for_web(load_settings(data_dir=tmp_path, env={}).web) is None
    settings = load_settings(data_dir=tmp_path, env={"DIGEST_SECRET": SECRET,
                                                     "DIGEST_OLD_SECRETS": f" {OLD} ,"})
    assert SECRET not in repr(settings) and SECRET not in settings.model_dump_json()
    signer = Signer.for_web(settings.web)
    assert signer is not None
    assert signer.verify(Signer([OLD]).sign(_token()), now=NOW).subscriber_id == "ana"
    with pytest.raises(ConfigError, match="at least 32"):
        Signer(["short"])


def test_non_ascii_tokens_are_refused_not_crashed_on():
    with pytest.raises(TokenError):
        Signer([SECRET]).verify("v1~ana~unsubscribe~~9999999999~é", now=NOW)
