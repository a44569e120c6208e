"""Small pieces of the OpenAI-compatible HTTP surface shared by the simulated engine and the proxy.

Errors follow vLLM's ``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP
status as ``code``; request ids follow the ``X-Request-Id`` convention (keep the client's, else generate).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from harness.contract import escape_log
from harness.errors import ApiError

REQUEST_ID_HEADER = "X-Request-Id"
SERVED_BY_HEADER = "X-Served-By"

#: The largest request body either server reads, *after* ``Content-Encoding`` is undone (aiohttp's
#: ``client_max_size`` counts decompressed bytes): room for one image at the default 20 MiB limit as base64.
MAX_BODY_BYTES = 32 * 1024 * 1024
#: A body must arrive within this many seconds once the headers are in: a client that declares a length and
#: sends less (or sends it a byte a second) cannot hold a request open forever.
BODY_TIMEOUT_S = 30.0


def error_body(exc: ApiError) -> dict[str, Any]:
    """vLLM's ``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}``, ``code`` the HTTP status."""
    return {"error": {"message": exc.message, "type": exc.err_type, "param": exc.param, "code": exc.status}}


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(exc: ApiError, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response(error_body(exc), exc.status, headers)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


async def read_json_object(request: web.Request) -> dict[str, Any]:
    return parse_json_object(await request.read())


#: Ids kept as clients send them; anything else (spaces, '=' ...) could forge ``key=value`` log records.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/@+-]{1,128}$")


def request_id_of(request: web.Request) -> str:
    """The client's X-Request-Id when it is a safe token, else a fresh one."""
    rid = request.headers.get(REQUEST_ID_HEADER, "").strip()
    return rid if _SAFE_REQUEST_ID.match(rid) else uuid.uuid4().hex


def sse_event(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def model_card(model_id: str, root: str, parent: str | None, created: int, max_model_len: int | None) -> dict:
    """An entry of ``GET /v1/models`` as vLLM writes it (``ModelCard`` with one ``ModelPermission``)."""
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_model_len,
        "permission": [
            {
                "id": f"modelperm-{uuid.uuid5(uuid.NAMESPACE_URL, model_id).hex}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


async def read_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, within a size limit and a deadline, every failure a 4xx ``ApiError``.

    A declared ``Content-Length`` over the limit is refused before a byte is read (413); the decompressed size is
    capped too (aiohttp's ``client_max_size``, set to the same limit on both apps, and checked again here); a
    ``Content-Encoding`` the body does not match is the client's error (400), not a 500. aiohttp caches the
    bytes, so handlers that call ``request.read()`` afterwards get them without reading again.
    """
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise ApiError(413, f"Request body of {declared} bytes exceeds the limit of {max_bytes} bytes.")
    try:
        async with asyncio.timeout(timeout_s):
            body = await request.read()
    except TimeoutError:
        raise ApiError(408, f"Request body not received within {timeout_s:g}s.") from None
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"Request body exceeds the limit of {max_bytes} bytes (after decompression).") from None
    except (web.RequestPayloadError, HttpProcessingError) as exc:
        # The rest of the body is undecodable too: end the payload here (aiohttp would otherwise drain it after
        # the answer, meet the same error again and log it as unhandled) and close the connection after the
        # answer, since the parser's position in the stream is lost.
        request.content.feed_eof()
        raise BodyError(400, f"Request body cannot be read: {_reason(exc)}") from None
    if len(body) > max_bytes:
        raise ApiError(413, f"Request body exceeds the limit of {max_bytes} bytes (after decompression).")
    return body


class BodyError(ApiError):
    """A body that cannot be decoded: answered, then the connection is closed."""


def _reason(exc: BaseException) -> str:
    """An exception's message for a client, on one line (aiohttp's parser messages span several)."""
    text = " ".join(str(getattr(exc, "message", "") or exc).split())
    return text[:200] or type(exc).__name__


def exception_response(exc: Exception, headers: Mapping[str, str], rid: str, logger: logging.Logger) -> web.Response:
    """The one place an exception becomes an answer: 4xx for bad input, 500 (logged) for bugs.

    Redirects and other non-error ``HTTPException`` are re-raised for aiohttp to send as they are.
    """
    if isinstance(exc, ApiError):  # the whole client-error family: prompts, images, assets, adapters
        return error_response(exc, headers)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return error_response(ApiError(exc.status, exc.reason), headers)
    logger.exception("request_id=%s unhandled error", rid)
    return error_response(ApiError(500, f"Internal server error: {type(exc).__name__}"), headers)


QUIET_PATHS = frozenset({"/health", "/metrics"})


def api_middleware(
    logger: logging.Logger,
    *,
    headers: Callable[[str], Mapping[str, str]],
    finished: Callable[[web.Request, int, float], None],
    before: Callable[[web.Request], None] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware both servers share: a request id on every request (``request["rid"]``) and response,
    ``before`` hooks (fault injection), the body read within its limits (``read_body``) before any handler
    work, OpenAI-style errors for every exception, and ``finished(request, status, seconds)`` always called
    once — where each server writes its one log line per request (client text through ``escape_log``)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        rid = request_id_of(request)
        request["rid"] = rid
        request["stats"] = {}
        start = time.perf_counter()
        status = 500
        try:
            if before is not None:
                before(request)
            if request.body_exists:
                await read_body(request, max_body_bytes, body_timeout_s)
            response = await handler(request)
            status = response.status
            if not response.prepared:
                for key, value in headers(rid).items():
                    response.headers.setdefault(key, value)
            return response
        except (ConnectionResetError, aiohttp.ClientConnectionError) as exc:
            status = 499  # the client went away mid-response: nobody is left to answer
            logger.warning("request_id=%s connection closed: %s", rid, escape_log(exc))
            raise
        except Exception as exc:
            response = exception_response(exc, headers(rid), rid, logger)
            if isinstance(exc, BodyError):
                response.force_close()
            status = response.status
            return response
        finally:
            finished(request, status, time.perf_counter() - start)

    return middleware


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's connection handler with its own error answers as OpenAI-style JSON instead of text/plain.

    aiohttp answers what never reaches the application itself — a malformed request line, an oversized or
    malformed header, a bad method, a bad ``Content-Length``, a control character in a header value — through
    ``RequestHandler.handle_error`` (``aiohttp/web_protocol.py``), which builds a text/plain (or HTML) body.
    ``web.Server`` always instantiates the base class (its ``__call__`` hard-codes it and no runner or server
    keyword selects another), so ``harness.server.app.serve_app`` creates the listening socket itself with
    this subclass as the protocol factory. The parser's message (it quotes the client's bytes) goes to the
    client, and to the log only escaped, on one line, without a traceback.
    """

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # a response is under way: nothing else can be sent
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        reason = " ".join((message or "").split()) or _phrase(status)
        if status >= 500:
            self.logger.error(
                "error handling request from %s: %s", request.remote, escape_log(reason), exc_info=exc
            )
            reason = _phrase(status)  # never a stack or an internal message to the client
        else:
            self.logger.info("rejected malformed request from %s: %s", request.remote, escape_log(reason))
        body = error_body(ApiError(status, reason[:500]))
        resp = web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
        resp.force_close()
        return resp


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
