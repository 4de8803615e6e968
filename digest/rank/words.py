"""Words: the tokenizer and stems the tf-idf model reads, and keyword rules (`mute`,
`require`) matched against the candidates' texts. The first step of ranking: every other
module reads text through here."""

from __future__ import annotations

import importlib.util
import re
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path

import numpy as np
import Stemmer


def _english_stop_words() -> frozenset[str]:
    """scikit-learn's English stop words, read from the module that holds them without
    importing scikit-learn, which ranking otherwise needs only for classifiers (its import
    takes most of a second: see digest.rank.tfidf)."""
    found = importlib.util.find_spec("sklearn")  # finds the package, imports nothing
    if found is not None and found.origin is not None:
        path = Path(found.origin).parent / "feature_extraction" / "_stop_words.py"
        spec = importlib.util.spec_from_file_location("digest.rank._stop_words", path)
        if spec is not None and spec.loader is not None and path.is_file():
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            words = getattr(module, "ENGLISH_STOP_WORDS", None)
            if isinstance(words, frozenset):
                return words
    # Elsewhere in another release: from scikit-learn itself.
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


STOP_WORDS = _english_stop_words()

# Words of two or more letters or digits that hold a letter, in any script: "3D", "6G" and
# "Ragnarök" count, "2024" does not; hyphenated words are their parts ("retrieval-augmented"
# matches "retrieval augmented").
TOKEN = re.compile(r"\b(?=\w*[^\W\d_])\w\w+\b")
_WORD = re.compile(r"\w+")


def words_of(text: str) -> list[str]:
    """The words of a lowercased text, English stop words left out."""
    return [w for w in TOKEN.findall(text) if w not in STOP_WORDS]


class Words:
    """The tf-idf model's tokenizer: the words of a lowercased text, English stop words left
    out, each as its Snowball stem, so that "robots", "robotic" and "robot" are one term and
    an interest in "graph neural networks" matches a paper on a "graph neural network".

    Stems are looked up once per distinct word (kept as long as the corpus). `surfaces`
    goes back from stems to a text's own words, for the reasons a pick gives.
    """

    def __init__(self) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        self._stems: dict[str, str] = {}

    def __call__(self, text: str) -> list[str]:
        return self.stems(words_of(text))

    def stems(self, words: list[str]) -> list[str]:
        """Each word's Snowball stem (each distinct word stemmed once, then kept)."""
        stems = self._stems
        try:
            return [stems[w] for w in words]
        except KeyError:
            new = [w for w in dict.fromkeys(words) if w not in stems]
            stems.update(zip(new, self._stemmer.stemWords(new), strict=True))
            return [stems[w] for w in words]

    def surfaces(self, text: str) -> dict[str, str]:
        """Each stem of `text` -> the first of its words with that stem."""
        return self.surfaces_of(words_of(text.lower()))

    def surfaces_of(self, words: list[str]) -> dict[str, str]:
        """`surfaces` of a text's words (`words_of` it, lowercased)."""
        return dict(zip(reversed(self.stems(words)), reversed(words), strict=True))


def phrase_pattern(phrases: Sequence[str]) -> re.Pattern[str] | None:
    """A case-insensitive whole-word pattern matching any of the phrases."""
    cleaned = [re.escape(" ".join(p.split())) for p in phrases if p.strip()]
    if not cleaned:
        return None
    words = "|".join(c.replace(r"\ ", r"[\s\-]+") for c in cleaned)
    return re.compile(rf"(?<!\w)(?:{words})(?!\w)", re.IGNORECASE)


def _case_twins() -> frozenset[str] | None:
    """Lower-case letters that a case-insensitive regex takes for another lower-case
    letter (the long s for "s", the Greek final sigma for the medial one, ...): where a
    text holds one, its words cannot be looked up as they are written. None if this
    Python does not say (its `re` module's private table): then no text beyond ASCII is."""
    try:
        from re._casefix import _EXTRA_CASES  # type: ignore[import-not-found]
    except ImportError:
        return None
    return frozenset(chr(c) for pair in _EXTRA_CASES.items()
                     for c in (pair[0], *pair[1]) if c > 127)


CASE_TWINS = _case_twins()  # a fact about this Python's `re`, the same for every text


class LoweredTexts:
    """Texts in lower case, also joined into one string: which of them hold a word is then
    found by one scan in C rather than a test of each text; and, made when first asked
    for, which texts hold each whole word.

    `word_index`: whether keyword rules may look words up in that index (worth it up to
    `RankParams.word_index_texts` texts) rather than scan. `case_twins`: the letters a
    case-insensitive match may take for others (`CASE_TWINS`; None: any beyond ASCII).
    """

    def __init__(self, texts: Sequence[str], words: Words | None = None, *,
                 word_index: bool = True, case_twins: frozenset[str] | None = CASE_TWINS):
        self.texts = list(texts)
        self.word_index = word_index
        self._case_twins = case_twins
        self._joined = "\x00".join(self.texts)
        self._starts = list(accumulate((len(t) + 1 for t in self.texts[:-1]), initial=0))
        self._words: dict[str, list[int]] | None = None
        self._twinned: list[int] | None = None
        self._forms: dict[str, list[str]] | None = None  # Snowball stem -> words
        # The corpus's tokenizer: its stems, and those it has already worked out.
        self._words_of_model = words or Words()

    def __len__(self) -> int:
        return len(self.texts)

    def is_twinned(self, text: str) -> bool:
        """Whether `text` holds a letter a case-insensitive match may take for another."""
        return not text.isascii() and (self._case_twins is None
                                       or not self._case_twins.isdisjoint(text))

    def holding(self, needle: str) -> list[int]:
        """The positions of the texts that contain `needle`, in order."""
        if not needle or "\x00" in needle:  # could match across two texts: test each
            return [i for i, text in enumerate(self.texts) if needle in text]
        found: list[int] = []
        joined, starts = self._joined, self._starts
        at = joined.find(needle)
        while at != -1:
            i = bisect_right(starts, at) - 1
            found.append(i)
            if i + 1 == len(starts):
                break
            at = joined.find(needle, starts[i + 1])  # on to the next text
        return found

    @property
    def twinned(self) -> list[int]:
        """The positions of the `is_twinned` texts: whether such a text mentions a word is
        for a case-insensitive match to say."""
        if self._twinned is None:
            self._twinned = [i for i, text in enumerate(self.texts) if self.is_twinned(text)]
        return self._twinned

    def forms(self, word: str) -> list[str]:
        """`word` (lower case), then the other words of these texts with its Snowball
        stem ("models", "modelling" for "model"), as the tf-idf model reads them: a keyword
        rule means the word in any form. Made when first asked for: each distinct word of
        the texts stemmed once."""
        stems = self._words_of_model.stems
        if self._forms is None:
            seen: set[str] = set()
            for text in self.texts:
                seen.update(_WORD.findall(text))
            words = sorted(seen)
            self._forms = {}
            for found, stem in zip(words, stems(words), strict=True):
                self._forms.setdefault(stem, []).append(found)
        others = self._forms.get(stems([word])[0], [])
        return [word, *(w for w in others if w != word)]

    def with_word(self, word: str) -> list[int]:
        """The positions of the texts, `twinned` ones aside, that hold `word` (a run of
        word characters in lower case) as a whole word, as it is written."""
        if self._words is None:
            self._words = {}
            twinned = set(self.twinned)
            for i, text in enumerate(self.texts):
                if i not in twinned:
                    for found in set(_WORD.findall(text)):
                        self._words.setdefault(found, []).append(i)
        return self._words.get(word, [])


def phrase_forms(texts: LoweredTexts, phrase: str, max_forms: int) -> list[str]:
    """The phrase (spaced, lower case) with each of its words in every form the texts hold
    (`LoweredTexts.forms`): "language model" is also "language models" and "languages
    modelling" where the texts say so. Words with signs in them ("gpt-4", "c++") stay as
    written; the written phrase comes first, and there are at most `max_forms`."""
    variants = [""]
    for token in phrase.split(" "):
        forms = texts.forms(token) if _WORD.fullmatch(token) else [token]
        grown = [f"{v} {f}" if v else f for v in variants for f in forms]
        variants = grown[:max_forms]
    return variants


def find_mentions(texts: LoweredTexts, phrases: Sequence[str]) -> np.ndarray:
    """A mask of the (lower-case) texts that mention any phrase as whole words."""
    hits = np.zeros(len(texts), dtype=bool)
    pattern = phrase_pattern(phrases)
    if pattern is None:
        return hits
    for phrase in phrases:
        spaced = " ".join(phrase.split())
        key = spaced.lower()
        if not key:
            continue
        first = _WORD.match(key)
        search: Sequence[int]
        if texts.is_twinned(key) or len(key) != len(spaced):
            search = range(len(texts))  # a case-insensitive match may differ in any text
        elif first is None or not texts.word_index:
            # A phrase beginning with a sign, or too many texts to index: the texts
            # holding its first word (and those a case-insensitive match may differ in).
            search = [*texts.holding(key.split()[0]), *texts.twinned]
        else:
            # The texts holding the phrase's first word as a whole word: a phrase of one
            # word is then found; other phrases, and texts where a case-insensitive match
            # may differ from the word as written, are confirmed by the regex.
            holding = texts.with_word(first.group())
            if first.end() == len(key):
                hits[holding] = True
                search = texts.twinned
            else:
                search = [*holding, *texts.twinned]
        for i in search:
            if not hits[i] and pattern.search(texts.texts[i]):
                hits[i] = True
    return hits


class Mentions:
    """Which texts mention keywords, each keyword's mask kept for the next profiles up to
    `cache_bytes` (profiles share keywords far more often than whole lists)."""

    def __init__(self, texts: LoweredTexts, *, cache_bytes: int, max_forms: int):
        self.texts = texts
        self.masks: dict[str, np.ndarray] = {}  # spaced lower-case keyword -> its mask
        self._cache_bytes = cache_bytes
        self._max_forms = max_forms

    def of(self, phrases: Sequence[str]) -> np.ndarray:
        """A read-only mask of the texts that mention any phrase as whole words, each word
        in any of its forms (`LoweredTexts.forms`)."""
        masks = []
        for phrase in phrases:
            key = " ".join(phrase.split()).lower()
            if not key:
                continue
            hits = self.masks.get(key)
            if hits is None:
                hits = find_mentions(self.texts, phrase_forms(self.texts, key, self._max_forms))
                hits.flags.writeable = False
                if (len(self.masks) + 1) * hits.nbytes <= self._cache_bytes:
                    self.masks[key] = hits
            masks.append(hits)
        if len(masks) == 1:
            return masks[0]
        either = (np.logical_or.reduce(masks) if masks
                  else np.zeros(len(self.texts), dtype=bool))
        either.flags.writeable = False
        return either
