"""Profiles: one YAML file per subscriber, read into `Profile` records.

This module owns profile files. Errors name `file:line: field: problem`; a broken file is
reported and skipped so that the other subscribers are still served.
"""

from __future__ import annotations

import codecs
import fcntl
import io
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    NodeEvent,
)
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from digest.errors import ProfileError
from digest.identity import check_email, normalise_title, parse_arxiv_id
from digest.models import MAX_PAPERS, Interest, Profile
from digest.reading import read_regular_file
from digest.schedule import load_timezone, parse_schedule

if TYPE_CHECKING:
    from digest.profilecache import ProfileCache

PROFILE_SUFFIXES = (".yaml", ".yml")

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
    """Parse the text of a profile file. Raises ProfileError naming line and field.

    With `strict_id` off (ranking only, nothing recorded) any file name will do.
    """
    if len(text) > MAX_PROFILE_BYTES:
        raise ProfileError(path, f"larger than {MAX_PROFILE_BYTES // 1024:,} KiB, too large "
                                 "for a profile file")
    _check_structure(text, path)
    data = _validate_fast(text)
    if data is None:
        data = _validate_located(text, path)
    subscriber_id = data.id or path.stem
    if strict_id and not _SUBSCRIBER_ID.match(subscriber_id):
        raise ProfileError(path, "the file name is the subscriber id, so it must be letters, "
                                 "digits, '.', '_' or '-' (or set `id:` in the file)")
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
    )


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


def _validate_located(text: str, path: Path) -> ProfileFile:
    """Load with line numbers and validate; raises ProfileError naming line and field."""
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
    try:
        data = ProfileFile.model_validate(_plain(root))
    except ValidationError as exc:
        errors = exc.errors()
        # Of a union's alternatives, the one that got furthest is what the person meant.
        error = max(errors, key=lambda e: len(e["loc"]))
        loc = _clean_loc(tuple(error["loc"]))
        problems = len({_field_name(tuple(e["loc"])[:2]) for e in errors})
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        elif error["type"] == "too_long" and "ctx" in error:
            message = (f"at most {error['ctx']['max_length']:,} entries (this list has "
                       f"{error['ctx']['actual_length']:,}); see docs/limits.md")
        elif error["type"] == "missing":
            message = "required field is missing"
        more = f" (and {problems - 1} more problems)" if problems > 1 else ""
        raise ProfileError(path, message + more, line=_line_of(root, loc) or 1,
                           field=_field_name(loc)) from exc
    return data


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
    for ranking alone they need not be. With `cache` (made for the same default_max_papers;
    used for sending only), unchanged files are not parsed again.
    """
    paths = list(paths)
    if not for_sending:
        cache = None  # what it holds passed the stricter checks of sending
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
            if stat is not None:
                parsed.append((profile, stat, seen_ns))
        if for_sending and profile.subscriber_id in seen:
            errors.append(ProfileError(path, f"same subscriber id {profile.subscriber_id!r} as "
                                             f"{seen[profile.subscriber_id]}"))
            continue
        seen[profile.subscriber_id] = path
        profiles.append(profile)
    if cache is not None and parsed:
        cache.put(parsed)
    return ProfileSet(tuple(profiles), tuple(errors))


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
        result = change(root)
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
            kept = [item for item in root[remove] if not _same(str(item), reference)]
            removed = len(kept) != len(root[remove])
            while len(root[remove]) > len(kept):  # remove in place: comments stay put
                for index, item in enumerate(root[remove]):
                    if _same(str(item), reference):
                        del root[remove][index]
                        break
        target = root.get(add)
        if not isinstance(target, CommentedSeq):
            target = CommentedSeq()
            root[add] = target
        if any(_same(str(item), reference) for item in target):
            return f"already in {add}" + (f" (removed from {remove})" if removed else "")
        target.append(DoubleQuotedScalarString(reference))  # "2401.01234" stays a string
        return f"added to {add}" + (f", removed from {remove}" if removed else "")

    return edit_profile(path, change)


def set_field(path: Path, key: str, value: Any) -> str:
    """Set one field (`keywords.mute` for a nested one) to `value`, keeping the rest of the
    file as it is. Raises ProfileError if the key is unknown or the value invalid (the file
    is then left untouched). Returns a sentence saying what changed."""
    parts = key.split(".")
    known = ProfileFile.model_fields
    if parts[0] not in known or (len(parts) == 2 and (
            parts[0] != "keywords" or parts[1] not in _Keywords.model_fields)) or len(parts) > 2:
        raise ProfileError(path, f"{key}: unknown field (one of: {', '.join(known)})")

    def change(root: CommentedMap) -> str:
        table = root
        for part in parts[:-1]:
            if not isinstance(table.get(part), CommentedMap):
                table[part] = CommentedMap()
            table = table[part]
        before = table.get(parts[-1])
        if before == value:
            return "unchanged"
        if isinstance(before, CommentedSeq) and isinstance(value, list):
            del before[:]  # the same list, refilled: its style and comments stay
            before.extend(value)
        else:
            table[parts[-1]] = CommentedSeq(value) if isinstance(value, list) else value
        return f"{key} set"

    return edit_profile(path, change)


def set_interests(path: Path, interests: Sequence[str]) -> None:
    """Replace the profile's interests with these texts. An interest that stays keeps its
    weight and its comments; new ones have weight 1."""

    def change(root: CommentedMap) -> str:
        old = root.get("interests")
        if not isinstance(old, CommentedSeq):
            root["interests"] = CommentedSeq(interests)
            return "interests set"
        kept: dict[str, Any] = {}
        for item in old:
            text = item.get("text") if isinstance(item, CommentedMap) else item
            kept.setdefault(str(text), item)
        del old[:]  # the same list, refilled: its style and comments stay
        old.extend(kept.get(text, text) for text in interests)
        return "interests set"

    edit_profile(path, change)


def new_profile_text(name: str, email: str, interests: Sequence[str],
                     timezone: str = "UTC", schedule: str = "daily 07:00") -> str:
    """A new profile file, with comments saying what each field does; checked before it is
    returned (raises ProfileError)."""
    def scalar(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML string

    listed = ("\n" + "".join(f"  - {scalar(i)}\n" for i in interests)) if interests else " []\n"
    text = (f"# digest profile: who gets the email, when, and what it should hold.\n"
            f"name: {scalar(name)}\n"
            f"email: {scalar(email)}\n"
            f"timezone: {scalar(timezone)}     # an IANA zone, e.g. Europe/Lisbon\n"
            f"schedule: {scalar(schedule)}  # daily HH:MM, weekdays HH:MM, weekly DAY HH:MM, "
            "every 6h, or cron\n"
            "max_papers: 10\n"
            "# What you want: topics, methods, phrases you would search for. An entry can\n"
            "# be weighted: - {text: graph neural networks, weight: 2}\n"
            f"interests:{listed}"
            "# Papers you liked or disliked (arXiv ids or titles); the email's links add\n"
            "# to these lists.\n"
            "liked: []\n"
            "disliked: []\n")
    parse_profile(text, Path("new.yaml"))
    return text


def profile_schema() -> dict[str, Any]:
    """A JSON Schema of profile files, for editors that validate and complete YAML."""
    schema = ProfileFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "digest subscriber profile"
    return schema
