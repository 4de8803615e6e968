"""Profiles: one YAML file per subscriber, read into `Profile` records.

This module owns profile files. Errors name `file:line: field: problem`; a broken file is
reported and skipped so that the other subscribers are still served.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import fcntl
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import available_timezones

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    NodeEvent,
)
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, ScalarString
from ruamel.yaml.tokens import CommentToken

from digest.errors import InputError, ProfileError
from digest.identity import check_email, normalise_title, parse_arxiv_id, parse_doi
from digest.ingest.files import decode_text
from digest.models import MAX_PAPERS, Interest, Paper, Problem, Profile
from digest.progress import counted
from digest.reading import read_regular_file
from digest.schedule import load_timezone, parse_schedule

if TYPE_CHECKING:
    from digest.profilecache import ProfileCache

PROFILE_SUFFIXES = (".yaml", ".yml")
# The commented profile `digest init` writes as profiles/example.yaml, and the form of every
# profile `digest profile new` and `digest profile import-csv` write: one file, valid as it is.
PROFILE_TEMPLATE = Path(__file__).parent / "data" / "example-profile.yaml"

# What one profile may hold (docs/limits.md). A profile is written by a person, and every
# file in the profiles folder is read on every run, so each is bounded: a file bigger than
# anyone writes by hand, or YAML aliases that expand into millions of values, is refused
# with its reason instead of costing the other subscribers their editions.
MAX_PROFILE_BYTES = 1024 * 1024
MAX_YAML_VALUES = 20_000  # every key, value and list item, aliases expanded
MAX_YAML_DEPTH = 16  # lists and mappings inside each other; a profile needs 3
MAX_INTERESTS = 200
MAX_TERMS = 200  # each of keywords.require, keywords.mute, avoid
MAX_AUTHORS = 500
MAX_PAPER_REFERENCES = 5_000  # each of liked, disliked: a whole reference library fits
_SUBSCRIBER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

SubscriberId = Annotated[str, StringConstraints(pattern=_SUBSCRIBER_ID.pattern)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


Terms = Annotated[list[Text], Field(max_length=MAX_TERMS)]


class _Keywords(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    require: Terms = []
    mute: Terms = []

    @field_validator("require", "mute", mode="before")
    @classmethod
    def _empty_list(cls, value: Any) -> Any:
        return [] if value is None else value


class _Interest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    text: Text
    weight: float = Field(default=1.0, ge=0, le=100)

    @field_validator("weight", mode="before")
    @classmethod
    def _int_weight(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class ProfileFile(BaseModel):
    """The schema of a profile file, as people write it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # The ledger keeps editions under this id; default: the file name without extension.
    # Set it to keep a subscriber's history when the file is renamed.
    id: SubscriberId | None = None
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    email: str
    timezone: str = "UTC"
    schedule: str = "daily 07:00"
    max_papers: int | None = Field(default=None, ge=1, le=MAX_PAPERS)
    interests: Annotated[list[Text | _Interest], Field(max_length=MAX_INTERESTS)] = []
    keywords: _Keywords = _Keywords()
    avoid: Terms = []
    authors: Annotated[list[Text], Field(max_length=MAX_AUTHORS)] = []
    liked: Annotated[list[Text], Field(max_length=MAX_PAPER_REFERENCES)] = []
    disliked: Annotated[list[Text], Field(max_length=MAX_PAPER_REFERENCES)] = []
    active: bool = True
    min_score: float = Field(default=0.0, ge=-5, le=50)
    when_nothing: Literal["skip", "note"] = "skip"
    # Until there are 5 liked and 5 disliked papers, each email ends with a few papers to
    # rate (false: never; docs/ranking.md measures what it brings and costs).
    ask_ratings: bool = True

    @field_validator("min_score", mode="before")
    @classmethod
    def _int_score(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("interests", "avoid", "authors", "liked", "disliked", mode="before")
    @classmethod
    def _empty_list(cls, value: Any) -> Any:
        # `liked:` with nothing after it is null in YAML: people mean an empty list.
        return [] if value is None else value

    @field_validator("keywords", mode="before")
    @classmethod
    def _empty_table(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("name")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(ch in value for ch in "\r\n") or not value.isprintable():
            raise ValueError("must be one line of printable text")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return check_email(value.strip())

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        load_timezone(value)
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value


def _plain(node: Any) -> Any:
    """ruamel's round-trip containers as plain dicts and lists, for strict validation."""
    if isinstance(node, CommentedMap):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, CommentedSeq):
        return [_plain(v) for v in node]
    if isinstance(node, str):
        return str(node)  # ruamel's scalar string subclasses become str
    return node


def _line_of(root: Any, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at `loc`, or of its nearest ancestor."""
    node, line = root, None
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
            node = node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line = node.lc.item(part)[0] + 1
            node = node[part]
        else:
            break
    return line


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """The path to the value, without the union member names pydantic puts in it."""
    return tuple(p for p in loc if p not in ("str", "constrained-str", "_Interest")
                 and not str(p).startswith("function-"))


def _field_name(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) if isinstance(p, str) else f"[{p}]" for p in _clean_loc(loc)]
    return ".".join(parts).replace(".[", "[")


def parse_profile(text: str, path: Path, *, default_max_papers: int = 10,
                  strict_id: bool = True) -> Profile:
    """Parse the text of a profile file. Raises ProfileError naming line and field: the
    first problem, saying how many more there are (`check_profile_text` gives each).

    With `strict_id` off (ranking only, nothing recorded) any file name will do.
    """
    data = _parse_file(text, path)
    subscriber_id = data.id or path.stem
    if strict_id and not _SUBSCRIBER_ID.match(subscriber_id):
        raise _bad_file_name(path)
    return _profile_of(data, path, subscriber_id, default_max_papers)


def _bad_file_name(path: Path) -> ProfileError:
    return ProfileError(path, "the file name is the subscriber id, so it must be letters, "
                              "digits, '.', '_' or '-' (or set `id:` in the file)")


def _profile_of(data: ProfileFile, path: Path, subscriber_id: str,
                default_max_papers: int) -> Profile:
    return Profile(
        subscriber_id=subscriber_id,
        path=path,
        name=data.name,
        email=data.email,
        timezone=data.timezone,
        schedule=data.schedule,
        max_papers=data.max_papers or default_max_papers,
        interests=tuple(
            Interest(i, 1.0) if isinstance(i, str) else Interest(i.text, i.weight)
            for i in data.interests
        ),
        require=tuple(data.keywords.require),
        mute=tuple(data.keywords.mute),
        avoid=tuple(data.avoid),
        authors=tuple(data.authors),
        liked=tuple(data.liked),
        disliked=tuple(data.disliked),
        active=data.active,
        min_score=data.min_score,
        when_nothing=data.when_nothing,
        ask_ratings=data.ask_ratings,
    )


def _parse_file(text: str, path: Path) -> ProfileFile:
    """The fields of a profile file as written (no defaults filled in from settings).
    Raises the first problem as ProfileError, saying how many more there are."""
    data, problems = _fields_of(text, path)
    if data is None:
        raise _first_of(problems)
    return data


def _fields_of(text: str, path: Path) -> tuple[ProfileFile | None, list[ProfileError]]:
    """The fields of a profile's text, or every problem in it, in the order of its lines.
    Text past a bound, or that is not YAML, has one problem: nothing after it is read."""
    if len(text) > MAX_PROFILE_BYTES:
        return None, [ProfileError(path, f"larger than {MAX_PROFILE_BYTES // 1024:,} KiB, too "
                                         "large for a profile file")]
    try:
        _check_structure(text, path)
        data = _validate_fast(text)
        if data is not None:
            return data, []
        root = _load_located(text, path)
    except ProfileError as exc:
        return None, [exc]
    try:
        return ProfileFile.model_validate(_plain(root)), []
    except ValidationError as exc:
        return None, _located_problems(exc, root, path)


def _first_of(problems: Sequence[ProfileError]) -> ProfileError:
    """The first problem, in one line that says how many more there are."""
    first = problems[0]
    if len(problems) == 1:
        return first
    reason = first.reason.removeprefix(f"{first.field}: ") if first.field else first.reason
    more = counted(len(problems) - 1, "more problem")
    return ProfileError(first.path, f"{reason} (and {more}: `digest profile validate` lists "
                                    "them)", line=first.line, field=first.field)


def _chosen_errors(exc: ValidationError) -> list[ErrorDetails]:
    """The errors of a validation that concern what the person wrote: of a union's
    alternatives (an interest is a text or a mapping), only the one that got furthest,
    which is what the person meant, with each of its errors."""
    groups: dict[tuple[int | str, ...], list[ErrorDetails]] = {}
    for error in exc.errors():
        loc = _clean_loc(tuple(error["loc"]))
        cut = next((i + 1 for i, part in enumerate(loc) if isinstance(part, int)), len(loc))
        groups.setdefault(loc[:cut], []).append(error)
    chosen: list[ErrorDetails] = []
    for errors in groups.values():
        member = _member(max(errors, key=lambda e: len(e["loc"])))
        chosen += [e for e in errors if _member(e) == member]
    return chosen


def _member(error: ErrorDetails) -> tuple[int | str, ...]:
    """The union alternative an error is about: the parts of its location that name one."""
    kept = set(_clean_loc(tuple(error["loc"])))
    return tuple(p for p in error["loc"] if p not in kept)


def _located_problems(exc: ValidationError, root: Any, path: Path) -> list[ProfileError]:
    """Every problem of a validation, each at the line of its value, in line order."""
    problems = []
    for error in _chosen_errors(exc):
        loc = _clean_loc(tuple(error["loc"]))
        message = _problem(error)
        if error["type"] == "too_long" and "ctx" in error:
            message += "; see docs/limits.md"
        problems.append(ProfileError(path, message, line=_line_of(root, loc) or 1,
                                     field=_field_name(loc)))
    return sorted(problems, key=lambda p: p.line or 0)


def _problem(error: ErrorDetails) -> str:
    """What is wrong with one value, in the words `digest profile validate` uses, with the
    nearest right key or value where one is close."""
    message = error["msg"].removeprefix("Value error, ")
    loc = _clean_loc(tuple(error["loc"]))
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        message = _unknown_key(loc)
    elif error["type"] == "too_long" and "ctx" in error:
        message = (f"at most {error['ctx']['max_length']:,} entries (this list has "
                   f"{error['ctx']['actual_length']:,})")
    elif error["type"] == "missing":
        message = "required field is missing"
    elif error["type"] == "literal_error" and isinstance(value, str):
        near = closest(value, re.findall(r"'([^']*)'", str(error.get("ctx", {}).get(
            "expected", ""))), cutoff=0.6)
        message += f"; did you mean `{near}`?" if near else ""
    elif error["type"] == "bool_type":
        message += " (true or false)"
    elif loc == ("timezone",) and isinstance(value, str):
        message = _unknown_zone(value) or message
    elif loc == ("schedule",) and isinstance(value, str):
        near = _nearest_schedule(value)
        message = f"bad schedule {value!r}; did you mean `{near}`?" if near else message
    return message


def closest(word: str, choices: Iterable[str], *, cutoff: float = 0.75) -> str | None:
    """The choice nearest `word`, case aside, if one is close (difflib's ratio at least
    `cutoff`): the "did you mean" of a misspelled key or value."""
    folded: dict[str, str] = {}
    for choice in choices:
        folded.setdefault(choice.casefold(), choice)
    found = difflib.get_close_matches(word.casefold(), folded, n=1, cutoff=cutoff)
    return folded[found[0]] if found else None


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    """`unknown field`, and the known key it is nearest, or the keys known there."""
    parent, key = loc[:-1], str(loc[-1])
    if parent == ():
        known = list(ProfileFile.model_fields)
        if key.casefold() in _Keywords.model_fields:  # `mute:` written at the top
            return (f"unknown field; did you mean `keywords.{key.casefold()}`? (require and "
                    "mute go under `keywords:`)")
    elif parent == ("keywords",):
        known = list(_Keywords.model_fields)
    elif len(parent) == 2 and parent[0] == "interests":
        known = list(_Interest.model_fields)
    else:
        return "unknown field"
    near = closest(key, known)
    if near is not None:
        return f"unknown field; did you mean `{near}`?"
    return f"unknown field (the fields here: {', '.join(known)})"


_OFFSET = re.compile(r"^(utc|gmt)\s*[+-]\s*\d", re.IGNORECASE)


def _unknown_zone(name: str) -> str | None:
    """Why a time zone is refused, with the zone it nearly names; None if none is near."""
    if _OFFSET.match(name.strip()):
        return (f"unknown time zone {name!r}: an offset is not a zone; use the zone of a city "
                "(Europe/Berlin), which follows its summer time")
    near = _nearest_zone(name)
    return f"unknown time zone {name!r}; did you mean `{near}`?" if near else None


def _nearest_zone(name: str) -> str | None:
    """The IANA zone a misspelled or bare name means: `europe/lisbn`, `Lisbon` and
    `new york` all name one. Abbreviations (CEST, PST) and offsets are too ambiguous."""
    key = "_".join(name.split()).casefold()
    zones = sorted(z for z in available_timezones() if "/" in z and not z.startswith("Etc/"))
    by_name = {z.casefold(): z for z in zones}
    by_city: dict[str, str] = {}
    for zone in zones:
        by_city.setdefault(zone.rpartition("/")[2].casefold(), zone)  # the main zone first
    if key in by_name:
        return by_name[key]
    if key in by_city:
        return by_city[key]
    if len(key) < 5:
        return None
    near = closest(key, by_name, cutoff=0.85) if "/" in key else closest(key, by_city)
    return (by_name if "/" in key else by_city)[near] if near else None


_SCHEDULE_WORDS = ("daily", "weekdays", "weekly", "every")
_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_CLOCK = re.compile(r"(?P<hour>\d{1,2})(?:[:.h](?P<minute>\d{2}))?\s*(?:(?P<half>[ap])\.?m?\.?)?",
                    re.IGNORECASE)


def _nearest_schedule(text: str) -> str | None:
    """A schedule that parses, nearest a refused one: its keyword or day spelled right
    (`daly 07:00`, `weekly mnday 07:00`), a clock time made HH:MM (`7am`, `7.30 pm`)."""
    words = [w for w in text.split() if w.casefold() != "at"]
    if not words or words[0].isdigit() or words[0] == "*":
        return None  # cron: no guessing at what it meant
    words[0] = closest(words[0], _SCHEDULE_WORDS, cutoff=0.8) or words[0]
    keyword = words[0].casefold()
    if keyword in ("daily", "weekdays") and len(words) == 1:
        words.append("07:00")
    if keyword == "weekly" and len(words) >= 2:
        words[1] = closest(words[1], (*_DAY_NAMES, *(d[:3] for d in _DAY_NAMES)),
                           cutoff=0.6) or words[1]
    if keyword != "every" and len(words) > 1:
        start = 2 if keyword == "weekly" else 1
        clock = _clock(" ".join(words[start:]))
        if clock is not None:
            words[start:] = [clock]
    suggestion = " ".join(words)
    if suggestion == " ".join(text.split()):
        return None
    try:
        parse_schedule(suggestion)
    except ValueError:
        return None
    return suggestion


def _clock(text: str) -> str | None:
    """`7am`, `7:30 pm`, `19.30`, `7h30` as HH:MM; None if it is no time of day."""
    match = _CLOCK.fullmatch(text.strip())
    if match is None:
        return None
    hour, minute = int(match["hour"]), int(match["minute"] or 0)
    if match["half"]:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if match["half"].casefold() == "p" else 0)
    if hour > 23 or minute > 59:
        return None
    return f"{hour:02d}:{minute:02d}"


_loaders = threading.local()


def _safe_loader() -> YAML:
    """This thread's C-backed safe loader, made once: making one costs more than a load."""
    loader = getattr(_loaders, "safe", None)
    if loader is None:
        loader = _loaders.safe = YAML(typ="safe")
    return loader


def _check_structure(text: str, path: Path) -> None:
    """Refuse YAML that would cost far more to load than its size suggests: nesting
    deeper than MAX_YAML_DEPTH (the YAML libraries recurse, and crash or run out of stack),
    or aliases that expand to more than MAX_YAML_VALUES values (a "billion laughs": a few
    lines standing for billions of strings) or into themselves.

    Reads the event stream once, stopping at the first excess; costs about a quarter of
    a load. Text that is not valid YAML is left for the located parse to report.
    """
    values = 0
    open_at: list[tuple[str | None, int]] = []  # collections not yet closed: anchor, start
    sizes: dict[str, int] = {}  # each anchor's value, counted with its aliases expanded
    try:
        for event in _safe_loader().parse(text):
            if not isinstance(event, NodeEvent | CollectionEndEvent):
                continue
            line = event.start_mark.line + 1 if event.start_mark is not None else None
            if isinstance(event, AliasEvent):
                name = str(event.anchor)
                if any(anchor == name for anchor, _ in open_at):
                    raise ProfileError(path, f"the alias *{name} is inside the value it "
                                             "names, which would never end", line=line)
                values += sizes.get(name, 1)
            elif isinstance(event, CollectionStartEvent):
                open_at.append((event.anchor, values))
                values += 1
                if len(open_at) > MAX_YAML_DEPTH:
                    raise ProfileError(path, f"lists and mappings nested more than "
                                             f"{MAX_YAML_DEPTH} deep", line=line)
            elif isinstance(event, CollectionEndEvent):
                anchor, start = open_at.pop()
                if anchor is not None:
                    sizes[str(anchor)] = values - start
            else:  # a scalar
                values += 1
                if event.anchor is not None:
                    sizes[str(event.anchor)] = 1
            if values > MAX_YAML_VALUES:
                raise ProfileError(path, f"more than {MAX_YAML_VALUES:,} values once YAML "
                                         "aliases are expanded; write the values out "
                                         "instead", line=line)
    except YAMLError:
        return


def _validate_fast(text: str) -> ProfileFile | None:
    """The common case, quickly: the C loader (ruamel.yaml.clib) and no line bookkeeping.
    None if anything is wrong; the slow path then finds where."""
    try:
        data = _safe_loader().load(text)
        return ProfileFile.model_validate(data) if isinstance(data, dict) else None
    except (YAMLError, ValidationError, ValueError):
        return None


def _load_located(text: str, path: Path) -> CommentedMap:
    """The profile's YAML with line numbers; raises ProfileError if it is not a mapping."""
    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = f"not valid YAML: {exc.problem or exc.context}"
        if exc.context and exc.context_mark is not None and exc.problem:
            reason += f" ({exc.context}, line {exc.context_mark.line + 1})"
        raise ProfileError(path, reason, line=line) from exc
    except YAMLError as exc:
        raise ProfileError(path, f"not valid YAML: {exc}") from exc
    if root is None:
        raise ProfileError(path, "empty profile (it needs at least name and email)")
    if not isinstance(root, CommentedMap):
        raise ProfileError(path, "a profile is a mapping of keys (name:, email:, ...)", line=1)
    return root


def _read_profile(path: Path) -> bytes:
    return read_regular_file(path, MAX_PROFILE_BYTES, kind="profile file", error=ProfileError)


def _decode_profile(data: bytes, path: Path) -> str:
    """UTF-8 text (a BOM is dropped); raises ProfileError at the line of the first bad
    byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[:exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ProfileError(path, f"not UTF-8 text: byte 0x{data[exc.start]:02x} at column "
                                 f"{column} (save the file as UTF-8)", line=line) from exc


def load_profile(path: Path, *, default_max_papers: int = 10,
                 strict_id: bool = True) -> Profile:
    """Read and parse one profile file. Raises ProfileError."""
    text = _decode_profile(_read_profile(path), path)
    return parse_profile(text, path, default_max_papers=default_max_papers,
                         strict_id=strict_id)


def load_profile_file(path: Path) -> ProfileFile:
    """Read one profile file's fields as written: `max_papers` is None where the file has
    none, interests keep their form. For showing a profile to be edited; raises
    ProfileError."""
    return _parse_file(_decode_profile(_read_profile(path), path), path)


@dataclass(frozen=True)
class ProfileSet:
    """The profiles that loaded, and the errors of those that did not."""

    profiles: tuple[Profile, ...]
    errors: tuple[ProfileError, ...]


def profile_paths(folder: Path) -> list[Path]:
    """The profile files in a folder, sorted; hidden and backup files are ignored."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.suffix in PROFILE_SUFFIXES and not p.name.startswith((".", "_")))


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:
        return None  # reading it says what is wrong


def load_profiles(paths: Iterable[Path], *, default_max_papers: int = 10,
                  for_sending: bool = True, cache: ProfileCache | None = None) -> ProfileSet:
    """Load every profile it can; a broken one becomes an error value, not an exception.

    For sending, subscriber ids must be valid and distinct (the ledger is keyed by them);
    for ranking alone they need not be. With `cache` (made for the same default_max_papers),
    unchanged files are not parsed again. It holds only profiles that sending accepts,
    which ranking accepts too: one parsed for ranking alone is kept only if its id is valid.
    """
    paths = list(paths)
    cached = cache.get(paths) if cache is not None else {}
    parsed: list[tuple[Profile, os.stat_result, int]] = []
    profiles: list[Profile] = []
    errors: list[ProfileError] = []
    seen: dict[str, Path] = {}
    for path in paths:
        profile = cached.get(path)
        if profile is None:
            seen_ns = time.time_ns()
            stat = _stat(path) if cache is not None else None  # taken before reading
            try:
                profile = load_profile(path, default_max_papers=default_max_papers,
                                       strict_id=for_sending)
            except ProfileError as exc:
                errors.append(exc)
                continue
            if stat is not None and (for_sending
                                     or _SUBSCRIBER_ID.match(profile.subscriber_id)):
                parsed.append((profile, stat, seen_ns))
        if for_sending and profile.subscriber_id in seen:
            errors.append(_same_id(path, profile.subscriber_id, seen[profile.subscriber_id]))
            continue
        seen[profile.subscriber_id] = path
        profiles.append(profile)
    if cache is not None and parsed:
        cache.put(parsed)
    return ProfileSet(tuple(profiles), tuple(errors))


def _same_id(path: Path, subscriber_id: str, other: Path) -> ProfileError:
    return ProfileError(path, f"same subscriber id {subscriber_id!r} as {other}")


@dataclass(frozen=True)
class ProfileCheck:
    """One profile file as `digest profile validate` sees it: the profile it holds, or
    every problem it has (in the order of its lines)."""

    path: Path
    profile: Profile | None
    problems: tuple[ProfileError, ...] = ()


def check_profile_text(text: str, path: Path, *, default_max_papers: int = 10) -> ProfileCheck:
    """Every problem of a profile's text, as sending judges it (its subscriber id, from
    `id:` or else the file name, must be valid); the profile if it has none."""
    data, problems = _fields_of(text, path)
    declares_id = (data.id is not None if data is not None
                   else re.search(r"^id\s*:", text, re.MULTILINE) is not None)
    if not declares_id and not _SUBSCRIBER_ID.match(path.stem):
        problems.insert(0, _bad_file_name(path))
    if data is None or problems:
        return ProfileCheck(path, None, tuple(problems))
    profile = _profile_of(data, path, data.id or path.stem, default_max_papers)
    return ProfileCheck(path, profile)


def check_profiles(paths: Iterable[Path], *, default_max_papers: int = 10
                   ) -> list[ProfileCheck]:
    """Every problem of every profile file, as sending judges them: each file's own (see
    `check_profile_text`), and a subscriber id an earlier file has already. Never raises
    for a file: what cannot be read is its one problem."""
    checks = []
    seen: dict[str, Path] = {}
    for path in paths:
        try:
            text = _decode_profile(_read_profile(path), path)
        except ProfileError as exc:
            checks.append(ProfileCheck(path, None, (exc,)))
            continue
        check = check_profile_text(text, path, default_max_papers=default_max_papers)
        if check.profile is not None:
            subscriber_id = check.profile.subscriber_id
            if subscriber_id in seen:
                check = ProfileCheck(path, None, (_same_id(path, subscriber_id,
                                                           seen[subscriber_id]),))
            else:
                seen[subscriber_id] = path
        checks.append(check)
    return checks


# Editing ------------------------------------------------------------------------------

def _round_trip(text: str = "") -> YAML:
    """A round-trip YAML that writes lists indented the way this file already does."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a person's long lines
    offsets = [len(m.group(1)) for m in re.finditer(r"^[^\s#][^\n]*:\s*\n( *)- ", text, re.M)]
    offset = offsets[0] if offsets else 2
    yaml.indent(mapping=2, sequence=offset + 2, offset=offset)
    return yaml


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside the file, so two edits of one profile never interleave."""
    lock_path = path.with_name(f".{path.name}.lock")
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def edit_profile(path: Path, change: Callable[[CommentedMap], str]) -> str:
    """Apply `change` to the profile's YAML and write it back atomically.

    Comments, key order, quoting, indentation, line endings, a BOM and the file's mode
    survive; a symbolic link keeps pointing at the edited file. The file is only replaced
    when the result is a valid profile; a file that is not valid YAML is reported
    (ProfileError) and left exactly as it is. Returns what `change` returned.
    """
    target = path.resolve()  # edit what a symbolic link points to, keep the link
    with _locked(target):
        raw = _read_profile(target)
        bom = raw.startswith(codecs.BOM_UTF8)
        text = _decode_profile(raw, path).replace("\r\n", "\n")
        crlf = b"\r\n" in raw
        parse_profile(text, path)  # refuse to touch a file that is already broken
        yaml = _round_trip(text)
        try:
            root = yaml.load(text)
        except YAMLError as exc:
            raise ProfileError(path, f"cannot be edited safely, edit it by hand: {exc}") \
                from exc
        try:
            result = change(root)
        except _Unchanged as unchanged:
            return unchanged.result  # nothing to write
        buffer = io.StringIO()
        yaml.dump(root, buffer)
        new_text = buffer.getvalue()
        parse_profile(new_text, path)  # never write a profile that would not load
        if crlf:
            new_text = new_text.replace("\n", "\r\n")
        data = (codecs.BOM_UTF8 if bom else b"") + new_text.encode("utf-8")
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with temporary.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temporary, target.stat().st_mode & 0o7777)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
    return result


def _same_text(a: str, b: str) -> bool:
    id_a, id_b = parse_arxiv_id(a), parse_arxiv_id(b)
    if id_a or id_b:
        return id_a == id_b
    return normalise_title(a) == normalise_title(b)


# Lists are edited in place, so that their comments stay where the person put them. ruamel
# keeps an item's end-of-line comment together with the comment lines after it (up to the
# next item or key) in one token: those lines are split off and kept before the item they
# preceded, or after the list when they followed its last item.

def _comment(text: str, column: int = 0) -> CommentToken:
    return CommentToken(text, CommentMark(column), None)


def _flow(node: CommentedMap | CommentedSeq) -> bool:
    return bool(node.fa.flow_style())


def _tail_slot(seq: CommentedSeq, index: int, *, create: bool = False
               ) -> tuple[list[Any], int] | None:
    """Where the comment after item `index` is kept: (the comment entry, its slot)."""
    item = seq[index]
    if (isinstance(item, CommentedMap) and item and not _flow(item) and index not in seq.ca.items
            and not isinstance(item[list(item)[-1]], CommentedMap | CommentedSeq)):
        last = list(item)[-1]  # a block mapping: after its last value
        if create:
            item.ca.items.setdefault(last, [None, None, None, None])
        entry = item.ca.items.get(last)
        return (entry, 2) if entry is not None else None
    if isinstance(item, CommentedSeq | CommentedMap) and not _flow(item):
        return None  # nested deeper than a profile needs: left as it is
    if create:
        seq.ca.items.setdefault(index, [None, None, None, None])
    entry = seq.ca.items.get(index)
    return (entry, 0) if entry is not None else None


def _take_after(seq: CommentedSeq, index: int) -> str:
    """Remove the comment lines after item `index` (not its end-of-line comment) and
    return them."""
    slot = _tail_slot(seq, index)
    token = slot[0][slot[1]] if slot is not None else None
    if slot is None or token is None:
        return ""
    first, _, after = str(token.value).partition("\n")
    if first:
        token.value = first + "\n"
    else:
        slot[0][slot[1]] = None
    return after


def _put_after(seq: CommentedSeq, index: int, lines: str) -> None:
    """Put comment lines after item `index`, after those already there."""
    slot = _tail_slot(seq, index, create=True)
    if slot is None:
        return
    entry, at = slot
    token = entry[at]
    if token is None:
        entry[at] = _comment("\n" + lines)
    else:
        token.value = token.value + lines if "\n" in token.value else token.value + "\n" + lines


def _comment_lines(tokens: Sequence[CommentToken | None] | None) -> str:
    """Full-line comment tokens (as ruamel keeps those before a list's first item) as
    text, indented as they were."""
    text = ""
    for token in tokens or ():
        if token is not None:
            column = getattr(token.start_mark, "column", 0) or 0
            text += token.value if token.value.startswith("\n") else " " * column + token.value
    return text


def _put_before_first(seq: CommentedSeq, lines: str) -> None:
    tokens = [_comment(line.lstrip(" ") if line.strip() else "\n",
                       len(line) - len(line.lstrip(" ")) if line.strip() else 0)
              for line in lines.splitlines(keepends=True)]
    if seq.ca.comment is None:
        seq.ca.comment = [None, tokens]
    elif seq.ca.comment[0] is not None:  # after the key's own end-of-line comment
        seq.ca.comment[0].value += lines
    elif len(seq.ca.comment) > 1 and isinstance(seq.ca.comment[1], list):
        seq.ca.comment[1].extend(tokens)
    else:
        seq.ca.comment = [None, tokens]


def _empty_list(parent: CommentedMap, key: str, seq: CommentedSeq, lines: str) -> None:
    """Make a list that lost its last item `key: []`, its comments written after it (a
    block list's comments would otherwise surround `[]` and make it invalid YAML)."""
    head = seq.ca.comment[0] if seq.ca.comment else None  # the key's end-of-line comment
    before = seq.ca.comment[1] if seq.ca.comment and len(seq.ca.comment) > 1 else None
    eol, _, after_head = head.value.partition("\n") if head is not None else ("", "", "")
    lines = after_head + _comment_lines(before) + lines
    seq.fa.set_flow_style()
    seq.ca.comment = None
    parent.ca.items.pop(key, None)
    if eol or lines:
        token = _comment(eol + "\n" + lines)
        if head is not None:
            token.start_mark = head.start_mark  # the end-of-line comment keeps its column
        seq.ca.comment = [token, None]
        parent.ca.items[key] = [None, None, token, None]


def _refill(parent: CommentedMap, key: str, items: Sequence[tuple[Any, int | None]]) -> None:
    """Make `parent[key]` the list of these values, each paired with the index of the old
    item it replaces (whose comments it takes) or None for a new one. Comment lines stay
    before the kept item they preceded (or the next kept one), and after the list if they
    followed it; emptied, a block list becomes `[]` with its comments after it."""
    seq = parent.get(key)
    values = [value for value, _ in items]
    if not isinstance(seq, CommentedSeq):
        parent[key] = CommentedSeq(values)
        return
    if _flow(seq):  # one line: nothing between its items to keep
        del seq[:]
        seq.extend(values)
        if not values:
            _empty_list(parent, key, seq, "")
        return
    count = len(seq)
    after = [_take_after(seq, index) for index in range(count)]
    kept = {old for _, old in items if old is not None}
    before: dict[int, str] = {}
    carried = ""
    for index in range(count):
        carried += after[index - 1] if index else ""
        if index in kept:
            before[index], carried = carried, ""
    trailing = carried + (after[-1] if count else "")
    entries = dict(seq.ca.items)
    seq.ca.items.clear()
    list.__delitem__(seq, slice(None))  # comments are placed again below
    seq.extend(values)
    for index, (value, old) in enumerate(items):
        entry = entries.get(old) if old is not None else None
        if entry is None:
            continue
        if isinstance(value, CommentedMap) and value and not _flow(value):
            last = list(value)[-1]  # a text that became a mapping: its comment after it
            if entry[0] is not None and value.ca.items.get(last, [None] * 4)[2] is None:
                value.ca.items.setdefault(last, [None, None, None, None])[2] = entry[0]
            continue
        seq.ca.items[index] = entry
    if not values:
        _empty_list(parent, key, seq, trailing)
        return
    heads = [before.get(old, "") if old is not None else "" for _, old in items]
    if heads[0]:
        _put_before_first(seq, heads[0])
    for index in range(len(values)):
        lines = heads[index + 1] if index + 1 < len(values) else trailing
        if lines:
            _put_after(seq, index, lines)


def _match(old: Sequence[Any], new: Sequence[Any]) -> list[int | None]:
    """For each new key, the index of an old item with that key not matched yet."""
    free: dict[Any, list[int]] = {}
    for index, key in enumerate(old):
        free.setdefault(key, []).append(index)
    return [free[key].pop(0) if free.get(key) else None for key in new]


def _list_key(value: Any) -> Any:
    return str(value) if isinstance(value, str) else json.dumps(_plain(value), default=str)


def _refill_values(parent: CommentedMap, key: str, values: Sequence[Any]) -> None:
    """`_refill` with the values given: one equal to an old item keeps that item (its
    quoting and comments)."""
    old = parent.get(key)
    if not isinstance(old, CommentedSeq):
        parent[key] = CommentedSeq(values)
        return
    matches = _match([_list_key(item) for item in old], [_list_key(v) for v in values])
    _refill(parent, key, [(old[m] if m is not None else v, m) for v, m in zip(values, matches,
                                                                            strict=True)])


class _Unchanged(Exception):  # noqa: N818 - control flow inside edit_profile, never seen
    """Raised by a change that found nothing to do: the file is not rewritten."""

    def __init__(self, result: str):
        self.result = result


def set_feedback(path: Path, reference: str, *, liked: bool,
                 same: Callable[[str, str], bool] | None = None) -> str:
    """Move a paper (title or arXiv id) into `liked` or `disliked`, out of the other list.

    `same` tells whether two entries name one paper (the CLI asks the store, so a title
    and an arXiv id of one paper match); by default titles and ids are compared as text.
    Returns a sentence saying what changed.
    """
    add, remove = ("liked", "disliked") if liked else ("disliked", "liked")
    _same = same or _same_text

    def change(root: CommentedMap) -> str:
        removed = False
        if isinstance(root.get(remove), CommentedSeq):
            kept = [(item, index) for index, item in enumerate(root[remove])
                    if not _same(str(item), reference)]
            removed = len(kept) != len(root[remove])
            if removed:
                _refill(root, remove, kept)
        target = root.get(add)
        if isinstance(target, CommentedSeq) and any(_same(str(item), reference)
                                                    for item in target):
            outcome = f"already in {add}" + (f" (removed from {remove})" if removed else "")
            if not removed:
                raise _Unchanged(outcome)
            return outcome
        entry = DoubleQuotedScalarString(reference)  # "2401.01234" stays a string
        if isinstance(target, CommentedSeq):
            _refill(root, add, [*((item, index) for index, item in enumerate(target)),
                                (entry, None)])
        else:
            root[add] = CommentedSeq([entry])
        return f"added to {add}" + (f", removed from {remove}" if removed else "")

    return edit_profile(path, change)


def remove_feedback(path: Path, entry: str, *, liked: bool) -> bool:
    """Take `entry` (as the profile reads it: the text, without spaces around it) out of
    `liked` or `disliked`: the undo of a "more / less like this". Returns whether it was
    there; the rest of the file is kept as it is, and not rewritten if it was not."""
    key = "liked" if liked else "disliked"
    entry = entry.strip()

    def change(root: CommentedMap) -> str:
        seq = root.get(key)
        if not isinstance(seq, CommentedSeq):
            raise _Unchanged("")
        kept = [(item, index) for index, item in enumerate(seq)
                if str(item).strip() != entry]
        if len(kept) == len(seq):
            raise _Unchanged("")
        _refill(root, key, kept)
        return "removed"

    return edit_profile(path, change) == "removed"


def _check_key(path: Path, key: str) -> list[str]:
    parts = key.split(".")
    known = ProfileFile.model_fields
    if parts[0] not in known or (len(parts) == 2 and (
            parts[0] != "keywords" or parts[1] not in _Keywords.model_fields)) or len(parts) > 2:
        keys = [*known, *(f"keywords.{k}" for k in _Keywords.model_fields)]
        near = (f"keywords.{key}" if key in _Keywords.model_fields  # `mute`: keywords.mute
                else closest(key, keys))
        hint = f"; did you mean `{near}`?" if near else f" (one of: {', '.join(keys)})"
        raise ProfileError(path, f"{key}: unknown field{hint}")
    return parts


def set_field(path: Path, key: str, value: Any) -> str:
    """Set one field (`keywords.mute` for a nested one) to `value`, keeping the rest of the
    file as it is. Raises ProfileError if the key is unknown or the value invalid (the file
    is then left untouched). Returns a sentence saying what changed."""
    parts = _check_key(path, key)

    def change(root: CommentedMap) -> str:
        table = root
        for part in parts[:-1]:
            if not isinstance(table.get(part), CommentedMap):
                table[part] = CommentedMap()
            table = table[part]
        before = table.get(parts[-1])
        if before == value:
            raise _Unchanged("unchanged")
        if isinstance(before, CommentedSeq) and isinstance(value, list):
            _refill_values(table, parts[-1], value)  # the same list: style, comments stay
        else:
            table[parts[-1]] = CommentedSeq(value) if isinstance(value, list) else value
        return f"{key} set"

    return edit_profile(path, change)


def _interest_of(value: Any) -> tuple[Any, Any]:
    """An interest as written (a text, or a mapping of text and weight): text, weight."""
    if isinstance(value, str):
        return value.strip(), 1
    if isinstance(value, Mapping):
        text = value.get("text")
        return (text.strip() if isinstance(text, str) else text), value.get("weight", 1)
    return value, 1


def _same_weight(a: Any, b: Any) -> bool:
    numbers = all(isinstance(w, int | float) and not isinstance(w, bool) for w in (a, b))
    return numbers and float(a) == float(b)


def _interest_items(old: Any, values: Sequence[Any]) -> list[tuple[Any, int | None]]:
    """New interests as `_refill` takes them: one whose text was there keeps its entry
    (changing only its weight); a new one of weight 1 is written as a plain text."""
    olds = list(old) if isinstance(old, CommentedSeq) else []
    texts = [_list_key(_interest_of(item)[0]) for item in olds]
    matches = _match(texts, [_list_key(_interest_of(v)[0]) for v in values])
    items: list[tuple[Any, int | None]] = []
    for value, match in zip(values, matches, strict=True):
        text, weight = _interest_of(value)
        if match is None:
            if _same_weight(weight, 1) and isinstance(text, str):
                items.append((text, None))
            else:
                items.append((CommentedMap(value) if isinstance(value, Mapping) else value,
                              None))
            continue
        item = olds[match]
        if _same_weight(_interest_of(item)[1], weight):
            items.append((item, match))
        elif isinstance(item, CommentedMap):
            item["weight"] = weight
            items.append((item, match))
        else:
            items.append((CommentedMap([("text", item), ("weight", weight)]), match))
    return items


@dataclass(frozen=True)
class FieldProblem:
    """Why one value of a profile is refused, in `digest profile validate`'s words."""

    field: str  # where, as the CLI names it: `schedule`, `interests[2].weight`, `avoid[0]`
    message: str


@dataclass(frozen=True)
class FieldsEdit:
    """What `set_fields` did: the fields it wrote, or the problems that stopped it."""

    changed: tuple[str, ...] = ()
    problems: tuple[FieldProblem, ...] = ()


def _field_problems(exc: ValidationError) -> tuple[FieldProblem, ...]:
    """Every problem of a validation, each where and as `digest profile validate` says it."""
    return tuple(FieldProblem(_field_name(tuple(e["loc"])), _problem(e))
                 for e in _chosen_errors(exc))


class _Invalid(Exception):  # noqa: N818 - control flow inside set_fields, never seen
    def __init__(self, problems: tuple[FieldProblem, ...]):
        self.problems = problems


def _field_unchanged(root: CommentedMap, current: ProfileFile, parts: list[str],
                     value: Any) -> bool:
    table: Any = root
    for part in parts[:-1]:
        table = table.get(part) if isinstance(table, CommentedMap) else None
    if value is None:
        return not (isinstance(table, CommentedMap) and parts[-1] in table)
    now: Any = current
    for part in parts:
        now = getattr(now, part)
    if parts == ["interests"]:
        if not isinstance(value, list):
            return False
        old = [(i, 1.0) if isinstance(i, str) else (i.text, i.weight) for i in now]
        new = [_interest_of(v) for v in value]
        return len(old) == len(new) and all(
            text == n_text and _same_weight(weight, n_weight)
            for (text, weight), (n_text, n_weight) in zip(old, new, strict=True))
    if isinstance(now, list):
        return isinstance(value, list) and value == now and all(
            isinstance(v, str) for v in value)
    return type(value) is type(now) and bool(value == now)


def _drop_key(table: CommentedMap, key: str) -> None:
    """Delete a key; the comment lines after its value (not its end-of-line comment) stay,
    after the key before it."""
    entry = table.ca.items.get(key)
    token = entry[2] if entry is not None and len(entry) > 2 else None
    lines = token.value.partition("\n")[2] if token is not None else ""
    keys = list(table)
    del table[key]
    position = keys.index(key)
    if not lines or position == 0 or isinstance(table[keys[position - 1]],
                                                 CommentedMap | CommentedSeq):
        return
    slot = table.ca.items.setdefault(keys[position - 1], [None, None, None, None])
    if slot[2] is None:
        slot[2] = _comment("\n" + lines)
    else:
        slot[2].value += lines


def set_fields(path: Path, values: Mapping[str, Any]) -> FieldsEdit:
    """Set several fields in one edit of the file, each as `set_field` would (keys like
    `keywords.mute`; lists keep the entries, quoting and comments of items that stay; an
    interest keeps its entry when only its weight changes). None removes a field, so its
    default applies. A field already holding the value (or, absent, whose default it is)
    is left as written, and a file with nothing to change is not rewritten.

    The values are checked by the rules `digest profile validate` applies; if any fails,
    nothing is written and every problem comes back, with its field. Raises ProfileError
    for an unknown key, or a file that is broken or cannot be edited."""
    keys = {key: _check_key(path, key) for key in values}

    def change(root: CommentedMap) -> str:
        current = ProfileFile.model_validate(_plain(root))  # it loaded: it is valid
        changed = []
        for key, value in values.items():
            parts = keys[key]
            if _field_unchanged(root, current, parts, value):
                continue
            changed.append(key)
            table = root
            for part in parts[:-1]:
                if not isinstance(table.get(part), CommentedMap):
                    table[part] = CommentedMap()
                table = table[part]
            name, before = parts[-1], table.get(parts[-1])
            if value is None:
                _drop_key(table, name)
            elif parts == ["interests"] and isinstance(value, list):
                _refill(table, name, _interest_items(before, value))
            elif isinstance(value, list):
                _refill_values(table, name, value)
            elif isinstance(before, ScalarString) and isinstance(value, str):
                table[name] = type(before)(value)  # keep its quotes
            else:
                table[name] = value
        if not changed:
            raise _Unchanged("")
        try:
            ProfileFile.model_validate(_plain(root))
        except ValidationError as exc:
            raise _Invalid(_field_problems(exc)) from exc
        return "\n".join(changed)

    try:
        written = edit_profile(path, change)
    except _Invalid as exc:
        return FieldsEdit(problems=exc.problems)
    return FieldsEdit(changed=tuple(written.split("\n")) if written else ())


def set_interests(path: Path, interests: Sequence[str]) -> None:
    """Replace the profile's interests with these texts. An interest that stays keeps its
    weight and its comments; new ones have weight 1."""

    def change(root: CommentedMap) -> str:
        old = root.get("interests")
        if not isinstance(old, CommentedSeq):
            root["interests"] = CommentedSeq(interests)
            return "interests set"
        matches = _match([_list_key(_interest_of(item)[0]) for item in old],
                         [_list_key(text) for text in interests])
        _refill(root, "interests", [(old[m] if m is not None else text, m)
                                    for text, m in zip(interests, matches, strict=True)])
        return "interests set"

    edit_profile(path, change)


def read_value(text: str) -> Any:
    """A value typed as text, read as `digest profile set` reads its VALUE: as YAML (`15`,
    `2.5`, `false`, `[a, b]`); empty text, or text that is not YAML, stays text (for the
    profile's rules to judge)."""
    try:
        value = _safe_loader().load(text)
    except YAMLError:
        return text
    return text if value is None else value


def new_profile_text(name: str, email: str, interests: Sequence[str],
                     timezone: str = "UTC", schedule: str = "daily 07:00") -> str:
    """A new profile file: the commented template (PROFILE_TEMPLATE) holding these values,
    and empty lists of liked and disliked papers. Not checked: `check_profile_text` says
    what, if anything, is wrong with it."""
    template = PROFILE_TEMPLATE.read_text(encoding="utf-8")
    yaml = _round_trip(template)
    root = yaml.load(template)
    for key, value in (("name", name), ("email", email), ("timezone", timezone),
                       ("schedule", schedule)):
        root[key] = value
    _refill(root, "interests", [(text, None) for text in interests])
    buffer = io.StringIO()
    yaml.dump(root, buffer)
    return buffer.getvalue()


def profile_schema() -> dict[str, Any]:
    """A JSON Schema of profile files, for editors that validate and complete YAML."""
    schema = ProfileFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "digest subscriber profile"
    return schema


def subscriber_id_for(email: str) -> str:
    """The subscriber id (and file name) a new profile gets from its address: `ana` for
    ana@example.org; what an id cannot hold becomes '-'."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", email.partition("@")[0]).strip("._-")
    return stem[:100] or "subscriber"


def nearest_papers(reference: str, papers: Iterable[Paper], *, count: int = 3) -> list[Paper]:
    """The papers a reference that names none of them most nearly names, best first: for a
    title, those whose title holds it whole (a title cut short), then the closest titles
    (difflib, on normalised titles); for an arXiv id or a DOI, the closest ids."""
    arxiv_id, doi = parse_arxiv_id(reference), parse_doi(reference)
    if arxiv_id or doi:
        by_id = {key: paper for paper in papers
                 if (key := paper.arxiv_id if arxiv_id else paper.doi)}
        found = difflib.get_close_matches(arxiv_id or doi or "", by_id, n=count, cutoff=0.8)
        return [by_id[key] for key in found]
    wanted = normalise_title(reference)
    if not wanted:
        return []
    by_title: dict[str, Paper] = {}
    for paper in papers:
        by_title.setdefault(normalise_title(paper.title), paper)
    holding = sorted((key for key in by_title if len(wanted) >= 4
                      and f" {wanted} " in f" {key} "), key=len) if wanted else []
    close = difflib.get_close_matches(wanted, by_title, n=count, cutoff=0.6)
    keys = list(dict.fromkeys([*holding[:count], *close]))[:count]
    return [by_title[key] for key in keys]


# Rosters ------------------------------------------------------------------------------

# What `digest profile import-csv` reads (docs/limits.md): a lab's or a team's list of
# people, one row each. A file past these is a mistake (the wrong export), not a team.
MAX_ROSTER_BYTES = 5 * 1024 * 1024
MAX_ROSTER_ROWS = 10_000
ROSTER_COLUMNS = ("name", "email", "interests", "schedule", "timezone", "id")
_REQUIRED_COLUMNS = ("name", "email", "interests")


@dataclass(frozen=True)
class RosterRow:
    """One person of a roster, as their row gives them (empty optional cells: None)."""

    line: int
    name: str
    email: str
    interests: tuple[str, ...]
    schedule: str | None = None
    timezone: str | None = None
    subscriber_id: str | None = None


@dataclass(frozen=True)
class RosterParse:
    """What a roster held: its people, and the rows that could not be read."""

    rows: tuple[RosterRow, ...]
    problems: tuple[Problem, ...] = ()


def parse_roster_text(text: str, source: str, *,
                      max_rows: int = MAX_ROSTER_ROWS) -> RosterParse:
    """Read a roster: CSV with a header naming its columns (name, email, interests; and
    schedule, timezone, id if wanted), then a row per person, interests separated by ';'.
    Pure, and never raises: a header that cannot be used is one fatal problem."""
    reader = csv.reader(io.StringIO(text, newline=""))
    columns: list[str] | None = None
    rows: list[RosterRow] = []
    problems: list[Problem] = []
    records = 0
    while True:
        line = reader.line_num + 1  # where the next record starts
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(Problem(source, line, f"not CSV from here on: {exc}"))
            break
        if not any(cell.strip() for cell in record):
            continue
        if columns is None:
            columns, fatal = _roster_header(record)
            if fatal:
                return RosterParse((), (Problem(source, line, fatal, fatal=True),))
            continue
        records += 1
        if records > max_rows:
            problems.append(Problem(source, line, f"more than {max_rows:,} rows: this one and "
                                                  "those after it are not read (see "
                                                  "docs/limits.md)"))
            break
        if len(record) != len(columns):
            problems.append(Problem(source, line, f"{counted(len(record), 'value')} where the "
                                                  f"header has {len(columns)} (a value that "
                                                  "holds a comma needs double quotes)"))
            continue
        cells = {column: cell.strip() for column, cell in zip(columns, record, strict=True)}
        rows.append(RosterRow(
            line=line, name=cells["name"], email=cells["email"],
            interests=tuple(i.strip() for i in cells["interests"].split(";") if i.strip()),
            schedule=cells.get("schedule") or None, timezone=cells.get("timezone") or None,
            subscriber_id=cells.get("id") or None))
    if columns is None:
        return RosterParse((), (Problem(source, None, "no header: the first line names the "
                                                      "columns, name,email,interests",
                                        fatal=True),))
    return RosterParse(tuple(rows), tuple(problems))


def _roster_header(record: Sequence[str]) -> tuple[list[str], str | None]:
    """A roster's columns, or why its header cannot be used."""
    columns = [cell.strip().casefold() for cell in record]
    if len(columns) == 1:
        for separator, name in ((";", "semicolons"), ("\t", "tabs")):
            if separator in columns[0]:
                return [], (f"the header is separated by {name}; digest reads values separated "
                            "by commas (name,email,interests): save the file as CSV with "
                            "commas")
    for index, column in enumerate(columns, 1):
        if column not in ROSTER_COLUMNS:
            near = closest(column, ROSTER_COLUMNS) if column else None
            hint = (f"; did you mean `{near}`?" if near else
                    f" (the columns: {', '.join(ROSTER_COLUMNS)})")
            return [], (f"unknown column {column!r}{hint}" if column else
                        f"column {index} has no name{hint}")
        if columns.index(column) != index - 1:
            return [], f"the column {column!r} is named twice"
    missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if missing:
        return [], (f"no {' or '.join(missing)} column: the header names at least "
                    "name,email,interests")
    return columns, None


@dataclass(frozen=True)
class RosterImport:
    """What `import_roster` did: the profiles it wrote, the people left alone because they
    have a profile already, the rows refused, and notes on the file; each with its line."""

    rows: int
    written: tuple[Path, ...] = ()
    existing: tuple[Problem, ...] = ()
    problems: tuple[Problem, ...] = ()
    notes: tuple[Problem, ...] = ()


def import_roster(path: Path, folder: Path) -> RosterImport:
    """Write a profile (the commented template) into `folder` for each person of a roster
    file (see `parse_roster_text`), as `digest profile new` would. A person who has a
    profile already (the same address, or the same id and address) is left alone, so
    importing again writes nothing twice; a row that would make an invalid profile, or
    whose id another person's profile has, is refused and the other rows are written.
    Raises InputError if the file cannot be used at all."""
    data = read_regular_file(path, MAX_ROSTER_BYTES, kind="roster")
    text, notes = decode_text(path, data)
    parsed = parse_roster_text(text, str(path))
    fatal = [p for p in parsed.problems if p.fatal]
    if fatal:
        raise InputError(path, fatal[0].reason, line=fatal[0].line)
    by_id, by_email = _existing_profiles(folder)
    written: list[Path] = []
    existing: list[Problem] = []
    problems = list(parsed.problems)
    email_lines: dict[str, int] = {}  # each address of the roster: its first row
    id_lines: dict[str, int] = {}

    def refuse(row: RosterRow, reason: str) -> None:
        problems.append(Problem(str(path), row.line, reason))

    for row in parsed.rows:
        subscriber_id = row.subscriber_id or subscriber_id_for(row.email)
        target = folder / f"{subscriber_id}.yaml"
        if not row.name or not row.email:
            refuse(row, f"{'name' if not row.name else 'email'}: empty")
            continue
        if not _SUBSCRIBER_ID.match(subscriber_id):
            refuse(row, f"id: {subscriber_id!r} cannot be a subscriber id (and file name): "
                        "letters, digits, '.', '_' or '-', starting with a letter or digit")
            continue
        text = new_profile_text(row.name, row.email, row.interests, row.timezone or "UTC",
                                row.schedule or "daily 07:00")
        check = check_profile_text(text, target)
        if check.profile is None:
            for problem in check.problems:
                refuse(row, problem.reason)
            continue
        email = check.profile.email.casefold()
        if email in email_lines:
            refuse(row, f"email: {check.profile.email} is line {email_lines[email]}'s too; "
                        "one row per person")
            continue
        if subscriber_id in id_lines:
            made = "" if row.subscriber_id else " (made from the address)"
            refuse(row, f"id: {subscriber_id!r}{made} is line {id_lines[subscriber_id]}'s too: "
                        "give one of them another in an id column")
            continue
        email_lines[email], id_lines[subscriber_id] = row.line, row.line
        if email in by_email:
            existing.append(Problem(str(path), row.line, f"{check.profile.email}: "
                                    f"{by_email[email]} has this address already; left as "
                                    "it is"))
            continue
        if subscriber_id in by_id:
            other, other_email = by_id[subscriber_id]
            refuse(row, f"id: {subscriber_id!r} is {other}'s, a profile for "
                        f"{other_email or 'another address'}: give this row an id")
            continue
        if not write_new_profile(target, text):  # made since the folder was read
            existing.append(Problem(str(path), row.line, f"{target} exists already; left as "
                                                         "it is"))
            continue
        written.append(target)
    problems.sort(key=lambda p: p.line or 0)  # the rows that could not be read among them
    return RosterImport(len(parsed.rows), tuple(written), tuple(existing), tuple(problems),
                        tuple(notes))


def _existing_profiles(folder: Path) -> tuple[dict[str, tuple[Path, str | None]],
                                              dict[str, Path]]:
    """The profiles in a folder by subscriber id (with their address) and by address
    (case aside). A broken file still takes its name's id."""
    by_id: dict[str, tuple[Path, str | None]] = {}
    by_email: dict[str, Path] = {}
    for path in profile_paths(folder):
        by_id.setdefault(path.stem, (path, None))
        try:
            profile = load_profile(path, strict_id=False)
        except ProfileError:
            continue
        by_id[profile.subscriber_id] = (path, profile.email)
        by_id[path.stem] = (path, profile.email)
        by_email.setdefault(profile.email.casefold(), path)
    return by_id, by_email


def write_new_profile(path: Path, text: str) -> bool:
    """Write a new profile file; False, and nothing written, if the file exists (never
    over someone's file, even one made a moment ago). Raises ProfileError if the folder
    cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        return False
    except OSError as exc:
        raise ProfileError(path, f"cannot be written: {exc.strerror or exc}") from exc
    return True
