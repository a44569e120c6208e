"""A loopback HTTP server for the images a run generates, so payloads can reference images by URL.

Routers fetch images the way browsers do, so the server speaks enough HTTP/1.1 for them: ``HEAD``, a strong
``ETag`` (the content's hash) with ``If-None-Match`` -> 304, and single byte ranges (``Range: bytes=a-b`` ->
206 with ``Content-Range``; unsatisfiable -> 416; ``If-Range`` with a stale validator -> the whole file). NVIDIA
Dynamo's media loader probes with ranged requests and, without a 206, routes URL images on their text alone.
Semantics follow RFC 9110 sections 13.1.2 (If-None-Match), 13.1.5 (If-Range) and 14 (range requests).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


UNSATISFIABLE: Literal["unsatisfiable"] = "unsatisfiable"


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | Literal["unsatisfiable"] | None:
    """The one byte range ``header`` asks for in a ``size``-byte file: a ``ByteRange``; None to send the whole
    file (no header, a multi-range or malformed one, which RFC 9110 14.2 lets a server ignore); "unsatisfiable"
    when no byte of the file is in it (416)."""
    if not header:
        return None
    m = _RANGE_RE.match(header.strip())
    if m is None:
        return None
    first, last = m.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0:
            return UNSATISFIABLE
        return ByteRange(max(0, size - n), size - 1) if size else UNSATISFIABLE
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid range spec: ignore the header
    if start >= size:
        return UNSATISFIABLE
    return ByteRange(start, end)


def etag_of(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the routers' HTTP clients expect

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        path = self.translate_path(self.path)
        if os.path.isdir(path) or not os.path.isfile(path):
            self.send_error(404, "File not found")
            return
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            self.send_error(404, "File not found")
            return
        etag = etag_of(data)
        inm = self.headers.get("If-None-Match")
        if inm is not None and _etag_matches(inm, etag):
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        rng = parse_range(self.headers.get("Range"), len(data))
        if_range = self.headers.get("If-Range")
        if rng is not None and if_range is not None and if_range.strip() != etag:
            rng = None  # the client's copy is stale: send the whole current file
        if rng == UNSATISFIABLE:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if isinstance(rng, ByteRange):
            payload = data[rng.start : rng.end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {rng.start}-{rng.end}/{len(data)}")
        else:
            payload = data
            self.send_response(200)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.end_headers()
        if body:
            self.wfile.write(payload)


class ImageServer:
    """Serves ``root`` on 127.0.0.1 from a daemon thread; ``add`` writes an image and returns its URL."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mmharness-images-"))
        self.root.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_QuietHandler, directory=str(self.root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="image-server", daemon=True)

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> ImageServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def host_port(self) -> str:
        """This server as an ``--allowed-media-hosts`` entry: the one loopback port a stack may fetch from."""
        return f"127.0.0.1:{self.port}"

    def url_for(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def add(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.url_for(name)
