"""Paper identity: the arXiv id without version when known, else a normalised title key;
and the checks of the names digest sends to (domains, email addresses).

Pure functions; every source goes through them before a paper reaches the store.
"""

from __future__ import annotations

import re
import unicodedata

import idna

# New-style ids (0704.0001 onwards) and old-style archive/YYMMNNN ids, each with an
# optional version suffix that identity ignores.
_NEW_ID = r"\d{2}(?:0[1-9]|1[0-2])\.\d{4,5}"  # YYMM.NNNNN
_OLD_ID = r"[a-z][a-z\-]*(?:\.[A-Z]{2})?/\d{7}"
_ARXIV_ID = re.compile(rf"(?<![\w.])(?P<id>{_NEW_ID}|{_OLD_ID})(?:v\d+)?(?!\w|\.\d)")
_ARXIV_HINT = re.compile(
    rf"arxiv(?:\.org/(?:abs|pdf|html)/|:)|(?:huggingface|hf)\.co/papers/|^(?:{_NEW_ID}|{_OLD_ID})(?:v\d+)?$",
    re.IGNORECASE,
)
_NON_ALNUM = re.compile(r"[\W_]+")
# Letters that Unicode does not decompose into a base letter and a mark.
_FOLD = str.maketrans({"ł": "l", "ø": "o", "đ": "d", "ð": "d", "þ": "th", "æ": "ae", "œ": "oe",
                       "ı": "i", "ħ": "h", "ŧ": "t", "ŀ": "l"})


def normalise_title(title: str) -> str:
    """Return the title key: case-folded, accents removed, punctuation turned into spaces.

    Letters of every script are kept, so titles in Chinese or Greek get distinct keys.
    Idempotent: normalising a key gives the same key.
    """
    if title.isascii():  # most titles: nothing to decompose, fold or compose
        return _NON_ALNUM.sub(" ", title.lower()).strip()
    decomposed = unicodedata.normalize("NFKD", title.casefold().translate(_FOLD))
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NON_ALNUM.sub(" ", unicodedata.normalize("NFKC", bare).casefold()).strip()


def parse_arxiv_id(text: str) -> str | None:
    """Return the versionless arXiv id in `text` (a bare id, `arXiv:` form or URL), else None.

    Only text that looks like an arXiv reference is read, so a title holding a number like
    "2401.01234" in prose is not mistaken for one unless it is the whole string.
    """
    text = text.strip()
    if not text:
        return None
    if not _ARXIV_HINT.search(text):
        return None
    match = _ARXIV_ID.search(text)
    return match.group("id") if match else None


_DOI_INSIDE = re.compile(r"\b(10\.\d{4,9}/[^\s\"<>{}]+)", re.IGNORECASE)
_DOI_WHOLE = re.compile(r"(?:doi:\s*|https?://(?:dx\.)?doi\.org/)?(10\.\d{4,9}/\S+)",
                        re.IGNORECASE)
MAX_DOI_CHARS = 255  # papers.doi


def parse_doi(text: str | None, *, inside: bool = False) -> str | None:
    """The DOI `text` is (bare, `doi:...` or a doi.org link) as the store keeps it: lower
    case, no prefix; with `inside`, the first DOI anywhere in `text` (a field of a library
    entry, a link). None if there is none."""
    if not text:
        return None
    if inside:
        found = _DOI_INSIDE.search(text)
        doi = found.group(1).rstrip(".,;:)]") if found else None
    else:
        whole = _DOI_WHOLE.fullmatch(text.strip())
        doi = whole.group(1) if whole else None
    return doi.lower() if doi and len(doi) <= MAX_DOI_CHARS else None


def paper_key(arxiv_id: str | None, title: str) -> str:
    """Return the public id of a paper."""
    return arxiv_id if arxiv_id else normalise_title(title)


def ascii_domain(domain: str) -> str:
    """The domain as DNS and SMTP see it: IDNA 2008 with UTS #46 mapping (straße.de is
    xn--strae-oqa.de, not strasse.de as Python's own "idna" codec, IDNA 2003, would say).
    Raises ValueError for a name that is not a valid host name."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"{domain!r} is not a valid host name ({exc})") from exc


def ascii_address(address: str) -> str:
    """The address with its domain in ASCII (`ascii_domain`), as SMTP without SMTPUTF8 and
    every header need it (the local part is ASCII already: profiles are checked for it)."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{ascii_domain(domain)}"


def check_email(address: str) -> str:
    """Return the address if it is one digest can send to; raise ValueError saying why not."""
    if any(ch in address for ch in "\r\n\t ") or not address.isprintable():
        raise ValueError("must not contain spaces, line breaks or control characters")
    if len(address) > 254:
        raise ValueError("is longer than 254 characters")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{address!r} is not an email address (expected name@domain)")
    if len(local) > 64:
        raise ValueError("the part before @ is longer than 64 characters")
    if not local.isascii():
        raise ValueError("non-ASCII before the @ needs SMTPUTF8, which digest does not use")
    if any(ch in local for ch in '<>(),;:"[]\\') or local.startswith(".") or ".." in local:
        raise ValueError(f"{address!r} has characters not allowed before the @")
    try:
        host = ascii_domain(domain)
    except ValueError as exc:
        raise ValueError(f"domain {domain!r} is not a valid host name") from exc
    if not re.fullmatch(r"(?=.{1,253}$)([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}", host):
        raise ValueError(f"domain {domain!r} is not a valid host name")
    return address
