"""The subscriber's side in real headless Chromium (Debian's chromium + chromedriver, driven
by Selenium): the email at desktop and phone widths, its links clicked through a real
`digest serve` (unsubscribe and resubscribe, more like this and its undo, the interests
form saved and refused), and hostile paper text that must not run.

Screenshots go to $DIGEST_ARTIFACTS (default: tests/artifacts/, not committed): each page
at 390 and 800 px, light and dark."""

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
    text = config_file.read_text(encoding="utf-8")
    assert "from_name" not in text
    config_file.write_text(text.replace("[mail]\n", '[mail]\nfrom_name = "Test Papers"\n')
                           + f'\n[web]\nbase_url = "http://127.0.0.1:{port}"\n',
                           encoding="utf-8")
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


def _set_dark(driver, dark: bool) -> None:
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})


def _check_page(driver, name: str) -> None:
    """The page at phone and desktop widths, light and dark: screenshots for a person to
    look at, and what can be measured: no sideways scrolling, tap targets at least 44 px,
    text at least 14 px, every box with a label."""
    for dark in (False, True):
        _set_dark(driver, dark)
        for width in (390, 800):
            _screenshot(driver, f"{name}{'-dark' if dark else ''}", width)
            assert driver.execute_script(
                "return document.documentElement.scrollWidth - window.innerWidth") <= 1
    _set_dark(driver, False)
    driver.set_window_size(390, 1200)
    small = driver.execute_script("""
        const out = [];
        for (const e of document.querySelectorAll('button, input:not([type=hidden]), textarea')) {
          const r = e.getBoundingClientRect();
          if (r.height < 44 || r.width < 44) out.push(e.outerHTML.slice(0, 80));
        }
        return out;""")
    assert small == [], small
    tiny = driver.execute_script("""
        const out = [];
        const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
        while (walk.nextNode()) {
          const e = walk.currentNode.parentElement;
          if (!walk.currentNode.textContent.trim() || e.closest('.vh')) continue;
          if (parseFloat(getComputedStyle(e).fontSize) < 14) out.push(e.tagName);
        }
        return out;""")
    assert tiny == [], tiny
    unlabelled = driver.execute_script("""
        return [...document.querySelectorAll('input:not([type=hidden]), textarea')]
          .filter(e => !e.labels || e.labels.length === 0).map(e => e.id);""")
    assert unlabelled == []


def test_unsubscribe_then_resubscribe(browser, served):
    url, profile = served
    browser.get(url)
    browser.find_element("link text", "Unsubscribe").click()
    _heading_becomes(browser, "Unsubscribe?")
    assert load_profile(profile).active  # looking at the page changed nothing
    assert browser.title == "Unsubscribe? · Test Papers"  # the list's name, not its id
    browser.find_element("id", "confirm").click()
    _heading_becomes(browser, "You are unsubscribed")
    assert not load_profile(profile).active
    assert profile.read_text(encoding="utf-8").startswith("# mine\n")
    _check_page(browser, "unsubscribed")
    browser.find_element("id", "resubscribe").click()
    _heading_becomes(browser, "You are subscribed again")
    assert "/r/" in browser.current_url
    assert load_profile(profile).active
    assert profile.read_text(encoding="utf-8").startswith("# mine\n")
    _check_page(browser, "resubscribed")


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
    box = _wait_for(browser, "id", "interest-0")
    box.clear()
    box.send_keys("graph neural networks")
    browser.find_element("id", "weight-0").clear()
    browser.find_element("id", "weight-0").send_keys("2")
    browser.find_element("id", "authors").send_keys("Zhuyun Dai")
    browser.find_element("id", "save").click()
    assert _wait_for(browser, "id", "saved").is_displayed()
    edited = load_profile(profile)
    assert [(i.text, i.weight) for i in edited.interests] == [("graph neural networks", 2.0),
                                                              ("long context", 1.0)]
    assert edited.authors == ("Zhuyun Dai",)
    assert profile.read_text(encoding="utf-8").startswith("# mine\n")
    _check_page(browser, "interests")

    # The click is listed with an Undo button; undoing it empties `liked` again.
    undo = browser.find_element("css selector", "ul.feedback button")
    assert undo.accessible_name.startswith("Undo: more like these, ")  # which one it undoes
    undo.click()
    _wait_for(browser, "id", "notice")
    assert load_profile(profile).liked == ()


def test_an_invalid_value_is_shown_beside_its_box_with_the_input_kept(browser, served):
    url, profile = served
    before = profile.read_text(encoding="utf-8")
    browser.get(url)
    browser.find_element("link text", "Edit your interests").click()
    schedule = _wait_for(browser, "id", "schedule")
    schedule.clear()
    schedule.send_keys("every other tuesday")
    weight = browser.find_element("id", "weight-1")
    weight.clear()
    weight.send_keys("heavy")
    browser.find_element("id", "save").click()
    _wait_for(browser, "id", "error-summary")
    assert browser.title.startswith("Error: Your interests")
    assert profile.read_text(encoding="utf-8") == before  # nothing saved
    # The summary has the focus, so a screen reader starts there; each problem is under
    # its box (the next thing after it on the page) and is the box's description.
    assert browser.switch_to.active_element.get_attribute("id") == "error-summary"
    for box, words in (("schedule", "bad schedule 'every other tuesday'"),
                       ("weight-1", "Input should be a valid number")):
        control = browser.find_element("id", box)
        error = browser.find_element("id", f"{box}-error")
        assert words in error.text and error.is_displayed()
        assert f"{box}-error" in control.get_attribute("aria-describedby").split()
        assert control.get_attribute("aria-invalid") == "true"
        below = error.location["y"] - (control.location["y"] + control.size["height"])
        assert 0 <= below < 40, (box, below)
    assert browser.find_element("id", "schedule").get_attribute("value") == "every other tuesday"
    assert browser.find_element("id", "weight-1").get_attribute("value") == "heavy"
    assert browser.find_element("id", "interest-1").get_attribute("value") == "long context"
    _check_page(browser, "interests-error")
    browser.find_element("link text", "When: bad schedule 'every other tuesday': expected "
                                      "`daily HH:MM`, `weekdays HH:MM`, `weekly DAY HH:MM`, "
                                      "`every 6h` or a five-field cron expression").click()
    assert browser.switch_to.active_element.get_attribute("id") == "schedule"


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

