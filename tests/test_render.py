"""Rendering: one multipart/alternative message, escaped, with clean headers."""

from __future__ import annotations

import re
from email import message_from_bytes
from email.policy import SMTP, default
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.config import MailSettings
from digest.models import Paper, Pick, Profile
from digest.render import make_environment, one_line, render_edition, serialise

from .conftest import NOW

MAIL = MailSettings(from_address="digest@test.example", from_name='Papers, "daily"',
                    list_id="test.digest.example")
HOSTILE = 'Great <script>alert("x")</script> results\r\nBcc: victim@example.org'


def _profile(name: str = "Ana Lima") -> Profile:
    return Profile(subscriber_id="ana", path=Path("ana.yaml"), name=name,
                   email="ana@example.org", timezone="Europe/Lisbon")


def _pick(title: str = "Dense retrieval at scale", url: str | None = "https://arxiv.org/abs/1",
          abstract: str = "We study retrieval. It works.") -> Pick:
    paper = Paper(key="1", title=title, abstract=abstract, first_seen=NOW, url=url,
                  authors=("A. Author", "B. Author"))
    return Pick(paper, 0.5, "matches: dense retrieval")


def _render(picks, profile=None, env=None):
    return render_edition(env or make_environment(), profile or _profile(), picks, slot=NOW,
                          mail=MAIL, now=NOW).email


def _reparse(message):
    return message_from_bytes(message.as_bytes(policy=SMTP), policy=default)


def test_message_is_multipart_alternative_with_text_then_html():
    message = _reparse(_render([_pick(), _pick("Second paper")]))
    assert message.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in message.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "1. Dense retrieval at scale" in text and "2. Second paper" in text
    assert "Why: matches: dense retrieval" in text
    assert 'href="https://arxiv.org/abs/1"' in html
    # CSS is inlined; only the rules that cannot be (dark mode's @media) stay in <style>.
    styles = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    assert all(block.strip().startswith("@media") for block in styles)
    assert 'style="' in html
    assert max(len(line) for line in text.splitlines()) <= 76


def test_subject_names_the_day_and_the_top_pick():
    message = _render([_pick("Top one"), _pick("Other")])
    assert message["Subject"] == "Papers for Wed 25 Nov: Top one"


def test_headers_identify_the_edition():
    message = _render([_pick()])
    assert message["Message-ID"].startswith("<edition.") and "@test.example>" in message[
        "Message-ID"]
    assert message["List-Id"] == "<test.digest.example>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["To"].addresses[0].addr_spec == "ana@example.org"
    assert _render([_pick()])["Message-ID"] == message["Message-ID"]  # same edition, same id


def test_hostile_paper_text_is_escaped_and_cannot_inject_headers():
    message = _reparse(_render([_pick(HOSTILE, url="javascript:alert(1)",
                                      abstract="<img src=x onerror=alert(1)> text")]))
    html = message.get_body(("html",)).get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img" not in html and "javascript:" not in html
    assert message["Bcc"] is None
    assert "\r" not in message["Subject"] and "\n" not in str(message["Subject"])
    assert message["Subject"].startswith("Papers for Wed 25 Nov: Great <script>")


def test_display_names_with_quotes_and_commas_are_quoted():
    message = _reparse(_render([_pick()], profile=_profile('Lima, Ana "the reader"')))
    [to] = message["To"].addresses
    assert (to.display_name, to.addr_spec) == ('Lima, Ana "the reader"', "ana@example.org")
    [sender] = message["From"].addresses
    assert sender.display_name == 'Papers, "daily"'


def test_operator_template_overrides_and_extends_the_default(tmp_path):
    (tmp_path / "email.txt.j2").write_text("Hello {{ profile.name }}: {{ picks | length }}\n")
    (tmp_path / "_paper.html.j2").write_text("<p class=mine>{{ pick.title }}</p>")
    message = _reparse(_render([_pick("<b>x</b>")], env=make_environment(tmp_path)))
    assert message.get_body(("plain",)).get_content().splitlines() == ["Hello Ana Lima: 1"]
    html = message.get_body(("html",)).get_content()
    assert 'class="mine"' in html and "&lt;b&gt;x&lt;/b&gt;" in html  # still autoescaped
    assert "Papers for Wednesday" in html  # the rest comes from the default templates


@given(st.text() | st.text(st.sampled_from(list(" ab\t\n\xa0\u2003\x85"))))
def test_one_line_never_leaves_a_line_break(value):
    from digest.render import _BREAKS

    assert not any(ch in one_line(value) for ch in "\r\n\x0b\x0c\x85\u2028\u2029")
    # What it returns unchanged (most values) is what folding would give.
    assert one_line(value) == " ".join(_BREAKS.sub(" ", value).split())


@given(st.text(), st.text() | st.text(min_size=250).map(lambda t: t * 4), st.booleans())
def test_serialised_parts_decode_to_what_was_rendered(text, html, eight_bit):
    """In 7-bit forms, or with 8bit parts, and those converted for a server without
    8BITMIME: the parts read back as rendered, no line is over 998 bytes, and every line
    ends in CRLF with no CR or LF alone (rendered emails say so: `OutgoingEmail.crlf`)."""
    from digest.render import seven_bit

    data = serialise([("Subject", "x"), ("To", "ana@example.org")], text, html,
                     eight_bit=eight_bit)
    forms = [data]
    if eight_bit:
        forms.append(seven_bit(data))
        assert forms[-1].isascii()
    else:
        assert data.isascii()

    def lines(value: str) -> str:  # SMTP carries CRLF lines; the parser gives back "\n"
        return value.replace("\r\n", "\n").replace("\r", "\n")

    for form in forms:
        parsed = message_from_bytes(form, policy=default)
        plain, rich = (part.get_content() for part in parsed.iter_parts())
        assert lines(plain).rstrip("\n") == lines(text).rstrip("\n")
        assert lines(rich).rstrip("\n") == lines(html).rstrip("\n")
        assert all(len(line) <= 998 for line in form.split(b"\r\n"))
        assert form.count(b"\r\n") == form.count(b"\n") == form.count(b"\r")


def test_non_ascii_subject_and_names_are_encoded_words():
    message = _reparse(_render([_pick("Ragnarök: über alles, naïve")],
                               profile=_profile("Zoë Ångström")))
    assert message["Subject"] == "Papers for Wed 25 Nov: Ragnarök: über alles, naïve"
    assert message["To"].addresses[0].display_name == "Zoë Ångström"
    email = render_edition(make_environment(), _profile(), [_pick("Ragnarök")], slot=NOW,
                           mail=MAIL, now=NOW)
    head, _, body = email.data.partition(b"\r\n\r\n")
    assert head.isascii()  # the parts are 8bit, for a server that takes 8BITMIME
    assert email.eight_bit and not body.isascii()


def test_ascii_parts_travel_as_they_are_and_others_in_quoted_printable():
    data = serialise([("Subject", "x")], "plain words\nline two", "<p>café</p>")
    assert b"Content-Transfer-Encoding: 7bit\r\n\r\nplain words\r\nline two" in data
    assert b"Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>caf=C3=A9</p>" in data


def test_with_8bitmime_others_travel_as_utf8_unless_a_line_is_too_long_or_holds_nul():
    def encodings(text: str, html: str) -> list[bytes]:
        data = serialise([("Subject", "x")], text, html, eight_bit=True)
        return re.findall(rb"Content-Transfer-Encoding: (\S+)", data)

    assert encodings("plain words", "<p>café</p>") == [b"7bit", b"8bit"]
    assert encodings("é" * 499, "é" * 500) == [b"8bit", b"quoted-printable"]  # 998, 1000 B
    assert encodings("nul\x00é", "nul\x00") == [b"quoted-printable", b"quoted-printable"]
    data = serialise([("Subject", "x")], "", "<p>café</p>", eight_bit=True)
    assert "Content-Transfer-Encoding: 8bit\r\n\r\n<p>café</p>".encode() in data


@given(st.lists(st.tuples(st.integers(990, 1002), st.sampled_from(["a", "é", "\x00"]),
                          st.sampled_from(["\n", "\r\n", "\r"])), max_size=5),
       st.booleans())
def test_a_part_goes_as_it_is_exactly_when_its_lines_fit(lines, eight_bit):
    """A part travels as it is when it is ASCII (or may go 8bit), holds no NUL and no line
    is over 998 bytes; lines of about that size, of one- and two-byte letters."""
    from digest.render import _body

    text = "".join(letter * (size // len(letter.encode())) + end
                   for size, letter, end in lines)
    raw = text.replace("\r\n", "\n").replace("\r", "\n").encode()
    fits = "\x00" not in text and max(map(len, raw.split(b"\n"))) <= 998
    encoding, _ = _body(text, eight_bit)
    expected = ("7bit" if fits and raw.isascii() else "8bit" if fits and eight_bit
                else "quoted-printable")
    assert encoding == expected


def test_a_line_break_in_a_header_is_refused():
    with pytest.raises(ValueError, match="line break"):
        serialise([("Subject", "a\r\nBcc: x@example.org")], "", "")


def test_an_internationalised_domain_is_sent_in_its_ascii_form():
    profile = Profile(subscriber_id="ana", path=Path("ana.yaml"), name="Ana",
                      email="ana@bücher.example", timezone="Europe/Lisbon")
    email = render_edition(make_environment(), profile, [_pick()], slot=NOW, mail=MAIL,
                           now=NOW)
    assert email.recipients == ("ana@xn--bcher-kva.example",)
    assert email.email["To"].addresses[0].addr_spec == "ana@xn--bcher-kva.example"


def test_a_full_edition_with_links_stays_small_and_its_text_reads_at_72_columns():
    from datetime import timedelta

    from digest.models import MAX_PAPERS
    from digest.tokens import Links, Signer

    links = Links("https://digest.example", Signer(["k" * 40]), 90)
    words = "Retrieval-augmented generation with long-context language models " * 8
    picks = [Pick(Paper(key=str(i), title=f"Paper {i}: " + words[:180], abstract=words * 3,
                        first_seen=NOW, url=f"https://arxiv.org/abs/2401.{i:05d}",
                        authors=tuple(f"Author {a}" for a in range(12)), row_id=i),
                  0.5, "matches: dense retrieval, long context; like: " + words[:90])
             for i in range(MAX_PAPERS)]  # as many as a profile may ask for
    email = render_edition(make_environment(), _profile(), picks, slot=NOW, mail=MAIL,
                           now=NOW + timedelta(hours=1), links=links)
    html = email.email.get_body(("html",)).get_content()
    assert len(html.encode()) < 100_000  # Gmail clips bigger messages
    text = email.email.get_body(("plain",)).get_content()
    assert all(len(line) <= 72 for line in text.splitlines() if "https://" not in line)


# Any text a feed or a profile could hold, markup characters, no-break spaces and NUL
# included (hypothesis leaves out lone surrogates, which UTF-8 cannot carry).
_ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
    ["", "a & b", "<i>x</i>", 'say "hi"', "it's", "non\xa0breaking", "nul\x00here", "é…"])
_PAPERS = st.builds(
    lambda i, title, url, abstract, authors, arxiv_id: Paper(
        key=str(i), title=title or "untitled", abstract=abstract, first_seen=NOW,
        url=url, authors=tuple(authors), row_id=i, arxiv_id=arxiv_id),
    st.integers(0, 5),
    _ANY_TEXT,
    st.none() | _ANY_TEXT.map(lambda path: "https://arxiv.org/" + path),
    _ANY_TEXT | st.just("word " * 120),  # and one long enough to be cut
    st.lists(_ANY_TEXT.filter(bool), max_size=3),
    st.none() | st.just("2401.01234"))
_SECTIONS = st.sampled_from(["", "dense retrieval", "Because you liked \u201cX\u201d"]) | _ANY_TEXT
_PREPARED_ENV = make_environment()  # one per run, as `digest send` has: its stencil is reused


def _both_ways(env, profile, picks, links=None):
    """The (plain, html) parts of one edition, prepared from a stencil and rendered in full."""
    def parts(prepared: bool) -> tuple[str, str]:
        email = render_edition(env, profile, picks, slot=NOW, mail=MAIL, now=NOW,
                               links=links, prepared=prepared).email
        return (email.get_body(("plain",)).get_content(),
                email.get_body(("html",)).get_content())

    return parts(prepared=True), parts(prepared=False)


@given(papers=st.lists(st.tuples(_PAPERS, _ANY_TEXT, _SECTIONS), max_size=12),
       name=_ANY_TEXT, with_links=st.booleans())
def test_prepared_parts_are_exactly_what_jinja_and_the_inliner_write(papers, name, with_links):
    from digest.tokens import Links, Signer

    links = Links("https://digest.example/a&b", Signer(["k" * 40]), 90) if with_links else None
    profile = _profile(name=name or "Ana")
    picks = [Pick(paper, 1.0, reason, section) for paper, reason, section in papers]
    prepared, full = _both_ways(_PREPARED_ENV, profile, picks, links)
    assert prepared == full


def test_the_shipped_templates_are_prepared_and_an_operators_are_not(tmp_path):
    from digest.render import _HTML, _TEXT, _stencil

    for with_links in (True, False):
        assert _stencil(make_environment(), _HTML, with_links) is not None
        assert _stencil(make_environment(), _TEXT, with_links, "Papers for today") is not None
    (tmp_path / "_base.html.j2").write_text("<html><body>{% block content %}{% endblock %}")
    (tmp_path / "email.txt.j2").write_text("{{ heading }}")
    assert _stencil(make_environment(tmp_path), _HTML, True) is None
    assert _stencil(make_environment(tmp_path), _TEXT, True, "Papers for today") is None


def test_an_operators_html_templates_are_always_rendered_in_full(tmp_path):
    # Only the shipped templates were checked against their stencil: an override may use
    # anything (here the score, which differs between subscribers) and must be honoured.
    (tmp_path / "_paper.html.j2").write_text("<p class=mine>{{ pick.title }} {{ pick.score }}</p>")
    env = make_environment(tmp_path)
    first = _render([_pick()], env=env).get_body(("html",)).get_content()
    paper = _pick().paper
    other = render_edition(env, _profile(), [Pick(paper, 9.25, "x")], slot=NOW, mail=MAIL,
                           now=NOW).email.get_body(("html",)).get_content()
    assert "0.5</p>" in first and "9.25</p>" in other


_HYPHENATED = st.lists(st.sampled_from(["self-supervised", "a", "bb", "x-y-z", "--", "a--b",
                                         "e-", "-f", "graph", "é-é", "1-2", "a-"]),
                       max_size=12).map(" ".join)


@given(text=st.text(st.sampled_from(list("ab -\t\n\xa0é.")), max_size=40) | _HYPHENATED,
       width=st.integers(1, 30), wrapstring=st.sampled_from([None, "\n   ", "|"]))
def test_wordwrap_is_jinjas(text, width, wrapstring):
    from jinja2.filters import do_wordwrap

    env = make_environment()
    ours = env.from_string("{{ s | wordwrap(w, wrapstring=ws) }}").render(
        s=text, w=width, ws=wrapstring)
    assert ours == do_wordwrap(env, text, width, wrapstring=wrapstring)


@given(st.lists(st.text(st.sampled_from(list("a =.\t\x01é~")), max_size=90)
                | st.text(max_size=80), max_size=6))
def test_quoted_printable_lines_decode_back_and_stay_within_76_characters(lines):
    import binascii

    from digest.render import _body

    text = "\n".join(line.replace("\r", "") for line in lines) + "é"  # never plain ASCII
    encoding, body = _body(text)
    assert encoding == "quoted-printable"
    assert binascii.a2b_qp(body.replace(b"\r\n", b"\n")) == text.encode()
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))


def test_more_picks_than_a_profile_may_ask_for_are_rendered_in_full():
    from digest.models import MAX_PAPERS

    picks = [Pick(Paper(key=str(i), title=f"Paper {i}", abstract="Text.", first_seen=NOW,
                        row_id=i), 1.0, "why") for i in range(MAX_PAPERS + 1)]
    prepared, full = _both_ways(make_environment(), _profile(), picks)
    assert prepared == full
    assert f"{MAX_PAPERS + 1}. Paper {MAX_PAPERS}" in prepared[0]


def test_every_paper_has_a_link_and_a_cut_abstract_says_so():
    """The arXiv page (and PDF) when the arXiv id is known; else the page the source gave
    (a Hugging Face paper page, a feed entry's link); else a title search on arXiv. A cut
    abstract ends with an ellipsis and a "Read more" link; a whole one has neither."""
    long = "Sentence one of many words here. " * 30
    papers = [
        Paper(key="a", title="With an id", abstract=long, first_seen=NOW, arxiv_id="2401.01234",
              url="https://huggingface.co/papers/2401.01234"),
        Paper(key="b", title="From Hugging Face", abstract="Short.", first_seen=NOW,
              url="https://huggingface.co/papers/x"),
        Paper(key="c", title="From a feed", abstract="Short.", first_seen=NOW,
              url="https://blog.example/post?id=1&x=2"),
        Paper(key="d", title="Only a title & more", abstract="Short.", first_seen=NOW),
        Paper(key="e", title="Unsafe link", abstract="Short.", first_seen=NOW,
              url="javascript:alert(1)"),
    ]
    message = _reparse(_render([Pick(p, 1.0, "r") for p in papers]))
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    expected = [("arXiv", "https://arxiv.org/abs/2401.01234"),
                ("Hugging Face", "https://huggingface.co/papers/x"),
                ("Source", "https://blog.example/post?id=1&x=2"),
                ("Search arXiv", "https://arxiv.org/search/?searchtype=title"
                                 "&query=Only+a+title+%26+more"),
                ("Search arXiv", "https://arxiv.org/search/?searchtype=title"
                                 "&query=Unsafe+link")]
    titles = re.findall(r'<p class="title"[^>]*><a href="([^"]+)"', html)
    assert [t.replace("&amp;", "&") for t in titles] == [url for _, url in expected]
    for label, url in expected:
        assert f"{label}: {url}" in text.replace("\n   ", " ")
    assert "PDF: https://arxiv.org/pdf/2401.01234" in text
    assert 'href="https://arxiv.org/pdf/2401.01234"' in html
    assert "javascript" not in html
    assert html.count(">Read more</a>") == 1 and html.count("\u2026 <a") + html.count(
        "&#8230; <a") == 1
    assert text.count("\u2026") == 1


def test_a_weekly_edition_is_named_for_the_week_not_a_weekday():
    from dataclasses import replace

    weekly = replace(_profile(), schedule="weekly fri 07:00")
    assert _render([_pick()], weekly)["Subject"] == "Weekly papers: Dense retrieval at scale"
    cron = replace(_profile(), schedule="0 7 * * 1")
    assert _render([_pick()], cron)["Subject"].startswith("Weekly papers: ")
    daily = _render([_pick()], replace(_profile(), schedule="weekdays 07:00"))["Subject"]
    assert daily.startswith("Papers for ")
    assert _render([], weekly)["Subject"] == "Weekly papers: nothing new this week"


def test_picks_are_grouped_by_section_best_section_first_each_shown_once():
    sections = ["dense retrieval", "Because you liked \u201cX\u201d", "dense retrieval", ""]
    picks = [Pick(Paper(key=str(i), title=f"Paper {i}", abstract="a", first_seen=NOW),
                  1.0 - i / 10, "r", s) for i, s in enumerate(sections)]
    message = _reparse(_render(picks))
    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = message.get_body(("html",)).get_content()
    order = re.findall(r"^(## .*|\d+\. Paper \d)$", text, re.MULTILINE)
    assert order == ["## dense retrieval", "1. Paper 0", "2. Paper 2",
                     "## Because you liked \u201cX\u201d", "3. Paper 1",
                     "## More for you", "4. Paper 3"]
    assert re.findall(r"<h2[^>]*>([^<]+)</h2>", html) == [
        "dense retrieval", "Because you liked &#8220;X&#8221;", "More for you"]
    single = _reparse(_render(picks[:1])).get_body(("plain",)).get_content()
    assert "## " not in single  # one section: no heading
