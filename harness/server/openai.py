"""Small pieces of the OpenAI-compatible HTTP surface shared by the simulated engine and the proxy.

Errors follow vLLM's ``ErrorResponse``: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP
status as ``code``; request ids follow the ``X-Request-Id`` convention (keep the client's, else generate).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from harness.errors import ApiError

REQUEST_ID_HEADER = "X-Request-Id"
SERVED_BY_HEADER = "X-Served-By"

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
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware both servers share: a request id on every request (``request["rid"]``) and response,
    ``before`` hooks (fault injection), OpenAI-style errors for every exception, and ``finished(request, status,
    seconds)`` always called once — where each server writes its one log line per request."""

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
            response = await handler(request)
            status = response.status
            if not response.prepared:
                for key, value in headers(rid).items():
                    response.headers.setdefault(key, value)
            return response
        except (ConnectionResetError, aiohttp.ClientConnectionError) as exc:
            status = 499  # the client went away mid-response: nobody is left to answer
            logger.warning("request_id=%s connection closed: %s", rid, exc)
            raise
        except Exception as exc:
            response = exception_response(exc, headers(rid), rid, logger)
            status = response.status
            return response
        finally:
            finished(request, status, time.perf_counter() - start)

    return middleware
