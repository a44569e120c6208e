"""The generator against an in-process loopback SSE server: streaming measurement, loop bounds, errors, stops."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from harness.load.generator import LoadShape, Target, arrival_times, run_load, split_by_session
from harness.load.stats import RequestRecord, run_stats
from harness.load.workloads import RequestSpec, TurnSpec


def specs(n: int, text: str = "hi") -> list[RequestSpec]:
    return [RequestSpec(index=i, turns=(TurnSpec(text=f"{text} {i}"),), max_tokens=3) for i in range(n)]


def body_of(req: RequestSpec) -> bytes:
    return orjson.dumps({"text": req.turns[-1].text, "max_tokens": req.max_tokens})


class FakeServer:
    """Role chunk, an optional pause, then ``tokens`` content chunks and a usage chunk. Text markers steer it:
    FAIL -> 500, HANG -> never answers, NOUSAGE -> no usage chunk, NULLDETAILS -> prompt_tokens_details null."""

    def __init__(self, first_delay_s: float = 0.0, tokens: int = 3) -> None:
        self.first_delay_s = first_delay_s
        self.tokens = tokens
        self.inflight = 0
        self.max_inflight = 0
        self.seen = 0
        self.release = asyncio.Event()  # set at teardown: hanging handlers end, so the server can stop

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = body["text"]
        self.seen += 1
        if "FAIL" in text:
            return web.json_response({"error": {"type": "BadRequestError", "message": "nope"}}, status=500)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Served-By": "fake0"})
            await resp.prepare(request)

            async def send(obj: dict[str, Any]) -> None:
                await resp.write(b"data: " + orjson.dumps(obj) + b"\n\n")

            await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            if "HANG" in text:
                await self.release.wait()
                return resp
            await asyncio.sleep(self.first_delay_s)
            for _ in range(self.tokens):
                await send({"choices": [{"index": 0, "delta": {"content": "x"}}]})
                await asyncio.sleep(0)
            if "NOUSAGE" not in text:
                details = None if "NULLDETAILS" in text else {"cached_tokens": 8}
                usage = {"prompt_tokens": 20, "completion_tokens": self.tokens, "prompt_tokens_details": details}
                await send({"choices": [], "usage": usage})
            await resp.write(b"data: [DONE]\n\n")
            return resp
        finally:
            self.inflight -= 1


def serve(server: FakeServer, scenario: Callable[[str], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", server.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            return await scenario(f"http://127.0.0.1:{port}/v1/chat/completions")
        finally:
            server.release.set()
            await runner.cleanup()

    return asyncio.run(main())


def test_ttft_is_the_first_content_chunk_not_the_role_chunk():
    server = FakeServer(first_delay_s=0.05, tokens=4)

    async def scenario(url: str) -> list[RequestRecord]:
        res = await run_load(specs(2), body_of, Target((url,)), LoadShape(concurrency=1))
        return res.records

    records = serve(server, scenario)
    for r in records:
        assert r.ok and r.ttft_s is not None and r.ttft_s >= 0.05
        assert r.content_chunks == 4 and len(r.itl_s) == 3
        assert (r.prompt_tokens, r.completion_tokens, r.cached_tokens, r.worker) == (20, 4, 8, "fake0")
        assert r.e2e_s is not None and r.e2e_s >= r.ttft_s


def test_closed_loop_never_exceeds_its_concurrency_and_sends_every_request():
    server = FakeServer(first_delay_s=0.01)

    async def scenario(url: str) -> list[RequestRecord]:
        return (await run_load(specs(25), body_of, Target((url,)), LoadShape(concurrency=3))).records

    records = serve(server, scenario)
    assert len(records) == 25 and all(r.ok for r in records)
    assert server.seen == 25 and server.max_inflight <= 3
    assert sorted(r.index for r in records) == list(range(25))


def test_errors_are_classified_and_kept_in_the_denominators():
    server = FakeServer()
    reqs = [RequestSpec(i, (TurnSpec("FAIL" if i % 4 == 0 else "ok"),), 3) for i in range(8)]

    async def scenario(url: str) -> list[RequestRecord]:
        return (await run_load(reqs, body_of, Target((url,)), LoadShape(concurrency=2))).records

    records = serve(server, scenario)
    failed = [r for r in records if not r.ok]
    assert [r.index for r in failed] == [0, 4]
    assert all(r.error == "http_500" and r.status == 500 and "nope" in (r.error_detail or "") for r in failed)
    s = run_stats(records)
    assert s.total == 8 and s.errors == {"http_500": 2} and s.error_rate == pytest.approx(0.25)


def test_connection_errors_are_recorded():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    res = asyncio.run(run_load(specs(3), body_of, Target((url,)), LoadShape(concurrency=1)))
    assert [r.error for r in res.records] == ["connection"] * 3


def test_null_details_mean_zero_cached_and_missing_usage_falls_back_to_chunks():
    server = FakeServer(tokens=5)
    reqs = [RequestSpec(0, (TurnSpec("NULLDETAILS"),), 5), RequestSpec(1, (TurnSpec("NOUSAGE"),), 5)]

    async def scenario(url: str) -> list[RequestRecord]:
        return (await run_load(reqs, body_of, Target((url,)), LoadShape(concurrency=1))).records

    a, b = serve(server, scenario)
    assert a.cached_tokens == 0 and a.prompt_tokens == 20
    assert b.usage_missing and b.completion_tokens == 5 and b.cached_tokens is None


def test_open_loop_follows_its_schedule_and_bounds_in_flight():
    server = FakeServer(first_delay_s=0.02)

    async def scenario(url: str) -> list[RequestRecord]:
        shape = LoadShape(mode="open", rate=400.0, arrival="constant", max_in_flight=2)
        return (await run_load(specs(12), body_of, Target((url,)), shape)).records

    records = serve(server, scenario)
    assert len(records) == 12 and all(r.ok for r in records)
    assert server.max_inflight <= 2
    for k, r in enumerate(records):
        assert r.scheduled_s == pytest.approx(k / 400.0)
        assert r.sent_s >= r.scheduled_s


def test_arrival_times_constant_poisson_and_ramp():
    assert arrival_times(4, 2.0) == [0.0, 0.5, 1.0, 1.5]
    # ramp over 2 s to 2/s: L(t) = t^2 / 2 until t = 2 (L = 2), then 2 + 2 (t - 2)
    ramp = arrival_times(4, 2.0, "constant", 2.0)
    assert ramp == pytest.approx([0.0, 2**0.5, 2.0, 2.5])
    poisson = arrival_times(4000, 100.0, "poisson", seed=1)
    assert poisson == sorted(poisson) and poisson == arrival_times(4000, 100.0, "poisson", seed=1)
    assert 4000 / poisson[-1] == pytest.approx(100.0, rel=0.1)


def test_duration_bound_cuts_off_hanging_requests_and_stops():
    server = FakeServer(first_delay_s=0.02)
    reqs = [RequestSpec(i, (TurnSpec("HANG" if i == 0 else "ok"),), 3) for i in range(500)]

    async def scenario(url: str) -> list[RequestRecord]:
        shape = LoadShape(concurrency=2, duration_s=0.3, drain_s=0.2)
        return (await run_load(reqs, body_of, Target((url,)), shape)).records

    records = serve(server, scenario)
    assert records[0].error == "incomplete"
    assert len(records) < 500  # stopped sending at the duration bound
    s = run_stats(records)
    assert s.incomplete == 1 and s.errors == {}


def test_warmup_requests_are_marked_and_excluded():
    server = FakeServer()

    async def scenario(url: str) -> list[RequestRecord]:
        return (await run_load(specs(6), body_of, Target((url,)), LoadShape(concurrency=1, warmup=2))).records

    records = serve(server, scenario)
    assert [r.warmup for r in records] == [True, True, False, False, False, False]
    assert run_stats(records).total == 4


def test_cancelling_a_run_returns_what_it_has_with_in_flight_marked_interrupted():
    server = FakeServer()
    reqs = [RequestSpec(i, (TurnSpec("HANG" if i >= 3 else "ok"),), 3) for i in range(10)]
    seen: list[RequestRecord] = []

    async def scenario(url: str) -> Any:
        task = asyncio.create_task(
            run_load(reqs, body_of, Target((url,)), LoadShape(concurrency=1), on_record=seen.append)
        )
        while server.inflight == 0 or len(seen) < 3:  # wait for the hanging request to be in flight
            await asyncio.sleep(0.01)
        task.cancel()
        return await task

    result = serve(server, scenario)
    assert result.interrupted
    assert [r.error for r in result.records] == [None, None, None, "interrupted"]
    assert len(seen) == 3  # on_record saw the finished ones only


def test_split_by_session_keeps_sessions_in_one_process():
    reqs = [RequestSpec(i, (TurnSpec("t"),), 1, session=i % 3 if i < 6 else None) for i in range(9)]
    parts = split_by_session(reqs, 2)
    assert sorted(k for p in parts for k in p) == list(range(9))
    for p in parts:
        sessions = {reqs[k].session for k in p if reqs[k].session is not None}
        for other in parts:
            if other is not p:
                assert not sessions & {reqs[k].session for k in other if reqs[k].session is not None}


def test_chunk_classifier_finds_content_without_parsing_and_parses_what_it_cannot_tell():
    from harness.load.generator import _CONTENT, _EMPTY, _PARSE, _classify

    assert _classify(b'{"choices":[{"delta":{"role":"assistant","content":""}}]}') is _EMPTY
    assert _classify(b'{"choices":[{"delta":{"content": "hi"}}]}') is _CONTENT  # json.dumps spacing
    assert _classify(b'{"choices":[{"delta":{"content":null,"reasoning_content":"x"}}]}') is _CONTENT
    assert _classify(b'{"choices":[{"text":"x","index":0}]}') is _CONTENT
    assert _classify(b'{"choices":[],"usage":{"prompt_tokens":3}}') is _PARSE
    assert _classify(b'{"error":{"message":"boom"}}') is _PARSE
    assert _classify(b'{"choices":[{"delta":{"content":["odd"]}}]}') is _PARSE
