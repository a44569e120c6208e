"""Where a gate verdict or a figure depends on behaving like vLLM: each test names the vLLM source it pins."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from harness.errors import ApiError
from harness.gate.checks.replies import Reply, response_problems
from harness.mm.prompt import Prompt
from harness.sim.api import build_app
from harness.sim.config import parse_args
from harness.sim.engine import Engine, OutputPlan, Request
from harness.sim.kv_cache import BlockPool
from harness.sim.lora import LoraRegistry
from harness.sim.metrics import EngineMetrics, build_1_2_5_buckets
from harness.sim.params import lax_bool, sampling_fields
from harness.sim.service import SimWorker
from harness.sim.timing import TimingModel
from tests.helpers import run_engine

B = 16


def reply(usage: Any) -> Reply:
    body = {"choices": [{"message": {"content": "x"}}], "usage": usage}
    return Reply("t", "rid", 200, body, None, 0.01)


# -- usage.prompt_tokens_details --------------------------------------------------------------------------------
def test_null_or_absent_details_mean_zero_cached() -> None:
    """vLLM before the usage rework sends ``prompt_tokens_details: null`` when nothing was cached (``if ... and
    num_cached_tokens:``, vllm/entrypoints/openai/serving_chat.py); its streamed usage drops nulls."""
    assert reply({"prompt_tokens": 5, "prompt_tokens_details": None}).cached_tokens == 0
    assert reply({"prompt_tokens": 5}).cached_tokens == 0
    assert reply({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 32}}).cached_tokens == 32
    assert response_problems(reply({"prompt_tokens": 5, "prompt_tokens_details": None}).body) == []
    # A details object without an integer count is still broken, and so is a body without usage.
    assert reply({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": "32"}}).cached_tokens is None
    assert response_problems(reply({"prompt_tokens_details": {}}).body)
    no_usage = Reply("t", "rid", 200, {"choices": [{"message": {"content": "x"}}]}, None, 0.01)
    assert no_usage.cached_tokens is None and "no usage block" in response_problems(no_usage.body)


# -- KV accounting -------------------------------------------------------------------------------------------------
def test_blocks_are_allocated_for_the_prefill_then_grow_with_decode() -> None:
    """``allocate_slots`` (vllm/v1/core/kv_cache_manager.py) allocates for the computed plus the scheduled tokens:
    a 40-token prompt holds 3 blocks at its first token, and one more each time decode crosses a block."""
    metrics = EngineMetrics("m")
    engine = Engine(BlockPool(64, B), TimingModel(speedup=1000), hooks=metrics)
    metrics.bind(engine)
    req = Request("r", Prompt(token_ids=list(range(1000, 1040))), OutputPlan(tuple(range(5000, 5030)), "length"))
    held: list[tuple[int, int]] = []

    async def body() -> None:
        engine.add_request(req)
        while not req.finished:
            await req.changed.wait()
            req.changed.clear()
            held.append((len(req.outputs), engine.pool.num_blocks - engine.pool.num_free))

    run_engine(engine, body)
    assert held[0] == (1, 3)  # 40 prompt tokens: ceil(40 / 16) blocks, not ceil(69 / 16) = 5
    for outputs, blocks in held[:-1]:
        assert blocks == -(-(40 + outputs) // B), (outputs, blocks)  # slots for every token computed so far
    assert held[-1] == (30, 0)  # finished: all released


def test_prompt_tokens_counted_at_prefill() -> None:
    """IterationStats.update_from_output (vllm/v1/metrics/stats.py) counts a request's prompt when its first
    token comes out, while it is still decoding."""
    metrics = EngineMetrics("m")
    engine = Engine(BlockPool(64, B), TimingModel(speedup=1000), hooks=metrics)
    metrics.bind(engine)
    req = Request("r", Prompt(token_ids=list(range(1000, 1040))), OutputPlan(tuple(range(5000, 5400)), "length"))
    seen: dict[str, float] = {}

    async def body() -> None:
        engine.add_request(req)
        while len(req.outputs) < 3:
            await req.changed.wait()
            req.changed.clear()
        seen.update(scrape(metrics))
        engine.abort(req)
        while not req.finished:
            await req.changed.wait()
            req.changed.clear()

    run_engine(engine, body)
    assert seen["vllm:prompt_tokens_total"] == 40
    assert seen["vllm:request_prompt_tokens_count"] == 0  # the per-request histograms wait for the finish
    after = scrape(metrics)
    assert after["vllm:prompt_tokens_total"] == 40  # not counted again at the finish
    assert after["vllm:request_prompt_tokens_sum"] == 40
    assert after["vllm:request_decode_time_seconds_count"] == 1
    assert after["vllm:iteration_tokens_total_sum"] == 40 + len(req.outputs)


def scrape(metrics: EngineMetrics) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def labels_of(metrics: EngineMetrics, name: str) -> list[dict[str, str]]:
    text = generate_latest(metrics.registry).decode()
    return [s.labels for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]


def test_1_2_5_buckets_as_vllm_builds_them() -> None:
    assert build_1_2_5_buckets(100) == (1, 2, 5, 10, 20, 50, 100)
    assert build_1_2_5_buckets(4096)[-1] == 2000


# -- metrics vLLM has -----------------------------------------------------------------------------------------------
def worker(*extra: str) -> SimWorker:
    argv = ["--model", "Qwen/Qwen2.5-VL-3B-Instruct", "--port", "1", "--speedup", "0"]
    argv += ["--num-gpu-blocks-override", "128", "--max-model-len", "2048", "--enable-prompt-tokens-details"]
    return SimWorker(parse_args([*argv, *extra]))


def test_cache_config_info_carries_the_block_size() -> None:
    """``vllm:cache_config_info`` (log_metrics_info in vllm/v1/metrics/loggers.py) is a gauge at 1 labelled with
    the CacheConfig fields as strings (CacheConfig.metrics_info in vllm/config/cache.py)."""
    w = worker("--block-size", "32")
    (labels,) = labels_of(w.metrics, "vllm:cache_config_info")
    assert labels["block_size"] == "32"
    assert labels["num_gpu_blocks"] == "128"
    assert labels["enable_prefix_caching"] == "True"
    assert labels["engine"] == "0"
    assert scrape(w.metrics)["vllm:cache_config_info"] == 1.0


def test_lora_requests_info_only_with_lora() -> None:
    """``vllm:lora_requests_info`` is created only when a LoRA config exists (PrometheusStatLogger)."""
    assert "vllm:lora_requests_info" not in generate_latest(worker().metrics.registry).decode()
    text = generate_latest(worker("--enable-lora", "--max-loras", "3").metrics.registry).decode()
    assert "vllm:lora_requests_info" in text
    names = {f.name for f in text_string_to_metric_families(text)}
    for name in ("vllm:mm_cache_queries", "vllm:mm_cache_hits", "vllm:request_queue_time_seconds",
                 "vllm:request_prefill_time_seconds", "vllm:request_decode_time_seconds",
                 "vllm:request_inference_time_seconds", "vllm:iteration_tokens_total", "vllm:request_prompt_tokens",
                 "vllm:request_generation_tokens"):  # fmt: skip
        assert name in names, name


def test_mm_cache_counts_items_and_repeat_hits() -> None:
    metrics = EngineMetrics("m")
    metrics.observe_mm_items(["a", "b"])
    metrics.observe_mm_items(["a", "c", "a"])
    got = scrape(metrics)
    assert got["vllm:mm_cache_queries_total"] == 5
    assert got["vllm:mm_cache_hits_total"] == 2


# -- LoRA ------------------------------------------------------------------------------------------------------------
def adapter(tmp_path: Path, name: str, rank: int) -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"r": rank, "base_model_name_or_path": "base"}))
    return str(d)


def test_load_inplace_replaces_an_adapter_and_keeps_its_id(tmp_path: Path) -> None:
    """``LoadLoRAAdapterRequest.load_inplace`` (vllm/entrypoints/serve/lora/protocol.py): without it a second load
    of a name is refused with vLLM's message; with it the adapter is replaced under the same id."""
    reg = LoraRegistry("base", 64)
    first = reg.load("a", adapter(tmp_path, "v1", 8))
    with pytest.raises(ApiError) as err:
        reg.load("a", adapter(tmp_path, "v2", 16))
    assert err.value.status == 400
    assert "set 'load_inplace' to True" in str(err.value.message)
    second = reg.load("a", str(tmp_path / "v2"), load_inplace=True)
    assert second.int_id == first.int_id and second.rank == 16 and reg.adapters["a"] is second
    assert reg.load("b", str(tmp_path / "v1")).int_id == first.int_id + 1


# -- streaming -------------------------------------------------------------------------------------------------------
async def _stream_with_engine_held(w: SimWorker) -> tuple[bytes, list[dict[str, Any]]]:
    """Open a stream while the engine loop is not running (no prefill can finish), then let it run."""
    w.ready = True
    client = TestClient(TestServer(build_app(w)))
    await client.start_server()
    try:
        resp = await client.post(
            "/v1/chat/completions",
            json={
                "messages": [{"role": "user", "content": "hello there " * 50}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": 5,
            },
        )
        assert resp.status == 200
        before = b""
        with contextlib.suppress(TimeoutError):
            before = await asyncio.wait_for(resp.content.readany(), 0.3)
        w.engine.start()
        text = (before + await resp.content.read()).decode()
    finally:
        await client.close()
        await w.engine.stop()
    events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return before, [json.loads(e) for e in events[:-1]]


def test_role_chunk_waits_for_the_first_token_and_usage_has_details() -> None:
    """chat_completion_stream_generator (vllm/entrypoints/openai/chat_completion/serving.py) sends the role chunk
    on the first engine output, i.e. after prefill: nothing is streamed while no token exists."""
    before, events = asyncio.run(_stream_with_engine_held(worker()))
    assert before == b""  # the old engine wrote the role chunk here, before any prefill
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["delta"].get("content")
    usage = events[-1]["usage"]
    assert events[-1]["choices"] == []
    # vLLM 0.33: an object with cached_tokens 0 on a cold prompt (_make_prompt_tokens_details).
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


# -- API strictness ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"n": "two"}, "n"),
        ({"ignore_eos": "maybe"}, "ignore_eos"),
        ({"stop": [1, 2]}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
    ],
)
def test_sampling_fields_rejected_like_vllm(body: dict[str, Any], field: str) -> None:
    """pydantic v2 lax mode (vLLM's ChatCompletionRequest) refuses unparsable strings; SamplingParams._verify_args
    (vllm/sampling_params.py) refuses values out of range. The message names the field and no Python repr."""
    with pytest.raises(ApiError) as err:
        sampling_fields(body)
    assert err.value.status == 400
    assert err.value.param == field
    assert "<" not in str(err.value.message) and "object at" not in str(err.value.message)


def test_sampling_fields_lax_coercions_like_pydantic() -> None:
    got = sampling_fields({"max_tokens": "7", "temperature": "0.5", "n": 1.0, "ignore_eos": "true", "stop": "x"})
    assert (got.max_tokens, got.temperature, got.n, got.ignore_eos, got.stop) == (7, 0.5, 1, True, ("x",))
    assert sampling_fields({"max_completion_tokens": 3, "max_tokens": 9}).max_tokens == 3
    assert lax_bool({"load_inplace": 1}, "load_inplace") is True
    assert lax_bool({"load_inplace": "off"}, "load_inplace") is False
