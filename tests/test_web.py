"""`digest serve` behind the links of a real email: tokens, confirm-then-POST, one-click
unsubscribe, feedback and interests edited in the subscriber's YAML, refusals.

The app runs in-process (Starlette's TestClient) on a real SQLite store and real profile
files; tests/test_browser.py clicks through the same pages in Chromium."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
import uvicorn
from pydantic import SecretStr
from starlette.testclient import TestClient

from digest.commands.web import make_app
from digest.config import Settings, WebSettings
from digest.deliver import OutboxMailer
from digest.models import OutgoingEmail
from digest.profiles import load_profile
from digest.running.editions import EditionRun, ingest_files
from digest.store import Store
from digest.tokens import LinkToken, Signer

from .conftest import NOW
from .running import wait_for

SECRET = "test-secret-" + "x" * 32
PROFILE = """\
# Ana's reading list
name: Ana Lima
email: ana@example.org   # work address
interests:
  - dense retrieval      # the main thing
  - text: long context
    weight: 2
liked:
  - "T2Ranking: A large-scale Chinese Benchmark for Passage Ranking"
"""


@pytest.fixture
def web_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"web": WebSettings(base_url="https://digest.example",
                                                           secret=SecretStr(SECRET))})


@pytest.fixture
def email(web_settings: Settings, store: Store, seeds: list[Path], tmp_path: Path,
          ) -> OutgoingEmail:
    """Ana's edition, as a real run renders and records it."""
    ingest_files(store, seeds, now=NOW, reference=NOW)
    (tmp_path / "profiles").mkdir(exist_ok=True)
    path = tmp_path / "profiles" / "ana.yaml"
    path.write_text(PROFILE, encoding="utf-8")
    run = EditionRun(store, web_settings)
    [outcome] = asyncio.run(run.run_editions([load_profile(path)],
                                             OutboxMailer(tmp_path / "out"), now=NOW))
    assert outcome.email is not None
    return outcome.email


@pytest.fixture
def client(web_settings: Settings, email: OutgoingEmail):
    app = make_app(web_settings, clock=lambda: NOW)
    with TestClient(app, base_url="https://digest.example") as test_client:
        yield test_client


def _links(email: OutgoingEmail) -> dict[str, list[str]]:
    html = email.email.get_body(("html",)).get_content()
    found: dict[str, list[str]] = {}
    for url, text in re.findall(r'<a href="(https://digest\.example/[^"]+)"[^>]*>([^<]+)</a>',
                                html):
        found.setdefault(text, []).append(url.replace("&amp;", "&"))
    return found


def _profile_text(tmp_path: Path) -> str:
    return (tmp_path / "profiles" / "ana.yaml").read_text(encoding="utf-8")


def test_the_email_carries_signed_links_and_one_click_headers(email):
    message = email.email
    links = _links(email)
    assert len(links["More like this"]) == len(links["Less like this"]) >= 5
    [unsubscribe] = links["Unsubscribe"]
    assert message["List-Unsubscribe"] == f"<{unsubscribe}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = message.get_body(("plain",)).get_content()
    assert f"Unsubscribe: {unsubscribe}" in text
    assert text.count("More like this: https://digest.example/f/") >= 5


def test_unsubscribe_asks_first_then_acts_on_post_only(client, email, tmp_path):
    [link] = _links(email)["Unsubscribe"]
    before = _profile_text(tmp_path)
    page = client.get(link)
    assert page.status_code == 200 and "<form method=\"post\">" in page.text
    assert _profile_text(tmp_path) == before  # a link scanner's GET changes nothing
    assert "default-src 'none'" in page.headers["content-security-policy"]
    done = client.post(link)
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    after = _profile_text(tmp_path)
    assert after == before + "active: false\n"  # everything else byte for byte
    assert load_profile(tmp_path / "profiles" / "ana.yaml").active is False


def test_one_click_unsubscribe_from_the_header(client, email, tmp_path):
    url = email.email["List-Unsubscribe"].strip("<>")
    answer = client.post(url, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200
    assert load_profile(tmp_path / "profiles" / "ana.yaml").active is False


def test_more_and_less_like_this_move_the_paper(client, email, tmp_path):
    links = _links(email)
    more, less = links["More like this"][1], links["Less like this"][2]
    assert "Thank you" in client.post(more).text
    assert "Thank you" in client.post(less).text
    profile = load_profile(tmp_path / "profiles" / "ana.yaml")
    assert len(profile.liked) == 2 and len(profile.disliked) == 1
    text = _profile_text(tmp_path)
    assert text.startswith("# Ana's reading list\n")
    assert "email: ana@example.org   # work address\n" in text
    assert "  - dense retrieval      # the main thing\n" in text


def test_interests_page_edits_only_the_interests(client, email, tmp_path):
    [link] = _links(email)["Edit your interests"]
    page = client.get(link)
    assert "dense retrieval\nlong context</textarea>" in page.text
    saved = client.post(link, data={"interests": "long context\r\n\r\n  sparse   retrieval \n"})
    assert "Saved." in saved.text
    profile = load_profile(tmp_path / "profiles" / "ana.yaml")
    assert [(i.text, i.weight) for i in profile.interests] == [("long context", 2.0),
                                                               ("sparse retrieval", 1.0)]
    text = _profile_text(tmp_path)
    assert text.startswith("# Ana's reading list\nname: Ana Lima\n")
    assert "liked:\n  - \"T2Ranking" in text


@pytest.mark.parametrize("tamper", ["forged", "other secret", "expired", "wrong page",
                                    "another subscriber"])
def test_bad_tokens_are_refused_and_change_nothing(client, email, tmp_path, tamper, caplog):
    [link] = _links(email)["Unsubscribe"]
    token = link.rsplit("/", 1)[1]
    signer = Signer([SECRET])
    bad = {
        "forged": token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"),
        "other secret": Signer(["y" * 40]).sign(LinkToken("ana", "unsubscribe",
                                                          NOW + timedelta(days=1))),
        "expired": signer.sign(LinkToken("ana", "unsubscribe", NOW - timedelta(seconds=1))),
        "wrong page": signer.sign(LinkToken("ana", "more", NOW + timedelta(days=1), 1)),
        # ben's genuine token, replayed at the unsubscribe page: it acts for ben (who has
        # no profile here), never for ana
        "another subscriber": signer.sign(LinkToken("ben", "unsubscribe",
                                                    NOW + timedelta(days=1))),
    }[tamper]
    before = _profile_text(tmp_path)
    with caplog.at_level(logging.WARNING, logger="digest.commands.web"):
        answer = client.post(f"https://digest.example/u/{bad}")
    assert answer.status_code in (403, 410)
    assert "unsubscribed" not in answer.text
    assert _profile_text(tmp_path) == before
    if answer.status_code == 403:
        assert "web.refused" in caplog.text and bad not in caplog.text


def test_a_profile_broken_by_hand_is_reported_and_not_overwritten(client, email, tmp_path):
    path = tmp_path / "profiles" / "ana.yaml"
    broken = _profile_text(tmp_path).replace("interests:", "interests: [oops")
    path.write_text(broken, encoding="utf-8")
    answer = client.post(_links(email)["More like this"][0])
    assert answer.status_code == 409 and "not changed" in answer.text
    assert "line" in answer.text
    assert path.read_text(encoding="utf-8") == broken


def test_serve_needs_the_secret(web_settings):
    from digest.errors import ConfigError

    with pytest.raises(ConfigError, match="DIGEST_SECRET"):
        make_app(web_settings.model_copy(update={"web": web_settings.web.model_copy(
            update={"secret": None})}))


def test_head_requests_change_nothing(client, email, tmp_path):
    before = _profile_text(tmp_path)
    for link in (_links(email)["Unsubscribe"][0], _links(email)["More like this"][0]):
        assert client.head(link).status_code == 200
    assert _profile_text(tmp_path) == before


def test_a_profile_file_now_someone_elses_is_not_edited(client, email, tmp_path):
    path = tmp_path / "profiles" / "ana.yaml"
    path.write_text("id: bea\n" + PROFILE.replace("Ana Lima", "Bea"), encoding="utf-8")
    before = path.read_text(encoding="utf-8")
    answer = client.post(_links(email)["Unsubscribe"][0])
    assert answer.status_code == 410
    assert path.read_text(encoding="utf-8") == before


# A real server (uvicorn, as `digest serve` runs it) against clients that misbehave -----

@contextmanager
def _serving(app) -> Iterator[int]:
    """The app behind uvicorn on 127.0.0.1 in a thread; yields its port."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="info"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "uvicorn to start")
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(20)


def _post_head(link: str, length: int) -> bytes:
    path = link.removeprefix("https://digest.example")
    return (f"POST {path} HTTP/1.1\r\nHost: digest.example\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.fixture
def strict_app(web_settings: Settings, email: OutgoingEmail):
    settings = web_settings.model_copy(update={"web": web_settings.web.model_copy(
        update={"body_timeout_s": 0.5})})
    return make_app(settings, clock=lambda: NOW)


def test_a_body_that_never_arrives_gets_408_and_one_line(strict_app, email, tmp_path, caplog):
    """10 bytes of a declared megabyte, then nothing: answered once body_timeout_s has
    passed, instead of holding the connection."""
    [link] = _links(email)["Edit your interests"]
    before = _profile_text(tmp_path)
    with caplog.at_level(logging.INFO), _serving(strict_app) as port, \
            socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(_post_head(link, 1_000_000) + b"interests=")
        answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert _profile_text(tmp_path) == before
    [refused] = [r.getMessage() for r in caplog.records if "web.request-refused" in r.msg]
    assert "path=/p " in refused and "no whole request within 0.5 s" in refused
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_a_body_too_large_for_any_page_gets_413(strict_app, email, tmp_path):
    [link] = _links(email)["Edit your interests"]
    with _serving(strict_app) as port, \
            socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(_post_head(link, 200_000) + b"interests=" + b"x" * 199_990)
        answer = client.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413 ")


def test_a_client_that_leaves_mid_body_is_one_line_without_a_traceback(strict_app, email,
                                                                       caplog):
    [link] = _links(email)["Edit your interests"]
    with caplog.at_level(logging.INFO), _serving(strict_app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(_post_head(link, 1_000) + b"interests=dense")
        wait_for(lambda: "web.client-gone" in caplog.text, 20, "the server to notice")
    assert "Exception in ASGI application" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
