"""`digest serve` behind the links of a real email: tokens, confirm-then-POST, one-click
unsubscribe, feedback and interests edited in the subscriber's YAML, refusals.

The app runs in-process (Starlette's TestClient) on a real SQLite store and real profile
files; tests/test_browser.py clicks through the same pages in Chromium."""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
import socket
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import pytest
import uvicorn
from pydantic import SecretStr
from starlette.testclient import TestClient

from digest.commands.web import make_app
from digest.config import Settings, WebSettings
from digest.deliver import OutboxMailer
from digest.ingest.storing import ingest_files
from digest.models import OutgoingEmail
from digest.profiles import load_profile
from digest.running.editions import EditionRun
from digest.store import Store
from digest.tokens import LinkToken, Signer

from .conftest import NOW
from .running import ROOT, digest_cli, wait_for

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
    for url, text in re.findall(
            r'<a\b[^>]*\bhref="(https://digest\.example/[^"]+)"[^>]*>([^<]+)</a>', html):
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


class _Forms(HTMLParser):
    """The forms of a page as a browser would send them, each by its one button:
    (action, [(name, value)])."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str | None, list[tuple[str, str]]]] = []
        self._textarea: tuple[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append((a.get("action"), []))
        elif tag in ("input", "button") and a.get("name") and self.forms:  # its one button
            self.forms[-1][1].append((a["name"] or "", a.get("value") or ""))
        elif tag == "textarea":
            self._textarea = (a["name"] or "", [])

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._textarea[1].append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea" and self._textarea is not None:
            name, parts = self._textarea
            self.forms[-1][1].append((name, "".join(parts).removeprefix("\n")))
            self._textarea = None


def _forms(html: str) -> list[tuple[str | None, list[tuple[str, str]]]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def _form_data(fields: list[tuple[str, str]], **changes: str | list[str]
               ) -> dict[str, str | list[str]]:
    """A form's fields as the TestClient sends them (repeated names as lists), changed."""
    data: dict[str, str | list[str]] = {}
    for name, value in fields:
        if name in data:
            data[name] = [*([data[name]] if isinstance(data[name], str) else data[name]), value]
        else:
            data[name] = value
    return {**data, **changes}


def _interests_form(page_html: str) -> dict[str, str | list[str]]:
    [(_action, fields)] = [form for form in _forms(page_html)
                           if any(name == "interest" for name, _ in form[1])]
    return _form_data(fields)


def test_interests_page_shows_the_profile_and_saves_it_in_one_edit(client, email, tmp_path):
    [link] = _links(email)["Edit your interests"]
    page = client.get(link)
    assert page.status_code == 200
    form = _interests_form(page.text)
    assert form["interest"] == ["dense retrieval", "long context", "", "", ""]
    assert form["weight"] == ["1", "2", "", "", ""]
    assert (form["schedule"], form["timezone"], form["max_papers"]) == (
        "daily 07:00", "UTC", "")
    assert '<label for="schedule">' in page.text
    assert '<label class="vh" for="weight-1">Weight of interest 2</label>' in page.text

    before = _profile_text(tmp_path)
    saved = client.post(link, data={
        **form, "interest": ["long context", "", "  sparse   retrieval ",
                             "graph neural networks", ""],
        "weight": ["3", "", "", "0.5", ""], "mute": "crypto\r\n\r\nblockchain\r\n",
        "authors": "Zhuyun Dai", "schedule": "weekdays 07:30", "max_papers": "12"})
    assert saved.status_code == 200 and 'id="saved"' in saved.text
    assert _changed(before, _profile_text(tmp_path)) == [
        "-   - dense retrieval      # the main thing",
        "-     weight: 2", "+     weight: 3", "+   - sparse retrieval",
        "+   - text: graph neural networks", "+     weight: 0.5",
        "+ keywords:", "+   mute:", "+     - crypto", "+     - blockchain",
        "+ authors:", "+   - Zhuyun Dai", "+ schedule: weekdays 07:30", "+ max_papers: 12"]
    profile = load_profile(tmp_path / "profiles" / "ana.yaml")
    assert [(i.text, i.weight) for i in profile.interests] == [
        ("long context", 3.0), ("sparse retrieval", 1.0), ("graph neural networks", 0.5)]
    assert (profile.mute, profile.authors, profile.schedule, profile.max_papers) == (
        ("crypto", "blockchain"), ("Zhuyun Dai",), "weekdays 07:30", 12)
    # The page now shows what was saved; saving it again as shown changes nothing.
    after = _profile_text(tmp_path)
    inode = (tmp_path / "profiles" / "ana.yaml").stat().st_ino
    again = client.post(link, data=_interests_form(saved.text))
    assert again.status_code == 200 and _profile_text(tmp_path) == after
    assert (tmp_path / "profiles" / "ana.yaml").stat().st_ino == inode  # not even rewritten


def test_a_form_without_some_boxes_leaves_their_fields_as_they_are(client, email, tmp_path):
    """A page from an older version of the form, or a hand-made request: what it does not
    send is not emptied."""
    before = _profile_text(tmp_path)
    answer = client.post(_links(email)["Edit your interests"][0],
                         data={"schedule": "weekly fri 09:00"})
    assert answer.status_code == 200
    assert _changed(before, _profile_text(tmp_path)) == ["+ schedule: weekly fri 09:00"]


def _changed(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines())
            if line[:2] in ("- ", "+ ")]


def test_invalid_values_keep_the_input_and_say_why_beside_each_box(client, email, tmp_path):
    [link] = _links(email)["Edit your interests"]
    form = _interests_form(client.get(link).text)
    before = _profile_text(tmp_path)
    sent = {**form, "interest": ["dense retrieval", "long context", "x" * 501, "", ""],
            "weight": ["1", "200", "", "", ""], "mute": "crypto\n\n" + "y" * 501,
            "schedule": "sometimes", "timezone": "Mars/Olympus", "max_papers": "ten"}
    answer = client.post(link, data=sent)
    assert answer.status_code == 422
    assert _profile_text(tmp_path) == before  # nothing saved
    assert "<title>Error: Your interests" in answer.text
    # What the reader typed is all still there ...
    assert _interests_form(answer.text) == sent
    # ... and each problem is under its box, tied to it, in `digest profile validate`'s words.
    for box, words in (("weight-1", "less than or equal to 100"),
                       ("interest-2", "at most 500 characters"),
                       ("mute", "line 3: String should have at most 500 characters"),
                       ("schedule", "bad schedule &#39;sometimes&#39;"),
                       ("timezone", "unknown time zone &#39;Mars/Olympus&#39;"),
                       ("max_papers", "Input should be a valid integer")):
        error = re.search(rf'<p class="error" id="{box}-error">(.*?)</p>', answer.text)
        assert error is not None and words in error.group(1), box
        control = re.search(rf'<(?:input|textarea)[^>]* id="{box}"[^>]*>', answer.text)
        assert control is not None
        assert re.search(rf'aria-describedby="[^"]*\b{box}-error\b', control.group(0))
        assert 'aria-invalid="true"' in control.group(0)
        assert f'<a href="#{box}">' in answer.text  # the summary at the top links to it
    assert 'id="weight-0"' in answer.text and "weight-0-error" not in answer.text


def test_the_page_names_the_list_by_its_from_name(web_settings, email, tmp_path):
    settings = web_settings.model_copy(update={"mail": web_settings.mail.model_copy(
        update={"from_name": "Reading Group Papers"})})
    with TestClient(make_app(settings, clock=lambda: NOW),
                    base_url="https://digest.example") as named:
        for link in (_links(email)["Edit your interests"][0], _links(email)["Unsubscribe"][0]):
            page = named.get(link).text
            assert re.search(r"<title>[^<]* · Reading Group Papers</title>", page)
            assert "test.digest.example" not in page  # the List-Id is for machines


def test_recent_feedback_is_listed_and_each_click_can_be_undone(client, email, tmp_path):
    links = _links(email)
    before = _profile_text(tmp_path)
    more, less = links["More like this"][0], links["Less like this"][1]
    assert "Thank you" in client.post(more).text
    assert "Thank you" in client.post(less).text
    [profile_link] = links["Edit your interests"]
    page = client.get(profile_link).text
    undo_forms = [fields for action, fields in _forms(page)
                  if ("do", "undo") in fields and action == "#feedback"]  # back to this page
    listed = [(dict(f)["list"], dict(f)["entry"]) for f in undo_forms]
    profile = load_profile(tmp_path / "profiles" / "ana.yaml")
    assert listed == [("liked", profile.liked[1]), ("liked", profile.liked[0]),
                      ("disliked", profile.disliked[0])]  # newest first
    liked_title = _title_in(client, more)
    assert page.index(liked_title) < page.index("T2Ranking")  # titles, not ids

    answer = client.post(profile_link, data=dict(undo_forms[0]))
    assert answer.status_code == 200 and "Undone:" in answer.text
    answer = client.post(profile_link, data=dict(undo_forms[2]))
    assert "Undone:" in answer.text
    # Both clicks undone: the file is as it was, but for the list the dislike started.
    assert _profile_text(tmp_path) == before + "disliked: []\n"
    again = client.post(profile_link, data=dict(undo_forms[2]))
    assert again.status_code == 200 and "nothing was changed" in again.text


def _title_in(client: TestClient, feedback_link: str) -> str:
    confirm = client.get(feedback_link).text
    found = re.search(r"like “(.+?)” in your next emails", confirm)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("data", [{"do": "undo", "list": "interests", "entry": "long context"},
                                  {"do": "undo", "entry": "x"}])
def test_an_undo_naming_no_feedback_list_changes_nothing(client, email, tmp_path, data):
    before = _profile_text(tmp_path)
    answer = client.post(_links(email)["Edit your interests"][0], data=data)
    assert answer.status_code == 400 and _profile_text(tmp_path) == before


def test_unsubscribed_page_offers_a_signed_resubscribe(web_settings, client, email, tmp_path,
                                                       caplog):
    [link] = _links(email)["Unsubscribe"]
    before = _profile_text(tmp_path)
    with caplog.at_level(logging.INFO, logger="digest.commands.web"):
        done = client.post(link)
    assert "You are unsubscribed" in done.text
    [(action, fields)] = _forms(done.text)
    assert fields == [] and action is not None and action.startswith("../r/")
    resubscribe = urljoin(link, action)  # beside /u/, whatever prefix base_url has
    assert resubscribe.startswith("https://digest.example/r/")
    until = NOW + timedelta(days=web_settings.web.link_days)
    assert f"works until {until.day} {until:%B %Y}" in done.text
    # Its token is a new one, for resubscribing only, and its own lifetime.
    token = Signer([SECRET]).verify(resubscribe.rsplit("/", 1)[1], now=NOW)
    assert (token.subscriber_id, token.action) == ("ana", "resubscribe")
    assert token.expires == until

    unsubscribed = _profile_text(tmp_path)
    for method in (client.get, client.head):  # a link scanner: nothing happens
        assert method(resubscribe).status_code == 200
    assert _profile_text(tmp_path) == unsubscribed
    assert "Resubscribe?" in client.get(resubscribe).text
    with caplog.at_level(logging.INFO, logger="digest.commands.web"):
        answer = client.post(resubscribe)
    assert answer.status_code == 200 and "subscribed again" in answer.text
    assert load_profile(tmp_path / "profiles" / "ana.yaml").active is True
    assert _profile_text(tmp_path) == before + "active: true\n"  # comments and all kept
    assert "web.unsubscribed subscriber=ana" in caplog.text
    assert "web.resubscribed subscriber=ana" in caplog.text
    assert token_text(resubscribe) not in caplog.text


def token_text(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_resubscribe_link_expires_after_link_days_and_does_only_that(web_settings, client,
                                                                     email, tmp_path):
    [link] = _links(email)["Unsubscribe"]
    [(action, _)] = _forms(client.post(link).text)
    resubscribe = urljoin(link, action)
    expires = NOW + timedelta(days=web_settings.web.link_days)
    late = make_app(web_settings, clock=lambda: expires)
    with TestClient(late, base_url="https://digest.example") as later:
        answer = later.post(resubscribe)
        assert answer.status_code == 403 and "expired" in answer.text
    assert load_profile(tmp_path / "profiles" / "ana.yaml").active is False
    # The unsubscribe link does not resubscribe, nor the resubscribe link unsubscribe.
    swapped = client.post(f"https://digest.example/r/{token_text(link)}")
    assert swapped.status_code == 403
    assert client.post(f"https://digest.example/u/{token_text(resubscribe)}").status_code == 403
    assert load_profile(tmp_path / "profiles" / "ana.yaml").active is False


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
    for link in (_links(email)["Unsubscribe"][0], _links(email)["More like this"][0],
                 _links(email)["Edit your interests"][0]):
        assert client.head(link).status_code == 200
    assert _profile_text(tmp_path) == before


def test_no_page_redirects(client, email):
    """Not even Starlette's trailing-slash redirect, which names the Host header's site."""
    link = _links(email)["Unsubscribe"][0]
    answer = client.get(link + "/", headers={"host": "evil.example"}, follow_redirects=False)
    assert answer.status_code == 404 and "location" not in answer.headers


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


# `digest serve` itself: its port, and saying it serves only once it listens ---------------

def _serve_command(config: Path, port: int) -> tuple[list[str], dict[str, str]]:
    command, env = digest_cli(config, DIGEST_SECRET=SECRET)
    return [*command, "serve", "--port", str(port)], env


def test_the_default_port_is_no_common_tools_default():
    """Not aiosmtpd's or Mailpit's 8025 (the README's own test SMTP servers), not the demo's
    8026, nor a web framework's usual one; and digest.toml says the same."""
    default = WebSettings().port
    assert default == 8377
    assert default not in {8025, 8026, 8080, 8000, 5000, 3000, 8888, 5173, 9000}
    shipped = tomllib.loads((ROOT / "digest" / "data" / "digest.toml").read_text())
    assert shipped["web"]["port"] == default


def test_serve_on_a_port_in_use_is_one_clear_line(config_file, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command, env = _serve_command(config_file, port)
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)

    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"digest: error: cannot serve the links of test.digest.example on "
                           f"127.0.0.1:{port}: Address already in use (choose another with "
                           "--port or [web] port)\n")


def test_serve_says_it_serves_once_it_listens(config_file, tmp_path):
    with socket.socket() as probe:  # a port free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command, env = _serve_command(config_file, port)
    server = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        assert line == (f"Serving the links of test.digest.example on http://127.0.0.1:{port}/ "
                        "(Ctrl-C stops)\n")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:  # at once
            client.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert client.recv(100).startswith(b"HTTP/1.1 200 ")
    finally:
        server.terminate()
        server.wait(30)
