"""A real HTTP server on 127.0.0.1 serving the feed fixtures with ETag and Last-Modified,
and answering on purpose with errors, delays or HTML where a test asks it to."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FEEDS = Path(__file__).parent / "data" / "feeds"


@dataclass
class Behaviour:
    status: int = 200
    delay_s: float = 0.0
    body: bytes | None = None  # instead of the file
    headers: dict[str, str] = field(default_factory=dict)
    drip_s: float = 0.0  # send the body a byte at a time, this long apart (slowloris)


class FeedServer:
    """`with FeedServer() as server:` then `server.url("hf-daily-papers/x.xml")`."""

    def __init__(self, root: Path = FEEDS):
        self.root = root
        self.behaviours: dict[str, Behaviour] = {}
        self.log: list[tuple[str, int, dict[str, str]]] = []  # (path, status, request headers)
        self.closed = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.lstrip("/")
                behaviour = server.behaviours.get(path, Behaviour())
                if behaviour.delay_s:
                    time.sleep(behaviour.delay_s)
                if behaviour.status != 200:
                    self._reply(path, behaviour.status, b"error", behaviour.headers)
                    return
                body = behaviour.body
                if body is None:
                    file = server.root / path
                    if not file.is_file():
                        self._reply(path, 404, b"not found", {})
                        return
                    body = file.read_bytes()
                etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
                modified = formatdate(1_700_000_000, usegmt=True)
                if self.headers.get("If-None-Match") == etag:
                    self._reply(path, 304, b"", {"ETag": etag})
                    return
                content_type = "text/html" if body.lstrip().startswith(b"<!") else \
                    "application/xml"
                self._reply(path, 200, body, {"ETag": etag, "Last-Modified": modified,
                                              "Content-Type": content_type,
                                              **behaviour.headers}, behaviour.drip_s)

            def _reply(self, path: str, status: int, body: bytes,
                       headers: dict[str, str], drip_s: float = 0.0) -> None:
                with server._lock:
                    server.log.append((path, status, dict(self.headers)))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if status == 304:
                    return
                if not drip_s:
                    self.wfile.write(body)
                    return
                for index in range(len(body)):
                    try:
                        self.wfile.write(body[index:index + 1])
                        self.wfile.flush()
                    except OSError:
                        return  # the client gave up
                    if server.closed.wait(drip_s):
                        return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def statuses(self, path: str) -> list[int]:
        with self._lock:
            return [status for p, status, _ in self.log if p == path]

    def __enter__(self) -> FeedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()
