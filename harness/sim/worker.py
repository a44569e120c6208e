"""The simulated vLLM worker: ``python -m harness.sim.worker --model NAME --port P [...]``.

An aiohttp server exposing vLLM's OpenAI-compatible surface over ``Engine``. The HTTP layer validates and
renders requests (through ``harness.mm``, exactly as the proxy does), the engine schedules them against the
paged cache, and the handlers turn the engine's token stream into OpenAI responses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from harness.gpu.simulated import SimGpuRegistry
from harness.kv_events import EventPublisher, KVEventsConfig
from harness.mm import tokenizer
from harness.mm.assets import AssetStore
from harness.mm.geometry import GeometryNotFoundError, ImageGeometry, resolve_geometry
from harness.mm.hashing import BlockKeyContext
from harness.mm.images import ImageError, ImagePolicy
from harness.mm.prompt import (
    Prompt,
    Turn,
    completion_prompt,
    image_parts,
    parse_chat,
    render_chat,
)
from harness.mm.resolver import ImageResolver, ResolvedImage
from harness.openai_api import (
    QUIET_PATHS,
    REQUEST_ID_HEADER,
    SERVED_BY_HEADER,
    SSE_DONE,
    ApiError,
    api_middleware,
    json_response,
    read_json_object,
    sse_event,
)
from harness.serving import configure_logging, run_main, serve_app
from harness.sim import answers
from harness.sim.config import WorkerConfig, parse_args
from harness.sim.engine import Engine, Request, SamplingParams, plan_output
from harness.sim.kv_cache import BlockPool
from harness.sim.lora import LoraRegistry
from harness.sim.metrics import EngineMetrics
from harness.sim.model_specs import ModelSpec, model_spec
from harness.sim.timing import TimingModel

log = logging.getLogger("harness.sim.worker")

GIB = 1024**3
#: Fraction of the weights a start-up profiling run adds at its peak (activations of a max-size batch).
PROFILE_PEAK_FRACTION = 0.15
#: Fixed runtime overhead on top of weights + KV (CUDA context, graphs, allocator slack).
RUNTIME_OVERHEAD_BYTES = int(0.6 * GIB)


class StartupError(RuntimeError):
    pass


@dataclass
class Rendered:
    prompt: Prompt
    answer: str


def kv_cache_plan(cfg: WorkerConfig, spec: ModelSpec) -> tuple[int, int]:
    """(number of blocks, KV bytes) from a block count, a byte cap, or the memory-utilization budget."""
    per_block = spec.kv_bytes_per_token * cfg.block_size
    if cfg.num_gpu_blocks_override:
        return cfg.num_gpu_blocks_override, cfg.num_gpu_blocks_override * per_block
    if cfg.kv_cache_memory_bytes is not None:
        kv_bytes = cfg.kv_cache_memory_bytes
    else:
        budget = cfg.gpu_memory_utilization * cfg.sim_gpu_memory_gib * GIB
        peak = spec.weights_bytes * (1 + PROFILE_PEAK_FRACTION) + RUNTIME_OVERHEAD_BYTES
        kv_bytes = int(budget - peak)
    num_blocks = kv_bytes // per_block
    if num_blocks < 1:
        raise StartupError(
            f"No available memory for the cache blocks: {kv_bytes} bytes of KV cache hold no block of "
            f"{per_block} bytes. Increase --kv-cache-memory-bytes or --gpu-memory-utilization."
        )
    return num_blocks, kv_bytes


class SimWorker:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.spec = model_spec(cfg.model)
        self.geometry: ImageGeometry = resolve_geometry(
            cfg.model,
            family=cfg.mm_family,
            preprocessor_config=cfg.preprocessor_config,
            overrides=cfg.mm_processor_kwargs,
        )
        self.num_blocks, self.kv_bytes = kv_cache_plan(cfg, self.spec)
        capacity_tokens = self.num_blocks * cfg.block_size
        self.max_model_len = cfg.max_model_len or min(self.spec.max_model_len, capacity_tokens)
        if self.max_model_len > capacity_tokens:
            raise StartupError(
                f"To serve at least one request with the model's max seq len ({self.max_model_len}), "
                f"{self.max_model_len * self.spec.kv_bytes_per_token / GIB:.2f} GiB KV cache is needed, which "
                f"is larger than the available KV cache memory ({self.kv_bytes / GIB:.2f} GiB). Try "
                f"increasing --kv-cache-memory-bytes or decreasing --max-model-len."
            )
        self.metrics = EngineMetrics(cfg.model_name)
        events_cfg = KVEventsConfig.from_json(cfg.kv_events_config)
        self.publisher = EventPublisher(events_cfg) if events_cfg else None
        self.pool = BlockPool(self.num_blocks, cfg.block_size, self.publisher.add if self.publisher else None)
        if self.publisher is not None:
            self.metrics.step_end_callbacks.append(self.publisher.flush)
        self.timing = TimingModel(
            step_overhead_s=cfg.step_overhead_ms / 1e3,
            prefill_token_s=cfg.prefill_token_us / 1e6,
            image_token_s=cfg.image_token_us / 1e6,
            decode_seq_s=cfg.decode_seq_us / 1e6,
            speedup=cfg.speedup,
        )
        self.engine = Engine(
            self.pool,
            self.timing,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            hooks=self.metrics,
        )
        self.metrics.bind(self.engine)
        self.loras = LoraRegistry(cfg.model, cfg.max_lora_rank)
        self.policy = ImagePolicy(
            allowed_hosts=cfg.allowed_media_hosts,
            allowed_local_path=cfg.allowed_local_media_path,
            max_bytes=cfg.max_image_bytes,
            fetch_timeout_s=cfg.media_fetch_timeout,
        )
        self.assets = AssetStore(cfg.asset_dir) if cfg.asset_dir else None
        self.images = ImageResolver(
            cfg.model, self.geometry, self.policy, assets=self.assets, analyze=answers.dominant_colours
        )
        self.ready = False
        self.created = int(time.time())
        self.num_requests = 0
        self.rng = random.Random(cfg.seed)
        self.gpus = SimGpuRegistry()
        self.session: aiohttp.ClientSession | None = None

    # -- memory ------------------------------------------------------------------------------------------
    @property
    def steady_bytes(self) -> int:
        return self.spec.weights_bytes + self.kv_bytes + RUNTIME_OVERHEAD_BYTES

    @property
    def profile_peak_bytes(self) -> int:
        return int(self.spec.weights_bytes * (1 + PROFILE_PEAK_FRACTION)) + RUNTIME_OVERHEAD_BYTES

    def publish_memory(self, used: int) -> None:
        peak = max(used, self.profile_peak_bytes if used else 0)
        self.gpus.publish(self.cfg.sim_gpu_index, os.getpid(), used, peak, label=self.cfg.name)

    # -- life cycle ------------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Simulated load + profile: memory climbs to the profiling peak, then settles at weights + KV."""
        self.session = aiohttp.ClientSession()
        self.images.session = self.session
        self.engine.start()
        self.publish_memory(self.spec.weights_bytes)
        if self.cfg.startup_delay > 0:
            await asyncio.sleep(self.cfg.startup_delay / 2)
        self.publish_memory(self.profile_peak_bytes)
        if self.cfg.startup_delay > 0:
            await asyncio.sleep(self.cfg.startup_delay / 2)
        if self.cfg.fail_startup:
            raise StartupError("simulated start-up failure (--fail-startup)")
        self.publish_memory(self.steady_bytes)
        for name, path in self.cfg.lora_modules:
            self.loras.load(name, path)
        self.ready = True
        family = self.geometry.family.name
        log.info(
            "worker %s ready: model=%s family=%s geometry=%s blocks=%d block_size=%d max_model_len=%d "
            "kv_bytes=%d speedup=%g",
            self.cfg.name,
            self.cfg.model_name,
            family,
            self.geometry.source,
            self.num_blocks,
            self.cfg.block_size,
            self.max_model_len,
            self.kv_bytes,
            self.cfg.speedup,
        )

    async def shutdown(self) -> None:
        await self.engine.stop()
        if self.session is not None:
            await self.session.close()
        if self.publisher is not None:
            self.publisher.close()
        self.gpus.remove(self.cfg.sim_gpu_index, os.getpid())

    # -- request building ------------------------------------------------------------------------------
    def resolve_model(self, body: dict[str, Any]) -> str | None:
        """The LoRA adapter a request names, None for the base model; 404 like vLLM otherwise."""
        model = body.get("model")
        if model is None or model == self.cfg.model_name or model == self.cfg.model:
            return None
        if isinstance(model, str) and self.loras.get(model) is not None:
            return model
        raise ApiError(404, f"The model `{model}` does not exist.", "model", "NotFoundError")

    async def render_chat_body(self, body: dict[str, Any]) -> Rendered:
        turns = parse_chat(body.get("messages"))
        parts = image_parts(turns)
        limit = int(self.cfg.limit_mm_per_prompt.get("image", 16))
        if len(parts) > limit:
            raise ApiError(400, f"At most {limit} image(s) may be provided in one prompt.", "messages")
        try:
            resolved: list[ResolvedImage] = [await self.images.resolve(p) for p in parts]
        except ImageError as exc:
            raise ApiError(exc.status, str(exc), "messages") from None
        prompt = render_chat(
            turns,
            self.geometry.family,
            [(im.hash, im.tokens) for im in resolved],
            add_generation_prompt=bool(body.get("add_generation_prompt", True)),
        )
        if resolved:
            answer = answers.describe_images([im.facts.extra for im in resolved])
        else:
            answer = answers.answer_text(_last_user_text(turns))
        return Rendered(prompt, answer)

    def render_completion_body(self, body: dict[str, Any]) -> Rendered:
        prompt = completion_prompt(body.get("prompt"))
        return Rendered(prompt, answers.answer_text(tokenizer.decode(prompt.token_ids)))

    def check_length(self, prompt: Prompt, max_tokens: int | None) -> int:
        n, limit = prompt.num_tokens, self.max_model_len
        if n == 0:
            raise ApiError(400, "The prompt cannot be empty.", "prompt")
        if n >= limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                f"{n} input tokens. Please reduce the length of the input messages.",
                "messages",
            )
        if max_tokens is None:
            return limit - n
        if n + max_tokens > limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{n + max_tokens} tokens ({n} in the messages, {max_tokens} in the completion). Please "
                f"reduce the length of the messages or completion.",
                "max_tokens",
            )
        return max_tokens

    def sampling_params(self, body: dict[str, Any], prompt: Prompt) -> SamplingParams:
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens!r}.", "max_tokens")
        n = body.get("n", 1)
        if n != 1:
            raise ApiError(400, "n > 1 is not supported by the simulated engine.", "n")
        stop = body.get("stop") or ()
        if isinstance(stop, str):
            stop = (stop,)
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
            raise ApiError(400, "stop must be a string or a list of strings.", "stop")
        return SamplingParams(
            max_tokens=self.check_length(prompt, max_tokens),
            stop=tuple(stop),
            ignore_eos=bool(body.get("ignore_eos", False)),
        )


def _last_user_text(turns: Sequence[Turn]) -> str:
    for turn in reversed(turns):
        if turn.role == "user":
            return " ".join(p for p in turn.parts if isinstance(p, str))
    return ""


# ----------------------------------------------------------------------------------------------------------
# HTTP handlers
# ----------------------------------------------------------------------------------------------------------
WORKER = web.AppKey("worker", SimWorker)
INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


def _headers(worker: SimWorker, rid: str) -> dict[str, str]:
    return {REQUEST_ID_HEADER: rid, SERVED_BY_HEADER: worker.cfg.name}


def _fault_injection(worker: SimWorker, request: web.Request) -> None:
    if request.path not in INFERENCE_PATHS:
        return
    if not worker.ready:
        raise ApiError(503, "The server is starting up.")
    worker.num_requests += 1
    if worker.cfg.crash_after is not None and worker.num_requests > worker.cfg.crash_after:
        log.error(
            "fault injection: crashing on request %d (--crash-after %d)", worker.num_requests, worker.cfg.crash_after
        )
        logging.shutdown()
        os._exit(70)
    if worker.cfg.error_rate and worker.rng.random() < worker.cfg.error_rate:
        raise ApiError(500, "Simulated engine error (--error-rate fault injection).")


def _log_request(worker: SimWorker, request: web.Request, status: int, seconds: float) -> None:
    if worker.cfg.disable_log_requests or request.path in QUIET_PATHS:
        return
    s = request["stats"]
    log.info(
        "request_id=%s %s %s status=%d prompt_tokens=%s cached_tokens=%s completion_tokens=%s latency_ms=%.2f",
        request["rid"],
        request.method,
        request.path,
        status,
        s.get("prompt_tokens", "-"),
        s.get("cached_tokens", "-"),
        s.get("completion_tokens", "-"),
        seconds * 1e3,
    )


async def health(request: web.Request) -> web.Response:
    if not request.app[WORKER].ready:
        return web.Response(status=503, text="starting")
    return web.Response(status=200)


def _model_card(worker: SimWorker, model_id: str, root: str, parent: str | None, max_len: int | None) -> dict:
    return {
        "id": model_id,
        "object": "model",
        "created": worker.created,
        "owned_by": "vllm",
        "root": root,
        "parent": parent,
        "max_model_len": max_len,
        "permission": [],
    }


async def models(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    cards = [_model_card(w, w.cfg.model_name, w.cfg.model, None, w.max_model_len)]
    cards += [_model_card(w, a.name, a.path, w.cfg.model_name, None) for a in w.loras.adapters.values()]
    return json_response({"object": "list", "data": cards})


async def version(request: web.Request) -> web.Response:
    return json_response({"version": "0.33.0+sim"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[WORKER].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _usage(req: Request, details: bool) -> dict[str, Any]:
    completion = len(req.outputs)
    usage: dict[str, Any] = {
        "prompt_tokens": req.prompt_len,
        "total_tokens": req.prompt_len + completion,
        "completion_tokens": completion,
    }
    if details:  # like vLLM, only with --enable-prompt-tokens-details
        usage["prompt_tokens_details"] = {"cached_tokens": max(req.num_cached_tokens, 0)}
    return usage


def _visible_text(token_ids: Sequence[int]) -> str:
    return tokenizer.decode(t for t in token_ids if t != tokenizer.EOS_TOKEN_ID)


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    w = request.app[WORKER]
    rid: str = request["rid"]
    body = await read_json_object(request)
    lora = w.resolve_model(body)
    if chat:
        rendered = await w.render_chat_body(body)
    else:
        rendered = w.render_completion_body(body)
    params = w.sampling_params(body, rendered.prompt)
    salt = body.get("cache_salt")
    if salt is not None and not isinstance(salt, str):
        raise ApiError(400, "cache_salt must be a string", "cache_salt")
    req = Request(
        request_id=rid,
        prompt=rendered.prompt,
        plan=plan_output(rendered.answer, params),
        key_ctx=BlockKeyContext(
            lora_name=lora, lora_path=w.loras.adapters[lora].path if lora else None, cache_salt=salt or None
        ),
    )
    model_name = body.get("model") or w.cfg.model_name
    stream = bool(body.get("stream", False))
    if body.get("stream_options") is not None and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
    opts = body.get("stream_options") or {}
    include_usage = bool(opts.get("include_usage", False)) if isinstance(opts, dict) else False
    w.engine.add_request(req)
    stats = request["stats"]
    stats["prompt_tokens"] = req.prompt_len
    try:
        if stream:
            return await _stream(request, w, req, chat, model_name, include_usage)
        while not req.finished:
            await req.changed.wait()
            req.changed.clear()
    finally:
        if not req.finished:
            w.engine.abort(req)
        stats["cached_tokens"] = max(req.num_cached_tokens, 0)
        stats["completion_tokens"] = len(req.outputs)
    text = _visible_text(req.outputs)
    prefix = "chatcmpl-" if chat else "cmpl-"
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": req.finish_reason,
            "stop_reason": req.plan.stop_reason,
        }
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": req.finish_reason,
            "stop_reason": req.plan.stop_reason,
        }
    payload = {
        "id": prefix + rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [choice],
        "usage": _usage(req, w.cfg.enable_prompt_tokens_details),
    }
    return json_response(payload, headers=_headers(w, rid))


async def _stream(
    request: web.Request, w: SimWorker, req: Request, chat: bool, model: str, include_usage: bool
) -> web.StreamResponse:
    rid = req.request_id
    resp = web.StreamResponse(
        headers={**_headers(w, rid), "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"
    cid = ("chatcmpl-" if chat else "cmpl-") + rid

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        data: dict[str, Any] = {
            "id": cid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            data["usage"] = usage
        return sse_event(data)

    def choice(text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    if chat:
        await resp.write(chunk([choice("", None, first=True)]))
    sent = 0
    while True:
        if sent == len(req.outputs) and not req.finished:
            await req.changed.wait()
            req.changed.clear()
        new = req.outputs[sent:]
        if new:
            buf = bytearray()
            for i, tid in enumerate(new):
                last = req.finished and sent + i + 1 == len(req.outputs)
                text = "" if tid == tokenizer.EOS_TOKEN_ID else tokenizer.decode((tid,))
                buf += chunk([choice(text, req.finish_reason if last else None)])
            sent += len(new)
            await resp.write(bytes(buf))
        if req.finished and sent == len(req.outputs):
            break
    if include_usage:
        await resp.write(chunk([], _usage(req, w.cfg.enable_prompt_tokens_details)))
    await resp.write(SSE_DONE)
    await resp.write_eof()
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def _render(w: SimWorker, body: dict[str, Any], chat: bool) -> Rendered:
    if chat or "messages" in body:
        return await w.render_chat_body(body)
    return w.render_completion_body(body)


async def tokenize(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    body = await read_json_object(request)
    if "messages" not in body and "prompt" not in body:
        raise ApiError(400, "Either 'prompt' or 'messages' is required.", "prompt")
    rendered = await _render(w, body, chat=False)
    ids = rendered.prompt.token_ids
    return json_response({"count": len(ids), "max_model_len": w.max_model_len, "tokens": ids, "token_strs": None})


async def detokenize(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise ApiError(400, "tokens must be a list of integers", "tokens")
    bad = next((t for t in tokens if not tokenizer.is_valid_id(t)), None)
    if bad is not None:
        raise ApiError(400, f"token id {bad} is out of vocabulary", "tokens")
    return json_response({"prompt": tokenizer.decode(tokens)})


def _generate_request(w: SimWorker, rid: str, body: dict[str, Any], rendered: Rendered) -> dict[str, Any]:
    prompt = rendered.prompt
    params = w.sampling_params(body, prompt)
    features = None
    if prompt.mm_items:
        features = {
            "mm_hashes": {"image": [it.hash for it in prompt.mm_items]},
            "mm_placeholders": {"image": [{"offset": it.offset, "length": it.length} for it in prompt.mm_items]},
            "kwargs_data": None,
        }
    return {
        "request_id": rid,
        "token_ids": prompt.token_ids,
        "features": features,
        "sampling_params": {
            "max_tokens": params.max_tokens,
            "stop": list(params.stop),
            "ignore_eos": params.ignore_eos,
        },
        "model": body.get("model") or w.cfg.model_name,
        "stream": bool(body.get("stream", False)),
        "cache_salt": body.get("cache_salt"),
        "priority": 0,
        "kv_transfer_params": None,
    }


async def chat_render(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    body = await read_json_object(request)
    w.resolve_model(body)
    rendered = await w.render_chat_body(body)
    return json_response(_generate_request(w, request["rid"], body, rendered))


async def completions_render(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    body = await read_json_object(request)
    w.resolve_model(body)
    rendered = w.render_completion_body(body)
    return json_response([_generate_request(w, request["rid"], body, rendered)])


async def reset_prefix_cache(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    success = w.pool.reset()
    if w.publisher is not None:
        w.publisher.flush()  # outside an engine step: nothing else would send AllBlocksCleared
    return json_response({"success": success})


async def load_lora(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    body = await read_json_object(request)
    name, path = body.get("lora_name"), body.get("lora_path")
    if not isinstance(name, str) or not isinstance(path, str):
        raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.", "lora_name")
    w.loras.load(name, path)
    return web.Response(text=f"Success: LoRA adapter '{name}' added successfully.")


async def unload_lora(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    body = await read_json_object(request)
    name = body.get("lora_name")
    if not isinstance(name, str):
        raise ApiError(400, "'lora_name' must be provided.", "lora_name")
    w.loras.unload(name)
    return web.Response(text=f"Success: LoRA adapter '{name}' removed successfully.")


def build_app(worker: SimWorker) -> web.Application:
    middleware = api_middleware(
        log,
        headers=lambda rid: _headers(worker, rid),
        before=lambda request: _fault_injection(worker, request),
        finished=lambda request, status, seconds: _log_request(worker, request, status, seconds),
    )
    app = web.Application(middlewares=[middleware], client_max_size=64 * 1024 * 1024)
    app[WORKER] = worker
    app.router.add_get("/health", health)
    app.router.add_get("/ping", health)
    app.router.add_get("/version", version)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_post("/v1/chat/completions/render", chat_render)
    app.router.add_post("/v1/completions/render", completions_render)
    app.router.add_post("/reset_prefix_cache", reset_prefix_cache)
    if worker.cfg.enable_lora:
        app.router.add_post("/v1/load_lora_adapter", load_lora)
        app.router.add_post("/v1/unload_lora_adapter", unload_lora)
    return app


async def serve(cfg: WorkerConfig) -> int:
    worker = SimWorker(cfg)
    rc = 0

    async def run(stop: asyncio.Event) -> None:
        nonlocal rc
        log.info("worker %s listening on http://%s:%d (starting)", cfg.name, cfg.host, cfg.port)
        startup = asyncio.create_task(worker.startup())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({startup, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if startup not in done:
            startup.cancel()
            return
        try:
            startup.result()
        except StartupError as exc:
            log.error("worker %s failed to start: %s", cfg.name, exc)
            rc = 1
            return
        await stopped

    await serve_app(build_app(worker), cfg.host, cfg.port, run=run, cleanup=worker.shutdown)
    log.info("worker %s stopped", cfg.name)
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    configure_logging(cfg.log_level, cfg.name)
    try:
        return run_main(serve(cfg))
    except (GeometryNotFoundError, StartupError, ValueError) as exc:
        log.error("worker %s cannot start: %s", cfg.name, exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
