"""The demo's email in real headless Chromium, at a phone's width and a desktop's, light
and dark: no sideways scrolling, every paper's title a link, sections headed, every link
a tap target at least 44 px high with text at least 14 px, and the dark palette applied."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from digest.commands.demo import run_demo

from .conftest import NOW
from .test_browser import CHROMEDRIVER, CHROMIUM, _screenshot, browser  # noqa: F401

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Chromium not installed (Debian: apt-get install chromium chromium-driver)")

# Every visible link: its text, height and font size, and whether it is a paper's title.
_LINKS = """return [...document.querySelectorAll('a')].filter(a => a.offsetParent).map(a => ({
  text: a.textContent.trim(), height: a.getBoundingClientRect().height,
  size: parseFloat(getComputedStyle(a).fontSize), title: !!a.closest('.title')}))"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return asyncio.run(run_demo(tmp_path_factory.mktemp("demo"), now=NOW, embeddings="off"))


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_email_reads_and_taps_well_at_phone_and_desktop_widths(browser, demo,  # noqa: F811
                                                                   scheme):
    ana = next(o for o in demo.outcomes if o.profile.subscriber_id == "ana")
    eml, html = demo.saved[0]
    assert eml.name == "ana.eml"
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": scheme}]})
    browser.get(Path(html).resolve().as_uri())
    for width in (800, 390):
        _screenshot(browser, f"email-{scheme}", width)
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"sideways scrolling at {width} px"
        links = browser.execute_script(_LINKS)
        small = [link for link in links if link["height"] < 44 or link["size"] < 14]
        assert not small, f"at {width} px: {small[:3]}"
        titles = [link["text"] for link in links if link["title"]]
        assert titles == [" ".join(p.paper.title.split()) for p in _shown(ana.picks)]
        headings = browser.execute_script(
            "return [...document.querySelectorAll('h2')].map(h => h.textContent.trim())")
        assert headings and headings[0] == ana.picks[0].section
        labels = {link["text"] for link in links}
        assert {"More like this", "Less like this", "Unsubscribe"} <= labels
    heading = browser.execute_script(
        "return getComputedStyle(document.querySelector('h1')).color")
    light_text = heading.startswith("rgb(2") and heading != "rgb(31, 35, 40)"
    assert light_text == (scheme == "dark"), heading


def _shown(picks):
    """The picks in the order the email shows them: by section, best section first."""
    from digest.render import grouped

    return [pick for _, members in grouped(picks) for pick in members]
