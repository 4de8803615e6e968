"""Reasons: each pick's explanation in plain words and the section of the email it goes
in, from the evidence that chose it; the last step of ranking, turning chosen candidates
into `Pick` records.

A reason quotes only whole phrases: an interest as the paper writes it (`matches "State
Space Models"` for the interest "state space models"), whole words of the paper, a liked
paper's title, followed authors' names. Never a stem, never two words the paper does not
write side by side. A pick's section is what it serves most: an interest (headed as the
reader wrote it) or a liked paper ("Because you liked ..."); a liked paper is named once
per section, not on every pick.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from digest.identity import normalise_title
from digest.models import Pick
from digest.rank.corpus import Candidates, Corpus
from digest.rank.evidence import Scale
from digest.rank.plans import Plan
from digest.rank.queries import Key, QueryScores, candidate_key
from digest.rank.words import STOP_WORDS, TOKEN, Words

# The same with hyphenated words whole ("re-ranking" as "reranking"): a second reading, so
# that "passage reranking" is found in "passage re-ranking" and the other way round.
_COMPOUND = re.compile(r"\b(?=[\w-]*[^\W\d_])\w[\w]*(?:-\w+)+\b|\b(?=\w*[^\W\d_])\w\w+\b")
# What may stand between two words of a phrase as a paper writes it: spaces, a hyphen or a
# slash ("state-space models"); any other word or sign breaks the phrase.
_JOIN = re.compile(r"[\s\-/]+")
FOLLOWED_SECTION = "By authors you follow"


def liked_section(title: str) -> str:
    """The heading of the section of picks that serve a liked paper."""
    return f"Because you liked \u201c{_short(title)}\u201d"


@dataclass(frozen=True)
class _Tokens:
    """A text's words (stop words out) as the model reads them: each one's stem, where it
    is in the text, and the text."""

    stems: list[str]
    spans: list[tuple[int, int]]
    text: str


def _tokens(words: Words, text: str, *, compounds: bool = False) -> _Tokens:
    pattern = _COMPOUND if compounds else TOKEN
    found = [m for m in pattern.finditer(text.lower()) if m.group() not in STOP_WORDS]
    return _Tokens(words.stems([m.group().replace("-", "") for m in found]),
                   [m.span() for m in found], text)


class Phrases:
    """Where each pick holds each interest: the phrase as the pick writes it, or the
    interest's words it holds apart. Kept per set of candidates (their texts read once)."""

    def __init__(self) -> None:
        self._texts: dict[tuple[int, bool], _Tokens] = {}  # (position, compounds) -> words
        self._asked: dict[tuple[str, bool], tuple[_Tokens, list[str]]] = {}
        self._found: dict[tuple[int, str], tuple[str | None, tuple[str, ...]]] = {}
        self._typical: dict[Key, tuple[float, float]] = {}  # query -> its mean and spread

    def on_scale(self, bank: QueryScores, keys: Sequence[Key], scale: Scale,
                 positions: np.ndarray) -> np.ndarray:
        """The queries' scores of the candidates at `positions` on `scale` (as
        `Scale.own` puts them), a row per query: each query's typical score and spread
        worked out once for every profile that asks it."""
        missing = [k for k in dict.fromkeys(keys) if k not in self._typical]
        if missing:
            mean, spread = scale.typical(bank.scores[bank.columns(missing)])
            spread = np.maximum(spread, scale.min_spread)
            self._typical.update(zip(missing, zip(mean.tolist(), spread.tolist(),
                                                  strict=True), strict=True))
        typical = np.array([self._typical[k] for k in keys], dtype=np.float32)
        scores = bank.scores[bank.columns(keys)][:, positions].astype(np.float32)
        scaled: np.ndarray = np.maximum((scores - typical[:, :1]) / typical[:, 1:], 0)
        return scaled

    def find(self, words: Words, candidates: Candidates, position: int, phrase: str
             ) -> tuple[str | None, tuple[str, ...]]:
        """(The phrase as the paper writes it, or None; the phrase's words the paper holds,
        in the paper's own form, when it does not hold the phrase)."""
        key = (position, phrase)
        if key not in self._found:
            found = self._find(words, candidates, position, phrase, compounds=False)
            if found[0] is None and "-" in phrase + candidates.papers[position].text:
                joined = self._find(words, candidates, position, phrase, compounds=True)
                if joined[0] is not None:
                    found = joined
            self._found[key] = found
        return self._found[key]

    def _find(self, words: Words, candidates: Candidates, position: int, phrase: str, *,
              compounds: bool) -> tuple[str | None, tuple[str, ...]]:
        asked, joins = self._phrase(words, phrase, compounds)
        own = self._texts.get((position, compounds))
        if own is None:
            own = self._texts[(position, compounds)] = _tokens(
                words, candidates.papers[position].text, compounds=compounds)
        wanted = asked.stems
        if not wanted:
            return None, ()
        n = len(wanted)
        for i in range(len(own.stems) - n + 1):
            if own.stems[i:i + n] != wanted:
                continue
            gaps = [own.text[own.spans[i + j][1]:own.spans[i + j + 1][0]]
                    for j in range(n - 1)]
            if all(_JOIN.fullmatch(gap) or " ".join(gap.lower().split()) == join
                   for gap, join in zip(gaps, joins, strict=True)):
                return own.text[own.spans[i][0]:own.spans[i + n - 1][1]], ()
        held = []
        for stem in dict.fromkeys(wanted):
            if stem in own.stems:
                start, end = own.spans[own.stems.index(stem)]
                held.append(own.text[start:end])
        return None, tuple(held)

    def _phrase(self, words: Words, phrase: str, compounds: bool
                ) -> tuple[_Tokens, list[str]]:
        key = (phrase, compounds)
        if key not in self._asked:
            asked = _tokens(words, phrase, compounds=compounds)
            # What joins two of the phrase's words where the reader wrote stop words
            # between them ("learning to rank"): a paper may write the same.
            joins = [" ".join(phrase[asked.spans[j][1]:asked.spans[j + 1][0]].lower().split())
                     for j in range(len(asked.spans) - 1)]
            self._asked[key] = (asked, joins)
        return self._asked[key]


def _short(title: str, limit: int = 80) -> str:
    """The title, or as many of its whole words as fit in `limit` characters and "…"."""
    title = " ".join(title.split())
    if len(title) <= limit:
        return title
    return title[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,:;-") + "…"


def _plain(text: str) -> str:
    """A paper's words as a sentence shows them: capitalised words (a title's) in lower
    case, acronyms and names with capitals inside ("LLM", "BERTScore") as written."""
    return " ".join(w.lower() if w[:1].isupper() and w[1:] == w[1:].lower() else w
                    for w in text.split(" "))


def _quoted(phrases: Sequence[str]) -> str:
    quoted = [f"\u201c{_plain(p)}\u201d" for p in phrases]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _listed(words: Sequence[str]) -> str:
    words = [_plain(w) for w in words]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def make_picks(corpus: Corpus, candidates: Candidates, bank: QueryScores, plan: Plan,
               chosen: Sequence[int], score: np.ndarray, by_family: dict[str, np.ndarray],
               followed: frozenset[str], scale: Scale, phrases: Phrases,
               liked_embedded: np.ndarray | None) -> list[Pick]:
    """One profile's chosen candidates as picks, each with its score, its reason and its
    section."""
    prefs = plan.request.prefs
    profile = prefs.profile
    at = np.asarray(chosen, dtype=np.int64)
    liked_names = [p.title for p in prefs.liked] + list(prefs.liked_titles)
    # Each pick's score for each interest (a row each), on the scale the interests are
    # compared on; and, for a pick that came in through feedback, the feedback paper's.
    per_interest = None
    if "interests" in by_family and plan.interest_weights is not None and len(at):
        asked = np.concatenate([at, plan.feedback])
        per_interest = (phrases.on_scale(bank, plan.interests, scale, asked)
                        * plan.interest_weights[:, None])
        column = {int(p): c for c, p in enumerate(asked.tolist())}
    like_sims = feedback_sims = None
    if "liked" in by_family and len(at):
        # How much each pick resembles each liked paper, and each feedback candidate.
        like_sims = bank.scores[bank.columns(plan.liked)][:, at].T.astype(np.float32)
        feedback_keys = [candidate_key(corpus, candidates.papers[i])[0]
                         for i in plan.feedback.tolist()]
        feedback_sims = bank.scores[bank.columns(feedback_keys)][:, at].T.astype(np.float32)
        if liked_embedded is not None and candidates.embeddings is not None:
            like_sims = like_sims + candidates.embeddings[at] @ liked_embedded.T
        if candidates.embeddings is not None and len(plan.feedback):
            feedback_sims = feedback_sims + (candidates.embeddings[at]
                                             @ candidates.embeddings[plan.feedback].T)
        feedback_sims[at[:, None] == plan.feedback[None, :]] = -np.inf  # not like itself

    family = {name: values[at].tolist() for name, values in by_family.items()}
    closest: list[str | None] = [None] * len(at)  # the liked paper each pick is most like
    through: list[int | None] = [None] * len(at)  # or the feedback paper it came in by
    if like_sims is not None and feedback_sims is not None and len(at):
        best_liked = (like_sims.argmax(axis=1) if like_sims.shape[1]
                      else np.zeros(len(at), dtype=np.int64)).tolist()
        alike = like_sims.max(axis=1, initial=0.0).tolist()
        via = feedback_sims.max(axis=1, initial=0.0).tolist()
        by_feedback = (plan.feedback[feedback_sims.argmax(axis=1)].tolist()
                       if feedback_sims.shape[1] else [])
        for k in range(len(at)):
            if liked_names and alike[k] > 0:
                closest[k] = liked_names[best_liked[k]]
            elif via[k] > 0:
                through[k] = by_feedback[k]
    classifier_reason = (f"learned from your {len(prefs.liked)} liked and "
                         f"{len(prefs.disliked)} disliked papers")
    author_display = {normalise_title(a): a for a in profile.authors}
    words = corpus.words
    named: set[tuple[str, str]] = set()  # (section, liked title) said once per section
    picks: list[Pick] = []
    for k, (i, value) in enumerate(zip(chosen, score[at].tolist(), strict=True)):
        reasons: list[str] = []
        by = sorted(candidates.authors[i] & followed) if followed else ()
        if by:
            reasons.append("by " + ", ".join(author_display[a] for a in by))
        # The interests it serves, best first: those it holds as phrases are quoted as
        # the paper writes them; the best one's words it holds apart, as words.
        best_interest: str | None = None
        best_held: str | None = None  # the best interest it holds as a phrase
        held: list[str] = []
        apart: tuple[str, ...] = ()
        if per_interest is not None and words is not None:
            scores = per_interest[:, k]
            for index in np.argsort(-scores, kind="stable").tolist():
                if scores[index] <= 0:
                    break
                text = profile.interests[index].text
                best_interest = best_interest or text
                found, scattered = phrases.find(words, candidates, i, text)
                if found is not None:
                    held.append(found)
                    best_held = best_held or text
                elif not apart and not held:
                    apart = scattered
        told: list[tuple[float, str]] = []
        if held:
            told.append((family["interests"][k],
                         "matches " + _quoted(held[:corpus.params.reason_terms])))
        elif apart:
            told.append((family["interests"][k], "mentions " + _listed(list(apart))))
        liked_weight = family["liked"][k] if "liked" in family else 0.0
        interest_weight = family["interests"][k] if "interests" in family else 0.0
        if by:
            section = FOLLOWED_SECTION
        elif closest[k] is not None and (best_interest is None
                                         or liked_weight > interest_weight):
            section = liked_section(closest[k] or "")
        elif best_interest is not None:
            section = best_held or best_interest
        elif through[k] is not None and per_interest is not None:
            # Came in through feedback: it joins the section of the paper it resembles.
            resembled = per_interest[:, column[through[k] or 0]]
            section = (profile.interests[int(resembled.argmax())].text
                       if resembled.max() > 0 else "")
        elif through[k] is not None and liked_names:
            # Through feedback from the liked papers: the section of the one closest to
            # the paper it resembles.
            to_liked = bank.scores[bank.columns(plan.liked), through[k]]
            section = liked_section(liked_names[int(to_liked.argmax())])
        else:
            section = ""
        liked = closest[k]
        if liked is not None and section != liked_section(liked) and liked_weight > 0:
            if (section, liked) not in named:
                named.add((section, liked))
                told.append((liked_weight, f"like \u201c{_short(liked)}\u201d"))
        elif through[k] is not None and not held and not apart:
            told.append((liked_weight, "close to other papers on this topic"))
        if "classifier" in family:
            told.append((family["classifier"][k], classifier_reason))
        if len(told) > 1:
            told.sort(key=lambda r: -r[0])
        reasons += [text for weight, text in told if weight > 0]
        if not reasons and section.startswith("Because you liked"):
            reasons.append("close to the paper you liked")
        picks.append(Pick(candidates.papers[i], round(value, 4),
                          "; ".join(reasons) or "related to your profile", section))
    return picks
