"""The simulated worker's service layer: configuration -> engine, cache, memory; request bodies -> prompts.

``SimWorker`` owns everything a request needs besides HTTP: the model's geometry and memory plan, the engine and
its paged cache, the LoRA registry, the image resolver, and the simulated-GPU memory it publishes. It validates
and renders requests through ``harness.mm``, exactly as the proxy does, so both see the same tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from harness.errors import ApiError
from harness.gpu.simulated import SimGpuRegistry
from harness.mm.geometry import ImageGeometry
from harness.mm.prompt import Prompt
from harness.mm.request import RenderedRequest, render_request, text_chars
from harness.server.kv_events import EventPublisher, KVEventsConfig
from harness.server.openai import model_card
from harness.sim import answers, degrade
from harness.sim.config import WorkerConfig
from harness.sim.engine import Engine, Request, SamplingParams, plan_output
from harness.sim.kv_cache import BlockPool
from harness.sim.lora import LoraRegistry
from harness.sim.metrics import EngineMetrics
from harness.sim.model_specs import ModelSpec, model_spec
from harness.sim.params import SamplingFields, sampling_fields
from harness.sim.timing import TimingModel, model_costs

log = logging.getLogger("harness.sim.worker")

#: Engine requests one body may fan out into (prompts of a batch times ``n``). vLLM sets no such bound; the
#: simulated engine does, so one body cannot queue a million requests.
MAX_CHOICES = 256

GIB = 1024**3
#: Fraction of the weights a start-up profiling run adds at its peak (activations of a max-size batch).
PROFILE_PEAK_FRACTION = 0.15
#: Fixed runtime overhead on top of weights + KV (CUDA context, graphs, allocator slack).
RUNTIME_OVERHEAD_BYTES = int(0.6 * GIB)


class StartupError(RuntimeError):
    pass


@dataclass(frozen=True)
class Rendered:
    request: RenderedRequest

    @property
    def prompt(self) -> Prompt:
        return self.request.prompt


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


def worker_timing(cfg: WorkerConfig, spec: ModelSpec) -> TimingModel:
    """The model's default step costs, each overridden by its flag when one is given."""
    d = model_costs(spec)

    def pick(flag: float | None, scale: float, default: float) -> float:
        return flag / scale if flag is not None else default

    return TimingModel(
        step_overhead_s=pick(cfg.step_overhead_ms, 1e3, d.step_overhead_s),
        prefill_token_s=pick(cfg.prefill_token_us, 1e6, d.prefill_token_s),
        image_token_s=pick(cfg.image_token_us, 1e6, d.image_token_s),
        decode_seq_s=pick(cfg.decode_seq_us, 1e6, d.decode_seq_s),
        speedup=cfg.speedup,
    )


class SimWorker:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.spec = model_spec(cfg.model)
        self.geometry: ImageGeometry = cfg.mm.geometry(cfg.model)
        #: The model's tokenizer when found (``harness.mm.text``), else the stand-in: the proxy loads the same.
        self.tokenizer = cfg.mm.text_tokenizer(cfg.model)
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
        self.metrics = EngineMetrics(
            cfg.model_name, max_model_len=self.max_model_len, max_loras=cfg.max_loras if cfg.enable_lora else None
        )
        self.metrics.log_cache_config(self.cache_config_info())
        events_cfg = KVEventsConfig.from_json(cfg.kv_events_config)
        self.publisher = EventPublisher(events_cfg) if events_cfg else None
        self.pool = BlockPool(self.num_blocks, cfg.block_size, self.publisher.add if self.publisher else None)
        if self.publisher is not None:
            self.metrics.step_end_callbacks.append(self.publisher.flush)
        self.timing = worker_timing(cfg, self.spec)
        self.engine = Engine(
            self.pool,
            self.timing,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            hooks=self.metrics,
        )
        self.metrics.bind(self.engine)
        self.loras = LoraRegistry(cfg.model, cfg.max_lora_rank)
        self.assets = cfg.mm.asset_store()
        self.images = cfg.mm.resolver(cfg.model, self.geometry, assets=self.assets, analyze=answers.dominant_colours)
        self.ready = False
        #: Why the engine loop died, once it has: every request then fails (503) and /health answers 503.
        self.engine_error: str | None = None
        self.created = int(time.time())
        self.num_requests = 0
        self.rng = random.Random(cfg.seed)
        self.gpus = SimGpuRegistry()
        self.session: aiohttp.ClientSession | None = None
        degrade.install(self, cfg.degrade)  # test-only engine degradations; usually none

    def cache_config_info(self) -> dict[str, object]:
        """The labels of ``vllm:cache_config_info``: the ``CacheConfig`` fields (``vllm/config/cache.py``) a router
        or the gate may read, block size first, with the values this worker runs with."""
        cfg = self.cfg
        return {
            "block_size": cfg.block_size,
            "cache_dtype": "auto",
            "enable_prefix_caching": True,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "is_attention_free": False,
            "kv_cache_memory_bytes": cfg.kv_cache_memory_bytes,
            "num_cpu_blocks": None,
            "num_gpu_blocks": self.num_blocks,
            "num_gpu_blocks_override": cfg.num_gpu_blocks_override,
            "prefix_caching_hash_algo": "sha256",
            "sliding_window": None,
        }

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
        task = self.engine.task
        assert task is not None
        task.add_done_callback(self._engine_done)
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
            "worker %s ready: model=%s family=%s geometry=%s tokenizer=%s blocks=%d block_size=%d "
            "max_model_len=%d kv_bytes=%d speedup=%g",
            self.cfg.name,
            self.cfg.model_name,
            family,
            self.geometry.source,
            self.tokenizer.source,
            self.num_blocks,
            self.cfg.block_size,
            self.max_model_len,
            self.kv_bytes,
            self.cfg.speedup,
        )

    def _engine_done(self, task: asyncio.Task[None]) -> None:
        """Supervision: the loop only ever ends by cancellation (``shutdown``); any other end is fatal, and the
        requests it held would otherwise wait for tokens forever."""
        if task.cancelled():
            return
        exc = task.exception()
        self.engine_error = f"{type(exc).__name__}: {exc}" if exc is not None else "the engine loop returned"
        self.ready = False
        log.error(
            "worker %s: engine loop died (%s); failing every pending request, /health answers 503",
            self.cfg.name,
            self.engine_error,
            exc_info=exc,
        )
        for req in [*self.engine.waiting, *self.engine.running]:
            if not req.finished:
                req.finish_reason = "abort"
            req.changed.set()

    def check_engine(self) -> None:
        if self.engine_error is not None:
            raise ApiError(503, f"The engine is dead: {self.engine_error}", None, "EngineDeadError")

    async def wait_finished(self, req: Request) -> None:
        """Until ``req`` is finished; 503 when it ended because the engine loop died."""
        while not req.finished:
            await req.changed.wait()
            req.changed.clear()
        self.check_engine()

    async def shutdown(self) -> None:
        with contextlib.suppress(Exception):  # a loop that died re-raises its exception here: logged already
            await self.engine.stop()
        self.images.close()
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

    def check_text_size(self, body: dict[str, Any], chat: bool) -> None:
        """Refuse text that cannot fit before tokenizing it (a 30 MB prompt tokenizes for seconds). No token of the
        worker's tokenizer covers more than ``max_chars_per_token`` characters, so a prompt of ``n`` characters has
        at least ``ceil(n / max_chars_per_token)`` tokens."""
        chars = text_chars(body, chat)
        at_least = -(-chars // self.tokenizer.max_chars_per_token)
        if at_least >= self.max_model_len:
            raise ApiError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt "
                f"contains at least {at_least} input tokens. Please reduce the length of the input messages.",
                "messages" if chat else "prompt",
            )

    async def render(self, body: dict[str, Any], chat: bool) -> Rendered:
        """The shared pipeline (``harness.mm.request``): sizes checked before any tokenizing, images measured
        from their headers; nothing is decoded here."""
        self.check_text_size(body, chat)
        request = await render_request(
            body,
            chat=chat,
            family=self.geometry.family,
            resolver=self.images,
            image_limit=self.cfg.mm.image_limit,
            max_prompt_chars=self.cfg.mm.max_prompt_chars,
            tokenizer=self.tokenizer,
        )
        return Rendered(request)

    async def answer(self, rendered: Rendered, chat: bool, prompt: Prompt | None = None) -> str:
        """The deterministic answer: image colours (a reduced decode, on the resolver's threads) or the text
        (of ``prompt``, one of a completion batch; the first by default)."""
        request = rendered.request
        if request.images:
            return answers.describe_images([await self.images.analysis(im) for im in request.images])
        if chat:
            return answers.answer_text(request.last_user_text())
        return answers.answer_text(self.tokenizer.decode((prompt or request.prompt).token_ids))

    async def submit(self, rid: str, body: dict[str, Any], chat: bool) -> list[list[Request]]:
        """Validate and render ``body`` and hand it to the engine: the whole request path short of HTTP.

        One engine request per prompt and choice, grouped by prompt: vLLM's serving_completion schedules a batch
        as one request per prompt (``{request_id}-{i}``, ``vllm/entrypoints/openai/completion/serving.py``) and
        ``n`` fans a request out into ``n`` child requests (``ParentRequest.get_child_info`` in
        ``vllm/v1/engine/parallel_sampling.py``: ids ``{index}_{parent id}``) that share the prompt's blocks.
        Every prompt is checked before any is scheduled."""
        self.check_engine()
        lora = self.resolve_model(body)
        rendered = await self.render(body, chat)
        prompts = rendered.request.batch
        fields = sampling_fields(body)
        if fields.n * len(prompts) > MAX_CHOICES:
            raise ApiError(
                400,
                f"{len(prompts)} prompt(s) with n={fields.n} make {fields.n * len(prompts)} sequences; the simulated "
                f"engine takes at most {MAX_CHOICES} per request.",
                "n",
            )
        # length checks: before any pixel is decoded
        params = [self.sampling_params(body, prompt, fields) for prompt in prompts]
        plans = [
            plan_output(await self.answer(rendered, chat, prompt), p, self.tokenizer)
            for prompt, p in zip(prompts, params, strict=True)
        ]
        self.check_engine()
        groups: list[list[Request]] = []
        for i, (prompt, plan) in enumerate(zip(prompts, plans, strict=True)):
            prompt_rid = rid if len(prompts) == 1 else f"{rid}-{i}"
            ids = [prompt_rid] if fields.n == 1 else [f"{j}_{prompt_rid}" for j in range(fields.n)]
            key_ctx = rendered.request.key_context(lora)  # by name only, as vLLM keys blocks
            groups.append([Request(request_id=r, prompt=prompt, plan=plan, key_ctx=key_ctx) for r in ids])
        for group in groups:
            self.metrics.observe_mm_items([it.hash for it in group[0].prompt.mm_items])
            for req in group:
                self.engine.add_request(req)
        return groups

    def abort(self, req: Request) -> None:
        if not req.finished:
            self.engine.abort(req)

    def model_card(self, model_id: str) -> dict[str, Any]:
        """``GET /v1/models/{id}``: the card of the base model or a loaded adapter, else 404 ``NotFoundError``."""
        for card in self.model_cards():
            if card["id"] == model_id:
                return card
        raise ApiError(404, f"The model `{model_id}` does not exist.", "model", "NotFoundError")

    def model_cards(self) -> list[dict[str, Any]]:
        """``GET /v1/models``: the base model and every loaded adapter, as vLLM lists them."""
        cards = [model_card(self.cfg.model_name, self.cfg.model, None, self.created, self.max_model_len)]
        for a in self.loras.adapters.values():
            cards.append(model_card(a.name, a.path, self.cfg.model_name, self.created, None))
        return cards

    def reset_prefix_cache(self) -> bool:
        success = self.pool.reset()
        if self.publisher is not None:
            self.publisher.flush()  # outside an engine step: nothing else would send AllBlocksCleared
        return success

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

    def sampling_params(
        self, body: dict[str, Any], prompt: Prompt, fields: SamplingFields | None = None
    ) -> SamplingParams:
        """The body's sampling fields, validated as vLLM's request models and ``SamplingParams`` do
        (``harness.sim.params``), then checked against the context length."""
        fields = fields or sampling_fields(body)
        return SamplingParams(
            max_tokens=self.check_length(prompt, fields.max_tokens),
            stop=fields.stop,
            ignore_eos=fields.ignore_eos,
        )

