"""Continuous batching over the paged KV cache, with simulated step times.

The loop mirrors vLLM V1's scheduler (``vllm/v1/core/sched/scheduler.py``) at the level a router can observe:
running requests first (decode one token, or continue a chunked prefill), then waiting requests admitted FIFO
while ``max_num_seqs`` and the ``max_num_batched_tokens`` budget allow and the cache has blocks for the tokens
scheduled this step. Blocks are allocated as ``kv_cache_manager.allocate_slots`` does: for the computed tokens plus
the ones scheduled now, so a prompt holds blocks for its prefill chunk and a request grows one block at a time as
it decodes. A running request that finds no free block preempts the most recently admitted one, which later
recomputes. With delays disabled
(``speedup 0``) a request's whole decode completes in the step that finishes its prefill, so one worker
answers thousands of requests per second and never limits a load test.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from harness.mm.hashing import NONE_HASH, BlockKeyContext, block_hashes
from harness.mm.prompt import MMItem, Prompt
from harness.mm.text import STANDIN, TextTokenizer
from harness.sim.kv_cache import Block, BlockPool
from harness.sim.timing import TimingModel


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class OutputPlan:
    """The tokens a request will generate, decided up front from the deterministic answer."""

    token_ids: tuple[int, ...]
    finish_reason: str
    stop_reason: str | None = None


def plan_output(answer: str, params: SamplingParams, tokenizer: TextTokenizer = STANDIN) -> OutputPlan:
    """Apply ``stop``, ``ignore_eos`` and ``max_tokens`` to an answer the way vLLM's sampler ends one, in the
    worker's tokenizer (its EOS id ends the answer)."""
    stop_reason = None
    cut = len(answer)
    for s in params.stop:
        pos = answer.find(s) if s else -1
        if 0 <= pos < cut:
            cut, stop_reason = pos, s
    ids = tokenizer.encode(answer[:cut])
    eos = tokenizer.eos_token_id
    if stop_reason is not None:
        if len(ids) <= params.max_tokens:
            return OutputPlan(tuple(ids), "stop", stop_reason)
        return OutputPlan(tuple(ids[: params.max_tokens]), "length")
    if params.ignore_eos:
        base = ids or [eos]
        reps = math.ceil(params.max_tokens / len(base))
        return OutputPlan(tuple((base * reps)[: params.max_tokens]), "length")
    ids.append(eos)  # vLLM counts the EOS token in completion_tokens
    if len(ids) <= params.max_tokens:
        return OutputPlan(tuple(ids), "stop")
    return OutputPlan(tuple(ids[: params.max_tokens]), "length")


@dataclass(eq=False)
class Request:
    request_id: str
    prompt: Prompt
    plan: OutputPlan
    key_ctx: BlockKeyContext = field(default_factory=BlockKeyContext)
    arrival: float = field(default_factory=time.monotonic)

    # Cache state
    block_hashes: list[int] = field(default_factory=list)
    block_extras: list[tuple[object, ...] | None] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)
    num_published: int = 0
    num_cached_tokens: int = -1  # -1 until first scheduled
    # Progress
    num_computed: int = 0
    prefill_target: int = 0
    outputs: list[int] = field(default_factory=list)
    #: Prompt then output token ids, one list kept as tokens arrive (vLLM's ``Request.all_token_ids``).
    all_token_ids: list[int] = field(default_factory=list)
    scheduled_time: float | None = None
    image_tokens_to_encode: int = 0
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: str | None = None
    aborted: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def prompt_len(self) -> int:
        return len(self.prompt.token_ids)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival


class EngineHooks:
    """Observers of request life-cycle events (metrics). Default: no-ops."""

    def on_scheduled(self, req: Request) -> None: ...
    def on_token(self, req: Request, now: float, n: int, gap: float | None) -> None: ...
    def on_finished(self, req: Request, now: float) -> None: ...
    def on_preempted(self, req: Request) -> None: ...
    def on_step_end(self) -> None: ...


class Engine:
    def __init__(
        self,
        pool: BlockPool,
        timing: TimingModel,
        *,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 8192,
        encoder_cache_tokens: int | None = None,
        hooks: EngineHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.block_size = pool.block_size
        self.timing = timing
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        #: Encoder outputs by image hash, least recently used first, in tokens. vLLM's ``EncoderCacheManager``
        #: (``vllm/v1/core/encoder_cache_manager.py``) keeps a finished request's outputs as "freeable" until the
        #: space is needed, so a repeated image whose placeholders are not all in cached KV blocks (the block
        #: holding the image's end also holds the new text after it) skips the vision encoder. Its size defaults
        #: to the batch token budget (``compute_encoder_budget``), and always holds at least one item.
        self.encoder_cache_tokens = max_num_batched_tokens if encoder_cache_tokens is None else encoder_cache_tokens
        self._encoded: OrderedDict[str, int] = OrderedDict()
        self._encoded_tokens = 0
        self.hooks = hooks or EngineHooks()
        self.clock = clock
        self.waiting: deque[Request] = deque()
        #: Admission order; a dict, so membership and removal are O(1) inside the scheduling loop.
        self.running: dict[Request, None] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.num_steps = 0

    # -- public ----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="engine-loop")

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The engine loop's task, for its owner to supervise (``SimWorker``: a dead loop fails its requests)."""
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def add_request(self, req: Request) -> None:
        req.block_extras = []
        req.block_hashes = block_hashes(
            req.prompt.token_ids, self.block_size, req.prompt.mm_items, req.key_ctx, extras_out=req.block_extras
        )
        req.prefill_target = req.prompt_len
        req.all_token_ids = list(req.prompt.token_ids)
        self.waiting.append(req)
        self._wakeup.set()

    def abort(self, req: Request) -> None:
        """Client went away: release its blocks at the next step boundary."""
        req.aborted = True
        self._wakeup.set()

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    # -- loop ------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            if not self.running and not self.waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            self._drop_aborted()
            scheduled, prefill, images, decodes = self._schedule()
            delay = self.timing.step_seconds(prefill, images, decodes)
            await asyncio.sleep(delay)
            self.num_steps += 1
            self._complete(scheduled)
            self.hooks.on_step_end()

    def _drop_aborted(self) -> None:
        aborted = [r for r in self.waiting if r.aborted]
        if aborted:
            self.waiting = deque(r for r in self.waiting if not r.aborted)
        for req in [r for r in self.running if r.aborted]:
            del self.running[req]
            self._release(req)
            aborted.append(req)
        now = self.clock()
        for req in aborted:
            if not req.finished:
                req.finish_reason, req.finish_time = "abort", now
                self.hooks.on_finished(req, now)
                req.changed.set()

    def _slots_after(self, req: Request, n: int) -> int:
        """Tokens whose KV must have a slot once ``n`` more are computed this step.

        Without delays (``speedup 0``) the step that completes a prefill also runs the whole decode, so it needs
        room for every output token but the last, whose KV is never computed.
        """
        total = req.num_computed + n
        if not self.timing.realtime and total >= req.prefill_target:
            total = max(total, req.prompt_len + len(req.plan.token_ids) - 1)
        return total

    def _schedule(self) -> tuple[list[tuple[Request, int]], int, int, int]:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[Request, int]] = []
        prefill = images = decodes = 0
        running = self.running
        for req in list(running):
            if req not in running:  # preempted by an earlier request in this pass
                continue
            if req.num_computed < req.prefill_target:
                n = min(req.prefill_target - req.num_computed, budget)
                if n > 0 and self._reserve(req, self._slots_after(req, n)):
                    budget -= n
                    prefill += n
                    scheduled.append((req, n))
                continue
            if budget <= 0 or not self._reserve(req, req.prompt_len + len(req.outputs)):
                continue
            budget -= 1
            decodes += 1
            scheduled.append((req, 0))
        while self.waiting and len(running) < self.max_num_seqs and budget > 0:
            req = self.waiting[0]
            n = self._admit(req, budget)
            if n == 0:
                break
            self.waiting.popleft()
            running[req] = None
            budget -= n
            prefill += n
            images += req.image_tokens_to_encode
            scheduled.append((req, n))
        return scheduled, prefill, images, decodes

    def _admit(self, req: Request, budget: int) -> int:
        """Look up cached blocks and allocate slots for the first chunk; the chunk's size, 0 if the cache is full.

        ``allocate_slots`` (``vllm/v1/core/kv_cache_manager.py``) allocates for the computed tokens plus those
        scheduled now, never the whole request up front.
        """
        max_hit_blocks = (req.prefill_target - 1) // self.block_size
        hits = self.pool.longest_cached_prefix(req.block_hashes, max_hit_blocks)
        cached = len(hits) * self.block_size
        req.num_computed = cached
        n = min(req.prefill_target - cached, budget)
        need = max(0, math.ceil(self._slots_after(req, n) / self.block_size) - len(hits))
        # Hits sitting in the free queue are not allocatable once touched.
        free_hits = sum(1 for b in hits if b.ref_cnt == 0)
        if need > self.pool.num_free - free_hits:
            req.num_computed = 0
            return 0
        self.pool.touch(hits)
        new = self.pool.allocate(need)
        assert new is not None
        req.blocks = hits + new
        req.num_published = len(hits)
        if req.num_cached_tokens < 0:  # first scheduling decides what the response reports
            req.num_cached_tokens = cached
            req.scheduled_time = self.clock()
            self.pool.stats.queries += req.prompt_len
            self.pool.stats.hits += cached
            self.hooks.on_scheduled(req)
        req.image_tokens_to_encode = self._encode(it for it in req.prompt.mm_items if it.offset + it.length > cached)
        return n

    def _encode(self, items: Iterable[MMItem]) -> int:
        """Image tokens the vision encoder must run for ``items``; those found in the encoder cache cost none."""
        cost = 0
        cache = self._encoded
        for it in items:
            if it.hash in cache:
                cache.move_to_end(it.hash)
                continue
            cost += it.length
            cache[it.hash] = it.length
            self._encoded_tokens += it.length
            while self._encoded_tokens > self.encoder_cache_tokens and len(cache) > 1:
                self._encoded_tokens -= cache.popitem(last=False)[1]
        return cost

    def _reserve(self, req: Request, num_tokens: int) -> bool:
        """Grow ``req`` to slots for ``num_tokens`` tokens, preempting the newest running request while the pool
        is dry (``Scheduler.schedule`` in ``vllm/v1/core/sched/scheduler.py``); False if ``req`` itself went."""
        while math.ceil(num_tokens / self.block_size) > len(req.blocks):
            new = self.pool.allocate(math.ceil(num_tokens / self.block_size) - len(req.blocks))
            if new is not None:
                req.blocks.extend(new)
                continue
            victim = next(reversed(self.running))
            self._preempt(victim)
            if victim is req:
                return False
        return True

    def _preempt(self, req: Request) -> None:
        del self.running[req]
        self._release(req)
        req.num_computed = 0
        req.prefill_target = req.prompt_len + len(req.outputs)
        self.waiting.appendleft(req)
        self.hooks.on_preempted(req)

    def _release(self, req: Request) -> None:
        self.pool.free_blocks(reversed(req.blocks))
        req.blocks = []
        req.num_published = 0

    def _complete(self, scheduled: Sequence[tuple[Request, int]]) -> None:
        now = self.clock()
        running = self.running
        for req, n in scheduled:
            if req.aborted or req.finished or req not in running:
                continue
            if n:
                req.num_computed += n
                req.image_tokens_to_encode = 0
                self._publish(req)
                if req.num_computed < req.prefill_target:
                    continue
            remaining = len(req.plan.token_ids) - len(req.outputs)
            k = remaining if not self.timing.realtime else 1
            self._emit(req, k, now)

    def _emit(self, req: Request, k: int, now: float) -> None:
        start = len(req.outputs)
        new = req.plan.token_ids[start : start + k]
        req.outputs.extend(new)
        req.all_token_ids.extend(new)
        gap = None if req.last_token_time is None else now - req.last_token_time
        if req.first_token_time is None:
            req.first_token_time = now
        req.last_token_time = now
        req.num_computed = len(req.all_token_ids) - 1  # the newest token has no KV yet
        self.hooks.on_token(req, now, k, gap)
        self._publish(req)
        if len(req.outputs) >= len(req.plan.token_ids):
            req.finish_reason = req.plan.finish_reason
            req.finish_time = now
            del self.running[req]
            self._release(req)
            self.hooks.on_finished(req, now)
        req.changed.set()

    def _publish(self, req: Request) -> None:
        """Publish blocks whose KV is complete: prompt blocks as prefill covers them, then output blocks."""
        computed = req.num_computed
        full = min(computed // self.block_size, len(req.blocks))
        if full <= req.num_published:
            return
        tokens = req.all_token_ids
        if full > len(req.block_hashes):
            parent = req.block_hashes[-1] if req.block_hashes else NONE_HASH
            req.block_hashes.extend(
                block_hashes(
                    tokens[: full * self.block_size],
                    self.block_size,
                    req.prompt.mm_items,
                    req.key_ctx,
                    start_block=len(req.block_hashes),
                    parent=parent,
                    extras_out=req.block_extras,
                )
            )
        lo = req.num_published
        bs = self.block_size
        self.pool.cache_blocks(
            req.blocks[lo:full],
            req.block_hashes[lo:full],
            tokens[lo * bs : full * bs],
            req.block_hashes[lo - 1] if lo else None,
            req.key_ctx.lora_name,
            req.block_extras[lo:full],
        )
        req.num_published = full
