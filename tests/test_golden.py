"""Golden files for the emails `digest demo` sends: each subscriber's headers, plain text and
HTML, as the SMTP server received them, compared with tests/data/golden/.

The demo runs with a fixed `now` (conftest's NOW) and lexical ranking (no embeddings), so
its emails are the same on every run. After a deliberate change to the templates, the
ranking or the demo's data, rewrite the files and review the change as a diff:

    .venv/bin/python -m pytest tests/test_golden.py --regen-golden
    git diff tests/data/golden/
"""

from __future__ import annotations

import asyncio
import difflib
import re
from collections.abc import Iterator
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest

from digest.commands.demo import DemoResult, run_demo
from digest.config import MailSettings
from digest.models import ASK_SECTION
from digest.render import make_environment, render_edition
from digest.running.editions import ASK_RATINGS
from digest.tokens import Links, Signer

from .conftest import NOW

GOLDEN = Path(__file__).parent / "data" / "golden"
REGENERATE = ".venv/bin/python -m pytest tests/test_golden.py --regen-golden"
SUBSCRIBERS = ("ana", "ben", "chen")  # digest/data/profiles/*.yaml
# One email also goes through with the links that [web] base_url turns on, so that the
# templates' link parts have golden files too. The links are signed with this secret and
# expire `link_days` after NOW: fixed inputs, so the tokens are the same on every run.
LINKS = Links("https://digest.example/links",
              Signer(["golden-files-test-secret-0123456789abcdef"]), days=90)
DEMO_MAIL = MailSettings(from_address="digest@demo.example", from_name="digest demo",
                         list_id="demo.digest.example")  # as digest/commands/demo.py sets it
FILES = [f"{name}.{kind}" for name in (*SUBSCRIBERS, "ana-links")
         for kind in ("headers", "txt", "html")]


def golden_texts(data: bytes) -> dict[str, str]:
    """A message as its three golden files: the header block, the plain-text part and the
    HTML part, with LF line ends (the wire's CRLF is not what a reviewer looks at). The one
    random value in a message, its MIME boundary, is replaced by `BOUNDARY`; everything
    else (Date, Message-ID, tokens) follows from fixed inputs and is compared as it is."""
    head = data.partition(b"\r\n\r\n")[0].decode("ascii")
    boundary = re.search(r'boundary="([^"]+)"', head)
    assert boundary is not None, head
    message = message_from_bytes(data, policy=default_policy)
    assert isinstance(message, EmailMessage)

    def part(kind: str) -> str:
        body = message.get_body(preferencelist=(kind,))
        assert body is not None, f"no text/{kind} part"
        return str(body.get_content()).replace("\r\n", "\n")

    return {"headers": head.replace(boundary.group(1), "BOUNDARY").replace("\r\n", "\n")
            + "\n", "txt": part("plain"), "html": part("html")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoResult:
    """`digest demo`, as the CLI runs it, at NOW and without embeddings."""
    return asyncio.run(run_demo(tmp_path_factory.mktemp("demo"), now=NOW, embeddings="off"))


@pytest.fixture(scope="module")
def rendered(demo: DemoResult) -> dict[str, str]:
    """Every golden file's text as the code renders it now, by file name."""
    texts: dict[str, str] = {}
    for eml, _html in demo.saved:
        for kind, text in golden_texts(eml.read_bytes()).items():
            texts[f"{eml.stem}.{kind}"] = text
    [ana] = [o for o in demo.outcomes if o.profile.subscriber_id == "ana"]
    assert ana.slot is not None and ana.picks
    linked = render_edition(make_environment(), ana.profile, ana.picks, slot=ana.slot,
                            mail=DEMO_MAIL, now=NOW, links=LINKS)
    for kind, text in golden_texts(linked.data).items():
        texts[f"ana-links.{kind}"] = text
    return texts


@pytest.fixture
def regenerate(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen-golden"))


def test_the_demo_sends_every_subscriber_an_edition(demo: DemoResult) -> None:
    assert sorted(eml.stem for eml, _ in demo.saved) == list(SUBSCRIBERS)
    # Six picks each, then the papers a new subscriber is asked to rate (the demo's
    # emails carry links to rate them with).
    assert all(sum(p.section != ASK_SECTION for p in o.picks) == 6 for o in demo.outcomes)
    assert all(sum(p.section == ASK_SECTION for p in o.picks) == ASK_RATINGS
               for o in demo.outcomes)


@pytest.mark.parametrize("name", FILES)
def test_email_matches_its_golden_file(name: str, rendered: dict[str, str],
                                       regenerate: bool) -> None:
    path = GOLDEN / name
    actual = rendered[name]
    if regenerate:
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8", newline="\n")
        return
    if not path.is_file():
        pytest.fail(f"{path} is missing; write it with: {REGENERATE}", pytrace=False)
    expected = path.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True),
                                            actual.splitlines(keepends=True),
                                            f"tests/data/golden/{name}", "rendered now"))
        pytest.fail(f"{name} is not what the code renders now. If the change is intended, "
                    f"run `{REGENERATE}` and review `git diff tests/data/golden/`.\n{diff}",
                    pytrace=False)


def test_no_golden_file_is_left_over(rendered: dict[str, str], regenerate: bool) -> None:
    """A file no test compares (a subscriber gone from the demo) would go stale unseen."""
    def stale() -> Iterator[Path]:
        for path in GOLDEN.iterdir():
            if path.name != "README.md" and path.name not in rendered:
                yield path

    if regenerate:
        for path in stale():
            path.unlink()
    assert [p.name for p in stale()] == []
    assert set(rendered) == set(FILES)
