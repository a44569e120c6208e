"""What a worker's answer means, decided on its status and its parsed error body, never on English phrases.

vLLM answers errors with ``ErrorResponse`` (``{"error": {"message", "type", "param", "code"}}``,
``vllm/entrypoints/openai/engine/protocol.py``). A request naming a model the worker does not serve gets HTTP 404
with ``type`` ``NotFoundError`` and ``param`` ``model`` (``OpenAIServing._check_model`` in
``vllm/entrypoints/openai/engine/serving.py``): for a request carrying an adapter that means the worker lost it
(restart, unload) and the proxy registers it again.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

#: ok: pass on; rejected: the worker refused the request (4xx), pass on; adapter_missing: it does not know the
#: request's adapter; worker_error: a 5xx another worker may not give; failed: a 5xx no retry can help.
Verdict = Literal["ok", "rejected", "adapter_missing", "worker_error", "failed"]

#: 5xx answers worth another worker: an engine error, an overloaded or starting worker, a gateway in between.
#: 501 (vLLM's ``NotImplementedError``) is the same on every worker.
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})


def error_info(body: bytes) -> dict[str, Any] | None:
    """The ``error`` object of a vLLM ``ErrorResponse``, None when the body is not one."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else None


def error_message(body: bytes, limit: int = 300) -> str:
    """The error's message (or the body's first bytes) for a message naming what the worker said."""
    info = error_info(body)
    if info is not None and "message" in info:
        return str(info["message"])[:limit]
    return body[:limit].decode("utf-8", errors="replace")


def is_unknown_model(status: int, body: bytes) -> bool:
    info = error_info(body) if status == 404 else None
    return info is not None and info.get("type") == "NotFoundError" and info.get("param") == "model"


def classify(status: int, body: bytes, *, has_adapter: bool) -> Verdict:
    if status < 400:
        return "ok"
    if status < 500:
        return "adapter_missing" if has_adapter and is_unknown_model(status, body) else "rejected"
    return "worker_error" if status in RETRYABLE_STATUSES else "failed"


class ModelRename:
    """Rewrites the worker-side model name in answers back to the name the client sent.

    The worker knows an adapter by its content-addressed served name (``style-a@0123456789ab``) and echoes it in
    every ``model`` field; clients must see the name they asked for. The served name is a JSON string of
    ``[A-Za-z0-9._@-]`` only, so its quoted form can occur in a JSON text only as a whole string token (a quote
    inside a string is always escaped). Streams are rewritten line by line, so a name split across chunks is
    still found; only the bytes after the last newline wait for the next chunk.
    """

    def __init__(self, served: str, public: str) -> None:
        self.served = orjson.dumps(served)
        self.public = orjson.dumps(public)
        self._tail = b""

    def whole(self, data: bytes) -> bytes:
        return data.replace(self.served, self.public)

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        return data[:cut].replace(self.served, self.public)

    def flush(self) -> bytes:
        tail, self._tail = self._tail, b""
        return tail.replace(self.served, self.public)
