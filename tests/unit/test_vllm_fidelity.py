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


# -- n, batches, /v1/models/{id}, mm_processor_kwargs -------------------------------------------------------------
async def _calls(w: SimWorker, calls: list[tuple[str, str, dict[str, Any] | None]]) -> list[tuple[int, Any]]:
    """Run HTTP calls against a started worker (engine running, no delays); JSON or SSE events back."""
    w.ready = True
    w.engine.start()
    client = TestClient(TestServer(build_app(w)))
    await client.start_server()
    out: list[tuple[int, Any]] = []
    try:
        for method, path, body in calls:
            resp = await client.request(method, path, json=body)
            text = await resp.text()
            if body is not None and body.get("stream"):
                events = [e[6:] for e in text.split("\n\n") if e.startswith("data: ")]
                assert events[-1] == "[DONE]"
                out.append((resp.status, [json.loads(e) for e in events[:-1]]))
            else:
                out.append((resp.status, json.loads(text)))
    finally:
        await client.close()
        await w.engine.stop()
    return out


def calls(w: SimWorker, *items: tuple[str, str, dict[str, Any] | None]) -> list[tuple[int, Any]]:
    return asyncio.run(_calls(w, list(items)))


CHAT = {"messages": [{"role": "user", "content": "Tell me about routers"}], "max_tokens": 50}


def test_n_choices_with_usage_summed_like_vllm() -> None:
    """``n`` fans out into child requests (vllm/v1/engine/parallel_sampling.py); the chat response has one choice per
    sample, ``index`` 0..n-1, the prompt counted once and the completion tokens summed over the outputs
    (chat_completion_full_generator / stream generator in vllm/entrypoints/openai/chat_completion/serving.py)."""
    (_, one), (_, three), (_, streamed) = calls(
        worker(),
        ("POST", "/v1/chat/completions", CHAT),
        ("POST", "/v1/chat/completions", {**CHAT, "n": 3}),
        ("POST", "/v1/chat/completions", {**CHAT, "n": 2, "stream": True, "stream_options": {"include_usage": True}}),
    )
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == one["choices"][0]["message"]["content"] for c in three["choices"])
    u1, u3 = one["usage"], three["usage"]
    assert u3["prompt_tokens"] == u1["prompt_tokens"]  # once, not three times
    assert u3["completion_tokens"] == 3 * u1["completion_tokens"]
    assert u3["total_tokens"] == u3["prompt_tokens"] + u3["completion_tokens"]
    # Streamed: a role chunk for each index first, then each index's tokens, then the summed usage.
    roles = [e["choices"][0]["index"] for e in streamed[:2]]
    assert roles == [0, 1] and all(e["choices"][0]["delta"].get("role") == "assistant" for e in streamed[:2])
    texts = {0: "", 1: ""}
    for e in streamed[2:-1]:
        texts[e["choices"][0]["index"]] += e["choices"][0]["delta"].get("content", "")
    assert texts[0] == texts[1] == one["choices"][0]["message"]["content"]
    assert streamed[-1]["usage"]["prompt_tokens"] == u1["prompt_tokens"]
    assert streamed[-1]["usage"]["completion_tokens"] == 2 * u1["completion_tokens"]


def test_completion_batch_one_choice_per_prompt() -> None:
    """A list of prompts is a batch (CompletionRequest.prompt in vllm/entrypoints/openai/completion/protocol.py):
    ``request_output_to_completion_response`` gives one choice per prompt and sample, ``index=len(choices)``, and
    sums prompt and completion tokens; the stream numbers choices ``output.index + prompt_idx * n``."""
    prompts = ["the first prompt", "a second, longer prompt about caches"]
    base = {"max_tokens": 20}
    results = calls(
        worker(),
        ("POST", "/tokenize", {"prompt": prompts[0]}),
        ("POST", "/tokenize", {"prompt": prompts[1]}),
        ("POST", "/v1/completions", {**base, "prompt": prompts[1]}),
        ("POST", "/v1/completions", {**base, "prompt": prompts}),
        ("POST", "/v1/completions", {**base, "prompt": prompts, "n": 2}),
        ("POST", "/v1/completions", {**base, "prompt": prompts, "n": 2, "stream": True,
                                     "stream_options": {"include_usage": True}}),
        ("POST", "/v1/completions/render", {**base, "prompt": prompts}),
    )  # fmt: skip
    (_, t0), (_, t1), (_, single), (s_batch, batch), (_, batch_n), (_, streamed), (_, rendered) = results
    assert s_batch == 200
    assert [c["index"] for c in batch["choices"]] == [0, 1]
    assert batch["choices"][1]["text"] == single["choices"][0]["text"]  # each prompt answered on its own
    assert batch["choices"][0]["text"] != batch["choices"][1]["text"]
    assert batch["usage"]["prompt_tokens"] == t0["count"] + t1["count"]
    assert batch["usage"]["completion_tokens"] > single["usage"]["completion_tokens"]  # both prompts' outputs
    assert batch["usage"]["total_tokens"] == batch["usage"]["prompt_tokens"] + batch["usage"]["completion_tokens"]
    assert [c["index"] for c in batch_n["choices"]] == [0, 1, 2, 3]
    first, second = (c["text"] for c in batch["choices"])
    assert [c["text"] for c in batch_n["choices"]] == [first, first, second, second]
    assert batch_n["usage"]["prompt_tokens"] == t0["count"] + t1["count"]  # each prompt once, whatever n
    assert batch_n["usage"]["completion_tokens"] == 2 * batch["usage"]["completion_tokens"]
    streamed_text: dict[int, str] = {}
    for e in streamed[:-1]:
        c = e["choices"][0]
        streamed_text[c["index"]] = streamed_text.get(c["index"], "") + c["text"]
    assert streamed_text == {c["index"]: c["text"] for c in batch_n["choices"]}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert streamed[-1]["usage"][key] == batch_n["usage"][key]
    assert [len(r["token_ids"]) for r in rendered] == [t0["count"], t1["count"]]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", [1, 2]]}, "prompt"),
        ({"prompt": "x", "n": 300}, "n"),
    ],
)
def test_completion_batch_refusals(body: dict[str, Any], param: str) -> None:
    ((status, err),) = calls(worker(), ("POST", "/v1/completions", {"max_tokens": 5, **body}))
    assert status == 400 and err["error"]["param"] == param


def test_tokenize_takes_one_string_prompt() -> None:
    """vLLM's TokenizeCompletionRequest has ``prompt: str``: a batch is a validation error, not the first prompt."""
    ((status, err),) = calls(worker(), ("POST", "/tokenize", {"prompt": ["a", "b"]}))
    assert status == 400 and err["error"]["param"] == "prompt"


def test_model_by_id_card_or_not_found() -> None:
    """``GET /v1/models/{id}`` (the OpenAI API's retrieve; vLLM 0.33 serves only ``GET /v1/models``): the card, or
    404 with type NotFoundError."""
    w = worker()
    (s1, card), (s2, missing), (_, listing) = calls(
        w,
        ("GET", "/v1/models/Qwen/Qwen2.5-VL-3B-Instruct", None),
        ("GET", "/v1/models/no-such-model", None),
        ("GET", "/v1/models", None),
    )
    assert s1 == 200 and card == listing["data"][0] and card["id"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert s2 == 404 and missing["error"]["type"] == "NotFoundError" and "no-such-model" in missing["error"]["message"]


def _image_chat(kwargs: dict[str, Any] | None, uuid: str | None = None) -> dict[str, Any]:
    from tests.helpers import data_url, image_message, png_bytes

    body: dict[str, Any] = {"messages": image_message(data_url(png_bytes("green", (1024, 768))), uuid=uuid)}
    if kwargs is not None:
        body["mm_processor_kwargs"] = kwargs
    return body


def test_request_mm_processor_kwargs_apply_and_enter_the_hash() -> None:
    """Per-request ``mm_processor_kwargs`` reach the processor (fewer placeholders at a lower ``max_pixels``) and
    the image hash (ProcessorInputs.get_mm_hashes in vllm/multimodal/processing/inputs.py hashes the kwargs with
    the item, even when a ``uuid`` names it)."""
    small = {"max_pixels": 128 * 28 * 28}
    size_form = {"size": {"shortest_edge": 3136, "longest_edge": 128 * 28 * 28}}
    results = calls(
        worker(),
        ("POST", "/v1/chat/completions/render", _image_chat(None)),
        ("POST", "/v1/chat/completions/render", _image_chat(small)),
        ("POST", "/v1/chat/completions/render", _image_chat(size_form)),
        ("POST", "/v1/chat/completions/render", _image_chat(None, uuid="img-1")),
        ("POST", "/v1/chat/completions/render", _image_chat(small, uuid="img-1")),
        ("POST", "/v1/chat/completions/render", _image_chat({"max_pixels": "lots"})),
        ("POST", "/v1/chat/completions/render", _image_chat([1])),  # type: ignore[arg-type]
    )
    (_, base), (_, low), (_, low_size), (_, named), (_, named_low), (s_bad, bad), (s_list, _) = results

    def item(r: dict[str, Any]) -> tuple[str, int]:
        return r["features"]["mm_hashes"]["image"][0], r["features"]["mm_placeholders"]["image"][0]["length"]

    assert item(base)[1] == 37 * 27  # 1024x768 at Qwen2.5-VL's default bounds: smart_resize to 1036x756, 28 px cells
    assert item(low)[1] < item(base)[1] and item(low)[1] <= 128
    assert item(low_size)[1] == item(low)[1]  # the transformers-5 size form means the same bounds
    assert item(low)[0] != item(base)[0]
    assert item(named)[0] == "img-1"  # a uuid alone is the hash
    assert item(named_low)[0] not in ("img-1", item(low)[0])  # with kwargs it is rehashed
    assert s_bad == 400 and bad["error"]["param"] == "mm_processor_kwargs"
    assert s_list == 400


def test_mm_processor_kwargs_flag_takes_the_size_form() -> None:
    """transformers 5 writes Qwen2-VL's bounds as ``size: {shortest_edge: min_pixels, longest_edge: max_pixels}``
    (Qwen2VLImageProcessor); ``--mm-processor-kwargs`` in that form sets the same bounds as the flat keys."""
    from harness.mm.geometry import resolve_geometry

    flat = resolve_geometry("Qwen/Qwen2.5-VL-3B-Instruct", overrides={"min_pixels": 6272, "max_pixels": 200704})
    size = resolve_geometry(
        "Qwen/Qwen2.5-VL-3B-Instruct", overrides={"size": {"shortest_edge": 6272, "longest_edge": 200704}}
    )
    assert (size.config["min_pixels"], size.config["max_pixels"]) == (6272, 200704)
    default = resolve_geometry("Qwen/Qwen2.5-VL-3B-Instruct")
    assert size.num_tokens(2000, 1500) == flat.num_tokens(2000, 1500) <= 200704 // (28 * 28)
    assert default.num_tokens(2000, 1500) > 256
    with pytest.raises(ValueError, match="min_pixels"):
        resolve_geometry("Qwen/Qwen2.5-VL-3B-Instruct", overrides={"min_pixels": 10**7, "max_pixels": 10**6})


@pytest.mark.parametrize(
    "model", ["llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-interleave-qwen-0.5b-hf",
              "llava-hf/LLaVA-NeXT-Video-7B-hf"]
)  # fmt: skip
def test_unsupported_llava_variants_are_refused_by_name(model: str) -> None:
    """These are not LLaVA-1.5 (vLLM serves OneVision with llava_onevision.py's own processor); matching them by
    the bare ``llava`` pattern would count 576 placeholders where the model uses others."""
    from harness.mm.families import UnsupportedModelError, family_for_model
    from harness.mm.geometry import resolve_geometry

    with pytest.raises(UnsupportedModelError, match="does not reproduce"):
        family_for_model(model)
    with pytest.raises(ValueError):
        resolve_geometry(model)
    assert family_for_model("llava-hf/llava-1.5-7b-hf").name == "llava"  # type: ignore[union-attr]
    assert family_for_model("llava-hf/llava-v1.6-mistral-7b-hf").name == "llava_next"  # type: ignore[union-attr]


def test_phi35_vision_defaults_to_four_crops() -> None:
    """vLLM's tests/models/multimodal/processing/test_phi3v.py: "the default num_crops of phi-3.5-vision is 4"
    (757 tokens per image, 1921 with num_crops 16); Phi-3-vision's preprocessor_config.json says 16."""
    from harness.mm.geometry import resolve_geometry

    phi35 = resolve_geometry("microsoft/Phi-3.5-vision-instruct")
    phi3 = resolve_geometry("microsoft/Phi-3-vision-128k-instruct")
    assert phi35.config["num_crops"] == 4 and phi3.config["num_crops"] == 16
    assert phi35.num_tokens(1200, 800) == 757
    assert phi3.num_tokens(1200, 800) == 1921
    sixteen = resolve_geometry("microsoft/Phi-3.5-vision-instruct", overrides={"num_crops": 16})
    assert sixteen.num_tokens(1200, 800) == 1921


def test_error_messages_show_client_values_as_json() -> None:
    """Error bodies quote what the client sent as JSON, never a Python repr (``{'a': 1}``, ``None``)."""
    ((s1, e1), (s2, e2)) = calls(
        worker(),
        ("POST", "/v1/chat/completions", {"messages": [{"role": {"a": 1}, "content": "x"}]}),
        ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": None}]}]}),
    )
    assert s1 == s2 == 400
    assert '{"a": 1}' in e1["error"]["message"] and "{'a'" not in e1["error"]["message"]
    assert "null" in e2["error"]["message"] and "None" not in e2["error"]["message"]
