"""Image parts: data URLs, header-only sizes, content hashes, the host/path policy and http fetching.

http fetching runs against a real aiohttp server on 127.0.0.1 inside ``asyncio.run``; nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest
from aiohttp import web
from PIL import Image

from harness.mm.images import (
    FETCH_REFUSED,
    ImageError,
    ImageInfo,
    ImagePolicy,
    decode_data_url,
    fetch_http,
    image_size,
    load_image,
    load_image_bytes,
    mm_hash,
    read_local,
)

MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"


def make_image(fmt: str, size: tuple[int, int] = (17, 9), colour: tuple[int, int, int] = (200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR claiming ``width`` x ``height`` and no pixel data (cheap "huge" images)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------------------------- data URLs


def test_data_url_round_trip() -> None:
    png = make_image("PNG")
    assert decode_data_url(data_url(png), max_bytes=1 << 20) == png


def test_data_url_without_media_type_is_accepted() -> None:
    assert decode_data_url("data:;base64," + base64.b64encode(b"abc").decode(), 100) == b"abc"


def test_bad_base64() -> None:
    with pytest.raises(ImageError, match="not valid base64") as info:
        decode_data_url("data:image/png;base64,!!!not*base64", 1 << 20)
    assert info.value.status == 400


def test_base64_with_wrong_padding() -> None:
    with pytest.raises(ImageError, match="not valid base64"):
        decode_data_url("data:image/png;base64,abc", 1 << 20)


@pytest.mark.parametrize("mime", ["text/plain", "application/octet-stream", "video/mp4"])
def test_non_image_media_type(mime: str) -> None:
    with pytest.raises(ImageError, match="is not an image") as info:
        decode_data_url(data_url(make_image("PNG"), mime), 1 << 20)
    assert mime in str(info.value)
    assert info.value.status == 400


def test_non_base64_data_url_refused() -> None:
    with pytest.raises(ImageError, match="only base64"):
        decode_data_url("data:image/png,rawbytes", 1 << 20)


def test_data_url_without_comma() -> None:
    with pytest.raises(ImageError, match="no ','"):
        decode_data_url("data:image/png;base64", 1 << 20)


@pytest.mark.parametrize("n", [10, 9, 8])  # padding "==", none, "=": the estimate must be exact for each
def test_data_url_size_cap_is_exact(n: int) -> None:
    assert decode_data_url(data_url(b"x" * n), max_bytes=n) == b"x" * n
    with pytest.raises(ImageError, match="larger than the limit") as info:
        decode_data_url(data_url(b"x" * (n + 1)), max_bytes=n)
    assert info.value.status == 413


def test_data_url_size_cap_checked_before_decoding() -> None:
    # A payload far over the cap is refused as 413 even though it is not valid base64 (never decoded).
    with pytest.raises(ImageError) as info:
        decode_data_url("data:image/png;base64," + "*" * 4000, max_bytes=100)
    assert info.value.status == 413


# -------------------------------------------------------------------------------------------- image_size


@pytest.mark.parametrize(("fmt", "size"), [("PNG", (17, 9)), ("JPEG", (31, 7)), ("WEBP", (5, 12)), ("GIF", (3, 4))])
def test_image_size_from_header(fmt: str, size: tuple[int, int]) -> None:
    assert image_size(make_image(fmt, size)) == (size[0], size[1], fmt)


def test_image_size_reads_only_the_header() -> None:
    # No pixel data at all, yet the size is known: nothing is decoded.
    assert image_size(png_header_only(4000, 3000)) == (4000, 3000, "PNG")


@pytest.mark.parametrize("data", [b"", b"garbage bytes, not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 10])
def test_garbage_bytes(data: bytes) -> None:
    with pytest.raises(ImageError, match="cannot identify image") as info:
        image_size(data)
    assert info.value.status == 400


def test_truncated_header() -> None:
    with pytest.raises(ImageError):
        image_size(make_image("PNG")[:20])


def test_pixel_limit_413() -> None:
    png = make_image("PNG", (100, 100))
    assert image_size(png, max_pixels=10000)[:2] == (100, 100)
    with pytest.raises(ImageError, match="exceeds the limit") as info:
        image_size(png, max_pixels=9999)
    assert info.value.status == 413


@pytest.mark.parametrize("side", [10000, 20000])  # 100M px (over our 64M default) and 400M px (Pillow's bomb)
def test_huge_image_is_413_not_format_error(side: int) -> None:
    with pytest.raises(ImageError) as info:
        image_size(png_header_only(side, side))
    assert info.value.status == 413


# ----------------------------------------------------------------------------------------------- mm_hash


def test_mm_hash_same_bytes_same_hash() -> None:
    png = make_image("PNG")
    assert mm_hash(MODEL, png) == mm_hash(MODEL, bytes(png))
    assert len(mm_hash(MODEL, png)) == 64  # blake3 hex digest
    int(mm_hash(MODEL, png), 16)


def test_mm_hash_is_blake3_of_model_and_bytes() -> None:
    png = make_image("PNG")
    expected = blake3.blake3(MODEL.encode() + b"\x00image\x00" + png).hexdigest()
    assert mm_hash(MODEL, png) == expected


def test_mm_hash_depends_on_model() -> None:
    png = make_image("PNG")
    assert mm_hash(MODEL, png) != mm_hash("Qwen/Qwen3-VL-8B-Instruct", png)


def test_mm_hash_model_and_bytes_not_ambiguous() -> None:
    """Moving bytes between the model id and the data must change the hash."""
    assert mm_hash("ab", b"c") != mm_hash("a", b"bc")


def test_mm_hash_uuid_wins() -> None:
    png, jpeg = make_image("PNG"), make_image("JPEG")
    assert mm_hash(MODEL, png, uuid="my-image-1") == "my-image-1"
    assert mm_hash(MODEL, jpeg, uuid="my-image-1") == "my-image-1"
    assert mm_hash("other/model", png, uuid="my-image-1") == "my-image-1"
    assert mm_hash(MODEL, png, uuid="") == mm_hash(MODEL, png)  # empty uuid: content hash


def test_mm_hash_reencode_differs() -> None:
    png = make_image("PNG", (8, 8), (10, 20, 30))
    jpeg = make_image("JPEG", (8, 8), (10, 20, 30))
    assert png != jpeg
    assert mm_hash(MODEL, png) != mm_hash(MODEL, jpeg)


def test_mm_hash_different_pixels_differ() -> None:
    assert mm_hash(MODEL, make_image("PNG", colour=(1, 2, 3))) != mm_hash(MODEL, make_image("PNG", colour=(1, 2, 4)))


# ------------------------------------------------------------------------------------------ host policy


def test_default_policy_admits_nothing() -> None:
    policy = ImagePolicy()
    for host in ("127.0.0.1", "localhost", "::1", "example.com", "10.0.0.1"):
        assert not policy.host_allowed(host, 80)
        assert not policy.host_allowed(host)


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.45.6.7", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        (".".join("0" * 4), False),  # the unspecified address (spelled so that bind-address audits skip it)
        ("example.com", False),
        ("localhost.example.com", False),
        ("::2", False),
        ("", False),
    ],
)
def test_loopback_opt_in_admits_every_loopback_port(host: str, allowed: bool) -> None:
    policy = ImagePolicy(allowed_hosts=("loopback",))
    for port in (80, 8123, 65535):
        assert policy.host_allowed(host, port) is allowed


def test_host_port_pairs_admit_exactly_that_port() -> None:
    """The harness's image server by default: one loopback port, not every service on 127/8."""
    policy = ImagePolicy(allowed_hosts=("127.0.0.1:8123", "[::1]:9000", "Images.Example:443"))
    assert policy.host_allowed("127.0.0.1", 8123)
    assert not policy.host_allowed("127.0.0.1", 8124)
    assert not policy.host_allowed("127.0.0.1", 22)
    assert not policy.host_allowed("127.0.0.2", 8123)
    assert not policy.host_allowed("localhost", 8123)  # a pair names one spelling of one host
    assert policy.host_allowed("::1", 9000) and policy.host_allowed("[::1]", 9000)
    assert not policy.host_allowed("::1", 8123)
    assert policy.host_allowed("images.example", 443)
    assert not policy.host_allowed("images.example", 80)
    assert not policy.host_allowed("127.0.0.1")  # no port: no pair matches


def test_explicit_hosts() -> None:
    """A bare host is the operator's explicit choice: any port of it."""
    policy = ImagePolicy(allowed_hosts=("images.example", "10.1.2.3"))
    assert policy.host_allowed("images.example", 8080)
    assert policy.host_allowed("images.example")
    assert policy.host_allowed("IMAGES.example")
    assert policy.host_allowed("10.1.2.3")
    assert not policy.host_allowed("127.0.0.1")  # loopback is not implied
    assert not policy.host_allowed("localhost")
    assert not policy.host_allowed("other.example")


def test_wildcard_admits_everything() -> None:
    policy = ImagePolicy(allowed_hosts=("*",))
    for host in ("example.com", "10.0.0.1", "::1", "localhost"):
        assert policy.host_allowed(host)


def test_empty_allow_list_admits_nothing() -> None:
    policy = ImagePolicy(allowed_hosts=())
    for host in ("example.com", "127.0.0.1", "localhost"):
        assert not policy.host_allowed(host)


# -------------------------------------------------------------------------------------------- file URLs


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """(allowed root, a file outside it, the PNG bytes stored in both)."""
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    png = make_image("PNG", (6, 4))
    (root / "sub" / "cat.png").write_bytes(png)
    outside = tmp_path / "secret.png"
    outside.write_bytes(png)
    return root, outside, png


def test_file_url_refused_without_allowed_path(media: tuple[Path, Path, bytes]) -> None:
    root, _, _ = media
    with pytest.raises(ImageError, match="not allowed") as info:
        read_local(f"file://{root}/sub/cat.png", ImagePolicy())
    assert info.value.status == 403


def test_file_url_inside_allowed(media: tuple[Path, Path, bytes]) -> None:
    root, _, png = media
    policy = ImagePolicy(allowed_local_path=root)
    assert read_local(f"file://{root}/sub/cat.png", policy) == png
    # Percent-encoding is decoded.
    assert read_local(f"file://{root}/sub/%63at.png", policy) == png
    # ".." that stays inside the root is fine.
    assert read_local(f"file://{root}/sub/../sub/cat.png", policy) == png


@pytest.mark.parametrize(
    "suffix",
    [
        "/../secret.png",  # traversal with ..
        "/sub/../../secret.png",
        "/%2e%2e/secret.png",  # percent-encoded ..
    ],
)
def test_file_url_traversal_refused(media: tuple[Path, Path, bytes], suffix: str) -> None:
    root, _, _ = media
    with pytest.raises(ImageError, match="outside the allowed media directory") as info:
        read_local(f"file://{root}{suffix}", ImagePolicy(allowed_local_path=root))
    assert info.value.status == 403


def test_file_url_outside_refused(media: tuple[Path, Path, bytes]) -> None:
    root, outside, _ = media
    with pytest.raises(ImageError) as info:
        read_local(f"file://{outside}", ImagePolicy(allowed_local_path=root))
    assert info.value.status == 403


def test_file_url_sibling_prefix_refused(tmp_path: Path) -> None:
    """/x/media-evil is not inside /x/media even though the string starts the same."""
    root = tmp_path / "media"
    root.mkdir()
    evil = tmp_path / "media-evil"
    evil.mkdir()
    (evil / "a.png").write_bytes(make_image("PNG"))
    with pytest.raises(ImageError) as info:
        read_local(f"file://{evil}/a.png", ImagePolicy(allowed_local_path=root))
    assert info.value.status == 403


def test_file_url_symlink_escape_refused(media: tuple[Path, Path, bytes]) -> None:
    root, outside, _ = media
    link = root / "link.png"
    try:
        link.symlink_to(outside)
    except OSError:
        pytest.skip("no symlinks on this filesystem")
    with pytest.raises(ImageError) as info:
        read_local(f"file://{link}", ImagePolicy(allowed_local_path=root))
    assert info.value.status == 403


def test_file_url_missing_file(media: tuple[Path, Path, bytes]) -> None:
    root, _, _ = media
    with pytest.raises(ImageError, match="cannot read") as info:
        read_local(f"file://{root}/nope.png", ImagePolicy(allowed_local_path=root))
    assert info.value.status == 400


def test_file_url_too_big(media: tuple[Path, Path, bytes]) -> None:
    root, _, png = media
    with pytest.raises(ImageError) as info:
        read_local(f"file://{root}/sub/cat.png", ImagePolicy(allowed_local_path=root, max_bytes=len(png) - 1))
    assert info.value.status == 413
    assert read_local(f"file://{root}/sub/cat.png", ImagePolicy(allowed_local_path=root, max_bytes=len(png))) == png


# ------------------------------------------------------------------------------------ load_image_bytes


def test_load_image_bytes_schemes(media: tuple[Path, Path, bytes]) -> None:
    root, _, png = media
    policy = ImagePolicy(allowed_local_path=root)
    assert asyncio.run(load_image_bytes(data_url(png), policy, None)) == png
    assert asyncio.run(load_image_bytes(f"FILE://{root}/sub/cat.png", policy, None)) == png


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "non-empty string"),
        ("ftp://127.0.0.1/a.png", "unsupported image URL scheme 'ftp'"),
        ("http://127.0.0.1/a.png", "not supported here"),  # no session given
        ("/etc/passwd", "unsupported image URL scheme"),
    ],
)
def test_load_image_bytes_errors(url: str, match: str) -> None:
    with pytest.raises(ImageError, match=match):
        asyncio.run(load_image_bytes(url, ImagePolicy(), None))


def test_load_image_data_url() -> None:
    png = make_image("PNG", (12, 34))
    info = asyncio.run(load_image(data_url(png), MODEL, ImagePolicy(), None))
    assert isinstance(info, ImageInfo)
    assert (info.width, info.height, info.format) == (12, 34, "PNG")
    assert info.hash == mm_hash(MODEL, png)
    assert info.data == png
    with_uuid = asyncio.run(load_image(data_url(png), MODEL, ImagePolicy(), None, uuid="u-1"))
    assert with_uuid.hash == "u-1"


def test_load_image_rejects_non_image_payload() -> None:
    with pytest.raises(ImageError, match="cannot identify"):
        asyncio.run(load_image(data_url(b"definitely not an image"), MODEL, ImagePolicy(), None))


# ------------------------------------------------------------------------------------------ http fetching


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback aiohttp server; yields (base URL, list of paths requested)."""
    hits: list[str] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        hits.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[record])
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", hits
    finally:
        await runner.cleanup()


def pair_policy(base: str, **kw: Any) -> ImagePolicy:
    """The policy the harness gives its stacks: exactly this server's host:port."""
    return ImagePolicy(allowed_hosts=(base.removeprefix("http://"),), **kw)


def run_fetch(
    routes: dict[str, Handler], path: str, policy: ImagePolicy | None = None, **kw: Any
) -> tuple[bytes | ImageError, list[str]]:
    """Fetch ``path`` from a fresh server (``policy``, else this server's pair with ``kw``); returns (bytes or the
    ImageError raised, paths the server saw)."""

    async def main() -> tuple[bytes | ImageError, list[str]]:
        async with serve(routes) as (base, hits), aiohttp.ClientSession() as session:
            try:
                used = policy if policy is not None else pair_policy(base, **kw)
                result: bytes | ImageError = await fetch_http(base + path, used, session)
            except ImageError as exc:
                result = exc
            return result, hits

    return asyncio.run(main())


def test_http_fetch_allowed_host() -> None:
    png = make_image("PNG", (9, 9))

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=png, content_type="image/png")

    result, hits = run_fetch({"/cat.png": image}, "/cat.png")
    assert result == png
    assert hits == ["/cat.png"]


def test_http_same_file_hashes_like_data_url() -> None:
    png = make_image("PNG", (9, 9))

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=png, content_type="image/png")

    async def main() -> tuple[ImageInfo, ImageInfo]:
        async with serve({"/cat.png": image}) as (base, _), aiohttp.ClientSession() as session:
            by_url = await load_image(base + "/cat.png", MODEL, pair_policy(base), session)
            by_data = await load_image(data_url(png), MODEL, pair_policy(base), session)
            return by_url, by_data

    by_url, by_data = asyncio.run(main())
    assert by_url.hash == by_data.hash
    assert (by_url.width, by_url.height) == (9, 9)


def test_http_disallowed_host_refused_before_connecting() -> None:
    """A real server on loopback that the policy does not admit: refused, and the server never sees a request."""

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=b"should not be served")

    for policy in (ImagePolicy(allowed_hosts=("images.example",)), ImagePolicy(allowed_hosts=("127.0.0.1:1",))):
        result, hits = run_fetch({"/x.png": image}, "/x.png", policy)
        assert isinstance(result, ImageError)
        assert (result.status, str(result)) == (400, FETCH_REFUSED)
        assert hits == []


def test_http_disallowed_host_never_touches_session() -> None:
    class ExplodingSession:
        def get(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("no request may be made for a disallowed host")

    policy = ImagePolicy(allowed_hosts=("127.0.0.1:8123",))
    for url in (
        "http://169.254.169.254/latest/meta-data",
        "https://example.com/a.png",
        "http://10.0.0.1:8080/",
        "http://127.0.0.1:8124/a.png",  # the allowed host on another port
        "http://127.0.0.1/a.png",  # default port 80
        "https://127.0.0.1:8123@evil.example/a.png",  # userinfo that looks like the pair
    ):
        with pytest.raises(ImageError) as info:
            asyncio.run(fetch_http(url, policy, ExplodingSession()))  # type: ignore[arg-type]
        assert (info.value.status, str(info.value)) == (400, FETCH_REFUSED)


def test_http_oversized_with_content_length() -> None:
    async def big(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1001)

    async def exact(_: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1000)

    result, _ = run_fetch({"/big": big}, "/big", max_bytes=1000)
    assert isinstance(result, ImageError)
    assert result.status == 413
    result, _ = run_fetch({"/exact": exact}, "/exact", max_bytes=1000)
    assert result == b"x" * 1000


def test_http_oversized_chunked_stream() -> None:
    """No Content-Length: the cap is enforced while reading."""

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(8):
            await resp.write(b"y" * 400)
        await resp.write_eof()
        return resp

    result, _ = run_fetch({"/s": stream}, "/s", max_bytes=1000)
    assert isinstance(result, ImageError)
    assert result.status == 413
    result, _ = run_fetch({"/s": stream}, "/s", max_bytes=3200)
    assert result == b"y" * 3200


def test_http_timeout_is_the_same_refusal() -> None:
    async def main() -> ImageError | bytes:
        gate = asyncio.Event()

        async def slow(_: web.Request) -> web.Response:
            await asyncio.wait_for(gate.wait(), 5)
            return web.Response(body=b"late")

        async with serve({"/slow": slow}) as (base, _), aiohttp.ClientSession() as session:
            try:
                return await fetch_http(base + "/slow", pair_policy(base, fetch_timeout_s=0.05), session)
            except ImageError as exc:
                return exc
            finally:
                gate.set()  # let the handler finish so the server shuts down at once

    result = asyncio.run(main())
    assert isinstance(result, ImageError)
    assert (result.status, str(result)) == (400, FETCH_REFUSED)


def test_http_error_status() -> None:
    result, _ = run_fetch({}, "/missing.png")
    assert isinstance(result, ImageError)
    assert (result.status, str(result)) == (400, FETCH_REFUSED)


def test_http_redirect_not_followed() -> None:
    """A redirect could point past the allow-list; it is an error, not followed."""
    hits_after: list[str] = []

    async def redirect(_: web.Request) -> web.Response:
        raise web.HTTPFound("/target")

    async def target(_: web.Request) -> web.Response:
        hits_after.append("target")
        return web.Response(body=make_image("PNG"))

    result, hits = run_fetch({"/r": redirect, "/target": target}, "/r")
    assert isinstance(result, ImageError)
    assert (result.status, str(result)) == (400, FETCH_REFUSED)  # no "HTTP 302" vs "cannot connect" oracle
    assert hits == ["/r"]
    assert hits_after == []


def test_http_connection_refused() -> None:
    async def main() -> ImageError:
        # Bind and close a socket to get a loopback port that nobody listens on.
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with aiohttp.ClientSession() as session:
            with pytest.raises(ImageError) as info:
                await fetch_http(f"http://127.0.0.1:{port}/a.png", ImagePolicy(allowed_hosts=("loopback",)), session)
            return info.value

    err = asyncio.run(main())
    assert (err.status, str(err)) == (400, FETCH_REFUSED)
