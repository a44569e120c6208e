"""EngineMetrics: vLLM's Prometheus names and labels, fed by a real engine run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.mm.prompt import Prompt
from harness.sim.engine import Engine, OutputPlan, Request
from harness.sim.kv_cache import BlockPool
from harness.sim.metrics import EngineMetrics
from harness.sim.timing import TimingModel
from tests.helpers import run_engine

T = TypeVar("T")
B = 16
MODEL = "sim-model"
LABELS = {"model_name": MODEL, "engine": "0"}
DEADLINE_S = 10.0


def scrape(metrics: EngineMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **extra: str) -> float:
    return samples[(name, tuple(sorted({**LABELS, **extra}.items())))]


def make_req(rid: str, n_prompt: int, n_out: int, reason: str = "stop", base: int = 1000) -> Request:
    return Request(
        request_id=rid,
        prompt=Prompt(token_ids=list(range(base, base + n_prompt))),
        plan=OutputPlan(tuple(range(60_000, 60_000 + n_out)), reason),
    )


async def wait_until(req: Request, cond: Callable[[Request], bool]) -> None:
    while not cond(req):
        await req.changed.wait()
        req.changed.clear()


def setup(timing: TimingModel, num_blocks: int = 128, **kw: int) -> tuple[Engine, EngineMetrics]:
    metrics = EngineMetrics(MODEL)
    engine = Engine(BlockPool(num_blocks, B), timing, hooks=metrics, **kw)
    metrics.bind(engine)
    return engine, metrics


async def submit(engine: Engine, req: Request) -> Request:
    engine.add_request(req)
    await asyncio.wait_for(wait_until(req, lambda r: r.finished), DEADLINE_S)
    return req


@pytest.mark.parametrize("speedup", [0, 1000])
def test_counters_and_histograms_after_engine_run(speedup: float) -> None:
    engine, metrics = setup(TimingModel(speedup=speedup))
    p = 100

    async def body() -> list[Request]:
        return [
            await submit(engine, make_req("cold", p, 5)),
            await submit(engine, make_req("warm", p, 7)),
            await submit(engine, make_req("other", 40, 3, reason="length", base=30_000)),
        ]

    reqs = run_engine(engine, body)
    hit = (p - 1) // B * B
    assert [r.num_cached_tokens for r in reqs] == [0, hit, 0]

    text = generate_latest(metrics.registry).decode()
    assert "vllm:prefix_cache_queries_total" in text
    assert "vllm:prefix_cache_hits_total" in text
    assert 'finished_reason="stop"' in text

    s = scrape(metrics)
    assert value(s, "vllm:prefix_cache_queries_total") == 2 * p + 40
    assert value(s, "vllm:prefix_cache_hits_total") == hit
    assert value(s, "vllm:prefix_cache_queries_total") == engine.pool.stats.queries
    assert value(s, "vllm:prefix_cache_hits_total") == engine.pool.stats.hits
    assert value(s, "vllm:request_success_total", finished_reason="stop") == 2
    assert value(s, "vllm:request_success_total", finished_reason="length") == 1
    assert value(s, "vllm:request_success_total", finished_reason="abort") == 0
    assert value(s, "vllm:prompt_tokens_total") == 2 * p + 40
    assert value(s, "vllm:generation_tokens_total") == 5 + 7 + 3
    assert value(s, "vllm:num_preemptions_total") == 0
    assert value(s, "vllm:time_to_first_token_seconds_count") == 3
    assert value(s, "vllm:time_to_first_token_seconds_bucket", le="+Inf") == 3
    assert value(s, "vllm:e2e_request_latency_seconds_count") == 3
    # One inter-token latency per token after each request's first.
    assert value(s, "vllm:inter_token_latency_seconds_count") == 4 + 6 + 2
    ttft_sum = sum(r.ttft or 0.0 for r in reqs)
    assert value(s, "vllm:time_to_first_token_seconds_sum") == pytest.approx(ttft_sum, abs=1e-6)
    # Idle engine at scrape time.
    assert value(s, "vllm:num_requests_running") == 0
    assert value(s, "vllm:num_requests_waiting") == 0
    assert value(s, "vllm:kv_cache_usage_perc") == 0.0
    # No _created samples (vLLM's exposition has none).
    assert "_created" not in text


def test_gauges_are_read_at_scrape_time() -> None:
    engine, metrics = setup(TimingModel(speedup=10_000), num_blocks=100, max_num_seqs=1)

    async def body() -> None:
        a = make_req("a", 40, 400)
        b = make_req("b", 40, 2, base=9000)
        engine.add_request(a)
        engine.add_request(b)
        await asyncio.wait_for(wait_until(a, lambda r: len(r.outputs) >= 2), DEADLINE_S)
        # No await between the check and the scrape: the engine cannot step in between.
        assert not a.finished
        s = scrape(metrics)
        assert value(s, "vllm:num_requests_running") == 1
        assert value(s, "vllm:num_requests_waiting") == 1
        usage = value(s, "vllm:kv_cache_usage_perc")
        assert usage == pytest.approx(engine.pool.usage)
        assert usage == pytest.approx(len(a.blocks) / 100)
        assert usage > 0
        await asyncio.wait_for(
            asyncio.gather(wait_until(a, lambda r: r.finished), wait_until(b, lambda r: r.finished)), DEADLINE_S
        )
        s = scrape(metrics)
        assert value(s, "vllm:num_requests_running") == 0
        assert value(s, "vllm:num_requests_waiting") == 0
        assert value(s, "vllm:kv_cache_usage_perc") == 0.0

    run_engine(engine, body)


def test_preemptions_counted() -> None:
    metrics = EngineMetrics(MODEL, engine_index="3")
    engine = Engine(BlockPool(10, 4), TimingModel(speedup=1000), hooks=metrics)
    metrics.bind(engine)

    async def body() -> list[Request]:
        reqs = [make_req(f"r{i}", 8, 16, reason="length", base=1000 + 100 * i) for i in range(3)]
        for r in reqs:
            engine.add_request(r)
        await asyncio.wait_for(asyncio.gather(*(wait_until(r, lambda x: x.finished) for r in reqs)), DEADLINE_S)
        return reqs

    run_engine(engine, body)
    s = scrape(metrics)
    labels = (("engine", "3"), ("model_name", MODEL))
    assert s[("vllm:num_preemptions_total", labels)] > 0
    assert s[("vllm:generation_tokens_total", labels)] == 3 * 16
    with_reason = tuple(sorted((*labels, ("finished_reason", "length"))))
    assert s[("vllm:request_success_total", with_reason)] == 3


def test_registries_are_independent() -> None:
    a, b = EngineMetrics("m1"), EngineMetrics("m2")
    a.prefix_queries.labels("m1", "0").inc(5)
    text_b = generate_latest(b.registry).decode()
    assert 'vllm:prefix_cache_queries_total{engine="0",model_name="m2"} 0.0' in text_b
