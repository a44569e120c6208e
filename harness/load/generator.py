"""The load generator: asyncio + aiohttp, closed loop or open loop, streaming measurement per request.

* **closed loop**: ``concurrency`` clients, each sending its next request when its last one returns (aiperf's
  ``--concurrency``, vLLM bench's ``--max-concurrency``). Ramp-up staggers the clients' starts.
* **open loop**: requests leave at scheduled times whatever the server does — constant spacing or Poisson
  arrivals at ``rate`` (vLLM bench's ``--request-rate`` with ``--burstiness 1``), ramping linearly from zero
  over ``ramp_up_s``; an optional ``max_in_flight`` caps concurrency like vLLM's ``--max-concurrency``.
* **trace**: open loop at the workload's own timestamps (scaled by ``trace_speed``).

Each request streams (``stream_options.include_usage``): TTFT at the first chunk with non-empty content, ITL
between content chunks, E2E at the end, token counts and ``cached_tokens`` from the final usage chunk. Errors
are classified (``http_<status>``, ``timeout``, ``connection``, ``stream_error``) and stay in the records.

The client measures itself: dispatch lag (how late a request left compared with when it could have), the event
loop's own lag, and its CPU use. When those say the client and not the server was the bottleneck, the run says
so (``LoadResult.client_bound``) — the failure mode of a generator that reports its own ceiling as the server's.
Several processes (``procs``) split the workload by session when one core is not enough; their records merge.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from harness.gate.attribution import AttributionSource, HeaderAttribution, request_fields, worker_of
from harness.load.stats import Distribution, RequestRecord, distribution
from harness.load.workloads import ImageSpec, RequestSpec, chat_body

MODES = ("closed", "open", "trace")
ARRIVALS = ("constant", "poisson")
#: Thresholds of the client-bottleneck warning.
CPU_BOUND_FRACTION = 0.9
DISPATCH_LAG_LIMIT_S = 0.010
LOOP_LAG_LIMIT_S = 0.020


class ShapeError(ValueError):
    def __init__(self, message: str, flag: str | None = None) -> None:
        super().__init__(message)
        self.flag = flag


@dataclass(frozen=True)
class LoadShape:
    mode: str = "closed"
    concurrency: int = 8
    rate: float | None = None
    arrival: str = "poisson"
    max_in_flight: int | None = None
    ramp_up_s: float = 0.0
    #: The first ``warmup`` requests (and any sent during ramp-up) fill caches but stay out of the statistics.
    warmup: int = 0
    #: Stop sending after this many seconds from the end of ramp-up (None: when the workload is exhausted).
    duration_s: float | None = None
    timeout_s: float = 120.0
    #: After the last send, how long in-flight requests may still finish before they are cut off (incomplete).
    drain_s: float = 30.0
    trace_speed: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ShapeError(f"must be one of {', '.join(MODES)}", "--mode")
        if self.mode == "closed" and self.concurrency < 1:
            raise ShapeError("must be at least 1", "--concurrency")
        if self.mode == "open" and (self.rate is None or not self.rate > 0 or math.isinf(self.rate)):
            raise ShapeError("open loop needs a positive finite --rate (requests per second)", "--rate")
        if self.arrival not in ARRIVALS:
            raise ShapeError(f"must be one of {', '.join(ARRIVALS)}", "--arrival")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ShapeError("must be at least 1", "--max-in-flight")
        if self.ramp_up_s < 0:
            raise ShapeError("must not be negative", "--ramp-up")
        if self.warmup < 0:
            raise ShapeError("must not be negative", "--warmup")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ShapeError("must be positive", "--duration")
        if self.timeout_s <= 0:
            raise ShapeError("must be positive", "--timeout")
        if self.trace_speed <= 0:
            raise ShapeError("must be positive", "--trace-speed")


def arrival_times(n: int, rate: float, arrival: str = "constant", ramp_up_s: float = 0.0, seed: int = 0) -> list[float]:
    """Send offsets (seconds) of ``n`` open-loop requests at ``rate``/s, ramping linearly from 0 over ``ramp_up_s``.

    The intensity is ``rate * min(t / ramp, 1)``; its integral ``L(t)`` is inverted at ``k`` (constant) or at the
    running sum of unit exponentials (Poisson), so both shapes have the same mean rate at every moment."""
    rng = random.Random(seed)
    out: list[float] = []
    level = 0.0
    ramp_area = rate * ramp_up_s / 2.0  # L(ramp_up_s)
    for k in range(n):
        level = level + rng.expovariate(1.0) if arrival == "poisson" else float(k)
        if ramp_up_s > 0 and level < ramp_area:
            out.append(math.sqrt(2.0 * level * ramp_up_s / rate))
        else:
            out.append(ramp_up_s + (level - ramp_area) / rate)
    return out


@dataclass(frozen=True)
class Target:
    """Where requests go. Several URLs are used in turn (request i -> urls[i % n]): the direct-to-worker mode,
    client-side round robin with no router in between."""

    urls: tuple[str, ...]
    attribution: AttributionSource = field(default_factory=HeaderAttribution)
    headers: tuple[tuple[str, str], ...] = ()
    run_id: str = "bench"


@dataclass(frozen=True)
class BodyMaker:
    """Request bytes for a spec; picklable so worker processes build the same bodies."""

    model: str
    refs: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)
    ignore_eos: bool = True

    def _ref(self, img: ImageSpec) -> str:
        return self.refs[img.id]

    def __call__(self, req: RequestSpec) -> bytes:
        body = chat_body(req, self.model, self._ref, ignore_eos=self.ignore_eos)
        if self.extra:
            body.update(self.extra)
        return orjson.dumps(body)


@dataclass
class LoadResult:
    records: list[RequestRecord]
    elapsed_s: float
    cpu_s: float
    loop_lag: Distribution
    interrupted: bool = False
    procs: int = 1

    @property
    def cpu_fraction(self) -> float:
        """Client CPU as a fraction of the cores it had (1.0 = every generator process pegged)."""
        return self.cpu_s / (self.elapsed_s * self.procs) if self.elapsed_s else 0.0

    @property
    def client_bound(self) -> str | None:
        """Why the client, not the server, limited the run (None if nothing says so)."""
        lag = distribution(r.dispatch_lag_s for r in self.records if r.counted)
        reasons = []
        if self.cpu_fraction >= CPU_BOUND_FRACTION:
            reasons.append(f"client CPU at {self.cpu_fraction:.0%} of {self.procs} core(s)")
        if lag.count and lag.p(99.0) > DISPATCH_LAG_LIMIT_S:
            reasons.append(f"dispatch lag p99 {lag.p(99.0) * 1000:.1f} ms")
        if self.loop_lag.count and self.loop_lag.p(99.0) > LOOP_LAG_LIMIT_S:
            reasons.append(f"event-loop lag p99 {self.loop_lag.p(99.0) * 1000:.1f} ms")
        return "; ".join(reasons) or None


ProgressFn = Callable[[RequestRecord], None]


def _error_detail(raw: bytes) -> str:
    try:
        obj = orjson.loads(raw)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict):
            return f"{err.get('type') or ''}: {err.get('message') or ''}".strip(": ")[:300]
    except orjson.JSONDecodeError:
        pass
    return raw[:300].decode("utf-8", errors="replace")


_CONTENT, _EMPTY, _PARSE = object(), object(), object()
_TEXT_KEYS = (b'"content":', b'"reasoning_content":', b'"text":')
_SLOW_MARKERS = (b'"usage"', b'"error"', b'"nvext"')


def _classify(data: bytes) -> object:
    """Whether a chunk carries content, without parsing JSON on the hot path (one parse per chunk would cost a
    third of the generator's ceiling). Chunks with usage, errors or nvext, or any shape this scan does not know,
    are parsed in full."""
    if any(m in data for m in _SLOW_MARKERS):
        return _PARSE
    found = False
    for key in _TEXT_KEYS:
        i = data.find(key)
        while i >= 0:
            j = i + len(key)
            while j < len(data) and data[j] in b" \t":
                j += 1
            if data.startswith(b'"', j) and not data.startswith(b'""', j):
                return _CONTENT
            if not (data.startswith(b'""', j) or data.startswith(b"null", j)):
                return _PARSE
            found = True
            i = data.find(key, j)
    return _EMPTY if found else _PARSE


def _chunk_text(obj: dict[str, Any]) -> str | None:
    choices = obj.get("choices")
    if not choices:
        return None
    c = choices[0]
    delta = c.get("delta")
    if delta:
        return delta.get("content") or delta.get("reasoning_content")
    return c.get("text")


class _Runner:
    def __init__(
        self,
        requests: Sequence[RequestSpec],
        make_body: Callable[[RequestSpec], bytes],
        target: Target,
        shape: LoadShape,
        image_tokens: Sequence[int] | None,
        on_record: ProgressFn | None,
        schedule: Sequence[float] | None,
        start_at: float | None,
    ) -> None:
        self.requests = list(requests)
        self.make_body = make_body
        self.target = target
        self.shape = shape
        self.image_tokens = {r.index: (image_tokens[k] if image_tokens else 0) for k, r in enumerate(self.requests)}
        self.on_record = on_record
        self.schedule = schedule
        self.start_at = start_at
        self.records: dict[int, RequestRecord] = {}
        self.done: dict[int, asyncio.Event] = {r.index: asyncio.Event() for r in self.requests}
        self.done_at: dict[int, float] = {}
        self.start = 0.0
        self.loop_lags: list[float] = []
        self.inflight: set[asyncio.Task[None]] = set()
        self.session: aiohttp.ClientSession | None = None
        self.headers = {"Content-Type": "application/json", **dict(target.headers)}
        self.fields = request_fields(target.attribution)
        self.stopping = False
        self.warm_until = self.shape.ramp_up_s
        self.deadline = self.shape.ramp_up_s + self.shape.duration_s if self.shape.duration_s is not None else math.inf
        self._order = {r.index: k for k, r in enumerate(self.requests)}

    def now(self) -> float:
        return time.perf_counter() - self.start

    def _new_record(self, req: RequestSpec, scheduled: float | None) -> RequestRecord:
        k = self._order[req.index]
        rec = RequestRecord(index=req.index, scheduled_s=scheduled, image_tokens=self.image_tokens[req.index])
        rec.warmup = k < self.shape.warmup
        self.records[req.index] = rec
        return rec

    async def _wait_dependency(self, req: RequestSpec) -> float:
        """Wait for the previous turn of the session; returns when it finished (0 if none)."""
        if req.after is None or req.after not in self.done:
            return 0.0
        await self.done[req.after].wait()
        return self.done_at.get(req.after, 0.0)

    async def send(self, req: RequestSpec, rec: RequestRecord, ready_at: float) -> None:
        body = self.make_body(req)
        if self.fields:
            obj = orjson.loads(body)
            obj.update(self.fields)
            body = orjson.dumps(obj)
        url = self.target.urls[req.index % len(self.target.urls)]
        headers = {**self.headers, "X-Request-Id": f"{self.target.run_id}-{req.index}"}
        assert self.session is not None
        t0 = time.perf_counter()
        rec.sent_s = t0 - self.start
        rec.dispatch_lag_s = max(rec.sent_s - ready_at, 0.0)
        if rec.sent_s < self.warm_until:
            rec.warmup = True
        try:
            async with asyncio.timeout(self.shape.timeout_s):
                await self._exchange(url, body, headers, rec, t0)
        except TimeoutError:
            rec.error, rec.error_detail = "timeout", f"no complete response within {self.shape.timeout_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            rec.error, rec.error_detail = "connection", f"{type(exc).__name__}: {exc}"[:300]
        except asyncio.CancelledError:
            rec.error = "interrupted" if not self.stopping else "incomplete"
            raise
        finally:
            if rec.e2e_s is None and rec.error is not None:
                rec.e2e_s = time.perf_counter() - t0
            self.done_at[req.index] = self.now()
            self.done[req.index].set()
            if self.on_record is not None and rec.error not in ("incomplete", "interrupted"):
                self.on_record(rec)

    async def _exchange(self, url: str, body: bytes, headers: dict[str, str], rec: RequestRecord, t0: float) -> None:
        assert self.session is not None
        src = self.target.attribution
        async with self.session.post(url, data=body, headers=headers) as resp:
            rec.status = resp.status
            rec.worker = worker_of(src, resp.headers)
            if resp.status != 200:
                rec.error = f"http_{resp.status}"
                rec.error_detail = _error_detail(await resp.read())
                rec.e2e_s = time.perf_counter() - t0
                return
            last = 0.0
            finished = False
            usage: dict[str, Any] | None = None
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    finished = True
                    break
                now = time.perf_counter()
                kind = _classify(data)
                if kind is _CONTENT or kind is _EMPTY:
                    if kind is _CONTENT:
                        if rec.ttft_s is None:
                            rec.ttft_s = now - t0
                        else:
                            rec.itl_s.append(now - last)
                        last = now
                        rec.content_chunks += 1
                    continue
                try:
                    obj = orjson.loads(data)
                except orjson.JSONDecodeError:
                    rec.error, rec.error_detail = "stream_error", f"bad SSE data: {data[:120]!r}"
                    break
                if "error" in obj:  # vLLM reports mid-stream failures in-band
                    rec.error, rec.error_detail = "stream_error", _error_detail(data)
                    break
                if _chunk_text(obj):
                    if rec.ttft_s is None:
                        rec.ttft_s = now - t0
                    else:
                        rec.itl_s.append(now - last)
                    last = now
                    rec.content_chunks += 1
                if obj.get("usage"):
                    usage = obj["usage"]
                if rec.worker is None and "nvext" in obj:
                    rec.worker = worker_of(src, None, obj)
            rec.e2e_s = time.perf_counter() - t0
            if rec.error is None and not finished:
                rec.error, rec.error_detail = "stream_error", "stream ended without [DONE]"
            if usage is not None:
                rec.prompt_tokens = usage.get("prompt_tokens")
                rec.completion_tokens = usage.get("completion_tokens")
                details = usage.get("prompt_tokens_details") or {}  # null means nothing cached (older vLLM)
                rec.cached_tokens = int(details.get("cached_tokens") or 0)
            else:
                rec.usage_missing = True
                rec.completion_tokens = rec.content_chunks

    # -- shapes ---------------------------------------------------------------------------------------------
    async def closed(self) -> None:
        queue = iter(self.requests)
        n = self.shape.concurrency

        async def client(k: int) -> None:
            if self.shape.ramp_up_s:
                await asyncio.sleep(self.shape.ramp_up_s * k / n)
            free_at = self.now()
            for req in queue:
                if self.stopping or self.now() >= self.deadline:
                    return
                rec = self._new_record(req, None)
                dep = await self._wait_dependency(req)
                await self.send(req, rec, max(free_at, dep))
                free_at = self.now()

        tasks = [asyncio.create_task(client(k)) for k in range(n)]
        self.inflight.update(tasks)  # type: ignore[arg-type]
        await self._drain(tasks)

    async def open(self, times: Sequence[float]) -> None:
        sem = asyncio.Semaphore(self.shape.max_in_flight) if self.shape.max_in_flight else None

        async def one(req: RequestSpec, at: float) -> None:
            rec = self._new_record(req, at)
            dep = await self._wait_dependency(req)
            ready = max(at, dep)
            if sem is None:
                await self.send(req, rec, ready)
                return
            async with sem:
                await self.send(req, rec, ready)

        tasks: list[asyncio.Task[None]] = []
        for req, at in zip(self.requests, times, strict=True):
            if self.stopping or at >= self.deadline:
                break
            delay = at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(req, at))
            tasks.append(task)
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
        await self._drain(tasks)

    async def _drain(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        """Wait for the requests in flight; past the drain window (after the duration bound), cut them off."""
        if not tasks:
            return
        if math.isinf(self.deadline):
            await asyncio.gather(*tasks, return_exceptions=True)
            return
        remaining = max(self.deadline - self.now(), 0.0) + self.shape.drain_s
        _, pending = await asyncio.wait(tasks, timeout=remaining)
        if pending:
            self.stopping = True
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _loop_lag(self) -> None:
        interval = 0.05
        while True:
            t = time.perf_counter()
            await asyncio.sleep(interval)
            self.loop_lags.append(max(time.perf_counter() - t - interval, 0.0))

    async def run(self) -> LoadResult:
        self.shape.validate()
        if self.start_at is not None:
            await asyncio.sleep(max(self.start_at - time.time(), 0.0))
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        cpu0 = time.process_time()
        self.start = time.perf_counter()
        lag_task = asyncio.create_task(self._loop_lag())
        interrupted = False
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                self.session = session
                if self.shape.mode == "closed":
                    await self.closed()
                else:
                    await self.open(self.times())
        except asyncio.CancelledError:
            interrupted = True
            self.stopping = True
            for t in list(self.inflight):
                t.cancel()
        finally:
            lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_task
        elapsed = time.perf_counter() - self.start
        for rec in self.records.values():  # created but never finished (cancelled before or while sending)
            if rec.e2e_s is None and rec.error is None and rec.ttft_s is None and rec.status is None:
                rec.error = "interrupted" if interrupted else "incomplete"
        records = [self.records[r.index] for r in self.requests if r.index in self.records]
        return LoadResult(
            records, elapsed, time.process_time() - cpu0, distribution(self.loop_lags), interrupted=interrupted
        )

    def times(self) -> list[float]:
        if self.schedule is not None:
            return list(self.schedule)
        return schedule_for(self.requests, self.shape)


def schedule_for(requests: Sequence[RequestSpec], shape: LoadShape) -> list[float]:
    """Open-loop send offsets for ``requests`` under ``shape`` (trace: the workload's timestamps)."""
    if shape.mode == "trace":
        return [(r.timestamp_s or 0.0) / shape.trace_speed for r in requests]
    assert shape.rate is not None
    return arrival_times(len(requests), shape.rate, shape.arrival, shape.ramp_up_s, shape.seed)


async def run_load(
    requests: Sequence[RequestSpec],
    make_body: Callable[[RequestSpec], bytes],
    target: Target,
    shape: LoadShape,
    *,
    image_tokens: Sequence[int] | None = None,
    on_record: ProgressFn | None = None,
    schedule: Sequence[float] | None = None,
    start_at: float | None = None,
) -> LoadResult:
    """Send ``requests`` in one process. ``on_record`` sees each finished record (write it, count it); a
    cancellation (Ctrl-C) ends the run with the records so far, in-flight ones marked ``interrupted``."""
    runner = _Runner(requests, make_body, target, shape, image_tokens, on_record, schedule, start_at)
    return await runner.run()


# -- several processes ------------------------------------------------------------------------------------------
def split_by_session(requests: Sequence[RequestSpec], parts: int) -> list[list[int]]:
    """Positions of ``requests`` for each of ``parts`` processes: a session's turns stay in one process (their
    order dependencies are local), other requests are dealt in turn."""
    out: list[list[int]] = [[] for _ in range(parts)]
    owner: dict[int, int] = {}
    nxt = 0
    for k, r in enumerate(requests):
        if r.session is not None and r.session in owner:
            p = owner[r.session]
        else:
            p = nxt % parts
            nxt += 1
            if r.session is not None:
                owner[r.session] = p
        out[p].append(k)
    return out


@dataclass
class _ChildArgs:
    requests: list[RequestSpec]
    make_body: BodyMaker
    target: Target
    shape: LoadShape
    image_tokens: list[int]
    schedule: list[float] | None
    start_at: float
    out_path: str
    slot: int


def _child_main(args: _ChildArgs, counters: Any) -> None:
    def on_record(rec: RequestRecord) -> None:
        with counters.get_lock():
            counters[2 * args.slot] += 1
            if not rec.ok:
                counters[2 * args.slot + 1] += 1

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        pass
    try:
        result = asyncio.run(
            run_load(
                args.requests,
                args.make_body,
                args.target,
                args.shape,
                image_tokens=args.image_tokens,
                on_record=on_record,
                schedule=args.schedule,
                start_at=args.start_at,
            )
        )
    except KeyboardInterrupt:
        return
    with open(args.out_path, "wb") as fh:
        meta = {
            "elapsed_s": result.elapsed_s,
            "cpu_s": result.cpu_s,
            "loop_lag": list(result.loop_lag.percentiles.items()),
        }
        fh.write(orjson.dumps(meta) + b"\n")
        for rec in result.records:
            fh.write(orjson.dumps(rec.to_json()) + b"\n")


def run_load_procs(
    requests: Sequence[RequestSpec],
    make_body: BodyMaker,
    target: Target,
    shape: LoadShape,
    procs: int,
    *,
    image_tokens: Sequence[int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """The workload over ``procs`` processes (closed loop: the concurrency split between them; open loop: each
    keeps its requests' scheduled times), started together, records merged in request order."""
    shape.validate()
    parts = split_by_session(requests, procs)
    schedule = schedule_for(requests, shape) if shape.mode != "closed" else None
    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", 2 * procs)
    tmp = Path(tempfile.mkdtemp(prefix="mmharness-load-"))
    start_at = time.time() + 1.5  # spawn start-up; every process waits for the same instant
    children = []
    tokens = list(image_tokens) if image_tokens else [0] * len(requests)
    for slot, positions in enumerate(parts):
        if not positions:
            continue
        conc = shape.concurrency // procs + (1 if slot < shape.concurrency % procs else 0)
        sub_shape = replace(shape, concurrency=max(conc, 1), warmup=0)
        if shape.max_in_flight:
            sub_shape = replace(sub_shape, max_in_flight=max(shape.max_in_flight // procs, 1))
        args = _ChildArgs(
            requests=[requests[k] for k in positions],
            make_body=make_body,
            target=target,
            shape=sub_shape,
            image_tokens=[tokens[k] for k in positions],
            schedule=[schedule[k] for k in positions] if schedule is not None else None,
            start_at=start_at,
            out_path=str(tmp / f"part{slot}.jsonl"),
            slot=slot,
        )
        p = ctx.Process(target=_child_main, args=(args, counters), daemon=True)
        p.start()
        children.append((p, args.out_path))
    interrupted = False
    try:
        while any(p.is_alive() for p, _ in children):
            if on_progress is not None:
                on_progress(sum(counters[0::2]), sum(counters[1::2]))
            time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
        for p, _ in children:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, 2)  # SIGINT: the child cancels its run and writes what it has
    for p, _ in children:
        p.join(timeout=15)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    if on_progress is not None:
        on_progress(sum(counters[0::2]), sum(counters[1::2]))
    records: list[RequestRecord] = []
    elapsed = cpu = 0.0
    lags: list[float] = []
    for _, path in children:
        if not os.path.exists(path):
            continue
        with open(path, "rb") as fh:
            meta = orjson.loads(fh.readline())
            elapsed, cpu = max(elapsed, meta["elapsed_s"]), cpu + meta["cpu_s"]
            lags.extend(v for _, v in meta["loop_lag"] if v is not None and not math.isnan(v))
            records.extend(RequestRecord.from_json(orjson.loads(line)) for line in fh if line.strip())
    order = {r.index: k for k, r in enumerate(requests)}
    records.sort(key=lambda r: order.get(r.index, 0))
    for r in records:  # warm-up is the first N of the whole workload, not of each part
        r.warmup = r.warmup or order.get(r.index, 0) < shape.warmup
    return LoadResult(records, elapsed, cpu, distribution(lags), interrupted=interrupted, procs=len(children))
