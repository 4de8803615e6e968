"""Paper identity: title keys, arXiv ids and the public key built from them."""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.identity import normalise_title, paper_key, parse_arxiv_id

ASCII_TITLE = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ",
                      max_size=80)


@given(st.text())
def test_normalise_title_is_idempotent(title: str) -> None:
    key = normalise_title(title)
    assert normalise_title(key) == key


@given(st.text())
def test_normalise_title_gives_lowercase_words_single_spaced(title: str) -> None:
    key = normalise_title(title)
    assert key == key.strip()
    assert "  " not in key
    assert all(ch == " " or ch.isalnum() for ch in key)
    assert key == key.casefold()


@given(ASCII_TITLE)
def test_normalise_title_ignores_case(title: str) -> None:
    assert normalise_title(title.upper()) == normalise_title(title.lower()) == normalise_title(
        title
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Attention Is All You Need", "attention is all you need"),
        ("Attention Is All You Need", "ATTENTION IS ALL YOU NEED."),
        ("KeNet:Knowledge-enhanced Doc-Label Attention Network",
         "KeNet: Knowledge enhanced Doc Label Attention Network"),
        ("LLMs -- are they (really) \"reasoning\"?!", "llms are they really reasoning"),
        ("  Titans:   Learning to Memorize\tat Test Time  ",
         "Titans Learning to Memorize at Test Time"),
        ("Ragnarök: A Reusable RAG Framework", "Ragnarok: A Reusable RAG Framework"),
        ("Café, naïve and Gödel", "Cafe naive and Godel"),
        ("Ｆｕｌｌｗｉｄｔｈ Ｔｉｔｌｅ", "Fullwidth Title"),
        ("Eﬃcient Fine-Tuning", "Efficient Fine Tuning"),
    ],
)
def test_normalise_title_ignores_case_punctuation_and_accents(first: str, second: str) -> None:
    assert normalise_title(first) == normalise_title(second)


def test_normalise_title_ignores_unicode_normal_form() -> None:
    composed = "Ragnarök: Résumé Generation"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert normalise_title(composed) == normalise_title(decomposed) == (
        "ragnarok resume generation"
    )


def test_normalise_title_keeps_words_apart() -> None:
    assert normalise_title("Scaling Laws for Neural Language Models") != normalise_title(
        "Scaling Laws for Neural Machine Translation"
    )
    assert normalise_title("GPT-4 Technical Report") != normalise_title("GPT-3 Technical Report")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Łojasiewicz Inequalities for Deep Networks",
         "Lojasiewicz Inequalities for Deep Networks"),
        ("Søren Kierkegaard and Language Models", "Soren Kierkegaard and Language Models"),
    ],
)
def test_normalise_title_folds_stroked_letters(first: str, second: str) -> None:
    assert normalise_title(first) == normalise_title(second)


def test_non_latin_titles_get_distinct_keys() -> None:
    chinese = "大型语言模型综述"
    russian = "Обзор больших языковых моделей"
    assert normalise_title(chinese)
    assert paper_key(None, chinese) != paper_key(None, russian)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2401.01234v2", "2401.01234"),
        ("2401.01234", "2401.01234"),
        ("2401.12345", "2401.12345"),
        ("arXiv:2401.01234", "2401.01234"),
        ("ARXIV: 2401.01234v2", "2401.01234"),
        ("  arXiv:2401.01234v2 [cs.CL]  ", "2401.01234"),
        ("https://arxiv.org/abs/2401.01234v3", "2401.01234"),
        ("https://arxiv.org/pdf/2401.01234v3.pdf", "2401.01234"),
        ("https://arxiv.org/pdf/2401.01234", "2401.01234"),
        ("astro-ph/0601001", "astro-ph/0601001"),
        ("http://arxiv.org/abs/quant-ph/0201082v1", "quant-ph/0201082"),
        ("math.GT/0309136", "math.GT/0309136"),
        ("https://huggingface.co/papers/2503.01234", "2503.01234"),
    ],
)
def test_parse_arxiv_id(text: str, expected: str) -> None:
    assert parse_arxiv_id(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "Attention Is All You Need",
        "Titans: Learning to Memorize at Test Time",
        "Ragnarök: A Reusable RAG Framework and Baselines for TREC 2024",
        "1234.5678 is a number",
        "GPT-4 scores 2401.01234 on the benchmark",
        "Version 2401.01234v2 of our model",
        "https://example.org/2401.01234",
        "arXiv:2401.123456",
        "https://arxiv.org/abs/",
    ],
)
def test_parse_arxiv_id_none(text: str) -> None:
    assert parse_arxiv_id(text) is None


@given(ASCII_TITLE)
def test_parse_arxiv_id_never_raises(text: str) -> None:
    found = parse_arxiv_id(text)
    assert found is None or found in text


def test_paper_key_prefers_the_arxiv_id() -> None:
    assert paper_key("2401.01234", "Some Title") == "2401.01234"
    assert paper_key(None, "Some Title!") == "some title"
    assert paper_key("", "Some Title") == "some title"
    # The same paper seen with and without an arXiv id is only merged through the id.
    assert paper_key(parse_arxiv_id("https://arxiv.org/abs/2401.01234v3"), "A") == paper_key(
        parse_arxiv_id("arXiv:2401.01234"), "B"
    )


def test_internationalised_domains_use_idna_2008():
    from digest.identity import ascii_address

    assert ascii_address("a@straße.de") == "a@xn--strae-oqa.de"  # not strasse.de
    assert ascii_address("ana@example.org") == "ana@example.org"
