"""A seeded bad-input campaign against the worker and the proxy: raw HTTP on loopback, judged per request.

Every request is built from a seed (``cases``), sent on its own connection as raw bytes (so malformed request
lines, headers and bodies reach the server exactly as written) and judged (``judge``): no 5xx, every error an
OpenAI-style JSON body, an answer within ``max_seconds``. ``tests/e2e/test_fuzz.py`` runs a few thousand of them
in ``make test``; ``benchmarks/fuzz_campaign.py`` runs the long version and prints tried/failed per category.

What aiohttp does not let a server answer at all is not judged as a failure: a request whose headers never end
(the connection is closed by the keep-alive timer, with no answer) is not generated, and a connection the client
itself cuts is not a request.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import random
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

MODEL = "Qwen/Qwen3-VL-2B-Instruct"
Category = str
CATEGORIES: tuple[Category, ...] = ("json", "images", "urls", "encoding", "http", "paths", "sizes")


@dataclass(frozen=True)
class Case:
    category: Category
    name: str
    raw: bytes


@dataclass(frozen=True)
class Reply:
    status: int  # 0: the connection closed without an answer
    content_type: str
    body: bytes
    #: Until the first byte of the answer (a server may drain an unread body for a while before it closes).
    seconds: float


@dataclass
class Report:
    tried: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    slowest: float = 0.0

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())

    def add(self, case: Case, reply: Reply, problem: str | None) -> None:
        self.tried[case.category] += 1
        self.statuses[reply.status] += 1
        self.slowest = max(self.slowest, reply.seconds)
        if problem is not None:
            self.failed[case.category] += 1
            if len(self.examples) < 20:
                self.examples.append(f"{case.category}/{case.name}: {problem}")

    def table(self, title: str) -> str:
        lines = [f"{title}: {sum(self.tried.values())} requests, slowest {self.slowest * 1e3:.0f} ms"]
        lines.append(f"  {'category':10s} {'tried':>7s} {'failed':>7s}")
        for cat in CATEGORIES:
            if self.tried[cat]:
                lines.append(f"  {cat:10s} {self.tried[cat]:7d} {self.failed[cat]:7d}")
        lines.append("  statuses: " + " ".join(f"{s}x{n}" for s, n in sorted(self.statuses.items())))
        lines += [f"  FAIL {e}" for e in self.examples]
        return "\n".join(lines)


# -- raw HTTP ---------------------------------------------------------------------------------------------------
def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (),
    *,
    content_type: str | None = "application/json",
    length: int | None = None,
) -> bytes:
    """One HTTP/1.1 request on a connection the server should close afterwards."""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if content_type and body:
        head.append(f"Content-Type: {content_type}")
    head.append(f"Content-Length: {len(body) if length is None else length}")
    head += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


async def send_raw(host: str, port: int, raw: bytes, timeout_s: float) -> Reply:
    """Write ``raw``, read the answer until the server closes (or ``timeout_s``)."""
    t0 = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return Reply(0, "", b"connect failed", time.perf_counter() - t0)
    data = b""
    first: float | None = None
    try:
        async with asyncio.timeout(timeout_s):
            try:
                writer.write(raw)
                await writer.drain()
            except (ConnectionError, OSError):
                pass  # the server may answer and close before reading everything (413 on a declared length)
            while chunk := await reader.read(65536):
                if first is None:
                    first = time.perf_counter() - t0
                data += chunk
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.close()
    return parse_reply(data, first if first is not None else time.perf_counter() - t0)


def parse_reply(data: bytes, seconds: float) -> Reply:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/"):  # aiohttp answers HTTP/0.9 requests with an HTTP/0.9 line
        return Reply(0, "", data[:200], seconds)
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return Reply(0, "", data[:200], seconds)
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return Reply(status, headers.get("content-type", ""), body, seconds)


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return bytes(out)


def judge(reply: Reply, max_seconds: float, head: bool = False) -> str | None:
    """Why ``reply`` is a failure, or None: a 5xx, an error that is not vLLM's JSON body, no answer, too slow.
    An answer to ``HEAD`` has no body by definition; its status and content type are still judged."""
    if reply.seconds > max_seconds:
        return f"took {reply.seconds:.2f}s (limit {max_seconds}s), status {reply.status}"
    if reply.status == 0:
        return f"no HTTP answer ({reply.body[:80]!r})"
    if reply.status >= 500:
        return f"HTTP {reply.status}: {reply.body[:200]!r}"
    if reply.status >= 400:
        if not reply.content_type.startswith("application/json"):
            return f"HTTP {reply.status} with {reply.content_type or 'no content type'}: {reply.body[:120]!r}"
        if head:
            return None
        try:
            err = json.loads(reply.body)["error"]
            if not (isinstance(err["message"], str) and err["code"] == reply.status and isinstance(err["type"], str)):
                return f"HTTP {reply.status}: malformed error object {err!r:.200}"
        except (ValueError, KeyError, TypeError):
            return f"HTTP {reply.status}: body is not an error object: {reply.body[:120]!r}"
    return None


# -- corrupt images ---------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _encoded(fmt: str, size: tuple[int, int], rng: random.Random, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    colour = tuple(rng.randrange(256) for _ in mode) if len(mode) > 1 else rng.randrange(256)
    Image.new(mode, size, colour).save(buf, format=fmt)  # type: ignore[arg-type]
    return buf.getvalue()


def corrupt_images(rng: random.Random) -> list[tuple[str, bytes]]:
    """Images with a valid header and a broken body, the shapes Pillow fails on with more than ``OSError``."""
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    png_sig = b"\x89PNG\r\n\x1a\n"
    dds = b"DDS " + struct.pack("<7I", 124, 0x100F, 4, 4, 0, 0, 0) + b"\x00" * 44
    out = [
        ("png-truncated-ihdr", png_sig + _png_chunk(b"IHDR", b"\x00" * 5)),
        ("png-bad-crc", png_sig + _png_chunk(b"IHDR", ihdr, 1) + _png_chunk(b"IEND", b"")),
        (
            "png-truncated-idat",
            png_sig + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 49))[:-7],
        ),
        ("png-garbage-chunk", png_sig + _png_chunk(b"IHDR", ihdr) + b"\x00\x00\x00\x04ab\x00d1234"),
        ("qoi-truncated", b"qoif" + struct.pack(">II", 64, 64) + b"\x03\x00"),
        ("dds-fourcc", dds + struct.pack("<2I", 32, 0x4) + b"ZZZZ" + b"\x00" * 40),
        ("dds-rgb-truncated", dds + struct.pack("<2I", 32, 0x40) + b"\x00" * 4 + struct.pack("<5I", 7, 0, 0, 0, 0)),
        ("im-bad-mode", b"Image type: RGB image\r\nImage size (x*y): 4*4\r\nImage type: weird\r\n\x1a" + b"\0" * 600),
        ("gif-header-only", b"GIF89a" + struct.pack("<HH", 64, 64) + b"\xf7\x00\x00"),
        ("bmp-truncated", _encoded("BMP", (40, 40), rng)[:80]),
        ("jpeg-truncated", _encoded("JPEG", (64, 64), rng)[:300]),
        ("webp-truncated", _encoded("WEBP", (32, 32), rng)[:40]),
        ("tiff-truncated", _encoded("TIFF", (32, 32), rng)[:120]),
        ("empty", b""),
        ("not-an-image", rng.randbytes(64)),
    ]
    good = _encoded("PNG", (24, 24), rng)
    cut = rng.randrange(20, len(good))
    out.append(("png-random-cut", good[:cut]))
    flipped = bytearray(good)
    for _ in range(4):
        flipped[rng.randrange(33, len(flipped))] ^= 1 << rng.randrange(8)
    out.append(("png-bit-flips", bytes(flipped)))
    return out


def huge_png(side: int = 8192) -> bytes:
    """A real ``side`` x ``side`` PNG at the pixel limit: a few hundred KB that decode to hundreds of MB."""
    row = b"\x00" + b"\x00\xc8\x00" * side
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def gzip_bomb(expanded: int) -> bytes:
    """A gzip body of a JSON object that expands to about ``expanded`` bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz:
        gz.write(b'{"model": "' + MODEL.encode() + b'", "prompt": "')
        chunk = b"a" * (1 << 20)
        for _ in range(expanded // len(chunk)):
            gz.write(chunk)
        gz.write(b'"}')
    return buf.getvalue()


# -- case generators --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """What the campaign may reference: the image server's base URL, a local media dir (with a FIFO in it)."""

    image_base: str | None = None
    media_dir: str | None = None
    fifo_name: str | None = None
    asset_ref: str | None = None


def _chat(content: object, **extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


def _image_body(url: str, rng: random.Random) -> dict:
    part: dict = {"type": "image_url", "image_url": {"url": url}}
    if rng.random() < 0.2:
        part["uuid"] = rng.choice(["u1", "", None, 5, "x\n"])
    return _chat([part, {"type": "text", "text": "What colour?"}], stream=rng.random() < 0.3)


def _post(path: str, obj: object, rng: random.Random, headers: Sequence[tuple[str, str]] = ()) -> bytes:
    body = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return http_request("POST", path, body, headers)


_WEIRD = [None, True, False, 0, -1, 1.5, 2**63, -(2**70), "", "x", [], {}, [1, "a"], {"a": {"b": [None]}}, "\u0000"]


def _json_case(rng: random.Random) -> Case:
    path = rng.choice(["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"])
    base: dict = (
        _chat("hello there", stream=rng.random() < 0.3)
        if "chat" in path
        else {"model": MODEL, "prompt": "hello", "max_tokens": 3}
    )
    if path == "/detokenize":
        base = {"tokens": [300, 301]}
    kind = rng.randrange(7)
    if kind == 0:  # a field of the wrong type
        key = rng.choice(
            [
                "model",
                "messages",
                "prompt",
                "max_tokens",
                "stream",
                "stop",
                "n",
                "stream_options",
                "cache_salt",
                "tokens",
            ]
        )
        base[key] = rng.choice(_WEIRD)
        name = f"field-{key}"
    elif kind == 1:  # a message of the wrong shape
        base["messages"] = [rng.choice([*_WEIRD, {"role": rng.choice([*_WEIRD, "user", "tool", "x"])}])]
        name = "message-shape"
    elif kind == 2:  # content parts of unknown or broken types
        part = rng.choice(
            [
                {"type": "video_url", "video_url": {"url": "x"}},
                {"type": "image_url"},
                {"type": "image_url", "image_url": rng.choice(_WEIRD)},
                {"type": "text", "text": rng.choice(_WEIRD)},
                {"type": rng.choice(_WEIRD)},
                rng.choice(_WEIRD),
            ]
        )
        base = _chat([part])
        path = "/v1/chat/completions"
        name = "content-part"
    elif kind == 3:  # not JSON, or not an object
        raw = rng.choice([b"{oops", b"[1,2]", b'"str"', b"null", b"\xff\xfe\x00", b"{" * 5000, rng.randbytes(40)])
        return Case("json", "not-an-object", http_request("POST", path, raw))
    elif kind == 4:  # deep nesting
        depth = rng.choice([50, 200, 2000])
        return Case("json", f"nesting-{depth}", http_request("POST", path, b"[" * depth + b"]" * depth))
    elif kind == 5:  # token ids out of range
        base = {"model": MODEL, "prompt": [rng.choice([-1, 2**40, 3.5, "a", 300])], "max_tokens": 2}
        path = rng.choice(["/v1/completions", "/detokenize"])
        if path == "/detokenize":
            base = {"tokens": base["prompt"]}
        name = "token-ids"
    else:  # sampling params at their edges
        base.update(
            max_tokens=rng.choice([0, 1, 10**9, -5]),
            max_completion_tokens=rng.choice([None, 2, "3"]),
            stream_options=rng.choice([None, {"include_usage": True}, {"include_usage": "yes"}]),
            stream=rng.choice([True, False]),
        )
        name = "sampling-edges"
    return Case("json", name, _post(path, base, rng))


def _images_case(rng: random.Random, ctx: Context) -> Case:
    name, data = rng.choice(corrupt_images(rng))
    mime = rng.choice(["image/png", "image/jpeg", "", "text/plain", "image/*"])
    kind = rng.randrange(4)
    if kind == 0:
        url = f"data:{mime};base64," + base64.b64encode(data).decode()
    elif kind == 1:
        url = f"data:{mime};base64," + rng.choice(["!!!", "abc", "a===", base64.b64encode(data).decode()[:-1]])
        name = "bad-base64"
    elif kind == 2:
        url = rng.choice(["data:image/png,plain", "data:", "data:image/png;base64", "data:;base64,"])
        name = "bad-data-url"
    else:
        url = "data:image/png;base64," + base64.b64encode(data).decode()
        body = _chat([{"type": "image_url", "image_url": {"url": url}}] * rng.randrange(1, 20))
        return Case("images", f"{name}-many", _post("/v1/chat/completions", body, rng))
    return Case("images", name, _post(rng.choice(["/v1/chat/completions", "/tokenize"]), _image_body(url, rng), rng))


def _urls_case(rng: random.Random, ctx: Context) -> Case:
    urls = [
        "http://evil\u2100@127.0.0.1/a.png",
        "http://[::1/a.png",
        "http://127.0.0.1:99999/a.png",
        "http://127.0.0.1:abc/a.png",
        "http://127.0.0.1:22/",
        "http://127.0.0.1:1/a.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:2/x.png",
        "http://localhost:3/x.png",
        "https://example.invalid/a.png",
        "ftp://127.0.0.1/a.png",
        "gopher://127.0.0.1:70/_x",
        "file:///etc/passwd",
        "file://otherhost/etc/passwd",
        "file:///tmp/a\u0000b.png",
        "file:///%00",
        "file:///../../../../etc/shadow",
        "/etc/passwd",
        "mmfile://" + "a" * 64 + "\n",
        "mmfile://" + "0" * 64,
        "mmfile://../../etc/passwd",
        "mmfile://",
        "javascript:alert(1)",
        "",
        "\u0000",
        "x" * 3000,
    ]
    if ctx.image_base:
        urls += [f"{ctx.image_base}/missing.png", f"{ctx.image_base}/../../etc/passwd", f"{ctx.image_base}/%00"]
        host, _, port = ctx.image_base.removeprefix("http://").rpartition(":")
        urls += [f"http://{host}:{int(port) + 1}/a.png", f"http://{host}:{int(port) - 1}/a.png"]
    if ctx.media_dir:
        urls += [f"file://{ctx.media_dir}/missing.png", f"file://{ctx.media_dir}/../secret.png"]
        if ctx.fifo_name:
            urls.append(f"file://{ctx.media_dir}/{ctx.fifo_name}")
            urls.append(f"file://{ctx.media_dir}")  # a directory
    if ctx.asset_ref:
        urls += [ctx.asset_ref + "\n", ctx.asset_ref.upper(), ctx.asset_ref + ".toolongext"]
    url = rng.choice(urls)
    return Case(
        "urls", url[:40].encode("unicode_escape").decode(), _post("/v1/chat/completions", _image_body(url, rng), rng)
    )


def _encoding_case(rng: random.Random) -> Case:
    body = json.dumps(_chat("compressed hello")).encode()
    kind = rng.randrange(5)
    if kind == 0:
        enc = rng.choice(["gzip", "deflate", "br", "zstd", "x-unknown", "gzip, gzip"])
        return Case(
            "encoding", f"claims-{enc}", http_request("POST", "/v1/chat/completions", body, [("Content-Encoding", enc)])
        )
    if kind == 1:
        comp = gzip.compress(body)
        cut = comp[: rng.randrange(1, len(comp))]
        return Case(
            "encoding",
            "truncated-gzip",
            http_request("POST", "/v1/chat/completions", cut, [("Content-Encoding", "gzip")]),
        )
    if kind == 2:
        return Case(
            "encoding",
            "gzip-ok",
            http_request("POST", "/v1/chat/completions", gzip.compress(body), [("Content-Encoding", "gzip")]),
        )
    if kind == 3:
        garbage = gzip.compress(rng.randbytes(200))
        return Case(
            "encoding",
            "gzip-garbage-json",
            http_request("POST", "/v1/completions", garbage, [("Content-Encoding", "gzip")]),
        )
    comp = zlib.compress(body)[:-2]
    return Case(
        "encoding", "bad-deflate", http_request("POST", "/v1/completions", comp, [("Content-Encoding", "deflate")])
    )


def _http_case(rng: random.Random) -> Case:
    body = json.dumps(_chat("hi")).encode()
    cases: list[tuple[str, bytes]] = [
        ("bad-method", b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("lowercase-method", b"get /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("http-0.9", b"GET /\r\n\r\n"),
        ("bad-version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("no-version", b"GET /health\r\nHost: x\r\n\r\n"),
        ("long-request-line", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("long-header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"),
        ("many-headers", b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n"),
        ("header-no-colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n"),
        ("header-space-before-colon", b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n"),
        ("ctl-in-request-id", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\x01b\x7f\r\n\r\n"),
        ("ctl-in-header-name", b"GET /health HTTP/1.1\r\nHost: x\r\nX-R\x01: a\r\n\r\n"),
        ("bare-lf", b"GET /health HTTP/1.1\nHost: x\n\n"),
        ("cl-not-a-number", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"),
        ("cl-negative", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"),
        ("cl-twice", b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
        (
            "cl-and-te",
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "bad-chunked",
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        ),
        (
            "te-unknown",
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, x\r\n\r\n0\r\n\r\n",
        ),
        ("cl-10gb", http_request("POST", "/v1/chat/completions", body, length=10 * 1024**3)),
        ("cl-over-limit", http_request("POST", "/v1/completions", b"{}", length=64 * 1024**2)),
        (
            "request-id-forgery",
            http_request("GET", "/health", headers=[("X-Request-Id", "a b [ROUTING] request_id=x")]),
        ),
        ("binary-garbage", rng.randbytes(rng.randrange(1, 200)) + b"\r\n\r\n"),
        ("tls-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(40) + b"\r\n\r\n"),
    ]
    name, raw = rng.choice(cases)
    return Case("http", name, raw)


def _paths_case(rng: random.Random) -> Case:
    paths = [
        "/x%0A[ROUTING]%20request_id=forged%20worker=w9%20overlap_blocks=9%20total_blocks=9%20policy=p",
        "/x%0A[ROUTING]%20request_id=forged%20worker=w9%20overlap_blocks=9%20total_blocks=9%20policy=p%0A",
        "/%0D%0Afake: header",
        "/v1/chat/completions/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/v1/models?x=" + "%ff" * 50,
        "/" + "%C3%28" * 20,
        "/metrics/../health",
        "/v1/chat/completions%00",
        "//v1//models",
        "/\u2100".encode("utf-8").decode("latin-1"),
    ]
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO"])
    path = rng.choice([*paths, "/v1/chat/completions", "/v1/completions", "/health", "/v1/models", "/nope"])
    body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
    return Case("paths", f"{method} {path[:30]}", http_request(method, path, body))


def _sizes_case(rng: random.Random) -> Case:
    kind = rng.randrange(4)
    if kind == 0:
        n = rng.choice([10_000, 100_000, 1_000_000, 3_000_000])
        return Case("sizes", f"text-{n}", _post("/v1/chat/completions", _chat("word " * (n // 5)), rng))
    if kind == 1:
        n = rng.choice([100_000, 2_000_000])
        return Case("sizes", f"prompt-{n}", _post("/v1/completions", {"model": MODEL, "prompt": "z" * n}, rng))
    if kind == 2:
        return Case(
            "sizes",
            "many-messages",
            _post(
                "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "a"}] * 20000}, rng
            ),
        )
    ids = [300] * rng.choice([5000, 200_000])
    return Case("sizes", f"token-ids-{len(ids)}", _post("/v1/completions", {"model": MODEL, "prompt": ids}, rng))


def cases(seed: int, n: int, ctx: Context | None = None, categories: Sequence[Category] = CATEGORIES) -> Iterator[Case]:
    """``n`` cases, the same for the same seed, cycling through ``categories``."""
    rng = random.Random(seed)
    ctx = ctx or Context()
    makers = {
        "json": lambda: _json_case(rng),
        "images": lambda: _images_case(rng, ctx),
        "urls": lambda: _urls_case(rng, ctx),
        "encoding": lambda: _encoding_case(rng),
        "http": lambda: _http_case(rng),
        "paths": lambda: _paths_case(rng),
        "sizes": lambda: _sizes_case(rng),
    }
    for i in range(n):
        yield makers[categories[i % len(categories)]]()


async def run_campaign(
    host: str,
    port: int,
    case_list: Sequence[Case],
    *,
    concurrency: int = 8,
    max_seconds: float = 2.0,
    timeout_s: float = 10.0,
) -> Report:
    """Send every case (``concurrency`` at a time) and judge every reply."""
    report = Report()
    queue = list(reversed(case_list))

    async def worker() -> None:
        while queue:
            case = queue.pop()
            reply = await send_raw(host, port, case.raw, timeout_s)
            report.add(case, reply, judge(reply, max_seconds, head=case.raw.startswith(b"HEAD ")))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return report


async def still_serving(host: str, port: int) -> str | None:
    """None when the server answers /health 200 and a small chat 200; else what went wrong."""
    health = await send_raw(host, port, http_request("GET", "/health"), 10)
    if health.status != 200:
        return f"/health answered {health.status}"
    chat = await send_raw(
        host, port, http_request("POST", "/v1/chat/completions", json.dumps(_chat("still there?")).encode()), 10
    )
    if chat.status != 200:
        return f"a small chat answered {chat.status}: {chat.body[:200]!r}"
    return None


# -- the stack under test ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FuzzTargets:
    worker_port: int
    proxy_port: int
    ctx: Context
    log_dir: str


@contextmanager
def fuzz_stack(root: Path) -> Iterator[FuzzTargets]:
    """One simulated worker and the proxy in front of it (kv_mm, ``--inline-assets``), real processes on loopback,
    with what the campaign references: the image server (the one allowed ``host:port``), a local media directory
    holding a FIFO, and an asset directory holding one image."""
    import os
    import sys

    from harness.gate.image_server import ImageServer
    from harness.mm.assets import AssetStore
    from harness.sim.process import start_workers, stop_workers, worker_env
    from harness.stack.ports import allocate_ports, release_ports
    from harness.stack.processes import spawn, wait_http_ready

    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    os.mkfifo(media / "pipe.png")
    (root / "secret.png").write_bytes(b"secret")
    assets = AssetStore(root / "assets").ensure()
    ref = assets.put(_encoded("PNG", (16, 16), random.Random(0)))
    logs = root / "logs"
    with ImageServer(root / "images") as images:
        images.add("ok.png", _encoded("PNG", (16, 16), random.Random(1)))
        mm = ["--allowed-media-hosts", images.host_port, "--allowed-local-media-path", str(media)]
        worker_args = ["--speedup", "0", "--max-model-len", "4096", "--kv-cache-memory-bytes", "1000000000", *mm]
        workers = start_workers(1, MODEL, logs, [*worker_args, "--asset-dir", str(assets.root)], name_prefix="fuzz-w")
        (port,) = allocate_ports(1)
        argv = [sys.executable, "-m", "harness.proxy", "--model", MODEL, "--workers", workers[0].url, "--port"]
        argv += [str(port), "--policy", "kv_mm", "--asset-dir", str(assets.root), "--inline-assets", *mm]
        proxy = spawn("fuzz-proxy", argv, logs / "fuzz-proxy.log", env=worker_env())
        try:
            wait_http_ready(f"http://127.0.0.1:{port}/health", proxy, 30)
            ctx = Context(f"http://{images.host_port}", str(media), "pipe.png", ref)
            yield FuzzTargets(workers[0].port, port, ctx, str(logs))
        finally:
            proxy.terminate()
            release_ports([port])
            stop_workers(workers)
