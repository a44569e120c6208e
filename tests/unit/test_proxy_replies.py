"""Worker answers judged on status and parsed error fields; the served-name rewrite; aiohttp errors mapped once."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from harness.proxy.replies import ModelRename, classify, error_message, is_unknown_model
from harness.proxy.transport import ConnectError, ReadError, ReadTimeout, Timeout, map_aiohttp_error


def err(status: int, err_type: str, param: str | None, message: str = "x") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": err_type, "param": param, "code": status}})


def test_unknown_model_needs_vllms_structured_404() -> None:
    assert is_unknown_model(404, err(404, "NotFoundError", "model", "The model `a@1` does not exist."))
    assert not is_unknown_model(400, err(400, "NotFoundError", "model"))
    assert not is_unknown_model(404, err(404, "NotFoundError", "lora_name"))
    assert not is_unknown_model(404, err(404, "BadRequestError", "model"))
    # English alone decides nothing: vLLM's phrase without the fields, or garbage.
    assert not is_unknown_model(404, b"The model `a` does not exist.")
    assert not is_unknown_model(404, b'{"detail": "Not Found"}')
    assert not is_unknown_model(404, b"[1, 2]")


@pytest.mark.parametrize(
    ("status", "body", "adapter", "verdict"),
    [
        (200, b"{}", False, "ok"),
        (400, err(400, "BadRequestError", "input_tokens"), True, "rejected"),
        (404, err(404, "NotFoundError", "model"), True, "adapter_missing"),
        (404, err(404, "NotFoundError", "model"), False, "rejected"),
        (500, err(500, "InternalServerError", None), False, "worker_error"),
        (503, b"starting", False, "worker_error"),
        (501, err(501, "NotImplementedError", None), False, "failed"),
    ],
)
def test_classify(status: int, body: bytes, adapter: bool, verdict: str) -> None:
    assert classify(status, body, has_adapter=adapter) == verdict


def test_error_message_prefers_the_error_field() -> None:
    assert error_message(err(500, "InternalServerError", None, "engine died")) == "engine died"
    assert error_message(b"plain text " * 100, limit=10) == "plain text"


def test_rename_whole_and_streamed() -> None:
    r = ModelRename("style-a@0123456789ab", "style-a")
    body = b'{"model":"style-a@0123456789ab","choices":[{"message":{"content":"\\"style-a@0123456789ab\\" ok"}}]}'
    out = orjson.loads(r.whole(body))
    assert out["model"] == "style-a"
    assert out["choices"][0]["message"]["content"] == '"style-a@0123456789ab" ok'  # generated text is untouched
    stream = b'data: {"model":"style-a@0123456789ab"}\n\ndata: {"model":"style-a@0123456789ab"}\n\ndata: [DONE]\n\n'
    for size in (1, 5, 17, len(stream)):
        pieces = [stream[i : i + size] for i in range(0, len(stream), size)]
        relayed = b"".join(r.feed(p) for p in pieces) + r.flush()
        assert relayed == stream.replace(b"style-a@0123456789ab", b"style-a")


def test_aiohttp_errors_map_to_transport_errors() -> None:
    assert isinstance(map_aiohttp_error(aiohttp.ConnectionTimeoutError(), reading_body=False), ConnectError)
    assert isinstance(map_aiohttp_error(aiohttp.SocketTimeoutError(), reading_body=True), ReadTimeout)
    assert isinstance(map_aiohttp_error(TimeoutError(), reading_body=False), Timeout)
    assert isinstance(map_aiohttp_error(aiohttp.ServerDisconnectedError(), reading_body=False), ConnectError)
    assert isinstance(map_aiohttp_error(aiohttp.ServerDisconnectedError(), reading_body=True), ReadError)
    assert isinstance(map_aiohttp_error(aiohttp.ClientPayloadError("cut"), reading_body=True), ReadError)
    assert map_aiohttp_error(ValueError("not ours"), reading_body=False) is None
