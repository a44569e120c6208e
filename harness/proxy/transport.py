"""The proxy's transport seam: every byte the proxy exchanges with a worker goes through a ``Transport``.

In the spirit of httpx's transports (``httpx.AsyncBaseTransport`` with ``httpx.AsyncHTTPTransport`` for the
network and ``httpx.MockTransport`` for tests): the service layer sends a request and gets back a status,
headers and a body it can read whole or as chunks, and every network failure arrives as one of four
``TransportError`` subclasses, whatever the client library raised. ``AiohttpTransport`` is the network
implementation; ``MockTransport`` answers from a handler function, so forwarding, failover, the adapter-404
retry and health handling are unit-testable against scripted fake workers without processes or sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

Method = Literal["GET", "POST"]


# -- errors: what can go wrong between the proxy and a worker, independent of the client library ---------------
class TransportError(Exception):
    """A worker exchange that failed below HTTP: no status, or a body cut short."""


class ConnectError(TransportError):
    """No connection, or the connection was lost before the answer's headers arrived (refused, reset, the
    worker closed it). Nothing was processed that a client could have seen."""


class ReadError(TransportError):
    """The answer broke off while its body was being read (the worker died mid-answer)."""


class ReadTimeout(TransportError):
    """The worker stopped sending: no byte within the socket read timeout."""


class Timeout(TransportError):
    """The exchange's total deadline passed."""


@dataclass(frozen=True)
class Timeouts:
    """Deadlines of one exchange, in seconds; None is no limit."""

    total: float | None = None
    connect: float | None = None


class TransportResponse(Protocol):
    """A worker's answer: the status and headers at once, the body read whole or streamed."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...


class Transport(Protocol):
    """Sends one request to a worker. Raises ``TransportError`` subclasses only, never library exceptions."""

    def request(
        self,
        method: Method,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeouts = Timeouts(),
    ) -> AbstractAsyncContextManager[TransportResponse]: ...

    async def close(self) -> None: ...


# -- the network: aiohttp ----------------------------------------------------------------------------------------
def map_aiohttp_error(exc: BaseException, *, reading_body: bool) -> TransportError | None:
    """aiohttp's exception for a failed exchange -> ours; None when ``exc`` is not a transport failure.

    Order matters: aiohttp's ``ServerTimeoutError`` family is both a ``ClientConnectionError`` and an
    ``asyncio.TimeoutError``. A connect timeout (``ConnectionTimeoutError``) is a connection failure that
    another worker may not have; a socket read timeout (``SocketTimeoutError``) means the worker took the request
    and went quiet; a bare ``TimeoutError`` is the total deadline (aiohttp ``ClientTimeout.total``).
    """
    text = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectError(text)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return ReadTimeout(text)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ReadError(text)
    if isinstance(exc, aiohttp.ClientConnectionError):
        return ReadError(text) if reading_body else ConnectError(text)
    if isinstance(exc, TimeoutError):
        return Timeout(text)
    if isinstance(exc, aiohttp.ClientError):  # anything else the client library rejects (bad response line...)
        return ReadError(text) if reading_body else ConnectError(text)
    return None


class _AiohttpResponse:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self._resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, reading_body=True) from None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, reading_body=True) from None


def _mapped(exc: BaseException, *, reading_body: bool) -> TransportError:
    mapped = map_aiohttp_error(exc, reading_body=reading_body)
    assert mapped is not None  # only called with aiohttp.ClientError or TimeoutError
    return mapped


class AiohttpTransport:
    """Worker traffic over one aiohttp session (no connection limit, compressed bodies passed through as is)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: Method,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeouts = Timeouts(),
    ) -> AsyncIterator[TransportResponse]:
        client_timeout = aiohttp.ClientTimeout(total=timeout.total, sock_connect=timeout.connect)
        try:
            cm = self.session.request(method, url, data=body, headers=headers, timeout=client_timeout)
            resp = await cm.__aenter__()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _mapped(exc, reading_body=False) from None
        try:
            yield _AiohttpResponse(resp)
        finally:
            # Leaving the block releases the connection; a body not read to the end closes it, which is how a
            # worker learns that a streaming client left (it aborts the request).
            await cm.__aexit__(None, None, None)

    async def close(self) -> None:
        await self.session.close()


# -- the fake: answers from a handler --------------------------------------------------------------------------
@dataclass(frozen=True)
class TransportRequest:
    """What a ``MockTransport`` handler is given."""

    method: Method
    url: str
    headers: Mapping[str, str]
    body: bytes
    timeout: Timeouts

    @property
    def base(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def path(self) -> str:
        return urlsplit(self.url).path


@dataclass
class FakeResponse:
    """A scripted answer. ``chunks`` (bytes, or an exception to raise at that point of the body) stream the
    body; without them ``body`` is the whole of it."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    chunks: Sequence[bytes | BaseException] | None = None

    def __post_init__(self) -> None:
        self.headers = CIMultiDict(self.headers)

    async def read(self) -> bytes:
        if self.chunks is None:
            return self.body
        parts = []
        async for chunk in self.iter_chunks():
            parts.append(chunk)
        return b"".join(parts)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks if self.chunks is not None else [self.body]:
            await asyncio.sleep(0)  # let other tasks run between chunks, as a socket would
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk


Handler = Callable[[TransportRequest], Awaitable[FakeResponse]]


class MockTransport:
    """httpx.MockTransport for the proxy: ``handler(request)`` returns a ``FakeResponse`` or raises a
    ``TransportError``; every request is kept in ``sent``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent: list[TransportRequest] = []
        self.closed = False

    @contextlib.asynccontextmanager
    async def request(
        self,
        method: Method,
        url: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeouts = Timeouts(),
    ) -> AsyncIterator[TransportResponse]:
        req = TransportRequest(method, url, CIMultiDict(headers or {}), body or b"", timeout)
        self.sent.append(req)
        yield await self.handler(req)

    async def close(self) -> None:
        self.closed = True
