"""Reasons: each pick's explanation in words ("matches: dense retrieval", "like: ...",
"similar to: ...", "by ...", "learned from ..."), from the evidence that chose it; the
last step of ranking, turning chosen candidates into `Pick` records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from digest.identity import normalise_title
from digest.models import Pick
from digest.rank.corpus import Candidates, Corpus, spans
from digest.rank.plans import Plan
from digest.rank.queries import QueryScores, candidate_key
from digest.rank.words import words_of

# A candidate's position -> its own word for each stem it holds, and its words.
Surfaces = dict[int, tuple[dict[str, str], frozenset[str]]]


def matched_terms(corpus: Corpus, candidates: Candidates, surfaces: Surfaces,
                  asks: Sequence[tuple[Sequence[str], np.ndarray, Sequence[int]]]
                  ) -> list[list[list[str]]]:
    """For each ask (interest phrases, their weights, chosen candidates), for each chosen
    candidate: the terms of its row that contribute most to its match with the phrases'
    weighted query (looked up for every ask's picks at once), in the pick's words
    (`surfaces`: those of the candidates met so far, kept for the next asks).

    Two words that both match and form one of the query's phrases are named as that
    phrase ("dense retrieval", not "dense, retrieval").
    """
    if not asks:
        return []
    n_terms = len(corpus.terms)
    # Each ask's query: its phrases' rows times their weights, summed in float32 row after
    # row; a cell is (ask, term).
    queries = corpus.transform([text for texts, _, _ in asks for text in texts])
    asking = np.repeat(np.arange(len(asks)), [len(texts) for texts, _, _ in asks])  # by row
    cells, where = np.unique(asking[queries.rows] * n_terms + queries.terms,
                             return_inverse=True)
    summed = np.zeros(len(cells), dtype=np.float32)
    row_weights = np.concatenate([weights for _, weights, _ in asks])
    np.add.at(summed, where, queries.values * row_weights[queries.rows])
    cells, summed = cells[summed != 0], summed[summed != 0]

    matrix = candidates.matrix
    positions = np.fromiter((i for _, _, chosen in asks for i in chosen), dtype=np.int64)
    asker = np.repeat(np.arange(len(asks)), [len(chosen) for _, _, chosen in asks])
    starts, ends = matrix.indptr[positions], matrix.indptr[positions + 1]
    entries = spans(starts, ends)
    terms = matrix.indices[entries]
    owner = np.repeat(np.arange(len(positions)), ends - starts)
    # Only the entries of terms some query has can match: the rest (most) go first.
    queried = np.zeros(n_terms, dtype=bool)
    queried[cells % n_terms] = True
    useful = queried[terms]
    entries, terms, owner = entries[useful], terms[useful], owner[useful]
    wanted = asker[owner] * n_terms + terms
    found = np.minimum(np.searchsorted(cells, wanted), max(len(cells) - 1, 0))
    value = (np.where(cells[found] == wanted, summed[found], np.float32(0)) if len(cells)
             else np.zeros(len(wanted), dtype=np.float32))
    contribution = matrix.data[entries] * value
    keep = contribution > 0
    terms, contribution, owner = terms[keep], contribution[keep], owner[keep]
    order = np.lexsort((-contribution, owner))  # by pick, then best first
    terms, owner = terms[order], owner[order]
    bounds = np.searchsorted(owner, np.arange(len(positions) + 1)).tolist()
    names = corpus.terms[terms].tolist()
    phrase_terms = [str(t) for t in corpus.terms[cells % n_terms]]
    phrase_bounds = np.searchsorted(cells // n_terms, np.arange(len(asks) + 1)).tolist()
    named: list[list[list[str]]] = []
    pick = 0
    for j, (texts, _, chosen) in enumerate(asks):
        phrases: dict[str, list[tuple[str, list[str]]]] = {}  # word -> the phrases with it
        for t in phrase_terms[phrase_bounds[j]:phrase_bounds[j + 1]]:
            if " " in t:
                words = t.split()
                for word in dict.fromkeys(words):
                    phrases.setdefault(word, []).append((t, words))
        said = [_name_terms(names[bounds[k]:bounds[k + 1]], phrases,
                            corpus.params.reason_terms)
                for k in range(pick, pick + len(chosen))]
        named.append(_in_their_words(corpus, candidates, surfaces, texts, chosen, said))
        pick += len(chosen)
    return named


def _in_their_words(corpus: Corpus, candidates: Candidates, surfaces: Surfaces,
                    phrases: Sequence[str], chosen: Sequence[int], said: list[list[str]]
                    ) -> list[list[str]]:
    """Each pick's matched terms (stems) in words: the phrase's word where the pick has that
    very word, else the pick's own ("robot" where the profile asked for "robots", "contrast"
    and not "contrastive" when a paper says "in contrast"). Every word of a matched term is
    in the pick and in some phrase."""
    if corpus.words is None or not any(said):
        return said
    asked: dict[str, str] = {}
    for phrase in reversed(phrases):  # the first phrase with a stem names it
        asked.update(corpus.words.surfaces(phrase))
    shown: list[list[str]] = []
    for position, terms in zip(chosen, said, strict=True):
        if not terms:
            shown.append(terms)
            continue
        own = surfaces.get(position)
        if own is None:
            words = words_of(candidates.papers[position].text.lower())
            own = surfaces[position] = (corpus.words.surfaces_of(words), frozenset(words))
        shown.append([_word(t, asked, *own) if " " not in t else
                      " ".join([_word(w, asked, *own) for w in t.split()]) for t in terms])
    return shown


def _word(stem: str, asked: Mapping[str, str], surface: Mapping[str, str],
          words: frozenset[str]) -> str:
    """A stem in the phrases' word for it (`asked`) if the pick has that very word, else in
    the pick's own (`surface`; `words`: every word of the pick)."""
    wanted = asked.get(stem)
    return wanted if wanted in words else surface.get(stem, stem)


def _name_terms(matched: list[str], phrases: Mapping[str, Sequence[tuple[str, list[str]]]],
                most: int) -> list[str]:
    """The first `most` matched terms, a word named by the query phrase (with its words)
    that it forms with other matched words: the first of the phrases with it
    (`phrases[word]`, each with its words) whose words all matched."""
    present = set(matched)
    chosen: list[str] = []
    said: set[str] = set()  # the chosen terms, and the words of each
    for term in matched:
        if " " not in term and phrases:
            whole = next((p for p, words in phrases.get(term, ())
                          if all(w in present for w in words)), None)
            term = whole or term
        if term in said:
            continue  # already said, alone or inside a phrase
        chosen.append(term)
        if len(chosen) == most:
            break
        said.add(term)
        said.update(term.split())
    return chosen


def _short(title: str, limit: int = 80) -> str:
    return title if len(title) <= limit else title[: limit - 1].rstrip() + "…"


def make_picks(corpus: Corpus, candidates: Candidates, bank: QueryScores, plan: Plan,
               chosen: Sequence[int], score: np.ndarray, by_family: dict[str, np.ndarray],
               followed: frozenset[str], matched: list[list[str]] | None,
               liked_embedded: np.ndarray | None) -> list[Pick]:
    """One profile's chosen candidates as picks, each with its score and reasons
    (`matched`: each pick's `matched_terms`, when its interests count)."""
    prefs = plan.request.prefs
    at = np.asarray(chosen, dtype=np.int64)
    liked_names = [p.title for p in prefs.liked] + list(prefs.liked_titles)
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

    # Each pick's figures, taken out of the arrays at once.
    family = {name: values[at].tolist() for name, values in by_family.items()}
    nearest: list[str | None] = []  # each pick's reason for resembling a paper
    if like_sims is not None and feedback_sims is not None and len(at):
        closest = (like_sims.argmax(axis=1) if like_sims.shape[1]
                   else np.zeros(len(at), dtype=np.int64)).tolist()
        alike = like_sims.max(axis=1, initial=0.0).tolist()
        via = feedback_sims.max(axis=1, initial=0.0).tolist()
        through = (plan.feedback[feedback_sims.argmax(axis=1)].tolist()
                   if feedback_sims.shape[1] else [])
        for k in range(len(at)):
            # Nothing in common with a liked paper (or none liked): it came in through
            # feedback, by resembling a pick that is like them; name that pick.
            if alike[k] <= 0 < via[k]:
                nearest.append(f"similar to: {_short(candidates.papers[through[k]].title)}")
            else:
                nearest.append(f"like: {_short(liked_names[closest[k]])}" if liked_names
                               else None)
    classifier_reason = (f"learned from your {len(prefs.liked)} liked and "
                         f"{len(prefs.disliked)} disliked papers")
    author_display = {normalise_title(a): a for a in prefs.profile.authors}
    picks: list[Pick] = []
    for k, (i, value) in enumerate(zip(chosen, score[at].tolist(), strict=True)):
        reasons: list[str] = []
        by = sorted(candidates.authors[i] & followed) if followed else ()
        if by:
            reasons.append("by " + ", ".join(author_display[a] for a in by))
        told: list[tuple[float, str]] = []
        terms = matched[k] if matched is not None else []
        if terms:
            told.append((family["interests"][k], "matches: " + ", ".join(terms)))
        # With no liked papers, feedback widens the interests: a pick that matches them
        # says so; one that matches none names the pick it resembles.
        resembles = nearest[k] if nearest else None
        if resembles is not None and (liked_names or not terms):
            told.append((family["liked"][k], resembles))
        if "classifier" in family:
            told.append((family["classifier"][k], classifier_reason))
        if len(told) > 1:
            told.sort(key=lambda r: -r[0])
        reasons += [text for weight, text in told if weight > 0]
        picks.append(Pick(candidates.papers[i], round(value, 4),
                          "; ".join(reasons) or "related to your profile"))
    return picks
