"""Engine supervision and the cheap-first image path of the simulated worker, in-process on loopback.

A dead engine loop must fail the requests it held (503, not a hang) and turn /health to 503; an image over the
context length is refused from its header, before any pixel is decoded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from harness.server.app import listen
from harness.server.fuzz import Reply, http_request, huge_png, send_raw
from harness.sim import answers
from harness.sim.api import build_app
from harness.sim.config import parse_args
from harness.sim.service import SimWorker
from tests.helpers import MODEL, data_url, image_message, png_bytes


@asynccontextmanager
async def worker(*extra: str) -> AsyncIterator[tuple[SimWorker, int]]:
    cfg = parse_args(["--model", MODEL, "--port", "0", "--kv-cache-memory-bytes", "1000000000", *extra])
    w = SimWorker(cfg)
    runner = web.AppRunner(build_app(w), access_log=None)
    await runner.setup()
    srv = await listen(runner, "127.0.0.1", 0)
    await w.startup()
    try:
        yield w, srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await runner.cleanup()
        await w.shutdown()


async def post(port: int, path: str, body: dict[str, Any]) -> Reply:
    return await send_raw("127.0.0.1", port, http_request("POST", path, json.dumps(body).encode()), 20)


def test_dead_engine_fails_pending_and_new_requests_and_health(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> tuple[Reply, Reply, Reply, Reply]:
        # Real-time steps (speedup 1) so the request is still in the engine when the loop dies.
        async with worker("--speedup", "1", "--step-overhead-ms", "50") as (w, port):
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
            assert (await send_raw("127.0.0.1", port, http_request("GET", "/health"), 5)).status == 200
            pending = asyncio.create_task(post(port, "/v1/chat/completions", body))
            while not w.engine.running and not w.engine.waiting:  # the request reached the engine
                await asyncio.sleep(0.01)

            def broken(*args: object) -> None:
                raise RuntimeError("scheduler bug")

            monkeypatch.setattr(w.engine, "_complete", broken)
            first = await asyncio.wait_for(pending, 20)
            health = await send_raw("127.0.0.1", port, http_request("GET", "/health"), 5)
            later = await post(port, "/v1/chat/completions", body)
            stream = await post(port, "/v1/chat/completions", {**body, "stream": True})
            return first, health, later, stream

    first, health, later, stream = asyncio.run(main())
    for reply in (first, later, stream):
        assert reply.status == 503, reply
        assert "engine is dead" in json.loads(reply.body)["error"]["message"]
        assert "scheduler bug" in json.loads(reply.body)["error"]["message"]
    assert health.status == 503 and b"engine dead" in health.body


def test_image_over_the_context_is_refused_before_any_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """8192x8192 at the pixel limit: its header says it cannot fit, so it is never decoded."""
    decoded: list[int] = []
    real = answers.dominant_colours
    monkeypatch.setattr(answers, "dominant_colours", lambda data, *a: decoded.append(len(data)) or real(data, *a))

    async def main() -> tuple[Reply, Reply]:
        async with worker("--speedup", "0", "--max-model-len", "4096") as (w, port):
            w.images.analyze = answers.dominant_colours
            big = await post(
                port, "/v1/chat/completions", {"model": MODEL, "messages": image_message(data_url(huge_png()))}
            )
            small = await post(
                port,
                "/v1/chat/completions",
                {"model": MODEL, "messages": image_message(data_url(png_bytes((0, 200, 0))))},
            )
            return big, small

    big, small = asyncio.run(main())
    assert big.status == 400 and "maximum context length" in json.loads(big.body)["error"]["message"]
    assert small.status == 200 and "green" in json.loads(small.body)["choices"][0]["message"]["content"]
    assert len(decoded) == 1  # the small image only
