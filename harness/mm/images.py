"""Image parts: fetch the encoded bytes, read the size from the header, hash the content.

Nothing here decodes pixels. The hash follows vLLM's ``MultiModalHasher``: blake3 over the model id and the
image's original encoded bytes, so one file sent as a data URL, by http URL or from disk hashes the same,
while a re-encode of the same picture does not; a content part's ``uuid`` replaces the hash verbatim.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import ipaddress
import logging
import os
import stat
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import aiohttp
import blake3
from PIL import Image

from harness.contract import escape_log
from harness.errors import ImageError

log = logging.getLogger("harness.mm.images")

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
DEFAULT_FETCH_TIMEOUT_S = 5.0


#: The one answer for every http(s) image URL that is refused or cannot be fetched. Distinct messages (or
#: statuses) for "not allowed", "HTTP 302", "cannot connect" and "timed out" would turn the fetcher into a port
#: scanner of whatever the worker can reach; the log keeps the real reason.
FETCH_REFUSED = "image URL could not be fetched: the host is not allowed, unreachable, or did not answer 200"

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from and how big they may be (the server-side request forgery guard).

    ``allowed_hosts`` entries: ``host:port`` (``[v6]:port``) admits exactly that pair, the way the harness
    admits its own image server; a bare ``host`` admits that host on any port; ``loopback`` is the explicit
    opt-in for every port of localhost, 127/8 and ::1; ``*`` admits everything. Nothing is admitted by default.
    """

    allowed_hosts: Collection[str] = ()
    allowed_local_path: Path | None = None
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S

    def host_allowed(self, host: str, port: int | None = None) -> bool:
        """Whether ``host`` (on ``port``; None: any pair entry for the host must match a port) is admitted."""
        host = host.strip("[]").lower()
        if not host:
            return False
        entries = {e.lower() for e in self.allowed_hosts}
        if "*" in entries or host in entries:
            return True
        if port is not None and (f"{host}:{port}" in entries or f"[{host}]:{port}" in entries):
            return True
        if "loopback" in entries:
            if host == "localhost":
                return True
            try:
                return ipaddress.ip_address(host).is_loopback
            except ValueError:
                return False
        return False


def split_url(url: str) -> SplitResult:
    """``urlsplit`` with its ``ValueError`` (an unclosed ``[::1``, NFKC-unsafe netlocs such as ``evil\u2100@``,
    a non-numeric port) as the client's malformed URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- validates the port, raising ValueError
    except ValueError:
        raise ImageError("image URL is malformed") from None
    return parts


@dataclass(frozen=True)
class ImageInfo:
    """What routing and caching need from an image: its identity and its size."""

    hash: str
    width: int
    height: int
    format: str
    data: bytes = field(repr=False, compare=False)


def mm_hash(model: str, data: bytes, uuid: str | None = None) -> str:
    if uuid:
        return uuid
    hasher = blake3.blake3(model.encode("utf-8"))
    hasher.update(b"\x00image\x00")
    hasher.update(data)
    return hasher.hexdigest()


def decode_data_url(url: str, max_bytes: int) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ImageError("data URL has no ',' separating header and payload")
    mime = header[5:].split(";", 1)[0]
    if mime and not mime.startswith("image/"):
        raise ImageError(f"data URL media type {mime!r} is not an image")
    if ";base64" not in header:
        raise ImageError("only base64 data URLs are supported for images")
    padding = 2 if payload.endswith("==") else 1 if payload.endswith("=") else 0
    if (len(payload) - padding) * 3 // 4 > max_bytes:  # exact decoded length of valid base64
        raise ImageError(f"image is larger than the limit of {max_bytes} bytes", status=413)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"data URL payload is not valid base64: {exc}") from None


def image_size(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int, str]:
    """(width, height, format) from the header; Pillow's open() does not decode pixels.

    Any decoder failure is the client's bad image: for corrupt bodies behind a valid header Pillow raises far
    more than ``OSError`` (``SyntaxError`` for a broken PNG chunk, ``NotImplementedError`` for a DDS pixel
    format, ``struct.error`` and ``ValueError`` for truncated QOI/DDS, ``EOFError``, ``IndexError`` ...).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                fmt = img.format or "unknown"
    except Image.DecompressionBombError as exc:  # far over any sane limit: a size error, not a format error
        raise ImageError(f"image exceeds the pixel limit ({exc})", 413) from None
    except Exception as exc:  # see the docstring: every decoder failure is a 400
        raise ImageError(f"cannot identify image file ({type(exc).__name__})") from None
    if width <= 0 or height <= 0:
        raise ImageError(f"image has an empty side ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels", 413)
    return width, height, fmt


def _too_large(max_bytes: int) -> ImageError:
    return ImageError(f"image is larger than the limit of {max_bytes} bytes", status=413)


def read_local(url: str, policy: ImagePolicy) -> bytes:
    """A ``file://`` image inside the allowed directory: a regular file only, size-checked in the same read.

    The file is opened non-blocking and checked with ``fstat`` on the open descriptor, so a FIFO (or a device)
    placed in the directory is refused instead of blocking the reader forever, and a file swapped after the
    check cannot be read instead. A ``file://host/...`` URL names another machine's file: refused.
    """
    if policy.allowed_local_path is None:
        raise ImageError("local files are not allowed (no --allowed-local-media-path)", status=403)
    parts = split_url(url)
    if parts.netloc:
        raise ImageError("file:// image URLs must not name a host (use file:///path)")
    raw = unquote(parts.path)
    if "\x00" in raw:
        raise ImageError("file:// image path contains a NUL character")
    try:
        path = Path(raw).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise ImageError("file:// image path cannot be resolved") from None
    root = policy.allowed_local_path.resolve()
    if not path.is_relative_to(root):
        raise ImageError(f"path {path} is outside the allowed media directory", status=403)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"cannot read {path}: not a regular file")
        if st.st_size > policy.max_bytes:
            raise _too_large(policy.max_bytes)
        return read_fd(fd, policy.max_bytes)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def read_fd(fd: int, max_bytes: int) -> bytes:
    """Read an open regular file to its end, refusing it once it grows past ``max_bytes`` (413)."""
    buf = bytearray()
    while True:
        chunk = os.read(fd, min(1 << 20, max_bytes + 1 - len(buf)))
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > max_bytes:
            raise _too_large(max_bytes)


async def fetch_http(url: str, policy: ImagePolicy, session: aiohttp.ClientSession) -> bytes:
    """GET an allowed ``host:port``; every refusal and failure is the same 400 (``FETCH_REFUSED``)."""
    parts = split_url(url)
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    if not policy.host_allowed(host, port):
        log.info("image fetch refused: %s:%s is not in the allow-list", escape_log(host), port)
        raise ImageError(FETCH_REFUSED)
    timeout = aiohttp.ClientTimeout(total=policy.fetch_timeout_s)
    try:
        async with session.get(url, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                log.info("image fetch from %s:%s failed: HTTP %d", escape_log(host), port, resp.status)
                raise ImageError(FETCH_REFUSED)
            if resp.content_length is not None and resp.content_length > policy.max_bytes:
                raise _too_large(policy.max_bytes)
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                buf += chunk
                if len(buf) > policy.max_bytes:
                    raise _too_large(policy.max_bytes)
            return bytes(buf)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        log.info("image fetch from %s:%s failed: %s", escape_log(host), port, type(exc).__name__)
        raise ImageError(FETCH_REFUSED) from None


#: Data URLs up to this size are decoded on the event loop; larger ones in a thread (base64 runs ~1 GB/s).
_INLINE_DECODE_BYTES = 256 * 1024


async def load_image_bytes(url: str, policy: ImagePolicy, session: aiohttp.ClientSession | None) -> bytes:
    """The encoded bytes an image URL points at, within the policy's limits; never blocks the event loop."""
    if not isinstance(url, str) or not url:
        raise ImageError("image_url.url must be a non-empty string")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "data":
        if len(url) <= _INLINE_DECODE_BYTES:
            data = decode_data_url(url, policy.max_bytes)
        else:
            data = await asyncio.to_thread(decode_data_url, url, policy.max_bytes)
    elif scheme in ("http", "https"):
        if session is None:
            raise ImageError("http image URLs are not supported here")
        data = await fetch_http(url, policy, session)
    elif scheme == "file":
        data = await asyncio.to_thread(read_local, url, policy)
    else:
        raise ImageError(f"unsupported image URL scheme {escape_log(scheme[:16])!r} (use data:, http(s): or file:)")
    if len(data) > policy.max_bytes:
        raise _too_large(policy.max_bytes)
    return data


async def load_image(
    url: str,
    model: str,
    policy: ImagePolicy,
    session: aiohttp.ClientSession | None,
    uuid: str | None = None,
) -> ImageInfo:
    data = await load_image_bytes(url, policy, session)
    width, height, fmt = image_size(data, policy.max_pixels)
    return ImageInfo(hash=mm_hash(model, data, uuid), width=width, height=height, format=fmt, data=data)
