"""The subscriber's side in real headless Chromium (Debian's chromium + chromedriver, driven
by Selenium): the email at desktop and phone widths, its links clicked through a real
`digest serve`, and hostile paper text that must not run.

Screenshots go to $DIGEST_ARTIFACTS (default: tests/artifacts/, not committed)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from digest.config import MailSettings
from digest.models import Paper, Pick, Profile
from digest.profiles import load_profile
from digest.render import make_environment, render_edition

from .conftest import NOW

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ROOT = Path(__file__).parents[1]
ARTIFACTS = Path(os.environ.get("DIGEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
SECRET = "browser-test-secret-" + "z" * 32

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Chromium not installed (Debian: apt-get install chromium chromium-driver)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not download
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path, config_file: Path, seeds: list[Path], smtp_sink, run_cli,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """Ana's edition sent through `digest send` with links to a running `digest serve`;
    yields the email's HTML file and the profile path."""
    port = _free_port()
    with config_file.open("a", encoding="utf-8") as handle:
        handle.write(f'\n[web]\nbase_url = "http://127.0.0.1:{port}"\n')
    profile = tmp_path / "profiles" / "ana.yaml"
    profile.write_text("# mine\nname: Ana Lima\nemail: ana@example.org\n"
                       "interests: [dense retrieval, long context]\n", encoding="utf-8")
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    assert run_cli("-c", config_file, "ingest", *seeds).exit_code == 0
    sent = run_cli("-c", config_file, "send")
    assert sent.exit_code == 0, sent.output
    [received] = smtp_sink.received
    html = received.message.get_body(("html",)).get_content()
    page = tmp_path / "email.html"
    page.write_text(html, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DIGEST_SECRET": SECRET}
    server = subprocess.Popen([sys.executable, "-m", "digest", "-c", str(config_file), "serve",
                               "--port", str(port)],
                              env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "digest serve did not start"
                time.sleep(0.1)
        yield page.as_uri(), profile
    finally:
        server.terminate()
        server.wait(10)


def _wait_for(driver, by: str, value: str):
    """The element, once the page that holds it has loaded (a form post navigates)."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    return WebDriverWait(driver, 10).until(
        expected_conditions.presence_of_element_located((by, value)))


def _heading_becomes(driver, text: str) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(driver, 10).until(
        expected_conditions.text_to_be_present_in_element(("tag name", "h1"), text))


def _screenshot(driver, name: str, width: int) -> Path:
    driver.set_window_size(width, 1200)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(int(height), 6000))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}-{width}px.png"
    driver.save_screenshot(str(path))
    return path


def test_email_holds_up_at_desktop_and_phone_widths(browser, served):
    url, _profile = served
    browser.get(url)
    for width in (800, 390):
        shot = _screenshot(browser, "email", width)
        assert shot.stat().st_size > 10_000
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"horizontal scrolling at {width}px"
    card = browser.find_element("css selector", "table.card")
    assert card.size["width"] <= 600


def test_unsubscribe_link_confirms_then_unsubscribes(browser, served):
    url, profile = served
    browser.get(url)
    browser.find_element("link text", "Unsubscribe").click()
    _heading_becomes(browser, "Unsubscribe?")
    assert load_profile(profile).active  # looking at the page changed nothing
    browser.find_element("id", "confirm").click()
    _heading_becomes(browser, "You are unsubscribed")
    assert not load_profile(profile).active
    assert profile.read_text(encoding="utf-8").startswith("# mine\n")
    _screenshot(browser, "unsubscribed", 390)


def test_more_like_this_and_editing_interests(browser, served):
    url, profile = served
    browser.get(url)
    title = browser.find_elements("css selector", "p.title")[1].text
    browser.find_elements("link text", "More like this")[1].click()
    _wait_for(browser, "id", "confirm").click()
    _heading_becomes(browser, "Thank you")
    liked = load_profile(profile).liked
    assert len(liked) == 1 and (liked[0] == title or liked[0] in browser.page_source)

    browser.get(url)
    browser.find_element("link text", "Edit your interests").click()
    box = _wait_for(browser, "id", "interests")
    box.clear()
    box.send_keys("graph neural networks\nlong context")
    browser.find_element("id", "save").click()
    assert _wait_for(browser, "id", "saved").is_displayed()
    assert [i.text for i in load_profile(profile).interests] == ["graph neural networks",
                                                                 "long context"]
    _screenshot(browser, "interests", 390)


def test_hostile_paper_text_does_not_run(browser, tmp_path):
    hostile = Paper(key="x", first_seen=NOW, url="javascript:window.pwned=1",
                    title='<script>window.pwned=1</script><img src=x onerror="window.pwned=1">',
                    abstract='"><svg onload="window.pwned=1"> <a href="javascript:1">x</a>',
                    authors=('<b onmouseover="window.pwned=1">Eve</b>',), row_id=1)
    profile = Profile(subscriber_id="ana", path=Path("ana.yaml"), email="ana@example.org",
                      name='Ana "<script>window.pwned=1</script>"')
    email = render_edition(make_environment(), profile, [Pick(hostile, 1.0, "<i>why</i>")],
                           slot=NOW, now=NOW, mail=MailSettings(from_address="d@example.org"))
    page = tmp_path / "hostile.html"
    page.write_text(email.email.get_body(("html",)).get_content(), encoding="utf-8")
    browser.get(page.as_uri())
    time.sleep(0.3)
    assert browser.execute_script("return window.pwned") is None
    assert "<script>window.pwned=1</script>" in browser.find_element("tag name", "body").text
    assert not browser.find_elements("css selector", "a[href^='javascript']")

