"""The shared HTTP surface against a real in-process server on loopback: aiohttp's own parser rejections as
JSON, body limits (declared, decompressed), body timeouts, undecodable bodies, keep-alive, escaped log lines."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from harness.contract import parse_routing_records
from harness.server.app import ContinuationFormatter, listen
from harness.server.fuzz import Reply, gzip_bomb, http_request, judge, send_raw
from harness.server.openai import api_middleware, json_response, read_json_object

log = logging.getLogger("test.server")


async def echo(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    return json_response({"keys": sorted(body)})


@asynccontextmanager
async def server(**kw: float) -> AsyncIterator[int]:
    """The worker's and proxy's shell in miniature: api_middleware, the JSON error handler, small limits."""
    lines: list[str] = []

    def finished(request: web.Request, status: int, seconds: float) -> None:
        from harness.contract import escape_log

        lines.append(
            f"request_id={request['rid']} {escape_log(request.method)} {escape_log(request.path)} status={status}"
        )

    mw = api_middleware(
        log,
        headers=lambda rid: {"X-Request-Id": rid},
        finished=finished,
        max_body_bytes=int(kw.pop("max_body_bytes", 1 << 20)),
        body_timeout_s=kw.pop("body_timeout_s", 5.0),
    )
    app = web.Application(middlewares=[mw], client_max_size=1 << 20)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    srv = await listen(runner, "127.0.0.1", 0, **kw)
    port = srv.sockets[0].getsockname()[1]
    server.lines = lines  # type: ignore[attr-defined]
    try:
        yield port
    finally:
        srv.close()
        await runner.cleanup()


def send(raw: bytes, **kw: float) -> Reply:
    async def main() -> Reply:
        async with server(**kw) as port:
            return await send_raw("127.0.0.1", port, raw, 10)

    return asyncio.run(main())


def error_of(reply: Reply, status: int) -> dict:
    assert reply.status == status, reply
    assert reply.content_type.startswith("application/json"), reply
    err = json.loads(reply.body)["error"]
    assert err["code"] == status and isinstance(err["message"], str)
    return err


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # a bad method
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # request line over max_line_size
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 400),  # a header over max_field_size
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n", 400),  # too many
        (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),  # a header line without a colon
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\x01b\r\n\r\n", 400),  # a raw control character
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),  # a bad Content-Length
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    ],
)
def test_aiohttp_parser_rejections_are_json(raw: bytes, status: int) -> None:
    error_of(send(raw), status)


def test_non_gzip_body_claiming_gzip_is_400() -> None:
    err = error_of(send(http_request("POST", "/echo", b'{"a": 1}', [("Content-Encoding", "gzip")])), 400)
    assert "cannot be read" in err["message"]


def test_real_gzip_body_is_read() -> None:
    reply = send(http_request("POST", "/echo", gzip.compress(b'{"a": 1, "b": 2}'), [("Content-Encoding", "gzip")]))
    assert (reply.status, json.loads(reply.body)) == (200, {"keys": ["a", "b"]})


def test_gzip_bomb_is_413_on_its_decompressed_size() -> None:
    bomb = gzip_bomb(4 << 20)  # a few KB on the wire, 4 MiB decompressed; the limit is 1 MiB
    assert len(bomb) < 64 * 1024
    err = error_of(send(http_request("POST", "/echo", bomb, [("Content-Encoding", "gzip")])), 413)
    assert "decompression" in err["message"]


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    """Content-Length: 10 GB with 1 KB sent: answered 413 at once, not held open waiting for the rest."""
    raw = http_request("POST", "/echo", b"{" + b" " * 1000 + b"}", length=10 * 1024**3)
    err = error_of(send(raw), 413)
    assert "10737418240 bytes" in err["message"]


def test_body_that_never_arrives_times_out_with_408() -> None:
    raw = http_request("POST", "/echo", b'{"a"', length=1000)  # 4 of 1000 declared bytes
    err = error_of(send(raw, body_timeout_s=0.3), 408)
    assert "not received within 0.3s" in err["message"]


def test_idle_connection_is_closed_by_the_keepalive_timer() -> None:
    """A connection that never completes its headers is closed (aiohttp's own default waits an hour)."""

    async def main() -> bytes:
        async with server(keepalive_timeout=0.3) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never end
            try:
                return await asyncio.wait_for(reader.read(-1), 10)  # EOF once the server closes
            finally:
                writer.close()

    assert asyncio.run(main()) == b""


def test_logged_path_cannot_forge_a_record(caplog: pytest.LogCaptureFixture) -> None:
    forged = "/x%0A[ROUTING]%20request_id=forged%20worker=w9%20overlap_blocks=9%20total_blocks=9%20policy=p%0A"

    async def main() -> list[str]:
        async with server() as port:
            await send_raw("127.0.0.1", port, http_request("GET", forged), 10)
        return list(server.lines)  # type: ignore[attr-defined]

    (line,) = asyncio.run(main())
    assert "\n" not in line and " " not in line.split(" ", 2)[2].rsplit(" ", 1)[0]
    assert "%0A[ROUTING]%20request_id=forged" in line
    assert parse_routing_records(line) == []


def test_continuation_lines_of_a_record_are_indented() -> None:
    """A multi-line message (an exception text carrying a newline) cannot start a line of the log."""
    fmt = ContinuationFormatter("%(levelname)s [w] %(message)s")
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "bad: %s", ("a\n[ROUTING] request_id=f",), None)
    text = fmt.format(record)
    assert text.splitlines()[1].startswith("    ")
    assert parse_routing_records(text) == []


@pytest.mark.parametrize(
    ("reply", "bad"),
    [
        (Reply(200, "application/json", b"{}", 0.1), False),
        (Reply(400, "application/json", b'{"error": {"message": "m", "type": "t", "code": 400}}', 0.1), False),
        (Reply(500, "application/json", b'{"error": {"message": "m", "type": "t", "code": 500}}', 0.1), True),
        (Reply(400, "text/plain", b"Bad Request", 0.1), True),
        (Reply(404, "application/json", b"[]", 0.1), True),
        (Reply(400, "application/json", b'{"error": {"message": "m", "type": "t", "code": 404}}', 0.1), True),
        (Reply(200, "application/json", b"{}", 2.5), True),
        (Reply(0, "", b"", 0.1), True),
    ],
)
def test_the_campaign_judge_fails_what_it_should(reply: Reply, bad: bool) -> None:
    assert (judge(reply, 2.0) is not None) is bad

