"""Scripted fake vLLM workers behind the proxy's ``MockTransport``, a recording client sink, and a proxy runner.

A ``FakeWorker`` answers the endpoints the proxy uses (``/health``, ``/v1/models``, LoRA load/unload, generate)
the way vLLM does (status codes and ``ErrorResponse`` bodies), and takes a script: the next generate requests
are answered by queued ``FakeResponse`` objects, exceptions, or coroutines, before the default answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson

from harness.proxy.config import ProxyConfig
from harness.proxy.service import ClientGone, Inbound, Proxy, Reply
from harness.proxy.transport import ConnectError, FakeResponse, MockTransport, TransportError, TransportRequest
from harness.server.openai import SERVED_BY_HEADER, SSE_DONE, sse_event
from tests.helpers import MODEL

GENERATE_PATHS = ("/v1/chat/completions", "/v1/completions")
Scripted = FakeResponse | TransportError | Callable[[TransportRequest], Awaitable[FakeResponse]]


def error_response(status: int, message: str, err_type: str, param: str | None = None) -> FakeResponse:
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return FakeResponse(status, orjson.dumps(body), {"Content-Type": "application/json"})


def not_found_model(model: str) -> FakeResponse:
    """vLLM's answer for a model it does not serve (``OpenAIServing._check_model``)."""
    return error_response(404, f"The model `{model}` does not exist.", "NotFoundError", "model")


@dataclass
class FakeWorker:
    name: str
    port: int
    up: bool = True
    #: Loaded adapters: served name -> path.
    adapters: dict[str, str] = field(default_factory=dict)
    script: deque[Scripted] = field(default_factory=deque)
    load_script: deque[Scripted] = field(default_factory=deque)
    health_script: deque[Scripted] = field(default_factory=deque)
    #: Bodies of the generate requests it received, in order.
    generated: list[dict[str, Any]] = field(default_factory=list)
    loads: list[dict[str, Any]] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, req: TransportRequest) -> FakeResponse:
        if not self.up:
            raise ConnectError(f"Cannot connect to host 127.0.0.1:{self.port}")
        path = req.path
        if path == "/health":
            if self.health_script:
                return await self._play(self.health_script.popleft(), req)
            return FakeResponse(200, headers={SERVED_BY_HEADER: self.name})
        if path == "/v1/models":
            cards = [{"id": MODEL, "parent": None}] + [
                {"id": n, "root": p, "parent": MODEL} for n, p in self.adapters.items()
            ]
            return FakeResponse(200, orjson.dumps({"object": "list", "data": cards}))
        if path == "/v1/load_lora_adapter":
            return await self._load(req)
        if path == "/v1/unload_lora_adapter":
            name = orjson.loads(req.body)["lora_name"]
            self.unloads.append(name)
            if self.adapters.pop(name, None) is None:
                return error_response(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            return FakeResponse(200, b"Success")
        if path in GENERATE_PATHS:
            body = orjson.loads(req.body)
            self.generated.append(body)
            if self.script:
                return await self._play(self.script.popleft(), req)
            model = body.get("model")
            if model not in (None, MODEL) and model not in self.adapters:
                return not_found_model(model)
            return self.answer(body)
        return error_response(404, "Not Found", "NotFoundError")

    async def _load(self, req: TransportRequest) -> FakeResponse:
        body = orjson.loads(req.body)
        self.loads.append(body)
        if self.load_script:
            return await self._play(self.load_script.popleft(), req)
        name = body["lora_name"]
        if name in self.adapters:  # vLLM's _check_load_lora_adapter_request
            return error_response(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
                "set 'load_inplace' to True.",
                "InvalidUserInput",
            )
        self.adapters[name] = body["lora_path"]
        return FakeResponse(200, f"Success: LoRA adapter '{name}' added successfully.".encode())

    @staticmethod
    async def _play(item: Scripted, req: TransportRequest) -> FakeResponse:
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, FakeResponse):
            return item
        return await item(req)

    def answer(self, body: dict[str, Any]) -> FakeResponse:
        model = body.get("model") or MODEL
        headers = {SERVED_BY_HEADER: self.name, "Content-Type": "application/json"}
        if body.get("stream"):
            chunks = [
                sse_event({"model": model, "choices": [{"index": 0, "delta": {"content": word}}]})
                for word in ("it ", "is ", "green")
            ]
            return FakeResponse(
                200, headers={**headers, "Content-Type": "text/event-stream"}, chunks=[*chunks, SSE_DONE]
            )
        reply = {"model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": "green"}}]}
        return FakeResponse(200, orjson.dumps(reply), headers)


class Fleet:
    """Fake workers on fake ports, and the ``MockTransport`` that reaches them."""

    def __init__(self, n: int) -> None:
        self.workers = [FakeWorker(f"fake-{i}", 9000 + i) for i in range(n)]
        self.transport = MockTransport(self._route)

    def __getitem__(self, i: int) -> FakeWorker:
        return self.workers[i]

    async def _route(self, req: TransportRequest) -> FakeResponse:
        for w in self.workers:
            if req.base == w.url:
                return await w.handle(req)
        raise ConnectError(f"no fake worker at {req.base}")


class RecordingSink:
    """A client that records what it was streamed; ``leave_after`` sends make it hang up."""

    def __init__(self, leave_after: int | None = None) -> None:
        self.status: int | None = None
        self.headers: Mapping[str, str] = {}
        self.chunks: list[bytes] = []
        self.finished = False
        self.leave_after = leave_after

    async def open(self, status: int, headers: Mapping[str, str]) -> None:
        self.status, self.headers = status, headers

    async def send(self, chunk: bytes) -> None:
        if self.leave_after is not None and len(self.chunks) >= self.leave_after:
            raise ClientGone
        self.chunks.append(chunk)

    async def finish(self) -> None:
        self.finished = True

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode()

    def events(self) -> list[str]:
        return [line[len("data: ") :] for line in self.text.splitlines() if line.startswith("data: ")]


def make_proxy(fleet: Fleet, policy: str = "kv_mm", **overrides: Any) -> Proxy:
    cfg = ProxyConfig(
        model=MODEL,
        workers=[w.url for w in fleet.workers],
        port=0,
        policy=policy,
        health_interval_s=3600.0,  # tests drive health checks themselves
        **overrides,
    )
    return Proxy(cfg, transport=fleet.transport)


@asynccontextmanager
async def running(proxy: Proxy) -> AsyncIterator[Proxy]:
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


_counter = iter(range(1_000_000))


async def send(
    proxy: Proxy, body: dict[str, Any], *, rid: str | None = None, sink: RecordingSink | None = None, chat: bool = True
) -> Reply | RecordingSink:
    """One request through the proxy's service layer, as the HTTP layer would hand it over."""
    body = {"model": MODEL, **body}
    inbound = Inbound(
        path=GENERATE_PATHS[0] if chat else GENERATE_PATHS[1],
        body=orjson.dumps(body),
        rid=rid or f"req-{next(_counter)}",
        chat=chat,
    )
    sink = sink or RecordingSink()
    reply = await proxy.generate(inbound, sink)
    return sink if reply is None else reply


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]
