"""The proxy's service layer: route, forward, stream back; LoRA cold paths; health and failover.

A request goes through small steps: **prepare** (parse the body once, resolve its adapter, compute the routing
key: the block hashes of the rendered prompt, through ``harness.mm``, the same code the engine uses), then per
attempt **choose and record** (the policy picks a worker; the decision is logged once, in the routing-record
contract), **forward** (the original bytes, or the body rewritten for inline assets and the adapter's served
name), and **classify** the outcome. A worker that cannot be reached, drops the connection or answers a
retryable 5xx before any byte reached the client is charged a failure and the request goes to the next-best
worker; once bytes have been streamed to the client nothing is retried.

All worker traffic goes through a ``Transport`` (``harness.proxy.transport``), and the client side is a
``Sink``, so the whole path runs in unit tests against scripted fake workers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson
from multidict import CIMultiDict

from harness.contract import format_mm_startup, format_routing
from harness.errors import ApiError
from harness.mm.assets import SCHEME as ASSET_SCHEME
from harness.mm.families import FAMILIES, family_for_model, get_family
from harness.mm.hashing import block_hashes
from harness.mm.request import render_request
from harness.proxy import degrade
from harness.proxy.adapters import AdapterCatalog, AdapterInfo
from harness.proxy.config import ProxyConfig
from harness.proxy.kv_index import EventIndex, PredictedIndex
from harness.proxy.lora import AdapterManager
from harness.proxy.metrics import ProxyMetrics
from harness.proxy.policies import Candidate, CostWeights, ImageSpan, Router, prefill_work
from harness.proxy.replies import ModelRename, classify, error_message
from harness.proxy.transport import (
    AiohttpTransport,
    ConnectError,
    ReadError,
    ReadTimeout,
    Timeouts,
    Transport,
    TransportError,
    TransportResponse,
)
from harness.proxy.workers import FailureKind, Health, HealthPolicy, Lease, RetryableError, WorkerState
from harness.server.kv_events import EventSubscriber
from harness.server.openai import (
    REQUEST_ID_HEADER,
    SERVED_BY_HEADER,
    error_body,
    parse_json_object,
    sse_event,
)

log = logging.getLogger("harness.proxy")

_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"})


# -- the client side, as the service sees it -------------------------------------------------------------------
@dataclass(frozen=True)
class Inbound:
    """A generate request as the HTTP layer hands it over: bytes and the few headers that travel on."""

    path: str
    body: bytes
    rid: str
    chat: bool
    authorization: str | None = None
    #: Filled for the access log line: the worker that answered, the prompt length.
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A complete (non-streamed) answer for the client."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class ClientGone(Exception):
    """The client hung up while its answer was being streamed."""


class Sink(Protocol):
    """Where a streamed answer goes. Methods raise ``ClientGone`` when the client has left."""

    async def open(self, status: int, headers: Mapping[str, str]) -> None: ...

    async def send(self, chunk: bytes) -> None: ...

    async def finish(self) -> None: ...


@dataclass
class RoutingKey:
    hashes: list[int]
    prompt_tokens: int
    #: (offset, length) of each image's placeholders, so the cost can price the vision encoder (kv_mm only).
    images: tuple[ImageSpan, ...] = ()


@dataclass(frozen=True)
class Call:
    """A prepared request: what every attempt sends, and what routing needs to know."""

    inbound: Inbound
    data: bytes
    stream: bool
    adapter: AdapterInfo | None
    key: RoutingKey | None

    def rename(self) -> ModelRename | None:
        return ModelRename(self.adapter.served_name, self.adapter.name) if self.adapter else None


@dataclass(frozen=True)
class Failed:
    """An attempt that failed before any byte reached the client; ``error`` is what the client gets if no other
    worker does better."""

    kind: FailureKind
    error: ApiError


@dataclass(frozen=True)
class AdapterMissing:
    """The worker answered that it does not know the request's adapter."""

    reply: Reply


Outcome = Reply | None | Failed | AdapterMissing  # None: streamed to the sink


class Proxy:
    def __init__(self, cfg: ProxyConfig, transport: Transport | None = None) -> None:
        self.cfg = cfg
        self.metrics = ProxyMetrics()
        self.router = Router(
            cfg.policy,
            CostWeights(
                cfg.overlap_weight, cfg.prefill_load_weight, cfg.running_weight, cfg.image_weight, cfg.cache_balance
            ),
            seed=cfg.seed,
        )
        policy = HealthPolicy(cfg.health_failures, cfg.breaker_failures, cfg.breaker_cooldown_s)
        self.workers = [
            WorkerState(
                index=i,
                url=url,
                predicted=PredictedIndex(
                    cfg.index_capacity_blocks,
                    cfg.event_prediction_ttl_s if url in cfg.kv_events else cfg.index_ttl_s,
                ),
                events=EventIndex() if url in cfg.kv_events else None,
                health=Health(policy),
            )
            for i, url in enumerate(cfg.workers)
        ]
        self.geometry = cfg.mm.geometry(cfg.model) if cfg.policy == "kv_mm" else None
        if self.geometry is not None:
            self.family = self.geometry.family
        else:
            # kv_text needs only the template: an unknown model still renders text with the Qwen template.
            family = cfg.mm.mm_family
            self.family = get_family(family) if family else family_for_model(cfg.model) or FAMILIES["qwen3_vl"]
        # The workers' tokenizer, found the same way from the same options (harness.mm.text), so the keys match.
        self.tokenizer = cfg.mm.text_tokenizer(cfg.model)
        self.assets = cfg.mm.asset_store()
        self.images = cfg.mm.resolver(cfg.model, self.geometry, assets=self.assets) if self.geometry else None
        self.catalog = AdapterCatalog(cfg.adapter_dir, cfg.model, cfg.max_lora_rank, dict(cfg.adapter_registry))
        self._transport = transport
        self.session: aiohttp.ClientSession | None = None
        self._adapters: AdapterManager | None = None
        self.created = int(time.time())
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribers: list[EventSubscriber] = []
        self.clock = time.monotonic
        degrade.install(self, cfg.degrade)  # test-only degradations (and kv_text's text-only key); usually none

    @property
    def transport(self) -> Transport:
        assert self._transport is not None, "Proxy.start() first"
        return self._transport

    @property
    def adapters(self) -> AdapterManager:
        if self._adapters is None:
            self._adapters = AdapterManager(
                self.catalog,
                self.cfg.model,
                self.cfg.max_loras_per_worker,
                self.metrics,
                self.transport,
                self.cfg.adapter_load_timeout_s,
            )
        return self._adapters

    # -- life cycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        # One session for image fetches and, unless a transport was given, for worker traffic.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        if self._transport is None:
            self._transport = AiohttpTransport(self.session)
        if self.images is not None:
            self.images.session = self.session
        self._log_startup()
        await self.check_health()
        self._tasks.append(asyncio.create_task(self._health_loop(), name="health"))
        if self.assets is not None:
            self._tasks.append(asyncio.create_task(self._sweep_loop(), name="asset-sweep"))
        for w in self.workers:
            if w.events is not None:
                sub = EventSubscriber(self.cfg.kv_events[w.url])
                self._subscribers.append(sub)
                self._tasks.append(asyncio.create_task(self._consume_events(w, sub), name=f"events-{w.index}"))

    def _log_startup(self) -> None:
        if self.cfg.policy == "kv_mm":
            log.info("%s", format_mm_startup(self.cfg.model, self.cfg.block_size))
        elif self.cfg.policy == "kv_text":
            log.info(
                "Text-only KV routing: images are not in the routing key model=%s block_size=%d",
                self.cfg.model,
                self.cfg.block_size,
            )
        log.info("proxy policy=%s workers=%s", self.cfg.policy, " ".join(self.cfg.workers))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self._subscribers:
            sub.close()
        if self._transport is not None:
            await self._transport.close()
        if self.session is not None:
            await self.session.close()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.health_interval_s)
            await self.check_health()

    async def _sweep_loop(self) -> None:
        """Sweeps derived artifacts; a failed sweep (a file unlinked under it, a full disk) is logged and the
        next one runs on time."""
        assert self.assets is not None
        while True:
            try:
                result = await asyncio.to_thread(self.assets.sweep, self.cfg.asset_max_age_s)
            except Exception as exc:  # the loop must outlive any one sweep
                log.warning("asset sweep failed: %s: %s", type(exc).__name__, exc)
            else:
                if result.removed:
                    log.info(
                        "asset sweep: removed %d derived artifact(s) older than %.0fs, kept %d; %d source(s)",
                        result.removed,
                        self.cfg.asset_max_age_s,
                        result.kept,
                        result.sources,
                    )
            await asyncio.sleep(self.cfg.asset_sweep_interval_s)

    async def _consume_events(self, w: WorkerState, sub: EventSubscriber) -> None:
        expected = None
        counter = self.metrics.kv_events.labels(w.name)
        while True:
            try:
                seq, events = await sub.recv()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kv events from %s: bad message", w.name)
                continue
            if expected is not None and seq != expected:
                log.warning("kv events from %s: gap, expected seq %d got %d", w.name, expected, seq)
            expected = seq + 1
            w.apply_events(events)
            counter.inc(len(events))

    # -- health ------------------------------------------------------------------------------------------------
    async def check_health(self) -> None:
        await asyncio.gather(*(self._probe(w) for w in self.workers))

    async def _probe(self, w: WorkerState) -> None:
        ok = False
        try:
            timeout = Timeouts(total=self.cfg.health_timeout_s)
            async with self.transport.request("GET", f"{w.url}/health", timeout=timeout) as resp:
                ok = resp.status == 200
                served_by = resp.headers.get(SERVED_BY_HEADER)
                if served_by:
                    w.name = served_by
        except TransportError:
            ok = False
        self._observe(w, w.health.probe(ok, self.clock()), "health check" if ok else "health checks failed")

    def _worker_failed(self, w: WorkerState, kind: FailureKind, why: str) -> None:
        self._observe(w, w.health.request_failed(kind, self.clock()), why)

    def _observe(self, w: WorkerState, change: str | None, why: str) -> None:
        """Log and act on a health transition; only ``down`` (a pattern of failed probes) wipes state."""
        if change is not None:
            level = logging.INFO if change in ("up", "reinstated") else logging.WARNING
            label = {"up": "healthy", "reinstated": "back in rotation", "down": "unhealthy", "opened": "out"}
            log.log(level, "worker %s (%s) is %s (%s)", w.name, w.url, label[change], why)
            if change == "down":
                w.forget()
        self.metrics.worker_healthy.labels(w.name).set(1 if w.healthy else 0)

    # -- prepare: parse, resolve the adapter, the routing key, the outgoing body -----------------------------
    async def prepare(self, inbound: Inbound) -> Call:
        body = parse_json_object(inbound.body)
        adapter = self.adapters.resolve(body.get("model"))
        key = await self.routing_key(body, inbound.chat, adapter) if self.router.uses_kv else None
        return Call(inbound, self.outgoing_body(inbound, body, adapter), bool(body.get("stream", False)), adapter, key)

    async def routing_key(self, body: dict[str, Any], chat: bool, adapter: AdapterInfo | None) -> RoutingKey:
        """The block hashes the chosen worker will cache, rendered by the engine's own pipeline
        (``harness.mm.request``). The adapter enters the key under the name the worker knows it by (its served
        name), as vLLM keys LoRA blocks by name. kv_text's image-blind key is installed by ``harness.proxy.degrade``."""
        rendered = await render_request(
            body,
            chat=chat,
            family=self.family,
            resolver=self.images,
            image_limit=self.cfg.mm.image_limit,
            max_prompt_chars=self.cfg.mm.max_prompt_chars,
            tokenizer=self.tokenizer,
        )
        ctx = rendered.key_context(adapter.served_name if adapter else None)
        prompt = rendered.prompt
        hashes = block_hashes(prompt.token_ids, self.cfg.block_size, prompt.mm_items, ctx)
        return RoutingKey(hashes, prompt.num_tokens, tuple((it.offset, it.length) for it in prompt.mm_items))

    def outgoing_body(self, inbound: Inbound, body: dict[str, Any], adapter: AdapterInfo | None) -> bytes:
        """The client's bytes, unless assets are inlined or the adapter travels under its served name."""
        changed = bool(self.cfg.inline_assets and inbound.chat and self.inline_assets(body))
        if adapter is not None:
            body["model"] = adapter.served_name
            changed = True
        return orjson.dumps(body) if changed else inbound.body

    def inline_assets(self, body: dict[str, Any]) -> bool:
        """Replace mmfile:// references with data URLs (for workers that cannot read the asset dir)."""
        if self.assets is None:
            return False
        changed = False
        for msg in body.get("messages") or []:
            content = msg.get("content") if isinstance(msg, dict) else None
            for part in content if isinstance(content, list) else []:
                image_url = part.get("image_url") if isinstance(part, dict) else None
                if not isinstance(image_url, dict):
                    continue
                url = image_url.get("url")
                if isinstance(url, str) and url.startswith(ASSET_SCHEME):
                    data = self.assets.read(url, self.cfg.mm.max_image_bytes)
                    image_url["url"] = "data:image/*;base64," + base64.b64encode(data).decode()
                    changed = True
        return changed

    # -- choose and record -----------------------------------------------------------------------------------
    def candidates(self, exclude: set[int], adapter: AdapterInfo | None) -> list[WorkerState]:
        """Workers in rotation not tried yet (an adapter's holders first while they have room); when none is
        left, those whose breaker is open but which still pass health checks, as a last resort."""
        healthy = [w for w in self.workers if w.healthy and w.index not in exclude]
        if not healthy:
            return [w for w in self.workers if w.health.up and w.index not in exclude]
        if adapter is not None:
            spill = self.cfg.lora_spill_running
            holders = [w for w in healthy if AdapterManager.holds(w, adapter) and w.running < spill]
            if holders:
                return holders
        return healthy

    def choose(self, pool: Sequence[WorkerState], key: RoutingKey | None) -> tuple[WorkerState, int]:
        hashes = key.hashes if key else []
        overlaps = {w.index: (w.overlap(hashes) if hashes else 0) for w in pool}
        cands = [
            Candidate(w.index, w.name, w.running, w.active_prefill_tokens, overlaps[w.index], w.cached_blocks)
            for w in pool
        ]
        pick = self.router.choose(
            cands,
            total_blocks=len(hashes),
            block_size=self.cfg.block_size,
            prompt_tokens=key.prompt_tokens if key else 0,
            images=key.images if key else (),
        )
        return self.workers[pick.index], overlaps[pick.index]

    def record(self, rid: str, w: WorkerState, overlap: int, key: RoutingKey | None) -> None:
        """One routing record per attempt; the key's blocks are reserved on ``w`` until the attempt settles."""
        total = len(key.hashes) if key else 0
        log.info("%s", format_routing(rid, w.name, overlap, total, self.cfg.policy))
        self.metrics.child(self.metrics.decisions, w.name, self.cfg.policy).inc()
        if key is not None:
            self.metrics.child(self.metrics.overlap_ratio, self.cfg.policy).observe(overlap / total if total else 0.0)
            self.metrics.count_prediction(key.prompt_tokens, min(overlap * self.cfg.block_size, key.prompt_tokens))
            w.predicted.reserve(key.hashes)

    # -- the request -----------------------------------------------------------------------------------------
    async def generate(self, inbound: Inbound, sink: Sink) -> Reply | None:
        """Answer one generate request: a ``Reply``, or None once the answer was streamed into ``sink``."""
        t0 = time.perf_counter()
        call = await self.prepare(inbound)
        self.metrics.added_latency.observe(time.perf_counter() - t0)
        inbound.stats["prompt_tokens"] = call.key.prompt_tokens if call.key else "-"
        return await self.dispatch(call, sink)

    async def dispatch(self, call: Call, sink: Sink) -> Reply | None:
        """Attempts until one answers: failures before the first byte go to the next-best worker, at most
        ``max_attempts`` workers; a worker that lost the request's adapter gets it again, once."""
        rid = call.inbound.rid
        tried: set[int] = set()
        last: Failed | None = None
        adapter_retried = False
        retry: str | None = None  # why this is not the first attempt
        while True:
            pool = self.candidates(tried, call.adapter)
            if not pool:
                raise last.error if last is not None else self._no_worker()
            if retry is not None:
                self.metrics.retries.labels(retry).inc()
            w, overlap = self.choose(pool, call.key)
            self.record(rid, w, overlap, call.key)
            call.inbound.stats["worker"] = w.name
            outcome = await self.attempt(call, w, overlap, sink)
            if isinstance(outcome, Failed):
                tried.add(w.index)
                last = outcome
                if len(tried) >= self.cfg.max_attempts:
                    raise ApiError(
                        outcome.error.status,
                        f"{outcome.error.message}; gave up after {len(tried)} attempts",
                        None,
                        outcome.error.err_type,
                    )
                retry = "connect" if outcome.kind == "unreachable" else outcome.kind
                log.warning("request_id=%s %s; retrying elsewhere", rid, outcome.error.message)
                continue
            if isinstance(outcome, AdapterMissing):
                assert call.adapter is not None
                if adapter_retried:
                    return outcome.reply
                # The worker lost the adapter (restart, unload): register it again and retry once.
                log.warning(
                    "[LORA] request_id=%s worker %s does not know adapter %s; re-registering",
                    rid,
                    w.name,
                    call.adapter.name,
                )
                self.adapters.forget(w, call.adapter)
                adapter_retried = True
                retry = "adapter_404"
                continue
            return outcome

    def _no_worker(self) -> ApiError:
        names = ", ".join(f"{w.name}({w.health.state})" for w in self.workers)
        return ApiError(
            503, f"no healthy worker can take the request; workers: {names}", None, "ServiceUnavailableError"
        )

    async def attempt(self, call: Call, w: WorkerState, overlap: int, sink: Sink) -> Outcome:
        """One worker, one try: load the adapter, forward, classify; the key's reservation settles here."""
        key = call.key
        bs, image_weight = self.cfg.block_size, self.router.weights.image
        prefill = round(prefill_work(overlap, bs, key.prompt_tokens, key.images, image_weight)) if key else 0
        lease = w.lease(prefill)
        self._running_changed(w)
        committed = False
        try:
            if call.adapter is not None:
                await self.adapters.ensure(w, call.adapter, call.inbound.rid)
            outcome, committed = await self.forward(call, w, lease, sink)
            return outcome
        except RetryableError as exc:
            self._worker_failed(w, exc.kind, exc.reason)
            return Failed(exc.kind, _bad_gateway(f"worker {w.name} failed: {exc.reason}"))
        finally:
            lease.end()
            self._running_changed(w)
            if key is not None:
                w.predicted.settle(key.hashes, commit=committed)

    def _running_changed(self, w: WorkerState) -> None:
        self.metrics.child(self.metrics.worker_running, w.name).set(w.running)

    async def forward(self, call: Call, w: WorkerState, lease: Lease, sink: Sink) -> tuple[Outcome, bool]:
        """Send the call to ``w``; returns the outcome and whether the worker took the request (its blocks are
        then predicted cached). Transport failures before the answer are retryable; timeouts are 504."""
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: call.inbound.rid}
        if call.inbound.authorization:
            headers["Authorization"] = call.inbound.authorization
        timeout = Timeouts(total=self.cfg.request_timeout_s, connect=self.cfg.connect_timeout_s)
        url = f"{w.url}{call.inbound.path}"
        try:
            async with self.transport.request("POST", url, body=call.data, headers=headers, timeout=timeout) as resp:
                reply_headers = self._reply_headers(resp, call.inbound.rid, w)
                if call.stream and resp.status == 200:
                    w.health.request_ok()
                    await self.relay(call, w, resp, reply_headers, lease, sink)
                    return None, True
                body = await resp.read()
                lease.prefill_done()
        except (ConnectError, ReadError) as exc:
            raise RetryableError(f"{exc}", "unreachable") from None
        except ReadTimeout:
            self._worker_failed(w, "timeout", "stopped answering mid-request")
            raise ApiError(504, f"worker {w.name} stopped answering mid-request", None, "GatewayTimeoutError") from None
        except TransportError:  # the total deadline
            self._worker_failed(w, "timeout", "request timed out")
            raise ApiError(
                504,
                f"worker {w.name} did not answer within {self.cfg.request_timeout_s}s",
                None,
                "GatewayTimeoutError",
            ) from None
        return self.judge(call, w, Reply(resp.status, reply_headers, body))

    def judge(self, call: Call, w: WorkerState, reply: Reply) -> tuple[Outcome, bool]:
        """A complete answer -> the outcome, and whether the worker took the request. Retryable 5xx count
        against the worker's breaker; a 5xx that every worker would give (501) does not, nor does a 4xx."""
        verdict = classify(reply.status, reply.body, has_adapter=call.adapter is not None)
        if verdict in ("worker_error", "failed"):
            error = _bad_gateway(f"worker {w.name} returned HTTP {reply.status}: {error_message(reply.body)}")
            if verdict == "failed":
                return _error_reply(error, reply), False
            self._worker_failed(w, "worker_error", f"HTTP {reply.status}")
            return Failed("worker_error", error), False
        w.health.request_ok()
        if verdict == "adapter_missing":
            return AdapterMissing(reply), False
        rename = call.rename()
        body = rename.whole(reply.body) if rename else reply.body
        return Reply(reply.status, reply.headers, body), verdict == "ok"

    @staticmethod
    def _reply_headers(resp: TransportResponse, rid: str, w: WorkerState) -> CIMultiDict[str]:
        headers = CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS)
        headers[REQUEST_ID_HEADER] = rid
        headers.setdefault(SERVED_BY_HEADER, w.name)
        return headers

    async def relay(
        self,
        call: Call,
        w: WorkerState,
        resp: TransportResponse,
        headers: Mapping[str, str],
        lease: Lease,
        sink: Sink,
    ) -> None:
        """Stream the worker's answer to the client. From here on nothing is retried: a client that leaves is
        let go (leaving the transport block drops the upstream connection, so the worker aborts the request);
        a worker that fails gets the client an in-band error instead of a silent truncation."""
        rename = call.rename()
        rid = call.inbound.rid
        try:
            await sink.open(200, headers)
            async for chunk in resp.iter_chunks():
                lease.prefill_done()
                data = rename.feed(chunk) if rename else chunk
                if data:
                    await sink.send(data)
            if rename is not None and (tail := rename.flush()):
                await sink.send(tail)
            await sink.finish()
        except ClientGone:
            log.info("request_id=%s client disconnected mid-stream", rid)
        except TransportError as exc:
            await self._end_broken_stream(sink, w, rid, exc)

    async def _end_broken_stream(self, sink: Sink, w: WorkerState, rid: str, exc: TransportError) -> None:
        """The worker failed mid-stream: tell the client in-band (vLLM's streaming error shape), take the worker
        out, and close the stream without ``[DONE]`` so no client mistakes it for a complete answer."""
        log.warning("request_id=%s worker %s failed mid-stream: %s", rid, w.name, exc)
        timed_out = isinstance(exc, ReadTimeout)
        self._worker_failed(w, "timeout" if timed_out else "unreachable", f"failed mid-stream: {type(exc).__name__}")
        if timed_out:
            error = ApiError(504, f"worker {w.name} stopped answering mid-stream", None, "GatewayTimeoutError")
        else:
            error = _bad_gateway(f"worker {w.name} failed mid-stream: {type(exc).__name__}")
        with contextlib.suppress(ClientGone):
            await sink.send(sse_event(error_body(error)))
            await sink.finish()


def _bad_gateway(message: str) -> ApiError:
    """A 502 naming the worker by name only: its internal URL stays out of what the client sees."""
    return ApiError(502, message, None, "BadGatewayError")


def _error_reply(error: ApiError, reply: Reply) -> Reply:
    headers = CIMultiDict(reply.headers)
    headers["Content-Type"] = "application/json"
    return Reply(error.status, headers, orjson.dumps(error_body(error)))
