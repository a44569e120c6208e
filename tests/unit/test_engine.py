"""Engine: prefix-cache hits from real state, continuous batching limits, chunked prefill, preemption, abort."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pytest

from harness.mm import tokenizer
from harness.mm.hashing import BlockKeyContext
from harness.mm.prompt import MMItem, Prompt
from harness.sim.engine import Engine, EngineHooks, OutputPlan, Request, SamplingParams, plan_output
from harness.sim.kv_cache import BlockPool
from harness.sim.timing import TimingModel
from tests.helpers import run_engine

T = TypeVar("T")
B = 16
DEADLINE_S = 10.0
PAD = tokenizer.SPECIAL_IDS["<|image_pad|>"]

FAST = TimingModel(speedup=0)
# Real sleeps, but each step lasts microseconds.
REALTIME = TimingModel(speedup=1000)


@dataclass(frozen=True)
class RecordingTiming(TimingModel):
    """A TimingModel that records each step's (prefill tokens, image tokens, decode seqs)."""

    steps: list[tuple[int, int, int]] = field(default_factory=list, compare=False)

    def step_seconds(self, prefill_tokens: int, image_tokens: int, decode_seqs: int) -> float:
        self.steps.append((prefill_tokens, image_tokens, decode_seqs))
        return super().step_seconds(prefill_tokens, image_tokens, decode_seqs)


class Recorder(EngineHooks):
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.max_running = 0
        self.max_waiting = 0
        self.scheduled: list[str] = []
        self.finished: list[str] = []
        self.preempted: list[str] = []
        self.tokens = 0

    def _observe(self) -> None:
        assert self.engine is not None
        self.max_running = max(self.max_running, self.engine.num_running)
        self.max_waiting = max(self.max_waiting, self.engine.num_waiting)

    def on_scheduled(self, req: Request) -> None:
        self.scheduled.append(req.request_id)

    def on_token(self, req: Request, now: float, n: int, gap: float | None) -> None:
        self.tokens += n
        self._observe()

    def on_finished(self, req: Request, now: float) -> None:
        self.finished.append(req.request_id)
        self._observe()

    def on_preempted(self, req: Request) -> None:
        self.preempted.append(req.request_id)
        self._observe()


def toks(n: int, base: int = 1000) -> list[int]:
    return list(range(base, base + n))


def out_plan(n: int, base: int = 50_000, reason: str = "length") -> OutputPlan:
    return OutputPlan(tuple(range(base, base + n)), reason)


_counter = 0


def make_req(
    token_ids: Sequence[int],
    n_out: int = 3,
    mm: Sequence[MMItem] = (),
    ctx: BlockKeyContext | None = None,
) -> Request:
    global _counter
    _counter += 1
    return Request(
        request_id=f"r{_counter}",
        prompt=Prompt(token_ids=list(token_ids), mm_items=list(mm)),
        plan=out_plan(n_out),
        key_ctx=ctx or BlockKeyContext(),
    )


def make_engine(
    num_blocks: int = 256,
    timing: TimingModel = FAST,
    block_size: int = B,
    hooks: EngineHooks | None = None,
    **kw: int,
) -> Engine:
    engine = Engine(BlockPool(num_blocks, block_size), timing, hooks=hooks, **kw)
    if isinstance(hooks, Recorder):
        hooks.engine = engine
    return engine


async def wait_finished(req: Request) -> None:
    while not req.finished:
        await req.changed.wait()
        req.changed.clear()


async def wait_for(req: Request, cond: Callable[[Request], bool]) -> None:
    while not cond(req):
        assert not req.finished, "request finished before the awaited condition held"
        await req.changed.wait()
        req.changed.clear()


async def submit(engine: Engine, req: Request) -> Request:
    engine.add_request(req)
    await asyncio.wait_for(wait_finished(req), DEADLINE_S)
    return req


def run_all(engine: Engine, reqs_factory: Callable[[], list[Request]]) -> list[Request]:
    async def body() -> list[Request]:
        reqs = reqs_factory()
        for r in reqs:
            engine.add_request(r)
        await asyncio.wait_for(asyncio.gather(*(wait_finished(r) for r in reqs)), DEADLINE_S)
        return reqs

    return run_engine(engine, body)


def assert_all_free(engine: Engine) -> None:
    assert engine.num_running == 0
    assert engine.num_waiting == 0
    assert engine.pool.num_free == engine.pool.num_blocks
    assert all(b.ref_cnt == 0 for b in engine.pool.blocks)


# -- cached tokens -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("timing", [FAST, REALTIME], ids=["speedup0", "realtime"])
@pytest.mark.parametrize("p", [1, 16, 17, 32, 33, 100, 160])
def test_repeated_prompt_reports_floor_of_p_minus_one(timing: TimingModel, p: int) -> None:
    engine = make_engine(timing=timing)

    async def body() -> tuple[Request, Request]:
        cold = await submit(engine, make_req(toks(p)))
        warm = await submit(engine, make_req(toks(p)))
        return cold, warm

    cold, warm = run_engine(engine, body)
    assert cold.num_cached_tokens == 0
    assert warm.num_cached_tokens == (p - 1) // B * B
    assert warm.outputs == list(warm.plan.token_ids)
    assert engine.pool.stats.queries == 2 * p
    assert engine.pool.stats.hits == (p - 1) // B * B
    assert_all_free(engine)


@pytest.mark.parametrize("timing", [FAST, REALTIME], ids=["speedup0", "realtime"])
@pytest.mark.parametrize(("shared", "expected"), [(0, 0), (15, 0), (16, 16), (40, 32), (48, 48), (63, 48)])
def test_partial_prefix_hits_exactly_the_shared_full_blocks(timing: TimingModel, shared: int, expected: int) -> None:
    engine = make_engine(timing=timing)
    first = toks(100)
    second = first[:shared] + toks(100 - shared, base=90_000)

    async def body() -> Request:
        await submit(engine, make_req(first))
        return await submit(engine, make_req(second))

    assert run_engine(engine, body).num_cached_tokens == expected
    assert_all_free(engine)


def test_prefix_of_a_cached_prompt_and_decode_blocks_hit() -> None:
    engine = make_engine()
    first = toks(40)

    async def body() -> tuple[Request, Request]:
        a = await submit(engine, make_req(first, n_out=30))
        # The follow-up turn: the previous prompt plus the generated answer plus more text.
        follow = first + list(a.outputs) + toks(20, base=70_000)
        b = await submit(engine, make_req(follow))
        return a, b

    _, b = run_engine(engine, body)
    # KV exists for the prompt and all generated tokens but the last: 40 + 29 = 69 tokens -> 4 full blocks.
    assert b.num_cached_tokens == 64


def test_finished_request_chain_tail_is_evicted_first() -> None:
    # Pool of exactly 3 blocks: a 48-token prompt with 1 output token fills it with a 3-block chain.
    engine = make_engine(num_blocks=3)
    chain = toks(48)

    async def body() -> list[Request]:
        return [
            await submit(engine, make_req(chain, n_out=1)),
            await submit(engine, make_req(toks(16, base=40_000), n_out=1)),  # needs 1 block: evicts one
            await submit(engine, make_req(chain, n_out=1)),
        ]

    first, _, again = run_engine(engine, body)
    assert first.num_cached_tokens == 0
    # The chain's last block was evicted; its first two still hit (the lookup cap is 2 blocks anyway).
    assert again.num_cached_tokens == 32
    assert engine.pool.stats.evictions >= 1
    assert_all_free(engine)


def test_different_image_same_text_hits_only_before_the_image() -> None:
    engine = make_engine()
    ids = toks(40) + [PAD] * 50 + toks(30, base=3000)  # image at offsets 40..89, block 2 starts at 32
    green = [MMItem(hash="img-green", offset=40, length=50)]
    red = [MMItem(hash="img-red", offset=40, length=50)]
    timing_probe = RecordingTiming(speedup=0)
    engine.timing = timing_probe

    async def body() -> tuple[Request, Request, Request]:
        a = await submit(engine, make_req(ids, mm=green))
        b = await submit(engine, make_req(ids, mm=red))
        c = await submit(engine, make_req(ids, mm=green))
        return a, b, c

    a, b, c = run_engine(engine, body)
    assert a.num_cached_tokens == 0
    assert b.num_cached_tokens == 32
    assert c.num_cached_tokens == (len(ids) - 1) // B * B
    # Each admission's step: prefill tokens actually computed and image tokens encoded.
    admissions = [s for s in timing_probe.steps if s[0] > 0]
    assert admissions[0][:2] == (len(ids), 50)
    assert admissions[1][:2] == (len(ids) - 32, 50)
    assert admissions[2][:2] == (len(ids) - c.num_cached_tokens, 0)  # the image's blocks are cached


def test_repeated_image_skips_the_encoder_while_its_output_is_cached() -> None:
    """The block holding the image's end also holds new text, so the placeholders are never all in cached KV: a
    repeat is spared the vision encoder only by the encoder cache, which forgets the least recently used image."""
    engine = make_engine(encoder_cache_tokens=100)  # room for two 50-token images
    timing_probe = RecordingTiming(speedup=0)
    engine.timing = timing_probe

    def req(image: str, tail: int) -> Request:
        ids = toks(40) + [PAD] * 50 + toks(30, base=tail)  # image at 40..89; block 5 (80..95) mixes image and tail
        return make_req(ids, mm=[MMItem(hash=image, offset=40, length=50)])

    async def body() -> list[Request]:
        order = [("a", 3000), ("a", 4000), ("b", 5000), ("c", 6000), ("b", 7000), ("a", 8000)]
        return [await submit(engine, req(image, tail)) for image, tail in order]

    reqs = run_engine(engine, body)
    assert reqs[1].num_cached_tokens == 80  # the image's last block is not cached: its encoder output must be
    encoded = [s[1] for s in timing_probe.steps if s[0] > 0]
    # a new, a from the encoder cache, b and c new (c evicts a, the least recently used), b cached, a evicted.
    assert encoded == [50, 0, 50, 50, 0, 50]
    assert_all_free(engine)


def test_image_hash_changes_hits_even_with_image_later_in_prompt() -> None:
    engine = make_engine()
    ids = toks(70) + [PAD] * 20 + toks(10, base=3000)  # image at 70..89, in blocks 4 and 5
    items_a = [MMItem(hash="a", offset=70, length=20)]
    items_b = [MMItem(hash="b", offset=70, length=20)]

    async def body() -> Request:
        await submit(engine, make_req(ids, mm=items_a))
        return await submit(engine, make_req(ids, mm=items_b))

    assert run_engine(engine, body).num_cached_tokens == 64


@pytest.mark.parametrize(
    ("ctx_a", "ctx_b"),
    [
        (BlockKeyContext(), BlockKeyContext(lora_name="lora-1")),
        (BlockKeyContext(lora_name="lora-1"), BlockKeyContext(lora_name="lora-2")),
        (BlockKeyContext(), BlockKeyContext(cache_salt="tenant-a")),
        (BlockKeyContext(cache_salt="tenant-a"), BlockKeyContext(cache_salt="tenant-b")),
    ],
)
def test_lora_and_cache_salt_isolate_caches(ctx_a: BlockKeyContext, ctx_b: BlockKeyContext) -> None:
    engine = make_engine()
    ids = toks(100)
    full_hit = (len(ids) - 1) // B * B

    async def body() -> list[Request]:
        return [
            await submit(engine, make_req(ids, ctx=ctx_a)),
            await submit(engine, make_req(ids, ctx=ctx_b)),
            await submit(engine, make_req(ids, ctx=ctx_b)),
            await submit(engine, make_req(ids, ctx=ctx_a)),
        ]

    cached = [r.num_cached_tokens for r in run_engine(engine, body)]
    assert cached == [0, 0, full_hit, full_hit]


# -- batching limits ----------------------------------------------------------------------------------------
def test_max_num_seqs_bounds_running_requests() -> None:
    rec = Recorder()
    engine = make_engine(timing=REALTIME, hooks=rec, max_num_seqs=3)
    reqs = run_all(engine, lambda: [make_req(toks(20, base=1000 + 100 * i), n_out=6) for i in range(12)])
    assert all(r.outputs == list(r.plan.token_ids) for r in reqs)
    assert rec.max_running == 3  # reached and never exceeded
    assert rec.max_waiting > 0
    assert sorted(rec.finished) == sorted(r.request_id for r in reqs)
    # FIFO admission: requests are scheduled in arrival order.
    assert rec.scheduled == [r.request_id for r in reqs]
    assert_all_free(engine)


def test_max_num_seqs_one_serialises_requests() -> None:
    rec = Recorder()
    engine = make_engine(timing=REALTIME, hooks=rec, max_num_seqs=1)
    reqs = run_all(engine, lambda: [make_req(toks(20, base=1000 + 100 * i), n_out=4) for i in range(4)])
    assert rec.max_running == 1
    assert rec.finished == [r.request_id for r in reqs]
    for earlier, later in itertools.pairwise(reqs):
        assert earlier.finish_time is not None and later.first_token_time is not None
        assert later.first_token_time >= earlier.finish_time


@pytest.mark.parametrize(("p", "budget"), [(100, 32), (100, 100), (64, 16), (65, 16), (100, 8192)])
def test_max_num_batched_tokens_chunks_prefill(p: int, budget: int) -> None:
    timing = RecordingTiming(speedup=0)
    engine = make_engine(timing=timing, max_num_batched_tokens=budget)
    (req,) = run_all(engine, lambda: [make_req(toks(p), n_out=5)])
    chunks = -(-p // budget)
    assert engine.num_steps == chunks  # with speedup 0 the whole decode lands in the last prefill step
    expected = [budget] * (chunks - 1) + [p - budget * (chunks - 1)]
    assert [s[0] for s in timing.steps] == expected
    assert req.outputs == list(req.plan.token_ids)
    assert_all_free(engine)


def test_chunked_prefill_realtime_step_count() -> None:
    timing = RecordingTiming(speedup=1000)
    engine = make_engine(timing=timing, max_num_batched_tokens=32)
    (req,) = run_all(engine, lambda: [make_req(toks(100), n_out=5)])
    # 4 prefill steps (32, 32, 32, 4; the last one samples token 1), then one decode step per further token.
    assert engine.num_steps == 4 + 4
    assert [s[0] for s in timing.steps] == [32, 32, 32, 4, 0, 0, 0, 0]
    assert [s[2] for s in timing.steps] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert req.outputs == list(req.plan.token_ids)


def test_budget_shared_between_decode_and_prefill() -> None:
    timing = RecordingTiming(speedup=1000)
    engine = make_engine(timing=timing, max_num_batched_tokens=32)

    async def body() -> Request:
        a = make_req(toks(16), n_out=20)
        engine.add_request(a)
        await asyncio.wait_for(wait_for(a, lambda r: len(r.outputs) >= 2), DEADLINE_S)
        b = make_req(toks(64, base=8000), n_out=2)
        engine.add_request(b)
        await asyncio.wait_for(asyncio.gather(wait_finished(a), wait_finished(b)), DEADLINE_S)
        return b

    run_engine(engine, body)
    assert all(prefill + decodes <= 32 for prefill, _, decodes in timing.steps)
    # b's 64 prompt tokens were split into chunks while a decoded alongside.
    assert (31, 0, 1) in timing.steps


# -- preemption, abort ---------------------------------------------------------------------------------------
def test_tiny_pool_preempts_and_every_request_finishes() -> None:
    rec = Recorder()
    # 4-token blocks, 10 blocks: each request alone needs ceil((8 + 16 - 1) / 4) = 6, three together need 18.
    engine = make_engine(num_blocks=10, block_size=4, timing=REALTIME, hooks=rec)
    reqs = run_all(engine, lambda: [make_req(toks(8, base=1000 + 100 * i), n_out=16) for i in range(3)])
    assert rec.preempted, "the pool is too small for three concurrent decodes; expected preemption"
    for r in reqs:
        assert r.finished
        assert r.finish_reason == "length"
        assert r.outputs == list(r.plan.token_ids)
        assert len(r.outputs) == 16
    assert rec.tokens == 3 * 16
    assert_all_free(engine)


def test_preempted_request_keeps_first_cached_tokens_value() -> None:
    rec = Recorder()
    engine = make_engine(num_blocks=10, block_size=4, timing=REALTIME, hooks=rec)
    reqs = run_all(engine, lambda: [make_req(toks(8, base=1000 + 100 * i), n_out=16) for i in range(3)])
    assert rec.preempted
    # Recomputation after preemption may hit the request's own blocks, but cached_tokens is decided at first
    # scheduling: these prompts were all cold.
    assert [r.num_cached_tokens for r in reqs] == [0, 0, 0]
    assert sorted(rec.scheduled) == sorted(r.request_id for r in reqs)  # once each, not per readmission


def test_abort_running_request_releases_blocks() -> None:
    rec = Recorder()
    engine = make_engine(num_blocks=64, timing=TimingModel(speedup=10_000), hooks=rec)

    async def body() -> tuple[Request, Request]:
        victim = make_req(toks(40), n_out=500)
        engine.add_request(victim)
        await asyncio.wait_for(wait_for(victim, lambda r: len(r.outputs) >= 3), DEADLINE_S)
        assert engine.num_running == 1
        assert engine.pool.num_free < engine.pool.num_blocks
        engine.abort(victim)
        produced = len(victim.outputs)
        # A later request completing proves the loop has passed a step boundary, where aborts are dropped.
        other = await submit(engine, make_req(toks(20, base=9000)))
        assert len(victim.outputs) == produced  # the in-flight step skips aborted requests
        return victim, other

    victim, other = run_engine(engine, body)
    assert victim.finish_reason == "abort"  # counted like vLLM's finished_reason="abort"
    assert len(victim.outputs) < 500
    assert victim.request_id in rec.finished
    assert other.finished
    assert_all_free(engine)


def test_abort_waiting_request_is_never_scheduled() -> None:
    rec = Recorder()
    engine = make_engine(timing=REALTIME, hooks=rec, max_num_seqs=1)

    async def body() -> tuple[Request, Request, Request]:
        first = make_req(toks(20), n_out=10)
        queued = make_req(toks(20, base=5000), n_out=10)
        engine.add_request(first)
        engine.add_request(queued)
        engine.abort(queued)
        await asyncio.wait_for(wait_finished(first), DEADLINE_S)
        last = await submit(engine, make_req(toks(20, base=9000)))
        return first, queued, last

    first, queued, last = run_engine(engine, body)
    assert queued.num_cached_tokens == -1
    assert queued.outputs == []
    assert queued.request_id not in rec.scheduled
    assert first.finished and last.finished
    assert_all_free(engine)


def test_many_concurrent_requests_leave_pool_free() -> None:
    engine = make_engine(num_blocks=40, timing=REALTIME, max_num_seqs=8, max_num_batched_tokens=64)
    shared = toks(48)
    reqs = run_all(
        engine,
        lambda: [make_req(shared + toks(10 + i, base=20_000 + 100 * i), n_out=1 + i % 7) for i in range(30)],
    )
    assert all(r.outputs == list(r.plan.token_ids) for r in reqs)
    assert any(r.num_cached_tokens >= 48 for r in reqs)
    assert_all_free(engine)


# -- timing ---------------------------------------------------------------------------------------------------
def test_cache_hit_lowers_ttft_in_realtime() -> None:
    # Prefill dominates: 1 ms per token / speedup 5 -> a cold 400-token prompt takes 80 ms to its first token,
    # a warm one recomputes 16 tokens (3.2 ms).
    timing = TimingModel(step_overhead_s=0.0, prefill_token_s=1e-3, image_token_s=0.0, decode_seq_s=0.0, speedup=5)
    engine = make_engine(timing=timing, max_num_batched_tokens=8192)
    ids = toks(400)

    async def body() -> tuple[Request, Request]:
        cold = await submit(engine, make_req(ids, n_out=1))
        warm = await submit(engine, make_req(ids, n_out=1))
        return cold, warm

    cold, warm = run_engine(engine, body)
    assert warm.num_cached_tokens == 384
    assert cold.ttft is not None and warm.ttft is not None
    assert cold.ttft >= 0.08 * 0.9
    assert warm.ttft * 2 < cold.ttft


def test_speedup_zero_answers_without_delay() -> None:
    engine = make_engine(timing=FAST)
    (req,) = run_all(engine, lambda: [make_req(toks(2000), n_out=200)])
    assert engine.num_steps == 1
    assert req.first_token_time == req.finish_time
    assert req.outputs == list(req.plan.token_ids)


def test_timing_model_costs() -> None:
    t = TimingModel(step_overhead_s=1.0, prefill_token_s=0.1, image_token_s=0.01, decode_seq_s=0.5, speedup=2)
    assert t.realtime
    assert t.step_seconds(10, 100, 2) == pytest.approx((1.0 + 1.0 + 1.0 + 1.0) / 2)
    assert TimingModel(speedup=0).step_seconds(10_000, 10_000, 100) == 0.0
    assert not TimingModel(speedup=0).realtime


# -- plan_output ----------------------------------------------------------------------------------------------
ANSWER = "The image shows green and red. That is all."


def test_plan_natural_end_appends_eos() -> None:
    plan = plan_output(ANSWER, SamplingParams(max_tokens=1000))
    ids = tokenizer.encode(ANSWER)
    assert plan.token_ids == (*ids, tokenizer.EOS_TOKEN_ID)
    assert plan.finish_reason == "stop"
    assert plan.stop_reason is None


def test_plan_max_tokens_truncates_with_length() -> None:
    ids = tokenizer.encode(ANSWER)
    plan = plan_output(ANSWER, SamplingParams(max_tokens=3))
    assert plan.token_ids == tuple(ids[:3])
    assert plan.finish_reason == "length"
    assert plan.stop_reason is None
    # Exactly the answer's length leaves no room for EOS: still "length".
    exact = plan_output(ANSWER, SamplingParams(max_tokens=len(ids)))
    assert exact.token_ids == tuple(ids)
    assert exact.finish_reason == "length"
    room = plan_output(ANSWER, SamplingParams(max_tokens=len(ids) + 1))
    assert room.finish_reason == "stop"
    assert room.token_ids[-1] == tokenizer.EOS_TOKEN_ID


def test_plan_stop_string_cuts_and_sets_stop_reason() -> None:
    plan = plan_output(ANSWER, SamplingParams(max_tokens=1000, stop=("green",)))
    assert plan.token_ids == tuple(tokenizer.encode("The image shows "))
    assert tokenizer.decode(plan.token_ids) == "The image shows "
    assert plan.finish_reason == "stop"
    assert plan.stop_reason == "green"
    assert tokenizer.EOS_TOKEN_ID not in plan.token_ids


def test_plan_earliest_stop_string_wins() -> None:
    plan = plan_output(ANSWER, SamplingParams(max_tokens=1000, stop=("That", "red", "missing", "")))
    assert plan.stop_reason == "red"
    assert tokenizer.decode(plan.token_ids) == "The image shows green and "


def test_plan_absent_stop_string_ends_naturally() -> None:
    plan = plan_output(ANSWER, SamplingParams(max_tokens=1000, stop=("purple",)))
    assert plan.finish_reason == "stop"
    assert plan.stop_reason is None
    assert plan.token_ids[-1] == tokenizer.EOS_TOKEN_ID


def test_plan_stop_beyond_max_tokens_is_length() -> None:
    plan = plan_output(ANSWER, SamplingParams(max_tokens=2, stop=("That",)))
    assert plan.finish_reason == "length"
    assert plan.stop_reason is None
    assert plan.token_ids == tuple(tokenizer.encode(ANSWER)[:2])


def test_plan_ignore_eos_fills_to_max_tokens() -> None:
    ids = tokenizer.encode(ANSWER)
    n = 3 * len(ids) + 5
    plan = plan_output(ANSWER, SamplingParams(max_tokens=n, ignore_eos=True))
    assert len(plan.token_ids) == n
    assert plan.finish_reason == "length"
    assert plan.stop_reason is None
    assert tokenizer.EOS_TOKEN_ID not in plan.token_ids
    assert plan.token_ids[: len(ids)] == tuple(ids)
    short = plan_output(ANSWER, SamplingParams(max_tokens=2, ignore_eos=True))
    assert short.token_ids == tuple(ids[:2])
    assert short.finish_reason == "length"


def test_engine_delivers_planned_output() -> None:
    plan = plan_output(ANSWER, SamplingParams(max_tokens=100, stop=("and",)))
    engine = make_engine(timing=REALTIME)

    def factory() -> list[Request]:
        return [Request(request_id="p", prompt=Prompt(token_ids=toks(30)), plan=plan)]

    (req,) = run_all(engine, factory)
    assert req.finish_reason == "stop"
    assert tuple(req.outputs) == plan.token_ids
    assert tokenizer.decode(req.outputs) == "The image shows green "
