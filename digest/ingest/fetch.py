"""Fetch a feed over HTTP politely: conditional GET, a timeout, a size cap, gzip.

Blocking (urllib); the daemon runs it in a thread. TLS certificates are always checked.
"""

from __future__ import annotations

import email.utils
import gzip
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

from digest import __version__

USER_AGENT = f"digest/{__version__} (self-hosted paper digest; +https://pypi.org/project/digest)"
ACCEPT = ("application/atom+xml, application/rss+xml, application/xml;q=0.9, text/xml;q=0.9, "
          "*/*;q=0.1")


@dataclass(frozen=True)
class FetchResult:
    """What one request gave: content (200), nothing new (304), or an error."""

    status: int | None  # HTTP status; None when no response came (timeout, refused)
    content: bytes | None = None
    etag: str | None = None
    last_modified: str | None = None
    retry_after_s: float | None = None
    error: str | None = None

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _decode_body(data: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    return data


def fetch_feed(url: str, *, etag: str | None, last_modified: str | None, timeout_s: float,
               max_bytes: int, now: datetime) -> FetchResult:
    """GET the feed, sending the validators from the last poll. Never raises."""
    if not url.startswith(("http://", "https://")):
        return FetchResult(None, error="only http and https feeds are fetched")
    headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT, "Accept-Encoding": "gzip"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data = response.read(max_bytes + 1)
            if len(data) > max_bytes:
                return FetchResult(response.status, error=f"larger than {max_bytes} bytes")
            body = _decode_body(data, response.headers.get("Content-Encoding"))
            return FetchResult(response.status, content=body,
                               etag=response.headers.get("ETag"),
                               last_modified=response.headers.get("Last-Modified"))
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return FetchResult(304, etag=exc.headers.get("ETag") or etag,
                               last_modified=exc.headers.get("Last-Modified") or last_modified)
        retry = parse_retry_after(exc.headers.get("Retry-After"), now)
        return FetchResult(exc.code, retry_after_s=retry, error=f"HTTP {exc.code} {exc.reason}")
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return FetchResult(None, error=f"timed out after {timeout_s:g} s")
        return FetchResult(None, error=f"cannot connect: {reason}")
    except TimeoutError:
        return FetchResult(None, error=f"timed out after {timeout_s:g} s")
    except (OSError, EOFError, zlib.error) as exc:
        return FetchResult(None, error=f"transfer failed: {exc}")
