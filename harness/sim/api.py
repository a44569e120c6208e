"""The simulated worker's HTTP surface: vLLM's OpenAI-compatible endpoints over ``SimWorker``.

Handlers turn request bodies into engine requests and the engine's token stream into OpenAI responses
(non-streaming, SSE with ``include_usage``), plus tokenize/render, runtime LoRA, prefix-cache reset and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from harness.contract import escape_log
from harness.mm.prompt import Prompt
from harness.mm.text import TextTokenizer, bad_ids
from harness.server.openai import (
    MAX_BODY_BYTES,
    QUIET_PATHS,
    REQUEST_ID_HEADER,
    SERVED_BY_HEADER,
    SSE_DONE,
    ApiError,
    api_middleware,
    error_body,
    json_response,
    read_json_object,
    sse_event,
)
from harness.sim.engine import Request
from harness.sim.params import lax_bool
from harness.sim.service import Rendered, SimWorker

log = logging.getLogger("harness.sim.worker")

WORKER = web.AppKey("worker", SimWorker)
INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


def _headers(worker: SimWorker, rid: str) -> dict[str, str]:
    return {REQUEST_ID_HEADER: rid, SERVED_BY_HEADER: worker.cfg.name}


def _fault_injection(worker: SimWorker, request: web.Request) -> None:
    if request.path not in INFERENCE_PATHS:
        return
    worker.check_engine()  # 503 EngineDeadError once the engine loop has died
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
        escape_log(request.method),
        escape_log(request.path),
        status,
        s.get("prompt_tokens", "-"),
        s.get("cached_tokens", "-"),
        s.get("completion_tokens", "-"),
        seconds * 1e3,
    )


async def health(request: web.Request) -> web.Response:
    worker = request.app[WORKER]
    if worker.engine_error is not None:  # the engine loop died: this worker serves nothing any more
        return web.Response(status=503, text="engine dead")
    if not worker.ready:
        return web.Response(status=503, text="starting")
    return web.Response(status=200)


async def models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": request.app[WORKER].model_cards()})


async def model(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}`` as the OpenAI API has it (``client.models.retrieve``): the card, or 404
    ``NotFoundError``. vLLM does not serve this route (``vllm/entrypoints/openai/models/api_router.py`` registers
    ``GET /v1/models`` only; FastAPI answers anything under it with 404 ``{"detail": "Not Found"}``), so nothing in
    the gate may depend on it; the simulated engine answers it for OpenAI clients that retrieve one model."""
    return json_response(request.app[WORKER].model_card(request.match_info["model_id"]))


async def version(request: web.Request) -> web.Response:
    return json_response({"version": "0.33.0+sim"})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[WORKER].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _usage(groups: Sequence[Sequence[Request]], details: bool, cached_from: Request) -> dict[str, Any]:
    """Usage summed as vLLM sums it: each prompt counted once, however many choices it has, and every choice's
    completion tokens (``request_output_to_completion_response`` in ``vllm/entrypoints/openai/completion/
    serving.py``; the chat full and stream generators count one prompt and sum over ``final_res.outputs``).
    The cached count is one request's: ``cached_from``, the one vLLM reads it from."""
    prompt = sum(group[0].prompt_len for group in groups)
    completion = sum(len(req.outputs) for group in groups for req in group)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }
    if details:  # like vLLM, only with --enable-prompt-tokens-details
        # vLLM 0.33 (_make_prompt_tokens_details in vllm/entrypoints/openai/chat_completion/serving.py): an object
        # whenever the engine reported a count, 0 included, with the placeholder tokens per modality; releases
        # before it sent null when nothing was cached, which the gate reads as 0.
        prompt_details: dict[str, Any] = {"cached_tokens": max(cached_from.num_cached_tokens, 0)}
        image_tokens = sum(group[0].prompt.num_image_tokens for group in groups)
        if image_tokens:
            prompt_details["multimodal_tokens"] = {"image": image_tokens}
        usage["prompt_tokens_details"] = prompt_details
    return usage


def _visible_text(tok: TextTokenizer, token_ids: Sequence[int]) -> str:
    return tok.decode(t for t in token_ids if t != tok.eos_token_id)


def _include_usage(body: dict[str, Any], stream: bool) -> bool:
    """``stream_options`` as vLLM validates it: only with ``stream=True``."""
    opts = body.get("stream_options")
    if opts is not None and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
    return bool(opts.get("include_usage", False)) if isinstance(opts, dict) else False


def _completion_payload(
    w: SimWorker, rid: str, groups: Sequence[Sequence[Request]], chat: bool, model_name: str
) -> dict[str, Any]:
    """One choice per prompt and sample, indexed in order (prompt-major, as ``index=len(choices)`` in vLLM)."""
    choices: list[dict[str, Any]] = []
    for req in (r for group in groups for r in group):
        text = _visible_text(w.tokenizer, req.outputs)
        choice: dict[str, Any] = {"index": len(choices)}
        if chat:
            choice["message"] = {"role": "assistant", "content": text, "tool_calls": []}
        else:
            choice["text"] = text
        choice.update(logprobs=None, finish_reason=req.finish_reason, stop_reason=req.plan.stop_reason)
        choices.append(choice)
    # The chat response reads the parent's count; a completion batch reads the last prompt's
    # (``last_final_res.num_cached_tokens``).
    cached_from = groups[0][0] if chat else groups[-1][0]
    return {
        "id": ("chatcmpl-" if chat else "cmpl-") + rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": _usage(groups, w.cfg.enable_prompt_tokens_details, cached_from),
    }


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    w = request.app[WORKER]
    body = await read_json_object(request)
    stream = bool(body.get("stream", False))
    include_usage = _include_usage(body, stream)
    rid = request["rid"]
    groups = await w.submit(rid, body, chat)
    reqs = [r for group in groups for r in group]
    model_name = body.get("model") or w.cfg.model_name
    stats = request["stats"]
    stats["prompt_tokens"] = sum(group[0].prompt_len for group in groups)
    try:
        if stream:
            return await _stream(request, w, rid, groups, chat, model_name, include_usage)
        for req in reqs:
            await w.wait_finished(req)  # ApiError 503 if the engine loop dies meanwhile
    finally:
        for req in reqs:
            w.abort(req)  # no-op once finished; a client gone mid-request frees its blocks
        stats["cached_tokens"] = max(reqs[0].num_cached_tokens, 0)
        stats["completion_tokens"] = sum(len(req.outputs) for req in reqs)
    return json_response(_completion_payload(w, rid, groups, chat, model_name), headers=_headers(w, rid))


async def _wait_any(reqs: Sequence[Request]) -> None:
    """Until one of ``reqs`` has changed (a token or its end); their events are cleared before returning."""
    if len(reqs) == 1:
        await reqs[0].changed.wait()
    elif not any(r.changed.is_set() for r in reqs):
        waiters = [asyncio.ensure_future(r.changed.wait()) for r in reqs]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    for r in reqs:
        r.changed.clear()


async def _stream(
    request: web.Request,
    w: SimWorker,
    rid: str,
    groups: Sequence[Sequence[Request]],
    chat: bool,
    model: str,
    include_usage: bool,
) -> web.StreamResponse:
    """SSE chunks of every choice as its tokens come, each with its ``index`` (``output.index + prompt_idx * n``,
    vLLM's completion_stream_generator)."""
    reqs = [r for group in groups for r in group]
    tok = w.tokenizer
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

    def choice(index: int, text: str, finish: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {"content": text}
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

    sent = [0] * len(reqs)
    done = [False] * len(reqs)  # finished and every token sent
    role_sent = not chat
    while not all(done):
        if not any(len(r.outputs) > sent[i] or (r.finished and not done[i]) for i, r in enumerate(reqs)):
            await _wait_any([r for i, r in enumerate(reqs) if not done[i]])
            continue
        buf = bytearray()
        for i, req in enumerate(reqs):
            new = req.outputs[sent[i] :]
            if not new and not (req.finished and not done[i]):
                continue
            if not role_sent:
                # vLLM sends the role chunks (one per choice) on the first engine output, i.e. with the first token
                # after prefill (chat_completion_stream_generator in vllm/entrypoints/openai/chat_completion/
                # serving.py), so a client timing TTFT from the first chunk reads the real TTFT.
                for index in range(len(reqs)):
                    buf += chunk([choice(index, "", None, first=True)])
                role_sent = True
            for k, tid in enumerate(new):
                last = req.finished and sent[i] + k + 1 == len(req.outputs)
                text = "" if tid == tok.eos_token_id else tok.decode((tid,))
                buf += chunk([choice(i, text, req.finish_reason if last else None)])
            sent[i] += len(new)
            done[i] = req.finished and sent[i] == len(req.outputs)
        if buf:
            await resp.write(bytes(buf))
    if w.engine_error is not None:  # the engine died mid-stream: say so in-band, and no [DONE]
        await resp.write(sse_event(error_body(ApiError(503, f"The engine is dead: {w.engine_error}"))))
        await resp.write_eof()
        return resp
    if include_usage:
        # Streamed usage reads the cached count of the first output (``first_iteration`` in both generators).
        await resp.write(chunk([], _usage(groups, w.cfg.enable_prompt_tokens_details, reqs[0])))
    await resp.write(SSE_DONE)
    await resp.write_eof()
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def tokenize(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    body = await read_json_object(request)
    if "messages" not in body and "prompt" not in body:
        raise ApiError(400, "Either 'prompt' or 'messages' is required.", "prompt")
    chat = "messages" in body
    if not chat and not isinstance(body.get("prompt"), str):
        # vLLM's TokenizeCompletionRequest takes one string (``prompt: str``), no ids and no batch.
        raise ApiError(400, "1 validation error: prompt: Input should be a valid string", "prompt")
    rendered = await w.render(body, chat=chat)
    ids = rendered.prompt.token_ids
    return json_response({"count": len(ids), "max_model_len": w.max_model_len, "tokens": ids, "token_strs": None})


async def detokenize(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    body = await read_json_object(request)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise ApiError(400, "tokens must be a list of integers", "tokens")
    bad = bad_ids(w.tokenizer, tokens)
    if bad:
        raise ApiError(400, f"token id {bad[0]} is out of vocabulary", "tokens")
    return json_response({"prompt": w.tokenizer.decode(tokens)})


def _generate_request(
    w: SimWorker, rid: str, body: dict[str, Any], rendered: Rendered, prompt: Prompt | None = None
) -> dict[str, Any]:
    prompt = prompt or rendered.prompt
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
        "cache_salt": rendered.request.cache_salt,
        "priority": 0,
        "kv_transfer_params": None,
    }


async def chat_render(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    body = await read_json_object(request)
    w.resolve_model(body)
    rendered = await w.render(body, chat=True)
    return json_response(_generate_request(w, request["rid"], body, rendered))


async def completions_render(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    body = await read_json_object(request)
    w.resolve_model(body)
    rendered = await w.render(body, chat=False)
    prompts = rendered.request.batch
    # One generate request per prompt, ids as serving_completion numbers a batch (``{request_id}-{i}``).
    rids = [request["rid"]] if len(prompts) == 1 else [f"{request['rid']}-{i}" for i in range(len(prompts))]
    return json_response([_generate_request(w, r, body, rendered, p) for r, p in zip(rids, prompts, strict=True)])


async def reset_prefix_cache(request: web.Request) -> web.Response:
    return json_response({"success": request.app[WORKER].reset_prefix_cache()})


async def load_lora(request: web.Request) -> web.Response:
    w = request.app[WORKER]
    body = await read_json_object(request)
    name, path = body.get("lora_name"), body.get("lora_path")
    if not isinstance(name, str) or not isinstance(path, str):
        raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.", "lora_name")
    w.loras.load(name, path, load_inplace=lax_bool(body, "load_inplace"))
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
    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY_BYTES)
    app[WORKER] = worker
    app.router.add_get("/health", health)
    app.router.add_get("/ping", health)
    app.router.add_get("/version", version)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model_id:.+}", model)
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
