"""Fetch a feed over HTTP politely: conditional GET, gzip or deflate, and bounded.

A fetch is bounded in bytes (the body as it arrives and once decompressed, so a small
gzip "bomb" cannot inflate into gigabytes) and in time: `timeout_s` for each connect and
read, and `deadline_s` for the whole fetch, after which its connection is cut, so a
server that trickles a byte every few seconds cannot hold it forever.

Blocking (urllib); the daemon runs it in a thread. TLS certificates are always checked.
"""

from __future__ import annotations

import email.utils
import http.client
import socket
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from digest import __version__

USER_AGENT = f"digest/{__version__} (self-hosted paper digest; +https://pypi.org/project/digest)"
ACCEPT = ("application/atom+xml, application/rss+xml, application/xml;q=0.9, text/xml;q=0.9, "
          "*/*;q=0.1")
_CHUNK = 64 * 1024


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


class _TooLarge(Exception):
    """The body is larger than the cap, as sent or once decompressed."""


class _Connections:
    """The connections one fetch opened, so that its deadline can cut them from another
    thread: a read or TLS handshake blocked on a cut connection returns at once.

    Each is kept as a duplicate of its socket, which stays valid when TLS takes the
    original over, and which is ours to close (`close`), so no other connection can
    ever be cut by mistake."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.cut = False

    def connect(self, address: tuple[str, int], timeout: Any,
                source_address: tuple[str, int] | None) -> socket.socket:
        """socket.create_connection (as http.client calls it), recording the connection."""
        sock = socket.create_connection(address, timeout, source_address)
        with self._lock:
            self._sockets.append(sock.dup())
            if self.cut:
                self._shut(self._sockets[-1])
        return sock

    def cut_all(self) -> None:
        with self._lock:
            self.cut = True
            for sock in self._sockets:
                self._shut(sock)

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            sock.shutdown(socket.SHUT_RDWR)  # ends the connection for every copy of it
        except OSError:
            pass  # it ended already


def _opener(connections: _Connections) -> urllib.request.OpenerDirector:
    """urllib with its usual handlers (redirects, proxies, TLS checked), each connection
    it opens recorded in `connections`."""

    def recording(base: type[http.client.HTTPConnection]
                  ) -> Callable[..., http.client.HTTPConnection]:
        def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            connection = base(host, **kwargs)
            # http.client opens its socket through this attribute (there for this use).
            connection._create_connection = connections.connect  # type: ignore[attr-defined]
            return connection
        return make

    plain, secure = recording(http.client.HTTPConnection), \
        recording(http.client.HTTPSConnection)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(plain, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(secure, req)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


class _Decoder:
    """Undoes a Content-Encoding while the body streams in, never holding more than
    `max_bytes` of output."""

    def __init__(self, encoding: str | None, max_bytes: int):
        self.encoding = (encoding or "identity").strip().lower()
        if self.encoding not in ("identity", "gzip", "x-gzip", "deflate"):
            raise ValueError(f"unsupported Content-Encoding {encoding!r}")
        self.max_bytes = max_bytes
        self._inflate: Any = None
        self.output = bytearray()

    def feed(self, data: bytes) -> None:
        if self.encoding == "identity":
            self._keep(data)
            return
        if self._inflate is None:
            if self.encoding == "deflate":
                # "deflate" should be zlib-wrapped, but some servers send raw deflate, and
                # browsers take both: a zlib header is two bytes, a multiple of 31.
                wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and \
                    (data[0] << 8 | data[1]) % 31 == 0
                self._inflate = zlib.decompressobj(zlib.MAX_WBITS if wrapped
                                                   else -zlib.MAX_WBITS)
            else:
                self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        room = self.max_bytes + 1 - len(self.output)
        self._keep(self._inflate.decompress(data, room))
        if self._inflate.unconsumed_tail:
            raise _TooLarge

    def _keep(self, data: bytes) -> None:
        self.output += data
        if len(self.output) > self.max_bytes:
            raise _TooLarge

    def finish(self) -> bytes:
        if self._inflate is not None:
            self._keep(self._inflate.flush())
        return bytes(self.output)


def _read_body(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    """The decoded body, reading at most `max_bytes` from the wire and keeping at most as
    much once decoded. Raises _TooLarge, ValueError (encoding), OSError, zlib.error."""
    decoder = _Decoder(response.headers.get("Content-Encoding"), max_bytes)
    received = 0
    while chunk := response.read1(_CHUNK):
        received += len(chunk)
        if received > max_bytes:
            raise _TooLarge
        decoder.feed(chunk)
    return decoder.finish()


def fetch_feed(url: str, *, etag: str | None, last_modified: str | None, timeout_s: float,
               deadline_s: float, max_bytes: int, now: datetime) -> FetchResult:
    """GET the feed, sending the validators from the last poll. Never raises.

    Returns within about `deadline_s` seconds (plus the name lookup) whatever the server
    does; the body is at most `max_bytes`, as sent and once decompressed.
    """
    if not url.startswith(("http://", "https://")):
        return FetchResult(None, error="only http and https feeds are fetched")
    headers = {"User-Agent": USER_AGENT, "Accept": ACCEPT, "Accept-Encoding": "gzip, deflate"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    connections = _Connections()
    deadline = threading.Timer(deadline_s, connections.cut_all)
    deadline.daemon = True
    deadline.start()
    try:
        result = _get(urllib.request.Request(url, headers=headers), connections,
                      timeout_s=timeout_s, max_bytes=max_bytes, now=now, etag=etag,
                      last_modified=last_modified)
    finally:
        deadline.cancel()
        connections.close()
    if connections.cut:  # whatever came before the cut is incomplete
        return FetchResult(None, error=f"no complete answer within {deadline_s:g} s "
                                       "(daemon.feed_deadline_s)")
    return result


def _get(request: urllib.request.Request, connections: _Connections, *, timeout_s: float,
         max_bytes: int, now: datetime, etag: str | None,
         last_modified: str | None) -> FetchResult:
    try:
        with _opener(connections).open(request, timeout=timeout_s) as response:
            body = _read_body(response, max_bytes)
            return FetchResult(response.status, content=body,
                               etag=response.headers.get("ETag"),
                               last_modified=response.headers.get("Last-Modified"))
    except _TooLarge:
        return FetchResult(None, error=f"larger than {max_bytes:,} bytes, as sent or once "
                                       "decompressed (daemon.feed_max_bytes)")
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
    except ValueError as exc:  # an encoding we did not ask for
        return FetchResult(None, error=str(exc))
    except (OSError, EOFError, zlib.error, http.client.HTTPException) as exc:
        return FetchResult(None, error=f"transfer failed: {exc}")
