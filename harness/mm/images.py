"""Image parts: fetch the encoded bytes, read the size from the header, hash the content.

Nothing here decodes pixels. The hash follows vLLM's ``MultiModalHasher``: blake3 over the model id and the
image's original encoded bytes, so one file sent as a data URL, by http URL or from disk hashes the same,
while a re-encode of the same picture does not; a content part's ``uuid`` replaces the hash verbatim.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import blake3
from PIL import Image

from harness.errors import ImageError

DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
DEFAULT_FETCH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from and how big they may be (the server-side request forgery guard)."""

    allowed_hosts: Collection[str] = ("loopback",)
    allowed_local_path: Path | None = None
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    fetch_timeout_s: float = DEFAULT_FETCH_TIMEOUT_S

    def host_allowed(self, host: str) -> bool:
        """Exact host names or IPs; ``loopback`` admits localhost and any loopback IP; ``*`` admits all."""
        host = host.strip("[]").lower()
        if "*" in self.allowed_hosts or host in self.allowed_hosts:
            return True
        if "loopback" in self.allowed_hosts:
            if host == "localhost":
                return True
            try:
                return ipaddress.ip_address(host).is_loopback
            except ValueError:
                return False
        return False


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
    """(width, height, format) from the header; Pillow's open() does not decode pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                fmt = img.format or "unknown"
    except Image.DecompressionBombError as exc:  # far over any sane limit: a size error, not a format error
        raise ImageError(f"image exceeds the pixel limit ({exc})", 413) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot identify image file ({type(exc).__name__}: {exc})") from None
    if width <= 0 or height <= 0:
        raise ImageError(f"image has an empty side ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels", 413)
    return width, height, fmt


def read_local(url: str, policy: ImagePolicy) -> bytes:
    if policy.allowed_local_path is None:
        raise ImageError("local files are not allowed (no --allowed-local-media-path)", status=403)
    path = Path(unquote(urlsplit(url).path)).resolve()
    root = policy.allowed_local_path.resolve()
    if not path.is_relative_to(root):
        raise ImageError(f"path {path} is outside the allowed media directory", status=403)
    try:
        size = path.stat().st_size
        if size > policy.max_bytes:
            raise ImageError(f"image is larger than the limit of {policy.max_bytes} bytes", status=413)
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror}") from None


async def fetch_http(url: str, policy: ImagePolicy, session: aiohttp.ClientSession) -> bytes:
    host = urlsplit(url).hostname or ""
    if not policy.host_allowed(host):
        raise ImageError(f"image host {host!r} is not in the allow-list", status=403)
    timeout = aiohttp.ClientTimeout(total=policy.fetch_timeout_s)
    try:
        async with session.get(url, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ImageError(f"fetching {url} returned HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > policy.max_bytes:
                raise ImageError(f"image is larger than the limit of {policy.max_bytes} bytes", status=413)
            buf = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                buf += chunk
                if len(buf) > policy.max_bytes:
                    raise ImageError(f"image is larger than the limit of {policy.max_bytes} bytes", 413)
            return bytes(buf)
    except TimeoutError:
        raise ImageError(f"fetching {url} timed out after {policy.fetch_timeout_s}s", status=408) from None
    except aiohttp.ClientError as exc:
        raise ImageError(f"fetching {url} failed: {exc}") from None


async def load_image_bytes(url: str, policy: ImagePolicy, session: aiohttp.ClientSession | None) -> bytes:
    """The encoded bytes an image URL points at, within the policy's limits."""
    if not isinstance(url, str) or not url:
        raise ImageError("image_url.url must be a non-empty string")
    scheme = url.split(":", 1)[0].lower()
    if scheme == "data":
        data = decode_data_url(url, policy.max_bytes)
    elif scheme in ("http", "https"):
        if session is None:
            raise ImageError("http image URLs are not supported here")
        data = await fetch_http(url, policy, session)
    elif scheme == "file":
        data = read_local(url, policy)
    else:
        raise ImageError(f"unsupported image URL scheme {scheme!r} (use data:, http(s): or file:)")
    if len(data) > policy.max_bytes:
        raise ImageError(f"image is larger than the limit of {policy.max_bytes} bytes", status=413)
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
