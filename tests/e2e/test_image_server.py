"""The gate's loopback image server speaks the HTTP routers fetch with: HEAD, ETag/If-None-Match, byte ranges
(Dynamo's media loader probes with ``Range: bytes=0-4095`` and routes URL images on text alone without a 206)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from harness.gate.image_server import UNSATISFIABLE, ByteRange, ImageServer, etag_of, parse_range

pytestmark = pytest.mark.e2e
DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ImageServer, str]]:
    with ImageServer() as server:
        yield server, server.add("x.png", DATA)


def test_parse_range() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-4095", 100) == ByteRange(0, 99)  # clamped to the file
    assert parse_range("bytes=10-19", 100) == ByteRange(10, 19)
    assert parse_range("bytes=90-", 100) == ByteRange(90, 99)
    assert parse_range("bytes=-10", 100) == ByteRange(90, 99)
    assert parse_range("bytes=-500", 100) == ByteRange(0, 99)
    assert parse_range("bytes=100-", 100) == UNSATISFIABLE
    assert parse_range("bytes=-0", 100) == UNSATISFIABLE
    assert parse_range("bytes=0-1,5-6", 100) is None  # multi-range: the whole file (RFC 9110 14.2 allows it)
    assert parse_range("bytes=9-3", 100) is None  # invalid: ignored
    assert parse_range("items=0-1", 100) is None


def test_range_head_and_etag(served: tuple[ImageServer, str]) -> None:
    _, url = served
    with httpx.Client(timeout=10) as c:
        full = c.get(url)
        assert full.status_code == 200 and full.content == DATA
        assert full.headers["accept-ranges"] == "bytes" and full.headers["etag"] == etag_of(DATA)

        part = c.get(url, headers={"Range": "bytes=0-4095"})
        assert part.status_code == 206 and part.content == DATA[:4096]
        assert part.headers["content-range"] == f"bytes 0-4095/{len(DATA)}"
        tail = c.get(url, headers={"Range": "bytes=-100"})
        assert tail.status_code == 206 and tail.content == DATA[-100:]
        bad = c.get(url, headers={"Range": f"bytes={len(DATA)}-"})
        assert bad.status_code == 416 and bad.headers["content-range"] == f"bytes */{len(DATA)}"

        head = c.head(url)
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) == len(DATA) and head.headers["etag"] == full.headers["etag"]

        etag = full.headers["etag"]
        assert c.get(url, headers={"If-None-Match": etag}).status_code == 304
        assert c.get(url, headers={"If-None-Match": '"other"'}).status_code == 200
        stale = c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
        assert stale.status_code == 200 and stale.content == DATA  # the client's copy is stale: the whole file
        fresh = c.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert fresh.status_code == 206 and fresh.content == DATA[:10]
        assert c.get(url.replace("x.png", "missing.png")).status_code == 404
